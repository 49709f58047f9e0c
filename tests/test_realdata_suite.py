"""The real-data path end to end: fabricated task_vectors pickles and dataset trees through `Suite` evaluation and
through `main_task_arithmetic.py`."""
import hashlib
import json

import pandas as pd
import pytest
import torch

import main_task_arithmetic
from src.checkpoints import find_checkpoints
from src.merging import task_arithmetic
from src.datasets import get_task
from src.datasets.tasks import FIXTURE_SIZES_ENV
from src.suite import make_suite
from tests.fixtures import checkpoints as ckpt_fx
from tests.fixtures import datasets as data_fx
from tests.fixtures.runs import run_folder

TASKS = ["SVHN", "EuroSAT", "Cars", "MNIST"]


def _accuracy(encoder, head_weights, dataset) -> float:
    """Independent of the loading path: the in-memory encoder and head the files were written from."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    with torch.no_grad():
        features = encoder(torch.stack(images))
    features = features / features.norm(dim=-1, keepdim=True)
    correct = ((features @ head_weights.T).argmax(dim=1) == torch.tensor(labels)).sum()
    return 100.0 * int(correct) / len(dataset)


def test_suite_reads_pickles_heads_and_data_in_the_real_layouts(tmp_path, monkeypatch):
    classes = {"SVHN": 10, "EuroSAT": 10, "Cars": 3, "MNIST": 10}
    made = ckpt_fx.task_vectors_tree(tmp_path / "checkpoints", TASKS, num_classes=classes)
    data_fx.build_tree(tmp_path / "data", TASKS)
    monkeypatch.setenv(FIXTURE_SIZES_ENV, str(tmp_path / "data" / "fixture_sizes.json"))

    found = find_checkpoints(tmp_path / "checkpoints", "demo", TASKS)
    assert found.family == "task_vectors"
    suite = make_suite(found, TASKS, text_tower="openai", data_location=tmp_path / "data", batch_size=4, device="cpu")
    individual = suite.individual_accuracies()
    zeroshot = suite.zeroshot_accuracies()

    preprocess = made["pretrained"].val_preprocess
    for task in TASKS:
        test_set = get_task(task, tmp_path / "data").split("test", preprocess)
        heads = made["heads"][task]
        assert individual[task] == pytest.approx(_accuracy(made["finetuned"][task], heads, test_set), abs=1e-9)
        assert zeroshot[task] == pytest.approx(_accuracy(made["pretrained"], heads, test_set), abs=1e-9)

    hashes = suite.checkpoint_hashes()
    assert len(hashes) == 1 + len(TASKS)
    for path, digest in hashes.items():
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest


def test_task_arithmetic_script_on_fabricated_real_files(tmp_path, monkeypatch):
    ckpt_fx.task_vectors_tree(tmp_path / "checkpoints", TASKS[:2], num_classes={"SVHN": 10, "EuroSAT": 10})
    data_fx.build_tree(tmp_path / "data", TASKS[:2])
    monkeypatch.setenv(FIXTURE_SIZES_ENV, str(tmp_path / "data" / "fixture_sizes.json"))
    main_task_arithmetic.main(["--checkpoints", str(tmp_path / "checkpoints"), "--data", str(tmp_path / "data"),
                               "--model", "demo", "--tasks", ",".join(TASKS[:2]), "--results", str(tmp_path / "out"),
                               "--device", "cpu", "--batch-size", "4"])

    out = run_folder(tmp_path / "out", "task_arithmetic")
    table = pd.read_csv(out / "task_arithmetic.csv")
    assert table.task.tolist() == TASKS[:2] + ["avg"]
    assert set(table.family) == {"task_vectors"}
    sidecar = json.loads((out / "task_arithmetic.json").read_text())
    files = sorted(str(p) for p in sidecar["checkpoint_sha256"])
    assert len(files) == 3 and all("checkpoints" in f for f in files)
    for path, digest in sidecar["checkpoint_sha256"].items():
        with open(path, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest

    # The script's merge is the one computed here from the same files.
    found = find_checkpoints(tmp_path / "checkpoints", "demo", TASKS[:2])
    suite = make_suite(found, TASKS[:2], text_tower="openai", data_location=tmp_path / "data", batch_size=4, device="cpu")
    expected = suite.evaluate(task_arithmetic(suite.pretrained, suite.all_finetuned(), scaling_coef=0.3), "check")
    for task in TASKS[:2]:
        assert table.set_index("task").accuracy[task] == pytest.approx(expected[task], abs=1e-9)
