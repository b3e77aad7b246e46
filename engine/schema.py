"""Numbered schema migrations, applied in order and recorded in ``schema_version``."""

from __future__ import annotations

import re
from functools import cache

import duckdb

from .errors import CorruptCatalog, SchemaVersionError
from .resources import resource_dir, sql_text
from .store import transaction

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@cache
def migrations() -> tuple[tuple[int, str, str], ...]:
    """``(version, name, sql)`` for every file in ``migrations/``, by version."""
    found = []
    for path in resource_dir("migrations").iterdir():
        m = _NAME.match(path.name)
        if m:
            found.append((int(m.group(1)), m.group(2), path.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 0001, 0002, ... without gaps; found {versions}")
    return tuple(found)


def latest_version() -> int:
    return len(migrations())


def current_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The catalog's schema version, or None if the database has no schema_version table."""
    has = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_version' AND schema_name = 'main'"
    ).fetchall()[0][0]
    if not has:
        return None
    row = con.execute("SELECT max(version) FROM schema_version").fetchall()[0]
    return int(row[0] or 0)


def migrate(con: duckdb.DuckDBPyConnection, target: int | None = None) -> list[int]:
    """Apply the pending migrations up to ``target`` (default: latest), each in a transaction.

    Returns the versions applied. The views in ``sql/views.sql`` are recreated afterwards.
    """
    target = latest_version() if target is None else target
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER NOT NULL, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
    )
    version = current_version(con) or 0
    applied = []
    for v, name, sql in migrations():
        if v <= version or v > target:
            continue
        try:
            with transaction(con):
                con.execute(sql)
                con.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", [v, name])
        except duckdb.Error as e:
            raise CorruptCatalog(
                f"migration {v:04d}_{name} failed, so the catalog was left unchanged: {str(e).splitlines()[0]}"
            ) from None
        applied.append(v)
    if target >= 1:
        refresh_views(con)
    return applied


def refresh_views(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(sql_text("views"))


def check_version(con: duckdb.DuckDBPyConnection, path: str, read_only: bool) -> int:
    """Validate the schema version of an opened database; migrate it if writable and older."""
    version = current_version(con)
    if version is None:
        raise CorruptCatalog(
            f"{path} is a DuckDB file but not a clip-branches catalog (it has no schema_version table)"
        )
    latest = latest_version()
    if version == 0:
        has_tables = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'main' AND table_name <> 'schema_version'"
        ).fetchall()[0][0]
        if has_tables:
            raise CorruptCatalog(
                f"{path} has catalog tables but an empty schema_version table; its schema version is unknown"
            )
    if version > latest:
        raise SchemaVersionError(
            f"{path} has schema version {version}, newer than this clip-branches supports ({latest}); "
            "upgrade clip-branches to open it"
        )
    if version < latest:
        if read_only:
            raise SchemaVersionError(
                f"{path} has schema version {version} and needs migrating to {latest}; "
                f"run `clip-branches migrate {path}` once (it needs the file to itself) to upgrade it"
            )
        migrate(con)
    return latest
