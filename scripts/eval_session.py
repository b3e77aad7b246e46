"""Simulated labelling sessions: does fine-tuning find the whole class, round after round?

A simulated user searches once, then labels and fine-tunes for ``--rounds`` rounds, the way a
person uses the web UI:

1. **Search.** Demo catalog: one free-text query per class, written for this benchmark (no
   class name template of the demo encoder). Synthetic catalog: an image query by the code of a
   random member of the class (``Catalog.search(id=...)``), ``--starts`` sessions per class.
2. **Label the grid.** Every image of the visible grid (``--grid``, 60) is labelled by its true
   class: positive if it is of the session's class, else negative.
3. **Fine-tune** with ``Catalog.refine`` and the product's defaults (sampled negatives, weight,
   seed 0), and score the whole result against the class over the **whole catalog**:
   precision, recall, F1.
4. **Next grid.** The user labels the next ``--grid`` images the UI offers: the *Label next*
   suggestions when the result carries them (``--next auto``, the default), else the first
   unlabelled images of the ranked results. Labels accumulate; back to 3.

Baselines, scored in the same round on the same labels:

- ``knn_oracle``: "more like these" at its best: the k codes nearest to the labelled positives'
  rounded mean code, told the true class size k (no user knows it).
- ``knn_radius``: the same ranking with a k a user could know: all codes within the radius that
  best separates the labelled positives from the labelled negatives (the radius maximising F1
  on the labelled images; distances to the same mean code).
- ``linear``: a logistic regression on the refine round's training set (labels plus the sampled
  negatives, same weights; the guide's model, :mod:`engine.guide`), applied to every code of
  the catalog: what SeeSaw and Exquisitor do, at the price of a full scan.

The ceiling: a random forest of ``--ceiling-trees`` trees trained on **every** label of the
catalog, scored by 3-fold cross-validation (per-class F1 of its predictions): what any learner
on these 32-byte codes can reach.

Models are the product's menu (``ensemble``, ``branch``, ``tree``, ``forest``) plus, for the
paired comparison, the decision branch learners grown the original's way (``*-original``): the
same training set, the original code's bottom-up growth, ``min_pts = min(50, 1.5 p)`` and
plain bootstrap (:data:`ORIGINAL`).

    python scripts/eval_session.py [--rounds 3] [--models ensemble branch tree forest] [--quick]

Prints JSON: per catalog the ceiling, and per model and round the labels used, mean and
per-class precision, recall and F1, the median refine time, and the baselines; then a summary
of the targets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import engine
from engine import guide, knn, synth
from engine import refine as rf

# One free-text query per demo class, none of them a training caption or a zero-shot prompt.
DEMO_QUERIES = {
    "T-shirt/top": "a basic tee with short sleeves",
    "Trouser": "a pair of long pants",
    "Pullover": "a thick sweater to keep warm",
    "Dress": "something to wear to a wedding",
    "Coat": "outerwear for rainy weather",
    "Sandal": "open shoes for hot days",
    "Shirt": "a shirt with buttons down the front",
    "Sneaker": "shoes for jogging",
    "Bag": "a handbag to carry things",
    "Ankle boot": "short leather boots",
}


def original_models() -> dict[str, object]:
    """The original's learners on the labels and the sample alone (no guide): bottom-up growth,
    min_pts from the positives, plain bootstrap (ensemble), every subset per box (single model)."""
    from engine.learn import DecisionBranchClassifier, DecisionBranchEnsemble

    return {
        "ensemble-original": DecisionBranchEnsemble(growth="bottom-up", min_pts="auto", bootstrap=True),
        "branch-original": DecisionBranchClassifier(growth="bottom-up", min_pts="auto"),
    }


REFINE_OPTIONS = ("guide", "filter_sampled", "sampled_negatives", "negative_weight")


def model_spec(text: str) -> tuple[object, dict]:
    """``(model, refine options)`` for a model of the menu (``ensemble``), an original-style
    learner (``ensemble-original``, trained without the guide), or either with parameters of the
    estimator or of ``Catalog.refine``: ``ensemble[growth=top-down,guide=False]``."""
    import ast

    name, _, rest = text.partition("[")
    extra = original_models() if name.endswith("-original") else {}
    if name not in rf.MODELS and name not in extra:
        raise ValueError(f"unknown model {name!r}; choose from {[*rf.MODELS, 'ensemble-original', 'branch-original']}")
    options = {"guide": False} if name in extra else {}
    params = {}
    for item in filter(None, rest.rstrip("]").split(",")):
        key, _, value = (part.strip() for part in item.partition("="))
        with contextlib.suppress(ValueError, SyntaxError):
            value = ast.literal_eval(value)
        (options if key in REFINE_OPTIONS else params)[key] = value
    model = extra.get(name, name)
    if params:
        model = (model if not isinstance(model, str) else rf.make_model(model, None, None)).set_params(**params)
    return model, options


@dataclass
class Bench:
    """A catalog with the true class of every image."""

    name: str
    cat: engine.Catalog
    ids: np.ndarray  # int64 (n,), the catalog's ids
    labels: np.ndarray  # int64 (n,), class index of ids[i]
    class_names: list[str]

    def __post_init__(self):
        order = np.argsort(self.ids)
        self._sorted, self._labels_sorted = self.ids[order], self.labels[order]

    def classes_of(self, ids: np.ndarray) -> np.ndarray:
        return self._labels_sorted[np.searchsorted(self._sorted, ids)]

    def size(self, cls: int) -> int:
        return int((self.labels == cls).sum())


def demo_bench(path: str, classes: int | None) -> tuple[Bench, list[tuple[int, dict]]]:
    cat = engine.Catalog.open(path, read_only=True)
    tbl = cat.sql("SELECT id, label FROM images ORDER BY id")
    names = sorted(set(tbl.column("label").to_pylist()))
    code = {n: i for i, n in enumerate(names)}
    labels = np.array([code[v] for v in tbl.column("label").to_pylist()], np.int64)
    bench = Bench("demo", cat, tbl.column("id").to_numpy(), labels, names)
    chosen = [n for n in DEMO_QUERIES if n in code][: classes or None]
    return bench, [(code[n], {"text": DEMO_QUERIES[n]}) for n in chosen]


def synthetic_bench(directory: Path, rows: int, n_classes: int, seed: int, starts: int,
                    classes: int | None) -> tuple[Bench, list[tuple[int, dict]]]:
    path = directory / "bands.duckdb"
    labels = synth.bands_catalog(path, rows, n_classes, seed)
    cat = engine.Catalog.open(path, read_only=True)
    ids = np.arange(rows, dtype=np.int64)  # add_codes numbers new rows 0..n-1
    bench = Bench("synthetic", cat, ids, labels, [f"band{c}" for c in range(n_classes)])
    rng = np.random.default_rng([seed, 0x5E55])
    sessions = []
    for c in range(min(classes or n_classes, n_classes)):
        members = ids[labels == c]
        sessions += [(c, {"id": int(i)}) for i in rng.choice(members, size=starts, replace=False)]
    return bench, sessions


def rare_bench(directory: Path, rows: int, n_clusters: int, seed: int, sessions_wanted: int,
               classes: int | None) -> tuple[Bench, list[tuple[int, dict]]]:
    """Many small classes: ``n_clusters`` elongated Gaussian clusters (:func:`engine.synth.clustered_codes`,
    the catalogs of ``bench_refine.py``), so that each class is a fraction of a percent of the catalog,
    as a query's class is in a large real catalog. Sessions: the clusters nearest the median size, each
    started from an image query by one random member."""
    path = directory / "clusters.duckdb"
    synth.synth_catalog(path, rows, seed, n_clusters)
    cat = engine.Catalog.open(path, read_only=True)
    tbl = cat.sql("SELECT id, label FROM images ORDER BY id")
    ids, labels = tbl.column("id").to_numpy(), tbl.column("label").to_numpy().astype(np.int64)
    bench = Bench("clusters", cat, ids, labels, [f"cluster{c}" for c in range(n_clusters)])
    sizes = np.bincount(labels, minlength=n_clusters)
    chosen = np.argsort(np.abs(sizes - np.median(sizes)), kind="stable")[: min(classes or sessions_wanted,
                                                                               n_clusters)]
    rng = np.random.default_rng([seed, 0xC105])
    return bench, [(int(c), {"id": int(rng.choice(ids[labels == c]))}) for c in sorted(chosen)]


# -- scoring ----------------------------------------------------------------------------------
def prf(selected: np.ndarray, bench: Bench, cls: int) -> tuple[float, float, float]:
    """Precision, recall and F1 of the selected ids for class ``cls``, over the whole catalog."""
    tp = int((bench.classes_of(selected) == cls).sum()) if len(selected) else 0
    size = bench.size(cls)
    p = tp / len(selected) if len(selected) else 0.0
    r = tp / size if size else 0.0
    return p, r, (2 * tp / (len(selected) + size) if len(selected) + size else 0.0)


def knn_baselines(bench: Bench, cls: int, pos: np.ndarray, neg: np.ndarray) -> dict:
    index = bench.cat.block_index()
    pos_codes = bench.cat.codes(pos)
    center = rf.center_code(pos_codes).astype(np.uint8)
    k = bench.size(cls)
    top, _ = knn.topk(index.cols, center, k)
    oracle = prf(index.ids[top], bench, cls)
    # the radius that best separates the labelled images, then every code within it
    d_all = ((index.cols.T.astype(np.int64) - center.astype(np.int64)) ** 2).sum(axis=1)
    lab = np.concatenate([pos, neg])
    d_lab = ((bench.cat.codes(lab).astype(np.int64) - center.astype(np.int64)) ** 2).sum(axis=1)
    y_lab = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    order = np.argsort(d_lab, kind="stable")
    tp = np.cumsum(y_lab[order])
    f1 = 2 * tp / (np.arange(1, len(order) + 1) + len(pos))
    radius = d_lab[order][int(np.argmax(f1))]
    radius_ids = index.ids[d_all <= radius]
    return {"knn_oracle": oracle, "knn_radius": prf(radius_ids, bench, cls),
            "knn_radius_k": int(len(radius_ids))}


def linear_baseline(bench: Bench, cls: int, train: rf.Training) -> tuple[float, float, float]:
    """The linear model of the guide (:func:`engine.guide.fit_guide`) fitted on the round's
    training set and applied to every code of the catalog."""
    g = guide.fit_guide(train.X, train.y, train.w)
    index = bench.cat.block_index()
    return prf(index.ids[g.score(index.cols.T) > 0], bench, cls)


# -- one session ------------------------------------------------------------------------------
def run_session(bench: Bench, cls: int, start: dict, spec: tuple[object, dict], args) -> list[dict]:
    model, options = spec
    cat = bench.cat
    grid = cat.search(k=args.grid, **start).ids
    pos = np.zeros(0, np.int64)
    neg = np.zeros(0, np.int64)
    rounds = []
    for r in range(1, args.rounds + 1):
        is_pos = bench.classes_of(grid) == cls
        pos = np.union1d(pos, grid[is_pos])
        neg = np.union1d(neg, grid[~is_pos])
        row = {"round": r, "labels": int(len(pos) + len(neg)), "positives": int(len(pos)),
               "negatives": int(len(neg))}
        if len(pos) == 0:  # nothing of the class to fine-tune on: the search failed
            row.update(p=0.0, r=0.0, f1=0.0, time_ms=None, results=0, next="none",
                       baselines={"knn_oracle": (0.0, 0.0, 0.0), "knn_radius": (0.0, 0.0, 0.0),
                                  "linear": (0.0, 0.0, 0.0)})
            rounds.append(row)
            grid = grid[:0]
            continue
        result = cat.refine(pos, neg, model=model, random_state=0, suggestions=args.grid, **options)
        p, rec, f1 = prf(result.ids, bench, cls)
        row.update(p=p, r=rec, f1=f1, time_ms=result.stats["time_total_ms"], results=int(len(result.ids)))
        base = knn_baselines(bench, cls, pos, neg)
        base["linear"] = linear_baseline(bench, cls, cat.training_set(pos, neg, guide=False))
        row["baselines"] = base
        labelled = np.union1d(pos, neg)
        if args.next != "results" and len(result.suggestions):
            grid, row["next"] = result.suggestions[: args.grid], "suggestions"
        else:
            fresh = result.ids[~np.isin(result.ids, labelled)]
            grid, row["next"] = fresh[: args.grid], "results"
        if np.isin(grid, labelled).any():
            raise AssertionError("the next grid offered images that are already labelled")
        rounds.append(row)
    return rounds


# -- summary ----------------------------------------------------------------------------------
METRICS = ("p", "r", "f1")


def summarize_model(bench: Bench, sessions: list[tuple[int, dict]], runs: list[list[dict]], args) -> dict:
    out = []
    for r in range(args.rounds):
        rows = [run[r] for run in runs]
        classes = [c for c, _ in sessions]

        def per_class(get, classes=classes, rows=rows):
            vals = {}
            for c, row in zip(classes, rows, strict=True):
                vals.setdefault(bench.class_names[c], []).append(get(row))
            return {k: [round(float(x), 4) for x in np.mean(v, axis=0)] for k, v in vals.items()}

        entry = {"round": r + 1,
                 "labels_mean": float(np.mean([x["labels"] for x in rows])),
                 "positives_mean": float(np.mean([x["positives"] for x in rows])),
                 **{f"mean_{m}": round(float(np.mean([x[m] for x in rows])), 4) for m in METRICS},
                 "min_class_f1": None,
                 "per_class_p_r_f1": per_class(lambda x: (x["p"], x["r"], x["f1"])),
                 "median_time_ms": (float(np.median([x["time_ms"] for x in rows if x["time_ms"] is not None]))
                                    if any(x["time_ms"] is not None for x in rows) else None),
                 "mean_results": float(np.mean([x["results"] for x in rows])),
                 "next_grid_from": sorted({x["next"] for x in rows}),
                 "baselines": {}}
        entry["min_class_f1"] = min(v[2] for v in entry["per_class_p_r_f1"].values())
        for b in ("knn_oracle", "knn_radius", "linear"):
            vals = np.array([x["baselines"][b] for x in rows])
            entry["baselines"][b] = {f"mean_{m}": round(float(vals[:, i].mean()), 4) for i, m in enumerate(METRICS)}
            entry["baselines"][b]["sessions_model_f1_above"] = int(sum(x["f1"] > x["baselines"][b][2] for x in rows))
        entry["baselines"]["knn_radius"]["mean_k"] = float(np.mean([x["baselines"].get("knn_radius_k", 0)
                                                                    for x in rows]))
        out.append(entry)
    return {"sessions": len(runs), "rounds": out}


def ceiling(bench: Bench, trees: int, sample: int | None, seed: int = 0) -> dict:
    """Per-class F1 of a random forest trained on every label, by 3-fold cross-validation."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import f1_score
    from sklearn.model_selection import cross_val_predict

    t = time.perf_counter()
    X = bench.cat.codes(bench.ids)
    y = bench.labels
    if sample is not None and sample < len(y):
        pick = np.random.default_rng(seed).choice(len(y), sample, replace=False)
        X, y = X[pick], y[pick]
    forest = RandomForestClassifier(n_estimators=trees, n_jobs=-1, random_state=seed)
    pred = cross_val_predict(forest, X, y, cv=3)
    f1 = f1_score(y, pred, average=None, labels=np.arange(len(bench.class_names)))
    return {"model": f"random forest, {trees} trees, every label, 3-fold cross-validation",
            "rows": int(len(y)), "mean_f1": round(float(f1.mean()), 4),
            "per_class_f1": {n: round(float(v), 4) for n, v in zip(bench.class_names, f1, strict=True)},
            "time_s": time.perf_counter() - t}


def evaluate(bench: Bench, sessions, models: dict[str, object], args) -> dict:
    out = {"rows": int(len(bench.ids)), "classes": len(bench.class_names), "sessions": len(sessions),
           "starts": {bench.class_names[c]: s for c, s in sessions}, "models": {}}
    if args.ceiling_trees:
        out["ceiling"] = ceiling(bench, args.ceiling_trees, args.ceiling_sample)
    for name, model in models.items():
        t = time.perf_counter()
        runs = [run_session(bench, c, s, model, args) for c, s in sessions]
        out["models"][name] = {**summarize_model(bench, sessions, runs, args), "wall_s": time.perf_counter() - t}
        last = out["models"][name]["rounds"][-1]
        print(f"# {bench.name} {name}: F1 by round "
              f"{[x['mean_f1'] for x in out['models'][name]['rounds']]}, oracle k-NN "
              f"{last['baselines']['knn_oracle']['mean_f1']} ({time.perf_counter() - t:.0f} s)",
              file=sys.stderr, flush=True)
    return out


def targets(report: dict, default: str) -> dict:
    demo = report["catalogs"].get("demo")
    if not demo or default not in demo["models"]:
        return {}
    rounds = demo["models"][default]["rounds"]
    first, last = rounds[0], rounds[-1]
    return {"model": default,
            "round1_mean_f1": first["mean_f1"], "round1_target": 0.88,
            "last_round_mean_f1": last["mean_f1"], "last_round_target": 0.92,
            "last_round_min_class_f1": last["min_class_f1"], "min_class_target": 0.78,
            "last_round_knn_oracle_mean_f1": last["baselines"]["knn_oracle"]["mean_f1"],
            "beats_knn_oracle": last["mean_f1"] > last["baselines"]["knn_oracle"]["mean_f1"],
            "ceiling_mean_f1": demo.get("ceiling", {}).get("mean_f1")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default="demo/fashion.duckdb", help="the demo catalog (images.label)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--grid", type=int, default=60, help="images the user labels per round")
    ap.add_argument("--models", nargs="+", default=[*rf.MODELS, "ensemble-original", "branch-original"],
                    help="menu names, 'ensemble-original', 'branch-original', optionally with parameters: "
                         "'ensemble[growth=top-down,guide=False]'")
    ap.add_argument("--next", choices=("auto", "results"), default="auto",
                    help="label the suggestions when a result has them (auto) or always the next results")
    ap.add_argument("--classes", type=int, default=None, help="only the first N classes")
    ap.add_argument("--starts", type=int, default=2, help="synthetic: sessions per class")
    ap.add_argument("--synthetic-rows", type=int, default=100_000)
    ap.add_argument("--synthetic-classes", type=int, default=10)
    ap.add_argument("--synthetic-seed", type=int, default=0)
    ap.add_argument("--clusters-rows", type=int, default=200_000)
    ap.add_argument("--clusters", type=int, default=500, help="classes of the many-small-classes catalog")
    ap.add_argument("--clusters-sessions", type=int, default=10, help="sessions (one per class) on it")
    ap.add_argument("--ceiling-trees", type=int, default=100, help="0 skips the ceiling")
    ap.add_argument("--ceiling-sample", type=int, default=None, help="fit the ceiling on this many rows")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-clusters", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3 classes, 2 rounds, grid 30, 1 start, 20k synthetic rows, small ceiling")
    args = ap.parse_args(argv)
    if args.quick:
        args.classes, args.rounds, args.grid, args.starts = 3, 2, 30, 1
        args.ceiling_trees, args.ceiling_sample, args.clusters = 10, 3000, 50
        args.synthetic_rows, args.clusters_rows = min(args.synthetic_rows, 20_000), min(args.clusters_rows, 20_000)
    try:
        models = {m: model_spec(m) for m in args.models}
    except ValueError as e:
        ap.error(str(e))
    import numba

    t0 = time.perf_counter()
    report = {"benchmark": "session", "protocol": {
        "rounds": args.rounds, "grid": args.grid, "next": args.next, "models": args.models,
        "refine": "Catalog.refine with the product defaults and random_state=0",
        "f1": "over the whole catalog, against the class labels",
        "demo_queries": DEMO_QUERIES}, "cores": os.cpu_count(), "numba_threads": numba.get_num_threads(),
        "catalogs": {}}
    with tempfile.TemporaryDirectory(prefix="eval-session-") as tmp:
        if not args.skip_demo:
            bench, sessions = demo_bench(args.catalog, args.classes)
            with bench.cat:
                report["catalogs"]["demo"] = evaluate(bench, sessions, models, args)
        if not args.skip_synthetic:
            bench, sessions = synthetic_bench(Path(tmp), args.synthetic_rows, args.synthetic_classes,
                                              args.synthetic_seed, args.starts, args.classes)
            with bench.cat:
                report["catalogs"]["synthetic"] = evaluate(bench, sessions, models, args)
        if not args.skip_clusters:
            bench, sessions = rare_bench(Path(tmp), args.clusters_rows, args.clusters, args.synthetic_seed,
                                         args.clusters_sessions, args.classes)
            with bench.cat:
                report["catalogs"]["clusters"] = evaluate(bench, sessions, models, args)
    report["targets"] = targets(report, "ensemble")
    report["wall_s"] = time.perf_counter() - t0
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
