"""Plots of results, written beside the CSV tables (matplotlib, no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from src.files import atomic_write  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def continual_curves(steps: pd.DataFrame, path: Path, title: str) -> None:
    """Average accuracy over the tasks seen so far vs the number of tasks merged: one line per method (mean over
    task orders), with a band from the lowest to the highest order."""
    per_order = steps.groupby(["method", "order", "num_tasks"]).accuracy.mean().reset_index()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, rows in per_order.groupby("method", sort=False):
        stats = rows.groupby("num_tasks").accuracy.agg(["mean", "min", "max"])
        ax.plot(stats.index, stats["mean"], marker="o", label=method)
        ax.fill_between(stats.index, stats["min"], stats["max"], alpha=0.2)
    ax.set_xlabel("number of tasks merged")
    ax.set_ylabel("average accuracy on the tasks seen so far (%)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def coefficient_heatmap(table: pd.DataFrame, path: Path, title: str) -> None:
    """Learned merging coefficients, tasks × tensors (the AdaMerging paper's figure)."""
    fig, ax = plt.subplots(figsize=(max(6, len(table) * 0.12), 0.45 * len(table.columns) + 1.5))
    image = ax.imshow(table.T.values, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(table.columns)), table.columns)
    ax.set_xlabel("tensor (state-dict order)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="λ")
    _save(fig, path)


def training_curves(history: pd.DataFrame, path: Path, title: str) -> None:
    """Entropy loss per step and, where evaluated, average accuracy; below, when the history has them, each task's
    most-predicted-class share on the adaptation batches (`top_share_<task>`), where a collapse onto one class
    shows as a line climbing to 1."""
    shares = [c for c in history.columns if c.startswith("top_share_")]
    fig, axes = plt.subplots(2 if shares else 1, 1, figsize=(6, 6.5 if shares else 4), sharex=True, squeeze=False)
    ax = axes[0, 0]
    ax.plot(history.step, history.loss, color="tab:blue")
    ax.set_ylabel("entropy loss", color="tab:blue")
    evaluated = history.dropna(subset=["avg_accuracy"])
    if not evaluated.empty:
        acc = ax.twinx()
        acc.plot(evaluated.step, evaluated.avg_accuracy, color="tab:orange", marker="o")
        acc.set_ylabel("average accuracy (%)", color="tab:orange")
    ax.set_title(title)
    if shares:
        below = axes[1, 0]
        for column in shares:
            below.plot(history.step, history[column], label=column.removeprefix("top_share_"), linewidth=1)
        below.set_ylim(0, 1.02)
        below.set_ylabel("most-predicted class share")
        below.legend(fontsize=7, ncol=4, loc="lower left")
    axes[-1, 0].set_xlabel("step")
    _save(fig, path)


def accuracy_grid(table: pd.DataFrame, path: Path, title: str) -> None:
    """Accuracy (%) of each method (rows, in the table's order) on each task and on average (columns), as a heatmap
    with the numbers written in: the whole comparison of a suite at a glance."""
    fig, ax = plt.subplots(figsize=(0.9 * len(table.columns) + 2.5, 0.45 * len(table) + 1.2))
    image = ax.imshow(table.values, aspect="auto", cmap="viridis", vmin=0, vmax=100)
    ax.set_xticks(range(len(table.columns)), table.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(table)), table.index)
    ax.axvline(len(table.columns) - 1.5, color="white", linewidth=2)
    for (row, col), value in pd.DataFrame(table.values).stack().items():
        ax.text(col, row, f"{value:.1f}", ha="center", va="center", fontsize=8,
                color="black" if value > 60 else "white")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    _save(fig, path)
