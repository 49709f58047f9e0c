import copy
import csv
import math

import pytest
import torch

from main_layer_wise_adamergingpp import ADAPT_BATCH_SIZE, BATCHES_PER_TASK
from src.merging import AdaMerging, layer_wise_merge, task_arithmetic, ties_merging, ties_selected_vectors
from src.merge_files import load_coefficients, save_coefficients
from src.merging.adamerging import BatchStream, entropy_loss, seeded_batches, softmax_entropy
from src.modeling import ClassificationHead, ImageEncoder
from src.task_vectors import task_vector, vector_keys
from tests.naive_merging import naive_merged_module

K = 3
N_IMAGES = 40
REFERENCE = {"granularity": "layer", "init": 0.3, "lr": 1e-3}  # the reference's layer-wise run


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The demo tensors are tiny: on the shared 2-core machine two OpenMP threads made these tests ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def demo():
    """A random demo encoder, K fine-tuned models, zero-shot-like heads (×100, normalised) and test images."""
    torch.manual_seed(0)
    encoder = ImageEncoder("demo")
    g = torch.Generator().manual_seed(1)
    pre = {k: v.clone() for k, v in encoder.state_dict().items()}
    # Text-side leftovers get non-zero deltas too: their coefficients must stay untouched even so.
    fts = [{k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in pre.items()} for _ in range(K)]
    tvs = [task_vector(pre, ft) for ft in fts]
    heads = []
    for _ in range(K):
        w = torch.randn(5, 64, generator=g)
        heads.append(ClassificationHead(True, 100 * w / w.norm(dim=1, keepdim=True)))
    images = torch.randn(N_IMAGES, 3, 32, 32, generator=g)
    return dict(encoder=encoder, pre=pre, fts=fts, tvs=tvs, heads=heads, images=images)


def _trainer(demo, **kw):
    return AdaMerging(copy.deepcopy(demo["encoder"]), demo["pre"], demo["tvs"], copy.deepcopy(demo["heads"]),
                      **{**REFERENCE, **kw})


def _batches(demo, generator, num_batches=2, batch_size=16):
    return [[demo["images"][idx] for idx in seeded_batches(N_IMAGES, batch_size=batch_size, num_batches=num_batches,
                                                              generator=generator)]
            for _ in range(K)]


def _vision_rows(names):
    return [i for i, k in enumerate(names) if k.startswith("model.visual.")]


# ---------- the merge ----------

def test_merge_by_hand_with_clamp_and_integer_keys():
    pre = {"w": torch.tensor([1.0, 2.0]), "ids": torch.arange(3)}
    tvs = [{"w": torch.tensor([2.0, 2.0])}, {"w": torch.tensor([1.0, 0.0])}]
    coefficients = torch.tensor([[0.5, -1.0]])
    assert layer_wise_merge(pre, tvs, coefficients)["w"].tolist() == [2.0, 3.0]  # λ_2 = −1 clamped to 0
    assert layer_wise_merge(pre, tvs, coefficients, clamp=False)["w"].tolist() == [1.0, 3.0]
    assert layer_wise_merge(pre, tvs, torch.tensor([1.5, 0.5]))["w"].tolist() == [3.5, 4.0]  # task-wise: 1.5 → 1
    assert torch.equal(layer_wise_merge(pre, tvs, coefficients)["ids"], pre["ids"])


def test_all_coefficients_03_is_task_arithmetic(demo):
    pre, tvs = demo["pre"], demo["tvs"]
    merged = layer_wise_merge(pre, tvs, torch.full((len(vector_keys(pre)), K), 0.3))
    ta = task_arithmetic(pre, demo["fts"], scaling_coef=0.3)
    lam = torch.tensor(0.3)
    for k in pre:
        # The reference's own expression: Python sum over (θ₀·1, τ_1·λ_1, …) — bit for bit.
        assert torch.equal(merged[k], sum((pre[k] * torch.tensor(1.0), *(tv[k] * lam for tv in tvs))))
        # Task Arithmetic sums the τ before scaling, so the two agree to float32 rounding only.
        torch.testing.assert_close(merged[k], ta[k], rtol=1e-6, atol=1e-7)


def test_task_wise_vector_equals_repeated_rows(demo):
    pre, tvs = demo["pre"], demo["tvs"]
    lam = torch.tensor([0.1, 0.7, 0.4])
    a = layer_wise_merge(pre, tvs, lam)
    b = layer_wise_merge(pre, tvs, lam.repeat(len(vector_keys(pre)), 1))
    assert all(torch.equal(a[k], b[k]) for k in pre)


def test_merge_rejects_bad_shapes_and_missing_keys(demo):
    pre, tvs = demo["pre"], demo["tvs"]
    with pytest.raises(ValueError, match=rf"\[{len(vector_keys(pre))}, {K}\]"):
        layer_wise_merge(pre, tvs, torch.zeros(5, K))
    broken = dict(tvs[1])
    del broken["model.visual.proj"]
    with pytest.raises(ValueError, match="layer-wise merge: task vector 1: key 'model.visual.proj' is missing"):
        layer_wise_merge(pre, [tvs[0], broken], torch.zeros(2))


# ---------- the objective ----------

def test_entropy_by_hand():
    # Row 2: p = (3/4, 1/4, 0); the third logit is finite so that p·log p is 0·(−1e4) = 0, not 0·(−inf) = nan.
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(3.0), 0.0, -1e4]])
    h_uniform = math.log(3.0)
    h_skewed = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert softmax_entropy(logits).tolist() == pytest.approx([h_uniform, h_skewed], abs=1e-6)
    assert entropy_loss(logits).item() == pytest.approx((h_uniform + h_skewed) / 2, abs=1e-6)


def _naive_loss(demo, coefficients_raw, batches):
    """Reference-style objective: per batch, a fresh module with the merged tensors set as plain attributes
    (`naive_merged_module`), the entropy written out as −Σ p·log p, one summed loss."""
    lam = coefficients_raw.clamp(0, 1)
    total = 0.0
    for task, task_batches in enumerate(batches):
        for images in task_batches:
            logits = demo["heads"][task](naive_merged_module(demo["encoder"], demo["pre"], demo["tvs"], lam)(images))
            p = torch.exp(logits - logits.logsumexp(1, keepdim=True))
            total = total + (-(p * torch.log(p)).sum(1)).mean()
    return total


@pytest.mark.parametrize("granularity", ["layer", "task"])
def test_step_loss_and_gradient_match_naive_single_backward(demo, granularity):
    ada = _trainer(demo, granularity=granularity)
    with torch.no_grad():  # some coefficients start away from 0.3 so the comparison is not at a symmetric point
        ada.raw.add_(torch.rand(ada.raw.shape, generator=torch.Generator().manual_seed(3)) * 0.2)
    raw = ada.raw.detach().clone().requires_grad_()
    batches = _batches(demo, torch.Generator().manual_seed(0))
    loss = ada.step(batches)
    naive = _naive_loss(demo, raw, batches)
    naive.backward()
    assert loss == pytest.approx(naive.item(), rel=1e-5)
    torch.testing.assert_close(ada.raw.grad, raw.grad, rtol=1e-4, atol=1e-6)


def test_gradient_reaches_every_vision_coefficient_and_no_clamped_or_text_one(demo):
    ada = _trainer(demo)
    vision = _vision_rows(ada.tensor_names)
    low, high = (vision[0], 1), (vision[-1], 2)
    with torch.no_grad():
        ada.raw[low] = -0.5
        ada.raw[high] = 1.5
    ada.step(_batches(demo, torch.Generator().manual_seed(0)))
    grad = ada.raw.grad
    trainable = torch.zeros_like(grad, dtype=torch.bool)
    trainable[vision] = True
    trainable[low] = trainable[high] = False
    assert (grad[trainable] != 0).all(), "a trainable vision coefficient got no gradient"
    assert grad[low] == 0 and grad[high] == 0
    text = [i for i in range(len(ada.tensor_names)) if i not in vision]
    assert [ada.tensor_names[i] for i in text] == [
        "model.positional_embedding", "model.text_projection", "model.logit_scale",
        "model.token_embedding.weight", "model.ln_final.weight", "model.ln_final.bias"]
    assert (grad[text] == 0).all()


def test_first_step_is_adam_lr_1e3(demo):
    ada = _trainer(demo)
    ada.step(_batches(demo, torch.Generator().manual_seed(0)))
    g = ada.raw.grad
    # Adam's first update is lr·m̂/(√v̂+ε) = lr·g/(|g|+ε) after bias correction; text rows (g = 0) stay at 0.3.
    torch.testing.assert_close(ada.raw.detach(), torch.full_like(g, 0.3) - 1e-3 * g / (g.abs() + 1e-8),
                               rtol=0, atol=1e-7)
    assert (ada.coefficients()[g == 0] == torch.tensor(0.3)).all()


def test_two_batches_per_task_are_used(demo):
    calls = []

    def counting(task, head):
        def forward(features):
            calls.append((task, features.shape[0]))
            return head(features)
        return forward

    ada = AdaMerging(copy.deepcopy(demo["encoder"]), demo["pre"], demo["tvs"],
                     [counting(k, h) for k, h in enumerate(copy.deepcopy(demo["heads"]))], **REFERENCE)
    images = demo["images"]
    ada.step([[images[:16], images[16:23]] for _ in range(K)])  # batch sizes 16 then 7 tell the two apart
    assert calls == [(k, n) for k in range(K) for n in (16, 7)]
    # The script's defaults are the reference's 2 × 16.
    default = seeded_batches(N_IMAGES, batch_size=ADAPT_BATCH_SIZE, num_batches=BATCHES_PER_TASK,
                             generator=torch.Generator().manual_seed(0))
    assert [len(b) for b in default] == [16, 16] and len(torch.cat(default).unique()) == 32


def test_seeded_batches_reproducible_and_short_datasets():
    a = seeded_batches(100, batch_size=16, num_batches=2, generator=torch.Generator().manual_seed(5))
    b = seeded_batches(100, batch_size=16, num_batches=2, generator=torch.Generator().manual_seed(5))
    c = seeded_batches(100, batch_size=16, num_batches=2, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    short = seeded_batches(20, batch_size=16, num_batches=2, generator=torch.Generator().manual_seed(0))
    assert [len(x) for x in short] == [16, 4]
    with pytest.raises(ValueError, match="dataset_len=0"):
        seeded_batches(0, batch_size=16, num_batches=2)


def _train(demo, seed, steps=3, **kw):
    ada = _trainer(demo, **kw)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ada.step(_batches(demo, g, batch_size=8))
    return ada


def test_same_seed_same_coefficients(demo):
    a, b, c = _train(demo, 7), _train(demo, 7), _train(demo, 8)
    assert torch.equal(a.coefficients(), b.coefficients())
    assert not torch.equal(a.coefficients(), c.coefficients())


def test_task_wise_trainer(demo):
    layer, task = _trainer(demo), _trainer(demo, granularity="task")
    batches = _batches(demo, torch.Generator().manual_seed(0))
    layer.step(batches)
    task.step(batches)
    assert task.coefficients().shape == (K,)
    assert (task.raw.grad != 0).all()
    # With every tensor sharing λ_k, ∂L/∂λ_k is the sum over tensors of the layer-wise gradients at the same point.
    torch.testing.assert_close(task.raw.grad, layer.raw.grad.sum(0), rtol=1e-4, atol=1e-6)
    merged = task.merged_params()
    expected = layer_wise_merge(demo["pre"], demo["tvs"], task.coefficients())
    assert all(torch.equal(merged[k].detach(), expected[k]) for k in merged)


def test_merged_params_are_the_final_merge(demo):
    ada = _train(demo, 0, steps=2)
    merged = ada.merged_params()
    expected = layer_wise_merge(demo["pre"], demo["tvs"], ada.coefficients())
    assert set(merged) == {k for k in demo["pre"] if k.startswith("model.visual.")}
    assert all(torch.equal(merged[k].detach(), expected[k]) for k in merged)
    assert merged["model.visual.proj"].requires_grad


def test_compact_vector_dtype(demo):
    ada = _trainer(demo, vector_dtype=torch.bfloat16)
    with torch.no_grad():
        ada.raw.uniform_(0, 1, generator=torch.Generator().manual_seed(2))
    rounded = [{k: v.to(torch.bfloat16).float() for k, v in tv.items()} for tv in demo["tvs"]]
    merged = ada.merged_params()
    assert merged["model.visual.proj"].dtype == torch.float32
    expected = layer_wise_merge(demo["pre"], rounded, ada.coefficients())
    full = layer_wise_merge(demo["pre"], demo["tvs"], ada.coefficients())
    assert all(torch.equal(merged[k].detach(), expected[k]) for k in merged)
    assert not torch.equal(merged["model.visual.proj"].detach(), full["model.visual.proj"])


def test_save_load_coefficients_same_merge(demo, tmp_path):
    ada = _train(demo, 0, steps=2)
    tasks = ["a", "b", "c"]
    save_coefficients(ada.coefficients(), tmp_path / "c.pt", tmp_path / "c.csv", ada.tensor_names, tasks)
    loaded = load_coefficients(tmp_path / "c.pt", ada.tensor_names, tasks)
    assert torch.equal(loaded, ada.coefficients())
    a = layer_wise_merge(demo["pre"], demo["tvs"], loaded)
    b = layer_wise_merge(demo["pre"], demo["tvs"], ada.coefficients())
    assert all(torch.equal(a[k], b[k]) for k in demo["pre"])
    with open(tmp_path / "c.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["tensor", *tasks]
    assert [r[0] for r in rows[1:]] == ada.tensor_names
    assert torch.equal(torch.tensor([[float(x) for x in r[1:]] for r in rows[1:]]), ada.coefficients())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "c.pt"]  # no temporary file left


def test_save_load_task_wise_coefficients(demo, tmp_path):
    ada = _trainer(demo, granularity="task")
    with torch.no_grad():
        ada.raw.copy_(torch.tensor([0.25, 1.5, -0.1]))
    save_coefficients(ada.coefficients(), tmp_path / "t.pt", tmp_path / "t.csv", ada.tensor_names, ["a", "b", "c"])
    assert (tmp_path / "t.csv").read_text() == "tensor,a,b,c\n*,0.25,1.0,0.0\n"  # clamped, one row for all tensors
    loaded = load_coefficients(tmp_path / "t.pt", ada.tensor_names, ["a", "b", "c"])
    assert loaded.tolist() == [0.25, 1.0, 0.0]


def test_load_coefficients_checks_names(demo, tmp_path):
    ada = _trainer(demo)
    save_coefficients(ada.coefficients(), tmp_path / "c.pt", tmp_path / "c.csv", ada.tensor_names, ["a", "b", "c"])
    with pytest.raises(ValueError, match="learned for tasks"):
        load_coefficients(tmp_path / "c.pt", ada.tensor_names, ["a", "c", "b"])
    with pytest.raises(ValueError, match="expected 'x'"):
        load_coefficients(tmp_path / "c.pt", ["x"] + ada.tensor_names[1:], ["a", "b", "c"])
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt"):
        load_coefficients(tmp_path / "junk.pt")


def test_trainer_rejects_bad_input(demo):
    with pytest.raises(ValueError, match="granularity"):
        _trainer(demo, granularity="block")
    with pytest.raises(ValueError, match="one head per task"):
        AdaMerging(copy.deepcopy(demo["encoder"]), demo["pre"], demo["tvs"], demo["heads"][:2], **REFERENCE)
    ada = _trainer(demo)
    with pytest.raises(ValueError, match=f"each of the {K} tasks"):
        ada.step([[demo["images"][:4]]] * (K - 1))


# ---------- AdaMerging++: TIES-selected task vectors ----------

def test_plus_plus_at_init_is_ties_dis_sum(demo):
    pre = demo["pre"]
    selected = ties_selected_vectors(pre, demo["fts"], k=20)
    d = sum(pre[k].numel() for k in vector_keys(pre))
    nonzero = sum(int((tv[k] != 0).sum()) for tv in selected for k in tv) / (K * d)
    assert 0.1 < nonzero < 0.2  # trimmed to 20 % and sign-filtered: really sparse, so ++ differs from plain
    merged = layer_wise_merge(pre, selected, torch.full((len(vector_keys(pre)), K), 0.3))
    ties = ties_merging(pre, demo["fts"], k=20, scaling_coef=0.3, merge_func="dis-sum")
    for key in pre:
        # TIES sums the selected entries before scaling by λ, AdaMerging++ scales each: equal to float32 rounding.
        torch.testing.assert_close(merged[key], ties[key], rtol=1e-6, atol=1e-7)
    plain = _trainer(demo).merged_params()
    plus_plus = AdaMerging(copy.deepcopy(demo["encoder"]), pre, selected, copy.deepcopy(demo["heads"]),
                           **REFERENCE).merged_params()
    assert all(torch.equal(plus_plus[k].detach(), merged[k]) for k in plus_plus)
    assert not torch.equal(plus_plus["model.visual.proj"], plain["model.visual.proj"])


# ---------- FusionBench's settings, on a Hugging Face vision tower ----------

def test_entropy_with_fusionbench_epsilon_by_hand():
    logits = torch.tensor([[0.0, -20.0]], dtype=torch.float64)  # p₂ = 2.06e-9: ε = 1e-8 dominates log(p₂ + ε)
    p = [1 / (1 + math.exp(-20)), math.exp(-20) / (1 + math.exp(-20))]
    with_eps = -sum(q * math.log(q + 1e-8) for q in p)
    without = -sum(q * math.log(q) for q in p)
    assert softmax_entropy(logits, eps=1e-8).item() == pytest.approx(with_eps, rel=1e-9)
    assert softmax_entropy(logits).item() == pytest.approx(without, rel=1e-9)
    assert with_eps == pytest.approx(0.685 * without, rel=0.01)  # the two formulas really differ here


def test_batch_stream_covers_each_pass_once_and_reshuffles():
    stream = BatchStream(10, batch_size=4, generator=torch.Generator().manual_seed(0))
    passes = [[next(stream) for _ in range(3)] for _ in range(2)]
    for batches in passes:
        assert [len(b) for b in batches] == [4, 4, 2]  # the last batch of a pass is short, as drop_last=False
        assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert torch.cat(passes[0]).tolist() != torch.cat(passes[1]).tolist()
    again = BatchStream(10, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(next(again), b) for b in passes[0])


def _fusionbench_layer_wise(pretrained, finetuned, visual_projection, text, scale, batches, steps):
    """FusionBench's LayerWiseMergedModel loop, written out: weights (num_models, num_layers) in named_parameters
    order, unclamped; merged = θ₀ + Σ_k w_k·τ_k left to right; per task one batch, logits
    (text @ normalised projected pooler output ᵀ · scale)ᵀ, entropy with ε = 1e-8, backward per task (gradients
    accumulate), one Adam step."""
    from torch.func import functional_call
    names = [n for n, _ in pretrained.named_parameters()]
    base = dict(pretrained.named_parameters())
    vectors = [{n: dict(ft.named_parameters())[n].detach() - base[n].detach() for n in names} for ft in finetuned]
    weights = torch.nn.Parameter(torch.full((len(finetuned), len(names)), 0.3))
    optimizer = torch.optim.Adam([weights], lr=1e-3)
    for step in range(steps):
        merged = {n: base[n].detach() for n in names}
        for w, tv in zip(weights, vectors):
            for i, n in enumerate(names):
                merged[n] = merged[n] + tv[n] * w[i]
        for task, images in enumerate(batches[step]):
            embeds = visual_projection(functional_call(pretrained, merged, (images,))[1])
            embeds = embeds / embeds.norm(p=2, dim=-1, keepdim=True)
            logits = (torch.matmul(text[task], embeds.t()) * scale).t()
            probs = torch.softmax(logits, dim=-1)
            loss = -torch.sum(probs * torch.log(probs + 1e-8), dim=-1).mean()
            loss.backward(retain_graph=True)
        optimizer.step()
        optimizer.zero_grad()
    return weights.detach()


def test_layer_wise_on_a_clip_vision_model_follows_fusionbench():
    from src.hf_clip import VisionEncoder
    from tests.fixtures.huggingface import finetuned_model, pretrained_clip
    clip = pretrained_clip(seed=5)
    pretrained = finetuned_model(clip, seed=0, scale=0.0)
    finetuned = [finetuned_model(clip, seed=s, scale=0.03) for s in (1, 2)]
    g = torch.Generator().manual_seed(7)
    text = [torch.nn.functional.normalize(torch.randn(4, 64, generator=g), dim=-1) for _ in finetuned]
    scale = clip.logit_scale.exp().detach()
    batches = [[torch.randn(6, 3, 32, 32, generator=g) for _ in finetuned] for _ in range(3)]
    expected = _fusionbench_layer_wise(copy.deepcopy(pretrained), finetuned, clip.visual_projection, text, scale,
                                       batches, steps=3)

    encoder = VisionEncoder(clip.config.vision_config, clip.visual_projection.weight.detach())
    pre = pretrained.state_dict()
    tvs = [task_vector(pre, ft.state_dict()) for ft in finetuned]
    heads = [ClassificationHead(True, t * scale) for t in text]
    trainer = AdaMerging(encoder, pre, tvs, heads, **REFERENCE, clamp=False, entropy_eps=1e-8)
    for step in range(3):
        trainer.step([[b] for b in batches[step]])
    ours = trainer.coefficients()
    assert ours.shape == (len(pre), 2) and len(pre) == len(list(pretrained.parameters()))
    assert not torch.allclose(ours, torch.full_like(ours, 0.3))
    # A key bias adds q·b to every logit of a query's softmax: its true gradient is 0, and Adam turns the float
    # rounding left in it (~1e-12) into full-size steps, differently in any two implementations (FusionBench too).
    # Every other coefficient follows FusionBench's loop.
    rows = [i for i, name in enumerate(pre) if not name.endswith("k_proj.bias")]
    assert len(rows) == len(pre) - clip.config.vision_config.num_hidden_layers
    torch.testing.assert_close(ours.T[:, rows], expected[:, rows], rtol=0, atol=1e-6)


def test_a_step_with_non_finite_loss_stops_with_a_clear_error(demo):
    heads = [ClassificationHead(True, torch.full((5, 64), float("nan"))) for _ in range(K)]
    trainer = AdaMerging(copy.deepcopy(demo["encoder"]), demo["pre"], demo["tvs"], heads, **REFERENCE)
    before = trainer.coefficients().clone()
    with pytest.raises(FloatingPointError, match="entropy loss is nan"):
        trainer.step(_batches(demo, torch.Generator().manual_seed(0)))
    assert torch.equal(trainer.coefficients(), before)  # refused before the optimiser touched λ


def test_step_diagnostics_are_the_entropy_and_top_class_share_of_the_pre_step_merge(demo):
    ada = _trainer(demo)
    before = ada.coefficients()
    batches = _batches(demo, torch.Generator().manual_seed(0))
    ada.step(batches)
    encoder = copy.deepcopy(demo["encoder"])
    encoder.load_merged(layer_wise_merge(demo["pre"], demo["tvs"], before))
    for task in range(K):
        with torch.no_grad():
            logits = torch.cat([demo["heads"][task](encoder(images)) for images in batches[task]])
        p = torch.softmax(logits.double(), 1)
        entropy = float((-(p * torch.log(p)).sum(1)).mean())
        share = max(logits.argmax(1).tolist().count(c) for c in range(logits.shape[1])) / len(logits)
        assert ada.diagnostics()["entropy"][task] == pytest.approx(entropy, rel=1e-4)
        assert ada.diagnostics()["top_share"][task] == share


def test_task_vectors_in_a_compact_dtype_are_accepted_and_widened(demo):
    pre, tvs = demo["pre"], demo["tvs"]
    compact = [{k: v.to(torch.bfloat16) for k, v in tv.items()} for tv in tvs]
    lam = torch.full((K,), 0.3)
    merged = layer_wise_merge(pre, compact, lam)
    widened = layer_wise_merge(pre, [{k: v.float() for k, v in tv.items()} for tv in compact], lam)
    assert all(torch.equal(merged[k], widened[k]) and merged[k].dtype == pre[k].dtype for k in pre)
