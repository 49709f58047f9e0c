"""The 20 task wrappers on fabricated trees in each real layout: labels, images, class names, counts, errors."""
import json
import shutil
import sys

import numpy as np
import pytest

from src.datasets import TA8, TALL14, TALL20, get_task, prompts
from src.datasets.check import main as check_main
from src.datasets.readers import DatasetError, MissingFiles
from src.datasets.tasks import FIXTURE_SIZES_ENV, SPECS_BY_NAME, WrongCount
from tests.fixtures import datasets as fx

BUILT = [t for t in TALL20 if t in fx.BUILDERS]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, fx.build_tree(root, BUILT)


@pytest.fixture
def fixture_sizes(tree, monkeypatch):
    monkeypatch.setenv(FIXTURE_SIZES_ENV, str(tree[0] / "fixture_sizes.json"))
    return tree


@pytest.mark.parametrize("task", BUILT)
def test_test_split_reads_the_written_labels_and_pixels(fixture_sizes, task):
    root, written = fixture_sizes
    labels, arrays = written[task] if isinstance(written[task], tuple) else (written[task], None)
    data = get_task(task, root)
    split = data.split("test", None)
    assert [split[i][1] for i in range(len(split))] == list(labels)
    images = [split[i][0] for i in range(len(split))]
    if arrays is not None:  # array formats: pixels exactly as written, in the orientation readers return
        assert all(np.array_equal(np.asarray(im), a) for im, a in zip(images, arrays))
    else:  # image files: decoded to RGB like torchvision's default loader
        assert all(im.mode == "RGB" and im.size == (12, 10) for im in images)
    assert data.templates == prompts.TEMPLATES[task] and all(t.count("{}") == 1 for t in data.templates)
    assert len(data.classnames) == json.loads((root / "fixture_sizes.json").read_text())[task]["classes"]


def test_class_names_taken_from_the_data(fixture_sizes):
    root, _ = fixture_sizes
    assert get_task("SUN397", root).classnames == ["abbey", "bus interior", "candy store"]
    assert get_task("DTD", root).classnames == ["banded", "blotchy", "braided"]
    assert get_task("Cars", root).classnames == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012",
                                                 "Audi R8 Coupe 2012"]
    assert get_task("EuroSAT", root).classnames == [
        "annual crop land", "forest", "brushland or shrubland", "highway or road",
        "industrial buildings or commercial buildings", "pasture land", "permanent crop land",
        "residential buildings or homes or apartments", "river", "lake or sea"]


def test_reference_template_and_class_counts():
    # docs/data.md: Cars 8, DTD 8, EuroSAT 3, GTSRB 3, MNIST 1, RESISC45 18, SUN397 2, SVHN 1
    assert {t: len(prompts.TEMPLATES[t]) for t in TA8} == {
        "SUN397": 2, "Cars": 8, "RESISC45": 18, "EuroSAT": 3, "SVHN": 1, "GTSRB": 3, "MNIST": 1, "DTD": 8}
    assert prompts.TEMPLATES["MNIST"] == ['a photo of the number: "{}".'] == prompts.TEMPLATES["SVHN"]
    assert prompts.TEMPLATES["EuroSAT"][1] == "a centered satellite photo of a {}."
    assert prompts.TEMPLATES["GTSRB"][2] == 'a close up photo of a "{}" traffic sign.'
    assert prompts.TEMPLATES["RESISC45"][7] == "aerial imagery of a {}."
    assert prompts.TEMPLATES["DTD"][5] == "a photo of the {} pattern."
    for task in TALL20:
        spec = SPECS_BY_NAME[task]
        if spec.classnames is not None:
            assert len(spec.classnames) == spec.num_classes == len(set(spec.classnames)), task
    assert prompts.GTSRB[14] == "stop" and prompts.RESISC45[35] == "sea ice"


def test_sizes_are_checked_against_the_paper_splits(tree, monkeypatch):
    root, _ = tree
    monkeypatch.delenv(FIXTURE_SIZES_ENV, raising=False)
    with pytest.raises(WrongCount) as info:
        get_task("MNIST", root).split("test", None)
    assert str(info.value).startswith("MNIST test split: expected 10,000 images, found 6 ")
    with pytest.raises(WrongCount, match="SUN397 test split: expected 19,887 images, found 6"):
        get_task("SUN397", root).classnames


def test_override_still_checks(tree, tmp_path, monkeypatch):
    root, _ = tree
    sizes = json.loads((root / "fixture_sizes.json").read_text())
    sizes["GTSRB"]["test"] += 1
    sizes["DTD"]["classes"] = 5
    (tmp_path / "sizes.json").write_text(json.dumps(sizes))
    monkeypatch.setenv(FIXTURE_SIZES_ENV, str(tmp_path / "sizes.json"))
    with pytest.raises(WrongCount, match="GTSRB test split: expected 5 images, found 4"):
        get_task("GTSRB", root).split("test", None)
    with pytest.raises(WrongCount, match="DTD: expected 5 classes, found 3"):
        get_task("DTD", root).split("test", None)


def test_task_vectors_folder_names_and_cars_annotations_beside(tmp_path, monkeypatch):
    fx.dtd(tmp_path, test_folder="val")
    fx.sun397(tmp_path, test_folder="val")
    fx.cars(tmp_path, annotations_in_devkit=False)
    monkeypatch.setenv(FIXTURE_SIZES_ENV, str(tmp_path / "sizes.json"))
    (tmp_path / "sizes.json").write_text(json.dumps({t: {"test": 6 if t != "Cars" else 5, "classes": 3}
                                                     for t in ("DTD", "SUN397", "Cars")}))
    for task in ("DTD", "SUN397"):
        assert len(get_task(task, tmp_path).split("test", None)) == 6
    cars = get_task("Cars", tmp_path)
    assert [cars.split("test", None)[i][1] for i in range(5)] == [1, 0, 2, 1, 0]
    assert (tmp_path / "stanford_cars" / "cars_test_annos_withlabels.mat").exists()


def test_resisc45_keeps_only_the_listed_test_files(fixture_sizes):
    root, _ = fixture_sizes
    split = get_task("RESISC45", root).split("test", None)
    names = [p.name for p in split.samples.paths]
    assert names == ["airplane_002.jpg", "golf_course_002.jpg", "railway_station_002.jpg"]


def test_missing_files_are_listed_with_what_to_do(tmp_path, fixture_sizes):
    with pytest.raises(MissingFiles) as info:
        get_task("GTSRB", tmp_path).split("test", None)
    message = str(info.value)
    assert str(tmp_path / "gtsrb" / "GT-final_test.csv") in message
    assert str(tmp_path / "gtsrb" / "GTSRB" / "Final_Test" / "Images") in message
    assert "torchvision.datasets.GTSRB" in message and "Getting the checkpoints and data" in message
    with pytest.raises(MissingFiles) as info:
        get_task("DTD", tmp_path).classnames
    assert str(tmp_path / "dtd" / "test") in str(info.value) and str(tmp_path / "dtd" / "val") in str(info.value)


def test_pcam_without_h5py_says_how_to_fix(tmp_path, monkeypatch):
    (tmp_path / "pcam").mkdir()
    for part in "xy":
        (tmp_path / "pcam" / f"camelyonpatch_level_2_split_test_{part}.h5").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(DatasetError, match="pip install h5py"):
        get_task("PCAM", tmp_path).split("test", None)


def test_check_command_reports_each_task(tree, tmp_path, monkeypatch, capsys):
    root, _ = tree
    sizes = json.loads((root / "fixture_sizes.json").read_text())
    sizes["SVHN"]["test"] = 99
    (tmp_path / "sizes.json").write_text(json.dumps(sizes))
    monkeypatch.setenv(FIXTURE_SIZES_ENV, str(tmp_path / "sizes.json"))
    assert check_main(["--data", str(root), "--tasks", "MNIST,SVHN,PCAM,Cars"]) == 1
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "ok" in lines["MNIST"] and "6 test images decoded, 10 classes" in lines["MNIST"]
    assert "wrong" in lines["SVHN"] and "expected 99 images, found 5" in lines["SVHN"]
    assert "missing" in lines["PCAM"] and "camelyonpatch_level_2_split_test_x.h5" in lines["PCAM"]
    assert "ok" in lines["Cars"]
    assert "2/4 tasks ready" in lines["2/4"]
    assert check_main(["--data", str(root), "--tasks", "MNIST,DTD"]) == 0


def test_task_lists():
    assert len(TA8) == 8 and len(TALL14) == 14 and len(TALL20) == 20 and TALL20[:14] == TALL14
    assert all(t in SPECS_BY_NAME for t in TALL20)


def test_fer2013_csv_codes_are_scored_against_the_right_names(tmp_path, monkeypatch):
    """The CSV numbers emotions 0 Angry … 4 Sad, 5 Surprise, 6 Neutral; the class list is alphabetical."""
    rows = ["emotion,pixels,Usage"] + [f"{code},{' '.join(['7'] * 48 * 48)},PublicTest" for code in range(7)]
    (tmp_path / "fer2013").mkdir()
    (tmp_path / "fer2013" / "fer2013.csv").write_text("\n".join(rows) + "\n")
    sizes = tmp_path / "sizes.json"
    sizes.write_text(json.dumps({"FER2013": {"test": 7, "classes": 7}}))
    monkeypatch.setenv(FIXTURE_SIZES_ENV, str(sizes))
    data = get_task("FER2013", tmp_path)
    split = data.split("test", None)
    named = [data.classnames[split[i][1]] for i in range(len(split))]
    assert named == ["angry", "disgusted", "fearful", "happy", "sad", "surprised", "neutral"]


def test_check_decodes_every_image_and_names_the_bad_files_and_their_class(tree, tmp_path, monkeypatch, capsys):
    """A truncated JPEG, a text file named .jpg and an empty file pass a listing; decoding finds them."""
    root, _ = tree
    monkeypatch.setenv(FIXTURE_SIZES_ENV, str(root / "fixture_sizes.json"))
    shutil.copytree(root / "dtd", tmp_path / "dtd")
    files = sorted((tmp_path / "dtd" / "test").rglob("*.*"))
    truncated, text, empty = files[0], files[1], files[-1]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])
    text.write_text("not an image")
    empty.write_bytes(b"")
    assert check_main(["--data", str(tmp_path), "--tasks", "DTD", "--no-decode"]) == 0  # the listing is fine
    capsys.readouterr()
    assert check_main(["--data", str(tmp_path), "--tasks", "DTD"]) == 1
    out = capsys.readouterr().out
    assert "wrong" in out and "3 of " in out
    for bad in (truncated, text, empty):
        assert f"{bad} (class '{bad.parent.name}'): not a readable image" in out
    with pytest.raises(DatasetError, match=f"{empty}.*not a readable image"):
        get_task("DTD", tmp_path).split("test", None)[files.index(empty)]
