"""Readers for the on-disk formats of the 20 datasets: each returns `Samples` (raw images + labels + source files).

The files are those torchvision downloads (or the task_vectors/AdaMerging layout, docs/data.md), and
torchvision's own parsing is used where it exposes it (ImageFolder class discovery and file listing, MNIST-style
idx files). torchvision's dataset classes themselves are not instantiated: several (SVHN, CIFAR, STL-10,
Flowers-102, FER-2013) refuse any file whose md5 differs from the official archive, which rejects re-packed
mirrors and test fixtures alike; test-split sizes are checked instead (`src.datasets.tasks`). CIFAR's pickled batches
are read with the restricted unpickler, so a tampered data file cannot run code either.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from src import unpickler


class DatasetError(Exception):
    """A dataset is missing, incomplete or malformed; the message names the files and what to do."""


@dataclass
class Samples:
    """A split's raw data: `image(i)` is a PIL image as the reference's dataset class returns it (before the
    preprocess), `labels[i]` its class index; `source_files` are the files it was read from (cache keys)."""
    labels: np.ndarray
    source_files: list[Path]
    classnames: list[str] | None = None  # only for tasks whose class names come from the data
    paths: list[Path] | None = None  # one image file per sample, or
    arrays: np.ndarray | None = None  # uint8 [N, H, W] (mode L) or [N, H, W, 3] (RGB)
    transpose: bool = False  # EMNIST stores images transposed

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> Image.Image:
        if self.paths is not None:
            try:
                with open(self.paths[index], "rb") as f:
                    return Image.open(f).convert("RGB")  # torchvision's default loader
            except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for empty, truncated or foreign files
                label = int(self.labels[index])
                name = self.classnames[label] if self.classnames else f"label {label}"
                raise DatasetError(f"{self.paths[index]} (class '{name}'): not a readable image ({e}); replace or "
                                   "remove the file, then run `python -m src.datasets.check`") from None
        image = Image.fromarray(self.arrays[index])
        return image.transpose(Image.Transpose.TRANSPOSE) if self.transpose else image


class SplitDataset(Dataset):
    """(preprocess(image), label) pairs of one split, in file order; `identity` and `source_files` key caches."""

    def __init__(self, samples: Samples, preprocess: Callable | None, identity: str):
        self.samples = samples
        self.preprocess = preprocess
        self.identity = identity

    @property
    def source_files(self) -> list[Path]:
        return self.samples.source_files

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image = self.samples.image(index)
        return (self.preprocess(image) if self.preprocess is not None else image), int(self.samples.labels[index])


def require(*paths: Path) -> None:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise MissingFiles(missing)


class MissingFiles(DatasetError):
    def __init__(self, paths: Sequence[Path], detail: str | None = None):
        self.paths = list(paths)
        super().__init__(detail or "missing: " + ", ".join(str(p) for p in self.paths))


def first_existing(*candidates: Path) -> Path:
    """The first candidate that exists (e.g. DTD's `test` folder or task_vectors' `val`); else MissingFiles."""
    for path in candidates:
        if path.exists():
            return path
    raise MissingFiles(candidates)


def image_folder(root: Path, classname: Callable[[str], str] | None = None,
                 keep: Callable[[str], bool] | None = None) -> Samples:
    """torchvision's ImageFolder listing: sorted class folders, their image files sorted; `keep(path)` filters."""
    require(root)
    classes, class_to_idx = find_classes(str(root))
    items = make_dataset(str(root), class_to_idx, extensions=None if keep else IMG_EXTENSIONS,
                         is_valid_file=(lambda p: keep(p) and p.lower().endswith(IMG_EXTENSIONS)) if keep else None,
                         allow_empty=True)
    paths = [Path(p) for p, _ in items]
    return Samples(labels=np.array([label for _, label in items], dtype=np.int64), source_files=list(paths),
                   paths=paths, classnames=[classname(c) for c in classes] if classname else list(classes))


def resisc45(root: Path, split: str) -> Samples:
    """NWPU-RESISC45 folders filtered by the file names in `resisc45-<split>.txt` (task_vectors / torchgeo)."""
    listing = root / "resisc45" / f"resisc45-{split}.txt"
    images = root / "resisc45" / "NWPU-RESISC45"
    require(listing, images)
    names = {line.strip() for line in listing.read_text().splitlines() if line.strip()}
    samples = image_folder(images, keep=lambda p: Path(p).name in names)
    found = {p.name for p in samples.paths}
    if names - found:
        raise MissingFiles(sorted(images / "<class>" / n for n in names - found)[:20])
    samples.source_files.append(listing)
    return samples


def stanford_cars(root: Path, split: str) -> Samples:
    """Stanford Cars: annotations `.mat` in `devkit/` (AdaMerging/EMR) or beside `cars_<split>/` (task_vectors)."""
    from scipy.io import loadmat
    base = root / "stanford_cars"
    name = "cars_test_annos_withlabels.mat" if split == "test" else "cars_train_annos.mat"
    annotations = first_existing(base / "devkit" / name, base / name)
    meta = first_existing(base / "devkit" / "cars_meta.mat", base / "cars_meta.mat")
    images = base / f"cars_{split}"
    require(images)
    records = loadmat(str(annotations), squeeze_me=True)["annotations"]
    paths = [images / str(r["fname"]) for r in np.atleast_1d(records)]
    labels = np.array([int(r["class"]) - 1 for r in np.atleast_1d(records)], dtype=np.int64)
    classnames = [str(c).replace("_", " ") for c in np.atleast_1d(loadmat(str(meta), squeeze_me=True)["class_names"])]
    _require_images(paths)
    return Samples(labels=labels, source_files=[annotations, meta, *paths], paths=paths, classnames=classnames)


def gtsrb(root: Path, split: str) -> Samples:
    """GTSRB test images listed in `GT-final_test.csv` (';'-separated, Filename and ClassId); train from folders."""
    base = root / "gtsrb"
    if split == "train":
        return image_folder(base / "GTSRB" / "Training")
    table = base / "GT-final_test.csv"
    images = base / "GTSRB" / "Final_Test" / "Images"
    require(table, images)
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";", skipinitialspace=True))
    paths = [images / r["Filename"] for r in rows]
    _require_images(paths)
    return Samples(labels=np.array([int(r["ClassId"]) for r in rows], dtype=np.int64), source_files=[table, *paths],
                   paths=paths)


def _require_images(paths: list[Path]) -> None:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise MissingFiles(missing[:20])


def idx_files(folder: Path, images: str, labels: str, label_offset: int = 0, transpose: bool = False) -> Samples:
    """MNIST-style idx files (torchvision's `<Name>/raw/` layout); falls back to torchvision's legacy
    `<Name>/processed/test.pt` that task_vectors-era MNIST folders hold."""
    from torchvision.datasets.mnist import read_image_file, read_label_file
    image_file, label_file = folder / "raw" / images, folder / "raw" / labels
    legacy = folder / "processed" / ("training.pt" if "train" in images else "test.pt")
    if not (image_file.exists() and label_file.exists()) and legacy.exists():
        import torch
        data, targets = torch.load(legacy, weights_only=True)
        return Samples(labels=targets.numpy().astype(np.int64) - label_offset, source_files=[legacy],
                       arrays=data.numpy(), transpose=transpose)
    require(image_file, label_file)
    return Samples(labels=read_label_file(str(label_file)).numpy() - label_offset,
                   source_files=[image_file, label_file], arrays=read_image_file(str(image_file)).numpy(),
                   transpose=transpose)


def svhn(root: Path, split: str) -> Samples:
    """SVHN cropped digits `<root>/svhn/<split>_32x32.mat`: X [32, 32, 3, N], y in 1..10 with 10 meaning 0."""
    from scipy.io import loadmat
    path = root / "svhn" / f"{split}_32x32.mat"
    require(path)
    mat = loadmat(str(path))
    labels = mat["y"].astype(np.int64).reshape(-1)
    labels[labels == 10] = 0
    return Samples(labels=labels, source_files=[path], arrays=np.ascontiguousarray(mat["X"].transpose(3, 0, 1, 2)))


def cifar(root: Path, split: str, hundred: bool) -> Samples:
    """CIFAR-10/100 python batches (`cifar-10-batches-py/test_batch`, `cifar-100-python/test`)."""
    if hundred:
        files = [root / "cifar-100-python" / split]
    else:
        folder = root / "cifar-10-batches-py"
        files = [folder / "test_batch"] if split == "test" else [folder / f"data_batch_{i}" for i in range(1, 6)]
    require(*files)
    images, labels = [], []
    for path in files:
        with open(path, "rb") as f:
            batch = unpickler.load_data_pickle(f, encoding="latin1")
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(batch["fine_labels" if hundred else "labels"])
    return Samples(labels=np.array(labels, dtype=np.int64), source_files=files,
                   arrays=np.ascontiguousarray(np.concatenate(images)))


def stl10(root: Path, split: str) -> Samples:
    """STL-10 binaries `stl10_binary/<split>_X.bin` (column-major 3×96×96 uint8) and `<split>_y.bin` (1..10)."""
    x, y = root / "stl10_binary" / f"{split}_X.bin", root / "stl10_binary" / f"{split}_y.bin"
    require(x, y)
    images = np.fromfile(x, dtype=np.uint8).reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)
    return Samples(labels=np.fromfile(y, dtype=np.uint8).astype(np.int64) - 1, source_files=[x, y],
                   arrays=np.ascontiguousarray(images))


def flowers102(root: Path, split: str) -> Samples:
    """Oxford Flowers-102 `flowers-102/{jpg/, imagelabels.mat, setid.mat}`; splits from setid (tstid = test)."""
    from scipy.io import loadmat
    base = root / "flowers-102"
    labels_file, setid = base / "imagelabels.mat", base / "setid.mat"
    require(labels_file, setid, base / "jpg")
    key = {"test": "tstid", "train": "trnid", "val": "valid"}[split]
    ids = np.atleast_1d(loadmat(str(setid), squeeze_me=True)[key])
    all_labels = np.atleast_1d(loadmat(str(labels_file), squeeze_me=True)["labels"]).astype(np.int64) - 1
    paths = [base / "jpg" / f"image_{int(i):05d}.jpg" for i in ids]
    _require_images(paths)
    return Samples(labels=all_labels[ids.astype(np.int64) - 1], source_files=[labels_file, setid, *paths],
                   paths=paths)


# The CSV's emotion codes (0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral) → indices of the
# alphabetical class list (angry, disgusted, fearful, happy, neutral, sad, surprised) the heads are built from.
_FER2013_LABEL = np.array([0, 1, 2, 3, 5, 6, 4], dtype=np.int64)


def fer2013(root: Path, split: str) -> Samples:
    """FER-2013 `fer2013/fer2013.csv` or `icml_face_data.csv` (test = PublicTest + PrivateTest rows, 48×48 L), labels
    mapped from the CSV's emotion codes to the alphabetical class list's order."""
    base = root / "fer2013"
    path = first_existing(base / "fer2013.csv", base / "icml_face_data.csv")
    usage = ("Training",) if split == "train" else ("PublicTest", "PrivateTest")
    images, labels = [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f, skipinitialspace=True):
            if row["Usage"] in usage:
                images.append(np.array(row["pixels"].split(), dtype=np.uint8).reshape(48, 48))
                labels.append(int(row["emotion"]))
    codes = np.array(labels, dtype=np.int64)
    if len(codes) and not (0 <= codes.min() and codes.max() < len(_FER2013_LABEL)):
        raise DatasetError(f"{path}: emotion codes range over {codes.min()}...{codes.max()}, expected 0...6")
    return Samples(labels=_FER2013_LABEL[codes], source_files=[path],
                   arrays=np.stack(images) if images else np.zeros((0, 48, 48), np.uint8))


def oxford_pets(root: Path, split: str) -> Samples:
    """Oxford-IIIT Pet `oxford-iiit-pet/{images/<id>.jpg, annotations/test.txt}` (id, class 1..37, ...)."""
    base = root / "oxford-iiit-pet"
    listing = base / "annotations" / ("test.txt" if split == "test" else "trainval.txt")
    require(listing, base / "images")
    rows = [line.split() for line in listing.read_text().splitlines() if line.strip()]
    paths = [base / "images" / f"{r[0]}.jpg" for r in rows]
    _require_images(paths)
    return Samples(labels=np.array([int(r[1]) - 1 for r in rows], dtype=np.int64), source_files=[listing, *paths],
                   paths=paths)


def food101(root: Path, split: str) -> Samples:
    """Food-101 `food-101/{meta/<split>.json, images/<class>/<id>.jpg}`; labels = sorted class names."""
    base = root / "food-101"
    listing = base / "meta" / f"{split}.json"
    require(listing, base / "images")
    metadata = json.loads(listing.read_text())
    class_to_idx = {name: i for i, name in enumerate(sorted(metadata))}
    paths, labels = [], []
    for name, image_ids in metadata.items():
        paths.extend(base / "images" / f"{image_id}.jpg" for image_id in image_ids)
        labels.extend([class_to_idx[name]] * len(image_ids))
    _require_images(paths)
    return Samples(labels=np.array(labels, dtype=np.int64), source_files=[listing, *paths], paths=paths)


def pcam(root: Path, split: str) -> Samples:
    """PatchCamelyon HDF5 files `pcam/camelyonpatch_level_2_split_<split>_{x,y}.h5` (needs h5py)."""
    x = root / "pcam" / f"camelyonpatch_level_2_split_{split}_x.h5"
    y = root / "pcam" / f"camelyonpatch_level_2_split_{split}_y.h5"
    require(x, y)
    try:
        import h5py
    except ImportError:
        raise DatasetError("PCAM is stored as HDF5: `pip install h5py` to read it") from None
    with h5py.File(x, "r") as fx, h5py.File(y, "r") as fy:
        return Samples(labels=fy["y"][:].reshape(-1).astype(np.int64), source_files=[x, y], arrays=fx["x"][:])
