import json
import math
import struct

import pytest
import torch

from tests.naive_merging import naive_emr, naive_emr_task_state_dict
from src.checkpoints import CheckpointError
from src.merge_files import load_emr, save_emr
from src.merging import emr_merging


def _models(task_vectors: dict[str, list[list[float]]]):
    """θ₀ = 0 and θ_k = τ_k per key, so every τ can be written by hand."""
    keys = list(task_vectors)
    num_tasks = len(task_vectors[keys[0]])
    pre = {key: torch.zeros(len(rows[0])) for key, rows in task_vectors.items()}
    fts = [{key: torch.tensor(task_vectors[key][k], dtype=torch.float32) for key in keys} for k in range(num_tasks)]
    return pre, fts


# Entry 1 sums to 0 (mean 0 → γ = −1, so task 0's −2 is the agreeing one); entry 2 is zero in every task (no task
# agrees, magnitude 0); entry 3 has a negative mean. "z" is an all-zero tensor (no task changed it).
HAND = {"w": [[1, -2, 0, 3],
              [2, 1, 0, -3],
              [-1, 1, 0, -0.5]],
        "z": [[0, 0, 0], [0, 0, 0], [0, 0, 0]]}


def test_masks_magnitudes_and_unified_vector_by_hand():
    pre, fts = _models(HAND)
    emr = emr_merging(pre, fts)
    # γ = [+1, −1, −1, −1]; agreeing magnitudes: max(1, 2), 2 (task 0 only), none, max(3, 0.5).
    assert emr.unified["w"].tolist() == [2, -2, 0, -3]
    assert "z" not in emr.unified
    assert emr.mask(0, "w").tolist() == [True, True, False, False]
    assert emr.mask(1, "w").tolist() == [True, False, False, True]
    assert emr.mask(2, "w").tolist() == [False, False, False, True]
    assert all(emr.mask(k, "z").tolist() == [False] * 3 for k in range(3))


def test_rescalers_and_task_weights_by_hand():
    pre, fts = _models(HAND)
    emr = emr_merging(pre, fts)
    # r_k = Σ_n mean|τ_k^n| / Σ_n mean|M_k^n ⊙ τ_uni^n|; "z" adds 0 to both sums.
    # task 0: (6/4) / (4/4); task 1: (6/4) / (5/4); task 2: (2.5/4) / (3/4).
    assert torch.allclose(emr.rescalers, torch.tensor([1.5, 1.2, 2.5 / 3]), rtol=0, atol=1e-6)
    expected = [[3, -3, 0, 0], [2.4, 0, 0, -3.6], [0, 0, 0, -2.5]]
    for task, weights in enumerate(expected):
        out = emr.task_state_dict(task)
        assert torch.allclose(out["w"], torch.tensor(weights, dtype=torch.float32), rtol=0, atol=1e-6), task
        assert out["z"].tolist() == [0, 0, 0]


SIZES = {"a": [[4], [2]],
         "b": [[1, 1, 0], [-3, 1, 0]]}


def test_rescaler_is_a_sum_of_per_tensor_means_and_the_global_flag_a_ratio_of_norms():
    # γ_a = +1, τ_uni,a = [4]; γ_b = [−1, +1, −1], τ_uni,b = [−3, 1, 0]; M_0,b = [F, T, F], M_1,b = [T, T, F].
    pre, fts = _models(SIZES)
    per_tensor = emr_merging(pre, fts).rescalers
    # task 0: (4 + 2/3) / (4 + 1/3) = 14/13; task 1: (2 + 4/3) / (4 + 4/3) = 10/16.
    assert torch.allclose(per_tensor, torch.tensor([14 / 13, 10 / 16]), rtol=0, atol=1e-6)
    # task 0: (4 + 2) / (4 + 1); task 1: (2 + 4) / (4 + 4).
    whole_model = emr_merging(pre, fts, global_rescaler=True).rescalers
    assert torch.allclose(whole_model, torch.tensor([1.2, 0.75]), rtol=0, atol=1e-6)


def test_unified_only_ablation_gives_every_task_the_unified_vector():
    pre, fts = _models(HAND)
    emr = emr_merging(pre, fts, unified_only=True)
    assert emr.unified_only and emr.rescalers is None
    for task in range(3):
        assert emr.task_state_dict(task)["w"].tolist() == [2, -2, 0, -3]
    with pytest.raises(ValueError, match="unified-only"):
        emr.mask(0, "w")


def test_a_task_that_agrees_nowhere_is_refused():
    pre, fts = _models({"w": [[1, 2], [0, 0]]})
    with pytest.raises(ValueError, match=r"task\(s\) \[1\]"):
        emr_merging(pre, fts)


def test_equals_the_reference_formulation(vit_models):
    pre, fts = vit_models
    emr = emr_merging(pre, fts)
    unified, masks, rescalers = naive_emr(pre, fts)
    assert torch.allclose(emr.rescalers, rescalers, rtol=1e-6, atol=0)
    for key in emr.shapes:
        assert torch.equal(emr.unified.get(key, torch.zeros(emr.shapes[key])), unified[key].float()), key
        for task in range(len(fts)):
            assert torch.equal(emr.mask(task, key), masks[key][task]), (key, task)
    # The exactly cancelling stretch elects −1: task 1 (the −δ side) agrees there wherever δ > 0.
    stretch = emr.mask(1, "model.visual.big")[100:400]
    assert stretch.any() and not emr.mask(2, "model.visual.big")[100:400].any()
    for task in range(len(fts)):
        ours = emr.task_state_dict(task)
        theirs = naive_emr_task_state_dict(pre, unified, masks, rescalers, task)
        assert all((ours[key] - theirs[key]).abs().max() <= 1e-6 for key in pre), task


def test_save_load_rebuilds_every_task_exactly_and_switching_does_not_drift(vit_models, tmp_path):
    pre, fts = vit_models
    emr = emr_merging(pre, fts)
    save_emr(emr, tmp_path / "emr.safetensors")
    loaded = load_emr(tmp_path / "emr.safetensors", pretrained=pre)
    assert torch.equal(loaded.rescalers, emr.rescalers)
    first = loaded.task_state_dict(0)
    for task in [0, 3, 1, 4, 2, 0]:
        expected = emr.task_state_dict(task)
        got = loaded.task_state_dict(task)
        assert list(got) == list(pre)
        assert all(torch.equal(got[key], expected[key]) for key in pre), task
    assert all(torch.equal(first[key], loaded.task_state_dict(0)[key]) for key in pre)


def test_file_is_the_unified_vector_plus_one_bit_per_entry_per_task(vit_models, tmp_path):
    pre, fts = vit_models
    emr = emr_merging(pre, fts)
    path = tmp_path / "emr.safetensors"
    save_emr(emr, path)
    d = sum(v.numel() for v in pre.values() if v.is_floating_point())
    unified_bytes = sum(v.numel() * 4 for v in emr.unified.values())
    assert unified_bytes < 4 * d  # the never-changed text-side tensors are not stored
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + header_len])
    assert header["masks"]["shape"] == [len(fts), math.ceil(d / 8)] and header["masks"]["dtype"] == "U8"
    assert len(raw) == 8 + header_len + unified_bytes + len(fts) * math.ceil(d / 8) + 4 * len(fts)


def test_unified_only_file_has_no_masks(tmp_path):
    pre, fts = _models(HAND)
    save_emr(emr_merging(pre, fts, unified_only=True), tmp_path / "u.safetensors")
    loaded = load_emr(tmp_path / "u.safetensors", pretrained=pre)
    assert loaded.unified_only and loaded.task_state_dict(2)["w"].tolist() == [2, -2, 0, -3]


def test_bad_files_and_calls_get_clear_errors(tmp_path):
    pre, fts = _models(HAND)
    emr = emr_merging(pre, fts)
    with pytest.raises(IndexError, match="task 3 out of range"):
        emr.task_state_dict(3)
    path = tmp_path / "emr.safetensors"
    save_emr(emr, path)
    with pytest.raises(ValueError, match="needs θ₀"):
        load_emr(path).task_state_dict(0)
    with pytest.raises(ValueError, match="'w' has shape"):
        load_emr(path, pretrained={"w": torch.zeros(5), "z": torch.zeros(3)})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="emr.safetensors"):
        load_emr(path)
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not an EMR-Merging file"):
        load_emr(tmp_path / "other.safetensors")
