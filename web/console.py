"""The SQL console: its page, running a query in the worker pool, and the result table."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from litestar import Request, Response, get, post
from litestar.exceptions import NotFoundException
from litestar.params import JSONBody
from litestar.plugins.htmx import HTMXRequest
from litestar.response import Template

import engine
from engine.errors import (
    InvalidArgument,
    InvalidSql,
    QueryInterrupted,
    ServerBusy,
)
from engine.limits import MAX_VALUE_CHARS
from engine.limits import WEB_FORM_BODY_BYTES as FORM_BODY_BYTES

from .bodies import (
    FORM,
    BodyRequest,
    SqlRequest,
)
from .middleware import CLIENT_GONE
from .pages import csv_response, render
from .state import CONSOLE_POLL_S, App, CatalogParam, Served, state_of


@get("/console", sync_to_thread=False)
def console_page(request: HTMXRequest, catalog: CatalogParam = None) -> Template:
    app = state_of(request)
    served = app.catalog(catalog)
    with served.reading():
        tables = served.cat.sql(
            "SELECT table_name, string_agg(column_name, ', ' ORDER BY column_index) AS columns FROM duckdb_columns() "
            "WHERE schema_name = 'main' AND database_name = current_database() AND NOT internal "
            "AND NOT starts_with(table_name, '_') GROUP BY table_name ORDER BY table_name"
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
    app = state_of(request)
    served = app.catalog(data.catalog)
    return await in_console(
        request, app, served, lambda waited: _console_table(request, app, served, data, waited)
    )


@post(
    "/console/csv",
    status_code=200,
    request_class=BodyRequest,
    operation_class=FORM,
    request_max_body_size=FORM_BODY_BYTES,
)
async def console_csv(request: BodyRequest, data: JSONBody[SqlRequest]) -> Response:
    """The console query's rows as a CSV download, under the console's limits (rows, bytes, time)."""
    app = state_of(request)
    served = app.catalog(data.catalog)

    def work(waited: float) -> Response:
        res = run_sql(request, app, served, data.sql, _page_last_result(app, served, data.result), waited)
        return csv_response(res.table, "query.csv")

    return await in_console(request, app, served, work)


def _console_table(
    request: BodyRequest, app: App, served: Served, data: SqlRequest, waited: float
) -> Template:
    # HTML escaping can make a value up to five times longer than its text.
    html_bytes = app.settings.sql_max_bytes // 5
    res = run_sql(
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
    rows = [[row[c] for c in columns] for row in rows_of(res.table)]
    return render(
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


async def in_console(request: Request, app: App, served: Served, work):
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


def api_last_result(app: App, served: Served, data: SqlRequest) -> engine.Result | None:
    """``/api/sql``'s ``last_result``: the result ``data.result`` names. A query that reads
    last_result without a token, and a token unknown, expired or of another catalog, are 400s."""
    if not data.result:
        if app.parser.reads_last_result(data.sql):
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


def rows_of(table) -> list[dict]:
    """The rows of a query result as Python values. Dates and timestamps come as text already
    (``Catalog.query``); a value nested deeper that Python cannot hold is a clear 400."""
    try:
        return table.to_pylist()
    except (OverflowError, ValueError) as e:
        raise InvalidSql(f"a value in the result cannot be shown ({e}); CAST it to VARCHAR") from None


def run_sql(
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
    with served.reading():
        return served.console.run(
            sql,
            time_limit_s=app.settings.sql_time_limit_s,
            waited_s=waited,
            cancel=request.scope.get(CLIENT_GONE),
            max_rows=app.settings.sql_max_rows,
            max_bytes=app.settings.sql_max_bytes if max_bytes is None else max_bytes,
            relations=relations,
        )
