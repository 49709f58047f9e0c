"""The reproduction report: the grid's results in the papers' table layout, beside the published numbers.

`results/REPRODUCTION.md` (and `.csv`, one row per cell and task) has, per backbone and checkpoint route, one table of
the eight-task methods (rows: methods, columns: tasks and the average; each entry `ours / published (Δ)`) and one
of the continual methods (final average accuracy, mean ± std over task orders, per task-list length) with a plot of
accuracy against the number of tasks merged. Cells that have not run, or failed, are shown as such.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from src.families import FAMILY_OF_ROUTE
from src.files import REPO, write_text
from src.grid import CONTINUAL, DEMO_ROUTE, Cell, demo_grid, full_grid
from src.jobs import read_record
from src.plots import continual_curves
from src.results import paper_numbers

REPORT = "REPRODUCTION"
COLUMNS = ["backbone", "route", "tasks", "kind", "method", "task", "status", "accuracy", "paper_accuracy",
           "delta_vs_paper", "paper_source", "accuracy_std", "num_orders", "run_folder"]


def _folder(record: dict | None) -> Path | None:
    if not record or record.get("status") not in ("done", "skipped"):
        return None
    folder = Path(record["run_folder"])
    return folder if folder.is_absolute() else REPO / folder


def _status(record: dict | None) -> str:
    return "not run" if record is None else ("done" if record["status"] == "skipped" else record["status"])


def _accuracy_rows(cell: Cell, table_name: str, method: str, record: dict | None) -> list[dict]:
    """One row per task and `avg` for a per-task accuracy table of a cell's run (paper numbers as stored there)."""
    base = {"backbone": cell.backbone, "route": cell.route, "tasks": cell.tasks, "kind": "one-shot", "method": method}
    folder = _folder(record)
    path = folder / f"{table_name}.csv" if folder else None
    if path is None or not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a cross-family number is labelled by its source below
            paper = paper_numbers(cell.backbone, FAMILY_OF_ROUTE[cell.route], method)
        published = paper["accuracy"] if paper else {}
        return [{**base, "task": t, "status": _status(record) if folder is None else "incomplete",
                 "paper_accuracy": published.get(t), "paper_source": paper["source"] if paper else None}
                for t in [*cell.task_names(), "avg"]]
    table = pd.read_csv(path)
    return [{**base, "task": row.task, "status": "done", "accuracy": row.accuracy,
             "paper_accuracy": row.paper_accuracy, "delta_vs_paper": row.delta_vs_paper,
             "paper_source": row.paper_source, "run_folder": str(folder)} for row in table.itertuples()]


def _continual_row(cell: Cell, record: dict | None) -> tuple[dict, pd.DataFrame | None]:
    base = {"backbone": cell.backbone, "route": cell.route, "tasks": cell.tasks, "kind": "continual",
            "method": cell.label, "task": "avg", "status": _status(record)}
    folder = _folder(record)
    if folder is None or not (folder / "opcm_summary.csv").exists():
        return {**base, "status": base["status"] if folder is None else "incomplete"}, None
    summary = pd.read_csv(folder / "opcm_summary.csv").set_index("method").loc[cell.method]
    steps = pd.read_csv(folder / "opcm_steps.csv")
    return {**base, "status": "done", "accuracy": summary.final_avg_accuracy_mean,
            "accuracy_std": summary.final_avg_accuracy_std, "num_orders": summary.num_orders,
            "run_folder": str(folder)}, steps[steps.method == cell.method]


def collect(cells: list[Cell], results: Path) -> tuple[pd.DataFrame, dict[tuple[str, str, str], pd.DataFrame]]:
    """The long table of every cell's numbers (`COLUMNS`), and the per-step tables of the continual cells per
    (backbone, route, tasks)."""
    rows, steps = [], {}
    groups_with_baselines = set()
    for cell in cells:
        record = read_record(results, cell)
        if cell.method in CONTINUAL:
            row, cell_steps = _continual_row(cell, record)
            rows.append(row)
            if cell_steps is not None:
                steps.setdefault((cell.backbone, cell.route, cell.tasks), []).append(cell_steps)
            continue
        group = (cell.backbone, cell.route, cell.tasks)
        if group not in groups_with_baselines and _folder(record) and (_folder(record) / "zeroshot.csv").exists():
            groups_with_baselines.add(group)
            for kind in ("zeroshot", "individual"):
                rows += _accuracy_rows(cell, kind, kind, record)
        rows += _accuracy_rows(cell, cell.method, cell.label, record)
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    return table, {group: pd.concat(frames, ignore_index=True) for group, frames in steps.items()}


def _entry(row) -> str:
    if row.status != "done":
        return row.status
    ours = f"{row.accuracy:.2f}"
    if pd.isna(row.paper_accuracy):
        return ours
    return f"{ours} / {row.paper_accuracy:.2f} ({row.delta_vs_paper:+.2f})"


def _title(backbone: str, route: str) -> str:
    return "The demo suite (8 synthetic tasks)" if route == DEMO_ROUTE else f"{backbone}, {route} checkpoints"


def markdown(table: pd.DataFrame, plots: dict[tuple[str, str, str], str]) -> str:
    """The report text: per backbone and route, the eight-task table and the continual table with its plots."""
    lines = ["# Reproduction", "",
             "Each entry: our accuracy / the published one (Δ = ours − published), top-1 %, on the test sets; a "
             "number alone has no published counterpart in `results/paper_tables.csv`. 'not run': the cell has no "
             "record yet (`python reproduce.py` runs it); 'failed': its record in `results/reproduction/cells/` "
             "names the error and the log.", ""]
    for (backbone, route), part in table.groupby(["backbone", "route"], sort=False):
        one_shot = part[part.kind == "one-shot"]
        if not one_shot.empty:
            tasks = list(dict.fromkeys(one_shot.task))
            sources = sorted({s for s in one_shot.paper_source.dropna()})
            lines += [f"## {_title(backbone, route)}: eight-task merging", "",
                      "| method | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
            for method, rows in one_shot.groupby("method", sort=False):
                by_task = rows.set_index("task")
                lines.append(f"| {method} | " + " | ".join(_entry(by_task.loc[t]) for t in tasks) + " |")
            lines += ["", *(f"Published numbers: {s}." for s in sources), ""]
        continual = part[part.kind == "continual"]
        if not continual.empty:
            lists = list(dict.fromkeys(continual.tasks))
            lines += [f"## {_title(backbone, route)}: continual merging (final average accuracy, mean ± std "
                      "over task orders)", "", "| method | " + " | ".join(lists) + " |", "|---|" + "---:|" * len(lists)]
            for method, rows in continual.groupby("method", sort=False):
                by_list = rows.set_index("tasks")
                lines.append(f"| {method} | " + " | ".join(
                    f"{r.accuracy:.2f} ± {r.accuracy_std:.2f} ({int(r.num_orders)} orders)" if r.status == "done"
                    else r.status for r in (by_list.loc[t] for t in lists)) + " |")
            lines += ["", "No published per-method accuracies are in `results/paper_tables.csv` for these rows "
                      "(the OPCM code release commits none).", ""]
            lines += [f"![{backbone} {route} {t}]({plots[(backbone, route, t)]})" for t in lists
                      if (backbone, route, t) in plots]
            lines.append("")
    return "\n".join(lines)


def recorded_grid(results: Path) -> list[Cell]:
    """The grid the records under `results` belong to: the real one as soon as one of its cells has a record, else
    the demo grid."""
    real = full_grid()
    return real if any(read_record(results, c) for c in real) else demo_grid()


def report_text(results: Path) -> str:
    """The report of what has finished under `results`, as `python -m src.results --reproduction` prints it."""
    table, steps = collect(recorded_grid(results), Path(results))
    return markdown(table, {group: _plot_name(*group) for group in steps})


def _plot_name(backbone: str, route: str, tasks: str) -> str:
    return f"reproduction/{backbone}_{route}_{tasks}_continual.png"


def write_report(cells: list[Cell], results: Path) -> Path:
    """Write `<results>/REPRODUCTION.md`, `.csv` and the continual plots for `cells`; returns the markdown's path."""
    results = Path(results)
    table, steps = collect(cells, results)
    plots = {}
    for (backbone, route, tasks), frame in steps.items():
        name = _plot_name(backbone, route, tasks)
        continual_curves(frame, results / name, f"{backbone}, {route}, {tasks}: "
                                                f"{frame.order.nunique()} orders")
        plots[(backbone, route, tasks)] = name
    write_text(results / f"{REPORT}.csv", table.round(4).to_csv(index=False))
    path = results / f"{REPORT}.md"
    write_text(path, markdown(table, plots))
    return path
