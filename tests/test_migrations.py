"""Schema migrations: every step from version N-1, and the refusals."""

import duckdb
import numpy as np
import pytest

import engine
from engine import schema


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
    schema.migrate(con, target=version - 1)
    assert (schema.current_version(con) or 0) == version - 1
    con.close()
    with engine.Catalog.open(path) as cat:  # writable open migrates
        assert schema.current_version(cat.con) == schema.latest_version()
        ids = cat.add_codes(np.zeros((3, 32), dtype=np.uint8))
        assert len(cat) == 3 and ids.tolist() == [0, 1, 2]


def test_older_catalog_opened_read_only_is_refused_with_a_hint(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    schema.migrate(con, target=0)
    con.close()
    with pytest.raises(engine.SchemaVersionError, match=f"run `clip-branches migrate {path}` once"):
        engine.Catalog.open(path, read_only=True)


def test_info_never_writes_and_migrate_upgrades(tmp_path):
    import hashlib
    import subprocess
    import sys

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                              timeout=300)

    def digest(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    schema.migrate(con, target=schema.latest_version() - 1)
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
