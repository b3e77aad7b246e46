"""Every limit and default a user meets, declared once: name, value, what it bounds.

Each line below both defines the constant the code uses and enters it in :data:`LIMITS`, the
table that the CLI's defaults, the web app's caps and templates, and the README's "Limits and
defaults" section (checked by ``tests/test_limits.py``) are read from. The server's settable
limits are the other table, ``web.settings.Settings`` (``clip-branches serve --setting NAME
VALUE``). Model hyperparameters (tree depths, the guide's radii) live with their models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limit:
    name: str
    value: Any
    help: str
    scope: str  # "engine": the Python API and the CLI; "web": what the server accepts


LIMITS: dict[str, Limit] = {}


def _declare(name: str, value: Any, help: str, scope: str = "engine") -> Any:
    LIMITS[name] = Limit(name, value, help, scope)
    return value


# -- search and refine -----------------------------------------------------------------------
DEFAULT_K = _declare("search_k", 60, "images a search returns unless asked for another number")
MAX_K = _declare("max_k", 100_000, "images one search may return")
MAX_QUERY_CHARS = _declare("max_query_chars", 1000, "characters of a text query")
DEFAULT_SAMPLED_NEGATIVES = _declare(
    "sampled_negatives", 500, "catalog rows a refine round samples as negatives"
)
MAX_SAMPLED_NEGATIVES = _declare("max_sampled_negatives", 100_000, "sampled negatives one round may ask for")
DEFAULT_SUGGESTIONS = _declare("suggestions", 60, "unlabelled images a refine round suggests labelling next")
MAX_SUGGESTIONS = _declare("max_suggestions", 1000, "suggestions one round may ask for")
MAX_SEED = _declare("max_seed", 2**32 - 1, "largest random_state (scikit-learn's limit)")

PRINT_LIMIT = _declare("print_limit", 1000, "ids the CLI prints unless --limit says otherwise")
SPARK_TOP = _declare(
    "spark_top",
    60,
    "ids of its ranking a refine on Spark returns; the whole ranking goes to its Parquet output",
)

# -- SQL ---------------------------------------------------------------------------------------
MAX_QUERY_TEXT = _declare("max_query_text", 100_000, "characters of one SQL query")
MAX_VALUE_CHARS = _declare(
    "max_value_chars", 10_000, "characters (or bytes) of one value a query result shows; longer ones are cut"
)
QUERY_TIME_LIMIT_S = _declare("query_time_limit_s", 5.0, "seconds Catalog.query lets a query run")
QUERY_MAX_ROWS = _declare("query_max_rows", 1000, "rows Catalog.query returns at most")
QUERY_MAX_BYTES = _declare("query_max_bytes", 10_000_000, "bytes of rows Catalog.query returns at most")
SANDBOX_MEMORY_LIMIT = _declare("sandbox_memory_limit", "1GB", "memory a sandboxed catalog's queries share")
SANDBOX_TEMP_LIMIT = _declare(
    "sandbox_temp_limit", "256MB", "temp files a sandboxed catalog's queries may spill"
)

# -- images and the index ----------------------------------------------------------------------
DEFAULT_MAX_PIXELS = _declare(
    "max_pixels",
    89_478_485,
    "pixels of an ingested image; larger ones are skipped (PIL's decompression-bomb limit)",
)
QUERY_MAX_PIXELS = _declare("query_max_pixels", 25_000_000, "pixels of a query image")
DEFAULT_BLOCK_SIZE = _declare("block_size", 2048, "rows per k-d block (scripts/bench_select.py chose it)")
COMPACT_MIN_BYTES = _declare(
    "compact_min_bytes", 32 << 20, "catalog file size from which an index build compacts the file"
)

# -- the web app's fixed caps (its settable ones are web.settings.Settings) --------------------
WEB_MAX_K = _declare("web_max_k", 1000, "images one web search returns at most", "web")
WEB_MAX_SAMPLED = _declare("web_max_sampled", 2000, "the sampled-negatives slider's maximum", "web")
WEB_MAX_NEGATIVE_WEIGHT = _declare(
    "web_max_negative_weight", 100, "the negative-weight slider's maximum", "web"
)
WEB_QUERY_TEXT_CAP = _declare(
    "web_query_text_cap", 20_000, "characters of a text query the server reads at all", "web"
)
# A query of max_query_text characters JSON-escaped (600 kB), or about 45,000 labels of 20-digit ids.
WEB_FORM_BODY_BYTES = _declare(
    "web_form_body_bytes", 1_000_000, "bytes of a fine-tune or SQL request body", "web"
)
WEB_DECODES_AT_ONCE = _declare(
    "web_decodes_at_once", 2, "query images decoded at once, over all catalogs", "web"
)
WEB_DECODE_WAIT_S = _declare(
    "web_decode_wait_s", 3.0, "seconds a query image waits for its turn to be decoded, then a 503", "web"
)
WEB_BUSY_WAIT_S = _declare(
    "web_busy_wait_s", 0.5, "seconds a search or fine-tune waits for a free slot, then a 503", "web"
)


def documented(value: Any) -> str:
    """``value`` as the README shows it: integers with thousands separators, "" for no text."""
    if value == "":
        return '""'
    if isinstance(value, bool) or not isinstance(value, int):
        return str(value)
    return f"{value:,}"
