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

# The rest loads on first use (PEP 562), so a process that needs one module (a console worker
# runs engine.sandbox alone) does not import numba, scikit-learn and the kernels.
_LAZY = {"N_DIMS": ".boxes", "BoxSet": ".boxes", "Catalog": ".catalog", "SelectResult": ".catalog",
         "Result": ".refine"}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


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
