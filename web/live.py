"""The server's writer: one thread that changes the served catalogs while they are served.

The server holds each catalog read-only. When there is something to write (images staged in
the catalog's inbox by ``clip-branches ingest`` or by a watched folder, a concept to save,
rename or delete from the UI, rows to fold into the k-d order when the server is idle) the
writer waits for the requests in flight to finish (holding new ones back, :class:`SwapGate`),
closes the catalog and its console workers, opens the file writable, does the work, and opens it
read-only again with its index loaded, before any request waits on it. See
:mod:`engine.live` for the inbox and why a kill at any point loses and duplicates nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import pyarrow as pa

import engine
from engine.errors import CatalogError, ServerBusy
from engine.live import Inbox, apply_pending, register_server, stage, unregister_server

from .state import App, Served

log = logging.getLogger("clip_branches.live")

TICK_S = 0.5  # how often the writer looks at the inboxes and its queue
ALONE_WAIT_S = 10.0  # how long the writer waits for requests in flight before it tries later
DEBRIS_EVERY_S = 60.0
WATCH_RETRY_S = 30.0  # after a watched folder failed to stage


class Writer:
    """The writer thread of an :class:`App`; ``watch`` folders feed the first catalog."""

    def __init__(self, app: App, watch: Sequence[str | Path] = ()):
        self.app = app
        self.watch = [str(Path(w).resolve()) for w in watch]
        for w in self.watch:
            if not Path(w).is_dir():
                raise CatalogError(f"--watch {w}: no such folder")
        self._ops: list[tuple[Served, Callable, Future]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._encoder = None
        self._next_watch = 0.0
        self._next_debris = 0.0
        self._last_fold_check: dict[str, int] = {}
        self.thread = threading.Thread(target=self._run, name="catalog-writer", daemon=True)

    def start(self) -> None:
        for served in self.app.catalogs.values():
            register_server(served.path, "")
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout=30)
        for served in self.app.catalogs.values():
            unregister_server(served.path)

    def submit(self, served: Served, work: Callable[[engine.Catalog], object], timeout: float = 60.0):
        """Run ``work(writable catalog)`` on the writer thread; its result, once the catalog is
        open read-only again. ServerBusy-like CatalogError when the writer cannot get the file."""
        future: Future = Future()
        with self._lock:
            self._ops.append((served, work, future))
        self._wake.set()
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            if future.cancel():
                raise ServerBusy(
                    f"the catalog {served.name!r} could not be written within {timeout:.0f} s "
                    f"({served.status or 'it is busy'}); nothing was changed, try again"
                ) from None
            return future.result()  # it started just now: its result comes soon

    # -- the loop ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception:  # the writer must outlive any one failure; the next tick retries
                log.exception("the catalog writer failed; it tries again")
            self._wake.wait(TICK_S)
            self._wake.clear()

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            ops, self._ops = self._ops, []
        for served in self.app.catalogs.values():
            mine = [(w, f) for s, w, f in ops if s is served]
            inbox = Inbox.of(served.path)
            if now >= self._next_debris:
                inbox.remove_debris()
            if self.watch and served is next(iter(self.app.catalogs.values())) and now >= self._next_watch:
                t0 = time.monotonic()
                every = self.app.settings.watch_every_s
                try:
                    self._stage_watched(served, inbox)
                except CatalogError as e:  # e.g. a manifest with bad values: say so, look again later
                    served.status = f"watching: {e}"
                    every = max(every, WATCH_RETRY_S)
                self._next_watch = time.monotonic() + max(every, 5 * (time.monotonic() - t0))
            if mine or inbox.pending():
                self._write(served, inbox, mine)
            elif self._fold_due(served, now):
                self._write(served, inbox, [], fold=True)
        if now >= self._next_debris:
            self._next_debris = now + DEBRIS_EVERY_S

    def _write(self, served: Served, inbox: Inbox, ops: list, fold: bool = False) -> None:
        """Have the catalog alone, open it writable, take the inbox in, run ``ops``, fold when
        asked; then open it read-only again."""
        t0 = time.perf_counter()
        if not served.swap.acquire_alone(ALONE_WAIT_S):
            served.status = "waiting for requests to finish"
            self._requeue(served, ops)
            return
        changed, outcomes = False, []
        try:
            served.console.close()
            served.cat.close()
            try:
                cat = engine.Catalog.open(served.path)
            except CatalogError as e:
                served.status = f"waiting to write the file: {e}"
                self._requeue(served, ops)
                return
            try:
                inbox.remove_debris()
                reports = apply_pending(cat, inbox)
                changed = bool(reports)
                for report in reports:
                    log.info("took in %s", report)
                for work, future in ops:
                    if not future.set_running_or_notify_cancel():
                        continue  # its request gave up waiting
                    try:
                        outcomes.append((future, work(cat), None))
                    except Exception as e:
                        outcomes.append((future, None, e))
                    changed = True
                if fold:
                    block = (cat.setting("index") or {}).get("block_size")
                    cat.build_index(**({"block_size": int(block)} if block else {}))
                    changed = True
            except BaseException as e:
                done = {id(f) for f, _, _ in outcomes}
                for _, future in ops:
                    if id(future) in done or future.done():
                        continue
                    if future.running() or future.set_running_or_notify_cancel():
                        future.set_exception(e)
                raise
            finally:
                cat.close()
            served.status = ""
        finally:
            try:
                self.app.open_served(served)
            except Exception as e:
                served.status = f"could not open the catalog again: {e}"
                log.exception("could not open %s again", served.path)
            if changed:
                served.version += 1
            served.write_ms = (time.perf_counter() - t0) * 1e3
            served.swap.release_alone()
            for future, result, error in outcomes:  # once the catalog is open again
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)
        try:
            served.console.start()  # its workers open the file again now, not on the next query
        except Exception:
            log.exception("the console of %s did not start", served.path)

    def _requeue(self, served: Served, ops: list) -> None:
        with self._lock:
            self._ops[:0] = [(served, w, f) for w, f in ops]

    def _fold_due(self, served: Served, now: float) -> bool:
        """Rows outside the k-d order, a catalog small enough, and no request for a while."""
        if now - served.swap.last_read < self.app.settings.fold_idle_s:
            return False
        if self._last_fold_check.get(served.name) == served.version:
            return False  # nothing changed since it was found not due
        with served.reading(request=False):
            status = served.cat.index_status()
        outside = status["rows"] - status["indexed_rows"]
        due = 0 < status["rows"] <= self.app.settings.fold_max_rows and outside > 0
        if not due:
            self._last_fold_check[served.name] = served.version
        return due

    # -- watched folders -------------------------------------------------------------------------
    def _stage_watched(self, served: Served, inbox: Inbox) -> None:
        """Stage the new, changed and deleted files of the watched folders, if there are any."""
        from engine.ingest.run import plan_files
        from engine.ingest.sources import scan_sources

        if inbox.pending():
            return  # the last staging is not taken in yet: planning now would stage it again
        scanned = scan_sources(self.watch)
        with served.reading(request=False):
            cat = served.cat
            enc_id = cat.setting("encoder")
            if not enc_id:
                served.status = "watching: the catalog has no encoder yet; ingest into it once first"
                return
            plan = plan_files(cat, scanned, enc_id)
            seen = pa.table({"uri": pa.array(scanned.uris, pa.string())})
            gone = cat.store.value(
                "SELECT count(*) FROM images i WHERE uri IS NOT NULL "
                "AND list_bool_or([starts_with(uri, p) FOR p IN ?]) "
                "AND NOT EXISTS (SELECT 1 FROM _seen s WHERE s.uri = i.uri)",
                [scanned.folder_prefixes()],
                _seen=seen,
            )
            if len(plan.todo) == 0 and not gone:
                return
            if self._encoder is None or self._encoder.id != enc_id:
                from engine.encoders import load_encoder

                self._encoder = load_encoder(enc_id)
            item = inbox.new_item()
            try:
                stage(cat, self.watch, self._encoder, item)
            except BaseException:
                import shutil

                shutil.rmtree(item, ignore_errors=True)
                raise
        inbox.submit(item)
        log.info("staged %d new or changed and %d deleted files of the watched folders", len(plan.todo), gone)
