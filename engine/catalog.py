"""The catalog: one DuckDB file holding images, their 32-byte codes in block order and the
block zone maps. ``Catalog`` is the door to everything: the CLI, the web app and the tests
all go through it. It is a facade: the file behind :class:`~engine.store.Store`, loaded state
in a :class:`~engine.index.snapshot.Snapshot`, queries in :mod:`engine.index.search`, user SQL in
:mod:`engine.sandbox`."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .boxes import BoxSet
from .codes.head import Head
from .codes.quantize import Quantizer
from .concepts import Concept, Concepts
from .errors import CatalogError, CatalogNotFound, InvalidCodes
from .index import layout, search
from .index.search import SelectResult
from .index.snapshot import Snapshot
from .learn.refine import Result, Training
from .limits import (
    COMPACT_MIN_BYTES,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_K,
    DEFAULT_SAMPLED_NEGATIVES,
    DEFAULT_SUGGESTIONS,
    QUERY_MAX_BYTES,
    QUERY_MAX_ROWS,
    QUERY_TIME_LIMIT_S,
    SANDBOX_MEMORY_LIMIT,
    SANDBOX_TEMP_LIMIT,
)
from .progress import Progress, reporter
from .sandbox import QueryResult, read_sql, sandbox_config, user_query
from .store import Store, tables


class Catalog:
    """A clip-branches catalog file. Open with :meth:`create` or :meth:`open`; use as a context
    manager or call :meth:`close` to release the file for other processes."""

    def __init__(self, store: Store):
        self.store = store
        self.path = store.path
        self.read_only = store.read_only
        self._snapshot: Snapshot | None = None
        self._lock = threading.RLock()  # guards loading, so threads can share a read-only catalog

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike) -> Catalog:
        """Create a new, empty catalog file at ``path``; fails if the file exists. A process
        killed halfway leaves no file at ``path``."""
        return cls(Store.create(Path(path), tables.new_settings()))

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        read_only: bool = False,
        *,
        sandbox: bool = False,
        memory_limit: str = SANDBOX_MEMORY_LIMIT,
    ) -> Catalog:
        """Open an existing catalog. Writable catalogs with an older schema are migrated.

        A file that is no DuckDB database, is truncated or damaged where opening reads it, or
        lacks a table or column of its schema version raises :class:`CorruptCatalog` before
        anything is written to it; damage elsewhere raises it from the first query that reads it.

        ``sandbox`` (read-only only) is for serving untrusted SQL: DuckDB then reads no files
        or URLs but the catalog (no ``read_csv``, ``COPY``, ``ATTACH``, extension loading),
        queries share ``memory_limit``, and the configuration is locked against ``SET``.
        """
        path = Path(path)
        if not path.is_file():
            raise CatalogNotFound(
                f"no catalog at {path}; make one from your images with `clip-branches add {path} "
                "FOLDER` (or `ingest`), or an empty one with `clip-branches create`"
            )
        if sandbox and not read_only:
            raise CatalogError("a sandboxed catalog must be opened read-only")
        config = sandbox_config(memory_limit, SANDBOX_TEMP_LIMIT) if sandbox else None
        return cls(Store.open(path, read_only, config))

    def close(self) -> None:
        """Release the DuckDB file; further calls on this object fail."""
        self.store.close()
        self._snapshot = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.store.closed else ("read-only" if self.read_only else "writable")
        return f"Catalog({str(self.path)!r}, {state})"

    def connection_count(self) -> int:
        """DuckDB connections to this file in this process: the catalog's own, every cursor not
        yet closed and other ``Catalog`` objects on the same file (see ``Store.connection_count``)."""
        return self.store.connection_count()

    @property
    def side_dir(self) -> Path:
        """The folder beside the catalog file for raw embeddings and thumbnails (``<file>.d``)."""
        return self.path.parent / f"{self.path.name}.d"

    # -- settings ----------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Every setting, decoded from JSON (read once by a read-only catalog)."""
        return self.store.settings()

    def setting(self, key: str, default: Any = None) -> Any:
        """One setting, decoded from JSON; :class:`CorruptCatalog` if it does not hold what it must
        (see :data:`engine.store.integrity.SETTING_CHECKS`)."""
        return self.store.setting(key, default)

    def __len__(self) -> int:
        return tables.count(self.store)

    def image_columns(self) -> list[str]:
        """Names of the ``images`` table's columns (``id``, ``uri``, metadata, ...), in order."""
        return [name for name, _ in self.store.columns("images")]

    # -- writing -----------------------------------------------------------------------------
    def add_codes(
        self,
        codes: np.ndarray,
        ids: Sequence[int] | np.ndarray | None = None,
        metadata: Mapping[str, Sequence] | pa.Table | None = None,
    ) -> np.ndarray:
        """Append images with their codes; returns their ids (int64).

        ``codes`` is uint8 (n, 32). ``ids`` default to consecutive ids after the largest one in
        the catalog. ``metadata`` maps column names (``uri``, ``label``, ...) to n values each;
        new columns are added to ``images``. All rows land in one transaction or none do.
        Rows added after an index build are scanned through zone maps in insertion order
        until the next :meth:`build_index`.
        """
        self.store.check_writable()
        codes = tables.check_codes(codes)
        meta = tables.check_metadata(metadata, codes.shape[0])
        return tables.add_codes(
            self.store, codes, None if ids is None else tables.check_ids(ids, "ids"), meta
        )

    def replace_codes(self, codes: np.ndarray, ids: Sequence[int] | np.ndarray) -> None:
        """Make ``codes`` the catalog's codes: row i is the code of image ``ids[i]``.

        Every id must already be in ``images``; images left out have no code afterwards. The
        old codes and block index are replaced in one transaction (call :meth:`build_index`
        next to sort the new ones).
        """
        self.store.check_writable()
        tables.replace_codes(self.store, *tables.check_replacement(codes, ids))

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Delete images and their codes; returns how many were removed (unknown ids are ignored).

        Removing codes drops the block index (its row ranges no longer hold), so selections
        scan every row through insertion-order zone maps until the next :meth:`build_index`.
        """
        self.store.check_writable()
        return tables.remove(self.store, tables.check_ids(ids, "ids"))

    def store_head(self, head: Head, quantizer: Quantizer) -> str:
        """Store the head's weights and the quantizer fitted on its outputs; returns the head's
        sha256. The codes are stale until the next index build from embeddings."""
        self.store.check_writable()
        return tables.store_head(self.store, head, quantizer)

    def head(self) -> Head:
        """The stored head, checked against its recorded checksum."""
        return tables.load_head(self.store)

    def quantizer(self) -> Quantizer:
        return tables.load_quantizer(self.store)

    def build_index(
        self,
        block_size: int = DEFAULT_BLOCK_SIZE,
        *,
        codes: np.ndarray | None = None,
        ids: Sequence[int] | np.ndarray | None = None,
        index_info: Mapping[str, Any] | None = None,
        compact: bool = True,
        mapped: bool | None = None,
        progress: Progress = None,
    ) -> dict:
        """Sort the codes into k-d block order and write the zone maps; returns timing stats.

        Idempotent: rows start from id order, so the result does not depend on the current
        physical order. ``codes`` and ``ids`` (as for :meth:`replace_codes`) replace the
        catalog's codes in the transaction that writes their index, so an interrupted build
        leaves the old codes and index, never new codes without one. ``index_info``: more
        entries for the index settings. ``mapped``: write a memory-mapped copy of the codes
        beside the file too, for a fast cold start (:mod:`engine.index.mapped`); None keeps what
        the last build did. ``progress`` (see :mod:`engine.progress`) counts steps: loading the
        stored codes, each k-d level, each written chunk, the commit (``layout.build_steps``).

        The build then compacts a file of ``compact_min_bytes`` or more (:meth:`compact`, shown
        only with ``progress=True``): the old codes' space stays in it until then. ``compacted``
        in the stats says whether it did, ``compaction`` why not (``Store.why_not_compact``).
        """
        from .index.build import build_index

        self.store.check_writable()
        layout.check_block_size(block_size)
        if (codes is None) != (ids is None):
            raise InvalidCodes("give codes and ids together, or neither to sort the stored codes")
        codes, ids = tables.check_replacement(codes, ids) if codes is not None else (None, None)
        with self._lock:
            self._snapshot = None
            built = dict(codes=codes, ids=ids, index_info=index_info, mapped_copy=mapped, progress=progress)
            stats, index = build_index(self.store, block_size, **built)
            if why_not := self.store.why_not_compact(compact, COMPACT_MIN_BYTES):
                stats.update(compacted=False, compaction=why_not)
            else:
                stats.update(compacted=True, **self.compact(progress=progress is True))
            settings = self.store.settings()  # the index just written, not loaded again
            self._snapshot = Snapshot(self.store, self._key(settings.get("data_version")), settings, index)
        return stats

    def compact(self, *, progress: Progress = None) -> dict:
        """Rewrite the file without the space freed by deletes and rebuilds, which DuckDB never
        gives back: a copy beside the file, renamed over it; this object must be the only one
        holding the file. ``progress`` (see :mod:`engine.progress`) counts the rows copied."""
        before, t0 = self.path.stat().st_size, time.perf_counter()
        with reporter("compact", "rows", progress) as report, self.store.memory_limit():
            self.store.compact(report)
        return {
            "bytes_before": before,
            "bytes_after": self.path.stat().st_size,
            "time_compact_s": time.perf_counter() - t0,
        }

    # -- reading -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The loaded state of the catalog (index, settings, subsets, pool, head): loaded on
        first use and again after any change. A read-only catalog cannot change while it is
        open, so its snapshot is never checked again once loaded."""
        snap = self._snapshot
        if snap is not None and self.read_only:
            return snap
        with self._lock, self.store.reading():
            key = self._key(self.store.setting("data_version"))  # one setting, not all, per call
            if self._snapshot is None or self._snapshot.key != key:
                self._snapshot = None  # the old index is freed before the new one loads
                self._snapshot = Snapshot.load(self.store, key, self.store.settings())
            return self._snapshot

    def _key(self, data_version: Any) -> tuple:
        return (self.store.generation, data_version)

    def block_index(self):
        """The in-memory scan index (:class:`engine.index.query.BlockIndex`) of the current snapshot."""
        return self.snapshot().index

    def feature_subsets(self) -> list[tuple[int, ...]]:
        """The feature subsets learned boxes may constrain, as recorded by the index build."""
        return self.snapshot().subsets

    def index_status(self) -> dict:
        """Rows, indexed rows and blocks, and what makes the index ``stale``
        (:func:`engine.store.tables.index_status`)."""
        return tables.index_status(self.store)

    def codes(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Codes of ``ids``: uint8 (len(ids), 32) in the order of ``ids``."""
        ids = tables.check_ids(ids, "ids")
        snap = self.snapshot()
        return np.ascontiguousarray(snap.index.cols[:, snap.positions(ids)].T)

    def select(self, boxes: BoxSet | Mapping | Sequence, min_votes: int = 1) -> SelectResult:
        """Every image inside the box set, with its member votes.

        Rows with fewer than ``min_votes`` votes are left out (default 1: the plain union), and
        blocks that fewer than ``min_votes`` members reach are skipped whole.
        """
        return search.select(self.snapshot, boxes, min_votes)

    # -- search by classification -----------------------------------------------------------
    def refine(
        self,
        positives,
        negatives=(),
        model="ensemble",
        sampled_negatives: int = DEFAULT_SAMPLED_NEGATIVES,
        negative_weight: float = 1.0,
        random_state=None,
        filter_sampled: bool = True,
        guide: bool = True,
        suggestions: int = DEFAULT_SUGGESTIONS,
    ) -> Result:
        """Train ``model`` on the labelled ids plus sampled negatives and return every image of
        the catalog it classifies as positive, ranked by votes, then by distance to the
        positives' mean code, then block position, with up to ``suggestions`` unlabelled ids to
        label next (``Result.suggestions``).

        ``model`` is ``"ensemble"`` (25 decision branch models voting), ``"branch"``, ``"tree"``
        or ``"forest"`` (scikit-learn models turned into boxes), or an unfitted box classifier
        of :mod:`engine.learn`. Sampled negatives come from a fixed random pool of unlabelled
        rows, less (``filter_sampled``) those more like the positives than like the catalog; user
        negatives weigh ``negative_weight`` times a sampled one. ``guide``: a linear guide
        relabels the sample, adds pool rows it scores positive and sets the ensemble's vote
        threshold (:mod:`engine.learn.guide`); without, as the original system did. Read-only too."""
        return search.refine(
            self.snapshot,
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

    def training_set(
        self,
        positives,
        negatives=(),
        sampled_negatives: int = DEFAULT_SAMPLED_NEGATIVES,
        negative_weight: float = 1.0,
        filter_sampled: bool = True,
        guide: bool = False,
    ) -> Training:
        """The training set a refine round with these labels and options fits its model on
        (:class:`engine.learn.refine.Training`: codes ``X``, labels ``y``, weights ``w``), for
        training other models on exactly what ``refine`` sees. ``guide`` as in :meth:`refine`
        (default off here: the labels and the sample alone)."""
        return search.training_set(
            self.snapshot, positives, negatives, sampled_negatives, negative_weight, filter_sampled, guide
        )

    def search(
        self, text: str | None = None, *, image=None, id: int | None = None, k: int = DEFAULT_K
    ) -> Result:
        """The ``k`` images nearest to a text query, an image (path, bytes or PIL image) or the
        image ``id``, by exact squared L2 distance between 32-byte codes (ties: block position).

        Text and images go through the catalog's encoder, head and quantizer; ``id`` uses the
        image's own code. Works on read-only catalogs.
        """
        return search.search(self.snapshot, self._query_encoder, text, image, id, k)

    def encoder(self):
        """The catalog's encoder, loaded once per Catalog object."""
        return self._query_encoder(text=False)

    def _query_encoder(self, text: bool):
        """The encoder for a query; a text query needs only the text side (no torch for the demo's)."""
        from .encoders import QueryEncoders

        enc_id = self.setting("encoder")
        if not enc_id:
            raise CatalogError(f"{self.path} records no encoder, so it cannot encode queries; search by id=")
        return QueryEncoders.get(enc_id, text)

    # -- saved concepts ----------------------------------------------------------------------
    @property
    def concepts(self) -> Concepts:
        """The saved concepts: list, apply, rename, delete, retrain, export (:mod:`engine.concepts`)."""
        return Concepts(self)

    def save_concept(self, name: str, result: Result, *, replace: bool = False, note: str = "") -> Concept:
        """Keep a refine ``result`` as concept ``name``, with a view ``concept_<name>`` in the file."""
        return self.concepts.save(name, result, replace=replace, note=note)

    def concept(self, name: str) -> Concept:
        return self.concepts.get(name)  # applied by Catalog.concepts.result(name)

    # -- user SQL ----------------------------------------------------------------------------
    def sql(self, text: str, params: Sequence | Mapping | None = None) -> pa.Table:
        """Run one read-only query (SELECT, VALUES, ...) and return an Arrow table.

        Anything that is not a single query statement is refused with :class:`InvalidSql`, and
        the query runs in a transaction that is rolled back.
        """
        return read_sql(self.store, text, params)

    def query(
        self,
        text: str,
        *,
        time_limit_s: float = QUERY_TIME_LIMIT_S,
        max_rows: int = QUERY_MAX_ROWS,
        max_bytes: int = QUERY_MAX_BYTES,
        relations: Mapping[str, pa.Table] | None = None,
    ) -> QueryResult:
        """Run one user query like :meth:`sql`, with limits on time, rows and bytes.

        At most ``max_rows`` rows and about ``max_bytes`` bytes come back (``truncated`` and
        ``cut`` say whether and why there were more; text values are cut at
        :data:`engine.limits.MAX_VALUE_CHARS`); a query still running after ``time_limit_s``
        is interrupted and raises :class:`QueryInterrupted`. Table functions that read files or
        settings are refused (:func:`engine.sandbox.check_names`). ``relations`` are Arrow
        tables the query may name (e.g. the last refine result; ``last_result`` is empty unless
        given), visible to this query only, as are the macros of ``sql/console_macros.sql``.
        This runs in the calling process; :class:`engine.sandbox.QueryPool` runs queries in
        worker processes with an OS memory limit and a hard deadline.
        """
        return user_query(
            self.store,
            text,
            time_limit_s=time_limit_s,
            max_rows=max_rows,
            max_bytes=max_bytes,
            relations=relations,
        )

    # -- Parquet -----------------------------------------------------------------------------
    def export_parquet(self, directory: str | os.PathLike, **options) -> dict:
        """Write codes, images, blocks and settings as Parquet; see :mod:`engine.store.parquet`.
        ``overwrite``: replace an earlier export; ``shards=N``: N subtrees of the k-d tree, one
        directory each (:mod:`engine.store.shards`); ``progress`` (see :mod:`engine.progress`)
        counts the rows written, over all files."""
        from .store.parquet import export_catalog

        with self.store.reading():
            return export_catalog(self.store, Path(directory), **options)

    @classmethod
    def import_parquet(
        cls, directory: str | os.PathLike, path: str | os.PathLike, *, progress: Progress = None
    ) -> Catalog:
        """Create a catalog at ``path`` from a directory written by :meth:`export_parquet`.
        ``progress`` (see :mod:`engine.progress`) counts the rows read, over all files."""
        from .store.parquet import import_catalog

        import_catalog(Path(directory), Path(path), progress=progress)
        return cls.open(path)
