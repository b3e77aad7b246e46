"""The linear guide of a refine round: a logistic regression, confined to a region around the
labelled positives, that labels unlabelled rows for the box learner, calibrates its vote
threshold and ranks the *Label next* suggestions.

Why a guide. The labelled positives of a session are the nearest neighbours of one query: a clump
in one corner of the class. Boxes grown around that clump are precise and small, and their
majority vote is smaller still, so a box model trained on the labels alone found 60% of a
class of the demo catalog in round 1 (``scripts/eval_session.py --models 'ensemble[guide=False]'``). A
linear model on the same training rows extrapolates along the class, but applying it means
scoring every code of the catalog. The guide keeps the box model and its index: it labels
unlabelled rows near the class (pseudo-positives), those join the training set, and boxes grown
over them cover the class, not the clump.

Why a region. A halfspace is unbounded, and fitted on a few dozen positives against a few hundred
random rows it is loosely placed: in a catalog of 10M rows its far side holds other classes. So
the guide's positives must also lie in a union of balls (:class:`Region`), one per group of
labelled positives (:func:`group_positives`): positives of several clusters ("shoes" labelled
on sandals, sneakers and boots) get a ball each rather than one ball as wide as the catalog.

Everything here is a pure function of numpy arrays; codes enter as uint8 (n, 32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# L2 strength of the logistic regression, as scikit-learn's C: 10 ranks the boundary better than
# 1 by round 3 (demo, scripts/eval_session.py --skip-synthetic --skip-clusters --skip-concepts
# --models ensemble --constant GUIDE_C=1: session F1 0.891 / 0.913 / 0.918 against 0.884 /
# 0.919 / 0.927).
GUIDE_C = 10.0
# Newton's method on 33 unknowns converges in a handful of steps; scikit-learn's solvers reach
# the same margins (to 1e-4) 2.7-9.4x slower on a round's training set, and liblinear, 1.8x,
# penalises the intercept and lands elsewhere (scripts/bench_guide.py).
NEWTON_STEPS = 30


@dataclass(frozen=True)
class Region:
    """A union of balls: ``centres`` float64 (g, 32), ``radii`` float64 (g,), in code units."""

    centres: np.ndarray
    radii: np.ndarray

    def _sq_dists(self, codes: np.ndarray) -> np.ndarray:
        """float32 (n, g) squared distances of the rows to the centres, from one matrix product
        (squared distances of codes stay below 2**21, so float32 holds them to 1/4)."""
        X = np.asarray(codes, dtype=np.float32)
        C = self.centres.astype(np.float32)
        return (X * X).sum(axis=1)[:, None] - 2.0 * (X @ C.T) + (C * C).sum(axis=1)[None, :]

    def contains(self, codes: np.ndarray, scale: float = 1.0) -> np.ndarray:
        """bool (n,): rows within ``scale`` times some ball's radius of its centre."""
        if len(self.radii) == 0 or len(codes) == 0:
            return np.zeros(len(codes), bool)
        return (self._sq_dists(codes) <= ((scale * self.radii) ** 2 + 1.0).astype(np.float32)[None, :]).any(
            axis=1
        )

    def nearest(self, codes: np.ndarray) -> np.ndarray:
        """int64 (n,): for each row, the ball it lies deepest in (smallest ``dist^2 - r^2``)."""
        gap = self._sq_dists(codes) - (self.radii**2).astype(np.float32)[None, :]
        return np.argmin(gap, axis=1).astype(np.int64)


@dataclass(frozen=True)
class Guide:
    """A fitted linear scorer over codes: ``score(codes) = codes / 255 @ coef + intercept``;
    positive scores within ``region`` (everywhere when None) are the guide's positives."""

    coef: np.ndarray  # float64 (32,)
    intercept: float
    region: Region | None = None

    def score(self, codes: np.ndarray) -> np.ndarray:
        """float64 (n,) margins of uint8 (n, 32) codes."""
        return (np.asarray(codes, dtype=np.float64) / 255.0) @ self.coef + self.intercept

    def positive(self, codes: np.ndarray) -> np.ndarray:
        """bool (n,): the guide's positives, rows of positive margin inside the region."""
        pos = self.score(codes) > 0
        if self.region is not None and pos.any():
            pos[pos] = self.region.contains(np.asarray(codes)[pos])
        return pos

    def within(self, region: Region) -> Guide:
        """The same scorer whose positives must also lie in ``region``."""
        return Guide(self.coef, self.intercept, region)


def fit_guide(X: np.ndarray, y: np.ndarray, w: np.ndarray, C: float | None = None) -> Guide:
    """Weighted L2 logistic regression by Newton's method.

    Minimises ``sum_i w_i log(1 + exp(-s_i m_i)) + ||coef||^2 / (2 C)`` with ``s_i = +-1`` and
    ``m_i`` the margin; the intercept is not penalised (as scikit-learn's ``lbfgs`` solver).
    X uint8 (n, d), y 0/1 (n,), w float64 (n,) non-negative; ``C`` defaults to :data:`GUIDE_C`.
    With one class only the guide (of non-zero weight) returns a constant score of that class's
    sign.
    """
    C = GUIDE_C if C is None else C
    y = np.asarray(y) > 0
    w = np.asarray(w, dtype=np.float64)
    d = X.shape[1]
    has_pos, has_neg = bool((y & (w > 0)).any()), bool((~y & (w > 0)).any())
    if not (has_pos and has_neg):
        return Guide(np.zeros(d), 1.0 if has_pos else -1.0)
    Z = np.hstack([np.asarray(X, dtype=np.float64) / 255.0, np.ones((len(X), 1))])
    ridge = np.full(d + 1, 1.0 / C)
    ridge[-1] = 1e-9  # keeps the Hessian invertible without shrinking the intercept
    beta = np.zeros(d + 1)
    t = y.astype(np.float64)
    for _ in range(NEWTON_STEPS):
        m = Z @ beta
        p = 0.5 * (1.0 + np.tanh(0.5 * m))  # the logistic function, without overflow
        grad = Z.T @ (w * (p - t)) + ridge * beta
        hess = (Z * (w * p * (1.0 - p))[:, None]).T @ Z + np.diag(ridge)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return Guide(beta[:d].copy(), float(beta[d]))


def group_positives(codes: np.ndarray, link: np.ndarray, stones: np.ndarray | None = None) -> np.ndarray:
    """int64 (p,) group of each positive, numbered 0.. in order of first appearance: single
    linkage, two points joined when their distance is at most the smaller of their ``link``
    distances (float64 (p,), code units), so that one positive with a wide link cannot bridge
    two clusters on its own.

    ``stones``: uint8 (m, 32) unlabelled rows the guide scores positive, each with the median
    of the positives' links. Chains through them join positives of one continuous class that
    the labels alone leave apart; rows of a class too rare to be among them join nothing.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    p = len(codes)
    link = np.asarray(link, dtype=np.float64)
    if stones is not None and len(stones) and p:
        codes = np.concatenate([codes, stones])
        link = np.concatenate([link, np.full(len(stones), np.median(link))])
    # float32 is exact here: every product and partial sum of uint8 codes stays below 2**24
    X = codes.astype(np.float32)
    sq = (X * X).sum(axis=1)
    d2 = (sq[:, None] - 2.0 * (X @ X.T) + sq[None, :]).astype(np.float64)
    i, j = np.nonzero(np.triu(d2 <= np.minimum(link[:, None], link[None, :]) ** 2, 1))
    n = len(codes)
    _, comp = connected_components(
        coo_matrix((np.ones(len(i), np.int8), (i, j)), shape=(n, n)), directed=False
    )
    _, group = np.unique(comp[:p], return_inverse=True)
    # number groups by first appearance, as the positives come
    first = np.full(group.max() + 1 if p else 0, p, np.int64)
    np.minimum.at(first, group, np.arange(p))
    rank = np.argsort(np.argsort(first, kind="stable"), kind="stable")
    return rank[group].astype(np.int64)


def choose_min_votes(
    votes: np.ndarray, agree: np.ndarray, n_members: int, default: int, min_positives: int = 1
) -> int:
    """The vote threshold under which the ensemble's positives agree best (F1) with the guide's
    positives ``agree`` (bool) on held-out rows whose member ``votes`` are given; ``default``
    when the guide marks fewer than ``min_positives`` (at least one) of them positive. Ties go to
    the higher threshold (fewer rows)."""
    n_pos = int(agree.sum())
    if n_pos < max(1, min_positives) or n_members <= 1:
        return int(default)
    votes = np.asarray(votes, dtype=np.int64)
    counts = np.bincount(votes, minlength=n_members + 1)[: n_members + 1]
    hits = np.bincount(votes[agree], minlength=n_members + 1)[: n_members + 1]
    # rows selected and guide positives among them, for each threshold t = 1..n_members
    selected = np.cumsum(counts[::-1])[::-1][1:]
    agreeing = np.cumsum(hits[::-1])[::-1][1:]
    f1 = 2 * agreeing / (selected + n_pos)
    best = np.flatnonzero(f1 >= f1.max() - 1e-12)
    return int(best[-1] + 1)


def diverse(codes: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` of the rows, chosen farthest-point first from row 0 (the most useful, by
    the caller's order): no two suggestions are near-duplicates while any far row is left."""
    m = len(codes)
    if m <= n:
        return np.arange(m)
    Z = codes.astype(np.int64)
    chosen = [0]
    dist = ((Z - Z[0]) ** 2).sum(axis=1)
    dist[0] = -1
    while len(chosen) < n:
        j = int(np.argmax(dist))
        chosen.append(j)
        dist = np.minimum(dist, ((Z - Z[j]) ** 2).sum(axis=1))
        dist[chosen] = -1
    return np.asarray(chosen, dtype=np.int64)


def suggest(
    codes: np.ndarray, guide: Guide, n: int, pool_factor: int = 4, prefer: np.ndarray | None = None
) -> np.ndarray:
    """Indices into ``codes`` (the unlabelled candidates) of up to ``n`` suggestions: of the
    ``pool_factor * n`` candidates nearest the guide's boundary (smallest |margin|), ``n`` spread
    out by :func:`diverse`, most uncertain first. ``prefer`` (bool (len(codes),)) marks the
    candidates ranked before all others, each part by its margin."""
    if n <= 0 or len(codes) == 0:
        return np.zeros(0, np.int64)
    margin = np.abs(guide.score(codes))
    later = np.zeros(len(codes), bool) if prefer is None else ~np.asarray(prefer, bool)
    order = np.lexsort((margin, later))[: pool_factor * n]
    return order[np.sort(diverse(codes[order], n))]
