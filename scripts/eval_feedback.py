"""Reproduce the paper's Figure 3 protocol: how many positives does a box model need to beat
nearest-neighbour search?

For each class of a labelled catalog, each seed and each number ``p`` of positives, the script
labels ``p`` images of the class as positive (the first ``p`` of a per-seed random order, so the
labelled set grows with ``p``) and builds the training set the way ``Catalog.refine`` does
(``engine.learn.refine.assemble``): those positives plus ``--negatives`` rows sampled at random from
the whole catalog, skipping the labelled positives and dropping the rows nearer the positives'
mean than the sample's (``--no-filter`` keeps them), then relabelled and extended by the linear
guide (``--no-guide`` leaves them as they are). Random rows may be true positives; that is the
realistic setting the product runs in. Each model (decision branch ensemble, single decision
branch model, decision tree, random forest) is fitted as a refine round fits it
(``engine.learn.refine.fit_round``: vote threshold calibrated) and applied to the whole catalog through
the block index (``engine.index.query.select`` with the model's ``min_votes_``, the product path); for
the first ``--verify-seeds`` seeds the model's own ``predict`` over every code is computed too
and must select exactly the same rows.

Two baselines, both told the true class size ``k`` (which favours them): ``knn``, the ``k`` rows
nearest to the positives' mean code (rounded, as ``Catalog.refine`` ranks by it) by squared L2
over the uint8 codes; and ``knn_paper``, the paper's own baseline: the ``k`` nearest rows of each
positive, united. Per p, the number of classes whose mean F1 (over the seeds) is above each
baseline's is reported.

F1 is computed over the whole catalog against the class labels. Reported per model and ``p``:
mean F1 over classes and seeds, k-NN's mean F1, and the share of (class, seed) runs in which the
model beats k-NN. Per model, the smallest ``p`` at which it beats k-NN is found for every
(class, seed) and averaged (a run that never beats k-NN counts as ``2 * max(p)``, 64 by default,
and the number of such runs is reported), together with the smallest ``p`` at which the mean F1
curve lies above k-NN's and that crossing interpolated linearly in log2(p). The paper reports
about 22 positives for a single decision branch model and about 8 for the ensemble.

Two catalogs are evaluated: the demo catalog (70k Fashion-MNIST images, ``images.label``) and a
synthetic one generated here with elongated, non-spherical classes (each class a random curved
1-d or 2-d band in 32 dims with anisotropic noise, quantized per dim to uint8), held in memory
with its own k-d block index.

    python scripts/eval_feedback.py [--seeds 5] [--positives 1 2 4 8 16 32] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

import engine
from engine import limits
from engine.datasets import synth
from engine.index import knn, layout, query
from engine.learn import refine as rf
from engine.learn.models import feature_subsets

PAPER = {"branch": 22, "ensemble": 8}


@dataclass
class Dataset:
    """Codes in block order with one class label per row position."""

    name: str
    index: query.BlockIndex
    labels: np.ndarray  # int64 (n_rows,): class of each row position
    class_names: list[str]
    subsets: list[tuple[int, ...]]
    info: dict = field(default_factory=dict)

    def positions_of(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of image ids."""
        if not hasattr(self, "_sorted"):
            self._order = np.argsort(self.index.ids, kind="stable")
            self._sorted = self.index.ids[self._order]
        return self._order[np.searchsorted(self._sorted, ids)]


# -- catalogs ---------------------------------------------------------------------------------
def demo_dataset(path: str) -> Dataset:
    """The demo catalog's codes and ``images.label`` classes."""
    with engine.Catalog.open(path, read_only=True) as cat:
        index = cat.block_index()
        tbl = cat.sql("SELECT id, label FROM images")
        subsets = cat.feature_subsets()
    ids = tbl.column("id").to_numpy()
    names = np.asarray(tbl.column("label").to_pylist(), dtype=object)
    class_names = sorted(set(names.tolist()))
    code_of = {c: i for i, c in enumerate(class_names)}
    by_id = np.array([code_of[v] for v in names], dtype=np.int64)
    ds = Dataset("demo", index, np.empty(index.n_rows, np.int64), class_names, subsets)
    ds.labels[ds.positions_of(ids)] = by_id
    ds.info = {"path": str(path), "rows": index.n_rows, "blocks": index.blocks.n_blocks}
    return ds


def synthetic_dataset(rows: int, n_classes: int, seed: int, block_size: int) -> Dataset:
    """A synthetic catalog held in memory: codes in k-d block order with zone maps."""
    codes, y, params = synth.curved_bands(rows, n_classes, seed)
    cols = np.ascontiguousarray(codes.T)
    perm, starts = layout.kd_order(cols, block_size=block_size)
    cols = np.ascontiguousarray(cols[:, perm])
    ids = np.arange(rows, dtype=np.int64)[perm]
    index = query.BlockIndex.from_arrays(cols, ids, layout.zone_maps(cols, starts), block_size)
    ds = Dataset("synthetic", index, y[perm], [f"band{c}" for c in range(n_classes)], feature_subsets())
    ds.info = {**params, "blocks": index.blocks.n_blocks, "block_size": block_size}
    return ds


# -- one run ----------------------------------------------------------------------------------
def f1_score(
    selected_pos: np.ndarray, labels: np.ndarray, cls: int, class_size: int
) -> tuple[float, float, float]:
    """F1, precision and recall of the selected row positions for class ``cls``."""
    tp = int((labels[selected_pos] == cls).sum())
    n = len(selected_pos)
    precision = tp / n if n else 0.0
    recall = tp / class_size if class_size else 0.0
    f1 = 2 * tp / (n + class_size) if n + class_size else 0.0
    return f1, precision, recall


def model_seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def run_class(ds: Dataset, cls: int, seed: int, args, X_all: np.ndarray | None, acc: dict) -> None:
    """Every p and model for one (class, seed); appends to ``acc``."""
    index, labels = ds.index, ds.labels
    cols, n_rows = index.cols, index.n_rows
    rng = np.random.default_rng([seed, cls, 0xF163])
    members = np.flatnonzero(labels == cls)
    class_size = len(members)
    order = rng.permutation(members)
    if args.pool == "product":
        pool = rf.negative_pool(n_rows, args.negatives)
    else:
        pool = rng.choice(n_rows, size=min(n_rows, max(args.negatives, rf.POOL_SIZE)), replace=False)
    for p in args.positives:
        train = rf.assemble(
            cols,
            order[:p],
            np.zeros(0, np.int64),
            pool,
            args.negatives,
            args.negative_weight,
            filter_sampled=not args.no_filter,
            guided=not args.no_guide,
        )
        pos_codes = train.pos_codes
        row = acc["runs"].setdefault(
            p, {"class": [], "knn": [], "knn_paper": [], **{m: [] for m in args.models}}
        )
        row["class"].append(cls)
        t = time.perf_counter()
        center = rf.center_code(pos_codes).astype(np.uint8)
        knn_pos, _ = knn.topk(cols, center, class_size)
        acc["time_ms"]["knn"] += (time.perf_counter() - t) * 1e3
        row["knn"].append(f1_score(knn_pos, labels, cls, class_size))
        # the paper's baseline: the class-size nearest neighbours of each positive, united
        united = np.unique(np.concatenate([knn.topk(cols, q, class_size)[0] for q in pos_codes]))
        row["knn_paper"].append(f1_score(united, labels, cls, class_size))
        for mi, m in enumerate(args.models):
            t0 = time.perf_counter()
            est = rf.fit_round(train, cols, m, ds.subsets, model_seed(seed, cls, p, mi))
            t1 = time.perf_counter()
            sel = query.select(index, est.boxes_, est.min_votes_)
            t2 = time.perf_counter()
            acc["time_ms"][m] += (t2 - t0) * 1e3
            acc["fit_ms"][m] += (t1 - t0) * 1e3
            acc["boxes"][m].append(len(est.boxes_))
            sel_pos = ds.positions_of(sel.ids)
            row[m].append(f1_score(sel_pos, labels, cls, class_size))
            if X_all is not None:
                pred = np.flatnonzero(est.predict(X_all))
                acc["verified"][m] += 1
                if not np.array_equal(np.sort(sel_pos), pred):
                    acc["mismatches"].append(
                        {
                            "model": m,
                            "class": cls,
                            "seed": seed,
                            "p": p,
                            "select": int(len(sel_pos)),
                            "predict": int(len(pred)),
                        }
                    )


# -- summary ----------------------------------------------------------------------------------
def crossing(ps: list[int], model: np.ndarray, base: np.ndarray) -> float | None:
    """p where ``model - base`` first turns positive, interpolated linearly in log2(p); None if
    it never does; ``ps[0]`` if it is positive from the start."""
    diff = model - base
    for i, d in enumerate(diff):
        if d > 0:
            if i == 0:
                return float(ps[0])
            a, b = np.log2(ps[i - 1]), np.log2(ps[i])
            frac = -diff[i - 1] / (d - diff[i - 1])
            return float(2 ** (a + frac * (b - a)))
    return None


def summarize(ds: Dataset, acc: dict, args, wall_s: float) -> dict:
    ps = list(args.positives)
    never = 2 * max(ps)
    names = ["knn", "knn_paper", *args.models]
    f1 = {name: np.array([[r[0] for r in acc["runs"][p][name]] for p in ps]) for name in names}
    prec = {name: np.array([[r[1] for r in acc["runs"][p][name]] for p in ps]) for name in names}
    rec = {name: np.array([[r[2] for r in acc["runs"][p][name]] for p in ps]) for name in names}
    run_class = np.array([acc["runs"][p]["class"] for p in ps])
    n_runs = f1["knn"].shape[1]
    knn_mean = f1["knn"].mean(axis=1)
    out = {
        "rows": ds.index.n_rows,
        "classes": len(ds.class_names),
        "runs_per_p": n_runs,
        **ds.info,
        "models": {},
    }
    for b in ("knn", "knn_paper"):
        out[b] = {
            "mean_f1": dict(zip(ps, f1[b].mean(axis=1).round(4).tolist(), strict=True)),
            "mean_precision": dict(zip(ps, prec[b].mean(axis=1).round(4).tolist(), strict=True)),
            "mean_recall": dict(zip(ps, rec[b].mean(axis=1).round(4).tolist(), strict=True)),
        }

    def classes_won(m: str, base: str) -> dict:
        """Per p: classes whose mean F1 over the seeds is above the baseline's."""
        won = {}
        for i, p in enumerate(ps):
            cls = np.unique(run_class[i])
            won[p] = int(
                sum(f1[m][i][run_class[i] == c].mean() > f1[base][i][run_class[i] == c].mean() for c in cls)
            )
        return won

    for m in args.models:
        beats = f1[m] > f1["knn"]  # (len(ps), runs)
        first = np.where(beats.any(axis=0), np.array(ps)[np.argmax(beats, axis=0)], never)
        mean_curve = f1[m].mean(axis=1)
        above = np.flatnonzero(mean_curve > knn_mean)
        out["models"][m] = {
            "mean_f1": dict(zip(ps, mean_curve.round(4).tolist(), strict=True)),
            "mean_precision": dict(zip(ps, prec[m].mean(axis=1).round(4).tolist(), strict=True)),
            "mean_recall": dict(zip(ps, rec[m].mean(axis=1).round(4).tolist(), strict=True)),
            "share_beating_knn": dict(zip(ps, beats.mean(axis=1).round(4).tolist(), strict=True)),
            "first_p_beating_knn_mean": float(first.mean()),
            "first_p_beating_knn_median": float(np.median(first)),
            "runs_never_beating_knn": int((first == never).sum()),
            "never_counts_as": never,
            "mean_curve_first_p_above_knn": int(ps[above[0]]) if len(above) else None,
            "mean_curve_crossing_p_interpolated": crossing(ps, mean_curve, knn_mean),
            "classes_above_knn": classes_won(m, "knn"),
            "classes_above_knn_paper": classes_won(m, "knn_paper"),
            "paper_positives_to_beat_nn": PAPER.get(m),
            "mean_boxes": float(np.mean(acc["boxes"][m])),
            "mean_fit_ms": acc["fit_ms"][m] / max(1, len(acc["boxes"][m])),
            "mean_fit_plus_select_ms": acc["time_ms"][m] / max(1, len(acc["boxes"][m])),
            "select_vs_predict_checked": acc["verified"][m],
        }
    out["select_vs_predict_mismatches"] = acc["mismatches"]
    out["knn_mean_ms"] = acc["time_ms"]["knn"] / max(1, n_runs * len(ps))
    out["wall_s"] = wall_s
    return out


def evaluate(ds: Dataset, args) -> dict:
    t0 = time.perf_counter()
    acc = {
        "runs": {},
        "time_ms": {m: 0.0 for m in ["knn", *args.models]},
        "fit_ms": {m: 0.0 for m in args.models},
        "boxes": {m: [] for m in args.models},
        "verified": {m: 0 for m in args.models},
        "mismatches": [],
    }
    classes = (
        range(len(ds.class_names)) if args.classes is None else range(min(args.classes, len(ds.class_names)))
    )
    X_all = np.ascontiguousarray(ds.index.cols.T) if args.verify_seeds else None
    for seed in range(args.seeds):
        for cls in classes:
            t = time.perf_counter()
            run_class(ds, cls, seed, args, X_all if seed < args.verify_seeds else None, acc)
            print(
                f"# {ds.name} seed {seed} class {ds.class_names[cls]}: {time.perf_counter() - t:.1f} s "
                f"(total {time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    return summarize(ds, acc, args, time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default="demo/fashion.duckdb", help="labelled catalog (images.label)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--positives", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--models", nargs="+", default=list(rf.MODELS), choices=rf.MODELS)
    ap.add_argument(
        "--negatives", type=int, default=limits.DEFAULT_SAMPLED_NEGATIVES, help="sampled negatives"
    )
    ap.add_argument("--negative-weight", type=float, default=1.0)
    ap.add_argument(
        "--no-guide",
        action="store_true",
        help="train on the positives and the sample alone, without the linear guide",
    )
    ap.add_argument(
        "--no-filter",
        action="store_true",
        help="keep every sampled row as a negative (no Rocchio filter), as the original did",
    )
    ap.add_argument(
        "--pool",
        choices=("per-seed", "product"),
        default="per-seed",
        help="sample negatives from a fresh random pool per (class, seed), or from the "
        "product's fixed pool (the same rows for every run)",
    )
    ap.add_argument("--classes", type=int, default=None, help="only the first N classes")
    ap.add_argument(
        "--verify-seeds",
        type=int,
        default=1,
        help="for this many seeds, also check model.predict over all codes against select",
    )
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--synthetic-rows", type=int, default=100_000)
    ap.add_argument("--synthetic-classes", type=int, default=10)
    ap.add_argument("--synthetic-seed", type=int, default=0)
    ap.add_argument("--block-size", type=int, default=limits.DEFAULT_BLOCK_SIZE)
    ap.add_argument(
        "--quick", action="store_true", help="smoke test: 3 classes, 1 seed, p in 1 4 16, 20k synthetic rows"
    )
    ap.add_argument(
        "--constant",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a constant of engine.learn.refine or engine.learn.guide for this run, e.g. GUIDE_FLOOR=0 "
        "(repeatable), as scripts/eval_session.py does",
    )
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from eval_session import set_constants

    try:
        constants = set_constants(args.constant)
    except ValueError as e:
        ap.error(str(e))
    if args.quick:
        args.seeds, args.classes, args.positives, args.synthetic_rows = 1, 3, [1, 4, 16], 20_000
    args.positives = sorted(set(args.positives))
    if min(args.positives) < 1:
        ap.error("--positives must be >= 1")
    t0 = time.perf_counter()
    import numba

    report = {
        "benchmark": "feedback_f1",
        "constants": constants,
        "protocol": {
            "seeds": args.seeds,
            "positives": args.positives,
            "models": args.models,
            "negatives": args.negatives,
            "negative_weight": args.negative_weight,
            "filter_sampled": not args.no_filter,
            "guide": not args.no_guide,
            "pool": args.pool,
            "verify_seeds": args.verify_seeds,
            "knn": "k nearest to the positives' rounded mean code, squared L2 on uint8 codes, k = class size",
            "knn_paper": "the paper's baseline: the k nearest codes of each positive, united, k = class size",
            "f1": "over the whole catalog, against the class labels",
        },
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "catalogs": {},
    }
    if not args.skip_demo:
        report["catalogs"]["demo"] = evaluate(demo_dataset(args.catalog), args)
    if not args.skip_synthetic:
        t = time.perf_counter()
        ds = synthetic_dataset(
            args.synthetic_rows, args.synthetic_classes, args.synthetic_seed, args.block_size
        )
        gen_s = time.perf_counter() - t
        report["catalogs"]["synthetic"] = {"time_generate_s": gen_s, **evaluate(ds, args)}
    report["wall_s"] = time.perf_counter() - t0
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
