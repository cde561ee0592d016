"""What the studies share: progress announcements, means, and ensemble probabilities."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from hdus_edge.ensemble.combine import softmax
from hdus_edge.learning.inprocess import InProcessFleet

# announce(message): one line per step, for the CLI's progress output.
Announce = Callable[[str], None]


def quiet(message: str) -> None:
    """An ``Announce`` that says nothing."""


def ensemble_probs(fleet: InProcessFleet, device_id: str, x: np.ndarray) -> np.ndarray:
    """A device's ensemble output as probabilities, whatever the combine space."""
    out = fleet.ensemble_output(device_id, x)
    return out if fleet.space == "probs" else softmax(out)


def growth_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log y on log x: 1 means linear growth, 2 quadratic (NaN if undefined)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y is not None and y > 0]
    if len(pts) < 2 or len({p[0] for p in pts}) < 2:
        return float("nan")
    lx, ly = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])
