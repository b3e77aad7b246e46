"""The catalog: one DuckDB file holding images, their 32-byte codes in block order and the
block zone maps. ``Catalog`` is the door to everything: the CLI, the web app and the tests
all go through it."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from . import layout, query, schema
from .boxes import CODE_COLUMNS, N_DIMS, BoxSet
from .errors import (
    CatalogError,
    CatalogNotFound,
    CorruptCatalog,
    InvalidArgument,
    InvalidCodes,
    InvalidSql,
    ReadOnlyError,
    StaleIndexError,
    UnknownIds,
)
from .head import Head
from .integrity import (
    REINDEX,
    check_tables,
    damage_error,
    decode_setting,
    file_damage,
    reading,
    tiling_problem,
)
from .progress import Progress
from .quantize import Quantizer
from .refine import DEFAULT_SAMPLED_NEGATIVES, Result
from .resources import sql_text
from .sandbox import QueryResult, check_query, run_query, sandbox_config
from .sqlnames import RESERVED_COLUMNS, is_metadata_name, literal, quote_ident
from .store import transaction

MAX_K = 100_000
MAX_QUERY_CHARS = 1000
# Temp files a sandboxed catalog's queries may spill, all together.
SANDBOX_TEMP_LIMIT = "256MB"


@dataclass
class SelectResult:
    """Rows selected by a box set.

    ids : int64, ranked by votes (descending), then position in block order
    votes : int32, member votes per id
    sql : a complete SELECT (first column the image id) that returns the same rows
    stats : time per phase (ms), blocks touched, rows tested, ...
    """

    ids: np.ndarray
    votes: np.ndarray
    sql: str
    stats: dict

    def to_json(self) -> dict:
        return {"ids": self.ids.tolist(), "votes": self.votes.tolist(), "sql": self.sql, "stats": self.stats}


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
                f"changing it needs the file to itself: stop that process, then run this again ({detail})"
            )
    return (
        f"{path} is open for writing in another process (an ingest, index or train-head still running?); "
        f"DuckDB allows one writer or many readers: wait for it to finish, then run this again ({detail})"
    )


class Catalog:
    """A clip-branches catalog file. Open with :meth:`create` or :meth:`open`; use as a context
    manager or call :meth:`close` to release the file for other processes."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, read_only: bool):
        self._con = con
        self.path = path
        self.read_only = read_only
        self._index: query.BlockIndex | None = None
        self._index_version: int | None = None
        self._pool: tuple | None = None
        self._subsets: tuple | None = None
        self._settings: dict | None = None
        self._query_model: tuple | None = None
        # Guards lazy loads and the connection, so threads can share one read-only catalog.
        self._lock = threading.RLock()
        self._encoder = None
        self._text_encoder = None

    # -- lifecycle ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike) -> Catalog:
        """Create a new, empty catalog file at ``path``; fails if the file exists.

        The file is built under a temporary name beside ``path`` and renamed into place once
        its schema and settings are written: a process killed halfway leaves no file at ``path``
        that the next run would refuse as not a catalog."""
        path = Path(path)
        if path.exists():
            raise CatalogError(f"{path} already exists; open it with Catalog.open or choose a new path")
        if not path.parent.is_dir():
            raise CatalogNotFound(f"directory {path.parent} does not exist")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
        try:
            con = duckdb.connect(str(tmp))
            try:
                schema.migrate(con)
                cls(con, tmp, read_only=False)._set_settings(
                    {
                        "dims": N_DIMS,
                        "data_version": 0,
                        "index": None,
                        "encoder": None,
                        "quantizer": None,
                        "created_at": _now(),
                    }
                )
                con.execute("CHECKPOINT")
            finally:
                con.close()
            os.replace(tmp, path)
        finally:
            for p in (tmp, Path(f"{tmp}.wal")):
                p.unlink(missing_ok=True)
        return cls(duckdb.connect(str(path)), path, read_only=False)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        read_only: bool = False,
        *,
        sandbox: bool = False,
        memory_limit: str = "1GB",
    ) -> Catalog:
        """Open an existing catalog. Writable catalogs with an older schema are migrated.

        A file that is no DuckDB database, is truncated or damaged where opening reads it, or
        lacks a table or column of its schema version raises :class:`CorruptCatalog` before
        anything is written to it; damage elsewhere raises it from the first query that reads it.

        ``sandbox`` (read-only only) is for serving untrusted SQL: DuckDB then reads no files
        or URLs but the catalog (no ``read_csv``, ``COPY``, ``ATTACH``, extension loading),
        queries share ``memory_limit``, and the configuration is locked against ``SET``.
        """
        path = Path(path)
        if not path.is_file():
            raise CatalogNotFound(
                f"no catalog at {path}; make one from your images with `clip-branches add {path} "
                "FOLDER` (or `ingest`), or an empty one with `clip-branches create`"
            )
        config = {}
        if sandbox:
            if not read_only:
                raise CatalogError("a sandboxed catalog must be opened read-only")
            config = sandbox_config(memory_limit, SANDBOX_TEMP_LIMIT)
        try:
            con = duckdb.connect(str(path), read_only=read_only, config=config)
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
                version = schema.current_version(con)
                if version is not None and 1 <= version <= schema.latest_version():
                    check_tables(con, path, version)  # before check_version migrates anything
                schema.check_version(con, str(path), read_only)
        except BaseException:
            con.close()
            raise
        return cls(con, path, read_only)

    def close(self) -> None:
        """Release the DuckDB file; further calls on this object fail."""
        if self._con is not None:
            self._con.close()
            self._con = None
        self._index = None

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._con is None else ("read-only" if self.read_only else "writable")
        return f"Catalog({str(self.path)!r}, {state})"

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise CatalogError("the catalog is closed; open it again with Catalog.open")
        return self._con

    def connection_count(self) -> int:
        """DuckDB connections open to this catalog's database in this process, as DuckDB counts
        them: the catalog's own connection plus every cursor not yet closed (one per query in
        flight), and other ``Catalog`` objects open on the same file. 0 once closed."""
        with self._lock:
            if self._con is None:
                return 0
            return int(self._con.execute("SELECT count FROM duckdb_connection_count()").fetchall()[0][0])

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyError(f"{self.path} is open read-only; open it with read_only=False to change it")

    # -- settings ----------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Every setting, decoded from JSON. A read-only catalog reads them once: nothing can
        change them while it is open, and the hot paths then never touch the connection."""
        if self.read_only:
            with self._lock:
                if self._settings is None:
                    self._settings = self._read_settings()
                return copy.deepcopy(self._settings)
        return self._read_settings()

    def _read_settings(self) -> dict[str, Any]:
        with self._lock, reading(self.path):
            rows = self.con.execute("SELECT key, value FROM settings ORDER BY key").fetchall()
        return {k: decode_setting(self.path, k, v) for k, v in rows}

    def setting(self, key: str, default: Any = None) -> Any:
        """One setting, decoded from JSON; :class:`CorruptCatalog` if it does not hold what it must
        (see :data:`engine.integrity.SETTING_CHECKS`). A read-only catalog checks every setting on first use."""
        if self.read_only:
            with self._lock:
                if self._settings is None:
                    self._settings = self._read_settings()
                return copy.deepcopy(self._settings.get(key, default))
        with reading(self.path):
            rows = self.con.execute("SELECT value FROM settings WHERE key = ?", [key]).fetchall()
        return default if not rows else decode_setting(self.path, key, rows[0][0])

    def _set_settings(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            self.con.execute("INSERT OR REPLACE INTO settings VALUES (?, ?)", [key, json.dumps(value)])

    def __len__(self) -> int:
        return int(self.con.execute("SELECT count(*) FROM codes").fetchall()[0][0])

    # -- writing -----------------------------------------------------------------------------
    def add_codes(
        self,
        codes: np.ndarray,
        ids: Sequence[int] | np.ndarray | None = None,
        metadata: Mapping[str, Sequence] | pa.Table | None = None,
    ) -> np.ndarray:
        """Append images with their codes; returns their ids (int64).

        ``codes`` is uint8 (n, 32). ``ids`` default to consecutive ids after the largest one in
        the catalog. ``metadata`` maps column names (``uri``, ``label``, ...) to n values each;
        new columns are added to ``images``. All rows land in one transaction or none do.
        Rows added after an index build are scanned through zone maps in insertion order
        until the next :meth:`build_index`.
        """
        self._check_writable()
        codes = _check_codes(codes)
        n = codes.shape[0]
        meta = _check_metadata(metadata, n)
        con = self.con
        n_rows = len(self)
        if ids is None:
            start = con.execute("SELECT coalesce(max(id) + 1, 0) FROM images").fetchall()[0][0]
            ids = np.arange(start, start + n, dtype=np.int64)
        else:
            ids = _check_ids(ids, "ids")
            if len(ids) != n:
                raise InvalidCodes(f"{len(ids)} ids for {n} codes; give one id per row")
            if len(np.unique(ids)) != n:
                raise InvalidCodes("ids contain duplicates")
        if n == 0:
            return ids
        table = pa.table(
            {
                "pos": np.arange(n_rows, n_rows + n, dtype=np.int64),
                "id": ids,
                **{c: codes[:, d] for d, c in enumerate(CODE_COLUMNS)},
            }
        )
        new = {"_new_codes": table}
        if meta is not None:
            new["_new_meta"] = meta.append_column("id", pa.array(ids))
        try:
            with transaction(con, **new):
                clash = con.execute(
                    "SELECT i.id FROM images i JOIN _new_codes n USING (id) ORDER BY 1 LIMIT 10"
                ).fetchall()
                if clash:
                    raise InvalidCodes(f"ids already in the catalog: {', '.join(str(r[0]) for r in clash)}")
                meta_cols = self._ensure_metadata_columns(meta)
                if meta is not None:
                    cols = ", ".join(quote_ident(c) for c in meta_cols)
                    con.execute(f"INSERT INTO images (id, {cols}) SELECT id, {cols} FROM _new_meta")
                else:
                    con.execute("INSERT INTO images (id) SELECT id FROM _new_codes")
                con.execute("INSERT INTO codes BY NAME SELECT * FROM _new_codes")
                self._bump_data_version()
        except duckdb.Error as e:
            raise InvalidCodes(f"could not add rows: {str(e).splitlines()[0]}") from None
        if meta is not None and meta_cols:
            schema.refresh_views(con)
        return ids

    def image_columns(self) -> list[str]:
        """Names of the ``images`` table's columns (``id``, ``uri``, metadata, ...), in order."""
        with self._lock:
            rows = self.con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = 'images' AND schema_name = 'main' "
                "ORDER BY column_index"
            ).fetchall()
        return [r[0] for r in rows]

    def _ensure_metadata_columns(self, meta: pa.Table | None) -> list[str]:
        if meta is None:
            return []
        existing = set(self.image_columns())
        types = dict(self.con.execute("SELECT column_name, column_type FROM (DESCRIBE _new_meta)").fetchall())
        types.pop("id")
        for name in meta.column_names:
            if name not in existing:
                dtype = types[name] if types[name] != '"NULL"' else "VARCHAR"
                self.con.execute(f"ALTER TABLE images ADD COLUMN {quote_ident(name)} {dtype}")
        return [c for c in meta.column_names if c != "id"]

    def _bump_data_version(self) -> None:
        try:
            version = int(self.setting("data_version", 0))
        except CorruptCatalog:  # a damaged version is written afresh: readers only compare it for equality
            version = 0
        self._set_settings({"data_version": version + 1})
        self._index = None

    def _drop_index(self) -> None:
        """Forget the block index (inside a write transaction): selection then scans every row
        through insertion-order zone maps until the next :meth:`build_index`."""
        self.con.execute("DELETE FROM blocks")
        self._set_settings({"index": None})
        self._bump_data_version()

    @contextlib.contextmanager
    def _transaction(self, **tables: pa.Table):
        """One write transaction with ``tables`` registered under their names for its duration;
        rolled back, and the in-memory index forgotten, if anything in it raises."""
        try:
            with transaction(self.con, **tables) as con:
                yield con
        except BaseException:
            self._index = None
            raise

    def replace_codes(self, codes: np.ndarray, ids: Sequence[int] | np.ndarray) -> None:
        """Make ``codes`` the catalog's codes: row i is the code of image ``ids[i]``.

        Every id must already be in ``images``; images left out have no code afterwards. The
        old codes and block index are replaced in one transaction (call :meth:`build_index`
        next to sort the new ones).
        """
        self._check_writable()
        codes, ids = _check_replacement(codes, ids)
        con = self.con
        table = pa.table(
            {
                "pos": np.arange(len(ids), dtype=np.int64),
                "id": ids,
                **{c: codes[:, d] for d, c in enumerate(CODE_COLUMNS)},
            }
        )
        with self._transaction(_new_codes=table):
            _check_known(con, "_new_codes")
            con.execute("DELETE FROM codes")
            con.execute("INSERT INTO codes BY NAME SELECT * FROM _new_codes")
            self._drop_index()

    # -- head and quantizer ------------------------------------------------------------------
    def store_head(self, head: Head, quantizer: Quantizer) -> str:
        """Store the head's weights and the quantizer fitted on its outputs; returns the head's
        sha256. The codes are stale until the next index build from embeddings."""
        self._check_writable()
        blob = head.to_bytes()
        digest = hashlib.sha256(blob).hexdigest()
        con = self.con
        with self._transaction():
            con.execute("DELETE FROM artifacts WHERE name = 'head'")
            con.execute("INSERT INTO artifacts (name, sha256, data) VALUES ('head', ?, ?)", [digest, blob])
            self._set_settings(
                {
                    "head": {
                        "sha256": digest,
                        "kind": head.kind,
                        "in_dim": head.in_dim,
                        "out_dim": head.out_dim,
                        "info": head.info,
                    },
                    "quantizer": quantizer.to_json(),
                }
            )
        return digest

    def head(self) -> Head:
        """The stored head, checked against its recorded checksum."""
        meta = self.setting("head")
        with reading(self.path):
            rows = self.con.execute("SELECT sha256, data FROM artifacts WHERE name = 'head'").fetchall()
        if meta is None or not rows:
            raise CatalogError(f"{self.path} has no trained head; run `clip-branches train-head {self.path}`")
        digest, blob = rows[0][0], bytes(rows[0][1])
        if hashlib.sha256(blob).hexdigest() != digest or digest != meta.get("sha256"):
            raise CorruptCatalog(
                f"the head stored in {self.path} does not match its checksum; train it again"
            )
        return Head.from_bytes(blob)

    def quantizer(self) -> Quantizer:
        obj = self.setting("quantizer")
        if obj is None:
            raise CatalogError(f"{self.path} has no quantizer; run `clip-branches train-head {self.path}`")
        return Quantizer.from_json(obj)

    def remove(self, ids: Sequence[int] | np.ndarray) -> int:
        """Delete images and their codes; returns how many were removed (unknown ids are ignored).

        Removing codes drops the block index (its row ranges no longer hold), so selections
        scan every row through insertion-order zone maps until the next :meth:`build_index`.
        """
        self._check_writable()
        ids = _check_ids(ids, "ids")
        if len(ids) == 0:
            return 0
        con = self.con
        with self._transaction(_gone=pa.table({"id": ids})):
            n_images = con.execute(
                "SELECT count(*) FROM images WHERE id IN (SELECT id FROM _gone)"
            ).fetchall()[0][0]
            n_codes = con.execute("SELECT count(*) FROM codes WHERE id IN (SELECT id FROM _gone)").fetchall()[
                0
            ][0]
            con.execute("DELETE FROM images WHERE id IN (SELECT id FROM _gone)")
            if n_codes:
                con.execute("DELETE FROM codes WHERE id IN (SELECT id FROM _gone)")
                # keep positions dense (0..n-1) so that exports and the tail blocks stay simple
                con.execute(
                    "UPDATE codes SET pos = r.new_pos FROM (SELECT id, row_number() OVER (ORDER BY pos) - 1 "
                    "AS new_pos FROM codes) AS r WHERE codes.id = r.id"
                )
                self._drop_index()
        return int(n_images)

    @property
    def side_dir(self) -> Path:
        """The folder beside the catalog file for raw embeddings and thumbnails (``<file>.d``)."""
        return self.path.parent / f"{self.path.name}.d"

    def build_index(
        self,
        block_size: int = layout.DEFAULT_BLOCK_SIZE,
        *,
        codes: np.ndarray | None = None,
        ids: Sequence[int] | np.ndarray | None = None,
        index_info: Mapping[str, Any] | None = None,
        progress: Progress = None,
    ) -> dict:
        """Sort the codes into k-d block order and write the zone maps.

        Idempotent: rows start from id order, so the result does not depend on the current
        physical order. ``codes`` and ``ids`` (as for :meth:`replace_codes`) replace the
        catalog's codes in the transaction that writes their index, so an interrupted build
        leaves the old codes and index, never new codes without one. ``index_info``: more
        entries for the index settings. ``progress`` (see :mod:`engine.progress`) counts steps:
        loading the stored codes, each k-d level, each written chunk, the commit
        (:func:`engine.layout.build_steps`). Returns timing stats.
        """
        from .progress import reporter

        self._check_writable()
        layout.check_block_size(block_size)
        if (codes is None) != (ids is None):
            raise InvalidCodes("give codes and ids together, or neither to sort the stored codes")
        from .learn.models import feature_subsets as default_subsets

        with reporter("index", "steps", progress) as report:
            t0 = time.perf_counter()
            if codes is None:
                cols, ids = self._load_codes()
            else:
                codes, ids = _check_replacement(codes, ids)
                cols = np.ascontiguousarray(codes.T)
            n = len(ids)
            total = layout.build_steps(n, block_size, load=codes is None)
            done = int(codes is None)
            report(done, total)
            t1 = time.perf_counter()
            perm, starts = layout.kd_order(
                cols,
                block_size=block_size,
                initial=np.argsort(ids, kind="stable"),
                on_level=lambda level: report(done + level, total),
            )
            done += layout.n_levels(n, block_size)
            cols = np.ascontiguousarray(cols[:, perm])
            ids = ids[perm]
            blocks = layout.zone_maps(cols, starts)
            t2 = time.perf_counter()
            con = self.con
            codes_tbl = pa.table(
                {
                    "pos": np.arange(n, dtype=np.int64),
                    "id": ids,
                    **{c: cols[d] for d, c in enumerate(CODE_COLUMNS)},
                }
            )
            with transaction(
                con, _sorted=codes_tbl, _blocks=_blocks_table(blocks), _chunk=codes_tbl.slice(0, 0)
            ):
                if codes is not None:
                    _check_known(con, "_sorted")
                con.execute("DELETE FROM codes")
                for s in range(0, max(n, 1), layout.WRITE_CHUNK_ROWS):
                    # one statement per chunk, for progress; the rows land in pos order all the same
                    con.register("_chunk", codes_tbl.slice(s, layout.WRITE_CHUNK_ROWS))
                    con.execute("INSERT INTO codes BY NAME SELECT * FROM _chunk")
                    done += 1
                    report(done, total)
                con.execute("DELETE FROM blocks")
                con.execute("INSERT INTO blocks BY NAME SELECT * FROM _blocks")
                index = {
                    "block_size": block_size,
                    "n_blocks": blocks.n_blocks,
                    "indexed_rows": n,
                    "projections": [list(range(N_DIMS))],
                    "split": "max-variance median",
                    "feature_subsets": [list(f) for f in default_subsets()],
                    "built_at": _now(),
                    **(index_info or {}),
                }
                self._set_settings({"index": index})
                self._bump_data_version()
            con.execute("CHECKPOINT")
            report(total, total)
        t3 = time.perf_counter()
        self._index = query.BlockIndex.from_arrays(cols, ids, blocks, block_size)
        self._index_version = int(self.setting("data_version"))
        return {
            "rows": n,
            "blocks": blocks.n_blocks,
            "time_load_s": t1 - t0,
            "time_sort_s": t2 - t1,
            "time_write_s": t3 - t2,
        }

    def compact(self, *, progress: Progress = None) -> dict:
        """Rewrite the file without the space freed by deletes and index rebuilds.

        DuckDB reuses freed blocks but never shrinks its file, so a catalog that was loaded and
        then sorted holds its codes twice over until compacted. The copy is made beside the
        file and renamed over it; this object must be the only one holding the file.
        ``progress`` (see :mod:`engine.progress`) counts the rows copied, over all tables.
        """
        from . import progress as progress_mod

        self._check_writable()
        before = self.path.stat().st_size
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
        with progress_mod.reporter("compact", "rows", progress) as report:
            report(0, total)
            con.execute(f"ATTACH {literal(str(tmp))} AS _compact")
            try:
                with reading(self.path):  # every row is read: damage anywhere shows here
                    con.execute(f"COPY FROM DATABASE {quote_ident(db)} TO _compact (SCHEMA)")
                    done = 0
                    for schema_name, table, rows in tables:
                        name = f"{quote_ident(schema_name)}.{quote_ident(table)}"
                        with progress_mod.track_statement(con, report, done, int(rows), total):
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
            report(total, total)
        return {"bytes_before": before, "bytes_after": self.path.stat().st_size}

    # -- reading -----------------------------------------------------------------------------
    def _load_codes(self) -> tuple[np.ndarray, np.ndarray]:
        """All codes in pos order: uint8 (32, n) column-major and int64 ids."""
        with reading(self.path):
            tbl = self.con.sql(sql_text("load_codes")).to_arrow_table()
        n = tbl.num_rows
        cols = np.empty((N_DIMS, n), dtype=np.uint8)
        for d, c in enumerate(CODE_COLUMNS):
            cols[d] = tbl.column(c).to_numpy()
        return cols, tbl.column("id").to_numpy().astype(np.int64, copy=False)

    def _load_blocks(self, n_rows: int, index: Mapping[str, Any]) -> layout.Blocks | None:
        """The zone maps of the last index build; CorruptCatalog unless they tile the first rows
        of the ``n_rows`` codes as the ``index`` settings record (the scan kernels trust them)."""
        tbl = self.con.sql(sql_text("load_blocks")).to_arrow_table()
        self._check_tiling(tbl, n_rows, index)
        if tbl.num_rows == 0:
            return None
        start = np.append(tbl.column("row_start").to_numpy(), tbl.column("row_end").to_numpy()[-1])
        lo = np.stack([tbl.column(f"min_{c}").to_numpy() for c in CODE_COLUMNS], axis=1)
        hi = np.stack([tbl.column(f"max_{c}").to_numpy() for c in CODE_COLUMNS], axis=1)
        return layout.Blocks(start.astype(np.int64), lo.astype(np.uint8), hi.astype(np.uint8))

    def _check_tiling(self, blocks: pa.Table, n_rows: int, index: Mapping[str, Any]) -> None:
        """CorruptCatalog unless ``blocks`` (``block_id``, ``row_start``, ``row_end``, in block
        order) tile the first rows of the ``n_rows`` codes as the ``index`` settings record."""
        problem = tiling_problem(
            *(blocks.column(c).to_numpy() for c in ("block_id", "row_start", "row_end")), n_rows, index
        )
        if problem:
            raise CorruptCatalog(
                f"{self.path}: the stored block index does not fit the codes: {problem}; "
                f"{REINDEX.format(path=self.path)}"
            )

    def block_index(self) -> query.BlockIndex:
        """The in-memory scan index, loaded on first use and reloaded after any change.

        A read-only catalog cannot change while it is open (DuckDB refuses a writer while
        readers hold the file), so its index is never checked again once loaded."""
        if self._index is not None and self.read_only:
            return self._index
        with self._lock, reading(self.path):
            return self._load_index()

    def _load_index(self) -> query.BlockIndex:
        version = int(self.setting("data_version", 0))
        if self._index is None or self._index_version != version:
            cols, ids = self._load_codes()
            index = self.setting("index") or {}
            blocks = self._load_blocks(cols.shape[1], index)
            block_size = int(index.get("block_size", layout.DEFAULT_BLOCK_SIZE))
            self._index = query.BlockIndex.from_arrays(cols, ids, blocks, block_size)
            self._index.positions(np.zeros(0, np.int64))  # build the id lookup now, not on a request
            self._index_version = version
        return self._index

    def index_status(self) -> dict:
        """Rows, indexed rows and blocks, and what makes the index ``stale``:

        - ``unindexed_rows``: codes added after the last build (scanned, but not pruned well);
        - ``images_without_codes``: ingested images that have no codes yet (never returned);
        - ``stale_codes``: images re-embedded after their codes were computed (returned at
          their old position).

        The last two clear with ``clip-branches index``. CorruptCatalog when the stored blocks
        do not tile the indexed rows."""
        index = self.setting("index")
        indexed = int(index["indexed_rows"]) if index else 0
        watermark = (index or {}).get("embedding_part_max")
        stale_codes = 0
        with reading(self.path):
            n_rows = len(self)
            self._check_tiling(
                self.con.sql(
                    "SELECT block_id, row_start, row_end FROM blocks ORDER BY block_id"
                ).to_arrow_table(),
                n_rows,
                index or {},
            )
            without = int(
                self.con.execute(
                    "SELECT count(*) FROM images i WHERE NOT EXISTS (SELECT 1 FROM codes c WHERE c.id = i.id)"
                ).fetchall()[0][0]
            )
            if watermark is not None:
                stale_codes = int(
                    self.con.execute(
                        "SELECT count(*) FROM images i JOIN codes c USING (id) WHERE i.embedding_part > ?",
                        [int(watermark)],
                    ).fetchall()[0][0]
                )
        return {
            "rows": n_rows,
            "indexed_rows": indexed,
            "unindexed_rows": n_rows - indexed,
            "images_without_codes": without,
            "stale_codes": stale_codes,
            "stale": n_rows != indexed or without > 0 or stale_codes > 0,
            "index": index,
        }

    def select(self, boxes: BoxSet | Mapping | Sequence, min_votes: int = 1) -> SelectResult:
        """Every image inside the box set, with its member votes.

        Rows with fewer than ``min_votes`` votes are left out (default 1: the plain union), and
        blocks that fewer than ``min_votes`` members reach are skipped whole.
        """
        boxset = boxes if isinstance(boxes, BoxSet) else BoxSet.from_json(boxes)
        if boxset.n_dims != N_DIMS:
            raise CatalogError(f"box set has {boxset.n_dims} dims; this catalog has {N_DIMS}")
        if isinstance(min_votes, bool) or not isinstance(min_votes, (int, np.integer)):
            raise InvalidArgument(f"min_votes must be an integer, got {min_votes!r}")
        t0 = time.perf_counter()
        index = self.block_index()
        t1 = time.perf_counter()
        sel = query.select(index, boxset, int(min_votes))
        sel.stats["time_load_ms"] = (t1 - t0) * 1e3
        return SelectResult(sel.ids, sel.votes, boxset.to_sql("codes", min_votes=int(min_votes)), sel.stats)

    # -- search by classification -----------------------------------------------------------
    def feature_subsets(self) -> list[tuple[int, ...]]:
        """The feature subsets learned boxes may constrain, as recorded by the index build."""

        self.block_index()
        with self._lock:
            return self._load_subsets()

    def _load_subsets(self) -> list[tuple[int, ...]]:
        from .learn.models import feature_subsets

        if self._subsets is None or self._subsets[0] != self._index_version:
            recorded = (self.setting("index") or {}).get("feature_subsets")
            self._subsets = (
                self._index_version,
                [tuple(s) for s in recorded] if recorded else feature_subsets(),
            )
        return self._subsets[1]

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of ``ids`` in the block index; UnknownIds for any id not there."""
        pos = self.block_index().positions(ids)
        if (pos < 0).any():
            raise UnknownIds(np.asarray(ids)[pos < 0].tolist())
        return pos

    def refine(
        self,
        positives,
        negatives=(),
        model="ensemble",
        sampled_negatives: int = DEFAULT_SAMPLED_NEGATIVES,
        negative_weight: float = 1.0,
        random_state=None,
        filter_sampled: bool = True,
        guide: bool = True,
        suggestions: int = 60,
    ) -> Result:
        """Train ``model`` on the labelled ids plus sampled negatives and return every image of
        the catalog it classifies as positive, ranked by votes, then by distance to the
        positives' mean code, then block position, with up to ``suggestions`` unlabelled ids to
        label next (``Result.suggestions``).

        ``model`` is ``"ensemble"`` (25 decision branch models voting), ``"branch"``, ``"tree"``
        or ``"forest"`` (scikit-learn models turned into boxes), or an unfitted box classifier
        of :mod:`engine.learn`. Sampled negatives come from a fixed random pool of catalog rows,
        skipping labelled ids, and (with ``filter_sampled``) those that look more like the
        positives than like the catalog (:func:`engine.refine.reliable_negatives`); user
        negatives weigh ``negative_weight`` times a sampled one. With ``guide`` (the default) a
        linear guide fitted on that set relabels the sample, adds pool rows it scores positive
        to the positives and sets the ensemble's vote threshold (:mod:`engine.guide`);
        ``guide=False`` trains on the labels and the sample alone, as the original system did.
        Works on read-only catalogs.
        """
        from . import refine as rf

        model, sampled_negatives, negative_weight = rf.check_options(
            model, sampled_negatives, negative_weight
        )
        random_state = rf.check_random_state(random_state)
        n_suggest = rf.check_suggestions(suggestions)
        pos, neg = rf.check_labels(positives, negatives)
        t0 = time.perf_counter()
        index = self.block_index()
        train = self._training_set(pos, neg, sampled_negatives, negative_weight, filter_sampled, bool(guide))
        t1 = time.perf_counter()
        estimator = rf.fit_round(train, index.cols, model, self.feature_subsets(), random_state)
        min_votes = int(estimator.min_votes_)
        n_members = int(getattr(estimator, "n_estimators", 1))
        t2 = time.perf_counter()
        center = rf.center_code(train.pos_codes)
        sel = query.select(index, estimator.boxes_, min_votes, center=center)
        n_results = len(sel.ids)
        t3 = time.perf_counter()
        suggested = rf.suggest(index, sel, min_votes, n_members, train, np.concatenate([pos, neg]), n_suggest)
        t4 = time.perf_counter()
        sql = estimator.boxes_.to_sql("codes", min_votes=min_votes, center=center.tolist())
        stats = {
            "model": rf.model_name(model),
            "positives": int(len(pos)),
            "negatives": int(len(neg)),
            "sampled_negatives": train.n_sampled,
            "sampled_dropped": train.n_dropped,
            "negative_weight": negative_weight,
            "guided": train.guided,
            "pseudo_positives": train.n_pseudo,
            "guide_groups": train.n_groups,
            "held_guide_positives": train.held_positives,
            "boxes": len(estimator.boxes_),
            "members": n_members,
            "min_votes": min_votes,
            "time_sample_ms": (t1 - t0) * 1e3,
            "time_train_ms": (t2 - t1) * 1e3,
            "time_query_ms": (t3 - t2) * 1e3,
            "time_suggest_ms": (t4 - t3) * 1e3,
            "time_total_ms": (t4 - t0) * 1e3,
            "rows": index.n_rows,
            "blocks": sel.stats["blocks"],
            "blocks_touched": sel.stats["blocks_touched"],
            "rows_touched": sel.stats["rows_in_touched_blocks"],
            "share_touched": sel.stats["rows_in_touched_blocks"] / max(index.n_rows, 1),
            "results": n_results,
            "suggestions": int(len(suggested)),
        }
        return rf.Result(
            sel.ids[:n_results], sel.votes[:n_results].astype(np.int64), sql, stats, estimator, suggested
        )

    def training_set(
        self,
        positives,
        negatives=(),
        sampled_negatives: int = DEFAULT_SAMPLED_NEGATIVES,
        negative_weight: float = 1.0,
        filter_sampled: bool = True,
        guide: bool = False,
    ):
        """The training set a refine round with these labels and options fits its model on
        (:class:`engine.refine.Training`: codes ``X``, labels ``y``, weights ``w``), for
        training other models on exactly what ``refine`` sees. ``guide`` as in :meth:`refine`
        (default off here: the labels and the sample alone)."""
        from . import refine as rf

        _, sampled_negatives, negative_weight = rf.check_options(
            "ensemble", sampled_negatives, negative_weight
        )
        pos, neg = rf.check_labels(positives, negatives)
        return self._training_set(pos, neg, sampled_negatives, negative_weight, filter_sampled, bool(guide))

    def _training_set(
        self,
        pos: np.ndarray,
        neg: np.ndarray,
        sampled_negatives: int,
        negative_weight: float,
        filter_sampled: bool,
        guide: bool,
    ):
        from . import refine as rf

        index = self.block_index()
        if index.n_rows == 0:
            raise UnknownIds(pos.tolist())
        pos_rows = self._positions(pos)
        pool, pool_codes = self._negative_pool(sampled_negatives)
        return rf.assemble(
            index.cols,
            pos_rows,
            self._positions(neg),
            pool,
            sampled_negatives,
            negative_weight,
            filter_sampled,
            guide,
            pool_codes=pool_codes,
            starts=index.blocks.start,
        )

    def _negative_pool(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The fixed sampling pool's row positions and their codes (uint8 (n, 32)), kept for the
        catalog state: gathering 16k random rows of a 10M-row index costs milliseconds a round."""
        from . import refine as rf

        index = self.block_index()
        key = (self._index_version, index.n_rows, max(size, rf.POOL_SIZE))
        with self._lock:
            if self._pool is None or self._pool[0] != key:
                pool = rf.negative_pool(index.n_rows, size)
                self._pool = (key, pool, np.ascontiguousarray(index.cols[:, pool].T))
            return self._pool[1], self._pool[2]

    def search(self, text: str | None = None, *, image=None, id: int | None = None, k: int = 60) -> Result:
        """The ``k`` images nearest to a text query, an image (path, bytes or PIL image) or the
        image ``id``, by exact squared L2 distance between 32-byte codes (ties: block position).

        Text and images go through the catalog's encoder, head and quantizer; ``id`` uses the
        image's own code. Works on read-only catalogs.
        """
        from . import knn
        from . import refine as rf

        given = [name for name, v in (("text", text), ("image", image), ("id", id)) if v is not None]
        if len(given) != 1:
            raise InvalidArgument("give exactly one of text=, image= or id=")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k must be an integer in 1..{MAX_K}, got {k!r}")
        t0 = time.perf_counter()
        index = self.block_index()
        if id is not None:
            code = index.cols[:, self._positions(rf.parse_ids([id], "id"))[0]].astype(np.uint8)
            kind = "id"
        else:
            code = self._encode_query(text, image)
            kind = "text" if text is not None else "image"
        t1 = time.perf_counter()
        pos, dist = knn.topk(index.cols, code, int(k))
        t2 = time.perf_counter()
        from .boxes import distance_sql

        sql = (
            f"SELECT id, {distance_sql(code.tolist())} AS dist FROM codes\nORDER BY dist, pos\nLIMIT {int(k)}"
        )
        stats = {
            "query": kind,
            "k": int(k),
            "rows": index.n_rows,
            "rows_touched": index.n_rows,
            "share_touched": 1.0 if index.n_rows else 0.0,
            "results": int(len(pos)),
            "time_encode_ms": (t1 - t0) * 1e3,
            "time_query_ms": (t2 - t1) * 1e3,
            "time_total_ms": (t2 - t0) * 1e3,
        }
        return rf.Result(index.ids[pos], dist.astype(np.int64), sql, stats)

    def _head_and_quantizer(self) -> tuple[Head, Quantizer]:
        """The head and quantizer for queries; a read-only catalog loads them once."""
        with self._lock:
            if self._query_model is None or not self.read_only:
                self._query_model = (self.head(), self.quantizer())
            return self._query_model

    def encoder(self):
        """The catalog's encoder, loaded once per Catalog object."""
        with self._lock:
            return self._load_encoder()

    def _load_encoder(self):
        if self._encoder is None:
            from .encoders import load_encoder

            self._encoder = load_encoder(self._encoder_id())
        return self._encoder

    def _encoder_id(self) -> str:
        enc_id = self.setting("encoder")
        if not enc_id:
            raise CatalogError(f"{self.path} records no encoder, so it cannot encode queries; search by id=")
        return enc_id

    def _query_encoder(self, text: bool):
        """The encoder for a query; a text query needs only the text side (no torch for the demo's)."""
        with self._lock:
            if not text or self._encoder is not None:
                return self._load_encoder()
            if self._text_encoder is None:
                from .encoders import load_text_encoder

                self._text_encoder = load_text_encoder(self._encoder_id())
            return self._text_encoder

    def _encode_query(self, text, image) -> np.ndarray:
        """uint8 (32,) code of a text or image query: encoder, head, quantizer."""
        enc = self._query_encoder(text=text is not None)
        head, quant = self._head_and_quantizer()
        if text is not None:
            if not isinstance(text, str):
                raise InvalidArgument(f"text must be a string, got {type(text).__name__}")
            text = text.strip()
            if not text:
                raise InvalidArgument("the text query is empty; type what to look for")
            if len(text) > MAX_QUERY_CHARS:
                raise InvalidArgument(
                    f"the text query has {len(text)} characters; the limit is {MAX_QUERY_CHARS}"
                )
            emb = enc.encode_texts([text])
        else:
            from PIL import Image

            from .imageio import UnreadableImage, decode_query_image

            if isinstance(image, Image.Image):
                pil = image.convert("RGB")
            else:
                try:
                    pil = decode_query_image(image)
                except UnreadableImage as e:
                    raise InvalidArgument(f"the query image cannot be used: {e.reason}") from None
            emb = enc.encode_images([pil])
        emb = np.asarray(emb, dtype=np.float32)
        if emb.shape[1] != head.in_dim:
            raise StaleIndexError(
                f"the encoder gives {emb.shape[1]}-d vectors but the head expects {head.in_dim}; "
                f"run `clip-branches train-head {self.path}` again"
            )
        return quant.encode(head.apply(emb))[0]

    def codes(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Codes of ``ids``: uint8 (len(ids), 32) in the order of ``ids``."""
        ids = _check_ids(ids, "ids")
        return np.ascontiguousarray(self.block_index().cols[:, self._positions(ids)].T)

    def sql(self, text: str, params: Sequence | Mapping | None = None) -> pa.Table:
        """Run one read-only query (SELECT, VALUES, ...) and return an Arrow table.

        Anything that is not a single query statement is refused with :class:`InvalidSql`, and
        the query runs in a transaction that is rolled back.
        """
        check_query(text)
        with self._lock:
            cur = self.con.cursor()
        try:
            cur.execute("BEGIN TRANSACTION")
            try:
                return cur.sql(text, params=params).to_arrow_table()
            except duckdb.Error as e:
                if file_damage(e, self.path):
                    raise damage_error(self.path, e) from None
                raise InvalidSql(str(e)) from None
            finally:
                cur.execute("ROLLBACK")
        finally:
            cur.close()

    def query(
        self,
        text: str,
        *,
        time_limit_s: float = 5.0,
        max_rows: int = 1000,
        max_bytes: int = 10_000_000,
        relations: Mapping[str, pa.Table] | None = None,
    ) -> QueryResult:
        """Run one user query like :meth:`sql`, with limits on time, rows and bytes.

        At most ``max_rows`` rows and about ``max_bytes`` bytes come back (``truncated`` and
        ``cut`` say whether and why there were more; text values are cut at
        :data:`engine.sandbox.MAX_VALUE_CHARS`); a query still running after ``time_limit_s``
        is interrupted and raises :class:`QueryInterrupted`. Table functions that read files or
        settings are refused (:func:`engine.sandbox.check_names`). ``relations`` are Arrow
        tables the query may name (e.g. the last refine result; ``last_result`` is empty unless
        given), visible to this query only, as are the macros of ``sql/console_macros.sql``.
        This runs in the calling process; :class:`engine.sandbox.QueryPool` runs queries in
        worker processes with an OS memory limit and a hard deadline.
        """
        check_query(text)
        with self._lock:
            cur = self.con.cursor()
        try:
            database = cur.execute("SELECT current_database()").fetchall()[0][0]
            return run_query(
                cur,
                text,
                database=database,
                time_limit_s=time_limit_s,
                max_rows=max_rows,
                max_bytes=max_bytes,
                relations=relations,
            )
        finally:
            cur.close()

    # -- Parquet -----------------------------------------------------------------------------
    def export_parquet(
        self, directory: str | os.PathLike, *, overwrite: bool = False, progress: Progress = None
    ) -> dict:
        """Write codes, images, blocks and settings as Parquet; see :mod:`engine.parquet`.
        ``progress`` (see :mod:`engine.progress`) counts the rows written, over all files."""
        from .parquet import export_catalog

        with reading(self.path):
            return export_catalog(self, Path(directory), overwrite=overwrite, progress=progress)

    @classmethod
    def import_parquet(
        cls, directory: str | os.PathLike, path: str | os.PathLike, *, progress: Progress = None
    ) -> Catalog:
        """Create a catalog at ``path`` from a directory written by :meth:`export_parquet`.
        ``progress`` (see :mod:`engine.progress`) counts the rows read, over all files."""
        from .parquet import import_catalog

        return import_catalog(cls, Path(directory), Path(path), progress=progress)


# -- validation helpers ----------------------------------------------------------------------
def _check_codes(codes: Any) -> np.ndarray:
    if not isinstance(codes, np.ndarray):
        raise InvalidCodes(f"codes must be a numpy array of uint8, got {type(codes).__name__}")
    if codes.dtype != np.uint8:
        raise InvalidCodes(
            f"codes must be uint8, got {codes.dtype}; quantize embeddings first "
            "(values already in 0..255 can be cast with .astype(np.uint8))"
        )
    if codes.ndim != 2 or codes.shape[1] != N_DIMS:
        raise InvalidCodes(f"codes must have shape (n, {N_DIMS}), got {codes.shape}")
    return codes


def _check_known(con: duckdb.DuckDBPyConnection, relation: str) -> None:
    """UnknownIds (the first ten) when ``relation`` has ids that ``images`` does not."""
    missing = con.execute(
        f"SELECT n.id FROM {relation} n ANTI JOIN images i USING (id) ORDER BY 1 LIMIT 10"
    ).fetchall()
    if missing:
        raise UnknownIds([r[0] for r in missing])


def _check_replacement(codes: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Codes uint8 (n, 32) and n distinct int64 ids to replace a catalog's codes."""
    codes = _check_codes(codes)
    ids = _check_ids(ids, "ids")
    if len(ids) != codes.shape[0]:
        raise InvalidCodes(f"{len(ids)} ids for {codes.shape[0]} codes; give one id per row")
    if len(np.unique(ids)) != len(ids):
        raise InvalidCodes("ids contain duplicates")
    return codes, ids


def _check_ids(ids: Any, what: str) -> np.ndarray:
    if isinstance(ids, (str, bytes)):
        raise InvalidCodes(f"{what} must be a sequence of integers")
    arr = np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise InvalidCodes(f"{what} must be integers, got {arr.dtype} values like {arr.ravel()[0]!r}")
    if arr.ndim != 1:
        raise InvalidCodes(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == np.uint64 and arr.max() > np.iinfo(np.int64).max:
        raise InvalidCodes(f"{what} must fit in a signed 64-bit integer")
    return arr.astype(np.int64)


def _check_metadata(metadata: Any, n: int) -> pa.Table | None:
    if metadata is None:
        return None
    if isinstance(metadata, pa.Table):
        table = metadata
    elif isinstance(metadata, Mapping):
        try:
            table = pa.table({str(k): v for k, v in metadata.items()})
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise InvalidCodes(f"metadata columns could not be read: {e}") from None
    else:
        raise InvalidCodes("metadata must be a mapping of column name to values, or an Arrow table")
    if table.num_rows != n:
        raise InvalidCodes(f"metadata has {table.num_rows} rows for {n} codes")
    for name in table.column_names:
        if not is_metadata_name(name):
            raise InvalidCodes(
                f"metadata column {name!r} is not allowed: use letters, digits and _, "
                f"and none of {sorted(RESERVED_COLUMNS - set(CODE_COLUMNS))} or f00..f31"
            )
    if len({c.lower() for c in table.column_names}) != table.num_columns:
        raise InvalidCodes("metadata column names must be unique (case-insensitively)")
    return table if table.num_columns else None


def _blocks_table(blocks: layout.Blocks) -> pa.Table:
    n = blocks.n_blocks
    data: dict[str, Any] = {
        "block_id": np.arange(n, dtype=np.int32),
        "row_start": blocks.start[:-1],
        "row_end": blocks.start[1:],
    }
    for d, c in enumerate(CODE_COLUMNS):
        data[f"min_{c}"] = blocks.lo[:, d]
        data[f"max_{c}"] = blocks.hi[:, d]
    return pa.table(data)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
