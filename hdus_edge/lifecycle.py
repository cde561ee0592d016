"""A device's training-side steps on its state directory: export (and, via the CLI, train and distill).

This module imports torch (export runs the exporter); the agent and ``predict`` never import it.
"""

from __future__ import annotations

import datetime as dt
import logging

from torch import nn

from hdus_edge.onnx.export import export_onnx
from hdus_edge.onnx.metadata import Provenance
from hdus_edge.protocol.messages import sha256_hex
from hdus_edge.state import StateDir, atomic_write_bytes, write_json

logger = logging.getLogger(__name__)


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 (provenance creation time)."""
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def export_device_models(
    state: StateDir,
    main: nn.Module,
    seed: nn.Module,
    *,
    main_arch: str,
    seed_arch: str,
    reference_sha256: str,
    created_at: str | None = None,
) -> tuple[bytes, bytes, int]:
    """Export main and seed to ``models/main.onnx`` and ``models/seed.onnx``; bump the seed version.

    Returns (main bytes, seed bytes, seed version). Provenance names the device, the architecture,
    the version and the reference set the seed was distilled on.
    """
    device = state.device()
    fleet = state.fleet()
    created_at = created_at or utc_now_iso()
    version = state.seed_version() + 1
    shape = fleet.data.input_shape
    classes = fleet.data.num_classes
    main_bytes = export_onnx(main, Provenance(device.device.id, "main", main_arch, version, shape, classes, created_at))
    seed_bytes = export_onnx(
        seed, Provenance(device.device.id, "seed", seed_arch, version, shape, classes, created_at, reference_sha256)
    )
    atomic_write_bytes(state.models / "main.onnx", main_bytes)
    atomic_write_bytes(state.models / "seed.onnx", seed_bytes)
    write_json(state.seed_info_file, {"version": version, "sha256": sha256_hex(seed_bytes),
                                      "reference_sha256": reference_sha256, "arch": seed_arch, "created_at": created_at})
    logger.info("exported %s: main %d bytes, seed v%d %d bytes", device.device.id, len(main_bytes), version, len(seed_bytes))
    return main_bytes, seed_bytes, version
