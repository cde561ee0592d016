"""Image files (PNG, JPEG, ...) as model input, one at a time or a folder of them (does I/O, Pillow).

One decoder for every image the toolkit reads: ``hdus-edge predict``'s inputs and image-folder
datasets. An image becomes float32 ``[C, H, W]`` in [0, 1] (raw / 255) with the channel count
asked for: ``C = 1`` converts colour to grey (ITU-R 601 luma), ``C = 3`` converts to RGB (a grey
image's value is repeated in the three channels); alpha is dropped. Camera devices see RGB.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hdus_edge.data.dataset import UNLABELED, Dataset
from hdus_edge.errors import DataError, DataFormatError, DataShapeError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CHANNELS: tuple[int, ...] = (1, 3)
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _open(path: Path):  # -> PIL.Image.Image, loaded
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        raise DataFormatError(f"{path}: reading images needs Pillow", hint="pip install pillow") from None
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise DataFormatError(f"{path}: not a readable image ({exc})") from None


def image_channels(path: Path) -> int:
    """1 when the file holds a grey image, 3 when it holds colour (palette images count as colour)."""
    return 1 if _open(Path(path)).mode in _GREY_MODES else 3


def read_image(path: Path, channels: int) -> np.ndarray:
    """The image at ``path`` as float32 ``[channels, H, W]`` in [0, 1] (see the module docstring)."""
    if channels not in CHANNELS:
        raise DataShapeError(f"images are read with 1 (grey) or 3 (RGB) channels, not {channels}")
    img = _open(Path(path))
    if img.mode in ("I", "I;16", "I;16B", "I;16L") and channels == 1:
        raw = np.asarray(img, dtype=np.float32)  # 16-bit grey: keep the precision, scale by its range
        return (np.clip(raw, 0, 65535) / np.float32(65535.0))[None]
    array = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.float32) / np.float32(255.0)
    return np.ascontiguousarray(array[None] if channels == 1 else array.transpose(2, 0, 1))


def load_image_folder(folder: Path, *, num_classes: int | None = None) -> Dataset:
    """A folder of images as one dataset.

    Layout: one subfolder per class, named by its class id (``0/``, ``1/``, ...), holding that class's
    images; or images directly in ``folder``, unlabeled (y = -1: a reference set). Files are read in
    name order; every image must have the same size. The dataset has 3 channels when any image is
    in colour, else 1. ``num_classes`` defaults to the largest class id + 1.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder", hint="pass a folder of images, or of class subfolders")
    files: list[tuple[Path, int]] = [(p, UNLABELED) for p in _images_in(folder)]
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and _images_in(p))
    if files and subfolders:
        raise DataError(f"{folder}: holds images and class subfolders of images; which one is the data is ambiguous",
                        hint="put every image in its class's subfolder (0/, 1/, ...), or none in subfolders")
    for sub in subfolders:
        if not sub.name.isdigit():
            raise DataError(f"{sub}: class subfolders must be named by class id (0, 1, 2, ...), not {sub.name!r}")
        files += [(p, int(sub.name)) for p in _images_in(sub)]
    if not files:
        raise DataError(f"{folder}: no images found ({', '.join(IMAGE_SUFFIXES)})")
    channels = 3 if any(image_channels(p) == 3 for p, _ in files) else 1
    images = [read_image(p, channels) for p, _ in files]
    sizes = {im.shape for im in images}
    if len(sizes) > 1:
        listing = ", ".join(f"{p.relative_to(folder)}: {im.shape[2]}x{im.shape[1]}" for (p, _), im in list(zip(files, images))[:4])
        raise DataShapeError(f"{folder}: images differ in size ({listing}, ...)", hint="resize them to one size first")
    y = np.array([label for _, label in files], dtype=np.int64)
    top = int(y.max()) + 1 if len(y) else 1
    if num_classes is not None and top > num_classes:
        raise DataFormatError(f"{folder}: class {top - 1} does not fit num_classes={num_classes}")
    logger.debug("loaded %d images (%d channels) from %s", len(files), channels, folder)
    return Dataset(np.stack(images), y, num_classes or max(top, 1), name=folder.name)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
