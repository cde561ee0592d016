"""The IDX format (LeCun's MNIST files), bytes <-> numpy, with no file I/O.

An IDX file is: two zero bytes, a type code, the number of dimensions, then one big-endian uint32
per dimension, then the data in C order. Read as one big-endian int32 the first four bytes are the
"magic number": 2051 for uint8 images [N, H, W], 2049 for uint8 labels [N].
"""

from __future__ import annotations

import numpy as np

from hdus_edge.errors import DataFormatError

IMAGES_MAGIC = 2051  # 0x00000803: uint8, 3 dims
LABELS_MAGIC = 2049  # 0x00000801: uint8, 1 dim
_UINT8 = 0x08


def decode_idx(data: bytes, *, expect_magic: int, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a uint8 array, checking magic number, header and data length.

    Raises ``DataFormatError`` naming ``source`` when anything does not match.
    """
    kind = "images (IDX3)" if expect_magic == IMAGES_MAGIC else "labels (IDX1)"
    if len(data) < 4:
        raise DataFormatError(f"{source}: {len(data)} bytes is too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expect_magic:
        raise DataFormatError(
            f"{source}: magic number {magic} (0x{magic:08x}) where IDX {kind} have {expect_magic}",
            hint="check that the images and labels files are not swapped and are IDX files",
        )
    ndim = data[3]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataFormatError(f"{source}: file ends inside the IDX header (truncated)")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(dims, dtype=np.int64)) if dims else 0
    got = len(data) - header_len
    if got != expected:
        state = "truncated" if got < expected else "has trailing bytes"
        raise DataFormatError(
            f"{source}: header promises {dims} = {expected} data bytes but the file holds {got} ({state})"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes for a uint8 array of 1 to 3 dimensions (labels or images)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"encode_idx writes uint8 data only, got {array.dtype}")
    if not 1 <= array.ndim <= 3:
        raise ValueError(f"encode_idx writes 1 to 3 dimensions, got {array.ndim}")
    header = bytes([0, 0, _UINT8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array).tobytes()
