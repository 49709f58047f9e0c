"""Preprocessed test sets on disk, so evaluating many merged models decodes and resizes each image once.

`cached(dataset)` returns a dataset with the same items as `dataset` (`SplitDataset`: raw images + a preprocess).
The first call runs the preprocess over the split once and stores the result under
`<cache>/datasets/<Task>-<split>-<key>/`; later calls (any process) memory-map it. The key covers the task and split,
the preprocess (its repr, which lists sizes, interpolation, mean and std) and every source file's path, size and
modification time, so changing either makes a new entry.

What is stored is exact, not an approximation: the preprocess is split at its ToTensor step. Everything before it
(resize, crop, RGB conversion) yields 8-bit images, stored as uint8 [N, H, W(, 3)]; the steps from ToTensor on
(scaling by 1/255, normalisation) are applied when an item is read, to the stored array, which gives bit-identical
tensors to the full preprocess on the original image. Any other preprocess (no ToTensor step, or one that does not
yield 8-bit L/RGB images before it) is stored as its float32 output instead (4× the disk, equally exact).
Disk use with ViT 224-px preprocessing: 150 KB per image (about 13 GB for the eight TA8 test sets).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import Compose, Normalize, ToTensor

from src.datasets.readers import SplitDataset
from src.files import CACHE_DIR

_FORMAT = 1


def describe(preprocess: Callable) -> str:
    """A stable description of a preprocess: its repr without memory addresses."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(preprocess))


def split_at_to_tensor(preprocess: Callable) -> tuple[Callable, Callable] | None:
    """(PIL steps, tensor steps) of a Compose with a ToTensor step, else None."""
    if not isinstance(preprocess, Compose):
        return None
    for i, step in enumerate(preprocess.transforms):
        if isinstance(step, ToTensor):
            return Compose(preprocess.transforms[:i]), Compose(preprocess.transforms[i:])
    return None


def cache_key(dataset: SplitDataset, preprocess: Callable) -> str:
    stamps = []
    for path in dataset.source_files:
        st = os.stat(path)
        stamps.append([str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
    blob = json.dumps([_FORMAT, dataset.identity, describe(preprocess), stamps])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached(dataset: Dataset, cache_dir: str | os.PathLike | None = None, num_workers: int = 0) -> Dataset:
    """`dataset`'s items served from the on-disk cache (built now if absent). Anything but a `SplitDataset` with a
    preprocess (e.g. the generated demo tasks) is returned unchanged."""
    if not isinstance(dataset, SplitDataset) or dataset.preprocess is None:
        return dataset
    root = Path(cache_dir) if cache_dir is not None else CACHE_DIR / "datasets"
    folder = root / f"{dataset.identity.replace('/', '-')}-{cache_key(dataset, dataset.preprocess)}"
    if not (folder / "meta.json").exists():
        _build(dataset, folder, num_workers)
    return CachedSplit(folder, dataset.preprocess)


class _Stage(Dataset):
    """Items of the part of the preprocess that is stored: uint8 HWC arrays, or float32 tensors."""

    def __init__(self, dataset: SplitDataset, stored: Callable, as_uint8: bool):
        self.dataset, self.stored, self.as_uint8 = dataset, stored, as_uint8

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset.samples.image(index), int(self.dataset.samples.labels[index])
        out = self.stored(image)
        if self.as_uint8:
            if not _is_8bit(out):
                raise TypeError(f"the steps before ToTensor gave {type(out).__name__} "
                                f"{getattr(out, 'mode', '')}, not an 8-bit L or RGB image")
            return np.asarray(out, dtype=np.uint8), label
        return torch.as_tensor(out, dtype=torch.float32).numpy(), label


def _is_8bit(image) -> bool:
    # ToTensor scales exactly these modes by 1/255, from a PIL image and from its uint8 array alike.
    return isinstance(image, Image.Image) and image.mode in ("L", "RGB")


def _build(dataset: SplitDataset, folder: Path, num_workers: int) -> None:
    parts = split_at_to_tensor(dataset.preprocess)
    as_uint8 = parts is not None and len(dataset) > 0 and _is_8bit(parts[0](dataset.samples.image(0)))
    stage = _Stage(dataset, parts[0] if as_uint8 else dataset.preprocess, as_uint8)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        images = labels = None
        loader = DataLoader(stage, batch_size=64, num_workers=num_workers, collate_fn=_stack)
        start = 0
        for batch, batch_labels in loader:
            if images is None:
                images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=batch.dtype,
                                                   shape=(len(stage), *batch.shape[1:]))
                labels = np.empty(len(stage), dtype=np.int64)
            images[start:start + len(batch)] = batch
            labels[start:start + len(batch)] = batch_labels
            start += len(batch)
        if images is None:
            raise ValueError(f"{dataset.identity}: the split is empty")
        images.flush()
        del images
        np.save(tmp / "labels.npy", labels)
        meta = {"identity": dataset.identity, "preprocess": describe(dataset.preprocess), "count": len(stage),
                "stored": "uint8 before ToTensor" if as_uint8 else "float32 output", "format": _FORMAT}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").exists():  # not another process finishing the same entry first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stack(items):
    arrays, labels = zip(*items)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"preprocessed images differ in shape ({sorted(shapes)[:3]}); they cannot be cached as one "
                         "array")
    return np.stack(arrays), list(labels)


class CachedSplit(Dataset):
    """A cached split: memory-mapped stored arrays, the rest of the preprocess applied per item.

    DataLoader batches are read in one slice (`__getitems__`); when the rest of the preprocess is ToTensor then
    Normalize (CLIP's), it runs on the whole batch at once with the same elementwise float32 operations, so the
    tensors are bit-identical to the per-item ones.
    """

    def __init__(self, folder: Path, preprocess: Callable):
        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text())
        self.images = np.load(folder / "images.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy")
        self.uint8 = meta["stored"].startswith("uint8")
        self.rest = split_at_to_tensor(preprocess)[1] if self.uint8 else None
        steps = self.rest.transforms if self.uint8 else []
        self.normalize = steps[1] if [type(t) for t in steps[1:]] == [Normalize] and self.images.ndim == 4 else None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        array = np.array(self.images[index])
        image = self.rest(array) if self.uint8 else torch.from_numpy(array)
        return image, int(self.labels[index])

    def __getitems__(self, indices: list[int]):
        if not indices:
            return []
        if indices != list(range(indices[0], indices[0] + len(indices))) or (self.uint8 and self.normalize is None):
            return [self[i] for i in indices]
        block = torch.from_numpy(np.array(self.images[indices[0]:indices[0] + len(indices)]))
        if self.uint8:  # what ToTensor does per image, then Normalize's sub_/div_ with [C, 1, 1] mean and std
            block = block.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
            mean = torch.as_tensor(self.normalize.mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.as_tensor(self.normalize.std, dtype=torch.float32).view(-1, 1, 1)
            block = block.sub_(mean).div_(std)
        return list(zip(block, (int(label) for label in self.labels[indices[0]:indices[0] + len(indices)])))
