"""Durable file writes: the one atomic write every module uses (no hdus_edge imports).

A crash leaves either the old file or the new one, never a mix, and never a half-written temp
file that a reader could mistake for data: bytes go to a temp file named ``.tmp-<name>.<random>``
beside the target (same filesystem, so the rename is atomic), created with its final mode (a key
is never briefly world-readable), fsynced, renamed over the target, and the directory is fsynced
so the rename itself survives a power cut. Temp names share ``TMP_PREFIX`` so the store's start-up
sweep and the reliability invariants can find strays.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that renames and unlinks in it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` durably: temp file (final ``mode``), fsync, rename, fsync the directory.

    ``sync_dir=False`` leaves the directory fsync to the caller, for a batch of writes in one
    directory that ends with one ``fsync_dir``.
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
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def write_json(path: Path, obj: Any, *, mode: int = 0o644) -> None:
    """Atomically write ``obj`` as pretty, key-sorted JSON."""
    atomic_write(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), mode=mode)
