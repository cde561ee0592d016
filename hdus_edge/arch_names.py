"""The zoo's architecture names and roles, without torch.

Config validation and the torch-free agent need to know which names exist; importing the zoo
itself would pull in torch. ``tests/test_models_registry.py`` keeps this table equal to the registry.
"""

from __future__ import annotations

from hdus_edge.errors import UnknownArchitectureError

# name -> role ("main" | "seed")
ARCH_ROLES: dict[str, str] = {
    "mobilenet-s": "main",
    "mobilenet-m": "main",
    "mobilenet-l": "main",
    "resnet-8": "main",
    "resnet-20": "main",
    "resnet-50": "main",
    "seed-cnn": "seed",
    "seed-cnn-wide": "seed",
    "seed-mlp": "seed",
}


def arch_role(name: str) -> str:
    """The role of architecture ``name``; ``UnknownArchitectureError`` listing the known names."""
    role = ARCH_ROLES.get(name.lower())
    if role is None:
        raise UnknownArchitectureError(f"unknown architecture '{name}'; known: {', '.join(ARCH_ROLES)}")
    return role
