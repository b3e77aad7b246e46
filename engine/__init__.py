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
    EncoderError,
    HeadError,
    IngestError,
    InvalidArgument,
    InvalidBoxes,
    InvalidCodes,
    InvalidSql,
    NotFittedError,
    QuantizerError,
    QueryInterrupted,
    ReadOnlyError,
    SchemaVersionError,
    ServerBusy,
    StaleConcept,
    StaleIndexError,
    UnknownIds,
    UnreadableImage,
    UnsafeImage,
)

# The rest loads on first use (PEP 562), so a process that needs one module (a console worker
# runs engine.sandbox alone) does not import numba, scikit-learn and the kernels.
_LAZY = {
    "N_DIMS": ".boxes",
    "BoxSet": ".boxes",
    "Catalog": ".catalog",
    "SelectResult": ".index.search",
    "Result": ".learn.refine",
}


def __getattr__(name: str):
    if name == "__version__":
        value = _installed_version()
    elif name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    else:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    globals()[name] = value
    return value


def _installed_version() -> str:
    """The version in pyproject.toml, as installed (``pip install -e .`` included), or "0+unknown"
    when clip-branches runs from a source tree that was never installed. Read on first use, like
    the modules above: importlib.metadata costs more to import than the whole of ``engine``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("clip-branches")
    except PackageNotFoundError:
        return "0+unknown"


__all__ = [
    "N_DIMS",
    "BoxSet",
    "Catalog",
    "CatalogError",
    "CatalogNotFound",
    "CorruptCatalog",
    "EncoderError",
    "HeadError",
    "IngestError",
    "InvalidArgument",
    "InvalidBoxes",
    "InvalidCodes",
    "InvalidSql",
    "NotFittedError",
    "QuantizerError",
    "QueryInterrupted",
    "ReadOnlyError",
    "Result",
    "SchemaVersionError",
    "SelectResult",
    "ServerBusy",
    "StaleConcept",
    "StaleIndexError",
    "UnknownIds",
    "UnreadableImage",
    "UnsafeImage",
]
