"""The eight demo tasks: labelled images from the demo world, with class names and CLIP prompt templates.

Each task reads one attribute of the rendered image (the shape of the object, the scene behind it, ...), and most see
the world in a photometric style of their own (`world.STYLES`: grayscale, negative, ...) that pretraining never showed,
as a real task's images are a domain of their own for CLIP. Its train and test splits are generated from fixed seeds, so
every run sees the same images; nothing is stored on disk. The tasks are registered in `src.datasets` under their names,
like the real datasets, so a run on the demo suite goes through exactly the code a real run does.
"""
from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from src.datasets.registry import TaskData, register
from src.demo import TASK_NAMES, world

SPLIT_SIZES = {"train": 20000, "test": 600}
# The per-channel mean and std open_clip normalises with (OpenAI CLIP's), used by `tensors` for fast training.
_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class DemoTask:
    name: str
    attribute: str  # the key of `world.sample`'s labels this task predicts
    classnames: list[str]
    templates: list[str]
    scene: dict = field(default_factory=dict)  # keyword arguments of `world.sample`
    style: str = "none"  # the task's image domain, a key of `world.STYLES`


TASKS = [
    DemoTask("Shapes", "shape", world.SHAPES,
             ["a photo of a {}.", "a {} shape.", "a picture of a {} object."],
             dict(kinds=(1.0, 0.0, 0.0), sizes=["medium", "large"]), "grayscale"),
    DemoTask("Colors", "color", world.COLORS,
             ["a photo of a {} object.", "something {}.", "a {} shape."],
             dict(kinds=(0.6, 0.2, 0.2), noise=(10.0, 30.0)), "dim"),
    DemoTask("Textures", "texture", world.TEXTURES,
             ["a photo of a {} texture.", "a {} pattern.", "a {} object."],
             dict(kinds=(1.0, 0.0, 0.0), sizes=["large"])),
    DemoTask("Sizes", "size", world.SIZES,
             ["a photo of a {} object.", "a {} shape.", "something {}."],
             dict(kinds=(0.6, 0.2, 0.2)), "low_resolution"),
    DemoTask("Counts", "count", world.COUNTS,
             ["a photo of {} objects.", "{} objects.", "a picture of {} objects on a background."],
             dict(objects=(1, 5), kinds=(0.6, 0.2, 0.2)), "negative"),
    DemoTask("Positions", "position", world.POSITIONS,
             ["an object in the {}.", "a photo of an object in the {}.", "a shape in the {}."],
             dict(sizes=["small"]), "swapped_channels"),
    DemoTask("Arrows", "direction", world.DIRECTIONS,
             ["an arrow pointing {}.", "a photo of an arrow pointing {}."],
             dict(kinds=(0.0, 1.0, 0.0), sizes=["medium", "large"])),
    DemoTask("Scenes", "scene", world.SCENES,
             ["a photo of a {} background.", "a {} scene.", "something on a {} background."],
             dict(objects=(1, 3), noise=(10.0, 30.0)), "swapped_channels"),
]
if tuple(t.name for t in TASKS) != TASK_NAMES:
    raise ImportError(f"src.demo.TASK_NAMES {TASK_NAMES} must list the tasks defined here, in order")
_BY_NAME = {t.name: t for t in TASKS}


def _seed(*parts: str) -> int:
    """A stable seed from names (Python's hash() is salted per process)."""
    return zlib.crc32("/".join(parts).encode())


@functools.cache
def generate(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [n, 32, 32, 3], int64 labels [n]) of one split; the same on every call and machine."""
    task = _BY_NAME[name]
    if split not in SPLIT_SIZES:
        raise ValueError(f"demo task {name}: unknown split '{split}'; expected one of {sorted(SPLIT_SIZES)}")
    rng = np.random.default_rng(_seed("demo-task", name, split))
    attrs, labels = world.sample(SPLIT_SIZES[split], rng, **task.scene)
    return world.restyle(world.render(attrs, rng), task.style), labels[task.attribute].astype(np.int64)


def tensors(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, 32, 32, 3] -> normalised float [n, 3, 32, 32]: the demo model's val_preprocess without PIL.

    At the demo's native 32×32 size open_clip's resize and centre crop are the identity, so this equals applying
    `val_preprocess` image by image (tests/test_demo.py checks it) and is much faster for training.
    """
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - _MEAN) / _STD


class DemoImages(Dataset):
    """(preprocess(PIL image), label) pairs of one split, in a fixed order."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, preprocess: Callable):
        self.images, self.labels, self.preprocess = images, labels, preprocess

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.preprocess(Image.fromarray(self.images[i])), int(self.labels[i])


class DemoTaskData(TaskData):
    def __init__(self, task: DemoTask):
        self.name, self.classnames, self.templates = task.name, list(task.classnames), list(task.templates)

    def split(self, split: str, preprocess: Callable) -> Dataset:
        return DemoImages(*generate(self.name, split), preprocess)


for _task in TASKS:
    register(_task.name, source="demo")(lambda location, _task=_task: DemoTaskData(_task))
