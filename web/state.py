"""What the server holds: the served catalogs (:class:`Served`), recent results by token
(:class:`Results`) and the shared limits and pools (:class:`App`)."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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

# How long a request waits while the writer has the catalog alone, and the writer for requests
# to finish before it tries again later.
SWAP_WAIT_S = 30.0
CONSOLE_POLL_S = 0.02  # how often a console request waiting for a slot looks again
# Bytes a request may add around an uploaded image (multipart or JSON framing, the other fields).
UPLOAD_FRAMING_BYTES = 1_000_000
MODEL_LABELS = {
    "ensemble": "Ensemble of 25 decision branch models",
    "branch": "Single decision branch model",
    "tree": "Decision tree",
    "forest": "Random forest (25 trees)",
}


class SwapGate:
    """Lets requests read the catalog together, and the writer (:mod:`web.live`) have it alone
    for the moment it takes new images in: a waiting writer holds back new readers, so it is not
    starved; a reader that waits longer than its timeout gets ServerBusy (a 503)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = False
        self.last_read = time.monotonic()  # when a request last read the catalog

    @contextlib.contextmanager
    def reading(self, timeout: float, request: bool = True):
        """``request``: a request reads (False: the writer itself, which does not count as use)."""
        if request:
            self.last_read = time.monotonic()
        with self._cond:
            if not self._cond.wait_for(lambda: not self._writer and not self._waiting, timeout):
                raise ServerBusy("the catalog is taking new images in; try again in a moment")
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    def acquire_alone(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the readers to finish, holding new ones back; True once
        this thread has the catalog alone (then :meth:`release_alone`), False if they did not."""
        with self._cond:
            if self._writer or self._waiting:
                return False
            self._waiting = True
            ok = self._cond.wait_for(lambda: self._readers == 0, timeout)
            self._waiting = False
            self._writer = ok
            self._cond.notify_all()
            return ok

    def release_alone(self) -> None:
        with self._cond:
            self._writer = False
            self._cond.notify_all()


@dataclass
class Served:
    """One catalog the app serves. ``cat``, ``thumbs``, ``rows`` and ``console`` are replaced
    when the writer takes new images in: use them inside :meth:`reading` (or :meth:`working`)."""

    name: str
    path: Path
    cat: engine.Catalog
    thumbs: Thumbnails
    rows: int
    console: QueryPool
    gate: threading.BoundedSemaphore
    console_slots: threading.BoundedSemaphore
    swap: SwapGate = field(default_factory=SwapGate)
    version: int = 0  # how many times the writer changed the catalog since the server started
    status: str = ""  # what the writer is waiting for, when it is
    write_ms: float = 0.0  # how long requests last waited on the writer (it had the catalog alone)

    def reading(self, request: bool = True):
        """Hold the catalog open (not swapped) while the block runs; ``request=False`` for the
        writer's own reads, which do not keep the catalog from counting as idle."""
        return self.swap.reading(SWAP_WAIT_S, request)

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
            with self.reading():
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
        self.writer = None  # the catalog writer (web.live.Writer), once the app has one

    def open_served(self, served: Served) -> None:
        """Open ``served``'s file read-only again after the writer changed it (the writer holds
        it alone): a new catalog, thumbnails and console, the index loaded before any request."""
        settings = self.settings
        cat = engine.Catalog.open(
            served.path, read_only=True, sandbox=True, memory_limit=settings.sql_memory_limit
        )
        served.rows = cat.block_index().n_rows
        served.cat, served.thumbs = cat, Thumbnails(cat)
        served.console = QueryPool(
            served.path, workers=settings.sql_workers, memory_limit=settings.sql_memory_limit
        )

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
