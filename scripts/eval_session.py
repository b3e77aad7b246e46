"""Simulated labelling sessions: does fine-tuning find the whole concept, round after round?

A simulated user searches once, then labels and fine-tunes for ``--rounds`` rounds, the way a
person uses the web UI. A session looks for a *concept*: one class, or a union of classes that
a user has in mind as one thing ("shoes to wear outside": sandals, sneakers and ankle boots).

1. **Search.** Demo catalog: one free-text query per class or concept, written for this
   benchmark (no class name, no template of the demo encoder). Synthetic catalogs: an image
   query by the code of a random member of the class (``Catalog.search(id=...)``).
2. **Label the grid.** Every image of the visible grid (``--grid``, 60) is labelled by its true
   class: positive if its class is one of the session's concept, else negative.
3. **Fine-tune** with ``Catalog.refine`` and the product's defaults (sampled negatives, weight,
   seed 0), and score the whole result against the concept over the **whole catalog**:
   precision, recall, F1.
4. **Next grid.** The user labels the next ``--grid`` images the UI offers: the *Label next*
   suggestions when the result carries them (``--next auto``, the default), else the first
   unlabelled images of the ranked results. Labels accumulate; back to 3.

Catalogs:

- ``demo``: the demo catalog (``--catalog``, Fashion-MNIST, classes of 10 %), one session per
  class (``--classes``: the first N). Absent file: ``demo`` and ``demo-concepts`` are skipped
  with a message on stderr.
- ``demo-concepts``: the same catalog, one session per concept of 2-4 classes
  (:data:`DEMO_CONCEPTS`); ``--skip-concepts`` leaves it out.
- ``synthetic``: curved bands (:func:`engine.datasets.synth.curved_bands`), ``--starts`` sessions per class.
- ``clusters``: ``--clusters`` (500) small classes of ``--clusters-rows`` rows, one session for
  each of the ``--clusters-sessions`` classes nearest the median size.
- ``clusters-N``, for each ``--rows N``: N clustered codes (:func:`engine.datasets.synth.synth_catalog`)
  with one cluster per ``--rows-per-cluster`` rows (2500: at 10M rows 4000 classes of
  0.01-0.1 %), kept under ``--dir`` and reused while its ``synth`` setting matches and its index
  is fresh. Two kinds of session, reported apart:

  - ``tight``: the ``--scale-sessions`` (6) clusters nearest the median size, each from an
    image query by one random member;
  - ``loose``: ``--loose-sessions`` (3) concepts, each one cluster (the next nearest the median
    size) and its :data:`LOOSE_NEIGHBOURS` nearest clusters by distance between centres (mean
    codes), as related concepts lie near one another in CLIP space; the search starts from a
    random member of the first cluster.

  No ceiling on these unless ``--scale-ceiling-sample`` gives the rows to fit it on.

Baselines, scored in the same round on the same labels:

- ``knn_oracle``: "more like these" at its best: the k codes nearest to the labelled positives'
  rounded mean code, told the true concept size k (no user knows it).
- ``knn_radius``: the same ranking with a k a user could know: all codes within the radius that
  best separates the labelled positives from the labelled negatives (the radius maximising F1
  on the labelled images; distances to the same mean code).
- ``linear``: a logistic regression on the refine round's training set (labels plus the sampled
  negatives, same weights; the guide's model, :mod:`engine.learn.guide`), applied to every code of
  the catalog: what SeeSaw and Exquisitor do, at the price of a full scan.

The ceiling: a random forest of ``--ceiling-trees`` trees trained on **every** label of the
catalog, scored by 3-fold cross-validation (per-class F1 of its predictions; on the scale
catalogs, F1 of its predictions for each session's concept): what any learner on these 32-byte
codes can reach.

Models are the product's menu (``ensemble``, ``branch``, ``tree``, ``forest``) plus, for the
paired comparison, the decision branch learners grown the original's way (``*-original``): the
same training set, the original code's bottom-up growth, ``min_pts = min(50, 1.5 p)`` and
plain bootstrap (:data:`ORIGINAL`). With ``--rows`` the default is the guided ensemble against
the same ensemble without the guide: ``ensemble`` and ``ensemble[guide=False]``.

    python scripts/eval_session.py [--rounds 3] [--models ensemble branch tree forest] [--quick]
    python scripts/eval_session.py --rows 10000000 30000000 [--dir bench-data] --skip-synthetic --skip-clusters

``--quick`` is a smoke run: 3 classes, 2 rounds, grid 30, small catalogs and ceiling; with
``--rows``, 100 rows per cluster (classes of 0.05%), 2 tight and 1 loose session.
``--constant NAME=VALUE`` sets a constant of ``engine.learn.refine`` or ``engine.learn.guide`` for the run
(``--constant HULL_DIMS=0`` turns the rare-class clip off, ``--constant STONES=0`` the chains
through pool rows): the figures that the constants' comments quote come from such runs.

Prints JSON: per catalog the ceiling, and per model and round the labels used, mean and
per-class precision, recall and F1, the lowest precision of any session (``min_p``), the median
refine time, the share of rows in blocks the query read (``share_touched``), the guide's
pseudo-positives, the ensemble's vote threshold (``min_votes``), the result count and its ratio
to the concept size (median, mean and ``max_results_over_size``), and the baselines; per model
every session's rounds in the order of ``session_fields``; then a summary of the targets.

``scale_targets`` compares the guided ensemble with the unguided one, per scale catalog and on
``demo-concepts``, each target as value, target and pass:

- tight sessions: guided F1 at least the unguided F1 less 0.01 in every session and round
  (worst difference), mean F1 of the last round >= 0.97, precision >= 0.95 in every round;
- loose concepts: mean F1 of the last round >= 0.90, no round returning more than twice the
  concept's size, precision in every session and round at least the unguided one's;
- time: guided median round time <= 1.5x the unguided one in round 1 (the only round whose
  labels are the same for both) and over all rounds; tight median <= 200 ms at 10M rows and
  <= 400 ms at 30M (those sizes only); each with the median share of rows read.
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
from typing import NamedTuple

import numpy as np

import engine
from engine.datasets import synth
from engine.errors import CatalogError, CatalogNotFound
from engine.index import knn
from engine.learn import guide
from engine.learn import refine as rf

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

# Demo concepts of several classes: (classes, free-text query naming none of them).
DEMO_CONCEPTS = {
    "footwear": (("Sandal", "Sneaker", "Ankle boot"), "shoes to wear outside"),
    "upper body": (("T-shirt/top", "Pullover", "Coat", "Shirt"), "something to wear on the upper body"),
    "warm clothes": (("Pullover", "Coat"), "warm clothes for winter"),
    "tops": (("T-shirt/top", "Shirt"), "a light top for summer"),
}

# Scale catalogs: 2500 rows per cluster gives classes of 0.01-0.1 % (log-normal sizes); 500 keeps
# a quick 200k-row catalog's classes as rare (0.05 %).
ROWS_PER_CLUSTER, QUICK_ROWS_PER_CLUSTER = 2500, 100
SCALE_SESSIONS, LOOSE_SESSIONS = 6, 3
QUICK_SCALE_SESSIONS, QUICK_LOOSE_SESSIONS = 2, 1
# A loose concept: one cluster and this many nearest clusters by centre distance.
LOOSE_NEIGHBOURS = 7
# The paired comparison of ``scale_targets``, and the default models with --rows.
GUIDED, UNGUIDED = "ensemble", "ensemble[guide=False]"
# Rows per step of a baseline's full scan: keeps its temporaries near 130 MB at any catalog size.
SCAN_ROWS = 1 << 20


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
        raise ValueError(
            f"unknown model {name!r}; choose from {[*rf.MODELS, 'ensemble-original', 'branch-original']}"
        )
    options = {"guide": False} if name in extra else {}
    params = {}
    for item in filter(None, rest.rstrip("]").split(",")):
        key, _, value = (part.strip() for part in item.partition("="))
        with contextlib.suppress(ValueError, SyntaxError):
            value = ast.literal_eval(value)
        (options if key in REFINE_OPTIONS else params)[key] = value
    model = extra.get(name, name)
    if params:
        model = (model if not isinstance(model, str) else rf.make_model(model, None, None)).set_params(
            **params
        )
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
        self.sizes = np.bincount(self.labels, minlength=len(self.class_names))  # int64 (classes,)

    def classes_of(self, ids: np.ndarray) -> np.ndarray:
        return self._labels_sorted[np.searchsorted(self._sorted, ids)]

    def in_concept(self, ids: np.ndarray, concept: np.ndarray) -> np.ndarray:
        """bool (len(ids),): whether each image's class is one of ``concept`` (class indices)."""
        return np.isin(self.classes_of(ids), concept)

    def size(self, concept: np.ndarray | int) -> int:
        """Images of the concept's classes (an int64 array of class indices, or one index)."""
        return int(self.sizes[np.atleast_1d(concept)].sum())


class Session(NamedTuple):
    """What one simulated user looks for and how the search starts."""

    name: str  # the class or concept, as reported
    concept: np.ndarray  # int64 (k,): the classes whose images are positives, the first one searched for
    start: dict  # Catalog.search arguments: {"text": ...} or {"id": ...}


def one_class(bench: Bench, c: int, start: dict) -> Session:
    return Session(bench.class_names[c], np.array([c], np.int64), start)


def demo_bench(path: str, classes: int | None) -> tuple[Bench, list[Session]]:
    cat = engine.Catalog.open(path, read_only=True)
    tbl = cat.sql("SELECT id, label FROM images ORDER BY id")
    names = sorted(set(tbl.column("label").to_pylist()))
    code = {n: i for i, n in enumerate(names)}
    labels = np.array([code[v] for v in tbl.column("label").to_pylist()], np.int64)
    bench = Bench("demo", cat, tbl.column("id").to_numpy(), labels, names)
    chosen = [n for n in DEMO_QUERIES if n in code][: classes or None]
    return bench, [one_class(bench, code[n], {"text": DEMO_QUERIES[n]}) for n in chosen]


def demo_concepts(bench: Bench) -> list[Session]:
    """One session per concept of :data:`DEMO_CONCEPTS` whose classes the catalog holds."""
    code = {n: i for i, n in enumerate(bench.class_names)}
    return [
        Session(name, np.array([code[c] for c in classes], np.int64), {"text": query})
        for name, (classes, query) in DEMO_CONCEPTS.items()
        if all(c in code for c in classes)
    ]


def synthetic_bench(
    directory: Path, rows: int, n_classes: int, seed: int, starts: int, classes: int | None
) -> tuple[Bench, list[Session]]:
    path = directory / "bands.duckdb"
    labels = synth.bands_catalog(path, rows, n_classes, seed)
    cat = engine.Catalog.open(path, read_only=True)
    ids = np.arange(rows, dtype=np.int64)  # add_codes numbers new rows 0..n-1
    bench = Bench("synthetic", cat, ids, labels, [f"band{c}" for c in range(n_classes)])
    rng = np.random.default_rng([seed, 0x5E55])
    sessions = []
    for c in range(min(classes or n_classes, n_classes)):
        members = ids[labels == c]
        sessions += [
            one_class(bench, c, {"id": int(i)}) for i in rng.choice(members, size=starts, replace=False)
        ]
    return bench, sessions


def clusters_bench(path: Path, name: str, n_clusters: int) -> Bench:
    """The clustered catalog at ``path`` (:func:`engine.datasets.synth.synth_catalog`, ``label`` = cluster)."""
    cat = engine.Catalog.open(path, read_only=True)
    cat.store.con.execute("SET enable_progress_bar = false")  # stdout carries the report
    tbl = cat.sql("SELECT id, label FROM images ORDER BY id")
    ids, labels = tbl.column("id").to_numpy(), tbl.column("label").to_numpy().astype(np.int64)
    return Bench(name, cat, ids, labels, [f"cluster{c}" for c in range(n_clusters)])


def median_ranking(bench: Bench) -> np.ndarray:
    """Class indices, those whose size is nearest the median first (ties: lower index)."""
    return np.argsort(np.abs(bench.sizes - np.median(bench.sizes)), kind="stable")


def tight_sessions(bench: Bench, n: int, seed: int) -> list[Session]:
    """The ``n`` clusters nearest the median size, each started from an image query by one random member."""
    rng = np.random.default_rng([seed, 0xC105])
    return [
        one_class(bench, int(c), {"id": int(rng.choice(bench.ids[bench.labels == c]))})
        for c in sorted(median_ranking(bench)[:n])
    ]


def cluster_centres(bench: Bench) -> np.ndarray:
    """float64 (classes, 32): the mean code of each class (NaN for an empty one)."""
    index = bench.cat.block_index()
    classes = bench.classes_of(index.ids)
    k = len(bench.class_names)
    sums = np.stack([np.bincount(classes, weights=col, minlength=k) for col in index.cols], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / np.bincount(classes, minlength=k)[:, None]


def nearest_clusters(centres: np.ndarray, c: int, n: int) -> np.ndarray:
    """int64 (n,): the ``n`` classes whose centres are nearest to class ``c``'s, nearest first."""
    d = ((centres - centres[c]) ** 2).sum(axis=1)
    d[c] = np.inf
    d[np.isnan(d)] = np.inf
    return np.argsort(d, kind="stable")[:n].astype(np.int64)


def loose_sessions(bench: Bench, n: int, seed: int, skip: int) -> list[Session]:
    """``n`` concepts, each a cluster (the next ``n`` nearest the median size after the first
    ``skip``) and its :data:`LOOSE_NEIGHBOURS` nearest clusters, started from an image query by
    a random member of that first cluster."""
    centres = cluster_centres(bench)
    rng = np.random.default_rng([seed, 0x1005E])
    sessions = []
    for c in median_ranking(bench)[skip : skip + n]:
        near = nearest_clusters(centres, c, min(LOOSE_NEIGHBOURS, len(centres) - 1))
        concept = np.concatenate([[c], near]).astype(np.int64)
        start = {"id": int(rng.choice(bench.ids[bench.labels == c]))}
        sessions.append(Session(f"cluster{c}+{len(near)}", concept, start))
    return sessions


def rare_bench(
    directory: Path, rows: int, n_clusters: int, seed: int, sessions_wanted: int, classes: int | None
) -> tuple[Bench, list[Session]]:
    """Many small classes: ``n_clusters`` elongated Gaussian clusters (:func:`engine.datasets.synth.clustered_codes`,
    the catalogs of ``bench_refine.py``), so that each class is a fraction of a percent of the catalog,
    as a query's class is in a large real catalog. Sessions: the clusters nearest the median size, each
    started from an image query by one random member."""
    path = directory / "clusters.duckdb"
    synth.synth_catalog(path, rows, seed, n_clusters)
    bench = clusters_bench(path, "clusters", n_clusters)
    return bench, tight_sessions(bench, min(classes or sessions_wanted, n_clusters), seed)


def clusters_catalog(directory: Path, rows: int, n_clusters: int, seed: int) -> tuple[Path, dict]:
    """A catalog of ``rows`` clustered codes under ``directory``: the file of an earlier run when
    its ``synth`` setting matches and its index is fresh, else a new one; ``(path, build info)``."""
    path = directory / f"clusters_{rows}_k{n_clusters}_s{seed}.duckdb"
    if path.exists():
        if _reusable(path, {"rows": rows, "seed": seed, "clusters": n_clusters}):
            return path, {"cached": True}
        path.unlink()
        Path(f"{path}.wal").unlink(missing_ok=True)
    t = time.perf_counter()
    synth.synth_catalog(path, rows, seed, n_clusters)
    return path, {"cached": False, "build_s": round(time.perf_counter() - t, 1)}


def _reusable(path: Path, want: dict) -> bool:
    for read_only in (True, False):  # a writable open migrates an older schema
        try:
            with engine.Catalog.open(path, read_only=read_only) as cat:
                setting = cat.setting("synth") or {}
                return all(setting.get(k) == v for k, v in want.items()) and not cat.index_status()["stale"]
        except CatalogError:
            continue
    return False


# -- scoring ----------------------------------------------------------------------------------
def prf(selected: np.ndarray, bench: Bench, concept: np.ndarray) -> tuple[float, float, float]:
    """Precision, recall and F1 of the selected ids for the concept, over the whole catalog."""
    tp = int(bench.in_concept(selected, concept).sum()) if len(selected) else 0
    size = bench.size(concept)
    p = tp / len(selected) if len(selected) else 0.0
    r = tp / size if size else 0.0
    return p, r, (2 * tp / (len(selected) + size) if len(selected) + size else 0.0)


def squared_distances(cols: np.ndarray, center: np.ndarray) -> np.ndarray:
    """int32 (n,): squared L2 distance of every code of ``cols`` (uint8 (32, n)) to ``center``."""
    out = np.empty(cols.shape[1], np.int32)
    c = center.astype(np.int32)[:, None]
    for a in range(0, cols.shape[1], SCAN_ROWS):
        d = cols[:, a : a + SCAN_ROWS].astype(np.int32) - c
        out[a : a + SCAN_ROWS] = (d * d).sum(axis=0)
    return out


def knn_baselines(bench: Bench, concept: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> dict:
    index = bench.cat.block_index()
    pos_codes = bench.cat.codes(pos)
    center = rf.center_code(pos_codes).astype(np.uint8)
    k = bench.size(concept)
    top, _ = knn.topk(index.cols, center, k)
    oracle = prf(index.ids[top], bench, concept)
    # the radius that best separates the labelled images, then every code within it
    d_all = squared_distances(index.cols, center)
    lab = np.concatenate([pos, neg])
    d_lab = ((bench.cat.codes(lab).astype(np.int64) - center.astype(np.int64)) ** 2).sum(axis=1)
    y_lab = np.concatenate([np.ones(len(pos), bool), np.zeros(len(neg), bool)])
    order = np.argsort(d_lab, kind="stable")
    tp = np.cumsum(y_lab[order])
    f1 = 2 * tp / (np.arange(1, len(order) + 1) + len(pos))
    radius = d_lab[order][int(np.argmax(f1))]
    radius_ids = index.ids[d_all <= radius]
    return {
        "knn_oracle": oracle,
        "knn_radius": prf(radius_ids, bench, concept),
        "knn_radius_k": int(len(radius_ids)),
    }


def linear_baseline(bench: Bench, concept: np.ndarray, train: rf.Training) -> tuple[float, float, float]:
    """The linear model of the guide (:func:`engine.learn.guide.fit_guide`) fitted on the round's
    training set and applied to every code of the catalog."""
    g = guide.fit_guide(train.X, train.y, train.w)
    index = bench.cat.block_index()
    n = index.cols.shape[1]
    keep = np.concatenate([g.score(index.cols[:, a : a + SCAN_ROWS].T) > 0 for a in range(0, n, SCAN_ROWS)])
    return prf(index.ids[keep], bench, concept)


# -- one session ------------------------------------------------------------------------------
# Per round of a session, as kept in the report (``per_session``).
SESSION_FIELDS = (
    "p",
    "r",
    "f1",
    "time_ms",
    "results",
    "share_touched",
    "pseudo_positives",
    "min_votes",
    "guided",
)


def run_session(bench: Bench, session: Session, spec: tuple[object, dict], args) -> list[dict]:
    model, options = spec
    cat, concept = bench.cat, session.concept
    size = bench.size(concept)
    grid = cat.search(k=args.grid, **session.start).ids
    pos = np.zeros(0, np.int64)
    neg = np.zeros(0, np.int64)
    rounds = []
    for r in range(1, args.rounds + 1):
        is_pos = bench.in_concept(grid, concept)
        pos = np.union1d(pos, grid[is_pos])
        neg = np.union1d(neg, grid[~is_pos])
        row = {
            "round": r,
            "labels": int(len(pos) + len(neg)),
            "positives": int(len(pos)),
            "negatives": int(len(neg)),
        }
        if len(pos) == 0:  # nothing of the concept to fine-tune on: the search failed
            row.update(
                p=0.0,
                r=0.0,
                f1=0.0,
                time_ms=None,
                results=0,
                results_over_size=0.0,
                share_touched=None,
                pseudo_positives=None,
                min_votes=None,
                guided=None,
                next="none",
                baselines={
                    "knn_oracle": (0.0, 0.0, 0.0),
                    "knn_radius": (0.0, 0.0, 0.0),
                    "linear": (0.0, 0.0, 0.0),
                },
            )
            rounds.append(row)
            grid = grid[:0]
            continue
        result = cat.refine(pos, neg, model=model, random_state=0, suggestions=args.grid, **options)
        stats = result.stats
        p, rec, f1 = prf(result.ids, bench, concept)
        row.update(
            p=p,
            r=rec,
            f1=f1,
            time_ms=stats["time_total_ms"],
            results=int(len(result.ids)),
            results_over_size=len(result.ids) / size,
            share_touched=float(stats["share_touched"]),
            pseudo_positives=int(stats["pseudo_positives"]),
            min_votes=int(stats["min_votes"]),
            guided=bool(stats["guided"]),
        )
        base = knn_baselines(bench, concept, pos, neg)
        base["linear"] = linear_baseline(bench, concept, cat.training_set(pos, neg, guide=False))
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


def _over(rows: list[dict], key: str, reduce, digits: int = 4) -> float | None:
    """``reduce`` of the rows' ``key`` where it is known (None when it is nowhere)."""
    vals = [x[key] for x in rows if x[key] is not None]
    return round(float(reduce(vals)), digits) if vals else None


def _compact(row: dict) -> list:
    out = []
    for f in SESSION_FIELDS:
        v = row[f]
        out.append(round(v, 1 if f == "time_ms" else 5) if isinstance(v, float) else v)
    return out


def summarize_model(bench: Bench, sessions: list[Session], runs: list[list[dict]], args) -> dict:
    out = []
    for r in range(args.rounds):
        rows = [run[r] for run in runs]
        names = [s.name for s in sessions]

        def per_class(get, names=names, rows=rows):
            vals = {}
            for n, row in zip(names, rows, strict=True):
                vals.setdefault(n, []).append(get(row))
            return {k: [round(float(x), 4) for x in np.mean(v, axis=0)] for k, v in vals.items()}

        entry = {
            "round": r + 1,
            "labels_mean": float(np.mean([x["labels"] for x in rows])),
            "positives_mean": float(np.mean([x["positives"] for x in rows])),
            **{f"mean_{m}": round(float(np.mean([x[m] for x in rows])), 4) for m in METRICS},
            "min_class_f1": None,
            "min_p": round(float(min(x["p"] for x in rows)), 4),
            "per_class_p_r_f1": per_class(lambda x: (x["p"], x["r"], x["f1"])),
            "median_time_ms": (
                float(np.median([x["time_ms"] for x in rows if x["time_ms"] is not None]))
                if any(x["time_ms"] is not None for x in rows)
                else None
            ),
            "mean_results": float(np.mean([x["results"] for x in rows])),
            "median_results": float(np.median([x["results"] for x in rows])),
            "median_results_over_size": _over(rows, "results_over_size", np.median),
            "mean_results_over_size": _over(rows, "results_over_size", np.mean),
            "max_results_over_size": _over(rows, "results_over_size", np.max),
            "median_share_touched": _over(rows, "share_touched", np.median, 5),
            "mean_share_touched": _over(rows, "share_touched", np.mean, 5),
            "median_pseudo_positives": _over(rows, "pseudo_positives", np.median, 1),
            "mean_pseudo_positives": _over(rows, "pseudo_positives", np.mean, 1),
            "median_min_votes": _over(rows, "min_votes", np.median, 1),
            "mean_min_votes": _over(rows, "min_votes", np.mean, 2),
            "guided": sorted({x["guided"] for x in rows if x["guided"] is not None}),
            "next_grid_from": sorted({x["next"] for x in rows}),
            "baselines": {},
        }
        entry["min_class_f1"] = min(v[2] for v in entry["per_class_p_r_f1"].values())
        for b in ("knn_oracle", "knn_radius", "linear"):
            vals = np.array([x["baselines"][b] for x in rows])
            entry["baselines"][b] = {
                f"mean_{m}": round(float(vals[:, i].mean()), 4) for i, m in enumerate(METRICS)
            }
            entry["baselines"][b]["sessions_model_f1_above"] = int(
                sum(x["f1"] > x["baselines"][b][2] for x in rows)
            )
        entry["baselines"]["knn_radius"]["mean_k"] = float(
            np.mean([x["baselines"].get("knn_radius_k", 0) for x in rows])
        )
        out.append(entry)
    return {"sessions": len(runs), "rounds": out, "per_session": [[_compact(x) for x in run] for run in runs]}


def ceiling(
    bench: Bench, trees: int, sample: int | None, seed: int = 0, concepts: list[Session] | None = None
) -> dict:
    """Per-class F1 of a random forest trained on every label, by 3-fold cross-validation; with
    ``concepts``, the F1 of its predictions for each session's concept instead."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import f1_score
    from sklearn.model_selection import cross_val_predict

    t = time.perf_counter()
    ids, y = bench.ids, bench.labels
    if sample is not None and sample < len(y):
        pick = np.random.default_rng(seed).choice(len(y), sample, replace=False)
        ids, y = ids[pick], y[pick]
    X = bench.cat.codes(ids)
    forest = RandomForestClassifier(n_estimators=trees, n_jobs=-1, random_state=seed)
    pred = cross_val_predict(forest, X, y, cv=3)
    f1 = f1_score(y, pred, average=None, labels=np.arange(len(bench.class_names)), zero_division=0)
    out = {
        "model": f"random forest, {trees} trees, every label, 3-fold cross-validation",
        "rows": int(len(y)),
        "mean_f1": round(float(f1.mean()), 4),
    }
    if concepts is None:
        out["per_class_f1"] = {n: round(float(v), 4) for n, v in zip(bench.class_names, f1, strict=True)}
    else:
        out["per_concept_f1"] = {
            s.name: round(
                float(f1_score(np.isin(y, s.concept), np.isin(pred, s.concept), zero_division=0)), 4
            )
            for s in concepts
        }
    out["time_s"] = time.perf_counter() - t
    return out


def evaluate(
    bench: Bench,
    sessions: list[Session],
    models: dict[str, object],
    args,
    *,
    with_ceiling: bool = True,
    label: str | None = None,
) -> dict:
    out = {
        "rows": int(len(bench.ids)),
        "classes": len(bench.class_names),
        "sessions": len(sessions),
        "starts": {s.name: s.start for s in sessions},
        "concepts": [
            {"name": s.name, "classes": s.concept.tolist(), "size": bench.size(s.concept)} for s in sessions
        ],
        "session_fields": list(SESSION_FIELDS),
        "models": {},
    }
    if with_ceiling and args.ceiling_trees:
        out["ceiling"] = ceiling(bench, args.ceiling_trees, args.ceiling_sample)
    for name, model in models.items() if sessions else ():
        t = time.perf_counter()
        runs = [run_session(bench, s, model, args) for s in sessions]
        out["models"][name] = {
            **summarize_model(bench, sessions, runs, args),
            "wall_s": time.perf_counter() - t,
        }
        last = out["models"][name]["rounds"][-1]
        print(
            f"# {label or bench.name} {name}: F1 by round "
            f"{[x['mean_f1'] for x in out['models'][name]['rounds']]}, oracle k-NN "
            f"{last['baselines']['knn_oracle']['mean_f1']} ({time.perf_counter() - t:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
    return out


def evaluate_scale(directory: Path, rows: int, models: dict[str, object], args) -> dict:
    """Tight and loose sessions on the cached clustered catalog of ``rows`` rows."""
    n_clusters = max(1, round(rows / args.rows_per_cluster))
    key = f"clusters-{rows}"
    path, built = clusters_catalog(directory, rows, n_clusters, args.synthetic_seed)
    bench = clusters_bench(path, key, n_clusters)
    with bench.cat:
        tight = tight_sessions(bench, args.scale_sessions, args.synthetic_seed)
        loose = loose_sessions(bench, args.loose_sessions, args.synthetic_seed, skip=args.scale_sessions)
        out = {
            "rows": rows,
            "clusters": n_clusters,
            "rows_per_cluster": args.rows_per_cluster,
            "catalog": {"path": str(path), **built},
        }
        if args.scale_ceiling_sample and args.ceiling_trees:
            out["ceiling"] = ceiling(
                bench, args.ceiling_trees, args.scale_ceiling_sample, concepts=tight + loose
            )
        out["tight"] = evaluate(bench, tight, models, args, with_ceiling=False, label=f"{key} tight")
        out["loose"] = evaluate(bench, loose, models, args, with_ceiling=False, label=f"{key} loose")
    return out


def targets(report: dict, default: str) -> dict:
    demo = report["catalogs"].get("demo")
    if not demo or default not in demo["models"]:
        return {}
    rounds = demo["models"][default]["rounds"]
    first, last = rounds[0], rounds[-1]
    return {
        "model": default,
        "round1_mean_f1": first["mean_f1"],
        "round1_target": 0.88,
        "last_round_mean_f1": last["mean_f1"],
        "last_round_target": 0.92,
        "last_round_min_class_f1": last["min_class_f1"],
        "min_class_target": 0.78,
        "last_round_knn_oracle_mean_f1": last["baselines"]["knn_oracle"]["mean_f1"],
        "beats_knn_oracle": last["mean_f1"] > last["baselines"]["knn_oracle"]["mean_f1"],
        "ceiling_mean_f1": demo.get("ceiling", {}).get("mean_f1"),
    }


# -- guided against unguided ------------------------------------------------------------------
TIGHT_F1_SLACK = 0.01  # guided F1 may trail the unguided by this much in any session and round
TIGHT_LAST_F1, TIGHT_MIN_P = 0.97, 0.95
LOOSE_LAST_F1, LOOSE_MAX_RESULTS_OVER_SIZE = 0.90, 2.0
TIME_RATIO = 1.5  # guided median round time over the unguided one
TIGHT_TIME_MS = {10_000_000: 200.0, 30_000_000: 400.0}  # guided tight median round time, at these sizes only
_F = {f: i for i, f in enumerate(SESSION_FIELDS)}


def _target(value: float, target: float, at_least: bool, rule: str, **beside) -> dict:
    ok = bool(np.isfinite(value) and (value >= target if at_least else value <= target))
    return {
        "value": round(float(value), 4) if np.isfinite(value) else None,
        "target": target,
        "pass": ok,
        "rule": rule,
        **beside,
    }


def _paired(section: dict | None) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """float (sessions, rounds, fields) of the guided and the unguided model (None unknown) and
    the concept sizes, or None when the section lacks sessions or either model."""
    models = (section or {}).get("models", {})
    if not section or not section["sessions"] or GUIDED not in models or UNGUIDED not in models:
        return None
    g, u = (np.array(models[m]["per_session"], dtype=float) for m in (GUIDED, UNGUIDED))
    return g, u, np.array([c["size"] for c in section["concepts"]], dtype=float)


def _times(pairs: list[tuple], rounds: slice, name: str) -> dict:
    g = np.concatenate([p[0][:, rounds].reshape(-1, len(_F)) for p in pairs])
    u = np.concatenate([p[1][:, rounds].reshape(-1, len(_F)) for p in pairs])
    gt, ut = np.nanmedian(g[:, _F["time_ms"]]), np.nanmedian(u[:, _F["time_ms"]])
    return _target(
        gt / ut,
        TIME_RATIO,
        False,
        f"guided median round time / unguided, {name}",
        guided_ms=round(float(gt), 1),
        unguided_ms=round(float(ut), 1),
        guided_share_touched=round(float(np.nanmedian(g[:, _F["share_touched"]])), 5),
        unguided_share_touched=round(float(np.nanmedian(u[:, _F["share_touched"]])), 5),
    )


def compare_guided(tight: dict | None, loose: dict | None, rows: int | None) -> dict:
    """The targets of the guided ensemble against the unguided one on one catalog's sections."""
    out = {}
    t, lo = _paired(tight), _paired(loose)
    if t is not None:
        g, u, _ = t
        f1, p = _F["f1"], _F["p"]
        out["tight_f1_vs_unguided"] = _target(
            np.min(g[..., f1] - u[..., f1]),
            -TIGHT_F1_SLACK,
            True,
            "worst guided F1 - unguided F1 over sessions and rounds",
        )
        out["tight_last_round_mean_f1"] = _target(
            np.mean(g[:, -1, f1]), TIGHT_LAST_F1, True, "guided mean F1 after the last round"
        )
        out["tight_min_precision"] = _target(
            np.min(g[..., p]), TIGHT_MIN_P, True, "guided precision, lowest over sessions and rounds"
        )
        if rows in TIGHT_TIME_MS:
            out["tight_median_time_ms"] = _target(
                np.nanmedian(g[..., _F["time_ms"]]),
                TIGHT_TIME_MS[rows],
                False,
                f"guided median round time of the tight sessions at {rows} rows",
                share_touched=round(float(np.nanmedian(g[..., _F["share_touched"]])), 5),
            )
    if lo is not None:
        g, u, sizes = lo
        f1, p = _F["f1"], _F["p"]
        out["loose_last_round_mean_f1"] = _target(
            np.mean(g[:, -1, f1]),
            LOOSE_LAST_F1,
            True,
            "guided mean F1 after the last round",
            min=round(float(np.min(g[:, -1, f1])), 4),
        )
        out["loose_max_results_over_size"] = _target(
            np.max(g[..., _F["results"]] / sizes[:, None]),
            LOOSE_MAX_RESULTS_OVER_SIZE,
            False,
            "guided results / concept size, highest over sessions and rounds",
        )
        out["loose_precision_vs_unguided"] = _target(
            np.min(g[..., p] - u[..., p]),
            0.0,
            True,
            "worst guided precision - unguided over sessions and rounds",
        )
    pairs = [x for x in (t, lo) if x is not None]
    if pairs:
        out["time_ratio_round1"] = _times(pairs, slice(0, 1), "round 1 (same labels)")
        out["time_ratio_all_rounds"] = _times(pairs, slice(None), "all rounds")
    if not out:
        return {"skipped": f"needs sessions of both {GUIDED!r} and {UNGUIDED!r}"}
    out["all_pass"] = all(v["pass"] for v in out.values())
    return out


def scale_targets(report: dict) -> dict:
    out = {"guided": GUIDED, "unguided": UNGUIDED, "catalogs": {}}
    for key, cat in report["catalogs"].items():
        if key.startswith("clusters-"):
            out["catalogs"][key] = compare_guided(cat.get("tight"), cat.get("loose"), cat["rows"])
        elif key == "demo-concepts":
            out["catalogs"][key] = compare_guided(None, cat, None)
    return out


def set_constants(assignments: list[str]) -> dict:
    """Set ``NAME=VALUE`` constants of :mod:`engine.learn.refine` or :mod:`engine.learn.guide` (numbers, each
    of the type of the constant it replaces); returns ``{"module.NAME": value}``."""
    from engine.learn import guide as guide_module

    done = {}
    for text in assignments:
        name, sep, raw = (part.strip() for part in text.partition("="))
        modules = [m for m in (rf, guide_module) if name.isupper() and hasattr(m, name)]
        if not sep or len(modules) != 1:
            raise ValueError(
                f"--constant takes NAME=VALUE, NAME a constant of engine.learn.refine or engine.learn.guide; got {text!r}"
            )
        old = getattr(modules[0], name)
        if isinstance(old, bool) or not isinstance(old, (int, float)):
            raise ValueError(f"--constant {name}: only numeric constants can be set")
        try:
            value = type(old)(raw)
        except ValueError:
            raise ValueError(f"--constant {name}: {raw!r} is not a {type(old).__name__}") from None
        setattr(modules[0], name, value)
        done[f"{modules[0].__name__}.{name}"] = value
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default="demo/fashion.duckdb", help="the demo catalog (images.label)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--grid", type=int, default=60, help="images the user labels per round")
    ap.add_argument(
        "--models",
        nargs="+",
        default=None,
        help="menu names, 'ensemble-original', 'branch-original', optionally with parameters: "
        "'ensemble[growth=top-down,guide=False]' (default: the menu and both originals; "
        f"with --rows, {GUIDED!r} and {UNGUIDED!r})",
    )
    ap.add_argument(
        "--next",
        choices=("auto", "results"),
        default="auto",
        help="label the suggestions when a result has them (auto) or always the next results",
    )
    ap.add_argument("--classes", type=int, default=None, help="only the first N classes")
    ap.add_argument("--starts", type=int, default=2, help="synthetic: sessions per class")
    ap.add_argument("--synthetic-rows", type=int, default=100_000)
    ap.add_argument("--synthetic-classes", type=int, default=10)
    ap.add_argument("--synthetic-seed", type=int, default=0, help="seed of every synthetic catalog")
    ap.add_argument("--clusters-rows", type=int, default=200_000)
    ap.add_argument("--clusters", type=int, default=500, help="classes of the many-small-classes catalog")
    ap.add_argument("--clusters-sessions", type=int, default=10, help="sessions (one per class) on it")
    ap.add_argument(
        "--rows",
        type=lambda s: int(float(s)),
        nargs="+",
        default=None,
        help="scale catalogs of these many clustered rows (cached under --dir)",
    )
    ap.add_argument(
        "--rows-per-cluster",
        type=int,
        default=None,
        help=f"scale catalogs: rows per cluster ({ROWS_PER_CLUSTER}; {QUICK_ROWS_PER_CLUSTER} with --quick)",
    )
    ap.add_argument("--dir", default="bench-data", help="where scale catalogs are built and kept for reuse")
    ap.add_argument(
        "--scale-sessions",
        type=int,
        default=None,
        help=f"tight sessions per scale catalog ({SCALE_SESSIONS}; {QUICK_SCALE_SESSIONS} with --quick)",
    )
    ap.add_argument(
        "--loose-sessions",
        type=int,
        default=None,
        help=f"loose concepts per scale catalog ({LOOSE_SESSIONS}; {QUICK_LOOSE_SESSIONS} with --quick)",
    )
    ap.add_argument(
        "--scale-ceiling-sample",
        type=int,
        default=None,
        help="fit a ceiling on this many rows of each scale catalog (default: no ceiling there)",
    )
    ap.add_argument("--ceiling-trees", type=int, default=100, help="0 skips the ceiling")
    ap.add_argument("--ceiling-sample", type=int, default=None, help="fit the ceiling on this many rows")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--skip-concepts", action="store_true", help="no demo-concepts sessions")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-clusters", action="store_true")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 3 classes, 2 rounds, grid 30, 1 start, 20k synthetic rows, small ceiling; "
        "with --rows, 500 rows per cluster, 2 tight and 1 loose session",
    )
    ap.add_argument(
        "--constant",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set a constant of engine.learn.refine or engine.learn.guide for this run, e.g. GUIDE_RADIUS=1.5 "
        "(repeatable): how the figures their comments cite are reproduced",
    )
    args = ap.parse_args(argv)
    try:
        constants = set_constants(args.constant)
    except ValueError as e:
        ap.error(str(e))
    if args.quick:
        args.classes, args.rounds, args.grid, args.starts = 3, 2, 30, 1
        args.ceiling_trees, args.ceiling_sample, args.clusters = 10, 3000, 50
        args.synthetic_rows, args.clusters_rows = (
            min(args.synthetic_rows, 20_000),
            min(args.clusters_rows, 20_000),
        )
    quick = bool(args.quick and args.rows)
    for name, full, small in (
        ("rows_per_cluster", ROWS_PER_CLUSTER, QUICK_ROWS_PER_CLUSTER),
        ("scale_sessions", SCALE_SESSIONS, QUICK_SCALE_SESSIONS),
        ("loose_sessions", LOOSE_SESSIONS, QUICK_LOOSE_SESSIONS),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.models is None:
        args.models = (
            [GUIDED, UNGUIDED] if args.rows else [*rf.MODELS, "ensemble-original", "branch-original"]
        )
    try:
        models = {m: model_spec(m) for m in args.models}
    except ValueError as e:
        ap.error(str(e))
    import numba

    t0 = time.perf_counter()
    report = {
        "benchmark": "session",
        "constants": constants,
        "protocol": {
            "rounds": args.rounds,
            "grid": args.grid,
            "next": args.next,
            "models": args.models,
            "refine": "Catalog.refine with the product defaults and random_state=0",
            "f1": "over the whole catalog, against the concept's class labels",
            "demo_queries": DEMO_QUERIES,
            "demo_concepts": {k: {"classes": list(c), "query": q} for k, (c, q) in DEMO_CONCEPTS.items()},
        },
        "cores": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "catalogs": {},
    }
    if args.rows:
        report["protocol"]["scale"] = {
            "rows": sorted(set(args.rows)),
            "rows_per_cluster": args.rows_per_cluster,
            "seed": args.synthetic_seed,
            "tight_sessions": args.scale_sessions,
            "loose_sessions": args.loose_sessions,
            "loose_neighbours": LOOSE_NEIGHBOURS,
            "ceiling_sample": args.scale_ceiling_sample,
        }
    with tempfile.TemporaryDirectory(prefix="eval-session-") as tmp:
        if not args.skip_demo:
            try:
                bench, sessions = demo_bench(args.catalog, args.classes)
            except CatalogNotFound:
                print(
                    f"# no demo catalog at {args.catalog} (build it with `clip-branches demo {args.catalog}`); "
                    "skipping demo and demo-concepts",
                    file=sys.stderr,
                    flush=True,
                )
            else:
                with bench.cat:
                    report["catalogs"]["demo"] = evaluate(bench, sessions, models, args)
                    if not args.skip_concepts:
                        report["catalogs"]["demo-concepts"] = evaluate(
                            bench,
                            demo_concepts(bench),
                            models,
                            args,
                            with_ceiling=False,
                            label="demo-concepts",
                        )
        if not args.skip_synthetic:
            bench, sessions = synthetic_bench(
                Path(tmp),
                args.synthetic_rows,
                args.synthetic_classes,
                args.synthetic_seed,
                args.starts,
                args.classes,
            )
            with bench.cat:
                report["catalogs"]["synthetic"] = evaluate(bench, sessions, models, args)
        if not args.skip_clusters:
            bench, sessions = rare_bench(
                Path(tmp),
                args.clusters_rows,
                args.clusters,
                args.synthetic_seed,
                args.clusters_sessions,
                args.classes,
            )
            with bench.cat:
                report["catalogs"]["clusters"] = evaluate(bench, sessions, models, args)
    if args.rows:
        directory = Path(args.dir)
        directory.mkdir(parents=True, exist_ok=True)
        for rows in sorted(set(args.rows)):
            print(f"# {rows} rows", file=sys.stderr, flush=True)
            report["catalogs"][f"clusters-{rows}"] = evaluate_scale(directory, rows, models, args)
    report["targets"] = targets(report, "ensemble")
    report["scale_targets"] = scale_targets(report)
    report["wall_s"] = time.perf_counter() - t0
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
