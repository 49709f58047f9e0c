"""Tests never write to the repo's .cache: point the cache at a temporary folder before `src` is imported."""
import os
import tempfile

os.environ["MERGEREPRO_CACHE"] = tempfile.mkdtemp(prefix="mergerepro-test-cache-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
