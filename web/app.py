"""The Litestar app: search, label, fine-tune and a read-only SQL console over engine.Catalog.

Handlers stay thin: every search, refine and query goes through :class:`engine.Catalog`
(opened read-only and sandboxed), CPU-bound calls run in worker threads, and each SQL query
gets its own DuckDB cursor. Labels live in the browser (per tab, in sessionStorage), so the
server keeps no per-user state beyond a small LRU of results, by token, for paging and for the
console's ``last_result``.

Every page has a JSON twin under ``/api/``. Their bodies are the Structs of :mod:`web.bodies`,
sent as JSON or as the page's form (:class:`~web.bodies.BodyRequest`); a search or fine-tune
answers with its ``result`` token, which ``POST /api/sql`` takes to query it as ``last_result``.

This module assembles the app; the handlers live in :mod:`web.pages`, :mod:`web.console` and
:mod:`web.api`, the server's state in :mod:`web.state`, the middleware in :mod:`web.middleware`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from litestar import Litestar
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, YamlRenderPlugin
from litestar.plugins.htmx import HTMXPlugin
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from engine.errors import (
    CatalogError,
)

from .api import api_health, api_refine, api_search, api_search_post, api_sql
from .bodies import (
    RefineRequest,
    ResultResponse,
    SearchRequest,
    SqlRequest,
    SqlResponse,
    _document_bodies,
)
from .concepts import BODIES as CONCEPT_BODIES
from .concepts import ROUTES as CONCEPT_ROUTES
from .console import console_csv, console_page, console_run
from .guard import AllowedHosts, site_guard
from .live import Writer
from .middleware import cancel_on_disconnect, server_timing
from .pages import (
    base64_chars,
    catalog_error,
    export_result,
    http_error,
    image_info,
    index,
    kept_result,
    original,
    refine,
    results_page,
    search_image,
    search_similar,
    search_text,
    thumbnail,
    undecodable_form,
)
from .settings import Settings
from .state import UPLOAD_FRAMING_BYTES, App

HERE = Path(__file__).parent


def create_app(
    paths: list[str | Path],
    settings: Settings | None = None,
    *,
    warm_up: bool = True,
    watch: Sequence[str | Path] = (),
) -> Litestar:
    """The Litestar app serving ``paths`` (catalog files, opened read-only and sandboxed), with
    the writer that takes new images in while they are served (:mod:`web.live`); ``watch``:
    folders whose new, changed and deleted files it takes into the first catalog."""
    settings = settings or Settings()
    hosts = AllowedHosts.parse(settings.allowed_hosts)  # a malformed setting fails before the catalogs load
    state = App(list(paths), settings)
    try:
        writer = Writer(state, watch)
    except BaseException:
        state.close()
        raise
    state.writer = writer
    if warm_up:
        state.warm_up()
    writer.start()
    app = Litestar(
        route_handlers=[
            index,
            search_text,
            search_similar,
            search_image,
            refine,
            results_page,
            kept_result,
            image_info,
            export_result,
            console_csv,
            thumbnail,
            original,
            console_page,
            console_run,
            api_search,
            api_search_post,
            api_refine,
            api_sql,
            api_health,
            *CONCEPT_ROUTES,
            create_static_files_router(path="/static", directories=[HERE / "static"]),
        ],
        plugins=[HTMXPlugin()],
        template_config=TemplateConfig(directory=HERE / "templates", engine=JinjaTemplateEngine),
        exception_handlers={
            CatalogError: catalog_error,
            HTTPException: http_error,
            UnicodeDecodeError: undecodable_form,
        },
        request_max_body_size=base64_chars(state.settings.max_upload_bytes) + UPLOAD_FRAMING_BYTES,
        on_shutdown=[writer.stop, state.close],
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
    _document_bodies(
        app, (RefineRequest, SearchRequest, SqlRequest, ResultResponse, SqlResponse, *CONCEPT_BODIES)
    )
    return app
