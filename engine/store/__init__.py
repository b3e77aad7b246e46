"""Storage: the catalog's DuckDB file and the files beside it.

:class:`~engine.store.database.Store` owns the DuckDB connection: one read path, one write
transaction, settings and artifacts, compaction, migrations (from the numbered files that
:mod:`~engine.store.schema` lists). :mod:`~engine.store.tables` writes and loads the catalog's
rows (images, codes, blocks, the head) through it; :mod:`~engine.store.integrity` says what a
sound catalog holds; :mod:`~engine.store.files` writes other files atomically;
:mod:`~engine.store.sqlnames` checks and quotes SQL identifiers. :mod:`~engine.store.parquet`
exports and imports Parquet (in subtrees with :mod:`~engine.store.shards`), and
:mod:`~engine.store.exports` reads an export with pyarrow alone. Apart from the user-SQL sandbox
(:mod:`engine.sandbox`), nothing outside this package imports duckdb or holds a connection.
This package imports only :mod:`engine.errors`, :mod:`engine.resources`, :mod:`engine.boxes`,
:mod:`engine.limits`, :mod:`engine.progress`, :mod:`engine.index.layout` and the model classes it stores
(:mod:`engine.codes.head`, :mod:`engine.codes.quantize`).
"""

from .database import DatabaseError, Store

__all__ = ["DatabaseError", "Store"]
