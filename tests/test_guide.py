"""The linear guide: its logistic regression, the vote threshold it picks, and its suggestions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from engine.learn.guide import Guide, Region, choose_min_votes, diverse, fit_guide, group_positives, suggest


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
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.floats(0, 400), st.floats(0.5, 3))
def test_positive_is_a_positive_margin_inside_a_ball_of_the_region(seed, n_balls, radius, scale):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (60, 32)).astype(np.uint8)
    X[:5] = np.rint(rng.uniform(0, 255, 32))  # rows on a centre: distance 0
    g = Guide(rng.normal(size=32), float(rng.normal()))
    centres = np.rint(rng.uniform(0, 255, (n_balls, 32)))
    centres[0] = X[0]
    radii = rng.uniform(0, radius, n_balls)
    assert (g.positive(X) == (g.score(X) > 0)).all()  # no region: the halfspace
    region = Region(centres, radii)
    dist = np.sqrt(((X[:, None, :].astype(np.float64) - centres[None]) ** 2).sum(axis=2))
    # the oracle, with a little slack at the border for floating point
    inside = (dist <= scale * radii[None, :]).any(axis=1)
    near_border = (np.abs(dist - scale * radii[None, :]) < 1e-3).any(axis=1)
    got = region.contains(X, scale)
    assert (got == inside)[~near_border].all() and got[:5].all()
    confined = g.within(region)
    assert (confined.positive(X) == ((g.score(X) > 0) & region.contains(X))).all()
    np.testing.assert_array_equal(confined.score(X), g.score(X))
    assert not Region(np.zeros((0, 32)), np.zeros(0)).contains(X).any()


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 30), st.floats(0, 300))
def test_group_positives_is_single_linkage_on_the_smaller_link(seed, n, link_max):
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 256, (3, 32))
    codes = np.clip(centres[rng.integers(0, 3, n)] + rng.normal(0, 20, (n, 32)), 0, 255).astype(np.uint8)
    link = rng.uniform(0, link_max, n)
    group = group_positives(codes, link)
    # oracle: connected components of the graph of joined pairs, by repeated relabelling
    d = np.sqrt(((codes[:, None, :].astype(np.float64) - codes[None]) ** 2).sum(axis=2))
    joined = d <= np.minimum(link[:, None], link[None, :])
    comp = np.arange(n)
    for _ in range(n):
        comp = np.array([comp[joined[i]].min() for i in range(n)])
    for i in range(n):
        for j in range(n):
            assert (group[i] == group[j]) == (comp[i] == comp[j])
    assert sorted(set(group.tolist())) == list(range(group.max() + 1))  # numbered 0..g-1


def test_a_wide_link_alone_does_not_bridge_two_clusters():
    a = np.zeros((3, 32), np.uint8)
    b = np.full((3, 32), 100, np.uint8)
    codes = np.concatenate([a, b])
    link = np.array([1.0, 1.0, 10_000.0, 1.0, 1.0, 1.0])  # one positive with a huge local scale
    group = group_positives(codes, link)
    assert group.tolist() == [0, 0, 0, 1, 1, 1]


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 25), st.lists(st.tuples(st.integers(0, 25), st.booleans()), max_size=80))
def test_choose_min_votes_maximises_agreement_by_brute_force(n_members, rows):
    votes = np.array([min(v, n_members) for v, _ in rows], np.int64)
    agree = np.array([a for _, a in rows], bool)
    got = choose_min_votes(votes, agree, n_members, default=99)
    if not agree.any() or n_members == 1:
        assert got == 99
        return
    f1 = {
        t: 2 * ((votes >= t) & agree).sum() / ((votes >= t).sum() + agree.sum())
        for t in range(1, n_members + 1)
    }
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


def test_suggest_ranks_the_preferred_candidates_first():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 256, (400, 32)).astype(np.uint8)
    g = Guide(np.r_[np.ones(1), np.zeros(31)], -0.5)
    prefer = np.zeros(400, bool)
    prefer[rng.choice(400, 50, replace=False)] = True
    picked = suggest(codes, g, 10, prefer=prefer)
    assert len(picked) == 10 and prefer[picked].all()
    margin = np.abs(g.score(codes))
    assert margin[picked].max() <= np.sort(margin[prefer])[39] + 1e-12  # the 40 most uncertain of them
    anywhere = suggest(codes, g, 10)
    assert margin[anywhere].max() <= np.sort(margin)[39] + 1e-12 and not prefer[anywhere].all()
    few = np.zeros(400, bool)
    few[:3] = True
    assert suggest(codes, g, 10, prefer=few)[0] in {0, 1, 2}  # the most uncertain preferred one first


def test_choose_min_votes_keeps_the_default_below_the_minimum_of_guide_positives():
    votes = np.array([25, 25, 24, 3, 2, 1, 0, 0])
    agree = np.array([True, True, True, False, False, False, False, False])
    assert choose_min_votes(votes, agree, 25, default=13, min_positives=4) == 13
    assert choose_min_votes(votes, agree, 25, default=13, min_positives=3) == 24
