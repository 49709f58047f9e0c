"""Hugging Face CLIP checkpoints (FusionBench / OPCM) as open_clip ImageEncoder state dicts (algorithms.md §6.6).

A checkpoint folder holds `config.json` and `model.safetensors` (or `pytorch_model.bin`). Two kinds occur:

- `CLIPModel` folders (`openai/clip-vit-base-patch32` and the other pretrained CLIPs): `vision_model.*`,
  `text_model.*`, `visual_projection.weight`, `text_projection.weight`, `logit_scale`;
- `CLIPVisionModel` folders (the fine-tuned experts `tanganke/clip-vit-base-patch32_<task>`): `vision_model.*`,
  or, when saved by transformers >= 5, the same keys without the `vision_model.` prefix.

`vision_state_dict` maps the vision tower to open_clip names under `model.visual.`:
q/k/v projections are concatenated (in that order, along dim 0) into `attn.in_proj_weight` / `in_proj_bias`;
`self_attn.out_proj` → `attn.out_proj`, `mlp.fc1`/`fc2` → `mlp.c_fc`/`c_proj`, `layer_norm1`/`2` → `ln_1`/`ln_2`,
`embeddings.patch_embedding` → `conv1`, `embeddings.class_embedding` → `class_embedding`,
`embeddings.position_embedding.weight` → `positional_embedding`, `pre_layrnorm` → `ln_pre`,
`post_layernorm` → `ln_post`.

A `CLIPVisionModel` has no projection, so the result has no `model.visual.proj` either: merging sees exactly the
parameters FusionBench merges (no zero task-vector entries from a shared projection, which would change TIES' top-k
count). `projection` reads `proj` = `visual_projection.weight`ᵀ from the pretrained `CLIPModel` folder, as
FusionBench's taskpool does; `ImageEncoder.load_vision_state_dict` puts the two together for evaluation.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open

StateDict = dict[str, torch.Tensor]
FAMILY = "fusionbench_hf"
# open_clip architecture name -> the name part of the Hugging Face ids (openai/<name>, tanganke/<name>_<task>).
HF_NAMES = {"ViT-B-32": "clip-vit-base-patch32", "ViT-B-16": "clip-vit-base-patch16",
            "ViT-L-14": "clip-vit-large-patch14"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_BLOCK = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_BLOCK_RENAMES = {
    "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}
_TOP_RENAMES = {
    "embeddings.class_embedding": "class_embedding",
    "embeddings.position_embedding.weight": "positional_embedding",
    "embeddings.patch_embedding.weight": "conv1.weight",
    "pre_layrnorm.weight": "ln_pre.weight", "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight", "post_layernorm.bias": "ln_post.bias",
}
# The order open_clip's ImageEncoder.state_dict() lists a block's tensors in (open_clip >= 2.7 registers ln_1 first).
_BLOCK_ORDER = ["ln_1.weight", "ln_1.bias", "attn.in_proj_weight", "attn.in_proj_bias", "attn.out_proj.weight",
                "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                "mlp.c_proj.weight", "mlp.c_proj.bias"]
# Keys a CLIP folder may hold that are not vision-tower parameters (position_ids was a persistent buffer in
# transformers < 4.31).
_IGNORED = re.compile(r"^(text_model\..*|text_projection\.weight|visual_projection\.weight|logit_scale|"
                      r"embeddings\.position_ids)$")


class HFCheckpointError(Exception):
    """A Hugging Face folder could not be mapped; `src.checkpoints` turns it into a CheckpointError."""


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
        return config, torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    sharded = sorted(p.name for p in folder.glob("*.index.json"))
    hint = f" (sharded checkpoints such as {sharded[0]} are not supported; re-save unsharded)" if sharded else ""
    raise HFCheckpointError(f"{folder} has neither {' nor '.join(WEIGHT_FILES)}{hint}")


def _vision_config(config: dict) -> dict:
    return config.get("vision_config", config) if config.get("model_type") == "clip" else config


def vision_state_dict(folder: str | os.PathLike) -> StateDict:
    """The vision tower of a CLIPModel or CLIPVisionModel folder in open_clip ImageEncoder naming, without `proj`."""
    config, raw = read_folder(folder)
    vision = _vision_config(config)
    act = vision.get("hidden_act", "quick_gelu")
    if act != "quick_gelu":
        raise HFCheckpointError(f"{folder}: hidden_act is '{act}'; the open_clip OpenAI ViTs use quick_gelu, so the "
                                "mapped encoder would not compute the same features")
    return hf_to_open_clip(raw, source=str(folder))


def hf_to_open_clip(raw: StateDict, source: str = "the state dict") -> StateDict:
    """Rename and fuse a Hugging Face CLIP vision state dict (either key naming) into open_clip keys (no `proj`)."""
    tower = {}
    for key, value in raw.items():
        key = key.removeprefix("vision_model.")
        if not _IGNORED.match(key):
            tower[key] = value
    top, blocks, unknown = {}, {}, []
    for key, value in tower.items():
        if key in _TOP_RENAMES:
            top[_TOP_RENAMES[key]] = value
        elif (m := _BLOCK.fullmatch(key)) is not None:
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = value
        else:
            unknown.append(key)
    if unknown:
        raise HFCheckpointError(f"{source}: keys that are not part of a CLIP vision tower: {unknown[:5]}")
    missing_top = [k for k in _TOP_RENAMES if _TOP_RENAMES[k] not in top]
    if missing_top or not blocks:
        raise HFCheckpointError(f"{source}: not a CLIP vision model (missing {missing_top or 'encoder.layers.*'})")
    if sorted(blocks) != list(range(len(blocks))):
        raise HFCheckpointError(f"{source}: encoder layers are not numbered 0..{len(blocks) - 1}: {sorted(blocks)}")

    out = {"model.visual.class_embedding": top["class_embedding"],
           "model.visual.positional_embedding": top["positional_embedding"],
           "model.visual.conv1.weight": top["conv1.weight"],
           "model.visual.ln_pre.weight": top["ln_pre.weight"], "model.visual.ln_pre.bias": top["ln_pre.bias"]}
    for i in range(len(blocks)):
        block = _map_block(blocks[i], f"{source}: encoder.layers.{i}")
        prefix = f"model.visual.transformer.resblocks.{i}."
        out.update({prefix + name: block[name] for name in _BLOCK_ORDER})
    out["model.visual.ln_post.weight"] = top["ln_post.weight"]
    out["model.visual.ln_post.bias"] = top["ln_post.bias"]
    return out


def _map_block(block: StateDict, where: str) -> StateDict:
    expected = {f"self_attn.{p}_proj.{t}" for p in "qkv" for t in ("weight", "bias")} | set(_BLOCK_RENAMES)
    missing, unexpected = sorted(expected - set(block)), sorted(set(block) - expected)
    if missing or unexpected:
        raise HFCheckpointError(f"{where}: missing {missing}, unexpected {unexpected}")
    out = {new: block[old] for old, new in _BLOCK_RENAMES.items()}
    for t in ("weight", "bias"):
        out[f"attn.in_proj_{t}"] = torch.cat([block[f"self_attn.{p}_proj.{t}"] for p in "qkv"], dim=0)
    return out


def projection(folder: str | os.PathLike) -> torch.Tensor:
    """open_clip's `visual.proj` (width × embed_dim): `visual_projection.weight`ᵀ of a pretrained CLIPModel
    folder."""
    _, raw = read_folder(folder)
    if "visual_projection.weight" not in raw:
        raise HFCheckpointError(f"{folder} has no visual_projection.weight: give the pretrained CLIPModel folder "
                                "(e.g. openai/clip-vit-base-patch32), not a CLIPVisionModel")
    return raw["visual_projection.weight"].t().contiguous()
