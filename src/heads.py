"""Zero-shot classification heads from class names and prompt templates (docs/data.md, "Zero-shot heads").

For each class (in label order), every template is filled in, tokenized and encoded by the pretrained text tower;
each embedding is L2-normalised, the embeddings are averaged over templates and normalised again. The stacked
class embeddings, multiplied by exp(logit_scale), are the weights of a `ClassificationHead` that normalises image
features first, so logits = exp(logit_scale)·cos(f, w_c).

The text tower is open_clip's CLIP on the task_vectors route (`zeroshot_weights`, as task_vectors' heads.py) and
transformers' `CLIPModel` on the Hugging Face route (`hf_zeroshot_weights`, as FusionBench's classifier: the text
model's pooled output through `text_projection`, each class's prompts padded to the longest of them).

Heads are cached on disk, keyed by the model, the text-tower weights, the class names and the templates; a cache
whose key does not match is rebuilt. Jobs running at once that need the same head build it once: the others wait for
it (`src.files.building`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from src.files import atomic_write, building
from src.modeling import ClassificationHead


@torch.no_grad()
def _weights(encode_text: Callable[[list[str]], torch.Tensor], logit_scale: torch.Tensor,
             classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    rows = []
    for name in classnames:
        emb = encode_text([t.format(name) for t in templates])
        emb = emb / emb.norm(dim=-1, keepdim=True)
        emb = emb.mean(dim=0)
        rows.append(emb / emb.norm())
    return torch.stack(rows).float() * logit_scale.exp().float()


def zeroshot_weights(clip_model, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """[num_classes, embed_dim] head weights of an open_clip CLIP, already multiplied by exp(logit_scale)."""
    clip_model.eval()
    device = next(clip_model.parameters()).device
    return _weights(lambda texts: clip_model.encode_text(tokenizer(texts).to(device)), clip_model.logit_scale,
                    classnames, templates)


def hf_zeroshot_weights(clip_model, tokenizer, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """[num_classes, embed_dim] head weights of a transformers `CLIPModel`, already multiplied by exp(logit_scale)."""
    clip_model.eval()
    device = next(clip_model.parameters()).device

    def encode(texts: list[str]) -> torch.Tensor:
        inputs = tokenizer(texts, padding=True, return_tensors="pt").to(device)
        return clip_model.text_projection(clip_model.text_model(**inputs).pooler_output)
    return _weights(encode, clip_model.logit_scale, classnames, templates)


def build_head(clip_model, tokenizer, classnames: Sequence[str], templates: Sequence[str],
               weights: Callable = zeroshot_weights) -> ClassificationHead:
    """A zero-shot head; `weights` is `zeroshot_weights` (open_clip) or `hf_zeroshot_weights` (transformers)."""
    return ClassificationHead(normalize=True, weights=weights(clip_model, tokenizer, classnames, templates))


def cache_key(model_name: str, text_tower_id: str, classnames: Sequence[str], templates: Sequence[str]) -> str:
    blob = json.dumps([model_name, text_tower_id, list(classnames), list(templates)])
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_head(path: str | Path, key: str, build: Callable[[], ClassificationHead]) -> ClassificationHead:
    """The head stored at `path` if its key matches, else `build()` it and store it there."""
    path = Path(path)
    if (head := _stored_head(path, key)) is not None:
        return head
    with building(path):
        if (head := _stored_head(path, key)) is not None:  # built by another job while this one waited
            return head
        head = build()
        with atomic_write(path) as tmp:
            save_file({"weight": head.weight.detach().contiguous()}, str(tmp), metadata={"key": key})
    return head


def _stored_head(path: Path, key: str) -> ClassificationHead | None:
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("key") != key:
            return None
        return ClassificationHead(normalize=True, weights=f.get_tensor("weight"))
