"""How long this agent took to apply unlearn orders, by role: what status.json and ``/metrics`` show.

A *holder* (the target is its neighbour, or it holds the target's seed) deletes the seed, rebuilds its
ensemble and answers with a receipt; a *non-holder* only records the tombstone. The requester waits
for holders only, so their apply time is the one that counts for unlearn latency; both are kept apart.
Pure bookkeeping (no I/O), thread-safe: the agent's worker records, scrapes and status writes read.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

HOLDER = "holder"
NON_HOLDER = "non_holder"
ROLES = (HOLDER, NON_HOLDER)
# A holder's apply is a few ms on an SSD and tens of ms on an SD card; seconds mean trouble.
APPLY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RECENT = 64  # applies kept per role in status.json (a bench reads its percentiles from them)


@dataclass(frozen=True)
class ApplyTiming:
    """One applied order: each step's milliseconds and the fsyncs its thread made (``files.thread_sync_count``)."""

    request_id: str
    target: str
    role: str
    store_ms: float
    ensemble_ms: float
    receipt_ms: float
    total_ms: float
    fsyncs: int


@dataclass(frozen=True)
class ApplyHistogram:
    """Cumulative bucket counts (one per ``APPLY_BUCKETS`` bound, then +Inf), sum in seconds, count."""

    cumulative: tuple[int, ...]
    sum_s: float
    count: int


class ApplyTimes:
    """Every apply's total time into a histogram per role, the last ``RECENT`` in full."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: ApplyTiming | None = None
        self._recent: dict[str, deque[ApplyTiming]] = {r: deque(maxlen=RECENT) for r in ROLES}
        self._buckets: dict[str, list[int]] = {r: [0] * (len(APPLY_BUCKETS) + 1) for r in ROLES}
        self._sum_s: dict[str, float] = dict.fromkeys(ROLES, 0.0)

    def record(self, timing: ApplyTiming) -> None:
        """Count ``timing`` (``ValueError`` for an unknown role)."""
        if timing.role not in ROLES:
            raise ValueError(f"unknown apply role {timing.role!r}")
        seconds = timing.total_ms / 1e3
        with self._lock:
            self._last = timing
            self._recent[timing.role].append(timing)
            slot = next((k for k, bound in enumerate(APPLY_BUCKETS) if seconds <= bound), len(APPLY_BUCKETS))
            self._buckets[timing.role][slot] += 1
            self._sum_s[timing.role] += seconds

    def histograms(self) -> dict[str, ApplyHistogram]:
        """Per role, for Prometheus (cumulative, as its text format wants)."""
        with self._lock:
            out = {}
            for role in ROLES:
                running, cumulative = 0, []
                for n in self._buckets[role]:
                    running += n
                    cumulative.append(running)
                out[role] = ApplyHistogram(tuple(cumulative), self._sum_s[role], running)
            return out

    def to_json(self) -> dict[str, Any]:
        """For status.json: the last apply in full, and per role the recent totals and fsyncs."""
        with self._lock:
            return {
                "last": None if self._last is None else asdict(self._last),
                **{role: {"count": sum(self._buckets[role]),
                          "recent_total_ms": [round(t.total_ms, 3) for t in self._recent[role]],
                          "recent_fsyncs": [t.fsyncs for t in self._recent[role]]} for role in ROLES},
            }
