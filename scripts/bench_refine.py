"""Benchmark a full refine round (sample negatives, train, query the whole catalog); prints JSON.

For each catalog size a synthetic catalog (``engine.datasets.synth``, cached under ``--dir`` between runs,
the files ``bench_select.py`` uses) gets 60 labelled images: 40 positives from one median-sized
cluster and 20 negatives, the rows nearest to the positives' mean code outside that cluster
(what a user sees and rejects among the first results). Each model (ensemble, branch, tree,
forest) then runs ``Catalog.refine`` with 500 sampled negatives and its defaults (the linear
guide, 60 suggestions) ``--repeats`` times with a different ``random_state`` each, after one
warm-up round; reported are the median and minimum of each phase (sample, which includes
fitting the guide; train, which includes calibrating the vote threshold; query; suggest) and of
the total, result counts, the share of rows in touched blocks, and precision/recall against the
cluster. ``--unguided`` times each model with ``guide=False`` as well, in the same run.

Baselines, measured in the same run on the same training set:

* the original way of applying a random forest: ``ForestBoxes.sklearn_predict`` (scikit-learn's
  own ``predict``) over the full code matrix, in chunks of ``--chunk-rows`` rows; only the
  predict calls are timed (building each row-major chunk is not). It runs with the forest's own
  ``n_jobs`` (one thread) and again with all cores. Its time is compared with the ensemble's
  and the forest's refine rounds;
* DuckDB running the compiled SQL of one ensemble result (``Catalog.sql``) against the
  engine's query phase for that result (the ids must match in order).

Cold start: a fresh subprocess per model in ``--cold-models`` opens the catalog, loads the block
index, and times its first refine (numba kernels come from the on-disk cache, ``cache=True``)
and a second one.

With two or more sizes, each phase's median is fitted linearly in the row count (on the sizes of
at least 10M rows when two such are measured, else on all) and projected to ``--project-rows``
(100M), unless that size was measured; the disk and memory the projected catalog needs are set
against what the machine has. Background CPU load from other processes is sampled from
/proc/stat during each size's timing, since other jobs may share the machine.

Targets (reported, not asserted): ensemble round, suggestions included, <= 150 ms median at 10M
rows, branch <= 100 ms, and a refine round >= 20x faster than the forest's full-matrix predict.

    python scripts/bench_refine.py --rows 1000000 10000000 [--repeats 7] [--dir bench-data]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np

import engine
from engine import limits
from engine.datasets.synth import synth_catalog
from engine.errors import CatalogError
from engine.index import knn, query
from engine.learn import refine as rf
from engine.learn.trees import ForestBoxes

PHASES = ("time_sample_ms", "time_train_ms", "time_query_ms", "time_suggest_ms", "time_total_ms")
TARGETS = {
    "ensemble_median_total_ms": 150.0,
    "branch_median_total_ms": 100.0,
    "speedup_vs_forest_predict": 20.0,
}
N_POSITIVES, N_NEGATIVES = 40, 20


# -- catalogs and labels ----------------------------------------------------------------------
def catalog_ok(cat, rows: int, seed: int) -> bool:
    s = cat.setting("synth") or {}
    return s.get("rows") == rows and s.get("seed") == seed and not cat.index_status()["stale"]


def ensure_catalog(path: Path, rows: int, seed: int) -> dict:
    """Reuse a cached catalog of the same size and seed, else build it; returns build info."""
    if path.exists():
        try:
            with engine.Catalog.open(path, read_only=True) as cat:
                _quiet(cat)
                if catalog_ok(cat, rows, seed):
                    return {"cached": True}
        except CatalogError:
            with engine.Catalog.open(path) as cat:  # writable: migrates an older schema
                _quiet(cat)
                if catalog_ok(cat, rows, seed):
                    return {"cached": True}
        path.unlink()
    t = time.perf_counter()
    built = synth_catalog(path, rows, seed=seed)
    return {"cached": False, "build_s": time.perf_counter() - t, "synth": built}


def _quiet(cat) -> None:
    cat.store.con.execute("SET enable_progress_bar = false")


def labelled(cat, seed: int) -> dict:
    """40 positives of a median-sized cluster and the 20 rows nearest to their mean code that
    lie outside it; also the cluster's ids' labels for precision/recall."""
    tbl = cat.sql("SELECT id, label FROM images")
    ids = tbl.column("id").to_numpy()
    labels = tbl.column("label").to_numpy()
    order = np.argsort(ids)
    ids, labels = ids[order], labels[order]
    sizes = np.bincount(labels)
    target = int(np.argsort(sizes)[len(sizes) // 2])
    rng = np.random.default_rng(seed)
    pos = rng.choice(ids[labels == target], N_POSITIVES, replace=False)
    index = cat.block_index()
    center = rf.center_code(cat.codes(pos)).astype(np.uint8)
    near, _ = knn.topk(index.cols, center, int(sizes[target]) + 10 * N_NEGATIVES)
    near_ids = index.ids[near]
    near_labels = labels[np.searchsorted(ids, near_ids)]
    neg = near_ids[near_labels != target][:N_NEGATIVES]
    return {
        "positives": pos,
        "negatives": neg,
        "target": target,
        "target_size": int(sizes[target]),
        "ids": ids,
        "labels": labels,
    }


def precision_recall(result_ids: np.ndarray, lab: dict) -> tuple[float, float]:
    hit = int((lab["labels"][np.searchsorted(lab["ids"], result_ids)] == lab["target"]).sum())
    return (hit / len(result_ids) if len(result_ids) else 0.0), hit / lab["target_size"]


# -- machine state ----------------------------------------------------------------------------
class LoadProbe:
    """CPU used by other processes (in cores) between start() and stop(), from /proc/stat."""

    def start(self) -> None:
        self.t, self.busy, self.own = time.perf_counter(), _busy_s(), _own_cpu_s()

    def stop(self) -> dict:
        wall = time.perf_counter() - self.t
        busy, own = _busy_s() - self.busy, _own_cpu_s() - self.own
        return {
            "wall_s": wall,
            "machine_busy_cores": busy / wall if wall else 0.0,
            "other_processes_busy_cores": max(0.0, busy - own) / wall if wall else 0.0,
            "loadavg_1min": os.getloadavg()[0],
        }


def _busy_s() -> float:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def meminfo() -> dict:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":", 1)
            if key in ("MemTotal", "MemAvailable"):
                out[key] = int(value.split()[0]) * 1024
    return out


# -- timing -----------------------------------------------------------------------------------
def summarize_runs(stats: list[dict]) -> dict:
    out = {}
    for k in PHASES:
        values = [s[k] for s in stats]
        out[k.replace("time_", "").replace("_ms", "") + "_ms"] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
    for k in (
        "results",
        "boxes",
        "min_votes",
        "pseudo_positives",
        "suggestions",
        "share_touched",
        "blocks_touched",
        "precision",
        "recall",
    ):
        values = [s[k] for s in stats]
        out[k] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def bench_models(cat, lab: dict, args) -> tuple[dict, dict]:
    """Refine rounds per model; returns the summaries and one ensemble result for the SQL check."""
    out, keep = {}, {}
    variants = [(m, True) for m in args.models] + ([(m, False) for m in args.models] if args.unguided else [])
    for m, guided in variants:
        name = m if guided else f"{m}/unguided"
        cat.refine(lab["positives"], lab["negatives"], model=m, random_state=10**6, guide=guided)  # warm-up
        stats = []
        for r in range(args.repeats):
            res = cat.refine(lab["positives"], lab["negatives"], model=m, random_state=r, guide=guided)
            p, rc = precision_recall(res.ids, lab)
            stats.append({**res.stats, "precision": p, "recall": rc})
            if name == "ensemble":
                keep[m] = res
        out[name] = summarize_runs(stats)
        print(f"#   {name}: median {out[name]['total_ms']['median']:.1f} ms", file=sys.stderr, flush=True)
    return out, keep


def forest_baseline(cat, lab: dict, args) -> dict:
    """scikit-learn's forest predict over every code, against the same forest's boxes."""
    index = cat.block_index()
    pos, neg = lab["positives"], lab["negatives"]
    pool = rf.negative_pool(index.n_rows, args.sampled_negatives)
    sampled = rf.sample_negatives(index.ids[pool], args.sampled_negatives, np.concatenate([pos, neg]))
    X, y, w = rf.training_set(cat.codes(pos), cat.codes(neg), cat.codes(sampled), 1.0)
    est = ForestBoxes(n_estimators=25, random_state=0).fit(X, y, sample_weight=w)
    t = time.perf_counter()
    sel = query.select(index, est.boxes_, est.min_votes_)
    select_ms = (time.perf_counter() - t) * 1e3
    out = {
        "trees": len(est.estimator_.estimators_),
        "boxes": len(est.boxes_),
        "chunk_rows": args.chunk_rows,
        "select_of_same_forest_ms": select_ms,
        "select_results": int(len(sel.ids)),
    }
    for label, n_jobs in (("one_thread", est.estimator_.n_jobs), ("all_cores", -1)):
        est.estimator_.n_jobs = n_jobs
        times, positive = [], None
        for _ in range(args.baseline_repeats):
            elapsed, hits = 0.0, []
            for a in range(0, index.n_rows, args.chunk_rows):
                chunk = np.ascontiguousarray(index.cols[:, a : a + args.chunk_rows].T)
                t = time.perf_counter()
                pred = est.sklearn_predict(chunk)
                elapsed += time.perf_counter() - t
                hits.append(np.flatnonzero(pred) + a)
            times.append(elapsed * 1e3)
            positive = np.concatenate(hits)
            if sum(times) / 1e3 > args.budget_s:
                break
        out[label] = {
            "n_jobs": n_jobs,
            "median_ms": statistics.median(times),
            "min_ms": min(times),
            "repeats": len(times),
        }
    predicted_ids = index.ids[positive]
    inter = len(np.intersect1d(sel.ids, predicted_ids, assume_unique=True))
    union = len(sel.ids) + len(predicted_ids) - inter
    out["sklearn_soft_vote_results"] = int(len(positive))
    out["jaccard_soft_vote_vs_box_majority"] = inter / union if union else 1.0
    return out


def sql_check(cat, res, args) -> dict:
    """DuckDB running the compiled SQL of one ensemble result, against the engine's query phase."""
    times, same = [], None
    for _ in range(args.sql_repeats):
        t = time.perf_counter()
        tbl = cat.sql(res.sql)
        times.append((time.perf_counter() - t) * 1e3)
        if same is None:
            same = bool(np.array_equal(tbl.column(0).to_numpy(), res.ids))
        if sum(times) / 1e3 > args.budget_s:
            break
    duck = statistics.median(times)
    eng = res.stats["time_query_ms"]
    return {
        "sql_chars": len(res.sql),
        "boxes": res.stats["boxes"],
        "results": res.stats["results"],
        "duckdb_ms": duck,
        "duckdb_repeats": len(times),
        "engine_query_ms": eng,
        "duckdb_over_engine_query": duck / eng if eng else None,
        "same_ids_in_order": same,
    }


def cold_start(path: Path, lab: dict, model: str) -> dict:
    """First refine in a fresh process: catalog open, index load, first and second round."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--cold-child",
        str(path),
        "--cold-model",
        model,
        "--cold-labels",
        json.dumps({"positives": lab["positives"].tolist(), "negatives": lab["negatives"].tolist()}),
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    out = json.loads(proc.stdout)
    out["process_wall_s"] = wall
    out["startup_and_import_s"] = wall - out.pop("child_s")
    return out


def cold_child(args) -> int:
    t0 = time.perf_counter()
    labels = json.loads(args.cold_labels)
    cat = engine.Catalog.open(args.cold_child, read_only=True)
    _quiet(cat)
    t1 = time.perf_counter()
    cat.block_index()
    t2 = time.perf_counter()
    first = cat.refine(labels["positives"], labels["negatives"], model=args.cold_model, random_state=0)
    second = cat.refine(labels["positives"], labels["negatives"], model=args.cold_model, random_state=1)
    t3 = time.perf_counter()
    cat.close()
    pick = ("time_sample_ms", "time_train_ms", "time_query_ms", "time_total_ms")
    json.dump(
        {
            "model": args.cold_model,
            "open_s": t1 - t0,
            "load_index_s": t2 - t1,
            "first_refine": {k: first.stats[k] for k in pick},
            "second_refine": {k: second.stats[k] for k in pick},
            "open_load_first_refine_s": (t1 - t0) + (t2 - t1) + first.stats["time_total_ms"] / 1e3,
            "child_s": t3 - t0,
        },
        sys.stdout,
    )
    return 0


# -- one size ---------------------------------------------------------------------------------
def run_size(rows: int, args, data: Path) -> dict:
    path = data / f"synth_{rows}_s{args.seed}.duckdb"
    prep = ensure_catalog(path, rows, args.seed)
    cat = engine.Catalog.open(path, read_only=True)
    _quiet(cat)
    t = time.perf_counter()
    index = cat.block_index()
    load_s = time.perf_counter() - t
    lab = labelled(cat, args.seed)
    out = {
        "rows": rows,
        "catalog": prep,
        "catalog_bytes": path.stat().st_size,
        "index_memory_bytes": index.memory_bytes,
        "blocks": index.blocks.n_blocks,
        "load_index_s": load_s,
        "labels": {
            "positives": N_POSITIVES,
            "negatives": N_NEGATIVES,
            "sampled_negatives": args.sampled_negatives,
            "target_cluster_size": lab["target_size"],
        },
    }
    probe = LoadProbe()
    probe.start()
    out["models"], keep = bench_models(cat, lab, args)
    out["background_load_models"] = probe.stop()
    if not args.no_baseline:
        probe.start()
        base = forest_baseline(cat, lab, args)
        base["background_load"] = probe.stop()
        out["forest_full_predict"] = base
        one = base["one_thread"]["median_ms"]
        ratios = {}
        for m in ("ensemble", "forest", "branch", "tree"):
            if m in out["models"]:
                ratios[f"forest_predict_one_thread_over_{m}_round"] = (
                    one / out["models"][m]["total_ms"]["median"]
                )
                ratios[f"forest_predict_all_cores_over_{m}_round"] = (
                    base["all_cores"]["median_ms"] / out["models"][m]["total_ms"]["median"]
                )
        out["speedups"] = ratios
        print(f"#   forest predict: {one:.0f} ms (1 thread)", file=sys.stderr, flush=True)
    if "ensemble" in keep and args.sql_repeats:
        out["duckdb_sql_vs_engine"] = sql_check(cat, keep["ensemble"], args)
    cat.close()
    if args.cold_models:
        out["cold_start"] = {m: cold_start(path, lab, m) for m in args.cold_models}
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


# -- projection -------------------------------------------------------------------------------
def projection(sizes: list[dict], target_rows: int, data: Path) -> dict | None:
    if len(sizes) < 2 or any(s["rows"] == target_rows for s in sizes):
        return None
    big = [s for s in sizes if s["rows"] >= 10_000_000]
    fit_on = big if len(big) >= 2 else sizes
    rows = np.array([s["rows"] for s in fit_on], dtype=np.float64)
    out = {
        "rows": target_rows,
        "fitted_on_rows": [int(r) for r in rows],
        "method": "least-squares line per phase",
        "models": {},
    }
    for m in fit_on[0]["models"]:
        out["models"][m] = {}
        for phase in ("sample_ms", "train_ms", "query_ms", "total_ms"):
            t = np.array([s["models"][m][phase]["median"] for s in fit_on])
            out["models"][m][phase] = _extrapolate(rows, t, target_rows)
    if all("forest_full_predict" in s for s in fit_on):
        t = np.array([s["forest_full_predict"]["one_thread"]["median_ms"] for s in fit_on])
        out["forest_full_predict_one_thread_ms"] = _extrapolate(rows, t, target_rows)
    last = max(fit_on, key=lambda s: s["rows"])
    per_row_disk = last["catalog_bytes"] / last["rows"]
    per_row_mem = last["index_memory_bytes"] / last["rows"]
    disk, mem = shutil.disk_usage(data), meminfo()
    out["storage"] = {
        "catalog_bytes": per_row_disk * target_rows,
        "index_memory_bytes": per_row_mem * target_rows,
        "disk_free_bytes": disk.free,
        "mem_total_bytes": mem.get("MemTotal"),
        "mem_available_bytes": mem.get("MemAvailable"),
        "fits_on_disk": per_row_disk * target_rows < disk.free,
        "index_fits_in_available_memory": per_row_mem * target_rows < mem.get("MemAvailable", 0),
    }
    return out


def _extrapolate(rows: np.ndarray, t: np.ndarray, target_rows: int) -> dict:
    """Least-squares line of time against rows, evaluated at ``target_rows``; a phase whose time
    does not grow with the rows (slope <= 0, i.e. noise) is projected flat at its largest value."""
    slope, icpt = np.polyfit(rows, t, 1)
    grows = bool(slope > 0)
    return {
        "ms": float(icpt + slope * target_rows) if grows else float(t.max()),
        "ms_per_million_rows": float(slope * 1e6),
        "grows_with_rows": grows,
    }


def targets(sizes: list[dict]) -> dict:
    out = {}
    for s in sizes:
        ms = s["models"]
        t = {"targets": TARGETS}
        if "ensemble" in ms:
            t["ensemble_median_total_ms"] = ms["ensemble"]["total_ms"]["median"]
            t["ensemble_met"] = t["ensemble_median_total_ms"] <= TARGETS["ensemble_median_total_ms"]
        if "branch" in ms:
            t["branch_median_total_ms"] = ms["branch"]["total_ms"]["median"]
            t["branch_met"] = t["branch_median_total_ms"] <= TARGETS["branch_median_total_ms"]
        sp = s.get("speedups", {})
        if "forest_predict_one_thread_over_ensemble_round" in sp:
            t["speedup_ensemble_vs_forest_predict"] = sp["forest_predict_one_thread_over_ensemble_round"]
            t["speedup_ensemble_met"] = (
                t["speedup_ensemble_vs_forest_predict"] >= TARGETS["speedup_vs_forest_predict"]
            )
        if "forest_predict_one_thread_over_forest_round" in sp:
            t["speedup_forest_vs_forest_predict"] = sp["forest_predict_one_thread_over_forest_round"]
            t["speedup_forest_met"] = (
                t["speedup_forest_vs_forest_predict"] >= TARGETS["speedup_vs_forest_predict"]
            )
        out[str(s["rows"])] = t
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=lambda s: int(float(s)), nargs="+", default=[10_000_000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--models", nargs="+", default=list(rf.MODELS), choices=rf.MODELS)
    ap.add_argument("--sampled-negatives", type=int, default=limits.DEFAULT_SAMPLED_NEGATIVES)
    ap.add_argument(
        "--unguided",
        action="store_true",
        help="also time every model with guide=False (the labels and the sample alone)",
    )
    ap.add_argument("--dir", default="bench-data", help="where catalogs are built and kept for reuse")
    ap.add_argument("--chunk-rows", type=int, default=1_000_000, help="rows per sklearn predict call")
    ap.add_argument("--baseline-repeats", type=int, default=3)
    ap.add_argument("--sql-repeats", type=int, default=3)
    ap.add_argument(
        "--budget-s",
        type=float,
        default=60.0,
        help="stop repeating a slow baseline once it has used this many seconds",
    )
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--cold-models", nargs="*", default=["ensemble", "branch"], choices=rf.MODELS)
    ap.add_argument("--project-rows", type=lambda s: int(float(s)), default=100_000_000)
    ap.add_argument("--cold-child", help=argparse.SUPPRESS)
    ap.add_argument("--cold-model", help=argparse.SUPPRESS)
    ap.add_argument("--cold-labels", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.cold_child:
        return cold_child(args)
    data = Path(args.dir)
    data.mkdir(parents=True, exist_ok=True)
    import numba

    t0 = time.perf_counter()
    report = {
        "benchmark": "refine",
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "numba_threading_layer": None,
        "duckdb": duckdb.__version__,
        "repeats": args.repeats,
        "machine": {"disk_free_bytes": shutil.disk_usage(data).free, **meminfo()},
        "sizes": [],
    }
    for rows in sorted(set(args.rows)):
        print(f"# {rows} rows", file=sys.stderr, flush=True)
        report["sizes"].append(run_size(rows, args, data))
    with contextlib.suppress(ValueError):
        report["numba_threading_layer"] = numba.threading_layer()
    report["targets"] = targets(report["sizes"])
    report["projection"] = projection(report["sizes"], args.project_rows, data)
    report["wall_s"] = time.perf_counter() - t0
    json.dump(report, sys.stdout, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
