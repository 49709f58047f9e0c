"""The 20 tasks as FusionBench evaluates them: the Hugging Face datasets of its test configs, read with `datasets`.

`HF_SPECS` lists, per task, the dataset id (and config), the split FusionBench evaluates as "test" (Food101: the
`validation` split), the columns holding the image and the label, and the test-split size of that copy (SUN397 has
19,850 images here, 19,887 in the task_vectors copy; every other size is the same). Class names and templates are
FusionBench's (`fusion_bench/tasks/clip_classification/`): for SUN397, Cars and DTD its own lists
(`hf_classnames.json`), for EuroSAT the OpenAI wording in label order, for the others the same lists as the folder
source. Labels are the dataset's; FusionBench turns boolean labels (PCAM) into 0/1, and so does this reader.

Where a dataset is read from, first match wins (`locate`):
1. `<data>/<org>/<name>/`: a copy of the dataset repository (its parquet or webdataset files, e.g.
   `huggingface-cli download --repo-type dataset <id> --local-dir <data>/<id>`) or `save_to_disk` output;
2. `<data>/<org>___<name>/`: a `datasets` cache folder under `<data>`;
3. the standard `datasets` cache (`HF_DATASETS_CACHE`, by default ~/.cache/huggingface/datasets), where
   `datasets.load_dataset(<id>)` and `python -m src.download` put it.
From a cache the prepared Arrow files are read exactly as `datasets.load_dataset` reads them offline (its "cache"
builder), so nothing is fetched and the version that was checked is the version evaluated.
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from src.datasets import prompts
from src.datasets.readers import DatasetError, MissingFiles, Samples, SplitDataset
from src.datasets.registry import TaskData, register
from src.datasets.tasks import SPECS_BY_NAME, WrongCount, check_counts, expected_counts

DOWNLOAD_HINT = "python -m src.download --route hf --data-only --tasks {task}"


@dataclass(frozen=True)
class HFSpec:
    task: str
    repo_id: str
    split: str = "test"
    config: str | None = None
    test_size: int | None = None  # None: the folder source's size
    image: str = "image"
    label: str = "label"

    def __str__(self) -> str:
        return f"{self.repo_id}{f' ({self.config})' if self.config else ''} split '{self.split}'"

    @property
    def cache_folder(self) -> str:
        """The folder `datasets` prepares this dataset in, under its cache root."""
        from datasets.naming import camelcase_to_snakecase
        org, name = self.repo_id.split("/")
        return f"{org}___{camelcase_to_snakecase(name)}"


# FusionBench's config/dataset/image_classification/test/<task>.yaml; FER2013 through its load_fer2013
# (clip-benchmark's webdataset copy, whose "jpg" and "cls" columns it renames to image and label).
HF_SPECS = [
    HFSpec("SUN397", "tanganke/sun397", test_size=19850),
    HFSpec("Cars", "tanganke/stanford_cars"),
    HFSpec("RESISC45", "tanganke/resisc45"),
    HFSpec("EuroSAT", "tanganke/eurosat"),
    HFSpec("SVHN", "ufldl-stanford/svhn", config="cropped_digits"),
    HFSpec("GTSRB", "tanganke/gtsrb"),
    HFSpec("MNIST", "ylecun/mnist"),
    HFSpec("DTD", "tanganke/dtd"),
    HFSpec("Flowers102", "dpdl-benchmark/oxford_flowers102"),
    HFSpec("PCAM", "1aurent/PatchCamelyon"),
    HFSpec("FER2013", "clip-benchmark/wds_fer2013", image="jpg", label="cls"),
    HFSpec("OxfordIIITPet", "timm/oxford-iiit-pet"),
    HFSpec("STL10", "tanganke/stl10"),
    HFSpec("CIFAR100", "tanganke/cifar100"),
    HFSpec("CIFAR10", "tanganke/cifar10"),
    HFSpec("Food101", "ethz/food101", split="validation"),
    HFSpec("FashionMNIST", "zalando-datasets/fashion_mnist"),
    HFSpec("EMNIST", "tanganke/emnist_letters"),
    HFSpec("KMNIST", "tanganke/kmnist"),
    HFSpec("RenderedSST2", "nateraw/rendered-sst2"),
]
HF_SPECS_BY_NAME = {spec.task: spec for spec in HF_SPECS}


@functools.cache
def _own_lists() -> dict[str, list[str]]:
    return json.loads((Path(__file__).with_name("hf_classnames.json")).read_text(encoding="utf-8"))


def classnames(task: str) -> list[str]:
    """FusionBench's class names of a task, in label order."""
    own = _own_lists()
    if task in own:
        return list(own[task])
    if task == "EuroSAT":
        return list(prompts.EUROSAT)
    return list(SPECS_BY_NAME[task].classnames)


def standard_cache() -> Path:
    import datasets
    return Path(datasets.config.HF_DATASETS_CACHE)


def locate(spec: HFSpec, location: Path | None) -> tuple[str, Path]:
    """('folder', path) or ('cache', cache root) of the first place that holds the dataset (module docstring)."""
    candidates = []
    if location is not None:
        candidates += [("folder", location / spec.repo_id), ("cache", location)]
    candidates.append(("cache", standard_cache()))
    for kind, path in candidates:
        if (kind == "folder" and path.is_dir()) or (kind == "cache" and cached_versions(spec, path)):
            return kind, path
    looked = [path if kind == "folder" else path / spec.cache_folder for kind, path in candidates]
    raise MissingFiles(looked, f"{spec.task}: the Hugging Face dataset {spec.repo_id} is not here; looked for\n  " +
                       "\n  ".join(str(p) for p in looked) +
                       f"\nFetch it with `{DOWNLOAD_HINT.format(task=spec.task)}`.")


def cached_versions(spec: HFSpec, cache_root: Path) -> list[Path]:
    """The prepared versions of `spec`'s dataset in a `datasets` cache root (their dataset_info.json files)."""
    config = spec.config or "*"
    return sorted((cache_root / spec.cache_folder).glob(f"{config}/*/*/dataset_info.json"))


@contextlib.contextmanager
def _quiet_datasets():
    """`datasets` warns on every offline cache read that it uses the latest cached version; that is the point here."""
    import datasets
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)


def load_split(spec: HFSpec, location: Path | None):
    """The `datasets.Dataset` of the split FusionBench evaluates for `spec.task`."""
    import datasets
    kind, path = locate(spec, location)
    try:
        with _quiet_datasets():
            if kind == "cache":
                from datasets.packaged_modules.cache.cache import Cache
                builder = Cache(cache_dir=str(path), dataset_name=spec.repo_id.split("/")[-1], repo_id=spec.repo_id,
                                config_name=spec.config, version="auto", hash="auto")
                builder.download_and_prepare()
                return builder.as_dataset(split=spec.split)
            if (path / "dataset_dict.json").is_file():
                return datasets.load_from_disk(str(path))[spec.split]
            if (path / "state.json").is_file():
                return datasets.load_from_disk(str(path))
            return datasets.load_dataset(str(path), spec.config, split=spec.split)
    except (ValueError, KeyError, FileNotFoundError, OSError) as e:
        where = path / spec.cache_folder if kind == "cache" else path
        raise DatasetError(f"{spec.task}: cannot read split '{spec.split}' of {spec.repo_id} from {where}: "
                           f"{type(e).__name__}: {e}") from None


class HFSamples(Samples):
    """Samples of a `datasets.Dataset`: `image(i)` decodes row i's image as the dataset stores it (FusionBench
    converts it to RGB in the preprocess)."""

    def __init__(self, dataset, image_column: str, labels: np.ndarray, source_files: list[Path]):
        super().__init__(labels=labels, source_files=source_files)
        self.dataset = dataset
        self.image_column = image_column

    def image(self, index: int):
        return self.dataset[index][self.image_column]


class HFTask(TaskData):
    """One of the 20 tasks from its Hugging Face dataset (module docstring)."""

    def __init__(self, spec: HFSpec, location: str | os.PathLike | None):
        self.spec = spec
        self.name = spec.task
        self.classnames = classnames(spec.task)
        self.templates = list(prompts.TEMPLATES[spec.task])
        self.location = Path(location) if location is not None else None

    @functools.cached_property
    def samples(self) -> HFSamples:
        spec = self.spec
        dataset = load_split(spec, self.location)
        missing = [c for c in (spec.image, spec.label) if c not in dataset.column_names]
        if missing:
            raise DatasetError(f"{spec.task}: {spec.repo_id} split '{spec.split}' has no column {missing[0]} "
                               f"(columns: {', '.join(dataset.column_names)})")
        dataset = dataset.select_columns([spec.image, spec.label])
        feature = dataset.features[spec.label]
        if hasattr(feature, "num_classes") and feature.num_classes != len(self.classnames):
            raise WrongCount(f"{spec.task}: {spec.repo_id} labels {feature.num_classes} classes, FusionBench's class "
                             f"list for it {len(self.classnames)}")
        labels = np.asarray(dataset.with_format("numpy")[spec.label]).astype(np.int64)
        sources = [Path(f["filename"]) for f in dataset.cache_files]
        samples = HFSamples(dataset, spec.image, labels, sources)
        check_counts(spec.task, samples, len(self.classnames), expected_counts(spec.task, spec.test_size),
                     f"in {spec.repo_id} split '{spec.split}'")
        return samples

    def split(self, split: str, preprocess: Callable | None) -> SplitDataset:
        if split != "test":
            raise ValueError(f"{self.name}: the Hugging Face source serves the evaluated split only ('test', which "
                             f"is {self.spec.repo_id}'s '{self.spec.split}')")
        return SplitDataset(self.samples, preprocess, identity=f"{self.name}/hf-{self.spec.repo_id}-{self.spec.split}")


for _spec in HF_SPECS:
    register(_spec.task, source="hf")(lambda location, _spec=_spec: HFTask(_spec, location))
