"""Local ingestion: decode in worker processes, encode in this one (:func:`ingest`)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np

from ..catalog import Catalog
from ..encoders import Encoder
from ..errors import IngestError
from ..limits import DEFAULT_MAX_PIXELS
from ..progress import Progress, reporter
from .imageio import DecodeDataset, DecodedBatch, decoded_batches
from .run import BatchWriter, IngestReport, IngestRun, check_args, check_encoder
from .sources import scan_sources


def ingest(
    cat: Catalog,
    sources: Sequence[str | os.PathLike] | str | os.PathLike,
    encoder: Encoder,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    progress: Progress = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    thumbnails: bool = True,
    reembed: bool = False,
) -> IngestReport:
    """Bring the catalog up to date with the image files of ``sources`` (folders, manifests).

    New files get ids after the largest one; changed files are re-embedded under their id;
    files deleted from a source folder or no longer listed in a manifest are removed; files
    that cannot be decoded are listed in the report and the ``skipped`` table and retried only
    once they change. ``workers`` decoding processes (default: one per core; 0 decodes in
    this process). ``progress``: a display on stderr, False, or ``callable(done, total)`` in images
    (see :mod:`engine.progress`).
    ``reembed`` allows an encoder other than the catalog's: every file in ``sources`` is then
    embedded again (the head and index must be rebuilt afterwards).
    """
    t0 = time.perf_counter()
    check_args(cat, batch_size, workers, max_pixels)
    report = IngestReport(encoder=encoder.id, batch_size=batch_size)
    check_encoder(cat, encoder, reembed)
    run = IngestRun(cat, scan_sources(sources), encoder, report)
    plan, scanned = run.plan, run.scanned
    report.time_scan_s = time.perf_counter() - t0

    workers = _default_workers(len(plan.todo), batch_size) if workers is None else workers
    report.workers = workers
    dataset = DecodeDataset(
        [scanned.uris[e] for e in plan.todo],
        plan.todo_ids,
        encoder.preprocess,
        cat.side_dir if thumbnails else None,
        max_pixels,
    )
    _embed_all(dataset, encoder, run.writer, batch_size, workers, progress, report)
    run.finish()
    return run.close(t0)


def _default_workers(n_files: int, batch_size: int) -> int:
    """One decoding process per core (at most 8): with a slow encoder they fill their prefetch
    queue and sleep, with a fast one they are the bottleneck and every core helps. None for a
    batch or two, where starting processes costs more than it saves."""
    if n_files <= 2 * batch_size:
        return 0
    return max(1, min(8, os.cpu_count() or 1))


def _embed_all(
    dataset: DecodeDataset,
    encoder: Encoder,
    writer: BatchWriter,
    batch_size: int,
    workers: int,
    progress: Progress,
    report: IngestReport,
) -> None:
    total = len(dataset)
    if total == 0:
        return
    bar = reporter("ingest", "img", progress)
    t_start = time.perf_counter()
    done = 0
    bar(done, total)
    batches = decoded_batches(dataset, batch_size, workers)
    try:
        while True:
            t0 = time.perf_counter()
            batch = next(batches, None)
            t1 = time.perf_counter()
            if batch is None:
                break
            emb = encode_batch(encoder, batch)
            t2 = time.perf_counter()
            writer.write(batch, emb)
            t3 = time.perf_counter()
            report.time_wait_s += t1 - t0
            report.time_encode_s += t2 - t1
            report.time_write_s += t3 - t2
            report.time_decode_s += batch.t_decode
            report.time_preprocess_s += batch.t_preprocess
            report.time_thumbs_s += batch.t_thumb
            done += len(batch.index)
            bar(done, total)
    finally:
        batches.close()
        bar.close()
        report.time_embed_s = time.perf_counter() - t_start
        report.images_per_second = done / report.time_embed_s if report.time_embed_s > 0 else 0.0


def encode_batch(encoder: Encoder, batch: DecodedBatch) -> np.ndarray:
    """float32 (n_ok, dim) embeddings of the batch's decoded images."""
    n_ok = int(batch.ok.sum())
    if n_ok == 0:
        return np.zeros((0, encoder.dim), np.float32)
    emb = np.asarray(encoder.encode_images(batch.pixels), dtype=np.float32)
    if emb.shape != (n_ok, encoder.dim):
        raise IngestError(
            f"encoder {encoder.id} returned shape {emb.shape} for {n_ok} images of dim {encoder.dim}"
        )
    if not np.isfinite(emb).all():
        raise IngestError(f"encoder {encoder.id} returned non-finite embeddings; check the model weights")
    return emb
