"""Reproduce the papers' tables: every method, backbone, task list and checkpoint route, one job per cell.

The grid (src/grid.py): Task Arithmetic, TIES, the four AdaMerging variants and EMR on ViT-B/32, B/16 and L/14 with
eight tasks on both checkpoint routes, and OPCM with its three continual baselines on 8, 14 and 20 tasks (Hugging
Face checkpoints, ten task orders). Without real checkpoints it runs the same methods on the bundled demo suite.
Cells run through submitit (`--cluster local`: subprocesses on this machine, `--jobs` at a time, one GPU each;
`slurm`: one Slurm job per cell; `debug`: in this process). A cell already finished with the same settings,
checkpoints and code version is skipped, so rerunning resumes an interrupted or partly failed grid; a failed cell is
reported with its log and the others go on. Afterwards results/REPRODUCTION.md (and .csv) put every number beside
the published one. `--dry-run` lists the cells with estimated times and runs nothing.
"""
import argparse
from pathlib import Path

from src.cli import DEFAULT_CHECKPOINTS, DEFAULT_RESULTS, entry

CLUSTER = "local"  # local, slurm or debug
RETRIES = 1  # requeues of a cell that reaches its time limit (it resumes where it stopped)
TIMEOUT_FACTOR = 3.0  # a cell's time limit: this many times its estimate, at least 10 minutes


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="list the cells and their estimated times; run nothing")
    parser.add_argument("--demo", action="store_true", help="the demo grid, even if real checkpoints are present")
    parser.add_argument("--only", help="comma-separated substrings of cell ids, e.g. ViT-B-32/hf,layer_wise")
    for name in ("backbones", "tasks", "methods", "routes"):
        parser.add_argument(f"--{name}", help=f"comma-separated {name} to keep")
    parser.add_argument("--cluster", choices=("local", "slurm", "debug"), default=CLUSTER)
    parser.add_argument("--jobs", type=int, default=0, help="cells at once on this machine [default: one per GPU, "
                                                            "or 1 without a GPU]")
    parser.add_argument("--gpus-per-job", type=int, default=None, help="[default: 1 when a GPU is present, else 0]")
    parser.add_argument("--partition", help="Slurm partition")
    parser.add_argument("--timeout-min", type=float, help="time limit per cell [default: from its estimate]")
    parser.add_argument("--retries", type=int, default=RETRIES)
    parser.add_argument("--report-only", action="store_true", help="rebuild results/REPRODUCTION.md; run nothing")
    parser.add_argument("--checkpoints", type=Path, help=f"checkpoint root, passed to every cell [default: "
                                                         f"{DEFAULT_CHECKPOINTS}]")
    parser.add_argument("--data", type=Path, help="dataset root, passed to every cell")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    from src import jobs, reproduction
    cells = jobs.cells_for(args)
    if args.dry_run:
        print(jobs.plan(cells, args.results))
        return
    failed = [] if args.report_only else jobs.run(cells, args, timeout_factor=TIMEOUT_FACTOR)
    print(f"report: {reproduction.write_report(cells, args.results)}")
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(cells)} cells failed: {', '.join(r['cell'] for r in failed)}; "
                           "their records in results/reproduction/cells/ name the error and the log. Rerunning "
                           "reproduce.py runs only the cells not finished yet")


if __name__ == "__main__":
    entry(main)
