"""What the server holds: the served catalogs (:class:`Served`), recent results by token
(:class:`Results`) and the shared limits and pools (:class:`App`)."""

from __future__ import annotations

import contextlib
import secrets
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from litestar import Request
from litestar.exceptions import NotFoundException
from litestar.params import Parameter
from PIL import Image

import engine
from engine.errors import (
    CatalogError,
    InvalidArgument,
    ServerBusy,
)
from engine.ingest.imageio import UnreadableImage, decode_query_image
from engine.learn import refine as rf
from engine.limits import WEB_BUSY_WAIT_S as BUSY_WAIT_S
from engine.limits import WEB_DECODE_WAIT_S as DECODE_WAIT_S
from engine.limits import WEB_DECODES_AT_ONCE as DECODES_AT_ONCE
from engine.sandbox import QueryParser, QueryPool

from .settings import Settings
from .thumbs import Thumbnails

CONSOLE_POLL_S = 0.02  # how often a console request waiting for a slot looks again
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
        self._items: OrderedDict[str, tuple[str, engine.Result, str, dict]] = OrderedDict()
        self._ids = 0
        self._lock = threading.Lock()

    def put(
        self, catalog: str, result: engine.Result, kind: str = "search", query: dict | None = None
    ) -> str:
        """Keep ``result`` (of a ``kind`` of request: search, similar, image, refine, asked by
        ``query``: its text or example id); its token."""
        token = secrets.token_urlsafe(12)
        with self._lock:
            self._items[token] = (catalog, result, kind, query or {})
            self._ids += len(result.ids)
            while len(self._items) > 1 and (len(self._items) > self.capacity or self._ids > self.max_ids):
                _, (_, old, _, _) = self._items.popitem(last=False)
                self._ids -= len(old.ids)
        return token

    def get(self, token: str) -> tuple[str, engine.Result]:
        return self.entry(token)[:2]

    def entry(self, token: str) -> tuple[str, engine.Result, str, dict]:
        """The catalog, result, kind and query kept under ``token``; a 404 when it is no longer kept."""
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
        self.parser = QueryParser()

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


CatalogParam = Annotated[str | None, Parameter(description="catalog name (default: the first one served)")]


def state_of(request: Request) -> App:
    """The server state of the app handling ``request``."""
    return request.app.state.cb
