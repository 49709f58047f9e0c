"""The four other entry scripts on two demo tasks: what they write, and that their outputs are consistent."""
import json

import pandas as pd
import torch

import main_emr_merging
import main_layer_wise_adamergingpp
import main_opcm
import main_ties_merging
from tests.fixtures.runs import run_folder

TWO = ["--demo", "--tasks", "Colors,Scenes"]


def test_ties_script_writes_its_table_with_the_hyperparameters(tmp_path):
    main_ties_merging.main(TWO + ["--results", str(tmp_path), "--k", "0.2", "--merge-func", "mean"])
    out = run_folder(tmp_path, "ties_merging")
    table = pd.read_csv(out / "ties_merging.csv")
    assert table.task.tolist() == ["Colors", "Scenes", "avg"]
    sidecar = json.loads((out / "ties_merging.json").read_text())
    assert sidecar["hyperparameters"] == {"K": 0.2, "SCALING_COEF": 0.3, "MERGE_FUNC": "mean",
                                          "VISION_ONLY_K": False}


def test_emr_script_reports_the_true_size_of_the_saved_model_and_the_ablation(tmp_path):
    main_emr_merging.main(TWO + ["--results", str(tmp_path)])
    out = run_folder(tmp_path, "emr_merging")
    sidecar = json.loads((out / "emr_merging.json").read_text())
    assert sidecar["emr_model_bytes"] == (out / "emr_model.safetensors").stat().st_size
    assert (out / "emr_merging_unified_only.csv").exists()


def test_adamerging_saved_coefficients_reproduce_the_final_merge(tmp_path):
    args = TWO + ["--results", str(tmp_path), "--steps", "2"]
    main_layer_wise_adamergingpp.main(args)
    out = run_folder(tmp_path, "layer_wise_adamergingpp")
    history = pd.read_csv(out / "layer_wise_adamergingpp_history.csv")
    assert history.step.tolist() == [0, 1, 2] and history.loss[1:].notna().all()
    shares = history[["top_share_Colors", "top_share_Scenes"]]  # the collapse diagnostics, per task and step
    assert shares.iloc[0].isna().all() and shares.iloc[1:].gt(0).all().all() and shares.iloc[1:].le(1).all().all()
    assert history[["entropy_Colors", "entropy_Scenes"]].iloc[1:].gt(0).all().all()
    coefficients = torch.load(out / "layer_wise_adamergingpp_coefficients.pt", weights_only=True)["coefficients"]
    assert coefficients.shape[1] == 2 and not torch.all(coefficients == 0.3)  # two Adam steps moved them
    first = pd.read_csv(out / "layer_wise_adamergingpp.csv")
    main_layer_wise_adamergingpp.main(TWO + ["--results", str(tmp_path / "again"), "--coefficients",
                                             str(out / "layer_wise_adamergingpp_coefficients.pt")])
    second = pd.read_csv(run_folder(tmp_path / "again", "layer_wise_adamergingpp") / "layer_wise_adamergingpp.csv")
    assert second.accuracy.tolist() == first.accuracy.tolist()
    assert (out / "layer_wise_adamergingpp_coefficients.png").stat().st_size > 0


def test_opcm_script_evaluates_every_seen_task_after_every_step(tmp_path):
    main_opcm.main(TWO + ["--results", str(tmp_path), "--method", "opcm,continual_avg", "--num-orders", "2"])
    out = run_folder(tmp_path, "opcm")
    steps = pd.read_csv(out / "opcm_steps.csv")
    # per method and order: 1 task after step 1, 2 after step 2
    assert len(steps) == 2 * 2 * (1 + 2)
    assert (steps.groupby(["method", "order", "step"]).size().reset_index(name="n").eval("n == step")).all()
    summary = pd.read_csv(out / "opcm_summary.csv")
    assert summary.method.tolist() == ["opcm", "continual_avg"] and (summary.num_orders == 2).all()
    assert (out / "opcm.png").stat().st_size > 0
