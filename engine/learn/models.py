"""Decision branch classifiers with the scikit-learn estimator API.

``DecisionBranchClassifier`` is one model, ``DecisionBranchEnsemble`` 25 of them voting. Both
learn boxes over index-aware feature subsets (:func:`feature_subsets`, recorded by the catalog's
index build), and both expose the result as ``boxes_``, a :class:`~engine.boxes.BoxSet` that
``Catalog.select`` answers with pruned block scans and that compiles to SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from ..boxes import N_DIMS, BoxSet
from ..errors import InvalidArgument
from . import branches
from .base import (
    BoxClassifierMixin,
    Instances,
    Interval,
    Options,
    Satisfies,
    check_codes,
    check_labels,
    check_params,
    check_weights,
)

# bootstrap option -> kernel mode: no resampling, all rows, negatives only.
_BOOTSTRAP = {False: 0, True: 1, "negatives": 2}
# growth option -> kernel mode.
GROWTH = {"top-down": branches.TOP_DOWN, "bottom-up": branches.BOTTOM_UP}
# (subset size, how many): the original's family of 104 subsets.
DEFAULT_FAMILY = ((4, 64), (6, 32), (8, 8))


def feature_subsets(
    n_dims: int = N_DIMS, family: Sequence[tuple[int, int]] = DEFAULT_FAMILY, seed: int = 0
) -> list[tuple[int, ...]]:
    """A fixed family of distinct feature subsets: ``count`` random subsets of each ``size``,
    drawn so that every dim is used about equally often within a size."""
    rng = np.random.default_rng(seed)
    out: list[tuple[int, ...]] = []
    for size, count in family:
        if not 1 <= size <= n_dims:
            raise InvalidArgument(f"subset size {size} is outside 1..{n_dims}")
        seen: set[tuple[int, ...]] = set()
        pool: list[int] = []
        attempts = 0
        while len(seen) < count and attempts < 100 * count:
            attempts += 1
            if len(pool) < size:  # deal dims from shuffled decks: balanced usage
                pool.extend(rng.permutation(n_dims).tolist())
            pick = tuple(sorted(set(pool[:size])))
            del pool[:size]
            if len(pick) == size and pick not in seen:
                seen.add(pick)
                out.append(pick)
    return out


def recorded_subsets(index: dict | None) -> list[tuple[int, ...]]:
    """The feature subsets an index build recorded in a catalog's ``index`` settings, or the
    default family (:func:`feature_subsets`) when it recorded none."""
    recorded = (index or {}).get("feature_subsets")
    return [tuple(s) for s in recorded] if recorded else feature_subsets()


def _subset_arrays(subsets) -> tuple[np.ndarray, np.ndarray]:
    """Padded int64 (S, max_k) dims and (S,) sizes, smaller subsets first (they win ties)."""
    if subsets is None:
        subsets = feature_subsets()
    subs = []
    for s in subsets:
        try:
            dims = sorted({int(d) for d in s})
        except (TypeError, ValueError):  # not a sequence, or a dim that is not a number
            dims = []
        if not dims or dims[0] < 0 or dims[-1] >= N_DIMS:
            raise InvalidArgument(f"subsets must hold feature subsets of dims in 0..{N_DIMS - 1}, got {s!r}")
        subs.append(dims)
    if not subs:
        raise InvalidArgument("subsets is empty; give at least one feature subset")
    subs.sort(key=len)
    width = max(len(s) for s in subs)
    arr = np.full((len(subs), width), -1, np.int64)
    for i, s in enumerate(subs):
        arr[i, : len(s)] = s
    return arr, np.array([len(s) for s in subs], np.int64)


def _seed(random_state) -> int:
    """A 63-bit seed from None (fresh entropy), an integer >= 0 or a numpy Generator."""
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(2**63))
    return int(np.random.default_rng(random_state).integers(2**63))


def _is_subset_sequence(value: object) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes))


class _BranchBase(BoxClassifierMixin, ClassifierMixin, BaseEstimator):
    _parameter_constraints = {
        "subsets": [None, Satisfies(_is_subset_sequence, "a sequence of feature subsets (tuples of dims)")],
        "max_boxes": [Interval(int, 1)],
        "max_failures": [Interval(int, 1)],
        "min_pts": [Options("auto"), Interval(int, 1)],
        "subset_fraction": [Interval(Real, 0, 1, closed="right")],
        "growth": [Options(*GROWTH)],
        "random_state": [None, Interval(int, 0), Instances(np.random.Generator, "a numpy Generator")],
    }

    def _prepare(self, X, y, sample_weight):
        check_params(self)
        X = check_codes(X)
        y = check_labels(y, len(X))
        w = check_weights(sample_weight, len(X))
        if not (y & (w > 0)).any():
            raise InvalidArgument("the training set needs at least one positive with a non-zero weight")
        pos_w = np.where(y, w, 0.0)
        neg_w = np.where(y, 0.0, w)
        subsets, sizes = _subset_arrays(self.subsets)
        n_try = max(1, int(round(self.subset_fraction * len(sizes))))
        min_pts = max(1, min(50, int(1.5 * int(y.sum())))) if self.min_pts == "auto" else int(self.min_pts)
        return X, pos_w, neg_w, subsets, sizes, n_try, min_pts, GROWTH[self.growth]

    def _finish(self, boxes: BoxSet, min_votes: int, subsets: np.ndarray, sizes: np.ndarray):
        self.subsets_ = [tuple(int(d) for d in row[:k]) for row, k in zip(subsets, sizes, strict=True)]
        return self._set_fitted(boxes, min_votes)


class DecisionBranchClassifier(_BranchBase):
    """One decision branch model: a union of at most ``max_boxes`` boxes.

    Parameters
    ----------
    subsets : sequence of dim tuples, optional
        The feature subsets a box may constrain; default :func:`feature_subsets`. Pass the
        catalog's (``Catalog.feature_subsets()``) so every box is one the index prunes for.
    max_boxes : int
        Stop after this many boxes (30).
    max_failures : int
        Stop after this many seeds in a row grow no box with more positive than negative weight.
    min_pts : int or "auto"
        Distinct values tried per side when widening a dim (50); "auto" is the original's
        min(50, 1.5 x positives). With few positives that rule stops a dim from widening past
        its nearest few values: on the synthetic catalog of ``scripts/eval_feedback.py`` the
        ensemble needs ~11 positives to beat k-NN with it and ~8 with 50.
    subset_fraction : float
        Share of the subsets tried for each box (1.0: all of them).
    growth : "top-down" or "bottom-up"
        How a box grows around its seed (:mod:`engine.learn.branches`): top-down, one cut after
        another like a tree's branch (default), or bottom-up as the original code does. Bottom-up
        boxes become unbounded on a side where no training row lies beyond; for a class that is
        a fraction of a percent of the catalog, with 500 sampled negatives, that takes in other
        classes (``scripts/eval_session.py``, clusters catalog).
    random_state : None, int or numpy Generator
    """

    def __init__(
        self,
        *,
        subsets=None,
        max_boxes=30,
        max_failures=5,
        min_pts=50,
        subset_fraction=1.0,
        growth="top-down",
        random_state=None,
    ):
        self.subsets = subsets
        self.growth = growth
        self.max_boxes = max_boxes
        self.max_failures = max_failures
        self.min_pts = min_pts
        self.subset_fraction = subset_fraction
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None):
        X, pos_w, neg_w, subsets, sizes, n_try, min_pts, growth = self._prepare(X, y, sample_weight)
        lo, hi = branches.grow_model(
            X,
            pos_w,
            neg_w,
            subsets,
            sizes,
            n_try,
            int(self.max_boxes),
            int(self.max_failures),
            min_pts,
            np.uint64(_seed(self.random_state)),
            growth,
        )
        return self._finish(BoxSet.from_arrays(lo, hi), 1, subsets, sizes)


class DecisionBranchEnsemble(_BranchBase):
    """``n_estimators`` decision branch models, each on its own bootstrap sample, random stream
    and random share of the subsets per box. A row's vote count is the number of members with a
    box containing it; it is positive with more than half.

    Parameters are those of :class:`DecisionBranchClassifier`, plus ``n_estimators`` (25) and
    ``bootstrap``: ``"negatives"`` (default) keeps every positive in every member and resamples
    the negatives; ``True`` resamples all rows (each member then keeps at least one positive);
    ``False`` trains every member on all rows. ``subset_fraction`` defaults to 0.5. Members
    grow in parallel threads, and a fixed ``random_state`` gives the same boxes on any number of
    threads.

    Resampling the positives too, as a plain bootstrap does, leaves each member ~63% of the few
    labelled positives, so every member's boxes are tighter and their majority tighter still
    (``scripts/eval_session.py --models ensemble 'ensemble[bootstrap=True]'`` compares the two).
    """

    _parameter_constraints = {
        **_BranchBase._parameter_constraints,
        "n_estimators": [Interval(int, 1)],
        "bootstrap": [Options(*_BOOTSTRAP)],
    }

    def __init__(
        self,
        *,
        n_estimators=25,
        subsets=None,
        max_boxes=30,
        max_failures=5,
        min_pts=50,
        subset_fraction=0.5,
        bootstrap="negatives",
        growth="top-down",
        random_state=None,
    ):
        self.n_estimators = n_estimators
        self.growth = growth
        self.subsets = subsets
        self.max_boxes = max_boxes
        self.max_failures = max_failures
        self.min_pts = min_pts
        self.subset_fraction = subset_fraction
        self.bootstrap = bootstrap
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None):
        n = self.n_estimators
        X, pos_w, neg_w, subsets, sizes, n_try, min_pts, growth = self._prepare(X, y, sample_weight)
        seeds = np.random.default_rng(_seed(self.random_state)).integers(
            0, 2**63, size=int(n), dtype=np.uint64
        )
        lo, hi, member = branches.grow_ensemble(
            X,
            pos_w,
            neg_w,
            subsets,
            sizes,
            n_try,
            int(self.max_boxes),
            int(self.max_failures),
            min_pts,
            seeds,
            _BOOTSTRAP[self.bootstrap],
            growth,
        )
        return self._finish(BoxSet.from_arrays(lo, hi, member), int(n) // 2 + 1, subsets, sizes)
