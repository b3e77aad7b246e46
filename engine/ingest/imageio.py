"""Safe image decoding, thumbnails, and the decoding side of ingestion.

Every file ingestion reads goes through :func:`decode_image`: it refuses what it cannot decode
completely (corrupt, truncated, not an image, too many pixels) with :class:`UnreadableImage`
and a short reason, and otherwise returns an RGB image the way encoders expect it.
:class:`DecodeDataset` and :func:`decoded_batches` run decoding, thumbnails and the encoder's
preprocessing in worker processes, so the process that encodes never waits on PIL.
"""

from __future__ import annotations

import io
import os
import re
import struct
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UnreadableImage
from ..limits import DEFAULT_MAX_PIXELS, QUERY_MAX_PIXELS
from ..store.files import atomic_path

# Plugins PIL may use. Naming them keeps PIL from probing every format it knows (EPS would
# start Ghostscript, for one) on a file that only pretends to be an image.
PIL_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # JPEG covers MPO
FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"

# JPEGs are decoded at a reduced DCT scale when even the reduced picture keeps at least this
# many pixels on each side: a 12 MP photo decodes ~10x faster, and encoders (224-336 px) and
# thumbnails (256 px) never look at the detail that is skipped.
DRAFT_MIN_SIDE = 512
# A query image (a search by example) is a stranger's file: it may have at most
# QUERY_MAX_PIXELS pixels, and is reduced to at most QUERY_MAX_SIDE on its longer side before its colours are
# converted, so a crafted PNG costs a bounded decode and no full-size copies.
QUERY_MAX_SIDE = 1024

THUMB_MAX_SIDE = 256
THUMB_QUALITY = 85  # JPEG: 30x faster to write than WebP at a quarter more bytes
THUMB_SHARD = 1000  # thumbnails per folder

_ORIENTATION = 0x0112  # EXIF tag
_SWAPS_AXES = {5, 6, 7, 8}  # orientations that rotate by 90 degrees
_HIGH_DEPTH = {"I;16", "I;16L", "I;16B", "I;16N", "I", "F"}
_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}


@dataclass
class DecodedImage:
    """An RGB image plus the size of the full-resolution picture as displayed (after EXIF
    rotation); ``image`` may be smaller when the JPEG was decoded at a reduced scale."""

    image: Image.Image
    width: int
    height: int


def decode_image(
    path: str | os.PathLike | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_min_side: int | None = DRAFT_MIN_SIDE,
    background: tuple[int, int, int] = (255, 255, 255),
    max_side: int | None = None,
    too_large_hint: str = "raise max_pixels if the file is trusted",
) -> DecodedImage:
    """Read the first frame of an image file (a path, or the file's bytes) completely and
    return it as RGB.

    Transparent pixels are composited onto ``background``; palette, CMYK and 16-bit pictures
    are converted; EXIF orientation is applied. Raises :class:`UnreadableImage` for empty,
    corrupt, truncated or non-image files and for pictures above ``max_pixels`` (PIL's
    decompression-bomb warning counts as such too; its hard limit, twice
    ``PIL.Image.MAX_IMAGE_PIXELS``, applies whatever ``max_pixels`` says); the message ends in
    ``too_large_hint``. With ``max_side``, a picture more than twice that size is reduced by an
    integer factor right after decoding, before any colour conversion.
    """
    try:
        if isinstance(path, (bytes, bytearray, memoryview)):
            if len(path) == 0:
                raise UnreadableImage("empty file")
            return _decode(io.BytesIO(path), max_pixels, draft_min_side, background, max_side, too_large_hint)
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise UnreadableImage("empty file")
            return _decode(f, max_pixels, draft_min_side, background, max_side, too_large_hint)
    except UnreadableImage:
        raise
    except OSError as e:
        if "truncated" in str(e).lower():
            raise UnreadableImage(f"truncated file ({e})") from None
        raise UnreadableImage(f"cannot decode: {type(e).__name__}: {e}") from None
    # PIL's plugins report malformed data with many exception types (SyntaxError, ValueError,
    # struct.error, IndexError, ...); none of them may stop an ingestion run.
    except Exception as e:
        raise UnreadableImage(f"cannot decode: {type(e).__name__}: {e}") from None


def decode_query_image(data: str | os.PathLike | bytes, max_pixels: int = QUERY_MAX_PIXELS) -> Image.Image:
    """An image to search with, as RGB: at most ``max_pixels`` pixels, decoded at a reduced
    scale (at most about twice :data:`QUERY_MAX_SIDE` on the longer side), since an encoder
    looks at 224-336 pixels. Raises :class:`UnreadableImage`."""
    return decode_image(
        data,
        max_pixels=max_pixels,
        max_side=QUERY_MAX_SIDE,
        too_large_hint="scale the image down to search with it",
    ).image


def _decode(
    f, max_pixels: int, draft_min_side: int | None, background, max_side: int | None = None, hint: str = ""
) -> DecodedImage:
    with warnings.catch_warnings():
        # Above our limit the warning is an error; a caller who raised the limit past PIL's
        # own is trusted instead.
        bomb = "error" if max_pixels <= (Image.MAX_IMAGE_PIXELS or max_pixels) else "ignore"
        warnings.simplefilter(bomb, Image.DecompressionBombWarning)
        try:
            im = Image.open(f, formats=PIL_FORMATS)
        except UnidentifiedImageError:
            raise UnreadableImage(f"not a {FORMAT_NAMES} image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            found = re.search(r"\((\d+) pixels\)", str(e))
            size = f"{int(found[1]):,} pixels; " if found else ""
            raise UnreadableImage(f"too many pixels ({size}the limit is {max_pixels:,}); {hint}") from None
        w, h = im.size
        if w * h > max_pixels:
            raise UnreadableImage(_too_large(w, h, max_pixels, hint))
        if w <= 0 or h <= 0:
            raise UnreadableImage(f"image has no pixels ({w}x{h})")
        if draft_min_side and im.format in ("JPEG", "MPO") and min(w, h) >= 2 * draft_min_side:
            im.draft(im.mode, (draft_min_side, draft_min_side))
        # Decode everything now, before anything else touches the image: truncation and corrupt
        # data surface here (PNG's getexif() would otherwise load it and hide the error).
        im.load()
        if im.format == "PNG" and _rows_may_be_missing(im):
            _check_png_rows(f)
    orientation = _orientation(im)
    if max_side and max(im.size) >= 2 * max_side:
        im = _reduced(im, max(im.size) // max_side)
    if orientation in _SWAPS_AXES:
        w, h = h, w
    if orientation not in (None, 1):
        im = ImageOps.exif_transpose(im)
    return DecodedImage(to_rgb(im, background), w, h)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_INFLATE_STEP = 1 << 20


def _rows_may_be_missing(im: Image.Image) -> bool:
    """Whether a decoded PNG could have lost rows: PIL leaves rows it never received as zero
    bytes, and a stream that stops early always loses the last row (or, interlaced, the last
    odd row, which the final pass holds)."""
    w, h = im.size
    if h <= 2:
        return True
    tail = im.crop((0, h - 2, w, h)).tobytes()
    row = len(tail) // 2
    return tail.count(0, 0, row) == row or tail.count(0, row) == len(tail) - row


def _check_png_rows(f) -> None:
    """Refuse a PNG whose image data ends before its last row.

    PIL stops without an error when the zlib stream is complete but short, and the rows that
    are not there come back black; a 1 KB file would pass as a picture of any size. This
    inflates the IDAT stream again, in steps of 1 MB that are counted and dropped, and compares
    the count with the size the header promises.
    """
    f.seek(0)
    if f.read(8) != _PNG_SIGNATURE:
        return
    need, have = None, 0
    inflate = zlib.decompressobj()
    while True:
        head = f.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        data = f.read(length)
        f.seek(4, os.SEEK_CUR)  # CRC: PIL has checked it
        if kind == b"IHDR" and len(data) >= 13:
            w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", data[:13])
            need = _png_raw_size(w, h, depth * _PNG_CHANNELS.get(colour, 4), interlace)
        elif kind == b"IDAT" and need is not None:
            while data and not inflate.eof and have < need:
                have += len(inflate.decompress(data, _INFLATE_STEP))
                data = inflate.unconsumed_tail
        elif kind in (b"IEND", b"fdAT"):
            break
        if inflate.eof or (need is not None and have >= need):
            break
    if need is not None and have < need:
        raise UnreadableImage(f"truncated image data ({have:,} of {need:,} bytes)")


def _png_raw_size(w: int, h: int, bits_per_pixel: int, interlace: int) -> int:
    """Bytes of filtered scanlines a PNG of this shape inflates to."""

    def rows(pw: int, ph: int) -> int:
        return ph * (1 + (pw * bits_per_pixel + 7) // 8) if pw and ph else 0

    if interlace != 1:
        return rows(w, h)
    return sum(rows(max(0, -(-(w - x0) // dx)), max(0, -(-(h - y0) // dy))) for x0, y0, dx, dy in _ADAM7)


def _too_large(w: int, h: int, limit: int, hint: str) -> str:
    return f"too many pixels ({w}x{h} = {w * h:,}; the limit is {limit:,}); {hint}"


def _reduced(im: Image.Image, factor: int) -> Image.Image:
    """``im`` shrunk by ``factor`` (box average; colours weighted by alpha)."""
    if im.mode in ("RGBA", "LA"):
        premultiplied = {"RGBA": "RGBa", "LA": "La"}[im.mode]
        return im.convert(premultiplied).reduce(factor).convert(im.mode)
    if im.mode not in ("L", "RGB", "I", "F"):
        im = to_rgb(im)
    return im.reduce(factor)


def _orientation(im: Image.Image) -> int | None:
    try:
        return int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is no reason to lose the picture
        return None


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL image as mode "RGB": alpha composited onto ``background``, 16/32-bit grey
    scaled to 8 bits (not clipped), palette and CMYK converted."""
    if im.mode == "RGB":
        return im
    if im.mode in _HIGH_DEPTH:
        return Image.fromarray(_grey_to_uint8(im)).convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode in ("L", "1") and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError:
        raise UnreadableImage(f"unsupported colour mode {im.mode}") from None


def _grey_to_uint8(im: Image.Image) -> np.ndarray:
    """Grey levels of a 16-bit, 32-bit or float image to uint8 (h, w), scaled rather than
    clipped: 16-bit modes by 255/65535, "I" likewise when its values fit in 16 bits, anything
    else by its own min..max. Works in strips of about 64k pixels, so the temporaries stay
    small whatever the picture's size."""
    w, h = im.size
    out = np.empty((h, w), np.uint8)
    step = max(1, (1 << 16) // max(1, w))
    strips = [(y, min(h, y + step)) for y in range(0, h, step)]

    def strip(y0: int, y1: int) -> np.ndarray:
        return np.asarray(im.crop((0, y0, w, y1)))

    sixteen_bit = im.mode != "F"
    if im.mode == "I":
        lo, hi = im.getextrema()
        sixteen_bit = lo >= 0 and hi <= 65535
    if sixteen_bit:
        for y0, y1 in strips:  # exact rounding of v * 255 / 65535 (= v / 257, never a tie)
            v = strip(y0, y1).astype(np.uint32)
            v *= 255
            v += 32767
            v //= 65535
            out[y0:y1] = v
        return out
    lo, hi = np.inf, -np.inf
    for y0, y1 in strips:
        v = np.nan_to_num(strip(y0, y1).astype(np.float64))
        lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    for y0, y1 in strips:
        v = np.nan_to_num(strip(y0, y1).astype(np.float64))
        out[y0:y1] = np.clip((v - lo) * scale, 0, 255).round()
    return out


# -- thumbnails ------------------------------------------------------------------------------
def thumbnail_path(side_dir: str | os.PathLike, image_id: int) -> Path:
    """Where the thumbnail of image ``image_id`` lives: ``<side_dir>/thumbs/<shard>/<id>.jpg``,
    with ``THUMB_SHARD`` ids per shard folder so no folder grows past a few thousand files.
    Images no larger than a thumbnail have none (:func:`needs_thumbnail`)."""
    return Path(side_dir) / "thumbs" / f"{image_id // THUMB_SHARD:06d}" / f"{image_id}.jpg"


def needs_thumbnail(image: Image.Image, max_side: int = THUMB_MAX_SIDE) -> bool:
    """Whether ``image`` is larger than a thumbnail. Smaller images get no thumbnail file: the
    UI serves them from the original (70,000 Fashion-MNIST images at 28 px would otherwise
    spend 276 MB on 4 KB JPEG files bigger than their 300-byte PNG originals)."""
    return max(image.size) > max_side


def make_thumbnail(image: Image.Image, max_side: int = THUMB_MAX_SIDE) -> Image.Image:
    """A copy of ``image`` shrunk by the smallest integer factor that fits it in ``max_side``
    (so its longer side ends between max_side/2 and max_side; small images stay as they are).

    An integer box reduction costs a fifth of a resampling resize here, and decoding-side time
    is what bounds ingestion with a fast encoder.
    """
    factor = -(-max(image.size) // max_side)  # ceil division
    return image.reduce(factor) if factor > 1 else image.copy()


def write_thumbnail(image: Image.Image, path: str | os.PathLike, max_side: int = THUMB_MAX_SIDE) -> None:
    """Write the JPEG thumbnail of an RGB ``image`` at ``path`` atomically (a reader sees the
    old file or the new one, never a partial one)."""
    with atomic_path(path, durable=False) as tmp:
        make_thumbnail(image, max_side).save(tmp, "JPEG", quality=THUMB_QUALITY)


# -- decoding in worker processes ----------------------------------------------------------
@dataclass
class Decoded:
    """One file after decoding: ``pixels`` is the encoder's preprocessed input, or None with a
    ``reason`` when the file was refused. Times in seconds."""

    index: int
    pixels: Any
    reason: str | None
    width: int
    height: int
    t_decode: float
    t_preprocess: float
    t_thumb: float


class DecodeDataset:
    """Map-style dataset (``torch.utils.data.DataLoader`` takes it as is): item i decodes file
    ``paths[i]``, writes the thumbnail of image ``ids[i]`` under ``side_dir`` (if given) and
    runs ``preprocess``. Unreadable files come back as refusals, never as exceptions."""

    def __init__(
        self,
        paths: Sequence[str],
        ids: np.ndarray,
        preprocess: Callable,
        side_dir: Path | None,
        max_pixels: int,
    ):
        self.paths = list(paths)
        self.ids = np.asarray(ids, np.int64)
        self.preprocess = preprocess
        self.side_dir = side_dir
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Decoded:
        t0 = time.perf_counter()
        try:
            decoded = decode_image(self.paths[i], max_pixels=self.max_pixels)
        except UnreadableImage as e:
            return Decoded(i, None, e.reason, 0, 0, time.perf_counter() - t0, 0.0, 0.0)
        t1 = time.perf_counter()
        if self.side_dir is not None:
            path = thumbnail_path(self.side_dir, int(self.ids[i]))
            if needs_thumbnail(decoded.image):
                write_thumbnail(decoded.image, path)
            else:  # small enough to serve itself; drop the thumbnail of a file that shrank
                path.unlink(missing_ok=True)
        t2 = time.perf_counter()
        pixels = self.preprocess(decoded.image)
        t3 = time.perf_counter()
        return Decoded(i, pixels, None, decoded.width, decoded.height, t1 - t0, t3 - t2, t2 - t1)


@dataclass
class DecodedBatch:
    """Consecutive dataset items. ``index`` int64 (n,) dataset positions; ``ok`` bool (n,);
    ``pixels`` the stacked inputs of the ok items (torch tensor or ndarray, (n_ok, ...))."""

    index: np.ndarray
    ok: np.ndarray
    reasons: list[str | None]
    width: np.ndarray
    height: np.ndarray
    pixels: Any
    t_decode: float
    t_preprocess: float
    t_thumb: float


def collate(items: list[Decoded]) -> DecodedBatch:
    """Stack decoded items into one batch (runs in the worker, so stacking is off the main
    process; torch moves the stacked tensor through shared memory)."""
    good = [it.pixels for it in items if it.reason is None]
    pixels = None
    if good:
        if type(good[0]).__module__.startswith("torch"):
            import torch

            pixels = torch.stack(good)
        else:
            pixels = np.stack([np.asarray(p) for p in good])
    return DecodedBatch(
        index=np.array([it.index for it in items], np.int64),
        ok=np.array([it.reason is None for it in items], bool),
        reasons=[it.reason for it in items],
        width=np.array([it.width for it in items], np.int32),
        height=np.array([it.height for it in items], np.int32),
        pixels=pixels,
        t_decode=sum(it.t_decode for it in items),
        t_preprocess=sum(it.t_preprocess for it in items),
        t_thumb=sum(it.t_thumb for it in items),
    )


def decoded_batches(dataset: DecodeDataset, batch_size: int, workers: int) -> Iterator[DecodedBatch]:
    """The dataset in order, ``batch_size`` items at a time, decoded by ``workers`` processes
    (a torch DataLoader) or in this process when ``workers`` is 0."""
    if workers == 0:
        for start in range(0, len(dataset), batch_size):
            yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate
    )
    it = iter(loader)
    try:
        yield from it
    finally:
        # Stop the workers now rather than whenever the iterator is collected.
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
