"""Files holding what a merge produced: the EMR-Merging model and AdaMerging's learned coefficients.

The methods in `src.merging` do no I/O; their results are written and read here, next to the checkpoint code, with
the same rules: every file is written to a temporary name and renamed, and a file that is not what it should be is
refused with an error naming it.

- EMR model (`save_emr` / `load_emr`): one safetensors file with τ_uni once (tensors where it is entirely zero by
  name only), the K masks bit-packed (`EMRModel.masks`, ⌈d/8⌉ bytes per task) and the K rescalers; the metadata
  holds the format, its version, the task count and every float key's shape in state-dict order.
- AdaMerging coefficients (`save_coefficients` / `load_coefficients`): a `.pt` with the tensor and the tensor and
  task names it was learned for, and a CSV table tensor × task (one `*` row for task-wise coefficients).
"""
from __future__ import annotations

import csv
import io
import json
import os
from itertools import zip_longest
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from src.checkpoints import CheckpointError
from src.files import atomic_write, write_text
from src.merging.emr import EMRModel
from src.task_vectors import StateDict

EMR_FORMAT = "mergerepro.emr"
EMR_VERSION = "1"
TASK_WISE_ROW = "*"  # the CSV row name of a task-wise coefficient vector: it applies to every tensor


def save_emr(model: EMRModel, path: str | os.PathLike) -> None:
    """Write `model` as one safetensors file, atomically."""
    tensors = {f"unified/{key}": value.contiguous() for key, value in model.unified.items()}
    if model.masks is not None:
        tensors["masks"] = torch.from_numpy(model.masks)
        tensors["rescalers"] = model.rescalers.contiguous()
    metadata = {"format": EMR_FORMAT, "version": EMR_VERSION, "num_tasks": str(model.num_tasks),
                "shapes": json.dumps([[key, list(shape)] for key, shape in model.shapes.items()])}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_emr(path: str | os.PathLike, pretrained: StateDict | None = None) -> EMRModel:
    """Read a file written by `save_emr`; with `pretrained` (θ₀) the model can rebuild task state dicts."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != EMR_FORMAT:
                raise CheckpointError(path, "not an EMR-Merging file (written by save_emr)")
            if metadata.get("version") != EMR_VERSION:
                raise CheckpointError(path, f"EMR file version {metadata.get('version')}; this code reads "
                                            f"version {EMR_VERSION}")
            shapes = {key: torch.Size(shape) for key, shape in json.loads(metadata["shapes"])}
            unified = {name.removeprefix("unified/"): f.get_tensor(name) for name in f.keys()
                       if name.startswith("unified/")}
            masks = f.get_tensor("masks").numpy() if "masks" in f.keys() else None
            rescalers = f.get_tensor("rescalers") if "rescalers" in f.keys() else None
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(path, f"unreadable EMR-Merging file: {e}") from None
    model = EMRModel(shapes, unified, masks, rescalers, int(metadata["num_tasks"]))
    if pretrained is not None:
        model.attach(pretrained, name=f"pretrained state dict given for {path}")
    return model


def coefficient_table(coefficients: torch.Tensor, tensor_names: Sequence[str],
                      task_names: Sequence[str]) -> pd.DataFrame:
    """The coefficients as a table: one row per tensor (index `tensor`; one `*` row when task-wise), one column per
    task."""
    c = torch.as_tensor(coefficients).detach().cpu()
    rows = [TASK_WISE_ROW] if c.dim() == 1 else list(tensor_names)
    table = c.reshape(len(rows), -1)
    if table.shape != (len(rows), len(task_names)):
        raise ValueError(f"coefficients of shape {tuple(c.shape)} do not match {len(tensor_names)} tensor names "
                         f"and {len(task_names)} task names")
    return pd.DataFrame(table.tolist(), index=pd.Index(rows, name="tensor"), columns=list(task_names))


def save_coefficients(coefficients: torch.Tensor, path_pt: str | Path, path_csv: str | Path,
                      tensor_names: Sequence[str], task_names: Sequence[str]) -> pd.DataFrame:
    """Write the coefficients as a .pt (tensor + names) and a CSV table tensor-name × task, each atomically; returns
    that table (`coefficient_table`)."""
    table = coefficient_table(coefficients, tensor_names, task_names)
    with atomic_write(path_pt) as tmp:
        torch.save({"coefficients": torch.as_tensor(coefficients).detach().cpu().clone(),
                    "tensor_names": list(tensor_names), "task_names": list(task_names)}, tmp)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["tensor", *task_names])
    # repr of a float32 widened to float64 reads back to the same float32.
    writer.writerows([name, *(repr(v) for v in values)] for name, values in zip(table.index, table.to_numpy().tolist()))
    write_text(path_csv, out.getvalue())
    return table


def load_coefficients(path_pt: str | Path, tensor_names: Sequence[str] | None = None,
                      task_names: Sequence[str] | None = None) -> torch.Tensor:
    """Coefficients saved by `save_coefficients`, checked against the expected tensor and task names when given."""
    try:
        saved = torch.load(path_pt, map_location="cpu", weights_only=True)
        c, saved_tensors, saved_tasks = saved["coefficients"], saved["tensor_names"], saved["task_names"]
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path_pt}: not an AdaMerging coefficient file written by save_coefficients ({e})") from e
    if tensor_names is not None and c.dim() == 2 and list(tensor_names) != list(saved_tensors):
        expected, found = next(pair for pair in zip_longest(tensor_names, saved_tensors) if pair[0] != pair[1])
        raise ValueError(f"{path_pt}: coefficients were learned for other tensors (expected '{expected}', file has "
                         f"'{found}'); use coefficients learned on this backbone")
    if task_names is not None and list(task_names) != list(saved_tasks):
        raise ValueError(f"{path_pt}: coefficients were learned for tasks {list(saved_tasks)}, not "
                         f"{list(task_names)}; pass the same tasks in the same order")
    return c
