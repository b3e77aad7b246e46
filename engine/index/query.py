"""Box-set selection over an in-memory block index: prune, scan, vote, rank."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..boxes import BoxSet
from . import scan
from .layout import Blocks, zone_maps

# Below these sizes a query runs on one thread: waking the pool costs more than it saves.
PARALLEL_MIN_BOXES = 64
PARALLEL_MIN_ROW_TESTS = 1_000_000


@dataclass
class BlockIndex:
    """The codes of a catalog in block order, with zone maps and the tree over them.

    cols : uint8 (n_dims, n_rows)   codes, column-major, row ``pos`` at column ``pos``
    ids : int64 (n_rows,)           image id of each row position
    blocks : Blocks                 zone maps; rows past the indexed ones are covered by
                                    extra blocks in insertion order, so nothing is missed
    indexed_rows : int              rows sorted by the last index build
    """

    cols: np.ndarray
    ids: np.ndarray
    blocks: Blocks
    indexed_rows: int
    _lookup: tuple | None = field(init=False, default=None, repr=False)
    tree_lo: np.ndarray = field(init=False, repr=False)
    tree_hi: np.ndarray = field(init=False, repr=False)
    n_leaves: int = field(init=False)

    def __post_init__(self) -> None:
        n_blocks = self.blocks.n_blocks
        self.n_leaves = 1 << max(0, int(np.ceil(np.log2(max(n_blocks, 1)))))
        self.tree_lo, self.tree_hi = scan.build_tree(self.blocks.lo, self.blocks.hi, self.n_leaves)

    @classmethod
    def from_arrays(
        cls, cols: np.ndarray, ids: np.ndarray, blocks: Blocks | None, block_size: int
    ) -> BlockIndex:
        """Assemble an index; rows not covered by ``blocks`` get zone maps in insertion order."""
        n_rows = cols.shape[1]
        if blocks is None:
            blocks = Blocks(np.zeros(1, dtype=np.int64), *(np.zeros((0, cols.shape[0]), np.uint8),) * 2)
        indexed = int(blocks.start[-1])
        if indexed < n_rows:
            tail_starts = np.arange(indexed, n_rows, block_size, dtype=np.int64)
            tail = zone_maps(cols, np.append(tail_starts, n_rows))
            blocks = Blocks(
                np.concatenate([blocks.start[:-1], tail.start]),
                np.concatenate([blocks.lo, tail.lo]),
                np.concatenate([blocks.hi, tail.hi]),
            )
        return cls(cols, ids, blocks, indexed)

    @property
    def n_rows(self) -> int:
        return self.cols.shape[1]

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Row position of each id (int64), -1 where the id is not in the index.

        The lookup is built once per index: a dense array indexed by id when the ids are
        non-negative and not much sparser than the rows (the usual case: 0..n-1 with a few
        removed), else the sorted ids with their positions for binary search.
        """
        ids = np.asarray(ids, dtype=np.int64)
        if self._lookup is None:
            self._lookup = _id_lookup(self.ids)
        table, order = self._lookup
        if order is None:  # dense: table[id] = position
            ok = (ids >= 0) & (ids < len(table))
            out = np.full(len(ids), -1, np.int64)
            out[ok] = table[ids[ok]]
            return out
        if len(table) == 0:
            return np.full(len(ids), -1, np.int64)
        at = np.minimum(np.searchsorted(table, ids), len(table) - 1)
        return np.where(table[at] == ids, order[at], -1)

    @property
    def memory_bytes(self) -> int:
        return self.cols.nbytes + self.ids.nbytes + self.tree_lo.nbytes * 2


def _id_lookup(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(table, None)`` with ``table[id] = position`` (-1 for gaps) for dense ids, else
    ``(sorted ids, their positions)``."""
    n = len(ids)
    if n and ids.min() >= 0 and ids.max() < 2 * n + 1024:
        table = np.full(int(ids.max()) + 1, -1, np.int64)
        table[ids] = np.arange(n, dtype=np.int64)
        return table, None
    order = np.argsort(ids, kind="stable")
    return ids[order], order


@dataclass
class Selection:
    """Matching rows: ``ids`` ranked by ``votes`` (descending), then block position."""

    ids: np.ndarray
    votes: np.ndarray
    stats: dict


def prepare_boxes(boxset: BoxSet) -> tuple[np.ndarray, ...]:
    """Kernel inputs: boxes sorted by member, with dense member ranks and constrained-dim lists."""
    order = np.argsort(boxset.members, kind="stable")
    lo = np.ascontiguousarray(boxset.lo[order])
    hi = np.ascontiguousarray(boxset.hi[order])
    _, member = np.unique(boxset.members[order], return_inverse=True)
    constrained = (lo > 0) | (hi < 255)
    ndims = constrained.sum(axis=1).astype(np.int64)
    # Constrained dims first, in ascending order, then the rest (never read).
    dims = np.argsort(~constrained, axis=1, kind="stable").astype(np.int64)
    return lo, hi, np.ascontiguousarray(dims), ndims, member.astype(np.int64)


def votes(cols: np.ndarray, boxset: BoxSet) -> np.ndarray:
    """Member votes of each row of ``cols`` (uint8 (n_dims, n), C-contiguous) without an index:
    int32 (n,). For small row sets; :func:`select` is the way over a catalog."""
    if len(boxset) == 0 or cols.shape[1] == 0:
        return np.zeros(cols.shape[1], np.int32)
    lo, hi, dims, ndims, member = prepare_boxes(boxset)
    return scan.row_votes(np.ascontiguousarray(cols), lo, hi, dims, ndims, member)


def select(
    index: BlockIndex, boxset: BoxSet, min_votes: int = 1, center: np.ndarray | None = None
) -> Selection:
    """Every row inside at least one box, with at least ``min_votes`` member votes, ranked by
    votes, then (with an integer code ``center``) squared distance to it, then block position."""
    t0 = time.perf_counter()
    min_votes = max(1, int(min_votes))
    lo, hi, dims, ndims, member = prepare_boxes(boxset)
    n_blocks = index.blocks.n_blocks
    if len(boxset) and n_blocks and index.n_rows:
        prune = scan.prune if len(boxset) >= PARALLEL_MIN_BOXES else scan.prune_serial
        pair_block, pair_box, pair_full, visited = prune(
            index.tree_lo, index.tree_hi, index.n_leaves, n_blocks, lo, hi, dims, ndims
        )
        cand, ptr, boxes, full = scan.group_pairs(
            n_blocks, pair_block, pair_box, pair_full, member, min_votes
        )
    else:
        visited = 0
        cand = np.zeros(0, dtype=np.int64)
        ptr = np.zeros(1, dtype=np.int64)
        boxes = np.zeros(0, dtype=np.int64)
        full = np.zeros(0, dtype=np.bool_)
    t1 = time.perf_counter()
    starts = index.blocks.start
    work = int((starts[cand + 1] - starts[cand]).sum()) * max(1, len(boxes) // max(1, len(cand)))
    kernel = scan.scan_blocks if work >= PARALLEL_MIN_ROW_TESTS else scan.scan_blocks_serial
    pos, votes, rows_tested, dim_tests = kernel(
        index.cols,
        index.blocks.start,
        index.blocks.lo,
        index.blocks.hi,
        cand,
        ptr,
        boxes,
        full,
        lo,
        hi,
        dims,
        ndims,
        member,
        min_votes,
    )
    t2 = time.perf_counter()
    if center is None:
        order = scan.rank_by_votes(pos, votes, max(boxset.n_members, 1))
    else:
        dist = scan.center_distances(index.cols, pos, np.asarray(center, dtype=np.int64))
        order = scan.rank_by_votes_then_distance(pos, votes, dist, max(boxset.n_members, 1))
    ids, votes = index.ids[pos[order]], votes[order]
    t3 = time.perf_counter()
    stats = {
        "rows": index.n_rows,
        "unindexed_rows": index.n_rows - index.indexed_rows,
        "boxes": len(boxset),
        "members": boxset.n_members,
        "min_votes": min_votes,
        "blocks": n_blocks,
        "blocks_touched": int(len(cand)),
        "rows_in_touched_blocks": int((starts[cand + 1] - starts[cand]).sum()),
        "rows_tested": int(rows_tested),
        "row_dim_tests": int(dim_tests),
        "tree_nodes_visited": int(visited),
        "results": int(len(ids)),
        "time_prune_ms": (t1 - t0) * 1e3,
        "time_scan_ms": (t2 - t1) * 1e3,
        "time_rank_ms": (t3 - t2) * 1e3,
        "time_total_ms": (t3 - t0) * 1e3,
    }
    return Selection(ids, votes, stats)
