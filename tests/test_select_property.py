"""Catalog.select against a brute-force numpy oracle, and result.sql against plain DuckDB.

The oracle below is deliberately independent of the engine: it works from the box dicts the
test generated (integer dims), never from ``BoxSet.lo``/``hi`` or any engine helper.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import engine

N_DIMS = 32
SMALL_BS = 16

# How rows with equal votes are ranked. The contract this suite was written against is
# "votes descending, then id ascending" (for Catalog.select and for BoxSet.to_sql). Set to "pos"
# to check "votes descending, then position in block order" instead.
TIE_BREAK = "pos"  # equal votes rank by catalog position (block order), as the compiled SQL does


# -- the oracle ------------------------------------------------------------------------------
def oracle(
    codes: np.ndarray,
    ids: np.ndarray,
    boxes: list[dict],
    members: list[int],
    min_votes: int,
    tie: np.ndarray | None = None,
):
    """Expected (ids, votes): rows with >= max(1, min_votes) distinct-member votes, ranked by
    votes descending then by ``tie`` ascending (default: the id). ``boxes`` are
    ``{int dim: (lo, hi)}``."""
    codes = np.asarray(codes, dtype=np.int16).reshape(-1, N_DIMS)
    ids = np.asarray(ids, dtype=np.int64)
    tie = ids if tie is None else np.asarray(tie, dtype=np.int64)
    n, n_boxes = codes.shape[0], len(boxes)
    need = max(1, int(min_votes))
    lo = np.zeros((n_boxes, N_DIMS), dtype=np.int16)
    hi = np.full((n_boxes, N_DIMS), 255, dtype=np.int16)
    for i, box in enumerate(boxes):
        for d, (a, b) in box.items():
            lo[i, d] = max(lo[i, d], a)
            hi[i, d] = min(hi[i, d], b)
    inside = np.zeros((n, n_boxes), dtype=bool)
    for s in range(0, n_boxes, 64):
        e = min(n_boxes, s + 64)
        inside[:, s:e] = ((codes[:, None, :] >= lo[None, s:e]) & (codes[:, None, :] <= hi[None, s:e])).all(
            axis=2
        )
    members = np.asarray(members, dtype=np.int64).reshape(n_boxes)
    votes = np.zeros(n, dtype=np.int64)
    for m in np.unique(members):
        votes += inside[:, members == m].any(axis=1)
    keep = votes >= need
    out_ids, out_votes = ids[keep], votes[keep]
    order = np.lexsort((tie[keep], -out_votes))
    return out_ids[order], out_votes[order]


def test_oracle_sanity():
    """The oracle itself, on a hand-checked example."""
    codes = np.zeros((4, N_DIMS), dtype=np.uint8)
    codes[:, 0] = [0, 10, 20, 255]
    codes[:, 1] = [5, 5, 200, 255]
    ids = np.array([7, 3, 9, 1])
    boxes = [{0: (0, 10)}, {1: (5, 5)}, {0: (20, 255)}, {}]
    got = oracle(codes, ids, boxes, [0, 1, 1, 2], 1)
    # id 7: members 0,1,2 -> 3; id 3: 0,1,2 -> 3; id 9: 1,2 -> 2; id 1: 1,2 -> 2
    assert got[0].tolist() == [3, 7, 1, 9] and got[1].tolist() == [3, 3, 2, 2]
    got = oracle(codes, ids, boxes[:3], [0, 1, 1], 2)
    assert got[0].tolist() == [3, 7] and got[1].tolist() == [2, 2]
    assert oracle(codes, ids, [], [], 1)[0].size == 0


# -- catalogs, built once per module ---------------------------------------------------------
@dataclass(repr=False)
class Spec:
    name: str
    path: Path
    codes: np.ndarray  # every row, aligned with ids (any order)
    ids: np.ndarray
    unindexed: int  # rows past the last index build
    cat: engine.Catalog | None = None
    con: duckdb.DuckDBPyConnection | None = None
    pos: np.ndarray | None = None  # codes.pos of each row, read with plain SQL (for TIE_BREAK="pos")

    def __repr__(self) -> str:
        return f"<catalog {self.name!r}: {len(self.ids)} rows>"

    def load_pos(self) -> None:
        pos_of = dict(self.con.execute("SELECT id, pos FROM codes").fetchall())
        self.pos = np.array([pos_of[i] for i in self.ids.tolist()], dtype=np.int64)


def _uniform(rng, n):
    return rng.integers(0, 256, size=(n, N_DIMS), dtype=np.uint8)


def _clustered(rng, n, k=6, spread=5):
    centres = rng.integers(spread, 256 - spread, size=(k, N_DIMS))
    noise = rng.integers(-spread, spread + 1, size=(n, N_DIMS))
    return np.clip(centres[rng.integers(0, k, n)] + noise, 0, 255).astype(np.uint8)


def _mixed(rng, n):
    c = np.concatenate([_clustered(rng, n - n // 4), _uniform(rng, n // 4)])
    return c[rng.permutation(n)]


def _extremes(rng, n):
    """Codes made of 0, 1, 254 and 255 (plus all-0 and all-255 rows) to hit the bounds."""
    codes = rng.choice(np.array([0, 1, 254, 255], dtype=np.uint8), size=(n, N_DIMS))
    codes[0], codes[1] = 0, 255
    return codes


def _build_catalogs(root: Path) -> dict[str, Spec]:
    rng = np.random.default_rng(20240601)
    specs: dict[str, Spec] = {}

    def plain(name, codes, block_size, ids=None):
        path = root / f"{name}.duckdb"
        with engine.Catalog.create(path) as cat:
            got = cat.add_codes(codes, ids=ids)
            if block_size is not None:
                cat.build_index(block_size=block_size)
        specs[name] = Spec(name, path, codes, got, 0 if block_size is not None else len(codes))

    plain("empty", np.zeros((0, N_DIMS), np.uint8), SMALL_BS)
    plain("one", _uniform(rng, 1), SMALL_BS)
    plain("bs_minus_1", _mixed(rng, SMALL_BS - 1), SMALL_BS)
    plain("bs", _mixed(rng, SMALL_BS), SMALL_BS)
    plain("bs_plus_1", _mixed(rng, SMALL_BS + 1), SMALL_BS)
    plain("extremes", _extremes(rng, 40), SMALL_BS)
    # Clustered rows with scattered, partly negative ids and some exact duplicate codes.
    codes = _mixed(rng, 1970)
    codes = np.concatenate([codes, codes[:30]])
    ids = rng.choice(2 * 10**9, size=len(codes), replace=False).astype(np.int64) - 10**9
    plain("clustered", codes, 64, ids=ids)

    # Rows added after the index build sit in an unindexed tail.
    path = root / "tail.duckdb"
    base, add1, add2 = _mixed(rng, 600), _clustered(rng, 50), _uniform(rng, 45)
    with engine.Catalog.create(path) as cat:
        i0 = cat.add_codes(base)
        cat.build_index(block_size=32)
        i1 = cat.add_codes(add1)
        i2 = cat.add_codes(add2, ids=np.arange(10**6, 10**6 + 45)[::-1])
        assert cat.index_status()["stale"] is True
    specs["tail"] = Spec("tail", path, np.concatenate([base, add1, add2]), np.concatenate([i0, i1, i2]), 95)

    # Never indexed: two batches in insertion order only.
    path = root / "never.duckdb"
    b1, b2 = _mixed(rng, 200), _uniform(rng, 100)
    with engine.Catalog.create(path) as cat:
        i1 = cat.add_codes(b1)
        i2 = cat.add_codes(b2)
    specs["never"] = Spec("never", path, np.concatenate([b1, b2]), np.concatenate([i1, i2]), 300)

    # Index built on an empty catalog, then rows added.
    path = root / "empty_then_tail.duckdb"
    b1 = _mixed(rng, 40)
    with engine.Catalog.create(path) as cat:
        cat.build_index(block_size=SMALL_BS)
        i1 = cat.add_codes(b1)
    specs["empty_then_tail"] = Spec("empty_then_tail", path, b1, i1, 40)
    return specs


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory):
    specs = _build_catalogs(tmp_path_factory.mktemp("select_catalogs"))
    # Catalogs are closed after building; each is now opened read-only by the engine and by a
    # plain DuckDB connection with the same (read-only) configuration.
    for spec in specs.values():
        spec.cat = engine.Catalog.open(spec.path, read_only=True)
        spec.con = duckdb.connect(str(spec.path), read_only=True)
        spec.load_pos()
    yield specs
    for spec in specs.values():
        spec.cat.close()
        spec.con.close()


CATALOG_NAMES = [
    "empty",
    "one",
    "bs_minus_1",
    "bs",
    "bs_plus_1",
    "extremes",
    "clustered",
    "tail",
    "never",
    "empty_then_tail",
]


# -- checking one query ----------------------------------------------------------------------
def _dim_key(d: int, style: int):
    return [d, str(d), f"f{d:02d}", np.int64(d)][style % 4]


def _engine_input(boxes, members, mode: int, styles: list[int]):
    """The same box set in one of several input forms accepted by Catalog.select."""
    if mode == 0:
        return engine.BoxSet(
            [{_dim_key(d, s): b for d, b in box.items()} for box, s in zip(boxes, styles, strict=True)],
            members,
        )
    if mode == 1:
        return {
            "boxes": [
                {_dim_key(d, s % 3): list(b) for d, b in box.items()}
                for box, s in zip(boxes, styles, strict=True)
            ],
            "members": list(members),
        }
    if mode == 2:
        return json.dumps(
            {
                "boxes": [
                    {(str(d) if s % 2 else f"f{d:02d}"): list(b) for d, b in box.items()}
                    for box, s in zip(boxes, styles, strict=True)
                ],
                "members": list(members),
            }
        )
    lo = np.zeros((len(boxes), N_DIMS), dtype=np.int64)
    hi = np.full((len(boxes), N_DIMS), 255, dtype=np.int64)
    for i, box in enumerate(boxes):
        for d, (a, b) in box.items():
            lo[i, d], hi[i, d] = a, b
    return engine.BoxSet.from_arrays(lo, hi, members)


def check_select(spec: Spec, boxes, members, min_votes, mode=0, styles=None):
    """Engine result and its SQL (run by plain DuckDB) against the oracle."""
    styles = styles if styles is not None else [0] * len(boxes)
    tie = spec.pos if TIE_BREAK == "pos" else spec.ids
    exp_ids, exp_votes = oracle(spec.codes, spec.ids, boxes, members, min_votes, tie=tie)
    expected = list(zip(exp_ids.tolist(), exp_votes.tolist(), strict=True))
    res = spec.cat.select(_engine_input(boxes, members, mode, styles), min_votes=min_votes)
    assert res.ids.dtype == np.int64 and res.ids.shape == res.votes.shape
    got = list(zip(res.ids.tolist(), res.votes.tolist(), strict=True))
    cur = spec.con.execute(res.sql)
    assert [c[0] for c in cur.description] == ["id", "votes"]
    from_sql = [tuple(r) for r in cur.fetchall()]
    # The right rows with the right votes ...
    assert sorted(got) == sorted(expected), "Catalog.select returned wrong rows or votes"
    assert sorted(from_sql) == sorted(expected), "result.sql returned wrong rows or votes"
    # ... ranked by votes, the SQL in the same order as the engine ...
    assert all(a >= b for a, b in zip(res.votes[:-1], res.votes[1:], strict=True)), "not ranked by votes"
    assert from_sql == got, "result.sql ranks the rows differently from Catalog.select"
    # ... and ties broken as the contract says.
    assert got == expected, f"rows with equal votes are not ranked by {TIE_BREAK} ascending"
    st_ = res.stats
    assert st_["rows"] == len(spec.ids)
    assert st_["unindexed_rows"] == spec.unindexed
    assert st_["results"] == len(exp_ids)
    assert st_["boxes"] == len(boxes)
    assert st_["members"] == len(set(members))
    assert st_["blocks_touched"] <= st_["blocks"]
    assert (
        len(exp_ids) <= st_["rows_in_touched_blocks"] <= st_["rows"]
    )  # every result lies in a touched block
    return res


# -- strategies ------------------------------------------------------------------------------
@st.composite
def a_box(draw, codes: np.ndarray) -> dict:
    n_dims = draw(st.sampled_from([0] + list(range(1, 9)) * 3))
    dims = draw(st.lists(st.integers(0, N_DIMS - 1), min_size=n_dims, max_size=n_dims, unique=True))
    anchor = codes[draw(st.integers(0, len(codes) - 1))] if len(codes) else None
    box = {}
    for d in dims:
        kind = draw(st.sampled_from(["near", "near", "near", "random", "low", "high", "point", "full"]))
        if kind == "near" and anchor is not None:
            c = int(anchor[d])
            lo, hi = max(0, c - draw(st.integers(0, 40))), min(255, c + draw(st.integers(0, 40)))
        elif kind == "low":
            lo, hi = 0, draw(st.integers(0, 255))
        elif kind == "high":
            lo, hi = draw(st.integers(0, 255)), 255
        elif kind == "point":
            v = int(anchor[d]) if anchor is not None and draw(st.booleans()) else draw(st.integers(0, 255))
            lo = hi = v
        elif kind == "full":
            lo, hi = 0, 255
        else:
            lo, hi = sorted([draw(st.integers(0, 255)), draw(st.integers(0, 255))])
        box[d] = (lo, hi)
    return box


@st.composite
def small_box_sets(draw, codes: np.ndarray):
    n_members = draw(st.integers(1, 25))
    labels = draw(st.lists(st.integers(-(2**40), 2**40), min_size=n_members, max_size=n_members, unique=True))
    n_boxes = draw(st.integers(1, 30))
    boxes = [draw(a_box(codes)) for _ in range(n_boxes)]
    members = [labels[draw(st.integers(0, n_members - 1))] for _ in range(n_boxes)]
    for _ in range(draw(st.integers(0, 3))):  # duplicate boxes, same or another member
        i = draw(st.integers(0, len(boxes) - 1))
        boxes.append(dict(boxes[i]))
        members.append(members[i] if draw(st.booleans()) else labels[draw(st.integers(0, n_members - 1))])
    return boxes, members


def numpy_box_set(codes: np.ndarray, seed: int, n_boxes: int, n_members: int):
    """A large box set drawn by numpy (hypothesis draws only its parameters)."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(10**6, size=n_members, replace=False) - 500_000
    boxes = []
    for _ in range(n_boxes):
        k = int(rng.integers(1, 9))
        box = {}
        anchor = codes[rng.integers(len(codes))] if len(codes) else None
        for d in rng.choice(N_DIMS, size=k, replace=False).tolist():
            r = rng.random()
            if r < 0.6 and anchor is not None:
                c = int(anchor[d])
                box[d] = (max(0, c - int(rng.integers(0, 50))), min(255, c + int(rng.integers(0, 50))))
            elif r < 0.7:
                box[d] = (0, int(rng.integers(0, 256)))
            elif r < 0.8:
                box[d] = (int(rng.integers(0, 256)), 255)
            else:
                a, b = sorted(rng.integers(0, 256, size=2).tolist())
                box[d] = (a, b)
        boxes.append(box)
    n_dup = n_boxes // 10
    for i in rng.integers(0, n_boxes, size=n_dup).tolist():
        boxes.append(dict(boxes[i]))
    members = labels[rng.integers(0, n_members, size=len(boxes))].tolist()
    return boxes, members


_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- property tests --------------------------------------------------------------------------
@settings(max_examples=150, **_SETTINGS)
@given(data=st.data())
def test_select_matches_oracle_small_box_sets(catalogs, data):
    spec = catalogs[data.draw(st.sampled_from(CATALOG_NAMES), label="catalog")]
    boxes, members = data.draw(small_box_sets(spec.codes), label="boxes")
    n_members = len(set(members))
    min_votes = data.draw(st.one_of(st.just(1), st.integers(1, n_members + 1)), label="min_votes")
    mode = data.draw(st.integers(0, 3), label="input form")
    styles = data.draw(
        st.lists(st.integers(0, 3), min_size=len(boxes), max_size=len(boxes)), label="dim styles"
    )
    check_select(spec, boxes, members, min_votes, mode, styles)


# No shrinking here: the boxes come from a numpy seed, and each example may run an 800-box SQL
# query, so shrinking would cost minutes and produce little.
@settings(max_examples=8, phases=(Phase.explicit, Phase.reuse, Phase.generate), **_SETTINGS)
@given(data=st.data())
def test_select_matches_oracle_large_box_sets(catalogs, data):
    spec = catalogs[data.draw(st.sampled_from(["clustered", "tail", "never", "bs_plus_1"]), label="catalog")]
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    n_boxes = data.draw(st.integers(31, 800), label="n_boxes")
    n_members = data.draw(st.integers(1, 25), label="n_members")
    boxes, members = numpy_box_set(spec.codes, seed, n_boxes, n_members)
    min_votes = data.draw(st.integers(1, len(set(members)) + 1), label="min_votes")
    check_select(spec, boxes, members, min_votes, mode=data.draw(st.sampled_from([0, 3])))


@contextlib.contextmanager
def _force_parallel_kernels():
    """Lower the engine's size thresholds for its parallel kernels (if it has them) to zero, so
    small queries run the parallel prune and scan too."""
    import engine.index.query as q

    names = [n for n in ("PARALLEL_MIN_BOXES", "PARALLEL_MIN_ROW_TESTS") if hasattr(q, n)]
    old = {n: getattr(q, n) for n in names}
    try:
        for n in names:
            setattr(q, n, 0)
        yield
    finally:
        for n, v in old.items():
            setattr(q, n, v)


@settings(max_examples=60, **_SETTINGS)
@given(data=st.data())
def test_select_matches_oracle_parallel_kernels(catalogs, data):
    spec = catalogs[data.draw(st.sampled_from(CATALOG_NAMES), label="catalog")]
    boxes, members = data.draw(small_box_sets(spec.codes), label="boxes")
    min_votes = data.draw(st.integers(1, len(set(members)) + 1), label="min_votes")
    with _force_parallel_kernels():
        check_select(spec, boxes, members, min_votes)


def test_large_query_on_larger_catalog(tmp_path):
    """20 000 rows and 64 wide boxes: over a million row tests, the engine's big-query path."""
    rng = np.random.default_rng(77)
    path = tmp_path / "big.duckdb"
    codes = _mixed(rng, 20_000)
    with engine.Catalog.create(path) as cat:
        ids = cat.add_codes(codes, ids=rng.choice(10**9, 20_000, replace=False))
        cat.build_index(block_size=256)
    boxes = []
    for _ in range(64):
        dims = rng.choice(N_DIMS, size=2, replace=False).tolist()
        boxes.append({d: (int(rng.integers(0, 40)), int(rng.integers(215, 256))) for d in dims})
    members = (np.arange(64) % 9).tolist()
    with engine.Catalog.open(path, read_only=True) as cat:
        spec = Spec("big", path, codes, ids, 0, cat=cat, con=duckdb.connect(str(path), read_only=True))
        try:
            spec.load_pos()
            for mv in (1, 5, 9):
                res = check_select(spec, boxes, members, mv)
                assert res.ids.size > 0
        finally:
            spec.con.close()


# -- deterministic cases ---------------------------------------------------------------------
@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_box_covering_everything(catalogs, name):
    spec = catalogs[name]
    res = check_select(spec, [{}], [0], 1)
    assert sorted(res.ids.tolist()) == sorted(spec.ids.tolist())
    assert set(res.votes.tolist()) <= {1}
    # {} in three members: every row gets three votes.
    res = check_select(spec, [{}, {}, {}], [4, 9, 2], 3)
    assert len(res.ids) == len(spec.ids) and set(res.votes.tolist()) <= {3}


@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_empty_box_set(catalogs, name):
    spec = catalogs[name]
    for mv in (1, 2):
        res = check_select(spec, [], [], mv)
        assert res.ids.size == 0 and res.votes.size == 0
    res = spec.cat.select(engine.BoxSet([]))
    assert res.ids.size == 0
    assert spec.con.execute(res.sql).fetchall() == []


@pytest.mark.parametrize("name", CATALOG_NAMES)
def test_full_range_dims_are_unconstrained(catalogs, name):
    spec = catalogs[name]
    res = check_select(spec, [{d: (0, 255) for d in range(N_DIMS)}], [0], 1)
    assert len(res.ids) == len(spec.ids)
    assert "BETWEEN" not in res.sql


@pytest.mark.parametrize("name", ["extremes", "clustered", "one"])
def test_bounds_at_0_and_255(catalogs, name):
    spec = catalogs[name]
    for d in (0, 13, 31):
        for lo, hi in [(0, 0), (255, 255), (0, 1), (254, 255), (1, 254), (0, 254), (1, 255)]:
            check_select(spec, [{d: (lo, hi)}], [0], 1)
    boxes = [{0: (0, 0), 1: (0, 0)}, {0: (255, 255)}, {31: (254, 255), 5: (0, 1)}]
    for mv in (1, 2, 3):
        check_select(spec, boxes, [0, 1, 2], mv)
        check_select(spec, boxes, [0, 0, 1], mv)


def test_extremes_catalog_hits_both_ends(catalogs):
    spec = catalogs["extremes"]
    assert len(check_select(spec, [{d: (0, 0) for d in range(N_DIMS)}], [0], 1).ids) >= 1
    assert len(check_select(spec, [{d: (255, 255) for d in range(N_DIMS)}], [0], 1).ids) >= 1


@pytest.mark.parametrize("name", ["clustered", "tail", "never", "bs_plus_1"])
def test_boxes_containing_no_data(catalogs, name):
    spec = catalogs[name]
    # A value that no row has on some dim: a point box there holds nothing.
    for d in range(N_DIMS):
        absent = np.setdiff1d(np.arange(256), spec.codes[:, d])
        if absent.size:
            break
    else:  # pragma: no cover - every dim takes all 256 values
        pytest.skip("no absent value")
    v = int(absent[0])
    empty_box = {d: (v, v)}
    res = check_select(spec, [empty_box], [0], 1)
    assert res.ids.size == 0
    # One member whose only box is empty still counts as a member; it never votes.
    res = check_select(spec, [empty_box, {}, empty_box], [1, 2, 3], 1)
    assert len(res.ids) == len(spec.ids) and set(res.votes.tolist()) <= {1}
    assert check_select(spec, [empty_box, {}], [1, 2], 2).ids.size == 0


@pytest.mark.parametrize("name", ["clustered", "tail", "bs"])
def test_duplicate_boxes(catalogs, name):
    spec = catalogs[name]
    row = spec.codes[len(spec.codes) // 2].astype(int)
    box = {3: (max(0, row[3] - 30), min(255, row[3] + 30)), 8: (max(0, row[8] - 30), min(255, row[8] + 30))}
    one = check_select(spec, [box], [0], 1)
    assert len(one.ids) >= 1
    same_member = check_select(spec, [box, dict(box), dict(box)], [5, 5, 5], 1)
    assert same_member.ids.tolist() == one.ids.tolist() and set(same_member.votes.tolist()) == {1}
    two_members = check_select(spec, [box, dict(box)], [5, 6], 2)
    assert sorted(two_members.ids.tolist()) == sorted(one.ids.tolist())
    assert set(two_members.votes.tolist()) == {2}


@pytest.mark.parametrize("name", ["clustered", "tail", "never"])
def test_min_votes_above_member_count_is_empty(catalogs, name):
    spec = catalogs[name]
    boxes = [{}, {0: (0, 200)}, {1: (50, 255)}]
    assert check_select(spec, boxes, [0, 1, 2], 4).ids.size == 0
    assert check_select(spec, boxes, [0, 0, 0], 2).ids.size == 0
    res = check_select(spec, boxes, [0, 1, 2], 3)
    assert set(res.votes.tolist()) <= {3}


@pytest.mark.parametrize("name", ["clustered", "tail"])
def test_min_votes_below_one_agrees_with_sql(catalogs, name):
    """min_votes <= 0: the engine and its SQL must agree (both treat it as the plain union)."""
    spec = catalogs[name]
    bs = engine.BoxSet([{0: (0, 100)}, {1: (120, 255)}], members=[0, 1])
    base = spec.cat.select(bs, min_votes=1)
    for mv in (0, -3):
        res = spec.cat.select(bs, min_votes=mv)
        assert res.ids.tolist() == base.ids.tolist() and res.votes.tolist() == base.votes.tolist()
        rows = spec.con.execute(res.sql).fetchall()
        assert [r[0] for r in rows] == res.ids.tolist()


def test_800_boxes_25_members(catalogs):
    spec = catalogs["clustered"]
    boxes, members = numpy_box_set(spec.codes, 99, 800, 25)
    boxes, members = boxes[:800], members[:800]
    assert len(set(members)) == 25
    for mv in (1, 4):
        res = check_select(spec, boxes, members, mv)
        assert res.ids.size > 0


def test_pruning_skips_blocks_on_clustered_data(catalogs):
    spec = catalogs["clustered"]
    # A tight box around one row of the clustered data.
    row = spec.codes[0].astype(int)
    box = {d: (max(0, row[d] - 3), min(255, row[d] + 3)) for d in range(0, N_DIMS, 4)}
    res = check_select(spec, [box], [0], 1)
    assert spec.ids[0] in res.ids
    assert res.stats["blocks"] >= 16
    assert res.stats["blocks_touched"] < res.stats["blocks"]
    assert res.stats["rows_in_touched_blocks"] < len(spec.ids)


def test_unindexed_tail_is_reported(catalogs):
    spec = catalogs["tail"]
    status = spec.cat.index_status()
    assert status["stale"] is True and status["unindexed_rows"] == 95 and status["rows"] == 695
    # Rows from the tail batches are found.
    tail_ids = spec.ids[-95:]
    res = check_select(spec, [{}], [0], 1)
    assert set(tail_ids.tolist()) <= set(res.ids.tolist())
    assert catalogs["never"].cat.index_status()["stale"] is True
    assert catalogs["clustered"].cat.index_status()["stale"] is False
    assert catalogs["clustered"].cat.select([{}]).stats["unindexed_rows"] == 0


# -- writable catalog: interleaved adds, builds and selects ----------------------------------
QUERIES = [
    ([{0: (0, 127)}], [0], 1),
    ([{0: (0, 127), 1: (64, 255)}, {2: (0, 60)}, {3: (200, 255), 4: (0, 90)}], [0, 1, 2], 1),
    ([{0: (0, 127), 1: (64, 255)}, {2: (0, 60)}, {3: (200, 255), 4: (0, 90)}], [0, 1, 2], 2),
    ([{5: (10, 90)}, {5: (80, 200)}, {6: (0, 0)}, {}], [3, 3, 4, 7], 2),
    ([{d: (40, 215) for d in range(8)}], [0], 1),
]


def test_interleaved_adds_builds_and_selects(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "live.duckdb"
    all_codes = np.zeros((0, N_DIMS), np.uint8)
    all_ids = np.zeros(0, np.int64)
    steps = [
        ("add", 10),
        ("add", 25),
        ("build", 16),
        ("add", 1),
        ("add", 40),
        ("build", 8),
        ("build", 8),
        ("add", 17),
        ("add", 0),
        ("build", 64),
        ("add", 70),
    ]
    cat = engine.Catalog.create(path)
    unindexed = 0
    try:
        spec = Spec("live", path, all_codes, all_ids, 0, cat=cat, con=cat.store.con)
        for op, arg in steps:
            if op == "add":
                codes = _mixed(rng, arg)
                ids = cat.add_codes(codes)
                all_codes = np.concatenate([all_codes, codes])
                all_ids = np.concatenate([all_ids, ids])
                unindexed += arg
            else:
                cat.build_index(block_size=arg)
                unindexed = 0
            assert len(cat) == len(all_ids)
            status = cat.index_status()
            assert status["unindexed_rows"] == unindexed and status["stale"] is (unindexed > 0)
            spec.codes, spec.ids, spec.unindexed = all_codes, all_ids, unindexed
            spec.load_pos()
            for boxes, members, mv in QUERIES:
                check_select(spec, boxes, members, mv)
        results = [cat.select(engine.BoxSet(b, m), min_votes=mv) for b, m, mv in QUERIES]
    finally:
        cat.close()
    # After closing, a fresh plain read-only DuckDB connection returns the same rows.
    con = duckdb.connect(str(path), read_only=True)
    try:
        for res in results:
            rows = con.execute(res.sql).fetchall()
            assert [r[0] for r in rows] == res.ids.tolist()
            assert [r[1] for r in rows] == res.votes.tolist()
    finally:
        con.close()


def test_sql_on_fresh_connection_after_close(tmp_path):
    """result.sql run by an independent read-only connection opened only after the catalog is closed."""
    rng = np.random.default_rng(11)
    path = tmp_path / "fresh.duckdb"
    codes = _mixed(rng, 500)
    with engine.Catalog.create(path) as cat:
        ids = cat.add_codes(codes, ids=rng.choice(10**7, 500, replace=False))
        cat.build_index(block_size=32)
        extra = _uniform(rng, 33)
        ids = np.concatenate([ids, cat.add_codes(extra)])
        codes = np.concatenate([codes, extra])
        spec = Spec("fresh", path, codes, ids, 33, cat=cat, con=cat.store.con)
        spec.load_pos()
        queries = []
        for k in range(8):
            boxes, members = numpy_box_set(codes, 1000 + k, 5 + 20 * k, 1 + 3 * k)
            queries.append((boxes, members, 1 + k % 3))
        results = [cat.select(engine.BoxSet(b, m), min_votes=mv) for b, m, mv in queries]
    con = duckdb.connect(str(path), read_only=True)
    try:
        spec.cat, spec.con = None, con
        for (boxes, members, mv), res in zip(queries, results, strict=True):
            tie = spec.pos if TIE_BREAK == "pos" else ids
            exp_ids, exp_votes = oracle(codes, ids, boxes, members, mv, tie=tie)
            assert sorted(zip(res.ids.tolist(), res.votes.tolist(), strict=True)) == sorted(
                zip(exp_ids.tolist(), exp_votes.tolist(), strict=True)
            )
        for res in results:
            rows = con.execute(res.sql).fetchall()
            assert [r[0] for r in rows] == res.ids.tolist()
            assert [r[1] for r in rows] == res.votes.tolist()
    finally:
        con.close()
