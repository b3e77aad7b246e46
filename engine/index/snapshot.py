"""What a catalog's queries read, loaded once per state of the file.

A :class:`Snapshot` holds the settings, the in-memory block index, the feature subsets learned
boxes may use, the negative sampling pools and the query head and quantizer of one state of the
catalog, keyed by the store's write count and the ``data_version`` setting. ``Catalog`` keeps
one and loads a new one when the key changes: a read-only catalog never changes while it is
open (DuckDB refuses a writer while readers hold the file), so it loads one per open.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..codes.head import Head
from ..codes.quantize import Quantizer
from ..errors import UnknownIds
from ..limits import DEFAULT_BLOCK_SIZE
from ..store import Store, tables
from . import mapped, query


class Snapshot:
    """One state of a catalog, as its queries read it. Threads may share it."""

    def __init__(self, store: Store, key: tuple, settings: dict[str, Any], index: query.BlockIndex):
        from ..learn.models import recorded_subsets

        self.key = key
        self.path = store.path
        self.settings = settings
        self.index = index
        self.subsets: list[tuple[int, ...]] = recorded_subsets(settings.get("index"))
        self._store = store
        self._lock = threading.Lock()
        self._pools: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._query_model: tuple[Head, Quantizer] | None = None
        index.positions(np.zeros(0, np.int64))  # build the id lookup now, not on a request

    @classmethod
    def load(cls, store: Store, key: tuple, settings: dict[str, Any]) -> Snapshot:
        """Read the codes and zone maps of ``store`` (whose settings are ``settings``): the codes
        from the mapped copy beside the file when the last build wrote one that still matches
        (:mod:`engine.index.mapped`), else from DuckDB."""
        index = settings.get("index") or {}
        loaded = mapped.load(store, index.get("mapped"))
        cols, ids = loaded or tables.load_codes(store)
        blocks = tables.load_blocks(store, cols.shape[1], index)
        block_size = int(index.get("block_size", DEFAULT_BLOCK_SIZE))
        snap = cls(store, key, settings, query.BlockIndex.from_arrays(cols, ids, blocks, block_size))
        store.release_cache()  # the codes now live in the index, not in DuckDB's buffers
        return snap

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of int64 ``ids`` in the block index; UnknownIds for any id not there."""
        pos = self.index.positions(ids)
        if (pos < 0).any():
            raise UnknownIds(np.asarray(ids)[pos < 0].tolist())
        return pos

    def pool(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The fixed negative sampling pool of at least ``size`` rows: row positions and their
        codes (uint8 (n, 32)); gathering 16k random rows of a 10M-row index costs milliseconds."""
        from ..learn import refine as rf

        size = max(size, rf.POOL_SIZE)
        with self._lock:
            if size not in self._pools:
                rows = rf.negative_pool(self.index.n_rows, size)
                self._pools = {size: (rows, np.ascontiguousarray(self.index.cols[:, rows].T))}
            return self._pools[size]

    def query_model(self) -> tuple[Head, Quantizer]:
        """The head and quantizer that turn a query's embedding into a code."""
        with self._lock:
            if self._query_model is None:
                self._query_model = (tables.load_head(self._store), tables.load_quantizer(self._store))
            return self._query_model
