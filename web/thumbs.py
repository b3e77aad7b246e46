"""Thumbnails and originals for the UI: the ingested thumbnail when there is one, else the
original (small images, browser formats) or a thumbnail made now and cached beside the catalog."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

from litestar.exceptions import NotFoundException

import engine
from engine.imageio import (
    THUMB_MAX_SIDE,
    UnreadableImage,
    decode_image,
    make_thumbnail,
    thumbnail_path,
    write_thumbnail,
)

# Formats every browser shows, by file suffix.
BROWSER_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                 ".webp": "image/webp"}


class Thumbnails:
    def __init__(self, cat: engine.Catalog):
        self.cat = cat
        self._columns = set(cat.image_columns())  # a served catalog is read-only: fixed

    def _lookup(self, image_id: int) -> tuple[Path, int | None, int | None]:
        if not 0 <= image_id < 2**63:
            raise NotFoundException(f"no image with id {image_id} in this catalog")
        cols = {"uri"} | ({"width", "height"} & self._columns)
        rows = self.cat.sql(f"SELECT {', '.join(sorted(cols))} FROM images WHERE id = $id",
                            {"id": int(image_id)}).to_pylist()
        if not rows or rows[0]["uri"] is None:
            raise NotFoundException(f"no image with id {image_id} in this catalog")
        path = Path(rows[0]["uri"])
        if not path.is_file():
            raise NotFoundException(f"the file of image {image_id} is gone: {path}")
        return path, rows[0].get("width"), rows[0].get("height")

    def original_path(self, image_id: int) -> Path:
        """The image file of ``image_id``; 404 for ids the catalog does not hold or files gone."""
        return self._lookup(image_id)[0]

    def get(self, image_id: int) -> tuple[bytes, str, str]:
        """``(bytes, media type, ETag)`` of the thumbnail of ``image_id``."""
        cached = thumbnail_path(self.cat.side_dir, image_id)
        if cached.is_file():
            return self._file(cached, "image/jpeg")
        path, width, height = self._lookup(image_id)
        media = BROWSER_TYPES.get(path.suffix.lower())
        if media is not None and width and height and max(width, height) <= THUMB_MAX_SIDE:
            return self._file(path, media)
        try:
            image = decode_image(path).image
        except UnreadableImage as e:
            raise NotFoundException(f"image {image_id} cannot be shown: {e.reason}") from None
        try:
            write_thumbnail(image, cached)
            return self._file(cached, "image/jpeg")
        except OSError:  # a read-only side folder: serve it from memory
            buf = io.BytesIO()
            make_thumbnail(image).save(buf, "JPEG", quality=85)
            st = path.stat()
            return buf.getvalue(), "image/jpeg", _etag(image_id, st.st_mtime_ns, st.st_size, "mem")

    @staticmethod
    def _file(path: Path, media: str) -> tuple[bytes, str, str]:
        st = os.stat(path)
        return path.read_bytes(), media, _etag(str(path), st.st_mtime_ns, st.st_size)


def _etag(*parts: object) -> str:
    return '"' + hashlib.blake2b(repr(parts).encode(), digest_size=12).hexdigest() + '"'
