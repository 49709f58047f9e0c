"""Task registry: a task name maps to a factory that, given the data folder, describes and opens the task's data."""
from __future__ import annotations

import abc
from typing import Callable

from torch.utils.data import Dataset


class TaskData(abc.ABC):
    """One classification task: its class names, zero-shot templates and splits.

    `templates` are `str.format` patterns with one `{}` for the class name (CLIP prompt templates).
    `split(name, preprocess)` returns a Dataset of `(preprocessed image tensor, int label)`, in a fixed order.
    """

    name: str
    classnames: list[str]
    templates: list[str]

    @abc.abstractmethod
    def split(self, split: str, preprocess: Callable) -> Dataset:
        ...


_FACTORIES: dict[str, Callable[..., TaskData]] = {}


def register(name: str):
    """Decorator: register `factory(location) -> TaskData` under a task name."""
    def wrap(factory):
        if name in _FACTORIES:
            raise ValueError(f"task '{name}' registered twice")
        _FACTORIES[name] = factory
        return factory
    return wrap


def get_task(name: str, location=None) -> TaskData:
    if name not in _FACTORIES:
        raise KeyError(f"unknown task '{name}'; known tasks: {', '.join(sorted(_FACTORIES))}")
    return _FACTORIES[name](location)


def known_tasks() -> list[str]:
    return sorted(_FACTORIES)
