"""Encoders: images and texts to L2-normalised float32 embeddings, behind one interface.

An encoder id names the model and is stored in the catalog:

* ``demo:fashion-v1`` -- the offline demo encoder (small CNN + frozen MiniLM text tower);
* ``open_clip:MODEL/PRETRAINED`` -- any open_clip model and pretrained tag, e.g.
  ``open_clip:ViT-B-32/laion2b_s34b_b79k``; ``PRETRAINED`` may be ``none`` (random weights)
  or a local checkpoint path: ``open_clip:ViT-L-14-336/openai@/models/mcip.pth`` loads the
  base model's architecture and then the checkpoint's full state dict with ``strict=True``.

torch and open_clip are imported only when an encoder is loaded, so ``import engine`` stays light.
"""

from __future__ import annotations

import threading
from typing import Any

from ..errors import EncoderError
from .base import DEFAULT_BATCH_SIZE, DEMO_WEIGHTS, Encoder, choose_device, l2_normalise


def load_encoder(encoder_id: str, device: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> Encoder:
    """The encoder named by ``encoder_id`` (see the module docstring)."""
    if not isinstance(encoder_id, str) or ":" not in encoder_id:
        raise EncoderError(
            f"encoder id {encoder_id!r} is not of the form 'demo:NAME' or 'open_clip:MODEL/PRETRAINED'"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EncoderError(f"batch size must be a positive integer, got {batch_size!r}")
    kind, _, spec = encoder_id.partition(":")
    if kind == "demo":
        from .demo import DemoEncoder

        return DemoEncoder(spec, device=device, batch_size=batch_size)
    if kind == "open_clip":
        from .openclip import OpenClipEncoder

        return OpenClipEncoder.from_spec(spec, device=device, batch_size=batch_size)
    raise EncoderError(f"unknown encoder kind {kind!r} in {encoder_id!r}; use 'demo:' or 'open_clip:'")


def load_text_encoder(encoder_id: str, device: str | None = None) -> Any:
    """What encodes text queries for ``encoder_id``: an object with ``id``, ``dim`` and
    ``encode_texts``. The demo encoder's text tower runs without torch, so a one-shot text search
    does not pay for importing it; other encoders load whole."""
    kind, _, spec = encoder_id.partition(":") if isinstance(encoder_id, str) else ("", "", "")
    if kind == "demo":
        from .minilm import TextTower

        if spec not in DEMO_WEIGHTS:
            known = ", ".join(f"'demo:{n}'" for n in DEMO_WEIGHTS)
            raise EncoderError(f"unknown demo encoder {encoder_id!r}; available: {known}")
        return TextTower(encoder_id)
    return load_encoder(encoder_id, device=device)


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Encoder",
    "EncoderError",
    "choose_device",
    "l2_normalise",
    "load_encoder",
    "load_text_encoder",
]


class QueryEncoders:
    """The encoders loaded for queries, once per process and encoder id (an encoder does not
    change, so every catalog object that uses it shares it, including one opened again after a
    write): the full encoder, or for text queries only its text side while the full one is not
    loaded (no torch for the demo's)."""

    _cache: dict[tuple[str, bool], Any] = {}
    _lock = threading.Lock()

    @classmethod
    def get(cls, encoder_id: str, text: bool) -> Any:
        with cls._lock:
            full = cls._cache.get((encoder_id, False))
            if full is not None or not text:
                if full is None:
                    full = cls._cache[(encoder_id, False)] = load_encoder(encoder_id)
                return full
            if (encoder_id, True) not in cls._cache:
                cls._cache[(encoder_id, True)] = load_text_encoder(encoder_id)
            return cls._cache[(encoder_id, True)]
