"""Distributed ingestion: Spark workers (local mode, several tasks) encode a Fashion-MNIST tree
with a manifest, a corrupt file and a missing one, and the catalog they fill equals a local
ingestion's: the same ids, rows, skipped files, parts, thumbnails, embeddings, codes and search
results. Taking the same output in again adds nothing."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import engine
from engine.datasets.demodata import write_fashion_mnist
from engine.ingest import ingest
from engine.ingest.embeddings import embeddings_dir, load_embeddings
from engine.ingest.parts import ingest_parts, spark_ingest
from engine.ingest.sources import scan_sources
from engine.ingest.spark import encode_with_spark, load_scan, save_scan, spark_session

FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def _missing(*modules: str) -> list[str]:
    return [m for m in modules if importlib.util.find_spec(m) is None]


def spark_test(test):
    """Marks a test that runs Spark workers: skipped without PySpark (with pandas, which
    mapInArrow needs), Java, torch or the Debian Fashion-MNIST files."""
    marks = [
        pytest.mark.spark,
        pytest.mark.skipif(
            bool(_missing("pyspark", "pandas", "torch")),
            reason=f"needs {', '.join(_missing('pyspark', 'pandas', 'torch'))}",
        ),
        pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs a Java runtime"),
        pytest.mark.skipif(not FASHION.exists(), reason="needs the Debian package dataset-fashion-mnist"),
    ]
    for mark in marks:
        test = mark(test)
    return test


ENCODER = "demo:fashion-v1"
MASTER = "local[2]"
BATCH = 32
GOOD = 301  # 300 Fashion-MNIST PNGs and one large JPEG


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    """A manifest of 300 Fashion-MNIST PNGs with labels, plus a corrupt and a missing row, and a
    folder holding a JPEG large enough for a thumbnail, a truncated JPEG and a text file."""
    root = tmp_path_factory.mktemp("spark-ingest")
    manifest = write_fashion_mnist(root / "fm", limit=150, workers=1)
    png = (root / "fm" / "images" / "test" / "bag" / "00018.png").read_bytes()
    (root / "fm" / "images" / "bad.png").write_bytes(png[: len(png) // 2])
    with manifest.open("a", encoding="utf-8") as f:
        f.write("images/bad.png,Bag,test\nimages/missing.png,Bag,test\n")
    extra = root / "extra"
    extra.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(extra / "large.jpg", quality=90)
    data = (extra / "large.jpg").read_bytes()
    (extra / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (extra / "notes.jpg").write_text("not an image")
    return [manifest, extra]


@pytest.fixture(scope="module")
def same_threads():
    """Torch threads as in each Spark task (the cores shared among local[2]'s two slots), so
    both runs compute the same float32 values."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def spark():
    session = spark_session(MASTER)
    yield session
    session.stop()


@pytest.fixture(scope="module")
def local_catalog(sources, same_threads, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("local") / "local.duckdb"
    with engine.Catalog.create(path) as cat:
        ingest(cat, sources, encoder(), batch_size=BATCH, workers=0, progress=False)
    return path


@pytest.fixture(scope="module")
def spark_catalog(sources, spark, same_threads, tmp_path_factory):
    path = tmp_path_factory.mktemp("spark") / "spark.duckdb"
    with engine.Catalog.create(path) as cat:
        report = spark_ingest(cat, sources, ENCODER, spark=spark, partitions=4, batch_size=BATCH)
    return path, report


@pytest.fixture(scope="module")
def staged(sources, spark, same_threads, tmp_path_factory) -> Path:
    """The output of a Spark job planned without a catalog."""
    out = tmp_path_factory.mktemp("staged") / "out"
    job = encode_with_spark(sources, out, encoder_id=ENCODER, spark=spark, partitions=3, batch_size=BATCH)
    assert (job["encoded"], job["failed"], job["parallelism"], job["partitions"]) == (GOOD, 3, 2, 3)
    return out


def encoder():
    from engine.encoders import load_encoder

    return load_encoder(ENCODER, batch_size=BATCH)


def content(path: Path) -> dict:
    """Everything ingestion leaves in a catalog, except timestamps and run records."""
    with engine.Catalog.open(path, read_only=True) as cat:
        con = cat.store.con
        images = con.execute(
            "SELECT id, uri, source, file_size, file_mtime_ns, width, height, embedding_part, "
            "label, split FROM images ORDER BY id"
        ).fetchall()
        skipped = con.execute(
            "SELECT uri, reason, file_size, file_mtime_ns FROM skipped ORDER BY uri"
        ).fetchall()
        parts = con.execute(
            "SELECT part_id, file, encoder, dim, n_rows FROM embedding_parts ORDER BY part_id"
        ).fetchall()
        ids, emb = load_embeddings(cat)
        on_disk = sorted(p.name for p in embeddings_dir(cat).iterdir())
        thumbs = {
            str(p.relative_to(cat.side_dir)): p.read_bytes() for p in (cat.side_dir / "thumbs").rglob("*.jpg")
        }
        leftovers = sorted(p.name for p in cat.side_dir.iterdir() if p.name not in ("embeddings", "thumbs"))
        settings = {k: cat.setting(k) for k in ("encoder",)}
    return {
        "images": images,
        "skipped": skipped,
        "parts": parts,
        "ids": ids,
        "emb": emb,
        "on_disk": on_disk,
        "thumbs": thumbs,
        "leftovers": leftovers,
        "settings": settings,
    }


def assert_same(got: dict, want: dict) -> None:
    for key in ("images", "skipped", "parts", "on_disk", "thumbs", "leftovers", "settings"):
        assert got[key] == want[key], key
    assert got["ids"].tolist() == want["ids"].tolist()
    # float16 rounding: at most one float16 step apart (equal when the tasks' threads match)
    step = np.spacing(np.abs(want["emb"]).astype(np.float16)).astype(np.float32)
    assert np.all(np.abs(got["emb"] - want["emb"]) <= step)


@spark_test
def test_spark_ingest_gives_the_local_catalog(local_catalog, spark_catalog):
    path, report = spark_catalog
    want, got = content(local_catalog), content(path)
    assert_same(got, want)
    assert len(want["images"]) == GOOD and len(want["thumbs"]) == 1
    assert sum(r[8] is not None for r in want["images"]) == GOOD - 1  # every manifest file has its label
    reasons = {Path(u).name: r for u, r, _, _ in want["skipped"]}
    assert reasons["missing.png"] == "file not found"
    assert "truncated" in reasons["bad.png"] or "cannot decode" in reasons["bad.png"]
    assert "truncated" in reasons["truncated.jpg"] and "not a" in reasons["notes.jpg"]
    assert (report.added, report.updated, report.removed, report.skipped) == (GOOD, 0, 0, 4)
    assert report.workers == 2 and report.time_embed_s > 0 and report.time_decode_s > 0


@spark_test
def test_running_it_again_adds_nothing(spark_catalog, sources, spark):
    path, _ = spark_catalog
    before = content(path)
    with engine.Catalog.open(path) as cat:
        report = spark_ingest(cat, sources, ENCODER, spark=spark, batch_size=BATCH)
    assert (report.added, report.updated, report.removed, report.unchanged) == (0, 0, 0, GOOD)
    assert_same(content(path), before)


@spark_test
def test_the_output_of_a_job_is_taken_in_once(local_catalog, staged, tmp_path):
    want = content(local_catalog)
    fresh = tmp_path / "fresh.duckdb"
    with engine.Catalog.create(fresh) as cat:
        first = ingest_parts(cat, staged)
        again = ingest_parts(cat, staged)
    assert (first.added, first.skipped) == (GOOD, 4)
    assert (again.added, again.updated, again.removed, again.unchanged) == (0, 0, 0, GOOD)
    assert_same(content(fresh), want)
    # the locally ingested catalog already holds every file: nothing changes
    copy = tmp_path / "copy.duckdb"
    shutil.copy(local_catalog, copy)
    shutil.copytree(f"{local_catalog}.d", f"{copy}.d")
    with engine.Catalog.open(copy) as cat:
        assert ingest_parts(cat, staged).added == 0
    assert_same(content(copy), want)


@spark_test
def test_output_taken_into_a_catalog_with_other_ids(local_catalog, staged, sources, tmp_path):
    """A catalog that got the folder first gives the manifest's files other ids than the job
    planned: the parts are rewritten under the catalog's ids, and every uri keeps its
    embedding, label and thumbnail."""
    path = tmp_path / "other.duckdb"
    with engine.Catalog.create(path) as cat:
        ingest(cat, [sources[1]], encoder(), batch_size=BATCH, workers=0, progress=False)
        report = ingest_parts(cat, staged)
    assert (report.added, report.unchanged) == (GOOD - 1, 1)
    want, got = content(local_catalog), content(path)

    def by_uri(c: dict) -> tuple[list, np.ndarray]:
        row = {r[0]: k for k, r in enumerate(c["images"])}
        order = sorted(c["images"], key=lambda r: r[1])
        return [(r[1], r[3], r[5], r[6], r[8]) for r in order], c["emb"][[row[r[0]] for r in order]]

    (rows_got, emb_got), (rows_want, emb_want) = by_uri(got), by_uri(want)
    assert rows_got == rows_want
    assert np.all(
        np.abs(emb_got - emb_want) <= np.spacing(np.abs(emb_want).astype(np.float16)).astype(np.float32)
    )
    assert got["skipped"] == want["skipped"]
    assert len({r[1] for r in got["images"]}) == len(got["images"]) == GOOD
    assert set(got["on_disk"]) == {p[1] for p in got["parts"]}
    assert len(got["thumbs"]) == 1


@spark_test
def test_search_gives_the_same_ids(local_catalog, spark_catalog):
    from engine.codes.pipeline import index_embeddings, train_head

    results = []
    for path in (local_catalog, spark_catalog[0]):
        with engine.Catalog.open(path) as cat:
            train_head(cat, method="pca")
            index_embeddings(cat, block_size=64)
        with engine.Catalog.open(path, read_only=True) as cat:
            ids = cat.sql("SELECT id FROM images ORDER BY id").column("id").to_numpy()
            results.append(
                (
                    cat.codes(ids),
                    cat.search("ankle boot", k=40).ids.tolist(),
                    cat.search(id=int(ids[7]), k=40).ids.tolist(),
                )
            )
    (codes_a, text_a, id_a), (codes_b, text_b, id_b) = results
    assert np.array_equal(codes_a, codes_b)
    assert text_a == text_b and id_a == id_b


@spark_test
def test_cli_takes_the_output_in_and_ingest_spark_has_nothing_left(staged, spark_catalog, sources, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def cli(*args):
        r = subprocess.run(
            [sys.executable, "-m", "engine", *map(str, args)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    target = tmp_path / "cli.duckdb"
    assert cli("ingest-parts", target, staged, "--json")["added"] == GOOD
    assert cli("ingest-parts", target, staged, "--json")["added"] == 0
    # nothing to encode: no Spark session is started
    out = cli("ingest", spark_catalog[0], *sources, "--spark", MASTER, "--json", "--quiet")
    assert (out["added"], out["unchanged"]) == (0, GOOD)


def test_a_saved_scan_loads_back_unchanged(tmp_path):
    for name in ("a.png", "b.png", "sub/c.png"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (12, 10)).save(tmp_path / name)
    pq.write_table(
        pa.table(
            {
                "uri": ["a.png", "b.png"],
                "n": pa.array([1, 2], pa.int32()),
                "ok": [True, False],
                "taken": pa.array([1_600_000_000_000_000, None], pa.timestamp("us")),
                "tags": [["x", "y"], []],
            }
        ),
        tmp_path / "m.parquet",
    )
    (tmp_path / "m.csv").write_text("uri,label,day\nb.png,x,2020-01-02\nmissing.png,y,2020-01-03\n")
    (tmp_path / "bare.csv").write_text("uri\nsub/c.png\n")
    scanned = scan_sources([tmp_path / "m.csv", tmp_path / "m.parquet", tmp_path / "bare.csv", tmp_path])
    save_scan(scanned, tmp_path / "scan")
    loaded = load_scan(tmp_path / "scan")
    assert loaded.uris == scanned.uris and loaded.sources == scanned.sources
    for field in ("sizes", "mtimes_ns", "source_index"):
        assert np.array_equal(getattr(loaded, field), getattr(scanned, field))
    assert loaded.problems == scanned.problems and loaded.unlisted_dirs == scanned.unlisted_dirs
    assert [m.entries.tolist() for m in loaded.manifests] == [m.entries.tolist() for m in scanned.manifests]
    assert [m.table.to_pylist() for m in loaded.manifests] == [m.table.to_pylist() for m in scanned.manifests]
    assert [m.table.schema for m in loaded.manifests[:2]] == [m.table.schema for m in scanned.manifests[:2]]
