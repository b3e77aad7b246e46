"""Scale, measured: build, open and query one large catalog through the public API; prints JSON.

The catalog is built (or reused, when one of the same rows and seed is under ``--dir``) the
way a user would build it: ``Catalog.create``, ``add_codes`` in batches of clustered synthetic
codes with a ``label`` column (``engine.datasets.synth``), then ``build_index``, which compacts
the file. The build runs in a child process so that its peak resident memory is its own.

Then, each in a fresh process opening the file read-only as a restarted server would:

* **cold start**: time from ``Catalog.open`` to the first answered refine, and resident memory
  once the index is loaded (of its own, and of the mapped copy's pages, which are the OS page
  cache shared by every process), with the index read from the memory-mapped copy of the codes
  that the build wrote beside the file (``build_index(mapped=True)``), and again without it,
  read from DuckDB;
* **refine rounds**, ensemble and branch, ``--repeats`` times each after one warm-up, with the
  labels of ``scripts/bench_refine.py`` (40 positives of a median-sized cluster and the 20
  nearest rows outside it: a tight concept) and with 8 positives from 8 different clusters (a
  loose one, whose boxes reach far): medians and the share of rows in touched blocks;
* **k-NN top-60** by image id, medians.

Reported beside the figures: bytes per image of the file, the machine (cores, memory), and the
targets of the scale issue with whether each is met. ``--rows 10000000`` is the size for
checks; ``--rows 100000000`` is the full run (about an hour on 2 cores: run it in the
background under ``timeout``).

    python scripts/bench_scale.py --rows 10000000 [--repeats 5] [--dir /tmp/bench-scale]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_refine import catalog_ok, labelled, meminfo  # noqa: E402

import engine  # noqa: E402
from engine.errors import CatalogError  # noqa: E402
from engine.index import mapped  # noqa: E402

LOOSE_POSITIVES = 8
KNN_K = 60
# The scale issue's targets at 100M rows (ms, s, GB, bytes per image).
TARGETS = {
    "build_peak_rss_gb": 8.0,
    "ensemble_round_ms": 300.0,
    "branch_round_ms": 100.0,
    "knn_ms": 100.0,
    "cold_start_s": 5.0,
    "rss_after_load_gb": 6.0,
    "bytes_per_image": 40.0,
}


def rss_bytes(field: str = "VmRSS") -> int:
    """This process's resident memory now (``VmRSS``), at its peak (``VmHWM``), or now of its
    own (``RssAnon``) or of mapped files (``RssFile``: shared page cache), in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _child(args: list[str]) -> dict:
    """Run this script with ``args`` in a fresh process; its JSON and wall time."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"child {args[0]} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout)
    out["process_wall_s"] = wall
    return out


# -- children ---------------------------------------------------------------------------------
def build_child(path: str, rows: int, seed: int) -> dict:
    from engine.datasets.synth import synth_catalog

    t = time.perf_counter()
    stats = synth_catalog(path, rows, seed=seed, mapped=True)
    return {"build_s": time.perf_counter() - t, "peak_rss_bytes": rss_bytes("VmHWM"), "synth": stats}


def query_child(path: str, labels: dict, repeats: int) -> dict:
    """Cold start, then (with ``repeats``) the refine rounds and k-NN, in this fresh process."""
    t0 = time.perf_counter()
    cat = engine.Catalog.open(path, read_only=True)
    index = cat.block_index()
    loaded = time.perf_counter()
    rss_loaded = {k: rss_bytes(k) for k in ("VmRSS", "RssAnon", "RssFile")}
    first = cat.refine(labels["tight"]["positives"], labels["tight"]["negatives"], random_state=0)
    cold = time.perf_counter() - t0
    out = {
        "rows": index.n_rows,
        "cold_start": {
            "index_from": "mapped copy" if mapped.path_for(Path(path)).exists() else "catalog",
            "open_and_load_s": loaded - t0,
            "first_refine_s": cold,
            "first_round_ms": first.stats["time_total_ms"],
            "rss_after_load_bytes": rss_loaded["VmRSS"],
            "rss_after_load_own_bytes": rss_loaded["RssAnon"],
            "rss_after_load_mapped_bytes": rss_loaded["RssFile"],
        },
        "rounds": {},
    }
    if not repeats:
        cat.close()
        return out
    for concept, lab in labels.items():
        for model in ("ensemble", "branch"):
            stats = []
            for r in range(repeats + 1):  # the first is a warm-up
                res = cat.refine(lab["positives"], lab["negatives"], model=model, random_state=r)
                if r:
                    stats.append(res.stats)
            out["rounds"][f"{model}_{concept}"] = {
                key: float(np.median([s[key] for s in stats]))
                for key in (
                    "time_total_ms",
                    "time_sample_ms",
                    "time_train_ms",
                    "time_query_ms",
                    "share_touched",
                )
            } | {"results": int(np.median([s["results"] for s in stats]))}
    rng = np.random.default_rng(0)
    ids = index.ids[rng.integers(0, index.n_rows, repeats + 1)]
    times = [cat.search(id=int(i), k=KNN_K).stats["time_query_ms"] for i in ids]
    out["knn_top60_ms"] = float(np.median(times[1:]))
    out["rss_end_bytes"] = rss_bytes()
    out["peak_rss_bytes"] = rss_bytes("VmHWM")
    cat.close()
    return out


# -- the run ----------------------------------------------------------------------------------
def ensure(path: Path, rows: int, seed: int) -> dict:
    if path.exists() and mapped.path_for(path).exists():
        try:
            with engine.Catalog.open(path, read_only=True) as cat:
                if catalog_ok(cat, rows, seed):
                    return {"cached": True}
        except CatalogError:
            pass
        path.unlink()
    path.unlink(missing_ok=True)
    return {"cached": False, **_child(["--build-child", str(path), str(rows), str(seed)])}


def loose_labels(cat, seed: int) -> dict:
    """8 positives, one from each of 8 clusters (some clusters twice on a catalog of fewer), and
    no negatives: a concept across clusters."""
    tbl = cat.sql("SELECT id, label FROM images")
    ids, labels = tbl.column("id").to_numpy(), tbl.column("label").to_numpy()
    rng = np.random.default_rng(seed)
    uniq = np.unique(labels)
    clusters = rng.choice(uniq, LOOSE_POSITIVES, replace=len(uniq) < LOOSE_POSITIVES)
    pos = sorted({int(rng.choice(ids[labels == c])) for c in clusters})
    return {"positives": pos, "negatives": []}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/bench-scale"))
    ap.add_argument("--build-child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--query-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.build_child:
        json.dump(
            build_child(args.build_child[0], int(args.build_child[1]), int(args.build_child[2])), sys.stdout
        )
        return 0
    if args.query_child:
        path, labels, repeats = args.query_child
        json.dump(query_child(path, json.loads(labels), int(repeats)), sys.stdout)
        return 0

    args.dir.mkdir(parents=True, exist_ok=True)
    path = args.dir / f"scale-{args.rows}-{args.seed}.duckdb"
    build = ensure(path, args.rows, args.seed)
    with engine.Catalog.open(path, read_only=True) as cat:
        tight = labelled(cat, args.seed)
        labels = {
            "tight": {"positives": tight["positives"].tolist(), "negatives": tight["negatives"].tolist()},
            "loose": loose_labels(cat, args.seed),
        }
    size = path.stat().st_size
    queried = _child(["--query-child", str(path), json.dumps(labels), str(args.repeats)])
    copy = mapped.path_for(path)
    aside = copy.with_name(copy.name + ".aside")
    copy.rename(aside)  # the same catalog without its mapped copy: the index loads from DuckDB
    try:
        unmapped = _child(["--query-child", str(path), json.dumps(labels), "0"])["cold_start"]
    finally:
        aside.rename(copy)
    copy_bytes = copy.stat().st_size
    rounds = queried["rounds"]
    measured = {
        "build_peak_rss_gb": build["peak_rss_bytes"] / 1e9 if "peak_rss_bytes" in build else None,
        "ensemble_round_ms": max(
            rounds["ensemble_tight"]["time_total_ms"], rounds["ensemble_loose"]["time_total_ms"]
        ),
        "branch_round_ms": max(
            rounds["branch_tight"]["time_total_ms"], rounds["branch_loose"]["time_total_ms"]
        ),
        "knn_ms": queried["knn_top60_ms"],
        "cold_start_s": queried["cold_start"]["first_refine_s"],
        "rss_after_load_gb": queried["cold_start"]["rss_after_load_bytes"] / 1e9,
        "rss_after_load_gb_without_copy": unmapped["rss_after_load_bytes"] / 1e9,
        "cold_start_s_without_copy": unmapped["first_refine_s"],
        "bytes_per_image": size / args.rows,
    }
    out = {
        "benchmark": "scale",
        "rows": args.rows,
        "seed": args.seed,
        "repeats": args.repeats,
        "machine": {"cores": os.cpu_count(), **meminfo()},
        "catalog": str(path),
        "file_bytes": size,
        "mapped_copy_bytes": copy_bytes,
        "bytes_per_image_with_copy": (size + copy_bytes) / args.rows,
        "build": build,
        "labels": {"tight_positives": len(labels["tight"]["positives"]), "loose_positives": LOOSE_POSITIVES},
        **{k: v for k, v in queried.items() if k != "rounds"},
        "cold_start_without_copy": unmapped,
        "rounds": rounds,
        "targets_at_100m": {
            k: {"target": t, "measured": v, "met": v is not None and v <= t}
            for k, v in measured.items()
            if (t := TARGETS[k.removesuffix("_without_copy")])
        },
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
