"""The HTML pages and fragments: search, similar, image search, fine-tune, paging, thumbnails
and originals, and the error pages of every handler."""

from __future__ import annotations

import base64
import csv
import io
import re
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from litestar import MediaType, Request, Response, get, post
from litestar.datastructures import UploadFile
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException, ValidationException
from litestar.params import Body, FromPath, JSONBody, Parameter
from litestar.plugins.htmx import HTMXRequest, HTMXTemplate
from litestar.response import Template

import engine
from engine.errors import (
    CatalogError,
    CorruptCatalog,
    InvalidArgument,
    QueryInterrupted,
    ServerBusy,
    UnknownIds,
    UnsafeImage,
)
from engine.limits import DEFAULT_SAMPLED_NEGATIVES
from engine.limits import WEB_FORM_BODY_BYTES as FORM_BODY_BYTES

from .bodies import (
    DEFAULT_K,
    FORM,
    MAX_K,
    MAX_SAMPLED,
    QUERY_TEXT_CAP,
    BodyRequest,
    RefineRequest,
)
from .state import MODEL_LABELS, App, CatalogParam, Served, state_of

# Results a kept result shows again at once: the pages a user loaded, up to this many.
MAX_SHOWN = 12_000


# -- rendering -------------------------------------------------------------------------------
def _page(
    app: App, served: Served, result: engine.Result, offset: int, token: str | None, size: int | None = None
) -> dict:
    """Template context of one page of result thumbnails (``size`` of them, default a page)."""
    size = size or app.settings.page_size
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


def result_context(
    app: App,
    served: Served,
    result: engine.Result,
    kind: str,
    token: str | None = None,
    shown: int = 0,
    query: dict | None = None,
) -> dict:
    """The results fragment's context; a new result is kept under a new token, a kept one
    (``token``) is shown again with its first ``shown`` results (at least a page)."""
    token = token or app.results.put(served.name, result, kind, query)
    stats = dict(result.stats)
    suggestions = [(i, "label next") for i in result.suggestions[: app.settings.page_size].tolist()]
    return {
        "kind": kind,
        "stats": stats,
        "sql": result.sql,
        "total": len(result.ids),
        "rows": served.rows,
        "suggestions": suggestions,
        "score_hint": SCORE_HINTS[kind],
        "query": query or {},
        **_page(app, served, result, 0, token, max(shown, app.settings.page_size)),
    }


# What a result's score means, for its tooltip.
SCORE_HINTS = {
    "refine": "votes: how many of the model's members classify it positive (higher is surer)",
    **dict.fromkeys(("search", "similar", "image"), "distance to the query (lower is nearer)"),
}


def render(request: Request, name: str, context: dict) -> Template:
    return HTMXTemplate(template_name=name, context=context)


def _render_result(
    request: Request, app: App, served: Served, result: engine.Result, kind: str, query: dict | None = None
) -> Template:
    """The results fragment, with the engine's own time in ``X-Engine-Ms`` for load tests."""
    return HTMXTemplate(
        template_name="_results.html",
        context=result_context(app, served, result, kind, query=query),
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


def catalog_error(request: Request, exc: CatalogError) -> Response:
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


def http_error(request: Request, exc: HTTPException) -> Response:
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


def undecodable_form(request: Request, exc: UnicodeDecodeError) -> Response:
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
def checked_image(app: App, blob: bytes) -> bytes:
    if len(blob) > app.settings.max_upload_bytes:
        raise InvalidArgument(f"the image is larger than {app.settings.max_upload_bytes} bytes")
    if not blob:
        raise InvalidArgument("the uploaded file is empty; choose an image")
    return blob


def base64_chars(n_bytes: int) -> int:
    return 4 * ((n_bytes + 2) // 3)


def decoded_image(app: App, text: str) -> bytes:
    """The bytes of ``image_base64``: base64, whitespace allowed, or a ``data:...;base64,`` URL."""
    if text.startswith("data:"):
        head, comma, text = text.partition(",")
        if not comma or not head.endswith(";base64"):
            raise InvalidArgument("image_base64 must be base64, or a data: URL ending in ;base64,")
    if len(text) > base64_chars(app.settings.max_upload_bytes) + len(text) // 60 + 4:  # room for line breaks
        raise InvalidArgument(f"the image is larger than {app.settings.max_upload_bytes} bytes")
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except ValueError:
        raise InvalidArgument(
            "image_base64 must be an image file in base64: the characters A-Z, a-z, 0-9, + and /, "
            "padded with = to a length that is a multiple of 4"
        ) from None


# -- handlers --------------------------------------------------------------------------------


@get("/", sync_to_thread=False)
def index(request: HTMXRequest, catalog: CatalogParam = None) -> Template:
    app = state_of(request)
    served = app.catalog(catalog)
    return Template(
        template_name="search.html",
        context={
            "catalogs": list(app.catalogs.values()),
            "current": served,
            "models": MODEL_LABELS,
            "page_size": app.settings.page_size,
            "max_negatives": MAX_SAMPLED,
            "default_negatives": DEFAULT_SAMPLED_NEGATIVES,
        },
    )


@get("/search", sync_to_thread=True)
def search_text(
    request: HTMXRequest,
    q: Annotated[str, Parameter(description="text query", max_length=QUERY_TEXT_CAP)] = "",
    catalog: CatalogParam = None,
    k: Annotated[int, Parameter(ge=1, le=MAX_K, description="results")] = DEFAULT_K,
) -> Template:
    app = state_of(request)
    served = app.catalog(catalog)
    with served.working():
        result = served.cat.search(q, k=k)
    return _render_result(request, app, served, result, "search", {"text": q})


@get("/similar", sync_to_thread=True)
def search_similar(
    request: HTMXRequest,
    id: Annotated[int, Parameter(description="image id")],
    catalog: CatalogParam = None,
    k: Annotated[int, Parameter(ge=1, le=MAX_K)] = DEFAULT_K,
) -> Template:
    app = state_of(request)
    served = app.catalog(catalog)
    with served.working():
        result = served.cat.search(id=id, k=k)
    return _render_result(request, app, served, result, "similar", {"id": id})


@dataclass
class ImageQuery:
    file: UploadFile | None = None
    catalog: str | None = None
    k: int = DEFAULT_K


@post("/search/image", sync_to_thread=True, status_code=200)
def search_image(
    request: HTMXRequest, data: Annotated[ImageQuery, Body(media_type=RequestEncodingType.MULTI_PART)]
) -> Template:
    app = state_of(request)
    served = app.catalog(data.catalog)
    if not 1 <= data.k <= MAX_K:
        raise InvalidArgument(f"k must be in 1..{MAX_K}")
    if data.file is None or not data.file.filename:
        raise InvalidArgument("choose an image file to search with")
    image = app.query_image(checked_image(app, data.file.file.read(app.settings.max_upload_bytes + 1)))
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
    app = state_of(request)
    served = app.catalog(data.catalog)
    result = run_refine(app, served, data)
    return _render_result(request, app, served, result, "refine")


def run_refine(app: App, served: Served, data: RefineRequest) -> engine.Result:
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


@get("/result/{token:str}", sync_to_thread=False)
def kept_result(
    request: HTMXRequest,
    token: FromPath[str],
    shown: Annotated[int, Parameter(ge=0, le=MAX_SHOWN, description="results to show at once")] = 0,
) -> Template:
    """A kept result shown again as it was (its statistics, SQL and the pages loaded), for a
    reload or a shared link: never recomputed, so it is what was on screen."""
    app = state_of(request)
    name, result, kind, query = app.results.entry(token)
    return HTMXTemplate(
        template_name="_results.html",
        context=result_context(app, app.catalog(name), result, kind, token, shown, query),
    )


@get("/results/{token:str}", sync_to_thread=False)
def results_page(
    request: HTMXRequest,
    token: FromPath[str],
    offset: Annotated[int, Parameter(ge=0, description="first result to show")] = 0,
) -> Template:
    app = state_of(request)
    name, result, kind, _ = app.results.entry(token)
    context = _page(app, app.catalog(name), result, offset, token)
    return render(request, "_page.html", {**context, "score_hint": SCORE_HINTS[kind]})


def _image_response(request: Request, image: tuple[bytes, str, str]) -> Response:
    """An image shown in the browser (inline), or a 304 when the client holds this version."""
    data, media_type, etag = image
    headers = {
        "ETag": etag,
        "Cache-Control": f"public, max-age={state_of(request).settings.thumb_max_age_s}",
        "Content-Disposition": "inline",
    }
    if request.headers.get("if-none-match") == etag:
        return Response(b"", status_code=304, headers=headers)
    return Response(data, media_type=media_type, headers=headers)


def csv_response(table: pa.Table, filename: str) -> Response:
    """``table`` as a CSV file the browser saves as ``filename``. Arrow writes the usual types;
    a column it cannot write as text (bytes that are no UTF-8, lists, structs) is written value by
    value: bytes as ``\\x`` and hex, like DuckDB prints a BLOB, anything else as Python's ``str``."""
    buf = io.BytesIO()
    try:
        pacsv.write_csv(table, buf)
        data = buf.getvalue()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        try:
            rows = table.to_pylist()
        except (OverflowError, ValueError) as e:
            raise InvalidArgument(
                f"a value in the result cannot be written ({e}); CAST it to VARCHAR"
            ) from None
        text = io.StringIO()
        writer = csv.writer(text, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(table.column_names)
        for row in rows:
            writer.writerow([_csv_value(v) for v in row.values()])
        data = text.getvalue().encode("utf-8")
    return Response(
        data,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _csv_value(v: object) -> object:
    if v is None or isinstance(v, (int, float)):
        return "" if v is None else v
    if isinstance(v, bytes):
        return "\\x" + v.hex()
    return str(v)


# Columns of ``images`` the viewer and exports leave out: bookkeeping, not what a searcher asks about.
_HIDDEN_INFO = ("file_mtime_ns", "embedding_part")


@get("/export/{token:str}", sync_to_thread=True)
def export_result(
    request: Request,
    token: FromPath[str],
    format: Annotated[str, Parameter(pattern="^(csv|parquet)$", description="csv or parquet")] = "csv",
) -> Response:
    """A kept result as a file: rank, id, score and the image's row of ``images`` (uri and
    metadata), in the result's order."""
    app = state_of(request)
    name, result, kind, _ = app.results.entry(token)
    ranked = pa.table(
        {
            "rank": np.arange(1, len(result.ids) + 1, dtype=np.int64),
            "id": result.ids,
            "votes" if kind == "refine" else "distance": result.scores,
        }
    )
    served = app.catalog(name)
    with served.reading():
        images = served.cat.sql("SELECT * FROM images WHERE id IN (SELECT unnest(?))", [result.ids.tolist()])
    images = images.drop_columns([c for c in _HIDDEN_INFO if c in images.column_names])
    table = ranked.join(images, "id", join_type="left outer").sort_by("rank")
    if format == "csv":
        return csv_response(table, f"{kind}-{len(result.ids)}.csv")
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return Response(
        buf.getvalue(),
        media_type="application/vnd.apache.parquet",
        headers={"Content-Disposition": f'attachment; filename="{kind}-{len(result.ids)}.parquet"'},
    )


@get("/image-info/{catalog:str}/{image_id:int}", sync_to_thread=True)
def image_info(request: HTMXRequest, catalog: FromPath[str], image_id: FromPath[int]) -> Template:
    """The metadata of one image, for the viewer: its row of ``images`` but the bookkeeping."""
    served = state_of(request).catalog(catalog)
    with served.reading():
        rows = served.cat.sql("SELECT * FROM images WHERE id = ?", [image_id]).to_pylist()
    if not rows:
        raise UnknownIds([image_id])
    info = [(k, v) for k, v in rows[0].items() if k not in _HIDDEN_INFO and v is not None]
    return render(request, "_info.html", {"info": info})


@get("/thumb/{catalog:str}/{image_id:int}", sync_to_thread=True)
def thumbnail(request: Request, catalog: FromPath[str], image_id: FromPath[int]) -> Response:
    served = state_of(request).catalog(catalog)
    with served.reading():
        return _image_response(request, served.thumbs.get(image_id))


@get(
    "/image/{catalog:str}/{image_id:int}",
    sync_to_thread=True,
    description=(
        "The image file, if it is still the one ingested (a regular file, no link, of the recorded size and "
        "time, that decodes as an image; else a 403); TIFF is sent as PNG."
    ),
)
def original(request: Request, catalog: FromPath[str], image_id: FromPath[int]) -> Response:
    served = state_of(request).catalog(catalog)
    with served.reading():
        return _image_response(request, served.thumbs.viewable(image_id))
