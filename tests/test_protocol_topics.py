"""Topic names, filters and parsing."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hdus_edge.errors import DecodeError
from hdus_edge.protocol.crypto import SigningKey, issue_certificate
from hdus_edge.protocol.fields import ID_PATTERN
from hdus_edge.protocol.messages import (
    Hello,
    NeighborList,
    Receipt,
    SeedEnvelope,
    TombstoneDigest,
    UnlearnOrder,
)
from hdus_edge.protocol.topics import (
    HELLO,
    MEMBERSHIP,
    RECEIPT,
    RETAINED,
    SEED,
    TOMBSTONES,
    UNLEARN,
    Topics,
)

T = Topics("lab")
any_id = st.from_regex(ID_PATTERN, fullmatch=True).filter(lambda s: s != "admin")


def test_topic_names_follow_the_design_table():
    assert T.hello("d1") == "hdus/v1/lab/devices/d1/hello"
    assert T.seed("d2", "d1") == "hdus/v1/lab/seeds/d2/d1"
    assert T.membership("d1") == "hdus/v1/lab/membership/d1"
    assert T.unlearn("d1") == "hdus/v1/lab/unlearn/d1"
    assert T.receipt("r-1", "d2") == "hdus/v1/lab/receipts/r-1/d2"
    assert T.tombstones("d1") == "hdus/v1/lab/tombstones/d1"
    assert not RETAINED[RECEIPT] and all(RETAINED[k] for k in (HELLO, SEED, MEMBERSHIP, UNLEARN, TOMBSTONES))


def test_subscriptions_cover_own_seeds_from_neighbours_only():
    subs = T.subscriptions("d1", ["d3", "d2"])
    assert subs == ["hdus/v1/lab/unlearn/+", "hdus/v1/lab/revocations", "hdus/v1/lab/devices/+/hello",
                    "hdus/v1/lab/membership/+", "hdus/v1/lab/leave/+", "hdus/v1/lab/tombstones/+",
                    "hdus/v1/lab/devices/+/retire",
                    "hdus/v1/lab/seeds/d1/d2", "hdus/v1/lab/seeds/d1/d3"]
    assert not any("seeds/+" in s or "/#" in s for s in subs)
    assert set(T.fleet_state_filters()) <= set(subs) and T.hello_filter() == subs[2]
    assert T.receipts_filter("r-1") == "hdus/v1/lab/receipts/r-1/+"


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a+", "a#b", ".hidden", "-x", "admin", "x" * 65, "é"])
def test_bad_ids_never_make_a_topic(bad):
    with pytest.raises(ValueError):
        T.seed("d1", bad)
    with pytest.raises(ValueError):
        T.hello(bad)


def test_bad_fleet():
    with pytest.raises(ValueError):
        Topics("lab/x")


@settings(max_examples=100, deadline=None)
@given(to=any_id, frm=any_id, rid=any_id)
def test_parse_inverts_every_topic(to, frm, rid):
    assert T.parse_seed_topic(T.seed(to, frm)) == (to, frm)
    assert T.parse(T.hello(frm)).kind == HELLO and T.parse(T.hello(frm)).device == frm
    parsed = T.parse(T.receipt(rid, frm))
    assert (parsed.kind, parsed.device, parsed.request_id) == (RECEIPT, frm, rid)
    assert T.parse(T.unlearn(to)).device == to
    assert T.parse(T.tombstones(to)).kind == TOMBSTONES
    assert T.parse(T.membership(to)).kind == MEMBERSHIP


@pytest.mark.parametrize(
    "topic",
    [
        "hdus/v1/other/seeds/a/b",
        "hdus/v1/lab/seeds/a",
        "hdus/v1/lab/seeds/a/b/c",
        "hdus/v1/lab/seeds/a/+",
        "hdus/v1/lab/seeds/admin/b",
        "hdus/v1/lab/nope/a",
        "hdus/v1/lab/devices/a/bye",
    ],
)
def test_parse_rejects_foreign_and_malformed_topics(topic):
    with pytest.raises(DecodeError):
        T.parse(topic)


def test_presence_topics_parse_to_their_device_and_nothing_else_does():
    assert T.parse_presence(T.presence("dev-1")) == "dev-1"
    assert "hdus/v1/lab/devices/#" in T.observer_filters() and not any("seeds" in f for f in T.observer_filters())
    assert T.seed_inbox("dev-1") == "hdus/v1/lab/seeds/dev-1/#"
    for other in (T.hello("dev-1"), "hdus/v1/other/devices/a/presence", "hdus/v1/lab/devices/a/b/presence",
                  "hdus/v1/lab/devices/admin/presence", "hdus/v1/lab/devices//presence"):
        assert T.parse_presence(other) is None, other


def test_parse_seed_topic_rejects_other_kinds():
    with pytest.raises(DecodeError, match="not a seed topic"):
        T.parse_seed_topic(T.hello("a"))


def test_check_matches_binds_message_to_topic():
    admin = SigningKey.from_seed(bytes(32))
    cert = issue_certificate(admin, fleet="lab", device_id="a", public_key=admin.public_key, issued_at=1.0)
    seed = SeedEnvelope.build(
        owner="a", to="b", version=1, onnx=b"x", arch="s", input_shape=(-1, 4), num_classes=2,
        reference_sha256="0" * 64, epoch=0,
    )  # fmt: skip
    cases = [
        (Hello("a", admin.public_key.raw, cert, "p", "m", "s"), T.hello("a"), T.hello("b")),
        (seed, T.seed("b", "a"), T.seed("c", "a")),
        (NeighborList("a", (), 1), T.membership("a"), T.membership("b")),
        (UnlearnOrder("a", "admin", "r", 1.0, "", 0), T.unlearn("a"), T.unlearn("b")),
        (Receipt("r", "b", "a", None, (), 1.0), T.receipt("r", "a"), T.receipt("q", "a")),
        (TombstoneDigest("a", ()), T.tombstones("a"), T.membership("a")),
    ]
    for msg, right, wrong in cases:
        T.check_matches(right, msg)
        with pytest.raises(DecodeError):
            T.check_matches(wrong, msg)


def test_a_retained_listener_verifies_late_senders_once_their_hello_comes_and_bounds_the_wait():
    from hdus_edge.protocol import codec, listener
    from hdus_edge.protocol.crypto import SigningKey, TrustStore, issue_certificate
    from hdus_edge.protocol.listener import RetainedListener
    from hdus_edge.protocol.messages import Hello, NeighborList

    admin, key = SigningKey.generate(), SigningKey.generate()
    cert = issue_certificate(admin, fleet="lab", device_id="d1", public_key=key.public_key, issued_at=1.0)
    seen = []

    class Recorder(RetainedListener):
        def on_verified(self, topic, signed, msg):
            seen.append(type(msg).__name__)

    lst = Recorder(TrustStore("lab", admin.public_key), T)
    nl = codec.encode(NeighborList("d1", ("d2",), 3), key, "d1")
    lst.handle(T.membership("d1"), nl, True)  # before d1's hello: parked, not lost
    assert lst.memberships == {} and seen == []
    hello = Hello("d1", key.public_key.raw, cert, "generic-x86_64", "mobilenet-s", "seed-cnn")
    lst.handle(T.hello("d1"), codec.encode(hello, key, "d1"), True)
    assert lst.memberships == {"d1": (3, frozenset({"d2"}))} and seen == ["NeighborList", "Hello"]
    assert lst.wanting("d2") == ("d1",)
    # A stale list never replaces a newer one; garbage and forgeries change nothing.
    lst.handle(T.membership("d1"), codec.encode(NeighborList("d1", (), 2), key, "d1"), True)
    lst.handle(T.membership("d1"), b"not a message", True)
    lst.handle(T.membership("d1"), codec.encode(NeighborList("d1", (), 9), SigningKey.generate(), "d1"), True)
    assert lst.memberships["d1"] == (3, frozenset({"d2"}))
    # Unknown senders are parked up to a bound: a flood of them cannot grow it without limit.
    stranger = SigningKey.generate()
    for k in range(listener.MAX_PARKED + 50):
        lst.handle(T.membership(f"s{k % 7}"), codec.encode(NeighborList(f"s{k % 7}", (), k + 1), stranger, f"s{k % 7}"), True)
    assert sum(len(v) for v in lst._parked.values()) == listener.MAX_PARKED
