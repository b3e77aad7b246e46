"""BoxSet unit tests: parsing, JSON round trips, SQL text, from_arrays validation."""

from __future__ import annotations

import json
import re

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from engine import BoxSet, InvalidBoxes

N_DIMS = 32
# See test_select_property.py: the contract is "votes descending, then id ascending".
TIE_BREAK = "pos"  # equal votes rank by catalog position (block order), as the compiled SQL does
BETWEEN = re.compile(r"\bf(\d{2}) BETWEEN (\d+) AND (\d+)\b")


# -- dims --------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", [3, "3", "f03", np.int64(3), np.uint8(3), " 3", "03"])
def test_dim_names_parse_to_the_same_dim(key):
    bs = BoxSet([{key: (10, 40)}])
    assert bs.box(0) == {3: (10, 40)}
    assert bs.constrained(0) == [3]
    assert bs == BoxSet([{3: (10, 40)}])


@pytest.mark.parametrize("d", [0, 9, 10, 31])
def test_dim_name_forms_all_dims(d):
    expected = BoxSet([{d: (1, 2)}])
    for key in (d, str(d), f"f{d:02d}"):
        assert BoxSet([{key: (1, 2)}]) == expected
    assert expected.lo[0, d] == 1 and expected.hi[0, d] == 2


@pytest.mark.parametrize(
    "key", [32, -1, 100, "32", "-1", "f32", "f99", "x", "f3", "f003", "", "3.0", 3.0, True, None, (3,)]
)
def test_bad_dims_rejected(key):
    with pytest.raises(InvalidBoxes):
        BoxSet([{key: (1, 2)}])


def test_same_dim_named_twice_intersects():
    bs = BoxSet([{"3": [10, 40], "f03": [20, 50], 3: (0, 45)}])
    assert bs.box(0) == {3: (20, 40)}
    with pytest.raises(InvalidBoxes):
        BoxSet([{"3": [10, 20], "f03": [30, 50]}])


# -- bounds ------------------------------------------------------------------------------------
@pytest.mark.parametrize("bounds", [(10, 40), [10, 40], np.array([10, 40]), (np.uint8(10), np.int64(40))])
def test_bound_forms(bounds):
    assert BoxSet([{5: bounds}]).box(0) == {5: (10, 40)}


def test_bounds_at_extremes_and_points():
    bs = BoxSet([{0: (0, 0), 1: (255, 255), 2: (0, 254), 3: (1, 255), 4: (0, 255), 5: (7, 7)}])
    assert bs.box(0) == {0: (0, 0), 1: (255, 255), 2: (0, 254), 3: (1, 255), 5: (7, 7)}
    assert 4 not in bs.constrained(0)


@pytest.mark.parametrize("bounds", [(5, 4), (255, 0), (1, 0)])
def test_lo_greater_than_hi_rejected(bounds):
    with pytest.raises(InvalidBoxes):
        BoxSet([{3: bounds}])


@pytest.mark.parametrize("bounds", [(0, 256), (-1, 5), (256, 300), (0, 10**20), (-(10**20), 0)])
def test_bounds_outside_0_255_rejected(bounds):
    with pytest.raises(InvalidBoxes):
        BoxSet([{3: bounds}])


@pytest.mark.parametrize(
    "bounds",
    [
        (1.5, 3),
        ("1", 3),
        (None, 3),
        (True, 3),
        (0, False),
        ([1], 3),
        (float("nan"), 3),
        (1, float("inf")),
        (1,),
        (1, 2, 3),
        (),
        "ab",
        5,
        {"lo": 1, "hi": 2},
        None,
    ],
)
def test_malformed_bounds_rejected(bounds):
    with pytest.raises(InvalidBoxes):
        BoxSet([{3: bounds}])


@pytest.mark.parametrize(
    "boxes", ["[{}]", b"[]", {"3": (1, 2)}, [[3, (1, 2)]], [5], ["f03"], [None], 5, None]
)
def test_boxes_must_be_a_list_of_mappings(boxes):
    with pytest.raises(InvalidBoxes):
        BoxSet(boxes)


def test_errors_are_catalog_errors_and_value_errors():
    with pytest.raises(engine.CatalogError):
        BoxSet([{3: (5, 4)}])
    with pytest.raises(ValueError):
        BoxSet([{3: (5, 4)}])


# -- members -----------------------------------------------------------------------------------
def test_members_default_to_one_member():
    bs = BoxSet([{1: (0, 9)}, {2: (5, 9)}])
    assert bs.members.tolist() == [0, 0] and bs.members.dtype == np.int64
    assert bs.n_members == 1


def test_n_members_counts_distinct_members():
    assert BoxSet([]).n_members == 0
    assert BoxSet([{}]).n_members == 1
    assert BoxSet([{}, {}, {}], members=[5, 5, -1]).n_members == 2
    assert BoxSet([{}] * 4, members=[3, 2, 1, 0]).n_members == 4
    assert BoxSet([{}] * 3, members=np.array([7, 7, 7])).n_members == 1


@pytest.mark.parametrize(
    "members",
    [
        [0],
        [0, 1, 2],
        [],
        [1.5, 2],
        ["a", 1],
        [True, 1],
        [None, 1],
        [[1], 2],
        "ab",
        3,
        {0: 1, 1: 2},
        np.array([1.0, 2.0]),
    ],
)
def test_bad_members_rejected(members):
    with pytest.raises(InvalidBoxes):
        BoxSet([{}, {}], members=members)


# -- inspection --------------------------------------------------------------------------------
def test_arrays_shapes_and_dtypes():
    bs = BoxSet([{3: (10, 40)}, {}], members=[4, 2])
    assert bs.lo.shape == bs.hi.shape == (2, N_DIMS)
    assert bs.lo.dtype == bs.hi.dtype == np.uint8
    assert bs.lo[0, 3] == 10 and bs.hi[0, 3] == 40
    assert (np.delete(bs.lo[0], 3) == 0).all() and (np.delete(bs.hi[0], 3) == 255).all()
    assert (bs.lo[1] == 0).all() and (bs.hi[1] == 255).all()
    assert len(bs) == 2 and bs.members.tolist() == [4, 2]
    assert bs.constrained(1) == [] and bs.box(1) == {}


def test_equality_depends_on_bounds_and_members():
    a = BoxSet([{3: (10, 40)}], members=[1])
    assert a == BoxSet([{"f03": [10, 40]}], members=[1])
    assert a != BoxSet([{3: (10, 41)}], members=[1])
    assert a != BoxSet([{3: (10, 40)}], members=[2])
    assert a != BoxSet([{3: (10, 40)}, {3: (10, 40)}], members=[1, 1])


# -- JSON --------------------------------------------------------------------------------------
def test_to_json_shape():
    bs = BoxSet([{"f07": [1, 2], 3: (10, 40), 5: (0, 255)}, {}], members=[3, -2])
    assert bs.to_json() == {"boxes": [{3: (10, 40), 7: (1, 2)}, {}], "members": [3, -2]}
    json.dumps(bs.to_json())  # serialisable as is


def test_from_json_forms_agree():
    expected = BoxSet([{3: (10, 40), 7: (0, 99)}, {1: (5, 5)}], members=[0, 1])
    text = '{"boxes": [{"3": [10, 40], "f07": [0, 99]}, {"1": [5, 5]}], "members": [0, 1]}'
    assert BoxSet.from_json(text) == expected
    assert BoxSet.from_json(text.encode()) == expected
    assert BoxSet.from_json(json.loads(text)) == expected
    bare = BoxSet.from_json('[{"3": [10, 40], "f07": [0, 99]}, {"1": [5, 5]}]')
    assert bare == BoxSet([{3: (10, 40), 7: (0, 99)}, {1: (5, 5)}])
    assert BoxSet.from_json('{"boxes": []}') == BoxSet([])
    assert BoxSet.from_json('{"boxes": [{}], "members": null}') == BoxSet([{}])


@st.composite
def box_sets(draw, max_boxes=20):
    n = draw(st.integers(0, max_boxes))
    boxes = []
    for _ in range(n):
        dims = draw(st.lists(st.integers(0, N_DIMS - 1), max_size=8, unique=True))
        box = {}
        for d in dims:
            a, b = sorted([draw(st.integers(0, 255)), draw(st.integers(0, 255))])
            box[d] = (a, b)
        boxes.append(box)
    members = draw(st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n))
    return boxes, members


@settings(max_examples=150, deadline=None)
@given(box_sets())
def test_json_round_trip(spec):
    boxes, members = spec
    bs = BoxSet(boxes, members)
    assert BoxSet.from_json(bs.to_json()) == bs
    assert BoxSet.from_json(json.dumps(bs.to_json())) == bs
    assert BoxSet.from_json(json.dumps(bs.to_json()).encode()) == bs
    # to_json keeps exactly the constrained dims, with their bounds.
    expected = [{d: b for d, b in box.items() if b != (0, 255)} for box in boxes]
    assert bs.to_json()["boxes"] == expected
    assert bs.to_json()["members"] == members


# -- SQL text ----------------------------------------------------------------------------------
def test_predicate_one_between_per_constrained_dim():
    bs = BoxSet([{3: (10, 40), 7: (0, 99), 9: (0, 255), 12: (200, 255)}])
    pred = bs.box_predicate(0)
    assert sorted(BETWEEN.findall(pred)) == [("03", "10", "40"), ("07", "0", "99"), ("12", "200", "255")]
    assert pred.count("BETWEEN") == 3
    assert "f09" not in pred


def test_true_and_false_predicates():
    assert BoxSet([{}]).box_predicate(0) == "TRUE"
    assert BoxSet([{4: (0, 255)}]).box_predicate(0) == "TRUE"
    assert BoxSet([]).predicate() == "FALSE"
    assert BoxSet([{}]).predicate() == "TRUE"
    assert BoxSet([{}, {3: (1, 2)}], members=[0, 1]).predicate(member=0) == "TRUE"
    assert BoxSet([{}, {3: (1, 2)}], members=[0, 1]).predicate(member=7) == "FALSE"


def test_sql_for_empty_and_full_box_sets():
    assert re.search(r"\bWHERE FALSE\b", BoxSet([]).to_sql())
    assert "BETWEEN" not in BoxSet([]).to_sql()
    full = BoxSet([{}]).to_sql()
    assert re.search(r"\bWHERE TRUE\b", full) and "BETWEEN" not in full
    assert "BETWEEN" not in BoxSet([{d: (0, 255) for d in range(N_DIMS)}]).to_sql()


@settings(max_examples=100, deadline=None)
@given(box_sets(), st.integers(1, 4))
def test_sql_has_one_between_per_constrained_dim(spec, min_votes):
    boxes, members = spec
    members = [m % 5 for m in members]
    bs = BoxSet(boxes, members)
    sql = bs.to_sql(min_votes=min_votes)
    found = sorted(BETWEEN.findall(sql))
    if min_votes > bs.n_members:
        return  # nothing can qualify; the SQL may short-circuit
    # A member with an unconstrained box matches everything; its other boxes may be dropped.
    full_members = {m for b, m in zip(boxes, members, strict=True) if all(v == (0, 255) for v in b.values())}
    expected = sorted(
        (f"{d:02d}", str(lo), str(hi))
        for b, m in zip(boxes, members, strict=True)
        if m not in full_members
        for d, (lo, hi) in b.items()
        if (lo, hi) != (0, 255)
    )
    assert found == expected


def test_sql_mentions_min_votes_and_source():
    bs = BoxSet([{1: (0, 9)}, {2: (5, 9)}, {3: (1, 1)}], members=[0, 1, 2])
    sql = bs.to_sql(min_votes=2)
    assert re.search(r"votes\s*>=\s*2\b", sql)
    assert re.search(r"\bFROM codes\b", sql)
    assert re.search(r"\bFROM my_source\b", bs.to_sql("my_source"))
    # One member and min_votes > 1: nothing can qualify.
    one = BoxSet([{1: (0, 9)}, {2: (5, 9)}])
    assert re.search(r"\bWHERE FALSE\b", one.to_sql(min_votes=2))


def _oracle(codes, ids, boxes, members, min_votes):
    codes = codes.astype(np.int16)
    votes = np.zeros(len(codes), dtype=np.int64)
    members = np.asarray(members)
    for m in np.unique(members):
        hit = np.zeros(len(codes), dtype=bool)
        for i in np.flatnonzero(members == m):
            inside = np.ones(len(codes), dtype=bool)
            for d, (lo, hi) in boxes[i].items():
                inside &= (codes[:, d] >= lo) & (codes[:, d] <= hi)
            hit |= inside
        votes += hit
    keep = votes >= max(1, min_votes)
    return ids[keep], votes[keep]


@pytest.fixture(scope="module")
def memory_table():
    """An in-memory DuckDB table shaped like ``codes``: pos order differs from id order."""
    rng = np.random.default_rng(3)
    n = 400
    codes = rng.integers(0, 256, size=(n, N_DIMS), dtype=np.uint8)
    codes[: n // 2] //= 4  # a dense corner so boxes catch several rows
    ids = rng.permutation(n).astype(np.int64) * 3 - 100
    pos = rng.permutation(n).astype(np.int64)
    con = duckdb.connect()
    con.register(
        "t_arrow", pa.table({"pos": pos, "id": ids, **{f"f{d:02d}": codes[:, d] for d in range(N_DIMS)}})
    )
    con.execute("CREATE TABLE t AS SELECT * FROM t_arrow")
    yield _Table(con, codes, ids, pos)
    con.close()


class _Table(tuple):
    def __new__(cls, *items):
        return super().__new__(cls, items)

    def __repr__(self) -> str:
        return "<in-memory table t>"


@settings(max_examples=60, deadline=None)
@given(box_sets(max_boxes=12), st.integers(1, 4), st.integers(1, 6))
def test_sql_runs_on_any_source_and_matches_oracle(memory_table, spec, min_votes, n_members):
    con, codes, ids, pos = memory_table
    boxes, members = spec
    members = [m % n_members for m in members]
    bs = BoxSet(boxes, members)
    cur = con.execute(bs.to_sql("t", min_votes=min_votes))
    assert [c[0] for c in cur.description] == ["id", "votes"]
    rows = cur.fetchall()
    exp_ids, exp_votes = _oracle(codes, ids, boxes, members, min_votes)
    assert sorted(rows) == sorted(zip(exp_ids.tolist(), exp_votes.tolist(), strict=True))
    tie = {
        "id": dict(zip(ids.tolist(), ids.tolist(), strict=True)),
        "pos": dict(zip(ids.tolist(), pos.tolist(), strict=True)),
    }[TIE_BREAK]
    assert rows == sorted(rows, key=lambda r: (-r[1], tie[r[0]])), f"ties are not ranked by {TIE_BREAK}"
    # A relation expression works as the source too.
    again = con.execute(bs.to_sql("(SELECT * FROM t) AS s", min_votes=min_votes)).fetchall()
    assert again == rows


# -- from_arrays -------------------------------------------------------------------------------
def test_from_arrays_matches_dict_constructor():
    lo = np.zeros((2, N_DIMS), dtype=np.int64)
    hi = np.full((2, N_DIMS), 255, dtype=np.int64)
    lo[0, 3], hi[0, 3] = 10, 40
    hi[1, 31] = 0
    bs = BoxSet.from_arrays(lo, hi, [7, 8])
    assert bs == BoxSet([{3: (10, 40)}, {31: (0, 0)}], members=[7, 8])
    assert bs.lo.dtype == np.uint8 and bs.members.dtype == np.int64
    assert BoxSet.from_arrays(lo.astype(np.uint8), hi.astype(np.uint8)).members.tolist() == [0, 0]


def test_from_arrays_empty():
    bs = BoxSet.from_arrays(np.zeros((0, N_DIMS), np.uint8), np.zeros((0, N_DIMS), np.uint8))
    assert len(bs) == 0 and bs == BoxSet([])


@pytest.mark.parametrize(
    "lo, hi, members",
    [
        (np.zeros((2, N_DIMS), np.int64), np.full((3, N_DIMS), 255, np.int64), None),  # shapes differ
        (np.zeros(N_DIMS, np.int64), np.full(N_DIMS, 255, np.int64), None),  # 1-d
        (np.zeros((1, 2, N_DIMS), np.int64), np.full((1, 2, N_DIMS), 255, np.int64), None),  # 3-d
        (np.full((1, N_DIMS), 9, np.int64), np.full((1, N_DIMS), 8, np.int64), None),  # lo > hi
        (np.zeros((1, N_DIMS), np.int64), np.full((1, N_DIMS), 256, np.int64), None),  # hi > 255
        (np.full((1, N_DIMS), -1, np.int64), np.full((1, N_DIMS), 255, np.int64), None),  # lo < 0
        (np.zeros((1, N_DIMS), np.float64), np.full((1, N_DIMS), 255.0), None),  # floats
        (np.zeros((1, N_DIMS), bool), np.ones((1, N_DIMS), bool), None),  # bools
        (np.zeros((2, N_DIMS), np.uint8), np.full((2, N_DIMS), 255, np.uint8), [0]),  # members length
        (np.zeros((2, N_DIMS), np.uint8), np.full((2, N_DIMS), 255, np.uint8), [0.5, 1]),  # members type
    ],
)
def test_from_arrays_validation(lo, hi, members):
    with pytest.raises(InvalidBoxes):
        BoxSet.from_arrays(lo, hi, members)
