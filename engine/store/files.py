"""Files that appear whole or not at all: write under a temporary sibling name, then rename.

Every file the engine writes outside DuckDB (embedding parts, thumbnails, the demo data, Spark
manifests, a new catalog before it takes its name) goes through :func:`atomic_path`, so a
process killed at any point leaves the old file or the new one under the final name, never a
partial one, and at worst a hidden ``.NAME.*.tmp`` that the next run overwrites. ``durable``
files are also flushed to disk, with their folder, before and after the rename: what the
catalog records must survive a power cut; caches (thumbnails, downloads) need not.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, durable: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; when the block ends without an error, it
    is renamed over ``path``, else deleted. The name is unique per process and thread."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """``data`` as the whole content of ``path``, atomically."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data)


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike, *, durable: bool = True) -> None:
    """``src``'s content at ``dst``, atomically: a hard link when both are on one file system
    (no bytes copied), else a copy. ``src`` stays."""
    with atomic_path(dst, durable=durable) as tmp:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
