"""`python -m src.download`: fetch the checkpoints and datasets a run needs, for either checkpoint route.

    python -m src.download --model ViT-B-32 --tasks TA8            # Hugging Face route: checkpoints and datasets
    python -m src.download --tasks TALL20 --data-only               # only the 20 datasets
    python -m src.download --route task_vectors --model ViT-B-32    # prints what to fetch and where

Hugging Face route (FusionBench, OPCM): the pretrained `openai/<name>` CLIP (weights, config, tokenizer, image
processor config) and the fine-tuned `tanganke/<name>_<task>` vision towers (weights and config) with
`huggingface_hub.snapshot_download`, only those files, into the hub cache (HF_HUB_CACHE, or `--checkpoints DIR`);
the test splits FusionBench evaluates with `datasets.load_dataset`, into the datasets cache (HF_DATASETS_CACHE, or
`--data DIR`). The entry scripts find both there. What is already present is not fetched again (nothing is even
looked up online), an interrupted download resumes, and a failure (no network) names what is still missing.

task_vectors route: the checkpoints are a Google Drive folder, which nothing here scrapes; the command prints the
files to fetch, where each goes, and the conversion step, followed by where each dataset comes from.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from src import hf_clip
from src.checkpoints import FUSIONBENCH_TASKS, hf_folder, hub_cache
from src.datasets import TASK_LISTS, parse_tasks
from src.datasets.huggingface import HF_SPECS_BY_NAME, HFSpec, cached_versions, standard_cache
from src.files import REPO

TASK_VECTORS_DRIVE = "https://drive.google.com/drive/folders/1u_Tva6x0p6oxu5Eo0ZZsf-520Cc_3MKw"
EXPERT_FILES = ("config.json", "model.safetensors")
PRETRAINED_FILES = EXPERT_FILES + (hf_clip.PREPROCESSOR_FILE, "tokenizer.json", *hf_clip.TOKENIZER_FILES,
                                   "special_tokens_map.json")


def checkpoint_repos(model: str, tasks: list[str]) -> dict[str, tuple[str, ...]]:
    """{repo id: files to fetch} for one backbone's pretrained CLIP and its tasks' fine-tuned towers."""
    name = hf_clip.HF_NAMES[model]
    repos = {f"openai/{name}": PRETRAINED_FILES}
    repos.update({f"tanganke/{name}_{FUSIONBENCH_TASKS[t]}": EXPERT_FILES for t in tasks})
    return repos


def _complete(folder: Path, pretrained: bool) -> bool:
    if not hf_clip.is_hf_folder(folder):
        return False
    return not pretrained or (hf_clip.has_tokenizer(folder) and (folder / hf_clip.PREPROCESSOR_FILE).is_file())


def _fetch_repo(repo_id: str, files: tuple[str, ...], cache_dir: Path) -> Path:
    from huggingface_hub import snapshot_download
    folder = Path(snapshot_download(repo_id, allow_patterns=list(files), cache_dir=str(cache_dir)))
    if not hf_clip.is_hf_folder(folder):  # an older repository without safetensors weights
        folder = Path(snapshot_download(repo_id, allow_patterns=["pytorch_model.bin"], cache_dir=str(cache_dir)))
    return folder


def _fetch_dataset(spec: HFSpec, cache_dir: Path) -> None:
    import datasets
    datasets.load_dataset(spec.repo_id, spec.config, split=spec.split, cache_dir=str(cache_dir))


def _run(jobs: list[tuple[str, bool, Callable]], log) -> list[tuple[str, str]]:
    """Run (label, present, fetch) jobs; returns [(label, error)] of those that failed."""
    failed = []
    for label, present, fetch in jobs:
        if present:
            log(f"present   {label}")
            continue
        log(f"fetching  {label}")
        try:
            fetch()
        except Exception as e:  # noqa: BLE001 - every failure is reported by name below, none stops the others
            failed.append((label, f"{type(e).__name__}: {e}".splitlines()[0][:300]))
            log(f"FAILED    {label}")
    return failed


def hf_jobs(model: str, tasks: list[str], checkpoints: Path | None, data: Path | None, want_checkpoints: bool,
            want_data: bool) -> list[tuple[str, bool, Callable]]:
    jobs = []
    if want_checkpoints:
        cache = checkpoints or hub_cache()
        for repo_id, files in checkpoint_repos(model, tasks).items():
            present = _complete(hf_folder(cache, repo_id), pretrained=repo_id.startswith("openai/"))
            jobs.append((f"checkpoint {repo_id}", present,
                         lambda repo_id=repo_id, files=files: _fetch_repo(repo_id, files, cache)))
    if want_data:
        cache = data or standard_cache()
        for task in tasks:
            spec = HF_SPECS_BY_NAME[task]
            jobs.append((f"dataset {spec}", bool(cached_versions(spec, cache)),
                         lambda spec=spec: _fetch_dataset(spec, cache)))
    return jobs


def task_vectors_instructions(model: str, tasks: list[str], checkpoints: Path) -> str:
    from src.datasets.tasks import SPECS_BY_NAME
    base = checkpoints / model
    lines = [f"The task_vectors checkpoints are in a Google Drive folder: {TASK_VECTORS_DRIVE}",
             f"(subfolder {model}). Nothing here downloads from Drive; fetch these files and put them at:",
             f"  {model}/zeroshot.pt  ->  {base / 'zeroshot.pt'}"]
    for task in tasks:
        lines.append(f"  {model}/{task}/finetuned.pt  ->  {base / task / 'finetuned.pt'}")
        lines.append(f"  {model}/head_{task}.pt  ->  {base / f'head_{task}.pt'}  (optional: heads are otherwise "
                     "built from the text tower)")
    lines += ["Then convert them once (safe loading, later runs memory-map them):",
              f"  python -m src.checkpoints convert {base}", "",
              "Datasets for this route (under --data, default data/); check them with "
              f"`python -m src.datasets.check --data data --tasks {','.join(tasks)}`:"]
    lines += [f"  {task}: {SPECS_BY_NAME[task].source}" for task in tasks]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.download", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", choices=list(hf_clip.HF_NAMES))
    parser.add_argument("--tasks", default="TA8",
                        help=f"a task list ({', '.join(TASK_LISTS)}) or comma-separated task names [TA8]")
    parser.add_argument("--route", choices=("hf", "task_vectors"), default="hf")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--checkpoints-only", action="store_true")
    only.add_argument("--data-only", action="store_true")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="hf route: a hub-cache folder to download into [the standard hub cache]; "
                             "task_vectors route: the checkpoint root [checkpoints/]")
    parser.add_argument("--data", type=Path, default=None,
                        help="hf route: a datasets-cache folder to download into [the standard datasets cache]")
    args = parser.parse_args(argv)
    tasks = parse_tasks(args.tasks)
    unknown = [t for t in tasks if t not in HF_SPECS_BY_NAME]
    if unknown:
        parser.error(f"unknown tasks {unknown}; known: {', '.join(HF_SPECS_BY_NAME)}")

    if args.route == "task_vectors":
        print(task_vectors_instructions(args.model, tasks, args.checkpoints or REPO / "checkpoints"))
        return 0
    jobs = hf_jobs(args.model, tasks, args.checkpoints, args.data, not args.data_only, not args.checkpoints_only)
    failed = _run(jobs, print)
    fetched = sum(not present for _, present, _ in jobs) - len(failed)
    print(f"\n{len(jobs) - len(failed)}/{len(jobs)} ready ({fetched} fetched now).")
    if failed:
        print(f"error: {len(failed)} could not be fetched (no network, or HF_HUB_OFFLINE / HF_DATASETS_OFFLINE "
              "set?); still missing:", file=sys.stderr)
        for label, error in failed:
            print(f"  {label}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
