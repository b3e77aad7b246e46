"""Reading a Parquet export without DuckDB, for engines that run the compiled SQL on its files
(:mod:`engine.spark_refine`): what it holds, where its blocks start, which rows hold given ids,
and the codes of given rows.

An :class:`Export` opens a plain export (:mod:`engine.store.parquet`) or a sharded one
(:mod:`engine.store.shards`: all its shards together, which hold the rows of one catalog under
its own positions). Codes are read by row position: ``codes.parquet`` is in position order and
each row group's statistics give its first and last ``pos``, so only the row groups holding the
rows asked for are read.

A location is a local path or a URI that both pyarrow and Spark read (``file://``, ``hdfs://``,
``gs://``, ``s3://``; Spark's ``s3a://`` is read here as ``s3://``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..boxes import CODE_COLUMNS
from ..errors import CatalogError, CorruptCatalog, UnknownIds
from ..limits import DEFAULT_BLOCK_SIZE
from . import schema
from .shards import FORMAT, SHARDED_FORMAT

_EXPORT_HINT = "write one with `clip-branches export CATALOG DIR`"


@dataclass(frozen=True)
class RowGroup:
    """One row group of a ``codes.parquet``: the file's path, its index, its first and last ``pos``."""

    path: str
    index: int
    first: int
    last: int


class Export:
    """A Parquet export opened for reading. ``meta`` is its (top-level) ``catalog.json``;
    ``codes_uris`` are the locations of its ``codes.parquet`` files, one per shard, for Spark."""

    def __init__(self, location: str, fs: pafs.FileSystem, root: str, uri: str, meta: dict, dirs: list[str]):
        self.location = location
        self.meta = meta
        self.settings: dict = meta.get("settings") or {}
        self.shards = len(dirs) if meta.get("format") == SHARDED_FORMAT else None
        self.codes_uris = [_join(uri, d, "codes.parquet") for d in dirs]
        self._fs = fs
        self._dirs = [_join(root, d) for d in dirs]
        self._codes = [_join(d, "codes.parquet") for d in self._dirs]
        self._row_groups = self._read_row_groups()
        self.n_rows = sum(g.last - g.first + 1 for g in self._row_groups)
        if self.n_rows != meta.get("rows"):
            raise CorruptCatalog(
                f"{location} holds {self.n_rows} rows of codes, but its catalog.json records "
                f"{meta.get('rows')!r}; export the catalog again"
            )
        self.row_groups_read = 0
        self.rows_read = 0

    @classmethod
    def open(cls, location: str | os.PathLike) -> Export:
        """The export at ``location``; :class:`CatalogError` when there is none, or it is one
        shard of a sharded export (open the export above it), or a newer clip-branches wrote it."""
        text = os.fspath(location)
        fs, root, uri = _filesystem(text)
        kind = fs.get_file_info(root).type
        if kind == pafs.FileType.NotFound:
            raise CatalogError(f"no export at {text}; {_EXPORT_HINT}")
        if kind != pafs.FileType.Directory:
            raise CatalogError(f"{text} is not a directory; give the directory `clip-branches export` wrote")
        meta = _read_meta(fs, root, text)
        if meta.get("format") not in (FORMAT, SHARDED_FORMAT):
            raise CatalogError(
                f"{text} is not a clip-branches export: its catalog.json is not one; {_EXPORT_HINT}"
            )
        if isinstance(meta.get("shard"), dict):
            shard = meta["shard"]
            raise CatalogError(
                f"{text} is shard {shard.get('number')} of the {shard.get('count')} shards of a sharded "
                f"export; give the directory above it, which lists them all"
            )
        if (
            not isinstance(meta.get("schema_version"), int)
            or meta["schema_version"] > schema.latest_version()
        ):
            raise CatalogError(
                f"{text} was exported by a newer clip-branches (schema {meta.get('schema_version')!r}); "
                "upgrade clip-branches to read it"
            )
        dirs = _shard_dirs(fs, root, text, meta) if meta["format"] == SHARDED_FORMAT else [""]
        for d in dirs:
            for name in ("codes.parquet", "blocks.parquet"):
                if fs.get_file_info(_join(root, d, name)).type != pafs.FileType.File:
                    raise CatalogError(f"{_join(text, d, name)} is missing; export the catalog again")
        return cls(text, fs, root, uri, meta, dirs)

    @property
    def index(self) -> dict:
        """The ``index`` settings of the catalog exported (all shards together)."""
        return self.settings.get("index") or {}

    def block_starts(self) -> np.ndarray:
        """int64 (n_blocks + 1,): where each block of the catalog's in-memory index starts, and
        the row count last; rows past the indexed ones get blocks of ``block_size`` rows in
        insertion order, as :meth:`engine.index.query.BlockIndex.from_arrays` gives them."""
        tables = [pq.read_table(_join(d, "blocks.parquet"), filesystem=self._fs) for d in self._dirs]
        blocks = pa.concat_tables([t.select(["block_id", "row_start", "row_end"]) for t in tables])
        blocks = blocks.sort_by("block_id")
        ids, start, end = (
            blocks.column(c).to_numpy().astype(np.int64) for c in ("block_id", "row_start", "row_end")
        )
        n = len(ids)
        tiled = (
            np.array_equal(ids, np.arange(n))
            and (n == 0 or start[0] == 0)
            and np.array_equal(start[1:], end[:-1])
        )
        recorded = (self.index.get("n_blocks", 0), self.index.get("indexed_rows", 0))
        indexed = int(end[-1]) if n else 0
        if not tiled or (n, indexed) != recorded or indexed > self.n_rows or (end <= start).any():
            raise CorruptCatalog(
                f"the blocks of {self.location} do not tile the first {recorded[1]} rows in "
                f"{recorded[0]} blocks as its catalog.json records; export the catalog again"
            )
        block_size = int(self.index.get("block_size", DEFAULT_BLOCK_SIZE))
        tail = np.arange(indexed, self.n_rows, block_size, dtype=np.int64)
        return np.concatenate([start, tail, [self.n_rows]]).astype(np.int64)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """int64 row position of each of the int64 ``ids``; :class:`UnknownIds` for any id the
        export does not hold. Reads the ``id`` and ``pos`` columns."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros(0, np.int64)
        dataset = pads.dataset(self._codes, format="parquet", filesystem=self._fs)
        found = dataset.to_table(columns=["id", "pos"], filter=pc.field("id").isin(pa.array(ids)))
        have, pos = (found.column(c).to_numpy().astype(np.int64) for c in ("id", "pos"))
        order = np.argsort(have, kind="stable")
        have, pos = have[order], pos[order]
        at = np.minimum(np.searchsorted(have, ids), max(len(have) - 1, 0))
        known = (have[at] == ids) if len(have) else np.zeros(len(ids), bool)
        if not known.all():
            raise UnknownIds(ids[~known].tolist())
        return pos[at]

    def codes_at(self, positions: np.ndarray) -> np.ndarray:
        """uint8 (len(positions), 32): the codes of the rows at ``positions`` (int64), in that
        order. Reads only the row groups that hold them (counted in ``row_groups_read`` and
        ``rows_read``)."""
        positions = np.asarray(positions, dtype=np.int64)
        want = np.unique(positions)
        out = np.empty((len(want), len(CODE_COLUMNS)), np.uint8)
        filled = 0
        for group in self._row_groups:
            a, b = np.searchsorted(want, [group.first, group.last + 1])
            if a == b:
                continue
            table = pq.ParquetFile(group.path, filesystem=self._fs).read_row_group(
                group.index, columns=["pos", *CODE_COLUMNS]
            )
            pos = table.column("pos").to_numpy()
            at = np.searchsorted(pos, want[a:b])
            if (at >= len(pos)).any() or not np.array_equal(pos[np.minimum(at, len(pos) - 1)], want[a:b]):
                raise CorruptCatalog(f"{group.path} does not hold the positions its statistics claim")
            out[a:b] = np.stack([table.column(c).to_numpy()[at] for c in CODE_COLUMNS], axis=1)
            filled += b - a
            self.row_groups_read += 1
            self.rows_read += table.num_rows
        if filled != len(want):
            raise CorruptCatalog(f"{self.location} does not hold rows at every position 0..{self.n_rows - 1}")
        return out[np.searchsorted(want, positions)]

    @property
    def n_row_groups(self) -> int:
        return len(self._row_groups)

    def _read_row_groups(self) -> list[RowGroup]:
        """Every row group of the ``codes.parquet`` files, by first position; :class:`CorruptCatalog`
        unless each one's ``pos`` statistics say it holds a run of consecutive positions."""
        groups = []
        for path in self._codes:
            meta = pq.ParquetFile(path, filesystem=self._fs).metadata
            names = [meta.schema.column(i).name for i in range(meta.num_columns)]
            if "pos" not in names:
                raise CorruptCatalog(f"{path} has no pos column; export the catalog again")
            col = names.index("pos")
            for i in range(meta.num_row_groups):
                group = meta.row_group(i)
                stats = group.column(col).statistics
                if group.num_rows == 0:
                    continue
                if stats is None or not stats.has_min_max or stats.max - stats.min + 1 != group.num_rows:
                    raise CorruptCatalog(
                        f"{path}: row group {i} has no min/max statistics of consecutive positions; "
                        "export the catalog again"
                    )
                groups.append(RowGroup(path, i, int(stats.min), int(stats.max)))
        groups.sort(key=lambda g: g.first)
        if any(g.first != h.last + 1 for h, g in zip(groups, groups[1:], strict=False)) or (
            groups and groups[0].first != 0
        ):
            raise CorruptCatalog(f"the codes of {self.location} do not hold positions 0..n-1 once each")
        return groups


def _filesystem(location: str) -> tuple[pafs.FileSystem, str, str]:
    """``(filesystem, path in it, URI for Spark)`` of an export's location."""
    if "://" not in location:
        path = str(Path(location).resolve())
        return pafs.LocalFileSystem(), path, f"file://{path}"
    scheme, rest = location.split("://", 1)
    try:
        fs, path = pafs.FileSystem.from_uri(f"{'s3' if scheme == 's3a' else scheme}://{rest}")
    except (pa.ArrowException, ValueError) as e:
        raise CatalogError(f"cannot read {location}: {e}") from None
    return fs, path.rstrip("/"), location.rstrip("/")


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p for p in parts if p)])


def _read_meta(fs: pafs.FileSystem, root: str, location: str) -> dict:
    path = _join(root, "catalog.json")
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise CatalogError(
            f"{location} is not a clip-branches export: it has no catalog.json; {_EXPORT_HINT}"
        )
    try:
        with fs.open_input_stream(path) as f:
            meta = json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptCatalog(f"{_join(location, 'catalog.json')} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise CatalogError(f"{location} is not a clip-branches export: its catalog.json is not one")
    return meta


def _shard_dirs(fs: pafs.FileSystem, root: str, location: str, meta: dict) -> list[str]:
    """The shard directories a sharded export's manifest lists, each checked against its own
    ``catalog.json``: shard ``i`` of ``len(shards)``, its rows following those of shard ``i - 1``."""
    shards = meta.get("shards")
    if not isinstance(shards, list) or not shards:
        raise CorruptCatalog(f"{_join(location, 'catalog.json')} lists no shards; export the catalog again")
    dirs, row = [], 0
    for i, entry in enumerate(shards):
        d = entry.get("directory") if isinstance(entry, dict) else None
        if not isinstance(d, str) or "/" in d or d in ("", ".", ".."):
            raise CorruptCatalog(
                f"{_join(location, 'catalog.json')}: shard {i} names no directory of its own"
            )
        own = _read_meta(fs, _join(root, d), _join(location, d)).get("shard")
        if (
            not isinstance(own, dict)
            or (own.get("number"), own.get("count"), own.get("row_start")) != (i, len(shards), row)
            or entry.get("row_start") != row
        ):
            raise CorruptCatalog(
                f"{_join(location, d)} is not shard {i} of {len(shards)} starting at row {row}, as "
                f"{_join(location, 'catalog.json')} says; export the catalog again"
            )
        row = own.get("row_end")
        dirs.append(d)
    if row != meta.get("rows"):
        raise CorruptCatalog(f"the shards of {location} end at row {row}, not at {meta.get('rows')!r}")
    return dirs
