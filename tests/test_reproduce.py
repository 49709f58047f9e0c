"""reproduce.py: the grid as data, its cost estimate, cells run as submitit jobs (two at once, a failing one, one killed
midway and resumed), the report, and the caches shared by jobs running at once."""
import importlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import src.run
from src import grid, jobs, reproduction
from src.demo.publish import PUBLISHED
from src.files import REPO
from src.grid import Cell
from src.options import ADAMERGING_VARIANTS
from src.results import main as results_main
from tests.fixtures import datasets as fx
from tests.fixtures.runs import run_folder

DEMO_N = 8 * 600  # demo test images: eight tasks of 600


# --- the grid as data ---------------------------------------------------------------------------------------------

def test_the_paper_grid_holds_every_method_backbone_route_and_task_list_once():
    cells = grid.full_grid()
    assert len({c.id for c in cells}) == len(cells) == 7 * 3 * 2 + 4 * 3 * 3
    one_shot = [c for c in cells if c.method not in grid.CONTINUAL]
    assert {(c.backbone, c.route) for c in one_shot} == {(b, r) for b in grid.BACKBONES for r in grid.ROUTES}
    assert {c.tasks for c in one_shot} == {"TA8"}
    continual = [c for c in cells if c.method in grid.CONTINUAL]
    assert {c.route for c in continual} == {"hf"}
    assert {(c.backbone, c.tasks) for c in continual} == {(b, t) for b in grid.BACKBONES
                                                          for t in ("TA8", "TALL14", "TALL20")}


class _Parsed(Exception):
    pass


@pytest.mark.parametrize("cell", [Cell("layer_wise_adamerging", "ViT-L-14", "TA8", "task_vectors"),
                                  Cell("task_wise_adamergingpp", "ViT-B-16", "TA8", "hf"),
                                  Cell("continual_ties", "ViT-B-32", "TALL20", "hf"),
                                  Cell("emr_merging", "ViT-B-32", "TA8", "task_vectors")], ids=lambda c: c.id)
def test_a_cells_flags_select_its_method_backbone_tasks_and_route_in_its_entry_script(cell, monkeypatch):
    def parsed(args, name, **_):
        raise _Parsed(args, name)
    monkeypatch.setattr(src.run, "Run", parsed)
    with pytest.raises(_Parsed) as caught:
        importlib.import_module(cell.script).main(cell.argv())
    args, name = caught.value.args
    assert (args.model, args.tasks, args.route) == (cell.backbone, cell.tasks, cell.route)
    chosen = {"main_opcm": lambda: args.method, "main_layer_wise_adamergingpp":
              lambda: ADAMERGING_VARIANTS[args.variant]}.get(cell.script, lambda: name)
    assert chosen() == cell.method


def test_select_keeps_cells_matching_every_filter_and_names_an_unknown_value():
    cells = grid.full_grid()
    picked = grid.select(cells, backbones="ViT-B-32", methods="opcm,ties_merging", routes="hf")
    assert {c.id for c in picked} == {"ViT-B-32/hf/TA8/ties_merging", "ViT-B-32/hf/TA8/opcm",
                                      "ViT-B-32/hf/TALL14/opcm", "ViT-B-32/hf/TALL20/opcm"}
    assert [c.id for c in grid.select(cells, only="L-14/task_vectors/TA8/emr")] == \
        ["ViT-L-14/task_vectors/TA8/emr_merging"]
    assert len(grid.select(cells, tasks="TALL14")) == 12
    with pytest.raises(ValueError, match="--methods opcm,adamerging: unknown \\['adamerging'\\]"):
        grid.select(cells, methods="opcm,adamerging")


def test_estimates_add_up_images_steps_and_merges_by_hand():
    speed = grid.SPEEDS["demo"]
    cells = {c.method: c for c in grid.demo_grid()}
    est = grid.estimates(list(cells.values()))
    per_image = 1 / speed.images_per_s
    # The first cell also evaluates the zero-shot and individual models; the next ones reuse them.
    assert est[cells["task_arithmetic"]] == pytest.approx(speed.start_s + 3 * DEMO_N * per_image)
    assert est[cells["ties_merging"]] == pytest.approx(speed.start_s + DEMO_N * per_image)
    assert est[cells["emr_merging"]] == pytest.approx(speed.start_s + 2 * DEMO_N * per_image)
    step = 8 * 2 * 16 * 3 * per_image + speed.merge_step_s  # 8 tasks x 2 batches x 16 images, forward + backward
    assert est[cells["layer_wise_adamergingpp"]] == pytest.approx(speed.start_s + 2 * DEMO_N * per_image + 500 * step)
    # Ten orders; step t evaluates t of the 8 tasks: 36/8 passes over the test images per order.
    assert est[cells["opcm"]] == pytest.approx(speed.start_s + 10 * 36 / 8 * DEMO_N * per_image + 80 * speed.add_s)
    assert est[cells["continual_avg"]] == pytest.approx(speed.start_s + 10 * 36 / 8 * DEMO_N * per_image)
    hf = Cell("layer_wise_adamerging", "ViT-B-32", "TA8", "hf")  # FusionBench: 1000 steps, one batch per task
    b32 = grid.SPEEDS["ViT-B-32"]
    hf_images = 19850 + 8041 + 6300 + 2700 + 26032 + 12630 + 10000 + 1880
    assert grid.estimate_s(hf) == pytest.approx(
        b32.start_s + 2 * hf_images / b32.images_per_s + 1000 * (8 * 16 * 3 / b32.images_per_s + b32.merge_step_s))


def test_dry_run_lists_the_whole_real_grid_with_estimates_and_finished_cells(tmp_path):
    done = Cell("task_arithmetic", "ViT-B-32", "TA8", "hf")
    jobs._write_record(tmp_path, done, {"status": "done", "run_folder": "x", "wall_time_s": 754.0})
    out = subprocess.run([sys.executable, "reproduce.py", "--dry-run", "--results", str(tmp_path)], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("ViT-")]
    assert [r[0] for r in rows] == [c.id for c in grid.full_grid()]
    assert {r[1] for r in rows} == {"done", "to"} and [r for r in rows if r[1] == "done"][0][0] == done.id
    assert [r for r in rows if r[0] == done.id][0][-2:] == ["13", "min"]  # the measured 754 s
    assert "78 cells; still to run:" in out and "assumed for one A100-class GPU" in out


# --- running cells ------------------------------------------------------------------------------------------------

def _launcher(tmp_path, cluster="local", jobs_at_once=2):
    return jobs.Launcher(cluster=cluster, folder=tmp_path / "logs", jobs=jobs_at_once, poll_s=0.2,
                         timeout_min=lambda cell: 10)


def _committed(method):
    return pd.read_csv(PUBLISHED / f"{method}.csv").set_index("task").accuracy


def test_the_demo_grid_two_jobs_at_once_a_failing_cell_and_the_report(tmp_path):
    results = tmp_path / "results"
    failing = Cell("task_arithmetic", "ViT-B-32", "TA8", "task_vectors",
                   flags=("--checkpoints", str(tmp_path / "no_checkpoints")))
    cells = [Cell(m, "demo", "demo", "demo") for m in ("task_arithmetic", "ties_merging", "emr_merging")]
    rejected = Cell("ties_merging", "demo", "demo", "demo", flags=("--k", "nan"))
    cells += [Cell("opcm", "demo", "demo", "demo", flags=("--num-orders", "2")), failing, rejected,
              Cell("continual_avg", "demo", "demo", "demo", flags=("--num-orders", "2"))]
    failed = {failing.id: "failed", rejected.id: "failed"}
    records = {r["cell"]: r for r in _launcher(tmp_path).run(cells, [], results)}
    assert {c.id: records[c.id]["status"] for c in cells} == {**{c.id: "done" for c in cells}, **failed}
    assert "checkpoint file(s) missing" in records[failing.id]["error"]
    assert "checkpoint file(s) missing" in (REPO / records[failing.id]["log"]).read_text()
    assert "exited with status 2" in records[rejected.id]["error"]
    assert "--k: nan is not a finite number" in (REPO / records[rejected.id]["log"]).read_text()
    # Two jobs ran at once: some pair of cells overlapped in time.
    spans = sorted((r["started"], r["started"] + r["wall_time_s"]) for r in records.values() if "started" in r)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    # Concurrent cells shared one baseline store: one row per kind and task, however many cells evaluated.
    baselines = pd.read_csv(results / "demo" / "baselines.csv")
    assert not baselines.duplicated(["kind", "task"]).any() and len(baselines) == 16
    for method in ("task_arithmetic", "ties_merging", "emr_merging", "zeroshot", "individual"):
        folder = run_folder(results, "emr_merging" if method in ("zeroshot", "individual") else method)
        assert pd.read_csv(folder / f"{method}.csv").set_index("task").accuracy.equals(_committed(method))

    report = reproduction.write_report(cells, results)
    text = report.read_text()
    table = pd.read_csv(results / "REPRODUCTION.csv")
    ta = table[(table.method == "task_arithmetic") & (table.backbone == "demo")].set_index("task").accuracy
    assert ta.round(4).equals(_committed("task_arithmetic").round(4))
    for method in ("task_arithmetic", "zeroshot"):  # the report's rows carry the committed numbers
        assert f"| {method} | " + " | ".join(f"{a:.2f}" for a in _committed(method)) + " |" in text
    assert set(table[table.backbone == "ViT-B-32"].status) == {"failed"}
    assert f"| {failing.label} | failed | failed |" in text
    for cell in (c for c in cells if c.method in grid.CONTINUAL):
        summary = pd.read_csv(Path(records[cell.id]["run_folder"]) / "opcm_summary.csv").iloc[0]
        assert summary.method == cell.method
        mean, std = summary.final_avg_accuracy_mean, summary.final_avg_accuracy_std
        assert f"| {cell.label} | {mean:.2f} ± {std:.2f} (2 orders) |" in text
    assert (results / "reproduction" / "demo_demo_demo_continual.png").exists()

    # Rerunning skips every finished cell (same settings, checkpoints and code) and retries the failed one.
    again = {r["cell"]: r["status"] for r in _launcher(tmp_path).run(cells, [], results)}
    assert again == {**{c.id: "skipped" for c in cells}, **failed}


def test_a_cell_killed_midway_resumes_where_it_stopped_when_the_grid_runs_again(tmp_path):
    results = tmp_path / "results"
    cell = Cell("layer_wise_adamergingpp", "demo", "demo", "demo",
                flags=("--tasks", "Colors,Scenes", "--steps", "150"))
    quick = Cell("ties_merging", "demo", "demo", "demo", flags=("--tasks", "Colors,Scenes"))
    first = []
    runner = threading.Thread(target=lambda: first.extend(_launcher(tmp_path).run([cell, quick], [], results)))
    runner.start()
    state, holder = _lock_holder(results, "layer_wise_adamergingpp-*/adaptation.state.pt")
    time.sleep(1.0)
    os.kill(holder, signal.SIGKILL)
    runner.join(timeout=120)
    assert {r["cell"]: r["status"] for r in first} == {cell.id: "failed", quick.id: "done"}

    second = {r["cell"]: r for r in _launcher(tmp_path).run([cell, quick], [], results)}
    assert second[quick.id]["status"] == "skipped" and second[cell.id]["status"] == "done"
    log = "".join(p.read_text() for p in (tmp_path / "logs").glob("*_log.err"))
    assert "resuming from" in log
    history = pd.read_csv(state.parent / "layer_wise_adamergingpp_history.csv")
    assert list(history.step) == list(range(151)) and history.loss.iloc[1:].notna().all()


def _lock_holder(results, pattern, timeout_s=120):
    """The pid of the job holding the run folder matching `pattern` once it has saved state."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        found = list((results / "demo").glob(pattern))
        if found:
            return found[0], int((found[0].parent / ".lock").read_text().split()[1])  # "pid N on host"
        time.sleep(0.1)
    raise AssertionError(f"no {pattern} under {results / 'demo'} after {timeout_s} s")


def test_ctrl_c_on_the_grid_stops_its_local_jobs_too(tmp_path):
    results = tmp_path / "results"
    cell = Cell("layer_wise_adamergingpp", "demo", "demo", "demo", flags=("--tasks", "Colors", "--steps", "2000"))
    holder = []

    def interrupt():
        holder.append(_lock_holder(results, "layer_wise_adamergingpp-*/adaptation.state.pt")[1])
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        _launcher(tmp_path).run([cell], [], results)
    deadline = time.time() + 30
    while time.time() < deadline and _alive(holder[0]):
        time.sleep(0.2)
    assert not _alive(holder[0]), "the job went on after the grid was interrupted"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited; only its parent has not collected it yet
        return f.read().split()[2] != "Z"


def test_the_debug_executor_runs_a_cell_in_this_process_and_the_report_shows_the_rest_as_not_run(tmp_path, capsys):
    results = tmp_path / "results"
    cell = Cell("task_arithmetic", "demo", "demo", "demo")
    [record] = _launcher(tmp_path, "debug", 1).run([cell], [], results)
    assert record["status"] == "done" and record["cell"] == cell.id and record["wall_time_s"] > 0
    assert jobs.read_record(results, cell) == record
    text = reproduction.write_report(grid.demo_grid(), results).read_text()
    table = pd.read_csv(results / "REPRODUCTION.csv")
    assert table[table.method == "task_arithmetic"].set_index("task").accuracy.round(4).equals(
        _committed("task_arithmetic").round(4))
    assert set(table[~table.method.isin(["task_arithmetic", "zeroshot", "individual"])].status) == {"not run"}
    assert "| ties_merging | not run | not run |" in text and "| opcm | not run |" in text
    capsys.readouterr()  # what the run printed
    results_main(["--reproduction", str(results)])  # python -m src.results prints the same report
    assert capsys.readouterr().out.strip() == text.strip()


def test_a_slurm_cell_is_one_sbatch_job_with_its_partition_gpu_time_limit_and_requeue(tmp_path, monkeypatch):
    # No cluster here: stand-ins for srun (submitit looks for it) and sbatch (keeps the script it is given).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cell = Cell("layer_wise_adamergingpp", "ViT-L-14", "TA8", "hf")
    minutes = round(2.5 * grid.estimate_s(cell) / 60)
    launcher = jobs.Launcher(cluster="slurm", folder=tmp_path / "logs", gpus_per_job=1, partition="gpu", retries=3,
                             timeout_min=lambda c: 2.5 * grid.estimate_s(c) / 60)
    job = launcher.executor(cell, slot=0).submit(jobs.CellJob(cell, [], tmp_path / "results"))
    assert job.job_id == "4242"
    script = (tmp_path / "submitted.sh").read_text()
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", f"#SBATCH --time={minutes}",
                 f"#SBATCH --job-name={cell.id}", "#SBATCH --signal=USR2@90"):
        assert line in script
    assert "submitit.core._submit" in script and launcher.executor(cell, 0)._executor.max_num_timeout == 3


# --- caches under concurrent jobs ---------------------------------------------------------------------------------

_CHILD = textwrap.dedent("""
    import json, os, sys, time
    import torch
    from torchvision import transforms as T
    import src.datasets.cache as cache
    from src import heads
    from src.datasets import get_task
    from src.modeling import ClassificationHead
    root, cache_dir, go = sys.argv[1:4]
    builds = []
    real_build = cache._build
    def slow_build(*args):
        builds.append("split")
        time.sleep(1.0)  # long enough that the other job asks for the entry meanwhile
        real_build(*args)
    cache._build = slow_build
    def build_head():
        builds.append("head")
        time.sleep(1.0)
        return ClassificationHead(normalize=True, weights=torch.full((3, 4), float(os.getpid())))
    while not os.path.exists(go):
        time.sleep(0.01)
    split = cache.cached(get_task("MNIST", root).split("test", T.Compose([T.Resize(16), T.ToTensor()])), cache_dir)
    head = heads.cached_head(os.path.join(cache_dir, "head.safetensors"), "key", build_head)
    print(json.dumps({"builds": builds, "folder": str(split.folder),
                      "images": float(sum(float(x.sum()) for x, _ in (split[i] for i in range(len(split))))),
                      "head": float(head.weight[0, 0])}))
""")


def test_two_jobs_needing_the_same_cache_entries_build_each_once_and_read_the_same(tmp_path):
    root, cache_dir, go = tmp_path / "data", tmp_path / "cache", tmp_path / "go"
    fx.build_tree(root, ["MNIST"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "MERGEREPRO_FIXTURE_SIZES": str(root / "fixture_sizes.json")}
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, str(root), str(cache_dir), str(go)], cwd=REPO,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]
    time.sleep(3)  # both have imported and wait at the barrier
    go.touch()
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(b for o in outputs for b in o["builds"]) == ["head", "split"]  # each built by one job only
    assert outputs[0]["folder"] == outputs[1]["folder"] and outputs[0]["images"] == outputs[1]["images"]
    assert outputs[0]["head"] == outputs[1]["head"]
    entries = [p for p in (cache_dir).iterdir() if not p.name.startswith(".")]
    assert sorted(p.name for p in entries)[0].startswith("MNIST") and len(entries) == 2  # the split and the head
    assert not [p for p in cache_dir.iterdir() if p.name.endswith(".tmp") or p.is_dir() and p.name.startswith(".")]
