"""int8 quantization with onnxruntime.quantization (no torch).

Static QDQ quantization when a calibration batch (the reference set: it holds no client data, so
calibrating on it keeps exactness) is given; dynamic quantization (weights int8, activations
quantized at run time) otherwise. Both emit standard-domain operators only, so a quantized seed
passes the same safe-loading checks. Accuracy is measured by callers with a dataset; this module
reports sizes. On x86, small models can be slower in int8 (see tools/bench_inference.py).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime import quantization as ortq

from hdus_edge.errors import ModelError
from hdus_edge.onnx.checks import STANDARD_DOMAINS, parse_onnx
from hdus_edge.onnx.metadata import PREFIX, metadata_dict, set_metadata

logger = logging.getLogger(__name__)

QuantMode = Literal["auto", "static", "dynamic"]
QUANT_MODES: tuple[str, ...] = ("auto", "static", "dynamic")
_MAX_BYTES = 512 * 1024 * 1024  # our own models: the safe-loading cap is for peers' seeds


@dataclass(frozen=True)
class QuantizeReport:
    """What quantization did: the mode used and the size change."""

    mode: str  # "static" | "dynamic"
    fp32_bytes: int
    int8_bytes: int
    calibration_samples: int

    @property
    def size_ratio(self) -> float:
        """int8 size / fp32 size (below 1 is smaller)."""
        return self.int8_bytes / self.fp32_bytes


@dataclass(frozen=True)
class QuantizedModel:
    """The int8 model's bytes and the report."""

    data: bytes
    report: QuantizeReport


def quantize_int8(
    onnx_bytes: bytes,
    *,
    calibration: np.ndarray | None = None,
    mode: QuantMode = "auto",
    per_channel: bool = True,
    batch_size: int = 64,
) -> QuantizedModel:
    """Quantize an fp32 model to int8 and return the bytes plus a report.

    ``mode="auto"`` is static when ``calibration`` (float32 [M, C, H, W] from the reference set)
    is given, dynamic otherwise. The hdus provenance is kept, with ``precision`` set to
    ``int8-static`` or ``int8-dynamic``. Deterministic: same inputs, same bytes.
    """
    if mode not in QUANT_MODES:
        raise ValueError(f"mode must be one of {QUANT_MODES}, got {mode!r}")
    chosen = "static" if (mode == "static" or (mode == "auto" and calibration is not None)) else "dynamic"
    if chosen == "static" and (calibration is None or len(calibration) == 0):
        raise ValueError("static quantization needs a non-empty calibration batch (the reference set)")
    model = parse_onnx(onnx_bytes, max_bytes=_MAX_BYTES)
    meta = {k: v for k, v in metadata_dict(model).items() if k.startswith(PREFIX)}
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="hdus-quant-") as tmp, _quiet_ort_warnings():
        out = Path(tmp) / "int8.onnx"
        try:
            if chosen == "static":
                assert calibration is not None
                ortq.quantize_static(
                    model, out, _Batches(input_name, np.asarray(calibration, dtype=np.float32), batch_size),
                    quant_format=ortq.QuantFormat.QDQ, per_channel=per_channel,
                    activation_type=ortq.QuantType.QInt8, weight_type=ortq.QuantType.QInt8,
                    calibrate_method=ortq.CalibrationMethod.MinMax,
                )
            else:
                ortq.quantize_dynamic(model, out, per_channel=per_channel, weight_type=ortq.QuantType.QInt8)
        except Exception as exc:  # noqa: BLE001  # the quantizer raises assorted errors on odd graphs
            raise ModelError(f"int8 {chosen} quantization failed: {type(exc).__name__}: {exc}") from None
        quant = onnx.load(str(out))
    _drop_unused_domains(quant)
    # Only our provenance survives (the quantizer adds its own keys); precision says what was done.
    del quant.metadata_props[:]
    if meta:
        meta[PREFIX + "precision"] = f"int8-{chosen}"
        set_metadata(quant, meta)
    data = quant.SerializeToString(deterministic=True)
    report = QuantizeReport(chosen, len(onnx_bytes), len(data), 0 if calibration is None or chosen == "dynamic"
                            else int(len(calibration)))
    logger.info("int8 %s quantization: %d -> %d bytes (x%.2f)", chosen, report.fp32_bytes, report.int8_bytes,
                report.size_ratio)
    return QuantizedModel(data, report)


class _Batches(ortq.CalibrationDataReader):
    """Feeds the calibration set to the quantizer in fixed batches, in order (deterministic)."""

    def __init__(self, input_name: str, x: np.ndarray, batch_size: int) -> None:
        self._items: Iterator[dict[str, np.ndarray]] = iter(
            [{input_name: x[i : i + batch_size]} for i in range(0, len(x), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def _drop_unused_domains(model: onnx.ModelProto) -> None:
    used = {n.domain for n in model.graph.node}
    keep = [o for o in model.opset_import if o.domain in STANDARD_DOMAINS or o.domain in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)


class _DropAdvice(logging.Filter):
    # onnxruntime.quantization logs advice on the root logger ("consider pre-processing",
    # "expected bias to be an initializer" for biases the exporter shares through Identity).
    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        return not (text.startswith("Please consider") or text.startswith("Expected bias"))


@contextmanager
def _quiet_ort_warnings() -> Iterator[None]:
    advice = _DropAdvice()
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
