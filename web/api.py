"""The JSON twins of the pages under ``/api/``: search, fine-tune, SQL and health."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from litestar import Request, get, post
from litestar.params import JSONBody, Parameter

from engine.errors import (
    InvalidArgument,
)
from engine.limits import WEB_FORM_BODY_BYTES as FORM_BODY_BYTES
from engine.live import Inbox

from .bodies import (
    DEFAULT_K,
    JSON_OR_FORM,
    JSON_OR_UPLOAD,
    MAX_K,
    QUERY_TEXT_CAP,
    BodyRequest,
    RefineRequest,
    ResultResponse,
    SearchRequest,
    SqlRequest,
    SqlResponse,
)
from .console import api_last_result, in_console, rows_of, run_sql
from .pages import checked_image, decoded_image, run_refine
from .state import CatalogParam, state_of

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
    app = state_of(request)
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
    app = state_of(request)
    served = app.catalog(data.catalog)
    image = request.upload
    if data.image_base64 is not None:
        if image is not None:
            raise InvalidArgument("give the image as image_base64 or as a file, not both")
        image = decoded_image(app, data.image_base64)
    given = [name for name, v in (("q", data.q), ("image_base64", image), ("id", data.id)) if v is not None]
    if len(given) != 1:
        raise InvalidArgument(
            "give exactly one of q (a text query), image_base64 (an image; in a multipart form, "
            f"file) or id (an image id); got {', '.join(given) or 'none'}"
        )
    if image is not None:
        image = app.query_image(checked_image(app, image))
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
    app = state_of(request)
    served = app.catalog(data.catalog)
    result = run_refine(app, served, data)
    return ResultResponse.of(result, app.results.put(served.name, result, "refine"), limit)


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
    app = state_of(request)
    served = app.catalog(data.catalog)

    def work(waited: float) -> SqlResponse:
        res = run_sql(request, app, served, data.sql, api_last_result(app, served, data), waited)
        return SqlResponse(res.table.column_names, rows_of(res.table), res.truncated, res.cut, res.time_ms)

    return await in_console(request, app, served, work)


@dataclass
class CatalogHealth:
    """One served catalog: its rows, the DuckDB connections open to it now, the console
    queries running in its worker processes, how many times it changed while served
    (``version``), its images waiting in the inbox, what its writer waits for, if anything, and
    how long its last write held requests back (``write_ms``)."""

    rows: int
    duckdb_connections: int
    console_queries: int
    version: int
    pending: int
    status: str
    write_ms: float


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
    app = state_of(request)
    served = [app.catalog(catalog)] if catalog else list(app.catalogs.values())
    catalogs = {
        s.name: CatalogHealth(
            s.rows,
            s.cat.connection_count(),
            s.console.busy(),
            s.version,
            len(Inbox.of(s.path).pending()),
            s.status,
            round(s.write_ms, 1),
        )
        for s in served
    }
    kept, ids = app.results.size()
    return Health("ok", catalogs, kept, ids)
