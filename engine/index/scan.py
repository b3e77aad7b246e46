"""numba kernels for box queries: prune blocks through the zone-map tree, then scan candidates.

Shapes and dtypes (the Python side converts; kernels never check):

- ``cols``: uint8 (n_dims, n_rows), column-major codes in block order
- ``tree_lo``, ``tree_hi``: uint8 (2 * n_leaves, n_dims), a perfect binary tree over the blocks
  in heap order: node 1 is the root, node k has children 2k and 2k+1, and leaf i is node
  ``n_leaves + i``. Padding leaves (past the real blocks) hold lo=255, hi=0 and match nothing.
- ``box_lo``, ``box_hi``: uint8 (n_boxes, n_dims); ``box_dims``: int64 (n_boxes, n_dims) holding
  each box's constrained dims first, ``box_ndims``: int64 (n_boxes,) how many.
- ``box_member``: int64 (n_boxes,), dense member ranks 0..n_members-1, boxes sorted by it.
"""

from __future__ import annotations

import types

import numba
import numpy as np


def _twin(func, suffix: str):
    """A copy of ``func`` under another name.

    numba's cache keys compiled code by the function's qualified name and first line, not by
    ``parallel=``: a parallel and a serial kernel built from one function share one cache
    entry, and whichever compiled last runs in both places (measured: the "serial" twin then
    paid the thread pool's wake-up on every call). A distinct name gives each its own entry.
    """
    name = func.__name__ + suffix
    code = func.__code__.replace(co_name=name, co_qualname=func.__qualname__ + suffix)
    twin = types.FunctionType(code, func.__globals__, name, func.__defaults__, func.__closure__)
    twin.__qualname__ = func.__qualname__ + suffix
    twin.__module__ = func.__module__
    twin.__doc__ = func.__doc__
    return twin


@numba.njit(cache=True)
def build_tree(lo, hi, n_leaves):
    """Zone-map tree over the blocks: uint8 (2 * n_leaves, n_dims) lo and hi in heap order."""
    n_blocks, n_dims = lo.shape
    t_lo = np.full((2 * n_leaves, n_dims), 255, dtype=np.uint8)
    t_hi = np.zeros((2 * n_leaves, n_dims), dtype=np.uint8)
    t_lo[n_leaves : n_leaves + n_blocks] = lo
    t_hi[n_leaves : n_leaves + n_blocks] = hi
    for k in range(n_leaves - 1, 0, -1):
        for d in range(n_dims):
            t_lo[k, d] = min(t_lo[2 * k, d], t_lo[2 * k + 1, d])
            t_hi[k, d] = max(t_hi[2 * k, d], t_hi[2 * k + 1, d])
    return t_lo, t_hi


@numba.njit(cache=True)
def _relation(t_lo, t_hi, k, box_lo, box_hi, dims, nd, b):
    """0: node k misses box b; 1: overlaps; 2: node's zone map lies inside the box."""
    inside = True
    for j in range(nd):
        d = dims[b, j]
        if t_hi[k, d] < box_lo[b, d] or t_lo[k, d] > box_hi[b, d]:
            return 0
        if t_lo[k, d] < box_lo[b, d] or t_hi[k, d] > box_hi[b, d]:
            inside = False
    return 2 if inside else 1


@numba.njit(cache=True)
def _prune_box(
    t_lo,
    t_hi,
    n_leaves,
    n_blocks,
    box_lo,
    box_hi,
    box_dims,
    box_ndims,
    b,
    out_block,
    out_full,
    at,
    count_only,
):
    """Walk the tree for box b; write its candidate blocks from ``at`` on unless count_only.
    Returns ``(n_candidates, n_nodes_visited)``."""
    nd = box_ndims[b]
    stack = np.empty(128, dtype=np.int64)
    stack[0] = 1
    top = 1
    n = 0
    visited = 0
    while top > 0:
        top -= 1
        k = stack[top]
        visited += 1
        rel = _relation(t_lo, t_hi, k, box_lo, box_hi, box_dims, nd, b)
        if rel == 0:
            continue
        if rel == 1 and k < n_leaves:
            stack[top] = 2 * k + 1
            stack[top + 1] = 2 * k
            top += 2
            continue
        # A leaf, or a subtree wholly inside the box: emit its real blocks.
        first, last = k, k
        while first < n_leaves:
            first, last = 2 * first, 2 * last + 1
        first -= n_leaves
        last = min(last - n_leaves, n_blocks - 1)
        for leaf in range(first, last + 1):
            if not count_only:
                out_block[at + n] = leaf
                out_full[at + n] = rel == 2
            n += 1
    return n, visited


def _prune(t_lo, t_hi, n_leaves, n_blocks, box_lo, box_hi, box_dims, box_ndims):
    """Candidate (block, box) pairs, found by walking the zone-map tree once per box.

    Returns ``(blocks, boxes, full, n_visited)``: int64, int64, bool arrays of equal length,
    ordered by box, where ``full`` marks a block whose zone map lies inside the box (every row
    matches), and the number of tree nodes visited. Boxes are walked in parallel, twice: once
    to count, once to fill.
    """
    n_boxes = box_lo.shape[0]
    counts = np.zeros(n_boxes + 1, dtype=np.int64)
    visits = np.zeros(n_boxes, dtype=np.int64)
    dummy_b = np.empty(0, dtype=np.int64)
    dummy_f = np.empty(0, dtype=np.bool_)
    for b in numba.prange(n_boxes):
        counts[b + 1], visits[b] = _prune_box(
            t_lo, t_hi, n_leaves, n_blocks, box_lo, box_hi, box_dims, box_ndims, b, dummy_b, dummy_f, 0, True
        )
    for b in range(n_boxes):
        counts[b + 1] += counts[b]
    out_block = np.empty(counts[n_boxes], dtype=np.int64)
    out_box = np.empty(counts[n_boxes], dtype=np.int64)
    out_full = np.empty(counts[n_boxes], dtype=np.bool_)
    for b in numba.prange(n_boxes):
        _prune_box(
            t_lo,
            t_hi,
            n_leaves,
            n_blocks,
            box_lo,
            box_hi,
            box_dims,
            box_ndims,
            b,
            out_block,
            out_full,
            counts[b],
            False,
        )
        out_box[counts[b] : counts[b + 1]] = b
    return out_block, out_box, out_full, visits.sum()


# Each kernel with prange comes twice: parallel for big queries, serial for small ones, which
# would otherwise pay for waking the thread pool (tens of ms when the other core is busy).
prune = numba.njit(parallel=True, cache=True)(_twin(_prune, "_parallel"))
prune_serial = numba.njit(cache=True)(_twin(_prune, "_serial"))


@numba.njit(cache=True)
def rank_by_votes(pos, votes, max_votes):
    """Stable order of the results by votes, descending: a counting sort, O(n + max_votes).
    ``pos`` arrives ascending, so ties stay in block order."""
    counts = np.zeros(max_votes + 2, dtype=np.int64)
    for i in range(votes.shape[0]):
        counts[max_votes - votes[i] + 1] += 1
    for k in range(max_votes + 1):
        counts[k + 1] += counts[k]
    order = np.empty(votes.shape[0], dtype=np.int64)
    for i in range(votes.shape[0]):
        k = max_votes - votes[i]
        order[counts[k]] = i
        counts[k] += 1
    return order


@numba.njit(cache=True, parallel=True)
def center_distances(cols, pos, center):
    """Squared L2 distance (int64) from each row ``pos[i]`` to the integer code ``center``."""
    n = pos.shape[0]
    out = np.empty(n, dtype=np.int64)
    for i in numba.prange(n):
        p = pos[i]
        acc = 0
        for d in range(cols.shape[0]):
            diff = np.int64(cols[d, p]) - center[d]
            acc += diff * diff
        out[i] = acc
    return out


@numba.njit(cache=True)
def rank_by_votes_then_distance(pos, votes, dist, max_votes):
    """Stable order by votes (descending), then ``dist`` (ascending, below 2**22), then the
    arrival order (block position): two 11-bit LSD radix passes on ``dist``, then the counting
    sort on votes. O(n), where a comparison sort of 3M keys takes 10x longer."""
    n = votes.shape[0]
    order = np.arange(n)
    tmp = np.empty(n, dtype=np.int64)
    for shift in (0, 11):
        counts = np.zeros(2049, dtype=np.int64)
        for i in range(n):
            counts[((dist[i] >> shift) & 2047) + 1] += 1
        for k in range(2048):
            counts[k + 1] += counts[k]
        for j in range(n):
            i = order[j]
            k = (dist[i] >> shift) & 2047
            tmp[counts[k]] = i
            counts[k] += 1
        order, tmp = tmp, order
    counts = np.zeros(max_votes + 2, dtype=np.int64)
    for i in range(n):
        counts[max_votes - votes[i] + 1] += 1
    for k in range(max_votes + 1):
        counts[k + 1] += counts[k]
    for j in range(n):
        i = order[j]
        k = max_votes - votes[i]
        tmp[counts[k]] = i
        counts[k] += 1
    return tmp


@numba.njit(cache=True)
def group_pairs(n_blocks, pair_block, pair_box, pair_full, box_member, min_votes):
    """Group candidate pairs by block (boxes in ascending order within a block).

    Blocks whose candidate boxes come from fewer than ``min_votes`` distinct members cannot
    hold a row with that many votes and are dropped.
    Returns ``(cand_blocks, ptr, boxes, full)`` in CSR form: candidate block i owns
    ``boxes[ptr[i]:ptr[i+1]]``.
    """
    counts = np.zeros(n_blocks + 1, dtype=np.int64)
    for i in range(pair_block.shape[0]):
        counts[pair_block[i] + 1] += 1
    for i in range(n_blocks):
        counts[i + 1] += counts[i]
    fill = counts[:-1].copy()
    boxes = np.empty(pair_block.shape[0], dtype=np.int64)
    full = np.empty(pair_block.shape[0], dtype=np.bool_)
    # prune() emits pairs box by box, so boxes land in ascending order within each block.
    for i in range(pair_block.shape[0]):
        at = fill[pair_block[i]]
        boxes[at] = pair_box[i]
        full[at] = pair_full[i]
        fill[pair_block[i]] += 1
    cand = np.empty(n_blocks, dtype=np.int64)
    n_cand = 0
    for blk in range(n_blocks):
        s, e = counts[blk], counts[blk + 1]
        if e == s:
            continue
        distinct, last = 0, -1
        for j in range(s, e):
            m = box_member[boxes[j]]
            if m != last:
                distinct += 1
                last = m
        if distinct >= min_votes:
            cand[n_cand] = blk
            n_cand += 1
    cand = cand[:n_cand]
    ptr = np.zeros(n_cand + 1, dtype=np.int64)
    out_boxes = np.empty(boxes.shape[0], dtype=np.int64)
    out_full = np.empty(boxes.shape[0], dtype=np.bool_)
    at = 0
    for i in range(n_cand):
        blk = cand[i]
        for j in range(counts[blk], counts[blk + 1]):
            out_boxes[at] = boxes[j]
            out_full[at] = full[j]
            at += 1
        ptr[i + 1] = at
    return cand, ptr, out_boxes[:at], out_full[:at]


@numba.njit(cache=True)
def _test_box(cols, s, n, b, box_lo, box_hi, box_dims, box_ndims, blk_lo, blk_hi, inbox, dims_buf, frac_buf):
    """inbox[r] = 1 if row s+r lies inside box b, else 0; returns the dims tested.

    Dims the block's zone map already satisfies are skipped, and the others are tested most
    selective first (smallest overlap with the block's range), so a box that misses every row
    is dropped after one pass. ``uint8(v - lo) <= uint8(hi - lo)`` tests lo <= v <= hi in one
    unsigned compare (values below lo wrap around); LLVM turns these loops into SIMD.
    """
    m = 0
    for q in range(box_ndims[b]):
        d = box_dims[b, q]
        lo, hi = box_lo[b, d], box_hi[b, d]
        if blk_lo[d] >= lo and blk_hi[d] <= hi:
            continue
        overlap = min(blk_hi[d], hi) - max(blk_lo[d], lo) + 1.0
        frac = overlap / (blk_hi[d] - blk_lo[d] + 1.0)
        at = m
        while at > 0 and frac_buf[at - 1] > frac:  # insertion sort: at most 32 dims
            frac_buf[at] = frac_buf[at - 1]
            dims_buf[at] = dims_buf[at - 1]
            at -= 1
        frac_buf[at] = frac
        dims_buf[at] = d
        m += 1
    if m == 0:
        inbox[:n] = 1
        return 0
    for q in range(m):
        d = dims_buf[q]
        lo = box_lo[b, d]
        w = numba.uint8(box_hi[b, d] - lo)
        c = cols[d, s : s + n]
        if q == 0:
            for r in range(n):
                inbox[r] = numba.uint8(c[r] - lo) <= w
        else:
            for r in range(n):
                inbox[r] &= numba.uint8(c[r] - lo) <= w
        alive = 0
        for r in range(n):
            alive |= inbox[r]
        if alive == 0:
            return q + 1
    return m


def _scan_blocks(
    cols,
    start,
    blk_lo,
    blk_hi,
    cand,
    ptr,
    boxes,
    full,
    box_lo,
    box_hi,
    box_dims,
    box_ndims,
    box_member,
    min_votes,
):
    """Test the candidate blocks' rows against their boxes; count one vote per member.

    Returns ``(pos, votes, rows_tested, row_dim_tests)``: row positions (int64, ascending within
    each block, blocks in ``cand`` order) with at least ``min_votes`` votes, their votes
    (int32), how many rows were tested against a box (rows of a block that every candidate
    member's zone-map test settles are not), and how many row-dim compares were made. ``blk_lo`` and
    ``blk_hi`` are the blocks' zone maps, uint8 (n_blocks, n_dims).
    """
    n_cand = cand.shape[0]
    offsets = np.zeros(n_cand + 1, dtype=np.int64)
    for i in range(n_cand):
        offsets[i + 1] = offsets[i] + start[cand[i] + 1] - start[cand[i]]
    out_pos = np.empty(offsets[n_cand], dtype=np.int64)
    out_votes = np.empty(offsets[n_cand], dtype=np.int32)
    found = np.zeros(n_cand, dtype=np.int64)
    tested = np.zeros(n_cand, dtype=np.int64)
    rows_tested = np.zeros(n_cand, dtype=np.int64)
    for i in numba.prange(n_cand):
        s, e = start[cand[i]], start[cand[i] + 1]
        n = e - s
        votes = np.zeros(n, dtype=np.int32)
        hit = np.empty(n, dtype=np.uint8)
        inbox = np.empty(n, dtype=np.uint8)
        dims_buf = np.empty(cols.shape[0], dtype=np.int64)
        frac_buf = np.empty(cols.shape[0], dtype=np.float64)
        blk = cand[i]
        # Members still to come in this block: once the best row cannot reach min_votes even
        # with all of them, no row of the block can, and the block is dropped.
        remaining = 0
        for jj in range(ptr[i], ptr[i + 1]):
            if jj == ptr[i] or box_member[boxes[jj]] != box_member[boxes[jj - 1]]:
                remaining += 1
        j = ptr[i]
        while j < ptr[i + 1]:
            # boxes[j:j_end] belong to one member: OR their masks, then add one vote.
            m = box_member[boxes[j]]
            j_end = j
            member_full = False
            while j_end < ptr[i + 1] and box_member[boxes[j_end]] == m:
                member_full = member_full or full[j_end] or box_ndims[boxes[j_end]] == 0
                j_end += 1
            remaining -= 1
            if member_full:
                for r in range(n):
                    votes[r] += 1
                j = j_end
                continue
            hit[:] = 0
            rows_tested[i] = n
            for jj in range(j, j_end):
                tested[i] += n * _test_box(
                    cols,
                    s,
                    n,
                    boxes[jj],
                    box_lo,
                    box_hi,
                    box_dims,
                    box_ndims,
                    blk_lo[blk],
                    blk_hi[blk],
                    inbox,
                    dims_buf,
                    frac_buf,
                )
                for r in range(n):
                    hit[r] |= inbox[r]
            best = 0
            for r in range(n):
                votes[r] += hit[r]
                best = max(best, votes[r])
            j = j_end
            if best + remaining < min_votes:
                votes[:] = 0
                break
        k = offsets[i]
        for r in range(n):
            if votes[r] >= min_votes:
                out_pos[k] = s + r
                out_votes[k] = votes[r]
                k += 1
        found[i] = k - offsets[i]
    # Compact the per-block runs into one contiguous result.
    total = 0
    for i in range(n_cand):
        total += found[i]
    pos = np.empty(total, dtype=np.int64)
    vts = np.empty(total, dtype=np.int32)
    at = 0
    for i in range(n_cand):
        for r in range(found[i]):
            pos[at] = out_pos[offsets[i] + r]
            vts[at] = out_votes[offsets[i] + r]
            at += 1
    return pos, vts, rows_tested.sum(), tested.sum()


scan_blocks = numba.njit(parallel=True, cache=True)(_twin(_scan_blocks, "_parallel"))
scan_blocks_serial = numba.njit(cache=True)(_twin(_scan_blocks, "_serial"))


@numba.njit(parallel=True, cache=True)
def row_votes(cols, box_lo, box_hi, box_dims, box_ndims, box_member):
    """Member votes of every row, testing each row against every box: int32 (n_rows,).

    No index: for small row sets (a refine round's held-out sample) and as the baseline of
    :func:`full_scan`.
    """
    n_rows = cols.shape[1]
    votes = np.zeros(n_rows, dtype=np.int32)
    n_boxes = box_lo.shape[0]
    for r in numba.prange(n_rows):
        last_member = -1
        v = 0
        for b in range(n_boxes):
            m = box_member[b]
            if m == last_member:
                continue  # this member already voted for the row
            inside = True
            for q in range(box_ndims[b]):
                d = box_dims[b, q]
                x = cols[d, r]
                if x < box_lo[b, d] or x > box_hi[b, d]:
                    inside = False
                    break
            if inside:
                v += 1
                last_member = m
        votes[r] = v
    return votes


def full_scan(cols, box_lo, box_hi, box_dims, box_ndims, box_member, n_members, min_votes):
    """Baseline without an index: test every row against every box, row by row.

    Returns ``(pos, votes)`` like :func:`scan_blocks`; used by benchmarks and as a reference.
    """
    votes = row_votes(cols, box_lo, box_hi, box_dims, box_ndims, box_member)
    pos = np.flatnonzero(votes >= max(1, min_votes))
    return pos.astype(np.int64), votes[pos]
