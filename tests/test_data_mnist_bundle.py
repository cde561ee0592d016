"""MNIST inside the package: sha256-checked files, both splits, disjoint by content, the override."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from hdus_edge.data import (
    MNIST_DIR_ENV,
    MNIST_SPLITS,
    load_dataset,
    load_mnist,
    sample_hashes,
)
from hdus_edge.data.mnist_bundle import BUNDLED_MNIST_DIR, verify_sha256
from hdus_edge.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def test_split():
    return load_mnist("test")


@pytest.fixture(scope="module")
def train5k():
    return load_mnist("train5k")


def test_mnist_bundle_lies_inside_the_package() -> None:
    # Prepare / Execute
    files = sorted(p.name for p in BUNDLED_MNIST_DIR.iterdir())
    # Assert: the four files and the README that gives their sha256s, source and licence
    assert BUNDLED_MNIST_DIR == REPO / "hdus_edge" / "data" / "mnist"
    assert files == sorted(["README.md", *(f.name for pair in MNIST_SPLITS.values() for f in pair)])
    readme = (BUNDLED_MNIST_DIR / "README.md").read_text()
    assert "CC BY-SA 3.0" in readme
    for pair in MNIST_SPLITS.values():
        for f in pair:
            assert f.sha256 in readme and f.name in readme
            verify_sha256(BUNDLED_MNIST_DIR / f.name, f.sha256)


def test_mnist_bundle_declared_as_package_data() -> None:
    # A wheel carries only what pyproject declares (tests/test_device_install.py installs one).
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "mnist/*.gz" in data["hdus_edge.data"] and "mnist/README.md" in data["hdus_edge.data"]


def test_mnist_bundle_train5k(train5k) -> None:
    assert train5k.x.shape == (5000, 1, 28, 28) and train5k.x.dtype == np.float32
    assert train5k.class_counts().tolist() == [500] * 10
    assert float(train5k.x.min()) == 0.0 and float(train5k.x.max()) == 1.0
    assert train5k.name == "mnist-train5k"
    assert load_dataset("mnist-train5k").x.tobytes() == train5k.x.tobytes()


def test_mnist_bundle_splits_disjoint_by_content(test_split, train5k) -> None:
    # Prepare
    test_h, train_h = sample_hashes(test_split.x), sample_hashes(train5k.x)
    # Assert: no image repeats within a split, and none is shared between the two
    assert len(set(test_h.tolist())) == 10000
    assert len(set(train_h.tolist())) == 5000
    assert not set(test_h.tolist()) & set(train_h.tolist())


def _copy_bundle(dst: Path) -> Path:
    shutil.copytree(BUNDLED_MNIST_DIR, dst)
    return dst


def test_mnist_bundle_sha_mismatch_is_a_data_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare: a damaged copy standing in for the bundled folder (one label changed, still valid gzip IDX)
    copy = _copy_bundle(tmp_path / "mnist")
    labels = copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[8] = (raw[8] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw)))
    monkeypatch.setattr("hdus_edge.data.mnist_bundle.BUNDLED_MNIST_DIR", copy.resolve())
    # Execute / Assert
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: sha256 [0-9a-f]{64} does not match") as exc:
        load_mnist("test", copy)
    assert "reinstall" in exc.value.hint
    load_mnist("train5k", copy)  # the untouched split still loads
    (copy / "train5k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="bundled MNIST file is missing"):
        load_mnist("train5k", copy)


def test_mnist_bundle_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, train5k) -> None:
    # Prepare: a folder of one's own, with the training images decompressed (raw IDX), not checked
    own = tmp_path / "own"
    own.mkdir()
    for f in MNIST_SPLITS["train5k"]:
        (own / f.name.removesuffix(".gz")).write_bytes(gzip.decompress((BUNDLED_MNIST_DIR / f.name).read_bytes()))
    monkeypatch.setenv(MNIST_DIR_ENV, str(own))
    # Execute / Assert
    assert load_mnist("train5k").x.tobytes() == train5k.x.tobytes()
    with pytest.raises(DataError, match=r"no t10k-images-idx3-ubyte\.gz") as exc:
        load_dataset("mnist")
    assert MNIST_DIR_ENV in exc.value.hint
    with pytest.raises(DataError, match="unknown MNIST split"):
        load_mnist("train")


def test_mnist_bundle_nothing_reads_beside_the_repository() -> None:
    # No code, test or tool may read the folder beside the repository that holds the team's shared
    # material: a plain clone or a wheel has nothing there.
    # Spelled in parts, so that this test is not itself a hit for the same search.
    needles = ("../" + "shared", "shared" + "/data")
    hits = []
    for folder in ("hdus_edge", "tests", "tools"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".sh", ".toml") and path.name != Path(__file__).name:
                text = path.read_text(errors="replace")
                hits += [f"{path.relative_to(REPO)}: {n}" for n in needles if n in text]
    for path in (REPO / "run", REPO / ".ci" / "run", REPO / "pyproject.toml"):
        text = path.read_text()
        hits += [f"{path.relative_to(REPO)}: {n}" for n in needles if n in text]
    assert hits == []
