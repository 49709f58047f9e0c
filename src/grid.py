"""The reproduction grid as data: every run the papers' tables need, one independent cell each (README,
"Reproducing the tables").

A cell is one entry-script run: a method on one backbone, task list and checkpoint route. The eight-task methods run
on ViT-B/32, B/16 and L/14 with both checkpoint routes; OPCM and its three continual baselines run on FusionBench's
Hugging Face checkpoints (the route the OPCM paper used) with 8, 14 and 20 tasks, ten task orders each. The demo
grid is the same methods on the bundled demo suite.

`estimate_s` prices a cell from how many test images it evaluates, how many AdaMerging steps and continual merges it
takes, and per-backbone speeds (`SPEEDS`): measured on this repository's 2-core CPU machine for the demo, planning
assumptions for the real backbones on one GPU (not measured here; replace them with the `wall_time_s` your own runs
record).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from src.cli import comma_list
from src.datasets import TASK_LISTS
from src.demo import MODEL as DEMO_MODEL
from src.demo import TASK_NAMES as DEMO_TASKS
from src.options import ADAMERGING_VARIANTS, CONTINUAL_METHODS

BACKBONES = ("ViT-B-32", "ViT-B-16", "ViT-L-14")
ROUTES = ("task_vectors", "hf")
DEMO_ROUTE = "demo"
# method (its results table) -> (entry script, flags that select it)
METHODS = {
    "task_arithmetic": ("main_task_arithmetic", ()),
    "ties_merging": ("main_ties_merging", ()),
    **{name: ("main_layer_wise_adamergingpp", ("--variant", variant)) for variant, name in ADAMERGING_VARIANTS.items()},
    "emr_merging": ("main_emr_merging", ()),
    **{method: ("main_opcm", ("--method", method)) for method in CONTINUAL_METHODS},
}
CONTINUAL = CONTINUAL_METHODS
ONE_SHOT = tuple(m for m in METHODS if m not in CONTINUAL)
ADAPTIVE = tuple(m for m in METHODS if "adamerging" in m)
CONTINUAL_TASK_LISTS = ("TA8", "TALL14", "TALL20")
NUM_ORDERS = 10  # main_opcm.py's default: the OPCM paper's ten random orders per configuration


@dataclass(frozen=True)
class Cell:
    """One run of the grid: `method` on `backbone` with the task list `tasks` through checkpoint route `route`;
    `flags` sets hyperparameters away from the entry script's constants (the paper grid sets none)."""
    method: str
    backbone: str
    tasks: str
    route: str
    flags: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The method, and the flags when it has any: the cell's row in the report."""
        return self.method + "".join(f"_{flag.lstrip('-')}" for flag in self.flags)

    @property
    def id(self) -> str:
        return f"{self.backbone}/{self.route}/{self.tasks}/{self.label}"

    @property
    def script(self) -> str:
        return METHODS[self.method][0]

    def argv(self) -> list[str]:
        """The entry script's flags for this cell (the shared ones, such as --results, are added by the caller)."""
        where = ["--demo"] if self.route == DEMO_ROUTE else \
            ["--model", self.backbone, "--tasks", self.tasks, "--route", self.route]
        return [*where, *METHODS[self.method][1], *self.flags]

    def task_names(self) -> list[str]:
        return list(DEMO_TASKS) if self.route == DEMO_ROUTE else list(TASK_LISTS[self.tasks])



def full_grid() -> list[Cell]:
    """Every cell the papers' tables need, eight-task methods first, then the continual ones."""
    one_shot = [Cell(m, b, "TA8", r) for b in BACKBONES for r in ROUTES for m in ONE_SHOT]
    continual = [Cell(m, b, t, "hf") for b in BACKBONES for t in CONTINUAL_TASK_LISTS for m in CONTINUAL]
    return one_shot + continual


def demo_grid() -> list[Cell]:
    """The same methods on the bundled demo suite (eight tasks; one route)."""
    return [Cell(m, DEMO_MODEL, "demo", DEMO_ROUTE) for m in METHODS]


def select(cells: list[Cell], *, only: str | None = None, backbones: str | None = None, tasks: str | None = None,
           methods: str | None = None, routes: str | None = None) -> list[Cell]:
    """The cells matching every given filter. Each filter is a comma-separated list; `only` matches substrings of
    the cell ids (`ViT-B-32/hf` or `layer_wise`). An unknown backbone, task list, method or route is an error."""
    def parse(spec: str | None, allowed, flag: str) -> set[str] | None:
        if spec is None:
            return None
        asked = set(comma_list(spec))
        unknown = sorted(asked - set(allowed))
        if unknown or not asked:
            raise ValueError(f"{flag} {spec}: unknown {unknown or '(none given)'}; choose from {', '.join(allowed)}")
        return asked
    wanted = {"backbone": parse(backbones, (*BACKBONES, DEMO_MODEL), "--backbones"),
              "tasks": parse(tasks, (*TASK_LISTS, "demo"), "--tasks"),
              "method": parse(methods, tuple(METHODS), "--methods"),
              "route": parse(routes, (*ROUTES, DEMO_ROUTE), "--routes")}
    pieces = comma_list(only) if only else []
    return [c for c in cells
            if all(allowed is None or getattr(c, field) in allowed for field, allowed in wanted.items())
            and (not pieces or any(p in c.id for p in pieces))]


@dataclass(frozen=True)
class Speed:
    """What a cell's running time is made of, for one backbone on one device."""
    images_per_s: float  # evaluation throughput (test images through the image encoder and head)
    start_s: float  # process start, imports, loading and hashing the checkpoints, building the heads
    merge_step_s: float  # AdaMerging: rebuilding the merged weights and the optimiser step, per step
    add_s: float  # OPCM / continual TIES: merging in one more model (SVDs, top-k)
    basis: str


_ASSUMED = "assumed for one A100-class GPU with fp16 evaluation; not measured in this repository"
SPEEDS = {
    "ViT-B-32": Speed(3000, 90, 0.05, 3, _ASSUMED),
    "ViT-B-16": Speed(2000, 90, 0.05, 3, _ASSUMED),
    "ViT-L-14": Speed(700, 180, 0.2, 10, _ASSUMED),
    DEMO_MODEL: Speed(5500, 4, 0.3, 0.1, "measured on a 2-core CPU: evaluation, start-up, a layer-wise step"),
}
_BACKWARD = 3  # a forward and backward pass costs about three forward passes


def test_sizes(cell: Cell) -> dict[str, int]:
    """Test images per task, as the cell's route reads them."""
    if cell.route == DEMO_ROUTE:
        from src.demo.tasks import SPLIT_SIZES
        return {t: SPLIT_SIZES["test"] for t in cell.task_names()}
    from src.datasets.huggingface import HF_SPECS_BY_NAME
    from src.datasets.tasks import SPECS
    sizes = {spec.name: spec.test_size for spec in SPECS}
    if cell.route == "hf":
        sizes.update({t: spec.test_size for t, spec in HF_SPECS_BY_NAME.items() if spec.test_size})
    return {t: sizes[t] for t in cell.task_names()}


def estimate_s(cell: Cell, baselines: bool = False) -> float:
    """Estimated seconds for `cell` (plus the zero-shot and individual evaluations when `baselines`: the first cell
    of a backbone, route and task list evaluates them; later cells reuse them)."""
    import main_layer_wise_adamergingpp as adamerging
    import main_opcm as opcm
    from src.options import FUSIONBENCH
    speed, sizes = SPEEDS[cell.backbone], test_sizes(cell)
    images, seconds, num_tasks = sum(sizes.values()), speed.start_s, len(sizes)
    passes = 2 if baselines else 0
    if cell.method in CONTINUAL:
        # Step t evaluates the first t tasks of a random order: on average (t / T) of the images.
        passes += opcm.NUM_ORDERS * (num_tasks + 1) / 2
        if cell.method in ("opcm", "continual_ties"):
            seconds += opcm.NUM_ORDERS * num_tasks * speed.add_s
    elif cell.method in ADAPTIVE:
        passes += 2  # step 0 and the final merge
        hf = cell.route == "hf"
        steps = FUSIONBENCH["steps"] if hf else adamerging.STEPS
        batches = FUSIONBENCH["batches_per_task"] if hf else adamerging.BATCHES_PER_TASK
        per_step = num_tasks * batches * adamerging.ADAPT_BATCH_SIZE * _BACKWARD / speed.images_per_s
        seconds += steps * (per_step + speed.merge_step_s)
    else:
        passes += 2 if cell.method == "emr_merging" else 1  # EMR also evaluates its unified-vector ablation
    return seconds + passes * images / speed.images_per_s


def estimates(cells: list[Cell]) -> dict[Cell, float]:
    """`estimate_s` of every cell, the baselines charged to the first cell of each backbone, route and task list."""
    seen, out = set(), {}
    for cell in cells:
        group = (cell.backbone, cell.route, cell.tasks)
        first = cell.method not in CONTINUAL and group not in seen
        if first:
            seen.add(group)
        out[cell] = estimate_s(cell, baselines=first)
    return out


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h" if seconds < 10 * 3600 else f"{math.ceil(seconds / 3600)} h"
