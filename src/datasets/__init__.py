"""Datasets: one wrapper per task, a registry, and the task lists (docs/data.md).

The task lists import nothing heavy; the registry (`get_task`, `known_tasks`, `register`, `TaskData`) loads on
first use, with torch and the task modules.
"""

# The order every reference script and log uses.
TA8 = ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
TALL14 = TA8 + ["Flowers102", "PCAM", "FER2013", "OxfordIIITPet", "STL10", "CIFAR100"]
TALL20 = TALL14 + ["CIFAR10", "Food101", "FashionMNIST", "EMNIST", "KMNIST", "RenderedSST2"]
TASK_LISTS = {"TA8": TA8, "TALL14": TALL14, "TALL20": TALL20}


def parse_tasks(spec: str) -> list[str]:
    """A task list's tasks (`TA8`, `TALL14`, `TALL20`), or the names in a comma-separated list."""
    return list(TASK_LISTS[spec]) if spec in TASK_LISTS else [t.strip() for t in spec.split(",") if t.strip()]


__all__ = ["TaskData", "get_task", "known_tasks", "register", "TA8", "TALL14", "TALL20", "TASK_LISTS", "parse_tasks"]
_REGISTRY = ("TaskData", "get_task", "known_tasks", "register")


def __getattr__(name: str):
    if name in _REGISTRY:
        from src.datasets import registry
        return getattr(registry, name)
    raise AttributeError(f"module 'src.datasets' has no attribute {name!r}")
