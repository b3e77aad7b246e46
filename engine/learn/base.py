"""What every box-set classifier shares: votes and predictions computed from its boxes.

A fitted model exposes ``boxes_`` (a :class:`~engine.boxes.BoxSet` whose members are the
model's voting members) and ``min_votes_`` (the votes a row needs to be positive). Its
``decision_function`` and ``predict`` are computed from those two attributes alone, so they agree
with ``Catalog.select(model.boxes_, model.min_votes_)`` and with the compiled SQL by construction.
"""

from __future__ import annotations

import numpy as np

from ..boxes import N_DIMS, BoxSet
from ..errors import CatalogError, InvalidArgument


class NotFittedError(CatalogError, AttributeError):
    """A model was used before ``fit``."""


def check_codes(X, what: str = "X") -> np.ndarray:
    """uint8 (n, 32) codes; integers outside 0..255 or other shapes are refused."""
    a = np.asarray(X)
    if a.ndim != 2 or a.shape[1] != N_DIMS:
        raise InvalidArgument(f"{what} must have shape (n, {N_DIMS}), got {a.shape}")
    if a.dtype != np.uint8:
        if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0 or a.max() > 255):
            raise InvalidArgument(f"{what} must hold integer codes in 0..255")
        a = a.astype(np.uint8)
    return np.ascontiguousarray(a)


def check_labels(y, n: int) -> np.ndarray:
    """bool (n,) labels from 0/1, bool or -1/+1 values."""
    a = np.asarray(y)
    if a.shape != (n,):
        raise InvalidArgument(f"y must have shape ({n},), got {a.shape}")
    if a.dtype == np.bool_:
        return a
    values = set(np.unique(a).tolist())
    if not values <= {0, 1} and not values <= {-1, 1}:
        raise InvalidArgument(f"y must be binary (0/1, False/True or -1/+1), got values {sorted(values)[:5]}")
    return a > 0


def check_weights(sample_weight, n: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n, np.float64)
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.shape != (n,):
        raise InvalidArgument(f"sample_weight must have shape ({n},), got {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise InvalidArgument("sample_weight must be finite and non-negative")
    return w


def box_votes(boxes: BoxSet, X: np.ndarray) -> np.ndarray:
    """int64 (n,): the number of distinct members with a box containing each row of ``X``."""
    X = check_codes(X)
    votes = np.zeros(len(X), np.int64)
    for m in np.unique(boxes.members):
        idx = np.flatnonzero(boxes.members == m)
        inside = np.zeros(len(X), bool)
        for i in idx:
            inside |= np.all((boxes.lo[i] <= X) & (boxes.hi[i] >= X), axis=1)
        votes += inside
    return votes


class BoxClassifierMixin:
    """``decision_function`` (member votes) and ``predict`` from ``boxes_`` and ``min_votes_``.

    Mixed into scikit-learn ``BaseEstimator`` subclasses, which supply ``get_params``,
    ``set_params`` and cloning; ``classes_`` is always ``[0, 1]``.
    """

    def _set_fitted(self, boxes: BoxSet, min_votes: int):
        """Record what every box classifier learns; returns self, for ``fit`` to return."""
        self.boxes_ = boxes
        self.min_votes_ = int(min_votes)
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = N_DIMS
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "boxes_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) first")

    def decision_function(self, X) -> np.ndarray:
        """Member votes per row: int64 (n,)."""
        self._check_fitted()
        return box_votes(self.boxes_, X)

    def predict(self, X) -> np.ndarray:
        """1 for rows with at least ``min_votes_`` votes, else 0: int64 (n,)."""
        return (self.decision_function(X) >= self.min_votes_).astype(np.int64)
