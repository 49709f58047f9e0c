"""Suite: one backbone's checkpoints, tasks, zero-shot heads and test sets, and how to evaluate a model on them.

Every entry script works on a Suite, so the five scripts differ only in their merge call. A Suite loads fine-tuned
checkpoints lazily (memory-mapped), reuses one encoder module for every evaluation, caches zero-shot heads on disk,
and keeps the individual (fine-tuned) accuracies that normalized accuracy needs.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from src import heads as heads_lib
from src import hf_clip
from src.checkpoints import CheckpointSet, StateDict, load_state_dict
from src.datasets import TaskData, get_task
from src.datasets.cache import cached
from src.eval import evaluate
from src.files import CACHE_DIR, display_path, sha256
from src.modeling import ClassificationHead, ImageEncoder, create_clip, get_tokenizer


@dataclass(eq=False)
class Suite:
    checkpoints: CheckpointSet
    tasks: list[str]
    text_tower: str  # open_clip pretrained tag ('openai') or a CLIP state-dict file, for building heads
    data_location: Path | None = None
    batch_size: int = 128
    device: str | None = None
    amp: bool | None = None
    cache_dir: Path = CACHE_DIR
    _finetuned: dict[str, StateDict] = field(default_factory=dict, repr=False)

    @property
    def model(self) -> str:
        return self.checkpoints.model

    @property
    def family(self) -> str:
        return self.checkpoints.family

    @functools.cached_property
    def pretrained(self) -> StateDict:
        return load_state_dict(self.checkpoints.pretrained)

    def finetuned(self, task: str) -> StateDict:
        if task not in self._finetuned:
            self._finetuned[task] = load_state_dict(self.checkpoints.finetuned[task], like=self.pretrained,
                                                    like_name=str(self.checkpoints.pretrained))
        return self._finetuned[task]

    def all_finetuned(self) -> list[StateDict]:
        return [self.finetuned(t) for t in self.tasks]

    def checkpoint_hashes(self) -> dict[str, str]:
        paths = [self.checkpoints.pretrained, *(self.checkpoints.finetuned[t] for t in self.tasks)]
        return {display_path(p): sha256(p) for p in paths}

    @functools.cached_property
    def encoder(self) -> ImageEncoder:
        return ImageEncoder(self.model)

    def task_data(self, task: str) -> TaskData:
        return get_task(task, self.data_location)

    @functools.cache
    def test_set(self, task: str):
        # Real test sets are decoded and resized once, then served from the on-disk cache (src/datasets/cache.py).
        return cached(self.task_data(task).split("test", self.encoder.val_preprocess), self.cache_dir / "datasets")

    @functools.cache
    def head(self, task: str) -> ClassificationHead:
        if task in self.checkpoints.heads:
            from src.checkpoints import load_head
            return load_head(self.checkpoints.heads[task])
        data = self.task_data(task)
        tower_id = sha256(self.text_tower) if Path(self.text_tower).is_file() else self.text_tower
        key = heads_lib.cache_key(self.model, tower_id, data.classnames, data.templates)
        path = self.cache_dir / "heads" / self.model / f"head_{task}.safetensors"
        return heads_lib.cached_head(path, key, lambda: heads_lib.build_head(
            self._text_model, get_tokenizer(self.model), data.classnames, data.templates))

    @functools.cached_property
    def _text_model(self):
        model, _, _ = create_clip(self.model, pretrained=self.text_tower)
        return model

    def load_encoder(self, state_dict: StateDict) -> None:
        """Put a state dict into the shared encoder. HF checkpoints hold the vision tower only; their `proj` comes
        from the pretrained CLIPModel folder, as in FusionBench."""
        if self.family == hf_clip.FAMILY:
            self.encoder.load_vision_state_dict(state_dict, self._hf_projection)
        else:
            self.encoder.load_state_dict(state_dict, strict=True)

    @functools.cached_property
    def _hf_projection(self):
        return hf_clip.projection(self.checkpoints.pretrained)

    def evaluate(self, weights: StateDict | Callable[[str], StateDict], desc: str,
                 tasks: list[str] | None = None) -> dict[str, float]:
        """Accuracy per task (all of the suite's, or `tasks`) of one merged state dict, or of `weights(task)` per
        task (EMR, individual models)."""
        out = {}
        for task in self.tasks if tasks is None else tasks:
            state_dict = weights(task) if callable(weights) else weights
            self.load_encoder(state_dict)
            out[task] = evaluate(self.encoder, self.head(task), self.test_set(task), batch_size=self.batch_size,
                                 device=self.device, amp=self.amp, desc=f"{desc} {task}")
        return out

    def zeroshot_accuracies(self) -> dict[str, float]:
        return self.evaluate(self.pretrained, "zero-shot")

    def individual_accuracies(self) -> dict[str, float]:
        return self.evaluate(self.finetuned, "individual")

