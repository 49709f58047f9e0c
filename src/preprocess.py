"""Image preprocessing in two stages, so a test set can be decoded and resized once and stored as 8-bit images.

A *staged* preprocess has
- `to_uint8(image)`: the steps that end in an 8-bit image (RGB conversion, resize, crop), as a uint8 array
  [H, W, 3] (or [H, W] for a one-channel result);
- `finish(block)`: the rest (scaling to [0, 1], normalisation) on a uint8 batch [N, H, W(, 3)], giving float32
  [N, C, H, W];
and calling it on one image is `finish(to_uint8(image)[None])[0]`, bit for bit the same as the library's own
transform. Two exist, one per checkpoint route:

- `TorchvisionStages`: a torchvision `Compose` with a `ToTensor` step (open_clip's eval transform on the
  task_vectors route): the steps before `ToTensor` make the 8-bit image, then ToTensor's /255 and Normalize;
- `CLIPProcessorStages`: transformers' `CLIPImageProcessor` on its PIL backend (the Hugging Face route, as
  FusionBench evaluates): RGB conversion, shortest-side bicubic resize and centre crop on the 8-bit image, then the
  processor's rescale (a float64 product cast to float32) and normalisation in float32.

`staged(preprocess)` returns the staged form of a preprocess, or None for one that cannot be split (its output is
then stored as float32).
"""
from __future__ import annotations

import json
import re
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import Compose, Normalize, ToTensor


class TorchvisionStages:
    """A `Compose` [..., ToTensor(), Normalize(mean, std)?] split at its ToTensor step."""

    def __init__(self, compose: Compose, to_tensor_at: int):
        self.compose = compose
        self.before = Compose(compose.transforms[:to_tensor_at])
        rest = compose.transforms[to_tensor_at + 1:]
        self.normalize = rest[0] if rest else None

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        out = self.before(image)
        if not (isinstance(out, Image.Image) and out.mode in ("L", "RGB")):
            raise TypeError(f"the steps before ToTensor gave {type(out).__name__} {getattr(out, 'mode', '')}, not "
                            "an 8-bit L or RGB image")
        return np.asarray(out, dtype=np.uint8)

    def finish(self, block: torch.Tensor) -> torch.Tensor:
        # ToTensor per image is a float32 division by 255; Normalize is sub_/div_ by [C, 1, 1] mean and std.
        block = block.unsqueeze(-1) if block.ndim == 3 else block
        out = block.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)
        if self.normalize is not None:
            mean = torch.as_tensor(self.normalize.mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.as_tensor(self.normalize.std, dtype=torch.float32).view(-1, 1, 1)
            out = out.sub_(mean).div_(std)
        return out

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.compose(image)

    def __repr__(self) -> str:
        return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(self.compose))


class CLIPProcessorStages:
    """transformers' CLIP image processor (PIL backend) as FusionBench applies it: `image.convert("RGB")`, then the
    processor."""

    def __init__(self, processor):
        if not (processor.do_rescale and processor.do_normalize):
            raise ValueError("the image processor must rescale and normalise (do_rescale and do_normalize)")
        self.processor = processor
        self.scale = float(processor.rescale_factor)
        self.mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(processor.image_std, dtype=torch.float32).view(-1, 1, 1)

    def to_uint8(self, image: Image.Image) -> np.ndarray:
        pixels = self.processor(images=[image.convert("RGB")], do_rescale=False, do_normalize=False)["pixel_values"][0]
        if pixels.dtype != np.uint8:
            raise TypeError(f"the image processor's resize and crop gave {pixels.dtype}, not 8-bit pixels")
        return np.ascontiguousarray(np.moveaxis(pixels, 0, -1))

    def finish(self, block: torch.Tensor) -> torch.Tensor:
        block = block.unsqueeze(-1) if block.ndim == 3 else block
        # transformers' rescale multiplies in float64 and casts to float32; normalize is float32 (x - mean) / std.
        out = block.permute(0, 3, 1, 2).to(torch.float64).mul(self.scale).to(torch.float32)
        return out.sub_(self.mean).div_(self.std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = self.processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
        return pixels[0]

    def __repr__(self) -> str:
        settings = {k: v for k, v in sorted(self.processor.to_dict().items()) if not k.startswith("_")}
        return f"CLIPProcessorStages({json.dumps(settings, sort_keys=True, default=str)})"


def staged(preprocess: Callable):
    """The staged form of `preprocess` (module docstring), or None if it has no 8-bit stage to store."""
    if isinstance(preprocess, (TorchvisionStages, CLIPProcessorStages)):
        return preprocess
    if not isinstance(preprocess, Compose):
        return None
    steps = preprocess.transforms
    for i, step in enumerate(steps):
        if isinstance(step, ToTensor):
            rest = steps[i + 1:]
            if len(rest) <= 1 and all(isinstance(t, Normalize) for t in rest):
                return TorchvisionStages(preprocess, i)
            return None
    return None


def describe(preprocess: Callable) -> str:
    """A stable description of a preprocess (what a cache of its outputs is keyed on): its repr without memory
    addresses."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(preprocess))
