"""Benchmark OPCM: time per `.add` and peak memory when merging 2, 4 and 8 ViT-B/32-shaped models.

Inputs: bench/harness.py's fabricated checkpoints (θ₀ + 8 fine-tuned, safetensors, memory-mapped).

- `streaming`: what main_opcm.py does: each model is loaded (memory-mapped) when its turn comes, added, and
  released, so the process holds θ₀, the current merge and one incoming model.
- `eager` (baseline): every model is first read into RAM (a model pool loaded up front), then added in turn.

Each measurement is one process (under `flock /tmp/heavy.lock`); per process the median `.add` time over steps
2..N (step 1 only copies the first model); the table gives medians over --runs processes. Peak RSS includes the
mapped checkpoint pages a process touched; "allocated" is the sampled peak of RssAnon (bench/harness.py).

    python -m bench.opcm                 # writes bench/results/opcm.csv, prints a markdown table
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench import harness
from main_opcm import ALPHA
from src.checkpoints import load_state_dict
from src.merging import OPCM

MODEL_COUNTS = (2, 4, 8)
IMPLS = ("streaming", "eager")


def child(impl: str, num_models: int, workdir: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    pretrained_path, paths = harness.checkpoint_paths(workdir, num_models)
    pretrained = load_state_dict(pretrained_path)
    pool = [{k: v.clone() for k, v in load_state_dict(p).items()} for p in paths] if impl == "eager" else None
    merger = OPCM(pretrained, alpha=ALPHA)
    times = []
    with harness.PeakAnon() as anon:
        for i, path in enumerate(paths):
            finetuned = pool[i] if pool else load_state_dict(path)
            start = time.perf_counter()
            merger.add(finetuned)
            times.append(time.perf_counter() - start)
            del finetuned
    return {"add_s": statistics.median(times[1:]), "peak_rss_mib": harness.peak_rss_mib(),
            "peak_anon_mib": anon.peak_mib, "lambda": merger.lambda_t}


COLUMNS = ["impl", "models", "runs", "add_s_median", "add_s_per_run", "peak_rss_mib", "peak_anon_mib",
           "eager_over_streaming_rss", "final_lambda", "torch_threads", "loadavg_1m_max"]


def main(workdir: Path, runs: int, threads: int, out_csv: Path) -> None:
    harness.fabricate(workdir, max(MODEL_COUNTS))
    results = {(i, n): [] for n in MODEL_COUNTS for i in IMPLS}
    for _ in range(runs):
        for n in MODEL_COUNTS:
            for impl in IMPLS:
                r = harness.run_child(__spec__.name, [impl, str(n), str(workdir), str(threads)])
                results[impl, n].append(r)
                print(f"{impl} N={n}: {r['add_s']:.2f} s/add, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                      f"allocated {r['peak_anon_mib']:.0f} MiB", file=sys.stderr, flush=True)
    rows = []
    for n in MODEL_COUNTS:
        eager_rss = statistics.median(r["peak_rss_mib"] for r in results["eager", n])
        lambdas = {round(r["lambda"], 6) for r in results["streaming", n] + results["eager", n]}
        assert len(lambdas) == 1, f"N={n}: runs disagree on the final λ: {lambdas}"
        final_lambda = lambdas.pop()
        for impl in IMPLS:
            rs = results[impl, n]
            rss = statistics.median(r["peak_rss_mib"] for r in rs)
            rows.append({"impl": impl, "models": n, "runs": runs,
                         "add_s_median": round(statistics.median(r["add_s"] for r in rs), 2),
                         "add_s_per_run": ";".join(f"{r['add_s']:.2f}" for r in rs),
                         "peak_rss_mib": round(rss), "peak_anon_mib": round(statistics.median(
                             r["peak_anon_mib"] for r in rs)),
                         "eager_over_streaming_rss": round(eager_rss / rss, 2) if impl == "streaming" else "",
                         "final_lambda": final_lambda, "torch_threads": threads,
                         "loadavg_1m_max": round(max(r["loadavg"] for r in rs), 2)})
    harness.write_csv(out_csv, COLUMNS, rows)
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    lines = ["| models | impl | s per add (median) | peak RSS MiB | peak allocated MiB | eager ÷ streaming peak RSS |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['models']} | {r['impl']} | {r['add_s_median']} | {r['peak_rss_mib']} | {r['peak_anon_mib']} "
              f"| {r['eager_over_streaming_rss']} |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))))
    else:
        parser = harness.argument_parser(__doc__, "opcm.csv")
        args = parser.parse_args()
        main(args.workdir, args.runs, args.threads, args.out)
