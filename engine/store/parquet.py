"""Parquet export and import of a whole catalog, and reading CSV manifests (:func:`read_csv`).

An export is a directory::

    codes.parquet    pos, id, f00..f31 in block order; row groups carry min/max statistics,
                     so the compiled SQL prunes row groups on any Parquet engine
    images.parquet   id, uri, added_at and the metadata columns
    blocks.parquet   the zone maps of the last index build
    catalog.json     format tag, schema version and settings
    artifacts.parquet  the head and quantizer

A sharded export (:mod:`engine.store.shards`) holds one such directory per subtree of the k-d
tree, with a manifest above them; each shard imports as a catalog of its own rows.

It is written into a temporary sibling directory and renamed into place at the end, so an
interrupted export never leaves a half-written directory under the final name; with
``overwrite``, the old export is renamed aside before and deleted after.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from ..boxes import CODE_COLUMNS
from ..errors import CatalogError, CorruptCatalog
from ..index import layout
from ..progress import Progress, reporter
from . import schema, tables
from .database import Store
from .files import fsync_path
from .shards import FORMAT, SHARDED_FORMAT, Shard, shard_directory, shard_index
from .shards import plan as shard_plan
from .sqlnames import is_metadata_name, literal, quote_ident

FILES = ("codes.parquet", "images.parquet", "blocks.parquet", "catalog.json")
# A row group spans many blocks: Parquet readers pay per row group, and the statistics of 64
# consecutive k-d blocks are still tight, since they form one subtree.
ROW_GROUP_BLOCKS = 64
ZONE_COLUMNS = tuple(f"{bound}_{c}" for c in CODE_COLUMNS for bound in ("min", "max"))
_INTEGER_TYPES = frozenset(
    {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "UHUGEINT",
    }
)
_CODE_TYPE = "UTINYINT"


def export_catalog(
    store: Store, out: Path, *, overwrite: bool = False, progress: Progress = None, shards: int | None = None
) -> dict:
    """Write the catalog of ``store`` to the directory ``out``; returns the row count and file sizes.

    ``shards``: write that many subtrees of the k-d tree instead, each a complete export
    directory of its own, with a manifest above them (:mod:`engine.store.shards`); a power of
    two, at most the number of blocks. ``progress`` (see :mod:`engine.progress`) counts rows
    written, over all files."""
    if out.exists() and not overwrite:
        raise CatalogError(f"{out} already exists; choose another directory or pass overwrite")
    if not out.parent.is_dir():
        raise CatalogError(f"directory {out.parent} does not exist")
    index = store.setting("index") or {}
    row_group = max(2048, int(index.get("block_size", 2048)) * ROW_GROUP_BLOCKS)
    con = store.con
    n_rows = tables.count(store)
    if shards is None:
        parts: list[tuple[str, Shard | None]] = [("", None)]
    else:
        blocks = tables.load_blocks(store, n_rows, index)
        starts = np.zeros(1, np.int64) if blocks is None else blocks.start
        parts = [(s.directory, s) for s in shard_plan(starts, n_rows, shards, catalog=store.path)]
    copies = [(sub, *copy) for sub, shard in parts for copy in _copies(shard, row_group)]
    rows = [
        int(con.execute(f"SELECT count(*) FROM ({select})").fetchall()[0][0]) for _, _, select, _ in copies
    ]
    total = sum(rows)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with reporter("export", "rows", progress) as report:
            report(0, total)
            done = 0
            for (sub, name, select, options), n in zip(copies, rows, strict=True):
                (tmp / sub).mkdir(exist_ok=True)
                with store.tracking(report, done, n, total):
                    con.execute(f"COPY ({select}) TO {literal(tmp / sub / name)} {options}")
                done += n
                if done < total:  # the last report waits for the export to be in place
                    report(done, total)
            meta = {
                "format": FORMAT,
                "schema_version": schema.latest_version(),
                "rows": n_rows,
                "settings": store.settings(),
            }
            for sub, shard in parts:
                _write_json(tmp / sub / "catalog.json", meta if shard is None else _shard_meta(meta, shard))
            if shards is not None:
                shard_list = [shard.to_json() for _, shard in parts]
                _write_json(tmp / "catalog.json", {**meta, "format": SHARDED_FORMAT, "shards": shard_list})
            for sub, _ in parts:
                for f in (tmp / sub).iterdir():
                    fsync_path(f)
                fsync_path(tmp / sub)
            fsync_path(tmp)
            _swap_in(tmp, out)
            report(total, total)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    sizes = {f: sum((out / sub / f).stat().st_size for sub, _ in parts) for f in FILES}
    stats = {"rows": n_rows, "directory": str(out), "bytes": sizes}
    if shards is not None:
        stats["shards"] = [shard.to_json() for _, shard in parts]
    return stats


def _copies(shard: Shard | None, row_group: int) -> list[tuple[str, str, str]]:
    """``(file, SELECT, COPY options)`` of one export directory: the whole catalog, or the rows
    of ``shard`` (its codes, their images, its blocks) and every artifact. The last shard also
    takes the images without codes, so that the shards hold every image once."""
    codes = images = blocks = ""
    if shard is not None:
        rows = f"pos >= {shard.row_start} AND pos < {shard.row_end}"
        codes = f" WHERE {rows}"
        images = f" WHERE id IN (SELECT id FROM codes WHERE {rows})"
        if shard.last:
            images += " OR NOT EXISTS (SELECT 1 FROM codes c WHERE c.id = images.id)"
        blocks = f" WHERE block_id >= {shard.block_start} AND block_id < {shard.block_end}"
    return [
        (
            "codes.parquet",
            f"SELECT * FROM codes{codes} ORDER BY pos",
            f"(FORMAT parquet, ROW_GROUP_SIZE {row_group}, COMPRESSION zstd)",
        ),
        ("images.parquet", f"SELECT * FROM images{images} ORDER BY id", "(FORMAT parquet, COMPRESSION zstd)"),
        ("blocks.parquet", f"SELECT * FROM blocks{blocks} ORDER BY block_id", "(FORMAT parquet)"),
        ("artifacts.parquet", "SELECT * FROM artifacts ORDER BY name", "(FORMAT parquet)"),
    ]


def _shard_meta(meta: dict, shard: Shard) -> dict:
    """The ``catalog.json`` of one shard: its rows, the index settings of its rows alone, and
    where they lie in the whole catalog (its files keep the catalog's positions)."""
    settings = dict(meta["settings"])
    settings["index"] = shard_index(settings.get("index") or {}, shard)
    return {
        **meta,
        "rows": shard.row_end - shard.row_start,
        "settings": settings,
        "shard": {**shard.to_json(), "catalog_rows": meta["rows"]},
    }


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")


def read_csv(path: str, text_column: str) -> pa.Table:
    """A CSV file with a header as an Arrow table, types sniffed from every row, with
    ``text_column`` (when present) read as text; no columns' rows when it is absent."""
    with duckdb.connect(":memory:") as con:
        names = [r[0] for r in con.sql("DESCRIBE FROM read_csv(?, header = true)", params=[path]).fetchall()]
        if text_column not in names:
            return con.sql("SELECT * FROM read_csv(?, header = true) LIMIT 0", params=[path]).to_arrow_table()
        return con.sql(
            f"SELECT * FROM read_csv(?, header = true, sample_size = -1, types = {{{literal(text_column)}: 'VARCHAR'}})",
            params=[path],
        ).to_arrow_table()


def _swap_in(tmp: Path, out: Path) -> None:
    """Rename the finished export ``tmp`` to ``out``. An existing ``out`` is renamed aside first
    and deleted only after the new one is in place, so a process killed at any point leaves
    under ``out`` a whole export, old or new (or, between the two renames, nothing), never a
    half-deleted one that still looks complete."""
    if not out.exists():
        os.replace(tmp, out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
    os.replace(out, aside / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(aside / out.name, out)
        aside.rmdir()
        raise
    shutil.rmtree(aside)


def import_catalog(src: Path, path: Path, *, progress: Progress = None) -> None:
    """Create a catalog at ``path`` from an export directory, block order and zone maps included.

    The catalog is built under a hidden name beside ``path`` and renamed into place when it is
    complete, so an interrupted import leaves no file at ``path`` and can simply be run again.
    ``progress`` (see :mod:`engine.progress`) counts rows read, over all files.

    Before any row is copied, the columns must have the catalog's types: ids, positions, block
    numbers and row ranges integers, codes and zone maps ``UTINYINT`` (another integer type is
    accepted when all its values lie in 0..255). After the rows are in, and before they are
    committed, :func:`_verify` checks them against each other. Any failed check raises
    :class:`CorruptCatalog` naming the file and an offending value, and leaves no file at
    ``path``."""
    missing = [f for f in FILES if not (src / f).is_file()]
    if missing:
        raise CatalogError(_not_an_export(src, missing))
    try:
        meta = json.loads((src / "catalog.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptCatalog(f"{src / 'catalog.json'} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptCatalog(f"{src / 'catalog.json'} does not describe a {FORMAT} export")
    if int(meta.get("schema_version", 0)) > schema.latest_version():
        raise CatalogError(f"{src} was exported by a newer clip-branches (schema {meta['schema_version']})")
    if path.exists():
        raise CatalogError(f"{path} already exists; import into a new path")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.importing")
    store = Store.create(tmp, tables.new_settings())
    report = reporter("import", "rows", progress)
    try:
        con = store.con
        codes_sql = literal(src / "codes.parquet")
        images_sql = literal(src / "images.parquet")
        _check_columns(con, src / "codes.parquet", ("pos", "id"), CODE_COLUMNS)
        _check_columns(con, src / "blocks.parquet", ("block_id", "row_start", "row_end"), ZONE_COLUMNS)
        img_types = _check_columns(con, src / "images.parquet", ("id",), ())
        existing = {name.lower() for name, _ in store.columns("images")}
        blocks_sql = literal(src / "blocks.parquet")
        row0, block0 = _shard_offsets(src, meta)
        if row0 or block0:  # a shard keeps the whole catalog's positions; its catalog starts at 0
            codes_sql = f"(SELECT * REPLACE (pos - {row0} AS pos) FROM {codes_sql})"
            blocks_sql = (
                f"(SELECT * REPLACE (block_id - {block0} AS block_id, row_start - {row0} AS row_start, "
                f"row_end - {row0} AS row_end) FROM {blocks_sql})"
            )
        inserts = [  # (table, parquet file, ORDER BY)
            ("images", images_sql, ""),
            ("codes", codes_sql, " ORDER BY pos"),
            ("blocks", blocks_sql, " ORDER BY block_id"),
        ]
        if (src / "artifacts.parquet").is_file():
            inserts.append(("artifacts", literal(src / "artifacts.parquet"), ""))
        # the row counts come from the files' footers; nothing is read twice
        rows = [int(con.execute(f"SELECT count(*) FROM {f}").fetchall()[0][0]) for _, f, _ in inserts]
        total, done = sum(rows), 0
        report(0, total)
        with store.write():
            for name, ctype in img_types:
                if name.lower() not in existing:
                    if not is_metadata_name(name):
                        raise CorruptCatalog(
                            f"images.parquet has a column named {name!r}, which a catalog cannot hold"
                        )
                    con.execute(f"ALTER TABLE images ADD COLUMN {quote_ident(name)} {ctype}")
            for (table, file, order), n in zip(inserts, rows, strict=True):
                with store.tracking(report, done, n, total):
                    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {file}{order}")
                done += n
                if done < total:  # the last report waits for the catalog to be in place
                    report(done, total)
            settings = dict(meta.get("settings") or {})
            _verify(con, src, meta.get("rows"), settings.get("index"))
            settings["data_version"] = 0
            store.set_settings(settings)
        store.refresh_views()
        store.checkpoint()
        store.close()
        os.replace(tmp, path)
    except duckdb.Error as e:
        store.close()
        _remove(tmp)
        report.close()
        raise CorruptCatalog(f"could not import {src}: {str(e).splitlines()[0]}") from None
    except BaseException:
        store.close()
        _remove(tmp)
        report.close()
        raise
    report(total, total)
    report.close()


def _not_an_export(src: Path, missing: list[str]) -> str:
    """Why ``src``, which lacks the files ``missing``, cannot be imported, and what to do."""
    try:
        meta = json.loads((src / "catalog.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = None
    if isinstance(meta, dict) and meta.get("format") == SHARDED_FORMAT:
        return (
            f"{src} is a sharded export of {len(meta.get('shards') or [])} shards; import one of them "
            f"(e.g. {src / shard_directory(0)}) as a catalog of its rows, or export the catalog "
            "without --shards to import it whole"
        )
    return f"{src} is not a clip-branches export: missing {', '.join(missing)}"


def _shard_offsets(src: Path, meta: dict) -> tuple[int, int]:
    """``(first row position, first block number)`` of the export at ``src``: (0, 0) unless
    it is a shard, whose files keep the whole catalog's positions and block numbers."""
    shard = meta.get("shard")
    if shard is None:
        return 0, 0
    offsets = (shard.get("row_start"), shard.get("block_start")) if isinstance(shard, dict) else (None,)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in offsets):
        raise CorruptCatalog(
            f"{src / 'catalog.json'}: the shard entry {shard!r} gives no row_start and block_start; "
            "export the catalog again"
        )
    return offsets


def _check_columns(
    con: duckdb.DuckDBPyConnection, file: Path, integers: tuple[str, ...], codes: tuple[str, ...]
) -> list[tuple[str, str]]:
    """The ``(name, type)`` of each column of the Parquet ``file``; :class:`CorruptCatalog` unless
    the columns ``integers`` have integer types and the columns ``codes`` hold integers in 0..255."""
    sql = literal(file)
    described = con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {sql})").fetchall()
    types = {name.lower(): ctype for name, ctype in described}
    for c in (*integers, *codes):
        expected = f"{_CODE_TYPE} (integers 0..255)" if c in codes else "an integer type"
        if c not in types:
            raise CorruptCatalog(
                f"{file} has no column {c}; it must hold one of type {expected}. Export the catalog again"
            )
        if types[c] not in _INTEGER_TYPES:
            raise CorruptCatalog(
                f"{file}: column {c} is {types[c]}, expected {expected}. Export the catalog again"
            )
    wide = [c for c in codes if types[c] != _CODE_TYPE]
    if wide:
        bounds = con.execute(
            "SELECT "
            + ", ".join(f"min({quote_ident(c)}), max({quote_ident(c)})" for c in wide)
            + f" FROM {sql}"
        ).fetchall()[0]
        for c, lo, hi in zip(wide, bounds[0::2], bounds[1::2], strict=True):
            if lo is not None and (lo < 0 or hi > 255):
                raise CorruptCatalog(
                    f"{file}: column {c} ({types[c]}) holds {lo if lo < 0 else hi}, outside 0..255; "
                    f"expected {_CODE_TYPE} (integers 0..255). Export the catalog again"
                )
    return described


def _verify(con: duckdb.DuckDBPyConnection, src: Path, rows: object, index: object) -> None:
    """Check the imported tables before they are committed; :class:`CorruptCatalog` if

    - ``codes`` does not hold ``rows`` rows at positions 0..rows-1;
    - an id appears twice in ``images`` or in ``codes``, or a code's id is not in ``images``;
    - the blocks, ordered by ``block_id``, are not numbered 0, 1, ... or do not tile rows from 0
      on, each non-empty, up to the ``indexed_rows`` and ``n_blocks`` the ``index`` settings record;
    - a block's zone map is not the true per-dim min and max of its rows.

    Images without codes are allowed: an ingested catalog holds them until its next index build.
    Each check is one pass over a table, the zone maps one grouped ASOF join of codes on blocks."""
    codes_file = src / "codes.parquet"
    n, n_pos, min_pos, max_pos = con.execute(
        "SELECT count(*), count(DISTINCT pos), min(pos), max(pos) FROM codes"
    ).fetchall()[0]
    if n != rows or n_pos != n or (n and (min_pos, max_pos) != (0, n - 1)):
        raise CorruptCatalog(
            f"{codes_file} holds {n} rows, expected {rows} (catalog.json) with positions 0..n-1"
        )
    for table in ("images", "codes"):
        dup = con.execute(
            f"SELECT id, count(*) FROM {table} GROUP BY id HAVING count(*) > 1 ORDER BY id LIMIT 1"
        ).fetchall()
        if dup:
            raise CorruptCatalog(
                f"{src / (table + '.parquet')} holds id {dup[0][0]} in {dup[0][1]} rows; ids must be "
                "unique. Export the catalog again"
            )
    orphan = con.execute("SELECT id FROM codes ANTI JOIN images USING (id) ORDER BY id LIMIT 1").fetchall()
    if orphan:
        raise CorruptCatalog(
            f"{codes_file} holds a code for id {orphan[0][0]}, which {src / 'images.parquet'} "
            "does not list; every code needs its image. Export the catalog again"
        )
    _verify_blocks(con, src / "blocks.parquet", n, index)


def _verify_blocks(con: duckdb.DuckDBPyConnection, file: Path, n_codes: int, index: object) -> None:
    """The block checks of :func:`_verify`; ``codes`` holds ``n_codes`` rows at positions 0..n_codes-1."""
    gap = con.execute(
        "SELECT block_id, row_start, row_end, expected_id, expected_start FROM ("
        "  SELECT block_id, row_start, row_end, row_number() OVER w - 1 AS expected_id,"
        "    coalesce(lag(row_end) OVER w, 0) AS expected_start FROM blocks WINDOW w AS (ORDER BY block_id))"
        " WHERE block_id <> expected_id OR row_start <> expected_start OR row_end <= row_start"
        " ORDER BY block_id LIMIT 1"
    ).fetchall()
    if gap:
        b, s, e, want_id, want_start = gap[0]
        raise CorruptCatalog(
            f"{file}: block {b} holds rows [{s}, {e}) where block {want_id}, starting at row "
            f"{want_start}, was expected; blocks must be numbered 0, 1, ... and cover the rows "
            "from 0 on without gaps, overlaps or empty blocks. Export the catalog again"
        )
    n_blocks, end = con.execute("SELECT count(*), coalesce(max(row_end), 0) FROM blocks").fetchall()[0]
    if index is not None and not isinstance(index, dict):
        raise CorruptCatalog(f"{file.parent / 'catalog.json'}: the index setting is {index!r}, not an object")
    recorded = (index.get("n_blocks"), index.get("indexed_rows")) if index else (0, 0)
    if (n_blocks, end) != recorded or end > n_codes:
        raise CorruptCatalog(
            f"{file} holds {n_blocks} blocks over rows [0, {end}), but catalog.json records an index "
            f"of {recorded[0]} blocks over {recorded[1]} of the {n_codes} rows. Export the catalog "
            "again"
        )
    if index and "block_size" in index:
        try:
            layout.check_block_size(index["block_size"])
        except CatalogError as e:
            raise CorruptCatalog(f"{file.parent / 'catalog.json'}: index {e}") from None
    if not n_blocks:
        return
    true = ", ".join(f"min(c.{c}) AS min_{c}, max(c.{c}) AS max_{c}" for c in CODE_COLUMNS)
    pairs = ", ".join(f"b.{z}, t.{z}" for z in ZONE_COLUMNS)
    differs = " OR ".join(f"b.{z} <> t.{z}" for z in ZONE_COLUMNS)
    wrong = con.execute(
        f"WITH t AS (SELECT b.block_id, {true} FROM codes c ASOF JOIN blocks b ON c.pos >= b.row_start "
        "  WHERE c.pos < ? GROUP BY b.block_id) "
        f"SELECT b.block_id, {pairs} FROM blocks b JOIN t USING (block_id) WHERE {differs} "
        "ORDER BY b.block_id LIMIT 1",
        [end],
    ).fetchall()
    if wrong:
        b, values = wrong[0][0], wrong[0][1:]
        z, stored, actual = next(
            (z, s, a) for z, s, a in zip(ZONE_COLUMNS, values[0::2], values[1::2], strict=True) if s != a
        )
        bound, column = z.split("_")
        raise CorruptCatalog(
            f"{file}: block {b} records {z} = {stored}, but the {bound} of {column} over its rows is "
            f"{actual}; a zone map must hold the exact bounds of its block. Export the catalog again"
        )


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}.wal")):
        p.unlink(missing_ok=True)
