"""TIES-Merging (Yadav et al., 2023) as the CLIP ViT scripts of AdaMerging/EMR-Merging run it (docs/methods.md,
"TIES-Merging").

With τ_k = θ_k − θ₀ over every floating-point key of the state dict (integer keys keep θ₀):

1. Trim: τ̂_k = τ_k ⊙ [|τ_k| ≥ t_k], where t_k is the k-th smallest |τ_k| over all d float entries of the model
   (one threshold per task, not per tensor) with k = d − int(d·K); every entry tied with t_k is kept, so
   int(d·K) + 1 entries survive plus ties. K = 20 means 20 % (values above 1 are divided by 100).
2. Elect: γ = sign(Σ_k τ̂_k); entries where the sum is exactly 0 take the majority sign sign(Σ_p γ_p).
3. Disjoint merge of the selected entries s_k = τ̂_k ⊙ [sign(τ̂_k) = γ] (zeros are never selected):
   "sum" Σ_k s_k (the ViT scripts' "dis-sum", the default), "mean" Σ_k s_k / max(#{k: s_k ≠ 0}, 1) (the paper),
   "max" max_k |s_k| · γ.
4. θ = θ₀ + λ·τ_m.

Reference quirks reproduced by default:
- the threshold counts every float entry of the given state dict, so on task_vectors checkpoints the ~25.6 M
  always-zero text-side entries count toward d and "20 %" keeps ≈ 25.8 % of ViT-B/32's vision weights.
  `vision_only_k=True` is the corrected variant: t_k is taken over the image tower's entries only
  (`src.task_vectors.image_tower_keys`: `model.visual.*`; on Hugging Face vision towers, which have no padding,
  every entry, so the flag changes nothing there) and then applied to every entry, as before;
- the merge is the disjoint sum, not the paper's mean (`merge_func="mean"` gives the paper's);
- if the majority sign is itself 0 (as many positive as negative elected signs), the zero-sum entries keep γ = 0
  and, as in the reference's `torch.where(γ > 0, τ̂ > 0, τ̂ < 0)`, select their negative entries.

How it is computed: never as the reference's K×d matrix. Work goes chunk by chunk through each tensor, the K task
vectors of one chunk at a time. Each t_k is an exact order statistic found by a two-pass radix select on the bit
patterns of |τ_k| (the 15 high bits, then the 16 low bits inside the one bucket that holds the k-th value), so the
kept set is exactly the reference's. Tensors that no fine-tuned model changed are recognised once and not
recomputed (their entries count as zeros). Entries whose elected sum is exactly 0 but not all-zero (exact
cancellations, rare) are remembered and finished after the last tensor, once the majority sign is known.

Numerics: float32 throughout; sums over tasks are accumulated left to right in task order, which is the order
PyTorch uses for the reference's column sums except in the last (d mod 32) columns of its flattened vector, where
it may differ in the last bit; the majority sign is counted exactly in integers.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import torch

from src.options import MERGE_FUNCS
from src.task_vectors import StateDict, changed_keys, check_finetuned, image_tower_keys

_CHUNK = 1 << 16          # entries per task vector per block: K blocks of 256 KiB stay in the CPU caches
_ABS = 0x7FFFFFFF         # clears the sign bit: for |x| the int32 bit pattern orders like the float value
_HIGH_SHIFT = 16
_HIGH_BINS = 1 << 15      # bits 16..30 of |x|
_LOW_BINS = 1 << 16       # bits 0..15 of |x|


def ties_merging(pretrained: StateDict, finetuned: Sequence[StateDict], *, k: float, scaling_coef: float,
                 merge_func: str = "sum", vision_only_k: bool = False) -> StateDict:
    """θ₀ + λ·τ_m, τ_m the disjoint merge of the trimmed, sign-elected task vectors (module docstring).

    `k`: share of each task vector kept, in percent (20) or as a fraction (0.2); `scaling_coef`: λ;
    `merge_func`: "sum" (reference default, also accepted as "dis-sum"), "mean" or "max";
    `vision_only_k`: take the threshold over the image tower's entries only (corrected variant).
    """
    merge_func = _merge_func_name(merge_func)
    keys = _checked_keys(pretrained, finetuned)
    moved = changed_keys(pretrained, finetuned, keys)
    flats = {key: torch.empty(pretrained[key].numel()) for key in keys if key in moved}
    for key, where, selected, gamma in _selected_blocks(pretrained, finetuned, keys, moved, k, vision_only_k):
        merged = _disjoint_merge(selected, gamma, merge_func).mul_(scaling_coef)
        flats[key][where] = torch.add(pretrained[key].reshape(-1)[where], merged)
    unmoved = set(keys) - moved
    return {key: flats[key].view(p.shape) if key in flats else p.clone() if key in unmoved else p
            for key, p in pretrained.items()}


def ties_selected_vectors(pretrained: StateDict, finetuned: Sequence[StateDict], *, k: float,
                          vision_only_k: bool = False) -> list[StateDict]:
    """Per task the selected entries s_k = τ̂_k ⊙ [sign(τ̂_k) = γ], zero elsewhere (the reference's
    `ties_merging_split`, which AdaMerging++ uses in place of τ_k).

    Returns K state dicts with every floating-point key of `pretrained`, in state-dict order.
    """
    keys = _checked_keys(pretrained, finetuned)
    moved = changed_keys(pretrained, finetuned, keys)
    outs = [{key: torch.zeros(pretrained[key].numel()) for key in keys} for _ in finetuned]
    for key, where, selected, _ in _selected_blocks(pretrained, finetuned, keys, moved, k, vision_only_k):
        for out, row in zip(outs, selected):
            out[key][where] = row
    return [{key: flat.view(pretrained[key].shape) for key, flat in out.items()} for out in outs]


def ties_thresholds(pretrained: StateDict, finetuned: Sequence[StateDict], *, k: float,
                    vision_only_k: bool = False) -> torch.Tensor:
    """t_k for every task: the k-th smallest |τ_k| (k = d − int(d·K)) over the threshold entries, shape [K]."""
    keys = _checked_keys(pretrained, finetuned)
    return _thresholds(pretrained, finetuned, keys, changed_keys(pretrained, finetuned, keys), k, vision_only_k)


def keep_fraction(k: float) -> float:
    """The share K of each task vector kept: the reference divides values above 1 by 100 (20 → 0.2)."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0 <= k <= 100:
        raise ValueError(f"k={k!r}: give the share of each task vector to keep, in percent (20) or as a fraction "
                         "(0.2)")
    return k / 100 if k > 1 else float(k)


def kth_index(d: int, k: float) -> int:
    """The 1-based rank of the threshold among the d entries, d − int(d·K), as the reference computes it."""
    index = d - int(d * keep_fraction(k))
    if index < 1:
        raise ValueError(f"k={k!r} keeps every entry (the reference fails on it: kthvalue(0)); the threshold needs "
                         "a share below 100 %; note that k=1 means a fraction of 1.0, since only k > 1 is a percent")
    return index


def _merge_func_name(merge_func: str) -> str:
    name = merge_func.split("-")[-1]
    if name not in MERGE_FUNCS:
        raise ValueError(f"merge_func={merge_func!r}: expected one of {', '.join(MERGE_FUNCS)} "
                         "(optionally prefixed 'dis-', as in the reference)")
    return name


def _checked_keys(pretrained: StateDict, finetuned: Sequence[StateDict]) -> list[str]:
    keys = check_finetuned(pretrained, finetuned, "TIES-Merging")
    for key in keys:
        if pretrained[key].dtype != torch.float32:
            raise ValueError(f"key '{key}' is {pretrained[key].dtype}; TIES-Merging works on float32 state dicts "
                             "(convert them with .float() first)")
    return keys


def _blocks(pretrained: StateDict, finetuned: Sequence[StateDict], keys: list[str]
            ) -> Iterator[tuple[str, slice, torch.Tensor]]:
    """(key, slice of the flattened tensor, τ block [K, len]) chunk by chunk; the block's memory is reused, so a
    consumer must be done with it before asking for the next one."""
    buffer = torch.empty(len(finetuned) * _CHUNK)
    for key in keys:
        base = pretrained[key].reshape(-1)
        tuned = [ft[key].reshape(-1) for ft in finetuned]
        for start in range(0, base.numel(), _CHUNK):
            where = slice(start, min(start + _CHUNK, base.numel()))
            block = buffer[:len(tuned) * (where.stop - start)].view(len(tuned), -1)
            for row, ft in zip(block, tuned):
                torch.sub(ft[where], base[where], out=row)
            yield key, where, block


def _thresholds(pretrained: StateDict, finetuned: Sequence[StateDict], keys: list[str], moved: set[str],
                k: float, vision_only_k: bool) -> torch.Tensor:
    if vision_only_k:
        keys = image_tower_keys(keys)
    d = sum(pretrained[key].numel() for key in keys)
    if d == 0:
        raise ValueError("TIES-Merging: the state dict has no floating-point entries to trim")
    rank = torch.full((len(finetuned),), kth_index(d, k), dtype=torch.int64)
    zeros = sum(pretrained[key].numel() for key in keys if key not in moved)
    live = [key for key in keys if key in moved]
    tasks = torch.arange(len(finetuned), dtype=torch.int32).unsqueeze(1)

    # Pass 1: histogram of the high 15 bits of |τ_k|; the bucket holding the rank-th value.
    high = torch.zeros(len(finetuned) * _HIGH_BINS, dtype=torch.int64)
    for _, _, block in _blocks(pretrained, finetuned, live):
        bins = block.view(torch.int32).bitwise_and_(_ABS).bitwise_right_shift_(_HIGH_SHIFT)
        high += torch.bincount(bins.add_(tasks * _HIGH_BINS).view(-1), minlength=high.numel())
    high = high.view(len(finetuned), _HIGH_BINS)
    high[:, 0] += zeros
    bucket, below = _locate(high, rank)

    # Pass 2: inside that bucket, a histogram of the low 16 bits; bin 0 collects the entries below the bucket and
    # the last bin those above it.
    low = torch.zeros(len(finetuned) * (_LOW_BINS + 2), dtype=torch.int64)
    start = ((bucket.unsqueeze(1) << _HIGH_SHIFT) - 1).to(torch.int32)
    for _, _, block in _blocks(pretrained, finetuned, live):
        bins = block.view(torch.int32).bitwise_and_(_ABS).sub_(start).clamp_(0, _LOW_BINS + 1)
        low += torch.bincount(bins.add_(tasks * (_LOW_BINS + 2)).view(-1), minlength=low.numel())
    low = low.view(len(finetuned), _LOW_BINS + 2)[:, 1:-1]
    low[:, 0] += torch.where(bucket == 0, zeros, 0)
    low_bits, _ = _locate(low, rank - below)
    bits = ((bucket << _HIGH_SHIFT) | low_bits).to(torch.int32)
    return bits.view(torch.float32)


def _locate(histogram: torch.Tensor, rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the bin that holds the rank-th smallest value (1-based) and how many values lie in earlier bins."""
    cumulative = histogram.cumsum(1)
    index = (cumulative < rank.unsqueeze(1)).sum(1)
    below = torch.where(index > 0, cumulative.gather(1, (index - 1).clamp(min=0).unsqueeze(1)).squeeze(1), 0)
    return index, below


def _selected_blocks(pretrained: StateDict, finetuned: Sequence[StateDict], keys: list[str], moved: set[str],
                     k: float, vision_only_k: bool) -> Iterator[tuple[str, slice | torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(key, where in the flattened tensor, selected entries s [K, n], elected sign γ [n]) over all moved keys.

    `where` is a slice for ordinary blocks; after them come the exact-cancellation entries, as index tensors, with
    the majority sign filled in. Positions never yielded have s = 0 for every task.
    """
    live = [key for key in keys if key in moved]
    thresholds = _thresholds(pretrained, finetuned, keys, moved, k, vision_only_k).unsqueeze(1)
    balance = 0
    cancelled: dict[str, list[torch.Tensor]] = defaultdict(list)
    for key, where, block in _blocks(pretrained, finetuned, live):
        trimmed = block.mul_(block.abs() >= thresholds)
        gamma = _sum_rows(trimmed).sign_()
        balance += int(gamma.sum())
        undecided = (gamma == 0).nonzero().squeeze(1)
        if undecided.numel():
            cancel = undecided[trimmed[:, undecided].ne(0).any(0)]
            if cancel.numel():
                cancelled[key].append(cancel + where.start)
        yield key, where, trimmed.mul_(gamma).clamp_(min=0).mul_(gamma), gamma

    majority = float((balance > 0) - (balance < 0))
    for key, parts in cancelled.items():
        index = torch.cat(parts)
        base = pretrained[key].reshape(-1)[index]
        trimmed = torch.stack([ft[key].reshape(-1)[index] - base for ft in finetuned])
        trimmed.mul_(trimmed.abs() >= thresholds)
        gamma = torch.full_like(base, majority)
        keep = torch.where(gamma > 0, trimmed > 0, trimmed < 0)
        yield key, index, trimmed * keep, gamma


def _sum_rows(block: torch.Tensor) -> torch.Tensor:
    """Σ_k block[k], left to right in task order."""
    total = block[0].clone()
    for row in block[1:]:
        total.add_(row)
    return total


def _disjoint_merge(selected: torch.Tensor, gamma: torch.Tensor, merge_func: str) -> torch.Tensor:
    if merge_func == "sum":
        return _sum_rows(selected)
    if merge_func == "mean":
        return _sum_rows(selected) / (selected != 0).sum(0).clamp(min=1).float()
    return selected.abs().amax(0).mul_(gamma)
