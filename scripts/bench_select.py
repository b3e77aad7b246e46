"""Benchmark box-set selection on synthetic catalogs; prints JSON.

For each catalog size it times, in one run and on the same box sets:
  1. the engine's ``Catalog.select`` (zone-map tree prune + numba scan of candidate blocks);
  2. plain DuckDB running one OR'ed WHERE on an unsorted copy of the codes;
  3. plain DuckDB running the same WHERE on the catalog's k-d sorted codes table;
  4. a numba full scan (every row against every box, no index).
Workloads: one box; a 30-box branch model; a 25 x 30 = 750-box ensemble. The boxes are grown
the way a decision branch grows them (pure greedy expansion around a seed positive on a few
dims, against sampled negatives), from 60 positives of one class and 500 random rows.

It also measures the layout choices in memory: block size, and how many feature-subset
orderings ("projections") are worth keeping, against the bytes per image they cost.

    python scripts/bench_select.py --rows 1000000 10000000 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import duckdb
import numpy as np

import engine
from engine import limits
from engine.boxes import BoxSet
from engine.datasets.synth import synth_catalog
from engine.index import layout, query, scan

SUBSET_SIZES = (4, 6, 8)


# -- workloads ------------------------------------------------------------------------------
def grow_box(X, y, seed_row, dims, rng):
    """A pure box on ``dims`` around X[seed_row]: absorb positives nearest to the seed first,
    skipping any whose inclusion would take in a negative; then move each border halfway to
    the nearest training value outside (to the code range's end if there is none)."""
    P, N = X[y == 1][:, dims].astype(np.int64), X[y == 0][:, dims].astype(np.int64)
    s = X[seed_row, dims].astype(np.int64)
    lo, hi = s.copy(), s.copy()
    for p in P[np.argsort(np.abs(P - s).sum(axis=1), kind="stable")]:
        nlo, nhi = np.minimum(lo, p), np.maximum(hi, p)
        if not np.all((nlo <= N) & (nhi >= N), axis=1).any():
            lo, hi = nlo, nhi
    T = X[:, dims].astype(np.int64)
    out_lo = np.zeros(X.shape[1], dtype=np.int64)
    out_hi = np.full(X.shape[1], 255, dtype=np.int64)
    for j, d in enumerate(dims):
        below, above = T[T[:, j] < lo[j], j], T[T[:, j] > hi[j], j]
        out_lo[d] = (below.max() + lo[j] + 1) // 2 if below.size else 0
        out_hi[d] = (above.min() + hi[j]) // 2 if above.size else 255
    return out_lo, out_hi


def grow_model(X, y, n_boxes, rng, family):
    """Separate-and-conquer: seed on an uncovered positive, keep the best box of a few
    candidate subsets, remove what it covers; reseed from all positives once all are covered."""
    los, his = [], []
    covered = np.zeros(len(y), dtype=bool)
    pos_rows = np.flatnonzero(y == 1)
    for _ in range(n_boxes):
        free = pos_rows[~covered[pos_rows]]
        seed = rng.choice(free if free.size else pos_rows)
        best = None
        for k in rng.choice(len(family), size=min(4, len(family)), replace=False):
            lo, hi = grow_box(X, y, seed, family[k], rng)
            inside = np.all((lo <= X) & (hi >= X), axis=1)
            score = (inside & (y == 1) & ~covered).sum() - 2 * (inside & (y == 0)).sum()
            if best is None or score > best[0]:
                best = (score, lo, hi, inside)
        los.append(best[1])
        his.append(best[2])
        covered |= best[3]
    return np.array(los), np.array(his)


def subset_family(rng, groups, n_subsets=104):
    """Feature subsets of 4, 6 or 8 dims, each inside one dim group (all dims when ungrouped)."""
    family = []
    for i in range(n_subsets):
        g = groups[i % len(groups)]
        k = min(SUBSET_SIZES[i % len(SUBSET_SIZES)], len(g))
        family.append(np.sort(rng.choice(g, size=k, replace=False)))
    return family


def workloads(cat, labels, seed, groups):
    """The three box sets, grown from 60 positives of one class and 500 random rows."""
    rng = np.random.default_rng(seed)
    sizes = np.bincount(labels)
    target = int(np.argsort(sizes)[len(sizes) // 2])  # a median-sized class
    pos_ids = rng.choice(np.flatnonzero(labels == target), 60, replace=False)
    neg_ids = rng.choice(np.flatnonzero(labels != target), 500, replace=False)
    ids = np.concatenate([pos_ids, neg_ids])
    X = cat.codes(ids)
    y = np.r_[np.ones(60, np.int8), np.zeros(500, np.int8)]
    family = subset_family(rng, groups)
    lo, hi = grow_model(X, y, 1, rng, family)
    one = BoxSet.from_arrays(lo, hi)
    lo, hi = grow_model(X, y, 30, rng, family)
    branch = BoxSet.from_arrays(lo, hi)
    los, his, members = [], [], []
    for m in range(25):
        r = np.random.default_rng(rng.integers(2**63))
        boot = r.integers(0, len(y), len(y))
        if not y[boot].any():
            boot[0] = 0
        half = [family[k] for k in r.choice(len(family), len(family) // 2, replace=False)]
        lo, hi = grow_model(X[boot], y[boot], 30, r, half)
        los.append(lo), his.append(hi), members.extend([m] * 30)
    ensemble = BoxSet.from_arrays(np.vstack(los), np.vstack(his), members)
    # (box set, min_votes): an ensemble returns the rows that more than half its members vote for.
    return {
        "one_box": (one, 1),
        "branch_30": (branch, 1),
        "ensemble_750": (ensemble, 1),
        "ensemble_750_majority": (ensemble, 13),
    }, target


# -- timing ---------------------------------------------------------------------------------
def median_ms(fn, repeats, budget_s=None):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t) * 1e3)
        if budget_s is not None and sum(times) / 1e3 > budget_s:
            break
    return statistics.median(times), len(times), out


def ensure_catalog(path: Path, rows: int, seed: int) -> None:
    if path.exists():
        with engine.Catalog.open(path) as cat:  # writable: migrates a catalog of an older schema
            s = cat.setting("synth") or {}
            if s.get("rows") == rows and s.get("seed") == seed and not cat.index_status()["stale"]:
                return
        path.unlink()
    synth_catalog(path, rows, seed=seed)


def ensure_unsorted(path: Path, src: Path) -> None:
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    con.execute(f"ATTACH '{src}' AS src (READ_ONLY)")
    con.execute("CREATE TABLE codes AS SELECT * FROM src.codes ORDER BY hash(id)")
    con.execute("DETACH src")
    con.close()
    os.replace(tmp, path)


def storage_bytes(src: Path, scratch: Path) -> dict:
    """Bytes per image of codes + index, measured as a fresh DuckDB file holding just the codes
    and blocks tables (a catalog's file also holds images, metadata and freed space)."""
    scratch.unlink(missing_ok=True)
    con = duckdb.connect(str(scratch))
    con.execute(f"ATTACH '{src}' AS src (READ_ONLY)")
    con.execute("CREATE TABLE codes AS SELECT * FROM src.codes ORDER BY pos")
    con.execute("CREATE TABLE blocks AS SELECT * FROM src.blocks ORDER BY block_id")
    n = con.execute("SELECT count(*) FROM codes").fetchall()[0][0]
    blocks_bytes = con.execute("SELECT count(*) * (67) FROM blocks").fetchall()[0][0]
    con.execute("DETACH src")
    con.execute("CHECKPOINT")
    con.close()
    size = scratch.stat().st_size
    scratch.unlink()
    return {
        "codes_plus_index_bytes_per_image": size / n,
        "blocks_table_bytes_per_image_raw": blocks_bytes / n,
        "catalog_file_bytes_per_image": src.stat().st_size / n,
    }


def run_size(rows: int, args, data: Path) -> dict:
    path = data / f"synth_{rows}_s{args.seed}.duckdb"
    t0 = time.perf_counter()
    ensure_catalog(path, rows, args.seed)
    unsorted = data / f"unsorted_{rows}_s{args.seed}.duckdb"
    ensure_unsorted(unsorted, path)
    prep_s = time.perf_counter() - t0

    cat = engine.Catalog.open(path, read_only=True)
    labels_by_id = cat.sql("SELECT label FROM images ORDER BY id").column(0).to_numpy()
    index = cat.block_index()
    boxsets, target = workloads(cat, labels_by_id, args.seed, [np.arange(32)])
    sorted_con = cat.store.con
    unsorted_con = duckdb.connect(str(unsorted), read_only=True)
    class_size = int((labels_by_id == target).sum())
    out = {
        "rows": rows,
        "blocks": index.blocks.n_blocks,
        "prep_s": prep_s,
        "target_class_size": class_size,
        "workloads": {},
    }
    for name, (bs, min_votes) in boxsets.items():
        cat.select(bs, min_votes)  # warm: compile or load cached kernels
        eng_ms, n_eng, res = median_ms(lambda bs=bs, mv=min_votes: cat.select(bs, mv), args.repeats)
        where = bs.predicate()
        sql = f"SELECT id FROM codes WHERE {where}"
        duck_ms, n_duck, duck_ids = median_ms(
            lambda sql=sql: unsorted_con.execute(sql).fetchnumpy()["id"], args.repeats, budget_s=args.budget_s
        )
        duck_sorted_ms, n_duck_sorted, _ = median_ms(
            lambda sql=sql: sorted_con.execute(sql).fetchnumpy()["id"], args.repeats, budget_s=args.budget_s
        )
        lo, hi, dims, ndims, member = query.prepare_boxes(bs)
        scan.full_scan(index.cols[:, :1], lo, hi, dims, ndims, member, bs.n_members, 1)
        full_ms, n_full, full = median_ms(
            lambda a=(index.cols, lo, hi, dims, ndims, member, bs.n_members, min_votes): scan.full_scan(*a),
            args.repeats,
            budget_s=args.budget_s,
        )
        # The DuckDB baselines compute the plain union (cheaper than a vote count), so for the
        # majority query their ids are a superset; the full scan applies the same threshold.
        union_ok = (
            np.isin(res.ids, duck_ids).all()
            if min_votes > 1
            else np.array_equal(np.sort(res.ids), np.sort(duck_ids))
        )
        same = bool(union_ok and np.array_equal(np.sort(res.ids), np.sort(index.ids[full[0]])))
        hits = labels_by_id[res.ids] == target
        st = res.stats
        out["workloads"][name] = {
            "boxes": len(bs),
            "members": bs.n_members,
            "min_votes": min_votes,
            "results": int(len(res.ids)),
            "precision": float(hits.mean()) if len(hits) else 0.0,
            "recall": float(hits.sum() / class_size),
            "results_agree": bool(same),
            "engine_ms": eng_ms,
            "duckdb_or_unsorted_ms": duck_ms,
            "duckdb_or_sorted_ms": duck_sorted_ms,
            "numba_full_scan_ms": full_ms,
            "speedup_vs_duckdb_or_unsorted": duck_ms / eng_ms,
            "speedup_vs_duckdb_or_sorted": duck_sorted_ms / eng_ms,
            "speedup_vs_numba_full_scan": full_ms / eng_ms,
            "repeats": {
                "engine": n_eng,
                "duckdb_unsorted": n_duck,
                "duckdb_sorted": n_duck_sorted,
                "numba_full": n_full,
            },
            "blocks_touched": st["blocks_touched"],
            "blocks_touched_fraction": st["blocks_touched"] / st["blocks"],
            "rows_tested": st["rows_tested"],
            "row_dim_tests": st["row_dim_tests"],
            "rows_in_touched_blocks": st["rows_in_touched_blocks"],
            "engine_phase_ms": {k: st[k] for k in ("time_prune_ms", "time_scan_ms", "time_rank_ms")},
        }
    unsorted_con.close()
    cat.close()
    out["storage"] = storage_bytes(path, data / "storage_probe.duckdb")
    if args.layout_experiment and rows <= args.layout_max_rows:
        out["layout_experiment"] = layout_experiment(path, args)
    return out


# -- layout experiment ----------------------------------------------------------------------
def layout_experiment(path: Path, args) -> dict:
    """In memory, with the engine's kernels: block sizes, and P sorted projections over P dim
    groups (boxes restricted to subsets inside one group, routed to that group's ordering)."""
    with engine.Catalog.open(path, read_only=True) as cat:
        labels = cat.sql("SELECT label FROM images ORDER BY id").column(0).to_numpy()
        base = cat.block_index()
        order = np.argsort(base.ids)
        cols, ids = np.ascontiguousarray(base.cols[:, order]), base.ids[order]
        single_bytes = storage_bytes(path, path.with_name("storage_probe.duckdb"))[
            "codes_plus_index_bytes_per_image"
        ]
        result = {"block_size": {}, "projections": {}}
        ens, _ = workloads(cat, labels, args.seed, [np.arange(32)])
        ens = ens["ensemble_750"][0]
        for bsz in (512, 1024, 2048, 4096, 8192):
            idx = _index_for(cols, ids, np.arange(32), bsz)
            query.select(idx, ens)
            ms, _, sel = median_ms(lambda idx=idx: query.select(idx, ens), args.repeats)
            ms13, _, _ = median_ms(lambda idx=idx: query.select(idx, ens, 13), args.repeats)
            result["block_size"][bsz] = {
                "ensemble_750_ms": ms,
                "ensemble_750_majority_ms": ms13,
                "blocks": idx.blocks.n_blocks,
                "blocks_touched": sel.stats["blocks_touched"],
                "row_dim_tests": sel.stats["row_dim_tests"],
            }
        for p in (1, 2, 4, 8):
            groups = np.array_split(np.arange(32), p)
            boxsets, _ = workloads(cat, labels, args.seed, groups)
            idxs = [_index_for(cols, ids, g, limits.DEFAULT_BLOCK_SIZE) for g in groups]
            entry = {
                "groups": [g.tolist() for g in groups],
                "est_codes_plus_index_bytes_per_image": single_bytes * p,
            }
            for name, (bs, _) in boxsets.items():
                if name == "ensemble_750_majority":
                    continue  # votes of one member can come from several projections: not split here
                parts = _route(bs, groups)
                for g, sub in parts:
                    query.select(idxs[g], sub)

                def run(parts=parts, idxs=idxs):
                    sels = [query.select(idxs[g], sub) for g, sub in parts]
                    return sels, np.unique(np.concatenate([s.ids for s in sels]))

                ms, _, (sels, union) = median_ms(run, args.repeats)
                entry[name] = {
                    "ms": ms,
                    "results": int(len(union)),
                    "row_dim_tests": int(sum(s.stats["row_dim_tests"] for s in sels)),
                    "blocks_touched_fraction": float(
                        np.mean([s.stats["blocks_touched"] / s.stats["blocks"] for s in sels])
                    ),
                }
            result["projections"][p] = entry
    return result


def _index_for(cols, ids, dims, block_size):
    perm, starts = layout.kd_order(cols, dims=dims, block_size=block_size, initial=np.arange(len(ids)))
    c = np.ascontiguousarray(cols[:, perm])
    return query.BlockIndex.from_arrays(c, ids[perm], layout.zone_maps(c, starts), block_size)


def _route(bs: BoxSet, groups):
    """Split a box set by the dim group that holds each box's constrained dims."""
    group_of = np.empty(32, dtype=np.int64)
    for g, dims in enumerate(groups):
        group_of[dims] = g
    owner = np.array([group_of[bs.constrained(i)[0]] if bs.constrained(i) else 0 for i in range(len(bs))])
    return [
        (g, BoxSet.from_arrays(bs.lo[owner == g], bs.hi[owner == g], bs.members[owner == g]))
        for g in range(len(groups))
        if (owner == g).any()
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--budget-s",
        type=float,
        default=60.0,
        help="stop repeating a slow baseline once it has used this many seconds",
    )
    ap.add_argument("--data", default="bench-data", help="where catalogs are built and kept for reuse")
    ap.add_argument("--no-layout-experiment", dest="layout_experiment", action="store_false")
    ap.add_argument("--layout-max-rows", type=int, default=10_000_000)
    args = ap.parse_args(argv)
    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    import numba

    report = {
        "benchmark": "select",
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "duckdb": duckdb.__version__,
        "sizes": [],
    }
    for rows in args.rows:
        report["sizes"].append(run_size(rows, args, data))
        print(f"# done {rows} rows", file=sys.stderr)
    json.dump(report, sys.stdout, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
