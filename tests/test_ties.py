import pytest
import torch

import src.merging.ties as ties
from tests.naive_merging import naive_ties, naive_ties_parts, unflatten
from src.merging import ties_merging, ties_selected_vectors
from src.merging.ties import kth_index, ties_thresholds


def _models(*task_vectors, key="w"):
    """θ₀ = 0 and θ_k = τ_k for one tensor, so every τ can be written by hand."""
    rows = [torch.tensor(t, dtype=torch.float32) for t in task_vectors]
    return {key: torch.zeros_like(rows[0])}, [{key: r} for r in rows]


def _kept(selected):
    return [i for i, v in enumerate(selected.tolist()) if v != 0]


# ---- trimming -------------------------------------------------------------------------------------------------

TAU = [0.1, -0.5, 0.5, 0.3, 0.0, 0.5, -0.2, 0.4, 0.05, 0.5]


def test_ties_at_the_threshold_are_all_kept():
    # d = 10, k = 20 %: rank 10 − int(2.0) = 8; sorted |τ| = 0 .05 .1 .2 .3 .4 .5 .5 .5 .5, so t = 0.5 and all four
    # entries equal to it stay (int(d·K) + 1 = 3 plus one tie).
    pre, fts = _models(TAU)
    assert ties_thresholds(pre, fts, k=20).tolist() == [0.5]
    assert _kept(ties_selected_vectors(pre, fts, k=20)[0]["w"]) == [1, 2, 5, 9]


@pytest.mark.parametrize("percent, fraction, kept", [(20, 0.2, [1, 2, 5, 9]), (50, 0.5, [1, 2, 3, 5, 7, 9]),
                                                      (40, 0.4, [1, 2, 5, 7, 9]), (30, 0.3, [1, 2, 5, 9])])
def test_k_as_percent_or_fraction(percent, fraction, kept):
    # k = 50 %: rank 5 → t = 0.3; k = 40 %: rank 6 → t = 0.4; k = 30 %: 10·0.3 = 3.0000000000000004, int → 3,
    # rank 7 → t = 0.5, the same set as 20 %.
    pre, fts = _models(TAU)
    for k in (percent, fraction):
        assert _kept(ties_selected_vectors(pre, fts, k=k)[0]["w"]) == kept
    assert torch.equal(ties_merging(pre, fts, k=percent, scaling_coef=0.3)["w"],
                       ties_merging(pre, fts, k=fraction, scaling_coef=0.3)["w"])


def test_k_index_matches_python_float_arithmetic():
    d = 113_448_705  # ViT-B/32 ImageEncoder incl. the text leftovers (docs/methods.md)
    assert kth_index(d, 20) == d - 22_689_741 == kth_index(d, 0.2)
    assert kth_index(10, 1.5) == 10  # 1.5 means 1.5 %: int(0.15) = 0 entries, only the largest and its ties


@pytest.mark.parametrize("k", [1, 100, -5, 101, "20"])
def test_k_without_a_threshold_is_refused(k):
    pre, fts = _models(TAU)
    with pytest.raises(ValueError, match="k="):
        ties_merging(pre, fts, k=k, scaling_coef=0.3)


def test_trimming_is_per_task_over_the_whole_model():
    # Task 1's threshold comes from both tensors together: its large "b" entries push "a" entirely below it.
    pre = {"a": torch.zeros(4), "b": torch.zeros(4)}
    fts = [{"a": torch.tensor([0.1, 0.2, 0.3, 0.4]), "b": torch.tensor([5.0, 6.0, 7.0, 8.0])},
           {"a": torch.tensor([4.0, 3.0, 2.0, 1.0]), "b": torch.tensor([0.1, 0.2, 0.3, 0.4])}]
    # d = 8, k = 50 %: rank 4; task 1: t = 0.4, keeps a[3] and all of b; task 2: t = 0.4, keeps all of a.
    selected = ties_selected_vectors(pre, fts, k=50)
    assert selected[0]["a"].tolist() == [0, 0, 0, pytest.approx(0.4)] and selected[0]["b"].tolist() == [5, 6, 7, 8]
    assert selected[1]["a"].tolist() == [4, 3, 2, 1] and selected[1]["b"].tolist() == [0, 0, 0, pytest.approx(0.4)]


# ---- sign election and the merge functions ---------------------------------------------------------------------

def test_sign_by_mass_and_three_merge_functions():
    # k = 90 % keeps everything here (rank 1: t = the smallest |τ| = 1).
    pre, fts = _models([1, 2, -3, 5, 1], [-2, 1, -1, 5, 1], [4, -1, 2, -6, 1])
    # Σ = [3, 2, -2, 4, 3] → γ = [+, +, −, +, +]
    # selected: task1 [1, 2, -3, 5, 1], task2 [0, 1, -1, 5, 1], task3 [4, 0, 0, 0, 1]
    expected = {"sum": [5, 3, -4, 10, 3], "mean": [2.5, 1.5, -2, 5, 1], "max": [4, 2, -3, 5, 1]}
    for merge_func, values in expected.items():
        merged = ties_merging(pre, fts, k=0.9, scaling_coef=1.0, merge_func=merge_func)
        assert merged["w"].tolist() == values, merge_func
    assert torch.equal(ties_merging(pre, fts, k=0.9, merge_func="dis-sum", scaling_coef=0.3)["w"],
                       ties_merging(pre, fts, k=0.9, merge_func="sum", scaling_coef=0.3)["w"])
    assert ties_merging(pre, fts, k=0.9, scaling_coef=0.5)["w"].tolist() == [2.5, 1.5, -2, 5, 1.5]


def test_unknown_merge_function_is_refused():
    pre, fts = _models(TAU)
    with pytest.raises(ValueError, match="merge_func='median'"):
        ties_merging(pre, fts, merge_func="median", k=20, scaling_coef=0.3)


def test_zero_sign_sum_takes_the_majority_sign():
    # Σ = [0, 3, -4, 10]: γ = [0, +, −, +], majority sign(+1 −1 +1) = + → entry 0 elects + and keeps task 1's 1.
    pre, fts = _models([1, 2, -3, 5], [-1, 1, -1, 5])
    assert ties_merging(pre, fts, k=0.9, scaling_coef=1.0)["w"].tolist() == [1, 3, -4, 10]
    assert ties_merging(pre, fts, k=0.9, scaling_coef=1.0, merge_func="max")["w"].tolist() == [1, 2, -3, 5]
    # Mostly negative elected signs: the cancelled entry elects − and keeps task 2's −1.
    pre, fts = _models([1, -2, -3, 5], [-1, -1, -1, 5])
    assert ties_merging(pre, fts, k=0.9, scaling_coef=1.0)["w"].tolist() == [-1, -3, -4, 10]
    assert [s["w"][0].item() for s in ties_selected_vectors(pre, fts, k=0.9)] == [0, -1]


def test_balanced_majority_keeps_zero_sign_and_selects_negatives_as_the_reference():
    # Σ = [0, 3, -4]: γ = [0, +, −], majority sign(0) = 0, so γ₀ stays 0; where(γ > 0, τ̂ > 0, τ̂ < 0) keeps −1.
    pre, fts = _models([1, 2, -3], [-1, 1, -1])
    assert ties_merging(pre, fts, k=0.9, scaling_coef=1.0)["w"].tolist() == [-1, 3, -4]
    assert ties_merging(pre, fts, k=0.9, scaling_coef=1.0, merge_func="max")["w"].tolist() == [0, 2, -3]


def test_all_zero_columns_stay_zero_whatever_the_fill():
    # k = 50 %: rank 2, t = 0 for both tasks; Σ = [0, 5, 0, -5], so the majority sign is 0 as well.
    pre, fts = _models([0, 2, 0, -1], [0, 3, 0, -4])
    for merge_func in ("sum", "max"):
        assert ties_merging(pre, fts, k=0.5, scaling_coef=1.0, merge_func=merge_func)["w"].tolist()[::2] == [0, 0]
    assert ties_merging(pre, fts, k=0.5, scaling_coef=1.0)["w"].tolist() == [0, 5, 0, -5]


# ---- keys ------------------------------------------------------------------------------------------------------

def test_integer_keys_untouched_and_not_counted():
    pre, fts = _models(TAU)
    pre["ids"] = torch.arange(1000)
    for i, ft in enumerate(fts):
        ft["ids"] = torch.arange(1000) + 7 * (i + 1)
    merged = ties_merging(pre, fts, k=20, scaling_coef=0.3)
    assert merged["ids"] is pre["ids"]
    assert ties_thresholds(pre, fts, k=20).tolist() == [0.5]  # as without the 1000 integer entries
    assert list(ties_selected_vectors(pre, fts, k=20)[0]) == ["w"]


def test_unchanged_tensors_count_as_zeros_and_keep_pretrained_values():
    pre = {"model.visual.w": torch.zeros(10), "model.token_embedding.weight": torch.full((10,), 3.0)}
    fts = [{"model.visual.w": torch.arange(1, 11) / 10, "model.token_embedding.weight": torch.full((10,), 3.0)}]
    merged = ties_merging(pre, fts, scaling_coef=1.0, k=20)
    assert torch.equal(merged["model.token_embedding.weight"], pre["model.token_embedding.weight"])
    assert merged["model.token_embedding.weight"] is not pre["model.token_embedding.weight"]
    # d = 20 with 10 zeros: rank 16 → t = 0.6, half of the vision entries survive (the reference's 20 % → 50 %).
    assert _kept(merged["model.visual.w"]) == [5, 6, 7, 8, 9]


def test_vision_only_k_takes_the_threshold_over_the_image_tower():
    pre = {"model.visual.w": torch.zeros(10), "model.token_embedding.weight": torch.full((10,), 3.0)}
    fts = [{"model.visual.w": torch.arange(1, 11) / 10, "model.token_embedding.weight": torch.full((10,), 3.0)}]
    # d = 10: rank 8 → t = 0.8, as 20 % of the image tower plus the threshold entry itself.
    assert ties_thresholds(pre, fts, k=20).tolist() == [pytest.approx(0.6)]
    assert ties_thresholds(pre, fts, vision_only_k=True, k=20).tolist() == [pytest.approx(0.8)]
    selected = ties_selected_vectors(pre, fts, vision_only_k=True, k=20)[0]
    assert _kept(selected["model.visual.w"]) == [7, 8, 9]


def test_vision_only_k_changes_nothing_on_a_hugging_face_vision_tower():
    """A CLIPVisionModel state dict is all image tower (no `model.visual.` prefix, no text padding): the flag keeps
    the same threshold and the same merge."""
    pre, fts = _models(TAU, key="encoder.layers.0.mlp.fc1.weight")
    assert ties_thresholds(pre, fts, k=20, vision_only_k=True).tolist() == [0.5]
    assert ties_thresholds(pre, fts, k=20).tolist() == [0.5]
    key = "encoder.layers.0.mlp.fc1.weight"
    assert torch.equal(ties_merging(pre, fts, k=20, scaling_coef=0.3, vision_only_k=True)[key],
                       ties_merging(pre, fts, k=20, scaling_coef=0.3)[key])


def test_mismatched_finetuned_is_refused():
    pre, fts = _models(TAU)
    with pytest.raises(ValueError, match="TIES-Merging: fine-tuned state dict: key 'w'"):
        ties_merging(pre, [{"w": torch.zeros(3)}], k=20, scaling_coef=0.3)
    with pytest.raises(ValueError, match="float32"):
        ties_merging({"w": pre["w"].double()}, [{"w": fts[0]["w"].double()}], k=20, scaling_coef=0.3)
    with pytest.raises(ValueError, match="at least one"):
        ties_merging(pre, [], k=20, scaling_coef=0.3)


# ---- exact threshold on awkward distributions -------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mostly_zero", "subnormal", "wide_range", "ties", "constant"])
def test_threshold_equals_kthvalue(kind):
    g = torch.Generator().manual_seed(1)
    n = 5000
    tau = {
        "mostly_zero": torch.where(torch.rand(n, generator=g) < 0.9, 0.0, torch.randn(n, generator=g)),
        "subnormal": torch.randn(n, generator=g) * 1e-41,
        "wide_range": torch.randn(n, generator=g) * torch.logspace(-30, 30, n)[torch.randperm(n, generator=g)],
        "ties": torch.randint(-3, 4, (n,), generator=g) / 8,
        "constant": torch.full((n,), -0.25),
    }[kind]
    pre = {"w": torch.zeros(n)}
    fts = [{"w": tau}, {"w": -tau.flip(0) * 3}]
    for k in (20, 0.05, 0.999):
        expected = torch.stack([tau, -tau.flip(0) * 3]).abs().kthvalue(kth_index(n, k), dim=1).values
        assert torch.equal(ties_thresholds(pre, fts, k=k), expected), (kind, k)


# ---- streaming against the literal K×d formulation ---------------------------------------------------------------

@pytest.mark.parametrize("chunk", [ties._CHUNK, 999])
@pytest.mark.parametrize("merge_func", ["sum", "mean", "max"])
def test_streaming_equals_naive(vit_models, monkeypatch, chunk, merge_func):
    monkeypatch.setattr(ties, "_CHUNK", chunk)
    pre, fts = vit_models
    merged = ties_merging(pre, fts, merge_func=merge_func, k=20, scaling_coef=0.3)
    expected = naive_ties(pre, fts, merge_func=merge_func)
    assert list(merged) == list(pre)
    for key in pre:
        assert (merged[key] - expected[key]).abs().max() <= 1e-6, key


def test_streaming_kept_set_and_selection_equal_naive(vit_models):
    pre, fts = vit_models
    kth, trimmed, gamma, selected, keys = naive_ties_parts(pre, fts)
    assert torch.equal(ties_thresholds(pre, fts, k=20), kth.squeeze(1))
    assert (gamma == 0).sum() == 0 and (trimmed[:, (trimmed.sum(0) == 0)] != 0).any()  # the fill did happen
    streamed = ties_selected_vectors(pre, fts, k=20)
    for task, out in enumerate(streamed):
        assert list(out) == [k for k, v in pre.items() if v.is_floating_point()]
        naive = unflatten(selected[task], pre, keys)
        assert all(torch.equal(out[key], naive[key]) for key in out), task


def test_vision_only_streaming_equals_naive(vit_models):
    pre, fts = vit_models
    vision = [k for k in pre if k.startswith("model.visual.")]
    kth, *_ = naive_ties_parts(pre, fts, threshold_keys=vision)
    assert torch.equal(ties_thresholds(pre, fts, vision_only_k=True, k=20), kth.squeeze(1))
    assert not torch.equal(ties_thresholds(pre, fts, k=20), kth.squeeze(1))
    merged = ties_merging(pre, fts, vision_only_k=True, k=20, scaling_coef=0.3)
    expected = naive_ties(pre, fts, threshold_keys=vision)
    assert all((merged[key] - expected[key]).abs().max() <= 1e-6 for key in pre)
