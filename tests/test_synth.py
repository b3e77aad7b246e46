"""Synthetic catalogs: deterministic clustered codes with ground-truth labels."""

import numpy as np
import pytest

import engine
from engine.datasets.synth import clustered_codes, synth_catalog


def test_same_seed_same_codes_other_seed_other_codes():
    a = np.vstack([c for c, _ in clustered_codes(5000, seed=1, chunk_rows=1234)])
    b = np.vstack([c for c, _ in clustered_codes(5000, seed=1, chunk_rows=1234)])
    c = np.vstack([c for c, _ in clustered_codes(5000, seed=2, chunk_rows=1234)])
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_labels_are_clusters():
    chunks = list(clustered_codes(20_000, seed=0, n_clusters=5))
    X = np.vstack([c for c, _ in chunks]).astype(float)
    y = np.concatenate([lab for _, lab in chunks])
    assert set(np.unique(y)) == set(range(5))
    means = np.array([X[y == k].mean(axis=0) for k in range(5)])
    # Each point is nearer its own cluster's mean than the average of the others'.
    d = ((X[:, None, :] - means[None]) ** 2).sum(axis=2)
    assert (d.argmin(axis=1) == y).mean() > 0.95


def test_synth_catalog_has_labels_and_an_index(tmp_path):
    path = tmp_path / "s.duckdb"
    stats = synth_catalog(path, 3000, seed=4, n_clusters=6, block_size=128)
    assert stats["rows"] == 3000
    with engine.Catalog.open(path, read_only=True) as cat:
        assert len(cat) == 3000
        status = cat.index_status()
        assert not status["stale"] and status["index"]["block_size"] == 128
        labels = cat.sql("SELECT label, count(*) n FROM images GROUP BY label ORDER BY label").to_pydict()
        assert labels["label"] == list(range(6)) and sum(labels["n"]) == 3000


def test_negative_rows_rejected(tmp_path):
    with pytest.raises(engine.CatalogError, match="non-negative"):
        synth_catalog(tmp_path / "s.duckdb", -5)
