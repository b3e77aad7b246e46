"""A served catalog that grows: ingestion while ``clip-branches serve`` holds the file.

DuckDB lets one process write a file, or any number read it. The server reads (read-only, so
``duckdb -readonly`` and other readers can share the file with it), so it cannot be written while
it runs. Ingestion therefore splits in two:

1. *Staging* (:func:`stage`), by anyone, while the file is only read: plan the files against the
   catalog, decode and embed the new and changed ones, and write parts, rows and thumbnails
   into a folder of the catalog's inbox (``<catalog>.d/inbox/``). The folder is written under a
   hidden name and renamed into place when complete, so the inbox only ever holds whole items.
2. *Adoption* (:func:`apply_pending`), by the one process that can take the writer: the server,
   which closes its readers for a moment, opens the file writable, takes each item in through
   the same commit as ``ingest-parts`` (re-planned against the catalog as it is then), gives the
   new images codes from the stored head, and opens the file read-only again.

``clip-branches ingest`` on a served catalog stages, hands the item over and waits for the
server's report (:func:`wait_report`). A kill at any point loses nothing and duplicates
nothing: an item is deleted only after its commit, and adopting an item again adds nothing
(its files are then already in the catalog, unchanged); an unfinished hidden folder is debris
that the server deletes once the process writing it is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .catalog import Catalog
from .errors import CatalogError, IngestError
from .limits import DEFAULT_MAX_PIXELS
from .store.files import write_bytes

INBOX = "inbox"
SERVER_FILE = "serve.json"
REPORT_SUFFIX = ".report.json"
REPORTS_KEPT_S = 3600.0  # a report nobody collected is deleted after this
POLL_S = 0.2


# -- who serves the catalog ------------------------------------------------------------------
def side_dir(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.parent / f"{path.name}.d"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def register_server(path: str | os.PathLike, url: str) -> Path:
    """Record beside the catalog that this process serves it (read by :func:`served_by`)."""
    record = side_dir(path) / SERVER_FILE
    record.parent.mkdir(parents=True, exist_ok=True)
    body = {"pid": os.getpid(), "url": url, "catalog": str(Path(path).resolve()), "started_at": time.time()}
    write_bytes(record, json.dumps(body).encode("utf-8"))
    return record


def unregister_server(path: str | os.PathLike) -> None:
    record = side_dir(path) / SERVER_FILE
    try:
        if json.loads(record.read_text(encoding="utf-8")).get("pid") == os.getpid():
            record.unlink(missing_ok=True)
    except (OSError, ValueError):
        pass


def served_by(path: str | os.PathLike) -> dict | None:
    """The record of the live server of the catalog at ``path``, or None when no process that
    serves this very file is running (a killed server's record is ignored, and so is one copied
    along with the side folder, or written by a copy that shares it)."""
    try:
        record = json.loads((side_dir(path) / SERVER_FILE).read_text(encoding="utf-8"))
        pid = int(record["pid"])
        catalog = str(record["catalog"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if catalog != str(Path(path).resolve()):
        return None  # the record of another file sharing this side folder, or of the one copied
    return record if pid != os.getpid() and _alive(pid) else None


# -- the inbox ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inbox:
    """The folder of items waiting for the catalog's writer."""

    dir: Path

    @classmethod
    def of(cls, path: str | os.PathLike) -> Inbox:
        return cls(side_dir(path) / INBOX)

    def new_item(self) -> Path:
        """A hidden folder to write an item into; :meth:`submit` puts it in the inbox."""
        self.dir.mkdir(parents=True, exist_ok=True)
        item = self.dir / f".writing-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        item.mkdir()
        return item

    def submit(self, item: Path) -> str:
        """Rename a finished item into the inbox (one atomic rename); its name."""
        name = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        os.replace(item, self.dir / name)
        return name

    def pending(self) -> list[Path]:
        """Whole items waiting, oldest first."""
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def report_path(self, name: str) -> Path:
        return self.dir / f"{name}{REPORT_SUFFIX}"

    def remove_debris(self) -> int:
        """Delete hidden items whose writing process is gone, and reports nobody collected."""
        if not self.dir.is_dir():
            return 0
        gone = 0
        for p in self.dir.iterdir():
            if p.name.startswith(".writing-"):
                try:
                    pid = int(p.name.split("-")[1])
                except (IndexError, ValueError):
                    pid = -1
                if pid == os.getpid() or _alive(pid):
                    continue
                shutil.rmtree(p, ignore_errors=True)
                gone += 1
            elif p.name.endswith(REPORT_SUFFIX) and time.time() - p.stat().st_mtime > REPORTS_KEPT_S:
                p.unlink(missing_ok=True)
        return gone


# -- staging -----------------------------------------------------------------------------------
def stage(
    cat: Catalog,
    sources: Sequence[str | os.PathLike] | str | os.PathLike,
    encoder,
    out_dir: Path,
    *,
    batch_size: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumbnails: bool = True,
    progress=None,
) -> dict:
    """Plan ``sources`` against ``cat`` (read-only is enough) and encode the new and changed
    files into ``out_dir`` as ``ingest-parts`` takes them in; the job's summary. Decoding runs in
    this process, batch by batch."""
    from .ingest.run import IngestReport, check_encoder, plan_files, read_metadata
    from .ingest.sources import scan_sources
    from .ingest.spark import FORMAT, JOB, ROWS_SCHEMA, EncodeTask, save_scan
    from .progress import reporter

    t0 = time.perf_counter()
    recorded = cat.setting("encoder")
    if recorded not in (None, encoder.id):
        check_encoder(cat, encoder, reembed=False)  # raises: two embedding spaces never mix
    scanned = scan_sources(sources)
    read_metadata(cat, scanned, IngestReport())  # bad manifest values are refused before encoding
    plan = plan_files(cat, scanned, encoder.id)
    time_scan = time.perf_counter() - t0
    save_scan(scanned, out_dir / "scan")
    task = EncodeTask(encoder.id, str(out_dir), batch_size, thumbnails, max_pixels, None, 0)
    (out_dir / "rows").mkdir()
    batches = []
    t1 = time.perf_counter()
    with reporter("stage", "images", progress) as report:
        for s in range(0, len(plan.todo), batch_size):
            chunk = pa.table(
                {
                    "entry": pa.array(plan.todo[s : s + batch_size], pa.int64()),
                    "id": pa.array(plan.todo_ids[s : s + batch_size], pa.int64()),
                    "uri": pa.array([scanned.uris[e] for e in plan.todo[s : s + batch_size]], pa.string()),
                }
            )
            batches.append(task.encode(encoder, chunk))
            report(min(s + batch_size, len(plan.todo)), len(plan.todo))
    rows = pa.Table.from_batches(batches, ROWS_SCHEMA) if batches else ROWS_SCHEMA.empty_table()
    pq.write_table(rows, out_dir / "rows" / "part-0.parquet")
    ok = rows.column("reason").is_null().to_numpy(zero_copy_only=False)
    elapsed = time.perf_counter() - t1
    job = {
        "format": FORMAT,
        "encoder": encoder.id,
        "dim": int(encoder.dim) if ok.any() else None,
        "sources": [s.key for s in scanned.sources],
        "planned_against": str(cat.path),
        "files": len(scanned),
        "todo": int(len(plan.todo)),
        "batch_size": batch_size,
        "thumbnails": thumbnails,
        "max_pixels": max_pixels,
        "master": "local",
        "parallelism": 1,
        "partitions": 0,
        "threads_per_task": 0,
        "time_scan_s": time_scan,
        "time_session_s": 0.0,
        "time_job_s": elapsed,
        "encoded": int(ok.sum()),
        "failed": int((~ok).sum()),
        "images_per_second": len(plan.todo) / elapsed if elapsed > 0 else 0.0,
    }
    write_bytes(out_dir / JOB, json.dumps(job, indent=1).encode("utf-8"))
    return job


def hand_over(
    path: str | os.PathLike,
    sources,
    encoder,
    *,
    batch_size: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumbnails: bool = True,
    progress=None,
    open_wait_s: float = 60.0,
) -> str:
    """Stage ``sources`` for the catalog at ``path``, which another process serves, and submit
    the item to its inbox; the item's name (for :func:`wait_report`)."""
    inbox = Inbox.of(path)
    item = inbox.new_item()
    try:
        cat = open_reading(path, open_wait_s)
        try:
            stage(
                cat,
                sources,
                encoder,
                item,
                batch_size=batch_size,
                max_pixels=max_pixels,
                thumbnails=thumbnails,
                progress=progress,
            )
        finally:
            cat.close()
        return inbox.submit(item)
    except BaseException:
        shutil.rmtree(item, ignore_errors=True)
        raise


def open_reading(path: str | os.PathLike, wait_s: float) -> Catalog:
    """The catalog opened read-only; while the server holds the writer (a few moments at a
    time) the open is retried for up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return Catalog.open(path, read_only=True)
        except CatalogError as e:
            if "lock" not in str(e).lower() or time.monotonic() > deadline:
                raise
        time.sleep(POLL_S)


def wait_report(
    path: str | os.PathLike, name: str, timeout_s: float, what: str = "the staged images"
) -> dict:
    """The server's report on item ``name`` (``what`` it holds), once it has taken the item in;
    IngestError when none comes within ``timeout_s`` (the item stays queued for later)."""
    inbox = Inbox.of(path)
    report = inbox.report_path(name)
    deadline = time.monotonic() + timeout_s
    while not report.exists():
        if time.monotonic() > deadline:
            raise IngestError(
                f"the server has not taken {what} in yet (item {name} of {inbox.dir}); "
                "they stay queued and are taken in when it can write the catalog"
            )
        if served_by(path) is None and (inbox.dir / name).exists():
            raise IngestError(
                f"the server stopped before taking {what} in; it waits in {inbox.dir / name} "
                "and are taken in when it starts again (or run `clip-branches ingest` again once it is stopped)"
            )
        time.sleep(POLL_S)
    body = json.loads(report.read_text(encoding="utf-8"))
    report.unlink(missing_ok=True)
    if body.get("error"):
        raise IngestError(f"the server could not take {what} in: {body['error']}")
    return body


# -- concept changes handed to the server ---------------------------------------------------
OP_FILE = "op.json"
OPS = ("save", "rename", "delete", "retrain", "seen")


def submit_op(path: str | os.PathLike, op: dict) -> str:
    """Hand a change of saved concepts to the server of the catalog at ``path`` (see
    :func:`apply_op`); the item's name (for :func:`wait_report`)."""
    inbox = Inbox.of(path)
    item = inbox.new_item()
    write_bytes(item / OP_FILE, json.dumps(op).encode("utf-8"))
    return inbox.submit(item)


def apply_op(cat: Catalog, op: dict) -> dict:
    """Apply a concept change to the writable ``cat``: ``save`` (``doc``: an export of the
    concept, ``replace``), ``rename`` (``name``, ``new_name``), ``delete``, ``retrain`` and
    ``seen`` (``name``). Returns the concept as saved (``{}`` for delete)."""
    from .concepts import check_name, read_export
    from .concepts import save as save_concept

    kind = op.get("op")
    if kind not in OPS:
        raise CatalogError(f"unknown concept change {kind!r}; one of {', '.join(OPS)}")
    if kind == "save":
        concept, space = read_export(op["doc"])
        current = cat.setting("codes_space")
        if not space:  # fitted on codes whose space was not recorded yet: only if nothing changed since
            space = None if current is None or op.get("fitted_on") == current else "codes:unverified"
        return save_concept(cat.store, concept, replace=bool(op.get("replace")), space=space).to_json()
    name = check_name(op.get("name"))
    if kind == "rename":
        return cat.concepts.rename(name, op.get("new_name")).to_json()
    if kind == "delete":
        cat.concepts.delete(name)
        return {}
    if kind == "retrain":
        return cat.concepts.retrain(name).to_json()
    return {"seen_id": cat.concepts.mark_seen(name)}


# -- adoption ----------------------------------------------------------------------------------
def apply_pending(cat: Catalog, inbox: Inbox) -> list[dict]:
    """Take every whole item of ``inbox`` into the writable ``cat``, oldest first; a report per
    item, also written beside it for the process that submitted it. An item that cannot be
    taken in (damaged, from another encoder) gets a report with the error and is dropped."""
    from .codes.pipeline import code_new_images
    from .ingest.parts import ingest_parts

    reports = []
    for item in inbox.pending():
        try:
            if (item / OP_FILE).exists():
                body = apply_op(cat, json.loads((item / OP_FILE).read_text(encoding="utf-8")))
            else:
                body = ingest_parts(cat, item).to_json()
        except Exception as e:  # reported to whoever handed it over; its files can be staged again
            body = {"error": f"{type(e).__name__}: {e}" if not isinstance(e, CatalogError) else str(e)}
        body["item"] = item.name
        write_bytes(inbox.report_path(item.name), json.dumps(body).encode("utf-8"))
        shutil.rmtree(item, ignore_errors=True)
        reports.append(body)
    coded = code_new_images(cat)  # repairs a run killed between its commit and its codes
    if coded and reports:
        reports[-1]["coded"] = reports[-1].get("coded", 0) + coded
    return reports
