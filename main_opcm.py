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
from src.cli import Range, Subset, comma_list, constants, entry, parse_args
from src.options import CONTINUAL_METHODS

METHOD = ",".join(CONTINUAL_METHODS)  # comma-separated: opcm, continual_ta, continual_ties, continual_avg
ALPHA = 0.5  # OPCM's split threshold on the cumulative singular-value share
ZERO_DIAGONAL = False  # True: FusionBench's later fix; False reproduces the paper-era no-op diagonal removal
CLASS_EMBEDDING_CHOICES = {"auto": None, "yes": True, "no": False}
MERGE_CLASS_EMBEDDING = "auto"  # "yes", "no", or "auto": merge it except on HF checkpoints, as the reference
TA_SCALING_COEF = 0.0  # λ of continual TA and TIES; 0 = the reference's choice: 0.3 for ≤ 8 tasks, 0.1 beyond
TIES_K = 20.0  # percent kept by continual TIES
NUM_ORDERS = 10
SEED = 0


def main(argv: list[str] | None = None):
    args = parse_args(__doc__, constants(globals()), argv, prefer_route="hf",
                      rules={"METHOD": Subset(CONTINUAL_METHODS, "method"), "ALPHA": Range(0, 1),
                             "MERGE_CLASS_EMBEDDING": list(CLASS_EMBEDDING_CHOICES), "TA_SCALING_COEF": Range(0),
                             "TIES_K": Range(0, 100, lo_open=True), "NUM_ORDERS": Range(1)})
    # Imported once the flags are checked: --help and a wrong flag answer before torch loads.
    import functools

    from src.files import display_path
    from src.merging.continual import continual_merger, reference_scaling_coef
    from src.plots import continual_curves
    from src.protocols import continual, continual_summary
    from src.run import Run
    from src.task_orders import task_orders
    with Run(args, "opcm") as run:
        suite, methods = run.suite, comma_list(args.method)
        settings = {"alpha": args.alpha, "zero_diagonal": args.zero_diagonal, "k": args.ties_k,
                    "merge_class_embedding": CLASS_EMBEDDING_CHOICES[args.merge_class_embedding],
                    "scaling_coef": args.ta_scaling_coef or reference_scaling_coef(len(suite.tasks))}
        steps = continual({m: functools.partial(continual_merger, m, suite.pretrained, **settings) for m in methods},
                          task_orders(suite.tasks, args.num_orders, args.seed), suite.finetuned,
                          lambda state_dict, label, tasks: suite.evaluate(state_dict, label, tasks=tasks),
                          done=run.read_table("opcm_steps"),
                          on_order=lambda table: run.write_table("opcm_steps", table, seed=args.seed))
        summary = continual_summary(steps, methods, len(suite.tasks), backbone=suite.model, family=suite.family)
        print(summary.to_string(index=False))
        path = run.write_table("opcm_summary", summary.round(4), seed=args.seed)
        continual_curves(steps, run.out / "opcm.png", f"{suite.model}, {len(suite.tasks)} tasks, "
                                                      f"{args.num_orders} orders")
        print(f"results: {display_path(path)}, opcm_steps.csv and opcm.png beside it")
        return run.out


if __name__ == "__main__":
    entry(main)
