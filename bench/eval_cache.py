"""How much the preprocessed-test-set cache (src/datasets/cache.py) saves when a test set is evaluated again.

Fabricates an EuroSAT-layout test folder of JPEGs (default 512 images of 256×256, RESISC45-sized) and times reading
it through the ViT-B/32 eval preprocess (resize 224 bicubic, crop, RGB, ToTensor, normalise) into batches of 128,
as an evaluation does, without the model forward:

- naive:  decode + preprocess every image (what every evaluation does without the cache);
- first:  an empty cache: decode + preprocess once, store, then read the stored split;
- second: the cache exists (every later evaluation of the same test set).

Each measurement runs in its own process (one torch thread); the median of --runs runs is reported, wall and CPU
seconds (CPU time is less disturbed by other jobs on a shared machine), with the peak RSS of that process.
Usage: flock /tmp/heavy.lock python -m bench.eval_cache [--images 512] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent


def fabricate(root: Path, images: int, size: int) -> None:
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    folders = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
               "Residential", "River", "SeaLake"]
    # Smooth random fields compress like photos (pure noise would make JPEG decoding unrealistically slow).
    for i in range(images):
        low = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize((size, size), Image.Resampling.BILINEAR)
        path = root / "EuroSAT_splits" / "test" / folders[i % 10] / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)
    (root / "sizes.json").write_text(json.dumps({"EuroSAT": {"test": images, "classes": 10}}))


def measure(mode: str, data: Path, cache: Path) -> dict:
    """One timed pass in this process: returns seconds and peak RSS."""
    os.environ["MERGEREPRO_FIXTURE_SIZES"] = str(data / "sizes.json")
    import open_clip
    import torch
    from torch.utils.data import DataLoader

    from src.datasets import get_task
    from src.datasets.cache import cached
    # One thread: on a shared machine, OpenMP threads spinning against other jobs make tensor copies erratic.
    torch.set_num_threads(1)
    preprocess = open_clip.image_transform(224, is_train=False)
    start, cpu_start = time.perf_counter(), time.process_time()
    split = get_task("EuroSAT", data).split("test", preprocess)
    dataset = split if mode == "naive" else cached(split, cache)
    checksum = 0.0
    for images, _ in DataLoader(dataset, batch_size=128, shuffle=False):
        checksum += float(images[:, :, 0, 0].sum())
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "checksum": checksum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=256, help="side of the fabricated JPEGs")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "DATA", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, data, cache = args.child
        print(json.dumps(measure(mode, Path(data), Path(cache))))
        return

    work = Path(tempfile.mkdtemp(prefix="bench-eval-cache-"))
    try:
        fabricate(work / "data", args.images, args.size)
        results = {m: [] for m in ("naive", "first", "second")}
        for _ in range(args.runs):
            for mode in results:
                if mode == "first":
                    shutil.rmtree(work / "cache", ignore_errors=True)
                out = subprocess.run([sys.executable, "-m", __spec__.name, "--child", mode, str(work / "data"),
                                      str(work / "cache")], check=True, capture_output=True, text=True,
                                     cwd=REPO).stdout
                results[mode].append(json.loads(out.strip().splitlines()[-1]))
        checksums = {m: {round(r["checksum"], 3) for r in rs} for m, rs in results.items()}
        assert len(set.union(*checksums.values())) == 1, f"different tensors: {checksums}"
        naive = statistics.median(r["seconds"] for r in results["naive"])
        print(f"{args.images} JPEGs of {args.size}x{args.size}, ViT-B/32 eval preprocess, batch 128, "
              f"{os.cpu_count()} CPUs, median of {args.runs} runs (each in its own process)")
        naive_cpu = statistics.median(r["cpu_seconds"] for r in results["naive"])
        print(f"{'pass':<8} {'wall s':>8} {'images/s':>9} {'vs naive':>9} {'CPU s':>7} {'vs naive':>9} "
              f"{'peak RSS MB':>12}")
        for mode, runs in results.items():
            seconds = statistics.median(r["seconds"] for r in runs)
            cpu = statistics.median(r["cpu_seconds"] for r in runs)
            rss = statistics.median(r["peak_rss_mb"] for r in runs)
            print(f"{mode:<8} {seconds:8.2f} {args.images / seconds:9.0f} {naive / seconds:8.2f}x {cpu:7.2f} "
                  f"{naive_cpu / cpu:8.2f}x {rss:12.0f}")
        entry = next((work / "cache").iterdir())
        print(f"cache entry on disk: {sum(p.stat().st_size for p in entry.iterdir()) / 2**20:.1f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
