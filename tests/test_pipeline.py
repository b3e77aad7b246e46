"""End to end: demo images -> ingest -> train-head -> index -> select, through the real CLI."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pytest

import engine
from engine.codes import pipeline
from engine.codes.prompts import vocabulary

pytest.importorskip("torch")
FASHION = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="needs the Debian package dataset-fashion-mnist")


def _cli(*args, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small demo catalog built by the one command that chains every step."""
    root = tmp_path_factory.mktemp("demo")
    cat = root / "fashion.duckdb"
    r = _cli("demo", str(cat), "--limit", "150", "--epochs", "2", "--workers", "0", "--quiet", "--no-serve")
    assert r.returncode == 0, r.stderr
    assert "demo catalog ready" in r.stdout
    return cat


def test_demo_catalog_has_labels_codes_head_and_index(demo):
    with engine.Catalog.open(demo, read_only=True) as cat:
        status = cat.index_status()
        assert status["rows"] == 300 and not status["stale"]
        labels = cat.sql("SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY label").to_pylist()
        assert len(labels) == 10 and sum(r["n"] for r in labels) == 300
        assert cat.setting("encoder") == "demo:fashion-v1"
        head = cat.head()
        assert head.in_dim == 384 and head.out_dim == 32 and head.info["encoder"] == "demo:fashion-v1"
        assert cat.setting("index")["head_sha256"] == head.sha256
        # the stored codes are exactly head + quantizer over the raw embeddings
        from engine.ingest.embeddings import load_embeddings

        ids, emb = load_embeddings(cat)
        expected = cat.quantizer().encode(head.apply(emb))
        assert np.array_equal(cat.codes(ids), expected)


def test_selecting_on_the_demo_catalog_matches_its_sql(demo):
    with engine.Catalog.open(demo, read_only=True) as cat:
        ids = cat.sql("SELECT id FROM images ORDER BY id").column("id").to_numpy()
        codes = cat.codes(ids)
        box = {
            d: (int(np.percentile(codes[:, d], 20)), int(np.percentile(codes[:, d], 90))) for d in (0, 1, 2)
        }
        res = cat.select(engine.BoxSet([box]))
        inside = np.all([(codes[:, d] >= lo) & (codes[:, d] <= hi) for d, (lo, hi) in box.items()], axis=0)
        assert set(res.ids.tolist()) == set(ids[inside].tolist())
    con = duckdb.connect(str(demo), read_only=True)
    try:
        assert [r[0] for r in con.execute(res.sql).fetchall()] == res.ids.tolist()
    finally:
        con.close()


def test_rerunning_the_demo_changes_nothing(demo):
    before = demo.stat().st_mtime_ns
    with engine.Catalog.open(demo, read_only=True) as cat:
        head = cat.head().sha256
    r = _cli("demo", str(demo), "--limit", "150", "--epochs", "2", "--workers", "0", "--quiet", "--no-serve")
    assert r.returncode == 0, r.stderr
    assert "0 added, 0 updated, 0 removed" in r.stderr
    with engine.Catalog.open(demo, read_only=True) as cat:
        assert cat.head().sha256 == head
    assert before <= demo.stat().st_mtime_ns


def test_head_trained_for_another_encoder_is_refused(tmp_path, demo):
    copy = tmp_path / "copy.duckdb"
    copy.write_bytes(demo.read_bytes())
    (tmp_path / "copy.duckdb.d").symlink_to(Path(f"{demo}.d"))
    with engine.Catalog.open(copy) as cat:
        cat.store.set_settings({"encoder": "open_clip:ViT-B-32/none"})
        with pytest.raises(engine.StaleIndexError, match="train-head"):
            pipeline.index_embeddings(cat)


def test_export_import_keeps_the_head(tmp_path, demo):
    out = tmp_path / "export"
    with engine.Catalog.open(demo, read_only=True) as cat:
        cat.export_parquet(out)
        head = cat.head().sha256
    with engine.Catalog.import_parquet(out, tmp_path / "back.duckdb") as back:
        assert back.head().sha256 == head
        assert back.quantizer().to_json() == json.loads(json.dumps(back.setting("quantizer")))


def test_train_head_methods_through_the_cli(tmp_path, demo):
    copy = tmp_path / "c.duckdb"
    copy.write_bytes(demo.read_bytes())
    (tmp_path / "c.duckdb.d").symlink_to(Path(f"{demo}.d"))
    r = _cli("train-head", str(copy), "--method", "pca", "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["method"] == "pca" and summary["rows"] == 300
    r = _cli("train-head", str(copy), "--method", "contrastive", "--quiet")
    assert r.returncode == 1 and "caption" in r.stderr
    r = _cli("index", str(copy), "--json")
    assert r.returncode == 0, r.stderr
    with engine.Catalog.open(copy, read_only=True) as cat:
        assert cat.head().kind == "pca" and not cat.index_status()["stale"]


def test_train_head_without_embeddings_says_what_to_do(tmp_path):
    path = tmp_path / "empty.duckdb"
    engine.Catalog.create(path).close()
    r = _cli("train-head", str(path))
    assert r.returncode == 1 and "ingest" in r.stderr


def test_new_and_reembedded_images_show_as_stale_until_indexed(tmp_path, demo):
    import shutil

    from PIL import Image

    copy = tmp_path / "c.duckdb"
    copy.write_bytes(demo.read_bytes())
    shutil.copytree(f"{demo}.d", f"{copy}.d")
    extra = tmp_path / "extra"
    extra.mkdir()
    for i, name in enumerate(["a.png", "b.png"]):
        Image.fromarray(np.full((28, 28), 40 * i + 20, np.uint8)).save(extra / name)

    def status():
        r = _cli("info", str(copy), "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    r = _cli("ingest", str(copy), str(extra), "--workers", "0", "--quiet")
    assert r.returncode == 0, r.stderr
    # New images get codes from the stored head at once, outside the k-d order until `index`.
    assert "2 searchable now, before the next index" in r.stdout and "not yet searchable" not in r.stderr
    s = status()
    assert (s["images_without_codes"], s["stale_codes"], s["unindexed_rows"], s["stale"]) == (0, 0, 2, True)
    assert _cli("index", str(copy)).returncode == 0
    s = status()
    assert (s["images_without_codes"], s["stale_codes"], s["stale"]) == (0, 0, False)

    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(extra / "a.png")
    st = (extra / "a.png").stat()
    os.utime(extra / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**10))
    r = _cli("ingest", str(copy), str(extra), "--workers", "0", "--quiet")
    assert r.returncode == 0 and "not yet searchable: 1;" in r.stderr
    s = status()
    assert (s["images_without_codes"], s["stale_codes"], s["stale"]) == (0, 1, True)
    assert _cli("index", str(copy)).returncode == 0
    assert status()["stale"] is False


def test_text_image_and_example_search_on_the_demo_catalog(demo):
    with engine.Catalog.open(demo, read_only=True) as cat:
        labels = {r["id"]: r["label"] for r in cat.sql("SELECT id, label FROM images").to_pylist()}
        res = cat.search("sneaker", k=20)
        assert len(res.ids) == 20 and res.stats["query"] == "text"
        assert sum(labels[i] == "Sneaker" for i in res.ids) >= 12
        assert np.all(np.diff(res.scores) >= 0)
        bag = next(i for i, lab in labels.items() if lab == "Bag")
        uri = cat.sql("SELECT uri FROM images WHERE id = $i", {"i": bag}).column("uri")[0].as_py()
        by_file = cat.search(image=uri, k=10)
        by_bytes = cat.search(image=Path(uri).read_bytes(), k=10)
        np.testing.assert_array_equal(by_file.ids, by_bytes.ids)
        by_id = cat.search(id=bag, k=10)
        assert by_id.ids[0] == bag
        assert sum(labels[i] == "Bag" for i in by_file.ids) >= 6
        for bad, match in (("", "empty"), ("   ", "empty"), ("x" * 10_000, "limit")):
            with pytest.raises(engine.InvalidArgument, match=match):
                cat.search(bad)
        with pytest.raises(engine.InvalidArgument, match="cannot be used"):
            cat.search(image=b"not an image")
        for odd in ("a/b?c#d", 'it\'s "quoted"', "sneaker 👟"):
            assert len(cat.search(odd, k=5).ids) == 5


def test_search_and_refine_through_the_cli(demo):
    r = _cli("search", str(demo), "ankle boot", "-k", "30", "--json")
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)
    assert len(found["ids"]) == 30 and "ORDER BY dist, pos" in found["sql"]
    with engine.Catalog.open(demo, read_only=True) as cat:
        labels = {r["id"]: r["label"] for r in cat.sql("SELECT id, label FROM images").to_pylist()}
    boots = [i for i in found["ids"] if labels[i] == "Ankle boot"][:5]
    others = [i for i in found["ids"] if labels[i] != "Ankle boot"][:3]
    args = [
        "refine",
        str(demo),
        "--positive",
        ",".join(map(str, boots)),
        "--model",
        "ensemble",
        "--seed",
        "1",
        "--json",
    ]
    if others:
        args += ["--negative", ",".join(map(str, others))]
    r = _cli(*args)
    assert r.returncode == 0, r.stderr
    refined = json.loads(r.stdout)
    assert refined["stats"]["model"] == "ensemble" and refined["results"] == len(refined["ids"])
    got = [labels[i] for i in refined["ids"]]
    assert got and got.count("Ankle boot") >= 0.6 * len(got)
    con = duckdb.connect(str(demo), read_only=True)
    try:
        assert [row[0] for row in con.execute(refined["sql"]).fetchall()] == refined["ids"]
    finally:
        con.close()
    sug = refined["suggestions"]
    assert len(sug) == len(set(sug)) == 60 and not set(sug) & {*boots, *others} and set(sug) <= set(labels)
    r = _cli(*[a for a in args if a != "--json"], "--suggestions", "5", "--no-guide")
    assert r.returncode == 0, r.stderr
    assert "# label next: " in r.stderr and len(r.stderr.split("# label next: ")[1].split(",")) == 5
    r = _cli(*args, "--no-guide")
    assert r.returncode == 0, r.stderr
    plain = json.loads(r.stdout)
    assert plain["stats"]["guided"] is False and plain["stats"]["pseudo_positives"] == 0
    assert refined["stats"]["guided"] is True
    with engine.Catalog.open(demo, read_only=True) as cat:
        unguided = cat.refine(boots, others, model="ensemble", random_state=1, guide=False)
    assert (
        plain["results"] == len(unguided.ids) and plain["ids"] == unguided.ids[: len(plain["ids"])].tolist()
    )
    r = _cli("refine", str(demo), "--positive", "1,x")
    assert r.returncode == 1 and "not an integer" in r.stderr and "Traceback" not in r.stderr
    r = _cli("search", str(demo))
    assert r.returncode == 2 and "give a text QUERY, --image FILE or --id N" in r.stderr


KILLED_INDEX = """
import os, signal, sys
import engine
from engine.index import layout
from engine.codes import pipeline

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

layout.kd_order = killed  # dies after the new codes are computed, before they are sorted
with engine.Catalog.open(sys.argv[1]) as cat:
    pipeline.index_embeddings(cat, block_size=64)
"""


def test_index_killed_before_sorting_keeps_the_old_codes_and_index(tmp_path, demo):
    # The codes used to be replaced in a transaction of their own before the sort: a kill in
    # between left new codes without blocks, so every selection scanned the whole catalog.
    copy = tmp_path / "c.duckdb"
    copy.write_bytes(demo.read_bytes())
    (tmp_path / "c.duckdb.d").symlink_to(Path(f"{demo}.d"))

    def state():
        with engine.Catalog.open(copy, read_only=True) as cat:
            return (
                cat.sql("SELECT * FROM codes ORDER BY pos"),
                cat.sql("SELECT * FROM blocks ORDER BY block_id"),
                cat.setting("index"),
            )

    with engine.Catalog.open(copy) as cat:
        pipeline.train_head(cat, method="pca")
    before = state()
    r = subprocess.run([sys.executable, "-c", KILLED_INDEX, str(copy)], capture_output=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    after = state()
    assert after[0].equals(before[0]) and after[1].equals(before[1]) and after[2] == before[2]
    assert after[1].num_rows > 0
    with engine.Catalog.open(copy) as cat:
        pipeline.index_embeddings(cat, block_size=64)
        index = cat.setting("index")
        assert index["head_sha256"] == cat.head().sha256 and index["embedding_part_max"] >= 1
        assert not cat.index_status()["stale"] and not cat.sql("SELECT * FROM codes ORDER BY pos").equals(
            before[0]
        )


def test_index_without_a_head_names_train_head(tmp_path, demo):
    import shutil

    folder = tmp_path / "mine"
    folder.mkdir()
    for png in sorted((demo.parent / "fashion-mnist").rglob("*.png"))[:5]:
        shutil.copy(png, folder / png.name)
    path = tmp_path / "mine.duckdb"
    r = _cli("ingest", str(path), str(folder), "--workers", "0", "--quiet")
    assert r.returncode == 0, r.stderr
    r = _cli("index", str(path))
    assert (
        r.returncode == 1 and f"clip-branches train-head {path}" in r.stderr and "Traceback" not in r.stderr
    )
    with engine.Catalog.open(path, read_only=True) as cat:
        assert cat.setting("index") is None and len(cat.sql("SELECT id FROM images")) == 5
    r = _cli("index", str(path), "--codes-only")  # nothing but the stored codes: none yet
    assert r.returncode == 0 and "indexed 0 rows" in r.stdout


# -- small catalogs: any size from one image up ------------------------------------------------
class CachingEncoder:
    """The demo encoder, remembering the texts it encoded: every small catalog below encodes the
    same prompt vocabulary, which costs seconds each time."""

    def __init__(self, encoder):
        self.encoder, self.cache = encoder, {}

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode_texts(self, texts):
        key = tuple(texts)
        if key not in self.cache:
            self.cache[key] = self.encoder.encode_texts(list(texts))
        return self.cache[key]


@pytest.fixture(scope="module")
def demo_encoder():
    from engine.encoders import load_encoder

    return CachingEncoder(load_encoder("demo:fashion-v1"))


@pytest.fixture(scope="module")
def fashion_rows(tmp_path_factory):
    """The first 25 images of each Fashion-MNIST split as PNGs; (folder, manifest rows)."""
    import csv

    from engine.datasets.demodata import write_fashion_mnist

    manifest = write_fashion_mnist(tmp_path_factory.mktemp("fm") / "fm", limit=25, workers=1)
    with open(manifest, newline="") as f:
        return manifest.parent, list(csv.DictReader(f))


@pytest.fixture
def small_catalog(tmp_path, fashion_rows, demo_encoder):
    """Factory: a catalog of the first ``n`` demo images with their labels (and captions "a photo
    of a <label>" when ``captions``), ingested with the demo encoder."""
    import csv

    from engine.ingest import ingest

    folder, rows = fashion_rows

    def make(n: int, captions: bool = False) -> Path:
        manifest = folder / f"first-{n}{'-captioned' if captions else ''}.csv"
        with open(manifest, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["uri", "label", *(["caption"] if captions else [])])
            for r in rows[:n]:
                w.writerow(
                    [r["uri"], r["label"], *([f"a photo of a {r['label'].lower()}"] if captions else [])]
                )
        path = tmp_path / f"small-{n}.duckdb"
        with engine.Catalog.create(path) as cat:
            report = ingest(cat, [str(manifest)], demo_encoder, workers=0, progress=False, thumbnails=False)
            assert report.added == n
        return path

    return make


def _labels(cat) -> dict:
    return {r["id"]: r["label"] for r in cat.sql("SELECT id, label FROM images").to_pylist()}


@pytest.mark.parametrize("n", [1, 2, 5, 20, 32, 33, 50])
@pytest.mark.parametrize("method", ["auto", "distill", "pca"])
def test_small_catalogs_train_index_and_search(small_catalog, demo_encoder, n, method):
    path = small_catalog(n)
    with engine.Catalog.open(path) as cat:
        summary = pipeline.train_head(cat, method=method, encoder=demo_encoder)
        assert summary["rows"] == n and summary["small_catalog"]
        assert summary["quantizer_rows"] == n + len(vocabulary())
        assert summary["method"] == ("distill" if method == "auto" else method)
        stats = pipeline.index_embeddings(cat)
        assert stats["rows"] == n and not cat.index_status()["stale"]
        quant = cat.quantizer()
        # text queries land inside the quantizer's ranges rather than on its edges
        q = cat.head().apply(demo_encoder.encode_texts(["ankle boot", "a bag to carry things"]))
        assert np.all((q > quant.lo) & (q < quant.lo + 255 * quant.step))
    with engine.Catalog.open(path, read_only=True) as cat:
        labels = _labels(cat)
        found = cat.search("ankle boot", k=5)
        assert len(found.ids) == min(5, n)
        if n >= 20:  # the first 20 hold three ankle boots, and sandals and sneakers to confuse them with
            assert labels[found.ids[0]] == "Ankle boot"
            assert labels[cat.search("trousers", k=1).ids[0]] == "Trouser"


@pytest.mark.parametrize("n", [1, 20])
def test_small_catalogs_train_contrastive_heads(small_catalog, demo_encoder, n):
    path = small_catalog(n, captions=True)
    with engine.Catalog.open(path) as cat:
        summary = pipeline.train_head(cat, encoder=demo_encoder)
        assert summary["method"] == "contrastive" and summary["rows"] == n
        pipeline.index_embeddings(cat)
        labels = _labels(cat)
        found = cat.search("ankle boot", k=3)
        assert len(found.ids) == min(3, n)
        if n >= 20:
            assert labels[found.ids[0]] == "Ankle boot"


def test_no_embeddings_is_still_explained(tmp_path):
    with engine.Catalog.create(tmp_path / "empty.duckdb") as cat:
        for method in pipeline.METHODS:
            with pytest.raises(engine.CatalogError, match="no embeddings yet.*ingest"):
                pipeline.train_head(cat, method=method)


def test_large_catalogs_train_exactly_as_before(tmp_path, demo, demo_encoder):
    """From SMALL_CATALOG_ROWS images up, the head is trained on the images alone and the
    quantizer fitted on their outputs alone: the same bytes as calling the two directly."""
    from engine.codes import head as head_mod
    from engine.codes import quantize
    from engine.ingest.embeddings import load_embeddings

    copy = tmp_path / "c.duckdb"
    copy.write_bytes(demo.read_bytes())
    (tmp_path / "c.duckdb.d").symlink_to(Path(f"{demo}.d"))
    with engine.Catalog.open(copy) as cat:
        ids, emb = load_embeddings(cat)
        assert len(ids) >= pipeline.SMALL_CATALOG_ROWS
        summary = pipeline.train_head(cat, epochs=2, seed=5, encoder=demo_encoder)
        assert not summary["small_catalog"] and summary["quantizer_rows"] == len(ids)
        want = head_mod.train_distill(emb, demo_encoder.encode_texts(vocabulary()), epochs=2, seed=5)
        want.info["encoder"] = "demo:fashion-v1"
        assert cat.head().sha256 == want.sha256
        assert cat.quantizer().to_json() == quantize.fit_affine(want.apply(emb)).to_json()
        pipeline.train_head(cat, method="pca")
        pca = head_mod.fit_pca(emb)
        pca.info["encoder"] = "demo:fashion-v1"
        assert cat.head().sha256 == pca.sha256
