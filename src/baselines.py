"""Baselines: the zero-shot and individual (fine-tuned) accuracy of every task, evaluated once per checkpoint file.

Every merged result is read beside these two rows and normalised by the individual one, so every run needs them.
They are kept in `<folder>/baselines.csv`, one row per (kind, task, checkpoint sha256, evaluation precision): a run
on a subset of tasks adds the rows it lacks and never removes any, another checkpoint file gets rows of its own,
and two runs sharing the folder take turns (a lock) instead of evaluating the same rows twice.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from src.files import atomic_write, display_path, exclusive, sha256

if TYPE_CHECKING:
    from src.suite import Suite

KINDS = ("zeroshot", "individual")
_COLUMNS = ["kind", "task", "accuracy", "checkpoint", "checkpoint_sha256", "amp", "data_source"]
_WAIT_S = 3600.0  # another run evaluating the same baselines finishes them within this


class Baselines:
    """Zero-shot and individual accuracies of `suite`'s tasks, reused from `folder` when stored there for the same
    checkpoint file and precision; `reevaluate` evaluates them again (once per Baselines) and replaces the rows.
    With no folder they are evaluated once per Baselines and stored nowhere."""

    def __init__(self, suite: "Suite", folder: Path | None, reevaluate: bool = False):
        self.suite = suite
        self.path = None if folder is None else Path(folder) / "baselines.csv"
        self.reevaluate = reevaluate
        self._known: dict[str, dict[str, float]] = {}

    def accuracies(self, kind: str) -> dict[str, float]:
        """`kind` ('zeroshot' or 'individual') accuracy per task of the suite, in the suite's task order."""
        if kind not in KINDS:
            raise ValueError(f"baseline kind {kind!r}: expected one of {KINDS}")
        if kind not in self._known:
            self._known[kind] = self._evaluate(kind, self.suite.tasks) if self.path is None else self._stored(kind)
        return dict(self._known[kind])

    def _stored(self, kind: str) -> dict[str, float]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(self.path.with_name(".baselines.lock"), what=f"{display_path(self.path)}", wait_s=_WAIT_S):
            return self._lookup_or_evaluate(kind)

    def _evaluate(self, kind: str, tasks: list[str]) -> dict[str, float]:
        if kind == "zeroshot":
            return self.suite.zeroshot_accuracies(tasks)
        return self.suite.individual_accuracies(tasks)

    def _row_keys(self, kind: str) -> dict[str, tuple]:
        amp = self.suite.uses_amp
        checkpoints = self.suite.checkpoints
        keys = {}
        for task in self.suite.tasks:
            file = checkpoints.pretrained if kind == "zeroshot" else checkpoints.finetuned[task]
            keys[task] = (kind, task, display_path(file), sha256(file), amp, self.suite.data_source)
        return keys

    def _lookup_or_evaluate(self, kind: str) -> dict[str, float]:
        table = pd.read_csv(self.path) if self.path.exists() else pd.DataFrame(columns=_COLUMNS)
        keys = self._row_keys(kind)
        stored = {(str(row.kind), str(row.task), str(row.checkpoint), str(row.checkpoint_sha256), bool(row.amp),
                   str(row.data_source)): float(row.accuracy) for row in table.itertuples(index=False)}
        found = {task: stored[key] for task, key in keys.items() if key in stored and not self.reevaluate}
        missing = [task for task in self.suite.tasks if task not in found]
        if missing:
            fresh = self._evaluate(kind, missing)
            replaced = {keys[task] for task in missing}
            rows = [dict(zip(_COLUMNS, (*key[:2], accuracy, *key[2:]))) for key, accuracy in stored.items()
                    if key not in replaced]
            rows += [dict(zip(_COLUMNS, (*keys[t][:2], fresh[t], *keys[t][2:]))) for t in missing]
            with atomic_write(self.path) as tmp:
                pd.DataFrame(rows, columns=_COLUMNS).to_csv(tmp, index=False)
            found.update(fresh)
        return {task: found[task] for task in self.suite.tasks}
