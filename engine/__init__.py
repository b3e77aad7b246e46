"""clip-branches: text-to-image search with interactive fine-tuning over 32-byte codes.

The Python API::

    import engine
    with engine.Catalog.open("catalog.duckdb", read_only=True) as cat:
        result = cat.select(engine.BoxSet([{3: (10, 40), 7: (0, 99)}]))
        result.ids, result.votes, result.sql, result.stats
        found = cat.search("ankle boot", k=60)             # text, image= or id=
        refined = cat.refine(positives=found.ids[:8], model="ensemble")
        refined.ids, refined.scores, refined.sql, refined.stats
"""

from .boxes import N_DIMS, BoxSet
from .catalog import Catalog, SelectResult
from .errors import (
    CatalogError,
    CatalogNotFound,
    CorruptCatalog,
    InvalidArgument,
    InvalidBoxes,
    InvalidCodes,
    InvalidSql,
    ReadOnlyError,
    SchemaVersionError,
    StaleIndexError,
    UnknownIds,
)
from .refine import Result

__version__ = "0.1.0"

__all__ = [
    "N_DIMS",
    "BoxSet",
    "Catalog",
    "CatalogError",
    "CatalogNotFound",
    "CorruptCatalog",
    "InvalidArgument",
    "InvalidBoxes",
    "InvalidCodes",
    "InvalidSql",
    "ReadOnlyError",
    "SchemaVersionError",
    "Result",
    "SelectResult",
    "StaleIndexError",
    "UnknownIds",
]
