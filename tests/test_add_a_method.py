"""The README's "Adding a method" recipes, run as written on two demo tasks: a one-shot merge and its script, a
test-time-adapted method and its script, and a continual method registered for `main_opcm.py`.

Each ```python block of that README section starts with `# <path>`; it is executed as the module that path names,
so the recipe a reader copies is the code these tests check."""
import re
import sys
import types

import pandas as pd
import pytest
import torch

import main_opcm
from src.cli import parse_args
from src.files import REPO
from src.merging import continual as continual_lib
from src.merging import task_arithmetic
from src.merging.adamerging import entropy_loss
from src.protocols import BatchSampler
from src.run import open_suite
from tests.fixtures.runs import run_folder

TWO = ["--demo", "--tasks", "Colors,Scenes"]


def _recipes() -> dict[str, str]:
    section = (REPO / "README.md").read_text().split("\n## Adding a method\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"```python\n# (\S+)\n(.*?)```", section, re.S))


@pytest.fixture
def recipe(monkeypatch):
    """The recipes as importable modules (`src.merging.weight_average`, `main_weight_average`, …)."""
    modules = {}
    for path, code in sorted(_recipes().items(), key=lambda item: not item[0].startswith("src/")):
        name = path.removesuffix(".py").replace("/", ".")
        module = types.ModuleType(name)
        module.__file__ = str(REPO / path)
        monkeypatch.setitem(sys.modules, name, module)
        exec(compile(code, str(REPO / path), "exec"), module.__dict__)
        modules[name] = module
    return modules


def test_the_readme_has_the_three_recipes():
    assert set(_recipes()) == {"src/merging/weight_average.py", "main_weight_average.py",
                               "src/merging/shared_lambda.py", "main_shared_lambda.py",
                               "src/merging/latest_model.py"}


def test_the_one_shot_recipe_equals_continual_weight_averaging_after_the_same_models(recipe, tmp_path):
    out = recipe["main_weight_average"].main(TWO + ["--results", str(tmp_path)])
    ours = pd.read_csv(out / "weight_average.csv").set_index("task").accuracy.drop("avg")
    main_opcm.main(TWO + ["--results", str(tmp_path), "--method", "continual_avg", "--num-orders", "1"])
    steps = pd.read_csv(run_folder(tmp_path, "opcm") / "opcm_steps.csv")
    # (θ_a + θ_b)/2 whichever model came first: the same tensors, so the same accuracies, by another code path.
    theirs = steps[steps.step == 2].set_index("task").accuracy.round(4)  # the reports' tables keep 4 decimals
    assert theirs.sort_index().equals(ours.sort_index())
    with pytest.raises(ValueError, match="weight averaging: fine-tuned state dict 1: key 'w' is missing"):
        recipe["src.merging.weight_average"].weight_average({"w": torch.zeros(2)}, [{"w": torch.ones(2)}, {}])


def test_the_adapted_recipe_takes_one_adam_step_of_lr_against_the_entropy_gradient(recipe, tmp_path):
    out = recipe["main_shared_lambda"].main(TWO + ["--results", str(tmp_path), "--steps", "1"])
    history = pd.read_csv(out / "shared_lambda_history.csv")
    assert history.step.tolist() == [0, 1] and history.loss.notna().tolist() == [False, True]
    learned = pd.read_json(out / "shared_lambda.json", typ="series")["shared_lambda"]

    # The first Adam step moves λ by lr against the sign of dL/dλ, here by a finite difference on the same batches.
    suite = open_suite(parse_args("", {}, TWO))
    pretrained, finetuned = suite.pretrained, suite.all_finetuned()
    test_sets = [suite.test_set(t) for t in suite.tasks]
    first_draw = BatchSampler([len(d) for d in test_sets], 16, 1, "fresh", 0).draw()
    encoder = suite.new_encoder()

    def loss(lam: float) -> float:
        encoder.load_merged(task_arithmetic(pretrained, finetuned, scaling_coef=lam))
        with torch.no_grad():
            return sum(float(entropy_loss(suite.head(task)(encoder(torch.stack([test_sets[i][int(j)][0]
                                                                                for j in first_draw[i][0]])))))
                       for i, task in enumerate(suite.tasks))
    slope = loss(0.3 + 1e-2) - loss(0.3 - 1e-2)
    assert abs(slope) > 1e-4
    assert learned == pytest.approx(0.3 - 1e-2 * (1 if slope > 0 else -1), abs=1e-6)


def test_a_registered_continual_recipe_runs_in_main_opcm(recipe, tmp_path, monkeypatch):
    latest = recipe["src.merging.latest_model"].LatestModel
    monkeypatch.setattr(main_opcm, "CONTINUAL_METHODS", (*main_opcm.CONTINUAL_METHODS, "latest_model"))
    monkeypatch.setitem(continual_lib.CONTINUAL_MERGERS, "latest_model", latest)
    out = main_opcm.main(TWO + ["--results", str(tmp_path), "--method", "latest_model", "--num-orders", "2"])
    steps = pd.read_csv(out / "opcm_steps.csv")
    individual = pd.Series(open_suite(parse_args("", {}, TWO)).individual_accuracies())
    # After step t the merge is θ_t itself: on the task just added it scores that task's individual accuracy.
    newest = steps[steps.task == steps.order_tasks.str.split("|").combine(steps.step, lambda o, s: o[s - 1])]
    assert len(newest) == 2 * 2 and all(newest.accuracy.to_numpy() == individual[newest.task].to_numpy())
    assert pd.read_csv(out / "opcm_summary.csv").method.tolist() == ["latest_model"]
