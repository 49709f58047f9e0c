"""The regime a suite's merges happen in, in numbers: `python -m src.demo.regime` (the demo; `--write` records them
in `src/demo/regime.json`, which the tests recompute).

Entropy-minimising and arithmetic merges behave as the papers report when the zero-shot heads separate their classes,
the logits are sharp and the task vectors are small and unlike each other. Per suite:
- `logit_scale_exp`: exp(logit_scale) of the pretrained CLIP (100 for OpenAI's CLIP), the factor on every logit;
- per task, `head_cos_mean` / `head_cos_max`: mean and largest cosine between two different class embeddings of its
  zero-shot head (near 1: the head barely tells the classes apart);
- per task, `tau_rel_norm`: ‖τ_k‖ / ‖θ₀‖ over the image tower (how far fine-tuning moved the weights);
- `tau_cos`: the cosine between every two task vectors over the image tower.

`--single-vectors` also prints, per task k, the accuracy on task k of θ₀ + λ·τ_k alone (λ = 0, 0.3, 0.6, 1): how
much of a task's gain a fraction of its vector keeps. Task Arithmetic at λ = 0.3 can keep no more than that row, less
what the other vectors cost; on real CLIP the vectors add near-linearly, on a tiny model much less so.
"""
from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Mapping

import torch

from src.files import write_text
from src.merging import task_arithmetic
from src.task_vectors import StateDict, image_tower_keys, vector_keys

RECORD = Path(__file__).resolve().parent / "regime.json"
SINGLE_VECTOR_SCALES = (0.0, 0.3, 0.6, 1.0)


def head_cosines(weights: torch.Tensor) -> tuple[float, float]:
    """(mean, max) cosine between two different rows of a head's [classes, dim] weight matrix."""
    rows = torch.nn.functional.normalize(weights.double(), dim=1)
    cos = rows @ rows.T
    off = cos[~torch.eye(len(rows), dtype=torch.bool)]
    return float(off.mean()), float(off.max())


def regime(pretrained: StateDict, finetuned: Mapping[str, StateDict], heads: Mapping[str, torch.Tensor],
           logit_scale_key: str = "model.logit_scale") -> dict:
    """The numbers of the module docstring for one suite (tasks in the order of `finetuned`)."""
    keys = image_tower_keys(vector_keys(pretrained))
    theta0 = torch.cat([pretrained[k].double().reshape(-1) for k in keys])
    taus = {t: torch.cat([(ft[k].double() - pretrained[k].double()).reshape(-1) for k in keys])
            for t, ft in finetuned.items()}
    tasks = {}
    for task, tau in taus.items():
        mean, largest = head_cosines(heads[task])
        tasks[task] = {"head_cos_mean": round(mean, 4), "head_cos_max": round(largest, 4),
                       "tau_rel_norm": round(float(tau.norm() / theta0.norm()), 5)}
    pairs = {f"{a}|{b}": round(float(taus[a] @ taus[b] / (taus[a].norm() * taus[b].norm())), 4)
             for a, b in itertools.combinations(taus, 2)}
    scale = pretrained.get(logit_scale_key)
    return {"logit_scale_exp": None if scale is None else round(float(scale.double().exp()), 3),
            "tasks": tasks, "tau_cos": pairs}


def single_vector_accuracies(suite, scales=SINGLE_VECTOR_SCALES) -> dict[float, dict[str, float]]:
    """{λ: {task k: accuracy on task k of θ₀ + λ·τ_k}} for a suite (a `src.suite.Suite`)."""
    return {lam: {task: suite.evaluate(task_arithmetic(suite.pretrained, [suite.finetuned(task)], scaling_coef=lam),
                                       f"θ₀ + {lam}·τ", tasks=[task])[task] for task in suite.tasks}
            for lam in scales}


def _demo_suite():
    from src.cli import parse_args
    from src.run import open_suite
    return open_suite(parse_args("", {}, ["--demo"]))


def demo_regime(suite=None) -> dict:
    """`regime` of the bundled demo suite (its committed checkpoints and zero-shot heads)."""
    suite = suite or _demo_suite()
    return regime(suite.pretrained, {t: suite.finetuned(t) for t in suite.tasks},
                  {t: suite.head(t).weight.detach() for t in suite.tasks})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help=f"record the numbers in {RECORD.name}")
    parser.add_argument("--single-vectors", action="store_true",
                        help="also evaluate θ₀ + λ·τ_k on task k alone (about a minute on 2 CPU cores)")
    args = parser.parse_args(argv)
    suite = _demo_suite()
    numbers = demo_regime(suite)
    print(f"exp(logit_scale) = {numbers['logit_scale_exp']}")
    print(f"{'task':<10} {'head cos mean':>13} {'head cos max':>12} {'|tau|/|theta0|':>15}")
    for task, row in numbers["tasks"].items():
        print(f"{task:<10} {row['head_cos_mean']:>13.4f} {row['head_cos_max']:>12.4f} {row['tau_rel_norm']:>15.5f}")
    cosines = list(numbers["tau_cos"].values())
    print(f"task-vector cosines: mean {sum(cosines) / len(cosines):.4f}, min {min(cosines):.4f}, "
          f"max {max(cosines):.4f}")
    if args.write:
        write_text(RECORD, json.dumps(numbers, indent=1) + "\n")
    if args.single_vectors:
        table = single_vector_accuracies(suite)
        print("accuracy on task k of θ₀ + λ·τ_k alone")
        print(f"{'λ':<6}" + "".join(f"{t:>10}" for t in suite.tasks) + f"{'avg':>10}")
        for lam, row in table.items():
            cells = [row[t] for t in suite.tasks] + [sum(row.values()) / len(row)]
            print(f"{lam:<6}" + "".join(f"{a:>10.2f}" for a in cells))


if __name__ == "__main__":
    main()
