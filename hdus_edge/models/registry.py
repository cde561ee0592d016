"""The model zoo by name: which architectures exist, what they are, and how to build one reproducibly.

Names are what configs, checkpoints, seed headers and the CLI carry (``mobilenet-s``, ``seed-cnn``,
...); sizes ``S``/``M``/``L`` resolve to a name per family. ``build_model`` seeds torch's RNG in a
forked state, so the same (name, shape, classes, seed) gives the same weights bit for bit and the
caller's RNG stream is left untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hdus_edge.errors import UnknownArchitectureError
from hdus_edge.models import mobilenet, resnet, seed
from hdus_edge.models.layers import check_input_shape, check_num_classes

logger = logging.getLogger(__name__)

Builder = Callable[[tuple[int, int, int], int], nn.Module]

FAMILIES: tuple[str, ...] = ("mobilenetv2", "resnet", "seed")
ROLES: tuple[str, ...] = ("main", "seed")
# The shape and class count at which ``ArchSpec.params`` is stated (MNIST-like).
REFERENCE_SHAPE: tuple[int, int, int] = (1, 28, 28)
REFERENCE_CLASSES = 10


@dataclass(frozen=True)
class ArchSpec:
    """One registered architecture.

    ``builder(input_shape, num_classes)`` returns a fresh, unseeded module (use ``build_model`` for a
    seeded one). ``params`` is its parameter count at ``REFERENCE_SHAPE`` with ``REFERENCE_CLASSES``
    classes; conv models have the same count at every input size, ``seed-mlp`` does not.
    """

    name: str
    family: str  # "mobilenetv2" | "resnet" | "seed"
    role: str  # "main" | "seed"
    size: str  # "S" | "M" | "L" | "tiny"
    description: str
    builder: Builder
    params: int


def _spec(name: str, family: str, role: str, size: str, what: str, builder: Builder, params: int) -> ArchSpec:
    description = f"{what}; {params / 1000:.1f}k params at 1x28x28, 10 classes"
    return ArchSpec(name, family, role, size, description, builder, params)


# Parameter counts are checked against the built modules by tests/test_models_registry.py.
_SPECS: tuple[ArchSpec, ...] = (
    _spec("mobilenet-s", "mobilenetv2", "main", "S", "MobileNetV2-style, 7 inverted residual blocks, widths 8-32",
          mobilenet.mobilenet_s, 32_202),
    _spec("mobilenet-m", "mobilenetv2", "main", "M", "MobileNetV2-style, 8 inverted residual blocks, widths 16-64",
          mobilenet.mobilenet_m, 95_914),
    _spec("mobilenet-l", "mobilenetv2", "main", "L", "MobileNetV2-style, 10 inverted residual blocks, widths 16-80, x6",
          mobilenet.mobilenet_l, 251_274),
    _spec("resnet-8", "resnet", "main", "S", "CIFAR ResNet-8, basic blocks 1-1-1, widths 16/32/64",
          resnet.resnet_8, 77_754),
    _spec("resnet-20", "resnet", "main", "M", "CIFAR ResNet-20, basic blocks 3-3-3, widths 16/32/64",
          resnet.resnet_20, 272_186),
    _spec("resnet-50", "resnet", "main", "L", "ResNet-50 bottleneck layout 3-4-6-3 at 1/8 width",
          resnet.resnet_50, 376_026),
    _spec("seed-cnn", "seed", "seed", "tiny", "seed: 3 conv layers 8/16/24 + linear",
          seed.seed_cnn, 5_026),
    _spec("seed-cnn-wide", "seed", "seed", "tiny", "seed: 3 conv layers 12/24/40 + linear",
          seed.seed_cnn_wide, 11_902),
    _spec("seed-mlp", "seed", "seed", "tiny", "seed: avg-pool to ~8x8, MLP with 64 hidden units",
          seed.seed_mlp, 3_850),
)
_REGISTRY: dict[str, ArchSpec] = {spec.name: spec for spec in _SPECS}

# Size letter -> name, per family; "tiny" is the seed family's only size.
_BY_SIZE: dict[str, dict[str, str]] = {
    "mobilenetv2": {"S": "mobilenet-s", "M": "mobilenet-m", "L": "mobilenet-l"},
    "resnet": {"S": "resnet-8", "M": "resnet-20", "L": "resnet-50"},
    "seed": {"TINY": "seed-cnn"},
}


def get_spec(name: str) -> ArchSpec:
    """The spec registered as ``name`` (case-insensitive); ``UnknownArchitectureError`` names the known ones."""
    spec = _REGISTRY.get(name.strip().lower()) if isinstance(name, str) else None
    if spec is None:
        raise UnknownArchitectureError(
            f"unknown architecture {name!r}; known: {', '.join(_REGISTRY)}",
        )
    return spec


def list_architectures(role: str | None = None) -> list[ArchSpec]:
    """Every registered spec in registry order, or only those with ``role`` ("main" or "seed")."""
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES} or None, got {role!r}")
    return [spec for spec in _SPECS if role is None or spec.role == role]


def resolve_arch(name_or_size: str, family: str = "mobilenetv2") -> str:
    """Turn a size (``S``/``M``/``L``, or ``tiny`` for seeds) of ``family`` into a name; names pass through.

    Names are checked, so a typo fails here rather than at build time.
    """
    key = name_or_size.strip()
    if key.upper() in ("S", "M", "L", "TINY"):
        sizes = _BY_SIZE.get(family.strip().lower())
        if sizes is None:
            raise UnknownArchitectureError(
                f"unknown model family {family!r}; known: {', '.join(FAMILIES)}",
                hint=f"pass one of {', '.join(FAMILIES)}, or a full architecture name",
            )
        if key.upper() not in sizes:
            raise UnknownArchitectureError(
                f"family {family!r} has no size {name_or_size!r}; it has: {', '.join(sizes)}",
            )
        return sizes[key.upper()]
    return get_spec(key).name


def build_model(
    name: str,
    input_shape: tuple[int, int, int] = REFERENCE_SHAPE,
    num_classes: int = REFERENCE_CLASSES,
    *,
    seed: int = 0,
) -> nn.Module:
    """Build architecture ``name`` for ``input_shape`` (C, H, W) and ``num_classes``, in eval() mode.

    Weights depend only on the arguments: torch's global RNG is seeded with ``seed`` inside
    ``fork_rng``, so the caller's RNG state is the same before and after.
    """
    spec = get_spec(name)
    shape = check_input_shape(input_shape)
    check_num_classes(num_classes)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    with torch.random.fork_rng(devices=[]):  # devices=[]: CPU only, no CUDA state to fork
        torch.manual_seed(seed)
        model = spec.builder(shape, num_classes)
    logger.debug("built %s for %s, %d classes, seed %d", spec.name, shape, num_classes, seed)
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not) in ``model``; BN running statistics are buffers, not counted."""
    return sum(p.numel() for p in model.parameters())


def param_count(
    name: str, input_shape: tuple[int, int, int] = REFERENCE_SHAPE, num_classes: int = REFERENCE_CLASSES
) -> int:
    """Parameter count of architecture ``name`` at ``input_shape`` with ``num_classes`` classes."""
    return count_parameters(build_model(name, input_shape, num_classes))  # seeded: leaves the caller's RNG alone
