"""Fashion-MNIST as image files with a labels manifest: the demo catalog's source.

:func:`write_fashion_mnist` writes ``images/{train,test}/{class}/{index}.png`` and
``labels.csv`` (``uri,label,split``) so that ingesting the manifest gives ``images`` a
``label`` column with the class names. The idx files come from Debian's
``dataset-fashion-mnist`` package when it is installed, else from the dataset's public address.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import urllib.request
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import IngestError
from ..store.files import atomic_path, write_bytes

CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
SPLITS = {"train": "train", "test": "t10k"}  # split -> file prefix
DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # uint8 data with 3 or 1 dims
MANIFEST = "labels.csv"
STAMP = ".fashion-mnist.json"  # what the last complete write was made from


def class_folder(label: int) -> str:
    """A file-system-safe folder name for class ``label``: "T-shirt/top" -> "t-shirt_top"."""
    return CLASSES[label].lower().replace("/", "_").replace(" ", "_")


def idx_files(split: str) -> dict[str, str]:
    """The two file names of ``split``: {"images": ..., "labels": ...}."""
    prefix = SPLITS[split]
    return {"images": f"{prefix}-images-idx3-ubyte.gz", "labels": f"{prefix}-labels-idx1-ubyte.gz"}


def read_idx(path: str | os.PathLike, kind: str) -> np.ndarray:
    """A gzipped idx file: uint8 (n, rows, cols) for ``kind="images"``, uint8 (n,) for "labels".

    Raises :class:`IngestError` when the file is not an idx file of that kind or is truncated.
    """
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise IngestError(f"{path} is not a readable gzip file ({e}); delete it and run again") from None
    magic = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if magic != _MAGIC[kind]:
        found = "none" if magic is None else f"{magic:#010x}"
        raise IngestError(f"{path} is not an idx {kind} file (magic {found}, expected {_MAGIC[kind]:#010x})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IngestError(f"{path} is truncated inside its header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header)
    if data.size != int(np.prod(shape)):
        raise IngestError(
            f"{path} holds {data.size} bytes of data for shape {shape}; it is truncated or corrupt"
        )
    return data.reshape(shape)


def read_split(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 (n, 28, 28) and labels uint8 (n,) of ``split`` from the idx files in ``root``."""
    names = idx_files(split)
    images = read_idx(Path(root) / names["images"], "images")
    labels = read_idx(Path(root) / names["labels"], "labels")
    if images.ndim != 3 or len(images) != len(labels):
        raise IngestError(
            f"Fashion-MNIST {split} files in {root} disagree: {images.shape} images, {labels.shape} labels"
        )
    if labels.size and labels.max() >= len(CLASSES):
        raise IngestError(f"Fashion-MNIST {split} labels in {root} go up to {labels.max()}; expected 0..9")
    return images, labels


def locate(root: str | os.PathLike | None, cache: Path) -> Path:
    """The folder holding the four idx files: ``root`` if given, else Debian's, else ``cache``
    after downloading into it."""
    if root is not None:
        root = Path(root)
        missing = [n for s in SPLITS for n in idx_files(s).values() if not (root / n).is_file()]
        if missing:
            raise IngestError(f"{root} lacks the Fashion-MNIST file(s) {', '.join(missing)}")
        return root
    names = [n for s in SPLITS for n in idx_files(s).values()]
    if all((DEBIAN_ROOT / n).is_file() for n in names):
        return DEBIAN_ROOT
    cache.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (cache / name).is_file():
            _download(name, cache)
    return cache


def _download(name: str, cache: Path) -> None:
    errors = []
    for mirror in MIRRORS:
        try:
            with atomic_path(cache / name, durable=False) as tmp:
                with urllib.request.urlopen(mirror + name, timeout=60) as response, open(tmp, "wb") as out:
                    shutil.copyfileobj(response, out)
                read_idx(tmp, "images" if "images" in name else "labels")  # refuse an error page
            return
        except (OSError, IngestError) as e:
            errors.append(f"{mirror + name}: {e}")
    raise IngestError(
        "could not download Fashion-MNIST (" + "; ".join(errors) + "); install the Debian package "
        "'dataset-fashion-mnist', or put the four idx .gz files in a folder and pass it as root"
    )


def write_fashion_mnist(
    out_dir: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    limit: int | None = None,
    workers: int | None = None,
) -> Path:
    """Write Fashion-MNIST as PNG files under ``out_dir/images`` and return the manifest
    ``out_dir/labels.csv`` (``uri,label,split``, uris relative to ``out_dir``).

    ``root``: folder with the idx files (default: Debian's, else downloaded to ``out_dir/raw``).
    ``limit``: only the first ``limit`` images of each split. Files that already hold the same
    bytes are left alone, so a second call changes nothing (and re-ingesting finds no change).
    ``workers`` processes encode the PNGs (default: one per core).
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise IngestError(f"limit must be a non-negative integer, got {limit!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = locate(root, out / "raw")
    stamp = _stamp(src, limit)
    if _is_complete(out, stamp):
        return out / MANIFEST
    rows: list[tuple[str, str, str]] = []
    jobs = []
    for split in SPLITS:
        images, labels = read_split(src, split)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        rels = [f"images/{split}/{class_folder(int(y))}/{i:05d}.png" for i, y in enumerate(labels)]
        rows += [(rel, CLASSES[int(y)], split) for rel, y in zip(rels, labels, strict=True)]
        for folder in {os.path.dirname(r) for r in rels}:
            (out / folder).mkdir(parents=True, exist_ok=True)
        step = 2000
        jobs += [(str(out), rels[s : s + step], images[s : s + step]) for s in range(0, len(rels), step)]
    _run_jobs(jobs, workers)
    manifest = out / MANIFEST
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["uri", "label", "split"])
    writer.writerows(rows)
    _write_if_changed(manifest, buf.getvalue().encode("utf-8"))
    _write_if_changed(out / STAMP, json.dumps(stamp, sort_keys=True).encode("utf-8"))
    return manifest


def _stamp(src: Path, limit: int | None) -> dict:
    """The inputs of a write: idx files (by size and mtime) and the limit."""
    files = {}
    for split in SPLITS:
        for name in idx_files(split).values():
            st = (src / name).stat()
            files[name] = [st.st_size, st.st_mtime_ns]
    return {"files": files, "limit": limit, "format": 1}


def _is_complete(out: Path, stamp: dict) -> bool:
    """True when the last complete write used the same inputs and all its files still exist,
    so the (slow) re-encoding of 70,000 PNGs can be skipped."""
    try:
        if json.loads((out / STAMP).read_text(encoding="utf-8")) != stamp:
            return False
        with open(out / MANIFEST, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, ValueError):
        return False
    return rows[:1] == [["uri", "label", "split"]] and all(os.path.isfile(out / r[0]) for r in rows[1:])


def _run_jobs(jobs: list[tuple], workers: int | None) -> None:
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            _write_pngs(*job)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(_write_pngs, *zip(*jobs, strict=True)):
            pass


def _write_pngs(out_dir: str, rels: list[str], images: np.ndarray) -> int:
    """Encode ``images`` uint8 (n, 28, 28) as PNGs at ``out_dir/rels[i]``; returns how many
    files were (re)written."""
    written = 0
    for rel, pixels in zip(rels, images, strict=True):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "PNG")  # deterministic bytes for identical pixels
        written += _write_if_changed(Path(out_dir) / rel, buf.getvalue())
    return written


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` at ``path`` atomically unless the file already holds exactly it."""
    try:
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_bytes(path, data, durable=False)
    return True
