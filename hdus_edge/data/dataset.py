"""The one in-memory dataset type, and content hashes over it.

Normalisation (the contract every loader and every model relies on):

- ``x`` is float32, shape ``[N, C, H, W]`` (C = 1 for every built-in source), values in [0, 1],
  obtained as raw value / largest raw value of the format: sklearn digits / 16, IDX and ``.npz``
  uint8 / 255; float ``.npz`` data already in [0, 1] is kept as is. No mean/std standardisation
  happens here: models that want it do it themselves, so seeds and main models see the same bytes.
- ``y`` is int64, shape ``[N]``, class ids in ``[0, num_classes)``; ``-1`` marks an unlabeled sample
  (generated reference inputs).

Hashes are over little-endian bytes, so they are stable across machines; ``-0.0`` is folded into
``0.0`` first so that two samples that compare equal hash equal.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hdus_edge.errors import DataShapeError

logger = logging.getLogger(__name__)

UNLABELED = -1


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels, validated on construction (arrays are not copied).

    Attributes:
        x: float32 ``[N, C, H, W]`` in [0, 1] (C = 1 for the built-in sources).
        y: int64 ``[N]``; ``-1`` for unlabeled samples.
        num_classes: number of classes of the task (labels lie in ``[0, num_classes)``).
        name: free text for logs and reports.
    """

    x: np.ndarray = field(repr=False)
    y: np.ndarray = field(repr=False)
    num_classes: int
    name: str = ""

    def __post_init__(self) -> None:
        where = f"dataset {self.name!r}" if self.name else "dataset"
        if not isinstance(self.x, np.ndarray) or self.x.dtype != np.float32 or self.x.ndim != 4:
            raise DataShapeError(
                f"{where}: x must be a float32 array of shape [N, C, H, W], "
                f"got {_describe(self.x)}",
                hint="use the loaders in hdus_edge.data, which normalise inputs to float32 in [0, 1]",
            )
        if not isinstance(self.y, np.ndarray) or self.y.dtype != np.int64 or self.y.ndim != 1:
            raise DataShapeError(
                f"{where}: y must be an int64 array of shape [N], got {_describe(self.y)}"
            )
        if len(self.x) != len(self.y):
            raise DataShapeError(f"{where}: x holds {len(self.x)} samples but y holds {len(self.y)} labels")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer)):
            raise DataShapeError(f"{where}: num_classes must be an int, got {self.num_classes!r}")
        if self.num_classes < 1:
            raise DataShapeError(f"{where}: num_classes must be at least 1, got {self.num_classes}")
        object.__setattr__(self, "num_classes", int(self.num_classes))
        if len(self.y) == 0:
            return
        lo, hi = float(self.x.min()), float(self.x.max())
        # `not (a <= b)` also catches NaN.
        if not (0.0 <= lo and hi <= 1.0):
            raise DataShapeError(
                f"{where}: x values must lie in [0, 1], found range [{lo}, {hi}]",
                hint="divide raw pixel values by their maximum (255 for uint8 images)",
            )
        ymin, ymax = int(self.y.min()), int(self.y.max())
        if ymin < UNLABELED or ymax >= self.num_classes:
            raise DataShapeError(
                f"{where}: labels must lie in [0, {self.num_classes}) or be -1 (unlabeled), "
                f"found range [{ymin}, {ymax}]"
            )

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one sample, ``(C, H, W)``."""
        c, h, w = self.x.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def labeled(self) -> bool:
        """True when no sample carries the unlabeled marker -1."""
        return bool(len(self) == 0 or self.y.min() >= 0)

    def class_counts(self) -> np.ndarray:
        """Samples per class, int64 ``[num_classes]`` (unlabeled samples are not counted)."""
        return np.bincount(self.y[self.y >= 0], minlength=self.num_classes).astype(np.int64)

    def subset(self, idx: np.ndarray, name: str | None = None) -> Dataset:
        """The samples at ``idx`` (integer indices or a boolean mask), as a new dataset."""
        idx = np.asarray(idx)
        if idx.dtype != np.bool_ and not np.issubdtype(idx.dtype, np.integer):
            if idx.size:  # an empty list arrives as float64; that is fine
                raise TypeError(f"subset indices must be integers or a boolean mask, got {idx.dtype}")
            idx = idx.astype(np.int64)
        if idx.ndim != 1:
            raise ValueError(f"subset indices must be 1-D, got shape {idx.shape}")
        return Dataset(
            x=self.x[idx], y=self.y[idx], num_classes=self.num_classes,
            name=self.name if name is None else name,
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )


def _describe(a: object) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def concatenate(parts: Sequence[Dataset], name: str = "") -> Dataset:
    """Join datasets of one input shape; ``num_classes`` is the largest among them."""
    if not parts:
        raise ValueError("concatenate needs at least one dataset")
    shapes = {p.input_shape for p in parts}
    if len(shapes) > 1:
        listing = ", ".join(f"{p.name or '?'}: {p.input_shape}" for p in parts)
        raise DataShapeError(f"cannot join datasets of different input shapes ({listing})")
    return Dataset(
        x=np.concatenate([p.x for p in parts]),
        y=np.concatenate([p.y for p in parts]),
        num_classes=max(p.num_classes for p in parts),
        name=name,
    )


def _canonical(x: np.ndarray) -> np.ndarray:
    # Little-endian float32, C order, -0.0 folded into 0.0 (x + 0.0 does exactly that).
    return np.ascontiguousarray(np.asarray(x, dtype="<f4") + np.float32(0.0))


def dataset_sha256(ds: Dataset) -> str:
    """SHA-256 over shape, ``num_classes``, x bytes and y bytes; the name is not hashed."""
    h = hashlib.sha256()
    h.update(f"hdus-dataset-v1|{tuple(ds.x.shape)}|{ds.num_classes}|".encode())
    h.update(_canonical(ds.x).data)
    h.update(np.ascontiguousarray(ds.y, dtype="<i8").data)
    return h.hexdigest()


def sample_hashes(x: np.ndarray) -> np.ndarray:
    """One content hash per sample of ``x`` ``[N, ...]``: hex strings ``<U32``, shape ``[N]``.

    The hash covers the sample's shape and float32 bytes, never its index or label, so two
    datasets share a hash exactly when they share a sample's pixels.
    """
    flat = _canonical(x)
    base = hashlib.blake2b(f"hdus-sample-v1|{tuple(flat.shape[1:])}|".encode(), digest_size=16)
    out = np.empty(len(flat), dtype="<U32")
    for i, sample in enumerate(flat):
        h = base.copy()
        h.update(sample.data)
        out[i] = h.hexdigest()
    return out
