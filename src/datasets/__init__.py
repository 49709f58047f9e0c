"""Datasets: one wrapper per task, a registry, and the task lists (algorithms.md §6.1)."""
from src.datasets.registry import TaskData, get_task, known_tasks, register

# The order every reference script and log uses.
TA8 = ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]
TALL14 = TA8 + ["Flowers102", "PCAM", "FER2013", "OxfordIIITPet", "STL10", "CIFAR100"]
TALL20 = TALL14 + ["CIFAR10", "Food101", "FashionMNIST", "EMNIST", "KMNIST", "RenderedSST2"]
TASK_LISTS = {"TA8": TA8, "TALL14": TALL14, "TALL20": TALL20}

__all__ = ["TaskData", "get_task", "known_tasks", "register", "TA8", "TALL14", "TALL20", "TASK_LISTS"]

# Tasks register themselves on import (the real datasets from folders and from Hugging Face, and the demo's);
# importing them here makes them known wherever tasks are.
import src.datasets.huggingface  # noqa: E402,F401
import src.datasets.tasks  # noqa: E402,F401
import src.demo.tasks  # noqa: E402,F401
