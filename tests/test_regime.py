"""The regime numbers (src/demo/regime.py): by hand on small cases, and the committed record of the demo's."""
import json
import math

import pytest
import torch

from src.demo import regime


def test_head_cosines_by_hand():
    s = 1 / math.sqrt(2)
    mean, largest = regime.head_cosines(torch.tensor([[1.0, 0.0], [0.0, 2.0], [3 * s, 3 * s]]))
    assert mean == pytest.approx((0 + s + s) / 3) and largest == pytest.approx(s)


def test_regime_by_hand_on_the_image_tower_only():
    pre = {"model.visual.w": torch.tensor([3.0, 4.0]), "model.logit_scale": torch.tensor(math.log(100.0)),
           "model.token_embedding.weight": torch.ones(2)}
    fts = {"a": {**pre, "model.visual.w": torch.tensor([3.3, 4.4])},
           "b": {**pre, "model.visual.w": torch.tensor([3.4, 3.7]), "model.token_embedding.weight": torch.zeros(2)}}
    heads = {"a": torch.tensor([[1.0, 0.0], [1.0, 0.0]]), "b": torch.tensor([[1.0, 0.0], [-1.0, 0.0]])}
    numbers = regime.regime(pre, fts, heads)
    assert numbers["logit_scale_exp"] == pytest.approx(100.0)
    assert numbers["tasks"]["a"] == {"head_cos_mean": 1.0, "head_cos_max": 1.0, "tau_rel_norm": 0.1}
    assert numbers["tasks"]["b"]["head_cos_mean"] == -1.0 and numbers["tasks"]["b"]["tau_rel_norm"] == 0.1
    assert numbers["tau_cos"] == {"a|b": 0.0}  # (0.3, 0.4)·(0.4, −0.3); the text-side change is not counted


def test_the_committed_demo_regime_is_what_the_committed_checkpoints_give():
    def flat(numbers, prefix=""):
        if isinstance(numbers, dict):
            return {k: v for key, value in numbers.items() for k, v in flat(value, f"{prefix}/{key}").items()}
        return {prefix: numbers}
    recorded, recomputed = flat(json.loads(regime.RECORD.read_text())), flat(regime.demo_regime())
    assert recorded.keys() == recomputed.keys()
    for key, value in recorded.items():  # one unit of the last recorded digit: another CPU may round the other way
        assert recomputed[key] == pytest.approx(value, abs=2e-4, rel=1e-4), key


def test_single_vectors_run_from_zero_shot_to_the_individual_model():
    from src.cli import parse_args
    from src.run import open_suite
    suite = open_suite(parse_args("", {}, ["--demo", "--tasks", "Colors,Counts"]))
    table = regime.single_vector_accuracies(suite, scales=(0.0, 1.0))
    assert table[0.0] == suite.zeroshot_accuracies()
    individual = suite.individual_accuracies()  # θ₀ + 1·(θ_k − θ₀) may round off θ_k in the last bit: one image
    assert table[1.0].keys() == individual.keys()
    assert all(abs(table[1.0][t] - individual[t]) <= 100 / 600 for t in individual)
