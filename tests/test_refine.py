"""Catalog.refine: the whole catalog classified, ranked and reproduced by its SQL; bad input."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

import engine
from engine import limits
from engine.errors import InvalidArgument, UnknownIds
from engine.learn import refine as rf

MODELS = ("ensemble", "branch", "tree", "forest")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    """3,000 codes in 6 clusters (labels kept beside), indexed in blocks of 64."""
    rng = np.random.default_rng(7)
    centres = rng.integers(30, 226, (6, 32))
    labels = rng.integers(0, 6, 3000)
    codes = np.clip(centres[labels] + rng.normal(0, 9, (3000, 32)), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("refine") / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        cat.add_codes(codes, ids=np.arange(1000, 4000))
        cat.build_index(block_size=64)
    return path, codes, labels


def _expected_order(model, codes, ids, pos_of, center):
    """The oracle: predicted rows ranked by votes desc, distance to center, block position."""
    votes = model.decision_function(codes)
    keep = np.flatnonzero(votes >= model.min_votes_)
    dist = ((codes[keep].astype(np.int64) - center) ** 2).sum(axis=1)
    order = np.lexsort((pos_of[keep], dist, -votes[keep]))
    return ids[keep][order], votes[keep][order]


@pytest.mark.parametrize("guide", [True, False])
@pytest.mark.parametrize("model", MODELS)
def test_refine_returns_every_positive_ranked_as_its_sql_does(catalog, model, guide):
    path, codes, labels = catalog
    ids = np.arange(1000, 4000)
    positives = ids[labels == 2][:8]
    negatives = ids[labels == 4][:3]
    with engine.Catalog.open(path, read_only=True) as cat:
        res = cat.refine(positives, negatives, model=model, random_state=3, guide=guide)
        pos_table = cat.sql("SELECT id, pos FROM codes ORDER BY id")
    pos_of = pos_table.column("pos").to_numpy()
    center = rf.center_code(codes[positives - 1000])
    want_ids, want_votes = _expected_order(res.model, codes, ids, pos_of, center)
    np.testing.assert_array_equal(res.ids, want_ids)
    np.testing.assert_array_equal(res.scores, want_votes)
    con = duckdb.connect(str(path), read_only=True)
    try:
        rows = con.execute(res.sql).fetchall()
    finally:
        con.close()
    assert [r[0] for r in rows] == res.ids.tolist()
    assert [r[1] for r in rows] == res.scores.tolist()
    s = res.stats
    assert (
        s["model"] == model and s["results"] == len(res.ids) and s["positives"] == 8 and s["negatives"] == 3
    )
    assert s["sampled_negatives"] == 500 and 0 < s["sampled_dropped"] < 250 and 0 < s["share_touched"] <= 1
    assert all(
        s[k] >= 0
        for k in ("time_sample_ms", "time_train_ms", "time_query_ms", "time_suggest_ms", "time_total_ms")
    )
    assert (
        s["guided"] is guide
        and s["min_votes"] == res.model.min_votes_
        and (s["pseudo_positives"] > 0) is guide
    )
    assert s["suggestions"] == len(res.suggestions)
    # well separated clusters: the labelled class comes back, and little else
    got = set(res.ids.tolist())
    true = set(ids[labels == 2].tolist())
    assert len(got & true) >= 0.5 * len(true) and len(got - true) <= 0.1 * len(got)


@pytest.mark.parametrize("model", MODELS)
def test_refine_is_reproducible_for_a_fixed_random_state(catalog, model):
    path, _, labels = catalog
    positives = np.arange(1000, 4000)[labels == 1][:5]
    with engine.Catalog.open(path, read_only=True) as cat:
        a = cat.refine(positives, model=model, random_state=11)
        b = cat.refine(positives, model=model, random_state=11)
    with engine.Catalog.open(path, read_only=True) as cat:  # a fresh object samples the same pool
        c = cat.refine(positives, model=model, random_state=11)
    for other in (b, c):
        np.testing.assert_array_equal(a.ids, other.ids)
        assert a.sql == other.sql


def test_sampled_rows_that_look_like_the_positives_are_dropped(catalog):
    path, codes, labels = catalog
    ids = np.arange(1000, 4000)
    positives = ids[labels == 5][:6]
    with engine.Catalog.open(path, read_only=True) as cat:
        kept = cat.refine(positives, model="tree", random_state=0, guide=False)
        unfiltered = cat.refine(positives, model="tree", random_state=0, filter_sampled=False, guide=False)
    assert kept.stats["sampled_negatives"] == unfiltered.stats["sampled_negatives"] == 500
    assert unfiltered.stats["sampled_dropped"] == 0
    tree, full = kept.model.estimator_.tree_, unfiltered.model.estimator_.tree_
    assert tree.n_node_samples[0] < full.n_node_samples[0]  # the tree saw fewer negatives
    sample = np.random.default_rng(0).choice(3000, 500, replace=False)
    mask = rf.reliable_negatives(codes[sample], codes[positives - 1000])
    in_class = labels[sample] == 5
    assert not mask[in_class].any()  # unlabelled members of the class are not used as negatives
    assert mask[~in_class].all()  # other clusters stay negative


def test_sampled_negatives_skip_labelled_ids_and_negatives_are_weighted(catalog):
    path, codes, labels = catalog
    ids = np.arange(1000, 4000)
    with engine.Catalog.open(path, read_only=True) as cat:
        res = cat.refine(
            ids[labels == 0][:4],
            ids[labels == 3][:4],
            sampled_negatives=0,
            model="tree",
            random_state=0,
            guide=False,
        )
        assert res.stats["sampled_negatives"] == 0
        X = np.concatenate([codes[ids[labels == 0][:4] - 1000], codes[ids[labels == 3][:4] - 1000]])
        np.testing.assert_array_equal(res.model.estimator_.predict(X), [1, 1, 1, 1, 0, 0, 0, 0])
        a = cat.snapshot().pool(500)[0]
        b = cat.snapshot().pool(100)[0]
        np.testing.assert_array_equal(a, b)  # one fixed pool: asking for fewer takes a prefix
    sampled = rf.sample_negatives(np.array([5, 6, 7, 8, 9]), 3, exclude=np.array([6, 8]))
    assert sampled.tolist() == [5, 7, 9]
    X, y, w = rf.training_set(
        np.zeros((2, 32), np.uint8), np.ones((1, 32), np.uint8), np.full((3, 32), 2, np.uint8), 25.0
    )
    assert y.tolist() == [1, 1, 0, 0, 0, 0] and w.tolist() == [14, 14, 25, 1, 1, 1]


def test_catalog_smaller_than_the_negatives_asked_for(make_catalog, codegen, rng):
    codes = codegen.clustered(rng, 30)
    cat = make_catalog(codes, block_size=8)
    res = cat.refine([0, 1], model="ensemble", sampled_negatives=2000, random_state=0)
    assert res.stats["sampled_negatives"] == 28 and res.stats["sampled_dropped"] < 28
    pos_of = cat.sql("SELECT pos FROM codes ORDER BY id").column("pos").to_numpy()
    for model in MODELS:
        res = cat.refine([0], [5], model=model, sampled_negatives=2000, random_state=0)
        assert res.stats["sampled_negatives"] == 28  # every row but the two labelled
        want_ids, want_votes = _expected_order(
            res.model, codes, np.arange(30), pos_of, rf.center_code(codes[[0]])
        )
        np.testing.assert_array_equal(res.ids, want_ids)
        np.testing.assert_array_equal(res.scores, want_votes)
        assert res.stats["results"] == len(want_ids)


def test_refine_on_rows_added_after_the_index_build(make_catalog, codegen, rng):
    cat = make_catalog(codegen.clustered(rng, 200), block_size=16)
    extra = cat.add_codes(codegen.clustered(rng, 20))
    res = cat.refine([int(extra[0])], model="branch", random_state=0)
    con = cat.store.con
    assert [r[0] for r in con.execute(res.sql).fetchall()] == res.ids.tolist()


@pytest.mark.parametrize(
    "positives, negatives, error, match",
    [
        ([], [], InvalidArgument, "at least one image as positive"),
        (None, [], InvalidArgument, "at least one image as positive"),
        ([1000, 1001], [1001], InvalidArgument, "both positive and negative"),
        ([1000, 99], [], UnknownIds, "99"),
        ([1000], [5000], UnknownIds, "5000"),
        (["a"], [], InvalidArgument, "not an integer"),
        ([1.5], [], InvalidArgument, "not an integer"),
        ([True], [], InvalidArgument, "not an image id"),
        (1000, [], InvalidArgument, "list of image ids"),
    ],
)
def test_bad_labels_are_refused_clearly(catalog, positives, negatives, error, match):
    path, _, _ = catalog
    with engine.Catalog.open(path, read_only=True) as cat, pytest.raises(error, match=match):
        cat.refine(positives, negatives)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model": "svm"}, "unknown model"),
        ({"model": object()}, "unknown model"),
        ({"suggestions": -1}, "suggestions"),
        ({"suggestions": 10**6}, "suggestions"),
        ({"suggestions": "60"}, "suggestions"),
        ({"suggestions": True}, "suggestions"),
        ({"sampled_negatives": -1}, "sampled_negatives"),
        ({"sampled_negatives": "500"}, "sampled_negatives"),
        ({"sampled_negatives": 10**9}, "sampled_negatives"),
        ({"negative_weight": 0}, "negative_weight"),
        ({"negative_weight": "heavy"}, "negative_weight"),
        ({"negative_weight": float("nan")}, "negative_weight"),
    ],
)
def test_bad_options_are_refused_clearly(catalog, kwargs, match):
    path, _, _ = catalog
    with engine.Catalog.open(path, read_only=True) as cat, pytest.raises(InvalidArgument, match=match):
        cat.refine([1000], **kwargs)


def test_ids_given_as_strings_from_a_form(catalog):
    path, _, _ = catalog
    with engine.Catalog.open(path, read_only=True) as cat:
        a = cat.refine("1000,1001", "1002", model="tree", random_state=0)
        b = cat.refine([1000, 1001], [1002], model="tree", random_state=0)
    np.testing.assert_array_equal(a.ids, b.ids)


def test_empty_catalog(make_catalog):
    cat = make_catalog()
    with pytest.raises(UnknownIds):
        cat.refine([0])


# -- search ----------------------------------------------------------------------------------
def test_search_by_id_is_the_exact_nearest_codes_and_its_sql(catalog):
    path, codes, _ = catalog
    with engine.Catalog.open(path, read_only=True) as cat:
        res = cat.search(id=1234, k=25)
        pos_of = cat.sql("SELECT id, pos FROM codes ORDER BY id").column("pos").to_numpy()
    dist = ((codes.astype(np.int64) - codes[234].astype(np.int64)) ** 2).sum(axis=1)
    want = np.lexsort((pos_of, dist))[:25] + 1000
    np.testing.assert_array_equal(res.ids, want)
    assert res.ids[0] == 1234 and res.scores[0] == 0
    np.testing.assert_array_equal(res.scores, np.sort(dist)[:25])
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert [r[0] for r in con.execute(res.sql).fetchall()] == res.ids.tolist()
    finally:
        con.close()
    assert res.stats["results"] == 25 and res.stats["query"] == "id"


def test_search_k_larger_than_the_catalog(make_catalog, codegen, rng):
    cat = make_catalog(codegen.uniform(rng, 7), block_size=4)
    assert sorted(cat.search(id=3, k=60).ids.tolist()) == list(range(7))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({}, InvalidArgument, "exactly one"),
        ({"text": "x", "id": 1000}, InvalidArgument, "exactly one"),
        ({"id": 1000, "k": 0}, InvalidArgument, "k must be"),
        ({"id": 1000, "k": 10**7}, InvalidArgument, "k must be"),
        ({"id": 1000, "k": "5"}, InvalidArgument, "k must be"),
        ({"id": 77}, UnknownIds, "77"),
        ({"id": "abc"}, InvalidArgument, "not an integer"),
        ({"text": "shoes"}, engine.CatalogError, "records no encoder"),
    ],
)
def test_bad_searches_are_refused_clearly(catalog, kwargs, error, match):
    path, _, _ = catalog
    with engine.Catalog.open(path, read_only=True) as cat, pytest.raises(error, match=match):
        cat.search(**kwargs)


@pytest.mark.parametrize(
    "ids", [np.arange(50), np.arange(50)[::-1] * 3, np.arange(50) * 10**12 - 7, np.array([], np.int64)]
)
def test_block_index_id_lookup_dense_and_sparse(ids):
    from engine.index.query import BlockIndex

    rng = np.random.default_rng(0)
    ids = rng.permutation(ids).astype(np.int64)
    index = BlockIndex.from_arrays(np.zeros((32, len(ids)), np.uint8), ids, None, 8)
    probe = np.concatenate([ids, [-1, 10**15, 51, 2]])
    got = index.positions(probe)
    want = np.array([int(np.flatnonzero(ids == i)[0]) if (ids == i).any() else -1 for i in probe])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "bad", [[2**63], ["9223372036854775808"], ["9999999999999999999"], [-(2**63) - 1], [float(2**64)]]
)
def test_ids_beyond_64_bits_are_refused_clearly(catalog, bad):
    path, _, _ = catalog
    with engine.Catalog.open(path, read_only=True) as cat:
        with pytest.raises(InvalidArgument, match="out of the range"):
            cat.refine(bad)
        with pytest.raises(InvalidArgument, match="out of the range"):
            cat.refine([1000], bad)
        with pytest.raises(InvalidArgument, match="out of the range"):
            cat.search(id=bad[0])


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("seed", [-1, 2**32, 2**40, "7", True, 1.5])
def test_random_states_every_model_cannot_take_are_refused(catalog, model, seed):
    path, _, _ = catalog
    with (
        engine.Catalog.open(path, read_only=True) as cat,
        pytest.raises(InvalidArgument, match="random_state"),
    ):
        cat.refine([1000], model=model, random_state=seed)


def test_the_largest_seed_works_for_every_model(catalog):
    path, _, _ = catalog
    with engine.Catalog.open(path, read_only=True) as cat:
        for model in MODELS:
            assert cat.refine([1000], model=model, random_state=limits.MAX_SEED).stats["model"] == model


# -- the guide and the suggestions ----------------------------------------------------------------
@pytest.mark.parametrize("guide", [True, False])
@pytest.mark.parametrize("model", MODELS)
def test_suggestions_are_distinct_unlabelled_ids_of_the_catalog(catalog, model, guide):
    path, _, labels = catalog
    ids = np.arange(1000, 4000)
    positives, negatives = ids[labels == 2][:8], ids[labels == 4][:3]
    with engine.Catalog.open(path, read_only=True) as cat:
        res = cat.refine(positives, negatives, model=model, random_state=1, guide=guide, suggestions=40)
        none = cat.refine(positives, negatives, model=model, random_state=1, guide=guide, suggestions=0)
    sug = res.suggestions
    assert sug.dtype == np.int64 and len(sug) == len(set(sug.tolist())) <= 40
    assert np.isin(sug, ids).all() and not np.isin(sug, np.concatenate([positives, negatives])).any()
    assert len(sug) == 40  # the held-out pool rows alone are candidates enough here
    assert len(none.suggestions) == 0
    np.testing.assert_array_equal(none.ids, res.ids)  # suggestions never change the results
    assert res.to_json()["suggestions"] == sug.tolist()


def test_guided_suggestions_lie_near_the_boundary_and_are_spread_out(catalog):
    path, codes, labels = catalog
    ids = np.arange(1000, 4000)
    positives = ids[labels == 2][:8]
    with engine.Catalog.open(path, read_only=True) as cat:
        res = cat.refine(positives, model="ensemble", random_state=0, suggestions=30)
        train = cat.training_set(positives, guide=True)
    margin = np.abs(train.guide.score(codes[res.suggestions - 1000]))
    everyone = np.abs(train.guide.score(codes))
    assert np.median(margin) < np.quantile(everyone, 0.25)  # nearer the boundary than most rows
    sug = codes[res.suggestions - 1000].astype(np.int64)
    d = ((sug[:, None, :] - sug[None, :, :]) ** 2).sum(axis=2)
    assert (d[np.triu_indices(len(sug), 1)] > 0).all()  # no two the same code


def test_guided_rounds_add_pseudo_positives_and_calibrate_the_vote_threshold(catalog):
    path, codes, labels = catalog
    ids = np.arange(1000, 4000)
    positives = ids[labels == 3][:6]
    with engine.Catalog.open(path, read_only=True) as cat:
        train = cat.training_set(positives, guide=True)
        plain = cat.training_set(positives)
        res = cat.refine(positives, model="ensemble", random_state=0)
        index = cat.block_index()
    assert train.guided and train.n_pseudo > 0 and not plain.guided and plain.n_pseudo == 0
    assert int(train.y.sum()) == len(positives) + train.n_pseudo == len(positives) + len(train.pseudo)
    pos_rows = index.positions(positives)
    assert not np.isin(train.held, pos_rows).any() and not np.isin(train.pseudo, train.held).any()
    # the pseudo-positives are rows the guide scores positive inside its region, all of the class here
    extra = train.X[len(positives) : int(train.y.sum())]
    np.testing.assert_array_equal(extra, index.cols[:, train.pseudo].T)
    assert (train.guide.score(extra) > 0).all() and train.guide.positive(extra).all()
    assert (labels[index.ids[train.pseudo] - 1000] == 3).all()
    # every ball reaches GUIDE_RADIUS times its farthest positive: the labelled positives are inside
    assert train.guide.region.contains(codes[labels == 3][:6]).all()
    assert res.stats["guide_groups"] == train.n_groups == len(train.guide.region.radii) >= 1
    # the threshold is the one agreeing best with the guide on the held-out rows
    assert train.held_positives >= rf.MIN_HELD_POSITIVES
    held = np.ascontiguousarray(index.cols[:, train.held])
    from engine.index import query
    from engine.learn.guide import choose_min_votes

    votes = query.votes(held, res.model.boxes_)
    assert res.model.min_votes_ == choose_min_votes(votes, train.guide.positive(held.T), 25, 13)
    assert res.stats["min_votes"] == res.model.min_votes_
    assert res.stats["held_guide_positives"] == train.held_positives


def test_pool_halves_are_disjoint_and_neither_is_stripped_of_the_class(catalog):
    """Pseudo-positives come from one half of the pool and calibration rows from the other, so
    a class keeps its share of the held-out rows however many pseudo-positives it gives."""
    path, codes, labels = catalog
    ids = np.arange(1000, 4000)
    positives = ids[labels == 2][:10]
    with engine.Catalog.open(path, read_only=True) as cat:
        train = cat.training_set(positives, guide=True)
        plain = cat.training_set(positives)
        index = cat.block_index()
    held_share = np.mean(labels[index.ids[train.held] - 1000] == 2)
    free_share = np.mean(labels[index.ids[plain.held] - 1000] == 2)
    assert abs(held_share - free_share) < 0.05 and held_share > 0.1
    assert len(np.intersect1d(train.held, train.pseudo)) == 0


def test_a_rare_class_gets_no_pseudo_positives_from_other_classes(tmp_path):
    """One cluster of 200 among 100: the guide's halfspace reaches other clusters, its radius
    keeps them out of the positives, and the round stays precise."""
    from engine.datasets import synth

    codes, labels = (np.concatenate(p) for p in zip(*synth.clustered_codes(20_000, 3, 100), strict=True))
    sizes = np.bincount(labels, minlength=100)
    cls = int(np.argsort(np.abs(sizes - np.median(sizes)))[0])
    members = np.flatnonzero(labels == cls)
    d = ((codes[members].astype(np.int64) - codes[members[0]].astype(np.int64)) ** 2).sum(axis=1)
    positives = members[np.argsort(d)[:40]]  # the 40 nearest members: a clump, as a search grid
    with engine.Catalog.create(tmp_path / "rare.duckdb") as cat:
        cat.add_codes(codes)
        cat.build_index()
        train = cat.training_set(positives, guide=True)
        res = cat.refine(positives, random_state=0)
    extra = train.X[len(positives) : int(train.y.sum())]
    in_class = {tuple(c) for c in codes[members]}
    assert all(tuple(c) in in_class for c in extra)
    tp = np.isin(res.ids, members).sum()
    assert tp / len(res.ids) >= 0.9 and tp / len(members) >= 0.5


def test_an_estimator_can_be_passed_instead_of_a_name(catalog):
    from engine.learn import DecisionBranchEnsemble

    path, _, labels = catalog
    positives = np.arange(1000, 4000)[labels == 1][:5]
    est = DecisionBranchEnsemble(n_estimators=5, growth="top-down")
    with engine.Catalog.open(path, read_only=True) as cat:
        res = cat.refine(positives, model=est, random_state=4)
        again = cat.refine(positives, model=est, random_state=4)
    assert not hasattr(est, "boxes_")  # the caller's estimator is cloned, not fitted
    assert res.model.n_estimators == 5 and res.model.subsets is not None
    assert res.stats["model"] == "DecisionBranchEnsemble" and res.stats["members"] == 5
    np.testing.assert_array_equal(res.ids, again.ids)


def test_suggestions_come_from_the_vote_band_just_above_the_threshold(catalog):
    """Rows whose votes lie within SUGGEST_VOTE_MARGIN of the threshold are where the members
    disagree; rows far above it are settled and are never suggested."""
    from engine.index import query
    from engine.learn.guide import Guide

    path, _, _ = catalog
    with engine.Catalog.open(path, read_only=True) as cat:
        index = cat.block_index()
    ids = index.ids[:120]
    votes = np.repeat(np.array([25, 21, 17, 16, 14, 13], np.int32), 20)  # ranked, as select returns
    sel = query.Selection(ids, votes, {})
    empty = np.zeros(0, np.int64)
    train = rf.Training(
        np.zeros((0, 32), np.uint8),
        empty,
        np.zeros(0),
        np.zeros((0, 32), np.uint8),
        0,
        0,
        Guide(np.zeros(32), 0.0),
        empty,
        empty,
    )
    band = ids[(votes >= 13) & (votes < 13 + rf.SUGGEST_VOTE_MARGIN)]
    got = rf.suggest(index, sel, 13, 25, train, labelled=ids[100:105], n=100)
    np.testing.assert_array_equal(np.sort(got), np.setdiff1d(band, ids[100:105]))
    few = rf.suggest(index, sel, 13, 25, train, labelled=empty, n=10)
    assert len(few) == 10 and np.isin(few, band).all()
    # a single model has no votes to disagree on: only the pool's rows are candidates
    assert len(rf.suggest(index, sel, 1, 1, train, labelled=empty, n=10)) == 0


@pytest.fixture(scope="module")
def rare_catalog(tmp_path_factory):
    """200,000 codes in 1,000 clusters (classes of 0.1%): the sampling pool is 8% of the catalog
    and holds a handful of a class's members."""
    from engine.datasets import synth

    codes, labels = (np.concatenate(p) for p in zip(*synth.clustered_codes(200_000, 5, 1000), strict=True))
    path = tmp_path_factory.mktemp("rare") / "rare.duckdb"
    with engine.Catalog.create(path) as cat:
        cat.add_codes(codes)
        cat.build_index()
    return path, codes, labels


def _grid(codes, members, n=40):
    d = ((codes[members].astype(np.int64) - codes[members[0]].astype(np.int64)) ** 2).sum(axis=1)
    return members[np.argsort(d)[:n]]  # the members nearest one of them: a clump, as a search grid


@pytest.mark.parametrize("which", range(3))
def test_a_catalog_ten_times_the_pool_guides_from_rows_near_the_positives(rare_catalog, which):
    path, codes, labels = rare_catalog
    sizes = np.bincount(labels)
    cls = int(np.argsort(np.abs(sizes - np.median(sizes)), kind="stable")[which])
    members = np.flatnonzero(labels == cls)  # ids are 0..n-1
    positives = _grid(codes, members)
    with engine.Catalog.open(path, read_only=True) as cat:
        train = cat.training_set(positives, guide=True)
        guided = cat.refine(positives, random_state=0)
        plain = cat.refine(positives, random_state=0, guide=False)
        index = cat.block_index()
        pool = cat.snapshot().pool(500)[0]
    assert index.n_rows >= 10 * len(pool)
    assert np.isin(members, index.ids[pool]).sum() < rf.MIN_HELD_POSITIVES  # the pool barely holds the class
    # the pseudo-positives come from the rows near the positives, and are of the class
    assert train.n_pseudo >= 50 and not np.isin(train.pseudo, pool).all()
    assert np.mean(labels[index.ids[train.pseudo]] == cls) >= 0.95
    # too few held-out guide positives to calibrate on: the ensemble keeps its majority
    assert train.held_positives < rf.MIN_HELD_POSITIVES and guided.stats["min_votes"] == 13

    def prf(ids):
        tp = np.isin(ids, members).sum()
        return tp / max(len(ids), 1), tp / len(members)

    (p, r), (p0, r0) = prf(guided.ids), prf(plain.ids)
    assert p >= 0.95 and len(guided.ids) <= 2 * len(members)
    assert 2 * p * r / (p + r) >= 2 * p0 * r0 / (p0 + r0) - 0.01  # no worse than without the guide


@pytest.mark.e2e
def test_the_calibrated_threshold_beats_the_majority_on_held_out_rows(tmp_path):
    """On curved bands, where the members' majority is too strict or too loose depending on the
    class, the threshold fitted to the guide on one half of the pool agrees better with the true
    class on rows no model trained on than the fixed majority (13 of 25) does."""
    from engine.datasets import synth
    from engine.index import query

    path = tmp_path / "bands.duckdb"
    labels = synth.bands_catalog(path, 20_000, 10, 3)
    ids = np.arange(20_000)  # add_codes numbers rows 0..n-1
    calibrated, majority = [], []
    with engine.Catalog.open(path, read_only=True) as cat:
        index = cat.block_index()
        for cls in range(10):
            for n_pos in (4, 8, 16):
                positives = ids[labels == cls][:n_pos]
                res = cat.refine(positives, random_state=0, suggestions=0)
                train = cat.training_set(positives, guide=True)
                assert train.held_positives >= rf.MIN_HELD_POSITIVES  # classes of 10%: calibrated
                assert not np.isin(
                    train.held, np.concatenate([train.pseudo, index.positions(positives)])
                ).any()
                votes = query.votes(np.ascontiguousarray(index.cols[:, train.held]), res.model.boxes_)
                truth = labels[index.ids[train.held]] == cls

                def f1(t, votes=votes, truth=truth):
                    return 2 * ((votes >= t) & truth).sum() / ((votes >= t).sum() + truth.sum())

                calibrated.append(f1(res.model.min_votes_))
                majority.append(f1(13))
    calibrated, majority = np.array(calibrated), np.array(majority)
    assert calibrated.mean() >= majority.mean() + 0.01
    assert (calibrated > majority).sum() >= 2 * (calibrated < majority).sum()
