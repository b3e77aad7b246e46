"""Reproduce the paper's Table 1 on Fashion-MNIST; prints JSON.

For each encoder (the demo encoder; open_clip ViT-B-32 with random weights) and each reduction
to 32 dims (PCA; head without KoLeo; head with KoLeo), it reports:

* Recall@1/10/100: the overlap of each test image's k nearest neighbours computed on the
  8-bit codes with those computed on the same 32-d features before quantization (the paper's
  protocol: the reference is the reduced features, not the full embedding);
* zero-shot accuracy: each test image's nearest class prompt, with both sides reduced and
  quantized (and, for reference, in the full embedding space).

Each reduction is quantized two ways in the same run: the per-dim affine map fitted on
quantiles with rounding, and the original system's single global map with truncation.
The heads train by similarity distillation on the 60k training images against the generic
prompt vocabulary (no class names), and are evaluated on the 10k test images.

    python scripts/eval_quantization.py [--vit-images 5000] [--epochs 10] [--queries 2000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from engine.codes import head as head_mod
from engine.codes import quantize
from engine.codes.prompts import vocabulary
from engine.datasets.demodata import DEBIAN_ROOT, read_split
from engine.encoders import load_encoder

KS = (1, 10, 100)


def knn(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices (q, k) of the k nearest rows of x (squared L2) to x[queries], excluding itself."""
    sq = (x.astype(np.float64) ** 2).sum(axis=1)
    out = np.empty((len(queries), k), dtype=np.int64)
    for s in range(0, len(queries), 256):
        q = queries[s : s + 256]
        d = sq[q, None] + sq[None, :] - 2.0 * (x[q].astype(np.float64) @ x.T.astype(np.float64))
        d[np.arange(len(q)), q] = np.inf
        part = np.argpartition(d, k, axis=1)[:, :k]
        order = np.take_along_axis(d, part, axis=1).argsort(axis=1, kind="stable")
        out[s : s + 256] = np.take_along_axis(part, order, axis=1)
    return out


def recall_at(ref: np.ndarray, got: np.ndarray, k: int) -> float:
    """Mean fraction of the reference top-k found in the top-k of ``got``."""
    return float(
        np.mean(
            [len(np.intersect1d(r[:k], g[:k], assume_unique=True)) / k for r, g in zip(ref, got, strict=True)]
        )
    )


def zero_shot(img: np.ndarray, cls: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(img @ cls.T, axis=1) == labels))


def class_embeddings(encoder) -> np.ndarray:
    """The demo encoder's zero-shot class prototypes (its prompt names and templates), so the
    full-dimension accuracy here is the one its build script reports."""
    from engine.encoders.demo import class_text_embeddings

    return class_text_embeddings(encoder)


def evaluate_reduction(name, head, train, test, labels, cls_full, queries, rng) -> dict:
    feats_train = head.apply(train)
    feats = head.apply(test)
    cls = head.apply(cls_full)
    ref = knn(feats, queries, max(KS))
    out = {"reduction": name, "zero_shot_unquantized": zero_shot(feats, cls, labels), "quantizers": {}}
    for qname, fit in (
        ("affine_quantile_round", quantize.fit_affine),
        ("global_truncate", quantize.fit_global),
    ):
        q = fit(feats_train)
        codes = q.encode(feats)
        dec = q.decode(codes)
        got = knn(dec, queries, max(KS))
        out["quantizers"][qname] = {
            **{f"recall@{k}": recall_at(ref, got, k) for k in KS},
            "zero_shot": zero_shot(dec, q.decode(q.encode(cls)), labels),
            "code_usage": quantize.code_usage(codes),
        }
    return out


def evaluate_encoder(enc_id: str, n_train: int | None, n_test: int | None, args, rng) -> dict:
    t0 = time.perf_counter()
    enc = load_encoder(enc_id, batch_size=args.batch_size)
    xtr, ytr = read_split(DEBIAN_ROOT, "train")
    xte, yte = read_split(DEBIAN_ROOT, "test")
    ytr, yte = ytr.astype(np.int64), yte.astype(np.int64)
    if n_train is not None:
        pick = np.sort(rng.choice(len(xtr), n_train, replace=False))
        xtr, ytr = xtr[pick], ytr[pick]
    if n_test is not None:
        pick = np.sort(rng.choice(len(xte), n_test, replace=False))
        xte, yte = xte[pick], yte[pick]
    from PIL import Image

    def embed(arr):
        out = []
        for s in range(0, len(arr), 1024):
            out.append(enc.encode_images([Image.fromarray(a) for a in arr[s : s + 1024]]))
        return np.concatenate(out)

    train, test = embed(xtr), embed(xte)
    t1 = time.perf_counter()
    cls_full = class_embeddings(enc)
    prompts = enc.encode_texts(vocabulary())
    queries = np.sort(rng.choice(len(test), min(args.queries, len(test)), replace=False))
    result = {
        "encoder": enc_id,
        "train_images": len(train),
        "test_images": len(test),
        "dim": int(train.shape[1]),
        "time_embed_s": t1 - t0,
        "zero_shot_full_dim": zero_shot(test, cls_full, yte),
        "reductions": [],
    }
    heads = [("pca", lambda: head_mod.fit_pca(train))]
    for name, lam in (("head", 0.0), ("head+koleo", args.koleo)):
        heads.append(
            (
                name,
                lambda lam=lam: head_mod.train_distill(
                    train, prompts, koleo=lam, epochs=args.epochs, seed=args.seed
                ),
            )
        )
    for name, make in heads:
        t = time.perf_counter()
        h = make()
        r = evaluate_reduction(name, h, train, test, yte, cls_full, queries, rng)
        r["time_fit_s"] = time.perf_counter() - t
        result["reductions"].append(r)
        print(
            json.dumps({"progress": enc_id, "reduction": name, **r["quantizers"]["affine_quantile_round"]}),
            file=sys.stderr,
        )
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--vit-images",
        type=int,
        default=5000,
        help="train and test images each for ViT-B-32 on CPU (0 skips it; its cost is real)",
    )
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--koleo", type=float, default=head_mod.DEFAULT_KOLEO)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    out = {
        "paper_head_koleo": {"recall@1": 0.953, "recall@10": 0.970, "recall@100": 0.985, "zero_shot": 0.404},
        "paper_pca": {"recall@1": 0.683, "recall@10": 0.757, "recall@100": 0.802, "zero_shot": 0.144},
        "encoders": [evaluate_encoder("demo:fashion-v1", None, None, args, rng)],
    }
    if args.vit_images:
        out["encoders"].append(
            evaluate_encoder(
                "open_clip:ViT-B-32/none", args.vit_images, min(args.vit_images, 10000), args, rng
            )
        )
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
