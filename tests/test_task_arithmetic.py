import pytest
import torch

from src.merging import task_arithmetic
from src.task_vectors import apply, task_vector


def _state_dicts():
    g = torch.Generator().manual_seed(0)
    pre = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g),
           "ids": torch.arange(5), "flags": torch.tensor([1, 0], dtype=torch.uint8)}
    fts = []
    for i in range(3):
        ft = {k: v.clone() for k, v in pre.items()}
        ft["w"] += torch.randn(4, 3, generator=g)
        ft["b"] += torch.randn(3, generator=g)
        ft["ids"] = ft["ids"] + 100 * (i + 1)  # integer keys never merge, whatever the fine-tuned files hold
        fts.append(ft)
    return pre, fts


def test_equals_theta0_plus_lambda_sum_of_task_vectors():
    pre, fts = _state_dicts()
    merged = task_arithmetic(pre, fts, scaling_coef=0.3)
    for k in ("w", "b"):
        tau = [ft[k] - pre[k] for ft in fts]
        expected = pre[k] + 0.3 * ((tau[0] + tau[1]) + tau[2])
        assert torch.equal(merged[k], expected)


def test_element_by_hand():
    pre = {"w": torch.tensor([1.0, 2.0])}
    fts = [{"w": torch.tensor([2.0, 2.0])}, {"w": torch.tensor([1.0, 0.0])}]
    merged = task_arithmetic(pre, fts, scaling_coef=0.5)
    assert merged["w"].tolist() == [1.5, 1.0]


def test_integer_keys_keep_pretrained_value():
    pre, fts = _state_dicts()
    merged = task_arithmetic(pre, fts, scaling_coef=0.3)
    assert torch.equal(merged["ids"], pre["ids"])
    assert torch.equal(merged["flags"], pre["flags"])
    assert set(task_vector(pre, fts[0])) == {"w", "b"}


def test_single_task_with_lambda_one_returns_finetuned():
    pre, fts = _state_dicts()
    merged = task_arithmetic(pre, fts[:1], scaling_coef=1.0)
    assert torch.allclose(merged["w"], fts[0]["w"], atol=1e-6)


def test_apply_keeps_keys_missing_from_vector():
    pre, fts = _state_dicts()
    out = apply(pre, {"w": torch.ones(4, 3)}, 2.0)
    assert torch.equal(out["w"], pre["w"] + 2.0)
    assert torch.equal(out["b"], pre["b"])


def test_mismatched_or_missing_inputs_are_refused_naming_the_key():
    pre, fts = _state_dicts()
    with pytest.raises(ValueError, match="Task Arithmetic: fine-tuned state dict 1: key 'w' is torch.float32 \\(3,\\)"):
        task_arithmetic(pre, [fts[0], {**fts[1], "w": torch.zeros(3)}], scaling_coef=0.3)
    with pytest.raises(ValueError, match="Task Arithmetic needs at least one fine-tuned state dict"):
        task_arithmetic(pre, [], scaling_coef=0.3)
