"""Benchmark Task Arithmetic, TIES-Merging and EMR-Merging against the reference's K×d formulation.

Inputs: 1 pretrained + 8 fine-tuned ViT-B/32-shaped ImageEncoder state dicts (bench/harness.py), written once to
--workdir as safetensors and memory-mapped by every measurement, as the entry scripts load checkpoints.

- `streaming`: src.merging (tensor by tensor; TIES thresholds by radix select, EMR masks bit-packed).
- `naive`: the literal reference formulations of tests/naive_merging.py (the same ones the tests check
  src.merging against): TA and TIES on the stacked K×d matrix of flattened state dicts, EMR on K task-vector dicts
  with Boolean masks.

Each measurement is one process (under `flock /tmp/heavy.lock`); the timed span is the merge call only (touching
the mapped checkpoints included, the model loading before it not). EMR's streaming run also saves its EMRModel,
untimed, to report the file size. The table gives medians over --runs processes. The first run's outputs of both
implementations are compared (max |Δ| over all entries; for EMR, the unified vector, the rescalers and every mask
bit).

    python -m bench.merge                # writes bench/results/merge.csv, prints a markdown table
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench import harness
from src.checkpoints import load_state_dict, save_state_dict
from src.merge_files import save_emr
from src.merging import emr_merging, task_arithmetic, ties_merging
from src.task_vectors import vector_keys
from tests.naive_merging import naive_emr, naive_task_arithmetic, naive_ties

NUM_TASKS = 8
METHODS = ("task_arithmetic", "ties", "emr")
IMPLS = ("streaming", "naive")


def _merge(method: str, impl: str, pretrained, finetuned):
    if method == "task_arithmetic":
        return (task_arithmetic if impl == "streaming" else naive_task_arithmetic)(pretrained, finetuned)
    if method == "ties":
        return (ties_merging if impl == "streaming" else naive_ties)(pretrained, finetuned)
    return (emr_merging if impl == "streaming" else naive_emr)(pretrained, finetuned)


def _comparable(method: str, impl: str, result, pretrained) -> dict[str, torch.Tensor]:
    """The merge's outcome as flat tensors that both implementations can write: a state dict for TA/TIES; for EMR
    τ_uni (zeros where absent), the rescalers and the masks packed as EMRModel packs them."""
    if method != "emr":
        return result
    keys = vector_keys(pretrained)
    if impl == "streaming":
        unified = {k: result.unified.get(k, torch.zeros(result.shapes[k])) for k in keys}
        return {**{f"unified/{k}": v for k, v in unified.items()}, "rescalers": result.rescalers,
                "masks": torch.from_numpy(result.masks)}
    unified, masks, rescalers = result
    bits = np.concatenate([torch.stack(masks[k]).reshape(NUM_TASKS, -1).numpy() for k in keys], axis=1)
    return {**{f"unified/{k}": unified[k].float() for k in keys}, "rescalers": rescalers,
            "masks": torch.from_numpy(np.packbits(bits, axis=1))}


def child(method: str, impl: str, workdir: Path, out: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    pretrained, finetuned = harness.load(workdir, NUM_TASKS)
    with harness.PeakAnon() as anon:
        start = time.perf_counter()
        result = _merge(method, impl, pretrained, finetuned)
        seconds = time.perf_counter() - start
    report = {"seconds": seconds, "peak_rss_mib": harness.peak_rss_mib(), "peak_anon_mib": anon.peak_mib}
    if method == "emr" and impl == "streaming":
        path = workdir / "emr.safetensors"
        save_emr(result, path)
        report["emr_file_bytes"] = path.stat().st_size
        report["emr_unified_bytes"] = sum(v.numel() * v.element_size() for v in result.unified.values())
        report["entries"] = result.num_entries
        path.unlink()
    if out != "-":
        save_state_dict({k: v.contiguous() for k, v in _comparable(method, impl, result, pretrained).items()}, out)
    return report


def compare(a: str, b: str) -> dict:
    """max |Δ| over float tensors, differing bytes over the packed masks."""
    x, y = load_state_dict(a), load_state_dict(b)
    assert list(x) == list(y), "different keys"
    diff = max(((x[k].float() - y[k].float()).abs().max().item() for k in x if k != "masks"), default=0.0)
    mask_bytes = int((x["masks"] != y["masks"]).sum()) if "masks" in x else None
    return {"max_abs_diff": diff, "differing_mask_bytes": mask_bytes}


COLUMNS = ["method", "impl", "tasks", "runs", "merge_s_median", "merge_s_per_run", "peak_rss_mib", "peak_anon_mib",
           "naive_over_streaming_time", "streaming_over_naive_rss", "streaming_over_naive_anon", "max_abs_diff",
           "differing_mask_bytes", "emr_file_bytes", "emr_bytes_per_task_beyond_unified", "d_over_8", "torch_threads",
           "loadavg_1m_max"]


def main(workdir: Path, runs: int, threads: int, methods: list[str], out_csv: Path) -> None:
    harness.fabricate(workdir, NUM_TASKS)
    results = {(m, i): [] for m in methods for i in IMPLS}
    for run in range(runs):
        for method in methods:
            for impl in IMPLS:
                out = str(workdir / f"out_{method}_{impl}.safetensors") if run == 0 else "-"
                results[method, impl].append(harness.run_child(__spec__.name, [method, impl, str(workdir), out,
                                                                            str(threads)]))
                r = results[method, impl][-1]
                print(f"run {run} {method} {impl}: {r['seconds']:.2f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                      f"peak anon {r['peak_anon_mib']:.0f} MiB", file=sys.stderr, flush=True)
    rows = []
    for method in methods:
        outs = [workdir / f"out_{method}_{impl}.safetensors" for impl in IMPLS]
        diff = harness.run_child(__spec__.name, ["compare", *map(str, outs)])
        for path in outs:
            path.unlink()
        medians = {impl: {key: statistics.median(r[key] for r in results[method, impl])
                          for key in ("seconds", "peak_rss_mib", "peak_anon_mib")} for impl in IMPLS}
        for impl in IMPLS:
            m, n = medians[impl], medians["naive"]
            first = results[method, impl][0]
            row = {"method": method, "impl": impl, "tasks": NUM_TASKS, "runs": runs,
                   "merge_s_median": round(m["seconds"], 2),
                   "merge_s_per_run": ";".join(f"{r['seconds']:.2f}" for r in results[method, impl]),
                   "peak_rss_mib": round(m["peak_rss_mib"]), "peak_anon_mib": round(m["peak_anon_mib"]),
                   "torch_threads": threads,
                   "loadavg_1m_max": round(max(r["loadavg"] for r in results[method, impl]), 2)}
            if impl == "streaming":
                row.update(naive_over_streaming_time=round(n["seconds"] / m["seconds"], 2),
                           streaming_over_naive_rss=round(m["peak_rss_mib"] / n["peak_rss_mib"], 3),
                           streaming_over_naive_anon=round(m["peak_anon_mib"] / n["peak_anon_mib"], 3),
                           max_abs_diff=f"{diff['max_abs_diff']:.2e}",
                           differing_mask_bytes=diff["differing_mask_bytes"])
            if "emr_file_bytes" in first:
                beyond = (first["emr_file_bytes"] - first["emr_unified_bytes"]) / NUM_TASKS
                row.update(emr_file_bytes=first["emr_file_bytes"], emr_bytes_per_task_beyond_unified=round(beyond),
                           d_over_8=math.ceil(first["entries"] / 8))
            rows.append(row)
    harness.write_csv(out_csv, COLUMNS, rows)
    print(markdown(rows))


def markdown(rows: list[dict]) -> str:
    lines = ["| method | impl | merge s (median) | peak RSS MiB | peak allocated MiB | naive ÷ streaming time "
             "| streaming ÷ naive peak RSS (allocated) | max abs diff vs naive |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = (f"{r['streaming_over_naive_rss']} ({r['streaming_over_naive_anon']})"
                 if r["impl"] == "streaming" else "")
        lines.append(f"| {r['method']} | {r['impl']} | {r['merge_s_median']} | {r['peak_rss_mib']} "
                     f"| {r['peak_anon_mib']} | {r.get('naive_over_streaming_time', '')} | {ratio} "
                     f"| {r.get('max_abs_diff', '')} |")
    emr = next((r for r in rows if r.get("emr_file_bytes")), None)
    if emr:
        lines.append(f"\nEMR file: {emr['emr_file_bytes'] / 2**20:.1f} MiB; per task beyond the unified vector "
                     f"{emr['emr_bytes_per_task_beyond_unified']:,} bytes = "
                     f"{emr['emr_bytes_per_task_beyond_unified'] / emr['d_over_8']:.4f} × d/8 "
                     f"(d/8 = {emr['d_over_8']:,} bytes).")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        if sys.argv[2] == "compare":
            print(json.dumps(compare(sys.argv[3], sys.argv[4])))
        else:
            print(json.dumps(child(sys.argv[2], sys.argv[3], Path(sys.argv[4]), sys.argv[5], int(sys.argv[6]))))
    else:
        parser = harness.argument_parser(__doc__, "merge.csv")
        parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
        args = parser.parse_args()
        main(args.workdir, args.runs, args.threads, args.methods, args.out)
