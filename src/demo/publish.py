"""Regenerate the committed demo tables in `src/demo/results/`: `python -m src.demo.publish` (or `make demo-results`).

Runs every entry script with its default settings on the demo suite into a scratch results folder, then replaces
`src/demo/results/` with what those runs wrote, in one rename. It is the only command that writes there: a user's
run writes to `results/demo/<method>-<settings hash>/` and never touches the committed tables.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import shutil
import sys
import tempfile
from pathlib import Path

PUBLISHED = Path(__file__).resolve().parent / "results"
# (entry script module, extra flags): the runs the README's demo tables show.
RUNS = [("main_task_arithmetic", []), ("main_ties_merging", []), ("main_layer_wise_adamergingpp", []),
        ("main_layer_wise_adamergingpp", ["--variant", "task_wise_pp"]), ("main_emr_merging", []), ("main_opcm", [])]

# The rows of summary.png, in the order of the papers' tables (the AdaMerging step-0 and EMR ablation tables stay
# in their CSV files).
SUMMARY_ROWS = ["zeroshot", "task_arithmetic", "ties_merging", "task_wise_adamergingpp", "layer_wise_adamergingpp",
                "emr_merging", "individual"]


def publish(target: Path = PUBLISHED, runs: list[tuple[str, list[str]]] = RUNS) -> list[str]:
    """Run `runs` on the demo suite and make `target` hold exactly their tables, sidecars and plots, plus
    `summary.png` (all methods × tasks); returns the file names written."""
    target = Path(target)
    with tempfile.TemporaryDirectory(prefix="publish-", dir=target.parent) as scratch:
        for module, flags in runs:
            argv = ["--demo", "--results", str(Path(scratch) / "runs"), *flags]
            with _argv(f"{module}.py", flags):  # the sidecars record the command a user would type
                importlib.import_module(module).main(argv)
        staged = Path(scratch) / "staged"
        staged.mkdir()
        for path in sorted((Path(scratch) / "runs" / "demo").glob("*/*")):
            # Locks, resumable state and the saved EMR model are run by-products, not tables; zeroshot.csv and
            # individual.csv are the same in every run folder (one baseline store), so any copy will do.
            if path.name.startswith(".") or path.name.endswith((".state.pt", ".safetensors")):
                continue
            shutil.copy2(path, staged / path.name)
        draw_summary(staged)
        old = Path(scratch) / "old"
        if target.exists():
            target.rename(old)
        staged.rename(target)
        return sorted(p.name for p in target.iterdir())


def draw_summary(folder: Path) -> Path:
    """`folder/summary.png`: the accuracy of each method of `SUMMARY_ROWS` on every demo task."""
    from src.plots import accuracy_grid
    from src.results import summary
    table = summary(folder).T
    path = folder / "summary.png"
    accuracy_grid(table.loc[[m for m in SUMMARY_ROWS if m in table.index]], path, "demo suite: accuracy (%)")
    return path


@contextlib.contextmanager
def _argv(script: str, flags: list[str]):
    saved = sys.argv
    sys.argv = [script, *flags]
    try:
        yield
    finally:
        sys.argv = saved


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=Path, default=PUBLISHED, help="folder to replace with the demo tables")
    args = parser.parse_args(argv)
    names = publish(args.target)
    print(f"{args.target}: {len(names)} files")


if __name__ == "__main__":
    main()
