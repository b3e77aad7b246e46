"""Fault injection with SIGKILL: kill the real CLI at random points of ingest, train-head, index
and export, check what the kill left and that running the command again finishes the work;
prints one JSON document and exits 1 if any check failed.

Data: Fashion-MNIST images written by ``engine.datasets.demodata`` (``--images``, half from each split,
with their ``labels.csv`` manifest) and a folder of six noise images (three large enough to get
a thumbnail) and four corrupt files (empty, text, random bytes, a truncated PNG); the encoder is
the bundled ``demo:fashion-v1``. Every command runs as ``python -m engine ...`` in a new session,
with one torch thread. Each operation starts from a state saved once:

ingest      no catalog              ``ingest c.duckdb EXTRA labels.csv --batch-size 32 --workers 2``
train-head  ingested, head A (seed 1), indexed      ``train-head c.duckdb --method pca --seed 2``
index       the same with head B, codes still A     ``index c.duckdb --block-size 128``
export      indexed with head B; an export of the head-A catalog already at ``exp``
                                                    ``export c.duckdb exp --overwrite``

serve-ingest  indexed with head B, served by ``clip-branches serve``
                                                    ``ingest c.duckdb arrivals --batch-size 32``
  (``arrivals``: 48 new images, Fashion-MNIST ones mirrored, and a truncated PNG). The command
  stages the files and hands them to the server, which takes them in. Trials alternate: the
  first kills the server (the command must then exit with a message, not hang), the next the
  ingest command; a killed server is started again and must answer and take in what was handed to
  it. After each trial the server must settle (nothing pending); the checks below then run with
  the server up, and the re-run goes through it too.

The head is fitted by PCA unless ``--head-method distill`` (the CLI's default, one epoch): how a
head is stored does not depend on how it was fitted (one transaction at the end), and
distillation first spends about ten seconds encoding the prompt vocabulary, where a kill can
only interrupt computation.

The command first runs unkilled from its start state twice: both results must be equal (the
reference), and the mean of the two wall times is its duration d. A trial restores the start
state, starts the command and, after a delay drawn uniformly from [0, d] by a generator seeded
with (``--seed``, operation), sends SIGKILL to its whole process group (the main process and the
decoding workers). A command that finished before the signal counts as missed, not as a kill;
trials go on until each operation has its share of ``--kills`` (at most three times as many
attempts). After the kill no process of the group may be left. Then, without touching the files:

* DuckDB: a copy of the catalog file (and its WAL) opens writable through ``Catalog.open``;
  ``PRAGMA database_size`` adds up (used + free = total blocks); every column of every table is
  read in full (DuckDB checks each block's checksum as it reads); after ``FORCE CHECKPOINT``,
  ``pragma_storage_info`` of every table stores as many rows for each column as for every
  other, at least the table's (deleted rows stay until rewritten), in blocks inside the file;
  the settings table's primary key finds every key; the ``catalog`` view binds; reopened
  read-only, every table hashes as before the checkpoint;
* the engine: the catalog itself opens read-only (as the web server opens it); ids and uris
  in ``images`` are unique; every image has its raw embedding in a recorded part that is on
  disk; codes have unique ids of known images at positions 0..n-1; blocks cover the codes
  contiguously from 0, their zone maps hold the codes' real minima and maxima, and agree with
  the index settings; the stored head matches its checksum; ``index_status`` answers;
* against the start state S and the reference R: serve-ingest keeps every image of S and holds
  a subset of R's; ingest leaves no catalog, or a catalog whose
  images are a subset of R's (same uri, id, metadata, float16 embedding, thumbnail), and
  skipped files a subset of R's; train-head changes nothing but the head and quantizer, which
  are S's or R's, and text search answers as that state does; index changes nothing but the
  codes, blocks and index settings, which are all S's or all R's, searches included;
  export leaves the catalog file byte for byte as it was and
  ``exp`` absent, the old export or R's export (each file equal), never anything else.

Then the same command runs again to completion (exit status 0), and its result must equal R:
images (uri -> id and metadata), float16 embeddings, skipped files, thumbnails, settings (less
timestamps and the write counter ``data_version``), head, codes in block order, blocks, and the
ids and scores of three searches by example, a text search, an ensemble refine and a box
selection; for export, every Parquet file and ``catalog.json`` equal R's, and the export
imports into a catalog that answers the same searches. A kill is survived when every check after it and after the re-run passed.

Reported per operation: kills, missed, survived, losses (images, embeddings, codes or export
rows gone), duplicates, reruns completed, invariant failures (with details), orphan processes,
debris the kills left (files only a later run, or nobody, deletes), the states the kills left
(outcomes), where the kills landed (as a share of d), and times.

    python scripts/chaos_kill.py --kills 100 --seed 0 [--operations ingest train-head index export serve-ingest] [--images 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

import engine
from engine import CatalogError
from engine.boxes import CODE_COLUMNS
from engine.datasets.demodata import write_fashion_mnist
from engine.ingest.embeddings import load_embeddings
from engine.store.parquet import FILES as EXPORT_FILES

OPERATIONS = ("ingest", "train-head", "index", "export", "serve-ingest")
SERVED = "serve-ingest"  # ingest into a catalog `clip-branches serve` holds: the server adopts
ARRIVALS = 48  # new image files the served catalog takes in (plus one corrupt file)
CATALOG = "c.duckdb"
EXPORT = "exp"
TEXT_QUERIES = ("ankle boot",)
BOXES = engine.BoxSet([{0: (0, 127), 1: (64, 255)}, {2: (100, 200)}, {3: (0, 90), 4: (0, 90)}])
MAX_DETAILS = 50


@dataclass
class Config:
    """Where the trials run and how the commands are called."""

    root: Path
    images: int = 1000
    head_method: str = "pca"
    epochs: int = 1
    block_size: int = 128
    batch_size: int = 32
    workers: int = 2
    timeout_s: float = 900.0
    queries: dict = field(default_factory=dict)  # ids for searches and refine, set after ingest
    checked: dict = field(default_factory=dict)  # DuckDB-level failures by file and WAL checksum

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    def state_dir(self, name: str) -> Path:
        return self.root / "states" / name

    def command(self, op: str) -> list[str]:
        cat = str(self.work / CATALOG)
        if op == "ingest":
            return [
                "ingest",
                cat,
                str(self.data / "extra"),
                str(self.data / "labels.csv"),
                "--batch-size",
                str(self.batch_size),
                "--workers",
                str(self.workers),
                "--quiet",
                "--json",
            ]
        if op == "train-head":
            return [
                "train-head",
                cat,
                "--method",
                self.head_method,
                "--epochs",
                str(self.epochs),
                "--seed",
                "2",
                "--quiet",
                "--json",
            ]
        if op == "index":
            return ["index", cat, "--block-size", str(self.block_size), "--json"]
        if op == "export":
            return ["export", cat, str(self.work / EXPORT), "--overwrite", "--json"]
        if op == SERVED:
            return [
                "ingest",
                cat,
                str(self.data / "arrivals"),
                "--batch-size",
                str(self.batch_size),
                "--quiet",
                "--json",
            ]
        raise ValueError(f"unknown operation {op!r}")


# -- data --------------------------------------------------------------------------------------
def build_data(cfg: Config) -> None:
    """Fashion-MNIST PNGs with their manifest, and ``extra/``: noise images and corrupt files."""
    write_fashion_mnist(cfg.data, limit=max(1, cfg.images // 2), workers=1)
    extra = cfg.data / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    good = {
        "a_photo.jpg": (320, 240),
        "c_photo.png": (300, 300),
        "e_photo.webp": (64, 48),
        "g_photo.jpg": (400, 200),
        "i_photo.bmp": (40, 30),
        "j_photo.png": (20, 20),
    }
    for name, (w, h) in good.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(extra / name)
    (extra / "b_empty.jpg").write_bytes(b"")
    (extra / "d_text.png").write_text("not an image\n" * 40)
    (extra / "f_garbage.jpg").write_bytes(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    png = (extra / "c_photo.png").read_bytes()
    (extra / "h_truncated.png").write_bytes(png[: len(png) // 3])
    arrivals = cfg.data / "arrivals"
    arrivals.mkdir(parents=True, exist_ok=True)
    for src in sorted((cfg.data / "images").rglob("*.png"))[:ARRIVALS]:
        Image.open(src).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(arrivals / f"new-{src.stem}.png")
    (arrivals / "z_broken.png").write_bytes(png[: len(png) // 4])


# -- a server holding the catalog --------------------------------------------------------------
class Server:
    """``clip-branches serve`` on the work catalog, in a session of its own."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            # No folding into the k-d order when idle: the result must not depend on timing.
            [
                sys.executable,
                "-m",
                "engine",
                "serve",
                str(cfg.work / CATALOG),
                "--port",
                str(self.port),
                "--set",
                "fold_idle_s=1000000",
            ],
            cwd=cfg.root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def health(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/api/health", timeout=5) as r:
                return next(iter(json.loads(r.read())["catalogs"].values()))
        except (OSError, ValueError):
            return None

    def wait_up(self, timeout: float = 300.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            if self.health() is not None:
                return True
            time.sleep(0.2)
        return False

    def wait_idle(self, timeout: float = 120.0) -> bool:
        """Until nothing waits in the inbox and the writer waits for nothing."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.health()
            if h is not None and h["pending"] == 0 and not h["status"]:
                time.sleep(TICK_WAIT_S)  # an item submitted just now is seen at the next tick
                h = self.health()
                if h is not None and h["pending"] == 0 and not h["status"]:
                    return True
            time.sleep(0.2)
        return False

    def kill(self) -> int:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        return _orphans(self.proc.pid)

    def stop(self) -> int:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            return self.kill()
        return _orphans(self.proc.pid)


TICK_WAIT_S = 1.0


# -- running the CLI ---------------------------------------------------------------------------
@dataclass
class Run:
    returncode: int
    seconds: float
    killed: bool  # SIGKILL landed while the command was running
    orphans: int  # processes of its group still alive afterwards
    stderr: str


def run_cli(cfg: Config, args: list[str], kill_after: float | None = None) -> Run:
    """Run ``python -m engine ARGS`` in a new session; with ``kill_after``, SIGKILL its process
    group that many seconds after the start unless it finished by then."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", *args],
            cwd=cfg.root,
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=cfg.timeout_s if kill_after is None else kill_after)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        seconds = time.perf_counter() - t0
        orphans = _orphans(proc.pid)
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")[-1500:]
    killed = kill_after is not None and proc.returncode == -signal.SIGKILL
    return Run(proc.returncode, seconds, killed, orphans, stderr)


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _orphans(pgid: int, wait_s: float = 5.0) -> int:
    """How many processes of the group outlive its leader by ``wait_s``; those are then killed."""
    deadline = time.monotonic() + wait_s
    while True:
        left = _group_members(pgid)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    return len(left)


def save_state(cfg: Config, name: str) -> None:
    dst = cfg.state_dir(name)
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(cfg.work, dst, symlinks=True)


def restore_state(cfg: Config, name: str) -> None:
    shutil.rmtree(cfg.work, ignore_errors=True)
    shutil.copytree(cfg.state_dir(name), cfg.work, symlinks=True)


# -- reading a state ---------------------------------------------------------------------------
@dataclass
class CatalogState:
    """What a catalog holds, in comparable form."""

    images: dict  # uri -> row tuple (id first; no added_at, embedding_part)
    image_ids: list
    uris: list
    no_embedding: int  # images whose embedding_part is NULL
    embeddings: dict | None  # id -> float16 bytes; None if unreadable
    embedding_error: str | None
    parts_recorded: set
    parts_on_disk: set
    codes_pos: np.ndarray
    codes_ids: np.ndarray
    codes: np.ndarray  # uint8 (n, 32) in pos order
    blocks: list
    settings: dict
    head_sha: str | None
    head_error: str | None
    skipped: list
    thumbs: dict  # id -> sha1 of the thumbnail file
    thumb_debris: int
    views_error: str | None
    status_error: str | None
    results: dict = field(default_factory=dict)

    def code_map(self) -> tuple[bytes, bytes]:
        order = np.argsort(self.codes_ids, kind="stable")
        return self.codes_ids[order].tobytes(), self.codes[order].tobytes()

    def code_order(self) -> tuple[bytes, bytes, bytes]:
        return self.codes_pos.tobytes(), self.codes_ids.tobytes(), self.codes.tobytes()


@dataclass
class ExportState:
    files: tuple
    tables: dict  # file name -> pa.Table
    meta: dict | None
    error: str | None

    @property
    def looks_complete(self) -> bool:
        return all(f in self.files for f in EXPORT_FILES)

    def same_as(self, other: ExportState | None) -> bool:
        return (
            other is not None
            and self.error is None
            and other.error is None
            and self.files == other.files
            and self.meta == other.meta
            and all(self.tables[k].equals(other.tables[k]) for k in self.tables)
        )


@dataclass
class Snapshot:
    catalog: CatalogState | None = None  # None: no catalog file, or it did not open
    open_error: str | None = None
    integrity: list = field(default_factory=list)  # DuckDB-level failures
    file_sha: str | None = None
    wal: bool = False
    export: ExportState | None = None
    debris: Counter = field(default_factory=Counter)


def snapshot(cfg: Config) -> Snapshot:
    """Read the work directory without changing it."""
    snap = Snapshot()
    path = cfg.work / CATALOG
    snap.debris["catalog temp files"] = len(list(cfg.work.glob(f".{CATALOG}.*")))
    snap.debris["export temp dirs"] = len(list(cfg.work.glob(f".{EXPORT}.*")))
    inbox = cfg.work / f"{CATALOG}.d" / "inbox"
    snap.debris["unfinished inbox items"] = len(list(inbox.glob(".writing-*"))) if inbox.is_dir() else 0
    if (cfg.work / EXPORT).exists():
        snap.export = read_export(cfg.work / EXPORT)
    if not path.exists():
        return snap
    wal = Path(f"{path}.wal")
    snap.wal = wal.exists()
    snap.file_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    key = (snap.file_sha, hashlib.sha256(wal.read_bytes()).hexdigest() if snap.wal else None)
    if key not in cfg.checked:
        cfg.checked[key] = duckdb_integrity(path, cfg.scratch)
    snap.integrity = cfg.checked[key]
    try:
        snap.catalog = read_catalog(path, cfg.queries)
    except CatalogError as e:
        snap.open_error = f"{type(e).__name__}: {e}"
    except duckdb.Error as e:
        snap.open_error = f"DuckDB {type(e).__name__}: {str(e).splitlines()[0]}"
    if snap.catalog is not None:
        c = snap.catalog
        snap.debris["embedding parts"] = len(c.parts_on_disk - c.parts_recorded)
        snap.debris["thumbnails"] = c.thumb_debris
    return snap


def read_catalog(path: Path, queries: dict | None) -> CatalogState:
    """Everything the checks compare, read through a read-only ``Catalog``; search results only
    with ``queries`` and codes."""
    with engine.Catalog.open(path, read_only=True) as cat:
        con = cat.store.con
        rel = con.sql("SELECT * EXCLUDE (added_at, embedding_part) FROM images ORDER BY id")
        cols = rel.columns
        rows = rel.fetchall()
        at_uri = cols.index("uri")
        ids = [r[0] for r in rows]
        uris = [r[at_uri] for r in rows]
        no_emb = con.execute("SELECT count(*) FROM images WHERE embedding_part IS NULL").fetchall()[0][0]
        embeddings, emb_error = None, None
        try:
            e_ids, emb = load_embeddings(cat)
            f16 = emb.astype(np.float16)
            embeddings = {int(i): f16[k].tobytes() for k, i in enumerate(e_ids.tolist())}
        except CatalogError as e:
            emb_error = str(e)
        parts_dir = cat.side_dir / "embeddings"
        recorded = {r[0] for r in con.execute("SELECT file FROM embedding_parts").fetchall()}
        on_disk = {p.name for p in parts_dir.iterdir()} if parts_dir.is_dir() else set()
        tbl = con.sql(f"SELECT pos, id, {', '.join(CODE_COLUMNS)} FROM codes ORDER BY pos").to_arrow_table()
        codes = np.zeros((tbl.num_rows, len(CODE_COLUMNS)), np.uint8)
        for d, c in enumerate(CODE_COLUMNS):
            codes[:, d] = tbl.column(c).to_numpy()
        head_sha, head_error = None, None
        if cat.setting("head") is not None:
            try:
                head_sha = cat.head().sha256
            except CatalogError as e:
                head_error = str(e)
        thumbs, thumb_debris = _thumbnails(cat.side_dir / "thumbs", set(ids))
        views_error = status_error = None
        try:
            con.execute("SELECT * FROM catalog LIMIT 1").fetchall()
        except duckdb.Error as e:
            views_error = str(e).splitlines()[0]
        try:
            cat.index_status()
        except (CatalogError, duckdb.Error) as e:
            status_error = str(e).splitlines()[0]
        state = CatalogState(
            images={u: r for u, r in zip(uris, rows, strict=True)},
            image_ids=ids,
            uris=uris,
            no_embedding=no_emb,
            embeddings=embeddings,
            embedding_error=emb_error,
            parts_recorded=recorded,
            parts_on_disk=on_disk,
            codes_pos=tbl.column("pos").to_numpy(),
            codes_ids=tbl.column("id").to_numpy(),
            codes=codes,
            blocks=con.sql("SELECT * FROM blocks ORDER BY block_id").fetchall(),
            settings=cat.settings(),
            head_sha=head_sha,
            head_error=head_error,
            skipped=sorted(con.execute("SELECT uri, reason FROM skipped").fetchall()),
            thumbs=thumbs,
            thumb_debris=thumb_debris,
            views_error=views_error,
            status_error=status_error,
        )
        if queries and tbl.num_rows:
            state.results = query_results(cat, queries)
    return state


def _thumbnails(root: Path, ids: set) -> tuple[dict, int]:
    """id -> sha1 of each thumbnail of a known image; and how many other files lie there."""
    thumbs, debris = {}, 0
    if root.is_dir():
        for p in root.rglob("*"):
            if not p.is_file():
                continue
            stem = p.name[:-4] if p.name.endswith(".jpg") else None
            if stem is not None and stem.isdigit() and int(stem) in ids:
                thumbs[int(stem)] = hashlib.sha1(p.read_bytes()).hexdigest()
            else:
                debris += 1
    return thumbs, debris


def query_results(cat: engine.Catalog, queries: dict) -> dict:
    """ids and scores of searches by example and by text, a refine and a box selection; an
    error's text in place of a result that failed."""
    out = {}

    def record(name, fn):
        try:
            r = fn()
            out[name] = (r.ids.tolist(), r.scores.tolist())
        except CatalogError as e:
            out[name] = f"{type(e).__name__}: {e}"

    for q in queries["ids"]:
        record(f"id {q}", lambda q=q: cat.search(id=q, k=20))
    if cat.setting("head") is not None:
        for text in TEXT_QUERIES:
            record(f"text {text}", lambda text=text: cat.search(text, k=20))
    record(
        "refine",
        lambda: cat.refine(queries["positives"], queries["negatives"], model="ensemble", random_state=0),
    )
    try:
        out["select"] = sorted(cat.select(BOXES).ids.tolist())
    except CatalogError as e:
        out["select"] = f"{type(e).__name__}: {e}"
    return out


def read_export(directory: Path) -> ExportState:
    files = tuple(sorted(p.name for p in directory.iterdir()))
    tables, meta, error = {}, None, None
    for name in files:
        try:
            if name.endswith(".parquet"):
                tables[name] = pq.read_table(directory / name)
            elif name == "catalog.json":
                meta = json.loads((directory / name).read_text(encoding="utf-8"))
        except (OSError, ValueError, pa.ArrowException) as e:
            error = f"{name}: {str(e).splitlines()[0]}"
    return ExportState(files, tables, meta, error)


def duckdb_integrity(path: Path, scratch: Path) -> list[str]:
    """DuckDB-level checks on a copy of the catalog file and its WAL; failures as text."""
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    copy_path = scratch / path.name
    shutil.copy(path, copy_path)
    if Path(f"{path}.wal").exists():
        shutil.copy(f"{path}.wal", f"{copy_path}.wal")
    failures = []
    try:
        engine.Catalog.open(copy_path).close()
    except CatalogError as e:
        return [f"the catalog does not open writable: {type(e).__name__}: {e}"]
    try:
        con = duckdb.connect(str(copy_path))
        try:
            failures += _block_counts(con, "before checkpoint")
            tables = [
                r[0]
                for r in con.execute(
                    "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' ORDER BY 1"
                ).fetchall()
            ]
            scans = {t: _scan(con, t) for t in tables}
            con.execute("FORCE CHECKPOINT")
            failures += _block_counts(con, "after checkpoint")
            total = _database_size(con)["total_blocks"]
            for t in tables:
                # Segments still hold deleted rows, so each column stores at least the table's rows,
                # and every column (and its validity mask) exactly as many as the others.
                n = scans[t][0]
                stored = dict(
                    con.execute(
                        "SELECT column_path, sum(count) FROM pragma_storage_info(?) GROUP BY 1", [t]
                    ).fetchall()
                )
                if len(set(stored.values())) > 1 or any(rows < n for rows in stored.values()):
                    failures.append(
                        f"storage_info: {t} has {n} rows but its columns store {sorted(set(stored.values()))}"
                    )
                bad = con.execute(
                    "SELECT count(*) FROM pragma_storage_info(?) WHERE persistent AND block_id >= ?",
                    [t, total],
                ).fetchall()[0][0]
                if bad:
                    failures.append(
                        f"storage_info: {t} has {bad} segment(s) in blocks beyond the file's {total}"
                    )
            for (key,) in con.execute("SELECT key FROM settings").fetchall():
                if con.execute("SELECT count(*) FROM settings WHERE key = ?", [key]).fetchall()[0][0] != 1:
                    failures.append(f"settings key {key!r} is not found exactly once through its primary key")
            con.execute("SELECT * FROM catalog LIMIT 1").fetchall()
        finally:
            con.close()
        con = duckdb.connect(str(copy_path), read_only=True)
        try:
            for t, before in scans.items():
                after = _scan(con, t)
                if after != before:
                    failures.append(f"{t} reads back differently after a checkpoint and reopening")
        finally:
            con.close()
    except duckdb.Error as e:
        failures.append(f"DuckDB {type(e).__name__}: {str(e).splitlines()[0]}")
    return failures


def _scan(con: duckdb.DuckDBPyConnection, table: str) -> tuple:
    """Row count and a hash of every column: reads every block of the table."""
    return tuple(con.execute(f'SELECT count(*), bit_xor(hash(COLUMNS(*))) FROM "{table}"').fetchall()[0])


def _database_size(con: duckdb.DuckDBPyConnection) -> dict:
    cur = con.execute("PRAGMA database_size")
    return dict(zip([d[0] for d in cur.description], cur.fetchall()[0], strict=True))


def _block_counts(con: duckdb.DuckDBPyConnection, when: str) -> list[str]:
    size = _database_size(con)
    if size["used_blocks"] + size["free_blocks"] != size["total_blocks"]:
        return [
            f"database_size {when}: {size['used_blocks']} used + {size['free_blocks']} free blocks "
            f"!= {size['total_blocks']} total"
        ]
    return []


# -- checks ------------------------------------------------------------------------------------
@dataclass
class Findings:
    failures: list = field(default_factory=list)
    losses: int = 0
    duplicates: int = 0
    outcome: str = ""

    def fail(self, message: str) -> None:
        self.failures.append(message)


def stable_settings(settings: dict, drop: tuple = ()) -> dict:
    """Settings without timestamps and the write counter ``data_version`` (a killed run's commits
    bump it too), and without the keys ``drop``."""
    s = copy.deepcopy(settings)
    s.pop("created_at", None)
    s.pop("data_version", None)
    for key in drop:
        s.pop(key, None)
    if isinstance(s.get("index"), dict):
        s["index"].pop("built_at", None)
    return s


def check_catalog(snap: Snapshot, f: Findings, where: str) -> CatalogState | None:
    """DuckDB-level and engine invariants of one state; the state if it opened."""
    for msg in snap.integrity:
        f.fail(f"{where}: {msg}")
    if snap.open_error:
        f.fail(f"{where}: the catalog does not open read-only: {snap.open_error}")
        return None
    c = snap.catalog
    if c is None:
        return None
    dup_ids = len(c.image_ids) - len(set(c.image_ids))
    dup_uris = len(c.uris) - len(set(c.uris))
    dup_codes = len(c.codes_ids) - len(np.unique(c.codes_ids))
    if dup_ids or dup_uris or dup_codes:
        f.duplicates += dup_ids + dup_uris + dup_codes
        f.fail(f"{where}: duplicated image ids {dup_ids}, uris {dup_uris}, code ids {dup_codes}")
    if c.no_embedding:
        f.losses += c.no_embedding
        f.fail(f"{where}: {c.no_embedding} image(s) without a raw embedding")
    if c.embedding_error:
        f.losses += 1
        f.fail(f"{where}: embeddings unreadable: {c.embedding_error}")
    missing_parts = c.parts_recorded - c.parts_on_disk
    if missing_parts:
        f.losses += len(missing_parts)
        f.fail(f"{where}: recorded embedding parts missing on disk: {sorted(missing_parts)[:5]}")
    if len(c.codes_ids):
        unknown = set(c.codes_ids.tolist()) - set(c.image_ids)
        if unknown:
            f.fail(f"{where}: {len(unknown)} code(s) of unknown images")
        if not np.array_equal(c.codes_pos, np.arange(len(c.codes_pos))):
            f.fail(f"{where}: code positions are not 0..n-1")
    _check_blocks(c, f, where)
    if c.head_error:
        f.fail(f"{where}: stored head: {c.head_error}")
    skipped_uris = [u for u, _ in c.skipped]
    if len(skipped_uris) != len(set(skipped_uris)):
        f.duplicates += len(skipped_uris) - len(set(skipped_uris))
        f.fail(f"{where}: skipped files listed twice")
    for name, err in (("the catalog view", c.views_error), ("index_status", c.status_error)):
        if err:
            f.fail(f"{where}: {name} fails: {err}")
    return c


def _check_blocks(c: CatalogState, f: Findings, where: str) -> None:
    """Blocks tile the codes from row 0, hold their real minima and maxima, and agree with the
    index settings."""
    index = c.settings.get("index")
    if not c.blocks:
        if index is not None and index.get("n_blocks"):
            f.fail(f"{where}: the index settings name {index['n_blocks']} blocks, the blocks table is empty")
        return
    if index is None:
        f.fail(f"{where}: {len(c.blocks)} blocks but no index settings")
        return
    start = np.array([b[1] for b in c.blocks])
    end = np.array([b[2] for b in c.blocks])
    if start[0] != 0 or not np.array_equal(start[1:], end[:-1]) or (end <= start).any():
        f.fail(f"{where}: blocks do not cover the codes contiguously from 0")
        return
    if (
        end[-1] != index.get("indexed_rows")
        or end[-1] > len(c.codes)
        or len(c.blocks) != index.get("n_blocks")
    ):
        f.fail(
            f"{where}: blocks end at row {end[-1]} in {len(c.blocks)} blocks; the index settings say "
            f"{index.get('indexed_rows')} rows in {index.get('n_blocks')} blocks; {len(c.codes)} codes"
        )
        return
    zone = np.array([b[3:] for b in c.blocks], dtype=np.int64).reshape(len(c.blocks), -1, 2)
    for k, (s, e) in enumerate(zip(start, end, strict=True)):
        rows = c.codes[s:e]
        if not (
            np.array_equal(zone[k, :, 0], rows.min(axis=0))
            and np.array_equal(zone[k, :, 1], rows.max(axis=0))
        ):
            f.fail(f"{where}: the zone map of block {k} does not match its codes")
            return


def _diff(a: CatalogState, b: CatalogState, parts: tuple) -> list[str]:
    """The named parts in which two states differ."""
    getters = {
        "images": lambda s: s.images,
        "embeddings": lambda s: s.embeddings,
        "skipped": lambda s: s.skipped,
        "thumbnails": lambda s: s.thumbs,
        "settings": lambda s: stable_settings(s.settings),
        "head": lambda s: (s.head_sha, s.settings.get("head"), s.settings.get("quantizer")),
        "codes": lambda s: s.code_order(),
        "code map": lambda s: s.code_map(),
        "blocks": lambda s: s.blocks,
        "results": lambda s: s.results,
    }
    out = []
    for p in parts:
        x, y = getters[p](a), getters[p](b)
        if x != y:
            keys = sorted(k for k in {*x, *y} if x.get(k) != y.get(k)) if isinstance(x, dict) else []
            out.append(f"{p} ({', '.join(map(str, keys[:5]))})" if keys and p == "settings" else p)
    return out


ALL_PARTS = (
    "images",
    "embeddings",
    "skipped",
    "thumbnails",
    "settings",
    "head",
    "codes",
    "blocks",
    "results",
)


def _lost(base: CatalogState, c: CatalogState) -> int:
    """Images and codes of ``base`` that ``c`` no longer has."""
    return len(set(base.uris) - set(c.uris)) + len(set(base.codes_ids.tolist()) - set(c.codes_ids.tolist()))


@dataclass
class Operation:
    """One operation's start state, its reference result and its duration."""

    name: str
    start: str
    base: Snapshot
    reference: Snapshot
    durations: list


def check_after_kill(op: Operation, snap: Snapshot, f: Findings) -> None:
    """What a kill may leave: the start state, the reference's, or (ingest) part of the way."""
    where = "after the kill"
    c = check_catalog(snap, f, where)
    base, ref = op.base.catalog, op.reference.catalog
    if op.name == SERVED:
        if c is None:
            f.losses += len(base.uris)
            f.fail(f"{where}: the served catalog does not open")
            return
        lost = _lost(base, c)
        if lost:
            f.losses += lost
            f.fail(f"{where}: {lost} image(s) or code(s) of the start state are gone")
        _check_ingest_subset(c, ref, f, where)
        new = len(set(c.uris) - set(base.uris))
        f.outcome = (
            "none taken in" if not new else ("all taken in" if set(c.uris) == set(ref.uris) else "partial")
        )
        return
    if op.name == "ingest":
        if snap.catalog is None and snap.open_error is None:
            f.outcome = "no catalog"
            return
        if c is None:
            return
        _check_ingest_subset(c, ref, f, where)
        f.outcome = (
            "no images" if not c.uris else ("partial" if len(c.uris) < len(ref.uris) else "all images")
        )
        return
    if c is None:
        if snap.open_error is None:
            f.losses += len(base.uris)
            f.fail(f"{where}: the catalog file is gone")
        return
    lost = _lost(base, c)
    if lost:
        f.losses += lost
        f.fail(f"{where}: {lost} image(s) or code(s) of the start state are gone")
    if op.name == "train-head":
        changed = _diff(c, base, ("images", "embeddings", "skipped", "thumbnails", "codes", "blocks"))
        if changed:
            f.fail(f"{where}: train-head changed {', '.join(changed)}")
        if stable_settings(c.settings, ("head", "quantizer")) != stable_settings(
            base.settings, ("head", "quantizer")
        ):
            f.fail(f"{where}: train-head changed settings other than the head and quantizer")
        for name, state in (("old head", base), ("new head", ref)):
            if not _diff(c, state, ("head",)):
                f.outcome = name
                if c.results != state.results:
                    f.fail(f"{where}: with the {name}, searches differ from that state's")
                return
        f.fail(f"{where}: the head and quantizer are neither the old nor the new ones")
    elif op.name == "index":
        changed = _diff(c, base, ("images", "embeddings", "skipped", "thumbnails", "head"))
        if changed:
            f.fail(f"{where}: index changed {', '.join(changed)}")
        parts = ("code map", "codes", "blocks", "settings", "results")
        if not _diff(c, base, parts):
            f.outcome = "old index"
        elif not _diff(c, ref, parts):
            f.outcome = "new index"
        else:
            f.fail(
                f"{where}: the catalog is neither in its previous state nor in the new one (differs from "
                f"the previous in {', '.join(_diff(c, base, parts))}; from the new in "
                f"{', '.join(_diff(c, ref, parts))})"
            )
    elif op.name == "export":
        if snap.file_sha != op.base.file_sha or snap.wal:
            f.fail(f"{where}: the export changed the catalog file")
        exp = snap.export
        if exp is None:
            f.outcome = "no export"
        elif exp.same_as(op.base.export):
            f.outcome = "old export"
        elif exp.same_as(op.reference.export):
            f.outcome = "new export"
        else:
            f.fail(
                f"{where}: {EXPORT}/ holds neither the old nor the new export "
                f"({'looks complete' if exp.looks_complete else 'incomplete'}: {', '.join(exp.files)})"
            )


def _check_ingest_subset(c: CatalogState, ref: CatalogState, f: Findings, where: str) -> None:
    """Every image, embedding, skipped file and thumbnail of ``c`` is the reference's."""
    extra = [u for u in c.uris if c.images[u] != ref.images.get(u)]
    if extra:
        f.fail(f"{where}: {len(extra)} image row(s) not in the reference run, e.g. {c.images[extra[0]]}")
    if c.embeddings is not None:
        wrong = [i for i, e in c.embeddings.items() if ref.embeddings.get(i) != e]
        if wrong:
            f.fail(f"{where}: {len(wrong)} embedding(s) differ from the reference run, e.g. id {wrong[0]}")
    if not set(c.skipped) <= set(ref.skipped):
        f.fail(
            f"{where}: skipped files not in the reference run: {sorted(set(c.skipped) - set(ref.skipped))[:3]}"
        )
    missing_thumbs = [i for i in c.image_ids if i in ref.thumbs and c.thumbs.get(i) != ref.thumbs[i]]
    if missing_thumbs:
        f.losses += len(missing_thumbs)
        f.fail(
            f"{where}: {len(missing_thumbs)} committed image(s) lack their thumbnail, e.g. id {missing_thumbs[0]}"
        )


def check_final(
    cfg: Config, op: Operation, snap: Snapshot, f: Findings, where: str = "after the re-run"
) -> None:
    """The re-run (or an unkilled run) must give the reference's result."""
    c = check_catalog(snap, f, where)
    ref = op.reference.catalog
    if c is None:
        f.losses += len(ref.uris)
        f.fail(f"{where}: no catalog")
        return
    lost = len(set(ref.uris) - set(c.uris))
    if lost:
        f.losses += lost
    changed = _diff(c, ref, ALL_PARTS)
    if changed:
        f.fail(
            f"{where}: differs from the reference run in {', '.join(changed)}"
            + (f" ({lost} image(s) missing)" if lost else "")
        )
    if op.name == "ingest" and snap.debris["embedding parts"]:
        f.fail(f"{where}: {snap.debris['embedding parts']} unrecorded embedding part(s) left")
    if op.name == "export":
        exp = snap.export
        if exp is None or not exp.same_as(op.reference.export):
            f.fail(f"{where}: {EXPORT}/ differs from the reference export")
            return
        for name in ("codes.parquet", "images.parquet"):
            ids = exp.tables[name].column("id").to_numpy()
            if len(ids) != len(np.unique(ids)):
                f.duplicates += len(ids) - len(np.unique(ids))
                f.fail(f"{where}: {name} repeats ids")
        if exp.tables["codes.parquet"].num_rows != len(ref.codes_ids):
            f.losses += abs(len(ref.codes_ids) - exp.tables["codes.parquet"].num_rows)
            f.fail(
                f"{where}: codes.parquet has {exp.tables['codes.parquet'].num_rows} rows for {len(ref.codes_ids)}"
            )
        imported = cfg.scratch / "imported.duckdb"
        shutil.rmtree(cfg.scratch, ignore_errors=True)
        cfg.scratch.mkdir(parents=True)
        try:
            with engine.Catalog.import_parquet(cfg.work / EXPORT, imported) as cat:
                if query_results(cat, cfg.queries) != ref.results:
                    f.fail(f"{where}: the imported export answers searches differently")
        except CatalogError as e:
            f.fail(f"{where}: the export does not import: {e}")


# -- the run -----------------------------------------------------------------------------------
def reference(cfg: Config, name: str, start: str, runs: int) -> Operation:
    """Run ``name`` unkilled from ``start`` ``runs`` times; save the first result as ``ref-NAME``."""
    restore_state(cfg, start)
    base = snapshot(cfg)
    durations, snaps = [], []
    for i in range(runs):
        restore_state(cfg, start)
        server = Server(cfg) if name == SERVED else None
        if server is not None and not server.wait_up():
            raise RuntimeError("the server did not start")
        r = run_cli(cfg, cfg.command(name))
        if server is not None:
            server.wait_idle()
            server.stop()
        if r.returncode != 0:
            raise RuntimeError(f"{name} failed without a kill ({r.returncode}): {r.stderr}")
        durations.append(r.seconds)
        if name == "ingest" and not cfg.queries:
            cfg.queries = _choose_queries(cfg.work / CATALOG)
        snaps.append(snapshot(cfg))
        if i == 0:
            save_state(cfg, f"ref-{name}")
    op = Operation(name, start, base, snaps[0], durations)
    f = Findings()
    for s in snaps[1:]:
        check_final(cfg, op, s, f, where="a second unkilled run")
    if f.failures:
        raise RuntimeError(f"{name} is not deterministic: {f.failures}")
    return op


def _choose_queries(path: Path) -> dict:
    """Ids to search by (first, middle, last), and eight ankle boots and two sneakers to refine."""
    with engine.Catalog.open(path, read_only=True) as cat:
        ids = [r[0] for r in cat.store.con.execute("SELECT id FROM images ORDER BY id").fetchall()]

        def labelled(label, n):
            return [
                r[0]
                for r in cat.store.con.execute(
                    "SELECT id FROM images WHERE label = ? ORDER BY id LIMIT ?", [label, n]
                ).fetchall()
            ]

        return {
            "ids": [ids[0], ids[len(ids) // 2], ids[-1]],
            "positives": labelled("Ankle boot", 8),
            "negatives": labelled("Sneaker", 2),
        }


def prepare(cfg: Config, operations: list[str], references: int = 2) -> dict[str, Operation]:
    """Build the data, the start state of every operation and the references (``references``
    unkilled runs of each operation to check, one of each step only needed to get there)."""
    build_data(cfg)
    last = max(OPERATIONS.index(o) for o in operations)
    ops = {}

    def runs(name):
        return references if name in operations else 1

    shutil.rmtree(cfg.work, ignore_errors=True)
    cfg.work.mkdir(parents=True)
    save_state(cfg, "start-ingest")
    ops["ingest"] = reference(cfg, "ingest", "start-ingest", runs("ingest"))
    if last >= 1:
        restore_state(cfg, "ref-ingest")
        cat = str(cfg.work / CATALOG)
        for args in (
            [
                "train-head",
                cat,
                "--method",
                cfg.head_method,
                "--epochs",
                str(cfg.epochs),
                "--seed",
                "1",
                "--quiet",
            ],
            ["index", cat, "--block-size", str(cfg.block_size)],
        ):
            r = run_cli(cfg, args)
            if r.returncode != 0:
                raise RuntimeError(f"{args[0]} failed: {r.stderr}")
        save_state(cfg, "start-train-head")
        r = run_cli(cfg, ["export", cat, str(cfg.work / EXPORT)])
        if r.returncode != 0:
            raise RuntimeError(f"export failed: {r.stderr}")
        shutil.rmtree(cfg.state_dir("old-export"), ignore_errors=True)
        shutil.move(cfg.work / EXPORT, cfg.state_dir("old-export"))
        ops["train-head"] = reference(cfg, "train-head", "start-train-head", runs("train-head"))
    if last >= 2:
        ops["index"] = reference(cfg, "index", "ref-train-head", runs("index"))
    if last >= 3:
        restore_state(cfg, "ref-index")
        shutil.copytree(cfg.state_dir("old-export"), cfg.work / EXPORT)
        save_state(cfg, "start-export")
        ops["export"] = reference(cfg, "export", "start-export", runs("export"))
    if last >= 4:
        ops[SERVED] = reference(cfg, SERVED, "ref-index", runs(SERVED))
    return {name: ops[name] for name in operations}


@dataclass
class Tally:
    kills: int = 0
    missed: int = 0
    survived: int = 0
    losses: int = 0
    duplicates: int = 0
    reruns_completed: int = 0
    invariant_failures: int = 0
    orphans: int = 0
    failures: list = field(default_factory=list)
    debris: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    kill_fractions: list = field(default_factory=list)


def trial(cfg: Config, op: Operation, delay: float, tally: Tally, attempt: int = 0) -> None:
    """Restore the start state, run the command with a kill after ``delay`` s, check, run it
    again, check; add the counts to ``tally``."""
    if op.name == SERVED:
        served_trial(cfg, op, delay, tally, kill_server=attempt % 2 == 1)
        return
    restore_state(cfg, op.start)
    run = run_cli(cfg, cfg.command(op.name), kill_after=delay)
    f = Findings()
    if run.orphans:
        tally.orphans += run.orphans
        f.fail(f"{run.orphans} process(es) of the killed group still alive")
    if not run.killed:
        tally.missed += 1
        if run.returncode != 0:
            f.fail(f"the run exited with {run.returncode}: {run.stderr}")
        check_final(cfg, op, snapshot(cfg), f, where="after an unkilled run")
    else:
        tally.kills += 1
        tally.kill_fractions.append(delay / float(np.mean(op.durations)))
        after = snapshot(cfg)
        tally.debris.update({k: v for k, v in after.debris.items() if v})
        check_after_kill(op, after, f)
        tally.outcomes[f.outcome or "unexpected"] += 1
        rerun = run_cli(cfg, cfg.command(op.name))
        if rerun.orphans:
            tally.orphans += rerun.orphans
            f.fail(f"{rerun.orphans} process(es) left after the re-run")
        if rerun.returncode == 0:
            tally.reruns_completed += 1
        else:
            f.fail(f"the re-run exited with {rerun.returncode}: {rerun.stderr}")
        check_final(cfg, op, snapshot(cfg), f)
        if not f.failures:
            tally.survived += 1
    tally.losses += f.losses
    tally.duplicates += f.duplicates
    if f.failures:
        tally.invariant_failures += len(f.failures)
        label = f"kill at {delay:.2f} s" if run.killed else f"missed kill at {delay:.2f} s"
        tally.failures += [f"{label}: {m}" for m in f.failures][: max(0, MAX_DETAILS - len(tally.failures))]


def served_trial(cfg: Config, op: Operation, delay: float, tally: Tally, kill_server: bool) -> None:
    """Ingest into a served catalog and SIGKILL, after ``delay`` s, either the ingest command or
    the server. A server that survives must keep answering; a killed one must start again and
    take in what was handed to it. Then the ingest runs again, and the result must be the
    reference's."""
    restore_state(cfg, op.start)
    f = Findings()
    server = Server(cfg)
    if not server.wait_up():
        f.fail("the server did not start")
        server.kill()
        _record(tally, f, delay, killed=False)
        return
    if kill_server:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine", *cfg.command(op.name)],
            cwd=cfg.root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        time.sleep(delay)
        killed = proc.poll() is None
        orphans = server.kill()
        try:
            _, err = proc.communicate(timeout=cfg.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            f.fail("the ingest command hung after its server was killed")
        if proc.returncode not in (0, 1):
            f.fail(
                f"the ingest command exited with {proc.returncode} after its server was killed: {err[-300:]!r}"
            )
        server = Server(cfg)
        if not server.wait_up():
            f.fail("the server did not start again after the kill")
    else:
        run = run_cli(cfg, cfg.command(op.name), kill_after=delay)
        killed, orphans = run.killed, run.orphans
        if not killed and run.returncode != 0:
            f.fail(f"the run exited with {run.returncode}: {run.stderr}")
        if server.health() is None:
            f.fail("the server stopped answering after the ingest command was killed")
    if orphans:
        tally.orphans += orphans
        f.fail(f"{orphans} process(es) of the killed group still alive")
    if not server.wait_idle():
        f.fail(f"the server did not settle after the kill: {server.health()}")
    if killed:
        tally.kills += 1
        tally.kill_fractions.append(delay / float(np.mean(op.durations)))
        after = snapshot(cfg)
        tally.debris.update({k: v for k, v in after.debris.items() if v})
        check_after_kill(op, after, f)
        tally.outcomes[
            ("server killed: " if kill_server else "ingest killed: ") + (f.outcome or "unexpected")
        ] += 1
    else:
        tally.missed += 1
    rerun = run_cli(cfg, cfg.command(op.name))
    if rerun.returncode == 0:
        tally.reruns_completed += killed
    else:
        f.fail(f"the re-run exited with {rerun.returncode}: {rerun.stderr}")
    server.wait_idle()
    tally.orphans += server.stop()
    check_final(cfg, op, snapshot(cfg), f)
    if killed and not f.failures:
        tally.survived += 1
    _record(tally, f, delay, killed)


def _record(tally: Tally, f: Findings, delay: float, killed: bool) -> None:
    tally.losses += f.losses
    tally.duplicates += f.duplicates
    if f.failures:
        tally.invariant_failures += len(f.failures)
        label = f"kill at {delay:.2f} s" if killed else f"missed kill at {delay:.2f} s"
        tally.failures += [f"{label}: {m}" for m in f.failures][: max(0, MAX_DETAILS - len(tally.failures))]


def run_chaos(
    root: Path,
    *,
    kills: int,
    seed: int,
    operations: list[str],
    images: int,
    head_method: str = "pca",
    epochs: int = 1,
    references: int = 2,
) -> dict:
    """Prepare, run the trials and return the report (a JSON-able dict)."""
    t0 = time.perf_counter()
    cfg = Config(Path(root), images=images, head_method=head_method, epochs=epochs)
    operations = [o for o in OPERATIONS if o in operations]
    ops = prepare(cfg, operations, references)
    t_prepare = time.perf_counter() - t0
    share = [kills // len(operations) + (k < kills % len(operations)) for k in range(len(operations))]
    report = {}
    for (name, op), want in zip(ops.items(), share, strict=True):
        t1 = time.perf_counter()
        rng = np.random.default_rng([seed, OPERATIONS.index(name)])
        duration = float(np.mean(op.durations))
        tally = Tally()
        attempts = 0
        while tally.kills < want and attempts < 3 * want:
            attempts += 1
            trial(cfg, op, float(rng.uniform(0.0, duration)), tally, attempts)
        fr = np.array(tally.kill_fractions)
        report[name] = {
            "command": " ".join(["clip-branches", *cfg.command(name)]).replace(str(cfg.root) + os.sep, ""),
            "duration_s": round(duration, 3),
            "reference_runs_s": [round(d, 3) for d in op.durations],
            "kills": tally.kills,
            "missed": tally.missed,
            "survived": tally.survived,
            "losses": tally.losses,
            "duplicates": tally.duplicates,
            "reruns_completed": tally.reruns_completed,
            "invariant_failures": tally.invariant_failures,
            "orphans": tally.orphans,
            "outcomes": dict(tally.outcomes),
            "debris_after_kills": dict(tally.debris),
            "kill_at_share_of_duration": (
                {
                    "min": round(float(fr.min()), 3),
                    "median": round(float(np.median(fr)), 3),
                    "max": round(float(fr.max()), 3),
                }
                if len(fr)
                else None
            ),
            "failures": tally.failures,
            "time_s": round(time.perf_counter() - t1, 1),
        }
    totals = {
        k: sum(r[k] for r in report.values())
        for k in (
            "kills",
            "missed",
            "survived",
            "losses",
            "duplicates",
            "reruns_completed",
            "invariant_failures",
            "orphans",
        )
    }
    return {
        "seed": seed,
        "images": images,
        "head_method": head_method,
        "epochs": epochs,
        "operations": report,
        "totals": totals,
        "time_prepare_s": round(t_prepare, 1),
        "time_total_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kills", type=int, default=100, help="kills in all, shared evenly by the operations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--operations", nargs="+", choices=OPERATIONS, default=list(OPERATIONS))
    p.add_argument("--images", type=int, default=1000, help="Fashion-MNIST images (half from each split)")
    p.add_argument(
        "--head-method",
        default="pca",
        choices=["pca", "distill"],
        help="how train-head fits the head (distill: the CLI's default, about 10 s a run)",
    )
    p.add_argument("--epochs", type=int, default=1, help="head training epochs")
    p.add_argument(
        "--dir", type=Path, default=None, help="work here and keep the files (default: a temp dir)"
    )
    args = p.parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="chaos-kill-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        report = run_chaos(
            root,
            kills=args.kills,
            seed=args.seed,
            operations=args.operations,
            images=args.images,
            head_method=args.head_method,
            epochs=args.epochs,
        )
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    t = report["totals"]
    return 1 if t["invariant_failures"] or t["losses"] or t["duplicates"] or t["orphans"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
