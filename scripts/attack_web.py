"""Attack a served copy of the demo catalog as a hostile outsider would, and check that every
limit and refusal holds.

The demo catalog (``--demo``, built by ``clip-branches demo --no-serve`` when missing) is copied
into a new work folder (inside ``--work``, else in the temporary folder; removed at the end, on
failure, Ctrl-C and SIGTERM too, unless ``--keep``) with its side folder ``<name>.d`` linked
beside it, and served by ``python -m engine serve`` on a free port of 127.0.0.1 with the default
settings (no ``--set``); the attacks start once ``GET /api/health`` answers. Two more catalogs are served by the same server when the
attacks need them: ``crafted``, imported from an export of the copy whose ``images.parquet`` points
two rows at ``/etc/passwd`` (one keeping the row's recorded size and time, one with the file's
true ones), and ``sm#all&``, three noise PNGs taken in by ``clip-branches add``. The server runs
with ``TMPDIR`` in the work folder, so the console workers' temp folders (``cb-console-*``) are
its own. A sampler thread reads every 50 ms, from ``/proc``, the RSS of the server process alone
and of the server with its child processes (console queries run in worker processes), and the
bytes the workers' temp folders hold.

The attacks, by the name ``--only`` takes, and what each expects:

``console_limits``  ``damerau_levenshtein`` of two 25,000 (and 40,000) character strings and
                    ``SELECT range(0, 300000000)`` through ``POST /api/sql``: a 400 (memory) or
                    408 (time), within 1.5 times the console time limit, the server under 2 GB;
``byte_caps``       500 values of a million ``<`` through ``/api/sql`` and the console page
                    (``POST /console``, HTMX): a 200 well under 5 MB that says it was cut; 120
                    values of 20 million characters: no 5xx;
``upload_bomb``     a 687 kB PNG claiming 9400 x 9400 16-bit RGBA pixels to ``POST /search/image``
                    once, then several at once, and as ``image_base64`` to ``POST /api/search``:
                    a 400 naming the pixel limit, the server under 2 GB; a flat 8-bit RGB PNG of
                    5000 x 5000 (25 megapixels, the limit itself) once and several at once: a 200
                    (or a 503 when busy);
``concurrency``     45 endless console queries at once, each on its own connection, while
                    ``/api/health`` and ``/search?q=bag`` (and its twin ``/api/search``) are timed
                    in a loop: health and search each answer within 1 s, the console queries get
                    a 503 or end in a 408 within 1.5 times the limit; a fine-tune with 70,000
                    labels: a 400 (``max_labels``); one with 2,000 labels (the cap), 2,000 sampled
                    negatives, the ensemble: a 200; a console query whose client goes away after
                    0.5 s: the health's ``console_queries`` back to 0 within a second;
``file_read``       ``/image`` and ``/thumb`` of the rows pointing at ``/etc/passwd``, of an image
                    swapped for a link to a secret file after ingestion, and catalog names and
                    ids that climb out of their folders: a 403 or 404, and no byte of the files;
``console_files``   ``read_blob`` of the catalog, ``duckdb_settings()``, ``current_setting``,
                    ``pragma_database_list()``, ``duckdb_databases()``, ``read_csv('/etc/passwd')``
                    and the like: a 400 with neither the catalog's folder nor a file's content;
``cross_site``      ``Host: evil.example`` (400), a form post with a foreign ``Origin`` (403),
                    JSON sent as ``text/plain`` (415), the security headers on ``GET /``;
``import_verification`` (CLI) exports whose zone map, blocks or ids were tampered with, imported:
                    exit 1 with a message, no traceback, no catalog file left;
``non_utf8_names``  (CLI) ``clip-branches add`` of a folder holding ``caf\\xe9.png``: exit 0, the
                    two good images in, the bad name reported as skipped;
``repeated_columns`` ``SELECT 1 AS a, 2 AS a`` and a self-join's two ``id``: both values kept;
``corrupt_catalog`` (CLI) ``info`` and ``search`` on a catalog cut to half its size: exit 1 with a
                    message, no traceback;
``messages``        an image search without a file: a 400 saying to choose one; the catalog
                    ``sm#all&`` searched and its thumbnails fetched through the page's own links;
``disk_spill``      a console ``ORDER BY`` over 200 million rows, and over the cross join of the
                    codes with themselves: a 4xx within 1.5 times the limit, the workers' temp
                    folders under their limit (256 MB) all along.

Every record gives the HTTP status(es), the wall time, the peak RSS of the server alone and with
its children during the attack, the response bytes, ``held`` and the ``expect`` it was held to.
The CLI attacks run after the server has stopped; theirs give ``exit_code``, the command's own
peak RSS (with its children) and the start of its stderr. Every response of the
run is searched for the first line of ``/etc/passwd`` and the secret file's text. The JSON ends
with ``targets``: no 5xx but the 503 of a busy server, the server's peak RSS over the run against
2 GB, the worst console time against 1.5 times the limit, health and search under 1 s during the
flood, nothing foreign served. Prints one JSON document; the exit code is 0 unless the script
itself failed (``held`` says what held).

    python scripts/attack_web.py [--demo demo/fashion.duckdb] [--work DIR] [--quick]
        [--only NAME[,NAME]] [--out FILE] [--keep]

``--quick`` (for iterating) skips the 40,000-character ``damerau_levenshtein``, floods with 12
console queries instead of 45 and sends one image bomb at a time instead of four.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import inspect
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_web import _free_port  # noqa: E402
from soak_web import _process_tree  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RSS_LIMIT_MB = 2048
LATENCY_LIMIT_S = 1.0
TIME_LIMIT_SLACK = 1.5  # a stopped console query answers within this many times the time limit
RESPONSE_CAP_BYTES = 5_000_000
DISCONNECT_STOP_S = 1.0
SAMPLE_EVERY_S = 0.05
START_TIMEOUT_S = 600
CLI_TIMEOUT_S = 600
ENDLESS_SQL = "SELECT count(*) FROM range(1000000000000) a"
SECRET = b"ATTACK-WEB-SECRET-7c41e0: private notes nobody may read\n"
SMALL_NAME = "sm#all&"
CRAFTED_NAME = "crafted"
HX = {"HX-Request": "true"}
WEB_GROUPS = (
    "console_limits",
    "byte_caps",
    "upload_bomb",
    "concurrency",
    "file_read",
    "console_files",
    "cross_site",
    "repeated_columns",
    "messages",
    "disk_spill",
)
CLI_GROUPS = ("import_verification", "non_utf8_names", "corrupt_catalog")
GROUPS = WEB_GROUPS + CLI_GROUPS


# -- processes -------------------------------------------------------------------------------
def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree_rss_kb(pid: int) -> int:
    return sum(_rss_kb(p) for p in _process_tree(pid))


def _worker_pids(pid: int) -> set[int]:
    """The console worker processes among the descendants of ``pid``."""
    found = set()
    for p in _process_tree(pid)[1:]:
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if b"_worker_main" in f.read():
                    found.add(p)
        except OSError:
            continue
    return found


def _folder_bytes(root: Path, prefix: str) -> int:
    """Bytes allocated on disk by the files under the folders ``root/prefix*``."""
    total = 0
    todo = [e.path for e in _scandir(root) if e.name.startswith(prefix) and e.is_dir(follow_symlinks=False)]
    while todo:
        for e in _scandir(Path(todo.pop())):
            try:
                if e.is_dir(follow_symlinks=False):
                    todo.append(e.path)
                else:
                    total += e.stat(follow_symlinks=False).st_blocks * 512
            except OSError:
                continue
    return total


def _scandir(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return []


def start_server(catalogs: list[Path], port: int, log: Path, tmp: Path) -> subprocess.Popen:
    """``python -m engine serve CATALOG... --port PORT`` (default settings, ``TMPDIR=tmp``), once
    ``/api/health`` answers."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "serve", *map(str, catalogs), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp)},
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited:\n{log.read_text()[-3000:]}")
            if request(port, "GET", "/api/health", timeout=5).status == 200:
                return proc
            time.sleep(0.5)
        raise RuntimeError(f"the server did not answer in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
    except BaseException:
        stop_server(proc)
        raise


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class Peaks:
    """Peak RSS (MB) of the server alone and with its children, and peak bytes of the console
    workers' temp folders (MB), over a stretch of the run."""

    server_mb: float = 0.0
    tree_mb: float = 0.0
    temp_mb: float = 0.0

    def update(self, server_kb: int, tree_kb: int, temp_bytes: int) -> None:
        self.server_mb = max(self.server_mb, round(server_kb / 1024, 1))
        self.tree_mb = max(self.tree_mb, round(tree_kb / 1024, 1))
        self.temp_mb = max(self.temp_mb, round(temp_bytes / 1e6, 1))


class Sampler(threading.Thread):
    """Reads the server's RSS (alone and with its children) and the console workers' temp bytes
    every :data:`SAMPLE_EVERY_S`; keeps the peaks of the whole run, of the current window and
    since the last :meth:`take`."""

    def __init__(self, pid: int, tmp: Path):
        super().__init__(daemon=True)
        self.pid = pid
        self.tmp = tmp
        self.run_peaks = Peaks()
        self._window: Peaks | None = None
        self._since = Peaks()
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def sample(self) -> None:
        server, tree, temp = _rss_kb(self.pid), _tree_rss_kb(self.pid), _folder_bytes(self.tmp, "cb-console-")
        with self._lock:
            self.run_peaks.update(server, tree, temp)
            self._since.update(server, tree, temp)
            if self._window is not None:
                self._window.update(server, tree, temp)

    def run(self) -> None:
        while not self._halt.wait(SAMPLE_EVERY_S):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def take(self) -> Peaks:
        """The peaks since the last call."""
        self.sample()
        with self._lock:
            peaks, self._since = self._since, Peaks()
        return peaks

    @contextlib.contextmanager
    def window(self):
        """The peaks while the block runs."""
        peaks = Peaks()
        with self._lock:
            self._window = peaks
        self.sample()
        try:
            yield peaks
        finally:
            self.sample()
            with self._lock:
                self._window = None


def run_cli(args: list[str], cwd: Path, timeout_s: float = CLI_TIMEOUT_S) -> dict:
    """``python -m engine ARGS``: exit code, stdout, stderr, wall time and peak RSS (MB, with
    its children), sampled every :data:`SAMPLE_EVERY_S`."""
    out, err = cwd / "cli.stdout", cwd / "cli.stderr"
    t0 = time.perf_counter()
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", *args],
            stdout=fo,
            stderr=fe,
            cwd=ROOT,
            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        )
        peak_kb, deadline = 0, time.monotonic() + timeout_s
        try:
            while proc.poll() is None:
                peak_kb = max(peak_kb, _tree_rss_kb(proc.pid))
                if time.monotonic() > deadline:
                    proc.kill()
                time.sleep(SAMPLE_EVERY_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {
        "code": proc.returncode,
        "stdout": out.read_text(errors="replace"),
        "stderr": err.read_text(errors="replace"),
        "seconds": round(time.perf_counter() - t0, 2),
        "peak_mb": round(peak_kb / 1024, 1),
    }


# -- HTTP ------------------------------------------------------------------------------------
@dataclass
class Reply:
    """One answer: status (None when the request failed), lower-cased headers, body, seconds (of
    which ``connect_s`` to open the connection)."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    seconds: float
    error: str = ""
    connect_s: float = 0.0

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def detail(self) -> str:
        """The ``detail`` of a JSON error, else the body as text (at most 300 characters)."""
        try:
            value = json.loads(self.body)
        except ValueError:
            return re.sub(r"<[^>]*>", "", self.text)[:300] or self.error
        return str(value.get("detail", value) if isinstance(value, dict) else value)[:300]

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 120,
) -> Reply:
    """One request on its own connection; ``path`` is sent as given (no normalisation)."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    connect_s = 0.0
    try:
        conn.connect()
        connect_s = time.perf_counter() - t0
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Reply(
            r.status,
            {k.lower(): v for k, v in r.getheaders()},
            data,
            time.perf_counter() - t0,
            connect_s=connect_s,
        )
    except (OSError, http.client.HTTPException) as e:
        return Reply(None, {}, b"", time.perf_counter() - t0, f"{type(e).__name__}: {e}", connect_s)
    finally:
        conn.close()


def json_body(value) -> tuple[bytes, dict]:
    return json.dumps(value).encode(), {"Content-Type": "application/json"}


def form_body(fields: dict) -> tuple[bytes, dict]:
    return urllib.parse.urlencode(fields).encode(), {"Content-Type": "application/x-www-form-urlencoded"}


def multipart_body(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict]:
    """A ``multipart/form-data`` body of text ``fields`` and ``files`` (name: (file name, bytes))."""
    boundary = "attack" + secrets.token_hex(12)
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts += [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"; filename="{name}"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for k, (name, data) in files.items()
    ]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def flat_png(width: int, height: int, *, depth: int = 16, colour_type: int = 6) -> bytes:
    """A PNG of ``width`` x ``height`` zero pixels (16-bit RGBA by default), a few hundred kB
    however many pixels it claims."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour_type]
    row = b"\x00" * (1 + width * channels * depth // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _quoted(name: str) -> str:
    return urllib.parse.quote(name, safe="")


# -- the run ---------------------------------------------------------------------------------
@dataclass
class Run:
    """What the attacks share: the work folder, the server, the limits, the records so far and
    what every response is searched for."""

    work: Path
    quick: bool
    limits: dict
    demo_name: str
    ids: np.ndarray
    port: int | None = None
    sampler: Sampler | None = None
    server_pid: int | None = None
    catalogs: dict = field(default_factory=dict)
    records: list = field(default_factory=list)
    foreign: tuple[bytes, ...] = ()
    leaks: list = field(default_factory=list)
    errors_5xx: list = field(default_factory=list)
    busy_503: int = 0
    ratios: list = field(default_factory=list)
    flood: dict | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def http(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict | None = None,
        timeout: float = 120,
    ) -> Reply:
        """A request to the server; its answer is searched for foreign bytes and a 5xx is noted."""
        r = request(self.port, method, path, body, headers, timeout)
        with self._lock:
            for marker in self.foreign:
                if marker in r.body:
                    self.leaks.append(
                        {"request": f"{method} {path[:160]}", "marker": marker[:40].decode("latin-1")}
                    )
            if r.status is not None and r.status >= 500:
                if r.status == 503 and "retry-after" in r.headers:
                    self.busy_503 += 1
                else:
                    self.errors_5xx.append(f"{method} {path[:160]}: {r.status} {r.detail()[:200]}")
        return r

    def sql(self, text: str, *, console: bool = False, timeout: float = 120) -> Reply:
        """A console query through ``POST /api/sql`` (JSON), or the console page (``POST /console``, HTMX)."""
        fields = {"sql": text}
        if console:
            body, headers = form_body(fields)
            return self.http("POST", "/console", body, {**HX, **headers}, timeout)
        body, headers = json_body(fields)
        return self.http("POST", "/api/sql", body, headers, timeout)

    def window(self):
        return self.sampler.window() if self.sampler is not None else contextlib.nullcontext(Peaks())

    def time_ratio(self, name: str, seconds: float) -> float:
        """``seconds`` over the console time limit, recorded for the targets."""
        ratio = round(seconds / self.limits["sql_time_limit_s"], 3)
        with self._lock:
            self.ratios.append((name, ratio))
        return ratio

    def add(
        self,
        group: str,
        name: str,
        expect: str,
        held: bool,
        *,
        replies: list[Reply] | None = None,
        peaks: Peaks | None = None,
        seconds: float | None = None,
        **detail,
    ) -> dict:
        """Record one attack: its statuses, time, peak RSS and bytes from ``replies`` and ``peaks``
        (by default the peaks since the previous record)."""
        sampling = self.sampler is not None and self.sampler.is_alive()
        if sampling:
            since = self.sampler.take()
            peaks = since if peaks is None else peaks
        replies = replies or []
        statuses = [r.status for r in replies]
        record = {"group": group, "name": name, "held": bool(held), "expect": expect}
        if replies:
            record["status"] = statuses[0] if len(statuses) == 1 else statuses
            record["response_bytes"] = sum(len(r.body) for r in replies)
        if seconds is None and replies:
            seconds = max(r.seconds for r in replies)
        record["wall_s"] = None if seconds is None else round(seconds, 3)
        if sampling:
            record["server_peak_rss_mb"] = peaks.server_mb
            record["server_with_children_peak_rss_mb"] = peaks.tree_mb
        errors = [r.error for r in replies if r.error]
        if errors:
            detail["errors"] = errors[:5]
        refusals = list(
            dict.fromkeys(r.detail()[:200] for r in replies if r.status is not None and r.status >= 400)
        )
        if refusals:
            detail["detail"] = refusals[0] if len(replies) == 1 else refusals[:3]
        record.update(detail)
        self.records.append(record)
        return record

    def rss_ok(self, peaks: Peaks) -> bool:
        return peaks.server_mb < RSS_LIMIT_MB


def _stopped_in_time(run: Run, name: str, r: Reply) -> tuple[bool, float]:
    ratio = run.time_ratio(name, r.seconds)
    return r.status in (400, 408) and ratio <= TIME_LIMIT_SLACK, ratio


# -- 1. console memory and time --------------------------------------------------------------
def attack_console_limits(run: Run) -> None:
    queries = {
        "damerau_25000": "SELECT damerau_levenshtein(repeat('a', 25000), repeat('b', 25000))",
        "damerau_40000": "SELECT damerau_levenshtein(repeat('a', 40000), repeat('b', 40000))",
        "range_300M_list": "SELECT range(0, 300000000)",
    }
    if run.quick:
        del queries["damerau_40000"]
    limit = run.limits["sql_time_limit_s"]
    for name, text in queries.items():
        with run.window() as peaks:
            r = run.sql(text)
        stopped, ratio = _stopped_in_time(run, name, r)
        run.add(
            "console_limits",
            name,
            f"400 (memory) or 408 (time) within {TIME_LIMIT_SLACK}x {limit:g} s, "
            f"server RSS < {RSS_LIMIT_MB} MB",
            stopped and run.rss_ok(peaks),
            replies=[r],
            peaks=peaks,
            limit_ratio=ratio,
        )


# -- 2. byte caps ----------------------------------------------------------------------------
def attack_byte_caps(run: Run) -> None:
    wide = "SELECT repeat('<', 1000000) FROM range(500)"
    with run.window() as peaks:
        r = run.sql(wide)
    body = r.json() if r.status == 200 else None
    cut = isinstance(body, dict) and body.get("truncated") and body.get("cut") == "bytes"
    run.add(
        "byte_caps",
        "wide_values_api",
        f"200 under {RESPONSE_CAP_BYTES:,} bytes, cut: bytes",
        r.status == 200 and len(r.body) < RESPONSE_CAP_BYTES and bool(cut),
        replies=[r],
        peaks=peaks,
        rows=len(body["rows"]) if cut else None,
        cut=body.get("cut") if isinstance(body, dict) else None,
    )
    with run.window() as peaks:
        r = run.sql(wide, console=True)
    noted = "cut at about" in r.text
    run.add(
        "byte_caps",
        "wide_values_console_page",
        f"200 under {RESPONSE_CAP_BYTES:,} bytes, saying it was cut",
        r.status == 200 and len(r.body) < RESPONSE_CAP_BYTES and noted,
        replies=[r],
        peaks=peaks,
        says_cut=noted,
    )
    with run.window() as peaks:
        r = run.sql("SELECT repeat('x', 20000000) FROM range(120)")
    run.add(
        "byte_caps",
        "huge_values_api",
        "no 5xx",
        r.status is not None and r.status < 500,
        replies=[r],
        peaks=peaks,
    )


# -- 3. upload amplification -----------------------------------------------------------------
def _image_search(run: Run, png: bytes) -> Reply:
    body, headers = multipart_body({"k": "60"}, {"file": ("upload.png", png)})
    return run.http("POST", "/search/image", body, {**HX, **headers})


def _at_once(n: int, call) -> list:
    """``call()`` from ``n`` threads released together; the results in thread order."""
    out: list = [None] * n
    barrier = threading.Barrier(n)

    def one(k: int) -> None:
        barrier.wait()
        out[k] = call()

    threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def attack_upload_bomb(run: Run) -> None:
    from engine.limits import QUERY_MAX_PIXELS

    limit_text = f"{QUERY_MAX_PIXELS:,}"
    bomb = flat_png(9400, 9400)
    n = 1 if run.quick else 4
    expect = f"400 naming the limit of {limit_text} pixels, server RSS < {RSS_LIMIT_MB} MB"

    def refused(r: Reply) -> bool:
        return r.status == 400 and limit_text in r.text

    with run.window() as peaks:
        r = _image_search(run, bomb)
    run.add(
        "upload_bomb",
        "png_bomb_search_image",
        expect,
        refused(r) and run.rss_ok(peaks),
        replies=[r],
        peaks=peaks,
        upload_bytes=len(bomb),
    )
    with run.window() as peaks:
        replies = _at_once(n, lambda: _image_search(run, bomb))
    held = all(refused(r) or r.status == 503 for r in replies) and any(refused(r) for r in replies)
    run.add(
        "upload_bomb",
        f"png_bomb_search_image_x{n}",
        expect + " (503 when busy)",
        held and run.rss_ok(peaks),
        replies=replies,
        peaks=peaks,
    )
    body, headers = json_body({"image_base64": base64.b64encode(bomb).decode()})
    with run.window() as peaks:
        r = run.http("POST", "/api/search", body, headers)
    run.add(
        "upload_bomb",
        "png_bomb_api_search_base64",
        expect,
        refused(r) and run.rss_ok(peaks),
        replies=[r],
        peaks=peaks,
    )
    legit = flat_png(5000, 5000, depth=8, colour_type=2)
    with run.window() as peaks:
        r = _image_search(run, legit)
    run.add(
        "upload_bomb",
        "png_25_megapixels",
        "200",
        r.status == 200,
        replies=[r],
        peaks=peaks,
        upload_bytes=len(legit),
    )
    with run.window() as peaks:
        replies = _at_once(n, lambda: _image_search(run, legit))
    run.add(
        "upload_bomb",
        f"png_25_megapixels_x{n}",
        "200, or 503 when busy",
        all(r.status in (200, 503) for r in replies) and 200 in [r.status for r in replies],
        replies=replies,
        peaks=peaks,
        times_s=[round(r.seconds, 2) for r in replies],
    )


# -- 4. concurrency --------------------------------------------------------------------------
def _latencies(timed: list[tuple[float, Reply]]) -> dict:
    """Count, median and max latency of ``(start, reply)`` pairs, and the slow ones as ``[start,
    seconds, seconds to connect]`` (start in seconds since the flood began)."""
    times = [r.seconds for _, r in timed]
    return {
        "n": len(times),
        "median_s": round(statistics.median(times), 3) if times else None,
        "max_s": round(max(times), 3) if times else None,
        "statuses": dict(Counter(str(r.status) for _, r in timed)),
        "slow": [
            [round(t, 2), round(r.seconds, 3), round(r.connect_s, 3)]
            for t, r in timed
            if r.seconds >= LATENCY_LIMIT_S
        ][:20],
    }


def attack_concurrency(run: Run) -> None:
    limit = run.limits["sql_time_limit_s"]
    n = 12 if run.quick else 45
    flood: list[Reply | None] = [None] * n
    probes: dict[str, list[tuple[float, Reply]]] = {"health": [], "search": []}
    barrier = threading.Barrier(n + 1)
    done = threading.Event()

    def console(k: int) -> None:
        barrier.wait()
        flood[k] = run.sql(ENDLESS_SQL)

    def probe(name: str, calls: list[tuple[str, dict]]) -> None:
        k = 0
        while not done.is_set():
            path, headers = calls[k % len(calls)]
            start = time.perf_counter() - t0
            probes[name].append((start, run.http("GET", path, headers=headers, timeout=60)))
            k += 1
            time.sleep(0.05)

    workers = [threading.Thread(target=console, args=(k,), daemon=True) for k in range(n)]
    searches = [("/search?q=bag", HX), ("/api/search?q=bag", {})]
    watchers = [
        threading.Thread(target=probe, args=("health", [("/api/health", {})]), daemon=True),
        threading.Thread(target=probe, args=("search", searches), daemon=True),
    ]
    with run.window() as peaks:
        for t in workers:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in watchers:
            t.start()
        for t in workers:
            t.join()
        wall = time.perf_counter() - t0
        done.set()
        for t in watchers:
            t.join()
    ratios = [run.time_ratio(f"flood_{k}", r.seconds) for k, r in enumerate(flood)]
    held = all(r.status in (503, 408) for r in flood) and max(ratios) <= TIME_LIMIT_SLACK
    run.add(
        "concurrency",
        f"console_flood_x{n}",
        f"each a 503 or a 408 within {TIME_LIMIT_SLACK}x {limit:g} s",
        held,
        replies=flood,
        peaks=peaks,
        seconds=wall,
        statuses=dict(Counter(str(r.status) for r in flood)),
        worst_ratio=max(ratios),
        times_s=sorted([round(r.seconds, 2), r.status] for r in flood),
    )
    health, search = _latencies(probes["health"]), _latencies(probes["search"])
    for name, stats, replies in (("health", health, probes["health"]), ("search", search, probes["search"])):
        ok = bool(replies) and all(r.status == 200 for _, r in replies) and stats["max_s"] < LATENCY_LIMIT_S
        run.add(
            "concurrency",
            f"{name}_during_flood",
            f"every answer a 200 within {LATENCY_LIMIT_S:g} s",
            ok,
            peaks=peaks,
            seconds=wall,
            latency=stats,
        )
    run.flood = {"health": health, "search": search}

    rng = np.random.default_rng(0)
    ids = run.ids
    many = rng.choice(ids, 70_000, replace=len(ids) < 70_000).tolist()
    body, headers = json_body({"positives": many[:35_000], "negatives": many[35_000:]})
    cap = run.limits["max_labels"]
    with run.window() as peaks:
        r = run.http("POST", "/api/refine", body, headers)
    run.add(
        "concurrency",
        "refine_70000_labels",
        f"400 naming the cap of {cap} labels",
        r.status == 400 and str(cap) in r.detail(),
        replies=[r],
        peaks=peaks,
        request_bytes=len(body),
    )
    half = min(cap // 2, len(ids) // 2)
    chosen = rng.choice(ids, 2 * half, replace=False).tolist()
    body, headers = json_body(
        {
            "positives": chosen[:half],
            "negatives": chosen[half:],
            "model": "ensemble",
            "sampled_negatives": 2000,
        }
    )
    with run.window() as peaks:
        r = run.http("POST", "/api/refine?limit=10", body, headers)
    answer = (r.json() or {}) if r.status == 200 else {}
    engine_ms = answer.get("stats", {}).get("time_total_ms")
    run.add(
        "concurrency",
        f"refine_{2 * half}_labels",
        "200",
        r.status == 200,
        replies=[r],
        peaks=peaks,
        engine_ms=None if engine_ms is None else round(engine_ms, 1),
        results=answer.get("results"),
    )
    _disconnect(run)


def _console_queries(run: Run) -> int | None:
    r = run.http("GET", f"/api/health?catalog={_quoted(run.demo_name)}", timeout=10)
    try:
        return int(r.json()["catalogs"][run.demo_name]["console_queries"])
    except (TypeError, KeyError, ValueError):
        return None


def _disconnect(run: Run) -> None:
    """An endless console query whose client closes the connection after 0.5 s."""
    body = json.dumps({"sql": ENDLESS_SQL}).encode()
    head = (
        f"POST /api/sql HTTP/1.1\r\nHost: 127.0.0.1:{run.port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    with run.window() as peaks:
        workers_before = _worker_pids(run.server_pid)
        s = socket.create_connection(("127.0.0.1", run.port))
        s.sendall(head + body)
        time.sleep(0.5)
        running = _console_queries(run)
        s.close()
        t0 = time.perf_counter()
        stopped_after = None
        while time.perf_counter() - t0 < 15:
            if _console_queries(run) == 0:
                stopped_after = time.perf_counter() - t0
                break
            time.sleep(SAMPLE_EVERY_S)
        killed = len(workers_before - _worker_pids(run.server_pid))
    run.add(
        "concurrency",
        "console_client_gone",
        f"console_queries back to 0 within {DISCONNECT_STOP_S:g} s of the disconnect",
        bool(running) and stopped_after is not None and stopped_after <= DISCONNECT_STOP_S,
        peaks=peaks,
        seconds=stopped_after,
        running_before_close=running,
        workers_killed=killed,
        stopped_after_s=None if stopped_after is None else round(stopped_after, 3),
    )


# -- 5. file read ----------------------------------------------------------------------------
def attack_file_read(run: Run) -> None:
    crafted = run.catalogs.get("crafted")
    if crafted:
        for row in ("passwd_recorded_stat", "passwd_true_stat"):
            for kind in ("image", "thumb"):
                with run.window() as peaks:
                    r = run.http("GET", f"/{kind}/{CRAFTED_NAME}/{crafted[row]}")
                run.add(
                    "file_read",
                    f"{kind}_{row}",
                    "403 or 404, no byte of /etc/passwd",
                    r.status in (403, 404) and not _leaked(run, r),
                    replies=[r],
                    peaks=peaks,
                )
    small = run.catalogs.get("small")
    if small:
        target, secret = small["swap"], small["secret"]
        base = f"/{{}}/{_quoted(SMALL_NAME)}/{small['swap_id']}"
        before = [run.http("GET", base.format(kind)).status for kind in ("image", "thumb")]
        aside = target.with_name("ingested.bak")
        target.rename(aside)
        target.symlink_to(secret)
        for kind in ("image", "thumb"):
            with run.window() as peaks:
                r = run.http("GET", base.format(kind))
            run.add(
                "file_read",
                f"{kind}_swapped_for_link",
                "403, no byte of the secret file",
                r.status == 403 and SECRET not in r.body,
                replies=[r],
                peaks=peaks,
                status_before_swap=before,
            )
    name = _quoted(run.demo_name)
    paths = [
        "/image/..%2F..%2F..%2Fetc%2Fpasswd/0",
        "/thumb/..%2F..%2F..%2Fetc%2Fpasswd/0",
        "/image/../../../etc/passwd",
        "/image/%2e%2e/0",
        f"/image/{name}/..%2F..%2Fetc%2Fpasswd",
        f"/thumb/{name}/0%2F..%2F..%2F..%2Fetc%2Fpasswd",
        f"/image/{name}/-1",
        f"/image/{name}/99999999999999999999999",
        "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/static/../../../../etc/passwd",
        "/image/%2Fetc%2Fpasswd/0",
    ]
    with run.window() as peaks:
        replies = [run.http("GET", p) for p in paths]
    run.add(
        "file_read",
        "path_traversal",
        "a 4xx each, no byte of /etc/passwd",
        all(r.status is not None and 400 <= r.status < 500 and not _leaked(run, r) for r in replies),
        replies=replies,
        peaks=peaks,
        paths=paths,
    )


def _leaked(run: Run, r: Reply) -> bool:
    return any(marker in r.body for marker in run.foreign)


# -- 6. console file and settings access -----------------------------------------------------
def attack_console_files(run: Run) -> None:
    demo = run.catalogs["demo"]
    folder = str(run.work)
    queries = {
        "read_blob_catalog": f"SELECT * FROM read_blob('{demo}')",
        "duckdb_settings": "SELECT * FROM duckdb_settings()",
        "current_setting_memory_limit": "SELECT current_setting('memory_limit')",
        "pragma_database_list": "SELECT * FROM pragma_database_list()",
        "duckdb_databases": "SELECT * FROM duckdb_databases()",
        "read_csv_passwd": "SELECT * FROM read_csv('/etc/passwd')",
        "read_text_passwd": "SELECT * FROM read_text('/etc/passwd')",
        "from_path_passwd": "SELECT * FROM '/etc/passwd'",
        "getenv_home": "SELECT getenv('HOME')",
        "attach_catalog": f"ATTACH '{demo}' AS other",
    }
    for name, text in queries.items():
        with run.window() as peaks:
            r = run.sql(text)
        answer = r.body.replace(text.encode(), b"")  # an error may quote the query
        clean = folder.encode() not in answer and not _leaked(run, r)
        allowed_if_clean = name == "duckdb_databases" and r.status == 200
        run.add(
            "console_files",
            name,
            "400 (duckdb_databases: or 200) with no path or file content",
            (r.status == 400 or allowed_if_clean) and clean,
            replies=[r],
            peaks=peaks,
            path_in_answer=folder.encode() in answer,
        )


# -- 7. cross-site ---------------------------------------------------------------------------
def attack_cross_site(run: Run) -> None:
    r = run.http("GET", "/api/health", headers={"Host": "evil.example"})
    run.add("cross_site", "foreign_host", "400", r.status == 400, replies=[r])
    body, headers = form_body({"positives": ",".join(map(str, run.ids[:3].tolist()))})
    r = run.http("POST", "/refine", body, {**headers, **HX, "Origin": "http://evil.example"})
    run.add("cross_site", "cross_origin_refine", "403", r.status == 403, replies=[r])
    r = run.http("POST", "/api/sql", b'{"sql": "SELECT 42 AS n"}', {"Content-Type": "text/plain"})
    run.add("cross_site", "json_as_text_plain", "415", r.status == 415, replies=[r])
    r = run.http("GET", "/")
    csp, sniff = r.headers.get("content-security-policy", ""), r.headers.get("x-content-type-options", "")
    run.add(
        "cross_site",
        "security_headers",
        "200 with Content-Security-Policy and X-Content-Type-Options: nosniff",
        r.status == 200 and "default-src 'self'" in csp and sniff == "nosniff",
        replies=[r],
        content_security_policy=csp,
        x_content_type_options=sniff,
        x_frame_options=r.headers.get("x-frame-options"),
    )


# -- 10. repeated column names ---------------------------------------------------------------
def attack_repeated_columns(run: Run) -> None:
    r = run.sql("SELECT 1 AS a, 2 AS a")
    body = r.json() or {}
    columns, rows = body.get("columns", []), body.get("rows", [])
    kept = r.status == 200 and len(set(columns)) == 2 and rows and sorted(rows[0].values()) == [1, 2]
    run.add(
        "repeated_columns",
        "two_a",
        "200, the values 1 and 2 in distinct columns",
        kept,
        replies=[r],
        columns=columns,
        rows=rows,
    )
    r = run.sql("SELECT a.id, b.id FROM images a JOIN images b ON b.id = a.id + 1 LIMIT 3")
    body = r.json() or {}
    columns, rows = body.get("columns", []), body.get("rows", [])
    pairs = [[row[c] for c in columns] for row in rows] if len(set(columns)) == 2 else []
    kept = r.status == 200 and len(pairs) == 3 and all(b == a + 1 for a, b in pairs)
    run.add(
        "repeated_columns",
        "self_join_ids",
        "200, both ids of each row in distinct columns",
        kept,
        replies=[r],
        columns=columns,
        rows=rows,
    )


# -- 12. messages ----------------------------------------------------------------------------
def attack_messages(run: Run) -> None:
    body, headers = multipart_body({"k": "60"}, {})
    r = run.http("POST", "/search/image", body, {**HX, **headers})
    run.add(
        "messages",
        "image_search_without_file",
        "400 saying to choose an image file",
        r.status == 400 and "choose an image file" in r.text,
        replies=[r],
    )
    r = run.http("GET", "/api/search?q=bag&catalog=" + _quoted("no#such&name"))
    run.add(
        "messages",
        "unknown_catalog_with_hash_and_ampersand",
        "404 naming the catalog as given",
        r.status == 404 and "no#such&name" in r.detail(),
        replies=[r],
    )
    if "small" not in run.catalogs:
        return
    page = run.http("GET", "/search?q=bag&catalog=" + _quoted(SMALL_NAME), headers=HX)
    prefix = f"/thumb/{_quoted(SMALL_NAME)}/"
    small = run.catalogs["small"]
    unswapped = [i for i in small["ids"] if i != small["swap_id"]]  # file_read may have swapped that file
    links = [f"{prefix}{i}" for i in unswapped if f'"{prefix}{i}"' in page.text]
    thumbs = [run.http("GET", link) for link in links[:2]]
    run.add(
        "messages",
        "catalog_named_with_hash_and_ampersand",
        "200 search with thumbnail links that work",
        page.status == 200 and bool(thumbs) and all(t.status == 200 for t in thumbs),
        replies=[page, *thumbs],
        links=links,
    )


# -- 13. disk spill --------------------------------------------------------------------------
def attack_disk_spill(run: Run) -> None:
    from engine.sandbox import QueryPool, parse_bytes

    temp_limit = inspect.signature(QueryPool).parameters["temp_limit"].default
    limit_mb = parse_bytes(temp_limit) / 1e6
    for name, text in (
        ("order_by_200M", "SELECT * FROM range(200000000) t(x) ORDER BY x DESC"),
        (
            "order_by_codes_cross_join",
            "SELECT a.id, b.id AS other, a.f01::INTEGER + b.f00::INTEGER "
            "AS s FROM codes a, codes b ORDER BY s DESC, a.id, b.id",
        ),
    ):
        with run.window() as peaks:
            r = run.sql(text)
        stopped, ratio = _stopped_in_time(run, name, r)
        run.add(
            "disk_spill",
            name,
            f"400 or 408 within {TIME_LIMIT_SLACK}x the time limit, temp folders at most {temp_limit}",
            stopped and peaks.temp_mb <= limit_mb,
            replies=[r],
            peaks=peaks,
            temp_peak_mb=peaks.temp_mb,
            temp_limit_mb=limit_mb,
            limit_ratio=ratio,
        )


# -- 8, 9, 11. the CLI -----------------------------------------------------------------------
def _cli_record(run: Run, group: str, name: str, expect: str, held: bool, res: dict, **detail) -> None:
    run.add(
        group,
        name,
        expect,
        held,
        seconds=res["seconds"],
        exit_code=res["code"],
        cli_peak_rss_mb=res["peak_mb"],
        stderr=res["stderr"].strip()[:300],
        traceback="Traceback" in res["stderr"],
        **detail,
    )


def _failed_cleanly(res: dict) -> bool:
    return res["code"] == 1 and "error" in res["stderr"] and "Traceback" not in res["stderr"]


def attack_import_verification(run: Run) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    export = run.catalogs["export"]

    def tampered(name: str, edit) -> None:
        folder = run.work / f"tamper-{name}"
        shutil.copytree(export, folder)
        edit(folder)
        target = run.work / f"tamper-{name}.duckdb"
        res = run_cli(["import", str(folder), str(target), "--quiet"], run.work)
        left = [p.name for p in (target, Path(f"{target}.wal")) if p.exists()]
        _cli_record(
            run,
            "import_verification",
            name,
            "exit 1 with a message, no traceback, no catalog file left",
            _failed_cleanly(res) and not left,
            res,
            files_left=left,
        )

    def zone_map(folder: Path) -> None:
        table = pq.read_table(folder / "blocks.parquet")
        rows = table.to_pylist()
        next(r for r in rows if r["block_id"] == 0)["min_f00"] = 200
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), folder / "blocks.parquet")

    def dropped_block(folder: Path) -> None:
        table = pq.read_table(folder / "blocks.parquet")
        keep = [r for r in table.to_pylist() if r["block_id"] != 1]
        pq.write_table(pa.Table.from_pylist(keep, schema=table.schema), folder / "blocks.parquet")

    def duplicated_id(folder: Path) -> None:
        table = pq.read_table(folder / "images.parquet")
        pq.write_table(pa.concat_tables([table, table.slice(5, 1)]), folder / "images.parquet")

    tampered("block0_min_f00_raised", zone_map)
    tampered("block_dropped", dropped_block)
    tampered("image_id_duplicated", duplicated_id)


def attack_non_utf8_names(run: Run) -> None:
    folder = run.work / "names"
    _noise_pngs(folder, 2)
    bad = os.fsencode(folder) + b"/caf\xe9.png"
    with open(bad, "wb") as f:
        f.write((folder / "p0.png").read_bytes())
    target = run.work / "names.duckdb"
    res = run_cli(["add", str(target), str(folder), "--quiet", "--json"], run.work)
    try:
        report = json.loads(res["stdout"])["ingest"]
    except (ValueError, KeyError, TypeError):
        report = {}
    skipped = report.get("skipped_files", [])
    held = res["code"] == 0 and report.get("added") == 2 and len(skipped) == 1 and "caf" in skipped[0][0]
    _cli_record(
        run,
        "non_utf8_names",
        "add_folder_with_latin1_name",
        "exit 0, 2 images added, caf\\xe9.png skipped",
        held,
        res,
        added=report.get("added"),
        skipped_files=skipped,
    )


def attack_corrupt_catalog(run: Run) -> None:
    demo = run.catalogs["demo"]
    cut = run.work / "cut" / demo.name
    cut.parent.mkdir()
    with open(demo, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(demo.stat().st_size // 2))
    side = demo.with_name(demo.name + ".d")
    if side.exists():
        Path(f"{cut}.d").symlink_to(side.resolve())
    for name, args in (("info", ["info", str(cut)]), ("search", ["search", str(cut), "bag"])):
        res = run_cli(args, run.work)
        _cli_record(
            run,
            "corrupt_catalog",
            f"{name}_half_file",
            "exit 1 with a message, no traceback",
            _failed_cleanly(res),
            res,
        )


ATTACKS = {
    "console_limits": attack_console_limits,
    "byte_caps": attack_byte_caps,
    "upload_bomb": attack_upload_bomb,
    "concurrency": attack_concurrency,
    "file_read": attack_file_read,
    "console_files": attack_console_files,
    "cross_site": attack_cross_site,
    "repeated_columns": attack_repeated_columns,
    "messages": attack_messages,
    "disk_spill": attack_disk_spill,
    "import_verification": attack_import_verification,
    "non_utf8_names": attack_non_utf8_names,
    "corrupt_catalog": attack_corrupt_catalog,
}


# -- set-up ----------------------------------------------------------------------------------
def _noise_pngs(folder: Path, n: int) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    paths = []
    for i in range(n):
        path = folder / f"p{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(48, 48, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _cli_or_fail(args: list[str], cwd: Path) -> dict:
    res = run_cli(args, cwd)
    if res["code"] != 0:
        raise RuntimeError(
            f"python -m engine {' '.join(args)} failed ({res['code']}):\n{res['stderr'][-2000:]}"
        )
    return res


def prepare(run: Run, demo: Path, groups: list[str]) -> dict:
    """Copy the demo catalog and build what ``groups`` need; returns their set-up times."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import engine

    times = {}
    t0 = time.perf_counter()
    copy = run.work / "demo" / demo.name
    copy.parent.mkdir()
    shutil.copy(demo, copy)
    side = demo.with_name(demo.name + ".d")
    if side.exists():
        Path(f"{copy}.d").symlink_to(side.resolve())
    run.catalogs["demo"] = copy
    with engine.Catalog.open(copy, read_only=True) as cat:
        run.ids = cat.sql("SELECT id FROM images ORDER BY id").column("id").to_numpy()
    times["copy_s"] = round(time.perf_counter() - t0, 1)
    if {"file_read", "import_verification"} & set(groups):
        t0 = time.perf_counter()
        export = run.work / "export"
        _cli_or_fail(["export", str(copy), str(export), "--quiet"], run.work)
        run.catalogs["export"] = export
        times["export_s"] = round(time.perf_counter() - t0, 1)
    if "file_read" in groups:
        t0 = time.perf_counter()
        folder = run.work / "crafted-export"
        shutil.copytree(run.catalogs["export"], folder)
        table = pq.read_table(folder / "images.parquet")
        rows = table.to_pylist()
        passwd = os.stat("/etc/passwd")
        rows[0]["uri"] = "/etc/passwd"
        rows[1].update(uri="/etc/passwd", file_size=passwd.st_size, file_mtime_ns=passwd.st_mtime_ns)
        pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), folder / "images.parquet")
        crafted = run.work / "crafted" / f"{CRAFTED_NAME}.duckdb"
        crafted.parent.mkdir()
        _cli_or_fail(["import", str(folder), str(crafted), "--quiet"], run.work)
        run.catalogs["crafted"] = {
            "path": crafted,
            "passwd_recorded_stat": rows[0]["id"],
            "passwd_true_stat": rows[1]["id"],
        }
        times["crafted_s"] = round(time.perf_counter() - t0, 1)
    if {"file_read", "messages"} & set(groups):
        t0 = time.perf_counter()
        folder = run.work / "small-images"
        _noise_pngs(folder, 3)
        secret = run.work / "secret.txt"
        secret.write_bytes(SECRET * 20)
        small = run.work / "small" / f"{SMALL_NAME}.duckdb"
        small.parent.mkdir()
        _cli_or_fail(["add", str(small), str(folder), "--quiet"], run.work)
        with engine.Catalog.open(small, read_only=True) as cat:
            rows = cat.sql("SELECT id, uri FROM images ORDER BY id").to_pylist()
        swap = next(r for r in rows if r["uri"].endswith("p1.png"))
        run.catalogs["small"] = {
            "path": small,
            "ids": [r["id"] for r in rows],
            "swap": Path(swap["uri"]),
            "swap_id": swap["id"],
            "secret": secret,
        }
        times["small_s"] = round(time.perf_counter() - t0, 1)
    return times


# -- the report ------------------------------------------------------------------------------
def targets(run: Run) -> dict:
    peaks = run.sampler.run_peaks if run.sampler is not None else None
    ratios = run.ratios
    worst = max(ratios, key=lambda x: x[1]) if ratios else None
    flood = run.flood
    return {
        "no_5xx": not run.errors_5xx if run.port is not None else None,
        "responses_5xx": run.errors_5xx[:20],
        "busy_503": run.busy_503,
        "server_peak_rss_mb": None
        if peaks is None
        else {
            "server": peaks.server_mb,
            "with_children": peaks.tree_mb,
            "limit_mb": RSS_LIMIT_MB,
            "server_under_limit": peaks.server_mb < RSS_LIMIT_MB,
            "with_children_under_limit": peaks.tree_mb < RSS_LIMIT_MB,
        },
        "console_queries_within_1_5x_limit": None if worst is None else worst[1] <= TIME_LIMIT_SLACK,
        "console_worst_ratio": None
        if worst is None
        else {"query": worst[0], "ratio": worst[1], "queries": len(ratios)},
        "health_and_search_under_1s_during_flood": None
        if flood is None
        else (
            flood["health"]["max_s"] is not None
            and flood["search"]["max_s"] is not None
            and max(flood["health"]["max_s"], flood["search"]["max_s"]) < LATENCY_LIMIT_S
        ),
        "flood_max_latency_s": None
        if flood is None
        else {"health": flood["health"]["max_s"], "search": flood["search"]["max_s"]},
        "nothing_foreign_served": not run.leaks if run.port is not None else None,
        "foreign_served": run.leaks[:20],
    }


def attack(demo: Path, work_parent: Path | None, groups: list[str], quick: bool, keep: bool = False) -> dict:
    """Run ``groups`` against a served copy of ``demo``; returns the report."""
    from dataclasses import fields as dataclass_fields

    from web.settings import Settings

    if not demo.is_file():
        _cli_or_fail(["demo", str(demo), "--no-serve", "--quiet"], ROOT)
    demo = demo.resolve()
    limits = {f.name: getattr(Settings(), f.name) for f in dataclass_fields(Settings)}
    work = Path(tempfile.mkdtemp(prefix="attack-web-", dir=work_parent))
    run = Run(work=work, quick=quick, limits=limits, demo_name=demo.stem, ids=np.zeros(0, np.int64))
    with open("/etc/passwd", "rb") as f:
        run.foreign = (f.readline().rstrip(b"\n"), SECRET.rstrip(b"\n"))
    report = {
        "script": "attack_web",
        "demo": str(demo),
        "quick": quick,
        "groups": groups,
        "work": str(work),
        "settings": limits,
    }
    t_start = time.perf_counter()
    try:
        report["setup"] = prepare(run, demo, groups)
        report["rows"] = int(len(run.ids))
        web = [g for g in groups if g in WEB_GROUPS]
        if web:
            report["server"] = serve_and_attack(run, web)
        for group in (g for g in groups if g in CLI_GROUPS):
            ATTACKS[group](run)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    report["attacks"] = run.records
    report["not_held"] = [r["name"] for r in run.records if not r["held"]]
    report["targets"] = targets(run)
    return report


def serve_and_attack(run: Run, groups: list[str]) -> dict:
    """Serve the catalogs prepared, run the web attacks ``groups`` while sampling, stop the server;
    returns the server's start-up time, idle RSS and, when it logged a traceback, its log's end."""
    served = [run.catalogs["demo"]] + [
        run.catalogs[k]["path"] for k in ("crafted", "small") if k in run.catalogs
    ]
    tmp = run.work / "tmp"
    tmp.mkdir()
    log = run.work / "serve.log"
    run.port = _free_port()
    t0 = time.perf_counter()
    proc = start_server(served, run.port, log, tmp)
    info = {"catalogs": [str(p) for p in served], "startup_s": round(time.perf_counter() - t0, 1)}
    try:
        run.server_pid = proc.pid
        run.sampler = Sampler(proc.pid, tmp)
        run.sampler.sample()
        info.update(
            idle_rss_mb=run.sampler.run_peaks.server_mb,
            idle_with_children_rss_mb=run.sampler.run_peaks.tree_mb,
        )
        run.sampler.start()
        for group in groups:
            run.sampler.take()
            ATTACKS[group](run)
    finally:
        if run.sampler is not None and run.sampler.is_alive():
            run.sampler.stop()
        stop_server(proc)
    text = log.read_text(errors="replace")
    info["log_has_traceback"] = "Traceback" in text
    if info["log_has_traceback"]:
        info["log_tail"] = text[-3000:]
    return info


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--demo",
        type=Path,
        default=ROOT / "demo" / "fashion.duckdb",
        help="the demo catalog (built when missing)",
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder to work in (a new subfolder of it, removed at the end; default: a temp folder)",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="no 40,000-character damerau_levenshtein, 12 flood queries, one image bomb at a time",
    )
    ap.add_argument(
        "--only", default=None, metavar="NAME[,NAME]", help=f"attacks to run, of: {', '.join(GROUPS)}"
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (for debugging)")
    args = ap.parse_args(argv)
    groups = list(GROUPS)
    if args.only:
        groups = [g.strip() for g in args.only.split(",") if g.strip()]
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            ap.error(f"unknown attack {', '.join(unknown)}; choose from {', '.join(GROUPS)}")
        groups = [g for g in GROUPS if g in groups]
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        report = attack(args.demo, args.work, groups, args.quick, args.keep)
    finally:
        signal.signal(signal.SIGTERM, previous)
    text = json.dumps(report, indent=1, default=str)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
