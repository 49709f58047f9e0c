"""AdaMerging (Yang et al., ICLR 2024): merging coefficients learned by entropy minimisation on unlabeled test images.

Layer-wise: θ^l = θ₀^l + Σ_k clamp(λ_k^l, 0, 1)·τ_k^l, one coefficient λ_k^l per state-dict tensor l and task k
(docs/methods.md, "AdaMerging"). Task-wise: one λ_k per task, shared by every tensor. AdaMerging++ is the same with
the TIES-selected task vectors (trimmed, sign-elected, zero elsewhere) in place of τ_k: every function here
takes any list of task vectors, so ++ is a choice of input, not a separate code path.

Objective of one optimiser step, over the tasks k and the unlabeled test batches B_{k,b} of each task:
    L(λ) = Σ_k Σ_b mean_{x ∈ B_{k,b}} H(h_k(f(x; θ(λ)))),    H(z) = −Σ_c softmax(z)_c · log_softmax(z)_c
with f the merged image encoder and h_k task k's frozen zero-shot head; λ starts at 0.3 and is trained with
Adam(lr=1e-3, betas=(0.9, 0.999)). The reference takes 2 batches of 16 per task per step for 500 steps; the caller
chooses the batches (see `seeded_batches`).

Faithful to the reference [ADA] by default:
- `clamp=True`: the merge uses clamp(λ, 0, 1); the raw parameter is unconstrained and gets zero gradient wherever
  the clamp is active. `clamp=False` gives FusionBench's unclamped variant.
- `entropy_eps=0`: H(z) = −Σ_c softmax(z)_c · log_softmax(z)_c. FusionBench computes −Σ_c p_c · log(p_c + ε) with
  ε = 1e-8 (`entropy_eps=1e-8`).
- The merged tensor is accumulated as ((θ₀·1 + λ_1·τ_1) + λ_2·τ_2) + …, the reference's order. With every λ = 0.3 it
  therefore equals Task Arithmetic with λ = 0.3 (which sums the τ_k first, then scales) up to float32 rounding
  (≤ 1e-6), not bit for bit; the same holds for ++ against TIES (dis-sum, λ = 0.3).
- One coefficient row per floating-point state-dict tensor in state-dict order, the text-side leftovers
  (`model.token_embedding.weight`, …) included: they never reach the image forward, so their coefficients get zero
  gradient and keep their initial value, as in the reference's 158-row tables for ViT-B/32.
- The entropy has no epsilon. The heads are not merged: task k's logits always come from head k.

How it computes (same objective and update, different machinery):
- The merge runs once per step, with torch ops on the device the encoder lives on, and feeds the merged tensors to
  one `ImageEncoder` through `torch.func.functional_call`; the reference re-merges on the CPU for every batch and
  copies the result to the GPU.
- The gradient of the summed loss is taken batch by batch into the merged tensors, then pushed once through the
  merge to λ, so only one batch's activations are alive at a time and memory does not grow with the number of tasks
  beyond the task vectors. It equals the reference's single backward of the summed loss up to the float rounding
  of the accumulation order.
- Only the tensors the encoder's forward uses enter `functional_call` (`encoder.parameter_name`: the
  `model.visual.*` tensors of an open_clip encoder, every tensor of a Hugging Face vision tower).
- Everything random is seeded by the caller: the reference shuffles its test loaders without a seed.

Batches: the reference draws the first `batches_per_task` batches of a fresh shuffle of each test set at every step
(`seeded_batches`); FusionBench draws the next batch of an endless shuffled loader, reshuffled at each pass
(`BatchStream`). `src.options.FUSIONBENCH` holds FusionBench's settings (the reference's are the
defaults); on Hugging Face checkpoints FusionBench also learns one coefficient per q, k and v projection (199 rows on ViT-B/32), because its
tensors are separate there.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from torch.func import functional_call

from src.options import GRANULARITIES
from src.task_vectors import StateDict, check_finetuned


def softmax_entropy(logits: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Entropy per row of a [batch, classes] logit matrix: −Σ_c softmax(z)_c · log_softmax(z)_c when `eps` is 0
    (the reference), −Σ_c p_c · log(p_c + eps) otherwise (FusionBench, eps = 1e-8)."""
    if eps == 0.0:
        return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)
    probs = logits.softmax(1)
    return -(probs * torch.log(probs + eps)).sum(1)


def entropy_loss(logits: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Mean entropy over a batch: one batch's term of the AdaMerging objective."""
    return softmax_entropy(logits, eps).mean(0)


def seeded_batches(dataset_len: int, *, batch_size: int, num_batches: int,
                   generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The first `num_batches` index batches of one shuffled pass over a dataset of `dataset_len` items.

    This is what the reference draws per task and step from a fresh `shuffle=True` test loader (2 batches of 16), but
    reproducible: the permutation comes from `generator`. Like a DataLoader, a short dataset gives fewer batches.
    """
    if dataset_len <= 0 or batch_size <= 0 or num_batches <= 0:
        raise ValueError(f"seeded_batches needs positive sizes, got dataset_len={dataset_len}, "
                         f"batch_size={batch_size}, num_batches={num_batches}")
    order = torch.randperm(dataset_len, generator=generator)
    return list(order[:batch_size * num_batches].split(batch_size))


class BatchStream:
    """Index batches of an endless shuffled pass over a dataset, reshuffled at the start of every pass, the last batch
    of a pass possibly short: what `next(iter(loader))` of FusionBench's infinite `shuffle=True` test loader gives,
    seeded by `generator`."""

    def __init__(self, dataset_len: int, *, batch_size: int, generator: torch.Generator | None = None):
        if dataset_len <= 0 or batch_size <= 0:
            raise ValueError(f"BatchStream needs positive sizes, got dataset_len={dataset_len}, "
                             f"batch_size={batch_size}")
        self.dataset_len, self.batch_size, self.generator = dataset_len, batch_size, generator
        self._pending: list[torch.Tensor] = []

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if not self._pending:
            order = torch.randperm(self.dataset_len, generator=self.generator)
            self._pending = list(order.split(self.batch_size))[::-1]
        return self._pending.pop()

    def state_dict(self) -> dict:
        """The batches left in the current pass (the generator's state is its owner's to keep)."""
        return {"pending": [b.clone() for b in self._pending]}

    def load_state_dict(self, state: dict) -> None:
        self._pending = [torch.as_tensor(b) for b in state["pending"]]


def _merge(base: torch.Tensor, vectors: Sequence[torch.Tensor], lambdas: torch.Tensor) -> torch.Tensor:
    """θ₀·1 + λ_1·τ_1 + λ_2·τ_2 + … accumulated left to right, the reference's rounding order (§3.2).

    Vectors stored in a compact dtype are widened to θ₀'s dtype first: multiplying a bfloat16 tensor by a float32
    scalar would otherwise compute in bfloat16.
    """
    merged = base
    for tau, lam in zip(vectors, lambdas):
        merged = merged + lam * tau.to(base.dtype)
    return merged


def _coefficient_table(coefficients: torch.Tensor, num_tensors: int, num_tasks: int) -> torch.Tensor:
    """A [num_tensors, num_tasks] float32 table from a layer-wise table or a task-wise [num_tasks] vector."""
    c = torch.as_tensor(coefficients).detach().to("cpu", torch.float32)
    if c.shape == (num_tasks,):
        return c.expand(num_tensors, num_tasks)
    if c.shape != (num_tensors, num_tasks):
        raise ValueError(f"coefficients have shape {tuple(c.shape)}; expected [{num_tensors}, {num_tasks}] "
                         f"(one row per floating-point pretrained tensor, one column per task) or [{num_tasks}]")
    return c


def layer_wise_merge(pretrained: StateDict, task_vectors: Sequence[StateDict], coefficients: torch.Tensor,
                     clamp: bool = True) -> StateDict:
    """θ^l = θ₀^l + Σ_k clamp(λ_k^l, 0, 1)·τ_k^l for every floating-point tensor l of θ₀; other keys keep θ₀.

    `coefficients` is [num_tensors, num_tasks] with rows in the order of `vector_keys(pretrained)` (state-dict order),
    or a task-wise [num_tasks] vector (one λ_k for every tensor). The clamp is the one the reference applies when it
    builds its final model; clamping already-clamped coefficients changes nothing. `clamp=False` applies them as given.
    """
    names = check_finetuned(pretrained, task_vectors, "layer-wise merge", what="task vector", same_dtype=False)
    table = _coefficient_table(coefficients, len(names), len(task_vectors))
    if clamp:
        table = table.clamp(0.0, 1.0)
    rows = dict(zip(names, table))
    return {k: _merge(p, [tv[k] for tv in task_vectors], rows[k]) if k in rows else p
            for k, p in pretrained.items()}


class AdaMerging:
    """Learns AdaMerging coefficients λ (layer-wise [num_tensors, K] or task-wise [K]) for K frozen heads.

    `encoder` is one image encoder of the right architecture (`src.modeling.ImageEncoder` or
    `src.hf_clip.VisionEncoder`: they have `load_merged` and `parameter_name`) on the device the adaptation should
    run on (CPU or GPU); it is loaded with θ₀, frozen, and serves as the template of `functional_call`, so θ₀ is held
    once, as the encoder's own weights. The vision task vectors are kept on that device, in `vector_dtype` when given
    (e.g. torch.bfloat16 on a GPU, halving their memory; the merge still computes in θ₀'s dtype); on the CPU in
    float32 they are used in place, not copied. `heads[k]` maps task k's features to logits; heads that are
    `nn.Module`s are frozen and moved to the encoder's device.
    """

    def __init__(self, encoder: nn.Module, pretrained: StateDict, task_vectors: Sequence[StateDict],
                 heads: Sequence[Callable[[torch.Tensor], torch.Tensor]], *, granularity: str,
                 init: float, lr: float, betas: tuple[float, float] = (0.9, 0.999), clamp: bool = True,
                 vector_dtype: torch.dtype | None = None, entropy_eps: float = 0.0):
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got '{granularity}'")
        if len(heads) != len(task_vectors):
            raise ValueError(f"{len(task_vectors)} task vectors but {len(heads)} heads: give one head per task")
        self.tensor_names = check_finetuned(pretrained, task_vectors, "AdaMerging", what="task vector",
                                            same_dtype=False)
        self.granularity, self.clamp, self.num_tasks = granularity, clamp, len(task_vectors)
        self.entropy_eps = entropy_eps
        self.encoder = encoder.requires_grad_(False)
        self.encoder.load_merged(pretrained)
        own = dict(self.encoder.named_parameters())
        # (coefficient row, state-dict key, the encoder's parameter name) of every tensor the forward uses
        self._used = [(row, k, encoder.parameter_name(k)) for row, k in enumerate(self.tensor_names)
                      if encoder.parameter_name(k) is not None]
        if not self._used:
            raise ValueError("none of the pretrained state dict's tensors reaches the encoder's forward: give the "
                             "state dict of this encoder's architecture")
        self.device = own[self._used[0][2]].device
        self._base = {name: own[name] for _, _, name in self._used}
        self._vectors = {name: [tv[k].to(self.device, vector_dtype or own[name].dtype) for tv in task_vectors]
                         for _, k, name in self._used}
        self.heads = [h.requires_grad_(False).to(self.device) if isinstance(h, nn.Module) else h for h in heads]
        shape = (len(self.tensor_names), self.num_tasks) if granularity == "layer" else (self.num_tasks,)
        self.raw = torch.full(shape, float(init), device=self.device, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.raw], lr=lr, betas=betas)
        self._diagnostics: dict[str, list[float]] = {}

    def _lambdas(self) -> torch.Tensor:
        return self.raw.clamp(0.0, 1.0) if self.clamp else self.raw

    def coefficients(self) -> torch.Tensor:
        """The coefficients the merge applies (clamped to [0, 1] unless clamp=False), detached, on the CPU."""
        return self._lambdas().detach().cpu()

    def merged_params(self) -> dict[str, torch.Tensor]:
        """The merged tensors the forward uses, by the encoder's parameter names, on its device, differentiable in
        λ."""
        lam = self._lambdas()
        return {name: _merge(self._base[name], self._vectors[name], lam[row] if self.granularity == "layer" else lam)
                for row, _, name in self._used}

    def logits(self, images: torch.Tensor, task: int, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Task `task`'s head on the merged encoder's features (`params` from `merged_params`, computed if None)."""
        params = self.merged_params() if params is None else params
        return self.heads[task](functional_call(self.encoder, params, (images.to(self.device),)))

    def step(self, batches_per_task: Sequence[Sequence[torch.Tensor]]) -> float:
        """One Adam step on Σ_k Σ_b entropy_loss(batch b of task k); returns that summed loss.

        `batches_per_task[k]` lists task k's image batches for this step, in task order (2 batches of 16 in the
        reference).
        """
        if len(batches_per_task) != self.num_tasks or not all(len(b) for b in batches_per_task):
            raise ValueError(f"step needs a non-empty list of image batches for each of the {self.num_tasks} tasks, "
                             f"got {[len(b) for b in batches_per_task]} batches per task")
        merged = self.merged_params()
        # Leaves cut the graph at the merged tensors: each batch's backward frees its activations at once.
        leaves = {k: v.detach().requires_grad_() for k, v in merged.items()}
        total = torch.zeros((), device=self.device)
        entropies, predictions = [[] for _ in batches_per_task], [[] for _ in batches_per_task]
        for task, batches in enumerate(batches_per_task):
            for images in batches:
                logits = self.logits(images, task, leaves)
                per_image = softmax_entropy(logits, self.entropy_eps)
                loss = per_image.mean(0)  # entropy_loss, with the per-image values kept for the diagnostics
                loss.backward()
                total = total + loss.detach()
                entropies[task].append(per_image.detach())
                predictions[task].append(logits.detach().argmax(1))
        predicted = [torch.cat(p) for p in predictions]
        self._diagnostics = {  # one device-to-host copy each, not one per task
            "entropy": torch.stack([torch.cat(e).mean() for e in entropies]).tolist(),
            "top_share": torch.stack([torch.bincount(p).max().double() / len(p) for p in predicted]).tolist()}
        used = [k for k in merged if leaves[k].grad is not None]
        if not bool(torch.isfinite(total)):
            raise FloatingPointError(f"AdaMerging: the entropy loss is {float(total)}; the merged model or a head "
                                     "produced NaN/Inf logits (lower the learning rate, or check the inputs)")
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward([merged[k] for k in used], [leaves[k].grad for k in used])
        self.optimizer.step()
        if not bool(torch.isfinite(self.raw).all()):
            raise FloatingPointError("AdaMerging: an optimiser step made a coefficient NaN or Inf")
        return float(total)

    def diagnostics(self) -> dict[str, list[float]]:
        """Per task, on the last step's batches (before its update): `entropy`, the mean entropy of the predictions,
        and `top_share`, the share of the images predicted as the most-predicted class. A task whose share nears 1
        has collapsed onto one class, which a falling average accuracy alone does not show."""
        return dict(self._diagnostics)

    def state_dict(self) -> dict:
        """The raw coefficients and the optimiser's state: what resuming an interrupted adaptation needs."""
        return {"raw": self.raw.detach().cpu().clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state["raw"].shape != self.raw.shape:
            raise ValueError(f"saved coefficients have shape {tuple(state['raw'].shape)}, this adaptation "
                             f"{tuple(self.raw.shape)}")
        with torch.no_grad():
            self.raw.copy_(state["raw"])
        self.optimizer.load_state_dict(state["optimizer"])
