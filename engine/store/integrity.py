"""What a sound catalog holds, and what to do when it does not.

:func:`decode_setting` checks each setting against :data:`SETTING_CHECKS`, and
:func:`tiling_problem` the stored block index against the codes, so that the scan kernels, which
trust the blocks, never read past the data. Each kind of damage names its repair (``RESTORE``,
``REINDEX``, ``RETRAIN``). Errors DuckDB raises on a damaged file are told apart in
:mod:`engine.store.database`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..boxes import N_DIMS
from ..errors import CorruptCatalog

# What each kind of damage asks the user to do; ``{path}`` is the catalog.
RESTORE = (
    "restore it from a backup, or re-import an export of it with `clip-branches import EXPORT_DIR NEW.duckdb`"
)
REINDEX = "run `clip-branches index {path}` to rebuild the index, which writes it afresh"
RETRAIN = (
    "run `clip-branches train-head {path}` to store a head and quantizer afresh, then "
    "`clip-branches index {path}` (or restore the file from a backup)"
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
