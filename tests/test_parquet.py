"""Parquet export and import: identical selections, row-group statistics, atomic writes."""

import json
import signal
import subprocess
import sys

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import engine
from engine import parquet
from engine.synth import synth_catalog


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    path = tmp_path_factory.mktemp("pq") / "c.duckdb"
    synth_catalog(path, 20_000, seed=3, block_size=256)
    with engine.Catalog.open(path) as cat:  # an unindexed tail must survive the round trip too
        cat.add_codes(np.random.default_rng(0).integers(0, 256, (300, 32), dtype=np.uint8),
                      metadata={"label": np.full(300, -1)})
    return path


def _boxes(seed):
    rng = np.random.default_rng(seed)
    lo = rng.integers(0, 160, (60, 32))
    hi = lo + rng.integers(40, 96, (60, 32))
    keep = rng.random((60, 32)) < 0.15
    return engine.BoxSet.from_arrays(np.where(keep, lo, 0), np.minimum(np.where(keep, hi, 255), 255),
                                     members=rng.integers(0, 5, 60))


def test_export_import_select_identical(catalog, tmp_path):
    out = tmp_path / "export"
    with engine.Catalog.open(catalog, read_only=True) as cat:
        stats = cat.export_parquet(out)
        before = [cat.select(_boxes(s), mv) for s in range(3) for mv in (1, 3)]
        n = len(cat)
        images = cat.sql("SELECT * FROM images ORDER BY id")
    assert stats["rows"] == n
    with engine.Catalog.import_parquet(out, tmp_path / "back.duckdb") as back:
        assert len(back) == n
        after = [back.select(_boxes(s), mv) for s in range(3) for mv in (1, 3)]
        assert back.sql("SELECT * FROM images ORDER BY id").equals(images)
        assert back.index_status()["unindexed_rows"] == 300
    for a, b in zip(before, after, strict=True):
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.votes, b.votes)
        assert a.sql == b.sql
    assert sum(len(r.ids) for r in before) > 0


def test_compiled_sql_runs_on_the_parquet_files(catalog, tmp_path):
    out = tmp_path / "export"
    with engine.Catalog.open(catalog, read_only=True) as cat:
        cat.export_parquet(out)
        res = cat.select(_boxes(7), 2)
    sql = _boxes(7).to_sql(f"read_parquet('{out / 'codes.parquet'}')", min_votes=2)
    got = duckdb.connect().execute(sql).fetchnumpy()
    assert np.array_equal(got["id"], res.ids) and np.array_equal(got["votes"], res.votes)


def test_export_is_in_block_order_with_row_group_statistics(catalog, tmp_path):
    out = tmp_path / "export"
    with engine.Catalog.open(catalog, read_only=True) as cat:
        cat.export_parquet(out)
    f = pq.ParquetFile(out / "codes.parquet")
    assert f.metadata.num_row_groups >= 1
    col = f.schema_arrow.get_field_index("f00")
    for rg in range(f.metadata.num_row_groups):
        st = f.metadata.row_group(rg).column(col).statistics
        assert st is not None and st.has_min_max
    pos = pq.read_table(out / "codes.parquet", columns=["pos"]).column(0).to_numpy()
    assert np.array_equal(pos, np.arange(len(pos)))
    meta = json.loads((out / "catalog.json").read_text())
    assert meta["format"] == "clip-branches-parquet" and meta["rows"] == len(pos)


def test_export_refuses_an_existing_directory_and_leaves_no_temp(catalog, tmp_path):
    out = tmp_path / "export"
    out.mkdir()
    with engine.Catalog.open(catalog, read_only=True) as cat, pytest.raises(engine.CatalogError, match="exists"):
        cat.export_parquet(out)
    assert list(tmp_path.iterdir()) == [out]


def test_import_rejects_incomplete_or_foreign_directories(catalog, tmp_path):
    with pytest.raises(engine.CatalogError, match="missing"):
        engine.Catalog.import_parquet(tmp_path, tmp_path / "x.duckdb")
    out = tmp_path / "export"
    with engine.Catalog.open(catalog, read_only=True) as cat:
        cat.export_parquet(out)
    (out / "catalog.json").write_text("{not json")
    with pytest.raises(engine.CorruptCatalog):
        engine.Catalog.import_parquet(out, tmp_path / "y.duckdb")
    assert not (tmp_path / "y.duckdb").exists()
    (out / "catalog.json").write_text(json.dumps({"format": "clip-branches-parquet", "schema_version": 1, "rows": 5}))
    with pytest.raises(engine.CorruptCatalog, match="rows"):
        engine.Catalog.import_parquet(out, tmp_path / "z.duckdb")
    assert not (tmp_path / "z.duckdb").exists()


KILLED_OVERWRITE = """
import os, signal, sys
import engine
from engine import parquet

def killed(path, *args, **kwargs):
    for root, _, files in os.walk(path):
        if files:
            os.unlink(os.path.join(root, sorted(files)[0]))
            break
    os.kill(os.getpid(), signal.SIGKILL)

parquet.shutil.rmtree = killed
with engine.Catalog.open(sys.argv[1], read_only=True) as cat:
    cat.export_parquet(sys.argv[2], overwrite=True)
"""


def test_overwrite_killed_while_deleting_the_old_export_leaves_a_whole_export(tmp_path):
    # The old export used to be deleted in place before the new one was renamed in: a kill
    # midway left a half-deleted directory under the name that still looked complete.
    path = tmp_path / "c.duckdb"
    synth_catalog(path, 2_000, seed=1, block_size=256)
    out = tmp_path / "export"
    with engine.Catalog.open(path) as cat:
        cat.export_parquet(out)
        cat.add_codes(np.zeros((5, 32), np.uint8))
        n = len(cat)
    r = subprocess.run([sys.executable, "-c", KILLED_OVERWRITE, str(path), str(out)], capture_output=True,
                       timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert {p.name for p in out.iterdir()} == {*parquet.FILES, "artifacts.parquet"}
    with engine.Catalog.import_parquet(out, tmp_path / "back.duckdb") as back:
        assert len(back) == n



KILLED_IMPORT = """
import os, signal, sys
import engine
from engine import parquet

def killed(con):
    os.kill(os.getpid(), signal.SIGKILL)

def create(cls, path):  # once the empty catalog exists, die after the import commits its rows
    cat = plain_create(cls, path)
    parquet.schema.refresh_views = killed
    return cat

plain_create = engine.Catalog.create.__func__
engine.Catalog.create = classmethod(create)
engine.Catalog.import_parquet(sys.argv[1], sys.argv[2])
"""


def test_import_killed_before_it_completes_leaves_nothing_in_the_way(catalog, tmp_path):
    out, path = tmp_path / "export", tmp_path / "imported.duckdb"
    with engine.Catalog.open(catalog, read_only=True) as cat:
        cat.export_parquet(out)
        n, codes = len(cat), cat.codes(np.arange(5))
    r = subprocess.run([sys.executable, "-c", KILLED_IMPORT, str(out), str(path)], capture_output=True,
                       timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not path.exists()
    with engine.Catalog.import_parquet(out, path) as back:
        assert len(back) == n and np.array_equal(back.codes(np.arange(5)), codes)
