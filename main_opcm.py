"""OPCM (Tang et al., 2025): continual model merging by orthogonal projection, and its continual baselines.

Models arrive one at a time in a random task order; after each one the merge is evaluated on every task seen so
far. Methods: `opcm` (project each new task vector off the merge's top singular subspace, rescale to the average
task-vector norm), `continual_ta` (θ̄_t = θ̄_{t−1} + λ·τ_t), `continual_ties` (TIES over [merged delta; τ_t]) and
`continual_avg` (running weight average). Writes results/<model>/opcm_steps.csv (one row per method, order, step and
task), opcm_summary.csv (final average accuracy, mean ± std over orders) and opcm.png (accuracy vs tasks merged).
The demo suite has eight tasks; TALL14 and TALL20 need real checkpoints (`--tasks TALL14`). With both kinds of
checkpoints present, `--route auto` takes FusionBench's Hugging Face ones, which the OPCM paper used.
"""
import pandas as pd
from tqdm.auto import tqdm

from src.cli import Range, Run, entry, parse_args
from src.merging import OPCM, ContinualTaskArithmetic, ContinualTIES, ContinualWeightAverage
from src.plots import continual_curves
from src.task_orders import task_orders

METHODS = ("opcm", "continual_ta", "continual_ties", "continual_avg")
METHOD = ",".join(METHODS)  # comma-separated, any of METHODS
ALPHA = 0.5  # OPCM's split threshold on the cumulative singular-value share
ZERO_DIAGONAL = False  # True: FusionBench's later fix; False reproduces the paper-era no-op diagonal removal
CLASS_EMBEDDING_CHOICES = {"auto": None, "yes": True, "no": False}
MERGE_CLASS_EMBEDDING = "auto"  # "yes", "no", or "auto": merge it except on HF checkpoints, as the reference
TA_SCALING_COEF = 0.0  # λ of continual TA and TIES; 0 = the reference's choice: 0.3 for ≤ 8 tasks, 0.1 beyond
TIES_K = 20.0  # percent kept by continual TIES
NUM_ORDERS = 10
SEED = 0


def merger(method: str, pretrained, args, num_tasks: int):
    coef = args.ta_scaling_coef or (0.3 if num_tasks <= 8 else 0.1)
    make = {
        "opcm": lambda: OPCM(pretrained, alpha=args.alpha, zero_diagonal=args.zero_diagonal,
                             merge_class_embedding=CLASS_EMBEDDING_CHOICES[args.merge_class_embedding]),
        "continual_ta": lambda: ContinualTaskArithmetic(pretrained, scaling_coef=coef),
        "continual_ties": lambda: ContinualTIES(pretrained, k=args.ties_k, scaling_coef=coef),
        "continual_avg": lambda: ContinualWeightAverage(pretrained),
    }
    return make[method]()


def _unknown_methods(spec: str) -> str | None:
    unknown = [m for m in (part.strip() for part in spec.split(",")) if m not in METHODS]
    return f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}" if unknown or not spec.strip() else None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(__doc__, {"METHOD": METHOD, "ALPHA": ALPHA, "ZERO_DIAGONAL": ZERO_DIAGONAL,
                                "MERGE_CLASS_EMBEDDING": MERGE_CLASS_EMBEDDING, "TA_SCALING_COEF": TA_SCALING_COEF,
                                "TIES_K": TIES_K, "NUM_ORDERS": NUM_ORDERS, "SEED": SEED}, argv, prefer_route="hf",
                      rules={"METHOD": _unknown_methods, "ALPHA": Range(0, 1),
                             "MERGE_CLASS_EMBEDDING": list(CLASS_EMBEDDING_CHOICES), "TA_SCALING_COEF": Range(0),
                             "TIES_K": Range(0, 100, lo_open=True), "NUM_ORDERS": Range(1)})
    run = Run(args)
    suite, methods = run.suite, [m.strip() for m in args.method.split(",")]
    orders = task_orders(suite.tasks, args.num_orders, args.seed)
    rows = []
    for method in methods:
        for i, order in enumerate(tqdm(orders, desc=method)):
            merge = merger(method, suite.pretrained, args, len(suite.tasks))
            for step, task in enumerate(order, start=1):
                merge.add(suite.finetuned(task))
                accuracy = suite.evaluate(merge.state_dict(), f"{method} order {i} step {step}", tasks=order[:step])
                rows += [{"method": method, "order": i, "order_tasks": "|".join(order), "step": step,
                          "num_tasks": step, "task": t, "accuracy": a} for t, a in accuracy.items()]
    steps = pd.DataFrame(rows)
    final = steps[steps.num_tasks == len(suite.tasks)].groupby(["method", "order"]).accuracy.mean()
    summary = final.groupby("method").agg(["mean", "std", "count"]).reindex(methods).reset_index().rename(
        columns={"mean": "final_avg_accuracy_mean", "std": "final_avg_accuracy_std", "count": "num_orders"})
    summary.insert(1, "num_tasks", len(suite.tasks))
    summary.insert(1, "backbone", suite.model)
    summary.insert(2, "family", suite.family)
    run.write_table("opcm_steps", steps, seed=args.seed)
    path = run.write_table("opcm_summary", summary.round(4), seed=args.seed)
    continual_curves(steps, run.out / "opcm.png", f"{suite.model}, {len(suite.tasks)} tasks, "
                                                  f"{args.num_orders} orders")
    print(summary.to_string(index=False))
    print(f"results: {path}, {run.out / 'opcm_steps.csv'}, {run.out / 'opcm.png'}")


if __name__ == "__main__":
    entry(main)
