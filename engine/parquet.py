"""Parquet export and import of a whole catalog.

An export is a directory::

    codes.parquet    pos, id, f00..f31 in block order; row groups carry min/max statistics,
                     so the compiled SQL prunes row groups on any Parquet engine
    images.parquet   id, uri, added_at and the metadata columns
    blocks.parquet   the zone maps of the last index build
    catalog.json     format tag, schema version and settings

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
from typing import TYPE_CHECKING

import duckdb

from . import schema
from .boxes import CODE_COLUMNS
from .catalog import _IDENT, _RESERVED, quote_ident
from .errors import CatalogError, CorruptCatalog
from .progress import Progress, reporter, track_statement

if TYPE_CHECKING:
    from .catalog import Catalog

FORMAT = "clip-branches-parquet"
FILES = ("codes.parquet", "images.parquet", "blocks.parquet", "catalog.json")
# A row group spans many blocks: Parquet readers pay per row group, and the statistics of 64
# consecutive k-d blocks are still tight, since they form one subtree.
ROW_GROUP_BLOCKS = 64


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def export_catalog(cat: Catalog, out: Path, *, overwrite: bool = False, progress: Progress = None) -> dict:
    """Write ``cat`` to the directory ``out``; returns the row count and file sizes.
    ``progress`` (see :mod:`engine.progress`) counts rows written, over all files."""
    if out.exists() and not overwrite:
        raise CatalogError(f"{out} already exists; choose another directory or pass overwrite")
    if not out.parent.is_dir():
        raise CatalogError(f"directory {out.parent} does not exist")
    index = cat.setting("index") or {}
    row_group = max(2048, int(index.get("block_size", 2048)) * ROW_GROUP_BLOCKS)
    con = cat.con
    copies = [  # (file, table, sort key, COPY options)
        ("codes.parquet", "codes", "pos", f"(FORMAT parquet, ROW_GROUP_SIZE {row_group}, COMPRESSION zstd)"),
        ("images.parquet", "images", "id", "(FORMAT parquet, COMPRESSION zstd)"),
        ("blocks.parquet", "blocks", "block_id", "(FORMAT parquet)"),
        ("artifacts.parquet", "artifacts", "name", "(FORMAT parquet)"),
    ]
    rows = [int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]) for _, table, _, _ in copies]
    total = sum(rows)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with reporter("export", "rows", progress) as report:
            report(0, total)
            done = 0
            for (name, table, key, options), n in zip(copies, rows, strict=True):
                with track_statement(con, report, done, n, total):
                    con.execute(f"COPY (SELECT * FROM {table} ORDER BY {key}) TO {_sql_path(tmp / name)} {options}")
                done += n
                if done < total:  # the last report waits for the export to be in place
                    report(done, total)
            meta = {"format": FORMAT, "schema_version": schema.latest_version(), "rows": len(cat),
                    "settings": cat.settings()}
            (tmp / "catalog.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
            for f in tmp.iterdir():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            _swap_in(tmp, out)
            report(total, total)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"rows": meta["rows"], "directory": str(out),
            "bytes": {f: (out / f).stat().st_size for f in FILES}}


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


def import_catalog(cls: type[Catalog], src: Path, path: Path, *, progress: Progress = None) -> Catalog:
    """Create a catalog at ``path`` from an export directory, block order and zone maps included.

    The catalog is built under a hidden name beside ``path`` and renamed into place when it is
    complete, so an interrupted import leaves no file at ``path`` and can simply be run again.
    ``progress`` (see :mod:`engine.progress`) counts rows read, over all files."""
    missing = [f for f in FILES if not (src / f).is_file()]
    if missing:
        raise CatalogError(f"{src} is not a clip-branches export: missing {', '.join(missing)}")
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
    cat = cls.create(tmp)
    report = reporter("import", "rows", progress)
    try:
        con = cat.con
        codes_sql = _sql_path(src / "codes.parquet")
        images_sql = _sql_path(src / "images.parquet")
        names = [r[0] for r in con.execute(f"SELECT name FROM parquet_schema({codes_sql})").fetchall()]
        absent = [c for c in ("pos", "id", *CODE_COLUMNS) if c not in names]
        if absent:
            raise CorruptCatalog(f"codes.parquet lacks columns {absent}")
        img_types = con.execute(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {images_sql})").fetchall()
        existing = {r[0].lower() for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = 'images' AND schema_name = 'main'").fetchall()}
        inserts = [  # (table, parquet file, ORDER BY)
            ("images", images_sql, ""), ("codes", codes_sql, " ORDER BY pos"),
            ("blocks", _sql_path(src / "blocks.parquet"), " ORDER BY block_id"),
        ]
        if (src / "artifacts.parquet").is_file():
            inserts.append(("artifacts", _sql_path(src / "artifacts.parquet"), ""))
        # the row counts come from the files' footers; nothing is read twice
        rows = [int(con.execute(f"SELECT count(*) FROM {f}").fetchall()[0][0]) for _, f, _ in inserts]
        total, done = sum(rows), 0
        report(0, total)
        con.execute("BEGIN TRANSACTION")
        try:
            for name, ctype in img_types:
                if name.lower() not in existing:
                    if not _IDENT.match(name) or name.lower() in _RESERVED:
                        raise CorruptCatalog(f"images.parquet has a column named {name!r}, which a catalog cannot hold")
                    con.execute(f"ALTER TABLE images ADD COLUMN {quote_ident(name)} {ctype}")
            for (table, file, order), n in zip(inserts, rows, strict=True):
                with track_statement(con, report, done, n, total):
                    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM {file}{order}")
                done += n
                if done < total:  # the last report waits for the catalog to be in place
                    report(done, total)
            n_codes, n_pos, max_pos = con.execute("SELECT count(*), count(DISTINCT pos), max(pos) FROM codes").fetchall()[0]
            if n_codes != meta.get("rows") or n_pos != n_codes or (n_codes and max_pos != n_codes - 1):
                raise CorruptCatalog(f"{src}: codes.parquet holds {n_codes} rows, expected {meta.get('rows')} "
                                     "with positions 0..n-1")
            settings = dict(meta.get("settings") or {})
            settings["data_version"] = 0
            cat._set_settings(settings)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        schema.refresh_views(con)
        con.execute("CHECKPOINT")
        cat.close()
        os.replace(tmp, path)
    except duckdb.Error as e:
        cat.close()
        _remove(tmp)
        report.close()
        raise CorruptCatalog(f"could not import {src}: {str(e).splitlines()[0]}") from None
    except BaseException:
        cat.close()
        _remove(tmp)
        report.close()
        raise
    report(total, total)
    report.close()
    return cls.open(path)


def _remove(path: Path) -> None:
    for p in (path, Path(f"{path}.wal")):
        p.unlink(missing_ok=True)
