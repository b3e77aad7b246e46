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

from ..boxes import BoxSet
from ..errors import InvalidArgument
from ..index import query
from ..limits import (
    MAX_SAMPLED_NEGATIVES,
    MAX_SEED,
    MAX_SUGGESTIONS,
)
from .guide import Guide, Region, choose_min_votes, fit_guide, group_positives
from .guide import suggest as suggest_by_guide

# The pool's seed is fixed, so a given catalog state samples the same negatives every round and
# results change only when the labels (or random_state, for the model) do.
POOL_SEED = 0x5EED
POOL_SIZE = 16_384
# Guided rounds: unlabelled rows the guide may add as positives. Each one lengthens the round's
# training, and 250 find no more than 120 (demo, scripts/eval_session.py --skip-synthetic
# --skip-clusters --skip-concepts --models ensemble --constant PSEUDO_POSITIVES=250: session F1
# 0.885 / 0.919 / 0.928 against 0.884 / 0.919 / 0.927, round 1 in 278 ms against 218 ms).
PSEUDO_POSITIVES = 120
# The region of a group of labelled positives: a ball around their mean, this many times the
# largest distance of one of them from it. A halfspace is unbounded, and in a large catalog its
# far side holds other classes. On the demo a wider ball finds a little more in round 1 (same
# flags as above, --constant GUIDE_RADIUS=3: 0.896 / 0.919 / 0.926); the wider the ball, the
# more of a neighbouring class it holds where classes are small, so 2 stays.
GUIDE_RADIUS = 2.0
# ...but at least the distance from that mean to the nearest negative, divided by the square
# root of the number of positives: the farthest of one or two positives says little about the
# class's extent (scripts/eval_feedback.py --skip-synthetic --positives 1 8 --models ensemble
# --constant GUIDE_FLOOR=0: demo F1 from one positive 0.02 instead of 0.85).
GUIDE_FLOOR = 1.0
# A rare class (fewer than MIN_HELD_POSITIVES guide positives among the held-out pool rows: the
# pool barely samples it) gets balls of this many times its positives' spread instead, and its
# boxes are clipped to the positives' and pseudo-positives' bounding box widened by HULL_MARGIN
# standard deviations per dim. Boxes constrain 4-8 dims, and where random negatives are as
# sparse as a rare class's neighbours, boxes grown over the whole class take in a neighbouring
# cluster that shares those dims; the clip keeps them to the class on all 32 and lets the index
# prune (scripts/eval_session.py --rows 10000000 --skip-demo --models ensemble; with
# --constant HULL_DIMS=0 --constant RARE_RADIUS=2, no clip and the common balls, the tight
# sessions' lowest precision is 0.79 instead of 1.00 and the median share of rows read
# 0.77-0.88 instead of 0.09-0.10).
RARE_RADIUS = 1.5
HULL_MARGIN = 1.0
# Only the dims on which a hull is narrowest next to the catalog's spread are bounded: each
# bound dim prunes more blocks but costs recall and a test per row read (the same run with
# --constant HULL_DIMS=32 / 16 / 8: median share of rows read 0.05 / 0.09 / 0.25, tight
# sessions' round-1 F1 0.982 / 0.989 / 0.992).
HULL_DIMS = 16
# Groups of positives: two positives (or a positive and a stone, below) are one group when their
# distance is at most LINK_FACTOR times the smaller of their local scales, a positive's local
# scale being its distance to its LINK_NEIGHBOURS-th nearest row of its own k-d block. Positives
# of one search grid form one group; positives of distinct clusters mostly do not. Taking the
# larger of the two scales let one positive bridge the clusters of a loose concept on its own.
LINK_NEIGHBOURS = 16
LINK_FACTOR = 2.0
# Chains may pass through up to this many rows of the pool's candidate half that the guide
# scores positive (each with the positives' median scale): a common class is densely sampled
# there and its positives join up; a rare class's neighbours are not (demo, --constant
# STONES=0: round 1 0.879 against 0.884).
STONES = 1000
# Rows near the positives: the k-d blocks that hold the most labelled positives. In k-d order a
# block's rows are near one another, so these hold a rare class's members that a random pool of
# 16k rows cannot (a class of 0.025% of 10M rows puts 4 members in it).
NEAR_BLOCKS = 16
# Rows near the positives that lie outside the guide's region join the negatives, at most this many.
NEAR_NEGATIVES = 250
# Held-out pool rows (never trained on) calibrate the ensemble's vote threshold, but only when
# the guide marks at least this many of them positive: a threshold fitted to a handful of rows
# is noise, and the ensemble's own majority is the better default.
HELD_OUT = 8_192
MIN_HELD_POSITIVES = 20
# Suggestions: rows whose votes lie within this many of the threshold are near the boundary.
SUGGEST_VOTE_MARGIN = 4
# Suggestions come first from the vote band and from the ring between the region's balls and
# this many times their radii.
SUGGEST_REACH = 2.0
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
    center : int64 (32,), refine only: the code whose distance ranks rows of equal votes
    request : refine only: the labels and options the round ran with (``positives``,
        ``negatives``, ``model``, ...), what a saved concept keeps to be trained again
    """

    ids: np.ndarray
    scores: np.ndarray
    sql: str
    stats: dict
    model: object = field(default=None, repr=False)
    suggestions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    center: np.ndarray | None = field(default=None, repr=False)
    request: dict = field(default_factory=dict, repr=False)

    def to_json(self, limit: int | None = None) -> dict:
        ids = self.ids if limit is None else self.ids[:limit]
        return {
            "ids": ids.tolist(),
            "scores": self.scores[: len(ids)].tolist(),
            "sql": self.sql,
            "stats": self.stats,
            "results": int(len(self.ids)),
            "suggestions": self.suggestions.tolist(),
        }


def parse_ids(values, what: str) -> np.ndarray:
    """int64 ids from a sequence of integers (or integer-valued strings from a form)."""
    if values is None:
        return np.zeros(0, np.int64)
    if isinstance(values, bytes):
        try:
            values = values.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"{what} must be comma-separated image ids, got undecodable bytes"
            ) from None
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
    from .base import BoxClassifierMixin

    if not isinstance(model, BoxClassifierMixin) and (not isinstance(model, str) or model not in MODELS):
        raise InvalidArgument(
            f"unknown model {model!r}; choose one of {', '.join(MODELS)} "
            "or pass a box classifier of engine.learn"
        )
    if isinstance(sampled_negatives, bool) or not isinstance(sampled_negatives, (int, np.integer)):
        raise InvalidArgument(f"sampled_negatives must be an integer, got {sampled_negatives!r}")
    if not 0 <= sampled_negatives <= MAX_SAMPLED_NEGATIVES:
        raise InvalidArgument(
            f"sampled_negatives must be in 0..{MAX_SAMPLED_NEGATIVES}, got {sampled_negatives}"
        )
    try:
        weight = float(negative_weight)
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgument(f"negative_weight must be a number, got {negative_weight!r}") from None
    if isinstance(negative_weight, bool) or not np.isfinite(weight) or not 0 < weight <= 1e6:
        raise InvalidArgument(f"negative_weight must be a positive number up to 1e6, got {negative_weight!r}")
    return model, int(sampled_negatives), weight


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

    Every round also holds a :class:`~engine.learn.guide.Guide` fitted on the labels and the sample
    (it ranks the suggestions), ``free``: row positions of every unlabelled pool row and of the
    unlabelled rows near the positives (suggestion candidates), and ``held``: pool rows no model
    trains on. A ``guided`` round let the guide relabel the sample and add ``n_pseudo`` rows as
    positives, confined its positives to a union of ``n_groups`` balls, and calibrates its vote
    threshold on ``held`` when the guide marks at least :data:`MIN_HELD_POSITIVES` of them
    positive (``held_positives``).
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
    n_groups: int = 0
    held_positives: int = 0
    held_codes: np.ndarray | None = None
    pseudo: np.ndarray | None = None  # int64 row positions of the pseudo-positives
    # uint8 (g, 32) lo, hi per group of positives, and the group of each training positive
    # (int64, in the order of X[y == 1]): each box is clipped to its group's (:func:`clip_boxes`)
    hull: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None


def near_rows(starts: np.ndarray, pos: np.ndarray, max_blocks: int | None = None) -> np.ndarray:
    """int64 row positions of the k-d blocks (``starts``, int64 (n_blocks + 1,)) holding the
    most of the row positions ``pos``, at most ``max_blocks`` (:data:`NEAR_BLOCKS`) of them
    (ties: block order)."""
    max_blocks = NEAR_BLOCKS if max_blocks is None else max_blocks
    if len(pos) == 0 or len(starts) < 2:
        return np.zeros(0, np.int64)
    block = np.searchsorted(starts, pos, side="right") - 1
    blocks, counts = np.unique(block, return_counts=True)
    blocks = np.sort(blocks[np.argsort(-counts, kind="stable")[:max_blocks]])
    return np.concatenate([np.arange(starts[b], starts[b + 1], dtype=np.int64) for b in blocks])


def _sq_dists(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """float64 (len(A), len(B)) squared L2 distances between code rows, by one matrix product."""
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    return np.maximum((A * A).sum(axis=1)[:, None] - 2.0 * A @ B.T + (B * B).sum(axis=1)[None, :], 0.0)


def local_scales(cols: np.ndarray, starts: np.ndarray, pos: np.ndarray, k: int | None = None) -> np.ndarray:
    """float64 (len(pos),): each row's distance to its ``k``-th (:data:`LINK_NEIGHBOURS`) nearest
    row of its own k-d block (``starts`` as in :func:`near_rows`; in k-d order a block's rows
    are near one another), 0 when the block holds ``k`` rows or fewer."""
    k = LINK_NEIGHBOURS if k is None else k
    out = np.zeros(len(pos))
    block = np.searchsorted(starts, pos, side="right") - 1
    for b in np.unique(block):
        at = np.flatnonzero(block == b)
        rows = np.ascontiguousarray(cols[:, starts[b] : starts[b + 1]].T)
        if len(rows) > k:
            d2 = _sq_dists(np.ascontiguousarray(cols[:, pos[at]].T), rows)
            out[at] = np.sqrt(np.partition(d2, k, axis=1)[:, k])
    return out


def guide_region(
    pos_codes: np.ndarray,
    group: np.ndarray,
    scales: np.ndarray,
    negative_codes: np.ndarray,
    radius_factor: float | None = None,
) -> Region:
    """The union of balls the guide's positives must lie in: one ball per ``group`` of positives
    (int64, from :func:`engine.learn.guide.group_positives` with links of :data:`LINK_FACTOR` times
    the local ``scales``), around the group's mean, :data:`GUIDE_RADIUS` times its farthest
    member's distance, and at least :data:`GUIDE_FLOOR` times the nearest of
    ``negative_codes`` over the root of the number of positives."""
    radius_factor = GUIDE_RADIUS if radius_factor is None else radius_factor
    n_groups = int(group.max()) + 1
    centres = np.zeros((n_groups, pos_codes.shape[1]))
    radii = np.zeros(n_groups)
    for g in range(n_groups):
        members = pos_codes[group == g].astype(np.float64)
        c = members.mean(axis=0)
        radius = radius_factor * np.sqrt(((members - c) ** 2).sum(axis=1).max())
        if len(members) <= 2:  # one or two positives say nothing of their class's spread
            radius = max(radius, float(np.median(scales[group == g])))
        if len(negative_codes):
            nearest = np.sqrt(((negative_codes.astype(np.float64) - c) ** 2).sum(axis=1).min())
            radius = max(radius, GUIDE_FLOOR * nearest / np.sqrt(len(pos_codes)))
        centres[g], radii[g] = c, radius
    return Region(centres, radii)


def _evenly(idx: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` entries of ``idx``, evenly spaced over it."""
    if len(idx) <= n:
        return idx
    return idx[np.linspace(0, len(idx) - 1, n).astype(np.int64)] if n > 0 else idx[:0]


def assemble(
    cols: np.ndarray,
    pos: np.ndarray,
    neg: np.ndarray,
    pool: np.ndarray,
    count: int,
    negative_weight: float,
    filter_sampled: bool = True,
    guided: bool = False,
    pseudo_positives: int | None = None,
    pool_codes: np.ndarray | None = None,
    starts: np.ndarray | None = None,
) -> Training:
    """The training set of a refine round, from row positions into ``cols`` (uint8 (32, n)):
    labelled positives ``pos`` and negatives ``neg``, and up to ``count`` rows of ``pool``
    that are not labelled, less those :func:`reliable_negatives` drops.

    ``pool_codes``: uint8 (len(pool), 32), the pool's codes when the caller keeps them.
    ``starts``: int64 (n_blocks + 1,), the k-d block boundaries of ``cols``; the blocks that hold
    the positives (:func:`near_rows`) give the guide rows near them, and suggestion candidates.
    No other rows of ``cols`` are read, which lets a caller pass only those
    (:func:`engine.spark_refine.train_on_export`).

    ``guided``: a :class:`~engine.learn.guide.Guide` is fitted on that set, its positives confined to
    :func:`guide_region`; the sampled rows among its positives are dropped from the negatives,
    up to ``pseudo_positives`` (:data:`PSEUDO_POSITIVES`) further unlabelled rows among them join the positives, taken from
    one half of the rest of the pool and from the rows near the positives, and up to
    :data:`NEAR_NEGATIVES` rows near the positives but outside the region join the negatives.
    The other half of the pool is held out to calibrate the vote threshold, so that neither
    half is stripped of the class.
    """
    pseudo_positives = PSEUDO_POSITIVES if pseudo_positives is None else pseudo_positives
    pos_codes = np.ascontiguousarray(cols[:, pos].T)
    neg_codes = np.ascontiguousarray(cols[:, neg].T)
    if pool_codes is None:
        pool_codes = np.ascontiguousarray(cols[:, pool].T)
    labelled = np.concatenate([pos, neg])
    unlabelled = ~np.isin(pool, labelled)
    free, free_codes = pool[unlabelled], pool_codes[unlabelled]
    sampled, all_sampled = free[:count], free_codes[:count]
    n_sampled = len(sampled)
    sampled_codes = all_sampled[reliable_negatives(all_sampled, pos_codes)] if filter_sampled else all_sampled
    X, y, w = training_set(pos_codes, neg_codes, sampled_codes, negative_weight)
    guide = fit_guide(X, y, w)
    near = np.zeros(0, np.int64) if starts is None else near_rows(starts, pos)
    near = near[~np.isin(near, labelled) & ~np.isin(near, sampled)]
    candidates = np.concatenate([free, near])
    if not guided or len(pos_codes) == 0:
        return Training(
            X,
            y,
            w,
            pos_codes,
            n_sampled,
            n_sampled - len(sampled_codes),
            guide,
            candidates,
            free[count:][:HELD_OUT],
        )
    rest, rest_codes = free[count:], free_codes[count:]
    held, held_codes = rest[1::2][:HELD_OUT], rest_codes[1::2][:HELD_OUT]
    cand, cand_codes = rest[0::2], rest_codes[0::2]
    near_codes = np.ascontiguousarray(cols[:, near].T)
    if starts is not None:
        scales = local_scales(cols, starts, pos)
    else:  # no blocks: the pool's rows stand in for the rows near each positive
        k = min(LINK_NEIGHBOURS, max(len(rest_codes) - 1, 0))
        scales = (
            np.sqrt(np.partition(_sq_dists(pos_codes, rest_codes), k, axis=1)[:, k])
            if k
            else np.zeros(len(pos))
        )
    stones = cand_codes[_evenly(np.flatnonzero(guide.score(cand_codes) > 0), STONES)]
    group = group_positives(pos_codes, LINK_FACTOR * np.asarray(scales, dtype=np.float64), stones)
    region = guide_region(pos_codes, group, scales, X[y == 0])
    rare = int((guide.within(region).positive(held_codes)).sum()) < MIN_HELD_POSITIVES
    if rare:
        # a rare class: the random pool barely samples it, so nothing says how far it extends;
        # its balls shrink to RARE_RADIUS and its boxes are clipped to its hulls (below)
        region = guide_region(pos_codes, group, scales, X[y == 0], RARE_RADIUS)
    guide = guide.within(region)
    sampled_codes = all_sampled[~guide.positive(all_sampled)]
    n_dropped = n_sampled - len(sampled_codes)
    # pseudo-positives: the pool's half first (a random spread over the class), then rows near
    # the positives, evenly spaced, until the budget is spent
    from_pool = np.flatnonzero(guide.positive(cand_codes))[:pseudo_positives]
    near_in = guide.region.contains(near_codes)
    from_near = _evenly(
        np.flatnonzero(near_in & (guide.score(near_codes) > 0)), pseudo_positives - len(from_pool)
    )
    pseudo_codes = np.concatenate([cand_codes[from_pool], near_codes[from_near]])
    # rows near the positives but outside the region: the neighbouring classes that random rows
    # of a large catalog almost never hold, and that boxes grown over the whole class reach
    outside = _evenly(np.flatnonzero(~near_in), NEAR_NEGATIVES)
    X, y, w = training_set(
        np.concatenate([pos_codes, pseudo_codes]),
        neg_codes,
        np.concatenate([sampled_codes, near_codes[outside]]),
        negative_weight,
    )
    hull = None
    if rare:
        hull = group_hulls(np.concatenate([pos_codes, pseudo_codes]), region, pool_codes.std(axis=0))
    return Training(
        X,
        y,
        w,
        pos_codes,
        n_sampled,
        n_dropped,
        guide,
        candidates,
        held,
        True,
        len(pseudo_codes),
        len(guide.region.radii),
        int(guide.positive(held_codes).sum()),
        held_codes,
        np.concatenate([cand[from_pool], near[from_near]]),
        hull,
    )


def fit_round(train: Training, cols: np.ndarray, model, subsets: Sequence[Sequence[int]], random_state):
    """The fitted estimator of a refine round on its training set, with its vote threshold
    calibrated (:func:`calibrate`): what ``Catalog.refine`` applies to the catalog."""
    estimator = make_model(model, subsets, random_state).fit(train.X, train.y, sample_weight=train.w)
    if train.hull is not None:
        estimator.boxes_ = clip_boxes(estimator.boxes_, train.X[train.y == 1], *train.hull)
    calibrate(estimator, train, cols)
    return estimator


def group_hulls(
    codes: np.ndarray, region: Region, spread: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lo, hi, group)``: for each ball of ``region``, the bounding box (uint8 (g, 32)) of the
    rows ``codes`` (uint8 (n, 32), the positives of a round) that lie deepest in it, widened
    by :data:`HULL_MARGIN` standard deviations per dim, and each row's ball (int64 (n,)).

    Only the :data:`HULL_DIMS` dims on which the hull is narrowest next to ``spread`` (float64
    (32,), the catalog's spread per dim) are bounded; the others span 0..255."""
    group = region.nearest(codes)
    n_groups, d = len(region.radii), codes.shape[1]
    lo, hi = np.zeros((n_groups, d), np.uint8), np.full((n_groups, d), 255, np.uint8)
    for g in np.unique(group):
        rows = codes[group == g].astype(np.float64)
        margin = HULL_MARGIN * rows.std(axis=0)
        g_lo = np.clip(np.floor(rows.min(axis=0) - margin), 0, 255)
        g_hi = np.clip(np.ceil(rows.max(axis=0) + margin), 0, 255)
        narrow = np.argsort((g_hi - g_lo) / np.maximum(spread, 1e-9), kind="stable")[:HULL_DIMS]
        lo[g, narrow], hi[g, narrow] = g_lo[narrow], g_hi[narrow]
    return lo, hi, group


def clip_boxes(
    boxes: BoxSet, positives: np.ndarray, lo: np.ndarray, hi: np.ndarray, group: np.ndarray
) -> BoxSet:
    """Every box intersected with the hull (``lo``, ``hi``: uint8 (g, 32)) of the group whose
    ``positives`` (uint8 (n, 32), of groups ``group``) it holds most; a box holding none is
    intersected with the bounding box of all hulls. Boxes left empty go.

    Boxes constrain 4-8 dims; the hull bounds all 32, which keeps a box grown over a rare class
    out of the neighbouring clusters that share its few dims."""
    if len(boxes) == 0:
        return boxes
    P = np.asarray(positives)
    inside = ((boxes.lo[:, None, :] <= P[None]) & (P[None] <= boxes.hi[:, None, :])).all(axis=2)
    counts = np.stack([inside[:, group == g].sum(axis=1) for g in range(len(lo))], axis=1)
    owner = np.argmax(counts, axis=1)
    box_lo, box_hi = lo[owner], hi[owner]
    none = counts.max(axis=1) == 0
    box_lo[none], box_hi[none] = lo.min(axis=0), hi.max(axis=0)
    new_lo, new_hi = np.maximum(boxes.lo, box_lo), np.minimum(boxes.hi, box_hi)
    keep = (new_lo <= new_hi).all(axis=1)
    return BoxSet.from_arrays(new_lo[keep], new_hi[keep], boxes.members[keep])


def calibrate(estimator, train: Training, cols: np.ndarray) -> int:
    """Set a fitted ensemble's ``min_votes_`` to the threshold on which it agrees best with the
    round's guide on the held-out pool rows (:func:`engine.learn.guide.choose_min_votes`); returns it.
    Single models, unguided rounds and rounds whose guide marks fewer than
    :data:`MIN_HELD_POSITIVES` held-out rows keep the model's own threshold."""
    n_members = int(getattr(estimator, "n_estimators", 1))
    if not train.guided or n_members <= 1 or train.held_positives < MIN_HELD_POSITIVES:
        return int(estimator.min_votes_)
    held = train.held_codes if train.held_codes is not None else np.ascontiguousarray(cols[:, train.held].T)
    votes = query.votes(np.ascontiguousarray(held.T), estimator.boxes_)
    estimator.min_votes_ = choose_min_votes(
        votes, train.guide.positive(held), n_members, estimator.min_votes_, MIN_HELD_POSITIVES
    )
    return int(estimator.min_votes_)


def suggest(
    index: query.BlockIndex,
    sel: query.Selection,
    min_votes: int,
    n_members: int,
    train: Training,
    labelled: np.ndarray,
    n: int,
) -> np.ndarray:
    """Up to ``n`` unlabelled ids whose labels would teach the next round most.

    Candidates are the selected rows whose votes lie within :data:`SUGGEST_VOTE_MARGIN` above
    the threshold (where the members disagree), and the unlabelled rows of the round's pool (a
    random sample of the catalog, which reaches rows no box holds) and near the positives. They
    are ranked by the round's guide's uncertainty, those within :data:`SUGGEST_REACH` times its
    region first, and the picks spread out so that no two are near-duplicates
    (:func:`engine.learn.guide.suggest`).
    """
    if n <= 0:
        return np.zeros(0, np.int64)
    near = np.zeros(0, np.int64)
    if n_members > 1:  # votes rank first, descending: the band is one run of the selection
        neg_votes = -sel.votes.astype(np.int64)
        stop = np.searchsorted(neg_votes, -min_votes, side="right")
        start = np.searchsorted(neg_votes, -(min_votes + SUGGEST_VOTE_MARGIN - 1), side="left")
        near = np.arange(start, stop)
    if len(near) > SUGGEST_CANDIDATES:  # a broad round: an even spread of its boundary rows
        near = near[np.linspace(0, len(near) - 1, SUGGEST_CANDIDATES).astype(np.int64)]
    band = sel.ids[near]
    cand = np.unique(np.concatenate([band, index.ids[train.free]]))
    cand = cand[~np.isin(cand, labelled)]
    if len(cand) == 0:
        return np.zeros(0, np.int64)
    codes = np.ascontiguousarray(index.cols[:, index.positions(cand)].T)
    prefer = None
    region = train.guide.region
    if region is not None:
        # where the members disagree, and the ring just outside the region: the rows whose
        # labels move the boundary, and lead to the parts of a concept the labels have not reached
        ring = ~region.contains(codes) & region.contains(codes, SUGGEST_REACH)
        prefer = np.isin(cand, band) | ring
    return cand[suggest_by_guide(codes, train.guide, n, prefer=prefer)]


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
    from .models import DecisionBranchEnsemble

    return DecisionBranchEnsemble(n_estimators=25, subsets=subsets, random_state=random_state)


def _branch(subsets, random_state):
    from .models import DecisionBranchClassifier

    return DecisionBranchClassifier(subsets=subsets, random_state=random_state)


def _sklearn_seed(random_state):
    """scikit-learn takes no numpy Generator: draw its integer seed from it."""
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(MAX_SEED + 1))
    return random_state


def _tree(subsets, random_state):
    from .trees import TreeBoxes

    return TreeBoxes(random_state=_sklearn_seed(random_state))


def _forest(subsets, random_state):
    from .trees import ForestBoxes

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


def training_set(
    pos_codes: np.ndarray, neg_codes: np.ndarray, sampled_codes: np.ndarray, negative_weight: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X, y and sample weights: user negatives weigh ``negative_weight`` times a sampled one,
    and the positives together weigh as much as all negatives together.

    The balance matters because sampled negatives are only probably negative: when the class
    the user wants is 10% of the catalog, 500 random rows hold about 50 of its members. With
    unit weights, 8 positives are outnumbered inside their own region and every model shrinks
    to boxes around the labelled points; balanced, a box over the region is purer than one
    around a single positive, and a box that also takes in another class is not.
    """
    X = np.concatenate([pos_codes, neg_codes, sampled_codes])
    y = np.concatenate(
        [np.ones(len(pos_codes), np.int64), np.zeros(len(neg_codes) + len(sampled_codes), np.int64)]
    )
    w_neg = np.concatenate([np.full(len(neg_codes), negative_weight), np.ones(len(sampled_codes))])
    w_pos = w_neg.sum() / len(pos_codes) if len(pos_codes) and w_neg.sum() > 0 else 1.0
    w = np.concatenate([np.full(len(pos_codes), w_pos), w_neg])
    return X, y, w


def center_code(pos_codes: np.ndarray) -> np.ndarray:
    """The positives' mean code, rounded: ties in votes rank by integer distance to it."""
    return np.rint(pos_codes.astype(np.float64).mean(axis=0)).astype(np.int64)
