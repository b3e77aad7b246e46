"""Soak test of the web UI: concurrent clients doing mixed work for a bounded time, while the
server's memory, file descriptors, threads and DuckDB connections are sampled.

The catalog (``--rows``, 1M by default) is the 70,000-image demo catalog plus rows whose codes
are real codes jittered by at most ±4 per dim: each extra row keeps the label, split and image
file (``uri``, ``file_size``, ``file_mtime_ns``, ``width``, ``height``) of the row it was drawn
from, and names it in ``copy_of``, so text search, refine, the console's metadata queries and every
thumbnail work on all rows (28-pixel PNG files, served as they are, so thumbnails add no files).
The demo catalog
comes from ``--demo`` (built by ``clip-branches demo --no-serve`` when missing). A catalog at
``--catalog`` with the requested rows, a fresh index, an encoder and a head is reused.

The script starts ``python -m engine serve CATALOG`` on 127.0.0.1 (its output goes to
``CATALOG.serve.log``), waits for ``GET /api/health``, and runs ``--clients`` threads for
``--minutes``. Each thread keeps one keep-alive HTTP/1.1 connection (``http.client``) and loops
over what a user does in the UI, with no pause between requests:

1. ``GET /search?q=...`` (a product phrase at random), then ``GET /thumb/...`` for 12 results,
   a quarter of them as conditional requests of a thumbnail already seen (304);
2. now and then ``GET /similar?id=...`` (*similar* under a result);
3. ``POST /refine`` with the first 8 results as positives and the last 2 as negatives (the model
   cycles through ensemble, branch, tree and forest), thumbnails of its first page, and half the
   time a second round with labels added from the refine's own results;
4. ``GET /results/<token>`` (*load more*) at the next page and at a random later one;
5. ``POST /console`` and ``POST /api/sql`` with a query from a list, over ``last_result`` (the
   refine's token), metadata and codes;
6. every 10 rounds the two pages, ``GET /`` and ``GET /console`` (a new tab).

Errors are every answer but 200 (and 304 to a conditional request) and every failed connection
(a request that fails on a reused connection before any answer is sent again once on a new one,
as browsers do; ``reconnects`` counts those). Every ``--sample-every`` seconds a sampler records
the server's RSS, threads and open file descriptors (from ``/proc``, the server process and its
children), its CPU time, and from ``GET /api/health`` the open DuckDB connections of each catalog
and the results kept for paging. The report gives per endpoint the client's p50/p99 latency and
the server's own time (``Server-Timing``), the errors with examples, memory at the end of the
warm-up (the first 10% of the run) and at the end, its slope after the warm-up (least squares,
MB per minute, with its standard error) and its maximum, and the DuckDB connections over time,
idle before and after the load. Prints one JSON object; the exit code is 1 when there were errors.

    python scripts/soak_web.py [--minutes 10] [--clients 16] [--rows 1000000]
        [--catalog bench-data/soak/fashion-1m.duckdb] [--seed 0] [--sample-every 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_web import MODELS  # noqa: E402
from bench_web import QUERIES as WEB_QUERIES  # noqa: E402

from engine.datasets.demodata import CLASSES as LABELS  # noqa: E402

# The load test's queries, and more the soak cycles through.
QUERIES = [
    *WEB_QUERIES,
    "leather boots",
    "a long evening dress",
    "sports shoes",
    "knitted sweater",
    "short sleeves",
    "something to wear on the beach",
    "footwear for running",
    "a jacket for the rain",
]
# Console queries: {label} is filled in at random; last_result is the refine the client ran last.
CONSOLE = [
    "SELECT label, count(*) AS n FROM last_result JOIN images USING (id) GROUP BY label ORDER BY n DESC",
    "SELECT id, label, score FROM result_images() WHERE label = '{label}' LIMIT 100",
    "SELECT r.id, r.rank, i.split FROM last_result r JOIN images i USING (id) WHERE i.split = 'test' "
    "ORDER BY r.rank LIMIT 100",
    "SELECT c.id, c.f03 FROM codes c WHERE in_last_result(c.id) AND c.f03 < 128 LIMIT 200",
    "SELECT split, label, count(*) AS n FROM images GROUP BY ALL ORDER BY ALL",
    "SELECT id, uri FROM images WHERE label = '{label}' ORDER BY id DESC LIMIT 60",
    "SELECT count(*) AS n, avg(f00) AS f00, avg(f31) AS f31 FROM codes",
]
ENDPOINTS = ("search", "thumb", "similar", "refine", "results", "console", "api_sql", "page", "health")
JITTER = 4
WARMUP_SHARE = 0.1


# -- the catalog -----------------------------------------------------------------------------
def catalog_ready(path: Path, rows: int) -> bool:
    """Whether ``path`` is a catalog of ``rows`` rows with a fresh index, an encoder and a head."""
    import engine

    if not path.is_file():
        return False
    try:
        with engine.Catalog.open(path, read_only=True) as cat:
            status = cat.index_status()
            return (
                status["rows"] == rows
                and not status["stale"]
                and bool(cat.setting("encoder"))
                and cat.setting("head") is not None
            )
    except engine.CatalogError:
        return False


def build_catalog(path: Path, rows: int, seed: int, demo: Path) -> dict:
    """Build the soak catalog at ``path``: a copy of the demo catalog plus ``rows - 70,000``
    jittered copies of its rows, indexed and compacted. Built under a temporary name and renamed,
    so an interrupted build is never taken for a finished one."""
    import engine

    t0 = time.perf_counter()
    if not demo.is_file():
        r = subprocess.run(
            [sys.executable, "-m", "engine", "demo", str(demo), "--no-serve", "--quiet"],
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise SystemExit(f"building the demo catalog failed:\n{r.stderr[-2000:]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".building")
    for p in (tmp, Path(f"{tmp}.wal"), path, Path(f"{path}.wal")):
        p.unlink(missing_ok=True)
    shutil.rmtree(path.with_name(path.name + ".d"), ignore_errors=True)  # thumbnails of the old rows
    shutil.copy(demo, tmp)
    with engine.Catalog.open(tmp) as cat:
        cat.store.con.execute("SET enable_progress_bar = false")  # stdout carries the report only
        real = cat.sql(
            "SELECT id, uri, file_size, file_mtime_ns, width, height, label, split FROM images "
            "JOIN codes USING (id) ORDER BY id"
        )
        ids = real.column("id").to_numpy()
        extra = rows - len(ids)
        if extra < 0:
            raise SystemExit(f"--rows {rows} is below the demo catalog's {len(ids)} rows")
        rng = np.random.default_rng(seed)
        src = rng.integers(0, len(ids), size=extra)
        noise = rng.integers(-JITTER, JITTER + 1, size=(extra, 32), dtype=np.int16)
        codes = np.clip(cat.codes(ids)[src].astype(np.int16) + noise, 0, 255).astype(np.uint8)
        # the file's recorded size and time too: the server shows only files that still match them
        meta = {
            c: real.column(c).take(src)
            for c in ("uri", "file_size", "file_mtime_ns", "width", "height", "label", "split")
        }
        meta["copy_of"] = ids[src]
        cat.add_codes(codes, metadata=meta)
        t1 = time.perf_counter()
        index = cat.build_index()
        cat.compact()
    tmp.rename(path)
    return {
        "demo": str(demo),
        "real_rows": int(len(ids)),
        "jittered_rows": int(extra),
        "jitter": JITTER,
        "time_add_s": round(t1 - t0, 1),
        "time_index_s": round(index["time_load_s"] + index["time_sort_s"] + index["time_write_s"], 1),
        "time_total_s": round(time.perf_counter() - t0, 1),
    }


# -- the server ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(catalog: Path, port: int, log: Path, timeout_s: float) -> subprocess.Popen:
    """``python -m engine serve CATALOG`` on ``port``, once ``/api/health`` answers."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", str(catalog), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc
        except OSError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise SystemExit(f"the server did not answer in {timeout_s:g} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from ``/proc/PID/task/*/children``."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def process_stats(pid: int) -> dict:
    """RSS (MB), threads, open file descriptors and CPU seconds of ``pid`` and its descendants."""
    rss_kb = threads = fds = 0
    ticks = 0
    for p in _process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss_kb += int(line.split()[1])
                    elif line.startswith("Threads:"):
                        threads += int(line.split()[1])
            fds += len(os.listdir(f"/proc/{p}/fd"))
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except OSError:
            continue
    return {
        "rss_mb": round(rss_kb / 1024, 1),
        "threads": threads,
        "fds": fds,
        "cpu_s": round(ticks / os.sysconf("SC_CLK_TCK"), 2),
    }


# -- the clients -----------------------------------------------------------------------------
class Http:
    """One keep-alive HTTP/1.1 connection, opened again after a failure."""

    def __init__(self, port: int, timeout_s: float = 120):
        self.port = port
        self.timeout_s = timeout_s
        self._conn: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, dict, bytes]:
        """``(status, lower-cased headers, body)``."""
        for attempt in (0, 1):
            reused = self._conn is not None
            if self._conn is None:
                self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout_s)
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                r = self._conn.getresponse()
                data = r.read()
                if r.getheader("connection", "").lower() == "close":
                    self.close()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if not reused or attempt:
                    raise
                self.reconnects += 1
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Recorder:
    """Latency (client and ``Server-Timing``) and errors per endpoint, shared by the clients."""

    def __init__(self):
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.server: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.error_samples: list[str] = []
        self.requests = 0

    def call(
        self,
        http: Http,
        name: str,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, dict, bytes] | None:
        """Send one request and record it; returns ``(status, headers, body)``, or None when it failed."""
        t0 = time.perf_counter()
        try:
            status, head, data = http.request(method, path, body, headers)
        except Exception as e:
            self._error(name, f"{method} {path[:120]}: {type(e).__name__}: {e}")
            return None
        ms = (time.perf_counter() - t0) * 1e3
        if status not in ok:
            self._error(name, f"{method} {path[:120]}: {status} {data[:200]!r}")
            return None
        m = re.search(r"dur=([\d.]+)", head.get("server-timing", ""))
        with self.lock:
            self.requests += 1
            self.latency[name].append(ms)
            if m:
                self.server[name].append(float(m.group(1)))
        return status, head, data

    def _error(self, name: str, message: str) -> None:
        with self.lock:
            self.requests += 1
            self.errors[name] += 1
            if len(self.error_samples) < 20:
                self.error_samples.append(f"{name}: {message}")


HX = {"HX-Request": "true"}
FORM = {**HX, "Content-Type": "application/x-www-form-urlencoded"}


def _ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'data-id="(\d+)"', html)]


def _token(html: str) -> str | None:
    m = re.search(r'data-token="([^"]+)"', html)
    return m.group(1) if m else None


def _total(html: str) -> int:
    m = re.search(r'id="result-count">([\d,]+)<', html)
    return int(m.group(1).replace(",", "")) if m else 0


class Client:
    """One simulated user: a keep-alive connection, a random generator and the ETags seen."""

    def __init__(self, port: int, catalog: str, page_size: int, rec: Recorder, seed: int):
        self.http = Http(port)
        self.catalog = catalog
        self.page_size = page_size
        self.rec = rec
        self.rng = np.random.default_rng(seed)
        self.etags: dict[int, str] = {}
        self.rounds = 0

    def get(
        self,
        name: str,
        path: str,
        params: dict | None = None,
        headers: dict | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> str | None:
        """GET ``path`` (HTMX headers unless ``headers`` are given); the body as text, or None."""
        if params:
            path += "?" + urllib.parse.urlencode(params)
        r = self.rec.call(self.http, name, "GET", path, headers=HX if headers is None else headers, ok=ok)
        return None if r is None else r[2].decode("utf-8", "replace")

    def post_form(self, name: str, path: str, form: dict) -> str | None:
        r = self.rec.call(self.http, name, "POST", path, urllib.parse.urlencode(form).encode(), FORM)
        return None if r is None else r[2].decode("utf-8", "replace")

    def thumbs(self, ids: list[int]) -> None:
        """Thumbnails of ``ids``; a quarter of those seen before are asked for with their ETag."""
        for image_id in ids:
            etag = self.etags.get(image_id)
            path = f"/thumb/{self.catalog}/{image_id}"
            if etag is not None and self.rng.random() < 0.25:
                self.rec.call(self.http, "thumb", "GET", path, headers={"If-None-Match": etag}, ok=(200, 304))
                continue
            r = self.rec.call(self.http, "thumb", "GET", path)
            if r is not None and "etag" in r[1] and len(self.etags) < 5000:
                self.etags[image_id] = r[1]["etag"]

    def refine(self, pos: list[int], neg: list[int]) -> str | None:
        model = MODELS[self.rounds % len(MODELS)]
        return self.post_form(
            "refine",
            "/refine",
            {
                "positives": ",".join(map(str, pos)),
                "negatives": ",".join(map(str, neg)),
                "model": model,
                "sampled_negatives": "500",
                "negative_weight": "1",
                "catalog": self.catalog,
                "seed": str(int(self.rng.integers(1000))),
            },
        )

    def one_round(self) -> None:
        """Search, thumbnails, maybe similar, refine (once or twice), load more, console."""
        rng = self.rng
        if self.rounds % 10 == 0:
            self.get("page", "/", {"catalog": self.catalog}, headers={})
            self.get("page", "/console", {"catalog": self.catalog}, headers={})
        q = QUERIES[int(rng.integers(len(QUERIES)))]
        html = self.get("search", "/search", {"q": q, "catalog": self.catalog})
        if html is None:
            return
        ids = _ids(html)
        self.thumbs(ids[:12])
        if ids and rng.random() < 0.3:
            similar = self.get(
                "similar", "/similar", {"id": ids[int(rng.integers(len(ids)))], "catalog": self.catalog}
            )
            if similar is not None:
                self.thumbs(_ids(similar)[:6])
        if len(ids) < 10:
            return
        pos, neg = ids[:8], ids[-2:]
        html = self.refine(pos, neg)
        if html is None:
            return
        found = _ids(html)
        self.thumbs(found[:12])
        if len(found) >= 10 and rng.random() < 0.5:
            pos = list(dict.fromkeys(pos + found[:8]))
            neg = list(dict.fromkeys(n for n in neg + found[-2:] if n not in pos))
            again = self.refine(pos, neg)
            if again is not None:
                html = again
                self.thumbs(_ids(html)[:12])
        token, total = _token(html), _total(html)
        if token and total > self.page_size:
            page = self.get("results", f"/results/{token}", {"offset": self.page_size})
            if page is not None:
                self.thumbs(_ids(page)[:6])
            if total > 2 * self.page_size:
                offset = int(rng.integers(2, (total - 1) // self.page_size + 1)) * self.page_size
                self.get("results", f"/results/{token}", {"offset": offset})
        label = LABELS[int(rng.integers(len(LABELS)))]
        sql = CONSOLE[int(rng.integers(len(CONSOLE)))].format(label=label)
        self.post_form("console", "/console", {"sql": sql, "catalog": self.catalog, "result": token or ""})
        sql = CONSOLE[int(rng.integers(len(CONSOLE)))].format(label=label)
        body = json.dumps({"sql": sql, "catalog": self.catalog, "result": token or ""}).encode()
        self.rec.call(self.http, "api_sql", "POST", "/api/sql", body, {"Content-Type": "application/json"})
        self.rounds += 1

    def run(self, stop_at: float) -> None:
        try:
            while time.monotonic() < stop_at:
                self.one_round()
        finally:
            self.http.close()


# -- sampling --------------------------------------------------------------------------------
def health(http: Http, rec: Recorder | None = None) -> dict | None:
    """``GET /api/health`` as a dict, or None when it failed."""
    if rec is None:
        try:
            status, _, data = http.request("GET", "/api/health")
        except OSError:
            return None
        return json.loads(data) if status == 200 else None
    r = rec.call(http, "health", "GET", "/api/health")
    return None if r is None else json.loads(r[2])


def sample(pid: int, http: Http, rec: Recorder | None, t: float) -> dict:
    """One sample of the server at ``t`` seconds after the load started."""
    h = health(http, rec)
    connections = None if h is None else sum(c["duckdb_connections"] for c in h["catalogs"].values())
    s = {
        "t_s": round(t, 1),
        **process_stats(pid),
        "duckdb_connections": connections,
        "results_cached": None if h is None else h["results_cached"],
        "result_ids_cached": None if h is None else h["result_ids_cached"],
    }
    if rec is not None:
        with rec.lock:
            s["requests"], s["errors"] = rec.requests, sum(rec.errors.values())
    return s


def _summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {
        "n": len(a),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
    }


def memory_report(samples: list[dict], seconds: float) -> dict:
    """RSS at the end of the warm-up (the first 10% of the run) and at the end, its slope after the
    warm-up (MB per minute, least squares, with its standard error) and its maximum under load."""
    warmup_s = WARMUP_SHARE * seconds
    after = [s for s in samples if s["t_s"] >= warmup_s] or samples[-1:]
    t = np.array([s["t_s"] for s in after]) / 60
    rss = np.array([s["rss_mb"] for s in after])
    slope = stderr = None
    if len(after) >= 4 and np.ptp(t) > 0:
        coef, cov = np.polyfit(t, rss, 1, cov=True)
        slope, stderr = round(float(coef[0]), 2), round(float(np.sqrt(cov[0, 0])), 2)
    return {
        "warmup_s": round(warmup_s, 1),
        "samples_after_warmup": len(after),
        "rss_start_mb": float(rss[0]),
        "rss_end_mb": float(rss[-1]),
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "slope_mb_per_min": slope,
        "slope_stderr_mb_per_min": stderr,
    }


def _wait_idle(pid: int, http: Http, idle: int | None, timeout_s: float = 30) -> dict:
    """A sample once the DuckDB connections are back to ``idle`` (or after ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = sample(pid, http, None, 0.0)
        if s["duckdb_connections"] == idle or time.monotonic() > deadline:
            return s
        time.sleep(0.5)


def run_soak(
    catalog: Path,
    *,
    seconds: float,
    clients: int,
    seed: int = 0,
    sample_every: float = 5.0,
    start_timeout_s: float = 900,
    page_size: int = 60,
) -> dict:
    """Serve ``catalog``, run ``clients`` clients for ``seconds`` while sampling, stop the server;
    returns the report (see the module docstring)."""
    catalog = Path(catalog).resolve()
    name = catalog.stem
    port = _free_port()
    log = catalog.with_name(catalog.name + ".serve.log")
    t = time.perf_counter()
    proc = start_server(catalog, port, log, start_timeout_s)
    startup_s = time.perf_counter() - t
    rec = Recorder()
    probe = Http(port, timeout_s=60)
    try:
        rows = sum(c["rows"] for c in (health(probe) or {"catalogs": {}})["catalogs"].values())
        idle = sample(proc.pid, probe, None, 0.0)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        stop_at = t0 + seconds
        users = [Client(port, name, page_size, rec, seed * 1000 + k) for k in range(clients)]
        threads = [threading.Thread(target=u.run, args=(stop_at,), daemon=True) for u in users]
        for th in threads:
            th.start()
        samples = []
        next_at = t0
        while any(th.is_alive() for th in threads):
            now = time.monotonic()
            if now >= next_at and now < stop_at:
                samples.append(sample(proc.pid, probe, rec, now - t0))
                next_at += sample_every
            time.sleep(min(0.2, max(0.0, next_at - time.monotonic())))
        for th in threads:
            th.join()
        wall = time.monotonic() - t0
        samples.append(sample(proc.pid, probe, rec, wall))
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        after = _wait_idle(proc.pid, probe, idle["duckdb_connections"])
    finally:
        probe.close()
        stop_server(proc)
    endpoints = {
        e: {**_summary(rec.latency[e]), "server": _summary(rec.server[e]), "errors": rec.errors[e]}
        for e in ENDPOINTS
    }
    load = [s["duckdb_connections"] for s in samples if s["duckdb_connections"] is not None]
    client_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    server_cpu = samples[-1]["cpu_s"] - idle["cpu_s"]
    return {
        "catalog": str(catalog),
        "rows": rows,
        "clients": clients,
        "seconds": seconds,
        "seed": seed,
        "sample_every_s": sample_every,
        "cores": os.cpu_count(),
        "server_startup_s": round(startup_s, 1),
        "wall_s": round(wall, 1),
        "rounds": sum(u.rounds for u in users),
        "requests": rec.requests,
        "requests_per_s": round(rec.requests / wall, 1),
        "errors": sum(rec.errors.values()),
        "error_samples": rec.error_samples,
        "reconnects": sum(u.http.reconnects for u in users),
        "endpoints": endpoints,
        "memory": {
            **memory_report(samples, seconds),
            "rss_idle_before_mb": idle["rss_mb"],
            "rss_idle_after_mb": after["rss_mb"],
        },
        "duckdb_connections": {
            "idle_before": idle["duckdb_connections"],
            "under_load_max": max(load, default=None),
            "under_load_mean": round(float(np.mean(load)), 2) if load else None,
            "idle_after": after["duckdb_connections"],
            "over_time": [[s["t_s"], s["duckdb_connections"]] for s in samples],
        },
        "fds": {
            "idle_before": idle["fds"],
            "under_load_max": max(s["fds"] for s in samples),
            "idle_after": after["fds"],
        },
        "threads": {
            "idle_before": idle["threads"],
            "under_load_max": max(s["threads"] for s in samples),
            "idle_after": after["threads"],
        },
        "results_cached": {
            "max": max((s["results_cached"] or 0) for s in samples),
            "result_ids_max": max((s["result_ids_cached"] or 0) for s in samples),
        },
        "cpu": {
            "server_s": round(server_cpu, 1),
            "client_s": round(client_cpu, 1),
            "client_share_of_machine": round(client_cpu / (wall * (os.cpu_count() or 1)), 3),
        },
        "samples": samples,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10, help="how long the clients run")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows of the soak catalog")
    ap.add_argument(
        "--catalog",
        type=Path,
        default=ROOT / "bench-data" / "soak" / "fashion-1m.duckdb",
        help="the soak catalog: reused when complete, else built here",
    )
    ap.add_argument(
        "--demo",
        type=Path,
        default=ROOT / "demo" / "fashion.duckdb",
        help="the demo catalog the soak catalog is made from (built when missing)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sample-every", type=float, default=5, help="seconds between samples of the server")
    ap.add_argument("--start-timeout", type=float, default=900, help="seconds the server may take to start")
    args = ap.parse_args(argv)
    build = None
    if not catalog_ready(args.catalog, args.rows):
        build = build_catalog(args.catalog, args.rows, args.seed, args.demo)
    report = run_soak(
        args.catalog,
        seconds=args.minutes * 60,
        clients=args.clients,
        seed=args.seed,
        sample_every=args.sample_every,
        start_timeout_s=args.start_timeout,
    )
    report = {"benchmark": "soak_web", "minutes": args.minutes, "catalog_built": build, **report}
    print(json.dumps(report, indent=1))
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
