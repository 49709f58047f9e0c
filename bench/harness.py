"""What the state-dict benchmarks (merge.py, opcm.py) share: ViT-B/32-shaped checkpoints written once, and
measurements in their own processes with their peak memory.

Checkpoints: open_clip's ViT-B-32 ImageEncoder with random weights (seeded), saved as safetensors the way
`python -m src.checkpoints convert` writes real task_vectors checkpoints, text-side leftovers included; each
fine-tuned model is θ₀ + 1e-3·N(0, 1) on the image tower (the text side unchanged, as in the real files).

Memory: `ru_maxrss` counts the memory-mapped checkpoint pages a process touched as well as what it allocated, so a
sampler thread also records the peak of RssAnon (allocated memory only) every 5 ms.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from src.checkpoints import load_state_dict, save_state_dict  # noqa: E402
from src.files import write_text  # noqa: E402

MODEL = "ViT-B-32"
SEED = 0
TASK_VECTOR_SCALE = 1e-3
LOCK = "/tmp/heavy.lock"


def checkpoint_paths(workdir: Path, num_models: int) -> tuple[Path, list[Path]]:
    return workdir / "zeroshot.safetensors", [workdir / f"finetuned_{i}.safetensors" for i in range(num_models)]


def fabricate(workdir: Path, num_models: int) -> tuple[Path, list[Path]]:
    """Write θ₀ and `num_models` fine-tuned state dicts under `workdir` (kept: later runs reuse them)."""
    from src.modeling import ImageEncoder
    pretrained_path, paths = checkpoint_paths(workdir, num_models)
    if all(p.exists() for p in [pretrained_path, *paths]):
        return pretrained_path, paths
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    pretrained = ImageEncoder(MODEL).state_dict()
    if not pretrained_path.exists():
        save_state_dict(pretrained, pretrained_path)
    for i, path in enumerate(paths):
        if path.exists():
            continue
        g = torch.Generator().manual_seed(SEED + 1 + i)
        finetuned = {k: v + torch.empty(v.shape).normal_(0, TASK_VECTOR_SCALE, generator=g)
                     if k.startswith("model.visual.") and v.is_floating_point() else v
                     for k, v in pretrained.items()}
        save_state_dict(finetuned, path)
        print(f"wrote {path}", file=sys.stderr, flush=True)
    return pretrained_path, paths


def load(workdir: Path, num_models: int):
    """θ₀ and the fine-tuned state dicts, memory-mapped, as the entry scripts load them."""
    pretrained_path, paths = checkpoint_paths(workdir, num_models)
    return load_state_dict(pretrained_path), [load_state_dict(p) for p in paths]


class PeakAnon:
    """Samples /proc/self/status RssAnon while the block runs; `.peak_mib` is the largest value seen."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak_mib = 0.0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, _rss_anon_mib())
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, _rss_anon_mib())


def _rss_anon_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(module: str, args: list[str]) -> dict:
    """Run `python -m module --child args…` from the repository root under the heavy-job lock; its last stdout line
    is a JSON object."""
    cmd = ["flock", LOCK, sys.executable, "-m", module, "--child", *args]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return {**json.loads(result.stdout.strip().splitlines()[-1]), "loadavg": os.getloadavg()[0]}


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def argument_parser(doc: str, csv_name: str) -> argparse.ArgumentParser:
    """The options every state-dict benchmark takes: --workdir, --runs, --threads, --out."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mergerepro-bench-models"),
                        help="where the fabricated checkpoints are written once (~4.1 GB) and kept")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per measurement")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / csv_name)
    return parser
