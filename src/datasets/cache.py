"""Preprocessed test sets on disk, so evaluating many merged models decodes and resizes each image once.

`cached(dataset)` returns a dataset with the same items as `dataset` (`SplitDataset`: raw images + a preprocess).
The first call runs the preprocess over the split once and stores the result under
`<cache>/datasets/<Task>-<split>-<key>/`; later calls (any process) memory-map it. The key covers the task and split,
the preprocess (its repr, which lists sizes, interpolation, mean and std) and every source file's path, size and
modification time, so changing either makes a new entry. Jobs running at once that need the same entry build it once:
the others wait for it (`src.files.building`), then memory-map it.

What is stored is exact, not an approximation: the preprocess is split in two stages (`src.preprocess.staged`:
open_clip's torchvision transform at its ToTensor step, the Hugging Face CLIP image processor after its resize and
crop). The first stage yields 8-bit images, stored as uint8 [N, H, W(, 3)]; the second (scaling, normalisation) is
applied when a batch is read, to the stored arrays, which gives bit-identical tensors to the full preprocess on the
original image. A preprocess that cannot be split is stored as its float32 output instead (4× the disk, equally
exact).
Disk use with ViT 224-px preprocessing: 150 KB per image (about 13 GB for the eight TA8 test sets).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from src.datasets.readers import SplitDataset
from src.files import CACHE_DIR, building
from src.preprocess import describe, staged

_FORMAT = 1


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
        with building(folder):
            if not (folder / "meta.json").exists():  # not built by another job while this one waited
                _build(dataset, folder, num_workers)
    return CachedSplit(folder, dataset.preprocess)


class _Stage(Dataset):
    """Items of the part of the preprocess that is stored: uint8 arrays from `to_uint8`, or float32 tensors."""

    def __init__(self, dataset: SplitDataset, stored: Callable, as_uint8: bool):
        self.dataset, self.stored, self.as_uint8 = dataset, stored, as_uint8

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, label = self.dataset.samples.image(index), int(self.dataset.samples.labels[index])
        if self.as_uint8:
            return self.stored(image), label
        return torch.as_tensor(self.stored(image), dtype=torch.float32).numpy(), label


def _stores_uint8(stages, dataset: SplitDataset) -> bool:
    if stages is None or len(dataset) == 0:
        return False
    try:
        stages.to_uint8(dataset.samples.image(0))
    except TypeError:
        return False
    return True


def _build(dataset: SplitDataset, folder: Path, num_workers: int) -> None:
    stages = staged(dataset.preprocess)
    as_uint8 = _stores_uint8(stages, dataset)
    stage = _Stage(dataset, stages.to_uint8 if as_uint8 else dataset.preprocess, as_uint8)
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
        os.rename(tmp, folder)
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
    """A cached split: memory-mapped stored arrays, the second stage of the preprocess applied on reading.

    DataLoader batches are read in one slice (`__getitems__`) and finished as one block, with the same elementwise
    float32 operations as per item, so the tensors are bit-identical to the per-item ones.
    """

    def __init__(self, folder: Path, preprocess: Callable):
        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text())
        self.images = np.load(folder / "images.npy", mmap_mode="r")
        self.labels = np.load(folder / "labels.npy")
        self.stages = staged(preprocess) if meta["stored"].startswith("uint8") else None

    def __len__(self) -> int:
        return len(self.labels)

    def _block(self, start: int, stop: int) -> torch.Tensor:
        block = torch.from_numpy(np.array(self.images[start:stop]))
        return self.stages.finish(block) if self.stages is not None else block

    def __getitem__(self, index: int):
        return self._block(index, index + 1)[0], int(self.labels[index])

    def __getitems__(self, indices: list[int]):
        if not indices:
            return []
        if indices != list(range(indices[0], indices[0] + len(indices))):
            return [self[i] for i in indices]
        block = self._block(indices[0], indices[0] + len(indices))
        return list(zip(block, (int(label) for label in self.labels[indices[0]:indices[0] + len(indices)])))
