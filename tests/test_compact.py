"""Compaction drops the space freed by index rebuilds and keeps every row and the order; an
index build compacts when it freed space, or says why not."""

import numpy as np
import pytest

import engine


def test_compact_shrinks_and_preserves(tmp_path):
    path = tmp_path / "c.duckdb"
    rng = np.random.default_rng(0)
    with engine.Catalog.create(path) as cat:
        cat.add_codes(
            rng.integers(0, 256, (200_000, 32), dtype=np.uint8),
            metadata={"label": rng.integers(0, 9, 200_000)},
        )
        assert cat.build_index(block_size=512, compact=False)["compaction"] == "not asked for"
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


def _loaded(path, n=50_000):
    rng = np.random.default_rng(1)
    cat = engine.Catalog.create(path)
    cat.add_codes(rng.integers(0, 256, (n, 32), dtype=np.uint8))
    return cat


@pytest.fixture
def compact_any_size(monkeypatch):
    monkeypatch.setattr(engine.catalog, "COMPACT_MIN_BYTES", 0)


def test_an_index_build_leaves_the_file_at_its_compact_size(tmp_path, compact_any_size):
    with _loaded(tmp_path / "auto.duckdb") as cat:
        stats = cat.build_index(block_size=512)
        assert stats["compacted"] is True and stats["bytes_after"] < stats["bytes_before"]
        auto = cat.path.stat().st_size
        bs = engine.BoxSet([{2: (0, 100)}])
        got = cat.select(bs)
    with _loaded(tmp_path / "manual.duckdb") as cat:
        cat.build_index(block_size=512, compact=False)
        cat.compact()
        assert cat.path.stat().st_size == auto
        assert np.array_equal(cat.select(bs).ids, got.ids)


def test_a_small_file_is_left_as_it_is(tmp_path):
    with _loaded(tmp_path / "c.duckdb") as cat:
        stats = cat.build_index(block_size=512)
        assert stats["compacted"] is False and "under 33,554,432" in stats["compaction"]


def test_an_index_build_says_why_it_did_not_compact_while_a_query_holds_the_file(tmp_path, compact_any_size):
    with _loaded(tmp_path / "c.duckdb") as cat:
        cursor = cat.store.cursor()  # a query in flight on another thread
        try:
            stats = cat.build_index(block_size=512, compact=True)
        finally:
            cursor.close()
        assert stats["compacted"] is False and "clip-branches compact" in stats["compaction"]
        later = cat.compact()  # once the query is done
        assert later["bytes_after"] < later["bytes_before"]


@pytest.mark.parametrize(("flags", "want"), [([], True), (["--compact"], True), (["--no-compact"], False)])
def test_the_index_command_takes_compact_or_not(flags, want):
    from engine.cli import build_parser

    assert build_parser().parse_args(["index", "c.duckdb", *flags]).compact is want
