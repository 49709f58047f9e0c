"""OPCM (Tang et al., 2025): continual model merging by orthogonal projection, and its continual baselines.

Models arrive one at a time in a random task order; after each one the merge is evaluated on every task seen so
far. Methods: `opcm` (project each new task vector off the merge's top singular subspace, rescale to the average
task-vector norm), `continual_ta` (θ̄_t = θ̄_{t−1} + λ·τ_t), `continual_ties` (TIES over [merged delta; τ_t]) and
`continual_avg` (running weight average). Writes to results/<model>/opcm-<settings hash>/: opcm_steps.csv (one row per
method, order, step and task; rewritten after every finished order, and an interrupted run with the same settings
resumes after the last one), opcm_summary.csv (final average accuracy, mean ± std over orders) and opcm.png.
The demo suite has eight tasks; TALL14 and TALL20 need real checkpoints (`--tasks TALL14`). With both kinds of
checkpoints present, `--route auto` takes FusionBench's Hugging Face ones, which the OPCM paper used.
"""
import functools

from src.cli import Range, entry, parse_args

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
    from src.merging import OPCM, ContinualTaskArithmetic, ContinualTIES, ContinualWeightAverage
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


def main(argv: list[str] | None = None):
    args = parse_args(__doc__, {"METHOD": METHOD, "ALPHA": ALPHA, "ZERO_DIAGONAL": ZERO_DIAGONAL,
                                "MERGE_CLASS_EMBEDDING": MERGE_CLASS_EMBEDDING, "TA_SCALING_COEF": TA_SCALING_COEF,
                                "TIES_K": TIES_K, "NUM_ORDERS": NUM_ORDERS, "SEED": SEED}, argv, prefer_route="hf",
                      rules={"METHOD": _unknown_methods, "ALPHA": Range(0, 1),
                             "MERGE_CLASS_EMBEDDING": list(CLASS_EMBEDDING_CHOICES), "TA_SCALING_COEF": Range(0),
                             "TIES_K": Range(0, 100, lo_open=True), "NUM_ORDERS": Range(1)})
    # Imported once the flags are checked: --help and a wrong flag answer before torch loads.
    from src.files import display_path
    from src.plots import continual_curves
    from src.protocols import continual, continual_summary
    from src.run import Run
    from src.task_orders import task_orders
    with Run(args, "opcm") as run:
        suite, methods = run.suite, [m.strip() for m in args.method.split(",")]
        steps = continual({m: functools.partial(merger, m, suite.pretrained, args, len(suite.tasks)) for m in methods},
                          task_orders(suite.tasks, args.num_orders, args.seed), suite.finetuned,
                          lambda state_dict, label, tasks: suite.evaluate(state_dict, label, tasks=tasks),
                          done=run.read_table("opcm_steps"),
                          on_order=lambda table: run.write_table("opcm_steps", table, seed=args.seed))
        summary = continual_summary(steps, methods, len(suite.tasks))
        summary.insert(1, "num_tasks", len(suite.tasks))
        summary.insert(1, "backbone", suite.model)
        summary.insert(2, "family", suite.family)
        print(summary.to_string(index=False))
        path = run.write_table("opcm_summary", summary.round(4), seed=args.seed)
        continual_curves(steps, run.out / "opcm.png", f"{suite.model}, {len(suite.tasks)} tasks, "
                                                      f"{args.num_orders} orders")
        print(f"results: {display_path(path)}, opcm_steps.csv and opcm.png beside it")
        return run.out


if __name__ == "__main__":
    entry(main)
