"""Task registry: a (source, task name) pair maps to a factory that, given the data location, describes and opens the
task's data. Sources: "folders" (files in the task_vectors / torchvision layouts), "hf" (the Hugging Face datasets
FusionBench uses) and "demo" (the generated demo tasks)."""
from __future__ import annotations

import abc
import importlib
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


SOURCES = ("folders", "hf", "demo")
_FACTORIES: dict[tuple[str, str], Callable[..., TaskData]] = {}


def register(name: str, source: str = "folders"):
    """Decorator: register `factory(location) -> TaskData` under a task name and data source."""
    if source not in SOURCES:
        raise ValueError(f"unknown data source '{source}'; expected one of {SOURCES}")

    def wrap(factory):
        if (source, name) in _FACTORIES:
            raise ValueError(f"task '{name}' registered twice for source '{source}'")
        _FACTORIES[source, name] = factory
        return factory
    return wrap


def get_task(name: str, location=None, source: str = "folders") -> TaskData:
    _plug_in(source)
    if (source, name) not in _FACTORIES:
        raise KeyError(f"unknown task '{name}' for data source '{source}'; known tasks: "
                       f"{', '.join(known_tasks(source))}")
    return _FACTORIES[source, name](location)


def known_tasks(source: str = "folders") -> list[str]:
    _plug_in(source)
    return sorted(name for src, name in _FACTORIES if src == source)


# The module whose tasks register themselves, per source.
_MODULES = {"folders": "src.datasets.tasks", "hf": "src.datasets.huggingface", "demo": "src.demo.tasks"}


def _plug_in(source: str) -> None:
    """Import the module whose tasks register themselves for `source` at its first lookup, rather than with the
    package: the task lists stay importable without torch, and the demo's tasks load only when the demo is used."""
    if source not in SOURCES:
        raise ValueError(f"unknown data source '{source}'; expected one of {SOURCES}")
    importlib.import_module(_MODULES[source])
