"""Names and literals in SQL text: one place for the quoting every module that writes SQL uses.

A catalog's SQL is built from a few fixed templates plus names and values that come from data:
metadata column names from manifests, imports and the Python API, file paths for ``COPY``,
``ATTACH`` and Parquet reads. Names are checked against :data:`IDENT` (plain identifiers that
need no quoting in any engine the compiled SQL runs on) and quoted anyway; values become
literals by doubling quotes.
"""

from __future__ import annotations

import os
import re

from ..boxes import CODE_COLUMNS

# A metadata column name: letters, digits and _, not starting with a digit, at most 63 characters
# (PostgreSQL's limit; DuckDB and Spark take longer ones).
IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Columns of the catalog's own that metadata cannot take the name of (compared lower-case).
RESERVED_COLUMNS = frozenset({"id", "pos", "added_at", *CODE_COLUMNS})


def quote_ident(ident: str) -> str:
    """``ident`` as a DuckDB quoted identifier."""
    return '"' + str(ident).replace('"', '""') + '"'


def literal(text: str | os.PathLike) -> str:
    """``text`` (or a path) as a SQL string literal."""
    return "'" + os.fspath(text).replace("'", "''") + "'"


def is_metadata_name(name: str) -> bool:
    """Whether ``name`` may name a metadata column of ``images``: a plain identifier that is
    not one of :data:`RESERVED_COLUMNS`."""
    return bool(IDENT.match(name)) and name.lower() not in RESERVED_COLUMNS
