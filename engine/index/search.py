"""The catalog's queries over a :class:`~engine.index.snapshot.Snapshot`: box-set selection
(:func:`select`), search by classification (:func:`refine`, :func:`training_set`) and
nearest-neighbour search by text, image or id (:func:`search`). Plain functions: ``Catalog``
hands them the loader of its current snapshot (called once arguments are checked, so a bad
argument is reported as such on any catalog) and its query encoder."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..boxes import N_DIMS, BoxSet, distance_sql
from ..errors import CatalogError, InvalidArgument, StaleIndexError, UnknownIds
from ..learn import refine as rf
from ..limits import MAX_K, MAX_QUERY_CHARS
from . import knn, query
from .snapshot import Snapshot


@dataclass
class SelectResult:
    """Rows selected by a box set.

    ids : int64, ranked by votes (descending), then position in block order
    votes : int32, member votes per id
    sql : a complete SELECT (first column the image id) that returns the same rows
    stats : time per phase (ms), blocks touched, rows tested, ...
    """

    ids: np.ndarray
    votes: np.ndarray
    sql: str
    stats: dict

    def to_json(self) -> dict:
        return {"ids": self.ids.tolist(), "votes": self.votes.tolist(), "sql": self.sql, "stats": self.stats}


def select(
    snapshot: Callable[[], Snapshot], boxes: BoxSet | Mapping | Sequence, min_votes: int
) -> SelectResult:
    """Every row inside the box set with at least ``min_votes`` member votes."""
    boxset = boxes if isinstance(boxes, BoxSet) else BoxSet.from_json(boxes)
    if boxset.n_dims != N_DIMS:
        raise CatalogError(f"box set has {boxset.n_dims} dims; this catalog has {N_DIMS}")
    if isinstance(min_votes, bool) or not isinstance(min_votes, (int, np.integer)):
        raise InvalidArgument(f"min_votes must be an integer, got {min_votes!r}")
    t0 = time.perf_counter()
    index = snapshot().index
    t1 = time.perf_counter()
    sel = query.select(index, boxset, int(min_votes))
    sel.stats["time_load_ms"] = (t1 - t0) * 1e3
    return SelectResult(sel.ids, sel.votes, boxset.to_sql("codes", min_votes=int(min_votes)), sel.stats)


@dataclass(frozen=True)
class RefineRequest:
    """The checked arguments of a refine round (see ``Catalog.refine``): labelled ids ``pos``
    and ``neg`` (int64, sorted, unique, disjoint) and the options, as every path that runs a
    round (:func:`refine`, :mod:`engine.spark_refine`) takes them."""

    pos: np.ndarray
    neg: np.ndarray
    model: object
    sampled_negatives: int
    negative_weight: float
    random_state: object
    filter_sampled: bool
    guide: bool
    suggestions: int

    @classmethod
    def check(
        cls,
        positives,
        negatives,
        model,
        sampled_negatives,
        negative_weight,
        random_state,
        filter_sampled,
        guide,
        suggestions,
    ) -> RefineRequest:
        """:class:`InvalidArgument` for any malformed argument, before any row is read."""
        model, sampled_negatives, negative_weight = rf.check_options(
            model, sampled_negatives, negative_weight
        )
        random_state = rf.check_random_state(random_state)
        n_suggest = rf.check_suggestions(suggestions)
        pos, neg = rf.check_labels(positives, negatives)
        return cls(
            pos,
            neg,
            model,
            sampled_negatives,
            negative_weight,
            random_state,
            bool(filter_sampled),
            bool(guide),
            n_suggest,
        )


@dataclass
class Round:
    """A refine round's training set and fitted model, with its vote threshold, the centre
    that orders ties, and the SELECT over a relation named ``codes`` that applies it."""

    train: rf.Training
    estimator: object
    min_votes: int
    n_members: int
    center: np.ndarray
    sql: str

    def record(self, request: RefineRequest) -> dict:
        """The labels and options of the round, as a result keeps them (``Result.request``)."""
        seed = request.random_state
        return {
            "positives": request.pos.tolist(),
            "negatives": request.neg.tolist(),
            "model": rf.model_name(request.model),
            "sampled_negatives": request.sampled_negatives,
            "negative_weight": request.negative_weight,
            "filter_sampled": request.filter_sampled,
            "guide": request.guide,
            "random_state": seed if isinstance(seed, int) else None,
        }

    def stats(self, request: RefineRequest) -> dict:
        """What the round trained on and learned, as its result's stats report it."""
        train = self.train
        return {
            "model": rf.model_name(request.model),
            "positives": int(len(request.pos)),
            "negatives": int(len(request.neg)),
            "sampled_negatives": train.n_sampled,
            "sampled_dropped": train.n_dropped,
            "negative_weight": request.negative_weight,
            "guided": train.guided,
            "pseudo_positives": train.n_pseudo,
            "guide_groups": train.n_groups,
            "held_guide_positives": train.held_positives,
            "boxes": len(self.estimator.boxes_),
            "members": self.n_members,
            "min_votes": self.min_votes,
        }


def round_training(
    request: RefineRequest,
    cols: np.ndarray,
    starts: np.ndarray,
    pos_rows: np.ndarray,
    neg_rows: np.ndarray,
    pool: np.ndarray,
    pool_codes: np.ndarray,
) -> rf.Training:
    """The training set of a round (:func:`engine.learn.refine.assemble`) from row positions
    into ``cols`` (uint8 (32, n)): the labelled rows, the negative pool ``pool`` (int64, of
    :func:`engine.learn.refine.negative_pool`) with its codes ``pool_codes`` (uint8 (len(pool),
    32)), and the block boundaries ``starts`` (int64 (n_blocks + 1,))."""
    return rf.assemble(
        cols,
        pos_rows,
        neg_rows,
        pool,
        request.sampled_negatives,
        request.negative_weight,
        request.filter_sampled,
        request.guide,
        pool_codes=pool_codes,
        starts=starts,
    )


def compile_round(
    request: RefineRequest, train: rf.Training, cols: np.ndarray, subsets: Sequence[Sequence[int]]
) -> Round:
    """Fit the round's model on ``train`` (feature ``subsets`` of the catalog's index) and
    compile it to SQL; ``cols`` as for :func:`round_training`."""
    estimator = rf.fit_round(train, cols, request.model, subsets, request.random_state)
    min_votes = int(estimator.min_votes_)
    center = rf.center_code(train.pos_codes)
    sql = estimator.boxes_.to_sql("codes", min_votes=min_votes, center=center.tolist())
    return Round(train, estimator, min_votes, int(getattr(estimator, "n_estimators", 1)), center, sql)


def refine(
    snapshot: Callable[[], Snapshot],
    positives,
    negatives,
    model,
    sampled_negatives: int,
    negative_weight: float,
    random_state,
    filter_sampled: bool,
    guide: bool,
    suggestions: int,
) -> rf.Result:
    """One refine round (see ``Catalog.refine``)."""
    request = RefineRequest.check(
        positives,
        negatives,
        model,
        sampled_negatives,
        negative_weight,
        random_state,
        filter_sampled,
        guide,
        suggestions,
    )
    t0 = time.perf_counter()
    snap = snapshot()
    index = snap.index
    train = _training_set(snap, request)
    t1 = time.perf_counter()
    round_ = compile_round(request, train, index.cols, snap.subsets)
    t2 = time.perf_counter()
    sel = query.select(index, round_.estimator.boxes_, round_.min_votes, center=round_.center)
    n_results = len(sel.ids)
    t3 = time.perf_counter()
    labelled = np.concatenate([request.pos, request.neg])
    suggested = rf.suggest(
        index, sel, round_.min_votes, round_.n_members, train, labelled, request.suggestions
    )
    t4 = time.perf_counter()
    stats = {
        **round_.stats(request),
        "time_sample_ms": (t1 - t0) * 1e3,
        "time_train_ms": (t2 - t1) * 1e3,
        "time_query_ms": (t3 - t2) * 1e3,
        "time_suggest_ms": (t4 - t3) * 1e3,
        "time_total_ms": (t4 - t0) * 1e3,
        "rows": index.n_rows,
        "blocks": sel.stats["blocks"],
        "blocks_touched": sel.stats["blocks_touched"],
        "rows_touched": sel.stats["rows_in_touched_blocks"],
        "share_touched": sel.stats["rows_in_touched_blocks"] / max(index.n_rows, 1),
        "results": n_results,
        "suggestions": int(len(suggested)),
    }
    return rf.Result(
        sel.ids[:n_results],
        sel.votes[:n_results].astype(np.int64),
        round_.sql,
        stats,
        round_.estimator,
        suggested,
        round_.center,
        round_.record(request),
    )


def training_set(
    snapshot: Callable[[], Snapshot],
    positives,
    negatives,
    sampled_negatives: int,
    negative_weight: float,
    filter_sampled: bool,
    guide: bool,
) -> rf.Training:
    """The training set a refine round with these labels and options fits its model on."""
    request = RefineRequest.check(
        positives, negatives, "ensemble", sampled_negatives, negative_weight, None, filter_sampled, guide, 0
    )
    return _training_set(snapshot(), request)


def _training_set(snap: Snapshot, request: RefineRequest) -> rf.Training:
    index = snap.index
    if index.n_rows == 0:
        raise UnknownIds(request.pos.tolist())
    pos_rows = snap.positions(request.pos)
    pool, pool_codes = snap.pool(request.sampled_negatives)
    return round_training(
        request, index.cols, index.blocks.start, pos_rows, snap.positions(request.neg), pool, pool_codes
    )


def search(
    snapshot: Callable[[], Snapshot], encoder_for: Callable[[bool], object], text, image, id, k: int
) -> rf.Result:
    """The ``k`` rows nearest to a text, an image or the image ``id`` (see ``Catalog.search``).
    ``encoder_for(text_only)`` gives the catalog's encoder."""
    given = [name for name, v in (("text", text), ("image", image), ("id", id)) if v is not None]
    if len(given) != 1:
        raise InvalidArgument("give exactly one of text=, image= or id=")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InvalidArgument(f"k must be an integer in 1..{MAX_K}, got {k!r}")
    t0 = time.perf_counter()
    snap = snapshot()
    index = snap.index
    if id is not None:
        code = index.cols[:, snap.positions(rf.parse_ids([id], "id"))[0]].astype(np.uint8)
        kind = "id"
    else:
        code = encode_query(snap, encoder_for(text is not None), text, image)
        kind = "text" if text is not None else "image"
    t1 = time.perf_counter()
    pos, dist = knn.topk(index.cols, code, int(k))
    t2 = time.perf_counter()
    sql = f"SELECT id, {distance_sql(code.tolist())} AS dist FROM codes\nORDER BY dist, pos\nLIMIT {int(k)}"
    stats = {
        "query": kind,
        "k": int(k),
        "rows": index.n_rows,
        "rows_touched": index.n_rows,
        "share_touched": 1.0 if index.n_rows else 0.0,
        "results": int(len(pos)),
        "time_encode_ms": (t1 - t0) * 1e3,
        "time_query_ms": (t2 - t1) * 1e3,
        "time_total_ms": (t2 - t0) * 1e3,
    }
    return rf.Result(index.ids[pos], dist.astype(np.int64), sql, stats)


def encode_query(snap: Snapshot, enc, text, image) -> np.ndarray:
    """uint8 (32,) code of a text or image query: encoder, head, quantizer."""
    head, quant = snap.query_model()
    if text is not None:
        if not isinstance(text, str):
            raise InvalidArgument(f"text must be a string, got {type(text).__name__}")
        text = text.strip()
        if not text:
            raise InvalidArgument("the text query is empty; type what to look for")
        if len(text) > MAX_QUERY_CHARS:
            raise InvalidArgument(
                f"the text query has {len(text)} characters; the limit is {MAX_QUERY_CHARS}"
            )
        emb = enc.encode_texts([text])
    else:
        from PIL import Image

        from ..ingest.imageio import UnreadableImage, decode_query_image

        if isinstance(image, Image.Image):
            pil = image.convert("RGB")
        else:
            try:
                pil = decode_query_image(image)
            except UnreadableImage as e:
                raise InvalidArgument(f"the query image cannot be used: {e.reason}") from None
        emb = enc.encode_images([pil])
    emb = np.asarray(emb, dtype=np.float32)
    if emb.shape[1] != head.in_dim:
        raise StaleIndexError(
            f"the encoder gives {emb.shape[1]}-d vectors but the head expects {head.in_dim}; "
            f"run `clip-branches train-head {snap.path}` again"
        )
    return quant.encode(head.apply(emb))[0]
