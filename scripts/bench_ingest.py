"""Benchmark ingestion end to end (decode, thumbnail, preprocess, encode, write) on CPU; prints JSON.

The images are real JPEG files of a realistic size (default 500x400, ~30-60 kB): Fashion-MNIST
pictures scaled up, tinted and textured, written once into a cache folder. Each encoder ingests
them into a fresh catalog twice in the same run, with decoding worker processes and in-process
(workers=0), so the two can be compared. For each run it reports images per second and where
the time goes: per image, the CPU time decoding, writing thumbnails and preprocessing (summed
over the worker processes), and the main process's time waiting for batches, encoding and
writing parts and rows.

    python scripts/bench_ingest.py --images 256 --workers 2
    python scripts/bench_ingest.py --encoders demo:fashion-v1 --images 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import engine
from engine.datasets.demodata import DEBIAN_ROOT, read_split
from engine.encoders import load_encoder
from engine.ingest import ingest

DEFAULT_ENCODERS = ("demo:fashion-v1", "open_clip:ViT-B-32/none")


def make_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``n`` JPEGs of ``size`` in ``folder`` (kept between runs): Fashion-MNIST pictures when the
    Debian dataset is installed, else smooth random blobs, on a tinted, textured background."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i:06d}.jpg" for i in range(n)]
    if all(p.is_file() for p in paths):
        return paths
    rng = np.random.default_rng(seed)
    if (DEBIAN_ROOT / "t10k-images-idx3-ubyte.gz").is_file():
        sources, _ = read_split(DEBIAN_ROOT, "test")
    else:
        sources = (rng.random((64, 7, 7)) * 255).astype(np.uint8)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i, path in enumerate(paths):
        shape = Image.fromarray(sources[i % len(sources)]).resize((min(w, h),) * 2, Image.Resampling.BICUBIC)
        mask = np.zeros((h, w), np.float32)
        x0 = (w - min(w, h)) // 2
        mask[:, x0 : x0 + min(w, h)] = np.asarray(shape, np.float32)[:h] / 255.0
        tint = rng.uniform(40, 255, 3)
        back = rng.uniform(150, 255, 3) * (
            0.8
            + 0.2 * np.sin(xx / rng.uniform(20, 80))[..., None] * np.cos(yy / rng.uniform(20, 80))[..., None]
        )
        pixels = back * (1 - mask[..., None]) + tint * mask[..., None] + rng.normal(0, 6, (h, w, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return paths


def run_one(encoder, source: Path, workers: int, batch_size: int, tmp: Path) -> dict:
    path = tmp / f"bench-{encoder.id.replace('/', '_').replace(':', '_')}-{workers}.duckdb"
    with engine.Catalog.create(path) as cat:
        report = ingest(cat, [source], encoder, batch_size=batch_size, workers=workers, progress=False)
    n = max(report.added, 1)

    def ms(seconds: float) -> float:
        return round(1e3 * seconds / n, 3)

    return {
        "encoder": encoder.id,
        "workers": workers,
        "batch_size": batch_size,
        "images": report.added,
        "skipped": report.skipped,
        "images_per_second": round(report.images_per_second, 1),
        "wall_s": round(report.time_total_s, 2),
        "ms_per_image": {
            "worker_decode": ms(report.time_decode_s),
            "worker_thumbnail": ms(report.time_thumbs_s),
            "worker_preprocess": ms(report.time_preprocess_s),
            "main_wait_for_batches": ms(report.time_wait_s),
            "main_encode": ms(report.time_encode_s),
            "main_write": ms(report.time_write_s),
            "scan_and_finish": ms(report.time_scan_s + report.time_finish_s),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=256, help="number of JPEG files (default 256)")
    ap.add_argument("--size", default="500x400", help="image size WxH (default 500x400)")
    ap.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1),
        help="decoding processes for the pooled runs (default: one per core); workers=0 runs too",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--encoders", nargs="+", default=list(DEFAULT_ENCODERS))
    ap.add_argument(
        "--image-dir", default=None, help="where the generated JPEGs are kept (default: a temp folder)"
    )
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    image_dir = Path(args.image_dir or Path(tempfile.gettempdir()) / f"clip-branches-bench-{w}x{h}") / str(
        args.images
    )
    t0 = time.perf_counter()
    paths = make_images(image_dir, args.images, (w, h))
    sizes = [p.stat().st_size for p in paths]
    import torch

    out = {
        "images": args.images,
        "image_size": [w, h],
        "mean_file_kb": round(sum(sizes) / len(sizes) / 1024, 1),
        "time_make_images_s": round(time.perf_counter() - t0, 2),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for enc_id in args.encoders:
            t1 = time.perf_counter()
            encoder = load_encoder(enc_id, device="cpu", batch_size=args.batch_size)
            load_s = time.perf_counter() - t1
            # One warm-up batch, so the first timed run does not pay for torch's lazy set-up.
            encoder.encode_images([Image.open(paths[0]).convert("RGB")] * min(8, args.batch_size))
            for workers in dict.fromkeys([args.workers, 0]):
                result = run_one(encoder, image_dir, workers, args.batch_size, Path(tmp))
                result["time_load_encoder_s"] = round(load_s, 2)
                out["runs"].append(result)
                print(json.dumps(result), file=sys.stderr)
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
