"""Regenerate the demo suite's checkpoints: `python -m src.demo.build` (see README for how long it takes).

1. Pretrain the demo CLIP contrastively on captioned images from the demo world (`world.captions` mention each
   attribute only some of the time, as web alt-texts do, which is what keeps zero-shot accuracy well below
   fine-tuned accuracy).
2. Fine-tune one image encoder per demo task with that task's zero-shot head frozen, as task_vectors did
   (AdamW, weight decay 0.1, cosine schedule with warm-up, cross-entropy).
3. Save everything in the task_vectors layout under `checkpoints/demo/`: `zeroshot.pt`, `<Task>/finetuned.pt` (plain
   ImageEncoder state dicts, text-side leftovers included, like the real files) and `clip.pt` (the whole CLIP, whose
   text tower builds the zero-shot heads at run time, as open_clip's pretrained weights do for real models).

Everything is seeded and runs with deterministic algorithms, so the same command on the same machine writes the
same bytes.
"""
from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from src.checkpoints import save_state_dict  # noqa: E402
from src.demo import tasks as demo_tasks  # noqa: E402
from src.demo import world  # noqa: E402
from src.heads import build_head  # noqa: E402
from src.modeling import DEMO_MODEL, ImageEncoder, create_clip, get_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "checkpoints"
SEED = 0
PRETRAIN_STEPS = 4000
PRETRAIN_BATCH = 256
PRETRAIN_LR = 2e-3
FINETUNE_STEPS = 1500
FINETUNE_BATCH = 64
# task_vectors' lr (1e-5 on ViT-B/32, width 768) scaled by the ratio of the two models' weight scales: open_clip
# initialises the attention weights with std width^-1/2, so the demo's (width 64) are sqrt(768 / 64) ≈ 3.46 times
# larger, and the same relative step needs a ≈ 3.5 times larger lr (rounded; the committed checkpoints were trained
# with exactly 3.5e-5). A gentle fine-tune keeps each task vector small next to θ₀, the regime task arithmetic
# relies on.
FINETUNE_LR = 3.5e-5
WEIGHT_DECAY = 0.1
WARMUP = 0.1  # fraction of the steps with a linear warm-up


def cosine_lr(optimizer, base_lr: float, steps: int):
    warmup = max(1, int(WARMUP * steps))

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def pretrain(steps: int, batch: int, lr: float, seed: int):
    """The demo CLIP after `steps` contrastive steps on fresh captioned images."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, _, _ = create_clip(DEMO_MODEL)
    tokenizer = get_tokenizer(DEMO_MODEL)
    # As open_clip trains: no weight decay on gains, biases, embeddings and the logit scale.
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": rest, "weight_decay": 0.0}], lr=lr)
    schedule = cosine_lr(optimizer, lr, steps)
    model.train()
    for step in (bar := tqdm(range(steps), desc="pretrain demo CLIP")):
        attrs, labels = world.sample(batch, rng, objects=(1, 5), single=0.6, kinds=(0.5, 0.25, 0.25))
        images = demo_tasks.tensors(world.render(attrs, rng))
        text = tokenizer(world.captions(attrs, labels, rng))
        img = F.normalize(model.encode_image(images), dim=-1)
        txt = F.normalize(model.encode_text(text), dim=-1)
        logits = model.logit_scale.exp() * img @ txt.T
        target = torch.arange(batch)
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    return model.eval()


def finetune(clip_model, task: demo_tasks.DemoTask, steps: int, batch: int, lr: float, seed: int) -> dict:
    """The image encoder fine-tuned on one task with its zero-shot head frozen; returns its state dict."""
    torch.manual_seed(seed)
    encoder = ImageEncoder(DEMO_MODEL)
    encoder.model.load_state_dict(clip_model.state_dict(), strict=False)
    head = build_head(clip_model, get_tokenizer(DEMO_MODEL), task.classnames, task.templates)
    head.requires_grad_(False)
    images, labels = demo_tasks.generate(task.name, "train")
    x, y = demo_tasks.tensors(images), torch.from_numpy(labels)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    schedule = cosine_lr(optimizer, lr, steps)
    encoder.train()
    for _ in tqdm(range(steps), desc=f"fine-tune {task.name}", leave=False):
        idx = torch.randint(len(y), (batch,), generator=generator)
        loss = F.cross_entropy(head(encoder(x[idx])), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return {k: v.detach().clone() for k, v in encoder.state_dict().items()}


def build(root: Path = ROOT, *, pretrain_steps: int = PRETRAIN_STEPS, finetune_steps: int = FINETUNE_STEPS,
          finetune_lr: float = FINETUNE_LR, seed: int = SEED, tasks: list[str] | None = None) -> None:
    """Write the demo checkpoints under `root/demo/`."""
    torch.use_deterministic_algorithms(True)
    # One thread: the bytes written then do not depend on the machine's core count, and a model this small gains
    # little from a second one.
    torch.set_num_threads(1)
    root = Path(root) / DEMO_MODEL
    clip_path = root / "clip.pt"
    if clip_path.exists() and pretrain_steps == 0:
        clip_model, _, _ = create_clip(DEMO_MODEL)
        clip_model.load_state_dict(torch.load(clip_path, weights_only=True))
        clip_model.eval()
    else:
        clip_model = pretrain(pretrain_steps, PRETRAIN_BATCH, PRETRAIN_LR, seed)
        save_state_dict(clip_model.state_dict(), clip_path)
    zeroshot = ImageEncoder(DEMO_MODEL)
    zeroshot.model.load_state_dict(clip_model.state_dict(), strict=False)
    save_state_dict(zeroshot.state_dict(), root / "zeroshot.pt")
    for i, task in enumerate(demo_tasks.TASKS):
        if tasks and task.name not in tasks:
            continue
        state_dict = finetune(clip_model, task, finetune_steps, FINETUNE_BATCH, finetune_lr, seed + 1 + i)
        save_state_dict(state_dict, root / task.name / "finetuned.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="checkpoint root; the files go to ROOT/demo/")
    parser.add_argument("--pretrain-steps", type=int, default=PRETRAIN_STEPS,
                        help="0 reuses ROOT/demo/clip.pt and only redoes the fine-tuning")
    parser.add_argument("--finetune-steps", type=int, default=FINETUNE_STEPS)
    parser.add_argument("--finetune-lr", type=float, default=FINETUNE_LR)
    parser.add_argument("--tasks", nargs="*", help="fine-tune only these tasks")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    start = time.time()
    build(args.root, pretrain_steps=args.pretrain_steps, finetune_steps=args.finetune_steps,
          finetune_lr=args.finetune_lr, seed=args.seed, tasks=args.tasks)
    print(f"demo checkpoints written to {args.root / DEMO_MODEL} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
