"""Datasets: one wrapper per task, a registry, and the task lists (docs/data.md)."""
from src.datasets.registry import TaskData, get_task, known_tasks, register

# The order every reference script and log uses.
TA8 = ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
TALL14 = TA8 + ["Flowers102", "PCAM", "FER2013", "OxfordIIITPet", "STL10", "CIFAR100"]
TALL20 = TALL14 + ["CIFAR10", "Food101", "FashionMNIST", "EMNIST", "KMNIST", "RenderedSST2"]
TASK_LISTS = {"TA8": TA8, "TALL14": TALL14, "TALL20": TALL20}


def parse_tasks(spec: str) -> list[str]:
    """A task list's tasks (`TA8`, `TALL14`, `TALL20`), or the names in a comma-separated list."""
    return list(TASK_LISTS[spec]) if spec in TASK_LISTS else [t.strip() for t in spec.split(",") if t.strip()]


__all__ = ["TaskData", "get_task", "known_tasks", "register", "TA8", "TALL14", "TALL20", "TASK_LISTS", "parse_tasks"]

# Tasks register themselves on import (the real datasets from folders and from Hugging Face, and the demo's);
# importing them here makes them known wherever tasks are.
import src.datasets.huggingface  # noqa: E402,F401
import src.datasets.tasks  # noqa: E402,F401
import src.demo.tasks  # noqa: E402,F401
