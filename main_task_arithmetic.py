"""Task Arithmetic (Ilharco et al., 2023): θ = θ₀ + λ·Σ_k τ_k with one λ for every task.

Evaluates the zero-shot model, each fine-tuned model on its own task (individual) and the merge on every task, and
writes {zeroshot,individual,task_arithmetic}.csv to results/<model>/task_arithmetic-<settings hash>/.
Edit the constants below or pass them as flags (`--scaling-coef 0.3`); `--help` lists everything.
"""
from src.cli import constants, entry, parse_args

SCALING_COEF = 0.3  # λ; the AdaMerging and EMR papers' Task Arithmetic rows use 0.3


def main(argv: list[str] | None = None):
    args = parse_args(__doc__, constants(globals()), argv)
    # Imported once the flags are checked: --help and a wrong flag answer before torch loads.
    from src.merging import task_arithmetic
    from src.run import Run
    with Run(args, "task_arithmetic") as run:
        merged = task_arithmetic(run.suite.pretrained, run.suite.all_finetuned(), scaling_coef=args.scaling_coef)
        run.report("task_arithmetic", run.suite.evaluate(merged, "task arithmetic"))
        return run.out


if __name__ == "__main__":
    entry(main)
