"""The linear guide of a refine round: a logistic regression that labels unlabelled rows for the
box learner, calibrates its vote threshold and ranks the *Label next* suggestions.

Why a guide. The labelled positives of a session are the nearest neighbours of one query: a clump
in one corner of the class. Boxes grown around that clump are precise and small, and their
majority vote is smaller still, so a box model trained on the labels alone found 58-72% of a
class (whole-catalog recall on the demo catalog, ``scripts/eval_session.py``). A linear model on
the same training rows extrapolates along the class and found far more (F1 0.90 against the
ensemble's 0.69-0.80 after round 1), but applying it means scoring every code of the catalog.
The guide keeps the box model and its index: it labels a random sample of the catalog (the
round's fixed pool), those of its positives join the training set, and boxes grown over them cover
the class, not the clump. It also picks the number of member votes a row needs (the one on which the ensemble agrees
best with the guide on pool rows no model trained on), and it tells which unlabelled rows lie
near the boundary, so that labelling them teaches the next round most.

A halfspace is unbounded, and fitted on a few dozen positives against 500 random rows it is
loosely placed: for a class of 0.2% of the catalog its far side holds other classes. So the
guide's positives must also lie within a ball around the labelled positives
(:meth:`Guide.within`, radius ``engine.refine.GUIDE_RADIUS`` times the farthest labelled
positive's distance from their mean, and no less than the nearest negative's distance over the
square root of the number of positives, for rounds with one or two positives).

Everything here is a pure function of numpy arrays; codes enter as uint8 (n, 32).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# L2 strength of the logistic regression, as scikit-learn's C (measured on the session benchmark:
# 10 ranks the boundary better than 1 by round 3, 0.927 vs 0.918 mean F1, with the same round 1).
GUIDE_C = 10.0
NEWTON_STEPS = 30


@dataclass(frozen=True)
class Guide:
    """A fitted linear scorer over codes: ``score(codes) = codes / 255 @ coef + intercept``;
    positive scores are the guide's positives."""

    coef: np.ndarray  # float64 (32,)
    intercept: float
    center: np.ndarray | None = None  # float64 (32,): with radius, the region its positives lie in
    radius: float = np.inf

    def score(self, codes: np.ndarray) -> np.ndarray:
        """float64 (n,) margins of uint8 (n, 32) codes."""
        return (np.asarray(codes, dtype=np.float64) / 255.0) @ self.coef + self.intercept

    def positive(self, codes: np.ndarray) -> np.ndarray:
        """bool (n,): the guide's positives, rows of positive margin within ``radius`` (L2, in code
        units) of ``center``."""
        pos = self.score(codes) > 0
        if self.center is not None and np.isfinite(self.radius):
            d2 = ((np.asarray(codes, dtype=np.float64) - self.center) ** 2).sum(axis=1)
            pos &= d2 <= self.radius**2
        return pos

    def within(self, center: np.ndarray, radius: float) -> Guide:
        """The same scorer whose positives must also lie within ``radius`` of ``center``."""
        return Guide(self.coef, self.intercept, np.asarray(center, dtype=np.float64), float(radius))


def fit_guide(X: np.ndarray, y: np.ndarray, w: np.ndarray, C: float = GUIDE_C) -> Guide:
    """Weighted L2 logistic regression by Newton's method.

    Minimises ``sum_i w_i log(1 + exp(-s_i m_i)) + ||coef||^2 / (2 C)`` with ``s_i = +-1`` and
    ``m_i`` the margin; the intercept is not penalised (as scikit-learn's ``lbfgs`` solver).
    X uint8 (n, d), y 0/1 (n,), w float64 (n,) non-negative. With one class only the guide
    (of non-zero weight) returns a constant score of that class's sign.
    """
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


def choose_min_votes(votes: np.ndarray, agree: np.ndarray, n_members: int, default: int) -> int:
    """The vote threshold under which the ensemble's positives agree best (F1) with the guide's
    positives ``agree`` (bool) on held-out rows whose member ``votes`` are given; ``default``
    when the guide marks none of them positive. Ties go to the higher threshold (fewer rows)."""
    n_pos = int(agree.sum())
    if n_pos == 0 or n_members <= 1:
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


def suggest(codes: np.ndarray, guide: Guide, n: int, pool_factor: int = 4) -> np.ndarray:
    """Indices into ``codes`` (the unlabelled candidates) of up to ``n`` suggestions: of the
    ``pool_factor * n`` candidates nearest the guide's boundary (smallest |margin|), ``n`` spread
    out by :func:`diverse`, most uncertain first."""
    if n <= 0 or len(codes) == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(np.abs(guide.score(codes)), kind="stable")[: pool_factor * n]
    return order[np.sort(diverse(codes[order], n))]
