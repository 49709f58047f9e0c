"""Layer-wise AdaMerging++ (Yang et al., ICLR 2024), and plain / task-wise AdaMerging by `--variant`.

Learns one merging coefficient per state-dict tensor and task (layer-wise) or per task (task-wise), starting at 0.3,
by minimising the Shannon entropy of each task's frozen zero-shot head on unlabeled test images: per step, for
every task in order, BATCHES_PER_TASK shuffled batches of ADAPT_BATCH_SIZE test images, one backward of the summed mean
entropies, one Adam step; merge θ = θ₀ + Σ_k clamp(λ_k, 0, 1)·τ_k. The ++ variants use the TIES-selected task
vectors (top 20 %, elected sign) instead of τ_k. Unlike the reference, batches come from a seeded generator.

Writes to results/<model>/<variant>-<settings hash>/: <variant>.csv (final), <variant>_init.csv (step 0: Task
Arithmetic / TIES at 0.3), <variant>_history.csv (loss per step, accuracy where evaluated),
<variant>_coefficients.{pt,csv} and two plots. The state after every step is kept there too, so rerunning an
interrupted run with the same settings resumes it. `--coefficients FILE.pt` applies saved coefficients instead.
"""
from src.cli import Range, apply_preset, entry, parse_args
from src.options import FUSIONBENCH, SAMPLINGS

VARIANT = "layer_wise_pp"  # layer_wise_pp, layer_wise, task_wise_pp or task_wise
PRESET = "auto"  # auto, reference or fusionbench (see above)
STEPS = 500  # optimiser steps (the reference's "epochs")
LR = 1e-3
INIT = 0.3  # initial λ: step 0 is Task Arithmetic (or TIES for ++) with λ = 0.3
ADAPT_BATCH_SIZE = 16  # unlabeled test images per batch during adaptation
BATCHES_PER_TASK = 2  # the reference's loop breaks after its second batch
CLAMP = True  # merge with clamp(λ, 0, 1), as the reference; FusionBench does not clamp
ENTROPY_EPS = 0.0  # 0: −Σ p·log_softmax (the reference); FusionBench: −Σ p·log(p + 1e-8)
SAMPLING = "fresh"  # "fresh": the first batches of a new shuffle every step (reference); "stream": FusionBench's
TIES_K = 20.0  # percent kept when selecting the ++ task vectors
EVAL_EVERY = 0  # also evaluate every N steps (0: only at step 0 and at the end)
VECTOR_DTYPE = ""  # e.g. bfloat16: keep the task vectors in a compact dtype on the device (GPU memory)
SEED = 0
COEFFICIENTS = ""  # a saved <variant>_coefficients.pt: apply it and skip the adaptation
METHOD_NAMES = {"layer_wise_pp": "layer_wise_adamergingpp", "layer_wise": "layer_wise_adamerging",
                "task_wise_pp": "task_wise_adamergingpp", "task_wise": "task_wise_adamerging"}


def main(argv: list[str] | None = None):
    args = parse_args(__doc__, {"VARIANT": VARIANT, "PRESET": PRESET, "STEPS": STEPS, "LR": LR, "INIT": INIT,
                                "ADAPT_BATCH_SIZE": ADAPT_BATCH_SIZE, "BATCHES_PER_TASK": BATCHES_PER_TASK,
                                "CLAMP": CLAMP, "ENTROPY_EPS": ENTROPY_EPS, "SAMPLING": SAMPLING,
                                "TIES_K": TIES_K, "EVAL_EVERY": EVAL_EVERY,
                                "VECTOR_DTYPE": VECTOR_DTYPE, "SEED": SEED, "COEFFICIENTS": COEFFICIENTS}, argv,
                      rules={"VARIANT": list(METHOD_NAMES), "PRESET": ("auto", "reference", "fusionbench"),
                             "SAMPLING": SAMPLINGS, "VECTOR_DTYPE": ("", "float32", "bfloat16", "float16"),
                             "STEPS": Range(0), "LR": Range(0, lo_open=True), "ADAPT_BATCH_SIZE": Range(1),
                             "BATCHES_PER_TASK": Range(1), "ENTROPY_EPS": Range(0), "TIES_K": Range(0, 100, True),
                             "EVAL_EVERY": Range(0)})
    # Imported once the flags are checked: --help and a wrong flag answer before torch loads.
    import pandas as pd
    import torch

    from src.merging import AdaMerging, layer_wise_merge, ties_selected_vectors
    from src.merging.adamerging import load_coefficients, save_coefficients
    from src.plots import coefficient_heatmap, training_curves
    from src.protocols import Adaptation, BatchSampler, adapt
    from src.run import Run
    from src.task_vectors import task_vector, vector_keys
    method = METHOD_NAMES[args.variant]
    with Run(args, method, configure=apply_auto_preset) as run:
        suite, tasks = run.suite, run.suite.tasks
        pretrained, finetuned = suite.pretrained, suite.all_finetuned()
        vectors = (ties_selected_vectors(pretrained, finetuned, k=args.ties_k) if args.variant.endswith("_pp")
                   else [task_vector(pretrained, ft) for ft in finetuned])

        def evaluate(coefficients, label: str) -> dict[str, float]:
            return suite.evaluate(layer_wise_merge(pretrained, vectors, coefficients, clamp=args.clamp),
                                  f"{method} {label}")

        granularity = "layer" if args.variant.startswith("layer") else "task"
        if args.coefficients:
            shape = (len(vector_keys(pretrained)), len(tasks)) if granularity == "layer" else (len(tasks),)
            init = evaluate(torch.full(shape, args.init), "step 0")
            result = Adaptation(init, pd.DataFrame({"step": [0], "loss": [float("nan")],
                                                    "avg_accuracy": [sum(init.values()) / len(tasks)]}),
                                load_coefficients(args.coefficients, vector_keys(pretrained), tasks))
        else:
            dtype = getattr(torch, args.vector_dtype) if args.vector_dtype else None
            trainer = AdaMerging(suite.new_encoder().to(run.device), pretrained, vectors,
                                 [suite.head(t) for t in tasks], granularity=granularity, init=args.init,
                                 lr=args.lr, clamp=args.clamp, vector_dtype=dtype, entropy_eps=args.entropy_eps)
            test_sets = [suite.test_set(t) for t in tasks]
            sampler = BatchSampler([len(d) for d in test_sets], args.adapt_batch_size, args.batches_per_task,
                                   args.sampling, args.seed)
            result = adapt(trainer, sampler, lambda task, idx: torch.stack([test_sets[task][int(i)][0] for i in idx]),
                           args.steps, evaluate, eval_every=args.eval_every, resume=run.load_state("adaptation"),
                           checkpoint=lambda state: run.save_state("adaptation", state))
        final = evaluate(result.coefficients, "final")
        history = result.history
        history.loc[history.step == history.step.max(), "avg_accuracy"] = sum(final.values()) / len(tasks)
        run.report(f"{method}_init", result.init, seed=args.seed)
        paths = {"coefficients_pt": f"{method}_coefficients.pt", "coefficients_csv": f"{method}_coefficients.csv"}
        save_coefficients(result.coefficients, run.out / paths["coefficients_pt"], run.out / paths["coefficients_csv"],
                          vector_keys(pretrained), tasks)
        table = pd.read_csv(run.out / paths["coefficients_csv"]).set_index("tensor")
        run.write_table(f"{method}_history", history, seed=args.seed)
        coefficient_heatmap(table, run.out / f"{method}_coefficients.png", f"{method}: learned λ ({suite.model})")
        training_curves(history, run.out / f"{method}_curves.png", f"{method} ({suite.model})")
        run.report(method, final, seed=args.seed, steps=int(history.step.max()), preset=args.preset,
                   init_avg_accuracy=sum(result.init.values()) / len(tasks), **paths)
        return run.out


def apply_auto_preset(args, suite) -> None:
    """`--preset auto`: FusionBench's settings on its Hugging Face checkpoints, the reference's elsewhere."""
    from src.hf_clip import FAMILY as HF_FAMILY
    if args.preset == "auto":
        args.preset = args.hyperparameters["PRESET"] = "fusionbench" if suite.family == HF_FAMILY else "reference"
    if args.preset == "fusionbench":
        apply_preset(args, FUSIONBENCH)


if __name__ == "__main__":
    entry(main)
