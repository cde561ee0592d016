"""Reference sets for seed distillation: generated inputs, and the check that one holds no client data.

The exactness invariant needs the reference set to share no sample with any client's private data:
a seed distilled on a client sample would carry that client's data into every neighbour.
:func:`check_reference_disjoint` proves it by content (per-sample hashes of the pixels), not by
index, so a copy of a client image that reached the reference by another path is caught too. Only
exact copies are caught (byte-equal float32); a re-encoded or shifted copy is not.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hdus_edge.data.dataset import UNLABELED, Dataset, dataset_sha256, sample_hashes
from hdus_edge.data.loaders import load_npz
from hdus_edge.errors import (
    DataError,
    DataShapeError,
    ReferenceOverlapError,
    StateDirError,
)

logger = logging.getLogger(__name__)

NOISE_KINDS: tuple[str, ...] = ("mixed", "uniform", "blobs")


def noise_reference(
    input_shape: tuple[int, int, int],
    n: int,
    seed: int,
    num_classes: int,
    *,
    kind: str = "mixed",
) -> Dataset:
    """``n`` generated, unlabeled (y = -1) inputs in the data range [0, 1].

    Kinds: ``"uniform"`` i.i.d. U(0, 1) pixels; ``"blobs"`` smooth shapes on a dark background
    (coarse uniform noise upsampled bilinearly, stretched to [0, 1], then thresholded at a random
    level in [0.3, 0.7] per sample, so most pixels are 0 as in digit images); ``"mixed"`` (default)
    half of each, in random order. Same arguments, same bytes.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown noise kind {kind!r}; use one of {NOISE_KINDS}")
    if n < 1:
        raise ValueError(f"a reference set needs at least one sample, got n={n}")
    c, h, w = (int(d) for d in input_shape)
    rng = np.random.default_rng(seed)
    n_blobs = {"uniform": 0, "blobs": n, "mixed": n // 2}[kind]
    uniform = rng.random((n - n_blobs, c, h, w), dtype=np.float32)
    blobs = _blobs(n_blobs, c, h, w, rng)
    x = np.concatenate([uniform, blobs])[rng.permutation(n)]
    y = np.full(n, UNLABELED, dtype=np.int64)
    return Dataset(x=x, y=y, num_classes=num_classes, name=f"noise-{kind}")


def _blobs(n: int, c: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    gh, gw = max(2, h // 4), max(2, w // 4)
    coarse = rng.random((n, c, gh, gw))
    up = np.einsum("hi,ncij,wj->nchw", _interp_matrix(h, gh), coarse, _interp_matrix(w, gw))
    lo = up.min(axis=(1, 2, 3), keepdims=True)
    hi = up.max(axis=(1, 2, 3), keepdims=True)
    up = (up - lo) / np.maximum(hi - lo, 1e-12)
    t = rng.uniform(0.3, 0.7, size=(n, 1, 1, 1))
    return np.clip((up - t) / (1.0 - t), 0.0, 1.0).astype(np.float32)


def _interp_matrix(out_len: int, in_len: int) -> np.ndarray:
    """[out_len, in_len] weights of 1-D linear interpolation, corners aligned."""
    pos = np.linspace(0.0, in_len - 1, out_len)
    lo = np.minimum(np.floor(pos).astype(np.int64), in_len - 2)
    frac = pos - lo
    m = np.zeros((out_len, in_len))
    m[np.arange(out_len), lo] = 1.0 - frac
    m[np.arange(out_len), lo + 1] += frac
    return m


def check_reference_disjoint(reference: Dataset, clients: Sequence[Dataset]) -> None:
    """Raise ``ReferenceOverlapError`` when any reference sample equals a sample of any client.

    The message names every offending client (index and name) and how many reference samples it
    shares. Raises ``DataShapeError`` when a client's input shape differs from the reference's.
    """
    ref = set(sample_hashes(reference.x).tolist())
    overlaps: list[str] = []
    for i, client in enumerate(clients):
        if len(client) and client.input_shape != reference.input_shape:
            raise DataShapeError(
                f"client {i} ({client.name!r}) has input shape {client.input_shape}, "
                f"the reference set {reference.input_shape}"
            )
        shared = ref.intersection(sample_hashes(client.x).tolist())
        if shared:
            overlaps.append(f"{len(shared)} with client {i} ({client.name!r})")
    if overlaps:
        raise ReferenceOverlapError(
            f"reference set {reference.name!r} shares samples with client data: " + ", ".join(overlaps)
        )
    logger.debug("reference %r is disjoint from %d clients", reference.name, len(clients))


def check_reference_file(path: Path, expected_sha256: str) -> Dataset:
    """Load a ``reference.npz`` and check it is the fleet's (``StateDirError`` otherwise)."""
    if not path.exists():
        raise StateDirError(f"reference set {path} is missing",
                            hint="copy reference.npz from the fleet admin dir, or provision the device again")
    try:
        data = load_npz(path)
    except DataError as exc:
        raise StateDirError(f"the reference set is unreadable: {exc.message}",
                            hint="copy reference.npz from the fleet admin dir again") from None
    got = dataset_sha256(data)
    if expected_sha256 and got != expected_sha256:
        raise StateDirError(
            f"reference set {path} has sha256 {got[:12]}..., but the fleet's is {expected_sha256[:12]}...",
            hint="copy reference.npz from the fleet admin dir again",
        )
    return data
