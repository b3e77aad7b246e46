"""What every encoder shares: the :class:`Encoder` interface, device choice and normalising.
The encoder modules import this, never the package, which imports them lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

DEFAULT_BATCH_SIZE = 64
DEMO_WEIGHTS = {"fashion-v1": "demo_fashion_v1.pt"}  # demo encoder name -> weights file beside demo.py


@runtime_checkable
class Encoder(Protocol):
    """What ingestion, the head and text search need from an encoder."""

    id: str  # stored in the catalog; loading it again gives the same model
    dim: int  # embedding width
    batch_size: int
    device: str

    def preprocess(self, image: Image.Image) -> Any:
        """One RGB PIL image to the model's input tensor (C, H, W). Picklable and CPU-only, so
        DataLoader workers can run it."""

    def encode_images(self, batch: Any) -> np.ndarray:
        """A list of PIL images, or a stacked tensor of preprocessed ones (n, C, H, W), to
        float32 (n, dim), rows L2-normalised."""

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts to float32 (n, dim), rows L2-normalised."""


def choose_device(device: str | None = None) -> str:
    """``device`` if given, else cuda, then mps, then cpu."""
    if device:
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit length, as float32 (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, 1e-12)
