"""Sample ids and the manifest of ids a model was trained on (pure numpy, no I/O).

A sample's id is its content hash (``sample_hashes``: pixels only, never index or label), so the
same image has the same id on every machine and in every file it travels in. A manifest is the
ordered list of ids of a training set: ids only, never data, so it can sit in provenance and
status output. Shard assignment is a function of the id alone: adding or removing a sample
changes only the shard that holds it (SISA, Bourtoule et al.).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from hdus_edge.data.dataset import Dataset, sample_hashes

SAMPLE_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Manifest:
    """The ids of a training set, in training order (duplicates kept: they are trained on twice)."""

    ids: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def sha256(self) -> str:
        """One hash naming the whole ordered id list (what provenance and ``status`` show)."""
        return ids_sha256(self.ids)

    def to_json(self) -> dict[str, object]:
        return {"format": 1, "size": self.size, "sha256": self.sha256, "ids": list(self.ids)}

    @classmethod
    def from_json(cls, data: object) -> Manifest:
        """Parse ``to_json`` output; ``ValueError`` when malformed or when the hash does not match."""
        if not isinstance(data, dict) or data.get("format") != 1 or not isinstance(data.get("ids"), list):
            raise ValueError("not a sample manifest of format 1")
        ids = tuple(check_sample_ids(data["ids"]))
        manifest = cls(ids)
        if data.get("sha256") != manifest.sha256:
            raise ValueError("the manifest's sha256 does not match its ids")
        return manifest


def manifest_of(data: Dataset) -> Manifest:
    """The manifest of ``data`` (one id per sample, in order)."""
    return Manifest(tuple(str(h) for h in sample_hashes(data.x)))


def ids_sha256(ids: Iterable[str]) -> str:
    """sha256 over an ordered id list (``hdus-manifest-v1`` domain, one id per line)."""
    h = hashlib.sha256(b"hdus-manifest-v1\n")
    for sample_id in ids:
        h.update(sample_id.encode("ascii") + b"\n")
    return h.hexdigest()


def check_sample_ids(ids: Iterable[object]) -> list[str]:
    """The ids as a list of strings; ``ValueError`` naming the first one that is not a sample id."""
    out = []
    for k, sample_id in enumerate(ids):
        if not isinstance(sample_id, str) or not SAMPLE_ID.match(sample_id):
            raise ValueError(f"entry {k} ({str(sample_id)[:40]!r}) is not a sample id (32 lowercase hex digits)")
        out.append(sample_id)
    return out


def shard_of(sample_id: str, shards: int) -> int:
    """The shard (0..shards-1) that holds ``sample_id``: a function of the id only."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return int(sample_id[:8], 16) % shards


def shard_indices(ids: Sequence[str], shards: int) -> list[np.ndarray]:
    """For each shard, the positions in ``ids`` of its samples (training order kept)."""
    which = np.array([shard_of(i, shards) for i in ids], dtype=np.int64)
    return [np.flatnonzero(which == k) for k in range(shards)]
