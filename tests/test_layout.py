"""k-d block order and zone maps against slow, obvious references."""

import re

import numpy as np
import pytest

from engine.errors import CatalogError, InvalidArgument
from engine.index import layout, scan


@pytest.mark.parametrize(
    "n_rows,block_size", [(0, 16), (1, 16), (15, 16), (16, 16), (17, 16), (1000, 16), (4097, 64)]
)
def test_kd_order_is_a_permutation_into_balanced_blocks(n_rows, block_size):
    rng = np.random.default_rng(n_rows)
    cols = rng.integers(0, 256, (32, n_rows), dtype=np.uint8)
    perm, starts = layout.kd_order(cols, block_size=block_size)
    assert np.array_equal(np.sort(perm), np.arange(n_rows))
    sizes = np.diff(starts)
    assert starts[0] == 0 and starts[-1] == n_rows
    assert len(sizes) & (len(sizes) - 1) == 0, "a power of two of blocks"
    assert sizes.max(initial=0) <= block_size
    if n_rows > block_size:
        assert sizes.min() >= block_size // 2
        assert sizes.max() - sizes.min() <= 1


def test_kd_order_separates_clusters_on_the_split_dims():
    rng = np.random.default_rng(0)
    # Two far-apart clusters on dim 5: the first split must put them in different halves.
    cols = rng.integers(100, 110, (32, 2000), dtype=np.uint8)
    cols[5, :1000] = rng.integers(0, 10, 1000)
    cols[5, 1000:] = rng.integers(245, 256, 1000)
    perm, starts = layout.kd_order(cols, block_size=256, initial=rng.permutation(2000))
    half = cols[5, perm]
    assert half[:1000].max() < 10 and half[1000:].min() >= 245


def test_kd_order_restricted_dims_only_split_on_those_dims():
    rng = np.random.default_rng(1)
    cols = rng.integers(0, 256, (32, 4096), dtype=np.uint8)
    perm, starts = layout.kd_order(cols, dims=np.array([2, 9]), block_size=64)
    sorted_cols = cols[:, perm]
    zm = layout.zone_maps(sorted_cols, starts)
    width = zm.hi.astype(int) - zm.lo.astype(int)
    # Blocks are narrow on the split dims and span nearly everything on the others.
    assert width[:, [2, 9]].mean() < 64
    assert width[:, [0, 1, 3]].mean() > 200


def test_kd_order_is_deterministic_given_the_initial_order():
    rng = np.random.default_rng(2)
    cols = rng.integers(0, 256, (32, 3000), dtype=np.uint8)
    init = rng.permutation(3000)
    a = layout.kd_order(cols, block_size=100, initial=init)
    b = layout.kd_order(cols, block_size=100, initial=init.copy())
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_zone_maps_equal_per_block_min_max():
    rng = np.random.default_rng(3)
    cols = rng.integers(0, 256, (32, 777), dtype=np.uint8)
    starts = np.array([0, 0, 100, 101, 500, 777])  # one empty block
    zm = layout.zone_maps(cols, starts)
    for b in range(len(starts) - 1):
        s, e = starts[b], starts[b + 1]
        if s == e:
            assert (zm.lo[b] == 255).all() and (zm.hi[b] == 0).all()
        else:
            assert np.array_equal(zm.lo[b], cols[:, s:e].min(axis=1))
            assert np.array_equal(zm.hi[b], cols[:, s:e].max(axis=1))


def test_tree_nodes_bound_their_leaves():
    rng = np.random.default_rng(4)
    lo = rng.integers(0, 128, (5, 32)).astype(np.uint8)
    hi = (lo + rng.integers(0, 128, (5, 32))).astype(np.uint8)
    t_lo, t_hi = scan.build_tree(lo, hi, 8)
    assert np.array_equal(t_lo[1], lo.min(axis=0)) and np.array_equal(t_hi[1], hi.max(axis=0))
    # Padding leaves 5..7 match nothing.
    assert (t_lo[8 + 5 :] == 255).all() and (t_hi[8 + 5 :] == 0).all()
    assert np.array_equal(t_lo[4], lo[:2].min(axis=0))


def test_rank_by_votes_is_a_stable_descending_order():
    votes = np.array([1, 3, 2, 3, 1, 0, 2], dtype=np.int32)
    order = scan.rank_by_votes(np.arange(7), votes, 3)
    assert votes[order].tolist() == [3, 3, 2, 2, 1, 1, 0]
    assert order.tolist() == [1, 3, 2, 6, 0, 4, 5]


def test_serial_and_parallel_kernels_agree():
    from engine.boxes import BoxSet
    from engine.index import query

    rng = np.random.default_rng(5)
    cols = rng.integers(0, 256, (32, 5000), dtype=np.uint8)
    perm, starts = layout.kd_order(cols, block_size=128)
    c = np.ascontiguousarray(cols[:, perm])
    idx = query.BlockIndex.from_arrays(c, perm.astype(np.int64), layout.zone_maps(c, starts), 128)
    lo = rng.integers(0, 100, (40, 32))
    hi = lo + 120
    lo[:, 4:], hi[:, 4:] = 0, 255
    bs = BoxSet.from_arrays(lo, hi, members=rng.integers(0, 4, 40))
    args = query.prepare_boxes(bs)
    a = scan.prune(idx.tree_lo, idx.tree_hi, idx.n_leaves, idx.blocks.n_blocks, *args[:4])
    b = scan.prune_serial(idx.tree_lo, idx.tree_hi, idx.n_leaves, idx.blocks.n_blocks, *args[:4])
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    grouped = scan.group_pairs(idx.blocks.n_blocks, a[0], a[1], a[2], args[4], 1)
    p = scan.scan_blocks(c, idx.blocks.start, idx.blocks.lo, idx.blocks.hi, *grouped, *args, 1)
    s = scan.scan_blocks_serial(c, idx.blocks.start, idx.blocks.lo, idx.blocks.hi, *grouped, *args, 1)
    for x, y in zip(p, s, strict=True):
        assert np.array_equal(x, y)
    assert len(p[0]) > 0


@pytest.mark.parametrize("block_size", [2, 16, 2048, 1 << 40])
def test_check_block_size_returns_a_valid_size(block_size):
    assert layout.check_block_size(block_size) == block_size


@pytest.mark.parametrize("block_size", [1, 0, -16, 16.0, 2.5, "16", True, None])
def test_check_block_size_refuses_what_is_not_an_integer_of_at_least_2(block_size):
    message = f"block_size must be an integer >= 2, got {block_size!r}"
    with pytest.raises(InvalidArgument, match=f"^{re.escape(message)}$") as e:
        layout.check_block_size(block_size)
    assert isinstance(e.value, CatalogError) and isinstance(e.value, ValueError)
