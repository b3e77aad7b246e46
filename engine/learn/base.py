"""What every box-set classifier shares: input and parameter checks, and votes and predictions
computed from its boxes.

A fitted model exposes ``boxes_`` (a :class:`~engine.boxes.BoxSet` whose members are the
model's voting members) and ``min_votes_`` (the votes a row needs to be positive). Its
``decision_function`` and ``predict`` are computed from those two attributes alone, so they agree
with ``Catalog.select(model.boxes_, model.min_votes_)`` and with the compiled SQL by construction.

Every model declares, as scikit-learn's estimators do, a ``_parameter_constraints`` table: for
each parameter of its ``__init__``, the constraints (:class:`Interval`, :class:`Options`,
:class:`Instances`, :class:`Satisfies` or ``None``) of which a value must meet one. ``fit`` checks
them first with :func:`check_params`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real

import numpy as np

from ..boxes import N_DIMS, BoxSet
from ..errors import InvalidArgument, NotFittedError


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


class Interval:
    """Numbers from ``left`` to ``right``; ``closed`` names the ends included: "both", "left",
    "right" or "neither". A bound of None leaves that side open, infinity excluded, as
    scikit-learn reads it. ``kind`` is ``int`` (Python and numpy integers), ``float`` (Python
    floats, numpy float64 included: what scikit-learn reads as a fraction) or ``numbers.Real``
    (any of those, and numpy's other floats). Booleans and NaN are in no interval."""

    def __init__(
        self, kind: type, left: float | None = None, right: float | None = None, *, closed: str = "both"
    ):
        self.kind, self.left, self.right, self.closed = kind, left, right, closed

    def accepts(self, value: object) -> bool:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
            return False
        if self.kind is int and not isinstance(value, Integral):
            return False
        if self.kind is float and not isinstance(value, float):
            return False
        if self.left is None:
            above = value > -math.inf
        else:
            above = self.left <= value if self._closed_left else self.left < value
        if self.right is None:
            below = value < math.inf
        else:
            below = value <= self.right if self._closed_right else value < self.right
        return bool(above and below)

    @property
    def _closed_left(self) -> bool:
        return self.closed in ("both", "left")

    @property
    def _closed_right(self) -> bool:
        return self.closed in ("both", "right")

    def describe(self) -> list[str]:
        noun = {int: "an integer", float: "a float"}.get(self.kind, "a number")
        if self.left is not None and self.right is not None:
            return [
                f"{noun} in {'[' if self._closed_left else '('}{self.left}, {self.right}"
                f"{']' if self._closed_right else ')'}"
            ]
        if self.left is not None:
            return [f"{noun} {'>=' if self._closed_left else '>'} {self.left}"]
        if self.right is not None:
            return [f"{noun} {'<=' if self._closed_right else '<'} {self.right}"]
        return [noun]


class Options:
    """One of a few values, compared with ``==`` (so ``True`` also matches ``1``)."""

    def __init__(self, *values):
        self.values = values

    def accepts(self, value: object) -> bool:
        try:
            return value in frozenset(self.values)
        except TypeError:  # unhashable: a list, an array
            return False

    def describe(self) -> list[str]:
        return [repr(v) for v in self.values]


class Instances:
    """An instance of ``types``; ``description`` names them for the user."""

    def __init__(self, types: type | tuple[type, ...], description: str):
        self.types, self.description = types, description

    def accepts(self, value: object) -> bool:
        return isinstance(value, self.types)

    def describe(self) -> list[str]:
        return [self.description]


class Satisfies:
    """A value for which ``predicate`` is true; ``description`` says what that means."""

    def __init__(self, predicate: Callable[[object], bool], description: str):
        self.predicate, self.description = predicate, description

    def accepts(self, value: object) -> bool:
        return bool(self.predicate(value))

    def describe(self) -> list[str]:
        return [self.description]


def check_params(estimator) -> None:
    """:class:`InvalidArgument` naming the first parameter of ``estimator`` that meets none of
    its class's ``_parameter_constraints``, its value, and what is allowed."""
    for name, constraints in type(estimator)._parameter_constraints.items():
        value = getattr(estimator, name)
        if any(value is None if c is None else c.accepts(value) for c in constraints):
            continue
        allowed = [text for c in constraints for text in (["None"] if c is None else c.describe())]
        either = allowed[0] if len(allowed) == 1 else f"{', '.join(allowed[:-1])} or {allowed[-1]}"
        raise InvalidArgument(f"{name} must be {either}, got {value!r}")


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
