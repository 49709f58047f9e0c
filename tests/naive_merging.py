"""Slow, literal formulations of the reference code (docs/methods.md), the baselines that the streaming
implementations in src/merging are checked against (tests) and timed against (bench/merge.py, bench/adamerging.py).

They hold all K task vectors at once, as the reference does: TIES and Task Arithmetic as one K×d matrix of the
flattened state dicts (keys sorted, as `state_dict_to_vector` does), EMR as K task-vector dicts, AdaMerging as a
fresh module per batch with the merged tensors set as plain attributes.
"""
from __future__ import annotations

import copy

import torch


def _float_keys(state_dict):
    return [k for k, v in state_dict.items() if v.is_floating_point()]


def flatten(state_dict, keys):
    return torch.cat([state_dict[k].reshape(-1) for k in keys])


def unflatten(vector, reference, keys):
    out, offset = dict(reference), 0
    for key in keys:
        n = reference[key].numel()
        out[key] = vector[offset:offset + n].view(reference[key].shape)
        offset += n
    return out


def task_matrix(pretrained, finetuned, keys):
    """The reference's T: the K flattened fine-tuned models stacked, minus the flattened θ₀."""
    return torch.stack([flatten(ft, keys) for ft in finetuned]) - flatten(pretrained, keys)


def naive_task_arithmetic(pretrained, finetuned, scaling_coef=0.3):
    keys = sorted(_float_keys(pretrained))
    merged = flatten(pretrained, keys) + scaling_coef * task_matrix(pretrained, finetuned, keys).sum(0)
    return unflatten(merged, pretrained, keys)


def naive_ties_parts(pretrained, finetuned, k=20, threshold_keys=None):
    """(kth [K, 1], trimmed T̂, elected γ, selected [K, d], sorted keys) exactly as `ties_merging_utils` computes
    them; `threshold_keys`: take the k-th value over those keys' columns only (the vision-only variant)."""
    keys = sorted(_float_keys(pretrained))
    matrix = task_matrix(pretrained, finetuned, keys)
    share = k / 100 if k > 1 else k
    columns = matrix
    if threshold_keys is not None:
        columns = task_matrix(pretrained, finetuned, sorted(threshold_keys))
    d = columns.shape[1]
    kth, _ = columns.abs().kthvalue(d - int(d * share), dim=1, keepdim=True)
    trimmed = matrix * (matrix.abs() >= kth)
    gamma = torch.sign(trimmed.sum(dim=0))
    gamma[gamma == 0] = torch.sign(gamma.sum())
    keep = torch.where(gamma.unsqueeze(0) > 0, trimmed > 0, trimmed < 0)
    return kth, trimmed, gamma, trimmed * keep, keys


def naive_ties(pretrained, finetuned, k=20, scaling_coef=0.3, merge_func="sum", threshold_keys=None):
    _, _, gamma, selected, keys = naive_ties_parts(pretrained, finetuned, k, threshold_keys)
    if merge_func == "sum":
        merged = selected.sum(dim=0)
    elif merge_func == "mean":
        merged = selected.sum(dim=0) / torch.clamp((selected != 0).sum(dim=0).float(), min=1)
    else:
        merged = selected.abs().max(dim=0)[0] * gamma
    return unflatten(flatten(pretrained, keys) + scaling_coef * merged, pretrained, keys)


def naive_emr(pretrained, finetuned):
    """(unified vector, masks {key: [M_1..M_K]}, rescalers) as [EMR] `emr_merge` computes them."""
    keys = _float_keys(pretrained)
    vectors = [{key: ft[key] - pretrained[key] for key in keys} for ft in finetuned]
    mean = {key: torch.stack([v[key] for v in vectors], 0).mean(0) for key in keys}
    unified, masks, scales = {}, {}, torch.zeros(len(finetuned))
    for key in keys:
        flag = (mean[key] > 0) * 2 - 1
        magnitude = torch.zeros_like(pretrained[key])
        masks[key] = []
        for m, vector in enumerate(vectors):
            mask = (vector[key] * flag) > 0
            masks[key].append(mask)
            candidate = torch.abs(mask * vector[key])
            magnitude = torch.where(candidate > magnitude, candidate, magnitude)
            scales[m] += torch.mean(torch.abs(vector[key]))
        unified[key] = magnitude * flag
    new_scales = torch.zeros(len(finetuned))
    for m in range(len(finetuned)):
        for key in keys:
            new_scales[m] += torch.mean(torch.abs(unified[key] * masks[key][m]))
    return unified, masks, scales / new_scales


def naive_emr_task_state_dict(pretrained, unified, masks, rescalers, task):
    return {key: p + unified[key] * masks[key][task] * rescalers[task] if key in unified else p
            for key, p in pretrained.items()}


def naive_merged_module(template, pretrained, task_vectors, lam):
    """A fresh copy of `template` whose floating-point tensors are θ₀ + Σ_k λ_k·τ_k, set as plain attributes so that
    gradients reach λ (the reference's make_functional / load_weights). `lam` is [num_tensors, K] (layer-wise, rows
    in state-dict order) or [K] (task-wise)."""
    model = copy.deepcopy(template)
    for row, name in enumerate(_float_keys(pretrained)):
        row_lam = lam[row] if lam.dim() == 2 else lam
        merged = sum((pretrained[name] * 1.0, *(row_lam[k] * tv[name] for k, tv in enumerate(task_vectors))))
        *path, leaf = name.split(".")
        owner = model
        for part in path:
            owner = getattr(owner, part)
        delattr(owner, leaf)
        setattr(owner, leaf, merged)
    return model


class NaiveAdaMerging:
    """Reference-style layer-wise AdaMerging: λ starts at 0.3, Adam(lr=1e-3); every batch runs a freshly merged
    module (`naive_merged_module`) and one backward of the summed mean entropies updates clamp(λ, 0, 1)'s raw
    parameter."""

    def __init__(self, encoder, pretrained, task_vectors, heads, entropy=None):
        from src.merging.adamerging import entropy_loss
        self.template = encoder.requires_grad_(False)
        self.pretrained, self.task_vectors = pretrained, task_vectors
        self.heads = [h.requires_grad_(False) for h in heads]
        self.entropy = entropy or entropy_loss
        self.raw = torch.full((len(_float_keys(pretrained)), len(task_vectors)), 0.3, requires_grad=True)
        self.optimizer = torch.optim.Adam([self.raw], lr=1e-3, betas=(0.9, 0.999))

    def coefficients(self):
        return self.raw.detach().clamp(0, 1)

    def loss(self, batches_per_task, raw=None):
        lam = (self.raw if raw is None else raw).clamp(0, 1)
        return sum(self.entropy(self.heads[task](naive_merged_module(self.template, self.pretrained,
                                                                     self.task_vectors, lam)(images)))
                   for task, batches in enumerate(batches_per_task) for images in batches)

    def step(self, batches_per_task):
        total = self.loss(batches_per_task)
        self.optimizer.zero_grad()
        total.backward()
        self.optimizer.step()
        return total.item()
