"""The five entry scripts on the Hugging Face route, end to end on a fabricated hub cache and datasets cache."""
import json

import pandas as pd
import pytest

import main_emr_merging
import main_layer_wise_adamergingpp
import main_opcm
import main_task_arithmetic
import main_ties_merging
from src.checkpoints import load_state_dict
from src.datasets.tasks import FIXTURE_SIZES_ENV
from src.merging import task_arithmetic
from tests.fixtures import huggingface as hf_fx
from tests.fixtures.runs import run_folder

TASKS = ["MNIST", "PCAM", "FER2013"]
OUT = "ViT-B-32_fusionbench_hf"


def _merged_vision(tree):
    """Task Arithmetic (λ = 0.3) of the transformers models' own state dicts, in a fresh CLIPVisionModel."""
    from transformers import CLIPVisionModel
    clip = tree["clip"]
    merged = task_arithmetic(clip.vision_model.state_dict(), [tree["finetuned"][t][0].state_dict() for t in TASKS],
                             scaling_coef=0.3)
    vision = CLIPVisionModel(clip.config.vision_config)
    vision.load_state_dict(merged)
    return vision.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The hub cache, and test sets labelled so that FusionBench's evaluation of the merged model is right on the
    even rows and wrong on the odd ones: Task Arithmetic must score exactly 50 % on every task."""
    from src.datasets.huggingface import classnames
    from src.datasets.prompts import TEMPLATES
    root = tmp_path_factory.mktemp("hf_route")
    tree = hf_fx.hub_tree(root / "hub", TASKS, prefixed=("PCAM",))
    vision = _merged_vision(tree)

    def label(task, images):
        names = classnames(task)
        logits = hf_fx.fusionbench_logits(tree["clip"], vision, tree["pretrained"], images, names, TEMPLATES[task])
        predicted = logits.argmax(dim=1).tolist()
        return [p if i % 2 == 0 else (p + 1) % len(names) for i, p in enumerate(predicted)]
    hf_fx.dataset_cache(root / "data", TASKS, label=label)
    return root, tree


@pytest.fixture
def argv(files, tmp_path, monkeypatch):
    root, _ = files
    monkeypatch.setenv(FIXTURE_SIZES_ENV, str(root / "data" / "fixture_sizes.json"))
    return ["--route", "hf", "--checkpoints", str(root / "hub"), "--data", str(root / "data"), "--tasks",
            ",".join(TASKS), "--results", str(tmp_path), "--device", "cpu", "--batch-size", "5"]


def test_task_arithmetic_scores_what_fusionbench_scores_on_the_same_merge(files, argv, tmp_path):
    main_task_arithmetic.main(argv)
    out = run_folder(tmp_path, "task_arithmetic", OUT)
    table = pd.read_csv(out / "task_arithmetic.csv").set_index("task")
    assert table.index.tolist() == TASKS + ["avg"] and set(table.family) == {"fusionbench_hf"}
    assert table.accuracy.tolist() == [50.0] * (len(TASKS) + 1)
    sidecar = json.loads((out / "task_arithmetic.json").read_text())
    assert len(sidecar["checkpoint_sha256"]) == 1 + len(TASKS)


def test_ties_and_emr_on_the_hf_tensors(files, argv, tmp_path):
    main_ties_merging.main(argv)
    main_emr_merging.main(argv + ["--no-ablation"])
    for method in ("ties_merging", "emr_merging"):
        table = pd.read_csv(run_folder(tmp_path, method, OUT) / f"{method}.csv")
        assert table.task.tolist() == TASKS + ["avg"] and table.accuracy.between(0, 100).all()
    from safetensors import safe_open
    with safe_open(str(run_folder(tmp_path, "emr_merging", OUT) / "emr_model.safetensors"), "pt") as f:
        shapes = dict(json.loads(f.metadata()["shapes"]))
    # EMR's masks and per-tensor rescaler means run over the HF tensors: q, k and v separately, as FusionBench
    assert shapes["encoder.layers.0.self_attn.q_proj.weight"] == [64, 64]


def test_adamerging_uses_fusionbench_settings_and_one_row_per_hf_tensor(files, argv, tmp_path):
    root, tree = files
    main_layer_wise_adamergingpp.main(argv + ["--variant", "layer_wise", "--steps", "2"])
    out = run_folder(tmp_path, "layer_wise_adamerging", OUT)
    sidecar = json.loads((out / "layer_wise_adamerging.json").read_text())
    assert sidecar["preset"] == "fusionbench"
    hyper = sidecar["hyperparameters"]
    assert (hyper["CLAMP"], hyper["ENTROPY_EPS"], hyper["BATCHES_PER_TASK"], hyper["SAMPLING"]) == \
        (False, 1e-8, 1, "stream")
    assert hyper["STEPS"] == 2  # a flag given on the command line wins over the preset
    table = pd.read_csv(out / "layer_wise_adamerging_coefficients.csv")
    assert table.tensor.tolist() == list(load_state_dict(tree["pretrained"]))


def test_opcm_prefers_the_hf_route_and_skips_the_class_embedding(files, argv, tmp_path):
    argv = [a for a in argv if a not in ("--route", "hf")]  # auto: OPCM takes the Hugging Face checkpoints
    main_opcm.main(argv + ["--method", "opcm,continual_ta", "--num-orders", "2"])
    out = run_folder(tmp_path, "opcm", OUT)
    summary = pd.read_csv(out / "opcm_summary.csv")
    assert summary.method.tolist() == ["opcm", "continual_ta"] and set(summary.family) == {"fusionbench_hf"}
    steps = pd.read_csv(out / "opcm_steps.csv")
    assert len(steps) == 2 * 2 * (1 + 2 + 3)
