"""`python -m src.datasets.check [--source folders|hf] [--data DIR] [--tasks TA8]`: which test splits are present,
missing or wrong.

For every task it opens the test split exactly as an evaluation would (same readers, same size and class checks),
then decodes every test image (with a progress bar; `--no-decode` skips this), and prints one line per task,
followed, for each problem, by the files it looked for and how to get them, or the files that do not decode with
their class. The exit status is 0 only when every task is ready.

`--source folders` (default) reads the task_vectors / torchvision layouts under `--data`; `--source hf` reads the
Hugging Face datasets FusionBench evaluates, from copies under `--data` or from the Hugging Face datasets cache.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from src.datasets import TASK_LISTS, get_task, parse_tasks
from src.datasets.huggingface import DOWNLOAD_HINT, HF_SPECS_BY_NAME
from src.datasets.readers import DatasetError, MissingFiles
from src.datasets.tasks import GETTING_DATA, SPECS_BY_NAME

_SHOWN = 5


def _how_to_get(task: str, source: str) -> str:
    if source == "hf":
        return f"{HF_SPECS_BY_NAME[task]}: " + DOWNLOAD_HINT.format(task=task)
    return SPECS_BY_NAME[task].source


def check(data: Path | None, tasks: list[str], source: str = "folders",
          decode: bool = True) -> list[tuple[str, str, str]]:
    """[(task, status, detail)] with status 'ok', 'missing' or 'wrong'; `decode`: also read every test image."""
    rows = []
    for task in tasks:
        try:
            described = get_task(task, data, source=source)
            split = described.split("test", None)
        except MissingFiles as e:
            shown = [str(p) for p in e.paths[:_SHOWN]]
            more = f" (+{len(e.paths) - _SHOWN} more)" if len(e.paths) > _SHOWN else ""
            rows.append((task, "missing", f"not found: {', '.join(shown)}{more}\n    get it: "
                                          f"{_how_to_get(task, source)}"))
        except (DatasetError, OSError, ValueError, KeyError) as e:
            rows.append((task, "wrong", f"{e}\n    expected: {_how_to_get(task, source)}"))
        else:
            unreadable = _undecodable(task, split) if decode else []
            if unreadable:
                shown = "\n    ".join(unreadable[:_SHOWN])
                more = f"\n    (+{len(unreadable) - _SHOWN} more)" if len(unreadable) > _SHOWN else ""
                rows.append((task, "wrong", f"{len(unreadable)} of {len(split):,} test images do not decode:\n    "
                                            f"{shown}{more}"))
            else:
                rows.append((task, "ok", f"{len(split):,} test images{' decoded' if decode else ''}, "
                                         f"{len(described.classnames)} classes"))
    return rows


def _undecodable(task: str, split) -> list[str]:
    """One message per test image that cannot be read, naming its file (or index) and class."""
    problems = []
    for index in tqdm(range(len(split)), desc=f"decoding {task}", leave=False, disable=None):
        try:
            split[index]
        except (DatasetError, OSError, ValueError, SyntaxError) as e:
            problems.append(str(e) if isinstance(e, DatasetError) else f"test image {index}: {e}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.datasets.check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=("folders", "hf"), default="folders",
                        help="folders: the task_vectors/torchvision layouts; hf: FusionBench's Hugging Face datasets")
    parser.add_argument("--data", type=Path, default=None,
                        help="the dataset root (the --data of the scripts); required for --source folders")
    parser.add_argument("--tasks", default="TA8",
                        help=f"a task list ({', '.join(TASK_LISTS)}) or comma-separated task names")
    parser.add_argument("--decode", action=argparse.BooleanOptionalAction, default=True,
                        help="decode every test image (what an evaluation reads); --no-decode only lists the files")
    args = parser.parse_args(argv)
    if args.source == "folders" and args.data is None:
        parser.error("--data is required with --source folders")
    tasks = parse_tasks(args.tasks)
    unknown = [t for t in tasks if t not in SPECS_BY_NAME]
    if unknown:
        parser.error(f"unknown tasks {unknown}; known: {', '.join(SPECS_BY_NAME)}")
    rows = check(args.data, tasks, args.source, args.decode)
    width = max(len(t) for t in tasks)
    for task, status, detail in rows:
        print(f"{task:<{width}}  {status:<7}  {detail}")
    problems = sum(status != "ok" for _, status, _ in rows)
    where = args.data if args.source == "folders" else "the Hugging Face datasets cache" + \
        (f" and {args.data}" if args.data else "")
    print(f"\n{len(rows) - problems}/{len(rows)} tasks ready in {where}." +
          (f" See {GETTING_DATA} for the missing ones." if problems else ""))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
