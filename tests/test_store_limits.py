"""The store's share of issue 14: rejection audits are rate-limited with a counted summary, and a
device that was forgotten remembers it across a restart."""

from __future__ import annotations

import pytest

from hdus_edge.device.store import AUDIT_NAME, AuditLimit, SeedStore


class StoppedClock:
    """A clock that moves only when told: a flood arrives 'at once'."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_rejections_writes_the_burst_then_one_summary_line(tmp_path):
    # Prepare
    clock = StoppedClock()
    store = SeedStore(tmp_path / "s", clock=clock, audit_limit=AuditLimit(rate_per_s=10.0, burst=5))
    # Execute: 5,000 rejections in no time, then one second later one more
    written = sum(store.audit("reject", limited=True, reason="garbage", n=k) for k in range(5000))
    clock.now += 1.0
    store.audit("reject", limited=True, reason="garbage", n=5000)
    store.close()
    # Assert
    events = SeedStore(tmp_path / "s", clock=clock).audit_events()
    assert written == 5
    assert [e["event"] for e in events] == ["reject"] * 5 + ["audit_suppressed", "reject"]
    summary = events[5]
    assert summary["count"] == 4995 and summary["by_event"] == {"reject": 4995}
    assert (tmp_path / "s" / AUDIT_NAME).stat().st_size < 2000


def test_lines_about_what_the_device_did_are_never_limited(tmp_path):
    clock = StoppedClock()
    with SeedStore(tmp_path / "s", clock=clock, audit_limit=AuditLimit(rate_per_s=1.0, burst=1)) as store:
        for _ in range(50):
            store.audit("reject", limited=True, reason="garbage")
        for k in range(20):
            store.add_tombstone(f"dev-{k}", 0, f"{k:032x}")
        events = store.audit_events()
    assert sum(e["event"] == "tombstone" for e in events) == 20


def test_the_summary_is_written_on_close_and_on_flush(tmp_path):
    clock = StoppedClock()
    store = SeedStore(tmp_path / "s", clock=clock, audit_limit=AuditLimit(rate_per_s=1.0, burst=1))
    for _ in range(3):
        store.audit("reject", limited=True)
    store.flush_audit_summary()
    assert store.audit_events()[-1] == {"at": 1000.0, "event": "audit_suppressed", "count": 2,
                                        "by_event": {"reject": 2}, "since": 1000.0}
    store.audit("reject", limited=True)
    store.close()
    assert SeedStore(tmp_path / "s", clock=clock).audit_events()[-1]["count"] == 1


def test_forgotten_survives_a_reopen_and_marks_the_request_seen(tmp_path):
    with SeedStore(tmp_path / "s") as store:
        assert store.forgotten() is None
        store.mark_forgotten("dev-0", 0, "a" * 32)
        store.mark_forgotten("dev-0", 0, "a" * 32)  # idempotent (a retained order comes again)
    with SeedStore(tmp_path / "s") as store:
        forgotten = store.forgotten()
        assert forgotten is not None
        assert (forgotten.target, forgotten.epoch, forgotten.request_id) == ("dev-0", 0, "a" * 32)
        assert store.is_request_seen("a" * 32)
        assert [e["event"] for e in store.audit_events()].count("forgotten") == 1


def test_a_later_epoch_replaces_an_earlier_one_never_the_reverse(tmp_path):
    with SeedStore(tmp_path / "s") as store:
        store.mark_forgotten("dev-0", 2, "b" * 32)
        store.mark_forgotten("dev-0", 1, "c" * 32)
        assert store.forgotten().epoch == 2


def test_audit_limit_must_be_positive():
    with pytest.raises(ValueError):
        AuditLimit(rate_per_s=0)
