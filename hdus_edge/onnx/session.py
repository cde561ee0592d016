"""onnxruntime sessions, always created from bytes (never from a path), with provider selection."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import onnxruntime as ort

from hdus_edge.errors import ProbeRunError

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"


def resolve_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The requested providers this onnxruntime build has, in order, always ending with CPU.

    ``None`` means CPU only. Unavailable ones (CUDA on a CPU build, TensorRT without its
    libraries) are dropped with a warning, so one config works on every device.
    """
    available = set(ort.get_available_providers())
    chosen: list[str] = []
    for name in requested or ():
        if name in available and name not in chosen:
            chosen.append(name)
        elif name not in available:
            logger.warning("onnxruntime provider %s is not available here; falling back", name)
    if CPU in chosen:
        chosen.remove(CPU)
    return [*chosen, CPU]


def make_session(
    data: bytes,
    *,
    providers: Sequence[str] | None = None,
    intra_op_threads: int | None = None,
) -> ort.InferenceSession:
    """An ``InferenceSession`` over ONNX ``data``; ``ProbeRunError`` when onnxruntime refuses it.

    ``intra_op_threads=None`` lets onnxruntime choose (one per core); sessions run their nodes
    sequentially (inter-op 1) since our graphs are chains.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: warnings about unused initializers are noise
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if intra_op_threads is not None:
        if intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        options.intra_op_num_threads = intra_op_threads
    try:
        return ort.InferenceSession(bytes(data), sess_options=options, providers=resolve_providers(providers))
    except Exception as exc:  # noqa: BLE001  # onnxruntime raises its own pybind types (Fail, InvalidGraph, ...)
        raise ProbeRunError(f"onnxruntime could not load the model: {type(exc).__name__}: {exc}") from None
