"""Bad input: every bad call raises its typed error and leaves the catalog intact.

Each test works on a fresh copy of one template catalog (indexed rows, an unindexed tail and
metadata columns). ``work.assert_intact()`` closes the catalog, reopens the file and checks the
row count, select results, tables and index status against a snapshot of the template.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import engine
from engine import (
    CatalogError,
    CatalogNotFound,
    CorruptCatalog,
    InvalidArgument,
    InvalidBoxes,
    InvalidCodes,
    InvalidSql,
    ReadOnlyError,
    SchemaVersionError,
    UnknownIds,
)

N_DIMS = 32
N_INDEXED, N_TAIL = 400, 37
BOXES = engine.BoxSet(
    [{0: (0, 120), 5: (30, 200)}, {3: (50, 255)}, {7: (0, 90), 9: (100, 255)}, {}], members=[0, 1, 2, 2]
)


def _codes(rng, n):
    centres = rng.integers(10, 246, size=(5, N_DIMS))
    c = centres[rng.integers(0, 5, n)] + rng.integers(-10, 11, size=(n, N_DIMS))
    c[: n // 3] = rng.integers(0, 256, size=(n // 3, N_DIMS))
    return np.clip(c, 0, 255).astype(np.uint8)


def snapshot(path: Path) -> dict:
    """Everything a bad call must not change, read through a read-only open."""
    with engine.Catalog.open(path, read_only=True) as cat:
        out = {"len": len(cat), "status": cat.index_status()}
        for mv in (1, 2, 3):
            r = cat.select(BOXES, min_votes=mv)
            out[f"select{mv}"] = (r.ids.tolist(), r.votes.tolist(), r.sql)
        for table, order in [
            ("codes", "pos"),
            ("images", "id"),
            ("blocks", "block_id"),
            ("settings", "key"),
            ("schema_version", "version"),
        ]:
            out[table] = cat.sql(f"SELECT * FROM {table} ORDER BY {order}")
        out["tables"] = cat.sql(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE schema_name = 'main' ORDER BY ALL"
        )
        ids = np.array(sorted(out["select1"][0]))
        out["codes_of"] = cat.codes(ids).tolist()
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "template.duckdb"
    rng = np.random.default_rng(7)
    codes = _codes(rng, N_INDEXED + N_TAIL)
    with engine.Catalog.create(path) as cat:
        cat.add_codes(
            codes[:N_INDEXED],
            ids=np.arange(N_INDEXED) * 2 + 1000,
            metadata={"label": [f"L{i % 7}" for i in range(N_INDEXED)], "score": rng.random(N_INDEXED)},
        )
        cat.build_index(block_size=64)
        cat.add_codes(codes[N_INDEXED:])
    base = snapshot(path)
    assert base["len"] == N_INDEXED + N_TAIL and base["status"]["unindexed_rows"] == N_TAIL
    assert len(base["select1"][0]) > 0 and len(base["select2"][0]) > 0
    return path, base


class Work:
    def __init__(self, path: Path, baseline: dict):
        self.path = path
        self.baseline = baseline
        self.cat: engine.Catalog | None = None

    def open(self, read_only: bool = False) -> engine.Catalog:
        self.close()
        self.cat = engine.Catalog.open(self.path, read_only=read_only)
        return self.cat

    def close(self) -> None:
        if self.cat is not None:
            self.cat.close()
            self.cat = None

    def assert_intact(self) -> None:
        """Reopen the file: same rows, same select results, same tables as the template."""
        self.close()
        now = snapshot(self.path)
        for key, value in self.baseline.items():
            if isinstance(value, pa.Table):
                assert now[key].equals(value), f"table {key} changed"
            else:
                assert now[key] == value, f"{key} changed"


@pytest.fixture
def work(template, tmp_path):
    path, baseline = template
    dst = tmp_path / "cat.duckdb"
    shutil.copyfile(path, dst)
    w = Work(dst, baseline)
    yield w
    w.close()


@pytest.fixture(scope="module")
def shared(template, tmp_path_factory):
    """One copy of the template, open for the whole module: box input is refused before it
    touches the file, so the cases share it, and the last test of the module checks it intact."""
    path, baseline = template
    dst = tmp_path_factory.mktemp("shared") / "cat.duckdb"
    shutil.copyfile(path, dst)
    w = Work(dst, baseline)
    w.open()
    yield w
    w.close()


def _raises_in_select(work, bad, exc=InvalidBoxes):
    cat = work.cat if work.cat is not None else work.open()
    with pytest.raises(exc):
        cat.select(bad)
    # the same open catalog still answers, as before
    assert cat.select(BOXES).ids.tolist() == list(work.baseline["select1"][0])


# -- malformed box JSON ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        '{"boxes": [',
        "nope",
        "",
        "   ",
        '{"boxes": [{"3": [1, 2]}]',
        "[{3: [1, 2]}]",
        "{'boxes': []}",
        b"\xff\xfe\x00",
    ],
)
def test_invalid_json_text(shared, text):
    _raises_in_select(shared, text)


@pytest.mark.parametrize("text", ["5", '"boxes"', "null", "true", "3.5", '"[{}]"'])
def test_json_wrong_top_level_type(shared, text):
    _raises_in_select(shared, text)


@pytest.mark.parametrize("data", ['{"members": [0]}', "{}", {"members": []}, {}])
def test_json_missing_boxes(shared, data):
    _raises_in_select(shared, data)


@pytest.mark.parametrize(
    "data", ['{"boxes": [], "extra": 1}', '{"boxes": [{}], "Members": [0]}', {"boxes": [], "min_votes": 2}]
)
def test_json_unknown_keys(shared, data):
    _raises_in_select(shared, data)


@pytest.mark.parametrize(
    "data",
    [
        '{"boxes": {"3": [1, 2]}}',
        '{"boxes": "abc"}',
        '{"boxes": 5}',
        '{"boxes": null}',
        "[[3, [1, 2]]]",
        "[5]",
        '["f03"]',
        "[null]",
    ],
)
def test_json_boxes_not_a_list_of_objects(shared, data):
    _raises_in_select(shared, data)


@pytest.mark.parametrize(
    "box",
    [
        '{"3": [1]}',
        '{"3": [1, 2, 3]}',
        '{"3": []}',
        '{"3": 5}',
        '{"3": "ab"}',
        '{"3": {"lo": 1, "hi": 2}}',
        '{"3": null}',
    ],
)
def test_bounds_not_a_pair(shared, box):
    _raises_in_select(shared, f'{{"boxes": [{box}]}}')


@pytest.mark.parametrize(
    "bounds", ["[1.5, 2]", '["1", 2]', "[null, 2]", "[1, [2]]", "[NaN, 2]", "[1, Infinity]", "[1, 2.25]"]
)
def test_non_integer_bounds(shared, bounds):
    _raises_in_select(shared, f'[{{"3": {bounds}}}]')


@pytest.mark.parametrize("bounds", ["[true, 2]", "[0, false]", "[false, true]"])
def test_bool_bounds(shared, bounds):
    _raises_in_select(shared, f'[{{"3": {bounds}}}]')


@pytest.mark.parametrize(
    "data",
    [
        '{"boxes": [{}], "members": [0, 1]}',
        '{"boxes": [{}, {}], "members": [0]}',
        '{"boxes": [], "members": [1]}',
        '{"boxes": [{}], "members": []}',
    ],
)
def test_members_length_mismatch(shared, data):
    _raises_in_select(shared, data)


@pytest.mark.parametrize(
    "members", ["[1.5]", '["a"]', "[true]", "[null]", "[[1]]", '"ab"', "3", '{"0": 1}', "[1.0]"]
)
def test_non_integer_members(shared, members):
    _raises_in_select(shared, f'{{"boxes": [{{}}], "members": {members}}}')


def test_member_outside_int64(shared):
    """A member id that does not fit in int64 is bad box input, not an internal overflow."""
    _raises_in_select(shared, {"boxes": [{}], "members": [10**20]})


# -- dims and bounds out of range --------------------------------------------------------------
@pytest.mark.parametrize("dim", [32, -1, 99, "32", "-1", "f32", "f-1", "x", "", "f3", "3.0"])
def test_dim_out_of_range(shared, dim):
    _raises_in_select(shared, [{dim: (1, 2)}])


@pytest.mark.parametrize("dim", ["32", "-1", "f32", "x"])
def test_dim_out_of_range_in_json(shared, dim):
    _raises_in_select(shared, json.dumps({"boxes": [{dim: [1, 2]}]}))


@pytest.mark.parametrize("dim", ["--3", "\u00b3", "-0-"])
def test_odd_dim_strings_are_invalid_boxes(shared, dim):
    """Strings that look digit-like to str.isdigit() but are not integers ("--3", superscript 3)."""
    _raises_in_select(shared, [{dim: (1, 2)}])


@pytest.mark.parametrize("bounds", [(10, 5), (255, 0), (1, 0)])
def test_lo_greater_than_hi(shared, bounds):
    _raises_in_select(shared, [{3: bounds}])
    _raises_in_select(shared, json.dumps([{"3": list(bounds)}]))


@pytest.mark.parametrize("bounds", [(0, 256), (-1, 5), (256, 300), (0, 10**9), (-(2**70), 0)])
def test_bound_out_of_range(shared, bounds):
    _raises_in_select(shared, [{3: bounds}])


def test_from_arrays_lo_greater_than_hi(work):
    lo = np.zeros((1, N_DIMS), np.int64)
    hi = np.full((1, N_DIMS), 255, np.int64)
    lo[0, 4], hi[0, 4] = 9, 8
    with pytest.raises(InvalidBoxes):
        engine.BoxSet.from_arrays(lo, hi)
    work.assert_intact()


def test_box_set_with_wrong_dim_count(shared):
    bs = engine.BoxSet.from_arrays(np.zeros((1, 5), np.uint8), np.full((1, 5), 9, np.uint8))
    _raises_in_select(shared, bs, CatalogError)


@pytest.mark.parametrize("min_votes", [1.5, "2", True, None, np.float64(2.0)])
def test_bad_min_votes(work, min_votes):
    cat = work.open()
    with pytest.raises(
        InvalidArgument, match=f"min_votes must be an integer, got {re.escape(repr(min_votes))}"
    ) as e:
        cat.select(BOXES, min_votes=min_votes)
    assert isinstance(e.value, CatalogError)
    assert cat.select(BOXES, min_votes=np.int64(2)).ids.tolist() == work.baseline["select2"][0]
    work.assert_intact()


# -- bad codes, ids and metadata ---------------------------------------------------------------
def _bad_add(work, exc=InvalidCodes, **kwargs):
    cat = work.open()
    with pytest.raises(exc):
        cat.add_codes(**kwargs)
    assert len(cat) == work.baseline["len"]
    work.assert_intact()


@pytest.mark.parametrize("dtype", [np.int64, np.float32, np.int8, np.uint16, np.float64, bool])
def test_codes_not_uint8(work, dtype):
    codes = np.random.default_rng(1).integers(0, 2, size=(5, N_DIMS)).astype(dtype)
    _bad_add(work, codes=codes)


def test_codes_not_an_array(work):
    _bad_add(work, codes=[[1] * N_DIMS] * 3)


@pytest.mark.parametrize("shape", [(5, 31), (5, 33), (N_DIMS,), (0,), (2, N_DIMS, 1), (N_DIMS, 5)])
def test_codes_wrong_width(work, shape):
    _bad_add(work, codes=np.zeros(shape, dtype=np.uint8))


def test_codes_zero_dim_array(work):
    _bad_add(work, codes=np.array(7, dtype=np.uint8))


def test_ids_duplicated_within_call(work):
    _bad_add(work, codes=np.zeros((4, N_DIMS), np.uint8), ids=[5, 6, 5, 7])


@pytest.mark.parametrize("ids", [[1000, 10**6, 10**6 + 1], [10**6, 10**6 + 1, 1000]])
def test_ids_already_in_catalog(work, ids):
    # 1000 is in the template (ids 1000, 1002, ...); the other ids are new but must not land.
    _bad_add(work, codes=np.zeros((3, N_DIMS), np.uint8), ids=ids)


def test_ids_already_in_catalog_with_metadata(work):
    _bad_add(
        work,
        codes=np.zeros((2, N_DIMS), np.uint8),
        ids=[10**7, 1002],
        metadata={"label": ["a", "b"], "brand_new": [1, 2]},
    )


@pytest.mark.parametrize(
    "ids",
    [
        [1.0, 2.0, 3.0],
        np.array([1.5, 2.5, 3.5]),
        ["a", "b", "c"],
        [None, 1, 2],
        np.array([True, False, True]),
        "abc",
        np.array([[1, 2, 3]]),
    ],
)
def test_ids_not_integers(work, ids):
    _bad_add(work, codes=np.zeros((3, N_DIMS), np.uint8), ids=ids)


@pytest.mark.parametrize("n_ids", [2, 4, 0])
def test_ids_length_mismatch(work, n_ids):
    _bad_add(work, codes=np.zeros((3, N_DIMS), np.uint8), ids=list(range(10**6, 10**6 + n_ids)))


def test_ids_beyond_int64(work):
    _bad_add(work, codes=np.zeros((2, N_DIMS), np.uint8), ids=np.array([2**63, 2**63 + 1], dtype=np.uint64))


@pytest.mark.parametrize("metadata", [{"label": ["a", "b"]}, {"label": ["a"] * 4}, {"uri": []}])
def test_metadata_wrong_length(work, metadata):
    _bad_add(work, codes=np.zeros((3, N_DIMS), np.uint8), metadata=metadata)


@pytest.mark.parametrize("name", ["id", "ID", "f03", "F31", "f00", "pos", "added_at"])
def test_metadata_reserved_column(work, name):
    _bad_add(work, codes=np.zeros((3, N_DIMS), np.uint8), metadata={name: [1, 2, 3]})


@pytest.mark.parametrize("name", ["a b", "1abc", "", "a-b", 'x"y', "x;DROP TABLE codes", "é", "a" * 64])
def test_metadata_bad_identifier(work, name):
    _bad_add(work, codes=np.zeros((3, N_DIMS), np.uint8), metadata={name: [1, 2, 3]})


def test_metadata_duplicate_names_ignoring_case(work):
    _bad_add(work, codes=np.zeros((2, N_DIMS), np.uint8), metadata={"Tag": [1, 2], "tag": [3, 4]})


@pytest.mark.parametrize("metadata", [[("label", ["a", "b"])], "label", 5])
def test_metadata_not_a_mapping(work, metadata):
    _bad_add(work, codes=np.zeros((2, N_DIMS), np.uint8), metadata=metadata)


def test_metadata_type_conflict_rolls_back(work):
    """'score' is DOUBLE in the template: text that is not a number fails the whole add, and the
    new column added in the same call does not survive either."""
    _bad_add(
        work, codes=np.zeros((2, N_DIMS), np.uint8), metadata={"fresh_col": [1, 2], "score": ["high", "low"]}
    )
    cat = work.open(read_only=True)
    cols = (
        cat.sql("SELECT column_name FROM duckdb_columns() WHERE table_name = 'images'").column(0).to_pylist()
    )
    assert "fresh_col" not in cols


# -- opening -----------------------------------------------------------------------------------
@pytest.mark.parametrize("read_only", [False, True])
def test_open_missing_file(work, tmp_path, read_only):
    path = tmp_path / "missing.duckdb"
    with pytest.raises(CatalogNotFound):
        engine.Catalog.open(path, read_only=read_only)
    assert not path.exists()
    assert not Path(f"{path}.wal").exists()
    work.assert_intact()


@pytest.mark.parametrize("read_only", [False, True])
def test_open_a_directory(work, tmp_path, read_only):
    with pytest.raises(CatalogNotFound):
        engine.Catalog.open(tmp_path, read_only=read_only)
    work.assert_intact()


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize("content", ["random", "text", "empty", "truncated"])
def test_open_corrupt_file(work, tmp_path, read_only, content):
    path = tmp_path / "corrupt.duckdb"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes())
    elif content == "text":
        path.write_text("this is not a catalog\n" * 100)
    elif content == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(work.path.read_bytes()[:5000])
    before = sha256(path)
    with pytest.raises(CorruptCatalog):
        engine.Catalog.open(path, read_only=read_only)
    assert sha256(path) == before
    # The good catalog next to it is unaffected.
    work.assert_intact()


@pytest.mark.parametrize("read_only", [False, True])
def test_open_duckdb_file_without_schema(work, tmp_path, read_only):
    path = tmp_path / "other.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE things (x INTEGER); INSERT INTO things VALUES (1), (2)")
    con.close()
    with pytest.raises(CorruptCatalog):
        engine.Catalog.open(path, read_only=read_only)
    # The foreign file was not migrated or otherwise touched.
    con = duckdb.connect(str(path), read_only=True)
    try:
        assert con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall() == [("things",)]
        assert con.execute("SELECT x FROM things ORDER BY x").fetchall() == [(1,), (2,)]
    finally:
        con.close()
    work.assert_intact()


def _set_schema_versions(path, sql):
    con = duckdb.connect(str(path))
    try:
        con.execute(sql)
    finally:
        con.close()


@pytest.mark.parametrize("read_only", [False, True])
def test_schema_version_newer_than_code(work, read_only):
    _set_schema_versions(
        work.path, "INSERT INTO schema_version (version, name) VALUES (999, 'from_the_future')"
    )
    with pytest.raises(SchemaVersionError):
        engine.Catalog.open(work.path, read_only=read_only)
    # Nothing was changed: removing the future version gives back the intact catalog.
    con = duckdb.connect(str(work.path))
    try:
        assert con.execute("SELECT max(version) FROM schema_version").fetchall() == [(999,)]
        con.execute("DELETE FROM schema_version WHERE version = 999")
    finally:
        con.close()
    work.assert_intact()


@pytest.mark.parametrize("read_only", [False, True])
def test_schema_version_rows_missing(work, read_only):
    """A catalog whose schema_version table lost its rows: a typed CatalogError, never a raw
    DuckDB error from re-running migrations over existing tables; and the tables survive."""
    con = duckdb.connect(str(work.path))
    try:
        con.execute("CREATE TABLE saved_versions AS SELECT * FROM schema_version")
        con.execute("DELETE FROM schema_version")
    finally:
        con.close()
    with pytest.raises(CatalogError):
        engine.Catalog.open(work.path, read_only=read_only)
    con = duckdb.connect(str(work.path))
    try:
        con.execute("INSERT INTO schema_version SELECT * FROM saved_versions")
        con.execute("DROP TABLE saved_versions")
    finally:
        con.close()
    work.assert_intact()


def test_create_on_existing_path(work):
    before = sha256(work.path)
    with pytest.raises(CatalogError):
        engine.Catalog.create(work.path)
    assert sha256(work.path) == before
    work.assert_intact()


def test_create_on_existing_foreign_file(work, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(CatalogError):
        engine.Catalog.create(path)
    assert path.read_text() == "keep me"
    work.assert_intact()


def test_create_in_missing_directory(work, tmp_path):
    with pytest.raises(CatalogNotFound):
        engine.Catalog.create(tmp_path / "no" / "such" / "dir" / "c.duckdb")
    assert not (tmp_path / "no").exists()
    work.assert_intact()


# -- read-only catalogs ------------------------------------------------------------------------
def test_read_only_refuses_add_codes(work):
    before = sha256(work.path)
    cat = work.open(read_only=True)
    with pytest.raises(ReadOnlyError):
        cat.add_codes(np.zeros((3, N_DIMS), np.uint8))
    with pytest.raises(ReadOnlyError):
        cat.add_codes(
            np.zeros((3, N_DIMS), np.uint8), ids=[10**7, 10**7 + 1, 10**7 + 2], metadata={"x": [1, 2, 3]}
        )
    assert len(cat) == work.baseline["len"]
    work.close()
    assert sha256(work.path) == before
    work.assert_intact()


def test_read_only_refuses_build_index(work):
    before = sha256(work.path)
    cat = work.open(read_only=True)
    with pytest.raises(ReadOnlyError):
        cat.build_index(block_size=16)
    assert cat.index_status()["stale"] is True
    work.close()
    assert sha256(work.path) == before
    work.assert_intact()


def test_read_only_refuses_write_sql(work):
    before = sha256(work.path)
    cat = work.open(read_only=True)
    for text in [
        "DELETE FROM codes",
        "INSERT INTO images (id) VALUES (1)",
        "DROP TABLE blocks",
        f"COPY codes TO '{work.path.parent}/leak.csv'",
        f"ATTACH '{work.path.parent}/att.duckdb' AS att",
        "CREATE TABLE evil AS SELECT 1",
        "UPDATE codes SET f01 = 1",
    ]:
        with pytest.raises(InvalidSql):
            cat.sql(text)
    assert not (work.path.parent / "leak.csv").exists() and not (work.path.parent / "att.duckdb").exists()
    work.close()
    assert sha256(work.path) == before
    work.assert_intact()


# -- codes() -----------------------------------------------------------------------------------
@pytest.mark.parametrize("read_only", [False, True])
def test_codes_unknown_ids(work, read_only):
    cat = work.open(read_only=read_only)
    with pytest.raises(UnknownIds) as info:
        cat.codes([1000, 999, 1002, -5, 10**12])
    assert sorted(info.value.missing) == [-5, 999, 10**12]
    assert isinstance(info.value, CatalogError) and isinstance(info.value, KeyError)
    assert "999" in str(info.value)
    with pytest.raises(UnknownIds):
        cat.codes([1001])
    work.assert_intact()


@pytest.mark.parametrize(
    "ids", [[1000.0], np.array([1000.5]), ["1000"], [None], "1000", np.array([[1000, 1002]]), [True]]
)
def test_codes_non_integer_ids(work, ids):
    cat = work.open()
    with pytest.raises(InvalidCodes):
        cat.codes(ids)
    work.assert_intact()


# -- sql() -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text",
    [
        "SELEC 1",
        "SELECT FROM WHERE",
        "SELECT * FROM no_such_table",
        "SELECT no_such_column FROM codes",
        "SELECT CAST('x' AS INTEGER)",
        "SELECT (1",
    ],
)
def test_sql_malformed(work, text):
    cat = work.open()
    with pytest.raises(InvalidSql):
        cat.sql(text)
    assert cat.sql("SELECT count(*) AS n FROM codes").column("n").to_pylist() == [work.baseline["len"]]
    # No transaction is left dangling: a write through the API still works afterwards.
    work.assert_intact()


@pytest.mark.parametrize("text", ["", "   ", "\n\t", "-- just a comment", ";", None, 5])
def test_sql_empty_or_not_text(work, text):
    cat = work.open()
    with pytest.raises(InvalidSql):
        cat.sql(text)
    work.assert_intact()


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 1; SELECT 2",
        "SELECT 1; DELETE FROM codes",
        "DELETE FROM codes; SELECT 1",
        "SELECT count(*) FROM codes;;SELECT 3",
    ],
)
def test_sql_two_statements(work, text):
    cat = work.open()
    with pytest.raises(InvalidSql):
        cat.sql(text)
    work.assert_intact()


WRITES = [
    "INSERT INTO images (id) VALUES (123456789)",
    "INSERT INTO codes SELECT * FROM codes",
    "UPDATE codes SET f00 = 0",
    "DELETE FROM codes",
    "TRUNCATE blocks",
    "CREATE TABLE evil AS SELECT * FROM codes",
    "CREATE VIEW evil AS SELECT 1",
    "CREATE MACRO evil(a) AS a",
    "DROP TABLE codes",
    "DROP VIEW catalog",
    "ALTER TABLE images ADD COLUMN evil INTEGER",
    "COPY codes TO '{dir}/leak.csv'",
    "COPY (SELECT * FROM codes) TO '{dir}/leak.parquet' (FORMAT parquet)",
    "ATTACH '{dir}/attached.duckdb' AS att",
    "EXPORT DATABASE '{dir}/exported'",
    "CHECKPOINT",
    "SET threads = 1",
    "BEGIN TRANSACTION",
    "COMMIT",
    "VACUUM",
    "WITH t AS (SELECT 1) INSERT INTO images (id) SELECT 424242",
    "MERGE INTO images USING images AS s ON TRUE WHEN MATCHED THEN DELETE",
    "EXPLAIN SELECT 1",
    "PRAGMA version",
    "SELECT * FROM query('DELETE FROM codes')",
]


@pytest.mark.parametrize("template_text", WRITES)
def test_sql_write_statements_refused(work, tmp_path, template_text):
    out = tmp_path / "out"
    out.mkdir()
    text = template_text.format(dir=out)
    cat = work.open()
    with pytest.raises(InvalidSql):
        cat.sql(text)
    assert len(cat) == work.baseline["len"]
    assert list(out.iterdir()) == []  # no file was written, attached or exported
    work.assert_intact()


# -- closed catalogs and file locks ------------------------------------------------------------
def test_calls_after_close_raise(work):
    cat = work.open()
    cat.select(BOXES)
    cat.close()
    with pytest.raises(CatalogError):
        cat.select(BOXES)
    with pytest.raises(CatalogError):
        cat.codes([1000])
    with pytest.raises(CatalogError):
        cat.sql("SELECT 1")
    with pytest.raises(CatalogError):
        len(cat)
    with pytest.raises(CatalogError):
        cat.add_codes(np.zeros((1, N_DIMS), np.uint8))
    with pytest.raises(CatalogError):
        cat.build_index(block_size=16)
    with pytest.raises(CatalogError):
        cat.index_status()
    cat.close()  # closing twice is harmless
    work.cat = None
    work.assert_intact()


def test_context_manager_closes(work):
    with engine.Catalog.open(work.path) as cat:
        cat.select(BOXES)
    with pytest.raises(CatalogError):
        cat.select(BOXES)
    work.assert_intact()


@pytest.mark.parametrize("read_only", [False, True])
def test_closed_catalog_releases_file(work, read_only):
    cat = work.open(read_only=read_only)
    cat.select(BOXES)
    cat.sql("SELECT count(*) FROM catalog")
    cat.codes([1000, 1002])
    work.close()
    # In this process: a writable plain connection (a different configuration) now succeeds.
    con = duckdb.connect(str(work.path))
    try:
        con.execute("CREATE TABLE scratch (x INTEGER)")
        con.execute("DROP TABLE scratch")
    finally:
        con.close()
    # In another process: the file is not locked either.
    code = (
        "import duckdb, sys; c = duckdb.connect(sys.argv[1]); c.execute('SELECT 1'); c.close(); print('ok')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(work.path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
    work.assert_intact()


@pytest.mark.e2e
@pytest.mark.parametrize("read_only", [False, True])
def test_open_while_another_process_writes(work, read_only):
    code = (
        "import sys, time, engine; c = engine.Catalog.open(sys.argv[1]); "
        "print('ready', flush=True); time.sleep(300)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(work.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read() if proc.poll() is not None else "no ready line"
        with pytest.raises(CatalogError) as info:
            engine.Catalog.open(work.path, read_only=read_only)
        assert "another process" in str(info.value)
        assert not isinstance(info.value, CorruptCatalog)
    finally:
        proc.kill()
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
    work.assert_intact()


@pytest.mark.parametrize("first_read_only", [False, True])
def test_open_with_other_mode_in_same_process_is_not_corruption(work, first_read_only):
    """DuckDB refuses a second open of one file with another read_only setting in one process;
    the file is fine, so this must not be reported as a corrupt catalog."""
    cat = work.open(read_only=first_read_only)
    with pytest.raises(CatalogError) as info:
        engine.Catalog.open(work.path, read_only=not first_read_only)
    assert not isinstance(info.value, CorruptCatalog), str(info.value)
    assert cat.select(BOXES).ids.tolist() == work.baseline["select1"][0]
    work.assert_intact()


def test_the_shared_catalog_is_intact_after_every_refused_box_input(shared):
    """Last in the module: the file the refused box inputs were tried on holds what it held."""
    shared.assert_intact()
