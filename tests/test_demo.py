import numpy as np
import pytest
import torch
from PIL import Image

from src.checkpoints import load_state_dict
from src.demo import tasks as demo_tasks
from src.demo import world
from src.demo.tokenizer import VOCAB, DemoTokenizer
from src.modeling import DEMO_MODEL, ImageEncoder, create_clip

REPO_DEMO = demo_tasks.__file__.rsplit("/src/", 1)[0] + "/checkpoints/demo"


def test_splits_are_the_same_on_every_call_and_differ_between_splits():
    images, labels = demo_tasks.generate("Shapes", "test")
    demo_tasks.generate.cache_clear()
    again, again_labels = demo_tasks.generate("Shapes", "test")
    assert np.array_equal(images, again) and np.array_equal(labels, again_labels)
    train, _ = demo_tasks.generate("Shapes", "train")
    assert not np.array_equal(train[: len(images)], images)


@pytest.mark.parametrize("task", demo_tasks.TASKS, ids=lambda t: t.name)
def test_every_task_has_500_plus_test_images_covering_every_class(task):
    images, labels = demo_tasks.generate(task.name, "test")
    assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8 and len(images) >= 500
    assert set(labels.tolist()) == set(range(len(task.classnames)))
    assert all(t.count("{}") == 1 for t in task.templates)


def test_fast_tensors_equal_open_clip_val_preprocess():
    _, _, preprocess = create_clip(DEMO_MODEL)
    images, _ = demo_tasks.generate("Colors", "test")
    slow = torch.stack([preprocess(Image.fromarray(im)) for im in images[:16]])
    torch.testing.assert_close(demo_tasks.tensors(images[:16]), slow, rtol=0, atol=1e-6)


def test_rendering_depends_only_on_the_seed():
    a = world.render(*world.sample(8, np.random.default_rng(5))[:1], np.random.default_rng(6))
    b = world.render(*world.sample(8, np.random.default_rng(5))[:1], np.random.default_rng(6))
    assert np.array_equal(a, b)


ROUNDING = 0.5 + 1e-4  # restyle computes in float32, then rounds to uint8


def _images(n=6):
    return world.render(world.sample(n, np.random.default_rng(1))[0], np.random.default_rng(2))


def test_each_style_is_the_photometric_shift_it_names():
    x = _images()
    wide = x.astype(int)
    assert np.array_equal(world.restyle(x, "none"), x)
    assert np.array_equal(world.restyle(x, "negative"), 255 - x)
    assert np.array_equal(world.restyle(x, "swapped_channels"), x[..., ::-1])
    gray = world.restyle(x, "grayscale").astype(int)
    assert (gray == gray[..., :1]).all()
    assert np.abs(gray[..., 0] - (0.299 * wide[..., 0] + 0.587 * wide[..., 1] + 0.114 * wide[..., 2])).max() <= ROUNDING
    dim = world.restyle(x, "dim").astype(int)
    assert np.abs(dim - (0.45 * wide + 10)).max() <= ROUNDING and dim.max() <= 0.45 * 255 + 10.5
    low = world.restyle(x, "low_resolution").astype(int)
    blocks = wide.reshape(len(x), 16, 2, 16, 2, 3).mean(axis=(2, 4))
    assert (low[:, ::2, ::2] == low[:, 1::2, 1::2]).all() and (low[:, ::2, ::2] == low[:, ::2, 1::2]).all()
    assert np.abs(low[:, ::2, ::2] - blocks).max() <= ROUNDING
    for style in world.STYLES:
        assert world.restyle(x, style).shape == x.shape and world.restyle(x, style).dtype == np.uint8


def test_tasks_come_in_their_declared_styles():
    styles = {task.name: task.style for task in demo_tasks.TASKS}
    assert set(styles.values()) <= set(world.STYLES) and len(set(styles.values())) >= 4
    for task, style in styles.items():
        images = demo_tasks.generate(task, "test")[0].astype(int)
        gray = (images == images[..., :1]).all()
        assert gray == (style == "grayscale"), task
        blocky = (images[:, ::2, ::2] == images[:, 1::2, 1::2]).all()
        assert blocky == (style == "low_resolution"), task


def test_tokenizer_follows_open_clip_conventions():
    tokens = DemoTokenizer()(["a red circle", "zebra"])
    assert tokens.shape == (2, 24) and tokens.dtype == torch.long
    end = len(VOCAB) - 1
    assert tokens[0, :5].tolist() == [2, VOCAB.index("a"), VOCAB.index("red"), VOCAB.index("circle"), end]
    assert tokens[0, 5:].eq(0).all()
    assert tokens[1, 1].item() == VOCAB.index("<unk>")
    assert int(tokens.argmax(dim=-1)[0]) == 4  # open_clip pools text features at the end token
    assert len(VOCAB) <= create_clip(DEMO_MODEL)[0].token_embedding.num_embeddings


def test_committed_demo_checkpoints_fit_and_load_in_the_real_layout():
    from pathlib import Path
    root = Path(REPO_DEMO)
    files = [root / "zeroshot.pt", root / "clip.pt"] + [root / t / "finetuned.pt" for t in demo_tasks.TASK_NAMES]
    assert sum(f.stat().st_size for f in files) <= 25 * 2**20
    reference = ImageEncoder(DEMO_MODEL).state_dict()
    for f in files[:1] + files[2:]:
        sd = load_state_dict(f)
        assert list(sd) == list(reference)
        assert "model.token_embedding.weight" in sd  # text-side leftovers, as in task_vectors checkpoints


def test_build_steps_are_deterministic():
    from src.demo import build
    torch.use_deterministic_algorithms(True)
    try:
        first = build.pretrain(2, 8, 1e-3, seed=3).state_dict()
        second = build.pretrain(2, 8, 1e-3, seed=3).state_dict()
        assert all(torch.equal(first[k], second[k]) for k in first)
        clip, _, _ = create_clip(DEMO_MODEL)
        clip.load_state_dict(first)
        task = demo_tasks.TASKS[0]
        a = build.finetune(clip, task, 2, 8, 1e-3, seed=4)
        b = build.finetune(clip, task, 2, 8, 1e-3, seed=4)
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert not torch.equal(a["model.visual.conv1.weight"], first["visual.conv1.weight"])  # it did train
    finally:
        torch.use_deterministic_algorithms(False)
