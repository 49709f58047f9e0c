"""Checkpoints: find, load, convert and save them, with errors that name the file and what is wrong.

A state dict here is a `dict[str, torch.Tensor]` in open_clip `ImageEncoder` key naming (`model.visual.*`, plus the
text-side leftovers task_vectors checkpoints carry). `load_state_dict` recognises every format on disk:

- plain `torch.save(state_dict)` files (zip or legacy format), read with `weights_only=True`, memory-mapped;
- safetensors files, memory-mapped (key order kept in the metadata);
- task_vectors checkpoints, i.e. whole pickled `src.modeling.ImageEncoder` / `ClassificationHead` modules
  (torch 1.12, open_clip 2.0.2; `torch.save` zip or legacy format, or a plain `pickle.dump`): read with the
  restricted unpickler of `src.unpickler`, which never imports or calls anything the file names; a file that
  references anything else (`os.system`, ...) is refused unexecuted;
- Hugging Face `CLIPModel` / `CLIPVisionModel` folders (`src.hf_clip`): the vision tower, in open_clip names.

`python -m src.checkpoints convert DIR` writes a safetensors file beside every pickle under DIR (`finetuned.pt` ->
`finetuned.safetensors`, recording the pickle's sha256) and a `SHA256SUMS` file; later loads of the pickle's path
read the safetensors file instead, as long as the recorded sha256 still matches the pickle (or the pickle is gone).

Checkpoint families: `task_vectors` (the open_clip checkpoints of Ilharco et al., used by the AdaMerging and
EMR-Merging papers) and `fusionbench_hf` (the Hugging Face models FusionBench and OPCM fine-tuned themselves). They
are different fine-tuning runs; `find_checkpoints` detects which layout a folder holds and labels the set.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file as _save_safetensors

from src import hf_clip, unpickler
from src.files import atomic_write, check_zip_archive, sha256, write_text
from src.families import HF_FAMILY, TASK_VECTORS_FAMILY
from src.task_vectors import StateDict
GETTING_CHECKPOINTS = "README.md, section 'Getting the checkpoints and data'"
# Our task names -> FusionBench's (the suffix of tanganke/clip-vit-*_<task>), docs/data.md.
FUSIONBENCH_TASKS = {
    "SUN397": "sun397", "Cars": "stanford-cars", "RESISC45": "resisc45", "EuroSAT": "eurosat", "SVHN": "svhn",
    "GTSRB": "gtsrb", "MNIST": "mnist", "DTD": "dtd", "Flowers102": "oxford_flowers102", "PCAM": "pcam",
    "FER2013": "fer2013", "OxfordIIITPet": "oxford-iiit-pet", "STL10": "stl10", "CIFAR100": "cifar100",
    "CIFAR10": "cifar10", "Food101": "food101", "FashionMNIST": "fashion_mnist", "EMNIST": "emnist_letters",
    "KMNIST": "kmnist", "RenderedSST2": "rendered-sst2",
}
_KEYS_SHOWN = 5
# safetensors sorts its keys; state-dict order matters (AdaMerging pairs coefficients with tensors by position),
# so the order is kept in the file's metadata.
_KEY_ORDER = "mergerepro.key_order"
_SOURCE_SHA256 = "mergerepro.source_sha256"
_NORMALIZE = "mergerepro.normalize"
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# torch.save's legacy (non-zip) format starts with this number, pickled; a plain pickle does not.
_TORCH_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_HEAD = "src.modeling.ClassificationHead"


class CheckpointError(Exception):
    """A checkpoint could not be used; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def load_state_dict(path: str | os.PathLike, *, like: StateDict | None = None, like_name: str = "the pretrained model",
                    check_finite: bool = True) -> StateDict:
    """Read a state dict from a file or Hugging Face folder at `path` (any format listed in the module docstring).

    `like`: a reference state dict the result must match key for key and shape for shape (the pretrained model when
    loading a fine-tuned one). `check_finite`: reject NaN/Inf weights, which would silently poison every merge.
    """
    path = Path(path)
    if path.is_dir():
        state_dict = _read_hf(path)
    else:
        state_dict = _as_state_dict(path, _read(resolve(path)))
    if check_finite:
        for key, value in state_dict.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(path, f"tensor '{key}' contains NaN or Inf values")
    if like is not None:
        check_same_architecture(like, state_dict, reference_name=like_name, path=path)
    return state_dict


def resolve(path: str | os.PathLike) -> Path:
    """The file to read for `path`: its converted safetensors sibling when that is current, else `path` itself;
    checked against the `SHA256SUMS` file `convert` wrote, when one above it lists it."""
    path = Path(path)
    sibling = converted_path(path)
    if sibling is None or not sibling.exists():
        if not path.exists():
            raise CheckpointError(path, "file not found")
        return verify_listed_sha256(path)
    if not path.exists():
        return verify_listed_sha256(sibling)
    recorded = _metadata(sibling).get(_SOURCE_SHA256)
    if recorded == sha256(path):
        return verify_listed_sha256(sibling)
    verify_listed_sha256(path)
    warnings.warn(f"{sibling} was converted from another version of {path.name} (sha256 differs); reading "
                  f"{path} instead. Run `python -m src.checkpoints convert {path.parent}` to refresh it.", stacklevel=3)
    return path


def verify_listed_sha256(path: Path, levels: int = 3) -> Path:
    """`path`, after comparing its sha256 with the entry of the nearest `SHA256SUMS` (in its folder or up to
    `levels` folders above) that lists it; a file no such list names is returned unchecked."""
    folder = path.resolve().parent
    for _ in range(levels + 1):
        listing = folder / "SHA256SUMS"
        if listing.is_file():
            name = path.resolve().relative_to(folder).as_posix()
            for line in listing.read_text(errors="replace").splitlines():
                digest, _, listed = line.partition("  ")
                if listed.strip() == name:
                    if sha256(path) != digest.strip():
                        raise CheckpointError(path, f"sha256 differs from the one {listing} records: the file "
                                                    "changed or is corrupt since it was converted; download it "
                                                    "again, or rerun `python -m src.checkpoints convert` if the "
                                                    "change is intended")
                    return path
        folder = folder.parent
    return path


def converted_path(path: Path) -> Path | None:
    return path.with_suffix(".safetensors") if path.suffix in _PICKLE_SUFFIXES else None


def _read_hf(path: Path) -> StateDict:
    try:
        return check_tensors(path, hf_clip.vision_state_dict(path))
    except hf_clip.HFCheckpointError as e:
        raise CheckpointError(path, str(e)) from None
    except (SafetensorError, OSError, RuntimeError, ValueError, pickle.UnpicklingError) as e:
        raise CheckpointError(path, f"Hugging Face weights unreadable (truncated or corrupt): {e}") from None


def _read(path: Path):
    """The object stored in a checkpoint file: a dict of tensors or an unpickled (placeholder) module tree."""
    if path.is_dir():
        raise CheckpointError(path, "is a folder without config.json; expected a checkpoint file or a Hugging Face "
                                    "model folder")
    with open(path, "rb") as f:
        head = f.read(32)
    if len(head) < 8:
        raise CheckpointError(path, f"file is {len(head)} bytes long: empty or truncated")
    if _looks_like_safetensors(head):
        try:
            return _read_safetensors(path)
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(path, f"unreadable safetensors file (truncated or corrupt): {e}") from None
    is_zip = head.startswith(b"PK\x03\x04")
    if not is_zip and not head.startswith(b"\x80"):
        raise CheckpointError(path, "not a checkpoint: neither a torch.save file nor a safetensors file")
    if is_zip:
        try:
            check_zip_archive(path)
        except ValueError as e:
            raise CheckpointError(path, str(e)) from None
    try:
        if not is_zip and _TORCH_LEGACY_MAGIC not in head:
            # A plain `pickle.dump` of a module, which the AdaMerging README says some checkpoints need.
            with open(path, "rb") as f:
                return unpickler.load(f)
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
        except pickle.UnpicklingError:
            # Not a plain state dict (task_vectors pickles name their module classes): the restricted unpickler
            # reads what weights_only refuses, still without running anything.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # legacy files warn that module sources changed; they are unused
                return torch.load(path, map_location="cpu", weights_only=False, mmap=is_zip,
                                  pickle_module=unpickler)
    except unpickler.RefusedGlobal as e:
        raise CheckpointError(path, str(e)) from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(path, f"the pickle cannot be read safely: {e}") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, AttributeError, TypeError) as e:
        raise CheckpointError(path, f"cannot be read (truncated or corrupt torch file): {e}") from None


def _read_safetensors(path: Path) -> StateDict:
    with safe_open(str(path), framework="pt") as f:
        order = json.loads((f.metadata() or {}).get(_KEY_ORDER, "[]"))
        keys = order if sorted(order) == sorted(f.keys()) else list(f.keys())
        return {k: f.get_tensor(k) for k in keys}


def _metadata(path: Path) -> dict:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return {}


def _looks_like_safetensors(head: bytes) -> bool:
    header_len = int.from_bytes(head[:8], "little")
    return 0 < header_len < (1 << 30) and head[8:9] == b"{"


def _as_state_dict(path: Path, obj) -> StateDict:
    if unpickler.is_placeholder(obj):
        try:
            return unpickler.module_state_dict(obj)
        except pickle.UnpicklingError as e:
            raise CheckpointError(path, f"holds a pickled {obj.pickled_name} that is not a module: {e}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(path, f"holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(path, f"not a state dict: entries {bad[:_KEYS_SHOWN]} are not named tensors")
    return check_tensors(path, dict(obj))


def check_tensors(path: str | os.PathLike, state_dict: StateDict) -> StateDict:
    """`state_dict`, unless it is empty or a tensor claims more elements than its storage holds: a broadcast view
    (`torch.zeros(1).expand(20000, 20000)` is 1.6 kB on disk) would become gigabytes at the first computation on it,
    and saved weights never are such views."""
    if not state_dict:
        raise CheckpointError(path, "holds no tensors (an empty state dict)")
    for key, value in state_dict.items():
        if value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise CheckpointError(path, f"tensor '{key}' of shape {tuple(value.shape)} is a view over "
                                        f"{value.untyped_storage().nbytes()} bytes of storage (strides "
                                        f"{value.stride()}); saved weights are never such views, so it is refused")
    return state_dict


def load_head(path: str | os.PathLike):
    """A `ClassificationHead` from a pickled task_vectors head (`head_<Dataset>.pt`), a `{weight, bias}` state dict
    (torch or safetensors) or a converted head; heads without a recorded `normalize` flag normalise (all
    task_vectors heads do)."""
    from src.modeling import ClassificationHead

    path = Path(path)
    source = resolve(path)
    obj = _read(source)
    normalize = True
    if unpickler.is_placeholder(obj):
        if obj.pickled_name != _HEAD:
            raise CheckpointError(path, f"holds a pickled {obj.pickled_name}, not a {_HEAD}")
        normalize = bool(obj.__dict__.get("normalize", True))
    elif source.suffix == ".safetensors":
        normalize = _metadata(source).get(_NORMALIZE, "true") == "true"
    state_dict = _as_state_dict(path, obj)
    weight, bias = state_dict.get("weight"), state_dict.get("bias")
    if weight is None or weight.ndim != 2 or set(state_dict) - {"weight", "bias"}:
        raise CheckpointError(path, f"not a classification head: expected 'weight' [classes, dim] and 'bias', "
                                    f"found {sorted(state_dict)[:_KEYS_SHOWN]}")
    if bias is not None and bias.shape != weight.shape[:1]:
        raise CheckpointError(path, f"head bias has shape {tuple(bias.shape)}, weight {tuple(weight.shape)}")
    return ClassificationHead(normalize=normalize, weights=weight, biases=bias)


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


def save_state_dict(state_dict: StateDict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Write a state dict atomically: safetensors for `.safetensors` paths (with `metadata`), `torch.save`
    otherwise."""
    path = Path(path)
    with atomic_write(path) as tmp:
        if path.suffix == ".safetensors":
            meta = {"format": "pt", _KEY_ORDER: json.dumps(list(state_dict)), **(metadata or {})}
            _save_safetensors({k: v.contiguous() for k, v in state_dict.items()}, str(tmp), metadata=meta)
        else:
            # torch.save names the zip archive inside after a path's stem, here a random temporary name; through a
            # file object it is always "archive", so the same tensors give the same bytes (and sha256) every time.
            with open(tmp, "wb") as f:
                torch.save(dict(state_dict), f)


def convert(path: str | os.PathLike, log=print) -> Path:
    """Write `<stem>.safetensors` beside the pickle `path` (skipped when already current) and return its path."""
    path = Path(path)
    target = converted_path(path)
    if target is None:
        raise CheckpointError(path, f"not a pickle checkpoint (expected one of {', '.join(_PICKLE_SUFFIXES)})")
    digest = sha256(path)
    if target.exists() and _metadata(target).get(_SOURCE_SHA256) == digest:
        log(f"up to date  {target}")
        return target
    obj = _read(path)
    meta = {_SOURCE_SHA256: digest, "mergerepro.source": path.name}
    if unpickler.is_placeholder(obj, _HEAD):
        meta[_NORMALIZE] = "true" if obj.__dict__.get("normalize", True) else "false"
    save_state_dict(_as_state_dict(path, obj), target, metadata=meta)
    log(f"converted   {path} -> {target.name}")
    return target


def convert_folder(folder: str | os.PathLike, log=print) -> list[Path]:
    """`convert` every pickle under `folder`, then write `folder/SHA256SUMS` (sha256sum format) for all of them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(folder, "not a folder")
    pickles = sorted(p for p in folder.rglob("*") if p.suffix in _PICKLE_SUFFIXES and p.is_file()
                     and not hf_clip.is_hf_folder(p.parent))
    if not pickles:
        raise CheckpointError(folder, f"no pickle checkpoints ({', '.join(_PICKLE_SUFFIXES)}) found below it")
    converted = [convert(p, log=log) for p in pickles]
    lines = [f"{sha256(p)}  {p.relative_to(folder).as_posix()}" for p in sorted(pickles + converted)]
    write_text(folder / "SHA256SUMS", "\n".join(lines) + "\n")
    log(f"wrote {folder / 'SHA256SUMS'} ({len(lines)} files)")
    return converted


@dataclass
class CheckpointSet:
    """Where one backbone's checkpoints live. `family` labels every result row ('task_vectors', 'fusionbench_hf',
    'demo', ...). For `fusionbench_hf`, `pretrained` is the CLIPModel folder that also gives the projection
    (`src.hf_clip.projection`), and the state dicts hold only the vision tower."""
    model: str
    family: str
    pretrained: Path
    finetuned: dict[str, Path]
    heads: dict[str, Path] = field(default_factory=dict)


def find_checkpoints(root: str | os.PathLike, model: str, tasks: list[str], family: str | None = None,
                     prefer: str = TASK_VECTORS_FAMILY) -> CheckpointSet:
    """Locate one backbone's pretrained and fine-tuned checkpoints (and task_vectors heads) under `root`.

    `family=None` detects the layout: the Hugging Face folders (`fusionbench_hf`, see `find_hf_checkpoints`) when
    they are present and the task_vectors files are not, or when both are and `prefer` is 'fusionbench_hf'; else the
    task_vectors layout `<root>/<model>/zeroshot.pt`,
    `<root>/<model>/<Task>/finetuned.pt` (or `<Task>Val/`, where task_vectors' finetune.py writes) and optional
    `head_<Task>.pt`; a converted `.safetensors` file may stand in for any `.pt`. Any other `family` string reads
    the task_vectors layout under that label ('demo'). Raises one CheckpointError listing every missing path.
    """
    if family is None:
        hf, tv = _hf_layout_present(Path(root), model), _tv_present(Path(root), model)
        family = HF_FAMILY if hf and (prefer == HF_FAMILY or not tv) else TASK_VECTORS_FAMILY
    if family == HF_FAMILY:
        return find_hf_checkpoints(root, model, tasks)
    base = Path(root) / model
    pretrained = _existing(base / "zeroshot.pt")
    finetuned = {t: _existing(base / t / "finetuned.pt", base / f"{t}Val" / "finetuned.pt") for t in tasks}
    missing = [p for p in [pretrained, *finetuned.values()] if not p.exists()]
    if missing:
        hint = (f"\n`python -m src.download --route task_vectors --model {model}` prints where each comes from; "
                f"`python -m src.download --model {model}` fetches FusionBench's Hugging Face checkpoints instead "
                "(--route hf).") if model in hf_clip.HF_NAMES else ""
        _raise_missing(base, missing, hint)
    heads = {}
    for t in tasks:
        head = _existing(base / f"head_{t}.pt")
        if head.exists():
            heads[t] = head
    return CheckpointSet(model, family, pretrained, finetuned, heads)


def _existing(*candidates: Path) -> Path:
    """The first candidate that exists as a pickle or as its converted safetensors file; else the first one."""
    for path in candidates:
        if path.exists():
            return path
        sibling = converted_path(path)
        if sibling is not None and sibling.exists():
            return sibling
    return candidates[0]


def routes_present(root: str | os.PathLike, model: str) -> list[str]:
    """The checkpoint routes whose pretrained model is present for `model`: 'task_vectors' under `root`, 'hf' under
    `root` or in the hub cache."""
    return [route for route, present in (("task_vectors", _tv_present(Path(root), model)),
                                          ("hf", _hf_layout_present(Path(root), model))) if present]


def _tv_present(root: Path, model: str) -> bool:
    return _existing(root / model / "zeroshot.pt").exists()


def _raise_missing(base: Path, missing: list, extra: str = "") -> None:
    listing = "\n  ".join(str(p) for p in missing)
    raise CheckpointError(base, f"{len(missing)} checkpoint file(s) missing:\n  {listing}\n"
                                f"See {GETTING_CHECKPOINTS} for where to get them.{extra}")


def hf_folder(root: Path, repo_id: str) -> Path:
    """Where a Hugging Face repo is under `root`: `<root>/<org>/<name>` (`huggingface-cli download --local-dir`)
    or, in a hub cache, the snapshot `refs/main` names (else the newest) of `<root>/models--<org>--<name>/`."""
    plain = root / repo_id
    if plain.exists():
        return plain
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    main = repo / "refs" / "main"
    if main.is_file() and (snapshots / main.read_text().strip()).is_dir():
        return snapshots / main.read_text().strip()
    if snapshots.is_dir():
        revisions = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime)
        if revisions:
            return revisions[-1]
    return plain


def hub_cache() -> Path:
    """The standard Hugging Face hub cache (HF_HUB_CACHE), where `python -m src.download` puts checkpoints."""
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def _find_hf(roots: list[Path], repo_id: str) -> Path:
    """The first of `roots` that holds `repo_id` as a model folder; else where it was expected under the first."""
    for root in roots:
        folder = hf_folder(root, repo_id)
        if hf_clip.is_hf_folder(folder):
            return folder
    return hf_folder(roots[0], repo_id)


def _hf_layout_present(root: Path, model: str) -> bool:
    name = hf_clip.HF_NAMES.get(model)
    return name is not None and hf_clip.is_hf_folder(_find_hf([root, hub_cache()], f"openai/{name}"))


def find_hf_checkpoints(root: str | os.PathLike, model: str, tasks: list[str]) -> CheckpointSet:
    """FusionBench's Hugging Face layout: `openai/<name>/` (the pretrained CLIPModel) and `tanganke/<name>_<task>/`
    per task, each with config.json + model.safetensors (or pytorch_model.bin), under `root` as plain folders or as
    a hub cache (`models--org--name/snapshots/<rev>/`), else in the standard hub cache. `<name>` is
    clip-vit-base-patch32, clip-vit-base-patch16 or clip-vit-large-patch14 and `<task>` FusionBench's task name
    (`FUSIONBENCH_TASKS`)."""
    root = Path(root)
    if model not in hf_clip.HF_NAMES:
        raise CheckpointError(root, f"no Hugging Face checkpoints for '{model}'; expected one of "
                                    f"{', '.join(hf_clip.HF_NAMES)}")
    unknown = [t for t in tasks if t not in FUSIONBENCH_TASKS]
    if unknown:
        raise CheckpointError(root, f"tasks {unknown} have no FusionBench model; known: {', '.join(FUSIONBENCH_TASKS)}")
    name = hf_clip.HF_NAMES[model]
    roots = [root, hub_cache()]
    pretrained = _find_hf(roots, f"openai/{name}")
    finetuned = {t: _find_hf(roots, f"tanganke/{name}_{FUSIONBENCH_TASKS[t]}") for t in tasks}
    missing = [p for p in [pretrained, *finetuned.values()] if not hf_clip.is_hf_folder(p)]
    if missing:
        _raise_missing(root, [f"{p}/ (config.json + model.safetensors or pytorch_model.bin)" for p in missing],
                       f"\nFetch them with `python -m src.download --route hf --model {model} --checkpoints-only`.")
    return CheckpointSet(model, HF_FAMILY, pretrained, finetuned)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.checkpoints", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="write a safetensors state dict beside every pickle under DIR, and "
                                          "DIR/SHA256SUMS")
    conv.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    try:
        convert_folder(args.dir)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
