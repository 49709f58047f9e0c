"""Test-wide setup: every test writes its caches to a temporary folder, never to the repo's .cache.

`src.files.CACHE_DIR` is read from MERGEREPRO_CACHE when `src.files` is first imported, which happens while test
modules are collected, after this file is imported: so the variable is set here, at import time.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest

_CACHE = Path(tempfile.mkdtemp(prefix="mergerepro-test-cache-"))
os.environ["MERGEREPRO_CACHE"] = str(_CACHE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _test_cache_dir():
    import src.files
    assert src.files.CACHE_DIR == _CACHE, "src.files was imported before tests/conftest.py set MERGEREPRO_CACHE"
    yield _CACHE
    shutil.rmtree(_CACHE, ignore_errors=True)
