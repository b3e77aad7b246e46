"""The open_clip encoder on random weights: specs, ids, checkpoints and offline failures.

Real pretrained weights cannot be fetched here, so every model is built with random (seeded)
weights; checkpoints are written by the tests from those models. ViT-S-32 (63M parameters) is
the smallest built-in model and carries the checkpoint tests; ViT-B-32 is checked as named.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
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


# --- Hugging Face Hub files without the Hub ----------------------------------------------------
# Each case runs in a child process: huggingface_hub and transformers read HF_HOME and
# HF_ENDPOINT when they are imported.

REPO = Path(__file__).resolve().parents[1]
SIGLIP = "ViT-B-16-SigLIP"
SIGLIP_REPO = "timm/ViT-B-16-SigLIP"
B32_LAION = "ViT-B-32/laion2b_s34b_b79k"
B32_LAION_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
FAIL_FAST_S = 2.0  # the requirement: no Hub and no cache is an error within a second or two

# Runs each (job, arg) of the JSON list argv[1] and prints one JSON result per job, with its
# wall time. 'texts' encodes 'a cat' with the tokenizer of model arg in front of a stand-in text
# tower that returns the first 4 token ids; 'load' loads the encoder 'open_clip:arg'.
_HUB_CHILD = """
import json, sys, time
import open_clip  # before the clock starts: the bound is on waiting for the Hub, not imports
from engine.encoders import load_encoder
from engine.encoders.openclip import OpenClipEncoder
from engine.errors import EncoderError

class FirstTokenIds:
    def encode_text(self, tokens):
        return tokens[:, :4].float()

for job, arg in json.loads(sys.argv[1]):
    start = time.perf_counter()
    try:
        if job == "texts":
            enc = OpenClipEncoder(encoder_id="open_clip:" + arg + "/none", model_name=arg,
                                  model=FirstTokenIds(), preprocess=None, dim=4, device="cpu")
            out = {"rows": enc.encode_texts(["a cat"]).tolist()}
        else:
            out = {"id": load_encoder("open_clip:" + arg, device="cpu").id}
    except EncoderError as exc:
        out = {"error": str(exc)}
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out), flush=True)
"""


def _run_hub_child(jobs: list[tuple[str, str]], hf_home: Path, endpoint: str | None) -> list[dict]:
    """The results of ``jobs`` in a child with the cache ``hf_home`` and the Hub at ``endpoint``
    (None: the default, huggingface.co); no other Hugging Face setting is passed on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env["HF_HOME"] = str(hf_home)
    if endpoint is not None:
        env["HF_ENDPOINT"] = endpoint
    out = subprocess.run(
        [sys.executable, "-c", _HUB_CHILD, json.dumps(jobs)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def _huggingface_co_answers() -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=1).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def _unreachable_hub(kind: str) -> Iterator[str | None]:
    """An HF_ENDPOINT with no Hub behind it: a closed port, a port that accepts connections but
    never answers (a network that drops packets), or the default endpoint if this machine
    cannot reach it."""
    if kind == "default endpoint":
        if _huggingface_co_answers():
            pytest.skip("huggingface.co is reachable from here; the default-endpoint case needs no network")
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        if kind == "silent port":
            sock.listen(16)  # the kernel completes handshakes; nobody ever reads or answers
            yield f"http://127.0.0.1:{port}"
            return
    yield f"http://127.0.0.1:{port}"  # closed again: connections are refused


@pytest.fixture(scope="module", params=["closed port", "silent port", "default endpoint"])
def no_hub_results(request, tmp_path_factory) -> dict[str, dict]:
    """What a SigLIP tokenizer, ViT-B-32 laion weights and a Hugging Face text tower (roberta)
    give with an empty cache and no Hub."""
    pytest.importorskip("open_clip")
    jobs = {
        "tokenizer": ("texts", SIGLIP),
        "weights": ("load", B32_LAION),
        "text tower": ("load", "roberta-ViT-B-32/none"),
    }
    with _unreachable_hub(request.param) as endpoint:
        results = _run_hub_child(list(jobs.values()), tmp_path_factory.mktemp("hf"), endpoint)
    return dict(zip(jobs, results, strict=True))


@pytest.mark.parametrize("what", ["tokenizer", "weights", "text tower"])
def test_missing_hub_files_fail_fast(no_hub_results, what):
    result = no_hub_results[what]
    assert "error" in result and result["seconds"] < FAIL_FAST_S, result


def test_missing_hub_files_say_where_to_get_them(no_hub_results):
    tokenizer, weights, tower = (no_hub_results[k]["error"] for k in ("tokenizer", "weights", "text tower"))
    assert re.search(
        rf"tokenizer of {SIGLIP} is not in the local Hugging Face cache \(.+\) and cannot be "
        rf"downloaded from the Hugging Face repo {SIGLIP_REPO} \(.+\)\. Run once with network access "
        r"to fill the cache, or set HF_HOME .*; image encoding works without it$",
        tokenizer,
    )
    assert re.search(
        rf"weights {B32_LAION} are not in the local cache \(.+\) and could not be downloaded from "
        rf"the Hugging Face repo {B32_LAION_REPO} \(.+\)\. .*on a machine with network access "
        rf"\(HF_HOME.*'open_clip:{B32_LAION}@/path/to/checkpoint.pth'",
        weights,
    )
    assert re.search(r"config of roberta-ViT-B-32 is not in the local .* repo roberta-base .*HF_HOME", tower)


def _tokenizer_files() -> dict[str, bytes]:
    """A tiny stand-in for a Hub tokenizer repo: 'a' and 'cat' are tokens 3 and 4, padding is 0."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "a": 3, "cat": 4}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    }
    return {
        "tokenizer.json": tok.to_str().encode(),
        "tokenizer_config.json": json.dumps(config).encode(),
        "config.json": b"{}",  # transformers reads a model config before the tokenizer's
    }


@contextlib.contextmanager
def _fake_hub(files: dict[str, bytes]) -> Iterator[tuple[str, list[str]]]:
    """A local Hub serving ``files`` ('org/repo/resolve/main/name' -> bytes) and 404 for anything
    else; yields its URL and the list of requests it gets ('HEAD /path')."""
    requests: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, body: bool) -> None:
            path = self.path.split("?")[0]
            requests.append(f"{self.command} {path}")
            data = files.get(path.lstrip("/"))
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            self.send_header("X-Repo-Commit", "1" * 40)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


def test_hub_tokenizer_downloads_when_the_hub_answers_then_loads_without_it(tmp_path):
    """A reachable Hub is used as before: the tokenizer downloads into the empty cache and missing
    weights are asked for (the download, not the probe, reports them); afterwards the cached
    tokenizer loads with the Hub gone."""
    pytest.importorskip("open_clip")
    files = {f"{SIGLIP_REPO}/resolve/main/{name}": data for name, data in _tokenizer_files().items()}
    cat = [[0.6, 0.8, 0.0, 0.0]]  # token ids 3, 4, 0, 0, L2-normalised
    with _fake_hub(files) as (endpoint, requests):
        online = _run_hub_child([("texts", SIGLIP), ("load", B32_LAION)], tmp_path, endpoint)
    np.testing.assert_allclose(online[0]["rows"], cat, atol=1e-6)
    assert f"GET /{SIGLIP_REPO}/resolve/main/tokenizer.json" in requests
    assert "could not be downloaded" in online[1]["error"] and "unreachable" not in online[1]["error"]
    assert any(r.startswith(f"HEAD /{B32_LAION_REPO}/resolve/main/") for r in requests)
    with _unreachable_hub("closed port") as endpoint:
        (offline,) = _run_hub_child([("texts", SIGLIP)], tmp_path, endpoint)
    np.testing.assert_allclose(offline["rows"], cat, atol=1e-6)


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
