"""Fashion-MNIST to PNG files and a labels manifest: idx parsing, idempotence, download fallback."""

from __future__ import annotations

import csv
import gzip
import io
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.datasets import demodata
from engine.datasets.demodata import CLASSES, DEBIAN_ROOT, read_idx, write_fashion_mnist
from engine.errors import IngestError


def idx_bytes(magic: int, shape: tuple[int, ...], data: bytes) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape) + data


def write_idx(path: Path, magic: int, shape: tuple[int, ...], data: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(idx_bytes(magic, shape, data))


@pytest.fixture
def raw(tmp_path) -> Path:
    """Tiny idx files: 5 train and 3 test pictures, labels 9, 0, 1, ... in turn."""
    root = tmp_path / "raw"
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 5), ("t10k", 3)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.array([(9 + i) % 10 for i in range(n)], np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", 0x803, (n, 28, 28), images.tobytes())
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", 0x801, (n,), labels.tobytes())
    return root


def manifest_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_writes_pngs_and_manifest(tmp_path, raw):
    out = tmp_path / "fm"
    manifest = write_fashion_mnist(out, root=raw, workers=1)
    assert manifest == out / "labels.csv"
    rows = manifest_rows(manifest)
    assert len(rows) == 8 and set(rows[0]) == {"uri", "label", "split"}
    assert rows[0] == {"uri": "images/train/ankle_boot/00000.png", "label": "Ankle boot", "split": "train"}
    assert rows[1]["uri"] == "images/train/t-shirt_top/00001.png" and rows[1]["label"] == "T-shirt/top"
    assert [r["split"] for r in rows] == ["train"] * 5 + ["test"] * 3
    assert {r["label"] for r in rows} <= set(CLASSES)
    images = read_idx(raw / "train-images-idx3-ubyte.gz", "images")
    with Image.open(out / rows[2]["uri"]) as im:
        assert im.format == "PNG" and im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im), images[2])


def test_second_call_changes_nothing_and_repairs_deleted_files(tmp_path, raw):
    out = tmp_path / "fm"
    manifest = write_fashion_mnist(out, root=raw, workers=1)
    files = sorted((out / "images").rglob("*.png"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    write_fashion_mnist(out, root=raw, workers=1)
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    files[0].unlink()
    write_fashion_mnist(out, root=raw, workers=2)
    assert files[0].is_file()
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in files[1:])
    assert len(manifest_rows(manifest)) == 8


def test_limit_takes_the_first_images_of_each_split(tmp_path, raw):
    manifest = write_fashion_mnist(tmp_path / "fm", root=raw, limit=2, workers=1)
    rows = manifest_rows(manifest)
    assert [(r["split"], r["uri"][-9:]) for r in rows] == [
        ("train", "00000.png"),
        ("train", "00001.png"),
        ("test", "00000.png"),
        ("test", "00001.png"),
    ]
    with pytest.raises(IngestError, match="limit"):
        write_fashion_mnist(tmp_path / "fm", root=raw, limit=-1)


@pytest.mark.parametrize(
    "kind, magic, shape, data, match",
    [
        ("images", 0x801, (2,), b"\x00\x01", "not an idx images file"),
        ("images", 0x803, (2, 28, 28), b"\x00" * 100, "truncated or corrupt"),
        ("labels", 0x801, (3,), b"\x00", "truncated or corrupt"),
    ],
)
def test_bad_idx_files_are_refused(tmp_path, kind, magic, shape, data, match):
    path = tmp_path / "x.gz"
    write_idx(path, magic, shape, data)
    with pytest.raises(IngestError, match=match):
        read_idx(path, kind)


def test_not_gzip_and_incomplete_root(tmp_path, raw):
    (tmp_path / "plain.gz").write_bytes(b"not gzip")
    with pytest.raises(IngestError, match="gzip"):
        read_idx(tmp_path / "plain.gz", "labels")
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(IngestError, match="t10k-labels"):
        write_fashion_mnist(tmp_path / "fm", root=raw)
    write_idx(raw / "t10k-labels-idx1-ubyte.gz", 0x801, (3,), bytes([1, 2, 12]))
    with pytest.raises(IngestError, match="0..9"):
        write_fashion_mnist(tmp_path / "fm", root=raw)


def test_download_when_no_local_copy(tmp_path, raw, monkeypatch):
    monkeypatch.setattr(demodata, "DEBIAN_ROOT", tmp_path / "not-installed")
    fetched = []

    def fake_urlopen(url, timeout):
        fetched.append(url)
        if url.startswith(demodata.MIRRORS[0]):
            raise urllib.error.URLError("no network")
        return io.BytesIO((raw / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(demodata.urllib.request, "urlopen", fake_urlopen)
    manifest = write_fashion_mnist(tmp_path / "fm", workers=1)
    assert len(manifest_rows(manifest)) == 8
    assert sorted(p.name for p in (tmp_path / "fm" / "raw").iterdir()) == sorted(
        p.name for p in raw.iterdir()
    )
    assert len(fetched) == 8  # every file: first mirror failed, second answered


def test_download_failure_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(demodata, "DEBIAN_ROOT", tmp_path / "not-installed")

    def offline(url, timeout):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(demodata.urllib.request, "urlopen", offline)
    with pytest.raises(IngestError, match="dataset-fashion-mnist"):
        write_fashion_mnist(tmp_path / "fm")


@pytest.mark.skipif(
    not (DEBIAN_ROOT / "t10k-labels-idx1-ubyte.gz").is_file(), reason="Debian dataset not installed"
)
def test_real_dataset_first_images(tmp_path):
    manifest = write_fashion_mnist(tmp_path / "fm", limit=3, workers=1)
    rows = manifest_rows(manifest)
    assert len(rows) == 6
    assert rows[0]["label"] == "Ankle boot"  # the first training picture of Fashion-MNIST
    with Image.open(tmp_path / "fm" / rows[0]["uri"]) as im:
        assert im.size == (28, 28)
