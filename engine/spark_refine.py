"""Refine over a Parquet export on Spark: the round is trained here, Spark SQL scans the catalog.

:func:`refine_on_spark` takes the labels and options of ``Catalog.refine`` and a directory that
``Catalog.export_parquet`` wrote, plain or sharded. The driver reads with pyarrow only what the
round's training set needs (:func:`train_on_export`): the labelled rows, the fixed negative pool
(the row positions ``Snapshot.pool`` takes) and the k-d blocks that hold a positive (the guide's
rows near the positives), from the row groups of ``codes.parquet`` that hold them (the pool's
16,384 random rows reach most row groups of a large export). It trains and compiles the round
with the engine's own code (:func:`engine.index.search.round_training` and
:func:`~engine.index.search.compile_round`), so the SQL is the one ``Catalog.refine`` returns for
the same catalog, labels and options, guide included. Spark SQL runs that SQL on a temp view
``codes`` over every ``codes.parquet`` of the export, and the whole ranking (the SQL's ``id`` and
``votes``, and ``rank`` from 1) goes to Parquet; the count, the first ids and the SQL come back.

The SQL and the ranking run in the executors' JVMs: no Python worker, no clip-branches on the
cluster. The executors must read the export under the location given: a shared file system, or
a URI of an object store (:mod:`engine.store.exports`). A refine on Spark makes no suggestions
(they rank the selection's codes, which stay on the cluster): its ``suggestions`` are empty.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import CatalogError, InvalidArgument, UnknownIds
from .index import search
from .learn import refine as rf
from .learn.models import recorded_subsets
from .limits import DEFAULT_SAMPLED_NEGATIVES, SPARK_TOP
from .store.exports import Export

DEFAULT_MASTER = "local[*]"
# Set for the round's queries and restored after: Parquet filters skip the row groups whose
# min/max statistics fail a WHERE that tests the codes (a single model's SQL), and adaptive
# execution may merge the sorted ranking's partitions although it is cached (a round over a
# 3,000-row export in local[2]: 1 partition instead of 200, 1.5 s instead of 12 s to rank and
# 0.4 s instead of 7 s to write the ranking, warm).
SQL_CONF = {
    "spark.sql.parquet.filterPushdown": "true",
    "spark.sql.optimizer.canChangeCachedPlanOutputPartitioning": "true",
}
# monotonically_increasing_id() puts the partition index above the low 33 bits
_PARTITION_SHIFT = 33


@dataclass
class SparkResult:
    """A refine round run on Spark.

    ids : int64, the first ``top`` ids of the ranking, best first
    scores : int64, their member votes
    count : every image the round classifies positive
    sql : the SELECT Spark ran, the one ``Catalog.refine`` returns
    stats : what the round trained on, rows and row groups read, times per phase (ms)
    out : where the whole ranking went (Parquet: ``id``, ``votes``, ``rank``), or None
    model : the fitted estimator
    """

    ids: np.ndarray
    scores: np.ndarray
    count: int
    sql: str
    stats: dict
    out: str | None = None
    model: object = field(default=None, repr=False)

    def to_json(self, limit: int | None = None) -> dict:
        ids = self.ids if limit is None else self.ids[:limit]
        return {
            "ids": ids.tolist(),
            "scores": self.scores[: len(ids)].tolist(),
            "sql": self.sql,
            "stats": self.stats,
            "results": self.count,
            "suggestions": [],
            "out": self.out,
        }


def refine_on_spark(
    export_dir: str | os.PathLike,
    positives,
    negatives=(),
    *,
    master: str = DEFAULT_MASTER,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    model="ensemble",
    sampled_negatives: int = DEFAULT_SAMPLED_NEGATIVES,
    negative_weight: float = 1.0,
    random_state=None,
    filter_sampled: bool = True,
    guide: bool = True,
    top: int | None = SPARK_TOP,
    spark=None,
) -> SparkResult:
    """One refine round over the export at ``export_dir`` (a path or URI), run on Spark.

    The labels and ``model`` .. ``guide`` are those of ``Catalog.refine``, and give the SQL and
    ranking it gives on the catalog exported. ``out``: a directory (path or URI) for the whole
    ranking as Parquet (``id``, ``votes``, ``rank``); an existing one is replaced only with
    ``overwrite``. ``top``: how many ids of the ranking to return (None: all). ``spark``: a
    SparkSession to use; else the active one, else a new one on ``master`` (e.g. ``local[4]``
    or ``spark://host:7077``), stopped at the end. The session gets a temp view ``codes``.

    :class:`UnknownIds` for labelled ids the export does not hold, :class:`CatalogError` when
    ``export_dir`` is no export or ``out`` exists, :class:`InvalidArgument` for a bad option.
    """
    request = search.RefineRequest.check(
        positives,
        negatives,
        model,
        sampled_negatives,
        negative_weight,
        random_state,
        filter_sampled,
        guide,
        0,
    )
    if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 0):
        raise InvalidArgument(f"top must be None or an integer >= 0, got {top!r}")
    out_uri = None if out is None else _output(os.fspath(out), overwrite)
    t0 = time.perf_counter()
    export = Export.open(export_dir)
    round_, stats = train_on_export(export, request)
    t1 = time.perf_counter()
    with _session(spark, master) as session, _spark_errors(export.location), _conf(session, SQL_CONF):
        t2 = time.perf_counter()
        session.read.parquet(*export.codes_uris).createOrReplaceTempView("codes")
        with _ranked(session.sql(round_.sql)) as (ranked, count):
            t3 = time.perf_counter()
            if out_uri is not None:
                ranked.write.mode("overwrite" if overwrite else "errorifexists").parquet(out_uri)
            t4 = time.perf_counter()
            first = ranked if top is None else ranked.where(f"rank <= {int(top)}")
            rows = first.orderBy("rank").select("id", "votes").collect()
        master_used = session.sparkContext.master
    t5 = time.perf_counter()
    stats.update(
        {
            "master": master_used,
            "results": count,
            "suggestions": 0,
            "time_session_ms": (t2 - t1) * 1e3,
            "time_query_ms": (t3 - t2) * 1e3,
            "time_write_ms": (t4 - t3) * 1e3,
            "time_top_ms": (t5 - t4) * 1e3,
            "time_total_ms": (t5 - t0) * 1e3,
        }
    )
    return SparkResult(
        np.array([r["id"] for r in rows], dtype=np.int64),
        np.array([r["votes"] for r in rows], dtype=np.int64),
        count,
        round_.sql,
        stats,
        out_uri,
        round_.estimator,
    )


def train_on_export(export: Export, request: search.RefineRequest) -> tuple[search.Round, dict]:
    """The round ``Catalog.refine`` trains on the catalog exported, from the rows of the export
    that its training set reads (:func:`engine.learn.refine.assemble`): the labelled rows, the
    negative pool, and every k-d block holding a positive. Returns it with its stats.

    Those rows are gathered into columns of their own, in position order, and the positions
    given to the training set (labelled rows, pool, block boundaries) are their places among
    them. Order, and so every choice the training makes, is kept; a block holding a positive is
    there whole, so it keeps its bounds, and the blocks not read become empty. The training
    set's own row positions (``free``, ``held``, ``pseudo``) are mapped back to the catalog's."""
    t0 = time.perf_counter()
    if export.n_rows == 0:
        raise UnknownIds(request.pos.tolist())
    pos_rows = export.positions(request.pos)
    neg_rows = export.positions(request.neg)
    pool = rf.negative_pool(export.n_rows, request.sampled_negatives)
    starts = export.block_starts()
    blocks = np.unique(np.searchsorted(starts, pos_rows, side="right") - 1)
    near = [np.arange(starts[b], starts[b + 1], dtype=np.int64) for b in blocks]
    rows = np.unique(np.concatenate([pos_rows, neg_rows, pool, *near]))
    codes = export.codes_at(rows)
    cols = np.ascontiguousarray(codes.T)
    at_pool = np.searchsorted(rows, pool)
    train = search.round_training(
        request,
        cols,
        np.searchsorted(rows, starts),
        np.searchsorted(rows, pos_rows),
        np.searchsorted(rows, neg_rows),
        at_pool,
        np.ascontiguousarray(codes[at_pool]),
    )
    t1 = time.perf_counter()
    round_ = search.compile_round(request, train, cols, recorded_subsets(export.index))
    round_.train = dataclasses.replace(
        train,
        free=rows[train.free],
        held=rows[train.held],
        pseudo=None if train.pseudo is None else rows[train.pseudo],
    )
    t2 = time.perf_counter()
    stats = {
        **round_.stats(request),
        "rows": export.n_rows,
        "shards": export.shards,
        "row_groups": export.n_row_groups,
        "row_groups_read": export.row_groups_read,
        "rows_read": export.rows_read,
        "time_sample_ms": (t1 - t0) * 1e3,
        "time_train_ms": (t2 - t1) * 1e3,
    }
    return round_, stats


@contextlib.contextmanager
def _ranked(frame):
    """``(ranked, count)``: ``frame`` (rows in ranking order) with ``rank`` 1, 2, ... along that
    order, and its row count; the rows are computed once and cached until the block ends.

    ``monotonically_increasing_id`` numbers the rows of each sorted partition from the partition
    index up; one pass counts each partition's rows, and a rank is its partition's offset plus
    its place in it. It all runs in the JVM."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    cached = frame.withColumn("_order", F.monotonically_increasing_id()).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        part = F.shiftright(F.col("_order"), _PARTITION_SHIFT)
        sizes = {int(r["p"]): int(r["count"]) for r in cached.groupBy(part.alias("p")).count().collect()}
        n_parts = max(sizes, default=-1) + 1
        offsets = np.cumsum([0] + [sizes.get(p, 0) for p in range(n_parts)])[:-1]
        offset = (
            F.element_at(F.array(*[F.lit(int(o)) for o in offsets]), (part + 1).cast("int"))
            if n_parts
            else F.lit(0)
        )
        rank = (offset + F.col("_order") - F.shiftleft(part, _PARTITION_SHIFT) + 1).cast("long")
        yield cached.withColumn("rank", rank).drop("_order"), sum(sizes.values())
    finally:
        cached.unpersist()


def _output(out: str, overwrite: bool) -> str:
    """The URI Spark writes the ranking to; :class:`CatalogError` for a local directory that
    exists, unless ``overwrite``."""
    if "://" in out:
        return out
    path = Path(out).resolve()
    if path.exists() and not overwrite:
        raise CatalogError(f"{out} already exists; choose another folder for the ranking, or pass overwrite")
    return f"file://{path}"


@contextlib.contextmanager
def _session(spark, master: str):
    """``spark`` if given, else the active session, else a new one on ``master`` that is stopped
    afterwards. :class:`CatalogError` when PySpark or Java is missing."""
    if spark is not None:
        yield spark
        return
    try:
        from pyspark.sql import SparkSession
    except ImportError as e:
        raise CatalogError(
            f"a refine on Spark needs PySpark ({e}); install it with pip install 'clip-branches[spark]' "
            "(Spark also needs a Java 17+ runtime)"
        ) from None
    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    try:
        session = (
            SparkSession.builder.master(master)
            .appName("clip-branches-refine")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .getOrCreate()
        )
    except Exception as e:
        raise CatalogError(
            f"Spark could not start with master {master!r} ({_first_line(e)}); it needs a Java 17+ "
            "runtime on PATH or in JAVA_HOME"
        ) from None
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()


@contextlib.contextmanager
def _conf(session, values: dict[str, str]):
    """The session's SQL settings ``values`` for the duration, then their earlier values again."""
    earlier = {key: session.conf.get(key, None) for key in values}
    for key, value in values.items():
        session.conf.set(key, value)
    try:
        yield
    finally:
        for key, value in earlier.items():
            if value is None:
                session.conf.unset(key)
            else:
                session.conf.set(key, value)


@contextlib.contextmanager
def _spark_errors(location: str):
    """A Spark failure (a file the executors cannot read, an output that exists) as a
    :class:`CatalogError` that names its first line."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    try:
        yield
    except (PySparkException, Py4JError) as e:
        raise CatalogError(f"Spark failed on the export {location}: {_first_line(e)}") from None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:300] if lines else type(e).__name__
