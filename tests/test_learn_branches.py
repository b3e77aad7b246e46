"""Decision branch models: boxes, votes, compiled SQL and the block index agree; the estimator API."""

from __future__ import annotations

import functools
import re

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from engine.boxes import CODE_COLUMNS
from engine.errors import CatalogError, InvalidArgument
from engine.index import query
from engine.index.layout import kd_order, zone_maps
from engine.learn.base import NotFittedError, box_votes
from engine.learn.models import DecisionBranchClassifier, DecisionBranchEnsemble, feature_subsets

SMALL_FAMILY = [(0, 1), (2, 3, 4), (5, 6, 7, 8), (1, 9), (10, 11, 31)]


@st.composite
def datasets(draw, max_rows: int = 60):
    """Small labelled code sets with colliding values, bounds at 0/255 and weights."""
    n = draw(st.integers(2, max_rows))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["narrow", "edges", "clusters"]))
    if kind == "narrow":
        X = rng.integers(0, 6, (n, 32))
    elif kind == "edges":
        X = rng.choice([0, 1, 2, 253, 254, 255], (n, 32))
    else:
        centres = rng.integers(0, 256, (3, 32))
        X = np.clip(centres[rng.integers(0, 3, n)] + rng.integers(-8, 9, (n, 32)), 0, 255)
    y = rng.random(n) < draw(st.floats(0.05, 0.7))
    y[rng.integers(n)] = True
    w = None
    if draw(st.booleans()):
        w = rng.choice([0.5, 1.0, 3.0], n)
    Z = np.concatenate([X, rng.integers(0, 256, (20, 32)), np.clip(X + rng.integers(-2, 3, X.shape), 0, 255)])
    return X.astype(np.uint8), y, w, Z.astype(np.uint8), seed


def _sql_rows(model, Z: np.ndarray) -> list[tuple[int, int]]:
    """(id, votes) rows of the model's compiled SQL run by plain DuckDB over Z (id = row index)."""
    tbl = pa.table(
        {
            "pos": np.arange(len(Z)),
            "id": np.arange(len(Z)),
            **{c: pa.array(Z[:, d], pa.uint8()) for d, c in enumerate(CODE_COLUMNS)},
        }
    )
    con = _duckdb()
    con.register("codes", tbl)
    try:
        return con.execute(model.boxes_.to_sql("codes", min_votes=model.min_votes_)).fetchall()
    finally:
        con.unregister("codes")


@functools.cache
def _duckdb() -> duckdb.DuckDBPyConnection:
    """One in-memory database for the module: opening one costs more than a query here."""
    return duckdb.connect()


def _index(Z: np.ndarray, block_size: int) -> query.BlockIndex:
    cols = np.ascontiguousarray(Z.T)
    perm, starts = kd_order(cols, block_size=block_size)
    cols = np.ascontiguousarray(cols[:, perm])
    return query.BlockIndex.from_arrays(cols, perm.astype(np.int64), zone_maps(cols, starts), block_size)


def _models(seed):
    return [
        DecisionBranchClassifier(random_state=seed),
        DecisionBranchClassifier(growth="bottom-up", random_state=seed),
        DecisionBranchClassifier(subsets=SMALL_FAMILY, min_pts=2, random_state=seed),
        DecisionBranchClassifier(subsets=SMALL_FAMILY, min_pts=2, growth="bottom-up", random_state=seed),
        DecisionBranchEnsemble(n_estimators=4, growth="bottom-up", random_state=seed),
        DecisionBranchEnsemble(n_estimators=5, random_state=seed),
        DecisionBranchEnsemble(n_estimators=3, bootstrap=True, random_state=seed),
        DecisionBranchEnsemble(n_estimators=4, subsets=SMALL_FAMILY, bootstrap=False, random_state=seed),
    ]


@settings(max_examples=40, deadline=None)
@given(data=datasets())
def test_predict_votes_sql_and_index_agree(data):
    X, y, w, Z, seed = data
    for model in _models(seed):
        model.fit(X, y, sample_weight=w)
        votes = model.decision_function(Z)
        np.testing.assert_array_equal(votes, box_votes(model.boxes_, Z))
        predicted = np.flatnonzero(model.predict(Z))
        assert set(predicted.tolist()) == {i for i in range(len(Z)) if votes[i] >= model.min_votes_}
        rows = _sql_rows(model, Z)
        assert sorted(r[0] for r in rows) == predicted.tolist()
        assert all(r[1] == votes[r[0]] for r in rows)
        sel = query.select(_index(Z, 4), model.boxes_, model.min_votes_)
        assert sorted(sel.ids.tolist()) == predicted.tolist()
        np.testing.assert_array_equal(sel.votes, votes[sel.ids])


@settings(max_examples=30, deadline=None)
@given(data=datasets())
@pytest.mark.parametrize("growth", ["top-down", "bottom-up"])
def test_boxes_constrain_one_subset_and_hold_more_positive_than_negative_weight(data, growth):
    X, y, w, _, seed = data
    model = DecisionBranchClassifier(subsets=SMALL_FAMILY, growth=growth, random_state=seed).fit(
        X, y, sample_weight=w
    )
    weights = np.ones(len(X)) if w is None else w
    remaining = np.ones(len(X), bool)
    for i in range(len(model.boxes_)):
        dims = set(model.boxes_.constrained(i))
        assert any(dims <= set(s) for s in SMALL_FAMILY)
        inside = remaining & np.all((model.boxes_.lo[i] <= X) & (model.boxes_.hi[i] >= X), axis=1)
        assert (weights * inside * y).sum() > (weights * inside * ~y).sum()
        remaining &= ~inside  # separate and conquer: later boxes see what earlier ones left
    assert len(model.boxes_) <= model.max_boxes


def test_separable_classes_are_learned_exactly(rng):
    a = np.clip(rng.normal(60, 4, (300, 32)), 0, 255).astype(np.uint8)
    b = np.clip(rng.normal(190, 4, (300, 32)), 0, 255).astype(np.uint8)
    X = np.concatenate([a[:30], b[:200]])
    y = np.r_[np.ones(30, bool), np.zeros(200, bool)]
    for growth in ("top-down", "bottom-up"):
        for model in (
            DecisionBranchClassifier(growth=growth, random_state=0),
            DecisionBranchEnsemble(growth=growth, random_state=0),
        ):
            model.fit(X, y)
            assert model.predict(a).all() and not model.predict(b).any()


def test_ensemble_counts_each_member_once_and_needs_a_majority(rng):
    X = rng.integers(0, 256, (200, 32), dtype=np.uint8)
    y = X[:, 0] < 60
    model = DecisionBranchEnsemble(n_estimators=7, random_state=1).fit(X, y)
    assert model.min_votes_ == 4
    assert set(np.unique(model.boxes_.members).tolist()) <= set(range(7))
    votes = model.decision_function(X)
    assert votes.max() <= 7
    # a member with several boxes holding one row still votes once
    per_member = np.stack([box_votes(_member(model.boxes_, m), X) for m in range(7)])
    np.testing.assert_array_equal(votes, per_member.sum(axis=0))
    assert per_member.max() <= 1
    np.testing.assert_array_equal(model.predict(X), (votes >= 4).astype(int))


def _member(boxes, m):
    from engine.boxes import BoxSet

    keep = boxes.members == m
    return BoxSet.from_arrays(boxes.lo[keep], boxes.hi[keep])


def test_fixed_random_state_is_reproducible_and_seeds_differ(rng):
    X = rng.integers(0, 256, (300, 32), dtype=np.uint8)
    y = (X[:, 3] > 150) & (X[:, 7] < 120)
    for cls in (DecisionBranchClassifier, DecisionBranchEnsemble):
        a = cls(random_state=5).fit(X, y).boxes_
        b = cls(random_state=5).fit(X, y).boxes_
        assert a == b
        c = cls(random_state=np.random.default_rng(5)).fit(X, y).boxes_
        d = cls(random_state=6).fit(X, y).boxes_
        assert not (a == c and a == d)


def test_default_family_is_the_originals_104_subsets():
    fam = feature_subsets()
    assert [len(s) for s in fam].count(4) == 64 and [len(s) for s in fam].count(6) == 32
    assert [len(s) for s in fam].count(8) == 8 and len(set(fam)) == 104
    assert all(0 <= d < 32 for s in fam for d in s)
    assert feature_subsets() == fam  # deterministic
    used = np.bincount([d for s in fam if len(s) == 4 for d in s], minlength=32)
    assert used.min() >= 6  # every dim is in several 4-dim subsets


def test_estimator_api(rng):
    X = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    y = X[:, 0] > 128
    model = DecisionBranchEnsemble(n_estimators=3, max_boxes=4, random_state=0)
    assert model.get_params()["n_estimators"] == 3
    twin = clone(model).set_params(n_estimators=5)
    assert twin.n_estimators == 5 and model.n_estimators == 3
    assert model.fit(X, y) is model
    assert model.classes_.tolist() == [0, 1] and model.n_features_in_ == 32
    assert model.score(X, y) == np.mean(model.predict(X) == y) > 0.9
    with pytest.raises(NotFittedError, match="fit"):
        DecisionBranchClassifier().predict(X)


@pytest.mark.parametrize(
    "kwargs, X, y, match",
    [
        ({}, np.zeros((5, 31), np.uint8), [1, 0, 0, 0, 0], "shape"),
        ({}, np.full((3, 32), 300), [1, 0, 0], "0..255"),
        ({}, np.zeros((3, 32), np.uint8), [0, 0, 0], "at least one positive"),
        ({}, np.zeros((3, 32), np.uint8), [2, 0, 1], "binary"),
        ({"subset_fraction": 0}, np.zeros((3, 32), np.uint8), [1, 0, 0], "subset_fraction"),
        ({"min_pts": 0}, np.zeros((3, 32), np.uint8), [1, 0, 0], "min_pts"),
        ({"max_boxes": 0}, np.zeros((3, 32), np.uint8), [1, 0, 0], "max_boxes"),
        ({"subsets": [(40,)]}, np.zeros((3, 32), np.uint8), [1, 0, 0], "dims"),
        ({"subsets": []}, np.zeros((3, 32), np.uint8), [1, 0, 0], "at least one"),
        ({"random_state": "x"}, np.zeros((3, 32), np.uint8), [1, 0, 0], "random_state"),
        ({"growth": "sideways"}, np.zeros((3, 32), np.uint8), [1, 0, 0], "growth"),
        ({"growth": None}, np.zeros((3, 32), np.uint8), [1, 0, 0], "growth"),
    ],
)
def test_bad_arguments_are_refused_clearly(kwargs, X, y, match):
    with pytest.raises(InvalidArgument, match=match):
        DecisionBranchClassifier(**kwargs).fit(X, y)
    assert issubclass(InvalidArgument, CatalogError)


# -- parameter constraints, checked at fit -------------------------------------------------------
BAD_BRANCH_PARAMS = {
    "subsets": [5, "0123", [(40,)], [(-1, 2)], [()], [("a", 1)], [5], []],
    "max_boxes": [0, -1, 2.5, "30", True, None],
    "max_failures": [0, 1.5, "5", False, None],
    "min_pts": [0, -3, 2.5, "all", True, None],
    "subset_fraction": ["0.5", 0, -0.1, 1.5, float("nan"), None, True],
    "growth": ["sideways", "TOP-DOWN", None, 1, ["top-down"]],
    "random_state": [-1, 1.5, "x", True, np.random.RandomState(0)],
}
BAD_ENSEMBLE_PARAMS = {
    **BAD_BRANCH_PARAMS,
    "n_estimators": [0, -2, 2.5, "25", True, None],
    "bootstrap": ["positives", None, 2, [True]],
}
BAD_PARAMS = {DecisionBranchClassifier: BAD_BRANCH_PARAMS, DecisionBranchEnsemble: BAD_ENSEMBLE_PARAMS}


def _tiny():
    X = np.zeros((4, 32), np.uint8)
    X[0] = 9
    return X, np.array([1, 0, 0, 0])


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
        model.fit(*_tiny())
    message = str(e.value)
    assert message.startswith(f"{name} "), message
    if name != "subsets" or not isinstance(value, list):  # a bad member of subsets is named on its own
        assert message.endswith(f", got {value!r}") and " must be " in message, message
    assert not hasattr(model, "boxes_")


@pytest.mark.parametrize("Model", list(BAD_PARAMS))
def test_every_parameter_is_constrained_and_has_bad_values_tested(Model):
    assert set(Model._parameter_constraints) == set(Model().get_params()) == set(BAD_PARAMS[Model])


def test_a_string_fraction_says_what_is_allowed():
    with pytest.raises(
        InvalidArgument, match=re.escape("subset_fraction must be a number in (0, 1], got '0.5'")
    ):
        DecisionBranchClassifier(subset_fraction="0.5").fit(*_tiny())
    with pytest.raises(
        InvalidArgument,
        match=re.escape("random_state must be None, an integer >= 0 or a numpy Generator, got -1"),
    ):
        DecisionBranchEnsemble(random_state=-1).fit(*_tiny())
    with pytest.raises(
        InvalidArgument, match=re.escape("bootstrap must be False, True or 'negatives', got None")
    ):
        DecisionBranchEnsemble(bootstrap=None).fit(*_tiny())


def test_valid_parameters_in_other_forms_fit_the_same_boxes(rng):
    X = rng.integers(0, 256, (80, 32), dtype=np.uint8)
    y = X[:, 3] > 150
    plain = DecisionBranchEnsemble(
        n_estimators=3,
        max_boxes=4,
        max_failures=2,
        min_pts=20,
        subset_fraction=1,
        bootstrap=True,
        random_state=5,
    ).fit(X, y)
    numpy = DecisionBranchEnsemble(
        n_estimators=np.int64(3),
        max_boxes=np.int32(4),
        max_failures=np.uint8(2),
        min_pts=np.int64(20),
        subset_fraction=np.float32(1.0),
        bootstrap=np.True_,
        random_state=np.int64(5),
    ).fit(X, y)
    assert numpy.boxes_ == plain.boxes_ and numpy.min_votes_ == plain.min_votes_ == 2
    a = DecisionBranchClassifier(
        min_pts="auto", growth="bottom-up", random_state=np.random.default_rng(7)
    ).fit(X, y)
    b = DecisionBranchClassifier(
        min_pts="auto", growth="bottom-up", random_state=np.random.default_rng(7)
    ).fit(X, y)
    assert a.boxes_ == b.boxes_ and len(a.boxes_) > 0
    assert (
        DecisionBranchClassifier(subsets=iter(SMALL_FAMILY), random_state=0).fit(X, y).subsets_
        == DecisionBranchClassifier(subsets=SMALL_FAMILY, random_state=0).fit(X, y).subsets_
    )


def test_bootstrap_modes(rng):
    X = rng.integers(0, 256, (120, 32), dtype=np.uint8)
    y = X[:, 5] > 200
    fits = {
        b: DecisionBranchEnsemble(n_estimators=6, bootstrap=b, random_state=2).fit(X, y).boxes_
        for b in (True, False, "negatives")
    }
    assert fits[True] != fits["negatives"]
    # without resampling, members differ only by their random streams and subset shares
    assert fits[False].n_members == 6 and fits[False] != fits[True]
    with pytest.raises(InvalidArgument, match="bootstrap"):
        DecisionBranchEnsemble(bootstrap="positives").fit(X, y)


def test_negative_weights_are_refused():
    with pytest.raises(InvalidArgument, match="sample_weight"):
        DecisionBranchEnsemble().fit(np.zeros((2, 32), np.uint8), [1, 0], sample_weight=[1, -1])


def test_a_single_positive_and_identical_negatives(rng):
    X = np.zeros((4, 32), np.uint8)
    model = DecisionBranchClassifier(random_state=0).fit(X, [1, 0, 0, 0])
    assert len(model.boxes_) == 0  # the positive's point is 3:1 negative: no box can be pure enough
    X[0] = 9
    model.fit(X, [1, 0, 0, 0])
    assert model.predict(X).tolist() == [1, 0, 0, 0]


# -- bottom-up growth against a slow, obvious reference ---------------------------------------------
def _gini_score(p_in, n_in, p_out, n_out):
    s = 0.0
    if p_in + n_in > 0:
        s += (p_in * p_in + n_in * n_in) / (p_in + n_in)
    if p_out + n_out > 0:
        s += (p_out * p_out + n_out * n_out) / (p_out + n_out)
    return -s


def _reference_bottom_up(X, pw, nw, seed, order, min_pts):
    """The original decision branch growth, spelled out with numpy (inclusive integer bounds)."""
    X = X.astype(np.int64)
    n = len(X)
    active = (pw > 0) | (nw > 0)
    lo, hi = np.zeros(32, np.int64), np.full(32, 255, np.int64)
    p_tot, n_tot = pw[active].sum(), nw[active].sum()
    equal = active & (np.arange(n) != seed)

    def nearest_positive(d, step):
        others = active & (pw > 0) & (np.arange(n) != seed) & ((X[:, d] - X[seed, d]) * step > 0)
        if not others.any():
            return X[seed, d]
        return X[others, d].min() if step > 0 else X[others, d].max()

    for d in order:  # the seed box
        sv = X[seed, d]
        above = X[equal & (X[:, d] > sv), d]
        below = X[equal & (X[:, d] < sv), d]
        hi[d] = above.min() - 1 if len(above) else nearest_positive(d, 1)
        lo[d] = below.max() + 1 if len(below) else nearest_positive(d, -1)
        equal &= X[:, d] == sv

    def inside(dims):
        ok = active.copy()
        for e in dims:
            ok &= (lo[e] <= X[:, e]) & (X[:, e] <= hi[e])
        return ok

    for d in order:  # one expansion pass
        slab = inside([e for e in order if e != d])
        box = slab & (lo[d] <= X[:, d]) & (X[:, d] <= hi[d])
        p_in, n_in = pw[box].sum(), nw[box].sum()
        new = {}
        for step in (-1, 1):
            start = lo[d] if step < 0 else hi[d]
            beyond = slab & ((X[:, d] - start) * step > 0)
            values = sorted(set(X[beyond, d].tolist()), key=lambda v: (v - start) * step)
            inner = start
            if (beyond & (pw > 0)).any():
                best = _gini_score(p_in, n_in, p_tot - p_in, n_tot - n_in)
                ap, an, bp, bn = p_in, n_in, p_in, n_in
                for v in values[:min_pts]:
                    at = beyond & (X[:, d] == v)
                    ap, an = ap + pw[at].sum(), an + nw[at].sum()
                    s = _gini_score(ap, an, p_tot - ap, n_tot - an)
                    if s < best:
                        best, inner, bp, bn = s, v, ap, an
                p_in, n_in = bp, bn
            outer = [v for v in values if (v - inner) * step > 0]
            if not outer:
                new[step] = 0 if step < 0 else 255
            else:
                new[step] = -((-(inner + outer[0])) // 2) if step < 0 else (inner + outer[0]) // 2
        lo[d], hi[d] = new[-1], new[1]
    box = inside(order)
    return lo, hi, _gini_score(pw[box].sum(), nw[box].sum(), p_tot - pw[box].sum(), n_tot - nw[box].sum())


@settings(max_examples=150, deadline=None)
@given(
    data=datasets(max_rows=120),
    k=st.sampled_from([1, 2, 4, 6, 8]),
    min_pts=st.sampled_from([1, 3, 50]),
    order_seed=st.integers(0, 2**32 - 1),
)
def test_bottom_up_box_equals_the_numpy_reference(data, k, min_pts, order_seed):
    from engine.learn import branches

    X, y, w, _, _ = data
    w = np.ones(len(X)) if w is None else w
    if w[0] == 0:
        w = w + 0.5
    pw, nw = np.where(y, w, 0.0), np.where(y, 0.0, w)
    rng = np.random.default_rng(order_seed)
    seed = int(rng.choice(np.flatnonzero(pw > 0)))
    order = rng.permutation(32)[:k].astype(np.int64)
    lo, hi = np.zeros(32, np.int64), np.zeros(32, np.int64)
    n = len(X)
    score, p_in, n_in = branches._grow_box_bottom_up(
        X,
        pw,
        nw,
        (pw > 0) | (nw > 0),
        seed,
        order,
        k,
        min_pts,
        lo,
        hi,
        np.zeros(n, np.int64),
        np.zeros(256),
        np.zeros(256),
        np.zeros(256, np.bool_),
    )
    ref_lo, ref_hi, ref_score = _reference_bottom_up(X, pw, nw, seed, order, min_pts)
    np.testing.assert_array_equal(lo, ref_lo)
    np.testing.assert_array_equal(hi, ref_hi)
    assert score == pytest.approx(ref_score)
    assert (lo[order] <= X[seed, order]).all() and (X[seed, order] <= hi[order]).all()  # the seed is inside
