"""Provenance of an exported model, kept in the ONNX ``metadata_props`` (pure, no torch).

Every key starts with ``hdus.`` so third-party metadata never collides. The creation time is given
by the caller: the graph itself holds no timestamp, so the same weights give the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import hdus_edge

if TYPE_CHECKING:  # only annotations: reading provenance must not load onnx (see provenance_of_props)
    import onnx

Role = Literal["main", "seed"]
ROLES: tuple[str, ...] = ("main", "seed")
PREFIX = "hdus."
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Provenance:
    """Who made a model, from what, and for which input contract.

    ``input_shape`` is (channels, height, width) of one sample; ``reference_sha256`` is the
    sha256 (hex) of the reference set a seed was distilled on, ``None`` for main models;
    ``created_at`` is an ISO 8601 time chosen by the caller (never read from the clock here).
    """

    owner: str
    role: Role
    arch: str
    version: int
    input_shape: tuple[int, int, int]
    num_classes: int
    created_at: str
    reference_sha256: str | None = None
    precision: str = "fp32"
    hdus_edge_version: str = hdus_edge.__version__
    # Main models only: the manifest of sample ids trained on (its hash and size; ids, never data).
    manifest_sha256: str | None = None
    samples: int | None = None

    def __post_init__(self) -> None:
        if not self.owner:
            raise ValueError("owner must be a non-empty device id")
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")
        if not self.arch:
            raise ValueError("arch must be a non-empty architecture name")
        if self.version < 0:
            raise ValueError(f"version must be >= 0, got {self.version}")
        if len(self.input_shape) != 3 or any(int(d) <= 0 for d in self.input_shape):
            raise ValueError(f"input_shape must be (C, H, W) with positive dims, got {self.input_shape}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.reference_sha256 is not None and not _SHA256.match(self.reference_sha256):
            raise ValueError("reference_sha256 must be 64 lowercase hex digits")
        if not self.created_at:
            raise ValueError("created_at must be an ISO 8601 time given by the caller")
        if self.manifest_sha256 is not None and not _SHA256.match(self.manifest_sha256):
            raise ValueError("manifest_sha256 must be 64 lowercase hex digits")
        if self.samples is not None and self.samples < 0:
            raise ValueError(f"samples must be >= 0, got {self.samples}")

    def to_props(self) -> dict[str, str]:
        """The provenance as ``metadata_props`` entries (sorted keys, string values)."""
        props = {
            "owner": self.owner,
            "role": self.role,
            "arch": self.arch,
            "version": str(int(self.version)),
            "input_shape": "x".join(str(int(d)) for d in self.input_shape),
            "num_classes": str(int(self.num_classes)),
            "created_at": self.created_at,
            "reference_sha256": self.reference_sha256 or "",
            "precision": self.precision,
            "hdus_edge_version": self.hdus_edge_version,
        }
        # Only when set, so models without a manifest keep exactly the bytes they always had.
        if self.manifest_sha256 is not None:
            props["manifest_sha256"] = self.manifest_sha256
        if self.samples is not None:
            props["samples"] = str(int(self.samples))
        return {PREFIX + k: props[k] for k in sorted(props)}

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> Provenance:
        """Parse ``to_props`` output back; raises ``ValueError`` naming a missing or bad key."""
        def get(key: str) -> str:
            try:
                return props[PREFIX + key]
            except KeyError:
                raise ValueError(f"metadata key {PREFIX + key!r} is missing") from None

        try:
            shape = tuple(int(d) for d in get("input_shape").split("x"))
            version, classes = int(get("version")), int(get("num_classes"))
        except ValueError as exc:
            raise ValueError(f"malformed provenance metadata: {exc}") from None
        if len(shape) != 3:
            raise ValueError(f"metadata {PREFIX}input_shape must be CxHxW, got {get('input_shape')!r}")
        return cls(
            owner=get("owner"),
            role=get("role"),  # type: ignore[arg-type]  # validated in __post_init__
            arch=get("arch"),
            version=version,
            input_shape=(shape[0], shape[1], shape[2]),
            num_classes=classes,
            created_at=get("created_at"),
            reference_sha256=get("reference_sha256") or None,
            precision=props.get(PREFIX + "precision", "fp32"),
            hdus_edge_version=get("hdus_edge_version"),
            manifest_sha256=props.get(PREFIX + "manifest_sha256") or None,
            samples=_optional_int(props.get(PREFIX + "samples")),
        )


def _optional_int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"malformed provenance metadata: {PREFIX}samples is {value!r}") from None


def metadata_dict(model: onnx.ModelProto) -> dict[str, str]:
    """All ``metadata_props`` of ``model`` as a dict (later duplicates win, as onnxruntime does)."""
    return {p.key: p.value for p in model.metadata_props}


def set_metadata(model: onnx.ModelProto, props: Mapping[str, str]) -> None:
    """Replace ``model``'s ``hdus.*`` metadata with ``props``; other keys are kept, order sorted."""
    merged = {k: v for k, v in metadata_dict(model).items() if not k.startswith(PREFIX)}
    merged.update(props)
    del model.metadata_props[:]
    for key in sorted(merged):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, merged[key]


def read_provenance(model: onnx.ModelProto) -> Provenance | None:
    """The model's provenance, ``None`` when it carries no ``hdus.*`` keys.

    Raises ``ValueError`` when some keys are present but incomplete or malformed.
    """
    return provenance_of_props(metadata_dict(model))


def provenance_of_props(props: Mapping[str, str]) -> Provenance | None:
    """``read_provenance`` over ``metadata_props`` already read, e.g. onnxruntime's
    ``get_modelmeta().custom_metadata_map`` (how the agent reads its own models without onnx)."""
    if not any(k.startswith(PREFIX) for k in props):
        return None
    return Provenance.from_props(props)
