"""Evaluation: top-1 accuracy of an image encoder and a classification head on a test set.

As in the reference (`eval_single_dataset`): unshuffled batches, logits = head(encoder(images)), accuracy =
correct / total over the whole split. Runs on CUDA when present (autocast fp16 there unless `amp=False`, which gives
the reference's fp32), on the CPU otherwise.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def evaluate(encoder: nn.Module, head: nn.Module, dataset: Dataset, *, batch_size: int = 128,
             device: torch.device | str | None = None, amp: bool | None = None, num_workers: int = 0,
             desc: str | None = None) -> float:
    """Top-1 accuracy in percent."""
    device = torch.device(device) if device is not None else default_device()
    amp = device.type == "cuda" if amp is None else amp
    encoder.to(device).eval()
    head.to(device).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        pin_memory=device.type == "cuda")
    correct = total = 0
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=None):
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            logits = head(encoder(images.to(device, non_blocking=True)))
        correct += int((logits.argmax(dim=1).cpu() == labels).sum())
        total += len(labels)
    if total == 0:
        raise ValueError(f"{desc or 'evaluation'}: the test set is empty")
    return 100.0 * correct / total
