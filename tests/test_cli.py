import json

import pandas as pd
import pytest

import main_emr_merging
import main_task_arithmetic
import main_ties_merging
from src import cli, run
from src.run import open_suite
from src.checkpoints import CheckpointError
from src.files import REPO
from src.demo.publish import PUBLISHED
from src.suite import Suite
from tests.fixtures.runs import run_folder

TWO = "Colors,Scenes"


def test_every_hyperparameter_constant_becomes_a_flag():
    args = cli.parse_args("d", {"SCALING_COEF": 0.3, "VISION_ONLY_K": False, "STEPS": 500}, ["--scaling-coef", "0.5",
                                                                                          "--vision-only-k"])
    assert args.hyperparameters == {"SCALING_COEF": 0.5, "VISION_ONLY_K": True, "STEPS": 500}


def test_explicit_checkpoint_folder_that_is_missing_files_is_an_error_listing_them(tmp_path):
    (tmp_path / "ViT-B-32").mkdir()
    args = cli.parse_args("d", {}, ["--checkpoints", str(tmp_path), "--tasks", "MNIST,DTD"])
    with pytest.raises(CheckpointError) as err:
        open_suite(args)
    message = str(err.value)
    assert "zeroshot.pt" in message and "MNIST/finetuned.pt" in message and "DTD/finetuned.pt" in message


def test_without_real_checkpoints_the_demo_runs_with_a_banner(capsys):
    # The repo's checkpoints/ holds only demo/, so asking for ViT-L-14 without --checkpoints falls back.
    suite = open_suite(cli.parse_args("d", {}, ["--model", "ViT-L-14", "--tasks", TWO]))
    assert suite.family == "demo" and suite.tasks == TWO.split(",")
    assert "DEMO SUITE" in capsys.readouterr().err


def test_skip_done_skips_only_a_run_finished_with_the_same_settings_and_code_version(tmp_path, monkeypatch, capsys):
    argv = ["--demo", "--tasks", TWO, "--results", str(tmp_path), "--skip-done"]
    out = main_task_arithmetic.main(argv)
    assert json.loads((out / ".done.json").read_text())["code_version"] == run.code_version()
    written = (out / "task_arithmetic.csv").stat().st_mtime_ns
    with pytest.raises(cli.AlreadyDone) as done:
        main_task_arithmetic.main(argv)
    assert done.value.folder == out and (out / "task_arithmetic.csv").stat().st_mtime_ns == written
    monkeypatch.setattr("sys.argv", ["main_task_arithmetic.py", *argv])
    cli.entry(lambda: main_task_arithmetic.main(argv))  # as a command: one line, and no error exit
    assert "skipped: " in capsys.readouterr().out
    assert main_task_arithmetic.main([*argv, "--scaling-coef", "0.4"]) != out  # other settings: a run of its own
    monkeypatch.setattr(run, "code_version", lambda: "another-commit")
    assert main_task_arithmetic.main(argv) == out and (out / "task_arithmetic.csv").stat().st_mtime_ns > written
    (out / ".done.json").unlink()  # as after an interrupted run: never marked done
    monkeypatch.undo()
    assert main_task_arithmetic.main(argv) == out


def test_the_entry_script_writes_tables_and_reuses_reference_rows(tmp_path, monkeypatch):
    argv = ["--demo", "--tasks", TWO, "--results", str(tmp_path)]
    main_task_arithmetic.main(argv)
    out = run_folder(tmp_path, "task_arithmetic")
    tables = {f"{m}.{e}" for m in ("zeroshot", "individual", "task_arithmetic") for e in ("csv", "json")}
    assert {p.name for p in out.iterdir()} == {".lock", ".done.json"} | tables
    first = pd.read_csv(out / "task_arithmetic.csv")
    assert first.task.tolist() == ["Colors", "Scenes", "avg"]

    def must_not_run(self, tasks=None):
        raise AssertionError("reference rows should have been reused")
    monkeypatch.setattr(Suite, "individual_accuracies", must_not_run)
    monkeypatch.setattr(Suite, "zeroshot_accuracies", must_not_run)
    main_task_arithmetic.main(argv + ["--scaling-coef", "0.5"])
    other = run_folder(tmp_path, "task_arithmetic")
    assert other != out and pd.read_csv(out / "task_arithmetic.csv").equals(first)  # the first run's table stays
    second = pd.read_csv(other / "task_arithmetic.csv")
    assert (second.individual_accuracy == first.individual_accuracy).all()
    assert not (second.accuracy == first.accuracy).all()


def test_a_failed_run_writes_no_table(tmp_path, monkeypatch):
    def boom(self, weights, desc):
        raise RuntimeError("evaluation died")
    monkeypatch.setattr(Suite, "evaluate", boom)
    with pytest.raises(RuntimeError):
        main_task_arithmetic.main(["--demo", "--tasks", TWO, "--results", str(tmp_path)])
    assert not list(tmp_path.rglob("task_arithmetic.csv"))
    assert not list(tmp_path.rglob("*.tmp"))


SCRIPTS = {"task_arithmetic": main_task_arithmetic, "ties_merging": main_ties_merging,
           "emr_merging": main_emr_merging}


@pytest.mark.parametrize("method", ["zeroshot", "individual", "task_arithmetic", "ties_merging", "emr_merging"])
def test_committed_demo_results_reproduce(method, tmp_path_factory):
    fresh_dir = tmp_path_factory.getbasetemp() / "fresh-demo"
    script = SCRIPTS.get(method, main_task_arithmetic)
    if not list(fresh_dir.glob(f"demo/*/{method}.csv")):
        script.main(["--demo", "--results", str(fresh_dir)])
    committed = pd.read_csv(PUBLISHED / f"{method}.csv").set_index("task")
    fresh = pd.read_csv(next(fresh_dir.glob(f"demo/*/{method}.csv"))).set_index("task")
    assert fresh.index.tolist() == committed.index.tolist()
    # One image in 600 is 0.17 points; allow two to flip on another CPU's floating-point reductions.
    assert (fresh.accuracy - committed.accuracy).abs().max() <= 0.34


def test_committed_provenance_names_checkpoints_relative_to_the_repo_so_any_clone_reuses_it():
    suite = open_suite(cli.parse_args("d", {}, ["--demo"]))
    committed = json.loads((PUBLISHED / "zeroshot.json").read_text())["checkpoint_sha256"]
    assert committed == suite.checkpoint_hashes()
    assert all(not key.startswith("/") for key in committed)


def test_demo_checkpoints_copied_elsewhere_still_evaluate_the_generated_demo_tasks(tmp_path):
    import shutil
    shutil.copytree(REPO / "checkpoints" / "demo", tmp_path / "demo")
    args = cli.parse_args("d", {}, ["--checkpoints", str(tmp_path), "--model", "demo"])
    suite = open_suite(args)
    assert suite.family == "task_vectors" and suite.data_source == "demo"
    assert suite.tasks == list(run.DEMO_TASKS)  # the demo CLIP's default tasks are its own eight, not TA8
    assert suite.task_data("Colors").classnames[:2] == ["red", "green"]


def test_route_hf_without_hf_checkpoints_is_an_error_not_the_demo(tmp_path):
    args = cli.parse_args("d", {}, ["--route", "hf", "--tasks", "MNIST"])
    with pytest.raises(CheckpointError, match="python -m src.download --route hf"):
        open_suite(args)
