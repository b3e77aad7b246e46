"""Progress of long library calls: one ``progress`` argument, reported or shown.

The long calls (:func:`engine.ingest.ingest`, :func:`engine.codes.pipeline.train_head`,
:func:`engine.codes.pipeline.index_embeddings`, :meth:`Catalog.build_index`, :meth:`Catalog.compact`,
:meth:`Catalog.export_parquet`, :meth:`Catalog.import_parquet`) take ``progress``:

* ``None`` or ``False``: nothing;
* a callable ``(done, total)``: called as work units (rows, steps: each call documents which)
  are done, ``done`` never decreasing and ending at ``total``. While one long DuckDB statement
  runs it may be called from a helper thread (:meth:`engine.store.database.Store.tracking`), never from two at once;
* ``True``: a display on stderr, from :func:`reporter`.

On a terminal the display is a tqdm bar with rate and time left. Elsewhere (a pipe, a log file)
a bar's carriage returns make a mess, so it prints a plain line at most every
:data:`LINE_INTERVAL_S` seconds, and the last one::

    export: 1200000/10000000 rows, 350000 rows/s, 25 s left
    export: 10000000/10000000 rows, 352000 rows/s, done in 28 s
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

Progress = bool | Callable[[int, int], None] | None

# Often enough to see a run is alive, rarely enough that an hour-long run logs 720 lines.
LINE_INTERVAL_S = 5.0
# Reports in a line's window below which the plain-line display gives no time left.
MIN_REPORTS_FOR_ESTIMATE = 3


class Reporter:
    """A ``(done, total)`` callable with :meth:`close`; also a context manager that closes.
    This base class shows nothing."""

    active = False  # whether reports go anywhere; callers may skip work done only to report

    def __call__(self, done: int, total: int) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Callback(Reporter):
    active = True

    def __init__(self, fn: Callable[[int, int], None]):
        self.fn = fn

    def __call__(self, done: int, total: int) -> None:
        self.fn(int(done), int(total))


class _Bar(Reporter):
    """A tqdm bar, for a terminal."""

    active = True

    def __init__(self, label: str, unit: str, stream: TextIO):
        from tqdm import tqdm  # on first use: its import takes about 50 ms, which most callers never need

        self.bar = tqdm(desc=label, unit=unit, file=stream, dynamic_ncols=True, smoothing=0.1)

    def __call__(self, done: int, total: int) -> None:
        if self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class _Lines(Reporter):
    """Plain lines, at most one every ``interval_s`` seconds plus the last. The rate and time
    left are those since the previous line, so a slow first step (loading a model) does not
    inflate the estimate for the fast ones after it; the last line gives the average. A window
    of fewer than :data:`MIN_REPORTS_FOR_ESTIMATE` reports is one or two steps, too few to tell
    the time left from."""

    active = True

    def __init__(self, label: str, unit: str, stream: TextIO, interval_s: float):
        self.label, self.unit, self.stream, self.interval_s = label, unit, stream, interval_s
        self.t0 = self.last = time.monotonic()
        self.last_done, self.reports = 0, 0
        self.finished = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        final = done >= total
        self.reports += 1
        if self.finished or (not final and now - self.last < self.interval_s):
            return
        if final:
            elapsed = now - self.t0
            rate = done / elapsed if elapsed > 0 else 0.0
            tail = f"done in {_duration(elapsed)}"
        else:
            rate = (done - self.last_done) / max(now - self.last, 1e-9)
            known = rate > 0 and self.reports >= MIN_REPORTS_FOR_ESTIMATE
            tail = f"{_duration((total - done) / rate)} left" if known else "time left unknown"
        self.last, self.last_done, self.reports, self.finished = now, done, 0, final
        self.stream.write(f"{self.label}: {done}/{total} {self.unit}, {_rate(rate)} {self.unit}/s, {tail}\n")
        self.stream.flush()


def reporter(
    label: str,
    unit: str,
    enabled: Progress,
    *,
    stream: TextIO | None = None,
    interval_s: float = LINE_INTERVAL_S,
) -> Reporter:
    """The :class:`Reporter` for a ``progress`` argument ``enabled`` (see the module docstring).

    ``label`` names the work ("index"), ``unit`` its units ("rows"); ``stream`` defaults to
    stderr. ``True`` gives a tqdm bar when ``stream`` is a terminal, else plain lines at most
    every ``interval_s`` seconds plus the last.
    """
    if callable(enabled):
        return _Callback(enabled)
    if not enabled:
        return Reporter()
    stream = sys.stderr if stream is None else stream
    if _is_terminal(stream):
        return _Bar(label, unit, stream)
    return _Lines(label, unit, stream, interval_s)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _rate(r: float) -> str:
    return f"{r:.0f}" if r >= 100 else f"{r:.3g}"


def _duration(s: float) -> str:
    if s < 100:
        return f"{s:.0f} s"
    if s < 6000:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"
