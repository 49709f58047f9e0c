"""Test-wide setup: every test writes its caches to a temporary folder, never to the repo's .cache or the user's
Hugging Face caches.

`src.files.CACHE_DIR` is read from MERGEREPRO_CACHE when `src.files` is first imported, which happens while test
modules are collected, after this file is imported: so the variable is set here, at import time.
"""
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import torch

_CACHE = Path(tempfile.mkdtemp(prefix="mergerepro-test-cache-"))
os.environ["MERGEREPRO_CACHE"] = str(_CACHE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# The Hugging Face caches (hub and datasets) a test sees are empty temporary folders, never the user's.
os.environ["HF_HOME"] = str(_CACHE / "huggingface")
# A shell without job control starts background commands with SIGINT ignored, and an ignored signal stays ignored in
# every child: the Ctrl-C tests would then see no interrupt. Python's own handler makes children start with the default.
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def _test_cache_dir():
    import src.files
    assert src.files.CACHE_DIR == _CACHE, "src.files was imported before tests/conftest.py set MERGEREPRO_CACHE"
    yield _CACHE
    shutil.rmtree(_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def vit_models():
    """A small open_clip ViT (the demo architecture) with text leftovers, plus two odd-sized tensors, K = 5.

    Task vectors are Gaussian on the image tower with a per-task scale; the text-side tensors never change. On one
    stretch tasks 0 and 1 cancel exactly and the others are zero, so the majority-sign fill is exercised.
    """
    from src.modeling import ImageEncoder  # imported here: src.files must see MERGEREPRO_CACHE first
    g = torch.Generator().manual_seed(0)
    pre = {k: torch.randn(v.shape, generator=g) for k, v in ImageEncoder("demo").state_dict().items()}
    pre["model.visual.odd"] = torch.randn(3, 7, generator=g)
    pre["model.visual.big"] = torch.randn(70_001, generator=g)
    fts = []
    for i in range(5):
        ft = {}
        for key, value in pre.items():
            moved = key.startswith("model.visual.")
            ft[key] = value + (1e-3 * (i + 1)) * torch.randn(value.shape, generator=g) if moved else value.clone()
        fts.append(ft)
    # θ₀ = 0 there, so that τ_0 + τ_1 = 0 holds exactly; 1e-2 is far above every task's threshold.
    stretch = slice(100, 400)
    delta = 1e-2 * torch.randn(300, generator=g)
    for i, ft in enumerate(fts):
        ft["model.visual.big"][stretch] = (delta, -delta)[i] if i < 2 else 0.0
    pre["model.visual.big"][stretch] = 0.0
    return pre, fts
