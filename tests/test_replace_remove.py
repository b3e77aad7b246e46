"""Replacing all codes (after a new head) and removing images keep selection complete."""

import duckdb
import numpy as np
import pytest

import engine


def _oracle(codes, ids, box):
    inside = np.ones(len(codes), bool)
    for d, (lo, hi) in box.items():
        inside &= (codes[:, d] >= lo) & (codes[:, d] <= hi)
    return set(ids[inside].tolist())


BOX = {0: (0, 130), 5: (40, 220)}


@pytest.fixture
def cat(tmp_path):
    rng = np.random.default_rng(7)
    c = engine.Catalog.create(tmp_path / "c.duckdb")
    c.add_codes(
        rng.integers(0, 256, (3000, 32), dtype=np.uint8), metadata={"uri": [f"u{i}" for i in range(3000)]}
    )
    c.build_index(block_size=256)
    yield c
    c.close()


def _check_select(cat, codes, ids):
    res = cat.select(engine.BoxSet([BOX]))
    assert set(res.ids.tolist()) == _oracle(codes, ids, BOX)
    con = duckdb.connect(str(cat.path), read_only=True) if cat.read_only else cat.store.con
    assert [r[0] for r in con.execute(res.sql).fetchall()] == res.ids.tolist()


def test_remove_drops_the_index_and_keeps_results_complete(cat):
    ids = np.arange(3000)
    codes = cat.codes(ids)
    gone = np.arange(0, 3000, 7)
    assert cat.remove(np.append(gone, [10**9])) == len(gone)  # unknown ids are ignored
    status = cat.index_status()
    assert status["stale"] and status["rows"] == 3000 - len(gone)
    keep = ~np.isin(ids, gone)
    _check_select(cat, codes[keep], ids[keep])
    assert cat.sql("SELECT count(*) AS n FROM images").column("n")[0].as_py() == keep.sum()
    with pytest.raises(engine.UnknownIds):
        cat.codes([0])
    cat.build_index(block_size=256)
    assert not cat.index_status()["stale"]
    _check_select(cat, codes[keep], ids[keep])


def test_replace_codes_then_build_gives_the_new_codes(cat):
    rng = np.random.default_rng(8)
    ids = np.arange(0, 3000, 2)  # half the images get new codes; the rest have none now
    new = rng.integers(0, 256, (len(ids), 32), dtype=np.uint8)
    cat.replace_codes(new, ids[::-1].copy())
    new = new[::-1]
    assert cat.index_status()["stale"]
    _check_select(cat, new, ids)
    cat.build_index(block_size=256)
    _check_select(cat, new, ids)
    assert np.array_equal(cat.codes(ids[:50]), new[:50])
    assert cat.sql("SELECT count(*) AS n FROM catalog").column("n")[0].as_py() == len(ids)


def test_replace_codes_with_unknown_ids_changes_nothing(cat):
    before = cat.codes(np.arange(3000))
    with pytest.raises(engine.UnknownIds, match="5000"):
        cat.replace_codes(np.zeros((2, 32), np.uint8), [1, 5000])
    assert np.array_equal(cat.codes(np.arange(3000)), before)
    assert not cat.index_status()["stale"]


@pytest.mark.parametrize(
    "codes, ids, match",
    [
        (np.zeros((2, 31), np.uint8), [1, 2], "32"),
        (np.zeros((2, 32), np.int16), [1, 2], "uint8"),
        (np.zeros((2, 32), np.uint8), [1, 1], "duplicates"),
        (np.zeros((2, 32), np.uint8), [1], "one id per row"),
    ],
)
def test_replace_codes_refuses_bad_input(cat, codes, ids, match):
    with pytest.raises(engine.InvalidCodes, match=match):
        cat.replace_codes(codes, ids)
    assert len(cat) == 3000


def test_read_only_catalog_refuses_remove_and_replace(cat):
    path = cat.path
    cat.close()
    with engine.Catalog.open(path, read_only=True) as ro:
        with pytest.raises(engine.ReadOnlyError):
            ro.remove([1])
        with pytest.raises(engine.ReadOnlyError):
            ro.replace_codes(np.zeros((1, 32), np.uint8), [1])
        assert len(ro) == 3000
