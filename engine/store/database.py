"""The catalog's DuckDB file behind one object, :class:`Store`, in the manner of datasette's
``Database``: it owns the connection; reads go through :meth:`Store.read` and
:meth:`Store.arrow`, every change through one :meth:`Store.write` transaction (or the
one-statement :meth:`Store.execute`); settings and artifacts are read and written here.

A catalog changes only inside a write: everything in the block commits together or, when
anything in it raises, nothing does. DuckDB has one writer per file, so writes are never
concurrent; readers (the server's connections) see the state before or after, never between.
DuckDB errors that mean a damaged file become :class:`~engine.errors.CorruptCatalog` on the
catalog's own queries (:meth:`Store.reading`).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ..errors import CatalogError, CatalogNotFound, CorruptCatalog, ReadOnlyError, SchemaVersionError
from ..resources import sql_text
from . import schema
from .integrity import RESTORE, decode_setting
from .sqlnames import literal, quote_ident

# What callers outside the store catch for "DuckDB refused this", without importing duckdb.
DatabaseError = duckdb.Error
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
# How often a long statement's own progress is polled (see :meth:`Store.tracking`).
POLL_INTERVAL_S = 0.25
# DuckDB's memory limit in the bulk rewrites (index build, compaction), in place of its default
# of 80% of the machine, which its cache of the rows read filled: at 100M rows a build then held
# 22 GB. Half of this made the build's write twice as slow (scripts/bench_scale.py).
BULK_MEMORY = "1GB"


class Store:
    """The open DuckDB file of a catalog. Threads may share a read-only store: reads take
    :attr:`lock` or run on a cursor of their own."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, read_only: bool):
        self._con = con
        self.path = path
        self.read_only = read_only
        self.lock = threading.RLock()
        # Counts the writes made through this store: state loaded from the file is current
        # while it is unchanged (nothing else writes a file this process holds writable).
        self.generation = 0
        self._settings: dict | None = None  # a read-only store reads them once

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, settings: Mapping[str, Any]) -> Store:
        """A new file at ``path`` with the latest schema and ``settings``. It is built under a
        temporary name beside ``path`` and renamed into place once written: a process killed
        halfway leaves no file at ``path`` that the next run would refuse as not a catalog."""
        if path.exists():
            raise CatalogError(f"{path} already exists; open it with Catalog.open or choose a new path")
        if not path.parent.is_dir():
            raise CatalogNotFound(f"directory {path.parent} does not exist")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
        try:
            con = duckdb.connect(str(tmp))
            try:
                migrate(con)
                cls(con, tmp, read_only=False).set_settings(settings)
                con.execute("CHECKPOINT")
            finally:
                con.close()
            os.replace(tmp, path)
        finally:
            for p in (tmp, Path(f"{tmp}.wal")):
                p.unlink(missing_ok=True)
        return cls(duckdb.connect(str(path)), path, read_only=False)

    @classmethod
    def open(cls, path: Path, read_only: bool = False, config: Mapping[str, Any] | None = None) -> Store:
        """The file at ``path``, checked against its schema version and migrated when writable.
        ``config``: DuckDB settings for the connection (the sandbox's)."""
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=dict(config or {}))
        except duckdb.IOException as e:
            msg = str(e)
            if "lock" in msg.lower():
                raise CatalogError(_lock_message(path, read_only, msg.splitlines()[0])) from None
            raise damage_error(path, e) from None
        except duckdb.ConnectionException as e:
            msg = str(e).splitlines()[0]
            if "different configuration" in msg:
                raise CatalogError(
                    f"{path} is already open in this process with read_only={not read_only}; close that "
                    f"Catalog first or open this one the same way ({msg})"
                ) from None
            raise damage_error(path, e) from None
        except duckdb.Error as e:
            raise damage_error(path, e) from None
        try:
            with reading(path):
                version = current_version(con)
                if version is not None and 1 <= version <= schema.latest_version():
                    check_tables(con, path, version)  # before check_version migrates anything
                check_version(con, str(path), read_only)
        except BaseException:
            con.close()
            raise
        return cls(con, path, read_only)

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    @property
    def closed(self) -> bool:
        return self._con is None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The raw connection, for the sandbox, migrations and tests; engine code reads and
        writes through the methods below."""
        if self._con is None:
            raise CatalogError("the catalog is closed; open it again with Catalog.open")
        return self._con

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of its own for one query on another thread; the caller closes it."""
        with self.lock:
            return self.con.cursor()

    def connection_count(self) -> int:
        """DuckDB connections open to this database in this process: the store's own plus
        every cursor not yet closed, and other stores open on the same file. 0 once closed."""
        with self.lock:
            if self._con is None:
                return 0
            return int(self._con.execute("SELECT count FROM duckdb_connection_count()").fetchall()[0][0])

    def check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(f"{self.path} is open read-only; open it with read_only=False to change it")

    def reading(self) -> contextlib.AbstractContextManager:
        """Around queries on the file: damage becomes CorruptCatalog naming it (:func:`reading`)."""
        return reading(self.path)

    # -- reads -------------------------------------------------------------------------------
    def read(self, sql: str, params: Sequence | Mapping | None = None, **tables: pa.Table) -> list[tuple]:
        """The rows of one query, with the Arrow ``tables`` readable under their names."""
        with self.lock, self._registered(tables):
            return self.con.execute(sql, params).fetchall()

    def value(self, sql: str, params: Sequence | Mapping | None = None, **tables: pa.Table) -> Any:
        """The first column of the first row of one query."""
        return self.read(sql, params, **tables)[0][0]

    def arrow(self, sql: str, params: Sequence | Mapping | None = None, **tables: pa.Table) -> pa.Table:
        """The result of one query as an Arrow table."""
        with self.lock, self._registered(tables):
            return self.con.sql(sql, params=params).to_arrow_table()

    def batches(self, sql: str, rows: int) -> Iterator[pa.RecordBatch]:
        """The result of one query in Arrow batches of about ``rows`` rows, streamed: the whole
        result is never held. The store stays locked until the last batch is read."""
        with self.lock:
            yield from self.con.sql(sql).to_arrow_reader(rows)

    def columns(self, table: str) -> list[tuple[str, str]]:
        """(name, DuckDB type) of a table's columns, in order."""
        return [
            (name, dtype)
            for name, dtype in self.read(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? "
                "AND schema_name = 'main' AND database_name = current_database() ORDER BY column_index",
                [table],
            )
        ]

    def why_not_compact(self, compact: bool, min_bytes: int) -> str | None:
        """Why not to compact the file now, or None to compact it: never when ``compact`` is
        False, nor while other connections in this process hold the file (compaction reopens
        it), nor for a file under ``min_bytes``, where what it frees is not worth a rewrite.
        DuckDB's own count of free blocks misses the row groups a rewrite of a table left
        behind, so the size is the test."""
        if not compact:
            return "not asked for"
        size = self.path.stat().st_size
        if size < min_bytes:
            return f"the file has {size:,} bytes, under {min_bytes:,}: `clip-branches compact` rewrites it anyway"
        if self.connection_count() > 1:
            return (
                "other connections to the file are open in this process (queries in flight, or "
                "another Catalog); run `clip-branches compact` once they are closed"
            )
        return None

    def release_cache(self) -> None:
        """Drop DuckDB's cache of what a load read (up to 80% of the machine by default)."""
        with self.memory_limit("1MB"):
            pass

    @contextlib.contextmanager
    def memory_limit(self, limit: str = BULK_MEMORY) -> Iterator[None]:
        """DuckDB's memory limit (its cache of the file's blocks too) at ``limit`` inside the
        block, then reset to the default, which frees what the cache held beyond. A sandboxed
        catalog's configuration is locked, and its own limit bounds it: it is left as it is."""
        try:
            self.read(f"SET memory_limit = {literal(limit)}")
        except duckdb.Error:
            yield  # a locked configuration
            return
        try:
            yield
        finally:
            self.read("RESET memory_limit")

    def schema_version(self) -> int | None:
        with self.lock:
            return current_version(self.con)

    # -- writes ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def write(self, **tables: pa.Table) -> Iterator[Transaction]:
        """One write transaction, with the Arrow ``tables`` readable under their names for its
        duration: committed when the block ends, rolled back if anything in it raises."""
        self.check_writable()
        with self.lock:
            try:
                with transaction(self.con, **tables) as con:
                    yield Transaction(con)
            finally:
                self.generation += 1

    def execute(self, sql: str, params: Sequence | Mapping | None = None, **tables: pa.Table) -> list[tuple]:
        """One statement that changes the file, committed on its own; its rows."""
        with self.write(**tables) as tx:
            return tx.execute(sql, params)

    def refresh_views(self) -> None:
        """Redefine the views over ``images`` (after columns were added to it)."""
        with self.lock:
            refresh_views(self.con)

    def checkpoint(self) -> None:
        with self.lock:
            self.con.execute("CHECKPOINT")

    # -- settings and artifacts --------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Every setting, decoded from JSON. A read-only store reads them once: nothing can
        change them while it is open, and the hot paths then never touch the connection."""
        if self.read_only:
            return copy.deepcopy(self._cached_settings())
        return self._read_settings()

    def _cached_settings(self) -> dict[str, Any]:
        with self.lock:
            if self._settings is None:
                self._settings = self._read_settings()
            return self._settings

    def _read_settings(self) -> dict[str, Any]:
        with self.reading():
            rows = self.read("SELECT key, value FROM settings ORDER BY key")
        return {k: decode_setting(self.path, k, v) for k, v in rows}

    def setting(self, key: str, default: Any = None) -> Any:
        """One setting, decoded from JSON; :class:`CorruptCatalog` if it does not hold what it
        must (see :data:`engine.store.integrity.SETTING_CHECKS`)."""
        if self.read_only:
            return copy.deepcopy(self._cached_settings().get(key, default))
        with self.reading():
            rows = self.read("SELECT value FROM settings WHERE key = ?", [key])
        return default if not rows else decode_setting(self.path, key, rows[0][0])

    def set_settings(self, values: Mapping[str, Any]) -> None:
        """Write settings: inside a :meth:`write` block they commit with it."""
        with self.lock:
            for key, value in values.items():
                self.con.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", [key, json.dumps(value)])
            self.generation += 1

    def bump_data_version(self) -> int:
        """Count one more change of the rows or codes (inside a write); returns the new version.
        Readers compare it for equality only, so a damaged version is written afresh."""
        try:
            version = int(self.setting("data_version", 0))
        except CorruptCatalog:
            version = 0
        self.set_settings({"data_version": version + 1})
        return version + 1

    def artifact(self, name: str) -> tuple[str, bytes] | None:
        """(sha256, bytes) of a stored artifact, or None."""
        with self.reading():
            rows = self.read("SELECT sha256, data FROM artifacts WHERE name = ?", [name])
        return (rows[0][0], bytes(rows[0][1])) if rows else None

    def put_artifact(self, tx: Transaction, name: str, digest: str, data: bytes) -> None:
        """Store an artifact inside the write transaction ``tx``."""
        tx.execute("DELETE FROM artifacts WHERE name = ?", [name])
        tx.execute("INSERT INTO artifacts (name, sha256, data) VALUES (?, ?, ?)", [name, digest, data])

    # -- whole-file work ---------------------------------------------------------------------
    @contextlib.contextmanager
    def tracking(self, report, done: int, units: int, total: int) -> Iterator[None]:
        """Report ``done`` .. ``done + units`` of ``total`` while one long statement runs inside
        the block, from DuckDB's own estimate (``query_progress()``) polled by a helper thread;
        ``report`` (an :class:`engine.progress.Reporter`) is never called from two threads at
        once. The caller reports ``done + units`` once the statement is through. An exception
        the report raises in the helper thread is raised again here once the statement is through.

        DuckDB keeps the estimate only with ``enable_progress_bar`` on, which its Python module
        leaves off in some settings (under pytest, for one); it is switched on for the session
        meanwhile, with ``enable_progress_bar_print`` off so DuckDB draws no bar of its own."""
        with track_statement(self.con, report, done, units, total):
            yield

    def compact(self, report) -> None:
        """Rewrite the file without the space freed by deletes and rebuilds: a copy beside it,
        renamed over it. ``report`` counts the rows copied, over all tables."""
        self.check_writable()
        tmp = self.path.with_name(self.path.name + ".compacting")
        for p in (tmp, Path(f"{tmp}.wal")):
            p.unlink(missing_ok=True)
        con = self.con
        con.execute("CHECKPOINT")
        db = con.execute("SELECT current_database()").fetchall()[0][0]
        # Schema first, then each table's rows in a statement of its own, so progress can count them.
        tables = con.execute(
            "SELECT schema_name, table_name, estimated_size FROM duckdb_tables() "
            "WHERE database_name = ? ORDER BY schema_name, table_name",
            [db],
        ).fetchall()
        total = int(sum(r[2] for r in tables))
        report(0, total)
        con.execute(f"ATTACH {literal(str(tmp))} AS _compact")
        try:
            with self.reading():  # every row is read: damage anywhere shows here
                con.execute(f"COPY FROM DATABASE {quote_ident(db)} TO _compact (SCHEMA)")
                done = 0
                for schema_name, table, rows in tables:
                    name = f"{quote_ident(schema_name)}.{quote_ident(table)}"
                    with self.tracking(report, done, int(rows), total):
                        con.execute(f"INSERT INTO _compact.{name} SELECT * FROM {quote_ident(db)}.{name}")
                    done += int(rows)
                    if done < total:  # the last report waits for the file to be in place
                        report(done, total)
        except BaseException:
            con.execute("DETACH _compact")
            for p in (tmp, Path(f"{tmp}.wal")):
                p.unlink(missing_ok=True)
            raise
        con.execute("DETACH _compact")
        con.close()
        self._con = None
        try:
            os.replace(tmp, self.path)
        finally:
            self._con = duckdb.connect(str(self.path))
            self.generation += 1
        report(total, total)

    @contextlib.contextmanager
    def _registered(self, tables: Mapping[str, pa.Table]) -> Iterator[None]:
        for name, table in tables.items():
            self.con.register(name, table)
        try:
            yield
        finally:
            for name in tables:
                with contextlib.suppress(duckdb.Error):
                    self.con.unregister(name)


class Transaction:
    """The statements of one :meth:`Store.write`: everything run here commits together."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con

    def execute(self, sql: str, params: Sequence | Mapping | None = None) -> list[tuple]:
        return self._con.execute(sql, params).fetchall()

    def value(self, sql: str, params: Sequence | Mapping | None = None) -> Any:
        return self.execute(sql, params)[0][0]

    def executemany(self, sql: str, rows: Sequence[Sequence]) -> None:
        self._con.executemany(sql, rows)

    @contextlib.contextmanager
    def registered(self, **tables: pa.Table) -> Iterator[None]:
        """The Arrow ``tables`` readable under their names inside the block."""
        for name, table in tables.items():
            self._con.register(name, table)
        try:
            yield
        finally:
            for name in tables:
                with contextlib.suppress(duckdb.Error):
                    self._con.unregister(name)


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection, **tables: pa.Table) -> Iterator[duckdb.DuckDBPyConnection]:
    """One write transaction on ``con``, with the Arrow ``tables`` readable under their names for
    its duration: committed when the block ends, rolled back if anything in it raises."""
    con.execute("BEGIN TRANSACTION")
    try:
        for name, table in tables.items():
            con.register(name, table)
        yield con
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # a COMMIT that failed has ended it already
            con.execute("ROLLBACK")
        raise
    finally:
        for name in tables:
            with contextlib.suppress(duckdb.Error):
                con.unregister(name)


# -- schema ---------------------------------------------------------------------------------
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
    target = schema.latest_version() if target is None else target
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_version "
        "(version INTEGER NOT NULL, name VARCHAR NOT NULL, applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
    )
    version = current_version(con) or 0
    applied = []
    for v, name, sql in schema.migrations():
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
    latest = schema.latest_version()
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


# -- damage ----------------------------------------------------------------------------------
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


def _lock_message(path: Path, read_only: bool, detail: str) -> str:
    """Why another process's lock keeps ``path`` from opening, told apart by who holds it."""
    if not read_only:
        try:  # readers share the file with readers: if this works, the holders only read
            duckdb.connect(str(path), read_only=True).close()
        except duckdb.Error:
            pass
        else:
            return (
                f"{path} is open read-only in another process (a running `clip-branches serve`?), and "
                f"changing it needs the file to itself: stop that process, then run this again; `ingest`, "
                f"`add` and `concept` hand their changes to a running server instead ({detail})"
            )
    return (
        f"{path} is open for writing in another process (an ingest, index or train-head still running?); "
        f"DuckDB allows one writer or many readers: wait for it to finish, then run this again ({detail})"
    )


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
        migrate(con, target=version)
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


# -- progress of one statement ---------------------------------------------------------------
@contextlib.contextmanager
def track_statement(
    con: duckdb.DuckDBPyConnection, report, done: int, units: int, total: int
) -> Iterator[None]:
    """:meth:`Store.tracking` on a connection of its own (a cursor, an in-memory database)."""
    if not report.active or units <= 0:
        yield
        return
    with _duckdb_tracking(con) as tracking:
        if not tracking:
            yield
            return
        with _polling(con, report, done, units, total):
            yield


@contextlib.contextmanager
def _duckdb_tracking(con: duckdb.DuckDBPyConnection) -> Iterator[bool]:
    """Query progress tracking on, and DuckDB's own bar off, on ``con``'s session; False when
    the configuration cannot change (a sandboxed catalog locks it)."""
    names = ("enable_progress_bar", "enable_progress_bar_print")
    try:
        before = con.execute(
            f"SELECT current_setting('{names[0]}'), current_setting('{names[1]}')"
        ).fetchall()[0]
        con.execute(f"SET {names[0]} = true")
        con.execute(f"SET {names[1]} = false")
    except duckdb.Error:
        yield False
        return
    try:
        yield True
    finally:
        for name, value in zip(names, before, strict=True):
            with contextlib.suppress(duckdb.Error):
                con.execute(f"SET {name} = {'true' if value else 'false'}")


@contextlib.contextmanager
def _polling(con: duckdb.DuckDBPyConnection, report, done: int, units: int, total: int) -> Iterator[None]:
    stop = threading.Event()
    lock = threading.Lock()
    last = [done]
    failed: list[BaseException] = []

    def poll() -> None:
        while not stop.wait(POLL_INTERVAL_S):
            try:
                pct = float(con.query_progress())
            except Exception:  # the statement ended, or the connection is busy closing
                return
            at = done + int(units * min(max(pct, 0.0), 99.9) / 100.0)
            with lock:
                if at > last[0] and not stop.is_set():
                    last[0] = at
                    try:
                        report(at, total)
                    except BaseException as e:  # handed to the calling thread, which raises it
                        failed.append(e)
                        return

    thread = threading.Thread(target=poll, name="progress-poll", daemon=True)
    thread.start()
    try:
        yield
    finally:
        with lock:
            stop.set()
        thread.join()
    if failed:
        raise failed[0]
