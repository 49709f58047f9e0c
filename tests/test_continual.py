import random

import pytest
import torch

from src.merging import ContinualTaskArithmetic, ContinualTIES, ContinualWeightAverage, task_arithmetic
from src.task_orders import order_seeds, shuffled, task_orders

TASKS = ["SUN397", "Cars", "RESISC45", "EuroSAT", "SVHN", "GTSRB", "MNIST", "DTD"]


def _models(num_tasks):
    g = torch.Generator().manual_seed(0)
    pre = {"w": torch.randn(5, 3, generator=g), "b": torch.randn(3, generator=g), "ids": torch.arange(4)}
    fts = [{"w": pre["w"] + torch.randn(5, 3, generator=g), "b": pre["b"] + torch.randn(3, generator=g),
            "ids": pre["ids"] + 7 * (t + 1)} for t in range(num_tasks)]
    return pre, fts


def test_continual_task_arithmetic_equals_batch_after_every_step():
    pre, fts = _models(5)
    merger = ContinualTaskArithmetic(pre, scaling_coef=0.3)
    assert all(torch.equal(merger.state_dict()[k], pre[k]) for k in pre)
    for t, ft in enumerate(fts, start=1):
        merger.add(ft)
        batch = task_arithmetic(pre, fts[:t], scaling_coef=0.3)
        for k in ("w", "b"):
            assert torch.allclose(merger.state_dict()[k], batch[k], atol=1e-6)
        assert torch.equal(merger.state_dict()["ids"], pre["ids"])


def test_continual_task_arithmetic_by_hand():
    pre = {"w": torch.tensor([1.0, 2.0])}
    merger = ContinualTaskArithmetic(pre, scaling_coef=0.5)
    merger.add({"w": torch.tensor([3.0, 2.0])})
    merger.add({"w": torch.tensor([1.0, 6.0])})
    assert merger.state_dict()["w"].tolist() == [2.0, 4.0]


def test_continual_weight_average_equals_plain_average_after_every_step():
    pre, fts = _models(6)
    merger = ContinualWeightAverage(pre)
    for t, ft in enumerate(fts, start=1):
        merger.add(ft)
        for k in ("w", "b"):
            assert torch.allclose(merger.state_dict()[k], torch.stack([f[k] for f in fts[:t]]).mean(0), atol=1e-6)
        assert torch.equal(merger.state_dict()["ids"], pre["ids"])


def test_continual_weight_average_by_hand():
    merger = ContinualWeightAverage({"w": torch.zeros(2)})
    for w in ([3.0, 0.0], [0.0, 3.0], [6.0, 9.0]):
        merger.add({"w": torch.tensor(w)})
    assert merger.state_dict()["w"].tolist() == [3.0, 4.0]


def test_weight_average_needs_a_model_and_inputs_are_checked():
    pre, fts = _models(1)
    with pytest.raises(RuntimeError, match="add"):
        ContinualWeightAverage(pre).state_dict()
    with pytest.raises(ValueError, match="continual Task Arithmetic: fine-tuned state dict: key 'b' is missing"):
        ContinualTaskArithmetic(pre, scaling_coef=0.3).add({"w": fts[0]["w"]})


# --- task orders --------------------------------------------------------------------------------------------------

def test_task_orders_are_reproducible_permutations():
    orders = task_orders(TASKS, 10, seed=0)
    assert orders == task_orders(TASKS, 10, seed=0)
    assert len(orders) == 10
    assert all(sorted(o) == sorted(TASKS) for o in orders)
    assert len({tuple(o) for o in orders}) == 10


def test_task_orders_differ_across_seeds_without_overlap():
    a, b = task_orders(TASKS, 10, seed=0), task_orders(TASKS, 10, seed=1)
    assert not {tuple(o) for o in a} & {tuple(o) for o in b}


def test_more_orders_extend_the_list():
    assert task_orders(TASKS, 3, seed=4) == task_orders(TASKS, 10, seed=4)[:3]


def test_each_order_is_what_the_reference_draws_with_its_seed():
    state = random.getstate()
    try:
        for s, order in zip(order_seeds(4, seed=2), task_orders(TASKS, 4, seed=2)):
            names = list(TASKS)
            random.seed(s)  # what L.seed_everything(s) does to Python's RNG before the reference shuffles
            random.shuffle(names)
            assert order == names
            assert 0 <= s < 2 ** 32
    finally:
        random.setstate(state)
    assert shuffled(TASKS, 0) != TASKS


def test_bad_task_order_arguments():
    with pytest.raises(ValueError, match="num_orders"):
        task_orders(TASKS, 0, seed=0)
    with pytest.raises(ValueError, match="duplicates"):
        task_orders(["a", "a"], 2, seed=0)


def _literal_ties_sum(rows: torch.Tensor, k: float) -> torch.Tensor:
    """TIES on a [2, d] matrix exactly as the reference writes it: keep |x| >= the kth smallest per row, elect the
    sign of the column sums (zero -> the sign of the total), sum the entries that agree."""
    d = rows.shape[1]
    kth = d - int(d * k / 100)
    thresholds = rows.abs().kthvalue(kth, dim=1, keepdim=True).values
    trimmed = rows * (rows.abs() >= thresholds)
    sign = torch.sign(trimmed.sum(0))
    sign[sign == 0] = torch.sign(sign.sum())
    agree = torch.where(sign > 0, trimmed > 0, trimmed < 0)
    return (trimmed * agree).sum(0)


def test_continual_ties_adds_ties_of_the_merged_delta_and_the_new_vector():
    g = torch.Generator().manual_seed(7)
    pretrained = {"w": torch.randn(6, 5, generator=g), "b": torch.randn(5, generator=g),
                  "ids": torch.arange(3)}
    models = [{"w": pretrained["w"] + torch.randn(6, 5, generator=g),
               "b": pretrained["b"] + torch.randn(5, generator=g), "ids": torch.arange(3)} for _ in range(3)]

    def flat(sd):
        return torch.cat([(sd["w"] - pretrained["w"]).reshape(-1), sd["b"] - pretrained["b"]])

    merge = ContinualTIES(pretrained, k=20, scaling_coef=0.3)
    merge.add(models[0])
    expected = {k: pretrained[k] + 0.3 * (models[0][k] - pretrained[k]) for k in ("w", "b")}
    for key in expected:
        torch.testing.assert_close(merge.state_dict()[key], expected[key], rtol=0, atol=1e-6)
    for model in models[1:]:
        merged_vector = _literal_ties_sum(torch.stack([flat(expected), flat(model)]), 20)
        expected = {"w": expected["w"] + 0.3 * merged_vector[:30].view(6, 5),
                    "b": expected["b"] + 0.3 * merged_vector[30:]}
        merge.add(model)
        for key in expected:
            torch.testing.assert_close(merge.state_dict()[key], expected[key], rtol=0, atol=1e-6)
    assert torch.equal(merge.state_dict()["ids"], torch.arange(3))
