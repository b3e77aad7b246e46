"""Ingestion end to end on real files: folders, manifests, bad inputs, incremental runs, resume."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import quote

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import engine
from engine.cli import main as cli_main
from engine.errors import IngestError, ReadOnlyError, UnknownIds
from engine.ingest import ingest
from engine.ingest.embeddings import embeddings_dir, load_embeddings
from engine.ingest.imageio import thumbnail_path
from engine.ingest.sources import NOT_UTF8_FILE, NOT_UTF8_FOLDER

DIM = 8


def features(pixels: np.ndarray) -> np.ndarray:
    """float32 (n, 16, 16, 3) pixels in 0..1 to L2-normalised float32 (n, 8): mean and spread
    of each channel, brightness of the top and left halves."""
    x = np.asarray(pixels, dtype=np.float32)
    grey = x.mean(axis=3)
    f = (
        np.concatenate(
            [
                x.mean(axis=(1, 2)),
                x.std(axis=(1, 2)),
                grey[:, :8].mean(axis=(1, 2))[:, None],
                grey[:, :, :8].mean(axis=(1, 2))[:, None],
            ],
            axis=1,
        )
        + 1e-3
    )
    return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)


class FakeEncoder:
    """Deterministic, torch-free encoder: ``preprocess`` gives float32 (16, 16, 3) pixels.
    ``fail_on_batch`` makes the n-th call of ``encode_images`` (1-based) raise."""

    dim = DIM
    batch_size = 4
    device = "cpu"

    def __init__(self, id: str = "fake:mean", fail_on_batch: int | None = None):
        self.id = id
        self.fail_on_batch = fail_on_batch
        self.calls = 0

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.resize((16, 16)), dtype=np.float32) / 255.0

    def encode_images(self, batch) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on_batch:
            raise RuntimeError("encoder crashed")
        return features(batch)

    def encode_texts(self, texts):
        raise NotImplementedError


def save(path: Path, seed: int, size: tuple[int, int] = (40, 30)) -> Path:
    """A noise image at ``path`` in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    fmt = {
        ".jpg": "JPEG",
        ".jpeg": "JPEG",
        ".png": "PNG",
        ".webp": "WEBP",
        ".gif": "GIF",
        ".bmp": "BMP",
        ".tif": "TIFF",
        ".tiff": "TIFF",
    }[path.suffix.lower()]
    (im.convert("P") if fmt == "GIF" else im).save(path, fmt)
    return path


def touch_later(path: Path, seconds: int = 10) -> None:
    """Move the mtime forward so a rewrite is seen as a change even on coarse clocks."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def expected(path: Path) -> np.ndarray:
    enc = FakeEncoder()
    with Image.open(path) as im:
        return features(enc.preprocess(im.convert("RGB"))[None])[0]


def uris(cat) -> list[str]:
    return [r[0] for r in cat.store.con.execute("SELECT uri FROM images ORDER BY id").fetchall()]


def check_consistent(cat) -> None:
    """No duplicate uris; every image has exactly one embedding, in a recorded part on disk."""
    dupes = cat.store.con.execute("SELECT uri FROM images GROUP BY uri HAVING count(*) > 1").fetchall()
    assert dupes == []
    ids, emb = load_embeddings(cat)
    n_images = cat.store.con.execute("SELECT count(*) FROM images").fetchall()[0][0]
    assert len(ids) == n_images == len(np.unique(ids))
    recorded = {r[0] for r in cat.store.con.execute("SELECT file FROM embedding_parts").fetchall()}
    on_disk = {p.name for p in embeddings_dir(cat).iterdir()} if embeddings_dir(cat).exists() else set()
    assert recorded == on_disk


@pytest.fixture
def tree(tmp_path) -> Path:
    """A folder with one image per format, nested folders, hidden and system files, bad files."""
    root = tmp_path / "photos"
    for i, name in enumerate(
        [
            "a.jpg",
            "b.jpeg",
            "c.png",
            "d.webp",
            "e.gif",
            "f.bmp",
            "g.tif",
            "h.tiff",
            "UPPER.JPG",
            "sub/deeper/i.png",
            "sub/j.jpg",
        ]
    ):
        save(root / name, i)
    for i, name in enumerate(
        [
            ".hidden.jpg",
            ".cache/k.jpg",
            "__MACOSX/l.jpg",
            "@eaDir/m.jpg",
            "$RECYCLE.BIN/n.jpg",
            "System Volume Information/o.jpg",
            "lost+found/p.jpg",
            ".Trashes/q.jpg",
            "sub/._r.jpg",
        ]
    ):
        save(root / name, 100 + i)
    (root / "Thumbs.db").write_bytes(b"\x00" * 64)
    (root / ".DS_Store").write_bytes(b"\x00" * 64)
    (root / "notes.txt").write_text("not an image")
    (root / "bad").mkdir()
    (root / "bad" / "empty.jpg").write_bytes(b"")
    (root / "bad" / "text.jpg").write_text("hello, I am text\n" * 20)
    (root / "bad" / "garbage.png").write_bytes(bytes(range(256)) * 4)
    good = (root / "a.jpg").read_bytes()
    (root / "bad" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    return root


GOOD = 11
BAD = 4


def run(cat, sources, encoder=None, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return ingest(cat, [str(s) for s in sources], encoder or FakeEncoder(), **kw)


# -- folders ---------------------------------------------------------------------------------
def test_folder_ingest_adds_images_and_skips_bad_files(make_catalog, tree):
    cat = make_catalog()
    report = run(cat, [tree])
    assert (report.added, report.updated, report.removed, report.unchanged) == (GOOD, 0, 0, 0)
    assert report.skipped == BAD
    reasons = dict(report.skipped_files)
    assert reasons[str(tree / "bad" / "empty.jpg")] == "empty file"
    assert "not a JPEG" in reasons[str(tree / "bad" / "text.jpg")]
    assert "not a JPEG" in reasons[str(tree / "bad" / "garbage.png")]
    assert "truncated" in reasons[str(tree / "bad" / "truncated.jpg")]
    stored = set(uris(cat))
    assert str(tree / "UPPER.JPG") in stored and str(tree / "sub" / "deeper" / "i.png") in stored
    assert not any(
        ("/." in u)
        or ("MACOSX" in u)
        or ("@eaDir" in u)
        or ("RECYCLE" in u)
        or ("Volume" in u)
        or ("lost+found" in u)
        for u in stored
    )
    assert all(os.path.isabs(u) for u in stored)
    skipped = cat.store.con.execute(
        "SELECT uri, file_size, file_mtime_ns FROM skipped ORDER BY uri"
    ).fetchall()
    assert [r[0] for r in skipped] == sorted(reasons)
    assert all(r[1] is not None and r[2] is not None for r in skipped)
    row = cat.store.con.execute(
        "SELECT width, height, file_size, file_mtime_ns, source FROM images WHERE uri = ?",
        [str(tree / "a.jpg")],
    ).fetchall()[0]
    st = (tree / "a.jpg").stat()
    assert row == (40, 30, st.st_size, st.st_mtime_ns, str(tree))
    assert cat.setting("encoder") == "fake:mean"
    check_consistent(cat)


def test_embeddings_round_trip_as_float16(make_catalog, tree):
    cat = make_catalog()
    run(cat, [tree])
    ids, emb = load_embeddings(cat)
    assert ids.dtype == np.int64 and emb.dtype == np.float32 and emb.shape == (GOOD, DIM)
    by_uri = dict(cat.store.con.execute("SELECT uri, id FROM images").fetchall())
    for name in ("a.jpg", "c.png", "e.gif", "sub/j.jpg"):
        i = by_uri[str(tree / name)]
        np.testing.assert_allclose(emb[list(ids).index(i)], expected(tree / name), atol=2e-3)
    part = sorted(embeddings_dir(cat).iterdir())[0]
    schema = pq.read_schema(part)
    assert schema.field("embedding").type == pa.list_(pa.float16(), DIM)
    # DuckDB reads the parts too (as FLOAT[])
    n = duckdb.sql(
        f"SELECT count(*), max(len(embedding)) FROM read_parquet('{embeddings_dir(cat)}/*.parquet')"
    ).fetchall()
    assert n == [(GOOD, DIM)]
    sub_ids, sub = load_embeddings(cat, [ids[3], ids[0]])
    assert sub_ids.tolist() == [ids[3], ids[0]]
    np.testing.assert_array_equal(sub, emb[[3, 0]])
    with pytest.raises(UnknownIds):
        load_embeddings(cat, [10**9])


def test_thumbnails_exist_for_images_larger_than_a_thumbnail(make_catalog, tree):
    save(tree / "big.png", 60, size=(600, 300))
    save(tree / "tall.jpg", 61, size=(200, 257))
    cat = make_catalog()
    run(cat, [tree])
    ids = dict(cat.store.con.execute("SELECT uri, id FROM images").fetchall())
    assert len(ids) == GOOD + 2
    for uri, i in ids.items():
        path = thumbnail_path(cat.side_dir, i)
        if uri.endswith(("big.png", "tall.jpg")):
            with Image.open(path) as im:
                assert max(im.size) <= 256 and im.format == "JPEG"
        else:  # 40 x 30: served as it is
            assert not path.exists()
    # a file that shrinks loses its thumbnail
    save(tree / "big.png", 62, size=(100, 50))
    touch_later(tree / "big.png")
    run(cat, [tree])
    assert not thumbnail_path(cat.side_dir, ids[str(tree / "big.png")]).exists()
    assert thumbnail_path(cat.side_dir, ids[str(tree / "tall.jpg")]).exists()
    no_thumbs = make_catalog()
    run(no_thumbs, [tree], thumbnails=False)
    assert not (no_thumbs.side_dir / "thumbs").exists()


def test_rerun_changes_nothing_and_does_not_retry_bad_files(make_catalog, tree):
    cat = make_catalog()
    run(cat, [tree])
    parts = sorted(p.name for p in embeddings_dir(cat).iterdir())
    enc = FakeEncoder()
    report = run(cat, [tree], enc)
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 0, 0, GOOD)
    assert report.known_bad == BAD and report.skipped == BAD
    assert enc.calls == 0
    assert sorted(p.name for p in embeddings_dir(cat).iterdir()) == parts
    assert cat.store.con.execute("SELECT count(*) FROM skipped").fetchall()[0][0] == BAD


def test_fixed_bad_file_is_retried(make_catalog, tree):
    cat = make_catalog()
    run(cat, [tree])
    save(tree / "bad" / "text.jpg", 7)
    touch_later(tree / "bad" / "text.jpg")
    report = run(cat, [tree])
    assert report.added == 1 and report.skipped == BAD - 1
    assert str(tree / "bad" / "text.jpg") in uris(cat)
    assert (
        cat.store.con.execute("SELECT count(*) FROM skipped WHERE uri LIKE '%text.jpg'").fetchall()[0][0] == 0
    )


def test_incremental_add_change_delete(make_catalog, tree):
    cat = make_catalog()
    run(cat, [tree])
    ids_before = dict(cat.store.con.execute("SELECT uri, id FROM images").fetchall())
    max_id = max(ids_before.values())
    save(tree / "new.png", 50)
    save(tree / "c.png", 51)  # same size, different pixels
    touch_later(tree / "c.png")
    (tree / "sub" / "j.jpg").unlink()
    report = run(cat, [tree])
    assert (report.added, report.updated, report.removed, report.unchanged) == (1, 1, 1, GOOD - 2)
    ids_after = dict(cat.store.con.execute("SELECT uri, id FROM images").fetchall())
    assert ids_after[str(tree / "new.png")] > max_id
    assert ids_after[str(tree / "c.png")] == ids_before[str(tree / "c.png")]
    assert str(tree / "sub" / "j.jpg") not in ids_after
    assert not thumbnail_path(cat.side_dir, ids_before[str(tree / "sub" / "j.jpg")]).exists()
    ids, emb = load_embeddings(cat, [ids_after[str(tree / "c.png")]])
    np.testing.assert_allclose(emb[0], expected(tree / "c.png"), atol=2e-3)
    check_consistent(cat)


def test_superseded_parts_are_deleted(make_catalog, tmp_path):
    root = tmp_path / "two"
    save(root / "a.png", 1)
    save(root / "b.png", 2)
    cat = make_catalog()
    run(cat, [root])
    first = sorted(p.name for p in embeddings_dir(cat).iterdir())
    for name, seed in (("a.png", 3), ("b.png", 4)):
        save(root / name, seed)
        touch_later(root / name)
    assert run(cat, [root]).updated == 2
    now = sorted(p.name for p in embeddings_dir(cat).iterdir())
    assert len(now) == 1 and now != first
    check_consistent(cat)


def test_changed_file_that_no_longer_decodes_loses_its_image(make_catalog, tree):
    cat = make_catalog()
    run(cat, [tree])
    (tree / "b.jpeg").write_bytes(b"broken now")
    report = run(cat, [tree])
    assert report.removed == 1 and str(tree / "b.jpeg") in dict(report.skipped_files)
    assert str(tree / "b.jpeg") not in uris(cat)
    check_consistent(cat)


def test_removal_only_touches_the_sources_being_ingested(make_catalog, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for i in range(3):
        save(a / f"{i}.png", i)
        save(b / f"{i}.png", 10 + i)
    cat = make_catalog()
    run(cat, [a, b])
    (b / "0.png").unlink()
    assert run(cat, [a]).removed == 0
    assert str(b / "0.png") in uris(cat)
    assert run(cat, [b]).removed == 1
    # a folder holding an earlier source counts too: files gone from disk under it are removed
    (a / "1.png").unlink()
    assert run(cat, [tmp_path]).removed == 1
    check_consistent(cat)


def test_missing_source_and_bad_arguments(make_catalog, tmp_path):
    cat = make_catalog()
    with pytest.raises(IngestError, match="does not exist"):
        run(cat, [tmp_path / "nowhere"])
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(IngestError, match="neither a folder nor a manifest"):
        run(cat, [tmp_path / "x.txt"])
    with pytest.raises(IngestError, match="batch_size"):
        run(cat, [tmp_path], batch_size=0)
    with pytest.raises(IngestError, match="workers"):
        run(cat, [tmp_path], workers=-1)
    cat.close()
    with engine.Catalog.open(cat.path, read_only=True) as ro, pytest.raises(ReadOnlyError):
        run(ro, [tmp_path])


def test_decompression_bomb_is_skipped_and_recorded(make_catalog, tmp_path):
    root = tmp_path / "big"
    save(root / "small.png", 1, size=(20, 20))
    save(root / "huge.png", 2, size=(200, 100))
    cat = make_catalog()
    report = run(cat, [root], max_pixels=10_000)
    assert report.added == 1
    assert "too many pixels" in dict(report.skipped_files)[str(root / "huge.png")]


# -- encoder -----------------------------------------------------------------------------------
def test_other_encoder_is_refused_unless_reembedding(make_catalog, tree):
    cat = make_catalog()
    run(cat, [tree])
    with pytest.raises(IngestError, match="fake:mean"):
        run(cat, [tree], FakeEncoder("fake:other"))
    report = run(cat, [tree], FakeEncoder("fake:other"), reembed=True)
    assert report.updated == GOOD and report.added == 0
    assert cat.setting("encoder") == "fake:other"
    assert {r[0] for r in cat.store.con.execute("SELECT encoder FROM embedding_parts").fetchall()} == {
        "fake:other"
    }
    check_consistent(cat)


def test_interrupted_reembedding_resumes_without_the_flag(make_catalog, tree):
    cat = make_catalog()
    run(cat, [tree])
    with pytest.raises(RuntimeError):
        run(cat, [tree], FakeEncoder("fake:other", fail_on_batch=2), reembed=True)
    with pytest.raises(IngestError, match="several encoders"):
        load_embeddings(cat)  # half old, half new: refused rather than mixed
    report = run(cat, [tree], FakeEncoder("fake:other"))
    assert report.updated == GOOD - 4 and report.unchanged == 4
    check_consistent(cat)


def test_images_without_embeddings_are_reported(make_catalog, tree, codegen, rng):
    cat = make_catalog(codes=codegen.uniform(rng, 2))
    run(cat, [tree])
    with pytest.raises(IngestError, match="no raw embedding"):
        load_embeddings(cat, [0])
    assert len(load_embeddings(cat)[0]) == GOOD  # the codes-only rows are left out


# -- interruption ------------------------------------------------------------------------------
def test_changed_file_found_bad_before_an_interruption_is_removed_next_time(make_catalog, tree):
    cat = make_catalog()
    run(cat, [tree])
    path = tree / "f.bmp"
    path.write_bytes(b"now broken")
    st = path.stat()
    # what a run that decoded it and was killed before its final clean-up leaves behind
    cat.store.con.execute(
        "INSERT INTO skipped (uri, reason, file_size, file_mtime_ns) VALUES (?, 'empty', ?, ?)",
        [str(path), st.st_size, st.st_mtime_ns],
    )
    report = run(cat, [tree])
    assert report.removed == 1 and report.known_bad == BAD + 1
    assert str(path) not in uris(cat)
    check_consistent(cat)


def test_resume_after_a_crash_on_batch_three(make_catalog, tmp_path):
    root = tmp_path / "many"
    for i in range(22):
        save(root / f"{i:02d}.png", i)
    cat = make_catalog()
    with pytest.raises(RuntimeError, match="encoder crashed"):
        run(cat, [root], FakeEncoder(fail_on_batch=3))
    assert len(uris(cat)) == 8  # two whole batches of 4, nothing of the third
    check_consistent(cat)
    report = run(cat, [root])
    assert (report.added, report.unchanged) == (14, 8)
    assert sorted(uris(cat)) == sorted(str(p) for p in root.iterdir())
    check_consistent(cat)


def test_debris_of_an_interrupted_run_is_deleted(make_catalog, tree):
    cat = make_catalog()
    run(cat, [tree])
    d = embeddings_dir(cat)
    (d / "part-99999999.parquet").write_bytes(b"written but never committed")
    (d / ".part-99999998.parquet.tmp").write_bytes(b"half written")
    run(cat, [tree])
    check_consistent(cat)


KILL_SCRIPT = """
import sys, time
import numpy as np
sys.path.insert(0, {tests!r})
import engine
from engine.ingest import ingest
from test_ingest import FakeEncoder

class Slow(FakeEncoder):
    def encode_images(self, batch):
        time.sleep(0.1)
        return super().encode_images(batch)

with engine.Catalog.open({catalog!r}) as cat:
    ingest(cat, [{root!r}], Slow(), batch_size=2, workers=0, progress=False)
"""


@pytest.mark.e2e
@pytest.mark.slow
def test_resume_after_kill(make_catalog, tmp_path):
    root = tmp_path / "killed"
    for i in range(30):
        save(root / f"{i:02d}.png", i)
    cat = make_catalog()
    path, parts = cat.path, embeddings_dir(cat)
    cat.close()
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), catalog=str(path), root=str(root))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if parts.exists() and len(list(parts.iterdir())) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    with engine.Catalog.open(path) as cat:
        n = len(uris(cat))
        assert 0 < n < 30 and n % 2 == 0
        run(cat, [root])
        assert len(uris(cat)) == 30
        check_consistent(cat)


# -- manifests ---------------------------------------------------------------------------------
def test_csv_manifest_with_metadata_and_bad_rows(make_catalog, tmp_path):
    root = tmp_path / "set"
    save(root / "img" / "a.png", 1)
    save(root / "img" / "b.jpg", 2)
    save(tmp_path / "elsewhere" / "c.png", 3)
    (root / "img" / "bad.png").write_bytes(b"nope")
    (root / "labels.csv").write_text(
        "uri,label,score,count\n"
        "img/a.png,cat,0.5,3\n"
        f"{tmp_path / 'elsewhere' / 'c.png'},dog,1.25,\n"
        "file://" + str(root / "img" / "b.jpg") + ',"bird, small",,7\n'
        "img/missing.png,ghost,0.1,1\n"
        ",nothing,0.2,2\n"
        "http://example.com/x.jpg,remote,0.3,3\n"
        "img/bad.png,broken,0.4,4\n"
        "img/a.png,duplicate,9.9,9\n"
    )
    cat = make_catalog()
    report = run(cat, [root / "labels.csv"])
    assert report.added == 3
    rows = cat.store.con.execute(
        "SELECT uri, label, score, count, source FROM images ORDER BY uri"
    ).fetchall()
    assert rows == sorted(
        [
            (str(root / "img" / "a.png"), "cat", 0.5, 3, str(root / "labels.csv")),
            (str(root / "img" / "b.jpg"), "bird, small", None, 7, str(root / "labels.csv")),
            (str(tmp_path / "elsewhere" / "c.png"), "dog", 1.25, None, str(root / "labels.csv")),
        ]
    )
    types = dict(
        cat.store.con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'images'"
        ).fetchall()
    )
    assert (types["label"], types["score"], types["count"]) == ("VARCHAR", "DOUBLE", "BIGINT")
    reasons = dict(report.skipped_files)
    assert reasons[str(root / "img" / "missing.png")] == "file not found"
    assert reasons[f"{root / 'labels.csv'}#row=5"] == "empty uri"
    assert "not fetched" in reasons["http://example.com/x.jpg"]
    assert "not a JPEG" in reasons[str(root / "img" / "bad.png")]
    assert report.skipped == 4
    # the catalog view sees the new columns
    assert (
        cat.store.con.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'catalog' "
            "AND column_name = 'label'"
        ).fetchall()[0][0]
        == 1
    )


def test_manifest_changes_update_metadata_and_remove_unlisted_files(make_catalog, tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", i)
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri,label\n0.png,a\n1.png,b\n2.png,c\n")
    cat = make_catalog()
    run(cat, [manifest])
    manifest.write_text("uri,label\n0.png,A\n1.png,b\n")
    report = run(cat, [manifest])
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 0, 1, 2)
    assert cat.store.con.execute("SELECT label FROM images ORDER BY uri").fetchall() == [("A",), ("b",)]
    # still listed, but deleted from disk: the image goes too
    moved = (tmp_path / "1.png").rename(tmp_path / "1.moved")
    report = run(cat, [manifest])
    assert report.removed == 1 and dict(report.skipped_files)[str(tmp_path / "1.png")] == "file not found"
    moved.rename(tmp_path / "1.png")
    # a folder run over the same files keeps the manifest's labels
    run(cat, [tmp_path])
    labels = dict(cat.store.con.execute("SELECT uri, label FROM images").fetchall())
    assert labels[str(tmp_path / "0.png")] == "A" and labels[str(tmp_path / "2.png")] is None
    check_consistent(cat)


def test_parquet_manifest_keeps_its_types(make_catalog, tmp_path):
    save(tmp_path / "a.png", 1)
    save(tmp_path / "b.png", 2)
    table = pa.table(
        {
            "uri": ["a.png", "b.png"],
            "n": pa.array([1, 2], pa.int32()),
            "ok": [True, False],
            "taken": pa.array([1_600_000_000_000_000, None], pa.timestamp("us")),
            "tags": [["x", "y"], []],
            "WIDTH": [1, 2],  # ingestion measures the width itself
        }
    )
    pq.write_table(table, tmp_path / "m.parquet")
    cat = make_catalog()
    report = run(cat, [tmp_path / "m.parquet"])
    assert report.added == 2 and report.ignored_columns == ["WIDTH"]
    types = dict(
        cat.store.con.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'images'"
        ).fetchall()
    )
    assert (types["n"], types["ok"], types["taken"], types["tags"]) == (
        "INTEGER",
        "BOOLEAN",
        "TIMESTAMP",
        "VARCHAR[]",
    )
    assert cat.store.con.execute("SELECT n, ok, tags, width FROM images ORDER BY uri").fetchall() == [
        (1, True, ["x", "y"], 40),
        (2, False, [], 40),
    ]


def test_manifest_errors_are_clear(make_catalog, tmp_path):
    cat = make_catalog()
    (tmp_path / "nouri.csv").write_text("path,label\na.png,x\n")
    with pytest.raises(IngestError, match="no 'uri' column"):
        run(cat, [tmp_path / "nouri.csv"])
    (tmp_path / "upper.csv").write_text("URI,label\na.png,x\n")
    with pytest.raises(IngestError, match="rename column 'URI'"):
        run(cat, [tmp_path / "upper.csv"])
    (tmp_path / "badname.csv").write_text('uri,"my label"\na.png,x\n')
    with pytest.raises(IngestError, match="'my label'"):
        run(cat, [tmp_path / "badname.csv"])
    pq.write_table(pa.table({"uri": ["a.png"], "s": [{"a": 1}]}), tmp_path / "nested.parquet")
    with pytest.raises(IngestError, match="STRUCT"):
        run(cat, [tmp_path / "nested.parquet"])
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(IngestError, match="could not be read"):
        run(cat, [tmp_path / "broken.parquet"])


def test_manifest_values_must_fit_existing_columns(make_catalog, tmp_path):
    save(tmp_path / "a.png", 1)
    save(tmp_path / "b.png", 2)
    (tmp_path / "one.csv").write_text("uri,rank\na.png,1\n")
    (tmp_path / "two.csv").write_text("uri,rank\nb.png,first\n")
    (tmp_path / "three.csv").write_text("uri,rank\nb.png,2.0\n")
    cat = make_catalog()
    run(cat, [tmp_path / "one.csv"])
    with pytest.raises(IngestError, match="cannot be stored in images.rank"):
        run(cat, [tmp_path / "two.csv"])
    run(cat, [tmp_path / "three.csv"])
    assert cat.store.con.execute("SELECT rank FROM images ORDER BY uri").fetchall() == [(1,), (2,)]


def test_demo_manifest_gives_a_label_column(make_catalog, tmp_path):
    from engine.datasets.demodata import write_fashion_mnist

    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 3)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        with gzip.open(raw / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(
                (0x803).to_bytes(4, "big")
                + b"".join(x.to_bytes(4, "big") for x in (n, 28, 28))
                + images.tobytes()
            )
        with gzip.open(raw / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write((0x801).to_bytes(4, "big") + n.to_bytes(4, "big") + bytes(range(n)))
    manifest = write_fashion_mnist(tmp_path / "fm", root=raw, workers=1)
    cat = make_catalog()
    assert run(cat, [manifest]).added == 9
    labels = dict(cat.store.con.execute("SELECT label, count(*) FROM images GROUP BY label").fetchall())
    assert labels == {"T-shirt/top": 2, "Trouser": 2, "Pullover": 2, "Dress": 1, "Coat": 1, "Sandal": 1}
    assert cat.store.con.execute("SELECT DISTINCT width, height FROM images").fetchall() == [(28, 28)]


# -- workers and progress ----------------------------------------------------------------------
def test_worker_processes_match_in_process_decoding(make_catalog, tree):
    pytest.importorskip("torch")
    a, b = make_catalog(), make_catalog()
    run(a, [tree], workers=0)
    report = run(b, [tree], workers=2)
    assert report.workers == 2 and report.added == GOOD and report.skipped == BAD
    ids_a, emb_a = load_embeddings(a)
    ids_b, emb_b = load_embeddings(b)
    assert ids_a.tolist() == ids_b.tolist()
    np.testing.assert_array_equal(emb_a, emb_b)


def test_progress_callback_and_report_timings(make_catalog, tree):
    seen = []
    cat = make_catalog()
    report = run(cat, [tree], progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (GOOD + BAD, GOOD + BAD)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert report.images_per_second > 0 and report.time_total_s >= report.time_embed_s > 0
    assert report.time_decode_s > 0 and report.time_write_s > 0
    assert report.to_json()["skipped_files"][0][1]
    runs = cat.store.con.execute("SELECT added, skipped, finished_at IS NOT NULL FROM ingest_runs").fetchall()
    assert runs == [(GOOD, BAD, True)]


# -- file names that are not UTF-8 -------------------------------------------------------------
@pytest.fixture
def latin1_tree(tmp_path) -> Path:
    """Three good PNGs, plus one named b'caf\\xe9.png' and one in folder b'f\\xeate' (Latin-1
    names, as an old archive unpacks them); skipped where the file system refuses such names."""
    root = tmp_path / "photos"
    for i, name in enumerate(["a.png", "b.png", "sub/c.png", "tmp/x.png", "tmp/y.png"]):
        save(root / name, i)
    raw = os.fsencode(root)
    try:
        os.rename(raw + b"/tmp/x.png", raw + b"/caf\xe9.png")
        os.rename(raw + b"/tmp", raw + b"/f\xeate")
        os.rename(raw + b"/f\xeate/y.png", raw + b"/f\xeate/d.png")
    except OSError as e:
        pytest.skip(f"this file system refuses names that are not UTF-8: {e}")
    return root


def test_names_that_are_not_utf8_are_skipped_and_listed(make_catalog, latin1_tree):
    root = latin1_tree
    good = {str(root / "a.png"), str(root / "b.png"), str(root / "sub" / "c.png")}
    bad = {f"{root}/caf\\xe9.png": NOT_UTF8_FILE, f"{root}/f\\xeate/d.png": NOT_UTF8_FOLDER}
    cat = make_catalog()
    report = run(cat, [root])
    assert (report.added, report.skipped) == (3, 2)
    assert set(uris(cat)) == good
    assert dict(report.skipped_files) == bad
    assert dict(cat.store.con.execute("SELECT uri, reason FROM skipped").fetchall()) == bad
    check_consistent(cat)
    report = run(cat, [root])
    assert (report.added, report.unchanged, report.skipped) == (0, 3, 2)
    # renamed to UTF-8, the file is ingested and no longer listed
    os.rename(os.fsencode(root) + b"/caf\xe9.png", root / "café.png")
    report = run(cat, [root])
    assert (report.added, report.unchanged, report.skipped) == (1, 3, 1)
    assert set(uris(cat)) == good | {str(root / "café.png")}
    assert cat.store.con.execute("SELECT uri FROM skipped").fetchall() == [(f"{root}/f\\xeate/d.png",)]
    check_consistent(cat)


def test_manifest_rows_naming_non_utf8_files_are_skipped(make_catalog, latin1_tree):
    root = latin1_tree
    url = "file://" + quote(str(root))
    (root / "m.csv").write_text(
        f"uri,label\na.png,x\n{url}/caf%E9.png,y\n{url}/f%EAte/d.png,z\n{url}/gone%E9.png,w\n"
    )
    cat = make_catalog()
    report = run(cat, [root / "m.csv"])
    assert report.added == 1 and uris(cat) == [str(root / "a.png")]
    assert dict(report.skipped_files) == {
        f"{url}/caf%E9.png": NOT_UTF8_FILE,
        f"{url}/f%EAte/d.png": NOT_UTF8_FOLDER,
        f"{url}/gone%E9.png": "file not found",
    }


def test_source_that_is_not_utf8_is_refused(make_catalog, latin1_tree):
    with pytest.raises(IngestError, match=r"photos/f\\xeate is not valid UTF-8.*rename"):
        run(make_catalog(), [os.fsdecode(os.fsencode(latin1_tree) + b"/f\xeate")])


def test_cli_ingest_prints_non_utf8_names_and_succeeds(tmp_path, latin1_tree, monkeypatch, capsys):
    monkeypatch.setattr("engine.encoders.load_encoder", lambda *args, **kw: FakeEncoder())
    path = tmp_path / "cli.duckdb"
    assert cli_main(["ingest", str(path), str(latin1_tree), "--workers", "0", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert f"skipped {latin1_tree}/caf\\xe9.png: {NOT_UTF8_FILE}\n" in err
    assert f"skipped {latin1_tree}/f\\xeate/d.png: {NOT_UTF8_FOLDER}\n" in err
    assert "3 added, 0 updated, 0 removed, 2 skipped" in out and "Traceback" not in err
    assert cli_main(["ingest", str(path), str(latin1_tree), "--workers", "0", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["added"], summary["unchanged"], summary["skipped"]) == (0, 3, 2)
    assert [f"{latin1_tree}/caf\\xe9.png", NOT_UTF8_FILE] in summary["skipped_files"]
