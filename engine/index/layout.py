"""k-d block order: the physical layout of the codes.

The codes are sorted by a balanced k-d tree over the allowed dims and cut into ``2**L`` leaves
("blocks") of between ``block_size/2`` and ``block_size`` rows. Each block's per-dim min/max is
its zone-map box. A box query visits the implicit tree over the blocks and scans only the blocks
whose zone-map boxes intersect it.

Arrays here are column-major: ``cols`` has shape (n_dims, n_rows), dtype uint8, so a kernel that
tests one dim of a block reads one contiguous run of bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numba
import numpy as np

from ..errors import InvalidArgument
from ..limits import DEFAULT_BLOCK_SIZE

# Rows sampled per node to choose the split dim; variance from 4096 rows is plenty to rank dims.
_SPLIT_SAMPLE = 4096
# Catalog.build_index writes the sorted codes in chunks of this many rows, one progress step
# each: a 10M-row build then reports its write, about a third of its time, in ten steps.
WRITE_CHUNK_ROWS = 1 << 20


class Blocks(NamedTuple):
    """Zone maps of a block order.

    start : int64 (n_blocks + 1,)   block b holds rows ``start[b]:start[b+1]``
    lo, hi : uint8 (n_blocks, n_dims)  per-block per-dim min and max
    """

    start: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @property
    def n_blocks(self) -> int:
        return len(self.start) - 1


def check_block_size(block_size: object) -> int:
    """``block_size`` itself when it is an integer >= 2; else :class:`InvalidArgument`."""
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 2:
        raise InvalidArgument(f"block_size must be an integer >= 2, got {block_size!r}")
    return block_size


def n_levels(n_rows: int, block_size: int) -> int:
    """Tree depth L such that ``2**L`` balanced blocks hold at most ``block_size`` rows each."""
    if n_rows <= block_size:
        return 0
    return int(np.ceil(np.log2(n_rows / block_size)))


def block_starts(n_rows: int, levels: int) -> np.ndarray:
    """Row offsets of the ``2**levels`` leaves of a balanced halving of ``n_rows`` rows."""
    starts = np.array([0, n_rows], dtype=np.int64)
    for _ in range(levels):
        mids = (starts[:-1] + starts[1:]) // 2
        out = np.empty(2 * len(starts) - 1, dtype=np.int64)
        out[0::2], out[1::2] = starts, mids
        starts = out
    return starts


@numba.njit(cache=True)
def _split_dim(cols, perm, s, e, dims):
    """Dim of ``dims`` with the largest variance over a strided sample of rows perm[s:e]."""
    n = e - s
    step = max(1, n // _SPLIT_SAMPLE)
    best, best_var = dims[0], -1.0
    for j in range(dims.shape[0]):
        d = dims[j]
        acc, acc2, m = 0.0, 0.0, 0
        for i in range(s, e, step):
            v = float(cols[d, perm[i]])
            acc += v
            acc2 += v * v
            m += 1
        var = acc2 / m - (acc / m) ** 2
        if var > best_var:
            best, best_var = d, var
    return best


@numba.njit(cache=True)
def _counting_sort(cols, perm, s, e, d, tmp):
    """Stable sort of perm[s:e] by the uint8 key cols[d, perm[i]], in O(n + 256)."""
    counts = np.zeros(257, dtype=np.int64)
    for i in range(s, e):
        counts[cols[d, perm[i]] + 1] += 1
    for k in range(256):
        counts[k + 1] += counts[k]
    for i in range(s, e):
        k = cols[d, perm[i]]
        tmp[counts[k]] = perm[i]
        counts[k] += 1
    for i in range(e - s):
        perm[s + i] = tmp[i]


@numba.njit(parallel=True, cache=True)
def _kd_level(cols, perm, starts, dims):
    """Sort each node of one tree level on its own split dim; the median cut is by position."""
    n_nodes = starts.shape[0] - 1
    for b in numba.prange(n_nodes):
        s, e = starts[b], starts[b + 1]
        if e - s < 2:
            continue
        d = _split_dim(cols, perm, s, e, dims)
        tmp = np.empty(e - s, dtype=perm.dtype)
        _counting_sort(cols, perm, s, e, d, tmp)


def kd_order(
    cols: np.ndarray,
    dims: np.ndarray | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    initial: np.ndarray | None = None,
    on_level: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Permutation of the rows into k-d block order over ``dims``.

    Parameters
    ----------
    cols : uint8 (n_dims, n_rows)
    dims : int64 array of the dims the tree may split on (default: all)
    initial : int64 (n_rows,) starting order; ties keep it, so a canonical start (rows sorted
        by id) makes the result independent of the current physical order.
    on_level : called with the number of levels done after each of the ``n_levels`` levels.

    Returns ``(perm, starts)``, ``perm`` int32 (int64 from 2**31 rows): ``cols[:, perm]`` is in
    block order and block b holds rows ``starts[b]:starts[b+1]`` of it.
    """
    n_dims, n_rows = cols.shape
    dims = np.arange(n_dims, dtype=np.int64) if dims is None else np.asarray(dims, dtype=np.int64)
    # int32 positions while they fit: the permutation is the largest array of a build after the codes
    itype = np.int32 if n_rows < 2**31 else np.int64
    perm = np.arange(n_rows, dtype=itype) if initial is None else np.array(initial, dtype=itype)
    levels = n_levels(n_rows, block_size)
    # Each level refines every node of the level above: a node is sorted on its split dim and
    # cut at its middle, which is what block_starts() produces for the next level.
    for level in range(levels):
        _kd_level(cols, perm, block_starts(n_rows, level), dims)
        if on_level is not None:
            on_level(level + 1)
    return perm, block_starts(n_rows, levels) if n_rows else np.zeros(1, dtype=np.int64)


def permute_columns(cols: np.ndarray, perm: np.ndarray) -> None:
    """``cols[:] = cols[:, perm]`` in place, one dim at a time: the only temporary is one row."""
    for d in range(cols.shape[0]):
        cols[d] = cols[d][perm]


def build_steps(n_rows: int, block_size: int, *, load: bool) -> int:
    """Progress steps of :meth:`Catalog.build_index` over ``n_rows`` rows: one to load the
    codes (when ``load``), one per k-d level, one per written chunk of :data:`WRITE_CHUNK_ROWS`
    rows (at least one) and one to commit."""
    return int(load) + n_levels(n_rows, block_size) + write_chunks(n_rows) + 1


def write_chunks(n_rows: int) -> int:
    """How many chunks of :data:`WRITE_CHUNK_ROWS` rows ``n_rows`` rows are written in (at least one)."""
    return max(1, -(-n_rows // WRITE_CHUNK_ROWS))


def zone_maps(cols: np.ndarray, starts: np.ndarray) -> Blocks:
    """Per-block min/max of ``cols`` (already in block order); empty blocks get lo=255, hi=0."""
    n_dims = cols.shape[0]
    n_blocks = len(starts) - 1
    lo = np.full((n_blocks, n_dims), 255, dtype=np.uint8)
    hi = np.zeros((n_blocks, n_dims), dtype=np.uint8)
    nonempty = np.flatnonzero(starts[1:] > starts[:-1])
    if len(nonempty):
        at = starts[nonempty]
        lo[nonempty] = np.minimum.reduceat(cols, at, axis=1).T
        hi[nonempty] = np.maximum.reduceat(cols, at, axis=1).T
    return Blocks(np.asarray(starts, dtype=np.int64), lo, hi)
