"""engine.store.transaction: all of a write or none of it, and no registered table left behind."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from engine.store.database import transaction


@pytest.fixture
def con():
    c = duckdb.connect()
    c.execute("CREATE TABLE t (x INTEGER PRIMARY KEY)")
    yield c
    c.close()


def _rows(con) -> list[int]:
    return [r[0] for r in con.execute("SELECT x FROM t ORDER BY x").fetchall()]


def _registered(con, name: str) -> bool:
    try:
        con.execute(f"SELECT * FROM {name}")
    except duckdb.CatalogException:
        return False
    return True


def test_a_block_that_ends_commits_everything(con):
    with transaction(con, new=pa.table({"x": [1, 2, 3]})) as c:
        c.execute("INSERT INTO t SELECT x FROM new")
        c.execute("INSERT INTO t VALUES (10)")
    assert _rows(con) == [1, 2, 3, 10] and not _registered(con, "new")


def test_a_block_that_raises_leaves_nothing(con):
    con.execute("INSERT INTO t VALUES (0)")
    with pytest.raises(RuntimeError), transaction(con, new=pa.table({"x": [1, 2]})) as c:
        c.execute("INSERT INTO t SELECT x FROM new")
        raise RuntimeError("stopped halfway")
    assert _rows(con) == [0] and not _registered(con, "new")
    with transaction(con) as c:  # the connection takes the next write
        c.execute("INSERT INTO t VALUES (5)")
    assert _rows(con) == [0, 5]


def test_a_failed_statement_is_the_error_raised_and_nothing_is_written(con):
    con.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(duckdb.ConstraintException), transaction(con) as c:
        c.execute("INSERT INTO t VALUES (2)")
        c.execute("INSERT INTO t VALUES (1)")  # a duplicate key
    assert _rows(con) == [1]


def test_release_cache_frees_duckdbs_buffers_and_keeps_its_limit(tmp_path):
    import numpy as np

    import engine

    path = tmp_path / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        cat.add_codes(np.random.default_rng(0).integers(0, 256, (300_000, 32), dtype=np.uint8))
        cat.build_index(block_size=1024, compact=False)
    with engine.Catalog.open(path, read_only=True) as cat:
        store = cat.store
        limit = store.value("SELECT current_setting('memory_limit')")
        store.arrow("SELECT * FROM codes")  # fills the buffer pool
        cached = store.value("SELECT sum(memory_usage_bytes) FROM duckdb_memory()")
        store.release_cache()
        assert store.value("SELECT sum(memory_usage_bytes) FROM duckdb_memory()") < cached / 4
        assert store.value("SELECT current_setting('memory_limit')") == limit
        assert len(cat.select(engine.BoxSet([{0: (0, 255)}])).ids) == 300_000


def test_release_cache_leaves_a_sandboxed_catalog_as_it_is(tmp_path):
    import numpy as np

    import engine

    path = tmp_path / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        cat.add_codes(np.zeros((10, 32), np.uint8))
    with engine.Catalog.open(path, read_only=True, sandbox=True, memory_limit="256MB") as cat:
        cat.store.release_cache()  # SET is refused: nothing changes, nothing raises
        assert cat.store.value("SELECT current_setting('memory_limit')") == "244.1 MiB"  # 256 MB
        assert len(cat.snapshot().index.ids) == 10
