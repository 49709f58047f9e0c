"""EMR-Merging (Huang et al., 2024): elect, mask, rescale (docs/methods.md, "EMR-Merging";
EMR_Merging `merge_vit/src/main_emr_merging.py`).

For every floating-point tensor n of the state dict (integer keys keep θ₀), with τ_k = θ_k − θ₀:

1. Elect: γ^n = sign(mean_k τ_k^n), an exact 0 elected as −1 (the reference's `(mean > 0)·2 − 1`);
   τ_uni^n = γ^n ⊙ max_k |M_k^n ⊙ τ_k^n|, the largest magnitude among the tasks that agree with γ.
2. Mask: M_k^n = [τ_k^n · γ^n > 0], true only where task k strictly agrees (zeros never do).
3. Rescale: one scalar per task for the whole model,
   r_k = Σ_n mean|τ_k^n| / Σ_n mean|M_k^n ⊙ τ_uni^n|, accumulated in float32 in state-dict key order.
4. Task k's model: θ̂_k = θ₀ + (τ_uni ⊙ M_k)·r_k. There is no λ.

Reference choices reproduced by default (docs/methods.md, "EMR-Merging"):
- the rescaler sums per-tensor means, so every tensor counts equally whatever its size; `global_rescaler=True`
  gives the corrected variant, the ratio of whole-model L1 norms Σ|τ_k| / Σ|M_k ⊙ τ_uni| (float64 sums);
- an exact-zero mean elects −1. This only decides which tasks count as agreeing where the task vectors cancel
  exactly; it is kept as is;
- FusionBench switches tasks by adding and subtracting deltas in place, which drifts by float rounding; here every
  `task_state_dict(i)` is rebuilt from the stored parts, as the [EMR] scripts do.
`unified_only=True` is the paper's ablation: θ₀ + τ_uni for every task, no masks, no rescalers.

Storage (`src.merge_files.save_emr`): the unified vector once (tensors where it is entirely zero, such as the text-side
leftovers of task_vectors checkpoints, by name only), the K masks bit-packed over the concatenation of all float
tensors in state-dict order (⌈d/8⌉ bytes per task), and the K rescalers, in one safetensors file.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from src.task_vectors import StateDict, changed_keys, check_finetuned, vector_keys


class EMRModel:
    """A unified task vector τ_uni, K bit-packed masks M_k and K rescalers r_k: θ̂_k = θ₀ + (τ_uni ⊙ M_k)·r_k.

    Built by `emr_merging` or read by `src.merge_files.load_emr`. `pretrained` (θ₀) is needed only by
    `task_state_dict`.
    """

    def __init__(self, shapes: dict[str, torch.Size], unified: StateDict, masks: np.ndarray | None,
                 rescalers: torch.Tensor | None, num_tasks: int, pretrained: StateDict | None = None):
        self.shapes = dict(shapes)
        self.unified = unified
        self.masks = masks
        self.rescalers = rescalers
        self.num_tasks = num_tasks
        self.pretrained = None
        self._bit_offsets = {}
        position = 0
        for key, shape in self.shapes.items():
            self._bit_offsets[key] = position
            position += shape.numel()
        self.num_entries = position
        if pretrained is not None:
            self.attach(pretrained)

    @property
    def unified_only(self) -> bool:
        return self.masks is None

    def attach(self, pretrained: StateDict, name: str = "the pretrained state dict") -> None:
        """Use `pretrained` as θ₀; it must have exactly the float keys and shapes the model was merged from."""
        keys = vector_keys(pretrained)
        if keys != list(self.shapes):
            missing = [k for k in self.shapes if k not in pretrained]
            extra = [k for k in keys if k not in self.shapes]
            detail = f"missing {missing[:5]}, unexpected {extra[:5]}" if missing or extra else "in another order"
            raise ValueError(f"{name} does not match the EMR model's float keys ({detail})")
        for key, shape in self.shapes.items():
            if pretrained[key].shape != shape:
                raise ValueError(f"{name}: key '{key}' has shape {tuple(pretrained[key].shape)}, the EMR model "
                                 f"{tuple(shape)}")
        self.pretrained = pretrained

    def mask(self, task: int, key: str) -> torch.Tensor:
        """M_task for one tensor, as a Boolean tensor of its shape."""
        self._check_task(task)
        if self.masks is None:
            raise ValueError("this EMR model is the unified-only ablation: it has no masks")
        start = self._bit_offsets[key]
        count = self.shapes[key].numel()
        packed = self.masks[task, start // 8:(start + count + 7) // 8]
        bits = np.unpackbits(packed)[start % 8:start % 8 + count]
        return torch.from_numpy(bits).view(torch.bool).view(self.shapes[key])

    def task_vector(self, task: int) -> StateDict:
        """τ̂_task = (τ_uni ⊙ M_task)·r_task for every float key (τ_uni itself in the unified-only ablation)."""
        self._check_task(task)
        return {key: self._delta(task, key) for key in self.shapes}

    def task_state_dict(self, task: int) -> StateDict:
        """θ₀ + τ̂_task, rebuilt from the stored parts on every call (no in-place switching between tasks)."""
        self._check_task(task)
        if self.pretrained is None:
            raise ValueError("task_state_dict needs θ₀: pass pretrained= to load_emr, or call attach()")
        return {key: p + self._delta(task, key) if key in self.shapes else p for key, p in self.pretrained.items()}

    def _delta(self, task: int, key: str) -> torch.Tensor:
        if key not in self.unified:
            return torch.zeros(self.shapes[key])
        if self.masks is None:
            return self.unified[key].clone()
        return self.unified[key] * self.mask(task, key) * self.rescalers[task]

    def _check_task(self, task: int) -> None:
        if not 0 <= task < self.num_tasks:
            raise IndexError(f"task {task} out of range: this EMR model has {self.num_tasks} tasks (0..."
                             f"{self.num_tasks - 1})")


def emr_merging(pretrained: StateDict, finetuned: Sequence[StateDict], unified_only: bool = False,
                global_rescaler: bool = False) -> EMRModel:
    """Merge θ_1..θ_K of θ₀ into an `EMRModel` (module docstring): one unified task vector, per-task masks and
    rescalers. `unified_only`: the ablation without masks and rescalers; `global_rescaler`: r_k as a ratio of
    whole-model L1 norms instead of the reference's sum of per-tensor means."""
    keys = check_finetuned(pretrained, finetuned, "EMR-Merging")
    moved = changed_keys(pretrained, finetuned, keys)
    shapes = {key: pretrained[key].shape for key in keys}
    num_tasks = len(finetuned)
    bits = None if unified_only else _BitWriter(num_tasks, sum(s.numel() for s in shapes.values()))
    accumulate = torch.float64 if global_rescaler else torch.float32
    task_mass = torch.zeros(num_tasks, dtype=accumulate)
    masked_mass = torch.zeros(num_tasks, dtype=accumulate)
    unified: StateDict = {}
    # The K task vectors of one tensor are written into one reused [K, n] block: its mean over dim 0 is the
    # reference's torch.stack(...).mean(0) bit for bit, without a stacked copy per tensor.
    block = torch.empty(num_tasks * max((shapes[key].numel() for key in moved), default=0))
    for key in keys:
        if key not in moved:
            if bits is not None:
                bits.skip(shapes[key].numel())
            continue
        taus = block[:num_tasks * shapes[key].numel()].view(num_tasks, *shapes[key])
        for tau, ft in zip(taus, finetuned):
            torch.sub(ft[key], pretrained[key], out=tau)
        flag = torch.where(taus.mean(0) > 0, 1.0, -1.0).to(pretrained[key].dtype)
        magnitude = torch.zeros_like(pretrained[key])
        masks = torch.empty(taus.shape, dtype=torch.bool)
        for k, tau in enumerate(taus):
            task_mass[k] += tau.abs().sum(dtype=accumulate) if global_rescaler else tau.abs().mean()
            agreeing = tau.mul_(flag)
            torch.gt(agreeing, 0, out=masks[k])
            # (τ·γ)⁺ equals |M ⊙ τ| bit for bit, γ being ±1.
            torch.maximum(magnitude, agreeing.clamp_(min=0), out=magnitude)
        for k, mask in enumerate(masks):
            masked = magnitude * mask  # = |M_k ⊙ τ_uni|
            masked_mass[k] += masked.sum(dtype=accumulate) if global_rescaler else masked.mean()
        if bits is not None:
            bits.write(masks.reshape(num_tasks, -1).numpy())
        if magnitude.any():
            unified[key] = magnitude.mul_(flag)
    if bits is None:
        return EMRModel(shapes, unified, None, None, num_tasks, pretrained)
    empty = (masked_mass == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"EMR-Merging: task(s) {empty} agree with the elected sign nowhere (is a fine-tuned state "
                         "dict identical to the pretrained one?); their rescaler would be 0/0")
    rescalers = (task_mass / masked_mass).to(torch.float32)
    return EMRModel(shapes, unified, bits.close(), rescalers, num_tasks, pretrained)


class _BitWriter:
    """Appends K Boolean masks at a time, packing each task's bits into one row of ⌈d/8⌉ bytes (numpy's bit order,
    most significant bit first), whatever the tensor boundaries."""

    def __init__(self, num_tasks: int, num_bits: int):
        self.packed = np.zeros((num_tasks, (num_bits + 7) // 8), dtype=np.uint8)
        self.pending = np.zeros((num_tasks, 0), dtype=bool)
        self.position = 0

    def write(self, masks: np.ndarray) -> None:
        bits = np.concatenate([self.pending, masks], axis=1) if self.pending.shape[1] else masks
        whole = bits.shape[1] // 8
        first = (self.position - self.pending.shape[1]) // 8
        self.packed[:, first:first + whole] = np.packbits(bits[:, :whole * 8], axis=1)
        self.pending = bits[:, whole * 8:]
        self.position += masks.shape[1]

    def skip(self, count: int) -> None:
        """Append `count` false bits; the packed rows start zeroed, so only the byte in progress is touched."""
        head = min(count, -self.position % 8)
        self.write(np.zeros((self.packed.shape[0], head), dtype=bool))
        rest = count - head
        self.pending = np.zeros((self.packed.shape[0], rest % 8), dtype=bool) if rest else self.pending
        self.position += rest

    def close(self) -> np.ndarray:
        if self.pending.shape[1]:
            self.packed[:, -1] = np.packbits(self.pending, axis=1)[:, 0]
        return self.packed
