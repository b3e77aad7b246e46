"""Train the demo encoder's image tower and write ``engine/encoders/demo_fashion_v1.pt``.

LiT-style: the MiniLM text tower stays frozen and the small CNN learns to land on the MiniLM
embeddings of captions of each picture's class. At every step one caption is sampled per class;
the ten caption embeddings act as the classifier's weights and the loss is cross-entropy over
them. Sampling over many phrasings (templates, synonyms, attribute phrases) spreads each class
over the region of text space its paraphrases fall in, which a single prompt per class does not.

Prints JSON: zero-shot accuracy on the 10,000 test pictures, per-class accuracy and the
precision@60 of free-text paraphrases that appear in no training caption.

    python scripts/build_demo_encoder.py             # the shipped weights (about 20 epochs)
    python scripts/build_demo_encoder.py --quick     # a smoke run into a temporary file
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.encoders.demo import (
    FASHION_CLASSES,
    PARAPHRASE_QUERIES,
    PIXEL_MEAN,
    PIXEL_STD,
    WEIGHTS,
    WEIGHTS_DIR,
    DemoEncoder,
    ImageTower,
    encode_texts_minilm,
    normalise_pixels,
    paraphrase_precision,
    read_fashion_mnist,
    zero_shot_predictions,
)

# Sentence frames; "{}" takes a description with its article.
TEMPLATES = (
    "{}",
    "a photo of {}",
    "a picture of {}",
    "a product photo of {}",
    "a black and white photo of {}",
    "a low-resolution photo of {}",
    "a catalogue image of {}",
)

# Names and synonyms per class.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "T-shirt/top": ("a t-shirt", "a tee shirt", "a top", "a tank top", "a crop top", "a short-sleeved top"),
    "Trouser": ("a pair of trousers", "pants", "jeans", "slacks", "leggings", "chinos"),
    "Pullover": ("a pullover", "a sweater", "a jumper", "a sweatshirt", "a knit sweater", "a hoodie"),
    "Dress": ("a dress", "a gown", "a sundress", "a frock", "an evening dress", "a cocktail dress"),
    "Coat": ("a coat", "a jacket", "an overcoat", "a parka", "a trench coat", "a raincoat"),
    "Sandal": ("a sandal", "flip-flops", "slides", "a strappy sandal", "a heeled sandal", "an open-toe shoe"),
    "Shirt": (
        "a shirt",
        "a button-down shirt",
        "a dress shirt",
        "a flannel shirt",
        "a blouse",
        "a collared shirt",
    ),
    "Sneaker": ("a sneaker", "trainers", "running shoes", "athletic shoes", "tennis shoes", "sports shoes"),
    "Bag": ("a bag", "a purse", "a tote bag", "a shoulder bag", "a backpack", "a satchel"),
    "Ankle boot": ("an ankle boot", "a boot", "a chelsea boot", "a heeled boot", "a winter boot", "booties"),
}

# What the garment looks like or is for; these carry the paraphrases that name no class.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "T-shirt/top": (
        "a short-sleeved, collarless cotton tee",
        "a casual top with short sleeves and a round neck",
        "a sleeveless summer top",
        "light clothing for hot weather",
        "a summer tee for warm days",
        "casual clothes for the hot season",
    ),
    "Trouser": (
        "long pants with two legs",
        "denim jeans",
        "straight-leg trousers",
        "legwear for every season",
    ),
    "Pullover": (
        "a long-sleeved knitted jumper",
        "a warm wool sweater for cold days",
        "a cosy crew-neck sweatshirt",
        "knitwear for winter",
    ),
    "Dress": (
        "a one-piece dress with a skirt",
        "a long flowing gown",
        "an elegant dress for an evening out",
        "a light summer dress",
        "a floaty dress for warm days",
    ),
    "Coat": (
        "a long-sleeved coat that opens down the front",
        "a zip-up jacket",
        "warm outerwear for winter",
        "a heavy coat for cold weather",
    ),
    "Sandal": (
        "an open, strappy summer shoe",
        "open-toed footwear for the beach",
        "a light shoe with straps and bare toes",
        "summer footwear",
        "summer shoes with straps",
        "sandals for the seaside and the pool",
        "open shoes for hot summer days",
        "light open shoes for warm weather",
        "strappy shoes for a summer holiday",
    ),
    "Shirt": (
        "a collared, buttoned shirt",
        "a long-sleeved shirt with a collar and buttons down the front",
        "a plaid shirt",
        "a formal shirt for the office",
    ),
    "Sneaker": (
        "a low sporty shoe with laces",
        "a lace-up shoe for sport and running",
        "comfortable shoes for the gym",
        "casual athletic footwear",
    ),
    "Bag": (
        "a bag with handles for carrying things",
        "a leather handbag",
        "a bag to hold your belongings",
        "an accessory to carry your things in",
    ),
    "Ankle boot": (
        "a boot that covers the ankle",
        "a short leather boot with a heel",
        "sturdy footwear for autumn and winter",
        "a boot with a zip on the side",
    ),
}


def build_captions() -> list[list[str]]:
    """Every template filled with every synonym and attribute phrase, per class (FASHION_CLASSES
    order)."""
    captions = []
    for cls in FASHION_CLASSES:
        descriptions = SYNONYMS[cls] + ATTRIBUTES[cls]
        captions.append([t.format(d) for d in descriptions for t in TEMPLATES])
    return captions


def check_paraphrases_unseen(captions: list[list[str]]) -> None:
    """The paraphrase benchmark is only honest if no query is itself a training caption."""
    seen = {c.strip(" .").lower() for per_class in captions for c in per_class}
    leaked = [q for q in PARAPHRASE_QUERIES if q.strip(" .").lower() in seen]
    if leaked:
        raise SystemExit(f"paraphrase queries appear verbatim in the training captions: {leaked}")


def caption_bank(captions: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """All captions embedded by the frozen text tower, padded per class.

    Returns float32 (10, m, 384) embeddings (m = most captions in a class) and int64 (10,) counts.
    """
    counts = torch.tensor([len(c) for c in captions], dtype=torch.int64)
    flat = encode_texts_minilm([c for per_class in captions for c in per_class], batch_size=256)
    bank = torch.zeros((len(captions), int(counts.max()), flat.shape[1]))
    start = 0
    for i, n in enumerate(counts.tolist()):
        bank[i, :n] = torch.from_numpy(flat[start : start + n])
        start += n
    return bank, counts


def augment(pixels: torch.Tensor, gen: torch.Generator, max_shift: float = 2.5) -> torch.Tensor:
    """Random horizontal flip and a sub-pixel shift of up to ``max_shift`` px, on float32
    (n, 1, 28, 28) pixels in [0, 1]; the border fills with black, the Fashion-MNIST background."""
    n, _, h, w = pixels.shape
    flip = torch.rand(n, generator=gen) < 0.5
    pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * max_shift
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1.0
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = shift[:, 0] * 2 / w  # affine_grid works in [-1, 1] units
    theta[:, 1, 2] = shift[:, 1] * 2 / h
    grid = nn.functional.affine_grid(theta, list(pixels.shape), align_corners=False)
    return nn.functional.grid_sample(pixels, grid, padding_mode="zeros", align_corners=False)


def train(
    images: np.ndarray,
    labels: np.ndarray,
    bank: torch.Tensor,
    counts: torch.Tensor,
    *,
    epochs: int,
    seed: int,
    batch_size: int = 256,
    peak_lr: float = 3e-3,
) -> ImageTower:
    """The image tower trained on uint8 (n, 28, 28) ``images`` and int64 (n,) ``labels``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = ImageTower()
    # The logit scale (inverse temperature) is learned, as in CLIP and LiT; it is not shipped.
    log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    steps_per_epoch = math.ceil(len(images) / batch_size)
    opt = torch.optim.AdamW([*model.parameters(), log_scale], lr=peak_lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak_lr, total_steps=epochs * steps_per_epoch)
    x_all = torch.tensor(images).unsqueeze(1)  # uint8 (n, 1, 28, 28), copied: the idx buffer is read-only
    y_all = torch.from_numpy(labels)
    class_index = torch.arange(len(counts))
    for epoch in range(epochs):
        model.train()
        t0, total = time.perf_counter(), 0.0
        order = torch.randperm(len(images), generator=gen)
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            x = (augment(x_all[idx].float() / 255.0, gen) - PIXEL_MEAN) / PIXEL_STD
            pick = (torch.rand(len(counts), generator=gen) * counts).long()
            prototypes = bank[class_index, pick]  # (10, 384), unit rows
            logits = log_scale.exp().clamp(max=100.0) * model(x) @ prototypes.T
            loss = nn.functional.cross_entropy(logits, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        print(
            f"epoch {epoch + 1}/{epochs}: loss {total / steps_per_epoch:.4f}, "
            f"scale {log_scale.exp().item():.1f}, {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
    return model.eval()


def save_fp16(model: ImageTower, out: Path) -> None:
    """The state dict in fp16 (about 1 MB), written atomically so a failed run leaves no stub."""
    state = {
        k: v.detach().half() if v.is_floating_point() else v.detach() for k, v in model.state_dict().items()
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    # Saving through a buffer keeps the file name out of the archive, so equal weights give equal bytes.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(out)


def evaluate(weights: Path, images: np.ndarray, labels: np.ndarray) -> dict:
    """Zero-shot and paraphrase quality of the weights at ``weights``, as shipped (fp16 round trip)."""
    encoder = DemoEncoder("fashion-v1", device="cpu", batch_size=1000, weights=weights)
    emb = encoder.encode_images(normalise_pixels(images).unsqueeze(1))
    pred = zero_shot_predictions(encoder, emb)
    per_class = {c: round(float((pred[labels == i] == i).mean()), 4) for i, c in enumerate(FASHION_CLASSES)}
    precision = paraphrase_precision(encoder, emb, labels, k=60)
    return {
        "n_test_images": int(len(labels)),
        "zero_shot_accuracy": round(float((pred == labels).mean()), 4),
        "per_class_accuracy": per_class,
        "paraphrase_precision_at_60": {q: round(p, 4) for q, p in precision.items()},
        "mean_paraphrase_precision_at_60": round(float(np.mean(list(precision.values()))), 4),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="training epochs (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed for init, shuffling and augmentation")
    parser.add_argument("--out", type=Path, default=None, help="weights file (default: the shipped one)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; fixed, because float sums depend on it (default 1)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1 epoch on 6,000 pictures into a temporary file"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Reproducible weights: fixed seeds, deterministic kernels, a fixed thread count (float sums
    # depend on how work is split across threads). One thread is the default because on a shared
    # machine two OpenMP threads spin-waiting on each other ran three times slower.
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    out = args.out or (
        Path(tempfile.gettempdir()) / "demo_fashion_v1_quick.pt"
        if args.quick
        else WEIGHTS_DIR / WEIGHTS["fashion-v1"]
    )
    epochs = 1 if args.quick else args.epochs

    captions = build_captions()
    check_paraphrases_unseen(captions)
    bank, counts = caption_bank(captions)
    images, labels = read_fashion_mnist("train")
    test_images, test_labels = read_fashion_mnist("test")
    if args.quick:
        images, labels = images[:6000], labels[:6000]
        test_images, test_labels = test_images[:2000], test_labels[:2000]

    t0 = time.perf_counter()
    model = train(images, labels, bank, counts, epochs=epochs, seed=args.seed)
    train_seconds = time.perf_counter() - t0
    save_fp16(model, out)

    report = {
        "encoder": "demo:fashion-v1",
        "weights": str(out),
        "weights_bytes": out.stat().st_size,
        "weights_sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": epochs,
        "seed": args.seed,
        "threads": args.threads,
        "captions_per_class": counts.tolist(),
        "train_seconds": round(train_seconds, 1),
        **evaluate(out, test_images, test_labels),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
