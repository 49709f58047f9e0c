"""Continual merging baselines of the OPCM paper (docs/methods.md, "Continual baselines"), with OPCM's `.add` /
`.state_dict` interface.

Models arrive one at a time; θ₀ is the pretrained model, τ_t = θ_t − θ₀. Integer keys keep θ₀'s value.

- `ContinualTaskArithmetic`: θ̄_0 = θ₀, θ̄_t = θ̄_{t−1} + λ·τ_t, accumulated into the merge as the reference does, so
  after t models it equals batch Task Arithmetic over them up to float32 rounding. The reference scripts use
  λ = 0.3 for 8 tasks and 0.1 for 14 and 20 tasks (the config default is 0.3).
- `ContinualTIES`: θ̄_1 = θ₀ + λ·τ_1 (τ_1 neither trimmed nor sign-elected), then
  θ̄_t = θ̄_{t−1} + λ·TIES([θ̄_{t−1} − θ₀; τ_t]) with TIES the disjoint sum of the two rows' selected entries (top k %,
  elected sign). As in the reference, the previous merged delta is both a TIES input and kept in the model: the
  result is added to the merge, not put in its place (docs/methods.md).
- `ContinualWeightAverage`: θ̄_1 = θ_1, θ̄_t = ((t−1)·θ̄_{t−1} + θ_t)/t, the running simple average.
"""
from __future__ import annotations

import inspect
from typing import Iterator

import torch

from src.merging.opcm import OPCM
from src.merging.ties import ties_selected_vectors
from src.options import CONTINUAL_METHODS
from src.task_vectors import StateDict, check_finetuned, has_task_vector


class ContinualTaskArithmetic:
    """θ̄_t = θ̄_{t−1} + λ·τ_t starting from θ₀; `.state_dict()` before any `.add` is θ₀ itself."""

    name = "continual Task Arithmetic"

    def __init__(self, pretrained: StateDict, *, scaling_coef: float):
        self.pretrained = pretrained
        self.scaling_coef = scaling_coef
        self.num_models = 0
        self._merged = dict(pretrained)

    def add(self, finetuned: StateDict) -> None:
        check_finetuned(self.pretrained, [finetuned], self.name)
        for key, value in self._updates(finetuned):
            self._merged[key] = self._merged[key] + self.scaling_coef * value
        self.num_models += 1

    def _updates(self, finetuned: StateDict) -> Iterator[tuple[str, torch.Tensor]]:
        """(key, what λ scales) for every floating-point key: τ_t, one tensor at a time."""
        return ((key, finetuned[key] - theta0) for key, theta0 in self.pretrained.items() if has_task_vector(theta0))

    def state_dict(self) -> StateDict:
        return dict(self._merged)


class ContinualTIES(ContinualTaskArithmetic):
    """θ̄_t = θ̄_{t−1} + λ·(s_1 + s_2), (s_1, s_2) the TIES-selected entries of [θ̄_{t−1} − θ₀; τ_t]."""

    name = "continual TIES"

    def __init__(self, pretrained: StateDict, *, k: float, scaling_coef: float):
        super().__init__(pretrained, scaling_coef=scaling_coef)
        self.k = k

    def _updates(self, finetuned: StateDict) -> Iterator[tuple[str, torch.Tensor]]:
        if self.num_models == 0:  # τ_1 as it is: nothing to elect against yet
            return super()._updates(finetuned)
        previous, new = ties_selected_vectors(self.pretrained, [self._merged, finetuned], k=self.k)
        return ((key, previous[key] + new[key]) for key in previous)


class ContinualWeightAverage:
    """θ̄_t = ((t−1)·θ̄_{t−1} + θ_t)/t starting from θ̄_1 = θ_1; θ₀ only supplies the keys and integer values."""

    def __init__(self, pretrained: StateDict):
        self.pretrained = pretrained
        self.num_models = 0
        self._merged: StateDict | None = None

    def add(self, finetuned: StateDict) -> None:
        check_finetuned(self.pretrained, [finetuned], "continual weight averaging")
        t = self.num_models
        if self._merged is None:
            self._merged = {k: finetuned[k].clone() if has_task_vector(p) else p for k, p in self.pretrained.items()}
        else:
            for key, theta0 in self.pretrained.items():
                if has_task_vector(theta0):
                    self._merged[key] = (self._merged[key] * t + finetuned[key]) / (t + 1)
        self.num_models = t + 1

    def state_dict(self) -> StateDict:
        if self._merged is None:
            raise RuntimeError("ContinualWeightAverage.state_dict() before any model was added: call .add first")
        return dict(self._merged)


CONTINUAL_MERGERS = dict(zip(CONTINUAL_METHODS, (OPCM, ContinualTaskArithmetic, ContinualTIES, ContinualWeightAverage),
                             strict=True))


def continual_merger(method: str, pretrained: StateDict, **settings):
    """A new merger of `method` (a key of `CONTINUAL_MERGERS`) on θ₀. `settings` may hold the keyword arguments of
    every method at once (alpha, scaling_coef, k, …): each merger is given the ones its class takes, so one settings
    dict serves a run of several methods. A new method is one more class with `add`, `state_dict` and `num_models`,
    and one more entry in `CONTINUAL_METHODS` and `CONTINUAL_MERGERS`."""
    if method not in CONTINUAL_MERGERS:
        raise ValueError(f"unknown continual method '{method}'; choose from {', '.join(CONTINUAL_MERGERS)}")
    make = CONTINUAL_MERGERS[method]
    accepted = inspect.signature(make).parameters
    return make(pretrained, **{name: value for name, value in settings.items() if name in accepted})


def reference_scaling_coef(num_tasks: int) -> float:
    """λ of continual Task Arithmetic and TIES in the OPCM reference scripts: 0.3 for up to 8 tasks, 0.1 beyond."""
    return 0.3 if num_tasks <= 8 else 0.1
