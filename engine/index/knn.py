"""Exact k nearest neighbours over the 32-byte codes, by a pruned full scan.

Distances are squared L2 between uint8 codes, computed in integer arithmetic, so they are exact
and a ranking by (distance, row position) is fully determined. No approximate index is needed
at this size: one query reads 32 bytes per row, 320 MB at 10M rows, which two cores stream in
a few tens of milliseconds.

The kernels work column-major on chunks of ``CHUNK_ROWS`` rows: the chunk's int32 partial
distances stay in L1 while the dims are added in, four contiguous columns per pass. The chunks
are dealt out to one task per thread, and each task keeps its own bounded max-heap of the best
keys so far; a key packs ``dist << POS_BITS | pos`` into one int64, so comparing keys compares
(distance, position) and ties need no extra code. After every pass a chunk whose smallest
partial distance already exceeds the task's k-th best is dropped without reading its remaining
columns. That test only pays once the heaps hold good rows, so each scan starts with the
``NEAR_CHUNKS`` chunks whose middle row is nearest the query and then streams through the rest
in order. On codes in k-d block order (``BlockIndex.cols``), where neighbouring rows are close,
this leaves about 6 of the 32 columns read per row; on codes in random order, about 26. The
task heaps are merged by sorting their keys.
"""

from __future__ import annotations

import numba
import numpy as np

from ..boxes import N_DIMS
from ..errors import InvalidArgument

# int32 partial distances of one chunk: 16 KiB, which leaves L1 room for the columns streaming in.
CHUNK_ROWS = 4096
# Chunks scanned first, nearest first by their middle row. In k-d block order these hold the
# query's neighbourhood, so every heap is tight before the sequential pass starts; in random
# order they cost a few random reads and nothing else.
NEAR_CHUNKS = 64
# Below this many rows (times queries) one thread is as fast: such a scan takes a few ms, and
# waking a second thread costs about as much on two cores when the other one is busy.
PARALLEL_MIN_ROWS = 1_000_000
# Low bits of a key that hold the row position; the distance (at most 32 * 255**2 < 2**21) sits
# above them, so keys fit an int64 for any table below 2**40 rows.
POS_BITS = 40
_POS_MASK = (1 << POS_BITS) - 1
_EMPTY = np.iinfo(np.int64).max


@numba.njit(cache=True)
def _replace_top(heap, key):
    """Put ``key`` in place of the largest key of the max-heap ``heap`` (int64) and sift it down."""
    n = heap.shape[0]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and heap[c + 1] > heap[c]:
            c += 1
        if heap[c] <= key:
            break
        heap[i] = heap[c]
        i = c
    heap[i] = key


@numba.njit(cache=True)
def _add_dims(cols, q, dims, j, c0, m, acc):
    """Add the squared differences on dims ``dims[j:j+4]`` of rows ``c0:c0+m`` into ``acc[:m]``
    and return the smallest entry of ``acc[:m]`` afterwards.

    Four columns per pass quarter the loads and stores of ``acc`` and keep four streams in
    flight; LLVM vectorises the loop (zero-extend, subtract, multiply, add).
    """
    a, b = cols[dims[j], c0 : c0 + m], cols[dims[j + 1], c0 : c0 + m]
    c, d = cols[dims[j + 2], c0 : c0 + m], cols[dims[j + 3], c0 : c0 + m]
    qa, qb, qc, qd = q[dims[j]], q[dims[j + 1]], q[dims[j + 2]], q[dims[j + 3]]
    low = np.int32(2**31 - 1)
    for r in range(m):
        ta = np.int32(a[r]) - qa
        tb = np.int32(b[r]) - qb
        tc = np.int32(c[r]) - qc
        td = np.int32(d[r]) - qd
        v = np.int32(acc[r] + ta * ta + tb * tb + tc * tc + td * td)
        acc[r] = v
        low = min(low, v)
    return low


@numba.njit(cache=True)
def _scan_chunk(cols, q, dims, c0, m, heap, acc):
    """Offer rows ``c0:c0+m`` to the max-heap ``heap`` of keys for query ``q`` (int32 (n_dims,)).

    A row whose distance exceeds the top key's can never get in, so once every partial
    distance of the chunk does, the chunk is done: its remaining columns are never read.
    """
    limit = heap[0] >> POS_BITS
    acc[:m] = 0
    for j in range(0, dims.shape[0], 4):
        if _add_dims(cols, q, dims, j, c0, m, acc) > limit:
            return
    for r in range(m):
        if acc[r] <= limit:
            key = (np.int64(acc[r]) << POS_BITS) | (c0 + r)
            if key < heap[0]:
                _replace_top(heap, key)
                limit = heap[0] >> POS_BITS


@numba.njit(cache=True)
def _schedule(cols, queries, n_tasks, chunk_rows, n_near):
    """Chunk order per task: ``(seq, bounds)``, task t scans chunks ``seq[bounds[t]:bounds[t+1]]``.

    The ``n_near`` chunks whose middle row is nearest to any query are dealt out to the tasks
    first, so all of them start with good rows; each task then takes a contiguous run of
    the other chunks in ascending order, which keeps its reads sequential.
    """
    n_rows = cols.shape[1]
    n_chunks = (n_rows + chunk_rows - 1) // chunk_rows
    probe = np.empty(n_chunks, dtype=np.int64)
    for c in range(n_chunks):
        r = min(c * chunk_rows + chunk_rows // 2, n_rows - 1)
        best = np.int64(1) << 62
        for i in range(queries.shape[0]):
            d = 0
            for j in range(cols.shape[0]):
                t = np.int64(cols[j, r]) - queries[i, j]
                d += t * t
            best = min(best, d)
        probe[c] = best
    n_near = min(n_chunks, n_near)
    near = np.argsort(probe)[:n_near]
    is_near = np.zeros(n_chunks, dtype=np.bool_)
    is_near[near] = True
    rest = np.flatnonzero(~is_near)
    seq = np.empty(n_chunks, dtype=np.int64)
    bounds = np.zeros(n_tasks + 1, dtype=np.int64)
    at = 0
    for t in range(n_tasks):
        for i in range(t, n_near, n_tasks):
            seq[at] = near[i]
            at += 1
        for i in range(t * len(rest) // n_tasks, (t + 1) * len(rest) // n_tasks):
            seq[at] = rest[i]
            at += 1
        bounds[t + 1] = at
    return seq, bounds


@numba.njit(cache=True)
def _plan(cols, queries, k, n_tasks, chunk_rows, n_near):
    """Chunk schedule and heap pool: ``(seq, bounds, offset, pool)``.

    Task t scans chunks ``seq[bounds[t]:bounds[t+1]]`` into the heaps ``pool[:, offset[t]:offset[t+1]]``
    (one per query), each of ``min(k, its rows)`` keys, so every slot ends up holding a real row.
    """
    n_rows = cols.shape[1]
    seq, bounds = _schedule(cols, queries, n_tasks, chunk_rows, n_near)
    offset = np.zeros(n_tasks + 1, dtype=np.int64)
    for t in range(n_tasks):
        rows = 0
        for i in range(bounds[t], bounds[t + 1]):
            rows += min(chunk_rows, n_rows - seq[i] * chunk_rows)
        offset[t + 1] = offset[t] + min(k, rows)
    pool = np.full((queries.shape[0], offset[n_tasks]), _EMPTY, dtype=np.int64)
    return seq, bounds, offset, pool


@numba.njit(cache=True)
def _run_task(cols, queries, dims, chunks, pool, lo, hi, chunk_rows):
    """Scan ``chunks`` into the heaps ``pool[j, lo:hi]``, chunk outside and queries inside, so
    that a batch reads each chunk from memory once."""
    n_rows = cols.shape[1]
    acc = np.empty(chunk_rows, dtype=np.int32)
    for c in chunks:
        c0 = c * chunk_rows
        m = min(chunk_rows, n_rows - c0)
        for j in range(queries.shape[0]):
            _scan_chunk(cols, queries[j], dims[j], c0, m, pool[j, lo:hi], acc)


@numba.njit(cache=True)
def _merge(pool, k):
    """The ``k`` smallest keys of each row of ``pool`` (all task heaps of one query), sorted."""
    out = np.empty((pool.shape[0], k), dtype=np.int64)
    for j in range(pool.shape[0]):
        out[j] = np.sort(pool[j])[:k]
    return out


# The serial and parallel twins are two functions, not one function compiled twice: numba's
# cache keys an entry by the function's name, line and bytecode but not by ``parallel``, so
# twins of one function overwrite each other's cached code.
@numba.njit(parallel=True, cache=True)
def topk_keys(cols, queries, dims, k, n_tasks, chunk_rows, n_near):
    """Sorted keys of the ``k`` best rows per query: int64 (n_queries, k), ``k <= n_rows``.

    cols : uint8 (n_dims, n_rows), C-contiguous, n_rows >= 1
    queries : int32 (n_queries, n_dims)
    dims : int64 (n_queries, n_dims), the order in which each query adds up its dims
    n_tasks : heaps per query, each filled from its own share of the chunks, in parallel
    chunk_rows, n_near : ``CHUNK_ROWS`` and ``NEAR_CHUNKS`` (arguments rather than constants so
        that tests can make them small enough for small inputs to take every path)
    """
    seq, bounds, offset, pool = _plan(cols, queries, k, n_tasks, chunk_rows, n_near)
    for t in numba.prange(n_tasks):
        _run_task(
            cols, queries, dims, seq[bounds[t] : bounds[t + 1]], pool, offset[t], offset[t + 1], chunk_rows
        )
    return _merge(pool, k)


@numba.njit(cache=True)
def topk_keys_serial(cols, queries, dims, k, n_tasks, chunk_rows, n_near):
    """:func:`topk_keys` on the calling thread alone (the tasks run one after the other)."""
    seq, bounds, offset, pool = _plan(cols, queries, k, n_tasks, chunk_rows, n_near)
    for t in range(n_tasks):
        _run_task(
            cols, queries, dims, seq[bounds[t] : bounds[t + 1]], pool, offset[t], offset[t + 1], chunk_rows
        )
    return _merge(pool, k)


def _prepare(cols: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the inputs and convert them to what the kernels take; returns (cols, queries, dims).

    Each query adds its dims farthest from the middle of the code range first: there a query
    tends to be far from most rows, so partial distances pass the pruning limit sooner.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise InvalidArgument(f"k must be a positive integer (the number of neighbours to return), got {k!r}")
    cols = np.asarray(cols)
    if cols.ndim != 2 or cols.shape[0] != N_DIMS or cols.dtype != np.uint8 or not cols.flags.c_contiguous:
        # A silent copy would cost more than the scan itself, on every query.
        raise InvalidArgument(
            f"codes must be a C-contiguous uint8 array of shape ({N_DIMS}, n_rows), one "
            f"row per dim (np.ascontiguousarray(codes.T) once); got {cols.dtype} {cols.shape}"
        )
    queries = np.asarray(queries)
    if queries.ndim != 2 or queries.shape[1] != N_DIMS:
        raise InvalidArgument(f"a query must be a code of {N_DIMS} values, got shape {queries.shape[1:]}")
    if not (
        np.issubdtype(queries.dtype, np.integer)
        and (queries.size == 0 or (queries.min() >= 0 and queries.max() <= 255))
    ):
        raise InvalidArgument("a query must hold integer code values in 0..255; quantize embeddings first")
    q = queries.astype(np.int32)
    dims = np.argsort(-np.abs(2 * q - 255), axis=1, kind="stable").astype(np.int64)
    return cols, q, dims


def _keys(
    cols: np.ndarray, queries: np.ndarray, dims: np.ndarray, k: int, parallel: bool | None
) -> np.ndarray:
    n_rows = cols.shape[1]
    if parallel is None:
        parallel = n_rows * len(queries) >= PARALLEL_MIN_ROWS
    if parallel:
        return topk_keys(cols, queries, dims, int(k), numba.get_num_threads(), CHUNK_ROWS, NEAR_CHUNKS)
    return topk_keys_serial(cols, queries, dims, int(k), 1, CHUNK_ROWS, NEAR_CHUNKS)


def _decode(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return keys & _POS_MASK, keys >> POS_BITS


def topk(
    cols: np.ndarray,
    query: np.ndarray,
    k: int,
    exclude: np.ndarray | None = None,
    *,
    parallel: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows nearest to ``query``: ``(pos, dist)``, both int64 of length ``min(k, n)``.

    cols : uint8 (32, n_rows), column-major codes (``BlockIndex.cols``)
    query : uint8 (32,) code
    k : positive int; with fewer rows (after ``exclude``) than ``k``, all of them are returned
    exclude : row positions never to return, e.g. the example of a "more like this" query
    parallel : force the parallel (True) or one-thread (False) kernel; by default the parallel
        one runs from ``PARALLEL_MIN_ROWS`` rows on

    ``dist`` is the exact squared L2 distance; rows are ranked by distance, then position.
    Excluded rows are handled by asking for ``k`` plus as many rows as are excluded and dropping
    them, which costs nothing measurable for a handful of exclusions.
    """
    cols, q, dims = _prepare(cols, np.asarray(query)[None], k)
    n_rows = cols.shape[1]
    drop = np.zeros(0, dtype=np.int64) if exclude is None else np.unique(np.asarray(exclude, dtype=np.int64))
    drop = drop[(drop >= 0) & (drop < n_rows)]
    want = min(k + len(drop), n_rows)
    if want == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    pos, dist = _decode(_keys(cols, q, dims, want, parallel)[0])
    if len(drop):
        keep = ~np.isin(pos, drop)
        pos, dist = pos[keep][:k], dist[keep][:k]
    return pos, dist


def topk_many(
    cols: np.ndarray, queries: np.ndarray, k: int, *, parallel: bool | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`topk` for a batch: ``(pos, dist)``, int64 (n_queries, min(k, n_rows)).

    queries : uint8 (n_queries, 32)

    The batch shares one pass over the codes: each chunk is loaded from memory once for all the
    queries. That saves memory traffic where chunks are read in full (codes in random order);
    in k-d block order each query drops most chunks early on its own, and a batch saves little.
    """
    cols, q, dims = _prepare(cols, queries, k)
    want = min(k, cols.shape[1])
    if want == 0 or len(q) == 0:
        empty = np.zeros((len(q), want), dtype=np.int64)
        return empty, empty.copy()
    return _decode(_keys(cols, q, dims, want, parallel))
