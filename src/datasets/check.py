"""`python -m src.datasets.check --data DIR [--tasks TA8]`: which test splits are present, missing or wrong.

For every task it opens the test split exactly as an evaluation would (same readers, same size and class checks)
and prints one line per task, followed, for each problem, by the files it looked for and how to get them. The exit
status is 0 only when every task is ready.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.datasets import TASK_LISTS
from src.datasets.readers import DatasetError, MissingFiles
from src.datasets.tasks import GETTING_DATA, SPECS_BY_NAME, RealTask

_SHOWN = 5


def check(data: Path, tasks: list[str]) -> list[tuple[str, str, str]]:
    """[(task, status, detail)] with status 'ok', 'missing' or 'wrong'."""
    rows = []
    for task in tasks:
        spec = SPECS_BY_NAME[task]
        try:
            samples = RealTask(spec, data).samples("test")
        except MissingFiles as e:
            shown = [str(p) for p in e.paths[:_SHOWN]]
            more = f" (+{len(e.paths) - _SHOWN} more)" if len(e.paths) > _SHOWN else ""
            rows.append((task, "missing", f"not found: {', '.join(shown)}{more}\n    get it: {spec.source}"))
        except (DatasetError, OSError, ValueError, KeyError) as e:
            rows.append((task, "wrong", f"{e}\n    expected: {spec.source}"))
        else:
            classes = len(samples.classnames or spec.classnames)
            rows.append((task, "ok", f"{len(samples):,} test images, {classes} classes"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.datasets.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the dataset root (the --data of the scripts)")
    parser.add_argument("--tasks", default="TA8",
                        help=f"a task list ({', '.join(TASK_LISTS)}) or comma-separated task names")
    args = parser.parse_args(argv)
    tasks = TASK_LISTS.get(args.tasks) or [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in SPECS_BY_NAME]
    if unknown:
        parser.error(f"unknown tasks {unknown}; known: {', '.join(SPECS_BY_NAME)}")
    rows = check(args.data, tasks)
    width = max(len(t) for t in tasks)
    for task, status, detail in rows:
        print(f"{task:<{width}}  {status:<7}  {detail}")
    problems = sum(status != "ok" for _, status, _ in rows)
    print(f"\n{len(rows) - problems}/{len(rows)} tasks ready under {args.data}." +
          (f" See {GETTING_DATA} for the missing ones." if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
