"""Setting a fleet up: the admin directory with its reference set, and provisioned devices (no torch).

``create_fleet`` resolves the reference set (a data folder, ``digits`` or generated ``noise``),
derives the input shape and class count from it unless given, records its sha256 in
``fleet.toml`` and keeps its bytes as ``<admin>/reference.npz``. ``provision`` creates one device
and copies that file into its state dir, because every device distils its seed on exactly it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hdus_edge.config import (
    DataSection,
    EnsembleSection,
    FleetConfig,
    FleetSection,
    load_profile,
    validate_fleet,
)
from hdus_edge.data import (
    Dataset,
    dataset_sha256,
    load_data_folder,
    load_digits,
    load_npz,
    noise_reference,
    save_npz,
)
from hdus_edge.data.partition import stratified_sample
from hdus_edge.data.reference import check_reference_file
from hdus_edge.ensemble.combine import DEFAULT_LAM
from hdus_edge.errors import ConfigError, DataError, DataShapeError
from hdus_edge.protocol.fields import check_fleet
from hdus_edge.state import (
    AdminDir,
    StateDir,
    init_fleet,
    install_reference,
    provision_device,
    user_device_id,
)
from hdus_edge.transport.url import parse_broker_url

logger = logging.getLogger(__name__)

DEFAULT_REFERENCE_SIZE = 500  # enough for a 5k-parameter seed to follow its teacher; cheap to ship


@dataclass(frozen=True)
class ReferenceSet:
    """A resolved reference set and how it was obtained."""

    data: Dataset
    kind: str  # "public" (real held-out inputs) or "noise" (generated)
    source: str  # what the user passed: a path, "digits" or "noise"
    sha256: str


def parse_input_shape(text: str) -> tuple[int, int, int]:
    """``"1x28x28"``, ``"28x28"`` or ``"1,28,28"`` as (C, H, W); ``ConfigError`` otherwise."""
    parts = [p for p in re.split(r"[x,\s]+", text.strip().lower()) if p]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 2:
        dims = [1, *dims]
    if len(dims) != 3 or min(dims) < 1:
        raise ConfigError(f"--input-shape {text!r} is not C x H x W", hint="write it like 1x28x28 (or 28x28)")
    return dims[0], dims[1], dims[2]


def resolve_reference(
    source: str,
    *,
    size: int | None = None,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = None,
    seed: int = 0,
) -> ReferenceSet:
    """The reference set named by ``source``: ``"digits"``, ``"noise"``, a data folder or a ``.npz``.

    ``size`` subsamples a real set (stratified when labeled) or sets the number of generated inputs.
    A given ``input_shape`` must match a real set's; ``noise`` needs it (default 1x8x8, digits-sized).
    """
    if size is not None and size < 1:
        raise ConfigError(f"--reference-size must be at least 1, got {size}")
    if source == "noise":
        shape = input_shape or (1, 8, 8)
        classes = num_classes or 10
        data = noise_reference(shape, size or DEFAULT_REFERENCE_SIZE, seed, classes)
        return ReferenceSet(data, "noise", source, dataset_sha256(data))
    if source == "digits":
        pool = load_digits()
        size = size or DEFAULT_REFERENCE_SIZE
    else:
        path = Path(source)
        if path.is_dir():
            pool = load_data_folder(path)
        elif path.is_file() and path.suffix == ".npz":
            pool = load_npz(path)
        else:
            raise DataError(
                f"reference {source!r} is not 'digits', 'noise', a data folder or a .npz file",
                hint="pass a folder of .npz or IDX files holding public inputs (no client's data)",
            )
    if input_shape is not None and pool.input_shape != tuple(input_shape):
        raise DataShapeError(
            f"reference {source!r} has samples of shape {list(pool.input_shape)}, not the --input-shape "
            f"{list(input_shape)}",
            hint="leave --input-shape out to take it from the reference set",
        )
    if num_classes is not None and num_classes < pool.num_classes:
        raise DataShapeError(f"reference {source!r} has labels up to {pool.num_classes - 1}, more than --classes {num_classes}")
    if size is not None and size < len(pool):
        rng = np.random.default_rng(seed)
        idx = stratified_sample(pool.y, size, rng) if pool.labeled else np.sort(rng.choice(len(pool), size, replace=False))
        pool = pool.subset(idx)
    elif size is not None and size > len(pool):
        raise DataError(f"reference {source!r} holds {len(pool)} samples, fewer than --reference-size {size}")
    data = Dataset(x=pool.x, y=pool.y, num_classes=num_classes or pool.num_classes, name=f"reference-{Path(source).name}")
    return ReferenceSet(data, "public", source, dataset_sha256(data))


def create_fleet(
    admin_root: Path,
    name: str,
    broker: str,
    reference: ReferenceSet,
    *,
    lam: float = DEFAULT_LAM,
    space: str = "probs",
) -> tuple[AdminDir, FleetConfig]:
    """Create the admin dir: key pair, ``fleet.toml`` naming the reference set, ``reference.npz``.

    Raises ``BrokerURLError`` for a bad broker URL, ``ConfigError`` for a bad name or an existing fleet.
    """
    try:
        check_fleet(name)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid fleet name {name!r}: {exc}") from None
    parse_broker_url(broker)
    ref = reference.data
    fleet = FleetConfig(
        FleetSection(name=name, broker=broker),
        DataSection(input_shape=ref.input_shape, num_classes=ref.num_classes, reference=reference.kind,
                    reference_sha256=reference.sha256),
        EnsembleSection(lam=float(lam), space=space),
    )
    validate_fleet(fleet, "fleet")
    admin = init_fleet(admin_root, fleet)
    save_npz(ref, admin.reference_file)
    # The file is what devices get: prove that what they will read hashes to what fleet.toml says.
    check_reference_file(admin.reference_file, reference.sha256)
    logger.info("fleet %s created in %s (reference %s, %d samples)", name, admin.root, reference.sha256[:12], len(ref))
    return admin, fleet


@dataclass(frozen=True)
class Provisioned:
    """A provisioned device and what its owner must copy to it."""

    state: StateDir
    device_id: str
    profile: str
    neighbors: tuple[str, ...]
    files: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "profile": self.profile, "state_dir": str(self.state.root),
                "neighbors": list(self.neighbors), "files": list(self.files)}


def provision(
    admin: AdminDir,
    state_root: Path,
    device_id: str,
    profile: str,
    *,
    neighbors: tuple[str, ...] = (),
    broker: str = "",
) -> Provisioned:
    """Provision a device (``state.provision_device``) and copy the reference set into its state dir."""
    user_device_id(device_id)
    for n in neighbors:
        user_device_id(n, "neighbour id")
    if broker:
        parse_broker_url(broker)
    admin.fleet()  # a clear error when this is not an admin dir
    load_profile(profile)
    state = provision_device(admin, state_root, device_id, profile, neighbors=tuple(neighbors), broker=broker)
    install_reference(admin, state)
    files = sorted(str(p.relative_to(state.root)) for p in state.root.rglob("*") if p.is_file())
    return Provisioned(state, device_id, profile, state.device().neighbors, tuple(files))
