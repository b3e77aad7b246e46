"""Parquet export and import: identical selections, row-group statistics, atomic writes."""

import json
import shutil
import signal
import subprocess
import sys

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import engine
from engine.datasets.synth import synth_catalog
from engine.index import layout
from engine.store import parquet


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    path = tmp_path_factory.mktemp("pq") / "c.duckdb"
    synth_catalog(path, 20_000, seed=3, block_size=256)
    with engine.Catalog.open(path) as cat:  # an unindexed tail must survive the round trip too
        cat.add_codes(
            np.random.default_rng(0).integers(0, 256, (300, 32), dtype=np.uint8),
            metadata={"label": np.full(300, -1)},
        )
    return path


def _boxes(seed):
    rng = np.random.default_rng(seed)
    lo = rng.integers(0, 160, (60, 32))
    hi = lo + rng.integers(40, 96, (60, 32))
    keep = rng.random((60, 32)) < 0.15
    return engine.BoxSet.from_arrays(
        np.where(keep, lo, 0), np.minimum(np.where(keep, hi, 255), 255), members=rng.integers(0, 5, 60)
    )


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
    with (
        engine.Catalog.open(catalog, read_only=True) as cat,
        pytest.raises(engine.CatalogError, match="exists"),
    ):
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
    (out / "catalog.json").write_text(
        json.dumps({"format": "clip-branches-parquet", "schema_version": 1, "rows": 5})
    )
    with pytest.raises(engine.CorruptCatalog, match="rows"):
        engine.Catalog.import_parquet(out, tmp_path / "z.duckdb")
    assert not (tmp_path / "z.duckdb").exists()


KILLED_OVERWRITE = """
import os, signal, sys
import engine
from engine.index import layout
from engine.store import parquet

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


@pytest.mark.e2e
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
    r = subprocess.run(
        [sys.executable, "-c", KILLED_OVERWRITE, str(path), str(out)], capture_output=True, timeout=120
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert {p.name for p in out.iterdir()} == {*parquet.FILES, "artifacts.parquet"}
    with engine.Catalog.import_parquet(out, tmp_path / "back.duckdb") as back:
        assert len(back) == n


KILLED_IMPORT = """
import os, signal, sys
import engine
from engine.index import layout
from engine.store import parquet

def killed(store):  # after the import commits its rows, before the file takes its name
    os.kill(os.getpid(), signal.SIGKILL)

parquet.Store.refresh_views = killed
engine.Catalog.import_parquet(sys.argv[1], sys.argv[2])
"""


@pytest.mark.e2e
def test_import_killed_before_it_completes_leaves_nothing_in_the_way(catalog, tmp_path):
    out, path = tmp_path / "export", tmp_path / "imported.duckdb"
    with engine.Catalog.open(catalog, read_only=True) as cat:
        cat.export_parquet(out)
        n, codes = len(cat), cat.codes(np.arange(5))
    r = subprocess.run(
        [sys.executable, "-c", KILLED_IMPORT, str(out), str(path)], capture_output=True, timeout=120
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not path.exists()
    with engine.Catalog.import_parquet(out, path) as back:
        assert len(back) == n and np.array_equal(back.codes(np.arange(5)), codes)


# -- a damaged or crafted export is refused, and leaves nothing behind -----------------------
@pytest.fixture(scope="module")
def exported(catalog, tmp_path_factory):
    out = tmp_path_factory.mktemp("pq-export") / "export"
    with engine.Catalog.open(catalog, read_only=True) as cat:
        cat.export_parquet(out)
    return out


def _tampered(exported, tmp_path, name, change):
    """A copy of the export in ``tmp_path/export`` with ``name`` rewritten as ``change(table)``."""
    out = tmp_path / "export"
    shutil.copytree(exported, out)
    pq.write_table(change(pq.read_table(out / name)), out / name)
    return out


def _with(table, column, values):
    return table.set_column(table.schema.get_field_index(column), column, values)


def _set(table, column, row, value):
    return _with(table, column, _put(table.column(column), row, value))


def _put(values, row, value):
    out = values.to_pylist()
    out[row] = value
    return pa.array(out, values.type)


def _refused(src, tmp_path):
    """The message of the CorruptCatalog an import of ``src`` raises; no catalog file may remain."""
    with pytest.raises(engine.CorruptCatalog) as err:
        engine.Catalog.import_parquet(src, tmp_path / "back.duckdb")
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]
    return str(err.value)


def _f00_box(hi):
    lo, top = np.zeros((1, 32), np.int64), np.full((1, 32), 255)
    top[0, 0] = hi
    return engine.BoxSet.from_arrays(lo, top)


def test_a_wrong_zone_map_is_refused_and_the_true_one_selects_as_its_sql(exported, tmp_path):
    blocks = pq.read_table(exported / "blocks.parquet")
    block0_end, true_min = blocks["row_end"][0].as_py(), blocks["min_f00"][0].as_py()
    assert true_min < 200
    msg = _refused(
        _tampered(exported, tmp_path, "blocks.parquet", lambda t: _set(t, "min_f00", 0, 200)), tmp_path
    )
    assert "blocks.parquet: block 0 records min_f00 = 200" in msg and f"over its rows is {true_min}" in msg
    with engine.Catalog.import_parquet(exported, tmp_path / "good.duckdb") as back:
        res = back.select(_f00_box(199))
        sql = back.store.con.execute(res.sql).fetchnumpy()
        pos = back.store.con.execute(
            "SELECT pos FROM codes WHERE id IN (SELECT unnest(?))", [res.ids.tolist()]
        ).fetchnumpy()
    assert np.array_equal(res.ids, sql["id"]) and np.array_equal(res.votes, sql["votes"])
    # rows of block 0 match the box: a block 0 claiming f00 >= 200 would have hidden them
    assert (pos["pos"] < block0_end).any()


@pytest.mark.parametrize("column, block, value", [("min_f00", 0, 0), ("max_f31", -1, 0), ("min_f17", 3, 255)])
def test_import_refuses_zone_maps_looser_or_tighter_than_their_rows(exported, tmp_path, column, block, value):
    blocks = pq.read_table(exported / "blocks.parquet")
    block %= blocks.num_rows
    assert blocks[column][block].as_py() != value
    msg = _refused(
        _tampered(exported, tmp_path, "blocks.parquet", lambda t: _set(t, column, block, value)), tmp_path
    )
    assert f"block {block} records {column} = {value}" in msg


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda t: t.slice(1), "block 1 holds rows ["),
        (lambda t: pa.concat_tables([t.slice(0, 4), t.slice(5)]), "block 5 holds rows ["),
        (lambda t: t.slice(0, t.num_rows - 1), "blocks over rows [0, "),
        (lambda t: _set(t, "row_start", 2, t["row_start"][2].as_py() - 1), "block 2 holds rows ["),
        (lambda t: _set(t, "block_id", 3, 2), "block 2 holds rows ["),
    ],
)
def test_import_refuses_blocks_that_do_not_tile_the_indexed_rows(exported, tmp_path, change, needle):
    msg = _refused(_tampered(exported, tmp_path, "blocks.parquet", change), tmp_path)
    assert "blocks.parquet" in msg and needle in msg


@pytest.mark.parametrize("name", ["codes.parquet", "images.parquet"])
def test_import_refuses_duplicate_ids(exported, tmp_path, name):
    ids = pq.read_table(exported / name, columns=["id"])["id"]
    twice = ids[0].as_py()
    msg = _refused(_tampered(exported, tmp_path, name, lambda t: _set(t, "id", 7, twice)), tmp_path)
    assert f"{name} holds id {twice} in 2 rows" in msg


def test_import_refuses_codes_whose_image_is_missing(exported, tmp_path):
    gone = pq.read_table(exported / "images.parquet", columns=["id"])["id"][10].as_py()
    msg = _refused(
        _tampered(exported, tmp_path, "images.parquet", lambda t: t.filter(pc.not_equal(t["id"], gone))),
        tmp_path,
    )
    assert f"codes.parquet holds a code for id {gone}, which" in msg and "images.parquet" in msg


@pytest.mark.parametrize(
    "change, needle",
    [
        (lambda c: c.cast(pa.float64()), "column f00 is DOUBLE, expected UTINYINT (integers 0..255)"),
        (lambda c: c.cast(pa.string()), "column f00 is VARCHAR, expected UTINYINT (integers 0..255)"),
        (
            lambda c: _put(c.cast(pa.int32()), 5, 300),
            "column f00 (INTEGER) holds 300, outside 0..255; expected UTINYINT (integers 0..255)",
        ),
        (lambda c: _put(c.cast(pa.int16()), 5, -1), "column f00 (SMALLINT) holds -1, outside 0..255"),
        (None, "has no column f00; it must hold one of type UTINYINT (integers 0..255)"),
    ],
)
def test_import_refuses_code_columns_of_the_wrong_type(exported, tmp_path, change, needle):
    def tamper(t):
        return t.drop_columns(["f00"]) if change is None else _with(t, "f00", change(t["f00"]))

    msg = _refused(_tampered(exported, tmp_path, "codes.parquet", tamper), tmp_path)
    assert "codes.parquet" in msg and needle in msg


def test_import_takes_codes_of_a_wider_integer_type_within_0_255(exported, tmp_path):
    src = _tampered(exported, tmp_path, "codes.parquet", lambda t: _with(t, "f00", t["f00"].cast(pa.int32())))
    want = pq.read_table(exported / "codes.parquet", columns=["id", "f00"])
    with engine.Catalog.import_parquet(src, tmp_path / "back.duckdb") as back:
        got = back.codes(want["id"].to_numpy())
    assert np.array_equal(got[:, 0], want["f00"].to_numpy())


@pytest.mark.parametrize("row, pos", [(0, -1), (1, 0)])
def test_import_refuses_positions_other_than_0_to_n_minus_1(exported, tmp_path, row, pos):
    msg = _refused(
        _tampered(exported, tmp_path, "codes.parquet", lambda t: _set(t, "pos", row, pos)), tmp_path
    )
    assert "codes.parquet holds 20300 rows, expected 20300 (catalog.json) with positions 0..n-1" in msg


# -- sharded exports: subtrees of the k-d tree, one export directory each --------------------
@pytest.fixture(scope="module")
def sharded(catalog, tmp_path_factory):
    """The catalog exported whole and in 2 and 4 shards; the index settings and the exports."""
    root = tmp_path_factory.mktemp("pq-shards")
    with engine.Catalog.open(catalog, read_only=True) as cat:
        index = cat.setting("index")
        stats = {n: cat.export_parquet(root / f"s{n}", shards=n) for n in (2, 4)}
        cat.export_parquet(root / "whole")
    return index, root, stats


def _concat(root, n, name):
    return pa.concat_tables([pq.read_table(root / f"s{n}" / f"shard-{i:03d}" / name) for i in range(n)])


@pytest.mark.parametrize("n", [2, 4])
def test_shards_partition_the_rows_of_the_whole_export(sharded, n):
    _, root, _ = sharded
    for name, key in (("codes.parquet", "pos"), ("images.parquet", "id"), ("blocks.parquet", "block_id")):
        whole = pq.read_table(root / "whole" / name)
        assert _concat(root, n, name).sort_by(key).equals(whole.sort_by(key)), name
    assert _concat(root, n, "codes.parquet").column("pos").to_numpy().tolist() == list(range(20_300))


@pytest.mark.parametrize("n", [2, 4])
def test_each_shard_is_one_subtree_and_holds_its_blocks_rows(sharded, n):
    index, root, stats = sharded
    manifest = json.loads((root / f"s{n}" / "catalog.json").read_text())
    assert manifest["format"] == "clip-branches-parquet-shards" and manifest["rows"] == 20_300
    assert manifest["shards"] == stats[n]["shards"]
    # the subtrees at depth log2(n) of the balanced halving the index build made
    bounds = layout.block_starts(index["indexed_rows"], n.bit_length() - 1)
    per = index["n_blocks"] // n
    for i, entry in enumerate(manifest["shards"]):
        d = root / f"s{n}" / entry["directory"]
        meta = json.loads((d / "catalog.json").read_text())
        assert meta["shard"]["number"] == i and meta["shard"]["count"] == n
        assert meta["shard"]["catalog_rows"] == 20_300 and meta["rows"] == entry["rows"]
        assert (entry["block_start"], entry["block_end"]) == (i * per, (i + 1) * per)
        assert entry["row_start"] == bounds[i]
        assert entry["row_end"] == (20_300 if i == n - 1 else bounds[i + 1])  # the last takes the tail
        pos = pq.read_table(d / "codes.parquet", columns=["pos"]).column(0).to_numpy()
        blocks = pq.read_table(d / "blocks.parquet")
        first, last = blocks["row_start"][0].as_py(), blocks["row_end"][-1].as_py()
        assert pos.min() == first and (pos.max() < last or (i == n - 1 and last == index["indexed_rows"]))
        assert blocks["block_id"].to_pylist() == list(range(entry["block_start"], entry["block_end"]))
        ids = pq.read_table(d / "images.parquet", columns=["id"]).column(0).to_numpy()
        codes_ids = pq.read_table(d / "codes.parquet", columns=["id"]).column(0).to_numpy()
        assert np.array_equal(np.sort(ids), np.sort(codes_ids))


def test_each_shard_imports_as_a_catalog_of_its_rows(sharded, catalog, tmp_path):
    _, root, _ = sharded
    with engine.Catalog.open(catalog, read_only=True) as cat:
        whole = [set(cat.select(_boxes(s), mv).ids.tolist()) for s in range(2) for mv in (1, 3)]
    found = [set() for _ in whole]
    for i in range(4):
        with engine.Catalog.import_parquet(root / "s4" / f"shard-{i:03d}", tmp_path / f"{i}.duckdb") as part:
            status = part.index_status()
            assert status["index"]["n_blocks"] == 32 and status["unindexed_rows"] == (300 if i == 3 else 0)
            for got, (s, mv) in zip(found, [(s, mv) for s in range(2) for mv in (1, 3)], strict=True):
                got.update(part.select(_boxes(s), mv).ids.tolist())
    assert found == whole and sum(map(len, whole)) > 0


def test_a_sharded_export_names_its_shards_when_imported_whole(sharded, tmp_path):
    _, root, _ = sharded
    with pytest.raises(engine.CatalogError, match="sharded export of 4 shards; import one of them"):
        engine.Catalog.import_parquet(root / "s4", tmp_path / "x.duckdb")
    assert not (tmp_path / "x.duckdb").exists()


@pytest.mark.parametrize(
    "shards,message",
    [
        (3, "power of two"),
        (0, "power of two"),
        (-2, "power of two"),
        (True, "power of two"),
        (2.0, "power of two"),
        (256, "has 128 blocks; shards must be a power of two up to 128, got 256"),
    ],
)
def test_bad_shard_counts_are_refused_and_leave_nothing(catalog, tmp_path, shards, message):
    with (
        engine.Catalog.open(catalog, read_only=True) as cat,
        pytest.raises(engine.InvalidArgument, match=message),
    ):
        cat.export_parquet(tmp_path / "out", shards=shards)
    assert list(tmp_path.iterdir()) == []


def test_a_catalog_without_an_index_cannot_be_sharded(tmp_path):
    with engine.Catalog.create(tmp_path / "c.duckdb") as cat:
        cat.add_codes(np.zeros((10, 32), np.uint8))
        with pytest.raises(engine.CatalogError, match="no block index.*clip-branches index"):
            cat.export_parquet(tmp_path / "out", shards=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.duckdb"]


# -- a refine round trained from an export's files is the catalog's --------------------------
@pytest.mark.parametrize("directory", ["whole", "s2", "s4"])
@pytest.mark.parametrize("model,guide", [("ensemble", True), ("branch", True), ("ensemble", False)])
def test_a_round_trained_on_an_export_is_the_catalogs(sharded, catalog, directory, model, guide):
    from engine.index.search import RefineRequest
    from engine.spark_refine import train_on_export
    from engine.store.exports import Export

    _, root, _ = sharded
    with engine.Catalog.open(catalog, read_only=True) as cat:
        labels = cat.sql("SELECT id, label FROM images ORDER BY id")
        ids, lab = labels.column("id").to_numpy(), labels.column("label").to_numpy()
        pos, neg = ids[lab == lab[7]][:6], ids[lab == lab[8]][:2]
        pos = np.append(pos, 20_100)  # a positive among the unindexed rows
        expected = cat.refine(pos, neg, model=model, random_state=0, guide=guide)
        train = cat.training_set(pos, neg, guide=guide)
    export = Export.open(root / directory)
    request = RefineRequest.check(pos, neg, model, 500, 1.0, 0, True, guide, 0)
    round_, stats = train_on_export(export, request)
    assert round_.sql == expected.sql and round_.min_votes == expected.stats["min_votes"]
    assert stats["guided"] == guide and stats["shards"] == (
        None if directory == "whole" else int(directory[1])
    )
    if not guide:  # the catalog's training set, row for row
        assert np.array_equal(round_.train.X, train.X) and np.array_equal(round_.train.w, train.w)
        assert np.array_equal(round_.train.free, train.free)
    assert 0 < stats["rows_read"] <= 20_300 and stats["row_groups_read"] <= stats["row_groups"]
