"""Task vectors on state dicts: τ_k = θ_k − θ₀ (Ilharco et al., 2023; docs/methods.md).

Integer tensors (position ids and the like) have no task vector, as in the reference, which skips int64 and uint8
keys: this module skips every non-floating-point key, a superset that changes nothing on real checkpoints.
The functions are pure and touch one tensor at a time, so inputs that are memory-mapped stay on disk until used.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Sequence

import torch

StateDict = dict[str, torch.Tensor]
OPEN_CLIP_VISION_PREFIX = "model.visual."


def has_task_vector(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point()


def vector_keys(pretrained: StateDict) -> list[str]:
    """The keys that carry a task vector, in state-dict order."""
    return [k for k, v in pretrained.items() if has_task_vector(v)]


def image_tower_keys(keys: Iterable[str]) -> list[str]:
    """The image tower's keys among `keys`: `model.visual.*` of an open_clip ImageEncoder state dict (which also
    carries the text-side leftovers of task_vectors checkpoints); every key of a Hugging Face `CLIPVisionModel` state
    dict, which holds the vision tower only."""
    keys = list(keys)
    visual = [k for k in keys if k.startswith(OPEN_CLIP_VISION_PREFIX)]
    return visual if visual else keys


def require_finite(state_dict: StateDict, what: str) -> None:
    """Raise naming the first floating-point tensor of `state_dict` that holds NaN or Inf: a merge or an adaptation
    step that produced one is broken, and evaluating it would only print a table of chance accuracies."""
    for key, value in state_dict.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise FloatingPointError(f"{what}: tensor '{key}' holds NaN or Inf values")


def check_finetuned(pretrained: StateDict, finetuned: Sequence[StateDict], method: str,
                    what: str = "fine-tuned state dict", same_dtype: bool = True) -> list[str]:
    """`vector_keys(pretrained)`, after checking that every one of `finetuned` (fine-tuned state dicts, or task
    vectors with `what="task vector"`) has each of them with the pretrained shape and (unless `same_dtype=False`,
    for task vectors a method may keep in a compact dtype) dtype. The one check every method runs on its inputs: a
    `ValueError` naming the method, the input, the key and what was found."""
    if not finetuned:
        raise ValueError(f"{method} needs at least one {what}")
    keys = vector_keys(pretrained)
    for i, ft in enumerate(finetuned):
        for key in keys:
            expected = pretrained[key]
            if key not in ft or ft[key].shape != expected.shape or (same_dtype and ft[key].dtype != expected.dtype):
                found = "missing" if key not in ft else f"{ft[key].dtype} {tuple(ft[key].shape)}"
                which = what if len(finetuned) == 1 else f"{what} {i}"
                raise ValueError(f"{method}: {which}: key '{key}' is {found}, expected "
                                 f"{expected.dtype} {tuple(expected.shape)} as in the pretrained one")
    return keys


def changed_keys(pretrained: StateDict, finetuned: Sequence[StateDict], keys: Iterable[str]) -> set[str]:
    """The keys some fine-tuned model changed; on the others τ_k = 0 for every task (on task_vectors checkpoints:
    the text-side leftovers), so methods can skip their arithmetic."""
    return {key for key in keys if any(not torch.equal(ft[key], pretrained[key]) for ft in finetuned)}


def task_vector(pretrained: StateDict, finetuned: StateDict) -> StateDict:
    """τ = θ_ft − θ₀ for every floating-point key of θ₀."""
    return {k: finetuned[k] - pretrained[k] for k in vector_keys(pretrained)}


def key_task_vectors(key: str, pretrained: StateDict, finetuned: Sequence[StateDict]) -> Iterator[torch.Tensor]:
    """τ_1[key], …, τ_K[key], one tensor of every task vector, each computed when it is asked for: summing them
    holds two tensors, not K (on ViT-B/32, 8 × the 100 MB token embedding)."""
    return (ft[key] - pretrained[key] for ft in finetuned)


def sum_vectors(vectors: Iterable[torch.Tensor]) -> torch.Tensor:
    """τ_1 + τ_2 + … accumulated left to right, the order of the reference's `sum(task_vectors)`."""
    vectors = iter(vectors)
    total = next(vectors)
    for v in vectors:
        total = total + v
    return total


def apply(pretrained: StateDict, vector: StateDict, scaling_coef: float = 1.0) -> StateDict:
    """θ = θ₀ + λ·τ on the keys τ has; every other key keeps its pretrained value (reference `apply_to`)."""
    return {k: (p + scaling_coef * vector[k]) if k in vector else p for k, p in pretrained.items()}
