"""Storage and serving arithmetic for a catalog of N images (default 5 billion); prints JSON.

The per-image and per-row figures are measurements: the catalog bytes, index memory and
per-phase refine times of ``scripts/bench_refine.py`` (its JSON, ``--refine``), and a Parquet
export of the smallest catalog that benchmark built, made here with ``clip-branches export``
(bytes per row of ``codes.parquet`` and ``blocks.parquet``). What is not measurable on one
machine is a parameter with a stated default: rows per shard, raw embedding dims, metadata
and thumbnail bytes per image, and the network's share of a round.

Serving model: the catalog is split into shards by the top levels of one k-d tree, each an
ordinary catalog file held in memory by its own process. A round samples and trains once
(the training set is the labels plus a fixed pool of sampled rows, so its time does not grow
with the catalog: the largest measured train time is used), sends the box set to every shard,
and merges the shards' first pages by (votes, distance, position). A shard's query time is a
least-squares line through the measured (rows, query ms) points of at least 10M rows,
evaluated at the shard's row count; all shards run in parallel.

    python scripts/plan_scale.py --images 5e9 --shard-rows 4e7 --refine bench-data/refine.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def parquet_bytes_per_row(catalog: Path, rows: int) -> dict:
    """Export ``catalog`` with the CLI and return bytes per row of each Parquet file."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "export"
        subprocess.run(
            [sys.executable, "-m", "engine", "export", str(catalog), str(out)],
            check=True,
            capture_output=True,
            cwd=ROOT,
        )
        return {p.name: p.stat().st_size / rows for p in sorted(out.glob("*.parquet"))}


def query_line(sizes: list[dict], model: str) -> tuple[float, float]:
    big = [s for s in sizes if s["rows"] >= 10_000_000] or sizes
    rows = np.array([s["rows"] for s in big], dtype=np.float64)
    ms = np.array([s["models"][model]["query_ms"]["median"] for s in big])
    if len(big) == 1:
        return 0.0, float(ms[0] / rows[0])
    slope, icpt = np.polyfit(rows, ms, 1)
    return float(icpt), float(slope)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=lambda s: int(float(s)), default=5_000_000_000)
    ap.add_argument("--shard-rows", type=lambda s: int(float(s)), default=40_000_000)
    ap.add_argument("--shards-per-machine", type=int, default=4, help="2-core shard processes per machine")
    ap.add_argument("--refine", default=str(ROOT / "bench-data" / "refine.json"))
    ap.add_argument(
        "--embedding-dims",
        type=int,
        nargs="+",
        default=[768, 1152],
        help="raw embedding widths kept as float16 (ViT-L-14, SO400M)",
    )
    ap.add_argument("--metadata-bytes", type=float, default=120.0, help="uri, label, caption per image")
    ap.add_argument("--thumbnail-bytes", type=float, default=8_000.0, help="a 256 px JPEG")
    ap.add_argument("--network-ms", type=float, default=10.0, help="fan-out, gather and merge of a round")
    ap.add_argument("--original-bytes", type=float, default=930.0, help="the original system, per image")
    args = ap.parse_args()

    bench = json.loads(Path(args.refine).read_text())
    sizes = bench["sizes"]
    largest = max(sizes, key=lambda s: s["rows"])
    smallest = min(sizes, key=lambda s: s["rows"])
    n = args.images
    catalog_b = largest["catalog_bytes"] / largest["rows"]
    memory_b = largest["index_memory_bytes"] / largest["rows"]
    synth = ROOT / "bench-data" / f"synth_{smallest['rows']}_s{bench.get('seed', 1)}.duckdb"
    parquet = parquet_bytes_per_row(synth, smallest["rows"]) if synth.exists() else {}

    storage = {
        "codes_in_memory": {
            "bytes_per_image": memory_b,
            "total_bytes": memory_b * n,
            "where": "RAM of the shard processes (32 code bytes + 8 id bytes per row)",
        },
        "catalog_files": {
            "bytes_per_image": catalog_b,
            "total_bytes": catalog_b * n,
            "where": "local SSD of the shard machines (DuckDB: codes, blocks, images)",
        },
        "raw_code_bytes": {"bytes_per_image": 32, "total_bytes": 32 * n},
    }
    if parquet:
        pq = sum(parquet.values())
        storage["parquet_export"] = {
            "bytes_per_image": pq,
            "total_bytes": pq * n,
            "files": parquet,
            "where": "object storage; the SQL's ground truth for Spark SQL or Trino",
        }
    for d in args.embedding_dims:
        storage[f"raw_embeddings_{d}d_fp16"] = {
            "bytes_per_image": 2 * d,
            "total_bytes": 2 * d * n,
            "where": "object storage; read to retrain the head or re-index",
        }
    storage["metadata"] = {
        "bytes_per_image": args.metadata_bytes,
        "total_bytes": args.metadata_bytes * n,
        "where": "Parquet by id; read for the results shown",
    }
    storage["thumbnails"] = {
        "bytes_per_image": args.thumbnail_bytes,
        "total_bytes": args.thumbnail_bytes * n,
        "where": "object storage behind a CDN",
    }
    storage["original_system"] = {
        "bytes_per_image": args.original_bytes,
        "total_bytes": args.original_bytes * n,
    }

    shards = math.ceil(n / args.shard_rows)
    rows_per_shard = n / shards
    block_size = 2048
    models = {}
    for m in largest["models"]:
        icpt, slope = query_line(sizes, m)
        query_ms = icpt + slope * rows_per_shard
        train_ms = max(s["models"][m]["train_ms"]["median"] for s in sizes)
        sample_ms = max(s["models"][m]["sample_ms"]["median"] for s in sizes)
        models[m] = {
            "sample_ms": sample_ms,
            "train_ms": train_ms,
            "shard_query_ms": query_ms,
            "query_ms_per_million_rows": slope * 1e6,
            "network_ms": args.network_ms,
            "round_ms": sample_ms + train_ms + query_ms + args.network_ms,
            "one_machine_query_ms": icpt + slope * n,
        }
    report = {
        "benchmark": "plan_scale",
        "images": n,
        "measured_on_rows": sorted(s["rows"] for s in sizes),
        "cores_per_shard": bench.get("cores"),
        "storage": storage,
        "shards": {
            "count": shards,
            "rows_per_shard": rows_per_shard,
            "memory_per_shard_bytes": memory_b * rows_per_shard,
            "machines": math.ceil(shards / args.shards_per_machine),
            "memory_per_machine_bytes": memory_b * rows_per_shard * args.shards_per_machine,
            "cores_per_machine": (bench.get("cores") or 2) * args.shards_per_machine,
            "blocks_per_shard": math.ceil(rows_per_shard / block_size),
            "zone_map_bytes_per_shard": math.ceil(rows_per_shard / block_size) * (64 + 16),
        },
        "refine_round": models,
    }
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
