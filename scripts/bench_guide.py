"""The guide's logistic regression: the hand-written Newton solver against scikit-learn's; prints JSON.

Every refine round fits the guide (:func:`engine.learn.guide.fit_guide`, a weighted L2 logistic
regression over 32 code dims) on the round's training set. This script builds the training sets
that refine rounds see, from a clustered catalog (``engine.datasets.synth``, ``--rows`` rows, cached under
``--dir``): 60 labels from one cluster's search grid, and a second round that adds 60 labels
from other clusters, and fits each one ``--repeats`` times with

* ``newton``: :func:`engine.learn.guide.fit_guide`;
* scikit-learn's ``LogisticRegression`` with each of its solvers that take sample weights
  (``lbfgs``, ``newton-cholesky``, ``newton-cg``, ``liblinear``), with the same ``C``, on the
  same ``X / 255``.

Reported per solver: median fit time (ms), its ratio to ``newton``'s in the same run, and the
largest difference of its margins from ``newton``'s on the training rows (the models agree when
this is small).

    python scripts/bench_guide.py [--rows 1000000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import engine
from engine.datasets import synth
from engine.learn import guide

SOLVERS = ("lbfgs", "newton-cholesky", "newton-cg", "liblinear")


def training_sets(cat: engine.Catalog, labels: np.ndarray, ids: np.ndarray) -> dict:
    """Two rounds' training sets (guide off: the rows the guide is fitted on)."""
    sizes = np.bincount(labels)
    cls = int(np.argsort(np.abs(sizes - np.median(sizes)), kind="stable")[0])
    first = ids[labels == cls][0]
    grid = cat.search(id=int(first), k=60).ids
    is_pos = np.isin(grid, ids[labels == cls])
    rng = np.random.default_rng(0)
    others = rng.choice(ids[labels != cls], 60, replace=False)
    return {
        "round 1: one cluster's grid": cat.training_set(grid[is_pos], grid[~is_pos]),
        "round 2: and 60 other rows": cat.training_set(grid[is_pos], np.union1d(grid[~is_pos], others)),
    }


def fit_sklearn(solver: str, X: np.ndarray, y: np.ndarray, w: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=guide.GUIDE_C, solver=solver, tol=1e-8, max_iter=10_000).fit(
            X / 255.0, y, sample_weight=w
        )


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--rows-per-cluster", type=int, default=2500)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--dir", default="bench-data")
    args = ap.parse_args(argv)
    directory = Path(args.dir)
    directory.mkdir(parents=True, exist_ok=True)
    k = max(1, round(args.rows / args.rows_per_cluster))
    path = directory / f"guide_{args.rows}_k{k}.duckdb"
    if not path.exists():
        synth.synth_catalog(path, args.rows, 0, k)
    report = {
        "benchmark": "guide fit",
        "rows": args.rows,
        "clusters": k,
        "C": guide.GUIDE_C,
        "repeats": args.repeats,
        "sets": {},
    }
    with engine.Catalog.open(path, read_only=True) as cat:
        cat.store.con.execute("SET enable_progress_bar = false")
        tbl = cat.sql("SELECT id, label FROM images")
        sets = training_sets(
            cat, tbl.column("label").to_numpy().astype(np.int64), tbl.column("id").to_numpy()
        )
    for name, train in sets.items():
        X, y, w = train.X, train.y, train.w
        ref = guide.fit_guide(X, y, w)
        base = median_ms(lambda X=X, y=y, w=w: guide.fit_guide(X, y, w), args.repeats)
        entry = {"rows": int(len(y)), "positives": int(y.sum()), "newton_ms": round(base, 3), "solvers": {}}
        for solver in SOLVERS:
            model = fit_sklearn(solver, X, y, w)
            ms = median_ms(lambda s=solver, X=X, y=y, w=w: fit_sklearn(s, X, y, w), args.repeats)
            diff = np.abs(model.decision_function(X / 255.0) - ref.score(X)).max()
            entry["solvers"][solver] = {
                "median_ms": round(ms, 3),
                "vs_newton": round(ms / base, 1),
                "max_margin_difference": float(f"{diff:.2g}"),
            }
        report["sets"][name] = entry
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
