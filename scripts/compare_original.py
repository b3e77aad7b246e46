"""Paired comparison with the original decision branch code, on the same training rows.

For each catalog, class, seed and number ``p`` of positives, one training set is drawn: ``p``
random members of the class plus the catalog's sampled negatives (``Catalog.training_set``: 500
rows of the fixed pool, less those nearer the positives' mean), all with unit weight, since the
original takes no sample weights. On exactly those rows the script fits

- the original code (``--original``: a checkout of decisionbranches/decisionbranches, or of the
  copy inside cluel01/clip-branches, with its Cython extensions built in place), configured as
  the CLIP-Branches service configures it: an ensemble of 25 (``max_evals`` 0.5, bootstrap,
  ``min_pts = min(50, 1.5 p)``, at most 30 boxes, borders halfway, no post-filter tree) and a
  single model trying every subset;
- ours with the same settings, grown bottom-up (the original's growth, re-implemented) and
  top-down, and the product's own estimator with its defaults (``ours-product``: top-down,
  ``min_pts`` 50, the ensemble resampling only the negatives);

all on the catalog's own feature subsets, and scores each over the **whole catalog**
(precision, recall, F1 against the class). Reported per catalog and model: mean precision,
recall and F1, and per pair (ours vs the original, same training rows) the mean F1 difference
and the counts of runs where ours is higher, lower or equal, with a two-sided sign test.

    python scripts/compare_original.py --original ~/src/decisionbranches [--seeds 2]
           [--positives 4 8 16 32] [--quick]

Catalogs: ``demo``, ``synthetic`` (10 curved bands) and ``clusters`` (500 clusters of about 0.2%
of the catalog each; 10 classes nearest the median size). ``--guided`` draws the training rows as
a guided refine round does (the linear guide drops sampled rows and adds pseudo-positives), so
that both codes learn from what the product's learner learns from.

Without ``--original`` only our learners run (the pairs are then ours bottom-up vs top-down).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import engine
from engine.datasets import synth
from engine.learn import DecisionBranchClassifier, DecisionBranchEnsemble

# ours: the original's settings grown bottom-up and top-down, and the product's estimator as the
# refine menu builds it (top-down, min_pts 50; the ensemble resamples only the negatives).
GROWTHS = ("bottom-up", "top-down", "product")


def load_catalog(name: str, args, tmp: Path):
    if name == "demo":
        cat = engine.Catalog.open(args.catalog, read_only=True)
        tbl = cat.sql("SELECT id, label FROM images ORDER BY id")
        ids = tbl.column("id").to_numpy()
        names = tbl.column("label").to_pylist()
    elif name == "clusters":
        path = tmp / "clusters.duckdb"
        synth.synth_catalog(path, args.clusters_rows, 0, 500)
        cat = engine.Catalog.open(path, read_only=True)
        tbl = cat.sql("SELECT id, label FROM images ORDER BY id")
        ids, labels = tbl.column("id").to_numpy(), tbl.column("label").to_numpy()
        sizes = np.bincount(labels, minlength=500)
        keep = set(np.argsort(np.abs(sizes - np.median(sizes)), kind="stable")[:10].tolist())
        names = [f"cluster{v}" if int(v) in keep else "~rest" for v in labels]
    else:
        path = tmp / "bands.duckdb"
        labels = synth.bands_catalog(path, args.synthetic_rows, 10, 0)
        cat = engine.Catalog.open(path, read_only=True)
        ids = np.arange(len(labels), dtype=np.int64)
        names = [f"band{v}" for v in labels]
    classes = sorted(set(names))  # "~rest" (clusters not studied) sorts last and is never a class
    code = {n: i for i, n in enumerate(classes)}
    return cat, ids, np.array([code[n] for n in names]), [c for c in classes if c != "~rest"]


def ours(kind: str, growth: str, subsets, seed: int):
    if growth == "product":  # the product's own estimator and its defaults (top-down growth)
        from engine.learn import refine as rf

        return rf.make_model(kind, subsets, seed)
    if kind == "ensemble":
        return DecisionBranchEnsemble(
            growth=growth,
            min_pts="auto",
            bootstrap=True,
            subset_fraction=0.5,
            subsets=subsets,
            random_state=seed,
        )
    return DecisionBranchClassifier(growth=growth, min_pts="auto", subsets=subsets, random_state=seed)


def _original_fit_predict(path: str, kind: str, subsets, X, y, X_all, seed: int) -> np.ndarray:
    """Fit and apply the original code, configured as the CLIP-Branches service does (float64)."""
    if path not in sys.path:
        sys.path.insert(0, path)
    from decisionbranches.models.boxSearch.boxClassifier import BoxClassifier
    from decisionbranches.models.boxSearch.ensemble import Ensemble

    cfg = {
        "max_nbox": 30,
        "top_down": False,
        "stop_infinite": False,
        "min_pts": min(50, int(int(y.sum()) * 1.5)),
        "max_evals": 0.5 if kind == "ensemble" else "all",
    }
    indices = [list(s) for s in subsets]
    X = X.astype(np.float64)
    if kind == "ensemble":
        model = Ensemble(
            n_estimators=25,
            tot_feat=X.shape[1],
            indices=indices,
            cfg=cfg,
            postTree=False,
            n_jobs=os.cpu_count(),
            seed=seed,
            verbose=False,
            dtype="float64",
        )
    else:
        model = BoxClassifier(
            tot_feat=X.shape[1],
            indices=indices,
            cfg=cfg,
            postTree=False,
            n_jobs=1,
            seed=seed,
            verbose=False,
            dtype="float64",
        )
    model.fit(X, y.astype(np.int32))
    return model.predict(X_all.astype(np.float64)).astype(bool)


class Original:
    """The original code in a process of its own: its ensemble forks a worker pool, which must
    not happen in a process whose numba threads are running."""

    def __init__(self, path: str):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.path = str(Path(path).expanduser().resolve())
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))

    def fit_predict(self, kind: str, subsets, X, y, X_all, seed: int) -> np.ndarray:
        return self.pool.submit(_original_fit_predict, self.path, kind, subsets, X, y, X_all, seed).result()


def prf(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    tp = int((pred & truth).sum())
    n, size = int(pred.sum()), int(truth.sum())
    return (tp / n if n else 0.0), tp / size, 2 * tp / (n + size)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test p-value (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def run(name: str, args, original: Original | None, tmp: Path) -> dict:
    cat, ids, labels, classes = load_catalog(name, args, tmp)
    X_all = cat.codes(ids)
    subsets = cat.feature_subsets()
    rows = []
    n_classes = min(args.classes or len(classes), len(classes))
    for seed in range(args.seeds):
        for c in range(n_classes):
            truth = labels == c
            members = np.random.default_rng([seed, c, 0xC0]).permutation(ids[truth])
            for p in args.positives:
                train = cat.training_set(members[:p], [], 500, 1.0, guide=args.guided)
                X, y = train.X, train.y
                model_seed = int(np.random.SeedSequence([seed, c, p]).generate_state(1)[0] % 2**31)
                row = {"class": classes[c], "seed": seed, "p": p}
                for kind in args.kinds:
                    for growth in GROWTHS:
                        t = time.perf_counter()
                        est = ours(kind, growth, subsets, model_seed).fit(X, y)
                        row[f"{kind}/ours-{growth}"] = (
                            *prf(est.predict(X_all).astype(bool), truth),
                            time.perf_counter() - t,
                        )
                    if original is not None:
                        t = time.perf_counter()
                        pred = original.fit_predict(kind, subsets, X, y, X_all, model_seed)
                        row[f"{kind}/original"] = (*prf(pred, truth), time.perf_counter() - t)
                rows.append(row)
            print(f"# {name} seed {seed} class {classes[c]} done", file=sys.stderr, flush=True)
    cat.close()
    keys = [k for k in rows[0] if "/" in k]
    out = {"rows": int(len(ids)), "runs": len(rows), "models": {}, "pairs": {}}
    for k in keys:
        v = np.array([r[k] for r in rows])
        out["models"][k] = {
            "mean_precision": round(float(v[:, 0].mean()), 4),
            "mean_recall": round(float(v[:, 1].mean()), 4),
            "mean_f1": round(float(v[:, 2].mean()), 4),
            "mean_f1_by_p": {
                p: round(float(np.mean([r[k][2] for r in rows if r["p"] == p])), 4) for p in args.positives
            },
            "median_fit_predict_s": round(float(np.median(v[:, 3])), 4),
        }
    for kind in args.kinds:
        base = f"{kind}/original" if original is not None else f"{kind}/ours-top-down"
        for mine in (f"{kind}/ours-{g}" for g in GROWTHS):
            if mine == base:
                continue
            d = np.array([r[mine][2] - r[base][2] for r in rows])
            wins, losses = int((d > 1e-9).sum()), int((d < -1e-9).sum())
            out["pairs"][f"{mine} vs {base}"] = {
                "mean_f1_difference": round(float(d.mean()), 4),
                "median_f1_difference": round(float(np.median(d)), 4),
                "higher": wins,
                "lower": losses,
                "equal": len(d) - wins - losses,
                "sign_test_p": round(sign_test(wins, losses), 4),
            }
    out["runs_detail"] = rows if args.details else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--original", default=None, help="folder holding the built decisionbranches package")
    ap.add_argument("--catalog", default="demo/fashion.duckdb")
    ap.add_argument(
        "--catalogs",
        nargs="+",
        default=["demo", "synthetic", "clusters"],
        choices=["demo", "synthetic", "clusters"],
    )
    ap.add_argument("--clusters-rows", type=int, default=200_000)
    ap.add_argument("--guided", action="store_true", help="training rows of a guided refine round")
    ap.add_argument("--kinds", nargs="+", default=["ensemble", "branch"], choices=["ensemble", "branch"])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--positives", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--classes", type=int, default=None)
    ap.add_argument("--synthetic-rows", type=int, default=100_000)
    ap.add_argument("--details", action="store_true", help="include every run")
    ap.add_argument("--quick", action="store_true", help="1 seed, 2 classes, p in 4 16, 20k synthetic rows")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.classes, args.positives, args.synthetic_rows = 1, 2, [4, 16], 20_000
        args.clusters_rows = 20_000
    original = Original(args.original) if args.original else None
    t0 = time.perf_counter()
    report = {
        "benchmark": "compare_original",
        "protocol": {
            "training": "p random class members + Catalog.training_set's sampled negatives, unit weights"
            + (", guided (pseudo-positives, relabelled sample)" if args.guided else ""),
            "settings": "25 members, subset_fraction/max_evals 0.5 (ensemble) or all (single), bootstrap, "
            "min_pts min(50, 1.5 p), at most 30 boxes",
            "seeds": args.seeds,
            "positives": args.positives,
            "original": bool(original),
        },
        "catalogs": {},
    }
    with tempfile.TemporaryDirectory(prefix="compare-original-") as tmp:
        for name in args.catalogs:
            report["catalogs"][name] = run(name, args, original, Path(tmp))
    report["wall_s"] = time.perf_counter() - t0
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
