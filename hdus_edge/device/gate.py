"""The gate a neighbour's new seed version must pass before it replaces the old one (no torch).

A device can make a new seed version any time (``hdus-edge train --add``); a neighbour admits it
only if, on the public reference set, it agrees with the version it replaces on at least
``min_agreement`` of the inputs and, where the reference set carries labels, reaches
``min_reference_accuracy``. Both thresholds come from the profile (``[update]``; 0 = off). A
version that retires old ones (forgotten samples) is not gated: forgetting is not optional.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hdus_edge.onnx.session import make_session

MAX_GATE_SAMPLES = 512  # enough to measure agreement to ~2 points; bounded work per new version


@dataclass(frozen=True)
class GateVerdict:
    """Whether a new version passed, with the figures measured (NaN: not measured)."""

    passed: bool
    agreement: float
    accuracy: float
    reason: str


def _top1(onnx_bytes: bytes, x: np.ndarray, providers: Sequence[str] | None) -> np.ndarray:
    session = make_session(onnx_bytes, providers=providers, intra_op_threads=1)
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: x})[0]).argmax(axis=1)


def check_update(
    old_onnx: bytes | None,
    new_onnx: bytes,
    x: np.ndarray,
    y: np.ndarray | None,
    *,
    min_agreement: float,
    min_accuracy: float,
    providers: Sequence[str] | None = None,
) -> GateVerdict:
    """Measure ``new_onnx`` against ``old_onnx`` (and ``y`` where labelled) on reference inputs ``x``."""
    x = np.ascontiguousarray(x[:MAX_GATE_SAMPLES], dtype=np.float32)
    new = _top1(new_onnx, x, providers)
    agreement = accuracy = float("nan")
    if old_onnx is not None and min_agreement > 0:
        agreement = float((new == _top1(old_onnx, x, providers)).mean())
        if agreement < min_agreement:
            return GateVerdict(False, agreement, accuracy,
                               f"agrees with the version it replaces on {agreement:.3f} of the reference set, "
                               f"below the profile's {min_agreement:.3f}")
    if y is not None and min_accuracy > 0:
        labels = np.asarray(y[:MAX_GATE_SAMPLES])
        labelled = labels >= 0
        if labelled.any():
            accuracy = float((new[labelled] == labels[labelled]).mean())
            if accuracy < min_accuracy:
                return GateVerdict(False, agreement, accuracy,
                                   f"reaches {accuracy:.3f} accuracy on the labelled reference set, "
                                   f"below the profile's {min_accuracy:.3f}")
    return GateVerdict(True, agreement, accuracy, "passed")
