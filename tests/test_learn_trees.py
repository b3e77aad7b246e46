"""TreeBoxes / ForestBoxes: scikit-learn trees as box sets, checked against sklearn itself.

The oracle is always the wrapped sklearn model: a tree's own ``predict`` and, for a forest, the
hard majority of its trees' ``predict``. Codes come from narrow value ranges at both ends of
0..255 so thresholds collide, bounds reach 0 and 255, and duplicated rows carry conflicting
labels.
"""

from __future__ import annotations

import pickle
import re

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from engine.boxes import BoxSet
from engine.errors import CatalogError, InvalidArgument
from engine.learn.base import NotFittedError, box_votes
from engine.learn.trees import ForestBoxes, TreeBoxes, forest_boxes, tree_boxes

N_DIMS = 32
NARROW = np.array([0, 1, 2, 3, 4, 5, 250, 251, 252, 253, 254, 255], dtype=np.uint8)


def _narrow_codes(rng: np.random.Generator, n: int, n_live: int) -> np.ndarray:
    """Codes whose first ``n_live`` dims take values in NARROW; the rest are constant."""
    codes = np.full((n, N_DIMS), 7, np.uint8)
    codes[:, :n_live] = rng.choice(NARROW, size=(n, n_live))
    return codes


@st.composite
def datasets(draw, max_rows: int = 40):
    """(X, y, sample_weight or None, Z): training data with duplicates and probes."""
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.integers(1, max_rows))
    n_live = draw(st.integers(1, 6))
    rng = np.random.default_rng(seed)
    X = _narrow_codes(rng, n, n_live)
    y = rng.random(n) < draw(st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]))
    n_dup = draw(st.integers(0, n))
    if n_dup:
        # Same codes, opposite labels: leaves that cannot be pure.
        X = np.concatenate([X, X[:n_dup]])
        y = np.concatenate([y, ~y[:n_dup]])
    w = None
    if draw(st.booleans()):
        w = rng.choice([0.0, 0.5, 1.0, 2.0, 3.0], size=len(X))
        w[rng.integers(len(X))] = 1.0
    # Probes: the training rows, fresh narrow codes, and codes from anywhere in 0..255.
    Z = np.concatenate(
        [X, _narrow_codes(rng, 60, N_DIMS), rng.integers(0, 256, (40, N_DIMS), dtype=np.uint8)]
    )
    return X, y.astype(np.int64), w, Z


def _hard_votes(forest, Z: np.ndarray) -> np.ndarray:
    """Number of trees whose own predict says 1, mapped through the forest's classes_."""
    Zf = Z.astype(np.float32)
    return np.sum([forest.classes_.take(t.predict(Zf).astype(np.intp)) for t in forest.estimators_], axis=0)


def _sql_ids(boxes: BoxSet, min_votes: int, Z: np.ndarray, ids: np.ndarray) -> list[tuple[int, int]]:
    """Run the compiled SQL in plain DuckDB over a ``codes`` table built from ``Z``."""
    pos = np.random.default_rng(len(Z)).permutation(len(Z)).astype(np.int64)
    con = duckdb.connect()
    try:
        table = pa.table({"pos": pos, "id": ids, **{f"f{d:02d}": Z[:, d] for d in range(N_DIMS)}})
        con.register("codes_arrow", table)
        con.execute("CREATE TABLE codes AS SELECT * FROM codes_arrow")
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns").fetchall())
        assert types["pos"] == "BIGINT" and types["id"] == "BIGINT" and types["f00"] == "UTINYINT"
        return con.execute(boxes.to_sql("codes", min_votes=min_votes)).fetchall()
    finally:
        con.close()


# -- agreement with sklearn -------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(
    datasets(),
    st.sampled_from([None, 1, 2, 4]),
    st.sampled_from([1, 2, 3]),
    st.sampled_from([None, "balanced", {0: 1.0, 1: 3.0}]),
    st.integers(0, 1000),
)
def test_tree_predict_equals_sklearn_tree(data, max_depth, min_samples_leaf, class_weight, seed):
    X, y, w, Z = data
    model = TreeBoxes(
        max_depth=max_depth, min_samples_leaf=min_samples_leaf, class_weight=class_weight, random_state=seed
    ).fit(X, y, sample_weight=w)
    expected = model.estimator_.predict(Z.astype(np.float32))
    np.testing.assert_array_equal(model.predict(Z), expected)
    np.testing.assert_array_equal(model.sklearn_predict(Z), expected)
    assert model.predict(Z).dtype == np.int64
    assert set(np.unique(model.boxes_.members).tolist()) <= {0}
    assert model.min_votes_ == 1
    # Every integer point lies in exactly one leaf, so the two classes' boxes tile the space.
    if len(model.estimator_.classes_) == 2:
        negative = BoxSet.from_arrays(*tree_boxes(model.estimator_, 0))
        np.testing.assert_array_equal(box_votes(negative, Z) + model.decision_function(Z), 1)


@settings(max_examples=40, deadline=None)
@given(
    datasets(),
    st.sampled_from([1, 2, 5, 6]),
    st.sampled_from([None, 2, 4]),
    st.sampled_from([None, 1]),
    st.booleans(),
    st.integers(0, 1000),
)
def test_forest_is_the_hard_majority_of_its_trees(
    data, n_estimators, max_depth, max_samples, bootstrap, seed
):
    X, y, w, Z = data
    model = ForestBoxes(
        n_estimators=n_estimators,
        max_depth=max_depth,
        bootstrap=bootstrap,
        max_samples=max_samples if bootstrap else None,
        random_state=seed,
    )
    model.fit(X, y, sample_weight=w)
    votes = _hard_votes(model.estimator_, Z)
    np.testing.assert_array_equal(model.decision_function(Z), votes)
    assert model.min_votes_ == n_estimators // 2 + 1
    np.testing.assert_array_equal(model.predict(Z), (2 * votes > n_estimators).astype(np.int64))
    assert set(model.boxes_.members.tolist()) <= set(range(n_estimators))
    assert model.sklearn_predict(Z).shape == (len(Z),)


@settings(max_examples=30, deadline=None)
@given(datasets(), st.sampled_from(["tree", "forest"]), st.integers(0, 1000))
def test_compiled_sql_returns_the_predicted_ids(data, kind, seed):
    X, y, w, Z = data
    if kind == "tree":
        model = TreeBoxes(random_state=seed).fit(X, y, sample_weight=w)
    else:
        model = ForestBoxes(n_estimators=5, max_depth=3, random_state=seed).fit(X, y, sample_weight=w)
    ids = np.arange(len(Z), dtype=np.int64) * 7 - 50
    rows = _sql_ids(model.boxes_, model.min_votes_, Z, ids)
    assert sorted(i for i, _ in rows) == sorted(ids[model.predict(Z) == 1].tolist())
    if model.boxes_.n_members > 1:
        votes = dict(zip(ids.tolist(), model.decision_function(Z).tolist(), strict=True))
        assert all(v == votes[i] for i, v in rows)


# -- the converter itself ---------------------------------------------------------------------
FLOAT_VALUES = [-3.0, -1.0, -0.4, 0.0, 0.3, 0.7, 1.0, 2.5, 128.0, 254.2, 254.9, 255.0, 255.6, 256.0, 300.0]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 40), st.sampled_from([None, 2, 5]))
def test_tree_boxes_exact_on_integers_for_any_float_thresholds(seed, n, max_depth):
    """Trained on floats outside 0..255, some leaves hold no integer code and are dropped."""
    rng = np.random.default_rng(seed)
    X = np.full((n, N_DIMS), 7.0)
    X[:, :4] = rng.choice(FLOAT_VALUES, size=(n, 4))
    y = rng.integers(0, 2, n)
    tree = DecisionTreeClassifier(max_depth=max_depth, random_state=0).fit(X, y)
    Z = np.concatenate([rng.integers(0, 256, (50, N_DIMS)), rng.choice([0, 1, 2, 3, 254, 255], (80, N_DIMS))])
    Z = Z.astype(np.uint8)
    k = int(np.flatnonzero(tree.classes_ == 1)[0]) if 1 in tree.classes_ else None
    lo, hi = tree_boxes(tree, k) if k is not None else (np.zeros((0, N_DIMS), np.uint8),) * 2
    assert lo.dtype == hi.dtype == np.uint8 and lo.shape == hi.shape and (lo <= hi).all()
    np.testing.assert_array_equal(
        box_votes(BoxSet.from_arrays(lo, hi), Z), tree.predict(Z.astype(np.float64)) == 1
    )


def test_tree_boxes_drops_leaves_without_integer_points():
    X = np.zeros((4, N_DIMS))
    X[:, 0] = [-1.0, -1.0, 0.0, 0.0]  # threshold -0.5: the left leaf is x <= -1
    tree = DecisionTreeClassifier().fit(X, [1, 1, 0, 0])
    lo, hi = tree_boxes(tree)
    assert lo.shape == (0, N_DIMS)
    lo, hi = tree_boxes(tree, 0)
    assert BoxSet.from_arrays(lo, hi).box(0) == {}  # x >= 0 is every code


def test_tree_boxes_bounds_at_0_and_255():
    X = np.zeros((4, N_DIMS), np.float32)
    X[:, 0] = [0, 1, 254, 255]
    tree = DecisionTreeClassifier().fit(X, [1, 0, 0, 1])
    boxes = BoxSet.from_arrays(*tree_boxes(tree.tree_))
    assert sorted((boxes.box(i) for i in range(len(boxes))), key=str) == [{0: (0, 0)}, {0: (255, 255)}]


def test_tree_boxes_accepts_tree_or_estimator_and_checks_arguments():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 256, (50, N_DIMS)).astype(np.float32)
    y = rng.integers(0, 2, 50)
    tree = DecisionTreeClassifier(random_state=0).fit(X, y)
    a, b = tree_boxes(tree), tree_boxes(tree.tree_)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="out of range"):
        tree_boxes(tree, 2)
    with pytest.raises(ValueError, match="single-output"):
        tree_boxes(DecisionTreeClassifier().fit(X, np.stack([y, 1 - y], axis=1)))
    with pytest.raises(ValueError, match="fitted"):
        tree_boxes(object())
    assert tree_boxes(DecisionTreeRegressor(max_depth=1).fit(X, y), 0)[0].shape[1] == N_DIMS


def test_forest_members_are_the_trees(rng):
    X = rng.integers(0, 256, (300, N_DIMS), dtype=np.uint8)
    y = (X[:, 0].astype(int) + X[:, 1] > 255).astype(int)
    model = ForestBoxes(n_estimators=7, random_state=1).fit(X, y)
    lo, hi, members = forest_boxes(model.estimator_)
    assert BoxSet.from_arrays(lo, hi, members) == model.boxes_
    for i, t in enumerate(model.estimator_.estimators_):
        t_lo, t_hi = tree_boxes(t)
        np.testing.assert_array_equal(lo[members == i], t_lo)
        np.testing.assert_array_equal(hi[members == i], t_hi)


def test_sklearn_predict_is_the_soft_vote(rng):
    X = rng.integers(0, 256, (300, N_DIMS), dtype=np.uint8)
    y = (X[:, 0] > 128).astype(int) ^ (rng.random(300) < 0.3)
    model = ForestBoxes(n_estimators=6, max_depth=3, random_state=0).fit(X, y)
    Z = rng.integers(0, 256, (500, N_DIMS), dtype=np.uint8)
    np.testing.assert_array_equal(model.sklearn_predict(Z), model.estimator_.predict(Z.astype(np.float32)))
    assert model.min_votes_ == 4  # 3 of 6 trees is a tie, and a tie is not a majority


# -- single-class labels ----------------------------------------------------------------------
@pytest.mark.parametrize("Model", [TreeBoxes, ForestBoxes])
def test_all_positive_labels_give_full_boxes(Model, rng):
    X = rng.integers(0, 256, (20, N_DIMS), dtype=np.uint8)
    model = Model(random_state=0).fit(X, np.ones(20, int))
    n_members = 25 if Model is ForestBoxes else 1
    assert len(model.boxes_) == n_members and all(model.boxes_.box(i) == {} for i in range(n_members))
    Z = rng.integers(0, 256, (30, N_DIMS), dtype=np.uint8)
    np.testing.assert_array_equal(model.predict(Z), 1)
    np.testing.assert_array_equal(model.decision_function(Z), n_members)
    np.testing.assert_array_equal(model.sklearn_predict(Z), 1)
    assert sorted(i for i, _ in _sql_ids(model.boxes_, model.min_votes_, Z, np.arange(30))) == list(range(30))


@pytest.mark.parametrize("Model", [TreeBoxes, ForestBoxes])
def test_all_negative_labels_give_no_boxes(Model, rng):
    X = rng.integers(0, 256, (20, N_DIMS), dtype=np.uint8)
    model = Model(random_state=0).fit(X, np.zeros(20, int))
    assert len(model.boxes_) == 0 and model.boxes_.n_dims == N_DIMS
    Z = rng.integers(0, 256, (30, N_DIMS), dtype=np.uint8)
    np.testing.assert_array_equal(model.predict(Z), 0)
    np.testing.assert_array_equal(model.sklearn_predict(Z), 0)
    assert _sql_ids(model.boxes_, model.min_votes_, Z, np.arange(30)) == []


@pytest.mark.parametrize("labels", [[False, True] * 5, [-1, 1] * 5, [0, 1] * 5])
def test_label_forms(labels, rng):
    X = rng.integers(0, 256, (10, N_DIMS), dtype=np.uint8)
    model = TreeBoxes().fit(X, np.asarray(labels))
    np.testing.assert_array_equal(model.predict(X), [0, 1] * 5)
    np.testing.assert_array_equal(model.classes_, [0, 1])
    assert model.n_features_in_ == N_DIMS


# -- the estimator contract -------------------------------------------------------------------
@pytest.mark.parametrize("Model", [TreeBoxes, ForestBoxes])
def test_clone_and_params(Model):
    model = Model(max_depth=3, min_samples_leaf=2, random_state=7)
    params = model.get_params()
    assert params["max_depth"] == 3 and params["min_samples_leaf"] == 2 and params["random_state"] == 7
    copy = clone(model)
    assert copy.get_params() == params and copy is not model
    copy.set_params(max_depth=5)
    assert copy.max_depth == 5 and model.max_depth == 3
    if Model is ForestBoxes:
        assert Model().n_estimators == 25 and Model().max_features == "sqrt"
    with pytest.raises(TypeError):
        Model(3)


@pytest.mark.parametrize("Model", [TreeBoxes, ForestBoxes])
def test_unfitted_raises(Model):
    Z = np.zeros((3, N_DIMS), np.uint8)
    for method in ("predict", "decision_function", "sklearn_predict"):
        with pytest.raises(NotFittedError, match="fit"):
            getattr(Model(), method)(Z)
    assert not hasattr(clone(Model(random_state=0).fit(Z, [0, 1, 1])), "boxes_")


GOOD_X = np.zeros((6, N_DIMS), np.uint8)
GOOD_Y = np.array([0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("Model", [TreeBoxes, ForestBoxes])
@pytest.mark.parametrize(
    "X, y, w, match",
    [
        (np.zeros((6, 31), np.uint8), GOOD_Y, None, "shape"),
        (np.zeros(N_DIMS, np.uint8), GOOD_Y[:1], None, "shape"),
        (np.full((6, N_DIMS), 0.5), GOOD_Y, None, "integer codes"),
        (np.full((6, N_DIMS), -1), GOOD_Y, None, "integer codes"),
        (np.full((6, N_DIMS), 256), GOOD_Y, None, "integer codes"),
        (GOOD_X, np.array([0, 1, 2, 0, 1, 2]), None, "binary"),
        (GOOD_X, GOOD_Y[:5], None, "shape"),
        (GOOD_X, GOOD_Y, -np.ones(6), "non-negative"),
        (GOOD_X, GOOD_Y, np.array([1, 1, 1, 1, 1, np.nan]), "finite"),
        (GOOD_X, GOOD_Y, np.ones(5), "shape"),
        (GOOD_X, GOOD_Y, np.zeros(6), "positive weight"),
        (np.zeros((0, N_DIMS), np.uint8), np.zeros(0, int), None, "empty"),
    ],
)
def test_bad_input_is_refused(Model, X, y, w, match):
    with pytest.raises(CatalogError, match=match):
        Model().fit(X, y, sample_weight=w)


@pytest.mark.parametrize("Model", [TreeBoxes, ForestBoxes])
def test_bad_query_codes_are_refused(Model):
    model = Model(random_state=0).fit(GOOD_X, GOOD_Y)
    with pytest.raises(CatalogError, match="shape"):
        model.predict(np.zeros((2, 30), np.uint8))
    with pytest.raises(CatalogError, match="shape"):
        model.sklearn_predict(np.zeros((2, 30), np.uint8))


@pytest.mark.parametrize("Model", [TreeBoxes, ForestBoxes])
def test_fixed_seed_is_reproducible(Model, rng):
    X = rng.integers(0, 256, (200, N_DIMS), dtype=np.uint8)
    y = (X[:, 3] > 100).astype(int) ^ (rng.random(200) < 0.2)
    params = {"max_features": 4, "random_state": 11}
    a = Model(**params).fit(X, y)
    b = Model(**params).fit(X, y)
    c = pickle.loads(pickle.dumps(a))
    assert a.boxes_ == b.boxes_ == c.boxes_ and len(a.boxes_) > 0
    assert a.min_votes_ == b.min_votes_ == c.min_votes_
    Z = rng.integers(0, 256, (100, N_DIMS), dtype=np.uint8)
    np.testing.assert_array_equal(a.predict(Z), c.predict(Z))
    assert clone(a).fit(X, y).boxes_ == a.boxes_


# -- parameter constraints, checked at fit before scikit-learn sees them -------------------------
BAD_COMMON_PARAMS = {
    "criterion": ["mse", "GINI", None, 1],
    "max_depth": [0, -1, 1.5, "3", True],
    "min_samples_split": [1, 0, 0.0, 1.5, "2", True],
    "min_samples_leaf": [0, 0.0, 1.0, -1, "1", True, np.float32(0.5)],
    "max_features": [0, 0.0, 1.5, "all", "auto", True],
    "max_leaf_nodes": [1, 0, 2.5, "10", True],
    "min_impurity_decrease": [-0.1, float("inf"), "0", None, True],
    "class_weight": [{2: 1.0}, {0: -1.0}, {0: "a"}, {1: float("inf")}, [{0: 1, 1: 1}], "weighted"],
    "ccp_alpha": [-1, float("nan"), float("inf"), "0", None, True],
    "random_state": [-1, 2**32, 1.5, "x", True, np.random.default_rng(0)],
}
BAD_PARAMS = {
    TreeBoxes: {
        **BAD_COMMON_PARAMS,
        "class_weight": [*BAD_COMMON_PARAMS["class_weight"], "balanced_subsample"],
        "splitter": ["fast", None, 1],
    },
    ForestBoxes: {
        **BAD_COMMON_PARAMS,
        "n_estimators": [0, -3, 2.5, "25", True, None],
        "bootstrap": [1, 0, "yes", None],
        "max_samples": [0, 0.0, -1, 1.5, "all", True],
        "n_jobs": [0, 1.5, "2", True],
    },
}


@pytest.mark.parametrize(
    "Model, name, value",
    [
        pytest.param(Model, name, value, id=f"{Model.__name__}-{name}-{i}")
        for Model, table in BAD_PARAMS.items()
        for name, values in table.items()
        for i, value in enumerate(values)
    ],
)
def test_bad_parameters_raise_invalid_argument_naming_the_parameter(Model, name, value):
    model = Model(**{name: value})
    with pytest.raises(InvalidArgument) as e:
        model.fit(GOOD_X, GOOD_Y)
    message = str(e.value)
    assert message.startswith(f"{name} must be ") and message.endswith(f", got {value!r}"), message
    assert not hasattr(model, "boxes_") and not hasattr(model, "estimator_")


@pytest.mark.parametrize("Model", list(BAD_PARAMS))
def test_every_parameter_is_constrained_and_has_bad_values_tested(Model):
    assert set(Model._parameter_constraints) == set(Model().get_params()) == set(BAD_PARAMS[Model])


def test_the_constraints_say_what_is_allowed():
    with pytest.raises(
        InvalidArgument,
        match=re.escape("min_samples_leaf must be an integer >= 1 or a float in (0, 1), got 1.0"),
    ):
        TreeBoxes(min_samples_leaf=1.0).fit(GOOD_X, GOOD_Y)
    with pytest.raises(
        InvalidArgument, match=re.escape("n_jobs must be None, an integer <= -1 or an integer >= 1, got 0")
    ):
        ForestBoxes(n_jobs=0).fit(GOOD_X, GOOD_Y)


def test_max_samples_needs_bootstrap():
    with pytest.raises(InvalidArgument, match="max_samples must be None when bootstrap is False, got 0.5"):
        ForestBoxes(max_samples=0.5, bootstrap=False).fit(GOOD_X, GOOD_Y)
    assert ForestBoxes(max_samples=None, bootstrap=False, n_estimators=3, random_state=0).fit(GOOD_X, GOOD_Y)


@pytest.mark.filterwarnings("ignore:Using the fractional value max_samples")
@pytest.mark.parametrize(
    "Model, params",
    [
        (TreeBoxes, {"min_samples_split": 2, "min_samples_leaf": 1, "max_features": 1, "max_leaf_nodes": 2}),
        (TreeBoxes, {"min_samples_split": 1.0, "min_samples_leaf": 0.5, "max_features": 1.0, "ccp_alpha": 0}),
        (
            TreeBoxes,
            {
                "criterion": "log_loss",
                "splitter": "random",
                "max_features": "log2",
                "class_weight": "balanced",
                "random_state": 2**32 - 1,
            },
        ),
        (
            TreeBoxes,
            {"class_weight": {0: 1, 1: 2.5}, "random_state": np.random.RandomState(0), "max_depth": 1},
        ),
        (
            ForestBoxes,
            {
                "n_estimators": 1,
                "max_samples": 1,
                "n_jobs": -1,
                "class_weight": "balanced_subsample",
                "bootstrap": np.True_,
            },
        ),
        (
            ForestBoxes,
            {
                "n_estimators": 3,
                "max_samples": 1.0,
                "n_jobs": 1,
                "max_features": None,
                "criterion": "entropy",
                "min_impurity_decrease": 0.0,
                "class_weight": {1: 0},
            },
        ),
    ],
)
def test_the_edges_the_constraints_allow_are_ones_sklearn_fits(Model, params):
    model = Model(**params).fit(GOOD_X, GOOD_Y)
    assert model.estimator_.get_params()[next(iter(params))] is params[next(iter(params))]


def test_numpy_scalars_fit_as_the_plain_values(rng):
    X = rng.integers(0, 256, (120, N_DIMS), dtype=np.uint8)
    y = (X[:, 3] > 100).astype(int)
    plain = ForestBoxes(n_estimators=5, max_depth=4, min_samples_leaf=0.05, random_state=3).fit(X, y)
    numpy = ForestBoxes(
        n_estimators=np.int64(5),
        max_depth=np.int32(4),
        min_samples_leaf=np.float64(0.05),
        random_state=np.int64(3),
        ccp_alpha=np.float32(0),
    ).fit(X, y)
    assert numpy.boxes_ == plain.boxes_ and numpy.min_votes_ == plain.min_votes_ == 3
