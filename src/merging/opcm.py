"""OPCM: continual merging by orthogonal projection and adaptive rescaling (Tang et al., 2025; docs/methods.md, "OPCM").

Models arrive one at a time in an order π. With θ₀ the pretrained model, τ_t = θ_{π_t} − θ₀ and ‖·‖ the L2 norm of
the whole flattened task vector (all floating-point keys together, not per tensor):

- step 1 takes the first model whole: θ̄_1 = θ_{π_1}, λ_1 = 1;
- step t > 1, with Δ = θ̄_{t−1} − θ₀ the stored merged delta and λ_{t−1} its last rescale factor:
  - every Linear weight matrix W: Δ_W = U S Vᵀ; the split rank r = argmax_i [ (Σ_{j≤i} S_j) / ΣS > α ] is 0-based,
    i.e. the top singular direction that pushes the cumulative share of the *sum* of singular values past α is kept,
    r = 0 when S_1 alone exceeds α (or when no prefix exceeds α, e.g. α = 1); P = Uᵀ τ_W V has its top-left r×r
    block zeroed and τ̃_W = U P Vᵀ, the part of τ_W outside span(u_1..u_r) ⊗ span(v_1..v_r);
    W ← W₀ + λ_{t−1}·Δ_W + τ̃_W;
  - every other floating-point tensor: W ← W₀ + λ_{t−1}·Δ_W + τ_W;
  - rescale: with n_t = ‖θ̄ − θ₀‖ and avg_t = mean(‖τ_1‖ … ‖τ_t‖), θ̄_t = θ₀ + (θ̄ − θ₀)·avg_t/n_t and λ_t = n_t/avg_t,
    so the stored merged delta always has the mean task-vector norm of the models seen so far.

Linear weights in Hugging Face `CLIPVisionModel` keys (the reference's own layout): `self_attn.{q,k,v,out}_proj.weight`
and `mlp.fc1.weight`, `mlp.fc2.weight` of every encoder layer, each projected whole. In open_clip keys:
`attn.in_proj_weight` is the q, k and v Linear weights stacked along dim 0, and each third is projected with the SVD
of its own third of Δ, as the reference does on the separate q, k, v projections; `attn.out_proj.weight`,
`mlp.c_fc.weight`, `mlp.c_proj.weight` and `visual.proj` are projected whole.
`visual.proj` is the transpose of a Linear weight (x @ proj); the projection commutes with transposition (the SVD of
Δᵀ swaps U and V, and the zeroed top-left block and diagonal are the same entries of Pᵀ), so it is projected as
stored. Biases, LayerNorms, `conv1`, `class_embedding`, positional embeddings and the text-side leftovers of
task_vectors checkpoints are added plainly; integer keys keep θ₀'s value and count in no norm.

Reference quirks, reproduced by default:
- `zero_diagonal=False`: the paper-era code's diagonal removal (`P.diag().fill_(0)`) zeroes a copy, a no-op.
  `zero_diagonal=True` is FusionBench's later fix (`P.diagonal().fill_(0)`), which also removes τ's component along
  every u_i v_iᵀ with i ≥ r.
- `merge_class_embedding`: on HF `CLIPVisionModel`s the reference never visits `embeddings.class_embedding` (a
  parameter of a non-leaf module), so it keeps the first model's value, shrunk by every global rescale and counted in
  the norms. The default (None) does exactly that on Hugging Face state dicts and adds `visual.class_embedding`
  plainly on open_clip ones, which the reference never ran OPCM on; True or False forces either on both.

Numerics: float32 throughout, as the reference, except the task-vector norms, which are accumulated in float64 and
are exact to rounding. The reference takes one float32 `torch.linalg.norm` of the whole concatenated vector on the
CPU, which on the 87.5 M entries of a ViT-B/32 task vector comes out 0.92 % low (measured here on a Gaussian vector
of that size; per-tensor float32 norms combined in double were 5e-6 low), so its rescale factors avg_t/n_t can
differ from these by up to that much where the two norms' errors do not cancel. The SVD is the economical one,
τ̃ = τ − U_k B V_kᵀ where B holds the removed entries of P; this equals the reference's full-SVD rebuild U P Vᵀ
because all removed entries lie in the first k = min(m, n) rows and columns of P (tests/test_opcm.py checks it).
With `zero_diagonal=True` and a rank-deficient Δ, the removed directions i ≥ rank(Δ) are whichever null-space basis
the SVD returns, as in the reference.

Memory: θ₀, the current merge and the incoming model (memory-mapped inputs are read one tensor at a time), whatever
the number of models merged.
"""
from __future__ import annotations

import math
import re

import torch

from src.task_vectors import StateDict, check_finetuned, has_task_vector

# open_clip key suffix of each Linear weight matrix → how many Linear weights are stacked along dim 0.
_OPEN_CLIP_LINEAR = {".attn.in_proj_weight": 3, ".attn.out_proj.weight": 1, ".mlp.c_fc.weight": 1,
                     ".mlp.c_proj.weight": 1}
# The nn.Linear weights of a Hugging Face CLIPVisionModel encoder layer.
_HF_LINEAR = re.compile(r"(^|\.)encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])\.weight$")
_OPEN_CLIP_CLASS_EMBEDDING = "visual.class_embedding"
_HF_CLASS_EMBEDDING = "embeddings.class_embedding"


def linear_chunks(key: str) -> int:
    """How many Linear weight matrices the tensor `key` stacks along dim 0 (0: not a Linear weight), for open_clip
    ImageEncoder and Hugging Face CLIPVisionModel keys."""
    if _HF_LINEAR.search(key):
        return 1
    if "visual." not in key:
        return 0
    if key.endswith("visual.proj"):
        return 1
    return next((n for suffix, n in _OPEN_CLIP_LINEAR.items() if key.endswith(suffix)), 0)


def _skips(key: str, merge_class_embedding: bool | None) -> bool:
    """Whether OPCM leaves `key` out of the merge (the reference never visits HF's class embedding)."""
    hf = key == _HF_CLASS_EMBEDDING or key.endswith("." + _HF_CLASS_EMBEDDING)
    if not (hf or key.endswith(_OPEN_CLIP_CLASS_EMBEDDING)):
        return False
    return hf if merge_class_embedding is None else not merge_class_embedding


def split_rank(singular_values: torch.Tensor, alpha: float) -> int:
    """0-based index of the first singular value whose cumulative share of ΣS exceeds α; 0 when none does."""
    share = singular_values.cumsum(dim=0) / singular_values.sum()
    return int((share > alpha).float().argmax())


def project(merged_delta: torch.Tensor, task_vector: torch.Tensor, alpha: float,
            zero_diagonal: bool = False) -> torch.Tensor:
    """τ̃: `task_vector` with its component in the top-r singular block of `merged_delta` removed (one Linear weight)."""
    u, s, vh = torch.linalg.svd(merged_delta, full_matrices=False)
    r = split_rank(s, alpha)
    removed = u[:, :r] @ (u[:, :r].T @ task_vector @ vh[:r].T) @ vh[:r]
    if zero_diagonal:
        u_rest, vh_rest = u[:, r:], vh[r:]
        diagonal = ((u_rest.T @ task_vector) * vh_rest).sum(dim=1)
        removed = removed + (u_rest * diagonal) @ vh_rest
    return task_vector - removed


def _sq_norm(tensor: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(tensor, dtype=torch.float64)) ** 2


class OPCM:
    """Continual merge by orthogonal projection; `.add(θ_t)` merges one more model, `.state_dict()` returns θ̄_t."""

    def __init__(self, pretrained: StateDict, *, alpha: float, zero_diagonal: bool = False,
                 merge_class_embedding: bool | None = None):
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"OPCM alpha={alpha}: the split threshold is a share of the singular-value sum, "
                             "so it must lie in [0, 1]")
        self.pretrained = pretrained
        self.alpha = alpha
        self.zero_diagonal = zero_diagonal
        self.merge_class_embedding = merge_class_embedding
        self.task_vector_norms: list[float] = []
        self.lambda_t = 1.0
        self._merged: StateDict | None = None

    @property
    def num_models(self) -> int:
        return len(self.task_vector_norms)

    def add(self, finetuned: StateDict) -> None:
        check_finetuned(self.pretrained, [finetuned], "OPCM")
        if self._merged is None:
            self._merged = {k: finetuned[k].clone() if has_task_vector(p) else p for k, p in self.pretrained.items()}
            self.task_vector_norms.append(math.sqrt(sum(
                _sq_norm(finetuned[k] - p) for k, p in self.pretrained.items() if has_task_vector(p))))
            return
        merged, sq_norm = self._merged, 0.0
        for key, theta0 in self.pretrained.items():
            if not has_task_vector(theta0):
                continue
            tau = finetuned[key] - theta0
            sq_norm += _sq_norm(tau)
            if _skips(key, self.merge_class_embedding):
                continue
            delta = merged[key] - theta0
            chunks = linear_chunks(key)
            if chunks:
                if tau.ndim != 2:
                    raise ValueError(f"'{key}' is named like a Linear weight but has shape {tuple(tau.shape)}; "
                                     "OPCM projects 2-D weight matrices only")
                tau = torch.cat([project(d, t, self.alpha, self.zero_diagonal)
                                 for d, t in zip(delta.chunk(chunks), tau.chunk(chunks))])
            merged[key] = theta0 + (self.lambda_t * delta + tau)
        self.task_vector_norms.append(math.sqrt(sq_norm))
        self._rescale(sum(self.task_vector_norms) / len(self.task_vector_norms))

    def _rescale(self, avg_norm: float) -> None:
        merged = self._merged
        keys = [k for k, p in self.pretrained.items() if has_task_vector(p)]
        merged_norm = math.sqrt(sum(_sq_norm(merged[k] - self.pretrained[k]) for k in keys))
        if merged_norm == 0.0:
            # Every projected task vector cancelled out: no direction to stretch, the merge stays at θ₀.
            self.lambda_t = 1.0
            return
        factor = avg_norm / merged_norm
        for k in keys:
            merged[k] = self.pretrained[k] + (merged[k] - self.pretrained[k]) * factor
        self.lambda_t = merged_norm / avg_norm

    def state_dict(self) -> StateDict:
        if self._merged is None:
            raise RuntimeError("OPCM.state_dict() before any model was added: call .add(finetuned) first")
        return dict(self._merged)

