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
from src.cli import Range, constants, entry, hyperparameters, parse_args
from src.options import ADAMERGING_VARIANTS, SAMPLINGS

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


def main(argv: list[str] | None = None):
    args = parse_args(__doc__, constants(globals()), argv,
                      rules={"VARIANT": list(ADAMERGING_VARIANTS), "PRESET": ("auto", "reference", "fusionbench"),
                             "SAMPLING": SAMPLINGS, "VECTOR_DTYPE": ("", "float32", "bfloat16", "float16"),
                             "STEPS": Range(0), "LR": Range(0, lo_open=True), "ADAPT_BATCH_SIZE": Range(1),
                             "BATCHES_PER_TASK": Range(1), "ENTROPY_EPS": Range(0), "TIES_K": Range(0, 100, True),
                             "EVAL_EVERY": Range(0)})
    # Imported once the flags are checked: --help and a wrong flag answer before torch loads.
    from src.adaptation import adamerging, choose_preset
    from src.run import Run
    method = ADAMERGING_VARIANTS[args.variant]
    with Run(args, method, configure=choose_preset) as run:
        adamerging(run, method, **hyperparameters(args))
        return run.out


if __name__ == "__main__":
    entry(main)
