"""Real MNIST inside the package (does I/O): the 10,000-image test split and 5,000 training images.

The files lie in ``hdus_edge/data/mnist/`` (package data, so a wheel carries them; their source,
sha256s and licence are in that folder's README.md). Each is checked against its sha256 when
loaded, so a damaged or changed copy is a ``DataError``, never silently different numbers.
``$HDUS_MNIST_DIR`` points at another folder holding the same file names (raw or ``.gz``); files
there are the user's and are not checked.

The two splits share no image (checked by content hash in the tests): the test split is the pool a
simulated fleet is carved from, the 5,000 training images a public reference set.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hdus_edge.data.dataset import Dataset
from hdus_edge.data.loaders import load_idx
from hdus_edge.errors import DataError

logger = logging.getLogger(__name__)

MNIST_DIR_ENV = "HDUS_MNIST_DIR"
BUNDLED_MNIST_DIR = Path(__file__).resolve().parent / "mnist"


@dataclass(frozen=True)
class MnistFile:
    """One bundled file: its name and the sha256 of its (gzip) bytes."""

    name: str
    sha256: str


# split -> (images, labels); the sha256s are those of the published files (see mnist/README.md).
MNIST_SPLITS: dict[str, tuple[MnistFile, MnistFile]] = {
    "test": (
        MnistFile("t10k-images-idx3-ubyte.gz", "167310007f03058885c7e95e6c0b19c20de5c7fd3031f4cbdadc9014a523d80b"),
        MnistFile("t10k-labels-idx1-ubyte.gz", "fc607395669ec21321ea83e4b82c0544b7e8e63ff5b34337c06bc0a17cc0da3c"),
    ),
    "train5k": (
        MnistFile("train5k-images-idx3-ubyte.gz", "e5267df2839ae561b5e76f26f2de21722c0549665ddcc8ac803dfb10a7b5a25a"),
        MnistFile("train5k-labels-idx1-ubyte.gz", "7c9a5115a47c51596e3401b18d017809679c31290def95dd8a625b44bf804063"),
    ),
}


def default_mnist_dir() -> Path:
    """Where the MNIST files are read from: ``$HDUS_MNIST_DIR``, else the copy inside the package."""
    env = os.environ.get(MNIST_DIR_ENV)
    return Path(env) if env else BUNDLED_MNIST_DIR


def load_mnist(split: str = "test", folder: Path | None = None) -> Dataset:
    """MNIST's ``"test"`` split (10,000 images) or ``"train5k"`` (5,000 training images, 500 a class).

    Read from ``folder``, else :func:`default_mnist_dir`. The bundled files are checked against
    their sha256 (``DataError`` on a mismatch); a folder of one's own may hold the files raw or
    gzipped under the same names.
    """
    if split not in MNIST_SPLITS:
        raise DataError(f"unknown MNIST split {split!r}", hint=f"use one of: {', '.join(MNIST_SPLITS)}")
    root = Path(folder) if folder is not None else default_mnist_dir()
    bundled = root.resolve() == BUNDLED_MNIST_DIR
    paths = [_locate(root, f, bundled=bundled) for f in MNIST_SPLITS[split]]
    if bundled:
        for path, expected in zip(paths, MNIST_SPLITS[split]):
            verify_sha256(path, expected.sha256)
    ds = load_idx(paths[0], paths[1], num_classes=10)
    return Dataset(x=ds.x, y=ds.y, num_classes=ds.num_classes, name=f"mnist-{split}")


def _locate(root: Path, file: MnistFile, *, bundled: bool) -> Path:
    candidates = [root / file.name] if bundled else [root / file.name, root / file.name.removesuffix(".gz")]
    for path in candidates:
        if path.is_file():
            return path
    if bundled:
        raise DataError(
            f"{root / file.name}: the bundled MNIST file is missing",
            hint="restore it ('git checkout hdus_edge/data/mnist') or reinstall hdus-edge",
        )
    raise DataError(
        f"{root}: no {file.name} (or {file.name.removesuffix('.gz')})",
        hint=f"put MNIST's files there under their usual names, or unset ${MNIST_DIR_ENV} to use the bundled copy",
    )


def verify_sha256(path: Path, expected: str) -> None:
    """Raise ``DataError`` unless the bytes of ``path`` have the sha256 ``expected``."""
    got = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    if got != expected:
        raise DataError(
            f"{path}: sha256 {got} does not match the bundled file's {expected} (the file is damaged or was changed)",
            hint="restore it ('git checkout hdus_edge/data/mnist') or reinstall hdus-edge",
        )
    logger.debug("%s: sha256 verified", path)
