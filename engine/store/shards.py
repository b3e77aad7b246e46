"""Sharded Parquet exports: the k-d tree cut at one depth, one export directory per subtree.

An index build sorts the codes into ``2**L`` blocks by halving the rows level by level
(:func:`engine.index.layout.block_starts`), so the subtrees at depth ``d`` are ``2**d`` runs of
``2**(L - d)`` consecutive blocks, each a contiguous range of row positions and one region of
code space. A sharded export writes each run as a complete export directory::

    OUT/catalog.json     format SHARDED_FORMAT: schema version, rows, settings and the shards
    OUT/shard-000/       codes.parquet, images.parquet, blocks.parquet, artifacts.parquet and a
    OUT/shard-001/       catalog.json of format ``clip-branches-parquet`` with a ``shard`` entry
    ...

A shard's files keep the catalog's own positions and block numbers, so the union of the
shards' ``codes.parquet`` is the ``codes.parquet`` of an export without shards and the compiled
SQL runs on it unchanged. Rows added after the last index build (insertion order, no stored
blocks) and images without codes go to the last shard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import CatalogError, InvalidArgument

FORMAT = "clip-branches-parquet"  # the catalog.json of an export directory, or of one shard
SHARDED_FORMAT = "clip-branches-parquet-shards"  # the manifest above the shards


@dataclass(frozen=True)
class Shard:
    """One subtree of a sharded export: blocks ``block_start:block_end`` and row positions
    ``row_start:row_end`` of the catalog; ``number`` of ``count`` shards."""

    number: int
    count: int
    block_start: int
    block_end: int
    row_start: int
    row_end: int

    @property
    def directory(self) -> str:
        """The shard's directory name inside the export."""
        return shard_directory(self.number)

    @property
    def last(self) -> bool:
        return self.number == self.count - 1

    def to_json(self) -> dict:
        return {"directory": self.directory, "rows": self.row_end - self.row_start, **asdict(self)}


def shard_directory(number: int) -> str:
    return f"shard-{number:03d}"


def check_shards(shards: object) -> int:
    """``shards`` itself when it is a power of two (1, 2, 4, ...); else :class:`InvalidArgument`."""
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 1:
        raise InvalidArgument(f"shards must be a power of two (1, 2, 4, ...), got {shards!r}")
    if int(shards) & (int(shards) - 1):
        raise InvalidArgument(
            f"shards must be a power of two (1, 2, 4, ...), got {shards}: each shard is one subtree "
            "of the k-d tree, and a level of the tree holds a power of two of them"
        )
    return int(shards)


def plan(starts: np.ndarray, n_rows: int, shards: int, *, catalog: object = "the catalog") -> list[Shard]:
    """The ``shards`` subtrees of a block index whose blocks start at ``starts`` (int64
    (n_blocks + 1,), the last entry the indexed rows) over ``n_rows`` rows in all: shard ``i``
    holds blocks ``i * k:(i + 1) * k`` for ``k = n_blocks / shards``, and the last shard also the
    rows past the indexed ones. :class:`CatalogError` for a catalog without an index, and
    :class:`InvalidArgument` for more shards than blocks."""
    shards = check_shards(shards)
    n_blocks = len(starts) - 1
    if n_blocks < 1:
        raise CatalogError(
            f"{catalog} has no block index, so it cannot be cut into subtrees; run "
            f"`clip-branches index {catalog}` first (or export without --shards)"
        )
    if shards > n_blocks or n_blocks % shards:
        raise InvalidArgument(
            f"{catalog} has {n_blocks} blocks; shards must be a power of two up to {n_blocks}, got {shards}"
        )
    k = n_blocks // shards
    return [
        Shard(
            i,
            shards,
            i * k,
            (i + 1) * k,
            int(starts[i * k]),
            n_rows if i == shards - 1 else int(starts[(i + 1) * k]),
        )
        for i in range(shards)
    ]


def shard_index(index: dict, shard: Shard) -> dict:
    """The ``index`` settings as a catalog of the shard's rows alone sees them: its blocks and
    its indexed rows."""
    indexed = int(index.get("indexed_rows", 0))
    return {
        **index,
        "n_blocks": shard.block_end - shard.block_start,
        "indexed_rows": max(0, min(shard.row_end, indexed) - shard.row_start),
    }
