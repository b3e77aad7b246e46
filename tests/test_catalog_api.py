"""Catalog API: ids, metadata, index builds, block layout, codes(), read-only use."""

from __future__ import annotations

import ast
import builtins
import importlib.metadata
import json
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import engine
from engine import errors, learn
from engine.codes import head, quantize
from engine.ingest import imageio
from engine.learn import base

N_DIMS = 32
REPO = Path(engine.__file__).resolve().parent.parent
COLS = [f"f{d:02d}" for d in range(N_DIMS)]
ALL_COLS = ", ".join(COLS)


def _codes(rng, n, dupes=0):
    centres = rng.integers(8, 248, size=(6, N_DIMS))
    c = np.clip(centres[rng.integers(0, 6, n)] + rng.integers(-8, 9, size=(n, N_DIMS)), 0, 255)
    c[: n // 4] = rng.integers(0, 256, size=(n // 4, N_DIMS))
    c = c.astype(np.uint8)
    if dupes:  # exact duplicate codes under different ids: ties for the k-d sort
        c[-dupes:] = c[:dupes]
    return c


def _oracle_ids(codes, ids, box):
    inside = np.ones(len(codes), dtype=bool)
    for d, (lo, hi) in box.items():
        inside &= (codes[:, d] >= lo) & (codes[:, d] <= hi)
    return sorted(np.asarray(ids)[inside].tolist())


def _table(cat, sql):
    return cat.sql(sql).to_pydict()


# -- ids ---------------------------------------------------------------------------------------
def test_auto_ids_start_at_zero_and_continue_after_max(make_catalog, rng):
    cat = make_catalog()
    ids = cat.add_codes(_codes(rng, 5))
    assert ids.dtype == np.int64 and ids.tolist() == [0, 1, 2, 3, 4]
    assert cat.add_codes(_codes(rng, 3)).tolist() == [5, 6, 7]
    assert cat.add_codes(_codes(rng, 2), ids=[100, 40]).tolist() == [100, 40]
    assert cat.add_codes(_codes(rng, 3)).tolist() == [101, 102, 103]
    cat.build_index(block_size=4)
    assert cat.add_codes(_codes(rng, 1)).tolist() == [104]
    assert len(cat) == 14
    assert sorted(_table(cat, "SELECT id FROM images")["id"]) == [
        0,
        1,
        2,
        3,
        4,
        5,
        6,
        7,
        40,
        100,
        101,
        102,
        103,
        104,
    ]


def test_auto_ids_after_negative_and_gapped_ids(make_catalog, rng):
    cat = make_catalog()
    cat.add_codes(_codes(rng, 2), ids=np.array([-10, -7], dtype=np.int32))
    assert cat.add_codes(_codes(rng, 3)).tolist() == [-6, -5, -4]
    cat.add_codes(_codes(rng, 1), ids=[2**40])
    assert cat.add_codes(_codes(rng, 1)).tolist() == [2**40 + 1]


def test_auto_ids_continue_after_reopen(tmp_path, rng):
    path = tmp_path / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        cat.add_codes(_codes(rng, 4), ids=[9, 3, 11, 10])
    with engine.Catalog.open(path) as cat:
        assert cat.add_codes(_codes(rng, 2)).tolist() == [12, 13]


def test_add_zero_rows(make_catalog, rng):
    cat = make_catalog(codes=_codes(rng, 10), block_size=4)
    status = cat.index_status()
    ids = cat.add_codes(np.zeros((0, N_DIMS), np.uint8))
    assert ids.size == 0 and ids.dtype == np.int64
    assert len(cat) == 10 and cat.index_status() == status


def test_explicit_ids_are_stored_with_their_codes(make_catalog, rng):
    codes = _codes(rng, 50)
    ids = rng.choice(10**9, 50, replace=False)
    cat = make_catalog(codes=codes, ids=ids)
    got = _table(cat, f"SELECT id, {ALL_COLS} FROM codes ORDER BY id")
    order = np.argsort(ids)
    assert got["id"] == ids[order].tolist()
    for d, c in enumerate(COLS):
        assert got[c] == codes[order, d].tolist()


# -- metadata ----------------------------------------------------------------------------------
def test_metadata_lands_in_images_and_catalog_view(make_catalog, rng):
    n = 60
    codes = _codes(rng, n)
    labels = [f"label_{i % 4}" for i in range(n)]
    uris = [f"s3://bucket/img_{i}.jpg" for i in range(n)]
    scores = rng.random(n)
    cat = make_catalog()
    ids = cat.add_codes(codes, metadata={"uri": uris, "label": labels, "score": scores})
    got = _table(cat, "SELECT id, uri, label, score FROM images ORDER BY id")
    assert got["id"] == ids.tolist() and got["uri"] == uris and got["label"] == labels
    assert np.allclose(got["score"], scores)
    # The catalog view joins metadata and codes.
    view = _table(cat, f"SELECT id, label, {ALL_COLS} FROM catalog ORDER BY id")
    assert view["id"] == ids.tolist() and view["label"] == labels
    for d, c in enumerate(COLS):
        assert view[c] == codes[:, d].tolist()
    # Box predicate plus a metadata filter.
    box = {2: (0, 150), 9: (40, 255)}
    where = " AND ".join(f"f{d:02d} BETWEEN {lo} AND {hi}" for d, (lo, hi) in box.items())
    hits = _table(cat, f"SELECT id FROM catalog WHERE ({where}) AND label = 'label_1' ORDER BY id")["id"]
    expected = [i for i in _oracle_ids(codes, ids, box) if labels[i] == "label_1"]
    assert hits == expected


def test_metadata_columns_added_later(make_catalog, rng):
    cat = make_catalog()
    first = cat.add_codes(_codes(rng, 5), metadata={"label": list("abcde")})
    second = cat.add_codes(_codes(rng, 3))
    third = cat.add_codes(_codes(rng, 4), metadata={"label": list("wxyz"), "width": [10, 20, 30, 40]})
    rows = _table(cat, "SELECT id, label, width FROM catalog ORDER BY id")
    assert rows["id"] == first.tolist() + second.tolist() + third.tolist()
    assert rows["label"] == list("abcde") + [None] * 3 + list("wxyz")
    assert rows["width"] == [None] * 8 + [10, 20, 30, 40]


def test_metadata_from_arrow_table_and_keyword_names(make_catalog, rng):
    cat = make_catalog()
    meta = pa.table(
        {"order": pa.array([3, 1, 2], pa.int32()), "select": ["x", "y", "z"], "note": [None, None, None]}
    )
    ids = cat.add_codes(_codes(rng, 3), metadata=meta)
    rows = _table(cat, 'SELECT id, "order", "select", note FROM catalog ORDER BY id')
    assert rows == {"id": ids.tolist(), "order": [3, 1, 2], "select": ["x", "y", "z"], "note": [None] * 3}


def test_metadata_visible_after_read_only_reopen(tmp_path, rng):
    path = tmp_path / "m.duckdb"
    with engine.Catalog.create(path) as cat:
        ids = cat.add_codes(_codes(rng, 20), metadata={"label": [str(i) for i in range(20)]})
        cat.build_index(block_size=4)
    with engine.Catalog.open(path, read_only=True) as cat:
        rows = _table(cat, "SELECT id, label FROM catalog ORDER BY id")
        assert rows == {"id": ids.tolist(), "label": [str(i) for i in range(20)]}
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM catalog WHERE label = '7'").fetchall() == [(1,)]
    finally:
        con.close()


# -- build_index -------------------------------------------------------------------------------
def _layout(cat):
    codes = cat.sql(f"SELECT pos, id, {ALL_COLS} FROM codes ORDER BY pos")
    blocks = cat.sql("SELECT * FROM blocks ORDER BY block_id")
    return codes, blocks


def test_build_index_is_idempotent(tmp_path, rng):
    path = tmp_path / "i.duckdb"
    codes = _codes(rng, 700, dupes=40)
    with engine.Catalog.create(path) as cat:
        cat.add_codes(codes, ids=rng.choice(10**6, 700, replace=False))
        cat.build_index(block_size=32)
        first = _layout(cat)
        cat.build_index(block_size=32)
        second = _layout(cat)
        assert first[0].equals(second[0]) and first[1].equals(second[1])
    with engine.Catalog.open(path) as cat:
        cat.build_index(block_size=32)
        third = _layout(cat)
    assert first[0].equals(third[0]) and first[1].equals(third[1])


def test_build_index_independent_of_insertion_order(make_catalog, rng):
    n = 900
    codes = _codes(rng, n, dupes=60)
    ids = rng.choice(10**7, n, replace=False).astype(np.int64)
    layouts = []
    for trial in range(3):
        perm = np.random.default_rng(trial).permutation(n) if trial else np.arange(n)
        cat = make_catalog()
        # Different batchings too: one call, then three, then many small ones.
        for chunk in np.array_split(perm, [1, 3, 17][trial]):
            cat.add_codes(codes[chunk], ids=ids[chunk])
        if trial == 2:
            cat.build_index(block_size=16)  # an earlier build with another block size
        cat.build_index(block_size=32)
        layouts.append(_layout(cat))
    for other in layouts[1:]:
        assert other[0].column("id").equals(layouts[0][0].column("id"))  # same pos -> id mapping
        assert other[0].equals(layouts[0][0]) and other[1].equals(layouts[0][1])


@pytest.mark.parametrize(
    "n, block_size",
    [(0, 16), (1, 16), (15, 16), (16, 16), (17, 16), (100, 16), (1000, 16), (2000, 64), (333, 2)],
)
def test_blocks_partition_rows_and_hold_true_zone_maps(make_catalog, rng, n, block_size):
    cat = make_catalog(codes=_codes(rng, n, dupes=min(n // 3, 20)), block_size=block_size)
    _check_blocks(cat, n, block_size)


def _check_blocks(cat, n_indexed, block_size):
    blocks = _table(cat, "SELECT block_id, row_start, row_end FROM blocks ORDER BY block_id")
    k = len(blocks["block_id"])
    assert blocks["block_id"] == list(range(k))
    if n_indexed == 0:
        assert k == 0
        return
    starts, ends = blocks["row_start"], blocks["row_end"]
    assert starts[0] == 0 and ends[-1] == n_indexed
    assert starts[1:] == ends[:-1]
    sizes = np.array(ends) - np.array(starts)
    if n_indexed <= block_size:
        assert k == 1
    else:
        assert k & (k - 1) == 0, "2**L blocks"
        assert sizes.max() <= block_size and sizes.min() >= block_size // 2
        assert sizes.max() - sizes.min() <= 1
    # Each block's zone map is the true min/max of its rows.
    aggs = ", ".join(f"min(c.{c}) AS min_{c}, max(c.{c}) AS max_{c}" for c in COLS)
    true = cat.sql(
        f"SELECT b.block_id, count(*) AS n, {aggs} FROM blocks b JOIN codes c "
        "ON c.pos >= b.row_start AND c.pos < b.row_end GROUP BY b.block_id ORDER BY b.block_id"
    )
    mm = ", ".join(f"min_{c}, max_{c}" for c in COLS)
    stored = cat.sql(f"SELECT block_id, row_end - row_start AS n, {mm} FROM blocks ORDER BY block_id")
    assert true.to_pydict() == stored.to_pydict()
    # pos is a permutation of 0..n-1 and ids match images.
    pos = _table(cat, "SELECT pos FROM codes ORDER BY pos")["pos"]
    assert pos == list(range(len(pos)))
    assert _table(
        cat,
        "SELECT count(*) AS n FROM images i FULL JOIN codes c USING (id) WHERE i.id IS NULL OR c.pos IS NULL",
    )["n"] == [0]


def test_tail_rows_follow_indexed_rows(make_catalog, rng):
    cat = make_catalog(codes=_codes(rng, 100), block_size=16)
    before = cat.sql("SELECT * FROM blocks ORDER BY block_id")
    new = cat.add_codes(_codes(rng, 7))
    tail = _table(cat, "SELECT pos, id FROM codes WHERE pos >= 100 ORDER BY pos")
    assert tail == {"pos": list(range(100, 107)), "id": new.tolist()}
    assert cat.sql("SELECT * FROM blocks ORDER BY block_id").equals(before)
    status = cat.index_status()
    assert status["rows"] == 107 and status["indexed_rows"] == 100 and status["unindexed_rows"] == 7
    assert status["stale"] is True
    cat.build_index(block_size=16)
    _check_blocks(cat, 107, 16)
    assert cat.index_status()["stale"] is False


def test_index_status_lifecycle(make_catalog, rng):
    cat = make_catalog()
    s = cat.index_status()
    assert s["rows"] == 0 and s["unindexed_rows"] == 0 and s["stale"] is False and s["index"] is None
    cat.add_codes(_codes(rng, 30))
    s = cat.index_status()
    assert s["rows"] == 30 and s["indexed_rows"] == 0 and s["stale"] is True
    stats = cat.build_index(block_size=8)
    assert stats["rows"] == 30 and stats["blocks"] == 4
    s = cat.index_status()
    assert s["stale"] is False and s["indexed_rows"] == 30 and s["index"]["block_size"] == 8
    assert s["index"]["n_blocks"] == 4
    cat.add_codes(_codes(rng, 5))
    assert cat.index_status()["stale"] is True
    assert cat.select([{}]).stats["unindexed_rows"] == 5
    cat.build_index(block_size=8)
    assert cat.index_status()["stale"] is False
    assert cat.select([{}]).stats["unindexed_rows"] == 0


@pytest.mark.parametrize("block_size", [0, 1, -4, 2.5, "16", True, None])
def test_build_index_block_size_validation(make_catalog, rng, block_size):
    cat = make_catalog(codes=_codes(rng, 20), block_size=4)
    before = _layout(cat)
    message = f"block_size must be an integer >= 2, got {block_size!r}"
    with pytest.raises(engine.InvalidArgument, match=re.escape(message)):
        cat.build_index(block_size=block_size)
    after = _layout(cat)
    assert before[0].equals(after[0]) and before[1].equals(after[1])


# -- codes() -----------------------------------------------------------------------------------
def _check_codes(cat, codes, ids, rng):
    lookup = dict(zip(ids.tolist(), range(len(ids)), strict=True))
    for k in (len(ids), 1, 7):
        ask = rng.choice(ids, size=min(k, len(ids)), replace=False)
        got = cat.codes(ask)
        assert got.dtype == np.uint8 and got.shape == (len(ask), N_DIMS)
        assert (got == codes[[lookup[i] for i in ask.tolist()]]).all()
    ask = [int(ids[3]), int(ids[0]), int(ids[3])]  # repeats and any order, as a list
    assert (cat.codes(ask) == codes[[3, 0, 3]]).all()
    assert cat.codes([]).shape == (0, N_DIMS)


def test_codes_never_indexed(make_catalog, rng):
    codes = _codes(rng, 300)
    ids = rng.choice(10**6, 300, replace=False)
    cat = make_catalog(codes=codes, ids=ids)
    _check_codes(cat, codes, ids, rng)


def test_codes_after_build_index(make_catalog, rng):
    codes = _codes(rng, 300)
    ids = rng.choice(10**6, 300, replace=False)
    cat = make_catalog(codes=codes, ids=ids, block_size=16)
    _check_codes(cat, codes, ids, rng)


def test_codes_after_build_index_when_read_before(make_catalog, rng):
    """codes() before and after a build on one open catalog: the build moves rows."""
    codes = _codes(rng, 300)
    ids = rng.choice(10**6, 300, replace=False)
    cat = make_catalog(codes=codes, ids=ids)
    _check_codes(cat, codes, ids, rng)
    cat.build_index(block_size=16)
    _check_codes(cat, codes, ids, rng)


def test_codes_with_unindexed_tail(make_catalog, rng):
    codes = _codes(rng, 300)
    cat = make_catalog(codes=codes[:250], block_size=16)
    ids = np.concatenate([np.arange(250), cat.add_codes(codes[250:])])
    _check_codes(cat, codes, ids, rng)


def test_codes_after_reopen(tmp_path, rng):
    path = tmp_path / "c.duckdb"
    codes = _codes(rng, 200)
    ids = rng.choice(10**6, 200, replace=False)
    with engine.Catalog.create(path) as cat:
        cat.add_codes(codes, ids=ids)
        cat.build_index(block_size=16)
    for read_only in (True, False):
        with engine.Catalog.open(path, read_only=read_only) as cat:
            _check_codes(cat, codes, ids, rng)


# -- read-only use -----------------------------------------------------------------------------
BOX_SETS = [
    (engine.BoxSet([{0: (0, 120), 5: (30, 200)}]), 1),
    (
        engine.BoxSet(
            [{0: (0, 120), 5: (30, 200)}, {3: (50, 255)}, {7: (0, 90), 9: (100, 255)}], members=[0, 1, 2]
        ),
        1,
    ),
    (
        engine.BoxSet(
            [{0: (0, 120), 5: (30, 200)}, {3: (50, 255)}, {7: (0, 90), 9: (100, 255)}], members=[0, 1, 2]
        ),
        2,
    ),
    (engine.BoxSet([{}]), 1),
    (engine.BoxSet([]), 1),
]


def test_read_only_open_allows_reads_and_matches_writable(tmp_path, rng):
    path = tmp_path / "r.duckdb"
    codes = _codes(rng, 400)
    with engine.Catalog.create(path) as cat:
        ids = cat.add_codes(codes, metadata={"label": [f"l{i % 3}" for i in range(400)]})
        cat.build_index(block_size=32)
        ids = np.concatenate([ids, cat.add_codes(_codes(rng, 21))])
    results = {}
    for read_only in (False, True):
        with engine.Catalog.open(path, read_only=read_only) as cat:
            assert cat.read_only is read_only
            assert len(cat) == 421
            res = [cat.select(bs, min_votes=mv) for bs, mv in BOX_SETS]
            got_codes = cat.codes(ids[::-7])
            table = cat.sql("SELECT label, count(*) AS n FROM catalog GROUP BY label ORDER BY label")
            results[read_only] = (res, got_codes, table, cat.index_status())
    (rw, rw_codes, rw_table, rw_status), (ro, ro_codes, ro_table, ro_status) = results[False], results[True]
    for a, b in zip(rw, ro, strict=True):
        assert a.ids.tolist() == b.ids.tolist() and a.votes.tolist() == b.votes.tolist() and a.sql == b.sql
    assert len(rw[3].ids) == 421
    assert (rw_codes == ro_codes).all()
    assert rw_table.equals(ro_table) and rw_table.column("n").to_pylist() == [134, 133, 133, 21]
    assert rw_status == ro_status and ro_status["unindexed_rows"] == 21


def test_select_accepts_box_set_mapping_list_and_json(make_catalog, rng):
    cat = make_catalog(codes=_codes(rng, 300), block_size=32)
    bs = engine.BoxSet([{"f02": (0, 150), 9: (40, 255)}, {4: (0, 99)}], members=[1, 2])
    ref = cat.select(bs, min_votes=1)
    for form in (
        bs.to_json(),
        json.dumps(bs.to_json()),
        {"boxes": [{"2": [0, 150], "9": [40, 255]}, {"4": [0, 99]}], "members": [1, 2]},
    ):
        res = cat.select(form)
        assert res.ids.tolist() == ref.ids.tolist() and res.votes.tolist() == ref.votes.tolist()
    plain = cat.select([{2: (0, 150)}])
    assert plain.ids.tolist() == cat.select(engine.BoxSet([{2: (0, 150)}])).ids.tolist()


def test_select_result_to_json(make_catalog, rng):
    cat = make_catalog(codes=_codes(rng, 100), block_size=16)
    res = cat.select(engine.BoxSet([{0: (0, 200)}, {1: (50, 255)}], members=[0, 1]))
    out = json.loads(json.dumps(res.to_json()))
    assert out["ids"] == res.ids.tolist() and out["votes"] == res.votes.tolist() and out["sql"] == res.sql
    assert out["stats"]["results"] == len(res.ids)
    assert res.votes.dtype == np.int32


def test_sql_returns_arrow_and_takes_parameters(make_catalog, rng):
    cat = make_catalog(codes=_codes(rng, 50), block_size=16)
    t = cat.sql("SELECT id FROM codes WHERE id < ? ORDER BY id", [5])
    assert isinstance(t, pa.Table) and t.column("id").to_pylist() == [0, 1, 2, 3, 4]
    t = cat.sql("SELECT $x::INTEGER + 1 AS y", {"x": 41})
    assert t.column("y").to_pylist() == [42]
    assert cat.sql("VALUES (1, 'a')").num_rows == 1
    assert cat.sql("WITH t AS (SELECT 2 AS v) SELECT v FROM t").column("v").to_pylist() == [2]


def test_len_and_context_manager(tmp_path, rng):
    path = tmp_path / "l.duckdb"
    with engine.Catalog.create(path) as cat:
        assert len(cat) == 0
        cat.add_codes(_codes(rng, 12))
        assert len(cat) == 12
    with pytest.raises(engine.CatalogError):
        len(cat)
    with engine.Catalog.open(path, read_only=True) as cat:
        assert len(cat) == 12


# -- creation ------------------------------------------------------------------------------------
KILLED_CREATE = """
import os, signal
from engine import Catalog
from engine.store import database

def killed(con, target=None):
    os.kill(os.getpid(), signal.SIGKILL)

database.migrate = killed
Catalog.create({path!r})
"""


@pytest.mark.e2e
def test_create_killed_before_the_schema_leaves_no_file_that_blocks_the_next_run(tmp_path):
    # The file used to be created in place, so a kill between DuckDB making it and the schema
    # being written left a file that every later open refused as "not a clip-branches catalog".
    path = tmp_path / "c.duckdb"
    r = subprocess.run(
        [sys.executable, "-c", KILLED_CREATE.format(path=str(path))], capture_output=True, timeout=120
    )
    assert r.returncode == -signal.SIGKILL
    assert not path.exists()
    with engine.Catalog.create(path) as cat:
        assert cat.setting("data_version") == 0 and cat.setting("dims") == N_DIMS
    with engine.Catalog.open(path, read_only=True) as cat:
        assert len(cat) == 0
    others = [p.name for p in tmp_path.iterdir() if p != path]
    assert len(others) == 1 and others[0].endswith(".creating")  # the killed run's half-made file only


# -- the package: its errors and its version ----------------------------------------------------
def _exception_classes(module) -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, BaseException) and obj.__module__ == module.__name__
    }


def test_every_error_is_exported_from_the_package_documented_and_a_catalog_error():
    public = {name: cls for name, cls in _exception_classes(errors).items() if not name.startswith("_")}
    readme = (REPO / "README.md").read_text()
    assert [name for name in public if f"`{name}`" not in readme and f"`engine.{name}`" not in readme] == []
    assert {
        "CatalogError",
        "EncoderError",
        "IngestError",
        "InvalidArgument",
        "UnreadableImage",
        "HeadError",
        "QuantizerError",
        "NotFittedError",
    } <= set(public)
    for name, cls in public.items():
        assert name in engine.__all__ and getattr(engine, name) is cls, name
        assert issubclass(cls, engine.CatalogError), name
    for name in engine.__all__:
        getattr(engine, name)
    assert issubclass(engine.InvalidArgument, ValueError) and issubclass(
        engine.NotFittedError, AttributeError
    )
    assert issubclass(engine.UnreadableImage, engine.IngestError)


def test_moved_errors_are_still_importable_where_they_were_defined():
    assert imageio.UnreadableImage is engine.UnreadableImage
    assert head.HeadError is engine.HeadError
    assert quantize.QuantizerError is engine.QuantizerError
    assert base.NotFittedError is learn.NotFittedError is engine.NotFittedError
    assert imageio.UnreadableImage("a truncated file").reason == "a truncated file"


def test_no_error_class_is_defined_outside_engine_errors():
    exception_names = set(_exception_classes(errors)) | {
        name
        for name, obj in vars(builtins).items()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    }
    found = []
    for path in sorted([*(REPO / "engine").rglob("*.py"), *(REPO / "web").rglob("*.py")]):
        if path == REPO / "engine" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ClassDef):
                continue
            bases = {
                b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else ""
                for b in node.bases
            }
            if bases & exception_names or any(b.endswith(("Error", "Exception")) for b in bases):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert found == []


def test_version_is_the_installed_version_of_pyproject():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert engine.__version__ == importlib.metadata.version("clip-branches") == declared
    from engine import __version__

    assert __version__ == declared


def test_version_is_read_on_first_use():
    code = (
        "import sys, engine; assert 'importlib.metadata' not in sys.modules, 'read at import'; "
        "print(engine.__version__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == importlib.metadata.version("clip-branches")


def test_version_of_a_source_tree_that_was_never_installed(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert engine._installed_version() == "0+unknown"
