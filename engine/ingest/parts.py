"""The catalog side of Spark ingestion: :func:`spark_ingest` plans against the catalog, runs
the encoding job (:mod:`engine.ingest.spark`) into a staging folder and takes its output in with
:func:`ingest_parts`, which adopts the staged parts and thumbnails as a local run would have
written them, through the same :class:`~engine.ingest.run.IngestRun`."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..catalog import Catalog
from ..errors import IngestError, ReadOnlyError
from ..limits import DEFAULT_MAX_PIXELS
from ..store.files import link_or_copy
from .embeddings import PartStore, read_part
from .imageio import thumbnail_path
from .run import (
    BatchWriter,
    IngestReport,
    IngestRun,
    Plan,
    check_args,
    check_encoder,
    plan_files,
    read_metadata,
)
from .sources import scan_sources
from .spark import (
    DEFAULT_MASTER,
    NOT_STAGED,
    EncoderRecord,
    check_job_args,
    first_line,
    load_scan,
    part_dim,
    read_job,
    read_rows,
    run_job,
)


def ingest_parts(cat: Catalog, out_dir: str | os.PathLike, *, reembed: bool = False) -> IngestReport:
    """Take the output of :func:`encode_with_spark` into ``cat``, as a local ingestion of the
    same scan would leave it: the same ids, rows, metadata, skipped files, removals, parts and
    thumbnails. Every new or changed file is recorded in one transaction; files the catalog
    already holds unchanged are left alone, so a second call adds nothing. ``reembed`` as in
    :func:`engine.ingest.ingest`.
    """
    t0 = time.perf_counter()
    if cat.read_only:
        raise ReadOnlyError(f"{cat.path} is open read-only; open it with read_only=False to ingest")
    out_dir = Path(out_dir)
    job = read_job(out_dir)
    scanned = load_scan(out_dir / "scan")
    rows = read_rows(out_dir)
    record = EncoderRecord(job["encoder"], int(job["dim"] or 0))
    report = IngestReport(
        encoder=record.id, batch_size=int(job["batch_size"]), workers=int(job["parallelism"])
    )
    check_encoder(cat, record, reembed)
    run = IngestRun(cat, scanned, record, report)
    t1 = time.perf_counter()
    missing = _take_in(cat, run.parts, run.writer, run.plan, rows, out_dir, bool(job["thumbnails"]))
    report.time_write_s = time.perf_counter() - t1
    run.finish([(scanned.uris[e], NOT_STAGED) for e in missing])
    report.time_scan_s = float(job["time_scan_s"])
    report.time_embed_s = float(job["time_job_s"])
    report.images_per_second = float(job.get("images_per_second", 0.0))
    report.time_decode_s = float(job.get("time_decode_s", 0.0))
    report.time_preprocess_s = float(job.get("time_preprocess_s", 0.0))
    report.time_thumbs_s = float(job.get("time_thumb_s", 0.0))
    report.time_encode_s = float(job.get("time_encode_s", 0.0))
    return run.close(t0)


def _take_in(
    cat: Catalog,
    store: PartStore,
    writer: BatchWriter,
    plan: Plan,
    rows: pa.Table,
    out_dir: Path,
    thumbnails: bool,
) -> np.ndarray:
    """Bring the staged parts and thumbnails of the plan's files in and commit their rows;
    returns the entries the plan wants that the output lacks."""
    entry = rows.column("entry").to_numpy()
    if len(np.unique(entry)) != len(entry):
        raise IngestError(f"the rows under {out_dir / 'rows'} list a file twice; run the encoding again")
    position = np.full(len(writer.scanned), -1, np.int64)
    position[plan.todo] = np.arange(len(plan.todo))
    if len(entry) and (entry.min() < 0 or entry.max() >= len(position)):
        raise IngestError(
            f"the rows under {out_dir / 'rows'} do not belong to its scan; run the encoding again"
        )
    keep = position[entry] >= 0
    rows = rows.filter(pa.array(keep))
    index = position[entry[keep]]
    if len(index) == 0:
        return plan.todo
    ok = rows.column("reason").is_null().to_numpy(zero_copy_only=False)
    staged = rows.column("id").to_numpy()
    planned = plan.todo_ids[index]
    names = rows.column("part").to_pylist()
    parts: list[tuple[int, str, np.ndarray]] = []
    try:
        by_part: dict[str, list[int]] = {}
        for k in np.flatnonzero(ok).tolist():
            by_part.setdefault(names[k], []).append(k)
        for name, ks in sorted(by_part.items()):
            parts.append(_bring_part(store, out_dir / "embeddings" / name, staged[ks], planned[ks]))
        if thumbnails:
            for s, p in zip(staged[ok].tolist(), planned[ok].tolist(), strict=True):
                _place_thumbnail(thumbnail_path(out_dir, s), thumbnail_path(cat.side_dir, p))
    except BaseException:
        for _, name, _ in parts:
            (store.dir / name).unlink(missing_ok=True)
        raise
    width = rows.column("width").to_numpy()
    height = rows.column("height").to_numpy()
    writer.commit(index, ok, width, height, rows.column("reason").to_pylist(), parts)
    return plan.todo[np.setdiff1d(np.arange(len(plan.todo)), index)]


def _bring_part(
    store: PartStore, src: Path, staged: np.ndarray, planned: np.ndarray
) -> tuple[int, str, np.ndarray]:
    """The staged part ``src`` in the store, for the rows whose staged ids are ``staged`` and
    whose catalog ids are ``planned``: linked as it is when it holds exactly those rows under
    those ids, else rewritten. Returns (part_id, file name, ids in the part)."""
    try:
        file_ids = pq.read_table(src, columns=["id"]).column("id").to_numpy()
        dim = part_dim(src)
    except (OSError, pa.ArrowException, KeyError) as e:
        raise IngestError(
            f"embedding part {src} is missing or unreadable ({first_line(e)}); run the encoding again"
        ) from None
    if np.array_equal(np.sort(file_ids), np.sort(staged)) and np.array_equal(staged, planned):
        part_id, name = store.adopt(src)
        return part_id, name, file_ids
    emb = read_part(src, staged, dim)
    part_id, name = store.write(planned, emb)
    return part_id, name, planned


def _place_thumbnail(src: Path, dst: Path) -> None:
    """Put the staged thumbnail ``src`` at ``dst`` (a link, else a copy), or remove ``dst``
    when the image needs none, as local ingestion does."""
    if not src.exists():
        dst.unlink(missing_ok=True)
        return
    link_or_copy(src, dst, durable=False)


def spark_ingest(
    cat: Catalog,
    sources: Sequence[str | os.PathLike] | str | os.PathLike,
    encoder_id: str,
    *,
    spark=None,
    master: str = DEFAULT_MASTER,
    partitions: int | None = None,
    batch_size: int = 64,
    device: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumbnails: bool = True,
    reembed: bool = False,
    progress: bool = False,
) -> IngestReport:
    """:func:`engine.ingest.ingest` with the encoding done by a Spark job: plan against ``cat``,
    encode the new and changed files with :func:`encode_with_spark` into a staging folder beside
    the catalog, take it in with :func:`ingest_parts`, delete the staging folder.

    The report's worker-side times add up over all tasks; ``time_embed_s`` is the Spark job's
    wall time and ``time_write_s`` the commit's. With nothing to encode, no Spark session starts.
    """
    t0 = time.perf_counter()
    check_args(cat, batch_size, None, max_pixels)
    check_job_args(encoder_id, partitions, batch_size, max_pixels)
    check_encoder(cat, EncoderRecord(encoder_id, 0), reembed)
    scanned = scan_sources(sources)
    read_metadata(cat, scanned, IngestReport())  # refuse bad manifest values before any encoding
    plan = plan_files(cat, scanned, encoder_id)
    time_scan = time.perf_counter() - t0
    root = cat.side_dir / "staging"
    shutil.rmtree(root, ignore_errors=True)  # an interrupted run's: the catalog's writer is this process
    staging = root / f"spark-{uuid.uuid4().hex[:12]}"
    try:
        run_job(
            scanned,
            plan.todo,
            plan.todo_ids,
            staging,
            encoder_id=encoder_id,
            spark=spark,
            master=master,
            partitions=partitions,
            batch_size=batch_size,
            device=device,
            max_pixels=max_pixels,
            thumbnails=thumbnails,
            overwrite=False,
            progress=progress,
            time_scan=time_scan,
            planned_against=str(cat.path),
        )
        report = ingest_parts(cat, staging, reembed=reembed)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report.time_total_s = time.perf_counter() - t0
    return report
