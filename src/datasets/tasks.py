"""The 20 real tasks (TA8, TALL14, TALL20; docs/data.md), registered in `src.datasets`, with their expected
test-split sizes (§6.2) and where each dataset comes from.

Every task reads its files under the data root (`--data`) in the task_vectors / AdaMerging layout (§6.5) for the
eight TA8 tasks and in torchvision's download layout for the others (`SOURCES` says which files and how to get
them). Opening a split checks its size and class count: a mismatch is an error naming the task, the expected and the
found count. Fabricated test trees are much smaller; the environment variable named by `FIXTURE_SIZES_ENV`
points at a JSON file `{task: {"test": n, "classes": c}}` that replaces the expected counts (they are still
checked), and every use says so on stderr.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from src.datasets import prompts, readers
from src.datasets.readers import DatasetError, MissingFiles, Samples, SplitDataset
from src.datasets.registry import TaskData, register

GETTING_DATA = "README.md, section 'Getting the checkpoints and data'"
FIXTURE_SIZES_ENV = "MERGEREPRO_FIXTURE_SIZES"
_SPLITS = ("test", "train")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    read: Callable[[Path, str], Samples]
    test_size: int
    num_classes: int
    source: str  # where the files come from and how to place them
    classnames: list[str] | None = None  # None: taken from the data (folder names, cars_meta.mat)


def _folder_split(folder: str, test_names: tuple[str, ...], classname: Callable[[str], str] | None):
    def read(root: Path, split: str) -> Samples:
        names = test_names if split == "test" else (split,)
        return readers.image_folder(readers.first_existing(*(root / folder / n for n in names)), classname)
    return read


def _idx(folder: str, emnist_split: str | None = None):
    def read(root: Path, split: str) -> Samples:
        if emnist_split:  # EMNIST letters: labels 1..26 and images stored transposed
            stem = f"emnist-{emnist_split}-{split}"
        else:
            stem = "t10k" if split == "test" else "train"
        return readers.idx_files(root / folder, f"{stem}-images-idx3-ubyte", f"{stem}-labels-idx1-ubyte",
                                 label_offset=1 if emnist_split else 0, transpose=bool(emnist_split))
    return read


SPECS = [
    TaskSpec("SUN397", _folder_split("sun397", ("test", "val"), prompts.sun397_classname), 19887, 397,
             "sun397/{train,test}/<prefixed class folders>/ (AdaMerging/EMR layout; task_vectors names the test "
             "folder 'val', also accepted). Made by task_vectors' SUN397 split script from the official SUN397 "
             "partition 1; the AdaMerging README links a prepared copy."),
    TaskSpec("Cars", readers.stanford_cars, 8041, 196,
             "stanford_cars/{cars_train,cars_test}/ + devkit/{cars_meta.mat,cars_train_annos.mat,"
             "cars_test_annos_withlabels.mat} (the test annotations may also sit beside cars_test/). The Stanford "
             "site is gone: use a mirror (e.g. Kaggle 'stanford-cars-dataset' plus the devkit with "
             "cars_test_annos_withlabels.mat)."),
    TaskSpec("RESISC45", readers.resisc45, 6300, 45,
             "resisc45/NWPU-RESISC45/<45 class folders>/*.jpg and resisc45/resisc45-{train,val,test}.txt (the "
             "split lists of Google's remote_sensing_representations, as torchgeo uses).",
             prompts.RESISC45),
    TaskSpec("EuroSAT", _folder_split("EuroSAT_splits", ("test",), prompts.eurosat_classname), 2700, 10,
             "EuroSAT_splits/{train,val,test}/<10 CamelCase class folders>/ (21,600/2,700/2,700 of EuroSAT RGB; "
             "the split of task_vectors, shipped with the AdaMerging/EMR data)."),
    TaskSpec("SVHN", readers.svhn, 26032, 10,
             "svhn/{train,test}_32x32.mat (torchvision.datasets.SVHN(root='<data>/svhn', split='test', "
             "download=True)).", prompts.DIGITS),
    TaskSpec("GTSRB", readers.gtsrb, 12630, 43,
             "gtsrb/GTSRB/Final_Test/Images/*.ppm + gtsrb/GT-final_test.csv (torchvision.datasets.GTSRB(root="
             "'<data>', split='test', download=True)).", prompts.GTSRB),
    TaskSpec("MNIST", _idx("MNIST"), 10000, 10,
             "MNIST/raw/t10k-{images-idx3,labels-idx1}-ubyte (torchvision.datasets.MNIST(root='<data>', "
             "train=False, download=True)); a legacy MNIST/processed/test.pt works too.", prompts.DIGITS),
    TaskSpec("DTD", _folder_split("dtd", ("test", "val"), None), 1880, 47,
             "dtd/{train,test}/<47 class folders>/ (AdaMerging/EMR; task_vectors names the test folder 'val', also "
             "accepted): DTD split 1, test images in test/ (or val/)."),
    TaskSpec("Flowers102", readers.flowers102, 6149, 102,
             "flowers-102/{jpg/,imagelabels.mat,setid.mat} (torchvision.datasets.Flowers102(root='<data>', "
             "split='test', download=True)).", prompts.FLOWERS102),
    TaskSpec("PCAM", readers.pcam, 32768, 2,
             "pcam/camelyonpatch_level_2_split_test_{x,y}.h5 (torchvision.datasets.PCAM(root='<data>', "
             "split='test', download=True); needs h5py).", prompts.PCAM),
    TaskSpec("FER2013", readers.fer2013, 7178, 7,
             "fer2013/fer2013.csv or fer2013/icml_face_data.csv from Kaggle's 'challenges in representation "
             "learning' challenge (test = PublicTest + PrivateTest rows, as clip-benchmark's wds_fer2013 that "
             "FusionBench uses).", prompts.FER2013),
    TaskSpec("OxfordIIITPet", readers.oxford_pets, 3669, 37,
             "oxford-iiit-pet/{images/,annotations/test.txt} (torchvision.datasets.OxfordIIITPet(root='<data>', "
             "split='test', download=True)).", prompts.OXFORD_PET),
    TaskSpec("STL10", readers.stl10, 8000, 10,
             "stl10_binary/test_{X,y}.bin (torchvision.datasets.STL10(root='<data>', split='test', "
             "download=True)).", prompts.STL10),
    TaskSpec("CIFAR100", lambda root, split: readers.cifar(root, split, hundred=True), 10000, 100,
             "cifar-100-python/test (torchvision.datasets.CIFAR100(root='<data>', train=False, download=True)).",
             prompts.CIFAR100),
    TaskSpec("CIFAR10", lambda root, split: readers.cifar(root, split, hundred=False), 10000, 10,
             "cifar-10-batches-py/test_batch (torchvision.datasets.CIFAR10(root='<data>', train=False, "
             "download=True)).", prompts.CIFAR10),
    TaskSpec("Food101", readers.food101, 25250, 101,
             "food-101/{images/,meta/test.json} (torchvision.datasets.Food101(root='<data>', split='test', "
             "download=True); the official test split = HF ethz/food101 'validation', which FusionBench uses).",
             prompts.FOOD101),
    TaskSpec("FashionMNIST", _idx("FashionMNIST"), 10000, 10,
             "FashionMNIST/raw/t10k-*-ubyte (torchvision.datasets.FashionMNIST(root='<data>', train=False, "
             "download=True)).", prompts.FASHION_MNIST),
    TaskSpec("EMNIST", _idx("EMNIST", emnist_split="letters"), 20800, 26,
             "EMNIST/raw/emnist-letters-test-*-ubyte (torchvision.datasets.EMNIST(root='<data>', split='letters', "
             "train=False, download=True)); labels 1..26 become 0..25 and images are transposed upright.",
             prompts.EMNIST_LETTERS),
    TaskSpec("KMNIST", _idx("KMNIST"), 10000, 10,
             "KMNIST/raw/t10k-*-ubyte (torchvision.datasets.KMNIST(root='<data>', train=False, download=True)).",
             prompts.KMNIST),
    TaskSpec("RenderedSST2", _folder_split("rendered-sst2", ("test",), None), 1821, 2,
             "rendered-sst2/test/{negative,positive}/*.png (torchvision.datasets.RenderedSST2(root='<data>', "
             "split='test', download=True)).", prompts.RENDERED_SST2),
]
SPECS_BY_NAME = {spec.name: spec for spec in SPECS}


def expected_counts(task: str, test_size: int | None = None) -> dict[str, int]:
    """{'test': images, 'classes': classes} a task must have (the fixture override, when set, replaces them);
    `test_size` replaces the size of this source (the Hugging Face copies differ for SUN397)."""
    spec = SPECS_BY_NAME[task]
    counts = {"test": spec.test_size if test_size is None else test_size, "classes": spec.num_classes}
    override = _fixture_sizes().get(task)
    if override is not None:
        counts.update(override)
    return counts


def _fixture_sizes() -> dict:
    path = os.environ.get(FIXTURE_SIZES_ENV)
    if not path:
        return {}
    _warn_fixture_sizes(path)
    return json.loads(Path(path).read_text())


@functools.cache
def _warn_fixture_sizes(path: str) -> None:
    print(f"warning: {FIXTURE_SIZES_ENV}={path}: expected dataset sizes replaced by a fabricated test tree's; "
          "unset it for real data", file=sys.stderr)


class WrongCount(DatasetError):
    pass


def check_counts(task: str, samples: Samples, num_classes: int, expected: dict[str, int], where: str) -> None:
    """Raise WrongCount naming the task, the expected and the found count, if the test split's size, class count or
    label range is not what it must be."""
    if len(samples) != expected["test"]:
        raise WrongCount(f"{task} test split: expected {expected['test']:,} images, found {len(samples):,} {where}")
    if num_classes != expected["classes"]:
        raise WrongCount(f"{task}: expected {expected['classes']} classes, found {num_classes} {where}")
    if len(samples) and not (0 <= samples.labels.min() and samples.labels.max() < num_classes):
        raise WrongCount(f"{task} test split: labels range over {samples.labels.min()}...{samples.labels.max()}, "
                         f"expected 0...{num_classes - 1} ({where})")


class RealTask(TaskData):
    """One of the 20 tasks, read from `location` (the data root)."""

    def __init__(self, spec: TaskSpec, location: str | os.PathLike | None):
        self.spec = spec
        self.name = spec.name
        self.templates = list(prompts.TEMPLATES[spec.name])
        self.location = Path(location) if location is not None else None

    @functools.cached_property
    def classnames(self) -> list[str]:
        if self.spec.classnames is not None:
            return list(self.spec.classnames)
        return self.samples("test").classnames

    @functools.cache
    def samples(self, split: str) -> Samples:
        """The raw split, its size and class count checked (test split) and its labels range-checked."""
        if split not in _SPLITS:
            raise ValueError(f"{self.name}: unknown split '{split}'; expected one of {_SPLITS}")
        if self.location is None:
            raise DatasetError(f"{self.name}: no data folder given (--data); see {GETTING_DATA}")
        try:
            samples = self.spec.read(self.location, split)
        except MissingFiles as e:
            listing = "\n  ".join(str(p) for p in e.paths)
            raise MissingFiles(e.paths, f"{self.name} {split} split: missing\n  {listing}\nExpected under "
                                        f"{self.location}: {self.spec.source}\nSee {GETTING_DATA}.") from None
        if split == "test":
            self._check_counts(samples)
        return samples

    def _check_counts(self, samples: Samples) -> None:
        num_classes = len(samples.classnames) if samples.classnames is not None else len(self.spec.classnames)
        check_counts(self.name, samples, num_classes, expected_counts(self.name),
                     f"under {self.location} ({self.spec.source})")

    def split(self, split: str, preprocess: Callable | None) -> SplitDataset:
        return SplitDataset(self.samples(split), preprocess, identity=f"{self.name}/{split}")


def _register_all() -> None:
    for spec in SPECS:
        register(spec.name)(lambda location, spec=spec: RealTask(spec, location))


_register_all()
