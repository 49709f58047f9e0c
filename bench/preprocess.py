"""How far the Hugging Face route's preprocessing (transformers' CLIP image processor, PIL backend, as FusionBench
evaluates) is from open_clip's eval transform (the task_vectors route), on real photographs at dataset sizes.

Both resize the shorter side to 224 with PIL's bicubic filter and centre-crop 224 × 224, then scale and normalise
with the same mean and std; they differ in where the crop starts when the excess is odd (floor vs round) and in the
float arithmetic of the scaling (float64 then float32, vs float32 division). Each photograph is first resized
(Lanczos) to the typical size of a dataset's images, as a stand-in for that dataset, then preprocessed both ways.
Reported per size, over all photographs: the share of 8-bit pixel values that differ after resize and crop, the
largest such difference, the share of images whose crop offset differs, and the largest and mean absolute
difference of the final normalised tensors. Also the time per image of each (median of --runs passes).

Photographs: every PNG/JPEG in --images (a folder, or a .whl/.zip such as scikit-image's wheel, which ships 25
test photographs: `pip download scikit-image==0.26.0 --no-deps -d /tmp/w`), plus matplotlib's grace_hopper.jpg.
Usage: python -m bench.preprocess --images /tmp/w/scikit_image-0.26.0-*.whl [--runs 3]
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench import harness
from src.preprocess import CLIPProcessorStages, staged

# (width, height) standing in for MNIST, SVHN/CIFAR, EuroSAT, STL10, RESISC45, then photographs of other shapes (DTD,
# Cars, SUN397, Pets, Flowers, Food-101), some of whose resized long side exceeds 224 by an odd number of pixels.
SIZES = [(28, 28), (32, 32), (64, 64), (96, 96), (256, 256), (300, 225), (341, 227), (500, 375), (640, 427),
         (260, 200), (427, 640)]
SUFFIXES = (".png", ".jpg", ".jpeg")


def photographs(source: Path | None) -> list[Image.Image]:
    import matplotlib
    found = [Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")]
    if source is not None and source.is_dir():
        found += [Image.open(p) for p in sorted(source.rglob("*")) if p.suffix.lower() in SUFFIXES]
    elif source is not None:
        with zipfile.ZipFile(source) as archive:
            names = sorted(n for n in archive.namelist() if n.lower().endswith(SUFFIXES) and "/data/" in n)
            found += [Image.open(io.BytesIO(archive.read(n))) for n in names]
    # Photographs only: at least 128 px on each side and not a tiny synthetic pattern.
    return [im.convert("RGB") for im in found if min(im.size) >= 128]


def compare(images: list[Image.Image], size: tuple[int, int], hf: CLIPProcessorStages, tv) -> dict:
    differing = total = worst = offsets = 0
    max_abs, mean_abs = 0.0, []
    for photo in images:
        image = photo.resize(size, Image.Resampling.LANCZOS)
        a, b = hf.to_uint8(image).astype(np.int16), tv.to_uint8(image).astype(np.int16)
        if a.shape != b.shape:
            raise RuntimeError(f"{size}: the two crops differ in shape, {a.shape} vs {b.shape}")
        diff = np.abs(a - b)
        differing += int((diff > 0).sum())
        total += diff.size
        worst = max(worst, int(diff.max()))
        width, height = image.size
        short = min(width, height)
        resized = (224, int(224 * height / short)) if width == short else (int(224 * width / short), 224)
        offsets += any((r - 224) // 2 != int(round((r - 224) / 2.0)) for r in resized)
        delta = (hf(image) - tv(image)).abs()
        max_abs = max(max_abs, float(delta.max()))
        mean_abs.append(float(delta.mean()))
    return {"pixels_differing": differing / total, "max_level_difference": worst,
            "images_with_other_crop_offset": offsets / len(images), "max_abs_tensor_difference": max_abs,
            "mean_abs_tensor_difference": statistics.fmean(mean_abs)}


def seconds_per_image(preprocess, images: list[Image.Image], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        for image in images:
            preprocess(image)
        times.append((time.perf_counter() - start) / len(images))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=harness.ROOT / "bench" / "results" / "preprocess.csv")
    args = parser.parse_args()
    import open_clip
    from transformers import CLIPImageProcessorPil
    torch.set_num_threads(1)
    images = photographs(args.images)
    hf = CLIPProcessorStages(CLIPImageProcessorPil())  # the settings of openai/clip-vit-*'s preprocessor_config
    _, _, open_clip_transform = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    tv = staged(open_clip_transform)
    rows = []
    for size in SIZES:
        resized = [im.resize(size, Image.Resampling.LANCZOS) for im in images]
        row = {"size": f"{size[0]}x{size[1]}", "photographs": len(images), **compare(images, size, hf, tv),
               "hf_ms_per_image": 1000 * seconds_per_image(hf, resized, args.runs),
               "open_clip_ms_per_image": 1000 * seconds_per_image(tv, resized, args.runs)}
        rows.append(row)
        print(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    harness.write_csv(args.out, list(rows[0]), rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
