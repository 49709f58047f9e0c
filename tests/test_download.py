"""`python -m src.download` without a network: what it would fetch, that present files are never fetched again,
and the error that names what is missing."""
import pytest

from src import download
from src.checkpoints import find_hf_checkpoints
from tests.fixtures import huggingface as hf_fx


def _no_network(*args, **kwargs):
    raise AssertionError("something present was fetched again")


def test_everything_present_fetches_nothing(tmp_path, monkeypatch, capsys):
    hf_fx.hub_tree(tmp_path / "hub", ["MNIST", "PCAM"])
    hf_fx.dataset_cache(tmp_path / "data", ["MNIST", "PCAM"])
    monkeypatch.setattr(download, "_fetch_repo", _no_network)
    monkeypatch.setattr(download, "_fetch_dataset", _no_network)
    status = download.main(["--tasks", "MNIST,PCAM", "--checkpoints", str(tmp_path / "hub"), "--data",
                            str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert status == 0 and "5/5 ready (0 fetched now)" in out
    assert "present   checkpoint openai/clip-vit-base-patch32" in out
    assert "present   dataset ylecun/mnist split 'test'" in out


def test_offline_names_what_is_missing(tmp_path, capsys):
    status = download.main(["--tasks", "SVHN", "--checkpoints", str(tmp_path / "hub"), "--data",
                            str(tmp_path / "data")])
    captured = capsys.readouterr()
    assert status == 1 and "0/3 ready" in captured.out
    assert "3 could not be fetched (no network" in captured.err
    for name in ("openai/clip-vit-base-patch32", "tanganke/clip-vit-base-patch32_svhn",
                 "ufldl-stanford/svhn (cropped_digits) split 'test'"):
        assert name in captured.err


def test_fetches_only_the_files_a_run_reads_into_the_hub_layout(tmp_path, monkeypatch):
    """A stand-in for the hub: snapshot_download's arguments are recorded and the files placed where it puts them;
    afterwards the scripts' own lookup finds the checkpoints, and a second run fetches nothing."""
    calls = []
    source = hf_fx.hub_tree(tmp_path / "origin", ["DTD"])

    def snapshot_download(repo_id, allow_patterns, cache_dir):
        calls.append((repo_id, tuple(allow_patterns)))
        origin = source["pretrained"] if repo_id.startswith("openai/") else source["finetuned"]["DTD"][1]
        target = hf_fx._snapshot(tmp_path / "cache", repo_id)
        target.mkdir(parents=True, exist_ok=True)
        for path in origin.iterdir():
            if path.name in allow_patterns:
                (target / path.name).write_bytes(path.read_bytes())
        return str(target)
    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    argv = ["--tasks", "DTD", "--checkpoints-only", "--checkpoints", str(tmp_path / "cache")]
    assert download.main(argv) == 0
    assert calls == [("openai/clip-vit-base-patch32", download.PRETRAINED_FILES),
                     ("tanganke/clip-vit-base-patch32_dtd", download.EXPERT_FILES)]
    found = find_hf_checkpoints(tmp_path / "cache", "ViT-B-32", ["DTD"])
    assert (found.pretrained / "preprocessor_config.json").is_file() and (found.pretrained / "tokenizer.json").is_file()
    calls.clear()
    assert download.main(argv) == 0 and calls == []


def test_task_vectors_route_prints_what_to_fetch_and_where(tmp_path, capsys):
    assert download.main(["--route", "task_vectors", "--tasks", "SUN397,MNIST", "--checkpoints", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert download.TASK_VECTORS_DRIVE in out
    assert str(tmp_path / "ViT-B-32" / "SUN397" / "finetuned.pt") in out
    assert f"python -m src.checkpoints convert {tmp_path / 'ViT-B-32'}" in out
    assert "MNIST/raw/t10k" in out


def test_help_shows_both_routes(capsys):
    with pytest.raises(SystemExit):
        download.main(["--help"])
    out = capsys.readouterr().out
    assert "--route {hf,task_vectors}" in out and "--checkpoints-only" in out and "Google Drive" in out
