"""Files: atomic writes, cached content hashes and integrity checks.

Every file this repo writes goes through `atomic_write`, so an interrupted run never leaves a half-written
checkpoint or results table behind: the content goes to a temporary file in the same directory, which is renamed
over the target only once it is complete.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterator

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


class Busy(RuntimeError):
    """Another process holds the lock this one needs."""


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, *, what: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created if needed) for the block. When another process holds it,
    wait up to `wait_s` seconds, then raise `Busy` naming that process. The operating system releases the lock when
    its holder exits, however it exits, so a killed run never leaves a stale lock behind."""
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = path.read_text(errors="replace").strip() or "another process"
                    raise Busy(f"{what} is in use by {holder} (lock {path}); wait for it to finish, or change a "
                               "setting or --results to run beside it") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        os.close(fd)


def building(entry: str | os.PathLike, wait_s: float = 3600.0):
    """Hold the lock of the cache entry `entry` (a file or folder, which need not exist yet) while it is checked
    and built: concurrent jobs that need the same entry wait for the first one to finish it, then find it built,
    instead of building it again side by side."""
    entry = Path(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    return exclusive(entry.parent / f".{entry.name}.lock", what=f"cache entry {entry}", wait_s=wait_s)


def sha256(path: str | os.PathLike) -> str:
    """sha256 of a file (or of a folder's files, in sorted order), cached by path, size and mtime."""
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]

    def digest_files() -> str:
        digest = hashlib.sha256()
        for p in files:
            if path.is_dir():
                digest.update(str(p.relative_to(path)).encode())
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 22), b""):
                    digest.update(block)
        return digest.hexdigest()
    return _stamped(path, files, "sha256", digest_files)


def check_zip_archive(path: str | os.PathLike) -> None:
    """Raise ValueError unless `path` is a zip archive as `torch.save` writes them: every record stored uncompressed,
    inside the file, with a correct CRC-32. A compressed record could inflate without bound (a 1 MB file whose
    `data.pkl` is 800 MB) and a flipped bit would otherwise load silently. The CRC pass reads the file once; a
    passing result is cached by size and mtime like `sha256`."""
    path = Path(path).resolve()
    size = path.stat().st_size
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError("truncated or corrupt: a zip archive (the torch.save format) without a readable "
                         "directory; download or copy it again") from None
    with archive:
        for record in archive.infolist():
            if record.compress_type != zipfile.ZIP_STORED or record.compress_size != record.file_size:
                raise ValueError(f"record '{record.filename}' is compressed ({record.compress_size} bytes -> "
                                 f"{record.file_size}); torch.save never compresses, so the file was not written by "
                                 "it and is refused")
            if record.header_offset + record.file_size > size:
                raise ValueError(f"record '{record.filename}' claims {record.file_size} bytes, beyond the end of the "
                                 f"{size}-byte file: truncated or corrupt")

        def crc_check() -> str:
            try:
                bad = archive.testzip()
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise ValueError(f"truncated or corrupt: {e}") from None
            if bad is not None:
                raise ValueError(f"corrupt: record '{bad}' fails its CRC-32 check (the file changed after it was "
                                 "written); download or copy it again")
            return "ok"
        _stamped(path, [path], "zip_crc", crc_check)


def _stamped(path: Path, files: list[Path], kind: str, compute: Callable[[], str]) -> str:
    """`compute()`, cached in the hash cache under (`kind`, path) while the files' sizes and mtimes stay the same."""
    stamp = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key = str(path) if kind == "sha256" else f"{kind}:{path}"
    cache = _read_hash_cache()
    entry = cache.get(key)
    if entry and entry.get("stamp") == stamp and "value" in entry:
        return entry["value"]
    value = compute()
    cache = _read_hash_cache()  # re-read: another process may have added entries meanwhile
    cache[key] = {"stamp": stamp, "value": value}
    with contextlib.suppress(OSError):
        write_text(_HASH_CACHE, json.dumps(cache, indent=0))
    return value


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
