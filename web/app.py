"""The Litestar app: search, label, fine-tune and a read-only SQL console over engine.Catalog.

Handlers stay thin: every search, refine and query goes through :class:`engine.Catalog`
(opened read-only and sandboxed), CPU-bound calls run in worker threads, and each SQL query
gets its own DuckDB cursor. Labels live in the browser (per tab, in sessionStorage), so the
server keeps no per-user state beyond a small LRU of results, by token, for paging and for the
console's ``last_result``.

Every page has a JSON twin under ``/api/``. Their bodies are the Structs of :mod:`web.bodies`,
sent as JSON or as the page's form (:class:`~web.bodies.BodyRequest`); a search or fine-tune
answers with its ``result`` token, which ``POST /api/sql`` takes to query it as ``last_result``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import duckdb
import numpy as np
from litestar import Litestar, MediaType, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.params import Body, FromPath, JSONBody, Parameter
from litestar.plugins.htmx import HTMXPlugin, HTMXRequest, HTMXTemplate
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from PIL import Image

import engine
from engine import refine as rf
from engine.errors import (
    CatalogError,
    CorruptCatalog,
    InvalidArgument,
    InvalidSql,
    QueryInterrupted,
    ServerBusy,
    UnknownIds,
    UnsafeImage,
)
from engine.imageio import UnreadableImage, decode_query_image
from engine.sandbox import MAX_VALUE_CHARS, QueryPool, reads_last_result

from .bodies import (
    DEFAULT_K,
    FORM,
    JSON_OR_FORM,
    JSON_OR_UPLOAD,
    MAX_K,
    MAX_SAMPLED,
    QUERY_TEXT_CAP,
    BodyRequest,
    RefineRequest,
    ResultResponse,
    SearchRequest,
    SqlRequest,
    SqlResponse,
    _document_bodies,
)
from .guard import AllowedHosts, site_guard
from .settings import Settings
from .thumbs import Thumbnails

HERE = Path(__file__).parent
BUSY_WAIT_S = 0.5
CONSOLE_POLL_S = 0.02  # how often a console request waiting for a slot looks again
# Query images decoded at once, over all catalogs, and how long a request waits for its turn.
DECODES_AT_ONCE = 2
DECODE_WAIT_S = 3.0
# Bodies of the fine-tune and SQL endpoints: a query of MAX_QUERY_TEXT characters JSON-escaped (600 kB), or
# about 45,000 labels of 20-digit ids.
FORM_BODY_BYTES = 1_000_000
# Bytes a request may add around an uploaded image (multipart or JSON framing, the other fields).
UPLOAD_FRAMING_BYTES = 1_000_000
MODEL_LABELS = {
    "ensemble": "Ensemble of 25 decision branch models",
    "branch": "Single decision branch model",
    "tree": "Decision tree",
    "forest": "Random forest (25 trees)",
}


@dataclass
class Served:
    """One catalog the app serves."""

    name: str
    path: Path
    cat: engine.Catalog
    thumbs: Thumbnails
    rows: int
    console: QueryPool
    gate: threading.BoundedSemaphore
    console_slots: threading.BoundedSemaphore

    @contextlib.contextmanager
    def working(self):
        """Hold one of the catalog's work slots (searches, fine-tunes, uploads) while the block
        runs. A request that finds none free within ``BUSY_WAIT_S`` gets a 503 instead of queueing
        behind the others, so a flood of heavy requests cannot starve the rest of the server."""
        if not self.gate.acquire(timeout=BUSY_WAIT_S):
            raise ServerBusy(
                f"the catalog {self.name!r} is busy with other searches and fine-tunes; try again in a moment"
            )
        try:
            yield
        finally:
            self.gate.release()


class Results:
    """The last results, by token, for "load more" and the console: an LRU of at most
    ``capacity`` entries and ``max_ids`` result ids in all (a refine over a large catalog can
    return millions)."""

    def __init__(self, capacity: int, max_ids: int):
        self.capacity = capacity
        self.max_ids = max_ids
        self._items: OrderedDict[str, tuple[str, engine.Result]] = OrderedDict()
        self._ids = 0
        self._lock = threading.Lock()

    def put(self, catalog: str, result: engine.Result) -> str:
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._items[token] = (catalog, result)
            self._ids += len(result.ids)
            while len(self._items) > 1 and (len(self._items) > self.capacity or self._ids > self.max_ids):
                _, (_, old) = self._items.popitem(last=False)
                self._ids -= len(old.ids)
        return token

    def get(self, token: str) -> tuple[str, engine.Result]:
        with self._lock:
            item = self._items.get(token)
            if item is None:
                raise NotFoundException("this result is no longer kept; run the search or fine-tune again")
            self._items.move_to_end(token)
            return item

    def size(self) -> tuple[int, int]:
        """Results kept and result ids kept in all."""
        with self._lock:
            return len(self._items), self._ids


class App:
    """The catalogs, settings and result store the handlers share (one per Litestar app)."""

    def __init__(self, paths: list[str | Path], settings: Settings):
        if not paths:
            raise CatalogError("give at least one catalog to serve")
        self.settings = settings
        self.catalogs: dict[str, Served] = {}
        for p in paths:
            path = Path(p)
            name = path.stem
            while name in self.catalogs:
                name += "_"
            opened = [served.cat for served in self.catalogs.values()]
            try:
                cat = engine.Catalog.open(
                    path, read_only=True, sandbox=True, memory_limit=settings.sql_memory_limit
                )
                opened.append(cat)
                index = cat.block_index()
                thumbs = Thumbnails(cat)
            except BaseException:  # a damaged catalog: release every file opened so far
                for c in opened:
                    c.close()
                raise
            console = QueryPool(path, workers=settings.sql_workers, memory_limit=settings.sql_memory_limit)
            self.catalogs[name] = Served(
                name,
                path,
                cat,
                thumbs,
                index.n_rows,
                console,
                threading.BoundedSemaphore(settings.max_concurrent),
                threading.BoundedSemaphore(settings.sql_workers),
            )
        # Console requests run here, not on the server's shared threads, which a flood of
        # endless queries would otherwise hold while health checks, searches and thumbnails wait.
        self.console_threads = ThreadPoolExecutor(
            len(self.catalogs) * settings.sql_workers, thread_name_prefix="console"
        )
        self.results = Results(settings.results_kept, settings.result_ids_kept)
        self.decodes = threading.BoundedSemaphore(DECODES_AT_ONCE)
        # Parses console queries (never runs them) to tell whether they read last_result.
        self.parser = duckdb.connect(config={"enable_external_access": False})

    def query_image(self, blob: bytes) -> Image.Image:
        """The uploaded image ``blob`` decoded for a search (see ``decode_query_image``), at most
        :data:`DECODES_AT_ONCE` at a time; ServerBusy when no turn comes within ``DECODE_WAIT_S``."""
        if not self.decodes.acquire(timeout=DECODE_WAIT_S):
            raise ServerBusy("the server is busy decoding other query images; try again in a moment")
        try:
            return decode_query_image(blob)
        except UnreadableImage as e:
            raise InvalidArgument(f"the query image cannot be used: {e.reason}") from None
        finally:
            self.decodes.release()

    def catalog(self, name: str | None) -> Served:
        if name is None or name == "":
            return next(iter(self.catalogs.values()))
        served = self.catalogs.get(name)
        if served is None:
            raise NotFoundException(f"no catalog named {name!r}; choose one of {', '.join(self.catalogs)}")
        return served

    def warm_up(self) -> None:
        """Load indexes and compile-cache kernels now, so the first request is not the slow one."""
        for served in self.catalogs.values():
            served.console.start()
            cat = served.cat
            first = cat.sql("SELECT id FROM codes ORDER BY pos LIMIT 2").column("id").to_pylist()
            if first:
                cat.search(id=first[0], k=5)
                if cat.setting("encoder") and cat.setting("head"):
                    cat.search("warm up", k=5)  # loads the encoder, head and quantizer
                for model in rf.MODELS:
                    cat.refine(
                        first[:1], model=model, sampled_negatives=min(50, served.rows - 1), random_state=0
                    )

    def close(self) -> None:
        self.console_threads.shutdown(wait=False, cancel_futures=True)
        for served in self.catalogs.values():
            served.console.close()
            served.cat.close()
        self.parser.close()


# -- rendering -------------------------------------------------------------------------------
def _page(app: App, served: Served, result: engine.Result, offset: int, token: str | None) -> dict:
    """Template context of one page of result thumbnails."""
    size = app.settings.page_size
    ids = result.ids[offset : offset + size].tolist()
    scores = result.scores[offset : offset + size].tolist()
    next_offset = offset + size if token is not None and offset + size < len(result.ids) else None
    return {
        "catalog": served.name,
        "items": list(zip(ids, scores, strict=True)),
        "token": token,
        "next_offset": next_offset,
        "shown": min(offset + size, len(result.ids)),
        "total": len(result.ids),
    }


def _result_context(app: App, served: Served, result: engine.Result, kind: str) -> dict:
    token = app.results.put(served.name, result)
    stats = dict(result.stats)
    suggestions = [(i, "label next") for i in result.suggestions[: app.settings.page_size].tolist()]
    return {
        "kind": kind,
        "stats": stats,
        "sql": result.sql,
        "total": len(result.ids),
        "rows": served.rows,
        "suggestions": suggestions,
        **_page(app, served, result, 0, token),
    }


def _render(request: Request, name: str, context: dict) -> Template:
    return HTMXTemplate(template_name=name, context=context)


def _render_result(request: Request, app: App, served: Served, result: engine.Result, kind: str) -> Template:
    """The results fragment, with the engine's own time in ``X-Engine-Ms`` for load tests."""
    return HTMXTemplate(
        template_name="_results.html",
        context=_result_context(app, served, result, kind),
        headers={"X-Engine-Ms": f"{result.stats['time_total_ms']:.2f}"},
    )


# -- errors ----------------------------------------------------------------------------------
def _error_response(request: Request, status: int, message: str) -> Response:
    """An error fragment for pages and HTMX, JSON for API clients; never a stack trace."""
    wants_html = request.headers.get("hx-request") or "text/html" in request.headers.get("accept", "")
    if wants_html and not request.url.path.startswith("/api/"):
        return Template(
            template_name="_error.html", context={"message": message, "status": status}, status_code=status
        )
    return Response({"status_code": status, "detail": message}, status_code=status, media_type=MediaType.JSON)


def _catalog_error(request: Request, exc: CatalogError) -> Response:
    status = (
        404
        if isinstance(exc, UnknownIds)
        else 408
        if isinstance(exc, QueryInterrupted)
        else 403
        if isinstance(exc, UnsafeImage)
        else 503
        if isinstance(exc, ServerBusy)
        else 500
        if isinstance(exc, CorruptCatalog)
        else 400
    )  # a damaged file is the server's fault
    response = _error_response(request, status, str(exc))
    if status == 503:
        response.headers["Retry-After"] = "2"
    return response


def _http_error(request: Request, exc: HTTPException) -> Response:
    detail = exc.detail
    if isinstance(exc, ValidationException) and exc.extra:
        parts = []
        for e in exc.extra if isinstance(exc.extra, list) else [exc.extra]:
            if isinstance(e, dict) and e.get("key") == "data" and e.get("source") == "body":
                # Litestar's name for the body; one it decoded is checked by BodyRequest
                parts.append(
                    "the request body is empty; send one JSON object (Content-Type: application/json) "
                    "or a form"
                )
            elif isinstance(e, dict):
                key = e.get("key") or e.get("source") or ""
                parts.append(f"{key}: {e.get('message', '')}".strip(": "))
        detail = "invalid input: " + "; ".join(parts) if parts else detail
    return _error_response(request, exc.status_code, str(detail))


def _undecodable_form(request: Request, exc: UnicodeDecodeError) -> Response:
    """Litestar decodes form fields (a multipart part without a file name included) as UTF-8
    text, and raises this when one is not."""
    if "multipart/" in request.headers.get("content-type", ""):
        return _error_response(
            request,
            400,
            "a form field is not UTF-8 text; send an image as a file part "
            "with a filename (curl -F file=@photo.jpg)",
        )
    return _error_response(request, 400, "the request is not UTF-8 text")


# -- images ----------------------------------------------------------------------------------
def _checked_image(app: App, blob: bytes) -> bytes:
    if len(blob) > app.settings.max_upload_bytes:
        raise InvalidArgument(f"the image is larger than {app.settings.max_upload_bytes} bytes")
    if not blob:
        raise InvalidArgument("the uploaded file is empty; choose an image")
    return blob


def _base64_chars(n_bytes: int) -> int:
    return 4 * ((n_bytes + 2) // 3)


def _decoded_image(app: App, text: str) -> bytes:
    """The bytes of ``image_base64``: base64, whitespace allowed, or a ``data:...;base64,`` URL."""
    if text.startswith("data:"):
        head, comma, text = text.partition(",")
        if not comma or not head.endswith(";base64"):
            raise InvalidArgument("image_base64 must be base64, or a data: URL ending in ;base64,")
    if len(text) > _base64_chars(app.settings.max_upload_bytes) + len(text) // 60 + 4:  # room for line breaks
        raise InvalidArgument(f"the image is larger than {app.settings.max_upload_bytes} bytes")
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except ValueError:
        raise InvalidArgument(
            "image_base64 must be an image file in base64: the characters A-Z, a-z, 0-9, + and /, "
            "padded with = to a length that is a multiple of 4"
        ) from None


# -- handlers --------------------------------------------------------------------------------
CatalogParam = Annotated[str | None, Parameter(description="catalog name (default: the first one served)")]


def _state(request: Request) -> App:
    return request.app.state.cb


@get("/", sync_to_thread=False)
def index(request: HTMXRequest, catalog: CatalogParam = None) -> Template:
    app = _state(request)
    served = app.catalog(catalog)
    return Template(
        template_name="search.html",
        context={
            "catalogs": list(app.catalogs.values()),
            "current": served,
            "models": MODEL_LABELS,
            "page_size": app.settings.page_size,
            "max_negatives": MAX_SAMPLED,
            "default_negatives": rf.DEFAULT_SAMPLED_NEGATIVES,
        },
    )


@get("/search", sync_to_thread=True)
def search_text(
    request: HTMXRequest,
    q: Annotated[str, Parameter(description="text query", max_length=QUERY_TEXT_CAP)] = "",
    catalog: CatalogParam = None,
    k: Annotated[int, Parameter(ge=1, le=MAX_K, description="results")] = DEFAULT_K,
) -> Template:
    app = _state(request)
    served = app.catalog(catalog)
    with served.working():
        result = served.cat.search(q, k=k)
    return _render_result(request, app, served, result, "search")


@get("/similar", sync_to_thread=True)
def search_similar(
    request: HTMXRequest,
    id: Annotated[int, Parameter(description="image id")],
    catalog: CatalogParam = None,
    k: Annotated[int, Parameter(ge=1, le=MAX_K)] = DEFAULT_K,
) -> Template:
    app = _state(request)
    served = app.catalog(catalog)
    with served.working():
        result = served.cat.search(id=id, k=k)
    return _render_result(request, app, served, result, "similar")


@dataclass
class ImageQuery:
    file: UploadFile | None = None
    catalog: str | None = None
    k: int = DEFAULT_K


@post("/search/image", sync_to_thread=True, status_code=200)
def search_image(
    request: HTMXRequest, data: Annotated[ImageQuery, Body(media_type=RequestEncodingType.MULTI_PART)]
) -> Template:
    app = _state(request)
    served = app.catalog(data.catalog)
    if not 1 <= data.k <= MAX_K:
        raise InvalidArgument(f"k must be in 1..{MAX_K}")
    if data.file is None or not data.file.filename:
        raise InvalidArgument("choose an image file to search with")
    image = app.query_image(_checked_image(app, data.file.file.read(app.settings.max_upload_bytes + 1)))
    with served.working():
        result = served.cat.search(image=image, k=data.k)
    return _render_result(request, app, served, result, "image")


@post(
    "/refine",
    sync_to_thread=True,
    status_code=200,
    request_class=BodyRequest,
    operation_class=FORM,
    request_max_body_size=FORM_BODY_BYTES,
)
def refine(request: BodyRequest, data: JSONBody[RefineRequest]) -> Template:
    app = _state(request)
    served = app.catalog(data.catalog)
    result = _refine(app, served, data)
    return _render_result(request, app, served, result, "refine")


def _refine(app: App, served: Served, data: RefineRequest) -> engine.Result:
    labels = _count_ids(data.positives) + _count_ids(data.negatives)
    if labels > app.settings.max_labels:
        raise InvalidArgument(
            f"a fine-tune uses at most {app.settings.max_labels} labels, positive and negative "
            f"together; got {labels}. Clear some labels, or fine-tune in SQL or Python"
        )
    suggestions = app.settings.page_size if data.suggestions is None else data.suggestions
    with served.working():
        return served.cat.refine(
            data.positives,
            data.negatives,
            model=data.model,
            sampled_negatives=data.sampled_negatives,
            negative_weight=data.negative_weight,
            random_state=data.seed,
            guide=data.guide,
            suggestions=suggestions,
        )


def _count_ids(ids: list[int] | str) -> int:
    """How many ids a list, or a comma-separated text, holds (the engine parses and checks them)."""
    return len(ids) if isinstance(ids, list) else sum(1 for part in ids.split(",") if part.strip())


@get("/results/{token:str}", sync_to_thread=False)
def results_page(
    request: HTMXRequest,
    token: FromPath[str],
    offset: Annotated[int, Parameter(ge=0, description="first result to show")] = 0,
) -> Template:
    app = _state(request)
    name, result = app.results.get(token)
    return _render(request, "_page.html", _page(app, app.catalog(name), result, offset, token))


def _image_response(request: Request, image: tuple[bytes, str, str]) -> Response:
    """An image shown in the browser (inline), or a 304 when the client holds this version."""
    data, media_type, etag = image
    headers = {
        "ETag": etag,
        "Cache-Control": f"public, max-age={_state(request).settings.thumb_max_age_s}",
        "Content-Disposition": "inline",
    }
    if request.headers.get("if-none-match") == etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


@get("/thumb/{catalog:str}/{image_id:int}", sync_to_thread=True)
def thumbnail(request: Request, catalog: FromPath[str], image_id: FromPath[int]) -> Response:
    return _image_response(request, _state(request).catalog(catalog).thumbs.get(image_id))


@get(
    "/image/{catalog:str}/{image_id:int}",
    sync_to_thread=True,
    description=(
        "The image file, if it is still the one ingested (a regular file, no link, of the recorded size and "
        "time, that decodes as an image; else a 403); TIFF is sent as PNG."
    ),
)
def original(request: Request, catalog: FromPath[str], image_id: FromPath[int]) -> Response:
    return _image_response(request, _state(request).catalog(catalog).thumbs.viewable(image_id))


@get("/console", sync_to_thread=False)
def console_page(request: HTMXRequest, catalog: CatalogParam = None) -> Template:
    app = _state(request)
    served = app.catalog(catalog)
    tables = served.cat.sql(
        "SELECT table_name, string_agg(column_name, ', ' ORDER BY column_index) AS columns FROM duckdb_columns() "
        "WHERE schema_name = 'main' AND NOT starts_with(table_name, '_') GROUP BY table_name ORDER BY table_name"
    ).to_pylist()
    return Template(
        template_name="console.html",
        context={
            "catalogs": list(app.catalogs.values()),
            "current": served,
            "tables": tables,
            "time_limit": app.settings.sql_time_limit_s,
            "max_rows": app.settings.sql_max_rows,
            "max_bytes": app.settings.sql_max_bytes,
        },
    )


@post(
    "/console",
    status_code=200,
    request_class=BodyRequest,
    operation_class=FORM,
    request_max_body_size=FORM_BODY_BYTES,
)
async def console_run(request: BodyRequest, data: JSONBody[SqlRequest]) -> Template:
    app = _state(request)
    served = app.catalog(data.catalog)
    return await _in_console(
        request, app, served, lambda waited: _console_table(request, app, served, data, waited)
    )


def _console_table(
    request: BodyRequest, app: App, served: Served, data: SqlRequest, waited: float
) -> Template:
    # HTML escaping can make a value up to five times longer than its text.
    html_bytes = app.settings.sql_max_bytes // 5
    res = _run_sql(
        request,
        app,
        served,
        data.sql,
        _page_last_result(app, served, data.result),
        waited,
        max_bytes=html_bytes,
    )
    columns = res.table.column_names
    id_columns = {c for c in columns if c == "id" or c.endswith("_id") and c != "block_id"}
    rows = [[row[c] for c in columns] for row in _rows(res.table)]
    return _render(
        request,
        "_table.html",
        {
            "catalog": served.name,
            "columns": columns,
            "rows": rows,
            "id_columns": id_columns,
            "truncated": res.truncated,
            "cut": res.cut,
            "time_ms": res.time_ms,
            "max_rows": app.settings.sql_max_rows,
            "max_bytes": html_bytes,
            "max_value_chars": MAX_VALUE_CHARS,
        },
    )


async def _in_console(request: Request, app: App, served: Served, work):
    """``work(waited_s)`` on the console's own threads, once one of the catalog's console slots
    is free (waited for without holding a thread); a 503 when none frees up within the pool's
    ``wait_s``. Time waited counts against the query's time limit."""
    arrived = time.monotonic()
    while not served.console_slots.acquire(blocking=False):
        if time.monotonic() - arrived >= served.console.wait_s:
            raise ServerBusy(
                f"the console is busy: {served.console.size} of its queries are running, the most it "
                "runs at once; try again when one has finished"
            )
        if request.scope[CLIENT_GONE].is_set():
            raise QueryInterrupted("the query was cancelled")
        await asyncio.sleep(CONSOLE_POLL_S)
    try:
        waited = time.monotonic() - arrived
        return await asyncio.get_running_loop().run_in_executor(app.console_threads, work, waited)
    finally:
        served.console_slots.release()


def _page_last_result(app: App, served: Served, token: str | None) -> engine.Result | None:
    """The console page's ``last_result``: the tab's latest result, none (an empty table) before its
    first search; an expired token is a 404, as for paging."""
    if not token:
        return None
    name, result = app.results.get(token)
    return result if name == served.name else None


NO_TOKEN = (
    'this query reads last_result, which is the result a `result` token names: pass as "result" the '
    "token that /api/refine (or /api/search) returned"
)


def _api_last_result(app: App, served: Served, data: SqlRequest) -> engine.Result | None:
    """``/api/sql``'s ``last_result``: the result ``data.result`` names. A query that reads
    last_result without a token, and a token unknown, expired or of another catalog, are 400s."""
    if not data.result:
        if reads_last_result(app.parser, data.sql):
            raise InvalidArgument(NO_TOKEN)
        return None
    try:
        name, result = app.results.get(data.result)
    except NotFoundException:
        raise InvalidArgument(
            f"the result token {data.result!r} is unknown or expired (the server keeps its "
            f"latest {app.settings.results_kept} results); run the search or fine-tune again "
            "and pass the `result` it returns"
        ) from None
    if name != served.name:
        raise InvalidArgument(
            f'the result token {data.result!r} is a result of the catalog {name!r}; pass "catalog": {name!r}'
        )
    return result


def _rows(table) -> list[dict]:
    """The rows of a query result as Python values. Dates and timestamps come as text already
    (``Catalog.query``); a value nested deeper that Python cannot hold is a clear 400."""
    try:
        return table.to_pylist()
    except (OverflowError, ValueError) as e:
        raise InvalidSql(f"a value in the result cannot be shown ({e}); CAST it to VARCHAR") from None


def _run_sql(
    request: Request,
    app: App,
    served: Served,
    sql: str,
    last_result: engine.Result | None,
    waited: float = 0.0,
    *,
    max_bytes: int | None = None,
):
    """Run ``sql`` in the catalog's console, with ``last_result`` as the table of that name (empty
    if None), in what is left of the time limit after ``waited`` seconds in the queue."""
    import pyarrow as pa

    relations = {}
    if last_result is not None:
        ids = last_result.ids
        relations["last_result"] = pa.table(
            {
                "id": pa.array(ids, pa.int64()),
                "score": pa.array(last_result.scores, pa.int64()),
                "rank": np.arange(1, len(ids) + 1, dtype=np.int64),
            }
        )
    return served.console.run(
        sql,
        time_limit_s=app.settings.sql_time_limit_s,
        waited_s=waited,
        cancel=request.scope.get(CLIENT_GONE),
        max_rows=app.settings.sql_max_rows,
        max_bytes=app.settings.sql_max_bytes if max_bytes is None else max_bytes,
        relations=relations,
    )


# -- JSON twins ------------------------------------------------------------------------------
RESULT_TOKEN_DOC = (
    "The answer's `result` is the result's token: POST /api/sql with it as `result` queries the "
    "whole result as the table last_result(id, score, rank)."
)


@get(
    "/api/search",
    sync_to_thread=True,
    description="A text search, or images like the image `id`. " + RESULT_TOKEN_DOC,
)
def api_search(
    request: Request,
    q: Annotated[str, Parameter(max_length=QUERY_TEXT_CAP, description="text query")] = "",
    catalog: CatalogParam = None,
    id: Annotated[int | None, Parameter(description="image id: more like this")] = None,
    k: Annotated[int, Parameter(ge=1, le=MAX_K)] = DEFAULT_K,
) -> ResultResponse:
    app = _state(request)
    served = app.catalog(catalog)
    with served.working():
        result = served.cat.search(id=id, k=k) if id is not None else served.cat.search(q, k=k)
    return ResultResponse.of(result, app.results.put(served.name, result))


@post(
    "/api/search",
    sync_to_thread=True,
    status_code=200,
    request_class=BodyRequest,
    operation_class=JSON_OR_UPLOAD,
    description="A search by text (`q`), image (`image_base64` in JSON, or a multipart form with the image as "
    "`file`) or image id (`id`): exactly one of them. " + RESULT_TOKEN_DOC,
)
def api_search_post(request: BodyRequest, data: JSONBody[SearchRequest]) -> ResultResponse:
    app = _state(request)
    served = app.catalog(data.catalog)
    image = request.upload
    if data.image_base64 is not None:
        if image is not None:
            raise InvalidArgument("give the image as image_base64 or as a file, not both")
        image = _decoded_image(app, data.image_base64)
    given = [name for name, v in (("q", data.q), ("image_base64", image), ("id", data.id)) if v is not None]
    if len(given) != 1:
        raise InvalidArgument(
            "give exactly one of q (a text query), image_base64 (an image; in a multipart form, "
            f"file) or id (an image id); got {', '.join(given) or 'none'}"
        )
    if image is not None:
        image = app.query_image(_checked_image(app, image))
    with served.working():
        result = served.cat.search(data.q, image=image, id=data.id, k=data.k)
    return ResultResponse.of(result, app.results.put(served.name, result))


@post(
    "/api/refine",
    sync_to_thread=True,
    status_code=200,
    request_class=BodyRequest,
    operation_class=JSON_OR_FORM,
    request_max_body_size=FORM_BODY_BYTES,
    description="A fine-tuning round on the labelled ids, in JSON or as the page's form. " + RESULT_TOKEN_DOC,
)
def api_refine(
    request: BodyRequest,
    data: JSONBody[RefineRequest],
    limit: Annotated[int, Parameter(ge=0, le=1_000_000, description="ids to return at most")] = 1000,
) -> ResultResponse:
    app = _state(request)
    served = app.catalog(data.catalog)
    result = _refine(app, served, data)
    return ResultResponse.of(result, app.results.put(served.name, result), limit)


@post(
    "/api/sql",
    status_code=200,
    request_class=BodyRequest,
    operation_class=JSON_OR_FORM,
    request_max_body_size=FORM_BODY_BYTES,
    description="One read-only query, in JSON (or as the console's url-encoded form, with the same fields). "
    "A query reading last_result (also through result_images() or in_last_result()) needs "
    "`result`: the token /api/refine or /api/search returned.",
)
async def api_sql(request: BodyRequest, data: JSONBody[SqlRequest]) -> SqlResponse:
    app = _state(request)
    served = app.catalog(data.catalog)

    def work(waited: float) -> SqlResponse:
        res = _run_sql(request, app, served, data.sql, _api_last_result(app, served, data), waited)
        return SqlResponse(res.table.column_names, _rows(res.table), res.truncated, res.cut, res.time_ms)

    return await _in_console(request, app, served, work)


@dataclass
class CatalogHealth:
    """One served catalog: its rows, the DuckDB connections open to it now, and the console
    queries running in its worker processes."""

    rows: int
    duckdb_connections: int
    console_queries: int


@dataclass
class Health:
    """The server's state: ``catalogs`` by name, and the results kept for paging and the console."""

    status: str
    catalogs: dict[str, CatalogHealth]
    results_cached: int
    result_ids_cached: int


@get(
    "/api/health",
    sync_to_thread=True,
    summary="Health",
    description=(
        "Liveness and resources: rows and open DuckDB connections per catalog (the catalog's own connection "
        "plus one cursor per query in flight, as DuckDB counts them; 1 when idle), and the results kept for "
        "paging and the console (entries and result ids)."
    ),
)
def api_health(
    request: Request,
    catalog: Annotated[
        str | None, Parameter(description="only this catalog (default: every catalog served)")
    ] = None,
) -> Health:
    app = _state(request)
    served = [app.catalog(catalog)] if catalog else list(app.catalogs.values())
    catalogs = {s.name: CatalogHealth(s.rows, s.cat.connection_count(), s.console.busy()) for s in served}
    kept, ids = app.results.size()
    return Health("ok", catalogs, kept, ids)


def server_timing(app: ASGIApp) -> ASGIApp:
    """ASGI middleware adding ``Server-Timing: app;dur=<ms>``: the time from the request's
    arrival to its response headers, so a client can tell its own wait from the server's."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        t0 = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                ms = (time.perf_counter() - t0) * 1e3
                message["headers"] = [
                    *message.get("headers", []),
                    (b"server-timing", f"app;dur={ms:.2f}".encode()),
                ]
            await send(message)

        await app(scope, receive, timed_send)

    return middleware


CLIENT_GONE = "clip_branches.client_gone"


def cancel_on_disconnect(app: ASGIApp) -> ASGIApp:
    """ASGI middleware that sets ``scope[CLIENT_GONE]`` (a ``threading.Event``) when the client
    goes away before its response is complete, so work that can be stopped (a console query in
    its worker process) is stopped instead of running on for nobody. Once the request body has
    been read, a watcher waits for the next message, which the server sends only on disconnect
    or after the response."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        gone = threading.Event()
        scope[CLIENT_GONE] = gone
        body_read = asyncio.Event()
        watched: asyncio.Future = asyncio.get_running_loop().create_future()

        async def watch() -> None:
            await body_read.wait()
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            watched.set_result(message)

        async def tracked_receive() -> Message:
            if body_read.is_set():
                return await asyncio.shield(watched)
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            elif not message.get("more_body", False):
                body_read.set()
            return message

        watcher = asyncio.create_task(watch())
        try:
            await app(scope, tracked_receive, send)
        finally:
            watcher.cancel()

    return middleware


def create_app(
    paths: list[str | Path], settings: Settings | None = None, *, warm_up: bool = True
) -> Litestar:
    """The Litestar app serving ``paths`` (catalog files, opened read-only and sandboxed)."""
    settings = settings or Settings()
    hosts = AllowedHosts.parse(settings.allowed_hosts)  # a malformed setting fails before the catalogs load
    state = App(list(paths), settings)
    if warm_up:
        state.warm_up()
    app = Litestar(
        route_handlers=[
            index,
            search_text,
            search_similar,
            search_image,
            refine,
            results_page,
            thumbnail,
            original,
            console_page,
            console_run,
            api_search,
            api_search_post,
            api_refine,
            api_sql,
            api_health,
            create_static_files_router(path="/static", directories=[HERE / "static"]),
        ],
        plugins=[HTMXPlugin()],
        template_config=TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine),
        exception_handlers={
            CatalogError: _catalog_error,
            HTTPException: _http_error,
            UnicodeDecodeError: _undecodable_form,
        },
        request_max_body_size=_base64_chars(state.settings.max_upload_bytes) + UPLOAD_FRAMING_BYTES,
        on_shutdown=[state.close],
        middleware=[server_timing, cancel_on_disconnect],
        # The schema as data only: the HTML viewers load scripts from a CDN, which the CSP refuses.
        openapi_config=OpenAPIConfig(
            title="Litestar API", version="1.0.0", render_plugins=[JsonRenderPlugin(), YamlRenderPlugin()]
        ),
        debug=False,
    )
    # Around the router, as Litestar puts CORS, not per route: unknown paths get the headers too.
    app.asgi_handler = site_guard(app.asgi_handler, hosts)
    app.state.cb = state
    _document_bodies(app, (RefineRequest, SearchRequest, SqlRequest, ResultResponse, SqlResponse))
    return app
