"""Bad input fails before any work, in one line that names the flag, file or key: flags are checked when parsed,
an incomplete checkpoint folder is listed rather than replaced by the demo, a merge that produced NaN or Inf is
refused, and the scripts' command-line wrapper prints `error: …` instead of a traceback."""
import sys

import pytest
import torch

import main_layer_wise_adamergingpp
import main_opcm
import main_task_arithmetic
import main_ties_merging
from src import cli, run
from src.run import Run, open_suite
from src.checkpoints import CheckpointError


@pytest.mark.parametrize("script, argv, names", [
    (main_task_arithmetic, ["--scaling-coef", "nan"], ["--scaling-coef", "not a finite number"]),
    (main_task_arithmetic, ["--scaling-coef", "inf"], ["--scaling-coef", "not a finite number"]),
    (main_task_arithmetic, ["--tasks", "NotATask"], ["--tasks", "NotATask"]),
    (main_task_arithmetic, ["--tasks", "Shapes,NotATask"], ["--tasks", "NotATask"]),
    (main_task_arithmetic, ["--model", "ViT-X"], ["--model", "ViT-X"]),
    (main_task_arithmetic, ["--batch-size", "0"], ["--batch-size", "not a positive integer"]),
    (main_ties_merging, ["--k", "150"], ["--k", "outside (0, 100]"]),
    (main_ties_merging, ["--k", "0"], ["--k", "outside (0, 100]"]),
    (main_ties_merging, ["--merge-func", "x"], ["--merge-func", "invalid choice"]),
    (main_layer_wise_adamergingpp, ["--variant", "layerwise"], ["--variant", "invalid choice"]),
    (main_layer_wise_adamergingpp, ["--vector-dtype", "float99"], ["--vector-dtype", "invalid choice"]),
    (main_layer_wise_adamergingpp, ["--steps", "-1"], ["--steps", "outside [0, inf)"]),
    (main_opcm, ["--method", "opcm,x"], ["--method", "unknown method(s) ['x']"]),
    (main_opcm, ["--alpha", "5"], ["--alpha", "outside [0, 1]"]),
    (main_opcm, ["--merge-class-embedding", "maybe"], ["--merge-class-embedding", "invalid choice"]),
])
def test_bad_flags_stop_at_parsing(script, argv, names, capsys, monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before the flags were checked")
    monkeypatch.setattr(run, "open_suite", no_work)
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert all(name in message for name in names), message


def test_help_shows_defaults_and_choices(capsys):
    with pytest.raises(SystemExit):
        main_ties_merging.main(["--help"])
    out = capsys.readouterr().out
    assert "--merge-func {sum,mean,max}" in out and "in (0, 100]" in out and "(default: 20.0)" in out


def test_cuda_asked_without_a_gpu_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = cli.parse_args("d", {}, ["--device", "cuda", "--demo"])
    with pytest.raises(ValueError, match="--device cuda: no CUDA device is available here"):
        Run(args, "task_arithmetic")


def test_an_incomplete_checkpoint_folder_is_listed_not_replaced_by_the_demo(tmp_path, monkeypatch):
    (tmp_path / "ViT-B-32" / "SUN397").mkdir(parents=True)
    (tmp_path / "ViT-B-32" / "zeroshot.pt").write_bytes(b"")
    monkeypatch.setattr(run, "DEFAULT_CHECKPOINTS", tmp_path)
    args = cli.parse_args("d", {}, ["--tasks", "SUN397,Cars"])
    with pytest.raises(CheckpointError) as info:
        open_suite(args)
    assert "SUN397/finetuned.pt" in str(info.value) and "Cars/finetuned.pt" in str(info.value)
    (tmp_path / "ViT-B-32").rename(tmp_path / "elsewhere")  # no folder at all: the demo, with its banner
    assert open_suite(args).family == "demo"


def test_a_merge_with_nan_is_refused_naming_the_tensor():
    suite = open_suite(cli.parse_args("d", {}, ["--demo", "--tasks", "Colors", "--device", "cpu"]))
    broken = dict(suite.pretrained)
    broken["model.visual.ln_post.weight"] = broken["model.visual.ln_post.weight"] * float("nan")
    with pytest.raises(FloatingPointError, match="merge Colors: tensor 'model.visual.ln_post.weight'"):
        suite.evaluate(broken, "merge")


def test_entry_prints_one_line_and_exit_codes(capsys, monkeypatch):
    def failing():
        raise CheckpointError("/x/zeroshot.pt", "file not found")
    monkeypatch.setattr(sys, "argv", ["main_task_arithmetic.py"])
    with pytest.raises(SystemExit) as info:
        cli.entry(failing)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: /x/zeroshot.pt: file not found\n") and "Traceback" not in err

    def interrupted():
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as info:
        cli.entry(interrupted)
    assert info.value.code == 130 and capsys.readouterr().err == "interrupted\n"

    monkeypatch.setattr(sys, "argv", ["main_task_arithmetic.py", "--debug"])
    with pytest.raises(CheckpointError):
        cli.entry(failing)


def test_parsing_imports_nothing_heavy_so_help_and_flag_errors_answer_at_once():
    """What `--help` costs is what the script imports before parsing (bench/help.py measures the time)."""
    import subprocess
    from src.files import REPO
    probe = ("import sys\n"
             "for name in ['main_task_arithmetic', 'main_ties_merging', 'main_layer_wise_adamergingpp',\n"
             "             'main_emr_merging', 'main_opcm']:\n"
             "    script = __import__(name)\n"
             "    for argv in (['--help'], ['--k', '150'], ['--tasks', 'NotATask']):\n"
             "        try:\n"
             "            script.main(argv)\n"
             "        except SystemExit:\n"
             "            pass\n"
             "print(sorted(m for m in ('torch', 'pandas', 'numpy', 'open_clip', 'transformers') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_wait_passively_unless_the_user_says_otherwise(given, expected):
    import os
    import subprocess
    from src.files import REPO
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    probe = "import os, src.cli\nsrc.cli.entry(lambda: print(os.environ['OMP_WAIT_POLICY']))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.stdout.strip() == expected, done.stderr


def test_a_missing_open_clip_text_tower_says_what_to_fetch(tmp_path, monkeypatch):
    from src import suite as suite_module
    from src.checkpoints import CheckpointSet

    def offline(model, pretrained=None):
        raise RuntimeError(f"Failed to download weights for tag '{pretrained}': no network")
    monkeypatch.setattr(suite_module, "create_clip", offline)
    found = CheckpointSet("ViT-B-32", "task_vectors", tmp_path / "zeroshot.pt", {})
    suite = suite_module.OpenClipSuite(found, ["MNIST"], text_tower="openai")
    with pytest.raises(RuntimeError, match="text tower of open_clip's 'openai' ViT-B-32 weights.*head_<Task>.pt"):
        suite._text_model
