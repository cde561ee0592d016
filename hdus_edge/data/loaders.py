"""Dataset loaders (does I/O): sklearn digits, IDX files, ``.npz`` files, images, and folders of them.

Every loader returns a :class:`~hdus_edge.data.dataset.Dataset` normalised as that module describes
(float32 [N, C, H, W] in [0, 1]; C = 1, or 3 for colour ``.npz`` and image folders) and raises ``DataError`` when a file is missing and
``DataFormatError`` (naming the file) when its bytes are not what the format promises.
"""

from __future__ import annotations

import gzip
import io
import logging
import zipfile
import zlib
from pathlib import Path

import numpy as np

from hdus_edge.data.dataset import Dataset, concatenate
from hdus_edge.data.idx import IMAGES_MAGIC, LABELS_MAGIC, decode_idx
from hdus_edge.data.images import CHANNELS, IMAGE_SUFFIXES, load_image_folder
from hdus_edge.errors import DataError, DataFormatError, DataShapeError
from hdus_edge.files import atomic_write

logger = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 samples, 10 classes, no download), raw / 16."""
    from sklearn.datasets import (
        load_digits as _sk_load_digits,  # heavy import, only when asked
    )

    bunch = _sk_load_digits()
    x = (bunch.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    return Dataset(x=x, y=bunch.target.astype(np.int64), num_classes=10, name="digits")


def _read_bytes(path: Path) -> bytes:
    """File bytes, gunzipped when the file starts with the gzip magic (whatever its suffix)."""
    if not path.is_file():
        raise DataError(f"{path}: no such file", hint="check the path, or pass a folder holding the data")
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataFormatError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def load_idx(images: Path, labels: Path, *, num_classes: int | None = None) -> Dataset:
    """An IDX3 images file and an IDX1 labels file (each raw or ``.gz``) as one dataset.

    ``num_classes`` defaults to the largest label + 1.
    """
    images, labels = Path(images), Path(labels)
    x = decode_idx(_read_bytes(images), expect_magic=IMAGES_MAGIC, source=str(images))
    y = decode_idx(_read_bytes(labels), expect_magic=LABELS_MAGIC, source=str(labels))
    if len(x) != len(y):
        raise DataFormatError(
            f"{images} holds {len(x)} images but {labels} holds {len(y)} labels",
            hint="pair an images file with the labels file of the same split",
        )
    y64 = y.astype(np.int64)
    n_cls = _num_classes(y64, num_classes, source=str(labels))
    x32 = (x.astype(np.float32) / np.float32(255.0))[:, None, :, :]
    logger.debug("loaded %d IDX samples from %s", len(y64), images)
    return Dataset(x=x32, y=y64, num_classes=n_cls, name=images.parent.name or str(images))


def _num_classes(y: np.ndarray, given: int | None, *, source: str) -> int:
    top = int(y.max()) + 1 if len(y) else 1
    if given is None:
        return max(top, 1)
    if top > given:
        raise DataFormatError(f"{source}: label {top - 1} does not fit num_classes={given}")
    return given


def _find_idx(folder: Path) -> tuple[list[Path], list[Path]]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    images = [p for p in files if "images" in p.name.lower() and "idx3" in p.name.lower()]
    labels = [p for p in files if "labels" in p.name.lower() and "idx1" in p.name.lower()]
    return images, labels


def load_idx_folder(folder: Path, *, num_classes: int | None = None) -> Dataset:
    """The one ``*images*idx3*`` and one ``*labels*idx1*`` file (raw or ``.gz``) in ``folder``."""
    folder = _existing_dir(folder)
    images, labels = _find_idx(folder)
    for kind, found, pattern in (("images", images, "*images*idx3*"), ("labels", labels, "*labels*idx1*")):
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise DataError(
                f"{folder}: expected exactly one IDX {kind} file matching {pattern}, found {names}",
                hint="keep one split per folder (e.g. t10k-images-idx3-ubyte.gz + t10k-labels-idx1-ubyte.gz)",
            )
    ds = load_idx(images[0], labels[0], num_classes=num_classes)
    return Dataset(x=ds.x, y=ds.y, num_classes=ds.num_classes, name=folder.name)


def _existing_dir(folder: Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder", hint="pass a folder holding IDX or .npz files")
    return folder


def load_npz(path: Path) -> Dataset:
    """A ``.npz`` with ``x`` ([N, H, W], [N, C, H, W] or channels-last [N, H, W, 3]; C = 1 or 3) and
    ``y`` ([N] integers).

    uint8 ``x`` is divided by 255; float ``x`` must already lie in [0, 1]. Optional keys
    ``num_classes`` and ``name`` (written by :func:`save_npz`) are honoured.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file", hint="check the path of the .npz file")
    try:
        # allow_pickle=False: a data file must never be able to run code.
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataFormatError(f"{path}: a single .npy array, not an .npz archive with x and y")
        with loaded as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataFormatError(f"{path}: not a readable .npz file ({exc})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataFormatError(f"{path}: missing array {key!r} (found {sorted(arrays)})")
    x = _npz_images(arrays["x"], source=str(path))
    y = _npz_labels(arrays["y"], source=str(path))
    if len(x) != len(y):
        raise DataFormatError(f"{path}: x holds {len(x)} samples but y holds {len(y)} labels")
    given = None
    if "num_classes" in arrays:
        nc = arrays["num_classes"]
        if nc.ndim != 0 or not np.issubdtype(nc.dtype, np.integer) or int(nc) < 1:
            raise DataFormatError(f"{path}: num_classes must be one positive integer, got {nc!r}")
        given = int(nc)
    name = str(arrays["name"]) if "name" in arrays and str(arrays["name"]) else path.stem
    return Dataset(x=x, y=y, num_classes=_num_classes(y, given, source=str(path)), name=name)


def _npz_images(x: np.ndarray, *, source: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4 and x.shape[1] not in CHANNELS and x.shape[3] in CHANNELS:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # channels-last, as image tools write it
    if x.ndim != 4 or x.shape[1] not in CHANNELS:
        raise DataShapeError(f"{source}: x has shape {x.shape}; expected [N, H, W], [N, C, H, W] or [N, H, W, C] "
                             "with C = 1 (grey) or 3 (RGB)")
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(x.dtype, np.floating):
        x32 = x.astype(np.float32)
        if x32.size and not (0.0 <= float(x32.min()) and float(x32.max()) <= 1.0):
            raise DataFormatError(
                f"{source}: float x must lie in [0, 1], found [{float(x32.min())}, {float(x32.max())}]",
                hint="store raw pixels as uint8, or divide floats by their maximum before saving",
            )
        return x32
    raise DataFormatError(f"{source}: x has dtype {x.dtype}; expected uint8 or float in [0, 1]")


def _npz_labels(y: np.ndarray, *, source: str) -> np.ndarray:
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataFormatError(f"{source}: y must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
    y64 = y.astype(np.int64)
    if len(y64) and int(y64.min()) < -1:
        raise DataFormatError(f"{source}: labels must be >= 0 (or -1 for unlabeled), found {int(y64.min())}")
    return y64


def save_npz(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a compressed ``.npz`` that :func:`load_npz` reads back unchanged (atomic)."""
    path = Path(path)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=ds.x, y=ds.y, num_classes=np.int64(ds.num_classes), name=np.str_(ds.name))
    atomic_write(path, buf.getvalue())
    return path


def load_data_folder(folder: Path) -> Dataset:
    """A folder holding one IDX images/labels pair, one or more ``.npz`` files, or images (PNG, JPEG,
    ...: see :func:`~hdus_edge.data.images.load_image_folder`).

    Several ``.npz`` files are joined in file-name order; they must share one input shape.
    """
    folder = _existing_dir(folder)
    images, labels = _find_idx(folder)
    npz = sorted(p for p in folder.glob("*.npz") if p.is_file())
    if (images or labels) and npz:
        raise DataError(
            f"{folder}: holds both IDX files and .npz files; which one is the data is ambiguous",
            hint="keep one format per folder",
        )
    if images or labels:
        return load_idx_folder(folder)
    if not npz and _holds_images(folder):
        return load_image_folder(folder)
    if not npz:
        raise DataError(
            f"{folder}: no data found (expected an IDX images/labels pair or .npz files)",
            hint="IDX files are named like *images*idx3* and *labels*idx1*; .npz files hold x and y; "
                 "images go in class subfolders 0/, 1/, ...",
        )
    parts = [load_npz(p) for p in npz]
    if len(parts) == 1:
        return Dataset(x=parts[0].x, y=parts[0].y, num_classes=parts[0].num_classes, name=folder.name)
    shapes = {p.input_shape for p in parts}
    if len(shapes) > 1:
        listing = ", ".join(f"{f.name}: {d.input_shape}" for f, d in zip(npz, parts))
        raise DataShapeError(f"{folder}: .npz files have different input shapes ({listing})")
    return concatenate(parts, name=folder.name)


def _holds_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in folder.glob("*") if p.is_file()) or any(
        p.suffix.lower() in IMAGE_SUFFIXES for p in folder.glob("*/*") if p.is_file())


def load_dataset(name_or_path: str | Path) -> Dataset:
    """``"digits"``, ``"mnist"`` (MNIST's test split), ``"mnist-train5k"``, a folder or a ``.npz``.

    The MNIST files are the package's own copy, or those in ``$HDUS_MNIST_DIR``
    (see :mod:`hdus_edge.data.mnist_bundle`).
    """
    key = str(name_or_path)
    if key == "digits":
        return load_digits()
    if key in ("mnist", "mnist-train5k"):
        from hdus_edge.data.mnist_bundle import load_mnist  # it builds on this module's load_idx

        return load_mnist("test" if key == "mnist" else "train5k")
    path = Path(key)
    if path.is_dir():
        return load_data_folder(path)
    if path.is_file() and path.suffix == ".npz":
        return load_npz(path)
    raise DataError(
        f"unknown dataset {key!r}: not 'digits', 'mnist', 'mnist-train5k', a folder or a .npz file",
        hint="pass 'digits' or 'mnist' (both bundled, offline), or the path of a data folder",
    )
