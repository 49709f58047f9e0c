"""Task registry: a (source, task name) pair maps to a factory that, given the data location, describes and opens the
task's data. Sources: "folders" (files in the task_vectors / torchvision layouts), "hf" (the Hugging Face datasets
FusionBench uses) and "demo" (the generated demo tasks)."""
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
    _plug_in()
    if (source, name) not in _FACTORIES:
        raise KeyError(f"unknown task '{name}' for data source '{source}'; known tasks: "
                       f"{', '.join(known_tasks(source))}")
    return _FACTORIES[source, name](location)


def known_tasks(source: str = "folders") -> list[str]:
    _plug_in()
    return sorted(name for src, name in _FACTORIES if src == source)


def _plug_in() -> None:
    """Import the modules whose tasks register themselves (from folders, from Hugging Face, the demo's) at the first
    lookup rather than with the package, so that the task lists stay importable without torch."""
    import src.datasets.huggingface  # noqa: F401
    import src.datasets.tasks  # noqa: F401
    import src.demo.tasks  # noqa: F401
