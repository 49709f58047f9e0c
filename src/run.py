"""One entry-script run: the suite its flags select (or the bundled demo), its output folder, its tables and
provenance, and what it prints (README, "Results files")."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from src.checkpoints import CheckpointError, find_checkpoints
from src.cli import DEFAULT_CHECKPOINTS, DEMO_MODEL, DEMO_TASKS, AlreadyDone, task_list
from src.eval import default_device
from src.families import DEMO_FAMILY, FAMILY_OF_ROUTE
from src.files import REPO, atomic_write, display_path, exclusive, write_text
from src.results import code_version, format_table, paper_numbers, provenance, results_table, write_results
from src.suite import Suite, make_suite

DONE = ".done.json"  # written into a run's folder when the run finishes
DEMO_ROOT = REPO / "checkpoints"  # where the bundled demo suite lives, whatever --checkpoints says
DEMO_BANNER = """\
==============================================================================================
 DEMO SUITE: no real checkpoints were found under {missing}, so this runs on the bundled
 offline demo (a tiny CLIP and eight synthetic tasks; numbers are NOT comparable to the papers).
 For real results put the task_vectors checkpoints under checkpoints/<model>/ and the datasets
 under data/ (README: 'Getting the checkpoints and data'), or pass --checkpoints DIR --data DIR.
=============================================================================================="""


def open_suite(args: argparse.Namespace) -> Suite:
    """The real checkpoints the flags point at or, when none were asked for and none are present, the demo suite."""
    if not args.demo:
        root = args.checkpoints or DEFAULT_CHECKPOINTS
        try:
            return _suite(args, root, args.model, task_list(args.tasks, args.model))
        except CheckpointError:
            # Only an absent checkpoint folder means "no real checkpoints here"; an incomplete one is an error that
            # lists what is missing.
            if args.checkpoints is not None or args.route != "auto" or (Path(root) / args.model).exists():
                raise
            print(DEMO_BANNER.format(missing=Path(root) / args.model), file=sys.stderr)
    asked = task_list(args.tasks, DEMO_MODEL)
    return _suite(args, DEMO_ROOT, DEMO_MODEL, asked if set(asked) <= set(DEMO_TASKS) else DEMO_TASKS)


def _suite(args: argparse.Namespace, root: Path, model: str, tasks: list[str]) -> Suite:
    # The bundled demo is labelled 'demo'; any other tree's family is the route's, or detected from its layout.
    if model == DEMO_MODEL and Path(root) == DEMO_ROOT:
        found = find_checkpoints(root, model, tasks, family=DEMO_FAMILY)
    else:
        found = find_checkpoints(root, model, tasks, family=FAMILY_OF_ROUTE.get(args.route),
                                 prefer=FAMILY_OF_ROUTE[args.prefer_route])
    # A whole CLIP beside the checkpoints (the demo ships one) gives the text tower for the zero-shot heads;
    # otherwise it is open_clip's 'openai' weights, as task_vectors used.
    clip = Path(root) / model / "clip.pt"
    return make_suite(found, tasks, text_tower=str(clip) if clip.exists() else "openai",
                      data_location=args.data, batch_size=args.batch_size, device=args.device, amp=args.amp,
                      results=args.results, reevaluate_baselines=args.reevaluate)


class Run:
    """One entry-script run: its suite, its output folder, tables, provenance and messages. Use it in a `with` block.

    The output folder, `<results>/<suite>/<name>-<key>/`, is named by a hash of everything that defines the numbers
    (the hyperparameters after any preset, the tasks, the checkpoint files, the evaluation precision), so a run
    with other settings, another task list or other checkpoints never replaces another's tables, and rerunning the
    same settings finds its own folder again (the long protocols resume there). The folder is created and locked
    before any work: an unwritable folder fails at once, and a second run with the same settings stops with the
    first one's pid instead of interleaving its files. A run that finishes marks its folder done (with the code
    version); with `--skip-done`, a run whose folder is marked done by the same code version raises `AlreadyDone`
    at once. `configure(args, suite)`, when given, settles the
    hyperparameters that depend on the suite (presets) before the folder is named.
    """

    def __init__(self, args: argparse.Namespace, name: str, suite: Suite | None = None,
                 configure: Callable[[argparse.Namespace, Suite], None] | None = None):
        import torch
        if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: no CUDA device is available here; use --device cpu or leave "
                             "--device unset")
        self.args, self.name = args, name
        self.started = time.time()
        self.suite = suite or open_suite(args)
        if configure is not None:
            configure(args, self.suite)
        self.device = str(args.device or default_device())
        self.key = run_key(name, args.hyperparameters, self.suite.tasks, self.suite.checkpoint_hashes(),
                           self.suite.uses_amp)
        self.out = Path(args.results) / self.suite.name / f"{name}-{self.key}"
        self._hold = contextlib.ExitStack()
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._hold.enter_context(exclusive(self.out / ".lock", what=f"results folder {display_path(self.out)}"))
        except OSError as e:
            raise OSError(f"results folder {self.out} is not writable ({e.strerror or e}); pass --results DIR "
                          "with a writable folder") from None
        finished = self.finished()
        if args.skip_done and finished and finished["code_version"] == code_version():
            self._hold.close()
            raise AlreadyDone(self.out, finished["wall_time_s"])
        self._baseline_tables_written = False
        print(f"{name} on {self.suite.model} ({self.suite.family}, {len(self.suite.tasks)} tasks): "
              f"{describe_settings(args)}\noutput: {display_path(self.out)}/", file=sys.stderr)

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        try:
            if exc_type is None:
                write_text(self.out / DONE, json.dumps({"code_version": code_version(),
                                                        "wall_time_s": round(time.time() - self.started, 2)}) + "\n")
        finally:
            self._hold.close()

    def finished(self) -> dict | None:
        """How the last finished run with these settings ended (code version, wall time); None if none has."""
        try:
            return json.loads((self.out / DONE).read_text())
        except (OSError, ValueError):
            return None

    def load_state(self, name: str) -> dict | None:
        """What `save_state(name, ...)` stored in this run's folder by an earlier, interrupted run, if anything."""
        import torch
        path = self.out / f"{name}.state.pt"
        if not path.exists():
            return None
        print(f"resuming from {display_path(path)}", file=sys.stderr)
        return torch.load(path, map_location="cpu", weights_only=True)

    def save_state(self, name: str, state: dict) -> None:
        import torch
        with atomic_write(self.out / f"{name}.state.pt") as tmp:
            torch.save(state, tmp)

    def read_table(self, name: str):
        """`<out>/<name>.csv` as a DataFrame, or None when this run's folder has none yet."""
        import pandas as pd
        path = self.out / f"{name}.csv"
        return pd.read_csv(path) if path.exists() else None

    def report(self, method: str, accuracy: Mapping[str, float], **extra) -> Path:
        """Print `method`'s accuracies next to the zero-shot and individual rows, then write `<out>/<method>.csv`
        (+ provenance) and, once per run, the two baseline tables beside it."""
        zeroshot, individual = self.suite.baseline("zeroshot"), self.suite.baseline("individual")
        # A merge that does worse than not merging at all is usually a broken run (EMR#10-style collapse).
        below = [t for t in accuracy if t in zeroshot and accuracy[t] < zeroshot[t]]
        print(format_table({"zero-shot": zeroshot, "individual": individual, method: accuracy}, self.suite.tasks))
        if below:
            print(f"WARNING: {method} is below zero-shot on {', '.join(below)}", file=sys.stderr)
        if not self._baseline_tables_written:
            for kind, values in (("zeroshot", zeroshot), ("individual", individual)):
                self._write(kind, values, individual, {}, hyperparameters={})
            self._baseline_tables_written = True
        path = self._write(method, accuracy, individual, {"below_zeroshot": below, **extra},
                           self.args.hyperparameters)
        print(f"results: {display_path(path)}")
        return path

    def write_table(self, name: str, table, hyperparameters: dict | None = None, **extra) -> Path:
        """`<out>/<name>.csv` and its provenance sidecar, for tables other than the per-task accuracy table."""
        path = self.out / f"{name}.csv"
        write_results(path, table, provenance(
            hyperparameters=self.args.hyperparameters if hyperparameters is None else hyperparameters,
            checkpoints=self.suite.checkpoint_hashes(), seed=extra.pop("seed", None), started=self.started,
            device=self.device, tasks=self.suite.tasks, run_key=self.key,
            changed_settings=changed_settings(self.args), amp=self.suite.uses_amp, **extra))
        return path

    def _write(self, method: str, accuracy: Mapping[str, float], individual: Mapping[str, float],
               extra: dict, hyperparameters: dict) -> Path:
        paper = paper_numbers(self.suite.model, self.suite.family, method)
        table = results_table(method, self.suite.model, self.suite.family, accuracy, individual, paper)
        return self.write_table(method, table, hyperparameters, **extra)


def run_key(name: str, hyperparameters: Mapping[str, object], tasks: Sequence[str],
            checkpoint_hashes: Mapping[str, str], amp: bool) -> str:
    """Eight hex digits naming a run's settings: equal for equal settings, different when any of them differs."""
    blob = json.dumps({"name": name, "hyperparameters": dict(hyperparameters), "tasks": list(tasks),
                       "checkpoints": sorted(checkpoint_hashes.values()), "amp": amp}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def changed_settings(args: argparse.Namespace) -> dict[str, object]:
    """The hyperparameters whose value differs from the script's constant (by a flag or a preset)."""
    return {name: value for name, value in args.hyperparameters.items() if value != args.defaults[name]}


def describe_settings(args: argparse.Namespace) -> str:
    """`name=value` for every hyperparameter, the script's constant beside those that differ from it."""
    changed = changed_settings(args)
    return ", ".join(f"{name.lower()}={value!r}" + (f" (script: {args.defaults[name]!r})" if name in changed else "")
                     for name, value in args.hyperparameters.items()) or "no hyperparameters"
