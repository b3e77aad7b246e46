"""How to train a head and fit its quantizer for a catalog of a few images; prints JSON.

For random subsets of n images of a demo catalog (several seeds per n), each way of training the
head (below) is combined with each way of fitting the quantizer, and scored on the 8-bit codes
the catalog would store:

* ``nn_recall``: overlap of each image's k = min(10, (n - 1) // 3) nearest neighbours among the
  subset by code distance with those by full-dimension cosine (n >= 4; a third of the others, so
  that small subsets do not score 1 by returning everything);
* ``text_top1``: for class-name queries ("ankle boot", and a paraphrase each: "short leather
  boots") whose class is in the subset, whether the nearest image by code distance is of that
  class (``text_top1_full``: the same in full dimension, the ceiling);
* ``heldout_*``: the same head and quantizer on 2000 other images, as when the catalog grows
  and is indexed again without training the head again: neighbour recall@10 and text precision@10.

Heads: ``distill`` (as for a large catalog: the images, with the prompt vocabulary in the loss),
``distill_vocab`` (the vocabulary's texts also as training rows), ``distill_pp`` (the prompts'
similarities among themselves also in the loss: ``train_distill(prompt_prompt=True)``, what
:func:`engine.codes.pipeline.train_head` does below ``SMALL_CATALOG_ROWS`` images), ``pca`` (n > 32
only), ``pca_vocab`` (PCA of the images and the vocabulary's texts), ``contrastive`` (captions
"a photo of a <class>"), and ``reference`` (the catalog's own head, trained on every image).
Quantizers: ``img`` (quantiles of the images' outputs, n >= 2), ``vocab`` (of the images' and
the vocabulary texts' outputs together), and each with the per-dim range at least
:func:`engine.codes.quantize.sphere_range` (``img_floor``, ``vocab_floor``).

    python scripts/eval_small_heads.py --catalog demo/fashion.duckdb [--sizes 1 2 5 20 ...] [--seeds 3]

Every head on every default size with 3 seeds takes about 45 minutes on one core; ``--heads`` and
``--quantizers`` pick fewer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

import engine
from engine.codes import head as head_mod
from engine.codes import quantize
from engine.codes.prompts import vocabulary
from engine.encoders import load_encoder
from engine.ingest.embeddings import load_embeddings

QUERIES = {  # class -> (its name as typed, a paraphrase the vocabulary does not hold)
    "T-shirt/top": ("t-shirt", "a short-sleeved top"),
    "Trouser": ("trousers", "a pair of long pants"),
    "Pullover": ("pullover", "a warm knitted jumper"),
    "Dress": ("dress", "a summer dress for women"),
    "Coat": ("coat", "a winter coat with buttons"),
    "Sandal": ("sandal", "open summer sandals"),
    "Shirt": ("shirt", "a button-down shirt"),
    "Sneaker": ("sneaker", "sports shoes for running"),
    "Bag": ("bag", "a bag to carry things"),
    "Ankle boot": ("ankle boot", "short leather boots"),
}
HEADS = ("distill", "distill_vocab", "distill_pp", "pca", "pca_vocab", "contrastive", "reference")
QUANTIZERS = ("img", "img_floor", "vocab", "vocab_floor")


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _code_dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared L2 between uint8 codes a (p, 32) and b (q, 32): int64 (p, q)."""
    a, b = a.astype(np.int64), b.astype(np.int64)
    return (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T


def _topk(dist: np.ndarray, k: int) -> np.ndarray:
    """Indices (rows, k) of the k smallest per row; ties by index, as search breaks them by position."""
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


def _nn_recall(full: np.ndarray, codes: np.ndarray, k: int) -> float:
    sim = full @ full.T
    np.fill_diagonal(sim, -np.inf)
    ref = _topk(-sim, k)
    d = _code_dist(codes, codes).astype(np.float64)
    np.fill_diagonal(d, np.inf)
    got = _topk(d, k)
    return float(np.mean([len(np.intersect1d(r, g)) / k for r, g in zip(ref, got, strict=True)]))


def _text_scores(qcodes, qfull, qlabels, codes, full, labels, k: int) -> tuple[list, list]:
    """Per query whose class is present: (precision@k by codes, precision@k in full dimension)."""
    got, ceiling = [], []
    k = min(k, len(labels))
    by_code = _topk(_code_dist(qcodes, codes), k)
    by_full = _topk(-(qfull @ full.T), k)
    for j, lab in enumerate(qlabels):
        if (labels == lab).any():
            got.append(float(np.mean(labels[by_code[j]] == lab)))
            ceiling.append(float(np.mean(labels[by_full[j]] == lab)))
    return got, ceiling


def _train(kind: str, x, vocab, captions, reference, epochs: int, seed: int):
    if kind == "distill":
        return head_mod.train_distill(x, vocab, epochs=epochs, seed=seed)
    if kind == "distill_vocab":
        return head_mod.train_distill(np.concatenate([x, vocab]), vocab, epochs=epochs, seed=seed)
    if kind == "distill_pp":
        return head_mod.train_distill(x, vocab, epochs=epochs, seed=seed, prompt_prompt=True)
    if kind == "pca":
        return head_mod.fit_pca(x) if len(x) > head_mod.DEFAULT_OUT_DIM else None
    if kind == "pca_vocab":
        return head_mod.fit_pca(np.concatenate([x, vocab]))
    if kind == "contrastive":
        return head_mod.train_contrastive(x, captions, epochs=epochs, seed=seed)
    return reference


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", required=True, help="a demo catalog (opened read-only)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 5, 10, 20, 32, 33, 50, 100, 200, 300])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--heldout", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    ap.add_argument("--quantizers", nargs="+", default=list(QUANTIZERS), choices=QUANTIZERS)
    args = ap.parse_args(argv)

    with engine.Catalog.open(args.catalog, read_only=True) as cat:
        ids, emb = load_embeddings(cat)
        label_of = dict(cat.store.con.execute("SELECT id, label FROM images").fetchall())
        reference = cat.head()
        ranges = cat.quantizer().step * 255
        enc = load_encoder(cat.setting("encoder"))
    labels = np.array([label_of[i] for i in ids.tolist()])
    vocab = enc.encode_texts(vocabulary())
    qlabels = [c for c in QUERIES for _ in range(2)]
    qfull = _normalise(enc.encode_texts([q for c in QUERIES for q in QUERIES[c]]))
    cap_of = {c: enc.encode_texts([f"a photo of a {QUERIES[c][0]}"])[0] for c in QUERIES}
    full = _normalise(emb)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ids))
    held, pool = order[: args.heldout], order[args.heldout :]

    rows = []
    for n in args.sizes:
        for seed in range(args.seeds):
            sub = np.random.default_rng([n, seed]).choice(pool, n, replace=False)
            x, lab = emb[sub], labels[sub]
            captions = np.stack([cap_of[c] for c in lab])
            for kind in args.heads:
                t0 = time.perf_counter()
                head = _train(kind, x, vocab, captions, reference, args.epochs, seed)
                if head is None:
                    continue
                t_train = time.perf_counter() - t0
                hx, hv = head.apply(x), head.apply(vocab)
                floor = quantize.sphere_range(head.out_dim)
                both = np.concatenate([hx, hv])
                quants = {
                    "vocab": quantize.fit_affine(both),
                    "vocab_floor": quantize.fit_affine(both, min_range=floor),
                    "img_floor": quantize.fit_affine(hx, min_range=floor),
                }
                if n >= 2:
                    quants["img"] = quantize.fit_affine(hx)
                quants = {k: v for k, v in quants.items() if k in args.quantizers}
                for qname, quant in quants.items():
                    codes = quant.encode(hx)
                    qcodes = quant.encode(head.apply(qfull))
                    top1, top1_full = _text_scores(qcodes, qfull, qlabels, codes, full[sub], lab, 1)
                    hcodes = quant.encode(head.apply(emb[held]))
                    p10, p10_full = _text_scores(qcodes, qfull, qlabels, hcodes, full[held], labels[held], 10)
                    rows.append(
                        {
                            "n": n,
                            "seed": seed,
                            "head": kind,
                            "quantizer": qname,
                            "time_train_s": t_train,
                            "nn_recall": _nn_recall(full[sub], codes, min(10, (n - 1) // 3))
                            if n >= 4
                            else None,
                            "text_top1": float(np.mean(top1)),
                            "text_top1_full": float(np.mean(top1_full)),
                            "heldout_nn_recall10": _nn_recall(full[held[:1000]], hcodes[:1000], 10),
                            "heldout_text_p10": float(np.mean(p10)),
                            "heldout_text_p10_full": float(np.mean(p10_full)),
                        }
                    )
            print(f"n={n} seed={seed} done", file=sys.stderr, flush=True)

    summary = {}
    for r in rows:
        key = f"{r['n']}/{r['head']}/{r['quantizer']}"
        summary.setdefault(key, []).append(r)
    table = {}
    for key, rs in summary.items():
        table[key] = {
            m: (None if rs[0][m] is None else round(float(np.mean([r[m] for r in rs])), 3))
            for m in (
                "nn_recall",
                "text_top1",
                "text_top1_full",
                "heldout_nn_recall10",
                "heldout_text_p10",
                "heldout_text_p10_full",
                "time_train_s",
            )
        }
    scale = {
        "reference_median_range": round(float(np.median(ranges)), 3),
        "sphere_range": round(quantize.sphere_range(reference.out_dim), 3),
    }
    json.dump(
        {"args": vars(args), "quantizer_ranges": scale, "mean_over_seeds": table, "runs": rows},
        sys.stdout,
        indent=1,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
