"""A memory-mapped copy of the indexed codes beside the catalog file, for a fast cold start.

Loading the index from DuckDB decompresses every code: about a second per 10M rows on 2 cores,
so a restarted server at 100M rows waits ten. The copy, ``<catalog>.kd``, holds what the load
produces, in the load's own layout, so opening it costs a page-table entry per page and the
pages come from the OS page cache, shared by every process that opens the catalog::

    4096 bytes   header: MAGIC, then JSON {"version", "build", "rows", "dims"}, NUL-padded
    dims*rows    the codes, uint8, column-major (dim d is one run of ``rows`` bytes)
    8*rows       the ids, int64, at the next multiple of 4096

It is written only by an index build asked for it, under a temporary name, and renamed into
place before the build's transaction commits, which records its build id in the ``index``
settings. Any change to the indexed rows (``replace_codes``, ``remove``, a build without it)
replaces those settings, so a copy that no longer matches is never read: it is ignored and the
index loads from DuckDB. So is a copy with rows appended after the build (until the next build),
a copy that fails its header or size check, or one whose sampled rows differ from DuckDB's.
"""

from __future__ import annotations

import json
import mmap
import os
import uuid
import warnings
from pathlib import Path

import numpy as np

from ..boxes import CODE_COLUMNS, N_DIMS
from ..store import Store, tables
from ..store.files import fsync_path

MAGIC = b"clip-branches kd codes\n"
VERSION = 1
HEADER_BYTES = 4096
# Rows compared with DuckDB when a copy is opened: runs of SAMPLE_RUN rows at SAMPLE_RUNS
# random positions, each one range query that DuckDB answers from a few row groups.
SAMPLE_RUNS, SAMPLE_RUN = 8, 64


def path_for(catalog: Path) -> Path:
    return catalog.with_name(catalog.name + ".kd")


def _ids_offset(rows: int, dims: int) -> int:
    return -(-(HEADER_BYTES + dims * rows) // 4096) * 4096


def file_bytes(rows: int, dims: int = N_DIMS) -> int:
    return _ids_offset(rows, dims) + 8 * rows


def write(catalog: Path, cols: np.ndarray, ids: np.ndarray) -> dict:
    """Write the copy of ``cols`` uint8 (dims, n) and int64 ``ids`` (block order) beside
    ``catalog``, atomically; the record for the ``index`` settings."""
    dims, rows = cols.shape
    record = {"version": VERSION, "build": uuid.uuid4().hex, "rows": int(rows), "dims": int(dims)}
    header = MAGIC + json.dumps(record).encode("ascii")
    path = path_for(catalog)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.writing")
    try:
        with open(tmp, "wb") as f:
            f.write(header.ljust(HEADER_BYTES, b"\0"))
            f.write(memoryview(np.ascontiguousarray(cols)).cast("B"))
            f.write(b"\0" * (_ids_offset(rows, dims) - HEADER_BYTES - dims * rows))
            f.write(memoryview(np.ascontiguousarray(ids, dtype="<i8")).cast("B"))
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    return {**record, "bytes": file_bytes(rows, dims)}


def remove(catalog: Path) -> None:
    """Delete the copy beside ``catalog``, if any (an index build without one)."""
    path_for(catalog).unlink(missing_ok=True)


def load(store: Store, record: dict | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The codes and ids of the copy beside ``store``'s file that ``record`` (the ``mapped``
    entry of the index settings) describes, mapped copy-on-write; None when there is no record,
    the catalog holds rows other than the copy's (rows added since), or the copy is missing or
    fails a check (a warning says which)."""
    if not isinstance(record, dict) or record.get("dims") != N_DIMS:
        return None
    n_rows = tables.count(store)
    if record.get("rows") != n_rows:
        return None
    path = path_for(store.path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEADER_BYTES)
            if not head.startswith(MAGIC):
                return _ignored(path, "it does not start as a copy of codes does")
            found = json.loads(head[len(MAGIC) :].rstrip(b"\0"))
            if found.get("build") != record.get("build") or found.get("version") != VERSION:
                return _ignored(path, "it is from another index build")
            if size != file_bytes(n_rows):
                return _ignored(path, f"it has {size:,} bytes where its rows take {file_bytes(n_rows):,}")
            mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        return _ignored(path, f"it cannot be read ({e})")
    cols = np.frombuffer(mm, np.uint8, N_DIMS * n_rows, HEADER_BYTES).reshape(N_DIMS, n_rows)
    ids = np.frombuffer(mm, "<i8", n_rows, _ids_offset(n_rows, N_DIMS))
    if not _matches(store, cols, ids):
        return _ignored(path, "rows sampled from it differ from the catalog's")
    return cols, ids


def _matches(store: Store, cols: np.ndarray, ids: np.ndarray) -> bool:
    """Whether sampled runs of rows of the copy equal the catalog's rows at those positions."""
    n = len(ids)
    rng = np.random.default_rng(n)
    starts = {0, max(0, n - SAMPLE_RUN), *rng.integers(0, max(1, n - SAMPLE_RUN), SAMPLE_RUNS).tolist()}
    sql = f"SELECT pos, id, {', '.join(CODE_COLUMNS)} FROM codes WHERE pos BETWEEN ? AND ? ORDER BY pos"
    for s in sorted(starts):
        e = min(n, s + SAMPLE_RUN)
        rows = np.array(store.read(sql, [s, e - 1]), dtype=np.int64).reshape(-1, 2 + N_DIMS)
        if len(rows) != e - s or (rows[:, 0] != np.arange(s, e)).any() or (rows[:, 1] != ids[s:e]).any():
            return False
        if (cols[:, s:e] != rows[:, 2:].T).any():
            return False
    return True


def _ignored(path: Path, why: str) -> None:
    warnings.warn(
        f"{path} is not used, since {why}; the index loads from the catalog instead "
        "(the next `clip-branches index --mapped` writes it again)",
        stacklevel=3,
    )
    return None
