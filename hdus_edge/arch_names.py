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

# The seed every device distils unless told otherwise. Issue 15: at the same distillation (KL,
# T = 4, fixed reference logits, same epochs) the 12/24/40 CNN copies its main model better than the
# 8/16/24 one (seed/main agreement on the global test set: digits demo 83.3% vs 76.5%; MNIST
# 6 x 500, S,M,L,L,L,L, 2,000 reference images: 90.7% vs 89.4%) for 2.4x the parameters (11.9k,
# a 49.5 kB ONNX file: inside the 64 KiB budget) and 2.4x the multiply-adds.
DEFAULT_SEED_ARCH = "seed-cnn-wide"


def arch_role(name: str) -> str:
    """The role of architecture ``name``; ``UnknownArchitectureError`` listing the known names."""
    role = ARCH_ROLES.get(name.lower())
    if role is None:
        raise UnknownArchitectureError(f"unknown architecture '{name}'; known: {', '.join(ARCH_ROLES)}")
    return role
