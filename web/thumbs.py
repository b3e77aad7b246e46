"""Thumbnails and originals for the UI: the ingested thumbnail when there is one, else the
original (small images in a browser format) or a thumbnail made now and cached beside the catalog.

An original is served only while it is still the file that was ingested. A catalog's ``uri`` is
data, and an imported Parquet export can point it anywhere (``/etc/passwd``); a file can be
replaced by another, or by a link to another, after ingestion. So :meth:`Thumbnails.original`
requires the file it opened to be a regular file of exactly the size and modification time the
catalog recorded at ingestion (for a symbolic link, as ingestion does, those of the file it
points to), and one that decodes as an image (:func:`engine.ingest.imageio.decode_image`: a known
format, decoded completely, within the pixel limit). Anything else is refused with
:class:`~engine.errors.UnsafeImage` (a 403) and none of its bytes are sent. A link swapped in
after ingestion points to a file of another size or time, and is refused as that file would be.

The bytes checked are the bytes served: read once from the descriptor opened. Decoding is the
costly check, so its outcome is kept per file version (id, size, modification time, device,
inode) and runs once per version; the open and the stat comparisons run on every request.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from litestar.exceptions import NotFoundException
from PIL import Image

import engine
from engine.errors import UnsafeImage
from engine.ingest.imageio import (
    PIL_FORMATS,
    THUMB_MAX_SIDE,
    DecodedImage,
    UnreadableImage,
    decode_image,
    make_thumbnail,
    thumbnail_path,
    write_thumbnail,
)

# Formats every browser shows, by PIL's name for them; other images (TIFF) are sent as PNG.
BROWSER_TYPES = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
}
# File versions whose decoding check is remembered, about 200 bytes each.
CHECKS_KEPT = 100_000
# O_NONBLOCK: a FIFO must not block the open
_OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
)


@dataclass
class Original:
    """The bytes of an image's file, checked, and PIL's name of their format. ``decoded`` is the
    decoded picture when this request had to decode it (None when the check was remembered)."""

    data: bytes
    format: str
    etag: str
    decoded: DecodedImage | None = None


class Thumbnails:
    def __init__(self, cat: engine.Catalog):
        self.cat = cat
        self._columns = set(cat.image_columns())  # a served catalog is read-only: fixed
        self._checked: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._lock = threading.Lock()

    def _lookup(self, image_id: int) -> dict:
        """The ``images`` row of ``image_id``: uri, width, height, file_size, file_mtime_ns."""
        if not 0 <= image_id < 2**63:
            raise NotFoundException(f"no image with id {image_id} in this catalog")
        cols = {"uri"} | ({"width", "height", "file_size", "file_mtime_ns"} & self._columns)
        rows = self.cat.sql(
            f"SELECT {', '.join(sorted(cols))} FROM images WHERE id = $id", {"id": int(image_id)}
        ).to_pylist()
        if not rows or rows[0]["uri"] is None:
            raise NotFoundException(f"no image with id {image_id} in this catalog")
        return rows[0]

    def original(self, image_id: int) -> Original:
        """The file of ``image_id`` if it is still the image ingested; :class:`UnsafeImage` (403)
        if it is not, ``NotFoundException`` (404) for an unknown id or a file gone."""
        return self._original(image_id, self._lookup(image_id))

    def _original(self, image_id: int, row: dict) -> Original:
        size, mtime_ns = row.get("file_size"), row.get("file_mtime_ns")
        if size is None or mtime_ns is None:
            raise UnsafeImage(
                f"image {image_id} has no recorded file size and time (it was not ingested from a "
                "file), so its file is not served; ingest its folder to show it"
            )
        data, st = _read_regular_file(image_id, row["uri"], size, mtime_ns)
        version = (image_id, size, mtime_ns, st.st_dev, st.st_ino)
        etag = _etag(*version)
        with self._lock:
            fmt = self._checked.get(version)
            if fmt is not None:
                self._checked.move_to_end(version)
                return Original(data, fmt, etag)
        try:
            decoded = decode_image(data)
            with Image.open(io.BytesIO(data), formats=PIL_FORMATS) as im:
                fmt = im.format
        except UnreadableImage as e:
            raise UnsafeImage(
                f"the file of image {image_id} is not an image the server shows ({e.reason}); "
                "it is not served"
            ) from None
        with self._lock:
            self._checked[version] = fmt
            while len(self._checked) > CHECKS_KEPT:
                self._checked.popitem(last=False)
        return Original(data, fmt, etag, decoded)

    def viewable(self, image_id: int) -> tuple[bytes, str, str]:
        """``(bytes, media type, ETag)`` of the original as a browser shows it: the file itself in
        a browser format, else (TIFF) a PNG of its first frame."""
        original = self.original(image_id)
        media = BROWSER_TYPES.get(original.format)
        if media is not None:
            return original.data, media, original.etag
        buf = io.BytesIO()
        _decoded(image_id, original).image.save(buf, "PNG")
        return buf.getvalue(), "image/png", _etag(original.etag, "png")

    def get(self, image_id: int) -> tuple[bytes, str, str]:
        """``(bytes, media type, ETag)`` of the thumbnail of ``image_id``."""
        cached = thumbnail_path(self.cat.side_dir, image_id)
        if cached.is_file():  # the app's own file
            return self._file(cached, "image/jpeg")
        row = self._lookup(image_id)
        original = self._original(image_id, row)
        media = BROWSER_TYPES.get(original.format)
        if media is not None and _small(row):
            return original.data, media, original.etag
        image = _decoded(image_id, original).image
        try:
            write_thumbnail(image, cached)
            return self._file(cached, "image/jpeg")
        except OSError:  # a read-only side folder: serve it from memory
            buf = io.BytesIO()
            make_thumbnail(image).save(buf, "JPEG", quality=85)
            return buf.getvalue(), "image/jpeg", _etag(original.etag, "mem")

    @staticmethod
    def _file(path: Path, media: str) -> tuple[bytes, str, str]:
        st = os.stat(path)
        return path.read_bytes(), media, _etag(str(path), st.st_mtime_ns, st.st_size)


def _decoded(image_id: int, original: Original) -> DecodedImage:
    if original.decoded is not None:
        return original.decoded
    try:
        return decode_image(original.data)
    except UnreadableImage as e:  # it decoded when it was checked; PIL may differ on a second run
        raise UnsafeImage(f"the file of image {image_id} cannot be decoded ({e.reason})") from None


def _small(row: dict) -> bool:
    """Whether the catalog records the image as no larger than a thumbnail."""
    width, height = row.get("width"), row.get("height")
    return bool(width and height and max(width, height) <= THUMB_MAX_SIDE)


def _read_regular_file(image_id: int, uri: str, size: int, mtime_ns: int) -> tuple[bytes, os.stat_result]:
    """The bytes of ``uri`` and its stat, if it is a regular file (a symbolic link's target) of
    ``size`` bytes and modified at ``mtime_ns``, as ingestion recorded it. The checks and the
    read use one descriptor, so what is checked is what is sent."""
    try:
        fd = os.open(uri, _OPEN_FLAGS)
    except OSError as e:
        raise NotFoundException(
            f"the file of image {image_id} is gone or cannot be opened ({e.strerror or e})"
        ) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeImage(f"the file of image {image_id} is not a regular file; it is not served")
        if st.st_size != size or st.st_mtime_ns != mtime_ns:
            raise UnsafeImage(_CHANGED.format(image_id))
        chunks, left = [], size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        if left or os.read(fd, 1):
            raise UnsafeImage(_CHANGED.format(image_id))
        return b"".join(chunks), st
    finally:
        os.close(fd)


_CHANGED = (
    "the file of image {} has changed since it was ingested (its size or modification time differ); it is "
    "not served until its folder is ingested again"
)


def _etag(*parts: object) -> str:
    return '"' + hashlib.blake2b(repr(parts).encode(), digest_size=12).hexdigest() + '"'
