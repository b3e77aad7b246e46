"""The stages of one ingestion run (:class:`IngestRun`) and the report it fills
(:class:`IngestReport`): planning against the catalog, manifest metadata, committing batches
(:class:`BatchWriter`) and the end of the run. The drivers (:mod:`engine.ingest.local`,
:mod:`engine.ingest.parts`) run them."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from ..catalog import Catalog
from ..codes.pipeline import code_new_images
from ..encoders import Encoder
from ..errors import IngestError, ReadOnlyError
from ..store.database import Transaction
from ..store.sqlnames import quote_ident
from .embeddings import PartStore
from .imageio import DecodedBatch, thumbnail_path
from .sources import MISSING, ScannedFiles, check_metadata_columns

# DuckDB type names a metadata column may have: scalars, DECIMAL(p,s) and lists of them. Nested
# types carry field names from the file into the DDL, so they are refused.
_SCALAR_TYPE = re.compile(r"^[A-Z][A-Z0-9_ ]*(\(\d+(, ?\d+)?\))?(\[\])?$")


@dataclass
class IngestReport:
    """What one run did. Times are wall-clock seconds except the worker-side ones
    (``time_decode_s``, ``time_preprocess_s``, ``time_thumbs_s``), which add up the time spent
    on each file across all worker processes."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    coded: int = 0  # new images given codes by the stored head, searchable before the next index
    skipped: int = 0  # len(skipped_files): failed now, known bad from earlier runs, unusable rows
    skipped_files: list[tuple[str, str]] = field(default_factory=list)  # (uri, reason)
    known_bad: int = 0  # of those, unchanged bad files not retried
    ignored_columns: list[str] = field(default_factory=list)
    encoder: str = ""
    workers: int = 0
    batch_size: int = 0
    images_per_second: float = 0.0  # files decoded and embedded (or refused) per second of the embedding loop
    time_total_s: float = 0.0
    time_scan_s: float = 0.0
    time_embed_s: float = 0.0  # wall time of the loop: wait for batches + encode + write
    time_wait_s: float = 0.0  # the main process waiting for decoded batches
    time_encode_s: float = 0.0
    time_write_s: float = 0.0
    time_finish_s: float = 0.0  # removals and clean-up
    time_decode_s: float = 0.0
    time_preprocess_s: float = 0.0
    time_thumbs_s: float = 0.0
    run_id: int = 0

    def to_json(self) -> dict:
        out = asdict(self)
        out["skipped_files"] = [list(p) for p in self.skipped_files]
        return out


# -- the run ---------------------------------------------------------------------------------
class IngestRun:
    """One ingestion run over scanned files, in stages every driver runs in order: planning
    (metadata columns checked and added, each file sorted into new, changed, unchanged or known
    bad, the run recorded), writing (the driver embeds the planned files, locally or on Spark,
    and commits them batch by batch through :attr:`writer`), and :meth:`finish`.

    ``encoder``: what the catalog records about the encoder (``id``, ``dim``), which the driver
    has checked against the catalog's (:func:`check_encoder`)."""

    def __init__(self, cat: Catalog, scanned: ScannedFiles, encoder: Encoder, report: IngestReport):
        self.cat, self.scanned, self.report = cat, scanned, report
        self.parts = PartStore(cat)
        self.parts.remove_debris()
        self.meta = read_metadata(cat, scanned, report)
        self.plan = plan_files(cat, scanned, encoder.id)
        report.run_id = _start_run(cat, scanned, encoder.id)
        report.unchanged = len(self.plan.unchanged)
        self.writer = BatchWriter(cat, self.parts, scanned, self.plan, self.meta, encoder, report)

    def finish(self, not_written: Sequence[tuple[str, str]] = ()) -> None:
        """Refresh unchanged rows, record unusable ones, remove deleted files' images and drop
        unused parts; count the skipped files (``not_written``: planned files the driver did
        not write, with why)."""
        t0 = time.perf_counter()
        _finish(self.cat, self.parts, self.scanned, self.plan, self.meta, self.writer.lost_ids, self.report)
        report = self.report
        report.coded = code_new_images(self.cat)
        report.time_finish_s = time.perf_counter() - t0
        report.skipped_files += [*not_written, *self.plan.known_bad, *self.scanned.problems]
        report.known_bad = len(self.plan.known_bad)
        report.skipped = len(report.skipped_files)

    def close(self, started: float) -> IngestReport:
        """Record the run's end and totals (``started``: its ``perf_counter`` start)."""
        self.report.time_total_s = time.perf_counter() - started
        _end_run(self.cat, self.report)
        return self.report


def check_args(cat: Catalog, batch_size: int, workers: int | None, max_pixels: int) -> None:
    if cat.read_only:
        raise ReadOnlyError(f"{cat.path} is open read-only; open it with read_only=False to ingest")
    for name, value, low in (("batch_size", batch_size, 1), ("max_pixels", max_pixels, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise IngestError(f"{name} must be an integer >= {low}, got {value!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise IngestError(f"workers must be an integer >= 0 (0: decode in this process), got {workers!r}")


def check_encoder(cat: Catalog, encoder: Encoder, reembed: bool) -> None:
    """Refuse to mix embedding spaces: the catalog keeps one encoder unless ``reembed``."""
    recorded = cat.setting("encoder")
    has_parts = cat.store.value("SELECT count(*) FROM embedding_parts") > 0
    if recorded not in (None, encoder.id) and has_parts and not reembed:
        raise IngestError(
            f"{cat.path} holds embeddings from encoder {recorded!r}; ingesting with {encoder.id!r} would mix "
            f"two embedding spaces. Ingest with --encoder {recorded}, or re-embed with reembed=True "
            "(then re-ingest every source and rebuild the head and index)"
        )
    if reembed and recorded != encoder.id:
        # Recorded now, so that an interrupted re-embedding resumes without the flag.
        cat.store.set_settings({"encoder": encoder.id})


def _image_columns(cat: Catalog) -> dict[str, tuple[str, str]]:
    """images' columns: lower-case name -> (name, DuckDB type)."""
    return {name.lower(): (name, dtype) for name, dtype in cat.store.columns("images")}


def _start_run(cat: Catalog, scanned: ScannedFiles, encoder_id: str) -> int:
    return int(
        cat.store.execute(
            "INSERT INTO ingest_runs (run_id, sources, encoder) SELECT coalesce(max(run_id), 0) + 1, ?, ? "
            "FROM ingest_runs RETURNING run_id",
            [json.dumps([s.key for s in scanned.sources]), encoder_id],
        )[0][0]
    )


def _end_run(cat: Catalog, report: IngestReport) -> None:
    cat.store.execute(
        "UPDATE ingest_runs SET finished_at = current_timestamp, added = ?, updated = ?, removed = ?, "
        "skipped = ? WHERE run_id = ?",
        [report.added, report.updated, report.removed, report.skipped, report.run_id],
    )


# -- metadata columns ------------------------------------------------------------------------
@dataclass
class Metadata:
    """Manifest metadata aligned with the scanned files.

    table : one row per manifest row used, columns typed as in ``images``
    row_of : int64 (n_files,), the table row of each file, -1 for files without one
    """

    table: pa.Table | None
    row_of: np.ndarray

    @property
    def columns(self) -> list[str]:
        return [] if self.table is None else self.table.column_names

    def rows(self, entries: np.ndarray) -> tuple[pa.Table | None, np.ndarray]:
        """The metadata of files ``entries`` (nulls where a file has none) and bool has_row."""
        at = self.row_of[entries]
        has = at >= 0
        if self.table is None:
            return None, has
        return self.table.take(pa.array(np.where(has, at, 0), mask=~has)), has


def read_metadata(cat: Catalog, scanned: ScannedFiles, report: IngestReport) -> Metadata:
    """Validate the manifests' columns, add the new ones to ``images`` and cast every value to
    its column's type up front, so no batch can fail halfway on a bad value."""
    row_of = np.full(len(scanned), -1, np.int64)
    tables, offset = [], 0
    existing = _image_columns(cat)
    added = False
    manifests = [s for s in scanned.sources if s.kind == "manifest"]
    for m, source in zip(scanned.manifests, manifests, strict=True):
        kept, ignored = check_metadata_columns(m.table.column_names, source.key)
        report.ignored_columns += [c for c in ignored if c not in report.ignored_columns]
        if not kept:
            continue
        table = m.table.select(kept)
        added |= _add_columns(cat, table, existing, source.key)
        tables.append(_cast(cat, table, existing, source.key))
        row_of[m.entries] = np.arange(offset, offset + len(m.entries))
        offset += len(m.entries)
    if added:
        cat.store.refresh_views()
    # Manifests with different columns stack with nulls where a column is missing.
    table = pa.concat_tables(tables, promote_options="default") if tables else None
    return Metadata(table, row_of)


def _add_columns(cat: Catalog, table: pa.Table, existing: dict, manifest: str) -> bool:
    types = dict(cat.store.read("SELECT column_name, column_type FROM (DESCRIBE _manifest)", _manifest=table))
    added = False
    for name in table.column_names:
        if name.lower() in existing:
            continue
        dtype = "VARCHAR" if types[name] == '"NULL"' else types[name]
        if not _SCALAR_TYPE.match(dtype):
            raise IngestError(
                f"manifest {manifest}: column {name!r} has type {dtype}; only plain values "
                "(text, numbers, dates, booleans) and lists of them can be stored; flatten or drop it"
            )
        cat.store.execute(f"ALTER TABLE images ADD COLUMN {quote_ident(name)} {dtype}")
        existing[name.lower()] = (name, dtype)
        added = True
    return added


def _cast(cat: Catalog, table: pa.Table, existing: dict, manifest: str) -> pa.Table:
    """``table`` with each column cast to the type (and spelling) of its ``images`` column."""
    for name in table.column_names:
        col, dtype = existing[name.lower()]
        if not _SCALAR_TYPE.match(dtype):
            raise IngestError(
                f"manifest {manifest}: column {name!r} would go into images.{col}, whose type "
                f"{dtype} takes no manifest values; rename the column"
            )
        bad = cat.store.value(
            f"SELECT count(*) FROM _manifest WHERE {quote_ident(name)} IS NOT NULL "
            f"AND TRY_CAST({quote_ident(name)} AS {dtype}) IS NULL",
            _manifest=table,
        )
        if bad:
            raise IngestError(
                f"manifest {manifest}: {bad} value(s) of column {name!r} cannot be stored in "
                f"images.{col} ({dtype}); fix them or rename the column"
            )
    select = ", ".join(
        f"CAST({quote_ident(n)} AS {existing[n.lower()][1]}) AS {quote_ident(existing[n.lower()][0])}"
        for n in table.column_names
    )
    return cat.store.arrow(f"SELECT {select} FROM _manifest", _manifest=table)


# -- what to do with each file ---------------------------------------------------------------
@dataclass
class Plan:
    """The files of a run, sorted. ``todo`` are positions into :class:`ScannedFiles` to embed,
    ``todo_ids`` their image ids (kept for changed files, fresh for new ones)."""

    todo: np.ndarray
    todo_ids: np.ndarray
    todo_new: np.ndarray
    unchanged: np.ndarray  # positions
    unchanged_ids: np.ndarray
    known_bad: list[tuple[str, str]]
    gone_ids: np.ndarray  # images whose file changed into a known-bad one


def plan_files(cat: Catalog, scanned: ScannedFiles, encoder_id: str) -> Plan:
    scan = pa.table(
        {
            "entry": np.arange(len(scanned), dtype=np.int64),
            "uri": pa.array(scanned.uris, pa.string()),
            "file_size": scanned.sizes,
            "file_mtime_ns": scanned.mtimes_ns,
        }
    )
    rows = cat.store.arrow(
        """
            WITH cur AS (SELECT uri, min(id) AS id FROM images WHERE uri IS NOT NULL GROUP BY uri),
                 bad AS (SELECT uri, file_size, file_mtime_ns, min(reason) AS reason FROM skipped
                         WHERE file_size IS NOT NULL GROUP BY ALL)
            SELECT s.entry, c.id,
                   coalesce(i.file_size = s.file_size AND i.file_mtime_ns = s.file_mtime_ns
                            AND p.encoder = $enc, false) AS current,
                   b.reason
            FROM _scan s
            LEFT JOIN cur c USING (uri)
            LEFT JOIN images i ON i.id = c.id
            LEFT JOIN embedding_parts p ON p.part_id = i.embedding_part
            LEFT JOIN bad b ON b.uri = s.uri AND b.file_size = s.file_size AND b.file_mtime_ns = s.file_mtime_ns
            ORDER BY s.entry""",
        {"enc": encoder_id},
        _scan=scan,
    )
    next_id = cat.store.value(
        "SELECT greatest(coalesce((SELECT max(id) FROM images), -1), "
        "coalesce((SELECT max(id) FROM codes), -1)) + 1"
    )
    entry = rows.column("entry").to_numpy()
    known = rows.column("id").is_valid().to_numpy(zero_copy_only=False)
    ids = rows.column("id").fill_null(-1).to_numpy()
    current = rows.column("current").to_numpy(zero_copy_only=False)
    reason = rows.column("reason")
    bad = reason.is_valid().to_numpy(zero_copy_only=False)
    todo_mask = ~current & ~bad
    new = todo_mask & ~known
    todo_ids = ids.copy()
    todo_ids[new] = np.arange(next_id, next_id + int(new.sum()), dtype=np.int64)
    reasons = reason.to_pylist()
    return Plan(
        todo=entry[todo_mask],
        todo_ids=todo_ids[todo_mask],
        todo_new=new[todo_mask],
        unchanged=entry[current],
        unchanged_ids=ids[current],
        known_bad=[(scanned.uris[e], reasons[k]) for k, e in enumerate(entry) if bad[k] and not current[k]],
        gone_ids=ids[bad & known & ~current],
    )


# -- writing ---------------------------------------------------------------------------------
_FILE_COLUMNS = ("id", "uri", "source", "file_size", "file_mtime_ns", "width", "height", "embedding_part")


class BatchWriter:
    """Commits one decoded and encoded batch: part file, then rows in one transaction."""

    def __init__(
        self,
        cat: Catalog,
        store: PartStore,
        scanned: ScannedFiles,
        plan: Plan,
        meta: Metadata,
        encoder: Encoder,
        report: IngestReport,
    ):
        self.cat, self.store, self.scanned, self.plan, self.meta = cat, store, scanned, plan, meta
        self.encoder, self.report = encoder, report
        self.source_keys = [s.key for s in scanned.sources]
        self.lost_ids: list[int] = []  # changed files that no longer decode: their images go at the end
        self.encoder_recorded = cat.setting("encoder") == encoder.id

    def write(self, batch: DecodedBatch, emb: np.ndarray) -> None:
        ids = self.plan.todo_ids[batch.index]
        ok = batch.ok
        part = self.store.write(ids[ok], emb) if ok.any() else None
        parts = [] if part is None else [(part[0], part[1], ids[ok])]
        self.commit(batch.index, ok, batch.width, batch.height, batch.reasons, parts)

    def commit(
        self,
        index: np.ndarray,
        ok: np.ndarray,
        width: np.ndarray,
        height: np.ndarray,
        reasons: Sequence[str | None],
        parts: list[tuple[int, str, np.ndarray]],
    ) -> None:
        """Record the files ``plan.todo[index]`` in one transaction: the ``ok`` ones as images
        whose embeddings are in ``parts`` ((part_id, file name, ids) of parts already in the
        store under their final names), the others as skipped with their ``reasons``. The parts
        are deleted if the transaction fails."""
        entries = self.plan.todo[index]
        ids = self.plan.todo_ids[index]
        try:
            part_of = _part_of(ids[ok], parts)
            rows = self._rows(
                entries[ok], ids[ok], width[ok], height[ok], self.plan.todo_new[index][ok], part_of
            )
            failed = [
                (self.scanned.uris[e], r, int(self.scanned.sizes[e]), int(self.scanned.mtimes_ns[e]))
                for e, r, good in zip(entries, reasons, ok, strict=True)
                if not good
            ]
            self._commit(rows, parts, [self.scanned.uris[e] for e in entries], failed)
        except BaseException:
            for _, name, _ in parts:
                (self.store.dir / name).unlink(missing_ok=True)
            raise
        new = self.plan.todo_new[index]
        self.report.added += int((ok & new).sum())
        self.report.updated += int((ok & ~new).sum())
        self.report.skipped_files += [(u, r) for u, r, _, _ in failed]
        self.lost_ids += ids[~ok & ~new].tolist()

    def _rows(
        self,
        entries: np.ndarray,
        ids: np.ndarray,
        width: np.ndarray,
        height: np.ndarray,
        new: np.ndarray,
        part_of: np.ndarray,
    ) -> pa.Table:
        s = self.scanned
        meta, has_meta = self.meta.rows(entries)
        cols = {
            "id": pa.array(ids, pa.int64()),
            "uri": pa.array([s.uris[e] for e in entries], pa.string()),
            "source": pa.array([self.source_keys[s.source_index[e]] for e in entries], pa.string()),
            "file_size": pa.array(s.sizes[entries], pa.int64()),
            "file_mtime_ns": pa.array(s.mtimes_ns[entries], pa.int64()),
            "width": pa.array(width, pa.int32()),
            "height": pa.array(height, pa.int32()),
            "embedding_part": pa.array(part_of, pa.int32()),
            "_new": pa.array(new, pa.bool_()),
            "_has_meta": pa.array(has_meta, pa.bool_()),
        }
        if meta is not None:
            cols.update({c: meta.column(c) for c in meta.column_names})
        return pa.table(cols)

    def _commit(
        self, rows: pa.Table, parts: list[tuple[int, str, np.ndarray]], uris: list[str], failed: list[tuple]
    ) -> None:
        meta_cols = self.meta.columns
        with self.cat.store.write() as tx:
            if rows.num_rows:
                _upsert_images(tx, rows, meta_cols)
            if parts:
                tx.executemany(
                    "INSERT INTO embedding_parts (part_id, file, encoder, dim, n_rows) VALUES (?, ?, ?, ?, ?)",
                    [
                        [part_id, name, self.encoder.id, self.encoder.dim, len(part_ids)]
                        for part_id, name, part_ids in parts
                    ],
                )
            tx.execute("DELETE FROM skipped WHERE uri IN (SELECT unnest(?))", [uris])
            if failed:
                tx.executemany(
                    "INSERT INTO skipped (uri, reason, file_size, file_mtime_ns) VALUES (?, ?, ?, ?)",
                    [list(f) for f in failed],
                )
            if parts and not self.encoder_recorded:
                self.cat.store.set_settings({"encoder": self.encoder.id})
        self.encoder_recorded |= bool(parts)


def _part_of(ids: np.ndarray, parts: list[tuple[int, str, np.ndarray]]) -> np.ndarray:
    """int64 (len(ids),): the part_id of the part holding each of ``ids``; every id must be in
    exactly one part and every part id among ``ids``."""
    if not parts:
        if len(ids):
            raise IngestError(f"{len(ids)} embedded images have no part")
        return np.zeros(0, np.int64)
    held = np.concatenate([p[2] for p in parts]).astype(np.int64)
    owner = np.concatenate([np.full(len(p[2]), p[0], np.int64) for p in parts])
    order = np.argsort(held, kind="stable")
    at = np.searchsorted(held, ids, sorter=order).clip(0, max(len(held) - 1, 0))
    if len(held) != len(ids) or not np.array_equal(held[order[at]], ids):
        raise IngestError("the embedding parts do not hold exactly the embedded images")
    return owner[order[at]]


def _upsert_images(tx: Transaction, rows: pa.Table, meta_cols: list[str]) -> None:
    """Insert the ``_new`` rows of ``rows`` and update the others by id; metadata columns only
    change for rows that have a manifest row (``_has_meta``)."""
    cols = [*_FILE_COLUMNS, *meta_cols]
    names = ", ".join(quote_ident(c) for c in cols)
    sets = ", ".join(
        [f"{c} = r.{c}" for c in _FILE_COLUMNS[1:]]
        + [
            f"{quote_ident(c)} = CASE WHEN r._has_meta THEN r.{quote_ident(c)} ELSE images.{quote_ident(c)} END"
            for c in meta_cols
        ]
    )
    new = rows.column("_new").to_numpy(zero_copy_only=False)
    with tx.registered(_rows=rows):
        if new.any():
            tx.execute(f"INSERT INTO images ({names}) SELECT {names} FROM _rows WHERE _new")
        if not new.all():
            tx.execute(f"UPDATE images SET {sets} FROM _rows r WHERE images.id = r.id AND NOT r._new")


# -- the end of a run ------------------------------------------------------------------------
def _finish(
    cat: Catalog,
    store: PartStore,
    scanned: ScannedFiles,
    plan: Plan,
    meta: Metadata,
    lost_ids: list[int],
    report: IngestReport,
) -> None:
    """Refresh unchanged rows' source and metadata, record unusable rows, forget stale skips,
    remove deleted files' images and drop parts nobody points to."""
    # A file that is listed but cannot be read right now keeps its image; one that is gone does not.
    present = [u for u, reason in scanned.problems if reason != MISSING]
    seen = pa.table({"uri": pa.array(scanned.uris + present, pa.string())})
    with cat.store.write(_seen=seen) as tx:
        _refresh_unchanged(tx, scanned, plan, meta)
        stale_skips = tx.execute(
            "SELECT uri FROM skipped k WHERE NOT EXISTS (SELECT 1 FROM _seen s WHERE s.uri = k.uri)"
        )
        forget = [u for (u,) in stale_skips if _under(u, scanned.folder_prefixes()) or not os.path.exists(u)]
        problems = dict(scanned.problems)  # one row per uri
        tx.execute("DELETE FROM skipped WHERE uri IN (SELECT unnest(?))", [forget + list(problems)])
        if problems:
            tx.executemany(
                "INSERT INTO skipped (uri, reason) VALUES (?, ?)", [list(p) for p in problems.items()]
            )
        gone = _deleted_images(tx, scanned)
    remove = np.unique(np.concatenate([gone, plan.gone_ids, np.asarray(lost_ids, np.int64)]).astype(np.int64))
    report.removed = cat.remove(remove) if len(remove) else 0
    for i in remove.tolist():
        thumbnail_path(cat.side_dir, i).unlink(missing_ok=True)
    store.collect_garbage()


def _refresh_unchanged(tx: Transaction, scanned: ScannedFiles, plan: Plan, meta: Metadata) -> None:
    """Unchanged files keep their embedding but take their current source and manifest values."""
    if not len(plan.unchanged):
        return
    values, has = meta.rows(plan.unchanged)
    cols = {
        "id": pa.array(plan.unchanged_ids, pa.int64()),
        "source": pa.array(
            [scanned.sources[scanned.source_index[e]].key for e in plan.unchanged], pa.string()
        ),
        "_has_meta": pa.array(has, pa.bool_()),
    }
    if values is not None:
        cols.update({c: values.column(c) for c in values.column_names})
    sets = ", ".join(
        ["source = r.source"]
        + [
            f"{quote_ident(c)} = CASE WHEN r._has_meta THEN r.{quote_ident(c)} ELSE images.{quote_ident(c)} END"
            for c in meta.columns
        ]
    )
    # Only rows that differ are written, so a run over an unchanged manifest writes nothing.
    differs = " OR ".join(
        ["images.source IS DISTINCT FROM r.source"]
        + [
            f"(r._has_meta AND images.{quote_ident(c)} IS DISTINCT FROM r.{quote_ident(c)})"
            for c in meta.columns
        ]
    )
    with tx.registered(_unchanged=pa.table(cols)):
        tx.execute(f"UPDATE images SET {sets} FROM _unchanged r WHERE images.id = r.id AND ({differs})")


def _deleted_images(tx: Transaction, scanned: ScannedFiles) -> np.ndarray:
    """Ids of images whose file this run's sources no longer hold: listed by one of these
    sources before and not now, or under one of these folders and gone from disk. Images under
    a folder that could not be listed are kept. Runs in the write ``tx``, with ``_seen`` registered."""
    prefixes = scanned.folder_prefixes()
    keys = [s.key for s in scanned.sources]
    rows = tx.execute(
        "SELECT id, uri, source FROM images i WHERE uri IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM _seen s WHERE s.uri = i.uri) "
        "AND (source IN (SELECT unnest(?)) OR list_bool_or([starts_with(uri, p) FOR p IN ?]))",
        [keys, prefixes],
    )
    unlisted = [p if p.endswith(os.sep) else p + os.sep for p in scanned.unlisted_dirs]
    key_set = set(keys)
    return np.array(
        [
            i
            for i, uri, src in rows
            if not _under(uri, unlisted) and (src in key_set or not os.path.exists(uri))
        ],
        np.int64,
    )


def _under(uri: str, prefixes: Sequence[str]) -> bool:
    return any(uri.startswith(p) for p in prefixes)
