import subprocess

import pandas as pd
import pytest

from src import results
from src.files import atomic_write
from src.results import paper_numbers, results_table, write_results


def test_table_has_normalized_accuracy_and_an_average_row():
    table = results_table("task_arithmetic", "demo", "demo", {"A": 50.0, "B": 90.0}, {"A": 100.0, "B": 90.0})
    rows = table.set_index("task")
    assert rows.loc["A", "normalized_accuracy"] == 50.0
    assert rows.loc["B", "normalized_accuracy"] == 100.0
    assert rows.loc["avg", "accuracy"] == 70.0
    assert rows.loc["avg", "normalized_accuracy"] == 75.0  # mean of the per-task ratios, not ratio of the means
    assert pd.isna(rows.loc["avg", "paper_accuracy"])  # no published number for the demo


def test_paper_number_and_delta_for_the_same_checkpoint_family():
    paper = paper_numbers("ViT-B-32", "task_vectors", "ties_merging")
    assert paper["family"] == "task_vectors" and paper["accuracy"]["avg"] == 72.92
    accuracy = dict(paper["accuracy"])
    accuracy.pop("avg")
    accuracy["SUN397"] -= 1.0
    table = results_table("ties_merging", "ViT-B-32", "task_vectors", accuracy, None, paper).set_index("task")
    assert table.loc["SUN397", "delta_vs_paper"] == pytest.approx(-1.0)
    # The avg row compares our mean with the published mean (72.92), which rounds the mean of its own rows.
    expected = sum(accuracy.values()) / 8 - 72.92
    assert table.loc["avg", "delta_vs_paper"] == pytest.approx(expected, abs=1e-4)


def test_comparing_across_checkpoint_families_warns():
    with pytest.warns(UserWarning, match="fusionbench_hf"):
        paper = paper_numbers("ViT-B-32", "task_vectors", "task_arithmetic")
    assert paper["family"] == "fusionbench_hf"


def test_interrupted_write_leaves_the_old_table_and_no_temporary_file(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_results_come_with_a_provenance_sidecar(tmp_path):
    table = results_table("m", "demo", "demo", {"A": 1.0}, {"A": 2.0})
    write_results(tmp_path / "m.csv", table, {"seed": 3})
    assert (tmp_path / "m.json").read_text().strip().startswith("{")
    assert "normalized_accuracy" in (tmp_path / "m.csv").read_text().splitlines()[0]


def test_code_version_tells_two_sets_of_uncommitted_edits_apart(tmp_path, monkeypatch):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    (tmp_path / "m.py").write_text("A = 1\n")
    git("add", "m.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "m")
    monkeypatch.setattr(results, "REPO", tmp_path)
    clean = results.code_version()
    assert len(clean) == 40
    (tmp_path / "m.py").write_text("A = 2\n")
    first = results.code_version()
    (tmp_path / "m.py").write_text("A = 3\n")
    second = results.code_version()
    assert first.startswith(clean + "-dirty-") and second.startswith(clean + "-dirty-") and first != second
    (tmp_path / "m.py").write_text("A = 1\n")
    assert results.code_version() == clean
