"""The demo grid end to end through reproduce.py with 1 and with 2 concurrent local jobs, and the `--dry-run`
estimate against the measured time.

Each run starts from an empty results folder (so every cell and baseline is computed) in its own process:
`python reproduce.py --demo --jobs N --results <tmp>`. Reported per N: grid wall time, the sum of the cells' own wall
times, the speed-up of N jobs over one, and the estimate (`src.grid.estimates`, what --dry-run prints) over the
measured grid time with one job. Per cell (one-job run): estimate and measured seconds, to bench/results/grid_cells.csv.
The grid takes minutes, so each setting runs once (`--runs` repeats it and reports the median).
Usage: python -m bench.grid [--jobs 1,2] [--methods ...] [--runs 1]  ->  bench/results/grid.csv
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src import grid
from src.files import write_text

ROOT = Path(__file__).resolve().parent.parent

OUT = ROOT / "bench" / "results" / "grid.csv"
CELLS_OUT = ROOT / "bench" / "results" / "grid_cells.csv"


def run_grid(jobs: int, methods: str | None, results: Path) -> float:
    command = [sys.executable, "reproduce.py", "--demo", "--jobs", str(jobs), "--results", str(results)]
    command += ["--methods", methods] if methods else []
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def cell_times(results: Path) -> dict[str, float]:
    return {(r := json.loads(p.read_text()))["cell"]: r["wall_time_s"]
            for p in (results / "reproduction" / "cells").glob("*.json")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", default="1,2")
    parser.add_argument("--methods", help="a part of the demo grid (reproduce.py --methods)")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    cells = grid.select(grid.demo_grid(), methods=args.methods)
    estimates = grid.estimates(cells)
    rows, per_cell = [], {}
    for jobs in (int(j) for j in args.jobs.split(",")):
        walls, sums = [], []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="bench-grid-") as tmp:
                walls.append(run_grid(jobs, args.methods, Path(tmp)))
                times = cell_times(Path(tmp))
                sums.append(sum(times.values()))
                per_cell.setdefault(jobs, times)
        rows.append({"jobs": jobs, "cells": len(cells), "runs": args.runs,
                     "grid_wall_s_median": round(statistics.median(walls), 1),
                     "grid_wall_s_per_run": ";".join(f"{w:.1f}" for w in walls),
                     "sum_cell_wall_s": round(statistics.median(sums), 1),
                     "estimate_s": round(sum(estimates.values()), 1), "cpu_count": os.cpu_count()})
        print(rows[-1], flush=True)
    one = next((r for r in rows if r["jobs"] == 1), rows[0])
    for row in rows:
        row["speedup_vs_first"] = round(one["grid_wall_s_median"] / row["grid_wall_s_median"], 2)
        row["estimate_over_measured_one_job"] = round(row["estimate_s"] / one["grid_wall_s_median"], 2)
    for path, table in ((OUT, rows), (CELLS_OUT, [
            {"cell": c.id, "estimate_s": round(estimates[c], 1), "measured_s": per_cell[min(per_cell)].get(c.id)}
            for c in cells])):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
        write_text(path, buffer.getvalue())
    print(open(OUT).read())


if __name__ == "__main__":
    main()
