"""Zero-shot classification heads from class names and prompt templates (algorithms.md §6.4).

For each class (in label order), every template is filled in, tokenized and encoded by the pretrained text tower;
each embedding is L2-normalised, the embeddings are averaged over templates and normalised again. The stacked
class embeddings, multiplied by exp(logit_scale), are the weights of a `ClassificationHead` that normalises image
features first, so logits = exp(logit_scale)·cos(f, w_c).

Heads are cached on disk, keyed by the model, the text-tower weights, the class names and the templates; a cache
whose key does not match is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from src.files import atomic_write
from src.modeling import ClassificationHead


@torch.no_grad()
def zeroshot_weights(clip_model, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """[num_classes, embed_dim] head weights, already multiplied by exp(logit_scale)."""
    clip_model.eval()
    device = next(clip_model.parameters()).device
    rows = []
    for name in classnames:
        emb = clip_model.encode_text(tokenizer([t.format(name) for t in templates]).to(device))
        emb = emb / emb.norm(dim=-1, keepdim=True)
        emb = emb.mean(dim=0)
        rows.append(emb / emb.norm())
    return torch.stack(rows).float() * clip_model.logit_scale.exp().float()


def build_head(clip_model, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> ClassificationHead:
    return ClassificationHead(normalize=True, weights=zeroshot_weights(clip_model, tokenizer, classnames, templates))


def cache_key(model_name: str, text_tower_id: str, classnames: Sequence[str], templates: Sequence[str]) -> str:
    blob = json.dumps([model_name, text_tower_id, list(classnames), list(templates)])
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_head(path: str | Path, key: str, build: Callable[[], ClassificationHead]) -> ClassificationHead:
    """The head stored at `path` if its key matches, else `build()` it and store it there."""
    path = Path(path)
    if path.exists():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") == key:
                return ClassificationHead(normalize=True, weights=f.get_tensor("weight"))
    head = build()
    with atomic_write(path) as tmp:
        save_file({"weight": head.weight.detach().contiguous()}, str(tmp), metadata={"key": key})
    return head
