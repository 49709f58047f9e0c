"""Hugging Face CLIP checkpoints, the route FusionBench and OPCM use (docs/hf_route.md).

A checkpoint folder holds `config.json` and `model.safetensors` (or `pytorch_model.bin`). Two kinds occur:

- `CLIPModel` folders (`openai/clip-vit-base-patch32` and the other pretrained CLIPs): `vision_model.*`,
  `text_model.*`, `visual_projection.weight`, `text_projection.weight`, `logit_scale`, plus the tokenizer and
  `preprocessor_config.json`;
- `CLIPVisionModel` folders (the fine-tuned experts `tanganke/clip-vit-base-patch32_<task>`): `vision_model.*`, or,
  when saved by transformers >= 5, the same keys without the `vision_model.` prefix.

On this route the methods work on the vision tower's own tensors, as FusionBench merges them: `vision_state_dict`
returns a `CLIPVisionModel` state dict (transformers >= 5 names, no prefix; q, k and v projections separate; no
projection layer), in the module's own order (the order AdaMerging's coefficient rows follow). The pieces
FusionBench takes from the pretrained `CLIPModel` and never merges are read from that folder: the
`visual_projection` (`VisionEncoder`), the text tower and tokenizer for the zero-shot heads (`text_tower`), and the
image processor (`image_preprocess`).
"""
from __future__ import annotations

import functools
import json
import os
import re
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from src.files import check_zip_archive
from src.preprocess import CLIPProcessorStages
from src.task_vectors import StateDict

# open_clip architecture name -> the name part of the Hugging Face ids (openai/<name>, tanganke/<name>_<task>).
HF_NAMES = {"ViT-B-32": "clip-vit-base-patch32", "ViT-B-16": "clip-vit-base-patch16",
            "ViT-L-14": "clip-vit-large-patch14"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# What a pretrained CLIPModel folder must also hold for the heads and the preprocessing.
TOKENIZER_FILES = ("tokenizer_config.json", "vocab.json", "merges.txt")
PREPROCESSOR_FILE = "preprocessor_config.json"
_PREFIX = "vision_model."
# Keys of a CLIP folder that are not vision-tower parameters (position_ids was a persistent buffer in
# transformers < 4.31).
_NOT_VISION = re.compile(r"^(text_model\..*|text_projection\.weight|visual_projection\.weight|logit_scale|"
                         r"embeddings\.position_ids)$")
_SHOWN = 5


class HFCheckpointError(Exception):
    """A Hugging Face folder could not be used; `src.checkpoints` turns it into a CheckpointError."""


def is_hf_folder(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and any((path / f).is_file() for f in WEIGHT_FILES)


def read_folder(folder: str | os.PathLike) -> tuple[dict, StateDict]:
    """(config, raw state dict) of a Hugging Face model folder; safetensors is memory-mapped."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HFCheckpointError(f"{folder} has no config.json: not a Hugging Face model folder")
    config = json.loads((folder / "config.json").read_text())
    if (folder / "model.safetensors").is_file():
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            return config, {k: f.get_tensor(k) for k in f.keys()}
    if (folder / "pytorch_model.bin").is_file():
        path = folder / "pytorch_model.bin"
        is_zip = zipfile.is_zipfile(path)
        if is_zip:
            try:
                check_zip_archive(path)
            except ValueError as e:
                raise HFCheckpointError(f"{path}: {e}") from None
        return config, torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    sharded = sorted(p.name for p in folder.glob("*.index.json"))
    hint = f" (sharded checkpoints such as {sharded[0]} are not supported; re-save unsharded)" if sharded else ""
    raise HFCheckpointError(f"{folder} has neither {' nor '.join(WEIGHT_FILES)}{hint}")


def vision_config(config: dict, source: str = "config.json"):
    """The `CLIPVisionConfig` of a CLIPModel (its `vision_config`) or CLIPVisionModel config dict."""
    from transformers import CLIPConfig, CLIPVisionConfig
    kind = config.get("model_type")
    if kind == "clip":
        return CLIPConfig(**{k: v for k, v in config.items() if k != "model_type"}).vision_config
    if kind == "clip_vision_model":
        return CLIPVisionConfig(**{k: v for k, v in config.items() if k != "model_type"})
    raise HFCheckpointError(f"{source}: model_type is '{kind}', expected 'clip' or 'clip_vision_model'")


@functools.lru_cache(maxsize=8)
def _tower_shapes(config_json: str) -> dict[str, torch.Size]:
    from transformers import CLIPVisionConfig, CLIPVisionModel
    with torch.device("meta"):
        model = CLIPVisionModel(CLIPVisionConfig.from_dict(json.loads(config_json)))
    return {k: v.shape for k, v in model.state_dict().items()}


def tower_shapes(config) -> dict[str, torch.Size]:
    """Key → shape of a `CLIPVisionModel` state dict with this vision config, in the module's order."""
    return _tower_shapes(config.to_json_string())


def vision_state_dict(folder: str | os.PathLike) -> StateDict:
    """The vision tower of a CLIPModel or CLIPVisionModel folder as a `CLIPVisionModel` state dict (module
    docstring), checked key for key and shape for shape against the folder's own config."""
    config, raw = read_folder(folder)
    expected = tower_shapes(vision_config(config, f"{folder}/config.json"))
    tower = {}
    for key, value in raw.items():
        key = key.removeprefix(_PREFIX)
        if not _NOT_VISION.match(key):
            tower[key] = value
    missing = [k for k in expected if k not in tower]
    unexpected = [k for k in tower if k not in expected]
    wrong = [f"{k} {tuple(tower[k].shape)} (config says {tuple(s)})" for k, s in expected.items()
             if k in tower and tower[k].shape != s]
    if missing or unexpected or wrong:
        problems = [f"{len(v)} {label}: {', '.join(v[:_SHOWN])}" for label, v in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", wrong)) if v]
        raise HFCheckpointError(f"{folder}: not the CLIP vision tower its config.json describes; " +
                                "; ".join(problems))
    return {k: tower[k] for k in expected}


def projection(folder: str | os.PathLike) -> torch.Tensor:
    """`visual_projection.weight` [embed_dim, width] of a pretrained CLIPModel folder."""
    _, raw = read_folder(folder)
    if "visual_projection.weight" not in raw:
        raise HFCheckpointError(f"{folder} has no visual_projection.weight: give the pretrained CLIPModel folder "
                                "(e.g. openai/clip-vit-base-patch32), not a CLIPVisionModel")
    return raw["visual_projection.weight"]


class VisionEncoder(nn.Module):
    """A `CLIPVisionModel` and the pretrained CLIP's `visual_projection`: image features are
    visual_projection(pooler_output), the post-LayerNorm class token projected, unnormalised; the features
    FusionBench's classifier normalises and compares with the text embeddings.

    Merged state dicts are the `CLIPVisionModel`'s (`load_merged`); the projection is never merged.
    """

    def __init__(self, config, projection_weight: torch.Tensor):
        from transformers import CLIPVisionModel
        super().__init__()
        self.vision = CLIPVisionModel(config)
        out_dim, width = projection_weight.shape
        if width != config.hidden_size:
            raise HFCheckpointError(f"visual_projection.weight is {tuple(projection_weight.shape)}, but the vision "
                                    f"tower's width is {config.hidden_size}")
        self.visual_projection = nn.Linear(width, out_dim, bias=False)
        with torch.no_grad():
            self.visual_projection.weight.copy_(projection_weight)

    @classmethod
    def from_folder(cls, pretrained: str | os.PathLike) -> "VisionEncoder":
        """The encoder of a pretrained CLIPModel folder, loaded with its own vision tower."""
        config, _ = read_folder(pretrained)
        encoder = cls(vision_config(config, f"{pretrained}/config.json"), projection(pretrained))
        encoder.load_merged(vision_state_dict(pretrained))
        return encoder

    def parameter_name(self, key: str) -> str:
        """This module's name for the merged state-dict key `key` (every vision-tower tensor reaches the features)."""
        return f"vision.{key}"

    def load_merged(self, state_dict: StateDict) -> None:
        self.vision.load_state_dict(state_dict, strict=True)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_projection(self.vision(pixel_values=pixel_values).pooler_output)


def _require(folder: Path, names: tuple[str, ...], what: str) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise HFCheckpointError(f"{folder} lacks {', '.join(missing)}, needed for {what}; fetch the whole pretrained "
                                "folder with `python -m src.download --route hf --checkpoints-only`")


def has_tokenizer(folder: Path) -> bool:
    """Whether a pretrained folder holds a tokenizer: `tokenizer.json`, or the files a CLIP tokenizer is built from."""
    return (folder / "tokenizer.json").is_file() or all((folder / n).is_file() for n in TOKENIZER_FILES)


def text_tower(pretrained: str | os.PathLike):
    """(CLIPModel, tokenizer) of a pretrained CLIPModel folder, for building zero-shot heads (`src.heads`)."""
    from transformers import AutoTokenizer, CLIPModel
    folder = Path(pretrained)
    _require(folder, ("config.json",), "the text tower")
    if not has_tokenizer(folder):
        _require(folder, TOKENIZER_FILES, "the tokenizer of the zero-shot heads")
    model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)


def image_preprocess(pretrained: str | os.PathLike) -> CLIPProcessorStages:
    """The pretrained folder's CLIP image processor on transformers' PIL backend, the implementation FusionBench's
    published numbers were made with (transformers 4's default "slow" processor)."""
    from transformers import CLIPImageProcessorPil
    folder = Path(pretrained)
    _require(folder, (PREPROCESSOR_FILE,), "the image preprocessing")
    return CLIPProcessorStages(CLIPImageProcessorPil.from_pretrained(folder, local_files_only=True))
