"""Exactness checks for retrained devices: same weights, same ONNX, shards that match their data (torch).

Forgetting samples is exact when the device's models are what training from scratch on the reduced
data gives. ``compare_devices`` checks that bit for bit: every tensor of ``main.pt`` and ``seed.pt``,
and the exported ONNX bytes with the seed version set aside (a retrained device is at version v+1,
a device trained from scratch at 1; nothing else may differ, ``created_at`` included when the
caller fixes it). ``check_shards`` is the cheap self-check a device can run alone: every shard's
recorded id hash must be the hash of the ids its data now assigns to it, so a stale shard (one
that still holds forgotten samples' influence) is found without retraining anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from hdus_edge.data.manifest import ids_sha256, shard_indices
from hdus_edge.onnx.checks import parse_onnx
from hdus_edge.onnx.metadata import PREFIX, metadata_dict, set_metadata
from hdus_edge.protocol.messages import sha256_hex
from hdus_edge.state import StateDir

VERSION_KEY = PREFIX + "version"


def model_content_sha256(onnx_bytes: bytes) -> str:
    """sha256 of an exported model with its seed version (``hdus.version``, ``model_version``) set aside."""
    model = parse_onnx(onnx_bytes, max_bytes=256 << 20)
    props = {k: v for k, v in metadata_dict(model).items() if k.startswith(PREFIX) and k != VERSION_KEY}
    set_metadata(model, props)
    model.model_version = 0
    return sha256_hex(model.SerializeToString(deterministic=True))


def state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """True when both modules hold the same tensors under the same names, bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


@dataclass(frozen=True)
class DeviceComparison:
    """``compare_devices``'s verdict, one flag per artefact."""

    main_weights: bool
    seed_weights: bool
    main_onnx: bool
    seed_onnx: bool
    manifest: bool

    @property
    def identical(self) -> bool:
        return self.main_weights and self.seed_weights and self.main_onnx and self.seed_onnx and self.manifest

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"identical": self.identical}


def compare_devices(a: StateDir, b: StateDir) -> DeviceComparison:
    """Compare two devices' trained and exported models (see the module docstring)."""
    from hdus_edge.learning.steps import load_checkpoint, manifest_path

    def onnx_same(name: str) -> bool:
        return model_content_sha256((a.models / name).read_bytes()) == model_content_sha256((b.models / name).read_bytes())

    ma, mb = load_checkpoint(a.main_checkpoint, "main"), load_checkpoint(b.main_checkpoint, "main")
    sa, sb = load_checkpoint(a.seed_checkpoint, "seed"), load_checkpoint(b.seed_checkpoint, "seed")
    return DeviceComparison(
        main_weights=ma.arch == mb.arch and state_dicts_equal(ma.model, mb.model),
        seed_weights=sa.arch == sb.arch and state_dicts_equal(sa.model, sb.model),
        main_onnx=onnx_same("main.onnx"),
        seed_onnx=onnx_same("seed.onnx"),
        manifest=manifest_path(a).read_bytes() == manifest_path(b).read_bytes(),
    )


def check_shards(state: StateDir) -> list[str]:
    """Problems with the main model's shards (empty when each matches the data it should hold)."""
    from hdus_edge.learning.samples import read_manifest
    from hdus_edge.learning.steps import load_checkpoint

    main = load_checkpoint(state.main_checkpoint, "main")
    manifest = read_manifest(state)
    problems = []
    if main.meta.get("manifest_sha256") != manifest.sha256:
        problems.append("main.pt was trained on other samples than models/manifest.json names")
    k = int(main.meta.get("shard_count", 1))
    recorded = {int(m["index"]): m for m in (main.meta.get("shards") or [])}
    if k == 1:
        return problems
    for index, idx in enumerate(shard_indices(manifest.ids, k)):
        want = ids_sha256(manifest.ids[i] for i in idx) if len(idx) else None
        have = recorded.get(index)
        if want is None and have is not None:
            problems.append(f"shard {index} holds a model but no samples")
        elif want is not None and (have is None or have["ids_sha256"] != want):
            problems.append(f"shard {index} is stale: its model was trained on other samples than it holds now")
    return problems
