"""The offline demo encoder ``demo:fashion-v1``: a small CNN image tower on a frozen MiniLM text tower.

The image tower was trained (``scripts/build_demo_encoder.py``) to map 28x28 grayscale
Fashion-MNIST pictures onto the MiniLM embeddings of captions of their class, so free text such
as "ankle boot" or "a bag to carry things" finds the right pictures without any network access.
Its fp16 weights ship next to this module.

This module imports torch at the top; only :func:`engine.encoders.load_encoder` imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn

from ..datasets.demodata import CLASSES, DEBIAN_ROOT, SPLITS, idx_files, read_split
from ..errors import EncoderError, IngestError
from . import minilm
from .base import DEFAULT_BATCH_SIZE, DEMO_WEIGHTS, choose_device

FASHION_CLASSES = CLASSES
FASHION_MNIST_ROOT = DEBIAN_ROOT

IMAGE_SIZE = 28
EMBED_DIM = minilm.EMBED_DIM
# Fashion-MNIST pixel statistics (train split, pixels scaled to [0, 1]); training and
# preprocess() must agree on them.
PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530
# Mean border brightness (0-255) above which a picture counts as dark-on-light and is inverted.
# No Fashion-MNIST picture comes near it: the highest train-split border mean is 104.
LIGHT_BACKGROUND = 128.0

WEIGHTS_DIR = Path(__file__).resolve().parent
WEIGHTS = DEMO_WEIGHTS


# --- Fashion-MNIST files ------------------------------------------------------------------------


def read_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The Fashion-MNIST ``split`` ("train": 60,000 pictures, "test": 10,000).

    Returns images uint8 (n, 28, 28) (light garment on a black background) and labels int64 (n,)
    indexing :data:`FASHION_CLASSES`. ``root`` defaults to Debian's install location.
    """
    if split not in SPLITS:
        raise IngestError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else FASHION_MNIST_ROOT
    for name in idx_files(split).values():
        if not (root / name).is_file():
            raise IngestError(
                f"Fashion-MNIST file {root / name} not found; install the Debian package "
                "'dataset-fashion-mnist' or pass the folder holding the idx files as root="
            )
    images, labels = read_split(root, split)
    return images, labels.astype(np.int64)


# --- image tower --------------------------------------------------------------------------------


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=True),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class ImageTower(nn.Module):
    """Three conv blocks (32/64/128 channels; 28 -> 14 -> 7 -> 3 px), then FC 1152 -> 256 -> 384.

    Input float32 (n, 1, 28, 28), normalised with PIXEL_MEAN / PIXEL_STD; output float32
    (n, 384), rows L2-normalised. About 487k parameters.
    """

    def __init__(self, dim: int = EMBED_DIM, dropout: float = 0.1):
        super().__init__()
        self.features = nn.Sequential(_conv_block(1, 32), _conv_block(32, 64), _conv_block(64, 128))
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(128 * 3 * 3, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.head(self.features(x)), dim=1)


def load_image_tower(path: str | Path) -> ImageTower:
    """An :class:`ImageTower` in eval mode, float32, from a (fp16) state dict saved at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise EncoderError(
            f"demo encoder weights {path} are missing; rebuild them with "
            "'python scripts/build_demo_encoder.py' or re-install clip-branches"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        tower = ImageTower()
        tower.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    except Exception as exc:  # any unreadable or mismatched file gets the same advice
        raise EncoderError(
            f"demo encoder weights {path} do not fit the image tower ({exc}); rebuild them with "
            "'python scripts/build_demo_encoder.py'"
        ) from exc
    return tower.eval()


def _has_light_background(gray: Image.Image) -> bool:
    """Whether the outermost ring of pixels of an "L" image is light on average."""
    pixels = np.asarray(gray)
    ring = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return float(ring.mean()) >= LIGHT_BACKGROUND


def _fit_to_canvas(image: Image.Image) -> Image.Image:
    """Any PIL image to an "L" image of exactly 28x28 that looks like a Fashion-MNIST picture.

    Transparency becomes black, a light background is inverted to black (product photos are
    usually dark on white), aspect is kept and the rest is padded with black.
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(black, rgba)
    gray = image.convert("L")
    if _has_light_background(gray):
        gray = ImageOps.invert(gray)
    if gray.size == (IMAGE_SIZE, IMAGE_SIZE):
        return gray  # Fashion-MNIST pictures pass through untouched, exactly as in training
    w, h = gray.size
    scale = IMAGE_SIZE / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # reducing_gap pre-shrinks huge images cheaply; the final LANCZOS step keeps thin edges
    resized = gray.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    canvas.paste(resized, ((IMAGE_SIZE - size[0]) // 2, (IMAGE_SIZE - size[1]) // 2))
    return canvas


def normalise_pixels(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (..., 28, 28) pixels to the image tower's float32 input scale, same shape."""
    # torch.tensor copies: arrays that come from PIL or from the idx buffer are read-only
    x = torch.tensor(np.asarray(pixels, dtype=np.uint8)).float().div_(255.0)
    return x.sub_(PIXEL_MEAN).div_(PIXEL_STD)


def preprocess_image(image: Image.Image) -> torch.Tensor:
    """Any PIL image (RGB, RGBA, L, P, any size) to float32 (1, 28, 28), as in training.

    See :func:`_fit_to_canvas` for how a picture is made to look like a Fashion-MNIST one.

    A module-level function so DataLoader workers can pickle it without the model.
    """
    canvas = _fit_to_canvas(image)
    pixels = np.asarray(canvas, dtype=np.uint8)
    return normalise_pixels(pixels).unsqueeze(0)


# --- text tower ---------------------------------------------------------------------------------


def encode_texts_minilm(
    texts: Sequence[str], device: str = "cpu", batch_size: int = DEFAULT_BATCH_SIZE
) -> np.ndarray:
    """Texts to MiniLM sentence embeddings: float32 (n, 384), rows L2-normalised.

    Mean pooling over the attention mask then L2 normalisation, which is what
    sentence-transformers' all-MiniLM-L6-v2 computes (:mod:`engine.encoders.minilm`, in numpy
    on the CPU whatever ``device`` is; ``batch_size`` is accepted for the encoder interface).
    """
    return minilm.encode_texts(texts)


# --- the encoder --------------------------------------------------------------------------------


class DemoEncoder:
    """``demo:NAME``: the image tower from the shipped weights, the frozen MiniLM text tower.

    ``weights`` overrides the shipped weights file (the build script uses it to evaluate a fresh
    checkpoint). The text tower loads on the first :meth:`encode_texts` call, so ingestion-only
    processes never pay for it.
    """

    def __init__(
        self,
        name: str,
        device: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        *,
        weights: str | Path | None = None,
    ):
        if name not in WEIGHTS:
            known = ", ".join(f"'demo:{n}'" for n in WEIGHTS)
            raise EncoderError(f"unknown demo encoder 'demo:{name}'; available: {known}")
        self.id = f"demo:{name}"
        self.dim = EMBED_DIM
        self.batch_size = batch_size
        self.device = choose_device(device)
        self.weights = Path(weights) if weights is not None else WEIGHTS_DIR / WEIGHTS[name]
        self.image_tower_ = load_image_tower(self.weights).to(self.device)

    def __repr__(self) -> str:
        return f"DemoEncoder({self.id!r}, device={self.device!r}, batch_size={self.batch_size})"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Any PIL image to float32 (1, 28, 28); see :func:`preprocess_image`."""
        return preprocess_image(image)

    def _as_batch(self, batch: Any) -> torch.Tensor:
        """PIL images or preprocessed tensors to float32 (n, 1, 28, 28) on the CPU."""
        if isinstance(batch, torch.Tensor):
            x = batch
        elif isinstance(batch, Image.Image):
            raise TypeError("encode_images expects a list of PIL images, not a single image")
        else:
            items = list(batch)
            if not items:
                return torch.zeros((0, 1, IMAGE_SIZE, IMAGE_SIZE))
            x = torch.stack([preprocess_image(im) if isinstance(im, Image.Image) else im for im in items])
        if x.dim() == 3:  # (n, 28, 28): a stack without the channel axis
            x = x.unsqueeze(1)
        if x.shape[1:] != (1, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"preprocessed images must be (n, 1, 28, 28), got {tuple(x.shape)}")
        return x.float()

    def encode_images(self, batch: Any) -> np.ndarray:
        """A list of PIL images, or a stacked preprocessed tensor (n, 1, 28, 28), to float32
        (n, 384), rows L2-normalised."""
        x = self._as_batch(batch)
        out = [np.zeros((0, EMBED_DIM), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(x), self.batch_size):
                chunk = x[start : start + self.batch_size].to(self.device)
                out.append(self.image_tower_(chunk).float().cpu().numpy())
        return np.concatenate(out)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts to float32 (n, 384), rows L2-normalised (frozen MiniLM)."""
        return encode_texts_minilm(texts, device=self.device, batch_size=self.batch_size)


# --- evaluation ---------------------------------------------------------------------------------

# Zero-shot classification prompts: every template filled with every class's name.
CLASS_PROMPT_NAMES: tuple[str, ...] = (
    "a t-shirt",
    "a pair of trousers",
    "a pullover",
    "a dress",
    "a coat",
    "a sandal",
    "a shirt",
    "a sneaker",
    "a bag",
    "an ankle boot",
)
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of {}.",
    "a picture of {}.",
    "a black and white photo of {}.",
    "a low-resolution photo of {}.",
    "{}",
)

# Free-text queries that appear in no training caption, with the classes that count as a hit.
_SHOES = ("Sandal", "Sneaker", "Ankle boot")
PARAPHRASE_QUERIES: dict[str, tuple[str, ...]] = {
    "ankle boot": ("Ankle boot",),
    "shoes": _SHOES,
    "footwear": _SHOES,
    "a bag to carry things": ("Bag",),
    "a handbag": ("Bag",),
    "summer clothes": ("T-shirt/top", "Dress", "Sandal", "Shirt"),
    "something to wear on your legs": ("Trouser",),
    "blue jeans": ("Trouser",),
    "warm winter jacket": ("Coat", "Pullover"),
    "footwear for running": ("Sneaker",),
    "a dress for a party": ("Dress",),
    "a cosy knitted jumper": ("Pullover",),
    "a shirt with a collar and buttons": ("Shirt",),
    "a plain tee": ("T-shirt/top",),
    "shoes for the beach": ("Sandal",),
    "boots for autumn": ("Ankle boot",),
}


def class_text_embeddings(encoder: Any) -> np.ndarray:
    """One zero-shot prototype per class, the mean of its template prompts: float32 (10, dim),
    rows L2-normalised, in :data:`FASHION_CLASSES` order."""
    prompts = [t.format(name) for name in CLASS_PROMPT_NAMES for t in ZERO_SHOT_TEMPLATES]
    emb = encoder.encode_texts(prompts).reshape(len(CLASS_PROMPT_NAMES), len(ZERO_SHOT_TEMPLATES), -1)
    mean = emb.mean(axis=1)
    return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)


def zero_shot_predictions(encoder: Any, image_embeddings: np.ndarray) -> np.ndarray:
    """Class index int64 (n,) of the nearest class prototype for float32 (n, dim) image embeddings."""
    return np.argmax(image_embeddings @ class_text_embeddings(encoder).T, axis=1).astype(np.int64)


def paraphrase_precision(
    encoder: Any, image_embeddings: np.ndarray, labels: np.ndarray, k: int = 60
) -> dict[str, float]:
    """Precision@k of each :data:`PARAPHRASE_QUERIES` query over the given images.

    ``image_embeddings`` float32 (n, dim), ``labels`` int64 (n,). A hit is an image whose class is
    in the query's set.
    """
    queries = list(PARAPHRASE_QUERIES)
    scores = encoder.encode_texts(queries) @ image_embeddings.T  # (q, n)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    result = {}
    for query, rows in zip(queries, top, strict=True):
        wanted = [FASHION_CLASSES.index(c) for c in PARAPHRASE_QUERIES[query]]
        result[query] = float(np.isin(labels[rows], wanted).mean())
    return result
