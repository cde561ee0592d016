"""Per-order apply times: the bookkeeping (pure) and its Prometheus histogram."""

from __future__ import annotations

import pytest

from hdus_edge.device.agent import AgentObservation
from hdus_edge.device.apply_times import HOLDER, NON_HOLDER, ApplyTimes, ApplyTiming
from hdus_edge.device.metrics import AgentMetrics


def _timing(role: str, total_ms: float, fsyncs: int = 2) -> ApplyTiming:
    return ApplyTiming("a" * 32, "dev-1", role, total_ms / 2, total_ms / 4, total_ms / 4, total_ms, fsyncs)


def test_apply_times_by_role_into_buckets_and_status():
    # Prepare
    times = ApplyTimes()
    # Execute
    for ms in (0.5, 3.0, 40.0, 9000.0):
        times.record(_timing(HOLDER, ms))
    times.record(_timing(NON_HOLDER, 1.5, fsyncs=2))
    # Assert: bucket bounds 1 ms, 2, 5, 10, 20, 50, ...; 9 s lands in +Inf
    holder = times.histograms()[HOLDER]
    assert holder.count == 4 and holder.cumulative[0] == 1 and holder.cumulative[2] == 2
    assert holder.cumulative[5] == 3 and holder.cumulative[-2] == 3 and holder.cumulative[-1] == 4
    assert holder.sum_s == pytest.approx((0.5 + 3.0 + 40.0 + 9000.0) / 1e3)
    status = times.to_json()
    assert status["last"]["role"] == NON_HOLDER and status["last"]["fsyncs"] == 2
    assert status[HOLDER]["recent_total_ms"] == [0.5, 3.0, 40.0, 9000.0] and status[NON_HOLDER]["count"] == 1
    with pytest.raises(ValueError):
        times.record(_timing("bystander", 1.0))


def test_the_apply_histogram_is_scraped_per_role():
    times = ApplyTimes()
    times.record(_timing(HOLDER, 3.0))
    obs = AgentObservation("d1", (), {}, 0, 0.0, False, 0, 1, 1, 0, {}, True, 1, 0, 0, True,
                           applies=times.histograms())
    text = AgentMetrics(lambda: obs).render().decode()
    assert 'hdus_unlearn_apply_seconds_bucket{le="0.002",role="holder"} 0.0' in text
    assert 'hdus_unlearn_apply_seconds_bucket{le="0.005",role="holder"} 1.0' in text
    assert 'hdus_unlearn_apply_seconds_count{role="holder"} 1.0' in text
    assert 'hdus_unlearn_apply_seconds_count{role="non_holder"} 0.0' in text
