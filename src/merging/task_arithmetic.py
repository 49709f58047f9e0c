"""Task Arithmetic (Ilharco et al., 2023): θ = θ₀ + λ·Σ_k τ_k.

Bit-exact with the reference (docs/methods.md, "Task Arithmetic"): float32, the task vectors summed left to right in
task order, the sum scaled by λ, θ₀ added last. Streams key by key, so only one tensor per model is in memory at a
time.
"""
from __future__ import annotations

from typing import Sequence

from src.task_vectors import StateDict, check_finetuned, has_task_vector, key_task_vectors, sum_vectors


def task_arithmetic(pretrained: StateDict, finetuned: Sequence[StateDict], *, scaling_coef: float) -> StateDict:
    """Merge fine-tuned models θ_1..θ_K of one pretrained θ₀ with a single scaling coefficient λ."""
    check_finetuned(pretrained, finetuned, "Task Arithmetic")
    return {k: p + scaling_coef * sum_vectors(key_task_vectors(k, pretrained, finetuned)) if has_task_vector(p) else p
            for k, p in pretrained.items()}
