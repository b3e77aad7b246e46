"""Benchmark exact top-k nearest neighbours over the 32-byte codes; prints JSON.

For each row count it generates clustered codes (``engine.datasets.synth``) and times, on the same
queries (the codes of random rows):
  1. ``engine.index.knn.topk`` on the codes in k-d block order, the layout of ``BlockIndex.cols``,
     and on the codes in generation (random) order, where its pruning helps least; also
     the same call after the process sat idle for 50 ms (the thread pool has to wake up), and
     per query within a batch of 16 (``topk_many``);
  2. numpy: int32 distances dim by dim (into work arrays allocated once), ``argpartition`` for
     the k-th distance, then a lexsort of the rows at or below it (so ties rank by position, as
     in the engine);
  3. DuckDB: ``ORDER BY`` the integer distance, then position, ``LIMIT k`` over a table of 32
     UTINYINT columns. It runs up to ``--duckdb-max-rows`` rows, and on larger tables when the
     previous size's median says the repeats fit in ``--budget-s``.
Every engine result is checked against numpy's, and DuckDB's against numpy's, before timing.
The cold first call runs in a fresh interpreter that imports the engine and queries the
block-ordered codes, loading the kernels from numba's cache.

    python scripts/bench_knn.py --rows 1000000 10000000 --repeats 7 --k 60 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numba
import numpy as np
import pyarrow as pa

from engine.boxes import CODE_COLUMNS
from engine.datasets.synth import clustered_codes
from engine.index import knn, layout

IDLE_S = 0.05
BATCH = 16


# -- the baselines ----------------------------------------------------------------------------
class NumpyTopk:
    """Exact ``(pos, dist)`` ranked by distance then position, in vectorised numpy on one thread.

    The two int32 work arrays are allocated once per table, so a query pays for arithmetic and
    memory traffic, not for page faults on fresh 4-byte-per-row temporaries.
    """

    def __init__(self, cols: np.ndarray):
        self.cols = cols
        self.dist = np.empty(cols.shape[1], dtype=np.int32)
        self.tmp = np.empty(cols.shape[1], dtype=np.int32)

    def __call__(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        dist, tmp = self.dist, self.tmp
        dist[:] = 0
        for d in range(self.cols.shape[0]):
            np.subtract(self.cols[d], np.int32(query[d]), out=tmp, dtype=np.int32)
            np.multiply(tmp, tmp, out=tmp)
            dist += tmp
        k = min(k, len(dist))
        kth = dist[np.argpartition(dist, k - 1)[k - 1]]
        cand = np.flatnonzero(dist <= kth)
        order = np.lexsort((cand, dist[cand]))[:k]
        return cand[order].astype(np.int64), dist[cand[order]].astype(np.int64)


def duckdb_table(cols: np.ndarray) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    arrays = [pa.array(np.arange(cols.shape[1], dtype=np.int64))] + [pa.array(c) for c in cols]
    con.register("arrow_codes", pa.Table.from_arrays(arrays, names=["pos", *CODE_COLUMNS]))
    con.execute("CREATE TABLE codes AS SELECT * FROM arrow_codes")
    con.unregister("arrow_codes")
    return con


def duckdb_sql(query: np.ndarray, k: int) -> str:
    """The top-k query for one code; the query's values are integers baked into the SQL."""
    terms = " + ".join(
        f"(CAST({c} AS INTEGER) - {int(v)}) * (CAST({c} AS INTEGER) - {int(v)})"
        for c, v in zip(CODE_COLUMNS, query, strict=True)
    )
    return f"SELECT pos, {terms} AS dist FROM codes ORDER BY dist, pos LIMIT {int(k)}"


# -- timing -----------------------------------------------------------------------------------
def timed(fn, queries, idle_s: float = 0.0) -> dict:
    times = []
    for q in queries:
        if idle_s:
            time.sleep(idle_s)
        t = time.perf_counter()
        fn(q)
        times.append((time.perf_counter() - t) * 1e3)
    return {"median": statistics.median(times), "min": min(times), "n": len(times)}


# A fresh interpreter: imports the engine, then queries twice. The kernels come from numba's
# cache (the parent compiled them), so the first call pays for loading them, not compiling.
COLD_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from engine.index import knn
t1 = time.perf_counter()
cols = np.load(sys.argv[1])
query = np.array(json.loads(sys.argv[2]), dtype=np.uint8)
k = int(sys.argv[3])
t2 = time.perf_counter()
knn.topk(cols, query, k)
t3 = time.perf_counter()
knn.topk(cols, query, k)
t4 = time.perf_counter()
print(json.dumps({"import_ms": (t1 - t0) * 1e3, "first_call_ms": (t3 - t2) * 1e3,
                  "second_call_ms": (t4 - t3) * 1e3}))
"""


def cold_first_call(path: Path, query: np.ndarray, k: int) -> dict:
    cmd = [sys.executable, "-c", COLD_CHILD, str(path), json.dumps([int(v) for v in query]), str(k)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


# -- one size ---------------------------------------------------------------------------------
def run_size(rows: int, args, duckdb_ms_per_row: float | None, scratch: Path) -> dict:
    t = time.perf_counter()
    codes = np.concatenate([c for c, _ in clustered_codes(rows, args.seed)])
    random_cols = np.ascontiguousarray(codes.T)
    del codes
    t_gen = time.perf_counter() - t
    t = time.perf_counter()
    perm, _ = layout.kd_order(random_cols)
    block_cols = np.ascontiguousarray(random_cols[:, perm])
    t_layout = time.perf_counter() - t
    rng = np.random.default_rng(args.seed + 1)
    picks = rng.integers(0, rows, args.repeats)
    out = {"rows": rows, "generate_s": t_gen, "kd_order_s": t_layout}

    for name, cols in (("block_order", block_cols), ("random_order", random_cols)):
        queries = [cols[:, p].copy() for p in picks]
        numpy_topk = NumpyTopk(cols)
        for par in (False, True):
            knn.topk(cols, queries[0], args.k, parallel=par)  # warm: compile or load cached kernels
        for q in queries:
            want = numpy_topk(q, args.k)
            got = knn.topk(cols, q, args.k)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1]), "engine != numpy"
        batch = np.array([cols[:, p] for p in rng.integers(0, rows, BATCH)])
        want_batch = [numpy_topk(q, args.k) for q in batch]
        got_batch = knn.topk_many(cols, batch, args.k)
        assert all(np.array_equal(got_batch[0][i], want_batch[i][0]) for i in range(BATCH)), (
            "topk_many != numpy"
        )
        res = {
            "engine_ms": timed(lambda q, c=cols: knn.topk(c, q, args.k), queries),
            "engine_after_idle_ms": timed(lambda q, c=cols: knn.topk(c, q, args.k), queries, IDLE_S),
            "numpy_ms": timed(lambda q, f=numpy_topk: f(q, args.k), queries),
        }
        t = time.perf_counter()
        for _ in range(max(1, args.repeats // 2)):
            knn.topk_many(cols, batch, args.k)
        res["engine_batch_per_query_ms"] = (
            (time.perf_counter() - t) * 1e3 / (max(1, args.repeats // 2) * BATCH)
        )
        res["batch_size"] = BATCH
        res["numpy_over_engine"] = res["numpy_ms"]["median"] / res["engine_ms"]["median"]
        out[name] = res

    projected_s = None if duckdb_ms_per_row is None else duckdb_ms_per_row * rows * args.repeats / 1e3
    if rows <= args.duckdb_max_rows or (projected_s is not None and projected_s <= args.budget_s):
        con = duckdb_table(random_cols)
        numpy_topk = NumpyTopk(random_cols)
        queries = [random_cols[:, p].copy() for p in picks]
        con.execute(duckdb_sql(queries[0], args.k)).fetchall()
        for q in queries:
            got = con.execute(duckdb_sql(q, args.k)).fetchnumpy()
            want = numpy_topk(q, args.k)
            assert np.array_equal(got["pos"], want[0]) and np.array_equal(got["dist"], want[1]), (
                "duckdb != numpy"
            )
        res = out["random_order"]
        res["duckdb_ms"] = timed(lambda q: con.execute(duckdb_sql(q, args.k)).fetchnumpy(), queries)
        res["duckdb_over_engine"] = res["duckdb_ms"]["median"] / res["engine_ms"]["median"]
        con.close()
    else:
        out["random_order"]["duckdb_ms"] = {
            "skipped": f"projected {projected_s:.0f} s over --budget-s"
            if projected_s
            else "over --duckdb-max-rows"
        }

    path = scratch / "block_cols.npy"
    np.save(path, block_cols)
    out["cold_block_order"] = cold_first_call(path, block_cols[:, picks[0]], args.k)
    path.unlink()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--repeats", type=int, default=7, help="queries timed per row count (each a random row)")
    ap.add_argument("--k", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--duckdb-max-rows", type=int, default=1_000_000)
    ap.add_argument(
        "--budget-s",
        type=float,
        default=60.0,
        help="run DuckDB past --duckdb-max-rows when its projected time fits in this",
    )
    args = ap.parse_args(argv)

    report = {
        "benchmark": "knn",
        "k": args.k,
        "repeats": args.repeats,
        "seed": args.seed,
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "duckdb": duckdb.__version__,
        "sizes": [],
    }
    duckdb_ms_per_row = None
    with tempfile.TemporaryDirectory() as scratch:
        for rows in sorted(args.rows):
            size = run_size(rows, args, duckdb_ms_per_row, Path(scratch))
            duck = size["random_order"]["duckdb_ms"]
            if "median" in duck:
                duckdb_ms_per_row = duck["median"] / rows
            report["sizes"].append(size)
            print(f"# done {rows} rows", file=sys.stderr)
    report["threading_layer"] = numba.threading_layer()
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
