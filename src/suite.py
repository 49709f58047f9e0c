"""Suite: one backbone's checkpoints, tasks, zero-shot heads and test sets, and how to evaluate a model on them.

Every entry script works on a Suite, so the five scripts differ only in their merge call. A Suite loads fine-tuned
checkpoints lazily (memory-mapped), reuses one encoder module for every evaluation, caches zero-shot heads on disk,
and owns the zero-shot and individual accuracies every result is read beside (`baseline`), kept in
`<results>/<name>/baselines.csv` when it has a results folder (`src/baselines.py`).

The checkpoint route decides the rest (`make_suite` picks the class from the checkpoint family):
- `OpenClipSuite` (task_vectors checkpoints and the demo): open_clip `ImageEncoder` state dicts, open_clip's eval
  transform, heads from open_clip's text tower (or task_vectors' own `head_<Task>.pt`), datasets from folders;
- `HFSuite` (FusionBench's Hugging Face checkpoints): `CLIPVisionModel` state dicts, the pretrained CLIP's image
  processor, visual projection, text tower and tokenizer, as FusionBench evaluates; datasets from Hugging Face.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from src import heads as heads_lib
from src import hf_clip
from src.baselines import Baselines
from src.checkpoints import CheckpointSet, load_head, load_state_dict
from src.datasets import TaskData, get_task, known_tasks
from src.datasets.cache import cached
from src.eval import default_device, evaluate
from src.families import DEMO_FAMILY, HF_FAMILY, TASK_VECTORS_FAMILY
from src.files import CACHE_DIR, display_path, sha256
from src.modeling import ClassificationHead, ImageEncoder, create_clip, get_tokenizer
from src.task_vectors import StateDict, require_finite


@dataclass(eq=False)
class Suite:
    checkpoints: CheckpointSet
    tasks: list[str]
    data_location: Path | None = None
    batch_size: int = 128
    device: str | None = None
    amp: bool | None = None
    cache_dir: Path = CACHE_DIR
    results: Path | None = None  # where the baseline rows are kept (results/<name>/baselines.csv); None: nowhere
    reevaluate_baselines: bool = False
    _finetuned: dict[str, StateDict] = field(default_factory=dict, repr=False)

    data_source = "folders"

    @property
    def model(self) -> str:
        return self.checkpoints.model

    @property
    def family(self) -> str:
        return self.checkpoints.family

    @property
    def name(self) -> str:
        """The suite's folder name under results/: the model, suffixed with the family of any checkpoints but
        task_vectors' and the demo's (the Hugging Face route's numbers differ for the same model)."""
        plain = self.family in (TASK_VECTORS_FAMILY, DEMO_FAMILY)
        return self.model if plain else f"{self.model}_{self.family}"

    @property
    def uses_amp(self) -> bool:
        """Whether evaluation runs under fp16 autocast: `amp` when set, else on CUDA only."""
        return torch.device(self.device or default_device()).type == "cuda" if self.amp is None else self.amp

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

    def new_encoder(self) -> nn.Module:
        """A fresh image encoder holding θ₀, with `load_merged(state_dict)` and `parameter_name(key)`."""
        raise NotImplementedError

    @functools.cached_property
    def encoder(self) -> nn.Module:
        return self.new_encoder()

    @property
    def preprocess(self) -> Callable:
        raise NotImplementedError

    def task_data(self, task: str) -> TaskData:
        return get_task(task, self.data_location, source=self.data_source)

    @functools.cache
    def test_set(self, task: str):
        # Real test sets are decoded and resized once, then served from the on-disk cache (src/datasets/cache.py).
        return cached(self.task_data(task).split("test", self.preprocess), self.cache_dir / "datasets")

    def _cached_head(self, task: str, tower_id: str, build: Callable[[TaskData], torch.Tensor]) -> ClassificationHead:
        data = self.task_data(task)
        key = heads_lib.cache_key(self.model, tower_id, data.classnames, data.templates)
        path = self.cache_dir / "heads" / f"{self.model}-{self.data_source}" / f"head_{task}.safetensors"
        return heads_lib.cached_head(path, key, lambda: ClassificationHead(normalize=True, weights=build(data)))

    def head(self, task: str) -> ClassificationHead:
        raise NotImplementedError

    def load_encoder(self, state_dict: StateDict) -> None:
        self.encoder.load_merged(state_dict)

    def evaluate(self, weights: StateDict | Callable[[str], StateDict], desc: str,
                 tasks: list[str] | None = None) -> dict[str, float]:
        """Accuracy per task (all of the suite's, or `tasks`) of one merged state dict, or of `weights(task)` per
        task (EMR, individual models)."""
        out = {}
        for task in self.tasks if tasks is None else tasks:
            state_dict = weights(task) if callable(weights) else weights
            require_finite(state_dict, f"{desc} {task}")
            self.load_encoder(state_dict)
            out[task] = evaluate(self.encoder, self.head(task), self.test_set(task), batch_size=self.batch_size,
                                 device=self.device, amp=self.amp, desc=f"{desc} {task}")
        return out

    def zeroshot_accuracies(self, tasks: list[str] | None = None) -> dict[str, float]:
        return self.evaluate(self.pretrained, "zero-shot", tasks)

    def individual_accuracies(self, tasks: list[str] | None = None) -> dict[str, float]:
        return self.evaluate(self.finetuned, "individual", tasks)

    def baseline(self, kind: str) -> dict[str, float]:
        """The 'zeroshot' or 'individual' accuracy of every task, evaluated once per checkpoint file: read from the
        baseline store when it has them, else evaluated (and stored when the suite has a results folder)."""
        return self._baselines.accuracies(kind)

    @functools.cached_property
    def _baselines(self) -> Baselines:
        return Baselines(self, None if self.results is None else Path(self.results) / self.name,
                         self.reevaluate_baselines)


@dataclass(eq=False)
class OpenClipSuite(Suite):
    # open_clip pretrained tag ('openai') or a CLIP state-dict file, for building heads
    text_tower: str = "openai"

    @property
    def data_source(self) -> str:
        # The demo tasks are generated, never read from files, whichever checkpoints are evaluated on them.
        return "demo" if set(self.tasks) <= set(known_tasks("demo")) else "folders"

    def new_encoder(self) -> ImageEncoder:
        encoder = ImageEncoder(self.model)
        encoder.load_merged(self.pretrained)
        return encoder

    @property
    def preprocess(self) -> Callable:
        return self.encoder.val_preprocess

    @functools.cache
    def head(self, task: str) -> ClassificationHead:
        if task in self.checkpoints.heads:
            return load_head(self.checkpoints.heads[task])
        tower_id = sha256(self.text_tower) if Path(self.text_tower).is_file() else self.text_tower
        return self._cached_head(task, tower_id, lambda data: heads_lib.zeroshot_weights(
            self._text_model, get_tokenizer(self.model), data.classnames, data.templates))

    @functools.cached_property
    def _text_model(self):
        try:
            model, _, _ = create_clip(self.model, pretrained=self.text_tower)
        except RuntimeError as e:
            if Path(self.text_tower).is_file():
                raise
            raise RuntimeError(
                f"the zero-shot heads need the text tower of open_clip's '{self.text_tower}' {self.model} weights, "
                f"which are not in the Hugging Face cache and could not be fetched ({str(e).splitlines()[0]}). Run "
                "once with internet access (open_clip keeps them in the cache), or put task_vectors' "
                "head_<Task>.pt files beside the checkpoints (README, 'Getting the checkpoints and data')") from None
        return model


@dataclass(eq=False)
class HFSuite(Suite):
    data_source = "hf"

    def new_encoder(self) -> hf_clip.VisionEncoder:
        return hf_clip.VisionEncoder.from_folder(self.checkpoints.pretrained)

    @functools.cached_property
    def preprocess(self) -> Callable:
        return hf_clip.image_preprocess(self.checkpoints.pretrained)

    @functools.cache
    def head(self, task: str) -> ClassificationHead:
        return self._cached_head(task, sha256(self.checkpoints.pretrained), lambda data: heads_lib.hf_zeroshot_weights(
            *self._text_tower, data.classnames, data.templates))

    @functools.cached_property
    def _text_tower(self):
        return hf_clip.text_tower(self.checkpoints.pretrained)


def make_suite(checkpoints: CheckpointSet, tasks: list[str], **kwargs) -> Suite:
    """The Suite for a checkpoint set's route: `HFSuite` for FusionBench's Hugging Face checkpoints, else
    `OpenClipSuite` (`text_tower` is only meaningful there)."""
    if checkpoints.family == HF_FAMILY:
        kwargs.pop("text_tower", None)
        return HFSuite(checkpoints, tasks, **kwargs)
    return OpenClipSuite(checkpoints, tasks, **kwargs)
