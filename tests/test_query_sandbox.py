"""Catalog.query on a sandboxed read-only catalog: limits, and every escape attempt refused."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import engine
from engine.errors import InvalidSql, QueryInterrupted
from engine.sandbox import reads_last_result


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory):
    path = tmp_path_factory.mktemp("sandbox") / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        rng = np.random.default_rng(0)
        cat.add_codes(
            rng.integers(0, 256, (500, 32), dtype=np.uint8),
            metadata=pa.table({"label": [f"c{i % 5}" for i in range(500)]}),
        )
        cat.build_index(block_size=64)
    cat = engine.Catalog.open(path, read_only=True, sandbox=True)
    yield cat, path
    cat.close()


def test_rows_are_capped_and_truncation_is_reported(sandboxed):
    cat, _ = sandboxed
    r = cat.query("SELECT id FROM codes ORDER BY id", max_rows=7)
    assert r.table.column("id").to_pylist() == list(range(7)) and r.truncated
    r = cat.query("SELECT id FROM codes WHERE id < 3 ORDER BY id", max_rows=7)
    assert r.table.num_rows == 3 and not r.truncated and r.time_ms >= 0


def test_relations_combine_a_result_with_metadata(sandboxed):
    cat, _ = sandboxed
    last = pa.table({"id": [1, 2, 3, 6], "score": [25, 20, 14, 13], "rank": [1, 2, 3, 4]})
    r = cat.query(
        "SELECT r.id FROM last_result r JOIN images USING (id) WHERE label = 'c1' ORDER BY score DESC",
        relations={"last_result": last},
    )
    assert r.table.column("id").to_pylist() == [1, 6]
    # registered for that query only: the next one sees an empty last_result
    assert cat.query("SELECT * FROM last_result").table.num_rows == 0


def test_endless_query_is_interrupted(sandboxed):
    cat, _ = sandboxed
    endless = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"
    with pytest.raises(QueryInterrupted, match="longer than 0.5 s"):
        cat.query(endless, time_limit_s=0.5)
    assert cat.query("SELECT count(*) AS n FROM codes").table.column("n").to_pylist() == [500]


@pytest.mark.parametrize(
    "text, match",
    [
        ("COPY codes TO '/tmp/out.csv'", "not COPY"),
        ("EXPORT DATABASE '/tmp/x'", "not EXPORT"),
        ("ATTACH '/tmp/other.duckdb' AS o", "not ATTACH"),
        ("DETACH o", "not DETACH"),
        ("INSTALL httpfs", "not"),
        ("LOAD httpfs", "not LOAD"),
        ("SET memory_limit = '100GB'", "not SET"),
        ("RESET memory_limit", "not"),
        ("PRAGMA threads = 1", "not"),
        ("CALL pragma_version()", "not CALL"),
        ("CREATE TABLE t (a INTEGER)", "not CREATE"),
        ("CREATE TEMP VIEW v AS SELECT 1", "not CREATE"),
        ("INSERT INTO codes SELECT * FROM codes", "not INSERT"),
        ("UPDATE images SET uri = 'x'", "not UPDATE"),
        ("DELETE FROM codes", "not DELETE"),
        ("DROP TABLE codes", "not DROP"),
        ("ALTER TABLE images ADD COLUMN x INTEGER", "not ALTER"),
        ("CHECKPOINT", "not"),
        ("VACUUM", "not VACUUM"),
        ("PRAGMA memory_limit = '100GB'", "not"),
        ("PRAGMA enable_profiling", "not PRAGMA"),
        ("PRAGMA disable_optimizer", "not PRAGMA"),
        ("SET GLOBAL threads = 1", "not SET"),
        ("SET VARIABLE x = 1", "not SET"),
        ("USE memory", "not"),
        ("IMPORT DATABASE '/tmp/x'", "not"),
        ("FORCE INSTALL httpfs", "not"),
        ("LOAD '/tmp/evil.duckdb_extension'", "not LOAD"),
        ("UPDATE EXTENSIONS", "only queries"),
        ("PREPARE p AS SELECT 1", "not PREPARE"),
        ("BEGIN TRANSACTION", "not TRANSACTION"),
        ("CREATE MACRO m(a) AS a", "not CREATE"),
        ("CREATE SECRET s (TYPE S3, KEY_ID 'x', SECRET 'y')", "not CREATE"),
        ("UPDATE codes SET f00 = 1 RETURNING *", "not UPDATE"),
        ("COPY (SELECT 1) TO '/tmp/x.csv'", "not COPY"),
        ("SELECT * FROM query('DROP TABLE codes')", "single SELECT|not available"),
        ("SELECT * FROM query('COPY codes TO ''/tmp/q.csv''')", "single SELECT|not available"),
        ("SELECT * FROM query('SELECT 1; DROP TABLE codes')", "single SELECT|not available"),
        ("SELECT * FROM sniff_csv('/etc/passwd')", "disabled|not available"),
        ("SELECT * FROM parquet_metadata('/tmp/x.parquet')", "disabled|not available"),
        ("SELECT * FROM duckdb_secrets()", "disabled|not available"),
        ("SELECT getenv('HOME')", "does not exist|not available"),
        ("SELECT 1; SELECT 2", "exactly one statement"),
        ("SELECT 1; DROP TABLE codes", "exactly one statement"),
        ("SELECT * FROM read_csv('/etc/passwd')", "disabled|not available"),
        ("SELECT * FROM read_text('/etc/passwd')", "disabled|not available"),
        ("SELECT * FROM read_blob('/etc/passwd')", "disabled|not available"),
        ("SELECT * FROM read_parquet('/tmp/*.parquet')", "disabled|not available"),
        ("SELECT * FROM '/etc/passwd'", "disabled|not exist|Catalog Error|not a table"),
        ("SELECT * FROM glob('/etc/*')", "disabled|not available"),
        ("SELECT * FROM read_json_auto('http://example.com/x.json')", "disabled|not available"),
        ("", "empty"),
        ("   ", "empty"),
        ("SELECT " + "(" * 3000 + "1" + ")" * 3000, "depth|nested"),
        ("SELECT " + " + ".join(["1"] * 60_000), "characters"),
        ("SELEC 1", "syntax"),
    ],
)
def test_escape_attempts_are_refused(sandboxed, text, match):
    cat, _ = sandboxed
    with pytest.raises(InvalidSql, match=match):
        cat.query(text, time_limit_s=2)


@pytest.mark.parametrize(
    "text",
    [
        "SELECT list(x) FROM range(300000000) t(x)",
        "SELECT string_agg(repeat('x', 1000), '') FROM range(2000000)",
    ],
)
def test_a_query_past_the_memory_limit_is_stopped(tmp_path, text):
    path = tmp_path / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        cat.add_codes(np.zeros((10, 32), np.uint8))
    with engine.Catalog.open(path, read_only=True, sandbox=True, memory_limit="200MB") as cat:
        with pytest.raises(InvalidSql, match="memory limit of 190.7 MiB"):
            cat.query(text, time_limit_s=60)
        assert cat.query("SELECT count(*) AS n FROM codes").table.column("n").to_pylist() == [10]


def test_the_file_is_untouched_and_the_settings_locked(sandboxed):
    cat, path = sandboxed
    before = path.stat().st_mtime_ns
    for text in ("SELECT * FROM duckdb_settings() WHERE name = 'enable_external_access'",):
        value = cat.sql(text).column("value").to_pylist()
        assert value == ["false"]
    assert path.stat().st_mtime_ns == before
    with pytest.raises(engine.CatalogError, match="read-only"):
        engine.Catalog.open(path, read_only=False, sandbox=True)


def test_console_macros_combine_the_last_result_with_metadata(sandboxed):
    cat, _ = sandboxed
    last = pa.table({"id": [6, 1, 2], "score": [25, 20, 14], "rank": [1, 2, 3]})
    r = cat.query(
        "SELECT id, label FROM result_images() WHERE label IN ('c1', 'c2')", relations={"last_result": last}
    )
    assert r.table.to_pylist() == [
        {"id": 6, "label": "c1"},
        {"id": 1, "label": "c1"},
        {"id": 2, "label": "c2"},
    ]
    r = cat.query(
        "SELECT count(*) AS n FROM catalog WHERE in_last_result(id) AND f00 >= 0",
        relations={"last_result": last},
    )
    assert r.table.column("n").to_pylist() == [3]
    r = cat.query("SELECT count(*) AS n FROM added_after(TIMESTAMP '2000-01-01')")
    assert r.table.column("n").to_pylist() == [500]


@pytest.mark.parametrize(
    "text, shown",
    [
        ("SELECT TIMESTAMP '-infinity' AS v", "-infinity"),
        ("SELECT DATE 'infinity' AS v", "infinity"),
        ("SELECT DATE '0044-03-15 (BC)' AS v", "0044-03-15 (BC)"),
        ("SELECT TIMESTAMP '2026-11-23 10:00:00' AS v", "2026-11-23 10:00:00"),
    ],
)
def test_dates_outside_pythons_range_come_as_text(sandboxed, text, shown):
    cat, _ = sandboxed
    assert cat.query(text).table.to_pylist() == [{"v": shown}]


@pytest.mark.parametrize(
    "template, match",
    [
        ("SELECT octet_length(content) FROM read_blob('{path}')", "read_blob"),
        ("SELECT * FROM read_text('{path}')", "read_text"),
        ("SELECT path FROM duckdb_databases()", "duckdb_databases"),
        ("SELECT * FROM duckdb_settings()", "duckdb_settings"),
        ("SELECT current_setting('temp_directory')", "current_setting"),
        ("SELECT \"CURRENT_SETTING\"('memory_limit')", "current_setting"),
        ("SELECT * FROM pragma_database_size()", "pragma_database_size"),
        ("SELECT * FROM pragma_storage_info('codes')", "pragma_storage_info"),
        ("SELECT * FROM duckdb_temporary_files()", "duckdb_temporary_files"),
        ("SELECT * FROM pg_catalog.pg_settings", "not a table of this catalog"),
        ("SELECT * FROM system.main.duckdb_settings()", "duckdb_settings"),
        ("SELECT * FROM (SELECT 1) t, LATERAL (SELECT * FROM read_blob('{path}'))", "read_blob"),
        ("WITH x AS (SELECT * FROM duckdb_databases()) SELECT * FROM x", "duckdb_databases"),
        ("SELECT (SELECT max(path) FROM duckdb_databases())", "duckdb_databases"),
        ("SELECT * FROM '{path}'", "not a table of this catalog"),
    ],
)
def test_the_catalog_file_paths_and_settings_cannot_be_read(sandboxed, template, match):
    cat, path = sandboxed
    with pytest.raises(InvalidSql, match=match):
        cat.query(template.format(path=path))


def test_schema_listings_and_generators_stay_available(sandboxed):
    cat, _ = sandboxed
    r = cat.query("SELECT table_name FROM duckdb_tables() ORDER BY table_name")
    assert "codes" in r.table.column("table_name").to_pylist()
    assert cat.query("SELECT count(*) AS n FROM range(10)").table.column("n").to_pylist() == [10]
    assert cat.query("DESCRIBE images").table.num_rows >= 2
    assert cat.query("SELECT count(*) AS n FROM information_schema.tables").table.column("n")[0].as_py() > 0


def test_results_are_capped_by_bytes_and_long_values_are_cut(sandboxed):
    cat, _ = sandboxed
    r = cat.query("SELECT repeat('<', 1000000) AS v FROM range(500)", max_rows=500, max_bytes=200_000)
    values = r.table.column("v").to_pylist()
    assert r.truncated and r.cut == "bytes" and 0 < len(values) < 500
    assert r.table.nbytes <= 200_000
    assert all(v == "<" * engine.limits.MAX_VALUE_CHARS + "…" for v in values)
    r = cat.query("SELECT id FROM codes", max_rows=10, max_bytes=10_000_000)
    assert r.cut == "rows" and r.table.num_rows == 10
    r = cat.query("SELECT repeat('x', 20000000) AS v FROM range(120)", max_bytes=1_000_000)
    assert r.truncated and r.table.nbytes <= 1_000_000 and r.table.num_rows >= 1


def test_repeated_column_names_keep_their_values(sandboxed):
    cat, _ = sandboxed
    assert cat.query("SELECT 1 AS a, 2 AS a, 3 AS A").table.to_pylist() == [{"a": 1, "a_2": 2, "A_3": 3}]
    r = cat.query("SELECT a.id, b.id FROM codes a JOIN codes b ON b.id = a.id + 1 ORDER BY a.id LIMIT 2")
    assert r.table.column_names == ["id", "id_2"]
    assert r.table.to_pylist() == [{"id": 0, "id_2": 1}, {"id": 1, "id_2": 2}]


@pytest.mark.parametrize(
    "text, reads",
    [
        ("SELECT * FROM last_result", True),
        ('SELECT id FROM "Last_Result" ORDER BY rank', True),  # names are case-insensitive
        ("SELECT * FROM images JOIN last_result USING (id)", True),
        ("SELECT * FROM images WHERE id IN (SELECT id FROM last_result)", True),
        ("WITH top AS (SELECT * FROM last_result LIMIT 5) SELECT * FROM top", True),
        ("SELECT id FROM result_images() WHERE label = 'c1'", True),  # the console macros read it
        ("SELECT id FROM images WHERE IN_LAST_RESULT(id)", True),
        ("SELECT 'last_result' AS t", False),  # a string, a comment, a column or an alias is not the table
        ("SELECT 1 -- FROM last_result", False),
        ("SELECT 1 /* FROM last_result */", False),
        ("SELECT last_result FROM images", False),
        ("SELECT * FROM images AS last_result", False),
        ("SELECT * FROM last_result_2", False),
        ("WITH last_result AS (SELECT 7 AS id) SELECT id FROM last_result", False),  # a CTE of its own
        ("SELEC * FROM last_result", False),  # does not parse: running it says why
        ("", False),
    ],
)
def test_reads_last_result_finds_the_table_and_the_macros_over_it(text, reads):
    with duckdb.connect() as con:
        assert reads_last_result(con, text) is reads
