"""Model zoo: MobileNetV2-style and ResNet main models in three sizes, tiny seed models, a registry.

torch ``nn.Module``s only; no I/O. Every model maps float32 [N, C, H, W] (any H, W from 8 to 32) to
raw logits [N, num_classes] and exports to ONNX with standard operators only. Needs torch (the
``[train]`` extra); never imports anything of hdus_edge but ``errors``.
"""

from hdus_edge.models.flops import count_macs
from hdus_edge.models.registry import (
    FAMILIES,
    REFERENCE_CLASSES,
    REFERENCE_SHAPE,
    ROLES,
    ArchSpec,
    build_model,
    count_parameters,
    get_spec,
    list_architectures,
    param_count,
    resolve_arch,
)

__all__ = [
    "FAMILIES",
    "REFERENCE_CLASSES",
    "REFERENCE_SHAPE",
    "ROLES",
    "ArchSpec",
    "build_model",
    "count_macs",
    "count_parameters",
    "get_spec",
    "list_architectures",
    "param_count",
    "resolve_arch",
]
