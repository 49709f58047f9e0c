"""Files: atomic writes and cached content hashes.

Every file this repo writes goes through `atomic_write`, so an interrupted run never leaves a half-written
checkpoint or results table behind: the content goes to a temporary file in the same directory, which is renamed
over the target only once it is complete.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("MERGEREPRO_CACHE", REPO / ".cache"))
_HASH_CACHE = CACHE_DIR / "sha256.json"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it over `path` if the block finishes without an exception."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        # mkstemp makes the file private (0600); give it the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (or of a folder's files, in sorted order), cached by path, size and mtime."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamp = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    cache = _read_hash_cache()
    entry = cache.get(str(path))
    if entry and entry["stamp"] == stamp:
        return entry["sha256"]
    digest = hashlib.sha256()
    for p in files:
        if path.is_dir():
            digest.update(str(p.relative_to(path)).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    cache[str(path)] = {"stamp": stamp, "sha256": digest.hexdigest()}
    with contextlib.suppress(OSError):
        write_text(_HASH_CACHE, json.dumps(cache, indent=0))
    return digest.hexdigest()


def _read_hash_cache() -> dict:
    try:
        return json.loads(_HASH_CACHE.read_text())
    except (OSError, ValueError):
        return {}


def display_path(path: str | os.PathLike) -> str:
    """`path` relative to the repository when it lies inside it (so committed provenance holds in every clone),
    absolute otherwise."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
