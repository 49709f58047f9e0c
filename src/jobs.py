"""Running grid cells as jobs through submitit: Slurm on a cluster, subprocesses on one machine, or in-process.

Each cell is one job that calls its entry script's `main(argv)` with `--skip-done`, so a cell whose run already
finished with the same settings, checkpoints and code version returns at once, and an interrupted cell resumes from
its run folder (AdaMerging after its last step, OPCM after its last order). A job that reaches its time limit is
requeued by submitit (up to `retries` times) and resumes the same way. Each finished, skipped or failed cell leaves a
record, `<results>/reproduction/cells/<cell>.json`, which the report and `--dry-run` read.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import submitit

from src import grid
from src.cli import DEFAULT_CHECKPOINTS, AlreadyDone
from src.files import REPO, display_path, write_text
from src.grid import Cell

CLUSTERS = ("local", "slurm", "debug")


def records_folder(results: Path) -> Path:
    return Path(results) / "reproduction" / "cells"


def record_path(results: Path, cell: Cell) -> Path:
    return records_folder(results) / (cell.id.replace("/", "__") + ".json")


def read_record(results: Path, cell: Cell) -> dict | None:
    try:
        return json.loads(record_path(results, cell).read_text())
    except (OSError, ValueError):
        return None


def _write_record(results: Path, cell: Cell, record: dict) -> dict:
    record = {"cell": cell.id, **record}
    write_text(record_path(results, cell), json.dumps(record, indent=1) + "\n")
    return record


class CellJob(submitit.helpers.Checkpointable):
    """One cell as a submitit job. Checkpointable: on a timeout or preemption submitit resubmits the same job, which
    resumes from the run's folder."""

    def __init__(self, cell: Cell, shared_argv: list[str], results: Path):
        self.cell, self.shared_argv, self.results = cell, list(shared_argv), Path(results)

    def __call__(self) -> dict:
        started = time.time()
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        main = importlib.import_module(self.cell.script).main
        argv = [*self.cell.argv(), *self.shared_argv, "--results", str(self.results), "--skip-done"]
        try:
            folder, status = main(argv), "done"
            wall_time_s = time.time() - started
        except AlreadyDone as done:  # the record keeps the time the run took, not the time to find it done
            folder, status, wall_time_s = done.folder, "skipped", done.wall_time_s
        except SystemExit as e:  # a rejected flag: argparse has printed why to the log
            raise RuntimeError(f"{self.cell.script}.py {' '.join(argv)} exited with status {e.code}") from None
        return _write_record(self.results, self.cell, {
            "status": status, "run_folder": display_path(folder), "argv": argv,
            "started": started, "wall_time_s": round(wall_time_s, 2),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")})


@dataclass
class Launcher:
    """How cells run: submitit's executor for `cluster`, at most `jobs` at a time on one machine (each on its own GPU
    when `gpus` are listed), with a time limit per cell and `retries` requeues after a timeout."""
    cluster: str
    folder: Path
    jobs: int = 1
    gpus: tuple[int, ...] = ()
    gpus_per_job: int = 0
    partition: str | None = None
    timeout_min: Callable[[Cell], float] = lambda cell: 60.0
    retries: int = 1
    poll_s: float = 1.0

    def executor(self, cell: Cell, slot: int) -> submitit.Executor:
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster,
                                         slurm_max_num_timeout=self.retries, local_max_num_timeout=self.retries)
        options = {"name": cell.id, "timeout_min": max(1, round(self.timeout_min(cell))),
                   "gpus_per_node": self.gpus_per_job}
        if self.cluster == "slurm" and self.partition:
            options["slurm_partition"] = self.partition
        if self.cluster == "local" and self.gpus:
            # submitit's local executor gives every job the first GPUs; each concurrent job gets its own instead.
            options["local_visible_gpus"] = list(self.gpus[slot * self.gpus_per_job:(slot + 1) * self.gpus_per_job])
        executor.update_parameters(**options)
        return executor

    def run(self, cells: list[Cell], shared_argv: list[str], results: Path,
            on_record: Callable[[dict], None] = lambda record: None) -> list[dict]:
        """Run every cell; a failing cell gets a 'failed' record with its error and log and the others go on.
        Returns the records in the order the cells finished."""
        # The jobs import the entry scripts and src from this checkout, wherever they run.
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        limit = len(cells) if self.cluster == "slurm" else self.jobs  # Slurm queues; one machine takes `jobs`
        waiting, running, records = list(cells), {}, []
        try:
            while waiting or running:
                while waiting and len(running) < limit:
                    slot = min(set(range(limit)) - set(running))
                    cell = waiting.pop(0)
                    running[slot] = (cell, self.executor(cell, slot).submit(CellJob(cell, shared_argv, results)))
                for slot, (cell, job) in list(running.items()):
                    if job.done():
                        records.append(self._collect(cell, job, results))
                        on_record(records[-1])
                        del running[slot]
                if running:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            # submitit's local jobs outlive the process that started them; stop them with it. Slurm jobs go on and
            # record themselves: `reproduce.py --report-only` collects them later.
            if self.cluster != "slurm":
                for _, job in running.values():
                    job.cancel(check=False)
            raise
        return records

    @staticmethod
    def _collect(cell: Cell, job: submitit.Job, results: Path) -> dict:
        try:
            return job.result()
        except Exception as e:  # noqa: BLE001 - a failed cell is recorded and the grid goes on
            return _write_record(results, cell, {
                "status": "failed", "error": _job_error(e), "log": display_path(job.paths.stderr),
                "finished": time.strftime("%Y-%m-%d %H:%M:%S")})


def _job_error(error: Exception) -> str:
    """The exception a failed job raised. submitit's error holds the job's traceback, then where its logs are; the
    exception is what follows the last frame of the traceback."""
    lines = str(error).split("\n----------------------\nYou can check")[0].splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    start = frames[-1] + 1 if frames else 0
    while start < len(lines) and lines[start].startswith(" "):  # the frame's source line and its ^^^ marks
        start += 1
    return "\n".join(lines[start:]).strip() or type(error).__name__


def cells_for(args) -> list[Cell]:
    """The cells reproduce.py's flags select: the demo grid with `--demo` or when no real checkpoints are present
    (a dry run always lists the real grid), else the full grid; then its filters."""
    from src.checkpoints import routes_present
    from src.run import DEMO_BANNER
    demo, root = args.demo, args.checkpoints or DEFAULT_CHECKPOINTS
    if not demo and not args.dry_run and not any(routes_present(root, b) for b in grid.BACKBONES):
        print(DEMO_BANNER.format(missing=root), file=sys.stderr)
        demo = True
    cells = grid.select(grid.demo_grid() if demo else grid.full_grid(), only=args.only, backbones=args.backbones,
                        tasks=args.tasks, methods=args.methods, routes=args.routes)
    if not cells:
        raise ValueError("no cell of the grid matches --only/--backbones/--tasks/--methods/--routes; "
                         "`python reproduce.py --dry-run` lists them")
    return cells


def plan(cells: list[Cell], results: Path) -> str:
    """What `--dry-run` prints: every cell with its state and estimated time, and the total still to run."""
    estimates = grid.estimates(cells)
    lines, left = [f"{'cell':<50} {'state':<9} {'estimate':>9}  measured"], 0.0
    for cell in cells:
        record = read_record(results, cell) or {}
        state = {"skipped": "done"}.get(record.get("status"), record.get("status", "to run"))
        measured = grid.format_duration(record["wall_time_s"]) if state == "done" else ""
        left += estimates[cell] if state != "done" else 0
        lines.append(f"{cell.id:<50} {state:<9} {grid.format_duration(estimates[cell]):>9}  {measured}")
    bases = sorted({f"{b}: {grid.SPEEDS[b].basis}" for b in {c.backbone for c in cells}})
    lines += ["", f"{len(cells)} cells; still to run: {grid.format_duration(left)} of device time "
                  f"({left / 3600:.1f} h), divided by the number of jobs running at once.",
              "Speeds behind the estimates:", *(f"  {b}" for b in bases)]
    return "\n".join(lines)


def run(cells: list[Cell], args, timeout_factor: float) -> list[dict]:
    """Run `cells` as reproduce.py's flags say; returns the records of the cells that failed."""
    import torch
    from tqdm import tqdm
    gpus = torch.cuda.device_count()
    estimates = grid.estimates(cells)
    launcher = Launcher(
        cluster=args.cluster, folder=Path(args.results) / "reproduction" / "logs", jobs=args.jobs or max(gpus, 1),
        gpus=tuple(range(gpus)), gpus_per_job=(1 if gpus else 0) if args.gpus_per_job is None else args.gpus_per_job,
        partition=args.partition, retries=args.retries,
        timeout_min=lambda cell: args.timeout_min or max(10.0, timeout_factor * estimates[cell] / 60))
    shared = [flag for name, flag in (("checkpoints", "--checkpoints"), ("data", "--data"))
              if getattr(args, name) is not None for flag in (flag, str(getattr(args, name)))]
    progress = tqdm(total=len(cells), desc="grid", unit="cell")

    def show(record: dict) -> None:
        progress.update()
        detail = f"{record['error'].splitlines()[0]} (log: {record['log']})" if record["status"] == "failed" else \
            f"{record['run_folder']} ({grid.format_duration(record['wall_time_s'])})"
        progress.write(f"{record['cell']}: {record['status']}: {detail}")
    records = launcher.run(cells, shared, args.results, on_record=show)
    progress.close()
    return [r for r in records if r["status"] == "failed"]
