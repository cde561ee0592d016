"""Durable file writes: the one atomic write every module uses (no hdus_edge imports).

A crash leaves either the old file or the new one, never a mix, and never a half-written temp
file that a reader could mistake for data: bytes go to a temp file named ``.tmp-<name>.<random>``
beside the target (same filesystem, so the rename is atomic), created with its final mode (a key
is never briefly world-readable), fsynced, renamed over the target, and the directory is fsynced
so the rename itself survives a power cut. Temp names share ``TMP_PREFIX`` so the store's start-up
sweep and the reliability invariants can find strays.

Every fsync of the toolkit goes through ``fsync`` here (SQLite's own are reported with
``count_syncs``), so ``sync_count`` tells how many a step cost: the agent reports it per unlearn order,
counted on its own thread (``thread_sync_count``) so that other threads' work does not add to it.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"

_syncs = 0
_syncs_lock = threading.Lock()
_thread_syncs = threading.local()


def count_syncs(n: int = 1) -> None:
    """Add ``n`` fsyncs made elsewhere (a durable SQLite commit) to ``sync_count``."""
    global _syncs
    with _syncs_lock:
        _syncs += n
    _thread_syncs.n = getattr(_thread_syncs, "n", 0) + n


def thread_sync_count() -> int:
    """fsyncs the calling thread made so far (as ``sync_count``, for this thread only)."""
    return getattr(_thread_syncs, "n", 0)


def sync_count() -> int:
    """fsyncs this process made so far (through ``fsync`` or reported with ``count_syncs``)."""
    with _syncs_lock:
        return _syncs


def fsync(fd: int) -> None:
    """``os.fsync``, counted (``sync_count``)."""
    os.fsync(fd)
    count_syncs()


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that renames and unlinks in it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, sync_dir: bool = True, durable: bool = True) -> None:
    """Write ``data`` to ``path`` durably: temp file (final ``mode``), fsync, rename, fsync the directory.

    ``sync_dir=False`` leaves the directory fsync to the caller, for a batch of writes in one
    directory that ends with one ``fsync_dir``. ``durable=False`` skips both fsyncs: still atomic for
    readers (the old file or the new one), but a power cut may lose it; for files rewritten anyway
    (the agent's status.json).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask; fchmod is not
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir and durable:
        fsync_dir(path.parent)


def write_json(path: Path, obj: Any, *, mode: int = 0o644, durable: bool = True) -> None:
    """Atomically write ``obj`` as pretty, key-sorted JSON (``durable``: as in ``atomic_write``)."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode=mode, durable=durable)
