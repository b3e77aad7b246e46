"""engine.index.knn against a brute-force numpy oracle.

The oracle works on row-major codes and ranks with np.lexsort; it shares nothing with the
kernels. Codes are drawn from small alphabets as well as from 0..255 so that equal distances,
and the tie-break by position, are the common case rather than a corner.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import InvalidArgument
from engine.index import knn

N_DIMS = 32
ALPHABETS = (2, 4, 256)  # codes in {0, 1} are nearly all ties


def oracle(codes: np.ndarray, query: np.ndarray, k: int, exclude=()) -> tuple[np.ndarray, np.ndarray]:
    """Expected ``(pos, dist)``: rows of ``codes`` (n, 32) by squared L2 distance, then position."""
    dist = ((codes.astype(np.int64) - np.asarray(query, dtype=np.int64)) ** 2).sum(axis=1)
    pos = np.arange(len(codes))
    keep = ~np.isin(pos, np.asarray(exclude, dtype=np.int64))
    pos, dist = pos[keep], dist[keep]
    order = np.lexsort((pos, dist))[:k]
    return pos[order], dist[order]


def make_codes(seed: int, n: int, alphabet: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, alphabet, size=(n, N_DIMS), dtype=np.uint8)


def make_query(seed: int, codes: np.ndarray, alphabet: int) -> np.ndarray:
    """Half the time a copy of a row (distance 0 to it), else a fresh code."""
    rng = np.random.default_rng(seed + 1)
    if len(codes) and rng.random() < 0.5:
        return codes[rng.integers(len(codes))].copy()
    return rng.integers(0, alphabet, size=N_DIMS, dtype=np.uint8)


def columns(codes: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(codes.T)


def test_oracle_sanity():
    codes = np.zeros((4, N_DIMS), dtype=np.uint8)
    codes[0, 0], codes[1, 0], codes[2, 1], codes[3, 0] = 3, 1, 1, 2
    pos, dist = oracle(codes, np.zeros(N_DIMS, dtype=np.uint8), 3)
    assert pos.tolist() == [1, 2, 3] and dist.tolist() == [1, 1, 4]
    assert oracle(codes, np.zeros(N_DIMS), 9, exclude=[1])[0].tolist() == [2, 3, 0]


# -- the public API ----------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 70),
    alphabet=st.sampled_from(ALPHABETS),
    k=st.integers(1, 80),
    parallel=st.sampled_from([None, False, True]),
    n_exclude=st.integers(0, 5),
)
def test_topk_matches_oracle(seed, n, alphabet, k, parallel, n_exclude):
    codes = make_codes(seed, n, alphabet)
    query = make_query(seed, codes, alphabet)
    rng = np.random.default_rng(seed + 2)
    # Duplicates and positions past the end are allowed and ignored.
    exclude = rng.integers(-2, n + 3, size=n_exclude) if n_exclude else None
    pos, dist = knn.topk(columns(codes), query, k, exclude, parallel=parallel)
    want_pos, want_dist = oracle(codes, query, k, () if exclude is None else exclude)
    assert pos.dtype == np.int64 and dist.dtype == np.int64
    np.testing.assert_array_equal(pos, want_pos)
    np.testing.assert_array_equal(dist, want_dist)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 50),
    n_q=st.integers(0, 4),
    alphabet=st.sampled_from(ALPHABETS),
    k=st.integers(1, 60),
    parallel=st.booleans(),
)
def test_topk_many_matches_oracle(seed, n, n_q, alphabet, k, parallel):
    codes = make_codes(seed, n, alphabet)
    queries = np.array([make_query(seed + 7 * i, codes, alphabet) for i in range(n_q)], dtype=np.uint8)
    pos, dist = knn.topk_many(columns(codes), queries.reshape(n_q, N_DIMS), k, parallel=parallel)
    assert pos.shape == dist.shape == (n_q, min(k, n))
    for i in range(n_q):
        want_pos, want_dist = oracle(codes, queries[i], k)
        np.testing.assert_array_equal(pos[i], want_pos)
        np.testing.assert_array_equal(dist[i], want_dist)


# -- the kernels, with chunks small enough that tiny inputs cross every boundary ---------------
@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    chunk_rows=st.sampled_from([1, 3, 8, 16]),
    extra=st.sampled_from([-1, 0, 1, 5]),
    n_chunks=st.integers(1, 12),
    n_near=st.integers(0, 6),
    n_tasks=st.integers(1, 5),
    n_q=st.integers(1, 3),
    alphabet=st.sampled_from(ALPHABETS),
    k=st.integers(1, 40),
    parallel=st.booleans(),
)
def test_kernels_match_oracle(seed, chunk_rows, extra, n_chunks, n_near, n_tasks, n_q, alphabet, k, parallel):
    n = max(1, n_chunks * chunk_rows + extra)
    codes = make_codes(seed, n, alphabet)
    queries = np.array([make_query(seed + 7 * i, codes, alphabet) for i in range(n_q)], dtype=np.int32)
    # Any order of the dims gives the same integer sums.
    rng = np.random.default_rng(seed + 3)
    dims = np.array([rng.permutation(N_DIMS) for _ in range(n_q)], dtype=np.int64)
    kernel = knn.topk_keys if parallel else knn.topk_keys_serial
    keys = kernel(columns(codes), queries, dims, min(k, n), n_tasks, chunk_rows, n_near)
    for i in range(n_q):
        want_pos, want_dist = oracle(codes, queries[i], k)
        np.testing.assert_array_equal(keys[i] & ((1 << knn.POS_BITS) - 1), want_pos)
        np.testing.assert_array_equal(keys[i] >> knn.POS_BITS, want_dist)


@pytest.mark.parametrize(
    "n",
    [
        knn.CHUNK_ROWS - 1,
        knn.CHUNK_ROWS,
        knn.CHUNK_ROWS + 1,
        3 * knn.CHUNK_ROWS + 7,
        (knn.NEAR_CHUNKS + 3) * knn.CHUNK_ROWS + 17,
    ],
)
@pytest.mark.parametrize("parallel", [False, True])
def test_real_chunk_sizes(n, parallel):
    """The constants in use: chunk boundaries, and more chunks than are scanned first."""
    for alphabet, k in ((2, 60), (256, 25)):
        codes = make_codes(n + alphabet, n, alphabet)
        query = codes[n // 2].copy()
        pos, dist = knn.topk(columns(codes), query, k, parallel=parallel)
        want_pos, want_dist = oracle(codes, query, k)
        np.testing.assert_array_equal(pos, want_pos)
        np.testing.assert_array_equal(dist, want_dist)


# -- contract ---------------------------------------------------------------------------------
def test_more_like_this_excludes_the_example():
    codes = make_codes(1, 500, 4)
    codes[17] = codes[3]  # an exact duplicate of the example is still returned
    pos, dist = knn.topk(columns(codes), codes[3], 10, exclude=np.array([3]))
    assert len(pos) == 10 and 3 not in pos
    assert pos[0] == 17 and dist[0] == 0


def test_exclude_everything_and_k_beyond_rows():
    codes = make_codes(2, 6, 256)
    cols = columns(codes)
    pos, dist = knn.topk(cols, codes[0], 100)
    assert sorted(pos.tolist()) == list(range(6)) and np.all(np.diff(dist) >= 0)
    pos, dist = knn.topk(cols, codes[0], 3, exclude=np.arange(6))
    assert pos.size == 0 and dist.size == 0
    pos, _ = knn.topk(cols, codes[0], 3, exclude=[0, 1, 2, 3, 4])
    assert pos.tolist() == [5]


def test_no_rows():
    cols = np.zeros((N_DIMS, 0), dtype=np.uint8)
    pos, dist = knn.topk(cols, np.zeros(N_DIMS, dtype=np.uint8), 5)
    assert pos.shape == dist.shape == (0,) and pos.dtype == dist.dtype == np.int64
    pos, dist = knn.topk_many(cols, np.zeros((3, N_DIMS), dtype=np.uint8), 5)
    assert pos.shape == dist.shape == (3, 0)


def test_extreme_codes_do_not_overflow():
    codes = np.full((3, N_DIMS), 255, dtype=np.uint8)
    codes[1] = 0
    pos, dist = knn.topk(columns(codes), np.zeros(N_DIMS, dtype=np.uint8), 3)
    assert pos.tolist() == [1, 0, 2] and dist.tolist() == [0, N_DIMS * 255**2, N_DIMS * 255**2]


@pytest.mark.parametrize("k", [0, -3, 2.0, True, "5", None])
def test_bad_k(k):
    codes = columns(make_codes(3, 10, 256))
    with pytest.raises(InvalidArgument, match="k must be a positive integer") as err:
        knn.topk(codes, codes[:, 0], k)
    assert isinstance(err.value, ValueError)
    with pytest.raises(InvalidArgument, match="k must be a positive integer"):
        knn.topk_many(codes, codes[:, :2].T, k)


def test_numpy_integer_k():
    codes = make_codes(4, 20, 256)
    pos, _ = knn.topk(columns(codes), codes[0], np.int32(4))
    np.testing.assert_array_equal(pos, oracle(codes, codes[0], 4)[0])


@pytest.mark.parametrize(
    "query",
    [
        np.zeros(31, np.uint8),
        np.zeros((2, N_DIMS), np.uint8),
        np.full(N_DIMS, 256),
        np.full(N_DIMS, -1),
        np.zeros(N_DIMS, np.float32),
    ],
)
def test_bad_query(query):
    with pytest.raises(InvalidArgument, match="query"):
        knn.topk(columns(make_codes(5, 10, 256)), query, 3)


def test_bad_codes():
    codes = make_codes(6, 10, 256)
    with pytest.raises(InvalidArgument, match="C-contiguous"):
        knn.topk(codes.T, codes[0], 3)  # a transposed view, not a copy
    with pytest.raises(InvalidArgument, match="uint8"):
        knn.topk(columns(codes).astype(np.int16), codes[0], 3)
    with pytest.raises(InvalidArgument, match="shape"):
        knn.topk(columns(codes)[:16], codes[0], 3)
