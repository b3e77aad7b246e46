"""Search by classification: the training set of a refine round, the model menu, and results.

A refine round trains a box classifier on the user's labelled images plus negatives sampled from
a fixed random pool of catalog rows (random rows are almost all negative when positives are
rare), then applies it to the whole catalog through the block index (``Catalog.refine``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from . import query
from .errors import InvalidArgument
from .guide import Guide, choose_min_votes, fit_guide
from .guide import suggest as suggest_by_guide

DEFAULT_SAMPLED_NEGATIVES = 500
MAX_SAMPLED_NEGATIVES = 100_000
# The pool's seed is fixed, so a given catalog state samples the same negatives every round and
# results change only when the labels (or random_state, for the model) do.
POOL_SEED = 0x5EED
POOL_SIZE = 16_384
# Guided rounds: unlabelled pool rows the guide may add as positives, and pool rows (not trained
# on) that calibrate the vote threshold and feed the suggestions.
PSEUDO_POSITIVES = 250
# The guide's positives must lie within this many times the largest distance of a labelled
# positive from their mean: a halfspace is unbounded, and for a class of 0.2% of the catalog
# its far side holds other classes (scripts/eval_session.py, clusters: round-1 F1 0.69 -> 0.99).
GUIDE_RADIUS = 2.0
# ...but at least the distance from that mean to the nearest negative, divided by the square
# root of the number of positives: the farthest of one or two positives says little about the
# class's extent (scripts/eval_feedback.py, demo, one positive: F1 0.00 -> 0.84).
GUIDE_FLOOR = 1.0
HELD_OUT = 8_192
# Suggestions: rows whose votes lie within this many of the threshold are near the boundary.
SUGGEST_VOTE_MARGIN = 4
DEFAULT_SUGGESTIONS = 60
# At most this many of a round's rows near the vote threshold are candidates for suggestions,
# so that a round selecting millions of rows still suggests in milliseconds.
SUGGEST_CANDIDATES = 16_384
_ID_TEXT = re.compile(r"-?[0-9]{1,40}")  # ASCII digits only: str.isdigit() also takes "²"


@dataclass
class Result:
    """Ranked images from ``Catalog.search`` or ``Catalog.refine``.

    ids : int64, best first
    scores : int64; refine: member votes (higher is better); search: squared distance of the
        codes to the query code (lower is better)
    sql : a SELECT that returns the same ids in the same order when run on the catalog file
    stats : times per phase (ms), rows touched, result count, ...
    model : the fitted estimator of a refine round (its ``boxes_`` are what the SQL tests)
    suggestions : int64, refine only: unlabelled ids to label next, near the model's boundary
        and spread out (see :func:`suggest`)
    """

    ids: np.ndarray
    scores: np.ndarray
    sql: str
    stats: dict
    model: object = field(default=None, repr=False)
    suggestions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def to_json(self, limit: int | None = None) -> dict:
        ids = self.ids if limit is None else self.ids[:limit]
        return {"ids": ids.tolist(), "scores": self.scores[: len(ids)].tolist(), "sql": self.sql,
                "stats": self.stats, "results": int(len(self.ids)), "suggestions": self.suggestions.tolist()}


def parse_ids(values, what: str) -> np.ndarray:
    """int64 ids from a sequence of integers (or integer-valued strings from a form)."""
    if values is None:
        return np.zeros(0, np.int64)
    if isinstance(values, bytes):
        try:
            values = values.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(f"{what} must be comma-separated image ids, got undecodable bytes") from None
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    if isinstance(values, np.ndarray):
        values = values.tolist()
    try:
        values = list(values)
    except TypeError:
        raise InvalidArgument(f"{what} must be a list of image ids, got {values!r}") from None
    out = []
    for v in values:
        if isinstance(v, bool):
            raise InvalidArgument(f"{what}: {v!r} is not an image id")
        if isinstance(v, (int, np.integer)):
            i = int(v)
        elif isinstance(v, str) and _ID_TEXT.fullmatch(v.strip()):
            i = int(v.strip())
        elif isinstance(v, (float, np.floating)) and float(v).is_integer():
            i = int(v)
        else:
            raise InvalidArgument(f"{what}: {v!r} is not an integer image id")
        if not -(2**63) <= i < 2**63:
            raise InvalidArgument(f"{what}: {i} is out of the range of image ids (64-bit integers)")
        out.append(i)
    ids = np.asarray(out, dtype=np.int64)
    return np.unique(ids)


def check_labels(positives, negatives) -> tuple[np.ndarray, np.ndarray]:
    pos = parse_ids(positives, "positives")
    neg = parse_ids(negatives, "negatives")
    if len(pos) == 0:
        raise InvalidArgument("label at least one image as positive before fine-tuning")
    both = np.intersect1d(pos, neg)
    if len(both):
        shown = ", ".join(str(i) for i in both[:10])
        raise InvalidArgument(f"image id(s) {shown} are labelled both positive and negative; pick one")
    return pos, neg


MAX_SEED = 2**32 - 1  # scikit-learn's limit; the decision branch models accept the same range


def check_random_state(random_state):
    """None, a numpy Generator, or an integer seed in 0..2**32-1 (the range every model takes)."""
    if random_state is None or isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise InvalidArgument(f"random_state must be None or an integer seed, got {random_state!r}")
    if not 0 <= int(random_state) <= MAX_SEED:
        raise InvalidArgument(f"random_state must be in 0..{MAX_SEED}, got {random_state}")
    return int(random_state)


def check_options(model, sampled_negatives, negative_weight) -> tuple[object, int, float]:
    """``model`` is a name of :data:`MODELS` or an unfitted box classifier of :mod:`engine.learn`."""
    from .learn.base import BoxClassifierMixin

    if not isinstance(model, BoxClassifierMixin) and (not isinstance(model, str) or model not in MODELS):
        raise InvalidArgument(f"unknown model {model!r}; choose one of {', '.join(MODELS)} "
                              "or pass a box classifier of engine.learn")
    if isinstance(sampled_negatives, bool) or not isinstance(sampled_negatives, (int, np.integer)):
        raise InvalidArgument(f"sampled_negatives must be an integer, got {sampled_negatives!r}")
    if not 0 <= sampled_negatives <= MAX_SAMPLED_NEGATIVES:
        raise InvalidArgument(f"sampled_negatives must be in 0..{MAX_SAMPLED_NEGATIVES}, got {sampled_negatives}")
    try:
        weight = float(negative_weight)
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgument(f"negative_weight must be a number, got {negative_weight!r}") from None
    if isinstance(negative_weight, bool) or not np.isfinite(weight) or not 0 < weight <= 1e6:
        raise InvalidArgument(f"negative_weight must be a positive number up to 1e6, got {negative_weight!r}")
    return model, int(sampled_negatives), weight


MAX_SUGGESTIONS = 1000


def check_suggestions(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= MAX_SUGGESTIONS:
        raise InvalidArgument(f"suggestions must be an integer in 0..{MAX_SUGGESTIONS}, got {n!r}")
    return int(n)


def negative_pool(n_rows: int, size: int) -> np.ndarray:
    """Row positions of the fixed sampling pool: the first ``size`` of one seeded permutation
    prefix, so asking for fewer negatives gives a prefix of what asking for more gives."""
    want = min(n_rows, max(size, POOL_SIZE))
    return np.random.default_rng(POOL_SEED).choice(n_rows, size=want, replace=False)


def sample_negatives(pool: np.ndarray, count: int, exclude: np.ndarray) -> np.ndarray:
    """The first ``count`` rows of the pool that are not labelled (not in ``exclude``)."""
    keep = pool[~np.isin(pool, exclude)]
    return keep[:count]


@dataclass
class Training:
    """A refine round's training set: ``X`` uint8 (n, 32), ``y`` int64, ``w`` float64; the
    labelled positives' codes; how many rows were sampled and how many of them were dropped.

    Every round also holds a :class:`~engine.guide.Guide` fitted on the labels and the sample
    (it ranks the suggestions), ``free``: row positions of every unlabelled pool row (suggestion
    candidates), and ``held``: those of them no model trains on. A ``guided`` round let the
    guide relabel the sample and add ``n_pseudo`` pool rows as positives, and calibrates its
    vote threshold on ``held``.
    """

    X: np.ndarray
    y: np.ndarray
    w: np.ndarray
    pos_codes: np.ndarray
    n_sampled: int
    n_dropped: int
    guide: Guide
    free: np.ndarray
    held: np.ndarray
    guided: bool = False
    n_pseudo: int = 0


def assemble(cols: np.ndarray, pos: np.ndarray, neg: np.ndarray, pool: np.ndarray, count: int,
             negative_weight: float, filter_sampled: bool = True, guided: bool = False,
             pseudo_positives: int = PSEUDO_POSITIVES) -> Training:
    """The training set of a refine round, from row positions into ``cols`` (uint8 (32, n)):
    labelled positives ``pos`` and negatives ``neg``, and up to ``count`` rows of ``pool``
    that are not labelled, less those :func:`reliable_negatives` drops.

    ``guided``: a :class:`~engine.guide.Guide` is fitted on that set, its positives confined to
    :data:`GUIDE_RADIUS` times the labelled positives' largest distance from their mean (at
    least :data:`GUIDE_FLOOR` times the nearest negative's over the root of their number); the
    sampled rows among its positives are dropped from the negatives, and up to
    ``pseudo_positives`` further unlabelled pool rows among them join the positives (see
    :mod:`engine.guide`).
    """
    pos_codes = np.ascontiguousarray(cols[:, pos].T)
    neg_codes = np.ascontiguousarray(cols[:, neg].T)
    free = pool[~np.isin(pool, np.concatenate([pos, neg]))]
    sampled, rest = free[:count], free[count:]
    all_sampled = np.ascontiguousarray(cols[:, sampled].T)
    n_sampled = len(sampled)
    sampled_codes = all_sampled[reliable_negatives(all_sampled, pos_codes)] if filter_sampled else all_sampled
    X, y, w = training_set(pos_codes, neg_codes, sampled_codes, negative_weight)
    guide = fit_guide(X, y, w)
    if not guided:
        return Training(X, y, w, pos_codes, n_sampled, n_sampled - len(sampled_codes), guide, free,
                        rest[:HELD_OUT])
    rest_codes = np.ascontiguousarray(cols[:, rest].T)
    if len(pos_codes):
        c = pos_codes.astype(np.float64).mean(axis=0)
        radius = GUIDE_RADIUS * np.sqrt(((pos_codes - c) ** 2).sum(axis=1).max())
        negatives = X[y == 0]
        if len(negatives):
            nearest = np.sqrt(((negatives - c) ** 2).sum(axis=1).min())
            radius = max(radius, GUIDE_FLOOR * nearest / np.sqrt(len(pos_codes)))
        guide = guide.within(c, radius)
    sampled_codes = all_sampled[~guide.positive(all_sampled)]
    pseudo = np.flatnonzero(guide.positive(rest_codes))[:pseudo_positives]
    X, y, w = training_set(np.concatenate([pos_codes, rest_codes[pseudo]]), neg_codes, sampled_codes,
                           negative_weight)
    return Training(X, y, w, pos_codes, n_sampled, n_sampled - len(sampled_codes), guide, free,
                    np.delete(rest, pseudo)[:HELD_OUT], True, len(pseudo))


def fit_round(train: Training, cols: np.ndarray, model, subsets: Sequence[Sequence[int]], random_state):
    """The fitted estimator of a refine round on its training set, with its vote threshold
    calibrated (:func:`calibrate`): what ``Catalog.refine`` applies to the catalog."""
    estimator = make_model(model, subsets, random_state).fit(train.X, train.y, sample_weight=train.w)
    calibrate(estimator, train, cols)
    return estimator


def calibrate(estimator, train: Training, cols: np.ndarray) -> int:
    """Set a fitted ensemble's ``min_votes_`` to the threshold on which it agrees best with the
    round's guide on the held-out pool rows (:func:`engine.guide.choose_min_votes`); returns it.
    Single models and unguided rounds keep their own threshold."""
    n_members = int(getattr(estimator, "n_estimators", 1))
    if not train.guided or n_members <= 1 or len(train.held) == 0:
        return int(estimator.min_votes_)
    held = np.ascontiguousarray(cols[:, train.held])
    votes = query.votes(held, estimator.boxes_)
    estimator.min_votes_ = choose_min_votes(votes, train.guide.positive(held.T), n_members,
                                            estimator.min_votes_)
    return int(estimator.min_votes_)


def suggest(index: query.BlockIndex, sel: query.Selection, min_votes: int, n_members: int, train: Training,
            labelled: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` unlabelled ids whose labels would teach the next round most.

    Candidates are the rows near the vote threshold, from a selection made with a threshold
    :data:`SUGGEST_VOTE_MARGIN` lower (votes within the margin of ``min_votes`` on either side:
    where the members disagree), and the unlabelled rows of the round's pool (a random sample of
    the catalog, which reaches rows no box holds). They are ranked by the round's guide's uncertainty, and the
    picks spread out so that no two are near-duplicates (:func:`engine.guide.suggest`).
    """
    if n <= 0:
        return np.zeros(0, np.int64)
    near = np.zeros(0, np.int64)
    if n_members > 1:  # votes rank first, descending: the band is one run of the selection
        neg_votes = -sel.votes.astype(np.int64)
        start = np.searchsorted(neg_votes, -(min_votes + SUGGEST_VOTE_MARGIN - 1), side="left")
        stop = np.searchsorted(neg_votes, -(min_votes - SUGGEST_VOTE_MARGIN + 1), side="right")
        near = np.arange(start, stop)
    if len(near) > SUGGEST_CANDIDATES:  # a broad round: an even spread of its boundary rows
        near = near[np.linspace(0, len(near) - 1, SUGGEST_CANDIDATES).astype(np.int64)]
    cand = np.unique(np.concatenate([sel.ids[near], index.ids[train.free]]))
    cand = cand[~np.isin(cand, labelled)]
    if len(cand) == 0:
        return np.zeros(0, np.int64)
    codes = np.ascontiguousarray(index.cols[:, index.positions(cand)].T)
    return cand[suggest_by_guide(codes, train.guide, n)]


def reliable_negatives(sampled_codes: np.ndarray, pos_codes: np.ndarray) -> np.ndarray:
    """Mask of the sampled rows to keep as negatives: those nearer the sample's own mean than
    the positives' mean (Rocchio, as in positive-unlabelled learning).

    Random rows are unlabelled, not negative: a class of 10% puts ~50 of its members among 500
    samples, and those hem every box in at the labelled points. Rows that look more like the
    positives than like the catalog at large are dropped from the sample; user negatives are
    always kept.
    """
    if len(sampled_codes) == 0:
        return np.zeros(0, bool)
    s = sampled_codes.astype(np.float64)
    mu_pos = pos_codes.astype(np.float64).mean(axis=0)
    mu_all = s.mean(axis=0)
    return ((s - mu_all) ** 2).sum(axis=1) <= ((s - mu_pos) ** 2).sum(axis=1)


def _ensemble(subsets, random_state):
    from .learn.models import DecisionBranchEnsemble

    return DecisionBranchEnsemble(n_estimators=25, subsets=subsets, random_state=random_state)


def _branch(subsets, random_state):
    from .learn.models import DecisionBranchClassifier

    return DecisionBranchClassifier(subsets=subsets, random_state=random_state)


def _sklearn_seed(random_state):
    """scikit-learn takes no numpy Generator: draw its integer seed from it."""
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(MAX_SEED + 1))
    return random_state


def _tree(subsets, random_state):
    from .learn.trees import TreeBoxes

    return TreeBoxes(random_state=_sklearn_seed(random_state))


def _forest(subsets, random_state):
    from .learn.trees import ForestBoxes

    return ForestBoxes(n_estimators=25, random_state=_sklearn_seed(random_state))


# Model names of the API, the CLI and the UI, and the estimators they build. The learners are
# imported on first use: scikit-learn costs a second to import.
MODEL_FACTORIES = {"ensemble": _ensemble, "branch": _branch, "tree": _tree, "forest": _forest}
MODELS = tuple(MODEL_FACTORIES)


def make_model(model, subsets: Sequence[Sequence[int]], random_state):
    """An unfitted estimator for a model name of :data:`MODELS`, or a clone of an estimator
    with the catalog's ``subsets`` (where it names none) and ``random_state`` (unless None)."""
    if isinstance(model, str):
        return MODEL_FACTORIES[model](subsets, random_state)
    from sklearn.base import clone

    est = clone(model)
    params = est.get_params(deep=False)
    updates = {}
    if "subsets" in params and params["subsets"] is None:
        updates["subsets"] = subsets
    if random_state is not None:
        updates["random_state"] = _sklearn_seed(random_state)
    return est.set_params(**updates)


def model_name(model) -> str:
    """The name a refine round reports for ``model``: its menu name, or its class name."""
    return model if isinstance(model, str) else type(model).__name__


def training_set(pos_codes: np.ndarray, neg_codes: np.ndarray, sampled_codes: np.ndarray,
                 negative_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X, y and sample weights: user negatives weigh ``negative_weight`` times a sampled one,
    and the positives together weigh as much as all negatives together.

    The balance matters because sampled negatives are only probably negative: when the class
    the user wants is 10% of the catalog, 500 random rows hold about 50 of its members. With
    unit weights, 8 positives are outnumbered inside their own region and every model shrinks
    to boxes around the labelled points; balanced, a box over the region is purer than one
    around a single positive, and a box that also takes in another class is not.
    """
    X = np.concatenate([pos_codes, neg_codes, sampled_codes])
    y = np.concatenate([np.ones(len(pos_codes), np.int64), np.zeros(len(neg_codes) + len(sampled_codes), np.int64)])
    w_neg = np.concatenate([np.full(len(neg_codes), negative_weight), np.ones(len(sampled_codes))])
    w_pos = w_neg.sum() / len(pos_codes) if len(pos_codes) and w_neg.sum() > 0 else 1.0
    w = np.concatenate([np.full(len(pos_codes), w_pos), w_neg])
    return X, y, w


def center_code(pos_codes: np.ndarray) -> np.ndarray:
    """The positives' mean code, rounded: ties in votes rank by integer distance to it."""
    return np.rint(pos_codes.astype(np.float64).mean(axis=0)).astype(np.int64)
