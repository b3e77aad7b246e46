"""Compaction drops the space freed by index rebuilds and keeps every row and the order."""

import numpy as np

import engine


def test_compact_shrinks_and_preserves(tmp_path):
    path = tmp_path / "c.duckdb"
    rng = np.random.default_rng(0)
    with engine.Catalog.create(path) as cat:
        cat.add_codes(
            rng.integers(0, 256, (200_000, 32), dtype=np.uint8),
            metadata={"label": rng.integers(0, 9, 200_000)},
        )
        cat.build_index(block_size=512)
        bs = engine.BoxSet([{1: (0, 90), 4: (30, 200)}, {7: (0, 20)}], members=[0, 1])
        before = cat.select(bs)
        stats = cat.compact()
        assert stats["bytes_after"] < stats["bytes_before"]
        after = cat.select(bs)
        assert np.array_equal(before.ids, after.ids) and np.array_equal(before.votes, after.votes)
        assert cat.index_status()["stale"] is False
        pos = cat.sql("SELECT pos FROM codes").column(0).to_numpy()
        assert np.array_equal(pos, np.arange(200_000)), "physical order is block order"
    with engine.Catalog.open(path, read_only=True) as cat:
        assert len(cat) == 200_000
