"""Benchmark AdaMerging: time per optimiser step and peak RSS for K = 2, 4, 8 tasks, on the CPU.

Models: the demo ViT (src/demo/demo.json, 32×32 images) and ViT-B/32 shapes (open_clip random weights, 224×224
random images), ImageEncoder state dicts with the text-side leftovers (zero task vectors, as in real checkpoints).
Task vectors are 1e-3·N(0, 1) on the image tower; heads are random unit rows ×100, like zero-shot heads.

Methods, both seeded identically, on the same batches:
- `functional`: src.merging.AdaMerging (one merge per step, functional_call, per-batch backward into the merged
  tensors, task vectors used in place).
- `naive`: reference-style. For every batch (the reference merges in every forward) it merges all tensors on the CPU
  as Python sum(θ₀·1, τ_1·λ_1, …), builds a new nn.Module (deepcopy of the encoder, parameters replaced by the
  merged tensors with setattr; load_state_dict would copy into leaf parameters and cut the gradient to λ), and takes
  one backward of the summed loss. It is lighter than the reference, which also marks θ₀ and every τ_k
  requires_grad and so computes K + 1 unused parameter gradients.

Every measurement runs in its own process (ViT-B/32 ones under `flock /tmp/heavy.lock`), with one torch thread by
default (`--threads`): a process times its steps after one warm-up step and takes their median; the table gives the
median over 3 processes per setting for the demo, 1 process (3 timed steps) for ViT-B/32. Peak RSS is the process's
ru_maxrss (imports and setup included), with MALLOC_MMAP_THRESHOLD_=65536 by default (see MMAP_THRESHOLD).
The final coefficients of both methods are compared (max |Δλ|).

    python -m bench.adamerging              # writes bench/results/adamerging.csv, prints a markdown table
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import harness
from main_layer_wise_adamergingpp import ADAPT_BATCH_SIZE, INIT, LR
from src.merging.adamerging import AdaMerging
from tests.naive_merging import NaiveAdaMerging

SEED = 0
TASK_VECTOR_SCALE = 1e-3
NUM_CLASSES = 10
TASK_COUNTS = (2, 4, 8)
# glibc raises its mmap threshold after large frees, so freed activations and temporaries stay in the heap and RSS
# grows with the number of batches whether or not tensors are alive (measured: ~0.55 GiB per task on ViT-B/32 with
# the functional method). A fixed threshold returns large blocks to the OS at once, so peak RSS measures live memory.
MMAP_THRESHOLD = 1 << 16
# (batches per task, timed steps per process, processes) per model. ViT-B/32 takes seconds per forward+backward of
# 16 images on one CPU core, so it uses 1 batch per task instead of the reference's 2 and one process per setting.
PLAN = {"demo": (2, 5, 3), "ViT-B-32": (1, 3, 1)}
# Reference-style ViT-B/32 with 8 tasks would need ~16 GiB (8 merged model copies and 8 batches of activations
# held for one backward, plus the task vectors) on a machine shared by five jobs: it is not run.
SKIP = {("ViT-B-32", 8, "naive")}


def _setup(model_name: str, num_tasks: int, batches_per_task: int):
    from src.modeling import ClassificationHead, ImageEncoder
    torch.manual_seed(SEED)
    encoder = ImageEncoder(model_name)
    pretrained = encoder.state_dict()
    g = torch.Generator().manual_seed(SEED + 1)
    # Drawn in place: a temporary per tensor would leave freed heap blocks behind in RSS.
    task_vectors = [{k: torch.empty(v.shape).normal_(0, TASK_VECTOR_SCALE, generator=g)
                     if k.startswith("model.visual.") else torch.zeros_like(v)
                     for k, v in pretrained.items() if v.is_floating_point()}
                    for _ in range(num_tasks)]
    heads = []
    for _ in range(num_tasks):
        w = torch.randn(NUM_CLASSES, encoder.model.visual.output_dim, generator=g)
        heads.append(ClassificationHead(True, 100 * w / w.norm(dim=1, keepdim=True)))
    size = encoder.model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    data = [[torch.randn(ADAPT_BATCH_SIZE, 3, size, size, generator=g) for _ in range(batches_per_task)]
            for _ in range(num_tasks)]
    return encoder, pretrained, task_vectors, heads, data


def child(model_name: str, num_tasks: int, method: str, coefficients_out: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    batches_per_task, steps, _ = PLAN[model_name]
    encoder, pretrained, task_vectors, heads, data = _setup(model_name, num_tasks, batches_per_task)
    if method == "functional":
        trainer = AdaMerging(encoder, pretrained, task_vectors, heads, granularity="layer", init=INIT, lr=LR)
    else:
        trainer = NaiveAdaMerging(encoder, pretrained, task_vectors, heads)
    times, losses = [], []
    for _ in range(1 + steps):
        start = time.perf_counter()
        losses.append(trainer.step(data))
        times.append(time.perf_counter() - start)
    torch.save(trainer.coefficients(), coefficients_out)
    vector_bytes = sum(v.numel() * v.element_size() for tv in task_vectors for v in tv.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_s": statistics.median(times[1:]), "peak_rss_mib": peak,
            "task_vectors_mib": vector_bytes / 2**20, "final_loss": losses[-1]}


def run_child(model_name: str, num_tasks: int, method: str, coefficients_out: Path, threads: int,
              mmap_threshold: int) -> dict:
    cmd = [sys.executable, "-m", __spec__.name, "--child", model_name, str(num_tasks), method, str(coefficients_out),
           str(threads)]
    if model_name != "demo":
        cmd = ["flock", harness.LOCK, *cmd]
    load = os.getloadavg()[0]
    env = dict(os.environ)
    if mmap_threshold:
        env["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=harness.ROOT).stdout
    return {**json.loads(out.strip().splitlines()[-1]), "loadavg": load}


COLUMNS = ["model", "tasks", "method", "batches_per_task", "batch_size", "timed_steps", "processes", "step_s_median",
           "step_s_per_process", "peak_rss_mib", "task_vectors_mib", "peak_minus_vectors_mib",
           "max_abs_coef_diff_vs_naive", "final_loss", "torch_threads", "malloc_mmap_threshold", "loadavg_1m_max"]


def measure(model_name: str, num_tasks: int, threads: int, mmap_threshold: int, tmp: Path) -> list[dict]:
    """Both methods for one setting; their processes alternate so that both see the same machine load."""
    batches_per_task, steps, processes = PLAN[model_name]
    methods = [m for m in ("functional", "naive") if (model_name, num_tasks, m) not in SKIP]
    runs = {m: [] for m in methods}
    for _ in range(processes):
        for method in methods:
            runs[method].append(run_child(model_name, num_tasks, method, tmp / f"{method}.pt", threads,
                                           mmap_threshold))
    coefs = {m: torch.load(tmp / f"{m}.pt", weights_only=True) for m in methods}
    diff = f"{(coefs['functional'] - coefs['naive']).abs().max().item():.2e}" if len(coefs) == 2 else ""
    rows = []
    for method, results in runs.items():
        peak = statistics.median(r["peak_rss_mib"] for r in results)
        vectors = results[0]["task_vectors_mib"]
        rows.append({"model": model_name, "tasks": num_tasks, "method": method, "batches_per_task": batches_per_task,
                     "batch_size": ADAPT_BATCH_SIZE, "timed_steps": steps, "processes": processes,
                     "step_s_median": round(statistics.median(r["step_s"] for r in results), 3),
                     "step_s_per_process": ";".join(f"{r['step_s']:.3f}" for r in results),
                     "peak_rss_mib": round(peak, 1), "task_vectors_mib": round(vectors, 1),
                     "peak_minus_vectors_mib": round(peak - vectors, 1), "max_abs_coef_diff_vs_naive": diff,
                     "final_loss": results[0]["final_loss"], "torch_threads": threads,
                     "malloc_mmap_threshold": mmap_threshold or "glibc default",
                     "loadavg_1m_max": round(max(r["loadavg"] for r in results), 2)})
        print(f"{model_name} K={num_tasks} {method}: {rows[-1]['step_s_median']} s/step, {rows[-1]['peak_rss_mib']} "
              "MiB peak", file=sys.stderr, flush=True)
    return rows


def main(models: list[str], out_csv: Path, threads: int, mmap_threshold: int) -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in models:
            for num_tasks in TASK_COUNTS:
                rows += measure(model_name, num_tasks, threads, mmap_threshold, Path(tmp))
    harness.write_csv(out_csv, COLUMNS, rows)
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    naive = {(r["model"], r["tasks"]): r for r in rows if r["method"] == "naive"}
    lines = ["| model | K | batches × images per task | method | s/step (median) | peak RSS MiB | task vectors MiB "
             "| peak − vectors MiB | naive ÷ functional time | naive ÷ functional peak |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        n = naive.get((r["model"], r["tasks"]))
        ratios = ("", "") if r["method"] == "naive" or n is None else (
            f"{n['step_s_median'] / r['step_s_median']:.2f}", f"{n['peak_rss_mib'] / r['peak_rss_mib']:.2f}")
        lines.append(f"| {r['model']} | {r['tasks']} | {r['batches_per_task']} × {r['batch_size']} | {r['method']} "
                     f"| {r['step_s_median']} | {r['peak_rss_mib']} | {r['task_vectors_mib']} "
                     f"| {r['peak_minus_vectors_mib']} | {ratios[0]} | {ratios[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), sys.argv[4], Path(sys.argv[5]), int(sys.argv[6]))))
    else:
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--models", nargs="+", default=list(PLAN), choices=list(PLAN))
        parser.add_argument("--out", type=Path, default=harness.ROOT / "bench" / "results" / "adamerging.csv")
        parser.add_argument("--threads", type=int, default=1,
                            help="torch threads per measurement (default 1: on a loaded 2-core machine two OpenMP "
                                 "threads ran a demo forward+backward ~50x slower than one)")
        parser.add_argument("--mmap-threshold", type=int, default=MMAP_THRESHOLD,
                            help="MALLOC_MMAP_THRESHOLD_ for the measured processes (0: glibc's default)")
        args = parser.parse_args()
        main(args.models, args.out, args.threads, args.mmap_threshold)
