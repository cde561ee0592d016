"""Synthetic fleets' models: exported, untrained zoo models for timing and fault runs (torch).

Timing and reliability figures do not depend on the weights, so the benchmarks and the reliability
suite provision devices with these instead of training. Every seed names ``REFERENCE_SHA`` as its
reference set; a fleet config built for them must carry the same value.
"""

from __future__ import annotations

from hdus_edge.lab.agents import DeviceModels

REFERENCE_SHA = "0" * 64
CREATED_AT = "2026-01-01T00:00:00Z"  # fixed, so the ONNX bytes are the same on every run


def synthetic_models(n: int, input_shape: tuple[int, int, int] = (1, 8, 8), seed: int = 0) -> dict[str, DeviceModels]:
    """N devices ``dev-000`` ... with one resnet-8 main model and a seed-cnn seed each (seeded, untrained)."""
    from hdus_edge.models import build_model
    from hdus_edge.onnx.export import export_onnx
    from hdus_edge.onnx.metadata import Provenance

    main = export_onnx(build_model("resnet-8", input_shape, 10, seed=seed),
                       Provenance("bench", "main", "resnet-8", 1, input_shape, 10, CREATED_AT))
    out = {}
    for k in range(n):
        device_id = f"dev-{k:03d}"
        seed_bytes = export_onnx(
            build_model("seed-cnn", input_shape, 10, seed=seed + 1 + k),
            Provenance(device_id, "seed", "seed-cnn", 1, input_shape, 10, CREATED_AT, REFERENCE_SHA),
        )
        out[device_id] = DeviceModels(main, seed_bytes)
    return out
