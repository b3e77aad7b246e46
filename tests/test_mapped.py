"""The memory-mapped copy of the indexed codes: a build asked for it writes it, a later open
reads the index from it, and whatever no longer matches the catalog (rows appended, removed or
replaced, another build's copy, a damaged or truncated file) is ignored with a warning, so every
answer stays the answer of the catalog's own rows and of its SQL."""

import json
import mmap
import shutil
import subprocess
import sys
import warnings

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine
from engine.index import mapped

N = 20_000


def _codes(n=N, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.integers(30, 226, (6, 32))
    return np.clip(centres[rng.integers(0, 6, n)] + rng.normal(0, 14, (n, 32)), 0, 255).astype(np.uint8)


@pytest.fixture
def catalog(tmp_path):
    path = tmp_path / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        cat.add_codes(_codes(), ids=np.arange(5, 5 + N) * 3)  # sparse ids: the sorted lookup
        stats = cat.build_index(block_size=256, mapped=True)
    assert stats["mapped_bytes"] == mapped.path_for(path).stat().st_size > 32 * N
    return path


def _is_mapped(cat) -> bool:
    base = cat.snapshot().index.cols
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None) if not isinstance(base, memoryview) else base.obj
    return isinstance(base, mmap.mmap)


BOXES = engine.BoxSet(
    [{0: (0, 120), 3: (90, 255)}, {5: (0, 70)}, {1: (140, 255), 9: (0, 200)}], members=[0, 1, 1]
)


def _answers(path):
    with engine.Catalog.open(path, read_only=True) as cat:
        ids = cat.snapshot().index.ids
        sel = cat.select(BOXES)
        ref = cat.refine(ids[:25].tolist(), ids[-5:].tolist(), random_state=0)
        knn = cat.search(id=int(ids[7]), k=40)
        return _is_mapped(cat), sel, ref, knn


def _sql_ids(path, sql):
    con = duckdb.connect(str(path), read_only=True)
    try:
        return [r[0] for r in con.execute(sql).fetchall()]
    finally:
        con.close()


def test_an_open_reads_the_copy_and_answers_exactly_as_the_catalog(catalog, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a matching copy is read without a word
        is_mapped, sel, ref, knn = _answers(catalog)
    assert is_mapped
    plain = tmp_path / "plain.duckdb"
    shutil.copy(catalog, plain)  # the same catalog without its copy loads from DuckDB
    was_mapped, sel2, ref2, knn2 = _answers(plain)
    assert not was_mapped
    assert np.array_equal(sel.ids, sel2.ids) and np.array_equal(sel.votes, sel2.votes)
    assert np.array_equal(ref.ids, ref2.ids) and ref.sql == ref2.sql
    assert np.array_equal(knn.ids, knn2.ids)
    assert _sql_ids(catalog, sel.sql) == sel.ids.tolist()
    assert _sql_ids(catalog, ref.sql) == ref.ids.tolist()


def test_the_copy_holds_the_index_in_block_order(catalog):
    con = duckdb.connect(str(catalog), read_only=True)
    rows = np.array(con.execute("SELECT * FROM codes ORDER BY pos").fetchall())
    con.close()
    with engine.Catalog.open(catalog, read_only=True) as cat:
        index = cat.snapshot().index
        assert np.array_equal(index.ids, rows[:, 1])
        assert np.array_equal(index.cols, rows[:, 2:].T)


def test_rebuilds_keep_the_copy_until_told_otherwise(catalog):
    copy = mapped.path_for(catalog)
    with engine.Catalog.open(catalog) as cat:
        first = cat.setting("index")["mapped"]["build"]
        cat.build_index(block_size=512)  # mapped=None: as the last build did
        assert copy.exists() and cat.setting("index")["mapped"]["build"] != first
        cat.build_index(block_size=512, mapped=False)
        assert not copy.exists() and "mapped" not in cat.setting("index")
    assert not _answers(catalog)[0]


def test_appended_rows_are_loaded_from_the_catalog(catalog):
    with engine.Catalog.open(catalog) as cat:
        new = cat.add_codes(_codes(300, seed=9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a copy behind appended rows is expected: no warning
        is_mapped, sel, _, _ = _answers(catalog)
    assert not is_mapped
    assert _sql_ids(catalog, sel.sql) == sel.ids.tolist()
    with engine.Catalog.open(catalog, read_only=True) as cat:
        assert set(new.tolist()) <= set(cat.snapshot().index.ids.tolist())


@pytest.mark.parametrize("change", ["remove", "replace"])
def test_a_change_to_the_indexed_rows_retires_the_copy(catalog, change):
    with engine.Catalog.open(catalog) as cat:
        ids = cat.snapshot().index.ids
        if change == "remove":
            cat.remove(ids[:100])
        else:
            cat.replace_codes(_codes(len(ids), seed=4), ids)
        assert (cat.setting("index") or {}).get("mapped") is None
    is_mapped, sel, ref, _ = _answers(catalog)
    assert not is_mapped
    assert _sql_ids(catalog, sel.sql) == sel.ids.tolist()
    assert _sql_ids(catalog, ref.sql) == ref.ids.tolist()


def _damage(path, how):
    copy = mapped.path_for(path)
    data = bytearray(copy.read_bytes())
    if how == "flipped":
        data[mapped.HEADER_BYTES + 3] ^= 0xFF  # row 3 of dim 0: inside the first sampled run
    elif how == "truncated":
        data = data[: len(data) - 4096]
    elif how == "header":
        data[:4] = b"JUNK"
    elif how == "other-build":
        header = bytes(data[len(mapped.MAGIC) : mapped.HEADER_BYTES]).rstrip(b"\0")
        record = json.loads(header)
        record["build"] = "0" * 32
        data[: mapped.HEADER_BYTES] = (mapped.MAGIC + json.dumps(record).encode()).ljust(
            mapped.HEADER_BYTES, b"\0"
        )
    copy.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["flipped", "truncated", "header", "other-build"])
def test_a_copy_that_does_not_match_is_ignored_with_a_warning(catalog, how):
    _damage(catalog, how)
    with pytest.warns(UserWarning, match=r"c\.duckdb\.kd is not used"):
        is_mapped, sel, ref, knn = _answers(catalog)
    assert not is_mapped
    assert _sql_ids(catalog, sel.sql) == sel.ids.tolist()
    assert _sql_ids(catalog, ref.sql) == ref.ids.tolist()


def test_a_missing_copy_loads_from_the_catalog_quietly(catalog):
    mapped.path_for(catalog).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _answers(catalog)[0]


def test_an_interrupted_write_leaves_no_copy_and_the_old_index(catalog, monkeypatch):
    with engine.Catalog.open(catalog) as cat:
        before = cat.setting("index")["mapped"]

        def killed(*a, **k):
            raise KeyboardInterrupt

        monkeypatch.setattr(engine.store.tables, "write_index", killed)
        with pytest.raises(KeyboardInterrupt):
            cat.build_index(block_size=512)
        # the new copy is in place, but the settings still name the old build's
        assert cat.setting("index")["mapped"] == before
    assert not list(catalog.parent.glob(".*.writing"))
    with pytest.warns(UserWarning, match="another index build"):
        is_mapped, sel, _, _ = _answers(catalog)
    assert not is_mapped and _sql_ids(catalog, sel.sql) == sel.ids.tolist()


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 31), st.integers(0, 255), st.integers(0, 255)), min_size=1, max_size=4)
)
def test_selection_from_the_copy_matches_numpy(mapped_catalog, box):
    path, codes, ids = mapped_catalog
    lo_hi = {d: (min(a, b), max(a, b)) for d, a, b in box}
    inside = np.ones(len(ids), bool)
    for d, (lo, hi) in lo_hi.items():
        inside &= (codes[:, d] >= lo) & (codes[:, d] <= hi)
    with engine.Catalog.open(path, read_only=True) as cat:
        assert _is_mapped(cat)
        got = cat.select(engine.BoxSet([lo_hi]))
    assert sorted(got.ids.tolist()) == sorted(ids[inside].tolist())


@pytest.fixture(scope="module")
def mapped_catalog(tmp_path_factory):
    path = tmp_path_factory.mktemp("mapped") / "c.duckdb"
    codes, ids = _codes(5000, seed=2), np.random.default_rng(2).permutation(5000) + 100
    with engine.Catalog.create(path) as cat:
        cat.add_codes(codes, ids=ids)
        cat.build_index(block_size=64, mapped=True)
    return path, codes, ids


def test_the_cli_writes_the_copy(tmp_path):
    path = tmp_path / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        cat.add_codes(_codes(3000))
    out = subprocess.run(
        [sys.executable, "-m", "engine", "index", str(path), "--mapped", "--json", "--quiet"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["mapped_bytes"] == mapped.path_for(path).stat().st_size
    with engine.Catalog.open(path, read_only=True) as cat:
        assert _is_mapped(cat)
