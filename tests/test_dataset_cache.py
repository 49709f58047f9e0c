"""The preprocessed-test-set cache: exact items, reuse without decoding, invalidation."""
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T

import src.files
from src.datasets import get_task
from src.datasets.cache import cached
from src.datasets.tasks import FIXTURE_SIZES_ENV
from src.modeling import create_clip
from tests.fixtures import checkpoints as ckpt_fx
from tests.fixtures import datasets as fx


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    fx.build_tree(root, ["SUN397", "MNIST", "STL10"])
    return root


@pytest.fixture(autouse=True)
def _sizes(root, monkeypatch):
    monkeypatch.setenv(FIXTURE_SIZES_ENV, str(root / "fixture_sizes.json"))


def _preprocesses():
    _, _, open_clip_3 = create_clip("demo")
    open_clip_2 = ckpt_fx.openclip202_encoder(ckpt_fx.seeded_encoder()).val_preprocess
    return {"open_clip 3.3": open_clip_3, "open_clip 2.0.2 (task_vectors pickles)": open_clip_2}


def _items(dataset):
    return [dataset[i] for i in range(len(dataset))]


@pytest.mark.parametrize("task", ["SUN397", "MNIST", "STL10"])
@pytest.mark.parametrize("which", ["open_clip 3.3", "open_clip 2.0.2 (task_vectors pickles)"])
def test_cached_items_are_bit_identical(root, tmp_path, task, which):
    preprocess = _preprocesses()[which]
    split = get_task(task, root).split("test", preprocess)
    fast = cached(split, tmp_path)
    assert fast.images.dtype == np.uint8 and fast.images.shape == (len(split), 32, 32, 3)  # RGB after conversion
    for (a, la), (b, lb) in zip(_items(split), _items(fast)):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b) and la == lb


@pytest.mark.parametrize("which", ["open_clip 3.3", "open_clip 2.0.2 (task_vectors pickles)"])
def test_batched_reads_are_bit_identical(root, tmp_path, which):
    preprocess = _preprocesses()[which]
    split = get_task("SUN397", root).split("test", preprocess)
    fast = cached(split, tmp_path)
    assert fast.stages is not None  # stored as uint8, finished as whole batches
    for batch_size in (1, 4, 6):
        slow_batches = list(DataLoader(split, batch_size=batch_size))
        fast_batches = list(DataLoader(fast, batch_size=batch_size))
        assert len(slow_batches) == len(fast_batches)
        for (a, la), (b, lb) in zip(slow_batches, fast_batches):
            assert torch.equal(a, b) and torch.equal(la, lb)
    shuffled = fast.__getitems__([4, 0, 2])
    assert all(torch.equal(x, split[i][0]) for (x, _), i in zip(shuffled, [4, 0, 2]))


def test_second_use_reads_no_image(root, tmp_path, monkeypatch):
    _, _, preprocess = create_clip("demo")
    expected = _items(get_task("SUN397", root).split("test", preprocess))
    first = cached(get_task("SUN397", root).split("test", preprocess), tmp_path)

    def no_decoding(*_):
        raise AssertionError("an image was decoded although the cache holds the split")
    monkeypatch.setattr("src.datasets.readers.Samples.image", no_decoding)
    second = cached(get_task("SUN397", root).split("test", preprocess), tmp_path)
    assert second.folder == first.folder
    assert all(torch.equal(a, b) and la == lb for (a, la), (b, lb) in zip(expected, _items(second)))


def test_changed_preprocess_or_files_make_a_new_entry(root, tmp_path):
    size = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor()])
    other = T.Compose([T.Resize(20), T.CenterCrop(16), T.ToTensor()])
    split = get_task("MNIST", root).split("test", size)
    a = cached(split, tmp_path)
    assert a.images.dtype == np.uint8 and a.images.shape == (6, 16, 16)  # MNIST stays 8-bit L
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(_items(split), _items(a)))
    assert cached(get_task("MNIST", root).split("test", other), tmp_path).folder != a.folder
    images_file = root / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    data = bytearray(images_file.read_bytes())
    data[16] ^= 0xFF  # a different first pixel
    images_file.write_bytes(bytes(data))
    st = os.stat(images_file)
    os.utime(images_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    changed = get_task("MNIST", root).split("test", size)
    b = cached(changed, tmp_path)
    assert b.folder != a.folder and not torch.equal(b[0][0], a[0][0]) and torch.equal(b[0][0], changed[0][0])


def test_preprocess_without_to_tensor_is_stored_as_float(root, tmp_path):
    def preprocess(image):
        return torch.from_numpy(np.asarray(image.convert("RGB").resize((8, 8)), dtype=np.float32)).permute(2, 0, 1) / 7
    split = get_task("STL10", root).split("test", preprocess)
    fast = cached(split, tmp_path)
    assert fast.images.dtype == np.float32
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(_items(split), _items(fast)))


def test_default_location_and_unsupported_datasets(root):
    _, _, preprocess = create_clip("demo")
    fast = cached(get_task("MNIST", root).split("test", preprocess))
    assert fast.folder.parent == src.files.CACHE_DIR / "datasets"
    plain = [(torch.zeros(1), 0)]
    assert cached(plain) is plain
