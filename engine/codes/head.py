"""The head: a small MLP that maps encoder embeddings (e.g. 512-d) to 32-d, L2-normalised.

Two ways to train it, both with the KoLeo regulariser that spreads the outputs over the sphere
so that 8-bit quantization keeps neighbourhoods (the paper's Table 1):

* :func:`train_contrastive` -- image-caption pairs, the CLIP loss between the heads' outputs;
* :func:`train_distill` -- no captions: keep the 32-d similarity structure faithful to the
  full-dimension one, for image-image pairs and image-prompt pairs over a prompt vocabulary.

:func:`fit_pca` is the baseline. A trained head is a plain :class:`Head` of numpy arrays, applied
without torch, serialised to bytes with a sha256 checksum so a catalog can store it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import HeadError

DEFAULT_OUT_DIM = 32
DEFAULT_HIDDEN = 512
DEFAULT_KOLEO = 0.3
# Rows per matrix product in Head.apply; callers that apply a head in pieces (for progress) use
# the same, so their outputs are bit-identical to one call's.
APPLY_BATCH_ROWS = 65536


@dataclasses.dataclass(frozen=True)
class Head:
    """A fitted head. ``kind`` is ``"mlp"`` or ``"pca"``.

    mlp: ``y = normalise(gelu(x @ w1 + b1) @ w2 + b2 + x @ ws)`` (tanh GELU, as in training).
    pca: ``y = normalise((x - mean) @ components)``.
    ``params`` maps names to float32 arrays; ``info`` records how it was trained.
    """

    kind: str
    in_dim: int
    out_dim: int
    params: dict[str, np.ndarray]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        # One memory layout for every copy, so that a head and its round trip through bytes
        # take the same BLAS path and give bit-identical outputs.
        object.__setattr__(
            self,
            "params",
            {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(self.params.items())},
        )

    def apply(self, x: np.ndarray, batch_rows: int = APPLY_BATCH_ROWS) -> np.ndarray:
        """float (n, in_dim) -> float32 (n, out_dim), rows L2-normalised."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise HeadError(f"head expects (n, {self.in_dim}) embeddings, got shape {x.shape}")
        out = np.empty((x.shape[0], self.out_dim), dtype=np.float32)
        p = self.params
        for s in range(0, x.shape[0], batch_rows):
            xb = x[s : s + batch_rows]
            if self.kind == "pca":
                y = (xb - p["mean"]) @ p["components"]
            else:
                h = _gelu_tanh(xb @ p["w1"] + p["b1"])
                y = h @ p["w2"] + p["b2"] + xb @ p["ws"]
            out[s : s + batch_rows] = _normalise(y)
        return out

    def to_bytes(self) -> bytes:
        """An npz blob holding the parameters and a JSON header; stable for equal heads."""
        buf = io.BytesIO()
        header = json.dumps(
            {"kind": self.kind, "in_dim": self.in_dim, "out_dim": self.out_dim, "info": self.info},
            sort_keys=True,
        )
        np.savez(
            buf,
            __header__=np.frombuffer(header.encode(), dtype=np.uint8),
            **{k: np.ascontiguousarray(v, dtype=np.float32) for k, v in sorted(self.params.items())},
        )
        return buf.getvalue()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, blob: bytes) -> Head:
        try:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                header = json.loads(bytes(z["__header__"]).decode())
                params = {k: z[k].astype(np.float32) for k in z.files if k != "__header__"}
        except Exception as e:  # zipfile, json and key errors all mean the same thing here
            raise HeadError(f"stored head is unreadable ({type(e).__name__}: {e}); train it again") from None
        return cls(
            header["kind"], int(header["in_dim"]), int(header["out_dim"]), params, header.get("info", {})
        )


def _normalise(y: np.ndarray) -> np.ndarray:
    return (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


# -- PCA baseline -------------------------------------------------------------------------------
def fit_pca(x: np.ndarray, out_dim: int = DEFAULT_OUT_DIM) -> Head:
    """PCA to ``out_dim`` dims, then L2 normalisation. x: float (n, d) with n > out_dim."""
    x = _check_embeddings(x, out_dim)
    mean = x.mean(axis=0, dtype=np.float64)
    # The covariance route is exact and cheap for d of a few hundred, whatever n is.
    cov = np.cov((x - mean).T.astype(np.float64))
    vals, vecs = np.linalg.eigh(cov)
    comp = vecs[:, np.argsort(vals)[::-1][:out_dim]]
    comp *= np.sign(comp[np.argmax(np.abs(comp), axis=0), np.arange(out_dim)])  # deterministic signs
    return Head(
        "pca",
        x.shape[1],
        out_dim,
        {"mean": mean.astype(np.float32), "components": comp.astype(np.float32)},
        {"method": "pca", "rows": int(x.shape[0])},
    )


def _check_embeddings(x: np.ndarray, out_dim: int, min_rows: int | None = None) -> np.ndarray:
    """x as float32 (n, d), checked; ``min_rows`` defaults to ``out_dim + 1``, what PCA needs."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise HeadError(f"embeddings must be a 2-d array, got shape {x.shape}")
    if (
        isinstance(out_dim, bool)
        or not isinstance(out_dim, (int, np.integer))
        or not 1 <= out_dim <= x.shape[1]
    ):
        raise HeadError(f"out_dim must be an integer in 1..{x.shape[1]}, got {out_dim!r}")
    min_rows = out_dim + 1 if min_rows is None else min_rows
    if x.shape[0] < min_rows:
        raise HeadError(
            f"need more than {min_rows - 1} embeddings to fit a {out_dim}-d head, got {x.shape[0]}"
        )
    if not np.isfinite(x).all():
        raise HeadError("embeddings contain NaN or infinite values")
    return x


# -- torch training -----------------------------------------------------------------------------
def koleo_loss(y):
    """KoLeo regulariser: ``-mean_i log(min_{j != i} ||y_i - y_j||)`` over a batch y (n, d)."""
    import torch

    d = torch.cdist(y, y)
    d = d + torch.eye(len(y), device=y.device, dtype=y.dtype) * 1e6
    return -torch.log(d.min(dim=1).values + 1e-8).mean()


def _mlp(in_dim: int, out_dim: int, hidden: int):
    import torch

    class _HeadNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = torch.nn.Linear(in_dim, hidden)
            self.fc2 = torch.nn.Linear(hidden, out_dim)
            # A linear skip starts the head near a projection and lets the MLP learn the rest.
            self.skip = torch.nn.Linear(in_dim, out_dim, bias=False)

        def forward(self, x):
            h = torch.nn.functional.gelu(self.fc1(x), approximate="tanh")
            return torch.nn.functional.normalize(self.fc2(h) + self.skip(x), dim=1)

    return _HeadNet()


def _export(net, kind_info: dict) -> Head:
    sd = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    params = {
        "w1": sd["fc1.weight"].T.copy(),
        "b1": sd["fc1.bias"],
        "w2": sd["fc2.weight"].T.copy(),
        "b2": sd["fc2.bias"],
        "ws": sd["skip.weight"].T.copy(),
    }
    return Head("mlp", params["w1"].shape[0], params["w2"].shape[1], params, kind_info)


# A small catalog is one batch an epoch: 10 epochs of up to 512 images are 10 steps, and
# OneCycleLR's 10% warm-up needs some steps to exist (below 20 it divides by zero). Training
# runs at least this many steps, a fraction of a second on so few rows.
MIN_TRAIN_STEPS = 100


def train_steps(n_rows: int, epochs: int, batch_size: int) -> int:
    """Optimiser steps of :func:`train_contrastive` and :func:`train_distill` on ``n_rows`` rows."""
    bs = max(1, min(batch_size, n_rows))
    return max(epochs * math.ceil(n_rows / bs), 1, MIN_TRAIN_STEPS)


def _train_loop(
    net,
    params,
    step: Callable,
    n_steps: int,
    lr: float,
    seed: int,
    log: Callable | None,
    progress: Callable[[int, int], None] | None,
):
    import torch

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=n_steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed)
    for i in range(n_steps):
        loss, parts = step(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (i % 200 == 0 or i == n_steps - 1):
            log({"step": i, "loss": loss.item(), **{k: v.item() for k, v in parts.items()}})
        if progress is not None:
            progress(i + 1, n_steps)


def train_contrastive(
    images: np.ndarray,
    texts: np.ndarray,
    *,
    out_dim: int = DEFAULT_OUT_DIM,
    hidden: int = DEFAULT_HIDDEN,
    koleo: float = DEFAULT_KOLEO,
    epochs: int = 10,
    batch_size: int = 512,
    lr: float = 2e-3,
    seed: int = 0,
    log: Callable[[dict], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Head:
    """Train on image-caption pairs: images[i] goes with texts[i], both float (n, d).

    One shared head maps both modalities (CLIP embeddings share a space); the loss is the
    symmetric CLIP loss with a learned temperature, plus ``koleo`` times KoLeo on the images.
    ``progress`` is called ``(steps done, train_steps(n, epochs, batch_size))`` after each step.
    """
    import torch

    images = _check_embeddings(images, out_dim, min_rows=1)
    texts = np.asarray(texts, dtype=np.float32)
    if texts.shape != images.shape:
        raise HeadError(f"texts {texts.shape} must match images {images.shape}, one caption per image")
    torch.manual_seed(seed)
    net = _mlp(images.shape[1], out_dim, hidden)
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    xi, xt = torch.from_numpy(images), torch.from_numpy(texts)
    n = len(xi)
    bs = min(batch_size, n)

    def step(gen):
        idx = torch.randint(0, n, (bs,), generator=gen)
        a, b = net(xi[idx]), net(xt[idx])
        logits = logit_scale.exp().clamp(max=100) * a @ b.T
        target = torch.arange(bs)
        clip = (
            torch.nn.functional.cross_entropy(logits, target)
            + torch.nn.functional.cross_entropy(logits.T, target)
        ) / 2
        kl = koleo_loss(a)
        return clip + koleo * kl, {"clip": clip, "koleo": kl}

    _train_loop(
        net,
        [*net.parameters(), logit_scale],
        step,
        train_steps(n, epochs, batch_size),
        lr,
        seed,
        log,
        progress,
    )
    return _export(
        net,
        {
            "method": "contrastive",
            "koleo": koleo,
            "epochs": epochs,
            "seed": seed,
            "hidden": hidden,
            "rows": int(n),
        },
    )


def train_distill(
    images: np.ndarray,
    prompts: np.ndarray | None = None,
    *,
    out_dim: int = DEFAULT_OUT_DIM,
    hidden: int = DEFAULT_HIDDEN,
    koleo: float = DEFAULT_KOLEO,
    epochs: int = 10,
    batch_size: int = 512,
    lr: float = 2e-3,
    temperature: float = 0.05,
    seed: int = 0,
    prompt_prompt: bool = False,
    log: Callable[[dict], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Head:
    """Train without captions by similarity distillation.

    For a batch of images, the softmax over full-dimension cosine similarities (to the other
    images, and to every prompt in ``prompts``) is the target for the softmax over the 32-d
    ones (KL divergence): neighbour rankings and text-search rankings are what must survive.
    ``koleo`` times KoLeo on the images' outputs spreads them for quantization.
    ``prompt_prompt`` adds the same target for the prompts' similarities among themselves: a
    catalog of a few images says little about the rest of the embedding space, the prompts'
    geometry does (:data:`engine.codes.pipeline.SMALL_CATALOG_ROWS`).
    images: float (n, d); prompts: float (m, d) text embeddings, or None. ``progress`` as for
    :func:`train_contrastive`.
    """
    import torch

    images = _check_embeddings(images, out_dim, min_rows=1)
    torch.manual_seed(seed)
    net = _mlp(images.shape[1], out_dim, hidden)
    xi = torch.nn.functional.normalize(torch.from_numpy(images), dim=1)
    xp = None
    if prompts is not None and len(prompts):
        prompts = np.asarray(prompts, dtype=np.float32)
        if prompts.ndim != 2 or prompts.shape[1] != images.shape[1]:
            raise HeadError(f"prompts must be (m, {images.shape[1]}), got {prompts.shape}")
        xp = torch.nn.functional.normalize(torch.from_numpy(prompts), dim=1)
    n = len(xi)
    bs = min(batch_size, n)
    # The 32-d space has its own similarity scale; learn it rather than guess it.
    scale = torch.nn.Parameter(torch.tensor(1.0 / temperature))
    eye = None
    prompt_prompt = bool(prompt_prompt) and xp is not None
    eye_p = torch.eye(len(xp)) * 1e4 if prompt_prompt else None

    def kl(full, small):
        return torch.nn.functional.kl_div(
            torch.log_softmax(small, dim=1),
            torch.log_softmax(full / temperature, dim=1),
            log_target=True,
            reduction="batchmean",
        )

    def step(gen):
        nonlocal eye
        idx = torch.randint(0, n, (bs,), generator=gen)
        x = xi[idx]
        y = net(x)
        if eye is None or eye.shape[0] != len(idx):
            eye = torch.eye(len(idx)) * 1e4
        # Self-similarity would dominate both softmaxes; mask it out.
        loss_ii = kl(x @ x.T - eye * temperature, scale * (y @ y.T) - eye)
        parts = {"image_image": loss_ii}
        loss = loss_ii
        if xp is not None:
            yp = net(xp)
            loss_ip = kl(x @ xp.T, scale * (y @ yp.T))
            # and in the text-search direction: for each prompt, which images rank first
            loss_pi = kl(xp @ x.T, scale * (yp @ y.T))
            parts.update(image_prompt=loss_ip, prompt_image=loss_pi)
            loss = loss + loss_ip + loss_pi
            if prompt_prompt:
                loss_pp = kl(xp @ xp.T - eye_p * temperature, scale * (yp @ yp.T) - eye_p)
                parts["prompt_prompt"] = loss_pp
                loss = loss + loss_pp
        k = koleo_loss(y)
        parts["koleo"] = k
        return loss + koleo * k, parts

    _train_loop(
        net, [*net.parameters(), scale], step, train_steps(n, epochs, batch_size), lr, seed, log, progress
    )
    info = {
        "method": "distill",
        "koleo": koleo,
        "epochs": epochs,
        "seed": seed,
        "hidden": hidden,
        "rows": int(n),
        "prompts": 0 if xp is None else int(len(xp)),
        "temperature": temperature,
    }
    if prompt_prompt:  # recorded only when used, so heads trained without it keep their bytes
        info["prompt_prompt"] = True
    return _export(net, info)
