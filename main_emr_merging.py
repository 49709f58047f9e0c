"""EMR-Merging (Huang et al., 2024): elect one unified task vector, keep a 1-bit mask and a rescaler per task, and
rebuild each task's model θ̂_k = θ₀ + r_k·(M_k ⊙ τ_uni) when that task is evaluated. It needs the task id at
inference: it is K task-specific models that share one vector, not one merged model.

Also evaluates the unified-vector-only ablation (θ₀ + τ_uni for every task) and saves the merged model
(bit-packed masks) beside the results, reporting its size on disk. Writes emr_merging.csv and
emr_merging_unified_only.csv to results/<model>/emr_merging-<settings hash>/.
"""
from src.cli import constants, entry, parse_args

GLOBAL_RESCALER = False  # True: r_k from whole-model L1 norms instead of the reference's sum of per-tensor means
ABLATION = True  # also evaluate the unified vector alone (no masks, no rescalers)
SAVE = True  # write the EMR model (unified vector, bit-packed masks, rescalers) to <results>/emr_model.safetensors


def main(argv: list[str] | None = None):
    args = parse_args(__doc__, constants(globals()), argv)
    # Imported once the flags are checked: --help and a wrong flag answer before torch loads.
    from src.merge_files import save_emr
    from src.merging import emr_merging
    from src.run import Run
    with Run(args, "emr_merging") as run:
        tasks = run.suite.tasks
        model = emr_merging(run.suite.pretrained, run.suite.all_finetuned(), global_rescaler=args.global_rescaler)
        extra = {}
        if args.save:
            path = run.out / "emr_model.safetensors"
            save_emr(model, path)
            extra = {"emr_model_file": path.name, "emr_model_bytes": path.stat().st_size}
        # Each task gets its own model, rebuilt from the stored parts (never by adding and subtracting deltas).
        run.report("emr_merging", run.suite.evaluate(lambda task: model.task_state_dict(tasks.index(task)), "EMR"),
                   **extra)
        if args.ablation:
            unified = emr_merging(run.suite.pretrained, run.suite.all_finetuned(), unified_only=True)
            run.report("emr_merging_unified_only",
                       run.suite.evaluate(unified.task_state_dict(0), "EMR unified only"))
        return run.out


if __name__ == "__main__":
    entry(main)
