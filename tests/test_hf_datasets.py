"""The Hugging Face dataset source: read from a fabricated `datasets` cache, a repository copy and `save_to_disk`
output, with FusionBench's class names, splits and sizes, and clear errors."""
import json

import numpy as np
import pytest
import torch

from src import hf_clip
from src.datasets import get_task, prompts
from src.datasets import check as check_cmd
from src.datasets.cache import cached
from src.datasets.huggingface import HF_SPECS_BY_NAME, classnames
from src.datasets.readers import MissingFiles
from src.datasets.tasks import FIXTURE_SIZES_ENV, WrongCount
from tests.fixtures import huggingface as hf_fx

TASKS = ["MNIST", "PCAM", "FER2013", "SVHN", "EuroSAT", "Food101"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return root, hf_fx.dataset_cache(root, TASKS)


@pytest.fixture
def sizes(cache, monkeypatch):
    monkeypatch.setenv(FIXTURE_SIZES_ENV, str(cache[0] / "fixture_sizes.json"))
    return cache


@pytest.mark.parametrize("task", TASKS)
def test_cached_split_has_the_written_rows_and_fusionbench_names(sizes, task):
    root, written = sizes
    data = get_task(task, root, source="hf")
    split = data.split("test", None)
    assert [split[i][1] for i in range(len(split))] == written[task]
    assert data.classnames == classnames(task) and data.templates == prompts.TEMPLATES[task]
    assert all(hasattr(split[i][0], "convert") for i in range(len(split)))  # raw PIL images, converted later
    assert split.source_files and all(p.suffix == ".arrow" for p in split.source_files)


def test_fusionbench_lists_where_the_folder_source_takes_names_from_the_data():
    assert classnames("EuroSAT")[:3] == ["annual crop land", "forest", "brushland or shrubland"]
    assert len(classnames("SUN397")) == 397 and classnames("SUN397")[:2] == ["abbey", "airplane cabin"]
    assert len(classnames("Cars")) == 196 and len(classnames("DTD")) == 47


@pytest.mark.parametrize("task", ["MNIST", "SVHN", "Food101"])
def test_the_fabricated_cache_is_where_load_dataset_reads_offline(sizes, task):
    """`datasets.load_dataset(<id>)` itself, offline, finds the fabricated cache: it is laid out as the library
    lays out what it downloads."""
    import datasets
    root, written = sizes
    spec = HF_SPECS_BY_NAME[task]
    dataset = datasets.load_dataset(spec.repo_id, spec.config, split=spec.split, cache_dir=str(root))
    assert list(dataset[spec.label]) == written[task]


def test_repository_copy_and_save_to_disk_under_data(tmp_path, monkeypatch):
    import datasets
    copy_labels = hf_fx.repo_copy(tmp_path / "copies" / "ylecun" / "mnist", "MNIST", count=9)
    monkeypatch.setenv(FIXTURE_SIZES_ENV, str(tmp_path / "sizes.json"))
    (tmp_path / "sizes.json").write_text(json.dumps({"MNIST": {"test": 9, "classes": 10},
                                                     "KMNIST": {"test": 9, "classes": 10}}))
    split = get_task("MNIST", tmp_path / "copies", source="hf").split("test", None)
    assert split.samples.labels.tolist() == copy_labels

    saved_labels = hf_fx.repo_copy(tmp_path / "repo", "KMNIST", count=9)
    parquet = next((tmp_path / "repo" / "data").iterdir())
    datasets.DatasetDict({"test": datasets.Dataset.from_parquet(str(parquet))}).save_to_disk(
        str(tmp_path / "saved" / "tanganke" / "kmnist"))
    split = get_task("KMNIST", tmp_path / "saved", source="hf").split("test", None)
    assert split.samples.labels.tolist() == saved_labels


def test_pcam_booleans_become_class_indices(sizes):
    root, written = sizes
    labels = get_task("PCAM", root, source="hf").split("test", None).samples.labels
    assert labels.dtype == np.int64 and set(labels.tolist()) <= {0, 1} and labels.tolist() == written["PCAM"]


def test_the_expected_size_is_this_copys(cache, monkeypatch, tmp_path):
    """Without the fixture sizes the real counts apply: the Hugging Face SUN397 has 19,850 test images (not the
    task_vectors copy's 19,887); Food101 evaluates its validation split."""
    root = tmp_path / "sun"
    hf_fx.dataset_cache(root, ["SUN397"])
    monkeypatch.delenv(FIXTURE_SIZES_ENV, raising=False)
    with pytest.raises(WrongCount, match=r"SUN397 test split: expected 19,850 images, found 12 in tanganke/sun397"):
        get_task("SUN397", root, source="hf").split("test", None)
    with pytest.raises(WrongCount, match=r"expected 25,250 images, found 12 in ethz/food101 split 'validation'"):
        get_task("Food101", cache[0], source="hf").split("test", None)


def test_a_class_count_that_differs_is_refused(tmp_path, monkeypatch):
    import datasets
    rows = datasets.Dataset.from_dict({"image": [np.zeros((4, 4, 3), np.uint8)] * 3, "label": [0, 1, 2]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "label": datasets.ClassLabel(num_classes=3)}))
    hf_fx.prepare(tmp_path, "EuroSAT", rows)
    monkeypatch.setenv(FIXTURE_SIZES_ENV, str(tmp_path / "s.json"))
    (tmp_path / "s.json").write_text(json.dumps({"EuroSAT": {"test": 3, "classes": 10}}))
    with pytest.raises(WrongCount, match="tanganke/eurosat labels 3 classes, FusionBench's class list for it 10"):
        get_task("EuroSAT", tmp_path, source="hf").split("test", None)


def test_missing_dataset_names_every_place_and_the_download_command(tmp_path):
    with pytest.raises(MissingFiles) as info:
        get_task("GTSRB", tmp_path, source="hf").split("test", None)
    message = str(info.value)
    assert str(tmp_path / "tanganke" / "gtsrb") in message and str(tmp_path / "tanganke___gtsrb") in message
    assert "python -m src.download --route hf --data-only --tasks GTSRB" in message


def test_check_command_reports_ready_missing_and_wrong(sizes, capsys, monkeypatch):
    root, _ = sizes
    status = check_cmd.main(["--source", "hf", "--data", str(root), "--tasks", "MNIST,GTSRB,PCAM"])
    out = capsys.readouterr().out
    assert status == 1
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines() if line and not line.startswith(" ")
             and line.split()[0] in ("MNIST", "GTSRB", "PCAM")}
    assert lines == {"MNIST": "ok", "GTSRB": "missing", "PCAM": "ok"}
    assert "2/3 tasks ready" in out and "--data-only --tasks GTSRB" in out
    monkeypatch.delenv(FIXTURE_SIZES_ENV)
    check_cmd.main(["--source", "hf", "--data", str(root), "--tasks", "MNIST"])
    assert "wrong" in capsys.readouterr().out


def test_cached_test_set_is_bit_identical_to_the_processor(sizes, tmp_path):
    root, _ = sizes
    tree = hf_fx.hub_tree(tmp_path / "hub", [])
    preprocess = hf_clip.image_preprocess(tree["pretrained"])
    split = get_task("MNIST", root, source="hf").split("test", preprocess)
    fast = cached(split, tmp_path / "c")
    assert fast.stages is not None and fast.images.dtype == np.uint8
    slow = [split[i] for i in range(len(split))]
    batch = fast.__getitems__(list(range(len(split))))
    assert all(torch.equal(a, b) and la == lb for (a, la), (b, lb) in zip(slow, batch))
