"""Typed errors. Every message says what went wrong and what to do next."""

from __future__ import annotations


class CatalogError(Exception):
    """Base class for every error the engine raises on purpose."""


class CatalogNotFound(CatalogError):
    """The catalog file does not exist."""


class CorruptCatalog(CatalogError):
    """The file exists but is not a readable clip-branches catalog: not a DuckDB database, truncated,
    damaged (a block fails its checksum), missing a table or column, or holding a setting or block
    index clip-branches never writes. The message names the damage and the repair."""


class SchemaVersionError(CatalogError):
    """The catalog's schema version does not match this code."""


class ReadOnlyError(CatalogError):
    """A write was attempted on a catalog opened read-only."""


class StaleIndexError(CatalogError):
    """The block index no longer describes the rows in the catalog."""


class StaleConcept(CatalogError):
    """A saved concept was fitted on codes the catalog no longer holds; retrain it."""


class InvalidBoxes(CatalogError, ValueError):
    """A box set is malformed: bad JSON, a dim out of range, lo > hi, ..."""


class InvalidCodes(CatalogError, ValueError):
    """Codes, ids or metadata handed to the catalog are malformed."""


class UnknownIds(CatalogError, KeyError):
    """Some requested image ids are not in the catalog."""

    def __init__(self, missing, total: int | None = None):
        self.missing = list(missing)
        shown = ", ".join(str(i) for i in self.missing[:10])
        more = f" and {len(self.missing) - 10} more" if len(self.missing) > 10 else ""
        super().__init__(f"unknown image id(s): {shown}{more}")

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return self.args[0]


class InvalidSql(CatalogError, ValueError):
    """A user SQL query failed to parse or bind, or is not a read-only query."""


class EncoderError(CatalogError):
    """An encoder cannot be loaded: unknown id, missing weights, or a checkpoint that does not fit."""


class IngestError(CatalogError):
    """A source cannot be ingested: missing folder, unreadable manifest, no ``uri`` column."""


class UnreadableImage(IngestError):
    """A file that cannot be used as an image; ``reason`` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class InvalidArgument(CatalogError, ValueError):
    """An argument is malformed: no positives, a model name, a slider value, ``min_votes``,
    ``block_size``, a head method, or a learner's parameter."""


class QueryInterrupted(InvalidSql):
    """A user query ran past its time limit and was stopped."""


class ServerBusy(CatalogError):
    """Every slot for this kind of work is taken; try again shortly."""


class UnsafeImage(CatalogError):
    """An image file is not the one ingested (changed, replaced, a link) and is not served."""


class HeadError(CatalogError):
    """A head cannot be trained or loaded: bad shapes, too few rows, a corrupt blob."""


class QuantizerError(CatalogError):
    """A quantizer cannot be fitted or loaded."""


class NotFittedError(CatalogError, AttributeError):
    """A model was used before ``fit``."""
