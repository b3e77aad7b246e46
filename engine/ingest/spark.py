"""Distributed ingestion: Spark workers encode the images, the catalog takes their output in.

Two steps, which may run on different machines:

1. :func:`encode_with_spark` is the Spark driver. It scans the sources with the code local
   ingestion uses (:func:`engine.ingest.sources.scan_sources`), plans ids (against a catalog, or as for
   an empty one), and runs ``mapInArrow`` over the work list: each task decodes its files with
   :mod:`engine.ingest.imageio` (files that cannot be used become rows with a reason), encodes them in
   batches with an encoder loaded once per worker process, and writes one float16 part per
   batch, in the catalog's own part format, plus thumbnails. Spark writes the per-file rows.
2. :func:`ingest_parts` plans the scan against the catalog exactly as
   :func:`engine.ingest.ingest` does (the same ids, metadata and skipped files), brings the
   parts in under the catalog's part names (hard links when they already carry the planned ids,
   rewritten otherwise) and records every row in one transaction through the ingestion's own
   writer; removals and clean-up follow as in a local run. Files the catalog already holds
   unchanged are left alone, so taking the same output in twice adds nothing.

:func:`spark_ingest` does both for a catalog at hand. The output folder::

    job.json                      written last: the job is complete (encoder, dim, counts, times)
    scan/                         the scan: files.parquet, sources.json, manifest-NNN.parquet
    work.parquet                  seq, batch, entry, id, uri of each file to encode
    embeddings/part-<id>.parquet  id int64, embedding fixed_size_list<float16>[dim]
    thumbs/<shard>/<id>.jpg       thumbnails of images larger than 256 px
    rows/*.parquet                entry, id, width, height, part, reason, worker-side seconds

PySpark (with pandas, which its Arrow functions require) and a Java runtime are needed only
here, and are imported when a job starts. Workers must reach ``out_dir`` and the images under
the same paths, as local mode and a shared file system do.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..catalog import Catalog
from ..errors import IngestError
from ..limits import DEFAULT_MAX_PIXELS
from ..store.files import write_bytes
from .embeddings import write_part_file
from .imageio import DecodeDataset, decoded_batches
from .local import encode_batch
from .run import plan_files
from .sources import ManifestRows, ScannedFiles, Source, scan_sources

FORMAT = 1
JOB = "job.json"
DEFAULT_MASTER = "local[4]"
ROWS_SCHEMA = pa.schema(
    [
        ("entry", pa.int64()),
        ("id", pa.int64()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("part", pa.string()),
        ("reason", pa.string()),
        ("t_decode", pa.float64()),
        ("t_preprocess", pa.float64()),
        ("t_thumb", pa.float64()),
        ("t_encode", pa.float64()),
        ("t_write", pa.float64()),
    ]
)
ROWS_DDL = (
    "entry long, id long, width int, height int, part string, reason string, t_decode double, "
    "t_preprocess double, t_thumb double, t_encode double, t_write double"
)
NOT_STAGED = "not in the Spark job's output (the catalog changed since it was planned); ingest again"


@dataclass(frozen=True)
class EncoderRecord:
    """What the catalog records about the encoder of staged embeddings."""

    id: str
    dim: int


# -- the Spark session ------------------------------------------------------------------------
def spark_session(
    master: str = DEFAULT_MASTER, *, progress: bool = False, app_name: str = "clip-branches-ingest"
):
    """A Spark session whose Python workers run this interpreter (unless ``PYSPARK_PYTHON``
    says otherwise). :class:`IngestError` when PySpark, pandas or Java is missing."""
    SparkSession = _spark_session_class()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        session = (
            SparkSession.builder.master(master)
            .appName(app_name)
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "true" if progress else "false")
            .getOrCreate()
        )
    except Exception as e:
        raise IngestError(
            f"Spark could not start with master {master!r} ({first_line(e)}); it needs a Java 17+ "
            "runtime on PATH or in JAVA_HOME"
        ) from None
    session.sparkContext.setLogLevel("ERROR")
    return session


def _spark_session_class():
    try:
        import pandas  # noqa: F401  (PySpark's Arrow functions refuse to run without it)
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise IngestError(
            f"distributed ingestion needs PySpark with pandas ({e}); install them with "
            "pip install 'pyspark[sql]>=4' (Spark also needs a Java 17+ runtime)"
        ) from None
    return SparkSession


@contextlib.contextmanager
def _session(spark, master: str, progress: bool):
    """``spark`` if given, else the active session, else a new one that is stopped afterwards."""
    if spark is not None:
        yield spark
        return
    active = _spark_session_class().getActiveSession()
    if active is not None:
        yield active
        return
    session = spark_session(master, progress=progress)
    try:
        yield session
    finally:
        session.stop()


def threads_per_task(session) -> int:
    """Torch threads per task: the machine's cores shared among local mode's task slots; on a
    cluster, ``spark.task.cpus``."""
    sc = session.sparkContext
    if sc.master.startswith("local"):
        return max(1, (os.cpu_count() or 1) // max(1, sc.defaultParallelism))
    return max(1, int(sc.getConf().get("spark.task.cpus", "1")))


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__


def _worker_error(e: BaseException) -> str:
    """The last line of a worker's traceback, which names the Python exception."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("at ")]
    errors = [ln for ln in lines if "Error" in ln.split(":")[0] or "Exception" in ln.split(":")[0]]
    return (errors[-1] if errors else lines[-1] if lines else type(e).__name__)[:500]


# -- the workers ------------------------------------------------------------------------------
_worker_encoders: dict[tuple, Any] = {}  # per Python worker process, which Spark reuses across tasks


def _worker_encoder(encoder_id: str, device: str | None, batch_size: int, threads: int):
    key = (encoder_id, device, batch_size)
    encoder = _worker_encoders.get(key)
    if encoder is None:
        from ..encoders import load_encoder

        encoder = load_encoder(encoder_id, device=device, batch_size=batch_size)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)
        _worker_encoders[key] = encoder
    return encoder


@dataclass(frozen=True)
class EncodeTask:
    """What ``mapInArrow`` runs on each partition of the work list (``seq, batch, entry, id,
    uri``, whole batches sorted by ``seq``): it yields one :data:`ROWS_SCHEMA` batch per batch
    and writes its part and thumbnails under ``out_dir``."""

    encoder_id: str
    out_dir: str
    batch_size: int
    thumbnails: bool
    max_pixels: int
    device: str | None
    threads: int

    def __call__(self, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for chunk in _by_batch(batches):  # an empty partition loads no model
            yield self.encode(
                _worker_encoder(self.encoder_id, self.device, self.batch_size, self.threads), chunk
            )

    def encode(self, encoder, chunk: pa.Table) -> pa.RecordBatch:
        out = Path(self.out_dir)
        entries = chunk.column("entry").to_numpy()
        ids = chunk.column("id").to_numpy()
        dataset = DecodeDataset(
            chunk.column("uri").to_pylist(),
            ids,
            encoder.preprocess,
            out if self.thumbnails else None,
            self.max_pixels,
        )
        batch = next(decoded_batches(dataset, len(dataset), 0))
        t0 = time.perf_counter()
        emb = encode_batch(encoder, batch)
        t1 = time.perf_counter()
        ok = batch.ok
        part = None
        if ok.any():
            part = f"part-{int(ids[ok][0]):012d}.parquet"
            write_part_file(out / "embeddings" / part, ids[ok], emb)
        t2 = time.perf_counter()
        n = len(ids)

        def spread(total: float) -> pa.Array:
            return pa.array(np.full(n, total / n), pa.float64())

        return pa.RecordBatch.from_arrays(
            [
                pa.array(entries, pa.int64()),
                pa.array(ids, pa.int64()),
                pa.array(batch.width, pa.int32()),
                pa.array(batch.height, pa.int32()),
                pa.array([part if good else None for good in ok], pa.string()),
                pa.array(batch.reasons, pa.string()),
                spread(batch.t_decode),
                spread(batch.t_preprocess),
                spread(batch.t_thumb),
                spread(t1 - t0),
                spread(t2 - t1),
            ],
            schema=ROWS_SCHEMA,
        )


def _by_batch(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    """The rows of ``batches`` (sorted by ``seq``) grouped by their ``batch`` column."""
    pending = None
    for rb in batches:
        table = pa.Table.from_batches([rb])
        pending = table if pending is None else pa.concat_tables([pending, table])
        starts = np.flatnonzero(np.diff(pending.column("batch").to_numpy())) + 1
        begin = 0
        for end in starts.tolist():  # every group but the last is complete
            yield pending.slice(begin, end - begin)
            begin = end
        pending = pending.slice(begin)
    if pending is not None and pending.num_rows:
        yield pending


# -- the driver -------------------------------------------------------------------------------
def encode_with_spark(
    sources: Sequence[str | os.PathLike] | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    encoder_id: str,
    catalog: Catalog | str | os.PathLike | None = None,
    spark=None,
    master: str = DEFAULT_MASTER,
    partitions: int | None = None,
    batch_size: int = 64,
    device: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumbnails: bool = True,
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Encode the image files of ``sources`` (folders, manifests) with Spark workers into
    ``out_dir`` (see the module docstring for its layout); returns the job summary that is also
    written to ``out_dir/job.json``.

    With ``catalog`` (an open catalog or a path, opened read-only) only the files that catalog
    lacks or holds changed are encoded, under the ids its ingestion would give them; without,
    every file is, with ids as in an empty catalog. :func:`ingest_parts` takes the output in
    either way. ``spark``: a session to use (its Python workers must import ``engine``); else
    the active one, else one on ``master`` that is stopped at the end. ``partitions``: tasks
    (default: two per task slot, at most one per batch).
    """
    check_job_args(encoder_id, partitions, batch_size, max_pixels)
    t0 = time.perf_counter()
    scanned = scan_sources(sources)
    if catalog is None:
        todo = np.arange(len(scanned), dtype=np.int64)
        ids, planned_against = todo.copy(), None
    elif isinstance(catalog, Catalog):
        plan = plan_files(catalog, scanned, encoder_id)
        todo, ids, planned_against = plan.todo, plan.todo_ids, str(catalog.path)
    else:
        with Catalog.open(catalog, read_only=True) as cat:
            plan = plan_files(cat, scanned, encoder_id)
        todo, ids, planned_against = plan.todo, plan.todo_ids, str(catalog)
    time_scan = time.perf_counter() - t0
    return run_job(
        scanned,
        todo,
        ids,
        Path(out_dir),
        encoder_id=encoder_id,
        spark=spark,
        master=master,
        partitions=partitions,
        batch_size=batch_size,
        device=device,
        max_pixels=max_pixels,
        thumbnails=thumbnails,
        overwrite=overwrite,
        progress=progress,
        time_scan=time_scan,
        planned_against=planned_against,
    )


def check_job_args(encoder_id: str, partitions: int | None, batch_size: int, max_pixels: int) -> None:
    if not isinstance(encoder_id, str) or ":" not in encoder_id:
        raise IngestError(
            f"encoder id {encoder_id!r} is not of the form 'demo:NAME' or 'open_clip:MODEL/PRETRAINED'"
        )
    checks = [("batch_size", batch_size), ("max_pixels", max_pixels)]
    for name, value in checks + ([("partitions", partitions)] if partitions is not None else []):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise IngestError(f"{name} must be an integer >= 1, got {value!r}")


def run_job(
    scanned: ScannedFiles,
    todo: np.ndarray,
    ids: np.ndarray,
    out_dir: Path,
    *,
    encoder_id: str,
    spark,
    master: str,
    partitions: int | None,
    batch_size: int,
    device: str | None,
    max_pixels: int,
    thumbnails: bool,
    overwrite: bool,
    progress: bool,
    time_scan: float,
    planned_against: str | None,
) -> dict:
    out_dir = out_dir.absolute()
    _prepare(out_dir, overwrite)
    save_scan(scanned, out_dir / "scan")
    # Batches are runs of batch_size files in plan order, as in a local run, so each part holds
    # the rows of the local run's part and the encoder sees the same batches.
    seq = np.arange(len(todo), dtype=np.int64)
    work = pa.table(
        {
            "seq": seq,
            "batch": seq // batch_size,
            "entry": pa.array(todo, pa.int64()),
            "id": pa.array(ids, pa.int64()),
            "uri": pa.array([scanned.uris[e] for e in todo], pa.string()),
        }
    )
    pq.write_table(work, out_dir / "work.parquet")
    job = {
        "format": FORMAT,
        "encoder": encoder_id,
        "dim": None,
        "sources": [s.key for s in scanned.sources],
        "planned_against": planned_against,
        "files": len(scanned),
        "todo": len(todo),
        "batch_size": batch_size,
        "thumbnails": thumbnails,
        "max_pixels": max_pixels,
        "master": None,
        "parallelism": 0,
        "partitions": 0,
        "threads_per_task": 0,
        "time_scan_s": time_scan,
        "time_session_s": 0.0,
        "time_job_s": 0.0,
    }
    if len(todo) == 0:
        (out_dir / "rows").mkdir()
        pq.write_table(ROWS_SCHEMA.empty_table(), out_dir / "rows" / "part-0.parquet")
    else:
        t_session = time.perf_counter()
        with _session(spark, master, progress) as session:
            t0 = time.perf_counter()
            job["time_session_s"] = t0 - t_session
            sc = session.sparkContext
            n_parts = min(partitions or 2 * sc.defaultParallelism, math.ceil(len(todo) / batch_size))
            threads = threads_per_task(session)
            task = EncodeTask(encoder_id, str(out_dir), batch_size, thumbnails, max_pixels, device, threads)
            job.update(
                master=sc.master,
                parallelism=sc.defaultParallelism,
                partitions=n_parts,
                threads_per_task=threads,
            )
            rows = (
                session.read.parquet(str(out_dir / "work.parquet"))
                .repartitionByRange(n_parts, "batch")
                .sortWithinPartitions("seq")
                .mapInArrow(task, ROWS_DDL)
            )
            try:
                rows.write.mode("overwrite").parquet(str(out_dir / "rows"))
            except Exception as e:
                if not type(e).__module__.startswith(("pyspark", "py4j")):
                    raise
                raise IngestError(f"the Spark encoding job failed: {_worker_error(e)}") from e
            job["time_job_s"] = time.perf_counter() - t0
    rows = read_rows(out_dir)
    ok = rows.column("reason").is_null().to_numpy(zero_copy_only=False)
    parts = sorted(set(rows.column("part").drop_null().to_pylist()))
    if parts:
        job["dim"] = part_dim(out_dir / "embeddings" / parts[0])
    job.update(
        encoded=int(ok.sum()),
        failed=int((~ok).sum()),
        parts=len(parts),
        images_per_second=len(todo) / job["time_job_s"] if job["time_job_s"] > 0 else 0.0,
        **{
            f"time_{k}_s": _column_sum(rows, f"t_{k}")
            for k in ("decode", "preprocess", "thumb", "encode", "write")
        },
    )
    _write_json(out_dir / JOB, job)
    return job


def _column_sum(table: pa.Table, column: str) -> float:
    return float(np.sum(table.column(column).to_numpy())) if table.num_rows else 0.0


def _prepare(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise IngestError(
                f"{out_dir} is not empty; choose a new folder or pass overwrite=True (--overwrite)"
            )
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _write_json(path: Path, obj: dict) -> None:
    write_bytes(path, json.dumps(obj, indent=1).encode("utf-8"))


def part_dim(path: Path) -> int:
    field = pq.read_schema(path).field("embedding")
    if not (pa.types.is_fixed_size_list(field.type) and pa.types.is_float16(field.type.value_type)):
        raise IngestError(
            f"{path} is not an embedding part (embedding is {field.type}, expected "
            "fixed_size_list<halffloat>)"
        )
    return int(field.type.list_size)


# -- the scan, saved ---------------------------------------------------------------------------
def save_scan(scanned: ScannedFiles, directory: Path) -> None:
    """Write ``scanned`` under ``directory`` so :func:`load_scan` gives it back unchanged."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest_row = np.full(len(scanned), -1, np.int64)
    for m in scanned.manifests:
        manifest_row[m.entries] = np.arange(len(m.entries))
    pq.write_table(
        pa.table(
            {
                "uri": pa.array(scanned.uris, pa.string()),
                "file_size": pa.array(scanned.sizes, pa.int64()),
                "file_mtime_ns": pa.array(scanned.mtimes_ns, pa.int64()),
                "source_index": pa.array(scanned.source_index, pa.int32()),
                "manifest_row": manifest_row,
            }
        ),
        directory / "files.parquet",
    )
    for k, m in enumerate(scanned.manifests):
        if m.table.num_columns:
            pq.write_table(m.table, directory / f"manifest-{k:03d}.parquet")
    _write_json(
        directory / "sources.json",
        {
            "sources": [[s.key, s.kind] for s in scanned.sources],
            "problems": [list(p) for p in scanned.problems],
            "unlisted_dirs": scanned.unlisted_dirs,
        },
    )


def load_scan(directory: Path) -> ScannedFiles:
    """The scan :func:`save_scan` wrote."""
    try:
        info = json.loads((directory / "sources.json").read_text(encoding="utf-8"))
        files = pq.read_table(directory / "files.parquet")
    except (OSError, ValueError, pa.ArrowException) as e:
        raise IngestError(
            f"the scan under {directory} is unreadable ({first_line(e)}); run the encoding again"
        ) from None
    sources = [Source(key, kind) for key, kind in info["sources"]]
    scanned = ScannedFiles(
        sources,
        uris=files.column("uri").to_pylist(),
        sizes=files.column("file_size").to_numpy(),
        mtimes_ns=files.column("file_mtime_ns").to_numpy(),
        source_index=files.column("source_index").to_numpy(),
        problems=[tuple(p) for p in info["problems"]],
        unlisted_dirs=list(info["unlisted_dirs"]),
    )
    manifest_row = files.column("manifest_row").to_numpy()
    for k, src in enumerate(i for i, s in enumerate(sources) if s.kind == "manifest"):
        held = np.flatnonzero((scanned.source_index == src) & (manifest_row >= 0))
        entries = held[np.argsort(manifest_row[held], kind="stable")]
        path = directory / f"manifest-{k:03d}.parquet"
        table = pq.read_table(path) if path.exists() else pa.table({})
        scanned.manifests.append(ManifestRows(entries.astype(np.int64), table))
    return scanned


def read_rows(out_dir: Path) -> pa.Table:
    """The per-file rows the workers wrote, as :data:`ROWS_SCHEMA`."""
    try:
        return pq.read_table(out_dir / "rows", schema=ROWS_SCHEMA)
    except (OSError, pa.ArrowException) as e:
        raise IngestError(
            f"the rows under {out_dir / 'rows'} are unreadable ({first_line(e)}); run the encoding again"
        ) from None


def read_job(out_dir: str | os.PathLike) -> dict:
    """The summary of a finished job in ``out_dir``; :class:`IngestError` if there is none."""
    path = Path(out_dir) / JOB
    try:
        job = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IngestError(
            f"{out_dir} holds no finished encoding job (no {JOB}); run the encoding (again)"
        ) from None
    except (OSError, ValueError) as e:
        raise IngestError(f"{path} is unreadable ({first_line(e)}); run the encoding again") from None
    if job.get("format") != FORMAT:
        raise IngestError(f"{path} has format {job.get('format')!r}; this version reads format {FORMAT}")
    return job


# -- the catalog side --------------------------------------------------------------------------
