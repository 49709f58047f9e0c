"""Restricted unpickling: read task_vectors checkpoints without running anything from the file.

task_vectors saved whole modules (`torch.save(image_encoder)`, docs/checkpoints.md): a `src.modeling.ImageEncoder`
holding an open_clip 2.0.2 CLIP, torchvision transforms and the function `open_clip.transform._convert_to_rgb`.
Plain `pickle` would import those classes and call whatever the file names; `torch.load(weights_only=True)` refuses
the file. Here every class or function the file references falls into one of three groups:

- a small allowlist of real objects: torch's tensor/parameter rebuild functions, `OrderedDict`, `set`, `frozenset`,
  torch dtypes, `torch.Size`, `codecs.encode` limited to latin-1 (how protocol-2 pickles store bytes), and, for
  modules saved with plain `pickle.dump` instead of `torch.save`, storages read from their embedded bytes with
  `torch.load(weights_only=True)`;
- names inside the packages a saved module legitimately refers to (`src`, `open_clip`, `torchvision`, `torch.nn`,
  `timm`): these become inert `Placeholder` classes that only record the state they are given, so no code from
  those packages (or from the file) ever runs, and renamed classes (open_clip 2.0.2's `VisualTransformer`) load
  as well as current ones;
- anything else (`os.system`, `subprocess.Popen`, `builtins.eval`, `builtins.getattr`, ...): `RefusedGlobal` is
  raised the moment the name is read, before anything could be called.

Storages of `torch.save` files are resolved by torch's own loader (`torch.load(..., pickle_module=this module)`), so
zip-format and legacy-format files, memory-mapping and map_location all behave as in torch; `load` reads a plain
pickle.

`module_state_dict` then rebuilds a state dict from the placeholders' `_parameters`, `_buffers` and `_modules`,
in registration order, exactly as `nn.Module.state_dict` orders it (AdaMerging pairs coefficients with tensors by
position, docs/methods.md "AdaMerging"), skipping `None` entries and non-persistent buffers.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import pickle
from typing import Any

import numpy as np
import torch

# Packages whose classes and functions a pickled task_vectors module refers to; they load as inert placeholders.
PLACEHOLDER_PACKAGES = ("src", "open_clip", "torchvision", "torch.nn", "timm")



class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a function or class outside the allowlist; nothing was called."""

    def __init__(self, module: str, name: str):
        self.qualified_name = f"{module}.{name}"
        super().__init__(f"the pickle references '{self.qualified_name}', which a checkpoint never needs; "
                         "it was refused and nothing from the file was executed")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"codecs.encode with encoding '{encoding}' refused (only latin1 stores bytes)")
    return codecs.encode(text, "latin1")


def _storage_from_bytes(data: bytes):
    """Storages inside a plain `pickle.dump` of a module are nested legacy torch files; torch's own loader would
    open them with weights_only=False, so they are read with weights_only=True instead."""
    return torch.load(io.BytesIO(data), weights_only=True)


_TENSOR_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch", "Size"): torch.Size,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("_codecs", "encode"): _latin1_encode,
}

# numpy arrays, for data files that are pickles (CIFAR's python batches); object arrays stay restricted because
# their elements are unpickled by this same unpickler.
_NUMPY_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class Placeholder:
    """Stand-in for a class named in a pickle: it stores what the pickle gives it and never runs the real code."""

    pickled_name = "?"
    # torch's legacy loader compares a saved module's source with the class's; this skips its patch mechanism.
    dump_patches = False

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        # Reached when the pickle *calls* the class (enums such as InterpolationMode('bicubic') are pickled so).
        self.__dict__["_call_args"] = args

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state = {**(state[0] or {}), **(state[1] or {})}  # (__dict__, __slots__) state
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self) -> str:
        return f"<placeholder {self.pickled_name}>"


_PLACEHOLDERS: dict[str, type] = {}


def placeholder(module: str, name: str) -> type:
    """The (cached) inert class standing for `module.name`."""
    key = f"{module}.{name}"
    if key not in _PLACEHOLDERS:
        _PLACEHOLDERS[key] = type(name, (Placeholder,), {"pickled_name": key, "__module__": __name__})
    return _PLACEHOLDERS[key]


def is_placeholder(obj: Any, pickled_name: str | None = None) -> bool:
    """True if `obj` is a placeholder instance (of the class named `pickled_name`, when given)."""
    return isinstance(obj, Placeholder) and pickled_name in (None, obj.pickled_name)


def _current_name(module: str, name: str) -> tuple[str, str]:
    """Protocol-2 pickles name Python 3 objects by their Python 2 names (`__builtin__`, `copy_reg`, `commands`...)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _in_placeholder_package(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in PLACEHOLDER_PACKAGES)


class Unpickler(pickle.Unpickler):
    """`pickle.Unpickler` with the allowlist above; `numpy=True` also admits plain numpy arrays."""

    allow_numpy = False

    def find_class(self, module: str, name: str):
        module, name = _current_name(module, name)
        allowed = _TENSOR_GLOBALS.get((module, name))
        if allowed is None and self.allow_numpy:
            allowed = _NUMPY_GLOBALS.get((module, name))
        if allowed is not None:
            return allowed
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if _in_placeholder_package(module):
            return placeholder(module, name)
        raise RefusedGlobal(module, name)


class NumpyUnpickler(Unpickler):
    allow_numpy = True


def load(file, **kwargs):
    """`pickle.load` with the restricted unpickler (torch's loader calls this for the legacy format's header; the
    AdaMerging README's fallback `pickle.load(open(ckpt, 'rb'))` is this, made safe)."""
    return Unpickler(file, **kwargs).load()


def load_data_pickle(file, **kwargs):
    """A pickled data file (dicts, lists, numpy arrays; e.g. CIFAR's batches) under the same restrictions."""
    return NumpyUnpickler(file, **kwargs).load()


def module_state_dict(module: Placeholder) -> dict[str, torch.Tensor]:
    """The state dict `nn.Module.state_dict()` would give for an unpickled module tree, in the same order."""
    out: dict[str, torch.Tensor] = {}
    _collect(module, "", out)
    return out


def _collect(module: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = getattr(module, "__dict__", {})
    if "_parameters" not in state:
        raise pickle.UnpicklingError(f"'{prefix or 'the root object'}' is a {type(module).__name__}, "
                                     "not an nn.Module (it has no _parameters)")
    for name, value in state["_parameters"].items():
        if value is not None:
            out[prefix + name] = value.detach()
    non_persistent = state.get("_non_persistent_buffers_set", set())
    for name, value in state.get("_buffers", {}).items():
        if value is not None and name not in non_persistent:
            out[prefix + name] = value.detach()
    for name, child in state.get("_modules", {}).items():
        if child is not None:
            _collect(child, prefix + name + ".", out)
