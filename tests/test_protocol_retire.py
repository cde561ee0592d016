"""SeedRetire and SwapReceipt: round trips, validation, authority, topics; RetiredVersions on disk."""

from __future__ import annotations

import pytest

from hdus_edge.device.retired import RetiredVersions, Retirement
from hdus_edge.errors import (
    DecodeError,
    SenderMismatchError,
    StoreError,
    UnauthorizedError,
)
from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import SigningKey, TrustStore, issue_certificate
from hdus_edge.protocol.messages import SeedRetire, SwapReceipt
from hdus_edge.protocol.topics import RETIRE, Topics

A, B, C = "a" * 64, "b" * 64, "c" * 64
T = Topics("lab")


def fleet():
    admin = SigningKey.generate()
    trust = TrustStore("lab", admin.public_key)
    keys = {}
    for i, epoch in (("d1", 0), ("d2", 0), ("d3", 2)):
        keys[i] = SigningKey.generate()
        trust.certify(issue_certificate(admin, fleet="lab", device_id=i, public_key=keys[i].public_key, epoch=epoch,
                                        profile="generic-x86_64"))
    return trust, keys


def retire(owner="d1", epoch=0):
    return SeedRetire(owner, "r" * 32, 2, B, (A,), epoch, 1.0, "forget my data")


def test_both_messages_round_trip_and_belong_on_their_topics():
    trust, keys = fleet()
    swap = SwapReceipt("r" * 32, "d1", "d2", 2, B, A, 2.0)
    for msg, signer, topic in ((retire(), "d1", T.retire("d1")), (swap, "d2", T.receipt("r" * 32, "d2"))):
        raw = codec.encode(msg, keys[signer], signer)
        assert codec.verify(codec.decode(raw), trust) == msg
        T.check_matches(topic, msg)
    assert T.parse(T.retire("d1")).kind == RETIRE
    with pytest.raises(DecodeError):
        T.check_matches(T.retire("d2"), retire())
    with pytest.raises(DecodeError):
        T.check_matches(T.receipt("s" * 32, "d2"), swap)


def test_bad_fields_are_refused():
    with pytest.raises(ValueError):
        SeedRetire("d1", "r" * 32, 1, B, (A,), 0, 1.0, "")  # version 1 retires nothing
    with pytest.raises(ValueError):
        SeedRetire("d1", "r" * 32, 2, B, (B,), 0, 1.0, "")  # cannot retire its replacement
    with pytest.raises(TypeError):
        SeedRetire("d1", "r" * 32, 2, B, A, 0, 1.0, "")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        SwapReceipt("r" * 32, "d1", "d1", 2, B, None, 1.0)


def test_only_the_owner_at_its_epoch_may_retire_its_seeds():
    trust, keys = fleet()
    with pytest.raises(SenderMismatchError):
        codec.verify(codec.decode(codec.encode(retire(), keys["d2"], "d2")), trust)
    with pytest.raises(UnauthorizedError):
        codec.verify(codec.decode(codec.encode(retire("d3", epoch=1), keys["d3"], "d3")), trust)


def test_retired_versions_survive_a_reopen_and_only_go_up(tmp_path):
    store = RetiredVersions(tmp_path)
    r2 = Retirement.of(retire())
    assert store.record(r2) and not store.record(r2)
    assert store.refuses("d1", 0, 1) == r2 and store.refuses("d1", 0, 2) is None and store.refuses("d2", 0, 1) is None
    again = RetiredVersions(tmp_path)
    assert again.refuses("d1", 0, 1) == r2
    lower = Retirement("d1", 0, 1, C, (), "s" * 32)
    assert not again.record(lower) and again.get("d1") == r2
    (tmp_path / "retired.json").write_text("{not json")
    with pytest.raises(StoreError):
        RetiredVersions(tmp_path)
