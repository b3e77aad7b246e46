"""8-bit scalar quantization of the head's 32-d outputs.

:func:`fit_affine` gives each dim its own affine map onto 0..255, fitted on quantiles of the
data, with rounding. :func:`fit_global` is the original system's scheme, kept as a baseline:
one map for all dims with truncation, which leaves most of each dim's code range unused.
Query vectors go through the same map as the catalog's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..errors import QuantizerError

DEFAULT_QUANTILES = (0.001, 0.999)
# The narrowest per-dim range a fit on a few rows may take, in units of 1/sqrt(d): one coordinate
# of unit vectors spread evenly over d dims has that standard deviation, and +-2 of it is about
# the median range of the demo catalog's head fitted on 70,000 images (0.72 for d = 32, against
# 4/sqrt(32) = 0.71; `python scripts/eval_small_heads.py` prints both as quantizer_ranges).
SPHERE_SIGMAS = 4.0


@dataclasses.dataclass(frozen=True)
class Quantizer:
    """``code = clip(round((x - lo) / step), 0, 255)`` per dim (``floor`` when ``rounding`` is
    ``"truncate"``). lo, step: float32 (d,)."""

    lo: np.ndarray
    step: np.ndarray
    rounding: str = "round"
    method: str = "affine"

    @property
    def dim(self) -> int:
        return int(self.lo.shape[0])

    def encode(self, x: np.ndarray) -> np.ndarray:
        """float (n, d) -> uint8 (n, d)."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise QuantizerError(f"quantizer expects (n, {self.dim}) values, got shape {x.shape}")
        z = (x - self.lo) / self.step
        z = np.floor(z) if self.rounding == "truncate" else np.rint(z)
        return np.clip(z, 0, 255).astype(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """uint8 (n, d) -> float32 (n, d): the value each code stands for (its bin's centre
        when truncating)."""
        c = np.asarray(codes, dtype=np.float32)
        if self.rounding == "truncate":
            c = c + 0.5
        return (self.lo + c * self.step).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "rounding": self.rounding,
            "lo": [float(v) for v in self.lo],
            "step": [float(v) for v in self.step],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Quantizer:
        try:
            lo = np.asarray(obj["lo"], dtype=np.float32)
            step = np.asarray(obj["step"], dtype=np.float32)
            rounding, method = str(obj.get("rounding", "round")), str(obj.get("method", "affine"))
        except (KeyError, TypeError, ValueError) as e:
            raise QuantizerError(
                f"stored quantizer is malformed ({e}); run `clip-branches train-head` again"
            ) from None
        if (
            lo.shape != step.shape
            or lo.ndim != 1
            or not (step > 0).all()
            or rounding not in ("round", "truncate")
        ):
            raise QuantizerError("stored quantizer is malformed; run `clip-branches train-head` again")
        return cls(lo, step, rounding, method)


def _check(x: np.ndarray, min_rows: int = 2) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < min_rows:
        raise QuantizerError(
            f"need a 2-d array of at least {min_rows} rows to fit a quantizer, got shape {x.shape}"
        )
    if not np.isfinite(x).all():
        raise QuantizerError("values contain NaN or infinite entries")
    return x


def fit_affine(
    x: np.ndarray, quantiles: tuple[float, float] = DEFAULT_QUANTILES, *, min_range: float = 0.0
) -> Quantizer:
    """Per-dim map from the [q_lo, q_hi] quantile range onto codes 0..255, rounding to nearest.

    Clipping the extreme 0.1 % on each side buys resolution for the other 99.8 %. A dim whose
    range is narrower than ``min_range`` is widened to it about its centre: quantiles of a few
    rows (one row has none) would map every other vector to 0 or 255 (see :func:`sphere_range`).
    x: float (n, d), n >= 2, or n >= 1 with a ``min_range``.
    """
    if not (np.isfinite(min_range) and min_range >= 0):
        raise QuantizerError(f"min_range must be a finite number >= 0, got {min_range!r}")
    x = _check(x, 1 if min_range > 0 else 2)
    q_lo, q_hi = quantiles
    if not 0.0 <= q_lo < q_hi <= 1.0:
        raise QuantizerError(f"quantiles must satisfy 0 <= lo < hi <= 1, got {quantiles}")
    lo, hi = np.quantile(x, [q_lo, q_hi], axis=0)
    if min_range > 0:
        centre, half = (lo + hi) / 2, np.maximum(hi - lo, min_range) / 2
        lo, hi = centre - half, centre + half
    step = np.maximum(hi - lo, 1e-6) / 255.0
    return Quantizer(lo.astype(np.float32), step.astype(np.float32), "round", "affine")


def sphere_range(dim: int) -> float:
    """``SPHERE_SIGMAS / sqrt(dim)``: a per-dim range that holds most coordinates of unit vectors
    spread evenly over ``dim`` dims; the ``min_range`` for fits on a few rows."""
    return SPHERE_SIGMAS / float(np.sqrt(dim))


def fit_global(x: np.ndarray) -> Quantizer:
    """The original scheme: one map for every dim over the global min..max, truncating."""
    x = _check(x)
    lo, hi = float(x.min()), float(x.max())
    step = max(hi - lo, 1e-6) / 256.0
    d = x.shape[1]
    return Quantizer(np.full(d, lo, np.float32), np.full(d, step, np.float32), "truncate", "global")


def code_usage(codes: np.ndarray) -> float:
    """Mean over dims of the fraction of the 256 code values that occur. codes: uint8 (n, d)."""
    codes = np.asarray(codes, dtype=np.uint8)
    return float(np.mean([np.unique(codes[:, j]).size / 256.0 for j in range(codes.shape[1])]))
