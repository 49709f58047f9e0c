"""Checkpoints: load and save state dicts, with errors that name the file and what is wrong.

A state dict here is a `dict[str, torch.Tensor]` in open_clip `ImageEncoder` key naming (`model.visual.*`, plus the
text-side leftovers task_vectors checkpoints carry). Supported on disk:

- plain `torch.save(state_dict)` files (zip or legacy format), loaded with `weights_only=True` and memory-mapped;
- safetensors files, memory-mapped.

Nothing in a checkpoint is ever executed: `torch.load` runs with `weights_only=True`.
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file as _save_safetensors

from src.files import atomic_write

StateDict = dict[str, torch.Tensor]
GETTING_CHECKPOINTS = "README.md, section 'Getting the checkpoints and data'"
_KEYS_SHOWN = 5
# safetensors sorts its keys; state-dict order matters (AdaMerging pairs coefficients with tensors by position),
# so the order is kept in the file's metadata.
_KEY_ORDER = "mergerepro.key_order"


class CheckpointError(Exception):
    """A checkpoint could not be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def load_state_dict(path: str | os.PathLike, *, like: StateDict | None = None, like_name: str = "the pretrained model",
                    check_finite: bool = True) -> StateDict:
    """Read a state dict from `path`.

    `like`: a reference state dict the result must match key for key and shape for shape (the pretrained model when
    loading a fine-tuned one). `check_finite`: reject NaN/Inf weights, which would silently poison every merge.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(path, "file not found")
    if path.is_dir():
        raise CheckpointError(path, "is a folder; expected a checkpoint file (.pt, .pth, .bin or .safetensors)")
    state_dict = _read(path)
    if check_finite:
        for key, value in state_dict.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(path, f"tensor '{key}' contains NaN or Inf values")
    if like is not None:
        check_same_architecture(like, state_dict, reference_name=like_name, path=path)
    return state_dict


def _read(path: Path) -> StateDict:
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) < 8:
        raise CheckpointError(path, f"file is {len(head)} bytes long: empty or truncated")
    if _looks_like_safetensors(head):
        try:
            return _read_safetensors(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(path, f"unreadable safetensors file (truncated or corrupt): {e}") from None
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and not head.startswith(b"\x80"):
        raise CheckpointError(path, "not a checkpoint: neither a torch.save file nor a safetensors file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        raise CheckpointError(path, _explain_unpickling_error(str(e))) from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(path, f"cannot be read (truncated or corrupt torch file): {e}") from None
    return _as_state_dict(path, obj)


def _read_safetensors(path: Path) -> StateDict:
    with safe_open(str(path), framework="pt") as f:
        order = json.loads((f.metadata() or {}).get(_KEY_ORDER, "[]"))
        keys = order if sorted(order) == sorted(f.keys()) else list(f.keys())
        return {k: f.get_tensor(k) for k in keys}


def _looks_like_safetensors(head: bytes) -> bool:
    header_len = int.from_bytes(head[:8], "little")
    return 0 < header_len < (1 << 30) and head[8:9] == b"{"


def _explain_unpickling_error(message: str) -> str:
    if "src.modeling" in message or "open_clip" in message:
        return ("this is a pickled task_vectors module (whole ImageEncoder/ClassificationHead), not a state dict; "
                "this loader reads plain state dicts and safetensors only")
    return f"the pickle references objects a state dict never contains, so it is refused unexecuted: {message}"


def _as_state_dict(path: Path, obj) -> StateDict:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(path, f"not a state dict: entries {bad[:_KEYS_SHOWN]} are not named tensors")
    return dict(obj)


def check_same_architecture(reference: StateDict, state_dict: StateDict, *, reference_name: str,
                            path: str | os.PathLike) -> None:
    """Raise `CheckpointError` listing the first missing, unexpected and shape-mismatched keys, if any."""
    missing = [k for k in reference if k not in state_dict]
    unexpected = [k for k in state_dict if k not in reference]
    mismatched = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(reference[k].shape)}"
                  for k in reference if k in state_dict and state_dict[k].shape != reference[k].shape]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched)):
        if keys:
            more = f" (and {len(keys) - _KEYS_SHOWN} more)" if len(keys) > _KEYS_SHOWN else ""
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:_KEYS_SHOWN])}{more}")
    if problems:
        raise CheckpointError(path, f"architecture differs from {reference_name}: " + "; ".join(problems))


def save_state_dict(state_dict: StateDict, path: str | os.PathLike) -> None:
    """Write a state dict atomically: safetensors for `.safetensors` paths, `torch.save` otherwise."""
    path = Path(path)
    with atomic_write(path) as tmp:
        if path.suffix == ".safetensors":
            _save_safetensors({k: v.contiguous() for k, v in state_dict.items()}, str(tmp),
                              metadata={"format": "pt", _KEY_ORDER: json.dumps(list(state_dict))})
        else:
            torch.save(dict(state_dict), tmp)


@dataclass
class CheckpointSet:
    """Where one backbone's checkpoints live. `family` labels every result row ('task_vectors', 'demo', ...)."""
    model: str
    family: str
    pretrained: Path
    finetuned: dict[str, Path]
    heads: dict[str, Path] = field(default_factory=dict)


def find_checkpoints(root: str | os.PathLike, model: str, tasks: list[str], family: str = "task_vectors"
                     ) -> CheckpointSet:
    """Locate `<root>/<model>/zeroshot.pt`, `<root>/<model>/<Task>/finetuned.pt` and optional `head_<Task>.pt`.

    Raises one CheckpointError listing every missing path, so a user fixes them all in one go.
    """
    base = Path(root) / model
    pretrained = base / "zeroshot.pt"
    finetuned = {t: base / t / "finetuned.pt" for t in tasks}
    missing = [p for p in [pretrained, *finetuned.values()] if not p.exists()]
    if missing:
        listing = "\n  ".join(str(p) for p in missing)
        raise CheckpointError(base, f"{len(missing)} checkpoint file(s) missing:\n  {listing}\n"
                                    f"See {GETTING_CHECKPOINTS} for where to get them.")
    heads = {t: base / f"head_{t}.pt" for t in tasks if (base / f"head_{t}.pt").exists()}
    return CheckpointSet(model, family, pretrained, finetuned, heads)
