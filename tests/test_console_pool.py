"""engine.sandbox.QueryPool: console queries in worker processes with an OS memory limit, a
hard deadline, cancellation and a bound on queries at once."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import engine
from engine.errors import InvalidSql, QueryInterrupted, ServerBusy
from engine.sandbox import QueryPool

ENDLESS = "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    path = tmp_path_factory.mktemp("pool") / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        cat.add_codes(
            np.random.default_rng(0).integers(0, 256, (300, 32), dtype=np.uint8),
            metadata=pa.table({"label": [f"c{i % 3}" for i in range(300)]}),
        )
        cat.build_index(block_size=64)
    return path


@pytest.fixture
def pool(catalog):
    p = QueryPool(catalog, workers=1, memory_limit="300MB")
    yield p
    p.close()


def _worker_pids(pool):
    return [w.proc.pid for w in pool._idle]


def test_queries_answer_with_relations_and_limits(pool):
    last = pa.table({"id": [5, 1], "score": [9, 8], "rank": [1, 2]})
    r = pool.run("SELECT id, label FROM result_images()", relations={"last_result": last})
    assert r.table.to_pylist() == [{"id": 5, "label": "c2"}, {"id": 1, "label": "c1"}]
    r = pool.run("SELECT id FROM codes ORDER BY id", max_rows=4)
    assert r.table.column("id").to_pylist() == [0, 1, 2, 3] and r.truncated and r.cut == "rows"
    r = pool.run("SELECT repeat('x', 5000) AS v FROM range(100)", max_bytes=20_000)
    assert r.cut == "bytes" and 0 < r.table.num_rows < 100


def test_bad_queries_are_refused_without_losing_the_worker(pool):
    pool.start()
    pids = _worker_pids(pool)
    for text, match in [
        ("DROP TABLE codes", "not DROP"),
        ("SELECT * FROM nope", "nope"),
        ("SELECT * FROM read_blob('x')", "read_blob"),
        ("", "empty"),
    ]:
        with pytest.raises(InvalidSql, match=match):
            pool.run(text)
    assert _worker_pids(pool) == pids


def test_an_endless_query_is_stopped_at_its_time_limit(pool):
    with pytest.raises(QueryInterrupted, match="longer than 0.3 s"):
        pool.run(ENDLESS, time_limit_s=0.3)
    assert pool.run("SELECT count(*) AS n FROM codes").table.column("n").to_pylist() == [300]


def test_a_worker_that_does_not_answer_is_killed_at_the_deadline(pool):
    pool.start()
    pid = _worker_pids(pool)[0]
    os.kill(pid, signal.SIGSTOP)  # stands for work that never looks at DuckDB's interrupt
    try:
        with pytest.raises(QueryInterrupted, match="longer than 0.2 s"):
            pool.run("SELECT 1", time_limit_s=0.2)
    finally:
        if _worker_pids(pool) == [pid]:
            os.kill(pid, signal.SIGCONT)
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split()[2] == "Z"
    assert pool.run("SELECT 2 AS v").table.to_pylist() == [{"v": 2}]
    assert _worker_pids(pool) != [pid]


@pytest.mark.parametrize(
    "text",
    [
        "SELECT damerau_levenshtein(repeat('a', 25000), repeat('b', 25000)) AS d",
        "SELECT range(0, 300000000) AS r",
        "SELECT list(x) FROM range(300000000) t(x)",
    ],
)
def test_a_query_past_the_memory_limit_is_stopped(pool, text):
    # Mostly an allocation fails and the query says so; a thread that cannot get memory for its
    # own start can also hang the worker (glibc aborts it halfway), and the deadline kills it.
    with pytest.raises(InvalidSql, match="memory|longer than 10 s"):
        pool.run(text, time_limit_s=10)
    assert pool.run("SELECT count(*) AS n FROM codes").table.column("n").to_pylist() == [300]


def test_queries_beyond_the_workers_are_refused_busy_and_cancel_kills(pool):
    cancel = threading.Event()
    errors = []

    def endless():
        try:
            pool.run(ENDLESS, time_limit_s=60, cancel=cancel)
        except Exception as e:  # noqa: BLE001 - recorded for the assertion
            errors.append(e)

    t = threading.Thread(target=endless)
    t.start()
    deadline = time.monotonic() + 30
    while pool.busy() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(ServerBusy, match="console is busy: 1 of its queries"):
        pool.run("SELECT 1")
    cancel.set()
    t.join(30)
    assert not t.is_alive() and len(errors) == 1 and isinstance(errors[0], QueryInterrupted)
    assert "cancelled" in str(errors[0])
    assert pool.busy() == 0
    assert pool.run("SELECT 3 AS v").table.to_pylist() == [{"v": 3}]


def test_a_missing_catalog_is_a_clear_error(tmp_path):
    p = QueryPool(tmp_path / "gone.duckdb", workers=1)
    with pytest.raises(engine.CatalogError, match="cannot open"):
        p.run("SELECT 1")
    p.close()
    with pytest.raises(engine.CatalogError, match="not a size"):
        QueryPool(tmp_path / "x.duckdb", memory_limit="lots")
