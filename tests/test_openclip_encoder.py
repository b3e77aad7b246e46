"""The open_clip encoder on random weights: specs, ids, checkpoints and offline failures.

Real pretrained weights cannot be fetched here, so every model is built with random (seeded)
weights; checkpoints are written by the tests from those models. ViT-S-32 (63M parameters) is
the smallest built-in model and carries the checkpoint tests; ViT-B-32 is checked as named.
"""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.encoders import Encoder, load_encoder
from engine.errors import EncoderError


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread for this file: on a busy 2-core machine two threads spin-wait on each
    other and encode these tiny batches 20x slower."""
    try:
        import torch
    except ImportError:  # the install-hint tests still run
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small(torch):
    """``open_clip:ViT-S-32/none`` on the CPU, with a batch size that splits the test images."""
    pytest.importorskip("open_clip")
    return load_encoder("open_clip:ViT-S-32/none", device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def b32(torch):
    """``open_clip:ViT-B-32/none`` on the CPU."""
    pytest.importorskip("open_clip")
    return load_encoder("open_clip:ViT-B-32/none", device="cpu", batch_size=2)


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    """Three images of different sizes and modes (one grayscale, one with alpha)."""
    rng = np.random.default_rng(7)
    return [
        Image.fromarray(rng.integers(0, 256, size=(180, 240, 3), dtype=np.uint8), "RGB"),
        Image.fromarray(rng.integers(0, 256, size=(64, 50), dtype=np.uint8), "L"),
        Image.fromarray(rng.integers(0, 256, size=(300, 300, 4), dtype=np.uint8), "RGBA"),
    ]


TEXTS = ["a photo of a cat", "a red bicycle leaning on a wall", ""]


@pytest.fixture(scope="module")
def small_ckpt(small, torch, tmp_path_factory):
    """The state dict of ``small`` saved as a plain checkpoint file."""
    path = tmp_path_factory.mktemp("ckpt") / "vit-s-32.pth"
    torch.save(small.model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def b32_ckpt(b32, torch, tmp_path_factory):
    """The state dict of ``b32`` saved as a plain checkpoint file (600 MB, so written once)."""
    path = tmp_path_factory.mktemp("ckpt") / "vit-b-32.pth"
    torch.save(b32.model.state_dict(), path)
    return path


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No Hugging Face network access and an empty cache, so a fetch fails at once."""
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # huggingface_hub reads both at import, which has already happened.
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def _assert_unit_rows(x: np.ndarray, n: int, dim: int) -> None:
    assert x.shape == (n, dim)
    assert x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def _sha16(path: Path) -> str:
    """The first 16 hex digits of the file's sha256, as encoder ids carry them."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# --- installation and spec grammar (no model built) -------------------------------------------


def test_module_imports_neither_torch_nor_open_clip():
    code = (
        "import sys, engine.encoders.openclip; "
        "print(sorted(m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules))"
    )
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.strip() == "[]"


def test_missing_open_clip_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # makes 'import open_clip' fail
    with pytest.raises(EncoderError, match="pip install open_clip_torch torchvision"):
        load_encoder("open_clip:ViT-B-32/none")


@pytest.mark.parametrize("spec", ["ViT-B-32", "ViT-B-32/", "/openai", "ViT-B-32/openai@", "@/x.pth"])
def test_malformed_spec(spec):
    with pytest.raises(EncoderError, match="MODEL/PRETRAINED|no checkpoint path"):
        load_encoder(f"open_clip:{spec}")


def test_unknown_model_names_the_model_list():
    pytest.importorskip("open_clip")
    with pytest.raises(EncoderError, match=r"no built-in model 'ViT-B-33'.*ViT-B-32.*list_models\(\)"):
        load_encoder("open_clip:ViT-B-33/none")


def test_unknown_tag_lists_known_tags():
    pytest.importorskip("open_clip")
    with pytest.raises(EncoderError, match="no pretrained tag 'laion9b'.*laion2b_s34b_b79k"):
        load_encoder("open_clip:ViT-B-32/laion9b")


def test_pretrained_tag_without_network_explains_local_files(offline):
    pytest.importorskip("open_clip")
    with pytest.raises(EncoderError) as err:
        load_encoder("open_clip:ViT-B-32/laion2b_s34b_b79k", device="cpu")
    msg = str(err.value)
    assert "ViT-B-32/laion2b_s34b_b79k" in msg and "could not be downloaded" in msg
    assert "'open_clip:ViT-B-32/laion2b_s34b_b79k@/path/to/checkpoint.pth'" in msg
    assert "HF_HOME" in msg and "HF_HUB_OFFLINE=1" in msg


def test_pretrained_tag_loads_from_the_hugging_face_cache(b32, b32_ckpt, tmp_path, images, offline):
    """The tag path end to end, offline: a hand-made cache entry in huggingface_hub's layout."""
    repo = tmp_path / "hf" / "hub" / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "open_clip_pytorch_model.bin").symlink_to(b32_ckpt)
    enc = load_encoder("open_clip:ViT-B-32/LAION2B-s34b-b79k", device="cpu")
    assert enc.id == "open_clip:ViT-B-32/laion2b_s34b_b79k"
    np.testing.assert_allclose(enc.encode_images(images[:1]), b32.encode_images(images[:1]), atol=1e-6)


# --- encoding -----------------------------------------------------------------------------------


def test_vit_b_32_random_encodes_images_and_texts(b32, images):
    assert isinstance(b32, Encoder)
    assert (b32.id, b32.dim, b32.device, b32.batch_size) == ("open_clip:ViT-B-32/none", 512, "cpu", 2)
    _assert_unit_rows(b32.encode_images(images), len(images), 512)
    _assert_unit_rows(b32.encode_texts(TEXTS), len(TEXTS), 512)


def test_encoding_is_deterministic_and_batch_independent(small, images, torch):
    first = small.encode_images(images)
    np.testing.assert_array_equal(small.encode_images(images), first)
    pixels = torch.stack([small.preprocess(im) for im in images])
    assert pixels.shape == (3, 3, 224, 224) and pixels.dtype == torch.float32
    np.testing.assert_allclose(small.encode_images(pixels), first, atol=1e-5)
    texts = small.encode_texts(TEXTS)
    np.testing.assert_array_equal(small.encode_texts(TEXTS), texts)
    np.testing.assert_allclose(small.encode_texts(TEXTS[:1]), texts[:1], atol=1e-5)


def test_empty_inputs_and_wrong_types(small, images):
    assert small.encode_images([]).shape == (0, small.dim)
    assert small.encode_texts([]).shape == (0, small.dim)
    with pytest.raises(TypeError):
        small.encode_images(images[0])
    with pytest.raises(TypeError):
        small.encode_texts("a cat")


def test_preprocess_is_picklable_without_the_model(small, images):
    blob = pickle.dumps(small.preprocess)
    assert len(blob) < 100_000  # the transform alone, not 63M parameters
    np.testing.assert_array_equal(pickle.loads(blob)(images[0]).numpy(), small.preprocess(images[0]).numpy())


def test_random_weights_id_round_trips(small, images):
    again = load_encoder(small.id, device="cpu")
    np.testing.assert_allclose(again.encode_images(images), small.encode_images(images), atol=1e-6)


def test_tokenizer_failure_is_an_encoder_error(small, monkeypatch):
    open_clip = pytest.importorskip("open_clip")
    monkeypatch.setattr(small, "tokenizer_", None)  # as if no text had been encoded yet

    def no_tokenizer(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(open_clip, "get_tokenizer", no_tokenizer)
    with pytest.raises(EncoderError, match="tokenizer of ViT-S-32 is not available offline.*HF_HOME"):
        small.encode_texts(["a cat"])
    small.encode_images([Image.new("RGB", (32, 32))])  # images still work


# --- checkpoints --------------------------------------------------------------------------------


def test_checkpoint_loads_strict_and_matches_its_model(small, small_ckpt, images):
    enc = load_encoder(f"open_clip:ViT-S-32@{small_ckpt}", device="cpu")
    assert enc.id == f"open_clip:ViT-S-32@{small_ckpt}#sha256:{_sha16(small_ckpt)}"
    np.testing.assert_allclose(enc.encode_images(images), small.encode_images(images), atol=1e-6)
    np.testing.assert_allclose(enc.encode_texts(TEXTS), small.encode_texts(TEXTS), atol=1e-6)
    again = load_encoder(enc.id, device="cpu")
    assert again.id == enc.id
    np.testing.assert_allclose(again.encode_images(images), small.encode_images(images), atol=1e-6)


def test_checkpoint_with_state_dict_key_and_module_prefix(small, torch, tmp_path, images, monkeypatch):
    path = tmp_path / "ddp.pt"
    state = {f"module.{k}": v for k, v in small.model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, path)
    monkeypatch.chdir(tmp_path)  # a relative path becomes absolute in the id
    enc = load_encoder("open_clip:ViT-S-32/none@ddp.pt", device="cpu")
    assert enc.id == f"open_clip:ViT-S-32@{path}#sha256:{_sha16(path)}"
    np.testing.assert_allclose(enc.encode_images(images[:1]), small.encode_images(images[:1]), atol=1e-6)


def test_base_tag_configures_the_architecture_without_download(b32, b32_ckpt, images, offline):
    from open_clip.transformer import QuickGELU

    enc = load_encoder(f"open_clip:ViT-B-32/OpenAI@{b32_ckpt}", device="cpu")
    assert enc.id == f"open_clip:ViT-B-32/openai@{b32_ckpt}#sha256:{_sha16(b32_ckpt)}"
    # The 'openai' weights were trained with QuickGELU, which has no parameters: the same state
    # dict loads, but the activations, and so the embeddings, differ from plain ViT-B-32's.
    assert any(isinstance(m, QuickGELU) for m in enc.model.modules())
    assert not any(isinstance(m, QuickGELU) for m in b32.model.modules())
    diff = np.abs(enc.encode_images(images[:1]) - b32.encode_images(images[:1])).max()
    assert diff > 1e-5


def test_checkpoint_with_missing_and_extra_keys_names_them(small, torch, tmp_path):
    state = dict(small.model.state_dict())
    del state["visual.proj"]
    state["visual.adapter.weight"] = torch.zeros(3)
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(
        EncoderError, match=r"missing keys 'visual\.proj'.*unexpected keys 'visual\.adapter\.weight'"
    ):
        load_encoder(f"open_clip:ViT-S-32@{path}", device="cpu")


def test_checkpoint_with_wrong_shapes(small, torch, tmp_path):
    state = dict(small.model.state_dict())
    state["visual.proj"] = torch.zeros(3, 3)
    path = tmp_path / "shapes.pth"
    torch.save(state, path)
    with pytest.raises(EncoderError, match=r"does not fit the model: size mismatch for visual\.proj"):
        load_encoder(f"open_clip:ViT-S-32@{path}", device="cpu")


def test_checkpoint_that_is_not_a_torch_file(tmp_path):
    pytest.importorskip("open_clip")
    path = tmp_path / "notes.pth"
    path.write_text("not a checkpoint\n")
    with pytest.raises(EncoderError, match="notes.pth is not a readable torch state dict"):
        load_encoder(f"open_clip:ViT-S-32@{path}", device="cpu")


def test_missing_checkpoint_file(tmp_path):
    pytest.importorskip("open_clip")
    with pytest.raises(EncoderError, match="does not exist"):
        load_encoder(f"open_clip:ViT-S-32@{tmp_path / 'nope.pth'}")


def test_changed_checkpoint_is_refused(small_ckpt):
    pytest.importorskip("open_clip")
    with pytest.raises(EncoderError, match="has changed"):
        load_encoder(f"open_clip:ViT-S-32@{small_ckpt}#sha256:{'0' * 16}")
