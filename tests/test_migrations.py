"""Schema migrations: every step from version N-1, a catalog with rows from version 1, and the refusals."""

import duckdb
import numpy as np
import pytest

import engine
from engine.store import database, schema


def test_migrations_are_numbered_without_gaps():
    versions = [v for v, _, _ in schema.migrations()]
    assert versions == list(range(1, len(versions) + 1))


def test_new_catalog_records_every_migration(tmp_path):
    path = tmp_path / "c.duckdb"
    engine.Catalog.create(path).close()
    con = duckdb.connect(str(path), read_only=True)
    rows = con.execute("SELECT version FROM schema_version ORDER BY version").fetchall()
    assert [r[0] for r in rows] == list(range(1, schema.latest_version() + 1))


@pytest.mark.parametrize("version", range(1, schema.latest_version() + 1))
def test_each_step_migrates_from_the_previous_version(tmp_path, version):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    database.migrate(con, target=version - 1)
    assert (database.current_version(con) or 0) == version - 1
    con.close()
    with engine.Catalog.open(path) as cat:  # writable open migrates
        assert database.current_version(cat.store.con) == schema.latest_version()
        ids = cat.add_codes(np.zeros((3, 32), dtype=np.uint8))
        assert len(cat) == 3 and ids.tolist() == [0, 1, 2]


def test_older_catalog_opened_read_only_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    database.migrate(con, target=0)
    con.close()
    with pytest.raises(engine.SchemaVersionError, match=f"run `clip-branches migrate {path}` once"):
        engine.Catalog.open(path, read_only=True)


@pytest.mark.e2e
def test_info_never_writes_and_migrate_upgrades(tmp_path):
    import hashlib
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True, timeout=300
        )

    def digest(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    database.migrate(con, target=schema.latest_version() - 1)
    con.execute("CHECKPOINT")
    con.close()
    before = digest(path)
    r = cli("info", path)
    assert r.returncode == 1 and f"clip-branches migrate {path}" in r.stderr and digest(path) == before
    r = cli("migrate", path)
    assert r.returncode == 0, r.stderr
    assert f"schema version {schema.latest_version()}" in r.stdout and digest(path) != before
    current = digest(path)
    r = cli("info", path, "--json")
    assert r.returncode == 0, r.stderr
    assert digest(path) == current and not list(tmp_path.glob("*.wal"))


def test_newer_catalog_is_refused(tmp_path):
    path = tmp_path / "new.duckdb"
    engine.Catalog.create(path).close()
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version (version, name) VALUES (999, 'future')")
    con.close()
    with pytest.raises(engine.SchemaVersionError, match="newer than this clip-branches"):
        engine.Catalog.open(path)


# -- a catalog with rows, from version 1 -------------------------------------------------------
LABELS = np.array(["Sneaker", "Bag", "Coat", "Dress", "Sandal"])


def _metadata(n: int) -> dict[str, list]:
    """Image metadata as a user gives it: a uri, a label, a caption (some missing), a rating (some missing)."""
    return {
        "uri": [f"/home/ana/photos/{2019 + i % 5}/IMG_{i:05d}.jpg" for i in range(n)],
        "label": LABELS[np.arange(n) % len(LABELS)].tolist(),
        "caption": [
            None if i % 7 == 0 else f"photo {i} of a {LABELS[i % len(LABELS)].lower()}" for i in range(n)
        ],
        "rating": [None if i % 11 == 0 else round(i % 50 / 10, 1) for i in range(n)],
    }


def _user_catalog(path, codes: np.ndarray, ids: np.ndarray) -> None:
    """The catalog a user builds: images with :func:`_metadata`, indexed in blocks of 16, then 40
    more rows added after the index build."""
    meta = _metadata(len(codes))
    with engine.Catalog.create(path) as cat:
        cat.add_codes(codes[:-40], ids=ids[:-40], metadata={k: v[:-40] for k, v in meta.items()})
        cat.build_index(block_size=16)
        cat.add_codes(codes[-40:], ids=ids[-40:], metadata={k: v[-40:] for k, v in meta.items()})


def _as_version_1(latest, path) -> None:
    """The rows of the catalog ``latest`` written to a new file of schema version 1 as that
    version stored them: images (with the metadata columns that adding rows appends), codes,
    blocks and settings."""
    src = duckdb.connect(str(latest), read_only=True)
    try:
        rows = {
            t: src.sql(f"SELECT * FROM {t} ORDER BY rowid").to_arrow_table()
            for t in ("images", "codes", "blocks", "settings")
        }
        types = dict(
            src.execute(
                "SELECT column_name, data_type FROM duckdb_columns() "
                "WHERE table_name = 'images' AND schema_name = 'main'"
            ).fetchall()
        )
    finally:
        src.close()
    con = duckdb.connect(str(path))
    try:
        database.migrate(con, target=1)
        for name in ("label", "caption", "rating"):
            con.execute(f"ALTER TABLE images ADD COLUMN {name} {types[name]}")
        columns = [
            r[0]
            for r in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = 'images' "
                "AND schema_name = 'main' ORDER BY column_index"
            ).fetchall()
        ]
        rows["images"] = rows["images"].select(columns)
        for table, data in rows.items():
            con.register("_rows", data)
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
            con.unregister("_rows")
        database.refresh_views(con)
        assert database.current_version(con) == 1
    finally:
        con.close()


def _tables(path) -> dict:
    """Every row of the catalog's tables and views, in a fixed order, columns by name."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        out = {}
        for table, order in (
            ("images", "id"),
            ("codes", "pos"),
            ("blocks", "block_id"),
            ("settings", "key"),
            ("artifacts", "name"),
            ("catalog", "id"),
        ):
            data = con.sql(f"SELECT * FROM {table} ORDER BY {order}").to_arrow_table()
            out[table] = data.select(sorted(data.column_names))
        return out
    finally:
        con.close()


def test_a_version_1_catalog_with_rows_keeps_them_and_answers_as_a_new_one(tmp_path, codegen, rng):
    codes = codegen.clustered(rng, 300)
    ids = rng.choice(10**12, size=300, replace=False).astype(np.int64) - 10**11
    latest, old = tmp_path / "latest.duckdb", tmp_path / "v1.duckdb"
    _user_catalog(latest, codes, ids)
    _as_version_1(latest, old)
    with engine.Catalog.open(old) as cat:  # writable open migrates
        assert database.current_version(cat.store.con) == schema.latest_version()
        np.testing.assert_array_equal(cat.codes(ids), codes)
        stored = cat.sql("SELECT id, uri, label, caption, rating FROM images ORDER BY id").to_pydict()
        order = np.argsort(ids)
        assert stored["id"] == ids[order].tolist()
        for name, values in _metadata(300).items():
            assert stored[name] == [values[i] for i in order], name
    want, got = _tables(latest), _tables(old)
    for table in want:
        assert got[table].column_names == want[table].column_names, table
        assert got[table].equals(want[table]), table
    assert want["images"].num_rows == want["catalog"].num_rows == 300 and want["blocks"].num_rows > 1

    with engine.Catalog.open(latest, read_only=True) as new, engine.Catalog.open(old, read_only=True) as cat:
        assert cat.settings() == new.settings()
        assert cat.index_status() == new.index_status() and cat.index_status()["unindexed_rows"] == 40
        anchors = codes[[3, 150, 280]]  # the last one is in the unindexed tail
        boxes = [
            {d: (max(0, int(c[d]) - 25), min(255, int(c[d]) + 25)) for d in range(0, 32, 4)} for c in anchors
        ]
        for box_set, min_votes in (
            (engine.BoxSet(boxes, [0, 1, 2]), 1),
            (engine.BoxSet([*boxes, {5: (0, 127)}], [0, 1, 2, 1]), 2),
        ):
            a, b = new.select(box_set, min_votes), cat.select(box_set, min_votes)
            assert a.ids.size > 0
            np.testing.assert_array_equal(b.ids, a.ids)
            np.testing.assert_array_equal(b.votes, a.votes)
            assert b.sql == a.sql and b.stats["blocks_touched"] == a.stats["blocks_touched"]
            assert cat.sql(b.sql).column(0).to_pylist() == b.ids.tolist()
        for image_id in ids[[0, 150, 299]].tolist():
            a, b = new.search(id=image_id, k=25), cat.search(id=image_id, k=25)
            np.testing.assert_array_equal(b.ids, a.ids)
            np.testing.assert_array_equal(b.scores, a.scores)
            assert b.ids[0] == image_id
        near = np.argsort(((codes.astype(np.int64) - codes[3]) ** 2).sum(axis=1), kind="stable")
        positives, negatives = ids[near[:6]], ids[near[-2:]]
        a = new.refine(positives, negatives, random_state=0)
        b = cat.refine(positives, negatives, random_state=0)
        assert a.ids.size > 1 and a.suggestions.size > 0
        for x, y in ((b.ids, a.ids), (b.scores, a.scores), (b.suggestions, a.suggestions)):
            np.testing.assert_array_equal(x, y)
        assert b.sql == a.sql
