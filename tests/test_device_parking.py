"""The parking lot's caps: per sender, per topic, in total by count and bytes; oldest dropped first, counted."""

from __future__ import annotations

import pytest

from hdus_edge.device.parking import ParkingLimits, ParkingLot


def test_latest_wins_per_sender_and_topic_and_release_gives_them_back_oldest_first():
    # Prepare
    lot = ParkingLot(ParkingLimits(per_sender=4, per_topic=4, total=8, total_bytes=1000))
    # Execute
    lot.park("x", "t/1", b"a")
    lot.park("x", "t/2", b"b")
    lot.park("x", "t/1", b"c")  # replaces the first: not a drop
    # Assert
    assert lot.counts.dropped == 0
    assert lot.release("x") == [("t/2", b"b"), ("t/1", b"c")]
    assert len(lot) == 0 and lot.bytes == 0


def test_per_sender_cap_drops_that_senders_oldest():
    lot = ParkingLot(ParkingLimits(per_sender=2, per_topic=10, total=10, total_bytes=1000))
    lot.park("x", "t/1", b"1")
    lot.park("y", "t/9", b"9")
    lot.park("x", "t/2", b"2")
    dropped = lot.park("x", "t/3", b"3")
    assert dropped == 1 and lot.counts.dropped == 1
    assert lot.release("x") == [("t/2", b"2"), ("t/3", b"3")]
    assert lot.release("y") == [("t/9", b"9")]  # another sender is untouched


def test_per_topic_cap_bounds_made_up_senders_on_one_topic():
    # One insider publishes on its own topic with a fresh made-up sender id each time.
    lot = ParkingLot(ParkingLimits(per_sender=16, per_topic=3, total=100, total_bytes=10**6))
    lot.park("honest", "hdus/v1/f/devices/b/hello", b"h")
    for k in range(50):
        lot.park(f"fake-{k}", "hdus/v1/f/tombstones/evil", b"x" * 10)
    assert len(lot) == 4
    assert lot.counts.dropped == 47
    assert lot.senders() == {"honest", "fake-47", "fake-48", "fake-49"}


@pytest.mark.parametrize("what", ["count", "bytes"])
def test_total_caps_drop_the_oldest_first(what):
    limits = (ParkingLimits(per_sender=100, per_topic=100, total=5, total_bytes=10**6) if what == "count"
              else ParkingLimits(per_sender=100, per_topic=100, total=100, total_bytes=50))
    lot = ParkingLot(limits)
    for k in range(20):
        lot.park(f"s{k}", f"t/{k}", b"x" * 10)
    assert len(lot) == 5 and lot.bytes == 50
    assert lot.senders() == {f"s{k}" for k in range(15, 20)}
    assert lot.counts.dropped == 15 and lot.counts.dropped_bytes == 150


def test_a_payload_over_the_byte_cap_is_not_parked_and_counts_as_dropped():
    lot = ParkingLot(ParkingLimits(total_bytes=1024))
    lot.park("x", "t", b"a")
    assert lot.park("y", "t2", b"z" * 2000) == 1
    assert len(lot) == 1 and lot.counts.dropped == 1


def test_limits_must_be_positive():
    with pytest.raises(ValueError):
        ParkingLimits(per_topic=0)


def test_discarding_a_revoked_sender_drops_and_counts_only_its_messages():
    lot = ParkingLot(ParkingLimits(per_sender=4, per_topic=4, total=16, total_bytes=1 << 20))
    lot.park("rev", "t/1", b"a" * 10)
    lot.park("rev", "t/2", b"b" * 10)
    lot.park("ok", "t/3", b"c" * 10)
    assert lot.discard("rev") == 2
    assert lot.senders() == {"ok"} and lot.bytes == 10 and lot.counts.dropped == 2
    assert lot.discard("nobody") == 0
