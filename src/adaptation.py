"""AdaMerging on a suite, as `main_layer_wise_adamergingpp.py` runs it: the script's hyperparameters in, the tables,
coefficients and plots of its results folder out.

`adamerging(run, method, **hyperparameters)`: the task vectors (TIES-selected for the ++ variants), the merge at
step 0, the adaptation loop (`src.protocols.adapt`, resumed from the run folder after an interruption) or saved
coefficients applied instead, the final merge, and the outputs: `<method>.csv` (final), `<method>_init.csv` (step 0),
`<method>_history.csv`, `<method>_coefficients.{pt,csv,png}` and `<method>_curves.png`.
`choose_preset` resolves `--preset auto` once the checkpoint family is known.
"""
from __future__ import annotations

import functools

import pandas as pd
import torch

from src.cli import apply_preset
from src.families import HF_FAMILY
from src.merge_files import load_coefficients, save_coefficients
from src.merging import AdaMerging, layer_wise_merge, ties_selected_vectors
from src.options import FUSIONBENCH
from src.plots import coefficient_heatmap, training_curves
from src.protocols import Adaptation, BatchSampler, adapt, mean_accuracy
from src.run import Run
from src.task_vectors import StateDict, task_vector, vector_keys


def adamerging_vectors(variant: str, pretrained: StateDict, finetuned: list[StateDict],
                       ties_k: float) -> list[StateDict]:
    """τ_k for AdaMerging, the TIES-selected τ_k (top `ties_k` %, elected sign) for AdaMerging++ (`*_pp`)."""
    if variant.endswith("_pp"):
        return ties_selected_vectors(pretrained, finetuned, k=ties_k)
    return [task_vector(pretrained, ft) for ft in finetuned]


def adamerging(run: Run, method: str, *, variant: str, preset: str, steps: int, lr: float, init: float,
               adapt_batch_size: int, batches_per_task: int, clamp: bool, entropy_eps: float, sampling: str,
               ties_k: float, eval_every: int, vector_dtype: str, seed: int, coefficients: str) -> Adaptation:
    """Adapt (or apply saved `coefficients`), evaluate the final merge and write the run's outputs."""
    suite, tasks = run.suite, run.suite.tasks
    pretrained = suite.pretrained
    names = vector_keys(pretrained)
    vectors = adamerging_vectors(variant, pretrained, suite.all_finetuned(), ties_k)
    merge = functools.partial(layer_wise_merge, pretrained, vectors, clamp=clamp)

    def evaluate(lambdas: torch.Tensor, label: str) -> dict[str, float]:
        return suite.evaluate(merge(lambdas), f"{method} {label}")

    granularity = "layer" if variant.startswith("layer") else "task"
    if coefficients:
        shape = (len(names), len(tasks)) if granularity == "layer" else (len(tasks),)
        start = evaluate(torch.full(shape, init), "step 0")
        history = pd.DataFrame({"step": [0], "loss": [float("nan")], "avg_accuracy": [mean_accuracy(start)]})
        result = Adaptation(start, history, load_coefficients(coefficients, names, tasks))
    else:
        trainer = AdaMerging(suite.new_encoder().to(run.device), pretrained, vectors, [suite.head(t) for t in tasks],
                             granularity=granularity, init=init, lr=lr, clamp=clamp, entropy_eps=entropy_eps,
                             vector_dtype=getattr(torch, vector_dtype) if vector_dtype else None)
        test_sets = [suite.test_set(t) for t in tasks]
        sampler = BatchSampler([len(d) for d in test_sets], adapt_batch_size, batches_per_task, sampling, seed)
        result = adapt(trainer, sampler, lambda task, idx: torch.stack([test_sets[task][int(i)][0] for i in idx]),
                       steps, evaluate, eval_every=eval_every, resume=run.load_state("adaptation"),
                       checkpoint=lambda state: run.save_state("adaptation", state), task_names=tasks)
    final = evaluate(result.coefficients, "final")
    history = result.history
    history.loc[history.step == history.step.max(), "avg_accuracy"] = mean_accuracy(final)
    run.report(f"{method}_init", result.init, seed=seed)
    files = {"coefficients_pt": f"{method}_coefficients.pt", "coefficients_csv": f"{method}_coefficients.csv"}
    table = save_coefficients(result.coefficients, run.out / files["coefficients_pt"],
                              run.out / files["coefficients_csv"], names, tasks)
    run.write_table(f"{method}_history", history, seed=seed)
    coefficient_heatmap(table, run.out / f"{method}_coefficients.png", f"{method}: learned λ ({suite.model})")
    training_curves(history, run.out / f"{method}_curves.png", f"{method} ({suite.model})")
    run.report(method, final, seed=seed, steps=int(history.step.max()), preset=preset,
               init_avg_accuracy=mean_accuracy(result.init), **files)
    return result


def choose_preset(args, suite) -> None:
    """`--preset auto`: FusionBench's settings on its Hugging Face checkpoints, the reference's elsewhere (a `Run`
    `configure` hook: it runs once the checkpoints are found, before the run folder is named)."""
    if args.preset == "auto":
        args.preset = args.hyperparameters["PRESET"] = "fusionbench" if suite.family == HF_FAMILY else "reference"
    if args.preset == "fusionbench":
        apply_preset(args, FUSIONBENCH)
