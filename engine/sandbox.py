"""User SQL: one checked SELECT, run with limits on rows, bytes, time and memory.

:func:`check_query` refuses anything but one query statement, and queries that name table
functions outside :data:`TABLE_FUNCTIONS` (``read_blob``, ``duckdb_settings()``,
``pragma_*``, ``query()``) or functions that read the configuration (``current_setting``):
with external access disabled DuckDB still lets a query read the catalog file itself and list
its paths and settings. :func:`run_query` runs a checked query on a DuckDB cursor and stops at
the row limit, at the byte limit, and (through DuckDB's interrupt) at the time limit.
:func:`reads_last_result` tells whether a query reads the ``last_result`` relation, so that a
caller can ask for the result it means.

DuckDB's ``memory_limit`` bounds its buffer manager, not every allocation (a string function
on long arguments can allocate gigabytes), and an interrupt is only noticed between chunks. So
the web console runs each query in a worker process of a :class:`QueryPool`: the worker has
an OS address-space limit (``RLIMIT_AS``), and it is killed when its answer is late. The
worker runs :func:`_worker_main`.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import duckdb
import pyarrow as pa

from .errors import CatalogError, InvalidSql, QueryInterrupted, ServerBusy
from .limits import (
    MAX_QUERY_TEXT,
    MAX_VALUE_CHARS,
    QUERY_MAX_BYTES,
    QUERY_MAX_ROWS,
    QUERY_TIME_LIMIT_S,
    SANDBOX_MEMORY_LIMIT,
    SANDBOX_TEMP_LIMIT,
)
from .resources import sql_text
from .store.database import Store, damage_error, file_damage
from .store.sqlnames import quote_ident

# Table functions a console query may call: generators, the console's table macros and the
# schema listings. Everything else is refused: file readers, settings, pragma_*, query().
TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "json_each",
        "json_tree",
        "result_images",
        "added_after",
        "concept",  # the saved concepts, macros stored in the catalog (engine.concepts)
        "concept_new",
        "duckdb_tables",
        "duckdb_columns",
        "duckdb_views",
        "duckdb_functions",
        "duckdb_types",
        "duckdb_keywords",
        "duckdb_constraints",
        "duckdb_indexes",
        "duckdb_schemas",
        "duckdb_macros",
    }
)
# Scalar functions that read the configuration (paths, limits).
DENIED_FUNCTIONS = frozenset({"current_setting", "getvariable", "getenv"})
SCHEMAS = frozenset({"", "main", "temp", "information_schema"})
# The console macros of sql/console_macros.sql that read last_result.
LAST_RESULT_MACROS = frozenset({"result_images", "in_last_result"})
# The columns of ``last_result``; a query that comes without one sees an empty view of them.
LAST_RESULT_COLUMNS = ("id", "score", "rank")


@dataclass
class QueryResult:
    """A user query's rows (within the row and byte limits), whether more were cut off and by
    which limit (``cut``: ``"rows"``, ``"bytes"`` or ``""``), and its time."""

    table: pa.Table
    truncated: bool
    time_ms: float
    cut: str = ""


def check_query(text) -> duckdb.Statement:
    """The one SELECT statement of ``text``; InvalidSql for anything else."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidSql("the query is empty")
    if len(text) > MAX_QUERY_TEXT:
        raise InvalidSql(f"the query has {len(text)} characters; the limit is {MAX_QUERY_TEXT}")
    try:
        statements = duckdb.extract_statements(text)
    except duckdb.Error as e:
        raise InvalidSql(str(e)) from None
    except RecursionError:
        raise InvalidSql("the query is nested too deeply") from None
    if len(statements) != 1:
        raise InvalidSql(f"give exactly one statement, got {len(statements)}")
    try:
        kind = statements[0].type
    except ValueError:  # a statement type newer than the Python client's enum
        raise InvalidSql("only queries (SELECT) are allowed here") from None
    if kind != duckdb.StatementType.SELECT:
        raise InvalidSql(f"only queries are allowed here, not {kind.name} statements")
    return statements[0]


def check_names(cur: duckdb.DuckDBPyConnection, statement: duckdb.Statement, database: str) -> None:
    """Refuse a query that calls a table function outside :data:`TABLE_FUNCTIONS`, a function
    of :data:`DENIED_FUNCTIONS`, or reads a table of another database or schema (a file path
    in ``FROM '...'`` included)."""
    try:
        tree = json.loads(cur.execute("SELECT json_serialize_sql($1)", [statement.query]).fetchall()[0][0])
    except (duckdb.Error, RecursionError, ValueError) as e:
        raise InvalidSql(f"the query cannot be checked: {str(e).splitlines()[0]}") from None
    if tree.get("error"):
        raise InvalidSql(
            f"this form of query is not supported here ({tree.get('error_message', '')}); "
            "write it as a plain SELECT"
        )
    stack = [(tree.get("statements", []), False)]
    while stack:
        node, as_table = stack.pop()
        if isinstance(node, list):
            stack.extend((v, False) for v in node)
            continue
        if not isinstance(node, dict):
            continue
        name = node.get("function_name")
        if isinstance(name, str):
            name = name.lower()
            if as_table and name not in TABLE_FUNCTIONS:
                raise InvalidSql(
                    f"the table function {name}() is not available in the console; it reads "
                    "files or settings. Query the catalog's tables and views"
                )
            if name in DENIED_FUNCTIONS:
                raise InvalidSql(f"{name}() is not available in the console")
        if node.get("type") == "BASE_TABLE":
            table = str(node.get("table_name", ""))
            schema = str(node.get("schema_name", "")).lower()
            db = str(node.get("catalog_name", ""))
            if "/" in table or "\\" in table or schema not in SCHEMAS or db not in ("", database, "temp"):
                raise InvalidSql(
                    f"{'.'.join(p for p in (db, schema, table) if p)!r} is not a table of this "
                    "catalog; the console reads only the catalog's own tables and views"
                )
        for key, value in node.items():
            if isinstance(value, (dict, list)):
                stack.append((value, key == "function" and node.get("type") == "TABLE_FUNCTION"))


def reads_last_result(con: duckdb.DuckDBPyConnection, sql: str) -> bool:
    """Whether the query ``sql`` reads ``last_result``: names the table (not a CTE of its own of
    that name) or calls a console macro over it (:data:`LAST_RESULT_MACROS`). False for a query
    that does not parse; running it then says why. ``con`` only parses the query, never runs it,
    on a cursor of its own, so threads may share one connection."""
    cur = con.cursor()
    try:
        tree = json.loads(cur.execute("SELECT json_serialize_sql($1)", [sql]).fetchall()[0][0])
    except (duckdb.Error, RecursionError, ValueError):
        return False
    finally:
        cur.close()
    tables, ctes, stack = set(), set(), [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        if node.get("type") == "BASE_TABLE":
            tables.add(str(node.get("table_name", "")).lower())
        if str(node.get("function_name", "")).lower() in LAST_RESULT_MACROS:
            return True
        for entry in (node.get("cte_map") or {}).get("map", []):
            ctes.add(str(entry.get("key", "")).lower())
        stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
    return "last_result" in tables - ctes


def _printable(rel: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """``rel`` with its date and timestamp columns as DuckDB's own text ('-infinity',
    '0044-03-15 (BC)'), which every client can show, text and blobs longer than
    :data:`MAX_VALUE_CHARS` cut (text ends in '…'), and repeated column names made unique
    (``a``, ``a_2``); other columns unchanged."""
    exprs, seen, changed = [], set(), False
    for i, (c, t) in enumerate(zip(rel.columns, (str(t) for t in rel.types), strict=True)):
        ref = f"#{i + 1}"
        name, k = c, 1
        while name.lower() in seen:
            k += 1
            name = f"{c}_{k}"
        seen.add(name.lower())
        if t.startswith(("DATE", "TIMESTAMP")):
            expr = f"CAST({ref} AS VARCHAR)"
        elif t == "VARCHAR":
            expr = (
                f"CASE WHEN length({ref}) > {MAX_VALUE_CHARS} THEN left({ref}, {MAX_VALUE_CHARS}) || '…' "
                f"ELSE {ref} END"
            )
        elif t == "BLOB":
            expr = f"CASE WHEN octet_length({ref}) > {MAX_VALUE_CHARS} THEN {ref}[1:{MAX_VALUE_CHARS}] ELSE {ref} END"
        else:
            expr = ref
        changed |= expr != ref or name != c
        exprs.append(f"{expr} AS {quote_ident(name)}")
    return rel.project(", ".join(exprs)) if changed else rel


def read_sql(store: Store, text: str, params=None) -> pa.Table:
    """``Catalog.sql``: one query statement on a cursor of ``store``, in a transaction that is
    rolled back; InvalidSql for anything else or a failing query."""
    check_query(text)
    cur = store.cursor()
    try:
        cur.execute("BEGIN TRANSACTION")
        try:
            return cur.sql(text, params=params).to_arrow_table()
        except duckdb.Error as e:
            if file_damage(e, store.path):
                raise damage_error(store.path, e) from None
            raise InvalidSql(str(e)) from None
        finally:
            cur.execute("ROLLBACK")
    finally:
        cur.close()


def user_query(store: Store, text: str, **limits) -> QueryResult:
    """``Catalog.query``: :func:`run_query` on a cursor of its own of ``store``."""
    check_query(text)
    cur = store.cursor()
    try:
        database = cur.execute("SELECT current_database()").fetchall()[0][0]
        return run_query(cur, text, database=database, **limits)
    finally:
        cur.close()


class QueryParser:
    """Parses console queries (never runs them) on an in-memory database that reads no files,
    to tell whether they read ``last_result`` (:meth:`reads_last_result`). Threads may share it."""

    def __init__(self) -> None:
        self._con = duckdb.connect(config={"enable_external_access": False})

    def reads_last_result(self, sql: str) -> bool:
        return reads_last_result(self._con, sql)

    def close(self) -> None:
        self._con.close()


def run_query(
    cur: duckdb.DuckDBPyConnection,
    text: str,
    *,
    database: str,
    time_limit_s: float = QUERY_TIME_LIMIT_S,
    max_rows: int = QUERY_MAX_ROWS,
    max_bytes: int = QUERY_MAX_BYTES,
    relations: Mapping[str, pa.Table] | None = None,
) -> QueryResult:
    """Run one user query on ``cur`` (a fresh cursor of a sandboxed connection, closed by the
    caller). ``relations`` are Arrow tables the query may name; the macros of
    ``sql/console_macros.sql`` are defined on the cursor. At most ``max_rows`` rows and about
    ``max_bytes`` bytes (Arrow buffers) come back."""
    statement = check_query(text)
    check_names(cur, statement, database)
    timer = threading.Timer(time_limit_s, cur.interrupt)
    t0 = time.perf_counter()
    relations = dict(relations or {})
    if "last_result" not in relations:
        cur.execute(
            "CREATE OR REPLACE TEMP VIEW last_result AS SELECT * FROM (VALUES (0::BIGINT, 0::BIGINT, "
            "0::BIGINT)) AS t(" + ", ".join(LAST_RESULT_COLUMNS) + ") WHERE false"
        )
    for name, table in relations.items():
        cur.register(name, table)
    try:
        for macro in duckdb.extract_statements(sql_text("console_macros")):
            cur.execute(macro.query)
    except duckdb.Error as e:
        raise InvalidSql(f"the relations given do not fit the console macros: {e}") from None
    cur.execute("BEGIN TRANSACTION")
    timer.start()
    cut = ""
    try:
        rel = _printable(cur.sql(statement.query))
        reader = rel.to_arrow_reader(max(1, min(max_rows + 1, 1024)))
        batches, n, size = [], 0, 0
        for batch in reader:
            if size + batch.nbytes > max_bytes:
                keep = _fitting_rows(batch, max_bytes - size)
                batches.append(batch.slice(0, keep))
                n += keep
                cut = "bytes"
                break
            batches.append(batch)
            n += batch.num_rows
            size += batch.nbytes
            if n > max_rows:
                cut = "rows"
                break
        table = pa.Table.from_batches(batches, schema=reader.schema)
    except duckdb.InterruptException:
        raise QueryInterrupted(_too_long(time_limit_s)) from None
    except duckdb.OutOfMemoryException:
        cur.execute("ROLLBACK")
        limit = cur.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        raise InvalidSql(
            f"the query needed more than the memory limit of {limit} and was stopped; "
            "add a LIMIT, aggregate, or select fewer rows or columns"
        ) from None
    except duckdb.Error as e:
        raise InvalidSql(str(e)) from None
    finally:
        timer.cancel()
        with contextlib.suppress(duckdb.Error):
            cur.execute("ROLLBACK")
    if table.num_rows > max_rows:
        table = table.slice(0, max_rows)
    return QueryResult(table, bool(cut), (time.perf_counter() - t0) * 1e3, cut)


def _too_long(time_limit_s: float) -> str:
    return f"the query ran longer than {time_limit_s:g} s and was stopped; add a LIMIT or a narrower WHERE"


def _fitting_rows(batch: pa.RecordBatch, budget: int) -> int:
    """The most leading rows of ``batch`` whose buffers take at most ``budget`` bytes."""
    lo, hi = 0, batch.num_rows
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if batch.slice(0, mid).nbytes <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def sandbox_config(memory_limit: str, temp_limit: str) -> dict:
    """DuckDB settings of a connection that runs untrusted queries: no files or URLs but the
    catalog, no extensions, bounded memory and temp files, configuration locked."""
    return {
        "enable_external_access": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "memory_limit": memory_limit,
        "max_temp_directory_size": temp_limit,
        "lock_configuration": True,
    }


def parse_bytes(text: str) -> int:
    """Bytes of a DuckDB-style size: '1GB', '512 MiB', '200MB', '1000'."""
    units = {
        "": 1,
        "b": 1,
        "kb": 10**3,
        "mb": 10**6,
        "gb": 10**9,
        "tb": 10**12,
        "kib": 2**10,
        "mib": 2**20,
        "gib": 2**30,
        "tib": 2**40,
    }
    s = str(text).strip().lower().replace(" ", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num) :]
    try:
        value = float(num)
    except ValueError:
        raise CatalogError(f"not a size: {text!r}; write e.g. '1GB' or '512MiB'") from None
    if unit not in units or value < 0:
        raise CatalogError(f"not a size: {text!r}; write e.g. '1GB' or '512MiB'")
    return int(value * units[unit])


# -- worker processes ----------------------------------------------------------------------------
# A worker whose answer has not come this long after the query's time limit is killed.
KILL_GRACE = 0.25  # share of the time limit
KILL_GRACE_MIN_S = 0.5
MIN_RUN_S = 0.1  # a query that waited for its turn past its time limit still gets this long
STARTUP_TIMEOUT_S = 60.0
_WORKER = "import json, sys; from engine.sandbox import _worker_main; _worker_main(int(sys.argv[1]), json.loads(sys.argv[2]))"


class _Worker:
    """One worker process and the socket to it."""

    def __init__(self, path: Path, memory_limit: str, temp_limit: str):
        parent, child = socket.socketpair()
        self.tmp = Path(tempfile.mkdtemp(prefix="cb-console-"))
        config = {
            "path": str(path),
            "memory_limit": memory_limit,
            "temp_limit": temp_limit,
            "temp": str(self.tmp),
        }
        env = {**os.environ, "MALLOC_ARENA_MAX": "2", "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(child.fileno()), json.dumps(config)],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(Path(__file__).resolve().parent.parent),
            )
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        reply = self._wait(STARTUP_TIMEOUT_S, None)
        if reply is None or "error" in reply:
            self.kill()
            raise CatalogError(
                f"the console cannot open {path}: {(reply or {}).get('error', 'the worker did not start')}"
            )
        self.vm_limit = reply.get("vm_limit")

    def _wait(self, timeout: float, cancel: threading.Event | None):
        """The worker's next reply, or None when it died, ran past ``timeout`` or was cancelled."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (cancel is not None and cancel.is_set()):
                return None
            try:
                if self.conn.poll(min(left, 0.05)):
                    return pickle.loads(self.conn.recv_bytes())
            except (EOFError, OSError):
                return None
            if self.proc.poll() is not None and not self.conn.poll(0):
                return None

    def ask(self, request: dict, timeout: float, cancel: threading.Event | None):
        try:
            self.conn.send_bytes(pickle.dumps(request, protocol=5))
        except OSError:
            return None
        return self._wait(timeout, cancel)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        with contextlib.suppress(OSError):
            self.conn.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class QueryPool:
    """Console queries of one catalog, run in up to ``workers`` worker processes at once.

    Each worker holds a read-only sandboxed connection to the catalog (DuckDB's
    ``memory_limit`` and ``max_temp_directory_size`` set), and runs under an address-space
    limit of ``memory_limit`` above what it needs idle. A query gets an idle worker, waits up to
    ``wait_s`` for one when all are busy, then raises :class:`ServerBusy`; a worker that has not answered shortly after
    the query's time limit, runs out of memory, or whose caller sets ``cancel`` is killed and
    replaced.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        workers: int = 2,
        memory_limit: str = SANDBOX_MEMORY_LIMIT,
        temp_limit: str = SANDBOX_TEMP_LIMIT,
        wait_s: float = 1.0,
    ):
        if workers < 1:
            raise CatalogError(f"the console needs at least 1 worker, got {workers}")
        parse_bytes(memory_limit), parse_bytes(temp_limit)
        self.path = Path(path)
        self.size = workers
        self.memory_limit = memory_limit
        self.temp_limit = temp_limit
        self._idle: list[_Worker] = []
        self._live = 0
        self.wait_s = wait_s
        self._lock = threading.Lock()
        self._freed = threading.Condition(self._lock)
        self._closed = False

    def start(self) -> None:
        """Start every worker now (otherwise each starts with the first query it takes)."""
        workers = []
        for _ in range(self.size):
            with self._lock:
                if self._live >= self.size:
                    break
                self._live += 1
            try:
                workers.append(_Worker(self.path, self.memory_limit, self.temp_limit))
            except BaseException:
                with self._lock:
                    self._live -= 1
                raise
        with self._lock:
            self._idle.extend(workers)

    def busy(self) -> int:
        """Queries running now."""
        with self._lock:
            return self._live - len(self._idle)

    def _take(self) -> _Worker:
        deadline = time.monotonic() + self.wait_s
        with self._lock:
            while True:
                if self._closed:
                    raise CatalogError("the console is closed")
                while self._idle:
                    w = self._idle.pop()
                    if w.alive():
                        return w
                    self._live -= 1
                    w.kill()
                left = deadline - time.monotonic()
                if self._live < self.size or left <= 0:
                    break
                self._freed.wait(left)
            if self._live >= self.size:
                raise ServerBusy(
                    f"the console is busy: {self.size} of its queries are running, the most it runs "
                    "at once; try again when one has finished"
                )
            self._live += 1
        try:
            return _Worker(self.path, self.memory_limit, self.temp_limit)
        except BaseException:
            with self._lock:
                self._live -= 1
            raise

    def _give_back(self, w: _Worker, healthy: bool) -> None:
        with self._lock:
            self._freed.notify()
            if healthy and not self._closed:
                self._idle.append(w)
                return
            self._live -= 1
        w.kill()

    def run(
        self,
        text: str,
        *,
        time_limit_s: float = QUERY_TIME_LIMIT_S,
        max_rows: int = QUERY_MAX_ROWS,
        max_bytes: int = QUERY_MAX_BYTES,
        relations: Mapping[str, pa.Table] | None = None,
        cancel: threading.Event | None = None,
        waited_s: float = 0.0,
    ) -> QueryResult:
        """Run one user query as :func:`run_query` does, in a worker. ``waited_s``, the time the
        query already waited for its turn, counts against ``time_limit_s``. Raises InvalidSql
        (bad query, memory), QueryInterrupted (time limit, cancelled) or ServerBusy."""
        entered = time.monotonic()
        check_query(text)  # the cheap refusals need no worker
        blobs = {name: _ipc(table) for name, table in (relations or {}).items()}
        w = self._take()
        left = max(MIN_RUN_S, time_limit_s - max(0.0, waited_s) - (time.monotonic() - entered))
        request = {
            "sql": text,
            "time_limit_s": left,
            "max_rows": int(max_rows),
            "max_bytes": int(max_bytes),
            "relations": blobs,
        }
        t0 = time.perf_counter()
        reply = w.ask(request, left + time_limit_s * KILL_GRACE + KILL_GRACE_MIN_S, cancel)
        if reply is None:
            died = not w.alive()
            self._give_back(w, False)
            if cancel is not None and cancel.is_set():
                raise QueryInterrupted("the query was cancelled")
            if died:
                raise InvalidSql(
                    f"the query needed more memory than the console allows ({self.memory_limit}) "
                    "and was stopped; add a LIMIT, aggregate, or select fewer rows or columns"
                )
            raise QueryInterrupted(_too_long(time_limit_s))
        self._give_back(w, reply.get("healthy", True))
        if "error" in reply:
            if reply["kind"] == "QueryInterrupted":  # the worker knew only the time that was left
                raise QueryInterrupted(_too_long(time_limit_s))
            raise InvalidSql(reply["error"])
        table = pa.ipc.open_stream(reply["table"]).read_all()
        return QueryResult(table, reply["truncated"], (time.perf_counter() - t0) * 1e3, reply["cut"])

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._live -= len(idle)
        for w in idle:
            w.kill()


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _worker_main(fd: int, config: dict) -> None:
    conn = Connection(fd)
    try:
        con = duckdb.connect(
            config["path"],
            read_only=True,
            config={
                **sandbox_config(config["memory_limit"], config["temp_limit"]),
                "temp_directory": config["temp"],
                "threads": 2,
            },
        )
        database = con.execute("SELECT current_database()").fetchall()[0][0]
        run_query(con.cursor(), "SELECT 1", database=database)  # allocate what a query needs once
        vm_limit = None
        with contextlib.suppress(OSError, ValueError):
            vm_limit = _vm_bytes() + parse_bytes(config["memory_limit"]) + 256 * 2**20
            resource.setrlimit(resource.RLIMIT_AS, (vm_limit, vm_limit))
    except (duckdb.Error, CatalogError, OSError) as e:
        conn.send_bytes(pickle.dumps({"error": str(e).splitlines()[0]}))
        return
    conn.send_bytes(pickle.dumps({"ready": True, "vm_limit": vm_limit}))
    while True:
        try:
            request = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        reply = _answer(con, database, request)
        try:
            conn.send_bytes(pickle.dumps(reply, protocol=5))
        except MemoryError:
            conn.send_bytes(pickle.dumps(_memory_error(), protocol=5))


def _answer(con: duckdb.DuckDBPyConnection, database: str, request: dict) -> dict:
    try:
        relations = {name: pa.ipc.open_stream(blob).read_all() for name, blob in request["relations"].items()}
        cur = con.cursor()
        try:
            res = run_query(
                cur,
                request["sql"],
                database=database,
                time_limit_s=request["time_limit_s"],
                max_rows=request["max_rows"],
                max_bytes=request["max_bytes"],
                relations=relations,
            )
        finally:
            cur.close()
        return {"table": _ipc(res.table), "truncated": res.truncated, "cut": res.cut, "time_ms": res.time_ms}
    except InvalidSql as e:
        return {"error": str(e), "kind": type(e).__name__}
    except MemoryError:
        return {**_memory_error(), "healthy": False}


def _memory_error() -> dict:
    return {
        "error": "the query needed more memory than the console allows and was stopped; add a LIMIT, "
        "aggregate, or select fewer rows or columns",
        "kind": "InvalidSql",
    }
