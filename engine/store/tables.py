"""The catalog's rows in its DuckDB file: images and their codes, the block zone maps, the head.

Each function takes the :class:`~engine.store.database.Store` and does one read or one write
transaction; the callers (:class:`engine.Catalog`, the index build) validate nothing twice. The
``check_*`` functions turn user input into exactly what these write: uint8 (n, 32) codes,
int64 ids, an Arrow table of metadata columns.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa

from ..boxes import CODE_COLUMNS, N_DIMS
from ..codes.head import Head
from ..codes.quantize import Quantizer
from ..errors import CatalogError, CorruptCatalog, InvalidCodes, UnknownIds
from ..index import layout
from ..resources import sql_text
from .database import DatabaseError, Store, Transaction
from .integrity import REINDEX, tiling_problem
from .sqlnames import RESERVED_COLUMNS, is_metadata_name, quote_ident

# Rows per batch of the streamed code load: 64 MB of codes, few enough Python steps at 100M.
LOAD_BATCH_ROWS = 1 << 21


def new_settings() -> dict[str, Any]:
    """The settings of a new, empty catalog."""
    return {
        "dims": N_DIMS,
        "data_version": 0,
        "index": None,
        "encoder": None,
        "quantizer": None,
        "created_at": now(),
    }


def now() -> str:
    """The time as settings record it: UTC, ISO 8601, seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def codes_table(codes_t: np.ndarray, ids: np.ndarray, first_pos: int = 0) -> pa.Table:
    """The ``codes`` rows of uint8 (32, n) column-major codes and int64 ids, from ``first_pos``."""
    return pa.table(
        {
            "pos": np.arange(first_pos, first_pos + len(ids), dtype=np.int64),
            "id": ids,
            **{c: codes_t[d] for d, c in enumerate(CODE_COLUMNS)},
        }
    )


# -- writing ---------------------------------------------------------------------------------
def add_codes(store: Store, codes: np.ndarray, ids: np.ndarray | None, meta: pa.Table | None) -> np.ndarray:
    """Append rows (codes checked, ``meta`` from :func:`check_metadata`) in one transaction; their ids."""
    n = codes.shape[0]
    n_rows = count(store)
    if ids is None:
        start = store.value("SELECT coalesce(max(id) + 1, 0) FROM images")
        ids = np.arange(start, start + n, dtype=np.int64)
    elif len(ids) != n:
        raise InvalidCodes(f"{len(ids)} ids for {n} codes; give one id per row")
    elif len(np.unique(ids)) != n:
        raise InvalidCodes("ids contain duplicates")
    if n == 0:
        return ids
    new = {"_new_codes": codes_table(codes.T, ids, n_rows)}
    if meta is not None:
        new["_new_meta"] = meta.append_column("id", pa.array(ids))
    meta_cols: list[str] = []
    try:
        with store.memory_limit(), store.write(**new) as tx:  # bounds DuckDB's cache of the file
            clash = tx.execute("SELECT i.id FROM images i JOIN _new_codes n USING (id) ORDER BY 1 LIMIT 10")
            if clash:
                raise InvalidCodes(f"ids already in the catalog: {', '.join(str(r[0]) for r in clash)}")
            if meta is not None:
                meta_cols = _ensure_metadata_columns(store, tx, meta)
                cols = ", ".join(quote_ident(c) for c in meta_cols)
                tx.execute(f"INSERT INTO images (id, {cols}) SELECT id, {cols} FROM _new_meta")
            else:
                tx.execute("INSERT INTO images (id) SELECT id FROM _new_codes")
            tx.execute("INSERT INTO codes BY NAME SELECT * FROM _new_codes")
            store.bump_data_version()
    except DatabaseError as e:
        raise InvalidCodes(f"could not add rows: {str(e).splitlines()[0]}") from None
    if meta_cols:
        store.refresh_views()
    return ids


def append_codes(store: Store, codes: np.ndarray, ids: np.ndarray) -> None:
    """Codes for images that have none yet, after the last position (outside the k-d order, in
    insertion-order blocks until the next build), in one transaction."""
    if len(ids) == 0:
        return
    with store.memory_limit(), store.write() as tx:
        n_rows = int(tx.value("SELECT count(*) FROM codes"))
        with tx.registered(_new_codes=codes_table(codes.T, ids, n_rows)):
            bad = tx.value(
                "SELECT count(*) FROM _new_codes n WHERE EXISTS (SELECT 1 FROM codes c WHERE c.id = n.id) "
                "OR NOT EXISTS (SELECT 1 FROM images i WHERE i.id = n.id)"
            )
            if bad:
                raise InvalidCodes(f"{bad} of the codes are for unknown images or images that have codes")
            tx.execute("INSERT INTO codes BY NAME SELECT * FROM _new_codes")
        store.bump_data_version()


def _ensure_metadata_columns(store: Store, tx: Transaction, meta: pa.Table) -> list[str]:
    existing = {name for name, _ in store.columns("images")}
    types = dict(tx.execute("SELECT column_name, column_type FROM (DESCRIBE _new_meta)"))
    for name in meta.column_names:
        if name not in existing:
            dtype = types[name] if types[name] != '"NULL"' else "VARCHAR"
            tx.execute(f"ALTER TABLE images ADD COLUMN {quote_ident(name)} {dtype}")
    return list(meta.column_names)


def drop_index(store: Store, tx: Transaction) -> None:
    """Forget the block index inside the write ``tx``: selection then scans every row through
    insertion-order zone maps until the next index build."""
    tx.execute("DELETE FROM blocks")
    store.set_settings({"index": None})
    store.bump_data_version()


def replace_codes(store: Store, codes: np.ndarray, ids: np.ndarray) -> None:
    """Make ``codes`` (checked by :func:`check_replacement`) the catalog's codes, in one transaction."""
    with store.write(_new_codes=codes_table(codes.T, ids)) as tx:
        _check_known(tx, "_new_codes")
        tx.execute("DELETE FROM codes")
        tx.execute("INSERT INTO codes BY NAME SELECT * FROM _new_codes")
        drop_index(store, tx)
        store.set_settings({"codes_space": fresh_space()})


def remove(store: Store, ids: np.ndarray) -> int:
    """Delete images and their codes (unknown ids are ignored); how many images went."""
    if len(ids) == 0:
        return 0
    with store.write(_gone=pa.table({"id": ids})) as tx:
        n_images = tx.value("SELECT count(*) FROM images WHERE id IN (SELECT id FROM _gone)")
        n_codes = tx.value("SELECT count(*) FROM codes WHERE id IN (SELECT id FROM _gone)")
        tx.execute("DELETE FROM images WHERE id IN (SELECT id FROM _gone)")
        if n_codes:
            tx.execute("DELETE FROM codes WHERE id IN (SELECT id FROM _gone)")
            # keep positions dense (0..n-1) so that exports and the tail blocks stay simple
            tx.execute(
                "UPDATE codes SET pos = r.new_pos FROM (SELECT id, row_number() OVER (ORDER BY pos) - 1 "
                "AS new_pos FROM codes) AS r WHERE codes.id = r.id"
            )
            drop_index(store, tx)
    return int(n_images)


def write_index(
    store: Store,
    cols: np.ndarray,
    ids: np.ndarray,
    blocks: layout.Blocks,
    index: Mapping[str, Any],
    *,
    check_known: bool,
    on_chunk=None,
) -> None:
    """Replace the codes by ``cols`` uint8 (32, n) and ``ids`` (in block order) and the zone
    maps by ``blocks``, and record ``index`` in the settings, in one transaction. One insert per
    :data:`engine.index.layout.WRITE_CHUNK_ROWS` rows, each followed by ``on_chunk()``; a chunk
    is a view of the arrays, so the write holds no copy of them."""
    n = len(ids)
    with store.write(_blocks=_blocks_table(blocks)) as tx:
        if check_known:
            with tx.registered(_sorted=pa.table({"id": ids})):
                _check_known(tx, "_sorted")
        tx.execute("DELETE FROM codes")
        for s in range(0, max(n, 1), layout.WRITE_CHUNK_ROWS):
            e = min(s + layout.WRITE_CHUNK_ROWS, n)
            with tx.registered(_chunk=codes_table(cols[:, s:e], ids[s:e], s)):
                tx.execute("INSERT INTO codes BY NAME SELECT * FROM _chunk")
            if on_chunk is not None:
                on_chunk()
        tx.execute("DELETE FROM blocks")
        tx.execute("INSERT INTO blocks BY NAME SELECT * FROM _blocks")
        store.set_settings({"index": dict(index)})
        if check_known:  # new codes: what computed them is what the index records, or unknown
            store.set_settings({"codes_space": index.get("codes_space") or fresh_space()})
        store.bump_data_version()
    store.checkpoint()


def head_space(head_sha256: str, quantizer: Mapping[str, Any] | None) -> str:
    """The name of the codes a head and quantizer compute (the ``codes_space`` setting): the
    same head and quantizer always give the same name, any change another."""
    text = f"{head_sha256}\n{json.dumps(quantizer, sort_keys=True)}"
    return "head:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def fresh_space() -> str:
    """A ``codes_space`` for codes of unknown origin (given by the caller, not by a head)."""
    return f"codes:{uuid.uuid4().hex}"


def store_head(store: Store, head: Head, quantizer: Quantizer) -> str:
    """Store the head's weights and its quantizer; the head's sha256."""
    blob = head.to_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    with store.write() as tx:
        store.put_artifact(tx, "head", digest, blob)
        store.set_settings(
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
        store.bump_data_version()
    return digest


# -- reading ---------------------------------------------------------------------------------
def count(store: Store) -> int:
    return int(store.value("SELECT count(*) FROM codes"))


def load_head(store: Store) -> Head:
    """The stored head, checked against its recorded checksum."""
    meta = store.setting("head")
    found = store.artifact("head")
    if meta is None or found is None:
        raise CatalogError(f"{store.path} has no trained head; run `clip-branches train-head {store.path}`")
    digest, blob = found
    if hashlib.sha256(blob).hexdigest() != digest or digest != meta.get("sha256"):
        raise CorruptCatalog(f"the head stored in {store.path} does not match its checksum; train it again")
    return Head.from_bytes(blob)


def load_quantizer(store: Store) -> Quantizer:
    obj = store.setting("quantizer")
    if obj is None:
        raise CatalogError(f"{store.path} has no quantizer; run `clip-branches train-head {store.path}`")
    return Quantizer.from_json(obj)


def load_codes(store: Store) -> tuple[np.ndarray, np.ndarray]:
    """All codes in pos order: uint8 (32, n) column-major and int64 ids. Streamed in batches
    into arrays of their final size, each row put at its ``pos`` (no sort, no second copy);
    CorruptCatalog unless the positions are exactly ``0..n-1``."""
    with store.reading(), store.lock:
        n = int(store.value("SELECT count(*) FROM codes"))
        cols, ids = np.empty((N_DIMS, n), dtype=np.uint8), np.empty(n, dtype=np.int64)
        seen = np.zeros(n, dtype=bool)
        for batch in store.batches(sql_text("load_codes"), LOAD_BATCH_ROWS):
            pos = batch.column("pos").to_numpy()
            if len(pos) and (pos.min() < 0 or pos.max() >= n):
                raise CorruptCatalog(
                    f"{store.path}: the codes table has a position outside 0..{n - 1}; {REINDEX}"
                )
            # rows come in insertion order, which is pos order unless a removal renumbered them
            at = slice(pos[0], pos[0] + len(pos)) if _consecutive(pos) else pos
            seen[at] = True
            ids[at] = batch.column("id").to_numpy()
            for d, c in enumerate(CODE_COLUMNS):
                cols[d, at] = batch.column(c).to_numpy()
    if not seen.all():
        raise CorruptCatalog(f"{store.path}: two rows of the codes table share a position; {REINDEX}")
    return cols, ids


def _consecutive(pos: np.ndarray) -> bool:
    return len(pos) > 0 and int(pos[-1]) - int(pos[0]) == len(pos) - 1 and bool((np.diff(pos) == 1).all())


def load_blocks(store: Store, n_rows: int, index: Mapping[str, Any]) -> layout.Blocks | None:
    """The zone maps of the last index build; CorruptCatalog unless they tile the first rows
    of the ``n_rows`` codes as the ``index`` settings record (the scan kernels trust them)."""
    with store.reading():
        tbl = store.arrow(sql_text("load_blocks"))
    check_tiling(store, tbl, n_rows, index)
    if tbl.num_rows == 0:
        return None
    start = np.append(tbl.column("row_start").to_numpy(), tbl.column("row_end").to_numpy()[-1])
    lo = np.stack([tbl.column(f"min_{c}").to_numpy() for c in CODE_COLUMNS], axis=1)
    hi = np.stack([tbl.column(f"max_{c}").to_numpy() for c in CODE_COLUMNS], axis=1)
    return layout.Blocks(start.astype(np.int64), lo.astype(np.uint8), hi.astype(np.uint8))


def check_tiling(store: Store, blocks: pa.Table, n_rows: int, index: Mapping[str, Any]) -> None:
    """CorruptCatalog unless ``blocks`` (``block_id``, ``row_start``, ``row_end``, in block
    order) tile the first rows of the ``n_rows`` codes as the ``index`` settings record."""
    problem = tiling_problem(
        *(blocks.column(c).to_numpy() for c in ("block_id", "row_start", "row_end")), n_rows, index
    )
    if problem:
        raise CorruptCatalog(
            f"{store.path}: the stored block index does not fit the codes: {problem}; "
            f"{REINDEX.format(path=store.path)}"
        )


def index_status(store: Store) -> dict:
    """Rows, indexed rows and blocks, and what makes the index ``stale``:

    - ``unindexed_rows``: codes added after the last build (scanned, but not pruned well);
    - ``images_without_codes``: ingested images that have no codes yet (never returned);
    - ``stale_codes``: images re-embedded after their codes were computed (returned at their
      old position).

    The last two clear with ``clip-branches index``. CorruptCatalog when the stored blocks do
    not tile the indexed rows."""
    index = store.setting("index")
    indexed = int(index["indexed_rows"]) if index else 0
    watermark = (index or {}).get("embedding_part_max")
    stale_codes = 0
    with store.reading():
        n_rows = count(store)
        blocks = store.arrow("SELECT block_id, row_start, row_end FROM blocks ORDER BY block_id")
        check_tiling(store, blocks, n_rows, index or {})
        without = int(
            store.value(
                "SELECT count(*) FROM images i WHERE NOT EXISTS (SELECT 1 FROM codes c WHERE c.id = i.id)"
            )
        )
        if watermark is not None:
            stale_codes = int(
                store.value(
                    "SELECT count(*) FROM images i JOIN codes c USING (id) WHERE i.embedding_part > ? "
                    "AND c.pos < ?",  # rows added since the build were coded from their embedding
                    [int(watermark), indexed],
                )
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


# -- checks ----------------------------------------------------------------------------------
def check_codes(codes: Any) -> np.ndarray:
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


def _check_known(tx: Transaction, relation: str) -> None:
    """UnknownIds (the first ten) when ``relation`` has ids that ``images`` does not."""
    missing = tx.execute(f"SELECT n.id FROM {relation} n ANTI JOIN images i USING (id) ORDER BY 1 LIMIT 10")
    if missing:
        raise UnknownIds([r[0] for r in missing])


def check_replacement(codes: Any, ids: Any) -> tuple[np.ndarray, np.ndarray]:
    """Codes uint8 (n, 32) and n distinct int64 ids to replace a catalog's codes."""
    codes = check_codes(codes)
    ids = check_ids(ids, "ids")
    if len(ids) != codes.shape[0]:
        raise InvalidCodes(f"{len(ids)} ids for {codes.shape[0]} codes; give one id per row")
    if len(np.unique(ids)) != len(ids):
        raise InvalidCodes("ids contain duplicates")
    return codes, ids


def check_ids(ids: Any, what: str) -> np.ndarray:
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


def check_metadata(metadata: Any, n: int) -> pa.Table | None:
    """Metadata columns (a mapping of name to n values, or an Arrow table) as an Arrow table, or None."""
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
