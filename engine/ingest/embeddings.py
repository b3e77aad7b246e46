"""Raw embeddings: float16 Parquet parts under ``<catalog>.d/embeddings/``.

A part is written and renamed into place before the transaction that records it in
``embedding_parts`` (and points its images' ``embedding_part`` at it) commits, so a part on disk
that no row records is debris from an interrupted run, and a recorded part is always complete.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..catalog import Catalog
from ..errors import IngestError, UnknownIds
from ..store.files import atomic_path, link_or_copy


class PartStore:
    """The float16 Parquet parts under ``<catalog>.d/embeddings/``. A part holds columns
    ``id`` int64 and ``embedding`` fixed_size_list<float16>[dim] (DuckDB reads it as FLOAT[])."""

    def __init__(self, cat: Catalog):
        self.cat = cat
        self.dir = cat.side_dir / "embeddings"
        self.next_id = int(cat.store.value("SELECT coalesce(max(part_id), 0) + 1 FROM embedding_parts"))

    def recorded(self) -> set[str]:
        return {r[0] for r in self.cat.store.read("SELECT file FROM embedding_parts")}

    def remove_debris(self) -> int:
        """Delete part files no transaction recorded (an interrupted run's); returns how many."""
        if not self.dir.is_dir():
            return 0
        keep = self.recorded()
        gone = 0
        for p in self.dir.iterdir():
            if p.name not in keep and p.is_file():
                p.unlink(missing_ok=True)
                gone += 1
        return gone

    def write(self, ids: np.ndarray, emb: np.ndarray) -> tuple[int, str]:
        """Write a part durably under its final name; returns (part_id, file name). The caller
        records it in the same transaction as its rows, or the next run deletes it."""
        part_id, name = self._next_name()
        write_part_file(self.dir / name, ids, emb)
        return part_id, name

    def adopt(self, src: str | os.PathLike) -> tuple[int, str]:
        """Bring in a finished part file written elsewhere (by :func:`write_part_file`) under the
        next part name: a hard link when ``src`` is on the same file system, else a copy; ``src``
        stays. Returns (part_id, file name), with the same contract as :meth:`write`."""
        part_id, name = self._next_name()
        link_or_copy(src, self.dir / name)
        return part_id, name

    def _next_name(self) -> tuple[int, str]:
        part_id, self.next_id = self.next_id, self.next_id + 1
        self.dir.mkdir(parents=True, exist_ok=True)
        return part_id, f"part-{part_id:08d}.parquet"

    def collect_garbage(self) -> int:
        """Delete parts no image points to any more (all rows re-embedded or removed)."""
        with self.cat.store.write() as tx:
            dead = tx.execute(
                "SELECT part_id, file FROM embedding_parts p WHERE NOT EXISTS "
                "(SELECT 1 FROM images i WHERE i.embedding_part = p.part_id)"
            )
            if dead:
                tx.execute(
                    "DELETE FROM embedding_parts WHERE part_id IN (SELECT unnest(?))", [[d[0] for d in dead]]
                )
        for _, name in dead:  # after the commit: a crash in between leaves debris, never a dangling row
            (self.dir / name).unlink(missing_ok=True)
        return len(dead)


def write_part_file(path: str | os.PathLike, ids: np.ndarray, emb: np.ndarray) -> None:
    """Write ids int64 (n,) and embeddings (n, dim), stored as float16, as a part file at
    ``path``: under a temporary name, flushed to disk, then renamed, so ``path`` is whole or absent."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, dim = emb.shape
    values = pa.array(emb.astype(np.float16).ravel(), pa.float16())
    table = pa.table(
        {"id": pa.array(ids, pa.int64()), "embedding": pa.FixedSizeListArray.from_arrays(values, dim)}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", use_dictionary=False)


def embeddings_dir(cat: Catalog) -> Path:
    """Where the raw-embedding parts live."""
    return cat.side_dir / "embeddings"


def load_embeddings(
    cat: Catalog, ids: Sequence[int] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The current raw embedding of each image: (ids int64 (n,), float32 (n, dim)).

    Without ``ids``: every image that has one, by id. With ``ids``: those images in that order;
    :class:`UnknownIds` for ids not in the catalog, :class:`IngestError` for images without an
    embedding. Raises :class:`IngestError` when the embeddings come from more than one encoder.
    """
    want = None if ids is None else np.asarray(ids, dtype=np.int64).ravel()
    if want is None:
        rows = cat.store.read(
            "SELECT i.id, p.part_id, p.file, p.encoder, p.dim FROM images i "
            "JOIN embedding_parts p ON p.part_id = i.embedding_part ORDER BY i.id"
        )
    else:
        rows = _rows_for(cat, want)
    if not rows:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    encoders = sorted({r[3] for r in rows})
    if len(encoders) > 1:
        raise IngestError(
            f"{cat.path} holds embeddings from several encoders ({', '.join(encoders)}); re-ingest "
            f"every source with the catalog's encoder {cat.setting('encoder')!r} to make them uniform"
        )
    dim = int(rows[0][4])
    got_ids = np.array([r[0] for r in rows], np.int64)
    part_of = np.array([r[1] for r in rows], np.int64)
    files = {r[1]: r[2] for r in rows}
    out = np.empty((len(rows), dim), np.float32)
    for part_id, name in files.items():
        at = np.flatnonzero(part_of == part_id)
        out[at] = read_part(embeddings_dir(cat) / name, got_ids[at], dim)
    if want is None:
        return got_ids, out
    order = {int(i): k for k, i in enumerate(got_ids)}
    return want.copy(), out[[order[int(i)] for i in want]]


def _rows_for(cat: Catalog, want: np.ndarray) -> list[tuple]:
    rows = cat.store.read(
        "SELECT w.id, p.part_id, p.file, p.encoder, p.dim, i.id IS NOT NULL AS known FROM _want w "
        "LEFT JOIN images i ON i.id = w.id LEFT JOIN embedding_parts p ON p.part_id = i.embedding_part "
        "ORDER BY w.id",
        _want=pa.table({"id": np.unique(want)}),
    )
    unknown = [r[0] for r in rows if not r[5]]
    if unknown:
        raise UnknownIds(unknown)
    missing = [r[0] for r in rows if r[1] is None]
    if missing:
        raise IngestError(
            f"{len(missing)} image(s) have no raw embedding (e.g. id {missing[0]}); ingest their files first"
        )
    return [r[:5] for r in rows]


def read_part(path: Path, ids: np.ndarray, dim: int) -> np.ndarray:
    """float32 (len(ids), dim): the rows of part ``path`` for ``ids``."""
    try:
        table = pq.read_table(path, columns=["id", "embedding"])
    except (OSError, pa.ArrowException) as e:
        raise IngestError(
            f"embedding part {path} is unreadable ({str(e).splitlines()[0]}); "
            "re-embed with `clip-branches ingest` and reembed"
        ) from None
    part_ids = table.column("id").to_numpy()
    values = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    matrix = values.reshape(len(part_ids), dim)
    order = np.argsort(part_ids, kind="stable")
    at = order[np.searchsorted(part_ids, ids, sorter=order)]
    if not np.array_equal(part_ids[at], ids):
        raise IngestError(f"embedding part {path} lacks some of its images' rows; re-ingest their sources")
    return matrix[at].astype(np.float32)
