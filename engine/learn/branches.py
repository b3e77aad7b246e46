"""numba kernels that grow decision branch models: unions of boxes over uint8 codes.

One model is grown by separate-and-conquer. While positives remain uncovered, a random
uncovered positive seeds a box on each candidate feature subset. The subset whose box has the
lowest weighted Gini impurity of inside vs outside wins (ties go to the smaller subset), its
points leave the training set, and the next box grows. A box grows in one of two ways:

- top-down (:func:`_grow_box`, the default): the dims are cut one at a time, like the splits
  along one branch of a tree, each starting tight at the seed's value and widening over the
  rows inside the cuts made so far. The first cut faces every training row, so its boxes come
  out tighter: trained on the labels and the sample alone, its whole-catalog F1 on classes of
  10% of the catalog was 0.10-0.19 lower than the original's (``scripts/compare_original.py``);
  on a guided round's training rows (``--guided``) it is as good there, and on classes of 0.2%
  it is far better (``scripts/eval_session.py``, clusters catalog);
- bottom-up (:func:`_grow_box_bottom_up`), as the original decision branch code does: a seed
  box just around the seed, then one pass in which each dim widens over the rows inside the box
  on every *other* dim, and opens to the end of the code range where nothing lies beyond. With
  500 sampled negatives in a large catalog, nothing lies beyond on most sides, and the box takes
  in whatever other classes lie there.

Both absorb up to ``min_pts`` distinct values per side, keep the extent with the lowest impurity
and place each border halfway between the last value inside and the first value outside.

Randomness comes from a per-model xorshift64* stream, so members of an ensemble grow in
parallel threads and a fixed seed gives the same boxes on any thread count.
"""

from __future__ import annotations

import numba
import numpy as np

N_VALUES = 256
# How a box grows around its seed (see the module docstring and _grow_box_bottom_up).
TOP_DOWN = 0
BOTTOM_UP = 1


@numba.njit(cache=True, inline="always")
def _next(state):
    """xorshift64* step on ``state[0]``; returns 64 random bits."""
    x = state[0]
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    state[0] = x
    return x * np.uint64(2685821657736338717)


@numba.njit(cache=True, inline="always")
def _below(state, m):
    """A uniform integer in 0..m-1."""
    return np.int64((_next(state) >> np.uint64(11)) % np.uint64(m))


@numba.njit(cache=True)
def seed_state(seed):
    """A non-zero xorshift state from any 64-bit seed (splitmix64 finaliser)."""
    z = np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    state = np.empty(1, np.uint64)
    state[0] = z if z != 0 else np.uint64(1)
    return state


@numba.njit(cache=True, inline="always")
def _score(p_in, n_in, p_out, n_out):
    """Weighted Gini of the inside/outside split, up to a constant: lower is purer.

    ``sum_parts W * gini = W_total - sum_parts (P^2 + N^2) / W``; the total is fixed while a
    box grows, so the negated sum ranks splits exactly as the impurity does.
    """
    s = 0.0
    w_in = p_in + n_in
    if w_in > 0:
        s += (p_in * p_in + n_in * n_in) / w_in
    w_out = p_out + n_out
    if w_out > 0:
        s += (p_out * p_out + n_out * n_out) / w_out
    return -s


@numba.njit(cache=True, inline="always")
def _widen(hist_p, hist_n, has, start, step, min_pts, p_in, n_in, p_tot, n_tot, best):
    """Absorb the slab's values beyond ``start`` in direction ``step`` (-1 or 1), up to
    ``min_pts`` distinct ones, keeping the extent with the best score. Returns
    ``(score, last value inside, positive weight inside, negative weight inside)``."""
    best_v = start
    best_p = p_in
    best_n = n_in
    ap = p_in
    an = n_in
    tried = 0
    v = start + step
    while 0 <= v < N_VALUES and tried < min_pts:
        if has[v]:
            tried += 1
            ap += hist_p[v]
            an += hist_n[v]
            s = _score(ap, an, p_tot - ap, n_tot - an)
            if s < best:
                best = s
                best_v = v
                best_p = ap
                best_n = an
        v += step
    return best, best_v, best_p, best_n


@numba.njit(cache=True, inline="always")
def _border(has, inside, step):
    """The bound halfway between the last value ``inside`` and the first slab value beyond it in
    direction ``step``; the end of the code range when there is none."""
    out = inside + step
    while 0 <= out < N_VALUES and not has[out]:
        out += step
    if step < 0:
        return 0 if out < 0 else (out + inside + 1) // 2
    return N_VALUES - 1 if out >= N_VALUES else (inside + out) // 2


@numba.njit(cache=True)
def _open_box(pos_w, neg_w, active, lo, hi):
    """Set the box to the full code range on every dim; returns the active rows' total
    positive and negative weight."""
    for d in range(lo.shape[0]):
        lo[d] = 0
        hi[d] = 255
    p_tot = 0.0
    n_tot = 0.0
    for i in range(active.shape[0]):
        if active[i]:
            p_tot += pos_w[i]
            n_tot += neg_w[i]
    return p_tot, n_tot


@numba.njit(cache=True)
def _grow_box(X, pos_w, neg_w, active, seed, dims, k, min_pts, state, lo, hi, cnt, hist_p, hist_n, has):
    """Grow a box on ``dims[:k]`` around row ``seed``; fills ``lo``/``hi`` (full 0..255 on the
    other dims) and returns ``(score, positive weight inside, negative weight inside)``.

    The dims are cut in random order, like the splits along one branch of a decision tree:
    dim d starts tight at the seed's value and widens over the rows that are inside the cuts
    made so far (the "slab"), absorbing the nearest values on each side while the weighted
    Gini of inside vs outside improves. ``cnt``, ``hist_*`` and ``has`` are scratch;
    ``cnt[i]`` counts the dims on which row i is inside (uncut dims count as inside).
    """
    n = X.shape[0]
    p_tot, n_tot = _open_box(pos_w, neg_w, active, lo, hi)
    for i in range(n):
        cnt[i] = k
    order = np.empty(k, np.int64)
    for j in range(k):
        order[j] = dims[j]
    for j in range(k - 1, 0, -1):
        r = _below(state, j + 1)
        order[j], order[r] = order[r], order[j]
    p_in = 0.0
    n_in = 0.0
    for j in range(k):
        d = order[j]
        seed_v = np.int64(X[seed, d])
        # the slab: active rows inside every cut so far (dim d is still uncut)
        hist_p[:] = 0.0
        hist_n[:] = 0.0
        has[:] = False
        for i in range(n):
            if active[i] and cnt[i] == k:
                v = X[i, d]
                hist_p[v] += pos_w[i]
                hist_n[v] += neg_w[i]
                has[v] = True
        p_in = hist_p[seed_v]
        n_in = hist_n[seed_v]
        best = _score(p_in, n_in, p_tot - p_in, n_tot - n_in)
        best, low_v, p_in, n_in = _widen(
            hist_p, hist_n, has, seed_v, -1, min_pts, p_in, n_in, p_tot, n_tot, best
        )
        best, high_v, p_in, n_in = _widen(
            hist_p, hist_n, has, seed_v, 1, min_pts, p_in, n_in, p_tot, n_tot, best
        )
        new_lo = _border(has, low_v, -1)
        new_hi = _border(has, high_v, 1)
        # cut dim d
        for i in range(n):
            if active[i]:
                v = np.int64(X[i, d])
                if v < new_lo or v > new_hi:
                    cnt[i] -= 1
        lo[d] = new_lo
        hi[d] = new_hi
    # No slab value lies between the absorbed values and the halfway borders, so p_in and n_in
    # are the weights inside the finished box.
    return _score(p_in, n_in, p_tot - p_in, n_tot - n_in), p_in, n_in


@numba.njit(cache=True, inline="always")
def _nearest_positive(X, pos_w, active, seed, d, step):
    """The value of dim ``d`` nearest to the seed's, in direction ``step``, over the active
    positives other than the seed; the seed's own value when there is none."""
    sv = np.int64(X[seed, d])
    best = sv
    found = False
    for i in range(X.shape[0]):
        if active[i] and pos_w[i] > 0 and i != seed:
            v = np.int64(X[i, d])
            if (v - sv) * step > 0 and (not found or (v - best) * step < 0):
                best = v
                found = True
    return best


@numba.njit(cache=True)
def _grow_box_bottom_up(X, pos_w, neg_w, active, seed, order, k, min_pts, lo, hi, cnt, hist_p, hist_n, has):
    """Grow a box on the dims ``order[:k]`` (in that order) around row ``seed`` bottom-up, the
    way the original decision branch code does; fills ``lo``/``hi`` and returns
    ``(score, positive weight inside, negative weight inside)``.

    1. The seed box. Dims are visited in order; on each, the box stops just short of the
       nearest value of the rows that still equal the seed on every dim visited before. Once no
       row equals the seed, each further dim reaches to the nearest other positive on each side
       (or stays at the seed's value when there is none).
    2. One expansion pass, in the same order. Dim d widens over its slab, the rows inside the
       box on every *other* dim. On each side: with no slab row beyond the box, the side
       becomes unbounded; with only negatives beyond, the border moves halfway to the nearest
       of them; otherwise up to ``min_pts`` distinct values beyond are absorbed, keeping the
       extent with the lowest weighted Gini of inside vs outside, and the border goes halfway to
       the next value (unbounded when every value beyond was absorbed).

    Gini counts are the exact weights inside the box (the original counts only the rows it
    absorbed). ``cnt`` counts, per row, the dims of ``order[:k]`` on which the row is inside.
    """
    n = X.shape[0]
    p_tot, n_tot = _open_box(pos_w, neg_w, active, lo, hi)
    # 1. seed box; cnt[i] == 1 marks rows still equal to the seed on the dims so far
    for i in range(n):
        cnt[i] = 1 if (active[i] and i != seed) else 0
    any_equal = True
    for j in range(k):
        d = order[j]
        sv = np.int64(X[seed, d])
        above = N_VALUES
        below = -1
        if any_equal:
            n_equal = 0
            for i in range(n):
                if cnt[i] == 1:
                    v = np.int64(X[i, d])
                    if v > sv:
                        above = min(above, v)
                        cnt[i] = 0
                    elif v < sv:
                        below = max(below, v)
                        cnt[i] = 0
                    else:
                        n_equal += 1
            any_equal = n_equal > 0
        hi[d] = above - 1 if above < N_VALUES else _nearest_positive(X, pos_w, active, seed, d, 1)
        lo[d] = below + 1 if below >= 0 else _nearest_positive(X, pos_w, active, seed, d, -1)
    for i in range(n):
        c = 0
        for j in range(k):
            d = order[j]
            if lo[d] <= X[i, d] <= hi[d]:
                c += 1
        cnt[i] = c
    # 2. one expansion pass
    for j in range(k):
        d = order[j]
        hist_p[:] = 0.0
        hist_n[:] = 0.0
        has[:] = False
        p_in = 0.0
        n_in = 0.0
        for i in range(n):
            if not active[i]:
                continue
            v = np.int64(X[i, d])
            inside_d = lo[d] <= v <= hi[d]
            if cnt[i] - (1 if inside_d else 0) == k - 1:  # inside on every other dim
                if inside_d:
                    p_in += pos_w[i]
                    n_in += neg_w[i]
                else:
                    hist_p[v] += pos_w[i]
                    hist_n[v] += neg_w[i]
                    has[v] = True
        new_lo = lo[d]
        new_hi = hi[d]
        for side in range(2):
            step = -1 if side == 0 else 1
            start = lo[d] if step < 0 else hi[d]
            # does any positive of the slab lie beyond this side?
            beyond_pos = False
            v = start + step
            while 0 <= v < N_VALUES:
                if has[v] and hist_p[v] > 0:
                    beyond_pos = True
                    break
                v += step
            inner = start
            if beyond_pos:
                best = _score(p_in, n_in, p_tot - p_in, n_tot - n_in)
                best, inner, p_in, n_in = _widen(
                    hist_p, hist_n, has, start, step, min_pts, p_in, n_in, p_tot, n_tot, best
                )
            # nothing beyond: unbounded; only negatives beyond: halfway to the nearest one
            b = _border(has, inner, step)
            if step < 0:
                new_lo = b
            else:
                new_hi = b
        for i in range(n):
            if active[i]:
                v = np.int64(X[i, d])
                was = lo[d] <= v <= hi[d]
                now = new_lo <= v <= new_hi
                if now and not was:
                    cnt[i] += 1
        lo[d] = new_lo
        hi[d] = new_hi
    p_in = 0.0
    n_in = 0.0
    for i in range(n):
        if active[i] and cnt[i] == k:
            p_in += pos_w[i]
            n_in += neg_w[i]
    return _score(p_in, n_in, p_tot - p_in, n_tot - n_in), p_in, n_in


@numba.njit(cache=True)
def grow_model(X, pos_w, neg_w, subsets, sizes, n_try, max_boxes, max_failures, min_pts, seed, growth):
    """Grow one decision branch model.

    X : uint8 (n, n_dims); pos_w, neg_w : float64 (n,) weight of each row as positive / negative
    (a row with both zero is not in the training set); subsets : int64 (S, max_k) padded dims,
    sorted by size; sizes : int64 (S,); n_try : subsets tried per box (a random subset of the
    family when below S); growth : :data:`TOP_DOWN` or :data:`BOTTOM_UP`. Returns ``(lo, hi)``
    uint8 (n_boxes, n_dims).
    """
    n, n_dims = X.shape
    state = seed_state(seed)
    active = np.empty(n, np.bool_)
    for i in range(n):
        active[i] = pos_w[i] > 0 or neg_w[i] > 0
    seedable = np.empty(n, np.bool_)
    for i in range(n):
        seedable[i] = active[i] and pos_w[i] > 0
    out_lo = np.zeros((max_boxes, n_dims), np.uint8)
    out_hi = np.zeros((max_boxes, n_dims), np.uint8)
    n_boxes = 0
    failures = 0
    n_sub = subsets.shape[0]
    cnt = np.zeros(n, np.int64)
    hist_p = np.zeros(N_VALUES, np.float64)
    hist_n = np.zeros(N_VALUES, np.float64)
    has = np.zeros(N_VALUES, np.bool_)
    lo = np.zeros(n_dims, np.int64)
    hi = np.zeros(n_dims, np.int64)
    best_lo = np.zeros(n_dims, np.int64)
    best_hi = np.zeros(n_dims, np.int64)
    pick = np.arange(n_sub)
    chosen = np.zeros(n_sub, np.bool_)
    order = np.zeros(subsets.shape[1], np.int64)
    while n_boxes < max_boxes and failures < max_failures:
        n_seedable = 0
        for i in range(n):
            if seedable[i]:
                n_seedable += 1
        if n_seedable == 0:
            break
        r = _below(state, n_seedable)
        seed_row = -1
        for i in range(n):
            if seedable[i]:
                if r == 0:
                    seed_row = i
                    break
                r -= 1
        # a random n_try of the subsets, tried in family order (smaller subsets first)
        chosen[:] = False
        if n_try >= n_sub:
            chosen[:] = True
        else:
            for j in range(n_sub):
                pick[j] = j
            for j in range(n_try):
                r = j + _below(state, n_sub - j)
                pick[j], pick[r] = pick[r], pick[j]
                chosen[pick[j]] = True
        best = np.inf
        best_p = 0.0
        best_n = 0.0
        for s in range(n_sub):
            if not chosen[s]:
                continue
            k = sizes[s]
            if growth == BOTTOM_UP:
                for j in range(k):
                    order[j] = subsets[s, j]
                for j in range(k - 1, 0, -1):
                    r = _below(state, j + 1)
                    order[j], order[r] = order[r], order[j]
                score, p_in, n_in = _grow_box_bottom_up(
                    X, pos_w, neg_w, active, seed_row, order, k, min_pts, lo, hi, cnt, hist_p, hist_n, has
                )
            else:
                score, p_in, n_in = _grow_box(
                    X,
                    pos_w,
                    neg_w,
                    active,
                    seed_row,
                    subsets[s],
                    k,
                    min_pts,
                    state,
                    lo,
                    hi,
                    cnt,
                    hist_p,
                    hist_n,
                    has,
                )
            if score < best:
                best = score
                best_p = p_in
                best_n = n_in
                best_lo[:] = lo
                best_hi[:] = hi
        if best_p > best_n:
            for d in range(n_dims):
                out_lo[n_boxes, d] = best_lo[d]
                out_hi[n_boxes, d] = best_hi[d]
            n_boxes += 1
            failures = 0
            for i in range(n):
                if not active[i]:
                    continue
                inside = True
                for d in range(n_dims):
                    if X[i, d] < best_lo[d] or X[i, d] > best_hi[d]:
                        inside = False
                        break
                if inside:
                    active[i] = False
                    seedable[i] = False
        else:
            failures += 1
            seedable[seed_row] = False
    return out_lo[:n_boxes].copy(), out_hi[:n_boxes].copy()


@numba.njit(cache=True)
def _bootstrap(pos_w, neg_w, state, counts, negatives_only):
    """Bootstrap counts over the training rows (rows with weight), with at least one positive;
    with ``negatives_only``, every positive is kept once and only the negatives are drawn."""
    n = pos_w.shape[0]
    rows = np.empty(n, np.int64)
    m = 0
    counts[:] = 0
    for i in range(n):
        if negatives_only and pos_w[i] > 0:
            counts[i] = 1
        elif pos_w[i] > 0 or neg_w[i] > 0:
            rows[m] = i
            m += 1
    if negatives_only:
        for _ in range(m):
            counts[rows[_below(state, m)]] += 1
        return
    n_pos = 0
    for _ in range(m):
        i = rows[_below(state, m)]
        counts[i] += 1
        if pos_w[i] > 0:
            n_pos += 1
    if n_pos == 0:
        positives = np.empty(m, np.int64)
        q = 0
        for j in range(m):
            if pos_w[rows[j]] > 0:
                positives[q] = rows[j]
                q += 1
        if q > 0:
            counts[positives[_below(state, q)]] += 1


@numba.njit(cache=True, parallel=True)
def grow_ensemble(
    X, pos_w, neg_w, subsets, sizes, n_try, max_boxes, max_failures, min_pts, seeds, bootstrap, growth
):
    """Grow ``len(seeds)`` models in parallel, member ``m`` on its own random stream and, by
    ``bootstrap``, on all rows (0), a bootstrap sample of all rows (1) or of the negatives only
    (2). Returns ``(lo, hi, member)`` of all boxes."""
    n_members = seeds.shape[0]
    n, n_dims = X.shape
    los = np.zeros((n_members, max_boxes, n_dims), np.uint8)
    his = np.zeros((n_members, max_boxes, n_dims), np.uint8)
    n_boxes = np.zeros(n_members, np.int64)
    for m in numba.prange(n_members):
        state = seed_state(seeds[m])
        pw = pos_w.copy()
        nw = neg_w.copy()
        if bootstrap > 0:
            counts = np.zeros(n, np.int64)
            _bootstrap(pos_w, neg_w, state, counts, bootstrap == 2)
            for i in range(n):
                pw[i] *= counts[i]
                nw[i] *= counts[i]
        lo, hi = grow_model(
            X, pw, nw, subsets, sizes, n_try, max_boxes, max_failures, min_pts, _next(state), growth
        )
        b = lo.shape[0]
        los[m, :b] = lo
        his[m, :b] = hi
        n_boxes[m] = b
    total = 0
    for m in range(n_members):
        total += n_boxes[m]
    out_lo = np.empty((total, n_dims), np.uint8)
    out_hi = np.empty((total, n_dims), np.uint8)
    member = np.empty(total, np.int64)
    q = 0
    for m in range(n_members):
        for b in range(n_boxes[m]):
            out_lo[q] = los[m, b]
            out_hi[q] = his[m, b]
            member[q] = m
            q += 1
    return out_lo, out_hi, member
