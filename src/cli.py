"""The entry scripts' command line: one flag per hyperparameter constant, every value checked when parsed, and one
line per error.

An entry script declares its hyperparameters as constants, hands them to `parse_args` (each becomes a flag), then
opens a `src.run.Run`, merges, and reports. This module imports nothing heavy (no torch, no pandas): the scripts
import the rest only after their flags are parsed, so `--help` and a wrong flag answer at once.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from src.datasets import TALL20, TASK_LISTS, parse_tasks
from src.demo import MODEL as DEMO_MODEL
from src.demo import TASK_NAMES as DEMO_TASKS
from src.files import REPO

DEFAULT_CHECKPOINTS = REPO / "checkpoints"
MODELS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", DEMO_MODEL)
ROUTES = ("auto", "task_vectors", "hf")
DEFAULT_DATA = REPO / "data"
DEFAULT_RESULTS = REPO / "results"


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric hyperparameter: lo ≤ x ≤ hi (lo < x when `lo_open`); None: unbounded."""
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False

    def __str__(self) -> str:
        low = "(-inf" if self.lo is None else f"{'(' if self.lo_open else '['}{self.lo:g}"
        return f"{low}, {'inf)' if self.hi is None else f'{self.hi:g}]'}"

    def admits(self, value: float) -> bool:
        above = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        return above and (self.hi is None or value <= self.hi)


def comma_list(spec: str) -> list[str]:
    """The non-empty, stripped parts of a comma-separated flag value."""
    return [part.strip() for part in spec.split(",") if part.strip()]


@dataclass(frozen=True)
class Subset:
    """A flag whose value is a comma-separated selection of one or more `choices` (the error calls them `noun`s)."""
    choices: tuple[str, ...]
    noun: str = "value"

    def __call__(self, spec: str) -> str | None:
        unknown = [part for part in comma_list(spec) if part not in self.choices]
        if unknown or not comma_list(spec):
            return f"unknown {self.noun}(s) {unknown or '(none given)'}; choose from {', '.join(self.choices)}"
        return None


Rule = Sequence | Range | Callable[[object], "str | None"]


def constants(namespace: Mapping[str, object]) -> dict[str, object]:
    """A script's hyperparameters, read from its `globals()`: every UPPER_CASE name bound to a bool, int, float or
    str, in the order the script declares them. Each is declared once, as the constant a user edits; tables of
    choices (dicts, tuples) are not hyperparameters, and a script imports no UPPER_CASE scalar."""
    return {name: value for name, value in namespace.items()
            if name.isupper() and not name.startswith("_") and isinstance(value, (bool, int, float, str))}


def hyperparameters(args: argparse.Namespace) -> dict[str, object]:
    """The parsed hyperparameter values by their lower-case names (`SCALING_COEF` -> `scaling_coef`), presets
    applied: the keyword arguments of a protocol such as `src.adaptation.adamerging`."""
    return {name.lower(): value for name, value in args.hyperparameters.items()}


def parse_args(description: str, hyperparameters: Mapping[str, object], argv: list[str] | None = None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None,
               prefer_route: str = "task_vectors", rules: Mapping[str, Rule] | None = None) -> argparse.Namespace:
    """Common flags plus one flag per hyperparameter (`SCALING_COEF` -> `--scaling-coef`, default = the constant).

    Every value is checked before any work starts: float hyperparameters must be finite, and `rules` adds, per
    hyperparameter, its allowed choices (a sequence), its `Range`, or a function returning an error message (None
    when the value is fine). `extra(parser)` may add script-specific flags that are not hyperparameters.
    `prefer_route` is the route `--route auto` takes when both kinds of checkpoints are present (OPCM's paper used
    'hf').
    """
    rules = dict(rules or {})
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    runs = parser.add_argument_group("what to run on")
    runs.add_argument("--model", default="ViT-B-32", choices=MODELS)
    runs.add_argument("--checkpoints", type=Path, default=None,
                      help=f"checkpoint root holding <model>/zeroshot.pt etc. [default: {DEFAULT_CHECKPOINTS}, "
                           "falling back to the demo suite when it has none]")
    runs.add_argument("--data", type=Path, default=DEFAULT_DATA,
                      help="dataset root: the task_vectors layout, or on the hf route copies of the Hugging Face "
                           "dataset repositories (<data>/<org>/<name>/); datasets not found there are read from the "
                           "Hugging Face datasets cache")
    runs.add_argument("--tasks", default=None, help=f"a task list ({', '.join(TASK_LISTS)}) or comma-separated "
                                                     "task names [default: TA8; the demo tasks for --model demo]")
    runs.add_argument("--route", choices=ROUTES, default="auto",
                      help="checkpoint route: 'task_vectors' (open_clip checkpoints, data folders), 'hf' "
                           "(FusionBench's Hugging Face checkpoints and datasets) or 'auto' (whichever is present; "
                           f"{prefer_route} when both are)")
    runs.add_argument("--demo", action="store_true", help="run on the bundled demo suite even if real ones exist")
    runs.add_argument("--batch-size", type=_positive_int, default=128,
                      help="evaluation batch size (the reference's 128)")
    runs.add_argument("--device", default=None, help="cuda or cpu [default: cuda when available]")
    runs.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                      help="fp16 autocast for evaluation [default: on with CUDA; --no-amp gives the reference fp32]")
    runs.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="where results tables go")
    runs.add_argument("--reevaluate", action="store_true",
                      help="evaluate zero-shot and individual models again instead of reusing stored tables")
    runs.add_argument("--skip-done", action="store_true",
                      help="do nothing when a run with the same settings already finished with this code version "
                           "(reproduce.py passes it)")
    runs.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    method = parser.add_argument_group("hyperparameters (constants at the top of the script)")
    given = argparse.ArgumentParser(add_help=False)  # the same flags without defaults: which ones were given
    for name, default in hyperparameters.items():
        flag = "--" + name.lower().replace("_", "-")
        rule = rules.get(name)
        for group, value in ((method, default), (given, argparse.SUPPRESS)):
            if isinstance(default, bool):
                group.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
                continue
            kind = _finite_float if isinstance(default, float) else type(default)
            options = {}
            if isinstance(rule, Range):
                options = {"type": _bounded(kind, rule), "help": f"in {rule}"}
            elif isinstance(rule, (list, tuple)):
                options = {"choices": list(rule)}
            group.add_argument(flag, **{"type": kind, "default": value, **options})
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    for name, rule in rules.items():
        if callable(rule) and (problem := rule(getattr(args, name.lower()))):
            parser.error(f"--{name.lower().replace('_', '-')} {getattr(args, name.lower())}: {problem}")
    if args.tasks is not None:
        asked = parse_tasks(args.tasks)
        known = set(TALL20) | set(DEMO_TASKS)
        unknown = [t for t in asked if t not in known]
        if not asked or unknown:
            parser.error(f"--tasks {args.tasks}: unknown task(s) {unknown or '(none given)'}; give "
                         f"{', '.join(TASK_LISTS)} or names from: {', '.join(sorted(known))}")
    args.prefer_route = prefer_route
    args.given = set(vars(given.parse_known_args(argv)[0]))
    args.hyperparameters = {name: getattr(args, name.lower()) for name in hyperparameters}
    args.defaults = dict(hyperparameters)
    return args


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def _bounded(kind: Callable[[str], float], allowed: Range) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if not allowed.admits(value):
            raise argparse.ArgumentTypeError(f"{text} is outside {allowed}")
        return value
    return parse


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


class AlreadyDone(Exception):
    """`--skip-done` found this run's folder finished by the same code version: nothing to do."""

    def __init__(self, folder: Path, wall_time_s: float):
        super().__init__(f"{folder} already holds a finished run with these settings and this code version")
        self.folder, self.wall_time_s = folder, wall_time_s


def entry(main: Callable[[], object]) -> None:
    """Run an entry script's `main` as a command: an error prints one line `error: <message>` and exits 1 (the
    traceback only with --debug); Ctrl-C exits 130 with one line.

    OpenMP threads wait passively for work unless OMP_WAIT_POLICY says otherwise: with the default spin-wait, a
    2-core machine with anything else running made an AdaMerging step 40x slower. It has to be set before torch
    loads, which the scripts do only after parsing."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        main()
    except AlreadyDone as done:
        print(f"skipped: {done}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the one place every failure of a run is reported
        if "--debug" in sys.argv[1:]:
            raise
        print(f"error: {e}", file=sys.stderr)
        print("(run again with --debug for the traceback)", file=sys.stderr)
        sys.exit(1)


def apply_preset(args: argparse.Namespace, values: Mapping[str, object]) -> None:
    """Set the hyperparameters of a preset (lower-case names) on `args`, except those given on the command line."""
    for name, value in values.items():
        if name not in args.given:
            setattr(args, name, value)
            args.hyperparameters[name.upper()] = value


def task_list(spec: str | None, model: str = "ViT-B-32") -> list[str]:
    """The tasks `--tasks` names; by default TA8, or the eight demo tasks for the demo CLIP."""
    if spec is None:
        return list(DEMO_TASKS) if model == DEMO_MODEL else list(TASK_LISTS["TA8"])
    return parse_tasks(spec)


