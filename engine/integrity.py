"""Damaged catalogs: telling a file DuckDB cannot read from a bad query, and saying what to do.

DuckDB reports a truncated file, a block that fails its checksum or a table that is gone as
errors of a few types, met by whichever query first reads the damage. :func:`reading` turns them
into :class:`~engine.errors.CorruptCatalog`, naming the file, the damage and the repair;
:func:`check_tables` compares a file's tables with those its schema version must have,
:func:`decode_setting` checks each setting against :data:`SETTING_CHECKS`, and
:func:`tiling_problem` the stored block index against the codes, so that the scan kernels, which
trust the blocks, never read past the data.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from . import schema
from .boxes import N_DIMS
from .errors import CorruptCatalog

# What each kind of damage asks the user to do; ``{path}`` is the catalog.
RESTORE = (
    "restore it from a backup, or re-import an export of it with `clip-branches import EXPORT_DIR NEW.duckdb`"
)
REINDEX = "run `clip-branches index {path}` to rebuild the index, which writes it afresh"
RETRAIN = (
    "run `clip-branches train-head {path}` to store a head and quantizer afresh, then "
    "`clip-branches index {path}` (or restore the file from a backup)"
)
# DuckDB errors of the catalog's own queries that mean the file is at fault, not the query: it
# ends early or cannot be read (I/O), stored metadata does not deserialize, DuckDB's internal
# state broke on it, or a table or column these fixed queries name is gone. A block that fails
# its checksum raises the base class, told apart by its message (see :func:`file_damage`).
_DAMAGE_ERRORS = (
    duckdb.IOException,
    duckdb.SerializationException,
    duckdb.InternalException,
    duckdb.FatalException,
    duckdb.CatalogException,
    duckdb.BinderException,
)
_TABLE_COLUMNS_SQL = (
    "SELECT c.table_name, c.column_name, c.data_type FROM duckdb_columns() c "
    "JOIN duckdb_tables() t USING (database_name, schema_name, table_name) "
    "WHERE c.schema_name = 'main' AND c.database_name = current_database()"
)


def file_damage(e: duckdb.Error, path: Path) -> bool:
    """Whether ``e``, raised by any query (a user's too), says the file ``path`` cannot be read."""
    msg = str(e)
    return (
        msg.startswith("Corrupt database file")
        or isinstance(e, duckdb.SerializationException)
        or (isinstance(e, duckdb.IOException) and str(path) in msg)
    )


def damage_error(path: Path, e: duckdb.Error) -> CorruptCatalog:
    """The CorruptCatalog for DuckDB's error ``e`` on the catalog file ``path``: what is wrong, what to do."""
    detail = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "not a valid DuckDB database file" in detail:
        return CorruptCatalog(
            f"{path} is not a clip-branches catalog: it is not a DuckDB database file at all. "
            f"Check the path; if it held a catalog, {RESTORE}"
        )
    if "Could not read enough bytes" in detail:
        what = "is truncated: the file ends before data it records"
    elif detail.startswith("Corrupt database file") or isinstance(e, duckdb.SerializationException):
        what = "is damaged: part of the file no longer holds what DuckDB wrote there"
    elif isinstance(e, (duckdb.CatalogException, duckdb.BinderException)):
        what = "lacks a table or column every catalog has"
    else:
        what = "cannot be read as a catalog"
    return CorruptCatalog(f"{path} {what} ({detail}); {RESTORE}")


@contextlib.contextmanager
def reading(path: Path):
    """Around the catalog's own queries on ``path``: DuckDB errors that mean a damaged file
    become :class:`CorruptCatalog`; any other error passes unchanged."""
    try:
        yield
    except duckdb.Error as e:
        if isinstance(e, _DAMAGE_ERRORS) or file_damage(e, path):
            raise damage_error(path, e) from None
        raise


def _tables(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, str]]:
    """``{table: {column: DuckDB type}}`` of the base tables of ``con``'s database, names lower-case."""
    out: dict[str, dict[str, str]] = {}
    for table, column, ctype in con.execute(_TABLE_COLUMNS_SQL).fetchall():
        out.setdefault(table.lower(), {})[column.lower()] = ctype
    return out


@functools.cache
def _schema_tables(version: int) -> dict[str, dict[str, str]]:
    """The tables and columns every catalog of schema ``version`` has: those of an empty
    in-memory database migrated to it, so the migrations stay the one description of the schema."""
    con = duckdb.connect()
    try:
        schema.migrate(con, target=version)
        return _tables(con)
    finally:
        con.close()


def check_tables(con: duckdb.DuckDBPyConnection, path: Path, version: int) -> None:
    """CorruptCatalog unless ``con`` has every table and column of schema ``version``, with its
    type (``images`` may have more columns: the metadata)."""
    found = _tables(con)
    for table, columns in _schema_tables(version).items():
        have = found.get(table)
        if have is None:
            raise CorruptCatalog(
                f"{path} has no {table} table, which every catalog has (it was dropped outside "
                f"clip-branches); {RESTORE}"
            )
        for column, ctype in columns.items():
            if column not in have:
                raise CorruptCatalog(
                    f"{path}: the {table} table has no column {column} ({ctype}), which every "
                    f"catalog has (it was dropped outside clip-branches); {RESTORE}"
                )
            if have[column] != ctype:
                raise CorruptCatalog(
                    f"{path}: column {table}.{column} is {have[column]} where every catalog has "
                    f"{ctype} (it was changed outside clip-branches); {RESTORE}"
                )


def _shown(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_count(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _expect(ok: Callable[[Any], bool], what: str) -> Callable[[Any], str | None]:
    """A setting check: None when ``ok(value)``, else the problem, naming ``what`` belongs there."""
    return lambda value: None if ok(value) else f"holds {_shown(value)} where {what} belongs"


def _index_problem(index: Any) -> str | None:
    """What is wrong with the ``index`` setting, or None: null, or an object whose entries the
    code reads have their types (``indexed_rows`` required, the rest when present)."""
    if index is None:
        return None
    if not isinstance(index, dict):
        return f"holds {_shown(index)} where null or an object belongs"
    if not _is_count(index.get("indexed_rows")):
        return f"records indexed_rows = {_shown(index.get('indexed_rows'))} where a row count belongs"
    for key, low in (("n_blocks", 0), ("block_size", 2), ("embedding_part_max", 0)):
        if index.get(key) is not None and not _is_count(index[key], low):
            return f"records {key} = {_shown(index[key])} where an integer >= {low} belongs"
    subsets = index.get("feature_subsets")
    if subsets is not None and not (
        isinstance(subsets, list)
        and all(isinstance(s, list) and s and all(_is_count(d) and d < N_DIMS for d in s) for s in subsets)
    ):
        return f"records feature_subsets = {_shown(subsets)} where lists of dims 0..{N_DIMS - 1} belong"
    return None


# The settings the code reads: a check returning what is wrong with a value (or None), and
# what writes the setting afresh. Others need only be JSON.
SETTING_CHECKS = {
    "dims": (_expect(lambda v: _is_count(v) and v == N_DIMS, str(N_DIMS)), RESTORE),
    "data_version": (_expect(_is_count, "a version number (an integer >= 0)"), REINDEX),
    "index": (_index_problem, REINDEX),
    "encoder": (_expect(lambda v: v is None or isinstance(v, str), "null or an encoder id"), RESTORE),
    "head": (
        _expect(
            lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("sha256"), str)),
            "null or an object with the head's sha256",
        ),
        RETRAIN,
    ),
    "quantizer": (_expect(lambda v: v is None or isinstance(v, dict), "null or an object"), RETRAIN),
}


def decode_setting(path: Path, key: str, text: str) -> Any:
    """The JSON value of setting ``key`` of the catalog ``path``; CorruptCatalog, saying how to
    repair it, when it is not JSON or fails its :data:`SETTING_CHECKS` entry."""
    check, fix = SETTING_CHECKS.get(key, (None, RESTORE))
    try:
        value = json.loads(text)
    except ValueError as e:
        problem = f"is not valid JSON ({e})"
    else:
        problem = check(value) if check is not None else None
        if problem is None:
            return value
    raise CorruptCatalog(
        f"{path}: the setting {key!r} {problem}, which clip-branches never writes (the file was "
        f"edited, or imported from a damaged export); {fix.format(path=path)}"
    )


def tiling_problem(
    block_id: np.ndarray, start: np.ndarray, end: np.ndarray, n_rows: int, index: Mapping[str, Any]
) -> str | None:
    """What is wrong with stored blocks (int arrays in ``block_id`` order), or None: they must be
    numbered 0, 1, ..., each non-empty and starting where the one before ends, from row 0 to at
    most ``n_rows``, in the number and over the rows the ``index`` settings record."""
    n = len(block_id)
    if n and not np.array_equal(block_id, np.arange(n)):
        return f"the blocks are numbered {_shown(block_id[:8].tolist())}, not 0, 1, ..."
    gaps = np.flatnonzero((end <= start) | (start != np.append(0, end[:-1]))) if n else []
    if len(gaps):
        b = int(gaps[0])
        return f"block {b} holds rows [{start[b]}, {end[b]}), which does not follow on from the block before"
    covered = int(end[-1]) if n else 0
    if covered > n_rows:
        return f"the blocks cover {covered} rows but there are {n_rows} codes"
    recorded = (index.get("n_blocks", n), index.get("indexed_rows")) if index else (0, 0)
    if (n, covered) != recorded:
        return (
            f"{n} blocks cover rows [0, {covered}) but the index settings record {recorded[0]} blocks over "
            f"{recorded[1]} rows"
        )
    return None
