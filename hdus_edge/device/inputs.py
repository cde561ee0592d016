"""Inputs for ``hdus-edge predict``: ``.npy`` / ``.npz`` batches and PNG / JPEG / PGM images (no torch).

Every reader returns float32 ``[N, C, H, W]`` in [0, 1], the normalisation the models were trained
with (``hdus_edge.data.dataset``): uint8 / 255, PGM / its maxval, floats kept when already in [0, 1].
A shape other than the fleet's is a ``DataShapeError`` naming both shapes; images may be resized
on request. PGM (P2 and P5) is parsed here; other image formats go through Pillow
(``hdus_edge.data.images``). Images take the fleet's channel count: colour to grey for C = 1, RGB
for C = 3 (a grey image repeated in the three channels).
"""

from __future__ import annotations

import logging
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hdus_edge.data.images import IMAGE_SUFFIXES, read_image
from hdus_edge.errors import DataError, DataFormatError, DataShapeError

logger = logging.getLogger(__name__)

PNM_SUFFIXES = (".pgm", ".pnm")
ARRAY_SUFFIXES = (".npy", ".npz")


def read_inputs(
    paths: Sequence[Path],
    input_shape: tuple[int, int, int],
    *,
    resize: bool = False,
    invert: bool = False,
) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Read every path into one batch; return (x [N, C, H, W], [(source file, index in file)] per row)."""
    if not paths:
        raise DataError("no input given", hint="pass a .npy batch or image files")
    parts: list[np.ndarray] = []
    sources: list[tuple[str, int]] = []
    for path in paths:
        x = read_input(Path(path), input_shape, resize=resize)
        if invert:
            x = np.float32(1.0) - x
        parts.append(x)
        sources += [(str(path), i) for i in range(len(x))]
    return np.concatenate(parts), sources


def read_input(path: Path, input_shape: tuple[int, int, int], *, resize: bool = False) -> np.ndarray:
    """One file as float32 ``[N, C, H, W]`` in [0, 1] with the fleet's ``input_shape``."""
    if not path.is_file():
        raise DataError(f"{path}: no such file", hint="pass a .npy batch or an image (PNG, PGM, ...)")
    suffix = path.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        return _array_input(path, input_shape)
    if suffix in PNM_SUFFIXES:
        image = np.repeat(read_pgm(path)[None], input_shape[0], axis=0)  # [C, H, W]
    elif suffix in IMAGE_SUFFIXES:
        image = read_image(path, input_shape[0])
    else:
        raise DataFormatError(f"{path}: unknown input format {suffix or '(no suffix)'!r}",
                              hint="use .npy / .npz for batches, or PNG / JPEG / PGM images")
    return _image_input(path, image, input_shape, resize)


def _array_input(path: Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    try:
        # allow_pickle=False: an input file must never be able to run code.
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded as npz:
                if "x" not in npz.files:
                    raise DataFormatError(f"{path}: an .npz input needs an array 'x' (found {sorted(npz.files)})")
                array = npz["x"]
        else:
            array = loaded
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFormatError(f"{path}: not a readable NumPy file ({exc})") from None
    c, h, w = input_shape
    given = list(array.shape)
    if array.ndim == 2:
        array = array[None, None]  # one image [H, W]
    elif array.ndim == 3 and c == 1:
        array = array[:, None]  # a batch of single-channel images [N, H, W]
    elif array.ndim == 3 and array.shape == (c, h, w):
        array = array[None]  # one image [C, H, W]
    elif array.ndim == 4 and tuple(array.shape[1:]) == (h, w, c) and c > 1:
        array = array.transpose(0, 3, 1, 2)  # channels-last [N, H, W, C], as image tools write it
    if array.ndim != 4 or tuple(array.shape[1:]) != (c, h, w):
        raise DataShapeError(
            f"{path}: input has shape {given}, but this device's models take [N, {c}, {h}, {w}]",
            hint=f"pass [N, {c}, {h}, {w}] (or [N, {h}, {w}]) arrays",
        )
    return _normalise(array, str(path))


def _normalise(array: np.ndarray, source: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(array.dtype, np.floating):
        x = array.astype(np.float32)
        if not np.isfinite(x).all() or (x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0)):
            raise DataFormatError(
                f"{source}: float inputs must lie in [0, 1], found [{float(np.nanmin(x))}, {float(np.nanmax(x))}]",
                hint="scale pixels the way the training data was scaled (raw / maximum), or pass uint8",
            )
        return np.ascontiguousarray(x)
    raise DataFormatError(f"{source}: input has dtype {array.dtype}; expected uint8 or float in [0, 1]")


def _image_input(path: Path, image: np.ndarray, input_shape: tuple[int, int, int], resize: bool) -> np.ndarray:
    """``image`` [C, H, W] (C already the fleet's) as a batch of one, resized on request."""
    _, h, w = input_shape
    if image.shape[1:] != (h, w):
        if not resize:
            raise DataShapeError(
                f"{path}: image is {image.shape[2]}x{image.shape[1]} pixels, but this device's models take {w}x{h}",
                hint="pass --resize to scale it, or resize it yourself",
            )
        image = np.stack([_resize(channel, h, w) for channel in image])
    return np.ascontiguousarray(image[None], dtype=np.float32)


_PNM_TOKEN = re.compile(rb"\s*(?:#[^\n]*\n\s*)*(\S+)")


def read_pgm(path: Path) -> np.ndarray:
    """A PGM image (P2 ASCII or P5 binary, 8 or 16 bit) as float32 ``[H, W]`` in [0, 1]."""
    data = Path(path).read_bytes()
    pos = 0
    header: list[bytes] = []
    for _ in range(4):  # magic, width, height, maxval (comments allowed between them)
        m = _PNM_TOKEN.match(data, pos)
        if m is None:
            raise DataFormatError(f"{path}: truncated PGM header")
        header.append(m.group(1))
        pos = m.end()
    magic = header[0]
    if magic not in (b"P2", b"P5"):
        raise DataFormatError(f"{path}: not a PGM image (magic {magic[:8]!r}; expected P2 or P5)")
    try:
        width, height, maxval = (int(v) for v in header[1:])
    except ValueError:
        raise DataFormatError(f"{path}: PGM header has a non-numeric size or maxval") from None
    if not (width > 0 and height > 0 and 0 < maxval < 65536):
        raise DataFormatError(f"{path}: PGM header has size {width}x{height} and maxval {maxval}")
    count = width * height
    if magic == b"P5":
        pos += 1  # exactly one whitespace byte separates the header from the raster
        dtype = np.dtype(np.uint8) if maxval < 256 else np.dtype(">u2")
        raster = data[pos : pos + count * dtype.itemsize]
        if len(raster) != count * dtype.itemsize:
            raise DataFormatError(f"{path}: PGM raster is truncated ({len(raster)} of {count * dtype.itemsize} bytes)")
        values = np.frombuffer(raster, dtype=dtype).astype(np.float32)
    else:
        try:
            values = np.array(data[pos:].split(), dtype=np.float32)
        except ValueError:
            raise DataFormatError(f"{path}: PGM (P2) raster holds a non-numeric value") from None
        if len(values) != count:
            raise DataFormatError(f"{path}: PGM (P2) raster holds {len(values)} values, not {count}")
    if values.size and float(values.max()) > maxval:
        raise DataFormatError(f"{path}: PGM value {int(values.max())} exceeds maxval {maxval}")
    return (values / np.float32(maxval)).reshape(height, width)


def _resize(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """Area-average (down) or bilinear (up) resize of a float [H, W] image, via Pillow's float mode."""
    from PIL import Image

    resample = Image.Resampling.BOX if image.shape[0] >= h and image.shape[1] >= w else Image.Resampling.BILINEAR
    out = np.asarray(Image.fromarray(image.astype(np.float32)).resize((w, h), resample), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)
