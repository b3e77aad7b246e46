"""A refine round on Spark over a Parquet export, beside the same round on the catalog; prints JSON.

The catalog is ``scripts/bench_scale.py``'s (built, or reused, under ``--dir``), exported once
to Parquet (``Catalog.export_parquet``, reused while its row count matches). For each concept
(tight: the labels of ``scripts/bench_refine.py``; loose: 8 positives from 8 clusters) and each
model, in one run:

* **engine**: ``Catalog.refine`` on the DuckDB catalog, opened read-only, index loaded; the
  median of ``--repeats`` rounds after a warm-up;
* **duckdb_parquet**: the round's SQL run by DuckDB on the export's ``codes.parquet``;
* **spark**: ``engine.spark_refine.refine_on_spark`` on ``--master`` (default ``local[2]``),
  one SparkSession for the run, the whole ranking written to Parquet; the median of
  ``--repeats`` rounds after a warm-up, with its phases.

Each method's ids, in order, are compared with the engine's: ``same_ids`` must be true.

    python scripts/bench_spark_refine.py --rows 10000000 [--master local[2]] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_refine import labelled, meminfo  # noqa: E402
from bench_scale import ensure, loose_labels  # noqa: E402

import engine  # noqa: E402
from engine.spark_refine import refine_on_spark  # noqa: E402

MODELS = ("ensemble", "branch")


def export(path: Path, out: Path, rows: int) -> dict:
    """Export ``path`` to ``out`` unless an export of ``rows`` rows is there already."""
    meta = out / "catalog.json"
    if meta.exists() and json.loads(meta.read_text()).get("rows") == rows:
        return {"cached": True}
    t = time.perf_counter()
    with engine.Catalog.open(path, read_only=True) as cat:
        stats = cat.export_parquet(out, overwrite=out.exists())
    return {"cached": False, "time_s": time.perf_counter() - t, **stats}


def spark_session(master: str):
    from pyspark.sql import SparkSession

    t = time.perf_counter()
    session = (
        SparkSession.builder.master(master)
        .appName("clip-branches-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "4g")
        .config("spark.sql.shuffle.partitions", "8")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session, time.perf_counter() - t


def duckdb_on_parquet(directory: Path, sql: str) -> tuple[np.ndarray, float]:
    con = duckdb.connect()
    try:
        con.execute(f"CREATE VIEW codes AS SELECT * FROM read_parquet('{directory / 'codes.parquet'}')")
        t = time.perf_counter()
        ids = np.array([r[0] for r in con.execute(sql).fetchall()], dtype=np.int64)
        return ids, (time.perf_counter() - t) * 1e3
    finally:
        con.close()


def ranking(out: Path) -> np.ndarray:
    """The ids of a Spark round's ranking, as its Parquet output holds them, by rank."""
    tbl = pq.read_table(out, columns=["id", "rank"])
    return tbl.column("id").to_numpy()[np.argsort(tbl.column("rank").to_numpy(), kind="stable")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench-scale"))
    args = ap.parse_args(argv)
    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"scale-{args.rows}-{args.seed}.duckdb"
    build = ensure(path, args.rows, args.seed)
    out_dir = args.dir / f"export-{args.rows}-{args.seed}"
    exported = export(path, out_dir, args.rows)
    ranked = args.dir / f"ranking-{args.rows}-{args.seed}"
    session, t_session = spark_session(args.master)
    results = {}
    try:
        with engine.Catalog.open(path, read_only=True) as cat:
            cat.block_index()
            tight = labelled(cat, args.seed)
            concepts = {
                "tight": {"positives": tight["positives"].tolist(), "negatives": tight["negatives"].tolist()},
                "loose": loose_labels(cat, args.seed),
            }
            for concept, lab in concepts.items():
                for model in MODELS:
                    kw = {"model": model, "random_state": 0}
                    runs = [
                        cat.refine(lab["positives"], lab["negatives"], **kw) for _ in range(args.repeats + 1)
                    ]
                    ref = runs[-1]
                    spark_runs = []
                    for _ in range(args.repeats + 1):
                        spark_runs.append(
                            refine_on_spark(
                                out_dir,
                                lab["positives"],
                                lab["negatives"],
                                spark=session,
                                out=ranked,
                                overwrite=True,
                                **kw,
                            )
                        )
                    sp = spark_runs[-1]
                    spark_ids = ranking(ranked)
                    duck_ids, duck_ms = duckdb_on_parquet(out_dir, ref.sql)
                    phases = (
                        "time_train_ms",
                        "time_query_ms",
                        "time_write_ms",
                        "time_top_ms",
                        "time_total_ms",
                    )
                    results[f"{model}_{concept}"] = {
                        "results": len(ref.ids),
                        "engine_ms": float(np.median([r.stats["time_total_ms"] for r in runs[1:]])),
                        "duckdb_parquet_ms": duck_ms,
                        "duckdb_parquet_same_ids": bool(np.array_equal(duck_ids, ref.ids)),
                        "spark": {
                            k: float(np.median([r.stats[k] for r in spark_runs[1:]]))
                            for k in phases
                            if k in sp.stats
                        }
                        | {"row_groups_read": sp.stats.get("row_groups_read"), "count": sp.count},
                        "spark_same_sql": sp.sql == ref.sql,
                        "spark_same_ids": bool(np.array_equal(spark_ids, ref.ids)),
                    }
    finally:
        session.stop()
        shutil.rmtree(ranked, ignore_errors=True)
    out = {
        "benchmark": "spark_refine",
        "rows": args.rows,
        "master": args.master,
        "repeats": args.repeats,
        "machine": {"cores": os.cpu_count(), **meminfo()},
        "build": build,
        "export": exported,
        "spark_session_start_s": t_session,
        "rounds": results,
        "spark_over_engine": {k: r["spark"]["time_total_ms"] / r["engine_ms"] for k, r in results.items()},
        "all_same_ids": all(r["spark_same_ids"] and r["duckdb_parquet_same_ids"] for r in results.values()),
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
