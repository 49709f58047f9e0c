"""The models, under the class names task_vectors checkpoints use (`src.modeling.ImageEncoder`, `ClassificationHead`).

`ImageEncoder` is an open_clip CLIP whose text transformer has been deleted, as in task_vectors: its state dict
keeps the text-side leftovers (`model.token_embedding.weight`, `model.positional_embedding`, `model.ln_final.*`,
`model.text_projection`, `model.logit_scale`) next to `model.visual.*`, which is what real checkpoints hold.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import open_clip
import torch
from torch import nn

from src.demo import MODEL as DEMO_MODEL
from src.task_vectors import OPEN_CLIP_VISION_PREFIX

# OpenAI's CLIP weights use QuickGELU; open_clip 2.0.2 built them that way when task_vectors fine-tuned them.
_QUICK_GELU = {"ViT-B-32", "ViT-B-16", "ViT-L-14", DEMO_MODEL}


def create_clip(model_name: str, pretrained: str | None = None):
    """(CLIP model, train preprocess, val preprocess) for an open_clip architecture name.

    `pretrained` is an open_clip tag (e.g. 'openai', downloaded by open_clip) or a state-dict file; None gives
    random weights, to be overwritten by a checkpoint.
    """
    if model_name == DEMO_MODEL and DEMO_MODEL not in open_clip.list_models():
        # The demo architecture joins open_clip's registry when the demo is first asked for, not at import.
        open_clip.add_model_config(Path(__file__).resolve().parent / "demo" / f"{DEMO_MODEL}.json")
    if model_name not in open_clip.list_models():
        raise ValueError(f"unknown model '{model_name}'; expected one of ViT-B-32, ViT-B-16, ViT-L-14, {DEMO_MODEL}")
    with _quiet_root_logger():
        return open_clip.create_model_and_transforms(model_name, pretrained=pretrained,
                                                     force_quick_gelu=model_name in _QUICK_GELU)


@contextlib.contextmanager
def _quiet_root_logger():
    """open_clip warns through the root logger that no pretrained weights were loaded; here that is the point (a
    checkpoint follows). Silence it for the call only, leaving the caller's logging as it was."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def get_tokenizer(model_name: str):
    """The text tokenizer of a model: open_clip's BPE for real CLIPs, a small word-level one for the demo CLIP."""
    if model_name == DEMO_MODEL:
        from src.demo.tokenizer import DemoTokenizer
        return DemoTokenizer()
    return open_clip.get_tokenizer(model_name)


class ImageEncoder(nn.Module):
    """CLIP image tower plus the text-side leftovers; `forward` returns unnormalised image features."""

    def __init__(self, model_name: str, state_dict: dict[str, torch.Tensor] | None = None, keep_lang: bool = False,
                 pretrained: str | None = None):
        super().__init__()
        self.model_name = model_name
        self.model, self.train_preprocess, self.val_preprocess = create_clip(model_name, pretrained)
        if not keep_lang:
            del self.model.transformer
        if state_dict is not None:
            self.load_state_dict(state_dict, strict=True)

    def parameter_name(self, key: str) -> str | None:
        """This module's name for the merged state-dict key `key`, or None for the text-side leftovers, which never
        reach the image features."""
        return key if key.startswith(OPEN_CLIP_VISION_PREFIX) else None

    def load_merged(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(state_dict, strict=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


class ClassificationHead(nn.Linear):
    """Zero-shot head: L2-normalise the features, then a linear map with weights exp(logit_scale)·W and bias 0."""

    def __init__(self, normalize: bool, weights: torch.Tensor, biases: torch.Tensor | None = None):
        output_size, input_size = weights.shape
        super().__init__(input_size, output_size)
        self.normalize = normalize
        self.weight = nn.Parameter(weights.clone())
        self.bias = nn.Parameter(biases.clone() if biases is not None else torch.zeros(output_size))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            inputs = inputs / inputs.norm(dim=-1, keepdim=True)
        return super().forward(inputs)
