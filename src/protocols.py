"""Protocols: the two run shapes beyond a one-shot merge, test-time adaptation and continual merging.

Both report progress through callbacks and take what an earlier, interrupted run left, so they hold no file
handling of their own: the entry script stores what `checkpoint` / `on_order` hand it (in its results folder) and
passes it back as `resume` / `done` when the same settings run again.

- `adapt`: AdaMerging's loop. Step 0 is evaluated, then each step draws every task's unlabeled batches from a
  `BatchSampler` and takes one optimiser step; the state after every step (coefficients, optimiser, sampler,
  history) goes to `checkpoint`, and resuming from it continues exactly as the uninterrupted run would have.
- `continual`: models arrive one at a time in each task order; after each arrival the merge is evaluated on the
  tasks seen so far. Every finished (method, order) goes to `on_order`; the ones in `done` are not run again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Protocol, Sequence

import pandas as pd
import torch
from tqdm.auto import tqdm

from src.merging.adamerging import AdaMerging, BatchStream, seeded_batches
from src.options import SAMPLINGS
from src.task_vectors import StateDict


class BatchSampler:
    """Index batches of unlabeled test images for every task and step, from one seeded generator.

    `fresh`: the first `batches_per_task` batches of a new shuffle of each task every step (the reference's fresh
    `shuffle=True` loader); `stream`: the next batches of an endless shuffled pass per task (FusionBench)."""

    def __init__(self, dataset_lengths: Sequence[int], batch_size: int, batches_per_task: int, sampling: str,
                 seed: int):
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        self.lengths, self.batch_size, self.per_task, self.sampling = list(dataset_lengths), batch_size, \
            batches_per_task, sampling
        self.generator = torch.Generator().manual_seed(seed)
        self.streams = [BatchStream(n, batch_size=batch_size, generator=self.generator) for n in self.lengths]

    def draw(self) -> list[list[torch.Tensor]]:
        """One step's index batches, per task in order."""
        if self.sampling == "stream":
            return [[next(stream) for _ in range(self.per_task)] for stream in self.streams]
        return [seeded_batches(n, batch_size=self.batch_size, num_batches=self.per_task,
                               generator=self.generator) for n in self.lengths]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "streams": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        for stream, saved in zip(self.streams, state["streams"], strict=True):
            stream.load_state_dict(saved)


@dataclass
class Adaptation:
    init: dict[str, float]  # accuracy per task at step 0
    history: pd.DataFrame  # one row per step: step, loss, avg_accuracy (where evaluated), per-task diagnostics
    coefficients: torch.Tensor  # the λ the merge applies after the last step


HISTORY_COLUMNS = ["step", "loss", "avg_accuracy"]


def adapt(trainer: AdaMerging, sampler: BatchSampler, images: Callable[[int, torch.Tensor], torch.Tensor],
          steps: int, evaluate: Callable[[torch.Tensor, str], dict[str, float]], *, eval_every: int = 0,
          resume: dict | None = None, checkpoint: Callable[[dict], None] | None = None,
          task_names: Sequence[str] | None = None) -> Adaptation:
    """Run `trainer` for `steps` steps; `images(task, indices)` stacks the test images of task `task` at `indices`,
    `evaluate(coefficients, label)` gives the accuracy per task of the merge with those coefficients (at step 0,
    every `eval_every` steps, not at the last step: the caller evaluates the final merge).

    A trainer with a `diagnostics()` method (AdaMerging's: per-task entropy and most-predicted-class share on the
    step's batches) adds them to each step's row, as `<name>_<task>` columns (`task_names`, or the task indices)."""
    if resume is None:
        init = evaluate(trainer.coefficients(), "step 0")
        rows = [{"step": 0, "loss": float("nan"), "avg_accuracy": mean_accuracy(init)}]
        first = 1
    else:
        trainer.load_state_dict(resume["trainer"])
        sampler.load_state_dict(resume["sampler"])
        init, rows, first = resume["init"], list(resume["history"]), resume["step"] + 1
    bar = tqdm(range(first, steps + 1), desc="AdaMerging", initial=first - 1, total=steps)
    for step in bar:
        batches = [[images(task, idx) for idx in task_batches] for task, task_batches in enumerate(sampler.draw())]
        loss = trainer.step(batches)
        accuracy = None
        if eval_every and step % eval_every == 0 and step != steps:
            accuracy = mean_accuracy(evaluate(trainer.coefficients(), f"step {step}"))
        rows.append({"step": step, "loss": loss, "avg_accuracy": accuracy, **_diagnostics(trainer, task_names)})
        bar.set_postfix(loss=f"{loss:.3f}")
        if checkpoint is not None:
            checkpoint({"step": step, "trainer": trainer.state_dict(), "sampler": sampler.state_dict(),
                        "init": init, "history": rows})
    columns = HISTORY_COLUMNS + [c for c in dict.fromkeys(k for row in rows for k in row) if c not in HISTORY_COLUMNS]
    return Adaptation(init, pd.DataFrame(rows, columns=columns), trainer.coefficients())


def _diagnostics(trainer, task_names: Sequence[str] | None) -> dict[str, float]:
    report = getattr(trainer, "diagnostics", None)
    if report is None:
        return {}
    return {f"{name}_{task_names[task] if task_names else task}": value
            for name, values in report().items() for task, value in enumerate(values)}


class ContinualMerger(Protocol):
    """What `continual` needs of a continual merging method (`src.merging.OPCM` and the continual baselines)."""

    def add(self, finetuned: StateDict) -> None: ...

    def state_dict(self) -> StateDict: ...

    @property
    def num_models(self) -> int: ...


STEP_COLUMNS = ["method", "order", "order_tasks", "step", "num_tasks", "task", "accuracy"]


def continual(mergers: Mapping[str, Callable[[], ContinualMerger]], orders: Sequence[Sequence[str]],
              finetuned: Callable[[str], StateDict],
              evaluate: Callable[[StateDict, str, list[str]], dict[str, float]], *,
              done: pd.DataFrame | None = None, on_order: Callable[[pd.DataFrame], None] | None = None
              ) -> pd.DataFrame:
    """Per-step accuracies (`STEP_COLUMNS`) of every method in `mergers` (name -> a new merger) over every order.

    After the t-th model of an order, the merge is evaluated by `evaluate(state_dict, label, tasks)` on that order's
    first t tasks. Rows of `done` for a (method, order) with the same task order are kept instead of recomputed;
    `on_order(all rows so far)` is called after every (method, order) finishes."""
    previous = done[STEP_COLUMNS] if done is not None else pd.DataFrame(columns=STEP_COLUMNS)
    frames, finished = [], set()
    for method in mergers:
        for i, order in enumerate(orders):
            rows = previous[(previous.method == method) & (previous.order == i)
                            & (previous.order_tasks == "|".join(order))]
            if len(rows) == len(order) * (len(order) + 1) // 2:  # every step of the order was evaluated
                frames.append(rows)
                finished.add((method, i))
    for method, make in mergers.items():
        for i, order in enumerate(tqdm(orders, desc=method)):
            if (method, i) in finished:
                continue
            merger, new = make(), []
            for step, task in enumerate(order, start=1):
                merger.add(finetuned(task))
                accuracy = evaluate(merger.state_dict(), f"{method} order {i} step {step}", list(order[:step]))
                new += [{"method": method, "order": i, "order_tasks": "|".join(order), "step": step,
                         "num_tasks": step, "task": t, "accuracy": a} for t, a in accuracy.items()]
            frames.append(pd.DataFrame(new, columns=STEP_COLUMNS))
            if on_order is not None:
                on_order(_in_order(frames, list(mergers)))
    return _in_order(frames, list(mergers))


def continual_summary(steps: pd.DataFrame, methods: Sequence[str], num_tasks: int, **labels: str) -> pd.DataFrame:
    """Final average accuracy (all `num_tasks` merged) per method: mean, std and count over orders; `labels` (such
    as backbone=…, family=…) become constant columns after the method's, then `num_tasks`."""
    final = steps[steps.num_tasks == num_tasks].groupby(["method", "order"]).accuracy.mean()
    summary = final.groupby("method").agg(["mean", "std", "count"]).reindex(list(methods)).reset_index().rename(
        columns={"mean": "final_avg_accuracy_mean", "std": "final_avg_accuracy_std", "count": "num_orders"})
    for i, (name, value) in enumerate({**labels, "num_tasks": num_tasks}.items(), start=1):
        summary.insert(i, name, value)
    return summary


def _in_order(frames: list[pd.DataFrame], methods: list[str]) -> pd.DataFrame:
    """The rows of `frames` sorted by method (in the given order), order and step, tasks in evaluation order."""
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=STEP_COLUMNS)
    rank = table.method.map({m: i for i, m in enumerate(methods)})
    return table.assign(_rank=rank).sort_values(["_rank", "order", "step"], kind="stable").drop(
        columns="_rank").reset_index(drop=True)


def mean_accuracy(accuracy: Mapping[str, float]) -> float:
    """The unweighted mean of per-task accuracies (the tables' avg)."""
    return sum(accuracy.values()) / len(accuracy)
