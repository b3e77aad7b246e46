"""Progress: the shared display (bar, plain lines, nothing) and the callbacks of the long calls."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
import time

import duckdb
import numpy as np
import pytest

import engine
from engine import limits
from engine import progress as P
from engine.index import layout
from engine.store import database
from engine.store.database import track_statement

LINE = re.compile(
    r"^(?P<label>[\w-]+): (?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+), (?P<rate>[\d.e+]+) (?P=unit)/s, "
    r"(?P<tail>\d+ (s|min) left|done in \d+ (s|min)|time left unknown)$"
)


class Recorder:
    """A progress callable that records its calls and checks they never overlap."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []
        self._busy = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        assert self._busy.acquire(blocking=False), "progress called from two threads at once"
        try:
            self.calls.append((done, total))
        finally:
            self._busy.release()

    def check(self) -> int:
        """The total, after checking done rises monotonically to it and total never changes."""
        assert self.calls, "progress was never called"
        done = [d for d, _ in self.calls]
        totals = {t for _, t in self.calls}
        assert len(totals) == 1, f"total changed: {sorted(totals)}"
        total = totals.pop()
        assert done == sorted(done) and done[0] >= 0
        assert done[-1] == total and all(isinstance(d, int) for d in done)
        return total


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the display -------------------------------------------------------------------------------
@pytest.mark.parametrize("enabled", [False, None])
def test_disabled_prints_nothing(enabled):
    out = io.StringIO()
    with P.reporter("index", "rows", enabled, stream=out, interval_s=0) as report:
        for d in range(0, 101, 10):
            report(d, 100)
    assert out.getvalue() == "" and not report.active


def test_a_callable_gets_every_report():
    rec = Recorder()
    with P.reporter("index", "rows", rec) as report:
        assert report.active
        for d in (0, 5, 10):
            report(d, 10)
    assert rec.calls == [(0, 10), (5, 10), (10, 10)]


def test_lines_on_a_stream_that_is_no_terminal(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(P.time, "monotonic", clock)
    out = io.StringIO()
    report = P.reporter("index", "rows", True, stream=out, interval_s=5.0)
    for k in range(1, 101):  # 100 reports, one a second, 100_000 rows a second
        clock.now += 1.0
        report(k * 100_000, 10_000_000)
    report.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 20, lines  # one every 5 s, and no special last one: 10M was never reached
    first = LINE.match(lines[0])
    assert first and first["label"] == "index" and first["unit"] == "rows"
    assert (int(first["done"]), int(first["total"])) == (500_000, 10_000_000)
    assert first["rate"] == "100000" and first["tail"] == "95 s left"
    assert all(LINE.match(s) for s in lines) and "\r" not in out.getvalue()


def test_lines_always_print_the_last_once(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(P.time, "monotonic", clock)
    out = io.StringIO()
    with P.reporter("export", "rows", True, stream=out, interval_s=5.0) as report:
        clock.now += 1.0
        report(10, 40)  # within the interval: quiet
        clock.now += 1.0
        report(40, 40)  # the end: always shown
        report(40, 40)  # but once
    assert out.getvalue() == "export: 40/40 rows, 20 rows/s, done in 2 s\n"


def test_time_left_follows_the_recent_rate(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(P.time, "monotonic", clock)
    out = io.StringIO()
    report = P.reporter("train-head", "steps", True, stream=out, interval_s=5.0)
    report(1, 1001)  # loaded
    clock.now += 30.0  # a slow step (encoding the prompts): one step in 30 s tells nothing yet
    report(2, 1001)
    for k in range(3, 323):  # then 64 steps a second
        clock.now += 1 / 64
        report(k, 1001)
    assert out.getvalue().splitlines() == [
        "train-head: 2/1001 steps, 0.0667 steps/s, time left unknown",
        "train-head: 322/1001 steps, 64 steps/s, 11 s left",
    ]


def test_lines_through_a_real_pipe():
    code = (
        "import time\nfrom engine import progress\n"
        "r = progress.reporter('compact', 'rows', True, interval_s=0.05)\n"
        "for k in range(1, 21):\n    time.sleep(0.01)\n    r(k * 50, 1000)\nr.close()\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    assert 2 <= len(lines) <= 12, lines  # periodic, not one per call
    assert all(LINE.match(s) for s in lines), lines
    assert lines[-1].startswith("compact: 1000/1000 rows,") and "done in" in lines[-1]


def test_a_terminal_gets_a_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    with P.reporter("index", "rows", True, stream=out) as report:
        for d in (0, 500, 1000):
            report(d, 1000)
    text = out.getvalue()
    assert "index" in text and "1000/1000" in text and "rows/s" in text


def test_duckdb_statement_progress_is_monotone_and_in_its_span(monkeypatch):
    monkeypatch.setattr(database, "POLL_INTERVAL_S", 0.005)
    con = duckdb.connect()
    rec = Recorder()
    report = P.reporter("x", "rows", rec)
    report(100, 1100)
    with track_statement(con, report, 100, 1000, 1100):
        con.execute("SELECT count(*) FROM range(60000000) t(i) WHERE hash(i) % 7 = 0").fetchall()
    report(1100, 1100)
    rec.check()
    assert len(rec.calls) > 2, "DuckDB's estimate was never reported"
    assert all(100 <= d < 1100 for d, _ in rec.calls[1:-1])
    con.close()


def test_an_error_in_the_polling_thread_reaches_the_caller(monkeypatch):
    monkeypatch.setattr(database, "POLL_INTERVAL_S", 0.005)
    con = duckdb.connect()

    def fail(done, total):
        raise RuntimeError("stop here")

    with (
        pytest.raises(RuntimeError, match="stop here"),
        track_statement(con, P.reporter("x", "rows", fail), 0, 1000, 1000),
    ):
        con.execute("SELECT count(*) FROM range(60000000) t(i) WHERE hash(i) % 7 = 0").fetchall()
    con.close()


# -- the catalog's long calls ------------------------------------------------------------------
@pytest.fixture
def cat(make_catalog, codegen, rng):
    return make_catalog(codegen.clustered(rng, 5000), metadata={"label": np.arange(5000) % 7})


def test_build_index_reports_its_steps(cat, monkeypatch):
    monkeypatch.setattr(layout, "WRITE_CHUNK_ROWS", 1000)  # five chunks
    rec = Recorder()
    stats = cat.build_index(block_size=64, progress=rec)
    total = rec.check()
    assert total == layout.build_steps(5000, 64, load=True) == 1 + layout.n_levels(5000, 64) + 5 + 1
    assert [d for d, _ in rec.calls] == list(range(1, total + 1))  # one report a step
    assert stats["rows"] == 5000


def test_chunked_write_keeps_the_same_codes_and_order(make_catalog, codegen, rng, monkeypatch):
    codes = codegen.clustered(rng, 3000)
    one = make_catalog(codes)
    one.build_index(block_size=64)
    monkeypatch.setattr(layout, "WRITE_CHUNK_ROWS", 700)
    many = make_catalog(codes)
    many.build_index(block_size=64)
    q = "SELECT * FROM codes ORDER BY pos"
    assert one.sql(q).equals(many.sql(q))
    assert one.sql("SELECT * FROM blocks ORDER BY block_id").equals(
        many.sql("SELECT * FROM blocks ORDER BY block_id")
    )
    assert np.array_equal(many.sql("SELECT pos FROM codes").column(0).to_numpy(), np.arange(3000))


def test_build_index_with_given_codes_and_an_empty_catalog(make_catalog, codegen, rng):
    cat = make_catalog(codegen.uniform(rng, 10))
    rec = Recorder()
    cat.build_index(block_size=4, codes=codegen.uniform(rng, 10), ids=np.arange(10), progress=rec)
    assert rec.check() == layout.build_steps(10, 4, load=False)
    empty = make_catalog()
    rec = Recorder()
    empty.build_index(progress=rec)
    assert rec.check() == layout.build_steps(0, limits.DEFAULT_BLOCK_SIZE, load=True)


def test_compact_counts_the_rows_of_every_table(cat):
    cat.build_index(block_size=64)
    rec = Recorder()
    cat.compact(progress=rec)
    total = rec.check()
    assert total >= 2 * 5000  # codes and images, and the small tables
    assert len(cat) == 5000 and cat.index_status()["stale"] is False


def test_export_and_import_count_rows(cat, tmp_path):
    cat.build_index(block_size=64)
    rec = Recorder()
    cat.export_parquet(tmp_path / "out", progress=rec)
    n_blocks = cat.setting("index")["n_blocks"]
    n_artifacts = cat.sql("SELECT count(*) AS n FROM artifacts").column("n")[0].as_py()
    assert rec.check() == 5000 + 5000 + n_blocks + n_artifacts
    rec = Recorder()
    with engine.Catalog.import_parquet(tmp_path / "out", tmp_path / "back.duckdb", progress=rec) as back:
        assert len(back) == 5000
    assert rec.check() == 5000 + 5000 + n_blocks + n_artifacts


def test_the_display_prints_lines_for_a_catalog_call(cat, capsys):
    cat.build_index(block_size=64, progress=True)
    err = capsys.readouterr().err  # pytest's capture is no terminal
    lines = err.splitlines()
    assert len(lines) == 1 and LINE.match(lines[0]) and lines[0].startswith("index: ")


def test_failed_import_closes_its_display(tmp_path):
    rec = Recorder()
    (tmp_path / "bad").mkdir()
    with pytest.raises(engine.CatalogError, match="not a clip-branches export"):
        engine.Catalog.import_parquet(tmp_path / "bad", tmp_path / "x.duckdb", progress=rec)
    assert rec.calls == []


def test_slow_reporting_does_not_change_results(cat):
    """A callback that takes time is only slower, never different."""
    cat.build_index(block_size=64)
    before = cat.sql("SELECT * FROM codes ORDER BY pos")

    def slow(done, total):
        time.sleep(0.001)

    cat.build_index(block_size=64, progress=slow)
    assert cat.sql("SELECT * FROM codes ORDER BY pos").equals(before)


# -- ingest, train_head and index_embeddings ---------------------------------------------------
PROMPTS = [
    "ankle boot",
    "a bag to carry things",
    "trousers",
    "a summer dress",
    "a coat",
    "a shirt",
    "sandals",
    "a sneaker",
    "a pullover",
    "a t-shirt",
    "a handbag",
    "boots",
    "jeans",
    "a jacket",
    "a blouse",
    "shoes",
]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """A catalog of 20 demo images, ingested with the display on; (path, what stderr showed)."""
    from pathlib import Path

    pytest.importorskip("torch")
    if not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("needs the Debian package dataset-fashion-mnist")
    from engine.datasets.demodata import write_fashion_mnist
    from engine.encoders import load_encoder
    from engine.ingest import ingest

    root = tmp_path_factory.mktemp("progress")
    manifest = write_fashion_mnist(root / "fm", limit=10, workers=1)
    path = root / "c.duckdb"
    err = io.StringIO()
    with engine.Catalog.create(path) as cat:
        old, sys.stderr = sys.stderr, err
        try:
            ingest(cat, [str(manifest)], load_encoder("demo:fashion-v1"), workers=0, thumbnails=False)
        finally:
            sys.stderr = old
    return path, err.getvalue()


def test_ingest_shows_lines_when_stderr_is_no_terminal(embedded):
    _, err = embedded
    lines = err.splitlines()
    assert lines and LINE.match(lines[-1]) and lines[-1].startswith("ingest: 20/20 img, ")


@pytest.mark.parametrize("method", ["distill", "pca"])
def test_train_head_and_index_report_steps(embedded, method):
    from engine.codes import head as head_mod
    from engine.codes import pipeline

    with engine.Catalog.open(embedded[0]) as cat:
        rec = Recorder()
        pipeline.train_head(cat, method=method, prompts=PROMPTS, epochs=1, progress=rec)
        fit = 1 if method == "pca" else head_mod.train_steps(20, 1, 512)  # 20 + 16 rows for PCA
        assert rec.check() == 1 + 1 + fit + 1  # load, encode the texts, fit, quantizer
        rec = Recorder()
        pipeline.index_embeddings(cat, block_size=4, progress=rec)
        assert rec.check() == 1 + 1 + layout.build_steps(20, 4, load=False)
        assert not cat.index_status()["stale"]
