"""scikit-learn trees and forests, re-expressed as box sets.

A fitted decision tree partitions the code space into axis-aligned cells, one per leaf, so the
leaves that predict the positive class are exactly a union of boxes. Once a tree is a
:class:`~engine.boxes.BoxSet`, it compiles to SQL and ``Catalog.select`` can skip blocks through
the block index instead of scoring every row; a forest becomes one member per tree.

The conversion is exact on uint8 codes. scikit-learn sends a row left when
``x <= threshold`` with a float threshold such as ``12.5``; for an integer ``x`` that is
``x <= floor(threshold)``, and going right is ``x >= floor(threshold) + 1``.
"""

from __future__ import annotations

from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from ..boxes import N_DIMS, BoxSet
from ..errors import InvalidArgument
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

_LEAF = -1  # sklearn.tree._tree.TREE_LEAF: the child id stored at a leaf


def _tree_arrays(tree):
    """The low-level ``sklearn.tree._tree.Tree`` of a fitted tree (or the Tree itself)."""
    t = getattr(tree, "tree_", tree)
    if not hasattr(t, "children_left"):
        raise ValueError(f"expected a fitted DecisionTreeClassifier or its tree_, got {type(tree).__name__}")
    if t.n_outputs != 1:
        raise ValueError(f"only single-output trees convert to boxes, this one has {t.n_outputs} outputs")
    return t


def _positive_leaves(t, positive_class_index: int) -> np.ndarray:
    """Ids of the leaves whose prediction is class ``positive_class_index``: intp (k,).

    Uses ``np.argmax`` over the stored leaf values, exactly as ``DecisionTreeClassifier.predict``
    does, so ties resolve the same way: the lowest class index wins.
    """
    value = t.value[:, 0, :]
    if not 0 <= positive_class_index < value.shape[1]:
        raise ValueError(
            f"positive_class_index {positive_class_index} is out of range for a tree with {value.shape[1]} classes"
        )
    leaves = np.flatnonzero(t.children_left == _LEAF)
    return leaves[np.argmax(value[leaves], axis=1) == positive_class_index]


def _leaf_bounds(
    left: np.ndarray,
    right: np.ndarray,
    feature: np.ndarray,
    threshold: np.ndarray,
    leaves: np.ndarray,
    n_dims: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive integer bounds of each leaf's cell: two int16 arrays of shape (len(leaves), n_dims).

    The node arrays may hold several trees side by side (child ids already offset); roots are
    the nodes no one points to. All leaves climb to their roots together, one level per step,
    so the Python loop runs depth-many times whatever the number of leaves. Bounds live in int16
    because a cut below 0 or above 254 makes an empty range (hi = -1 or lo = 256) that uint8
    cannot hold; such a leaf holds no integer point and the caller drops it.
    """
    parent = np.full(left.size, -1, np.intp)
    internal = np.flatnonzero(left != _LEAF)
    parent[left[internal]] = internal
    parent[right[internal]] = internal
    cut = np.clip(np.floor(threshold), -1, 255).astype(np.int16)

    # Climb first, recording one (leaf row, ancestor) pair per edge; then apply every cut in one
    # unbuffered min/max, which handles a dim constrained several times along a path.
    steps_row, steps_node, steps_up = [], [], []
    rows = np.arange(leaves.size)
    node = leaves.astype(np.intp)
    while rows.size:
        up = parent[node]
        climbing = up >= 0
        rows, node, up = rows[climbing], node[climbing], up[climbing]
        steps_row.append(rows)
        steps_node.append(node)
        steps_up.append(up)
        node = up
    lo = np.zeros((leaves.size, n_dims), np.int16)
    hi = np.full((leaves.size, n_dims), 255, np.int16)
    if steps_row:
        rows, node, up = np.concatenate(steps_row), np.concatenate(steps_node), np.concatenate(steps_up)
        flat = rows * n_dims + feature[up]
        went_left = left[up] == node
        np.minimum.at(hi.reshape(-1), flat[went_left], cut[up[went_left]])
        np.maximum.at(lo.reshape(-1), flat[~went_left], cut[up[~went_left]] + 1)
    return lo, hi


def _non_empty(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.all(lo <= hi, axis=1)


def tree_boxes(tree, positive_class_index: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the leaves of ``tree`` that predict class index ``positive_class_index``.

    Parameters
    ----------
    tree : fitted ``DecisionTreeClassifier`` or its ``tree_``
        Trained on integer codes; ``positive_class_index`` indexes its ``classes_`` (for a tree
        inside a forest, the forest's ``classes_``).

    Returns
    -------
    lo, hi : ndarray of uint8, shape (n_boxes, n_features)
        Inclusive bounds, one row per positive leaf whose cell holds at least one integer
        point; ``BoxSet.from_arrays(lo, hi)`` is the tree's positive region on uint8 codes.
    """
    t = _tree_arrays(tree)
    leaves = _positive_leaves(t, positive_class_index)
    lo, hi = _leaf_bounds(t.children_left, t.children_right, t.feature, t.threshold, leaves, t.n_features)
    keep = _non_empty(lo, hi)
    return lo[keep].astype(np.uint8), hi[keep].astype(np.uint8)


def forest_boxes(forest, positive_class_index: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of every tree of a fitted forest, with the tree index as member.

    All trees climb together through one concatenated node array, so a forest costs about as
    many numpy passes as its deepest tree. Returns ``lo, hi`` (uint8, (n_boxes, n_features)) and
    ``members`` (int64, (n_boxes,)).
    """
    trees = [_tree_arrays(e) for e in forest.estimators_]
    if not trees:
        empty = np.zeros((0, getattr(forest, "n_features_in_", N_DIMS)), np.uint8)
        return empty, empty.copy(), np.zeros(0, np.int64)
    offsets = np.cumsum([0] + [t.node_count for t in trees])
    left, right, leaves, members = [], [], [], []
    for i, t in enumerate(trees):
        off = offsets[i]
        left.append(np.where(t.children_left == _LEAF, _LEAF, t.children_left + off))
        right.append(np.where(t.children_right == _LEAF, _LEAF, t.children_right + off))
        pos = _positive_leaves(t, positive_class_index)
        leaves.append(pos + off)
        members.append(np.full(pos.size, i, np.int64))
    lo, hi = _leaf_bounds(
        np.concatenate(left),
        np.concatenate(right),
        np.concatenate([t.feature for t in trees]),
        np.concatenate([t.threshold for t in trees]),
        np.concatenate(leaves),
        trees[0].n_features,
    )
    keep = _non_empty(lo, hi)
    return lo[keep].astype(np.uint8), hi[keep].astype(np.uint8), np.concatenate(members)[keep]


def _positive_index(classes: np.ndarray) -> int | None:
    """Column of class 1 in a fitted model's ``classes_``; None when y held only zeros."""
    where = np.flatnonzero(np.asarray(classes) == 1)
    return int(where[0]) if where.size else None


def _check_fit_inputs(X, y, sample_weight) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes as float32 (what sklearn trees compute on), labels as int64 0/1, weights float64."""
    codes = check_codes(X)
    labels = check_labels(y, len(codes)).astype(np.int64)
    weights = check_weights(sample_weight, len(codes))
    if not len(codes):
        raise InvalidArgument("X is empty; fit needs at least one labelled row")
    if not weights.sum() > 0:
        raise InvalidArgument("sample_weight is zero everywhere; give at least one row a positive weight")
    return codes.astype(np.float32), labels, weights


def _empty_boxes() -> BoxSet:
    empty = np.zeros((0, N_DIMS), np.uint8)
    return BoxSet.from_arrays(empty, empty)


def _is_class_weights(value: object) -> bool:
    return isinstance(value, dict) and all(
        Options(0, 1).accepts(label) and Interval(Real, 0).accepts(weight) for label, weight in value.items()
    )


_CLASS_WEIGHTS = Satisfies(_is_class_weights, "a dict of finite weights >= 0 for the labels 0 and 1")


# The parameters TreeBoxes and ForestBoxes share, constrained as scikit-learn (1.4 and later)
# constrains them, except that booleans are not numbers, class weights are for the labels 0 and 1,
# and n_jobs is not 0, so that a value fit passes on is one scikit-learn accepts.
_TREE_CONSTRAINTS = {
    "criterion": [Options("gini", "entropy", "log_loss")],
    "max_depth": [None, Interval(int, 1)],
    "min_samples_split": [Interval(int, 2), Interval(float, 0, 1, closed="right")],
    "min_samples_leaf": [Interval(int, 1), Interval(float, 0, 1, closed="neither")],
    "max_features": [None, Interval(int, 1), Interval(float, 0, 1, closed="right"), Options("sqrt", "log2")],
    "max_leaf_nodes": [None, Interval(int, 2)],
    "min_impurity_decrease": [Interval(Real, 0)],
    "class_weight": [None, Options("balanced"), _CLASS_WEIGHTS],
    "ccp_alpha": [Interval(Real, 0)],
    "random_state": [
        None,
        Interval(int, 0, 2**32 - 1),
        Instances(np.random.RandomState, "a numpy RandomState"),
    ],
}


class _WrappedBoxes(BoxClassifierMixin, ClassifierMixin, BaseEstimator):
    def sklearn_predict(self, X) -> np.ndarray:
        """The wrapped model's own ``predict`` on codes: int64 (n,). For a tree the boxes
        reproduce it exactly; a forest's is the soft vote (see :class:`ForestBoxes`)."""
        self._check_fitted()
        return self.estimator_.predict(check_codes(X).astype(np.float32)).astype(np.int64)


class TreeBoxes(_WrappedBoxes):
    """A scikit-learn ``DecisionTreeClassifier`` on codes, exposed as one member's boxes.

    Parameters are those of ``DecisionTreeClassifier``, passed through unchanged. After ``fit``,
    ``predict`` computed from ``boxes_`` equals ``estimator_.predict`` on every uint8 code, seen
    in training or not.

    Attributes
    ----------
    estimator_ : DecisionTreeClassifier
        The fitted tree, trained on the codes as float32 and 0/1 labels.
    boxes_ : BoxSet
        One box per positive leaf, all in member 0; empty when no leaf predicts 1.
    min_votes_ : int
        Always 1.
    classes_ : ndarray, [0, 1]
    n_features_in_ : int, 32
    """

    _parameter_constraints = {**_TREE_CONSTRAINTS, "splitter": [Options("best", "random")]}

    def __init__(
        self,
        *,
        criterion: str = "gini",
        splitter: str = "best",
        max_depth: int | None = None,
        min_samples_split: int | float = 2,
        min_samples_leaf: int | float = 1,
        max_features: int | float | str | None = None,
        max_leaf_nodes: int | None = None,
        min_impurity_decrease: float = 0.0,
        class_weight: dict | str | None = None,
        ccp_alpha: float = 0.0,
        random_state=None,
    ):
        self.criterion = criterion
        self.splitter = splitter
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.max_leaf_nodes = max_leaf_nodes
        self.min_impurity_decrease = min_impurity_decrease
        self.class_weight = class_weight
        self.ccp_alpha = ccp_alpha
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None) -> TreeBoxes:
        """Fit the tree on uint8 codes (n, 32) and binary labels, then compile its positive leaves."""
        check_params(self)
        codes, labels, weights = _check_fit_inputs(X, y, sample_weight)
        tree = DecisionTreeClassifier(**self.get_params()).fit(codes, labels, sample_weight=weights)
        k = _positive_index(tree.classes_)
        boxes = _empty_boxes() if k is None else BoxSet.from_arrays(*tree_boxes(tree, k))
        self.estimator_ = tree
        return self._set_fitted(boxes, 1)


class ForestBoxes(_WrappedBoxes):
    """A scikit-learn ``RandomForestClassifier`` on codes, one box-set member per tree.

    A row is positive when more than half of the trees predict 1 for it (hard majority voting):
    ``decision_function`` counts the trees voting 1 and ``min_votes_ = n_trees // 2 + 1``. That
    rule is what a box set can express and what the compiled SQL evaluates.

    scikit-learn's own ``RandomForestClassifier.predict`` averages the trees' class
    probabilities instead (soft voting), so it can disagree with ``predict`` here on rows where
    the trees are split; ``sklearn_predict`` gives that original answer, e.g. as a baseline.

    Parameters are those of ``RandomForestClassifier``, passed through unchanged, except that
    ``n_estimators`` defaults to 25 to keep the compiled SQL short.

    Attributes
    ----------
    estimator_ : RandomForestClassifier
        The fitted forest, trained on the codes as float32 and 0/1 labels.
    boxes_ : BoxSet
        The positive leaves of every tree; member ``i`` is ``estimator_.estimators_[i]``.
    min_votes_ : int
        ``n_estimators // 2 + 1``.
    classes_ : ndarray, [0, 1]
    n_features_in_ : int, 32
    """

    _parameter_constraints = {
        **_TREE_CONSTRAINTS,
        "n_estimators": [Interval(int, 1)],
        "bootstrap": [Instances((bool, np.bool_), "True or False")],
        "max_samples": [None, Interval(int, 1), Interval(float, 0, 1, closed="right")],
        "class_weight": [None, Options("balanced", "balanced_subsample"), _CLASS_WEIGHTS],
        "n_jobs": [None, Interval(int, None, -1), Interval(int, 1)],
    }

    def __init__(
        self,
        *,
        n_estimators: int = 25,
        criterion: str = "gini",
        max_depth: int | None = None,
        min_samples_split: int | float = 2,
        min_samples_leaf: int | float = 1,
        max_features: int | float | str | None = "sqrt",
        max_leaf_nodes: int | None = None,
        min_impurity_decrease: float = 0.0,
        bootstrap: bool = True,
        max_samples: int | float | None = None,
        class_weight: dict | str | None = None,
        ccp_alpha: float = 0.0,
        n_jobs: int | None = None,
        random_state=None,
    ):
        self.n_estimators = n_estimators
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.max_leaf_nodes = max_leaf_nodes
        self.min_impurity_decrease = min_impurity_decrease
        self.bootstrap = bootstrap
        self.max_samples = max_samples
        self.class_weight = class_weight
        self.ccp_alpha = ccp_alpha
        self.n_jobs = n_jobs
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None) -> ForestBoxes:
        """Fit the forest on uint8 codes (n, 32) and binary labels, then compile every tree."""
        check_params(self)
        if self.max_samples is not None and not self.bootstrap:
            raise InvalidArgument(
                f"max_samples must be None when bootstrap is False, got {self.max_samples!r}"
            )
        codes, labels, weights = _check_fit_inputs(X, y, sample_weight)
        forest = RandomForestClassifier(**self.get_params()).fit(codes, labels, sample_weight=weights)
        # Trees inside a forest are trained on the forest's encoded labels, so their value
        # columns follow forest.classes_ even when a bootstrap sample missed a class.
        k = _positive_index(forest.classes_)
        boxes = _empty_boxes() if k is None else BoxSet.from_arrays(*forest_boxes(forest, k))
        self.estimator_ = forest
        return self._set_fitted(boxes, len(forest.estimators_) // 2 + 1)
