"""Results: one CSV table per run plus a provenance sidecar (README, "Results files"), both written atomically.

A table has one row per task and an `avg` row: absolute top-1 accuracy, normalized accuracy, the individual
(fine-tuned) accuracy it is normalized by, and the published number with Δ where `results/paper_tables.csv` has
one for the same backbone, checkpoint family and method.
"""
from __future__ import annotations

import hashlib
import json
import platform
import resource
import subprocess
import sys
import time
import warnings
from importlib import metadata
from pathlib import Path
from typing import Mapping

import pandas as pd
import torch

from src.files import REPO, atomic_write, write_text

PAPER_TABLE = REPO / "results" / "paper_tables.csv"
NORMALIZED_FORMULA = ("normalized_accuracy = 100 * accuracy / individual_accuracy on the same task "
                      "(individual = that task's own fine-tuned model); avg rows are unweighted means over tasks")
# paper_tables.csv calls the zero-shot model 'pretrained'.
_PAPER_METHOD = {"zeroshot": "pretrained"}
_PACKAGES = ["torch", "torchvision", "open_clip_torch", "numpy", "scipy", "pandas", "safetensors"]
COLUMNS = ["method", "backbone", "family", "task", "accuracy", "normalized_accuracy", "individual_accuracy",
           "paper_accuracy", "delta_vs_paper", "paper_family", "paper_source"]


def paper_numbers(backbone: str, family: str, method: str, table: Path = PAPER_TABLE) -> dict | None:
    """The published row for this backbone/method: same checkpoint family if there is one, else another family's
    row with a warning (different fine-tuned checkpoints; not comparable number for number)."""
    papers = pd.read_csv(table)
    rows = papers[(papers.backbone == backbone) & (papers.method == _PAPER_METHOD.get(method, method))]
    if rows.empty:
        return None
    same = rows[rows.checkpoints == family]
    row = (same if not same.empty else rows).iloc[0]
    if same.empty:
        warnings.warn(f"{method} on {backbone}: the only published number uses '{row.checkpoints}' checkpoints, "
                      f"not '{family}'; the comparison is across checkpoint families", stacklevel=2)
    return {"family": row.checkpoints, "source": row.source,
            "accuracy": {c: float(row[c]) for c in papers.columns[4:]}}


def results_table(method: str, backbone: str, family: str, accuracy: Mapping[str, float],
                  individual: Mapping[str, float] | None, paper: dict | None = None) -> pd.DataFrame:
    rows = []
    for task, acc in accuracy.items():
        ind = individual.get(task) if individual else None
        rows.append({"task": task, "accuracy": acc, "individual_accuracy": ind,
                     "normalized_accuracy": 100.0 * acc / ind if ind else None})
    df = pd.DataFrame(rows, columns=["task", "accuracy", "normalized_accuracy", "individual_accuracy"])
    avg = df[["accuracy", "normalized_accuracy", "individual_accuracy"]].mean(skipna=False)
    df.loc[len(df)] = {"task": "avg", **avg.to_dict()}
    df.insert(0, "method", method)
    df.insert(1, "backbone", backbone)
    df.insert(2, "family", family)
    published = paper["accuracy"] if paper else {}
    df["paper_accuracy"] = [published.get(t) for t in df.task]
    df["delta_vs_paper"] = df.accuracy - df.paper_accuracy
    df["paper_family"] = paper["family"] if paper else None
    df["paper_source"] = paper["source"] if paper else None
    return df[COLUMNS].round(4)


def write_results(path: str | Path, table: pd.DataFrame, provenance: dict) -> None:
    """`<name>.csv` and its `<name>.json` provenance sidecar."""
    path = Path(path)
    with atomic_write(path) as tmp:
        table.to_csv(tmp, index=False)
    write_text(path.with_suffix(".json"), json.dumps(provenance, indent=2, default=str) + "\n")


def read_results(path: str | Path) -> pd.DataFrame:
    return pd.read_csv(path)


def provenance(*, hyperparameters: dict, checkpoints: Mapping[str, str], seed: int | None, started: float,
               device: str, **extra) -> dict:
    """What a reader needs to trust or redo a run: command, settings, code and package versions, inputs, cost."""
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "hyperparameters": hyperparameters,
        "seed": seed,
        "git_commit": code_version(),
        "packages": {p: _version(p) for p in _PACKAGES},
        "python": platform.python_version(),
        "device": device,
        "checkpoint_sha256": dict(checkpoints),
        "wall_time_s": round(time.time() - started, 2),
        "peak_memory": peak_memory(),
        "normalized_accuracy": NORMALIZED_FORMULA,
        **extra,
    }


def peak_memory() -> dict:
    """Peak resident memory of this process (and of the GPU allocator when CUDA was used), in GiB."""
    out = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    if torch.cuda.is_available():
        out["peak_gpu_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return out


def format_table(columns: Mapping[str, Mapping[str, float]], tasks: list[str]) -> str:
    """Plain-text table: one row per task plus the average, one column per model."""
    names = list(columns)
    width = max(len(t) for t in [*tasks, "avg"])
    lines = [f"{'task':<{width}}  " + "  ".join(f"{n:>16}" for n in names)]
    for task in [*tasks, "avg"]:
        cells = []
        for n in names:
            values = columns[n]
            v = sum(values[t] for t in tasks) / len(tasks) if task == "avg" else values.get(task)
            cells.append(f"{v:16.2f}" if v is not None else f"{'':>16}")
        lines.append(f"{task:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def code_version() -> str | None:
    """The git commit, plus `-dirty-<hash of the uncommitted diff>` when tracked files were edited: two different sets
    of edits are two versions, so `--skip-done` redoes a run after an edit. None outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--no-ext-diff", "--binary"], cwd=REPO, capture_output=True,
                              check=True).stdout
        return commit + (f"-dirty-{hashlib.sha256(diff).hexdigest()[:12]}" if diff else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def summary(folder: str | Path) -> pd.DataFrame:
    """Per-task accuracy tables side by side: one column per method, one row per task plus avg, zero-shot and
    individual first (the layout of the papers' tables). `folder` is one run's folder, a folder of runs
    (`results/<model>/`: the most recent run of each method) or the committed demo tables."""
    tables, times = {}, {}
    folder = Path(folder)
    for path in [*folder.glob("*.csv"), *folder.glob("*/*.csv")]:
        table = pd.read_csv(path)
        if not ({"method", "task", "accuracy", "normalized_accuracy"} <= set(table.columns)) or table.empty:
            continue
        method = table.method.iloc[0]
        if method not in tables or path.stat().st_mtime > times[method]:
            tables[method], times[method] = table.set_index("task").accuracy, path.stat().st_mtime
    order = [m for m in ("zeroshot", "individual") if m in tables] + \
        [m for m in tables if m not in ("zeroshot", "individual")]
    return pd.DataFrame({m: tables[m] for m in order})


def main(argv: list[str] | None = None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description="Print the results tables of one folder side by side (markdown).")
    parser.add_argument("folder", type=Path, nargs="?", default=REPO / "src" / "demo" / "results",
                        help="a run's folder, a folder of runs (results/<model>/: the latest run of each method), "
                             "or the committed demo tables [default]")
    parser.add_argument("--reproduction", action="store_true",
                        help="print the reproduce.py report of the results folder given (default: results/)")
    args = parser.parse_args(argv)
    if args.reproduction:
        from src.reproduction import report_text
        print(report_text(REPO / "results" if args.folder == parser.get_default("folder") else args.folder))
        return
    table = summary(args.folder)
    if table.empty:
        raise SystemExit(f"{args.folder}: no results tables found")
    print("| task | " + " | ".join(table.columns) + " |")
    print("|---|" + "---:|" * len(table.columns))
    for task, row in table.iterrows():
        print(f"| {task} | " + " | ".join("" if pd.isna(v) else f"{v:.2f}" for v in row) + " |")


if __name__ == "__main__":
    main()
