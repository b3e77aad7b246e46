"""The open_clip encoder: ``open_clip:MODEL/PRETRAINED``, ``MODEL/none`` or ``MODEL[/BASE]@CHECKPOINT``.

* ``MODEL/PRETRAINED`` -- a model and pretrained tag that open_clip knows; the weights come from
  the Hugging Face cache, or are downloaded into it.
* ``MODEL/none`` -- random weights (seeded, so the same id always gives the same model).
* ``MODEL/BASE@/path/to/checkpoint.pth`` -- the architecture of ``MODEL`` as the tag ``BASE``
  configures it (QuickGELU, image mean/std, resize mode), built without fetching ``BASE``'s
  weights, then the checkpoint's full state dict loaded with ``strict=True``. ``MODEL@/path``
  uses the plain architecture. This is how retrieval-optimised MCIP checkpoints load, e.g.
  ``open_clip:ViT-L-14-336/openai@/models/mcip-vit-l-14-336.pth``.

The canonical id of a checkpoint encoder carries the file's absolute path and the first 16 hex
digits of its sha256 (``...@/models/x.pth#sha256:0123456789abcdef``); loading such an id refuses
a file whose contents have changed, because the catalog's embeddings came from the old weights.

Files from the Hugging Face Hub (a tag's weights, a Hub tokenizer such as SigLIP's, the config of
a Hugging Face text tower) are read from the local cache without network access when they are
there. Otherwise the Hub is probed once, for at most :data:`HUB_PROBE_TIMEOUT_S`, before
anything is fetched, so an offline machine fails at once with an :class:`EncoderError` that says
how to fill the cache, rather than after huggingface_hub's minute of retries.

Only :func:`engine.encoders.load_encoder` imports this module; torch and open_clip are imported
when an encoder is built, so a missing install is an :class:`EncoderError`, not an ImportError.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import EncoderError
from .base import DEFAULT_BATCH_SIZE, choose_device, l2_normalise

if TYPE_CHECKING:  # pragma: no cover
    import torch

KIND = "open_clip"
NO_WEIGHTS = "none"
SHA256_PREFIX_LEN = 16
RANDOM_INIT_SEED = 0
# Half precision only where open_clip's manual mixed precision is the usual path; cpu and mps
# stay float32.
PRECISION_BY_DEVICE_TYPE = {"cuda": "fp16"}
# The bound of the one look at the Hub before an uncached file is fetched. Without it,
# huggingface_hub retries the lookup of an uncached file for about a minute (five tries with
# backoff, per file): with no network and an empty cache, a SigLIP tokenizer took 46 s to fail and
# the ViT-B-32/laion2b_s34b_b79k weights 54 s; test_missing_hub_files_fail_fast in
# tests/test_openclip_encoder.py times the same failures now. 1 s covers DNS, TCP, TLS and one
# HEAD at ~250 ms round trips; a slower link sets HF_HUB_ETAG_TIMEOUT, which the probe then uses.
HUB_PROBE_TIMEOUT_S = 1.0
_SHA_SUFFIX = re.compile(rf"^(?P<path>.+)#sha256:(?P<sha>[0-9a-f]{{{SHA256_PREFIX_LEN}}})$")
_LOCAL_WEIGHTS_HINT = (
    "To work offline, either fill the Hugging Face cache once on a machine with network access "
    "(HF_HOME or HF_HUB_CACHE select the cache; HF_HUB_OFFLINE=1 then stops all network attempts), "
    "or download the checkpoint yourself and name it in the id: "
    "'open_clip:{model}/{tag}@/path/to/checkpoint.pth' builds the architecture of {model}/{tag} "
    "and loads the file's weights."
)


# --- the spec -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenClipSpec:
    """A parsed ``open_clip:`` spec. ``tag`` is a pretrained tag or None (random or checkpoint
    weights); ``checkpoint`` an absolute path or None; ``sha256`` the expected hash prefix if the
    spec carried one."""

    model: str
    tag: str | None
    checkpoint: str | None = None
    sha256: str | None = None

    def encoder_id(self, sha256: str | None = None) -> str:
        """The canonical id; a checkpoint encoder needs the file's hash prefix ``sha256``."""
        head = f"{KIND}:{self.model}" + (f"/{self.tag}" if self.tag else "")
        if self.checkpoint is None:
            return head if self.tag else f"{head}/{NO_WEIGHTS}"
        return f"{head}@{self.checkpoint}#sha256:{sha256}"


def parse_spec(spec: str) -> OpenClipSpec:
    """``MODEL/PRETRAINED``, ``MODEL/none``, ``MODEL/BASE@PATH`` or ``MODEL@PATH`` (``PATH`` may end
    in ``#sha256:<16 hex>``) to an :class:`OpenClipSpec`. Tags are normalised as open_clip does
    (lower case, '-' to '_'); relative paths become absolute."""
    head, at, path = spec.partition("@")  # model names and tags never contain '@'; paths may
    model, slash, tag = head.partition("/")
    if not model or (slash and not tag) or (not slash and not at):
        raise EncoderError(
            f"open_clip spec {spec!r} is not of the form MODEL/PRETRAINED, MODEL/none or "
            f"MODEL[/BASE]@/path/to/checkpoint.pth (e.g. 'open_clip:ViT-B-32/laion2b_s34b_b79k')"
        )
    tag = tag.lower().replace("-", "_") if tag else None
    if tag == NO_WEIGHTS:
        tag = None
    if not at:
        return OpenClipSpec(model, tag)
    if not path:
        raise EncoderError(f"open_clip spec {spec!r} has '@' but no checkpoint path after it")
    sha = None
    match = _SHA_SUFFIX.match(path)
    if match:
        path, sha = match["path"], match["sha"]
    return OpenClipSpec(model, tag, os.path.abspath(os.path.expanduser(path)), sha)


# --- open_clip lookups --------------------------------------------------------------------------


def _import_open_clip() -> ModuleType:
    """The open_clip module, or an EncoderError that says what to install."""
    try:
        import open_clip
        import torch  # noqa: F401  (open_clip needs it; name it in the error if it is missing)
        import torchvision  # noqa: F401
    except ImportError as exc:
        raise EncoderError(
            f"the open_clip encoder needs torch, torchvision and open_clip ({exc.name or exc} is missing); "
            "install them with 'pip install open_clip_torch torchvision'"
        ) from exc
    return open_clip


def _check_model(oc: ModuleType, model: str) -> dict[str, Any]:
    """The open_clip model config of ``model``, or an EncoderError suggesting close names."""
    names = oc.list_models()
    # Only built-in names: open_clip's 'hf-hub:' and 'local-dir:' schemas fetch configs from
    # elsewhere, and a '/' in them would collide with the spec's MODEL/PRETRAINED split.
    if model not in names:
        close = difflib.get_close_matches(model, names, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise EncoderError(
            f"open_clip has no built-in model {model!r}.{hint} See all model names with "
            "\"python -c 'import open_clip; print(open_clip.list_models())'\""
        )
    return oc.get_model_config(model)


def _check_tag(oc: ModuleType, model: str, tag: str | None) -> dict[str, Any]:
    """The pretrained config of ``model``/``tag`` ({} for no tag), or an EncoderError listing tags."""
    if tag is None:
        return {}
    cfg = oc.get_pretrained_cfg(model, tag)
    if not cfg:
        tags = oc.list_pretrained_tags_by_model(model)
        known = ", ".join(tags) if tags else "(none: use random weights or a checkpoint)"
        raise EncoderError(
            f"open_clip has no pretrained tag {tag!r} for {model}; known tags: {known}. Use "
            f"'{model}/{NO_WEIGHTS}' for random weights or '{model}[/BASE]@/path/to/checkpoint.pth' "
            "for a local checkpoint"
        )
    return cfg


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# --- the Hugging Face cache and Hub -----------------------------------------------------------


def _hub_cache() -> str:
    """The Hugging Face cache directory that downloads go to and lookups read."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _cached_hub_file(repo_id: str, filenames: Iterable[str]) -> str | None:
    """Local path of the first of ``filenames`` cached from the main revision of the Hub model
    repo ``repo_id``, or None. Never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        path = try_to_load_from_cache(repo_id, filename)
        if isinstance(path, str):  # not None, nor the marker of a file the Hub said is absent
            return path
    return None


def _hub_unreachable(repo_id: str, filename: str) -> str | None:
    """None if the Hub answers one HEAD request for ``filename`` in ``repo_id`` with any status (a
    missing or gated file is the download's to report), else why it cannot be reached. Returns
    within :data:`HUB_PROBE_TIMEOUT_S` (or HF_HUB_ETAG_TIMEOUT, if set): the request runs in a
    daemon thread, because HTTP timeouts do not bound a hanging DNS lookup. It goes out bare
    through huggingface_hub's session (its proxies and certificates): huggingface_hub's own
    headers would first fetch a telemetry list from the Hub, for up to 3 s."""
    from huggingface_hub import constants, get_session, hf_hub_url

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    timeout = float(
        constants.HF_HUB_ETAG_TIMEOUT
        if constants.HF_HUB_ETAG_TIMEOUT != constants.DEFAULT_ETAG_TIMEOUT
        else HUB_PROBE_TIMEOUT_S
    )
    outcome: list[BaseException | None] = []

    def head() -> None:
        try:
            get_session().head(hf_hub_url(repo_id, filename), timeout=timeout)
        except Exception as exc:  # connection, DNS, TLS and proxy errors; any HTTP status is fine
            outcome.append(exc)
        else:
            outcome.append(None)

    probe = threading.Thread(target=head, name="hf-hub-probe", daemon=True)
    probe.start()
    probe.join(timeout)
    if not outcome:
        return (
            f"{constants.ENDPOINT} did not answer within {timeout:g} s; on a slow connection set "
            "HF_HUB_ETAG_TIMEOUT to more seconds"
        )
    if outcome[0] is None:
        return None
    return f"{constants.ENDPOINT} is unreachable: {_first_line(outcome[0])}"


def _not_cached_message(subject: str, repo_id: str, reason: str) -> str:
    """The error for Hub files that are neither cached nor downloadable; ``subject`` ends in its
    verb, e.g. 'the text tokenizer of ViT-B-16-SigLIP is'."""
    return (
        f"{subject} not in the local Hugging Face cache ({_hub_cache()}) and cannot be downloaded "
        f"from the Hugging Face repo {repo_id} ({reason}). Run once with network access to fill "
        "the cache, or set HF_HOME (or HF_HUB_CACHE) to a cache that has these files"
    )


def _hub_weights(tag_cfg: dict[str, Any]) -> tuple[str, list[str]] | None:
    """The Hub repo of a tag's weights and the file names open_clip tries there, in its order
    (a safetensors alternative first); None if the weights do not come from the Hub."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    hub = tag_cfg.get("hf_hub", "")
    if not hub or "file" in tag_cfg:
        return None
    # 'org/repo/file.bin', or 'org/repo/' for open_clip's default file name.
    repo_id, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        return repo_id, [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return repo_id, [os.path.splitext(filename)[0] + ".safetensors", filename]
    return repo_id, [filename]


def _fetch_pretrained(oc: ModuleType, spec: OpenClipSpec, tag_cfg: dict[str, Any]) -> str:
    """Path of the tag's weights file in the local cache: a cached file is used without network
    access; a missing one is downloaded if one probe finds the Hub, else refused at once."""
    hub = _hub_weights(tag_cfg)
    if hub is not None:
        repo_id, filenames = hub
        cached = _cached_hub_file(repo_id, filenames)
        if cached is not None:
            return cached
        unreachable = _hub_unreachable(repo_id, filenames[-1])
        if unreachable:
            raise EncoderError(
                f"the pretrained weights {spec.model}/{spec.tag} are not in the local cache "
                f"({_hub_cache()}) and could not be downloaded from the Hugging Face repo {repo_id} "
                f"({unreachable}). " + _LOCAL_WEIGHTS_HINT.format(model=spec.model, tag=spec.tag)
            )
    try:
        path = oc.download_pretrained(tag_cfg)
    except Exception as exc:  # hub, HTTP and cache errors all mean the same thing to the user
        raise EncoderError(
            f"the pretrained weights {spec.model}/{spec.tag} are not in the local cache and could not "
            f"be downloaded ({_first_line(exc)}). "
            + _LOCAL_WEIGHTS_HINT.format(model=spec.model, tag=spec.tag)
        ) from exc
    if not path:
        raise EncoderError(f"open_clip gives no download location for {spec.model}/{spec.tag}")
    return path


def _check_text_tower(model: str, model_cfg: dict[str, Any]) -> None:
    """Refuse at once a model whose Hugging Face text tower needs a config that is neither cached
    nor downloadable (building it fetches the config even without pretrained weights)."""
    repo_id = model_cfg["text_cfg"].get("hf_model_name")
    if not repo_id or _cached_hub_file(repo_id, ["config.json"]) is not None:
        return
    unreachable = _hub_unreachable(repo_id, "config.json")
    if unreachable:
        raise EncoderError(_not_cached_message(f"the text model config of {model} is", repo_id, unreachable))


# What transformers reads first for a tokenizer: if none of them is cached, nothing is.
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "config.json")


def _tokenizer_error(model: str, repo_id: str | None, exc: Exception) -> EncoderError:
    where = f" (Hugging Face repo {repo_id})" if repo_id else ""
    return EncoderError(
        f"the text tokenizer of {model}{where} is not available offline ({_first_line(exc)}). "
        "Fill the Hugging Face cache once with network access (HF_HOME or HF_HUB_CACHE select "
        "it; set HF_HUB_OFFLINE=1 afterwards); image encoding works without it"
    )


def _load_tokenizer(oc: ModuleType, model: str) -> Any:
    """open_clip's tokenizer for ``model``. One from the Hugging Face Hub (SigLIP's, the text
    towers') loads from the local cache without network access if it is there; otherwise it is
    downloaded, if one probe finds the Hub."""
    repo_id = oc.get_model_config(model)["text_cfg"].get("hf_tokenizer_name")
    # Only tried when something is cached: even a local-only load builds huggingface_hub's
    # request headers, which can wait 3 s for the Hub on a network that drops packets.
    if repo_id and _cached_hub_file(repo_id, _TOKENIZER_FILES) is not None:
        try:
            return oc.get_tokenizer(model, local_files_only=True)
        except OSError:  # transformers' error for a file that is not cached
            pass
        except Exception as exc:
            raise _tokenizer_error(model, repo_id, exc) from exc
    if repo_id and (unreachable := _hub_unreachable(repo_id, "tokenizer_config.json")):
        raise EncoderError(
            _not_cached_message(f"the text tokenizer of {model} is", repo_id, unreachable)
            + "; image encoding works without it"
        )
    try:
        return oc.get_tokenizer(model)
    except Exception as exc:  # HF tokenizers raise OSError, fsspec ones ClientError, ...
        raise _tokenizer_error(model, repo_id, exc) from exc


# --- checkpoints --------------------------------------------------------------------------------


def file_sha256(path: str, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of the file at ``path`` (read in chunks: checkpoints are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def _checkpoint_sha(spec: OpenClipSpec) -> str:
    """The hash prefix of the spec's checkpoint; refuses a missing or changed file."""
    path = spec.checkpoint
    if not os.path.isfile(path):
        raise EncoderError(f"checkpoint file {path} does not exist")
    sha = file_sha256(path)[:SHA256_PREFIX_LEN]
    if spec.sha256 is not None and spec.sha256 != sha:
        raise EncoderError(
            f"checkpoint {path} has changed: its sha256 starts {sha}, the encoder id expects "
            f"{spec.sha256}. Embeddings made with the old weights do not match the new ones; restore "
            "the original file, or re-embed the images with the new checkpoint"
        )
    return sha


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a plain state dict, or a dict holding one under
    ``state_dict``; a ``module.`` prefix (DistributedDataParallel) is removed. ``.safetensors``
    files are read with safetensors, everything else with ``torch.load(weights_only=True)``."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling, zip and format errors: the file is not a checkpoint
        raise EncoderError(
            f"checkpoint {path} is not a readable torch state dict ({_first_line(exc)}); save one with "
            "torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise EncoderError(f"checkpoint {path} holds {type(obj).__name__}, not a non-empty state dict")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise EncoderError(f"checkpoint {path} has entries that are not tensors: {_few(not_tensors)}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _match_logit_shapes(
    state_dict: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state_dict`` with ``logit_scale``/``logit_bias`` reshaped to the model's: open_clip
    versions differ in storing them as scalars or 1-element vectors (open_clip's loader does the
    same), and neither takes part in the embeddings."""
    fixed = dict(state_dict)
    for key in ("logit_scale", "logit_bias"):
        have, want = fixed.get(key), expected.get(key)
        if (
            have is not None
            and want is not None
            and have.shape != want.shape
            and have.numel() == want.numel()
        ):
            fixed[key] = have.reshape(want.shape)
    return fixed


def load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> None:
    """Load ``state_dict`` into ``model`` with ``strict=True``; mismatches name the keys."""
    expected = set(model.state_dict())
    missing = sorted(expected - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected)
    if missing or unexpected:
        parts = [f"missing keys {_few(missing)}"] if missing else []
        parts += [f"unexpected keys {_few(unexpected)}"] if unexpected else []
        raise EncoderError(
            f"checkpoint {what} does not fit the model: {'; '.join(parts)}. Is it a checkpoint of "
            "another architecture? The model name before '@' must be the one it was trained as"
        )
    state_dict = _match_logit_shapes(state_dict, model.state_dict())
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # same keys, different shapes
        lines = [ln.strip() for ln in str(exc).splitlines() if "size mismatch" in ln]
        detail = "; ".join(lines[:3]) or _first_line(exc)
        raise EncoderError(f"checkpoint {what} does not fit the model: {detail}") from exc


# --- building the model -------------------------------------------------------------------------


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns 'initialized randomly' after building without weights; here the weights
    load right after the build, or random ones were asked for with 'none'."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


@contextlib.contextmanager
def _quiet_random_init() -> Iterator[None]:
    root = logging.getLogger()
    quiet = _DropRandomInitWarning()
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def _build_model(
    oc: ModuleType, model: str, tag_cfg: dict[str, Any], device: str, precision: str
) -> tuple[torch.nn.Module, Any]:
    """The architecture of ``model`` as ``tag_cfg`` configures it, with seeded random weights, and
    open_clip's validation transform. Nothing is downloaded: open_clip would fetch a tag's weights
    even with ``load_weights=False``, so the tag's settings are passed as overrides instead."""
    import torch

    try:
        # Seeded in a forked RNG: 'MODEL/none' gives the same weights on every load, and the
        # caller's global RNG state is left alone.
        with torch.random.fork_rng(devices=[]), _quiet_random_init():
            torch.manual_seed(RANDOM_INIT_SEED)
            net, _, transform = oc.create_model_and_transforms(
                model,
                pretrained=None,
                precision=precision,
                device=device,
                # open_clip only warns when a tag's QuickGELU differs from the model config, and
                # e.g. the 'openai' weights are wrong without it.
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                image_mean=tag_cfg.get("mean"),
                image_std=tag_cfg.get("std"),
                image_interpolation=tag_cfg.get("interpolation"),
                image_resize_mode=tag_cfg.get("resize_mode"),
                pretrained_image=False,
                pretrained_text=False,
            )
    except Exception as exc:  # e.g. Hugging Face text towers need their config from the Hub
        raise EncoderError(
            f"could not build the open_clip model {model} ({_first_line(exc)}). If it needs files "
            "from the Hugging Face Hub, fill the cache once with network access (HF_HOME or "
            "HF_HUB_CACHE select it)"
        ) from exc
    return net.eval().requires_grad_(False), transform


def _load_pretrained(oc: ModuleType, net: torch.nn.Module, path: str, spec: OpenClipSpec) -> None:
    """Load a tag's cached weights file into ``net`` with open_clip's own loader, which knows the
    formats of its tags (safetensors, big_vision npz, older key layouts)."""
    try:
        oc.load_checkpoint(net, path, strict=True)
    except Exception as exc:
        raise EncoderError(
            f"the cached weights {path} for {spec.model}/{spec.tag} do not load "
            f"({_first_line(exc)}); delete the file so it is fetched again"
        ) from exc


# --- the encoder --------------------------------------------------------------------------------


class OpenClipEncoder:
    """An open_clip model behind the :class:`engine.encoders.Encoder` interface.

    Build one with :meth:`from_spec` (or ``load_encoder("open_clip:...")``). ``preprocess`` is
    open_clip's validation transform itself (not a bound method), so DataLoader workers pickle
    the transform and not the model. The tokenizer loads on the first :meth:`encode_texts` call:
    some (SigLIP's) come from the Hugging Face Hub, and ingestion never needs one.
    """

    def __init__(
        self,
        *,
        encoder_id: str,
        model_name: str,
        model: torch.nn.Module,
        preprocess: Any,
        dim: int,
        device: str,
        batch_size: int = DEFAULT_BATCH_SIZE,
        input_dtype: torch.dtype | None = None,
    ):
        self.id = encoder_id
        self.model_name = model_name
        self.model = model
        self.preprocess = preprocess
        self.dim = dim
        self.device = device
        self.batch_size = batch_size
        self.input_dtype = input_dtype
        self.tokenizer_: Any = None

    @classmethod
    def from_spec(
        cls, spec: str, device: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> OpenClipEncoder:
        """The encoder for ``spec`` (the part of the id after ``open_clip:``; see the module
        docstring). Names and tags are checked, and the weights read or fetched, before the model
        is built, so a bad id or file fails fast."""
        parsed = parse_spec(spec)
        oc = _import_open_clip()
        import torch

        model_cfg = _check_model(oc, parsed.model)
        tag_cfg = _check_tag(oc, parsed.model, parsed.tag)
        sha, state, tag_path = None, None, None
        if parsed.checkpoint is not None:
            sha = _checkpoint_sha(parsed)
            state = read_state_dict(parsed.checkpoint)
        elif parsed.tag is not None:
            tag_path = _fetch_pretrained(oc, parsed, tag_cfg)
        _check_text_tower(parsed.model, model_cfg)
        device = choose_device(device)
        precision = PRECISION_BY_DEVICE_TYPE.get(torch.device(device).type, "fp32")
        net, transform = _build_model(oc, parsed.model, tag_cfg, device, precision)
        if state is not None:
            load_strict(net, state, parsed.checkpoint)
        elif tag_path is not None:
            _load_pretrained(oc, net, tag_path, parsed)
        return cls(
            encoder_id=parsed.encoder_id(sha),
            model_name=parsed.model,
            model=net,
            preprocess=transform,
            dim=int(model_cfg["embed_dim"]),
            device=device,
            batch_size=batch_size,
            input_dtype=oc.get_input_dtype(precision),
        )

    def __repr__(self) -> str:
        return f"OpenClipEncoder({self.id!r}, device={self.device!r}, batch_size={self.batch_size})"

    def _pixels(self, batch: Any) -> Iterator[torch.Tensor]:
        """Preprocessed float32 (b, C, H, W) CPU chunks of at most ``batch_size`` images; PIL
        images are preprocessed one chunk at a time so a long list never sits in memory as pixels."""
        import torch
        from PIL import Image

        if isinstance(batch, torch.Tensor):
            if batch.dim() != 4:
                raise ValueError(f"preprocessed images must be (n, C, H, W), got {tuple(batch.shape)}")
            for start in range(0, len(batch), self.batch_size):
                yield batch[start : start + self.batch_size]
            return
        if isinstance(batch, Image.Image):
            raise TypeError("encode_images expects a list of PIL images, not a single image")
        items = list(batch)
        for start in range(0, len(items), self.batch_size):
            yield torch.stack([self.preprocess(im) for im in items[start : start + self.batch_size]])

    def encode_images(self, batch: Any) -> np.ndarray:
        """A list of PIL images, or a stacked tensor of preprocessed ones (n, C, H, W), to float32
        (n, dim), rows L2-normalised."""
        import torch

        out = [np.zeros((0, self.dim), dtype=np.float32)]
        with torch.inference_mode():
            for pixels in self._pixels(batch):
                x = pixels.to(self.device, dtype=self.input_dtype)
                out.append(self.model.encode_image(x).float().cpu().numpy())
        return l2_normalise(np.concatenate(out))

    def _tokenizer(self) -> Any:
        """open_clip's tokenizer for the model, loaded once."""
        if self.tokenizer_ is None:
            self.tokenizer_ = _load_tokenizer(_import_open_clip(), self.model_name)
        return self.tokenizer_

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts to float32 (n, dim), rows L2-normalised. Texts longer than the model's context
        (77 tokens for CLIP) are truncated by the tokenizer."""
        import torch

        if isinstance(texts, str):
            raise TypeError("encode_texts expects a list of strings, not a single string")
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_texts expects a list of strings")
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        if texts:
            tokenize = self._tokenizer()
            with torch.inference_mode():
                for start in range(0, len(texts), self.batch_size):
                    tokens = tokenize(texts[start : start + self.batch_size]).to(self.device)
                    out.append(self.model.encode_text(tokens).float().cpu().numpy())
        return l2_normalise(np.concatenate(out))


__all__ = ["OpenClipEncoder", "OpenClipSpec", "file_sha256", "load_strict", "parse_spec", "read_state_dict"]
