"""How fast an entry script answers `--help` and a wrong flag, against the naive baseline of importing what a run
needs (torch, open_clip, transformers, pandas) before parsing, which is what the scripts did before their imports
moved after `parse_args`.

Each measurement is a fresh process (`python main_<script>.py --help`, `... --batch-size 0`, and the baseline
`python -c "import src.run, src.merging"`), timed from start to exit, with its peak RSS (`ru_maxrss` of the child).
Reported per script: median and max wall time over --runs runs, and the baseline's median for the ratio.
Usage: python -m bench.help [--runs 7]  ->  bench/results/help.csv
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ["main_task_arithmetic", "main_ties_merging", "main_layer_wise_adamergingpp", "main_emr_merging",
           "main_opcm"]
BASELINE = [sys.executable, "-c", "import src.run, src.merging"]
OUT = ROOT / "bench" / "results" / "help.csv"


def timed(command: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of one run of `command` in a fresh process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    start = time.perf_counter()
    pid = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).pid
    _, _, usage = os.wait4(pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss / 1024


def measure(command: list[str], runs: int) -> dict:
    samples = [timed(command) for _ in range(runs)]
    walls = [w for w, _ in samples]
    return {"median_s": round(statistics.median(walls), 3), "max_s": round(max(walls), 3),
            "peak_rss_mib": round(max(m for _, m in samples), 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    timed(BASELINE)  # warm the page cache once, so no row pays for the first read of the packages
    baseline = measure(BASELINE, args.runs)
    rows = [{"command": "import src.run, src.merging (baseline)", **baseline, "speedup_vs_baseline": 1.0}]
    for script in SCRIPTS:
        for flags in (["--help"], ["--batch-size", "0"]):
            result = measure([sys.executable, f"{script}.py", *flags], args.runs)
            rows.append({"command": f"{script}.py {' '.join(flags)}", **result,
                         "speedup_vs_baseline": round(baseline["median_s"] / result["median_s"], 1)})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text.getvalue())
    print(text.getvalue(), end="")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
