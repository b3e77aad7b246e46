"""Building the block index: sort a catalog's codes into k-d block order, compute the zone maps
and write both in one transaction (:func:`build_index`)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..boxes import N_DIMS
from ..errors import CatalogError
from ..progress import Progress, reporter
from ..store import Store, tables
from . import layout, mapped, query


def _increasing(ids: np.ndarray) -> bool:
    """Whether ``ids`` are already in id order (a first build of rows added in id order)."""
    return bool((ids[1:] > ids[:-1]).all())


def _had_copy(store: Store) -> bool:
    """Whether the last build wrote the mapped copy of the codes (False when its record is
    damaged: this build replaces it)."""
    try:
        index = store.setting("index")
    except CatalogError:
        return False
    return isinstance(index, dict) and bool(index.get("mapped"))


def build_index(
    store: Store,
    block_size: int,
    *,
    codes: np.ndarray | None = None,
    ids: np.ndarray | None = None,
    index_info: Mapping[str, Any] | None = None,
    mapped_copy: bool | None = None,
    progress: Progress = None,
) -> tuple[dict, query.BlockIndex]:
    """Sort the stored codes, or ``codes`` uint8 (n, 32) with int64 ``ids`` (checked by
    :func:`engine.store.tables.check_replacement`), into k-d block order and write them with
    their zone maps; the timing stats and the in-memory index of what was written.

    Rows start from id order, so the result does not depend on the current physical order.
    Memory: the codes, ids and permutation (41 bytes per row under 2**31 rows) and DuckDB's
    :data:`engine.store.database.BULK_MEMORY`; the rows are permuted in place, one dim at a time.
    ``progress`` counts steps: loading the stored codes, each k-d level, each written chunk,
    the commit (:func:`engine.index.layout.build_steps`). ``mapped_copy``: write the codes'
    memory-mapped copy beside the file too (:mod:`engine.index.mapped`); None keeps what the
    last build did."""
    from ..learn.models import feature_subsets

    with reporter("index", "steps", progress) as report, store.memory_limit():
        t0 = time.perf_counter()
        if codes is None:
            cols, ids = tables.load_codes(store)
        else:
            cols = np.array(codes.T, order="C")  # sorted in place below: never the caller's array
        n = len(ids)
        total = layout.build_steps(n, block_size, load=codes is None)
        done = [int(codes is None)]
        report(done[0], total)
        t1 = time.perf_counter()
        perm, starts = layout.kd_order(
            cols,
            block_size=block_size,
            initial=None if _increasing(ids) else np.argsort(ids, kind="stable"),
            on_level=lambda level: report(done[0] + level, total),
        )
        done[0] += layout.n_levels(n, block_size)
        layout.permute_columns(cols, perm)
        ids = ids[perm]
        del perm
        blocks = layout.zone_maps(cols, starts)
        t2 = time.perf_counter()
        index = {
            "block_size": block_size,
            "n_blocks": blocks.n_blocks,
            "indexed_rows": n,
            "projections": [list(range(N_DIMS))],
            "split": "max-variance median",
            "feature_subsets": [list(f) for f in feature_subsets()],
            "built_at": tables.now(),
            **(index_info or {}),
        }

        if mapped_copy is None:
            mapped_copy = _had_copy(store)
        if mapped_copy:
            t_map = time.perf_counter()
            index["mapped"] = mapped.write(store.path, cols, ids)
            index["mapped"]["time_write_s"] = round(time.perf_counter() - t_map, 3)

        def chunk_written() -> None:
            done[0] += 1
            report(done[0], total)

        tables.write_index(
            store, cols, ids, blocks, index, check_known=codes is not None, on_chunk=chunk_written
        )
        if not mapped_copy:
            mapped.remove(store.path)  # a copy of an older build would only take space
        report(total, total)
    t3 = time.perf_counter()
    stats = {
        "rows": n,
        "blocks": blocks.n_blocks,
        "time_load_s": t1 - t0,
        "time_sort_s": t2 - t1,
        "time_write_s": t3 - t2,
        "mapped_bytes": index["mapped"]["bytes"] if mapped_copy else 0,
    }
    return stats, query.BlockIndex.from_arrays(cols, ids, blocks, block_size)
