"""Synthetic catalogs: 8-bit codes with a ground-truth ``label`` per image.

Two kinds of class:

- clusters (:func:`clustered_codes`, the ``synth`` command): each has a centre, its own spread
  per dim, and an elongation along a random direction, so classes are neither spherical nor
  axis-aligned. Cluster sizes vary (log-normal weights).
- curved bands (:func:`curved_bands`, the quality benchmarks): each class a random bent 1-d or 2-d
  band in 32 dims with anisotropic noise, the case nearest-neighbour search from a centre fits
  worst.

The same arguments always give the same codes and labels.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..boxes import N_DIMS

CHUNK_ROWS = 500_000


@dataclass(frozen=True)
class ClusterModel:
    """centres float32 (k, d); spread float32 (k, d); direction float32 (k, d) unit rows;
    length float32 (k,) elongation scale; weight float64 (k,) cluster probabilities."""

    centres: np.ndarray
    spread: np.ndarray
    direction: np.ndarray
    length: np.ndarray
    weight: np.ndarray


def default_clusters(n_rows: int) -> int:
    """About 10,000 rows per cluster, between 4 and 1000 clusters."""
    return int(min(1000, max(4, round(n_rows / 10_000))))


def cluster_model(
    rng: np.random.Generator, n_clusters: int, n_dims: int = N_DIMS, elongation: float = 40.0
) -> ClusterModel:
    centres = np.clip(rng.normal(128, 40, (n_clusters, n_dims)), 20, 235).astype(np.float32)
    spread = rng.uniform(3, 20, (n_clusters, n_dims)).astype(np.float32)
    direction = rng.standard_normal((n_clusters, n_dims)).astype(np.float32)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    length = rng.uniform(0, elongation, n_clusters).astype(np.float32)
    weight = rng.lognormal(0, 0.5, n_clusters)
    return ClusterModel(centres, spread, direction, length, weight / weight.sum())


def clustered_codes(
    n_rows: int,
    seed: int,
    n_clusters: int | None = None,
    *,
    elongation: float = 40.0,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(codes uint8 (m, 32), labels int64 (m,))`` chunks totalling ``n_rows`` rows."""
    rng = np.random.default_rng(seed)
    k = n_clusters or default_clusters(n_rows)
    model = cluster_model(rng, k, elongation=elongation)
    for start in range(0, n_rows, chunk_rows):
        m = min(chunk_rows, n_rows - start)
        labels = rng.choice(k, size=m, p=model.weight)
        z = rng.standard_normal((m, N_DIMS), dtype=np.float32)
        t = rng.standard_normal(m, dtype=np.float32)
        x = model.centres[labels] + model.spread[labels] * z
        x += (t * model.length[labels])[:, None] * model.direction[labels]
        yield np.clip(np.rint(x), 0, 255).astype(np.uint8), labels.astype(np.int64)


def _orthonormal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def curved_bands(
    rows: int, n_classes: int, seed: int, n_dims: int = N_DIMS
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Curved bands: ``(codes uint8 (rows, d), labels int64 (rows,), params)``.

    A class is ``centre + L t u1 + B (t^2 - 1/3) u2 [+ W s u3] + noise`` with ``t, s`` uniform
    on [-1, 1], ``u1..u3`` orthonormal random directions (the band bends out of its own line),
    and Gaussian noise with a log-uniform scale per direction of a random rotation, so no class
    is spherical or aligned with the axes. Half the classes are 2-d bands (``W > 0``). Class
    sizes vary (log-normal weights). Codes come from the per-dim affine quantizer.
    """
    from ..codes.quantize import fit_affine

    rng = np.random.default_rng(seed)
    weight = rng.lognormal(0, 0.3, n_classes)
    sizes = rng.multinomial(rows, weight / weight.sum())
    xs, ys = [], []
    for c, n in enumerate(sizes):
        u = _orthonormal(rng, n_dims)
        centre = rng.normal(0, 0.3, n_dims)
        length, bend = rng.uniform(4.0, 8.0), rng.uniform(2.0, 5.0)
        width = rng.uniform(1.0, 3.0) if c % 2 else 0.0
        t = rng.uniform(-1, 1, n)[:, None]
        s = rng.uniform(-1, 1, n)[:, None]
        x = centre + length * t * u[0] + bend * (t**2 - 1 / 3) * u[1] + width * s * u[2]
        scale = np.exp(rng.uniform(np.log(0.05), np.log(0.4), n_dims))
        x += (rng.standard_normal((n, n_dims)) * scale) @ _orthonormal(rng, n_dims)
        xs.append(x.astype(np.float32))
        ys.append(np.full(n, c, np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)
    perm = rng.permutation(len(y))
    x, y = x[perm], y[perm]
    codes = fit_affine(x).encode(x)
    return codes, y, {"rows": rows, "classes": n_classes, "seed": seed, "class_sizes": sizes.tolist()}


def synth_catalog(
    path: str | os.PathLike,
    n_rows: int,
    seed: int = 0,
    n_clusters: int | None = None,
    *,
    elongation: float = 40.0,
    block_size: int | None = None,
    build_index: bool = True,
    mapped: bool = False,
    progress=None,
) -> dict:
    """Write a new catalog of ``n_rows`` clustered codes with a ``label`` column; returns stats.
    ``progress`` reports the index build (see :mod:`engine.progress`); ``mapped`` writes the
    memory-mapped copy of the codes beside it (:mod:`engine.index.mapped`)."""
    from ..catalog import Catalog
    from ..errors import CatalogError
    from ..limits import DEFAULT_BLOCK_SIZE

    if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 0:
        raise CatalogError(f"rows must be a non-negative integer, got {n_rows!r}")
    t0 = time.perf_counter()
    with Catalog.create(Path(path)) as cat:
        for codes, labels in clustered_codes(n_rows, seed, n_clusters, elongation=elongation):
            cat.add_codes(codes, metadata={"label": labels})
        k = n_clusters or default_clusters(n_rows)
        cat.store.set_settings(
            {"synth": {"rows": n_rows, "seed": seed, "clusters": k, "elongation": elongation}}
        )
        t1 = time.perf_counter()
        built = None
        if build_index:
            built = cat.build_index(block_size or DEFAULT_BLOCK_SIZE, mapped=mapped, progress=progress)
    return {
        "rows": n_rows,
        "clusters": k,
        "time_write_s": t1 - t0,
        "index": built,
        "bytes": os.path.getsize(path),
    }


def bands_catalog(path: str | os.PathLike, rows: int, n_classes: int, seed: int = 0) -> np.ndarray:
    """Write a new, indexed catalog of :func:`curved_bands` codes, ids ``0..rows-1`` and a
    ``label`` column ``band<c>``; returns the class of each id (int64 (rows,))."""
    from ..catalog import Catalog

    codes, labels, _ = curved_bands(rows, n_classes, seed)
    with Catalog.create(Path(path)) as cat:
        cat.add_codes(codes, metadata={"label": [f"band{c}" for c in labels]})
        cat.build_index()
    return labels
