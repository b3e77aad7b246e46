"""The linear guide: its logistic regression, the vote threshold it picks, and its suggestions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from engine.guide import Guide, choose_min_votes, diverse, fit_guide, suggest


@pytest.mark.parametrize("seed", range(4))
def test_fit_guide_is_scikit_learns_weighted_logistic_regression(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 400))
    X = rng.integers(0, 256, (n, 32)).astype(np.uint8)
    y = (X[:, :4].astype(int).sum(axis=1) + rng.normal(0, 60, n) > 510).astype(int)
    y[:2] = [0, 1]
    w = rng.choice([0.5, 1.0, 7.0], n)
    g = fit_guide(X, y, w, C=3.0)
    ref = LogisticRegression(C=3.0, tol=1e-10, max_iter=10_000).fit(X / 255.0, y, sample_weight=w)
    np.testing.assert_allclose(g.coef, ref.coef_[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g.intercept, ref.intercept_[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g.score(X), ref.decision_function(X / 255.0), rtol=1e-4, atol=1e-4)


def test_fit_guide_with_one_class_or_separable_data():
    X = np.array([[0] * 32, [255] * 32] * 5, np.uint8)
    assert (fit_guide(X, np.ones(10), np.ones(10)).score(X) > 0).all()
    assert (fit_guide(X, np.zeros(10), np.ones(10)).score(X) < 0).all()
    y = np.array([0, 1] * 5)
    g = fit_guide(X, y, np.ones(10))  # separable: the penalty keeps the weights finite
    assert np.isfinite(g.coef).all() and ((g.score(X) > 0) == (y == 1)).all()
    zero_weight_positives = fit_guide(X, y, np.where(y == 1, 0.0, 1.0))
    assert (zero_weight_positives.score(X) < 0).all()


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0, 400))
def test_positive_is_a_positive_margin_within_the_radius(seed, radius):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (50, 32)).astype(np.uint8)
    g = Guide(rng.normal(size=32), float(rng.normal()))
    center = rng.uniform(0, 255, 32)
    assert (g.positive(X) == (g.score(X) > 0)).all()  # no region: the halfspace
    inside = g.within(center, radius)
    dist = np.sqrt(((X.astype(np.float64) - center) ** 2).sum(axis=1))
    assert (inside.positive(X) == ((g.score(X) > 0) & (dist <= radius))).all()
    np.testing.assert_array_equal(inside.score(X), g.score(X))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 25), st.lists(st.tuples(st.integers(0, 25), st.booleans()), max_size=80))
def test_choose_min_votes_maximises_agreement_by_brute_force(n_members, rows):
    votes = np.array([min(v, n_members) for v, _ in rows], np.int64)
    agree = np.array([a for _, a in rows], bool)
    got = choose_min_votes(votes, agree, n_members, default=99)
    if not agree.any() or n_members == 1:
        assert got == 99
        return
    f1 = {t: 2 * ((votes >= t) & agree).sum() / ((votes >= t).sum() + agree.sum()) for t in range(1, n_members + 1)}
    best = max(f1.values())
    assert 1 <= got <= n_members and f1[got] == pytest.approx(best)
    assert got == max(t for t, v in f1.items() if v >= best - 1e-12)  # ties: the higher threshold


def test_diverse_picks_far_apart_rows_first():
    codes = np.zeros((6, 32), np.uint8)
    codes[1] = 1  # a near-duplicate of row 0
    codes[2] = 200
    codes[3] = 201
    codes[4, :16] = 255
    codes[5] = 2
    picked = diverse(codes, 3)
    assert picked[0] == 0 and len(set(picked.tolist())) == 3
    assert set(picked.tolist()) == {0, 3, 4} or set(picked.tolist()) == {0, 2, 4}
    np.testing.assert_array_equal(np.sort(diverse(codes, 10)), np.arange(6))


def test_suggest_takes_the_most_uncertain_and_spreads_them():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (500, 32)).astype(np.uint8)
    g = Guide(np.r_[np.ones(1), np.zeros(31)], -0.5)  # boundary: dim 0 at 127.5
    picked = suggest(codes, g, 10, pool_factor=4)
    assert len(set(picked.tolist())) == 10
    margin = np.abs(g.score(codes))
    assert margin[picked].max() <= np.sort(margin)[39] + 1e-12  # from the 40 most uncertain
    assert (np.diff(margin[picked]) >= -1e-12).all()  # most uncertain first
    assert len(suggest(codes[:0], g, 10)) == 0 and len(suggest(codes, g, 0)) == 0
