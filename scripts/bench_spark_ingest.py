"""Benchmark ingestion through Spark workers (local mode) against single-process ingestion; prints JSON.

``--images`` Fashion-MNIST PNGs (``clip-branches demo-data``, half from each split) are ingested
through their labels manifest with the demo encoder into fresh catalogs:

- locally, by :func:`engine.ingest.ingest` in this process, with decoding workers (one per core,
  the CLI's default) and in-process (``workers=0``);
- by :func:`engine.ingest.parts.spark_ingest` on ``local[k]`` for each ``k`` of ``--workers``:
  each configuration starts its own Spark session (timed apart), then ingests twice, *cold* (the
  job starts the Python workers, which import torch and load the model) and *warm* (same
  session, workers already up), ``--repeats`` times. Partitions: ``--partitions-per-worker``
  per task slot. Figures are medians of ``--repeats`` runs (the cold run is one), with the 1-min
  load average when each configuration started: other work on the machine shows there.

images/s is images over the wall time of the whole ingest call (scan, encode, commit); the
ratios divide by the local ingest with decoding workers. Every catalog is compared with the
local one: the same ids, rows and skipped files, and embeddings at most one float16 step apart
(bitwise equal when the worker threads match). Spark tasks get the machine's cores divided
among the task slots as torch threads, so local[k] beyond the core count only adds contention.

    python scripts/bench_spark_ingest.py --images 2000 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import engine
from engine.datasets.demodata import write_fashion_mnist
from engine.encoders import load_encoder
from engine.ingest import ingest
from engine.ingest.embeddings import load_embeddings

ENCODER = "demo:fashion-v1"
ROWS = (
    "SELECT id, uri, source, file_size, file_mtime_ns, width, height, embedding_part, label, split "
    "FROM images ORDER BY id"
)
SKIPPED = "SELECT uri, reason, file_size, file_mtime_ns FROM skipped ORDER BY uri"


def content(path: Path) -> dict:
    with engine.Catalog.open(path, read_only=True) as cat:
        ids, emb = load_embeddings(cat)
        return {
            "rows": cat.store.con.execute(ROWS).fetchall(),
            "skipped": cat.store.con.execute(SKIPPED).fetchall(),
            "ids": ids,
            "emb": emb,
        }


def compare(got: dict, want: dict) -> dict:
    same_ids = got["ids"].tolist() == want["ids"].tolist()
    out = {
        "same_rows": got["rows"] == want["rows"],
        "same_skipped": got["skipped"] == want["skipped"],
        "same_ids": same_ids,
    }
    if same_ids:
        diff = np.abs(got["emb"] - want["emb"])
        step = np.spacing(np.abs(want["emb"]).astype(np.float16)).astype(np.float32)
        out.update(
            max_abs_diff=float(diff.max()),
            within_one_float16_step=bool(np.all(diff <= step)),
            bitwise_equal=bool(np.array_equal(got["emb"], want["emb"])),
        )
    out["equal"] = bool(
        out["same_rows"] and out["same_skipped"] and same_ids and out["within_one_float16_step"]
    )
    return out


def figures(report, n: int) -> dict:
    return {
        "images": report.added,
        "skipped": report.skipped,
        "wall_s": round(report.time_total_s, 2),
        "images_per_second": round(n / report.time_total_s, 1),
        "encode_phase_s": round(report.time_embed_s, 2),
        "encode_phase_images_per_second": round(n / report.time_embed_s, 1) if report.time_embed_s else None,
    }


def median_run(runs: list[dict]) -> dict:
    """The run of median images/s, with every run's figure beside it."""
    ordered = sorted(runs, key=lambda r: r["images_per_second"])
    return {**ordered[len(ordered) // 2], "images_per_second_all": [r["images_per_second"] for r in runs]}


def run_local(manifest: Path, workers: int, args, tmp: Path, n: int) -> tuple[dict, list[Path]]:
    encoder = load_encoder(ENCODER, batch_size=args.batch_size)
    runs, paths = [], []
    load = os.getloadavg()[0]
    for r in range(args.repeats):
        path = tmp / f"local-{workers}-{r}.duckdb"
        with engine.Catalog.create(path) as cat:
            report = ingest(
                cat, [manifest], encoder, batch_size=args.batch_size, workers=workers, progress=False
            )
        runs.append(figures(report, n))
        paths.append(path)
    return {
        "config": f"local, {workers} decoding workers" if workers else "local, in-process",
        "workers": workers,
        "load_average_1min": round(load, 2),
        **median_run(runs),
    }, paths


def run_spark(manifest: Path, k: int, args, tmp: Path, n: int, want: dict) -> dict:
    from engine.ingest.parts import spark_ingest
    from engine.ingest.spark import spark_session, threads_per_task

    t0 = time.perf_counter()
    spark = spark_session(f"local[{k}]")
    start = time.perf_counter() - t0
    out = {
        "master": f"local[{k}]",
        "parallelism": spark.sparkContext.defaultParallelism,
        "partitions": args.partitions_per_worker * k,
        "threads_per_task": threads_per_task(spark),
        "session_start_s": round(start, 2),
    }
    out["load_average_1min"] = round(os.getloadavg()[0], 2)
    try:
        runs = []
        for r in range(1 + args.repeats):
            path = tmp / f"spark-{k}-{r}.duckdb"
            with engine.Catalog.create(path) as cat:
                report = spark_ingest(
                    cat,
                    [manifest],
                    ENCODER,
                    spark=spark,
                    partitions=out["partitions"],
                    batch_size=args.batch_size,
                )
            runs.append({**figures(report, n), "catalog": compare(content(path), want)})
    finally:
        spark.stop()
    out["cold"] = runs[0]
    out["warm"] = median_run(runs[1:])
    out["all_equal"] = all(r["catalog"]["equal"] for r in runs)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000, help="Fashion-MNIST PNGs (half from each split)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="k of each local[k] run")
    p.add_argument("--partitions-per-worker", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="runs per local configuration and warm Spark runs")
    p.add_argument(
        "--data",
        type=Path,
        default=Path(tempfile.gettempdir()) / "clip-branches-bench",
        help="where the PNGs are written (kept between runs)",
    )
    args = p.parse_args(argv)
    load_start = os.getloadavg()
    manifest = write_fashion_mnist(args.data / f"fashion-{args.images}", limit=args.images // 2)
    n = args.images
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as tmp:
        tmp = Path(tmp)
        local, paths = run_local(manifest, os.cpu_count() or 1, args, tmp, n)
        want = content(paths[0])
        in_process, paths0 = run_local(manifest, 0, args, tmp, n)
        local["catalog"] = compare(content(paths[-1]), want)
        in_process["catalog"] = compare(content(paths0[0]), want)
        spark = [run_spark(manifest, k, args, tmp, n, want) for k in args.workers]
    base = local["images_per_second"]
    ratios = {
        s["master"]: {
            "cold": round(s["cold"]["images_per_second"] / base, 2),
            "warm": round(s["warm"]["images_per_second"] / base, 2),
        }
        for s in spark
    }
    one = next((s for s in spark if s["parallelism"] == 1), None)
    scaling = (
        {
            s["master"]: round(
                s["warm"]["encode_phase_images_per_second"] / one["warm"]["encode_phase_images_per_second"], 2
            )
            for s in spark
        }
        if one
        else None
    )
    import pyspark
    import torch

    result = {
        "images": n,
        "encoder": ENCODER,
        "batch_size": args.batch_size,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "pyspark": pyspark.__version__,
        "torch": torch.__version__,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "local": [local, in_process],
        "spark": spark,
        "spark_vs_local_with_workers": ratios,
        "spark_encode_phase_scaling_vs_local1_warm": scaling,
        "all_catalogs_equal": all(s["all_equal"] for s in spark)
        and in_process["catalog"]["equal"]
        and local["catalog"]["equal"],
    }
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
