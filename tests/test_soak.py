"""A short soak of the web app: ``scripts/soak_web.py`` with 4 clients for 15 s against the real
server (``python -m engine serve``) over a copy of the small demo catalog. No timing thresholds:
no errors, every endpoint used, samples taken, and the DuckDB connections back to idle."""

from __future__ import annotations

import pytest

pytest.importorskip("litestar")


@pytest.fixture(scope="module")
def report(web_demo_copy, load_script):
    return load_script("soak_web").run_soak(web_demo_copy(), seconds=15, clients=4, seed=0, sample_every=1)


def test_no_request_fails(report):
    assert report["errors"] == 0, report["error_samples"]
    assert report["rounds"] >= 4 and report["requests"] > 0


def test_every_endpoint_is_exercised(report):
    for name, endpoint in report["endpoints"].items():
        assert endpoint["n"] > 0 and endpoint["errors"] == 0, name
        assert endpoint["p50_ms"] <= endpoint["p99_ms"] <= endpoint["max_ms"], name
        assert endpoint["server"]["n"] == endpoint["n"], name


def test_duckdb_connections_return_to_idle(report):
    conns = report["duckdb_connections"]
    assert conns["idle_before"] == 1  # the catalog's own connection
    assert conns["idle_after"] == conns["idle_before"]
    # each client has one request in flight, and a request holds one cursor at a time
    assert conns["under_load_max"] <= conns["idle_before"] + report["clients"]
    assert [t for t, _ in conns["over_time"]] == [s["t_s"] for s in report["samples"]]


def test_server_is_sampled(report):
    samples = report["samples"]
    assert len(samples) >= 10
    assert all(
        s["rss_mb"] > 0 and s["threads"] > 0 and s["fds"] > 0 and s["duckdb_connections"] >= 1
        for s in samples
    )
    assert [s["t_s"] for s in samples] == sorted(s["t_s"] for s in samples)
    memory = report["memory"]
    assert memory["samples_after_warmup"] >= 4 and memory["slope_mb_per_min"] is not None
    assert 0 < memory["rss_start_mb"] <= memory["rss_max_mb"] and memory["rss_end_mb"] <= memory["rss_max_mb"]
    assert report["results_cached"]["max"] >= 1


def test_connection_count_is_duckdbs_own(make_catalog, codegen, rng):
    import engine

    cat = make_catalog(codegen.uniform(rng, 100), block_size=16)
    assert cat.connection_count() == 1
    cursor = cat.store.con.cursor()
    assert cat.connection_count() == 2
    cursor.close()
    cat.sql("SELECT 1")
    with pytest.raises(engine.InvalidSql):
        cat.query("SELECT * FROM no_such_table")
    assert cat.connection_count() == 1
    cat.close()
    assert cat.connection_count() == 0
