"""Writing to the catalog's DuckDB file: one transaction helper for every write path.

A catalog changes only inside :func:`transaction`: everything in the block commits together or,
when anything in it raises, nothing does. DuckDB has one writer per file, so these are never
concurrent; readers (the server's connections) see the state before or after, never between.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import duckdb
import pyarrow as pa


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection, **tables: pa.Table) -> Iterator[duckdb.DuckDBPyConnection]:
    """One write transaction on ``con``, with the Arrow ``tables`` readable under their names for
    its duration: committed when the block ends, rolled back if anything in it raises."""
    con.execute("BEGIN TRANSACTION")
    try:
        for name, table in tables.items():
            con.register(name, table)
        yield con
        con.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # a COMMIT that failed has ended it already
            con.execute("ROLLBACK")
        raise
    finally:
        for name in tables:
            with contextlib.suppress(duckdb.Error):
                con.unregister(name)
