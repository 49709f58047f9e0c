"""Fault injection on runs: what a researcher does by accident (a subset run, an edited constant, two runs at once,
Ctrl-C in the middle, an unwritable or full disk) never loses or mixes up results."""
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

import main_layer_wise_adamergingpp
import main_opcm
import main_task_arithmetic
from src import cli, run
from src.demo.publish import PUBLISHED
from src.files import REPO, Busy, exclusive
from src.suite import Suite
from tests.fixtures.runs import run_folder

TWO = ["--demo", "--tasks", "Colors,Scenes"]


def _count_evaluations(monkeypatch) -> list[str]:
    """The `desc` of every `Suite.evaluate` call from now on, in order."""
    evaluated = []
    original = Suite.evaluate

    def counting(self, weights, desc, tasks=None):
        evaluated.append(desc)
        return original(self, weights, desc, tasks)
    monkeypatch.setattr(Suite, "evaluate", counting)
    return evaluated


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_a_subset_run_adds_baseline_rows_and_touches_no_committed_table(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "DEFAULT_RESULTS", tmp_path)  # a bare run, as a user types it
    committed = _digests(PUBLISHED)
    main_task_arithmetic.main(["--tasks", "Colors,Scenes"])
    full = run_folder(tmp_path, "task_arithmetic")
    first = pd.read_csv(full / "task_arithmetic.csv")
    main_task_arithmetic.main(["--tasks", "Colors"])
    subset = run_folder(tmp_path, "task_arithmetic")
    assert subset != full and pd.read_csv(full / "task_arithmetic.csv").equals(first)
    assert pd.read_csv(subset / "task_arithmetic.csv").task.tolist() == ["Colors", "avg"]
    baselines = pd.read_csv(tmp_path / "demo" / "baselines.csv")
    assert sorted(zip(baselines.kind, baselines.task)) == sorted(
        (k, t) for k in ("zeroshot", "individual") for t in ("Colors", "Scenes"))
    assert _digests(PUBLISHED) == committed


def test_an_edited_constant_writes_a_new_folder_and_says_which_value_ran(tmp_path, monkeypatch, capsys):
    main_task_arithmetic.main(TWO + ["--results", str(tmp_path)])
    default = run_folder(tmp_path, "task_arithmetic")
    before = _digests(default)
    monkeypatch.setattr(main_task_arithmetic, "SCALING_COEF", 0.1)  # the README invites editing the constant
    main_task_arithmetic.main(TWO + ["--results", str(tmp_path)])
    edited = run_folder(tmp_path, "task_arithmetic")
    assert edited != default and _digests(default) == before
    assert "scaling_coef=0.1" in capsys.readouterr().err
    assert json.loads((edited / "task_arithmetic.json").read_text())["hyperparameters"] == {"SCALING_COEF": 0.1}


def test_the_same_settings_twice_at_once_stops_the_second_with_the_first_ones_pid(tmp_path):
    main_task_arithmetic.main(TWO + ["--results", str(tmp_path)])
    folder = run_folder(tmp_path, "task_arithmetic")
    with exclusive(folder / ".lock", what="test"):  # another run holding it (flock: per open file, not per process)
        with pytest.raises(Busy, match=f"in use by pid {os.getpid()} on "):
            main_task_arithmetic.main(TWO + ["--results", str(tmp_path)])


def _script(name, *flags, results, threads=None):
    """The script as a separate process; `threads` caps its CPU threads (two runs sharing 2 cores). Leave it unset
    where the numbers are compared with a run in this process: another thread count rounds differently."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen([sys.executable, str(REPO / f"{name}.py"), *TWO, "--results", str(results), *flags],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_runs_at_once_with_other_settings_both_land_and_share_one_baseline_evaluation(tmp_path):
    runs = [_script("main_task_arithmetic", "--scaling-coef", str(c), results=tmp_path, threads=1) for c in (0.1, 0.5)]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    folders = sorted((tmp_path / "demo").glob("task_arithmetic-*"))
    coefs = {json.loads((f / "task_arithmetic.json").read_text())["hyperparameters"]["SCALING_COEF"] for f in folders}
    assert coefs == {0.1, 0.5}
    assert len(pd.read_csv(tmp_path / "demo" / "baselines.csv")) == 2 * 2  # each (kind, task) evaluated once


def _interrupt_when(process, ready, timeout=300):
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the run never reached the point to interrupt"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "interrupted" in err, err


def _state_step(results):
    states = list(results.glob("demo/*/adaptation.state.pt"))
    try:
        return torch.load(states[0], weights_only=True)["step"] if states else 0
    except (EOFError, RuntimeError, OSError):
        return 0


def test_ctrl_c_mid_adamerging_then_the_same_command_resumes_and_ends_as_an_uninterrupted_run(tmp_path, capsys):
    flags = ["--steps", "30", "--eval-every", "10"]
    _interrupt_when(_script("main_layer_wise_adamergingpp", *flags, results=tmp_path / "a"),
                    lambda: _state_step(tmp_path / "a") >= 2)
    stopped_at = _state_step(tmp_path / "a")
    assert 2 <= stopped_at < 30
    main_layer_wise_adamergingpp.main(TWO + flags + ["--results", str(tmp_path / "a")])
    assert "resuming from" in capsys.readouterr().err
    main_layer_wise_adamergingpp.main(TWO + flags + ["--results", str(tmp_path / "b")])
    resumed, whole = (run_folder(tmp_path / r, "layer_wise_adamergingpp") for r in ("a", "b"))
    name = "layer_wise_adamergingpp_coefficients.pt"
    assert torch.equal(torch.load(resumed / name)["coefficients"], torch.load(whole / name)["coefficients"])
    history = [pd.read_csv(f / "layer_wise_adamergingpp_history.csv") for f in (resumed, whole)]
    pd.testing.assert_frame_equal(*history)


def test_ctrl_c_mid_opcm_keeps_the_finished_orders_and_the_rerun_completes_them(tmp_path, monkeypatch):
    flags = ["--method", "opcm,continual_avg", "--num-orders", "4"]
    steps = lambda: list((tmp_path / "a").glob("demo/opcm-*/opcm_steps.csv"))  # noqa: E731
    _interrupt_when(_script("main_opcm", *flags, results=tmp_path / "a"), lambda: bool(steps()))
    kept = pd.read_csv(steps()[0])
    finished = set(zip(kept.method, kept.order))
    assert finished and len(finished) < 8

    original = Suite.evaluate
    evaluated = _count_evaluations(monkeypatch)
    main_opcm.main(TWO + flags + ["--results", str(tmp_path / "a")])
    assert not any(f"{m} order {o} " in d for m, o in finished for d in evaluated)
    monkeypatch.setattr(Suite, "evaluate", original)
    main_opcm.main(TWO + flags + ["--results", str(tmp_path / "b")])
    resumed, whole = (pd.read_csv(run_folder(tmp_path / r, "opcm") / "opcm_steps.csv") for r in ("a", "b"))
    pd.testing.assert_frame_equal(resumed, whole)


def test_an_unwritable_results_folder_fails_before_any_work(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")

    def no_work(*args, **kwargs):
        raise AssertionError("evaluation started before the results folder was checked")
    monkeypatch.setattr(Suite, "evaluate", no_work)
    with pytest.raises(OSError, match=f"results folder {blocker}/demo/task_arithmetic-.* is not writable"):
        main_task_arithmetic.main(TWO + ["--results", str(blocker)])


def test_a_full_disk_still_shows_the_accuracies_then_one_error_line(tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.csv"))
    monkeypatch.setattr(run, "write_results", full)
    monkeypatch.setattr(sys, "argv", ["main_task_arithmetic.py"])
    with pytest.raises(SystemExit) as stop:
        cli.entry(lambda: main_task_arithmetic.main(TWO + ["--results", str(tmp_path)]))
    out, err = capsys.readouterr()
    assert stop.value.code == 1
    assert "task_arithmetic" in out and "avg" in out  # the table was printed before the write failed
    assert err.strip().splitlines()[-2].startswith("error: [Errno 28] No space left on device")


def test_reevaluate_evaluates_each_baseline_once(tmp_path, monkeypatch):
    main_task_arithmetic.main(TWO + ["--results", str(tmp_path)])
    evaluated = _count_evaluations(monkeypatch)
    main_task_arithmetic.main(TWO + ["--results", str(tmp_path), "--reevaluate"])
    assert sorted(evaluated) == ["individual", "task arithmetic", "zero-shot"]
    assert len(pd.read_csv(tmp_path / "demo" / "baselines.csv")) == 2 * 2  # rows replaced, not added


def test_the_suite_owns_its_baselines_stored_under_its_name_or_nowhere(tmp_path, monkeypatch):
    evaluated = _count_evaluations(monkeypatch)
    stored = run.open_suite(cli.parse_args("d", {}, TWO + ["--results", str(tmp_path / "kept")]))
    assert stored.name == "demo"
    first = stored.baseline("zeroshot")
    assert stored.baseline("zeroshot") == first and evaluated == ["zero-shot"]
    table = pd.read_csv(tmp_path / "kept" / "demo" / "baselines.csv")
    assert dict(zip(table.task, table.accuracy)) == first and set(table.kind) == {"zeroshot"}
    # Another suite on the same store reads the rows instead of evaluating again.
    again = run.open_suite(cli.parse_args("d", {}, TWO + ["--results", str(tmp_path / "kept")]))
    assert again.baseline("zeroshot") == first and evaluated == ["zero-shot"]

    loose = run.open_suite(cli.parse_args("d", {}, TWO))
    loose.results = None
    assert loose.baseline("individual") == loose.baseline("individual")
    assert evaluated == ["zero-shot", "individual"] and sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
