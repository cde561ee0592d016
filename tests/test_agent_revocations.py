"""An agent and the admin's revocation list, fed straight to its message handler (no broker needed):
it applies the orders the list vouches for, refuses the revoked certificates, and ignores anything
else dressed up as a list."""

from __future__ import annotations

import cli_lifecycle_kit as kit

from hdus_edge.device.agent import AgentSettings, DeviceAgent
from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import SigningKey
from hdus_edge.protocol.messages import Hello, RevocationList, UnlearnOrder
from hdus_edge.protocol.topics import Topics

T = Topics("kit")


def _agent(tmp_path):
    admin, states, _ = kit.installed_fleet(tmp_path)
    agent = DeviceAgent.from_state_dir(states["d1"], settings=AgentSettings(probe_in_subprocess=False))
    # Certify d2 and d3 as their hellos would.
    for d in ("d2", "d3"):
        st = states[d]
        hello = Hello(d, st.key().public_key.raw, st.certificate(), "generic-x86_64", "mobilenet-s", "seed-cnn")
        agent._on_message(T.hello(d), codec.encode(hello, st.key(), d), True)
    return admin, states, agent


def _list(admin, version: int, revoked, orders, signer: SigningKey | None = None, sender: str = "admin") -> bytes:
    return codec.encode(RevocationList(version, 1.0, tuple(revoked), tuple(orders)), signer or admin.key(), sender)


def test_revocation_list_forgets_what_it_vouches_for_and_refuses_the_certificate(tmp_path):
    admin, states, agent = _agent(tmp_path)
    try:
        assert agent.members() == ("d2", "d3") and "d2" in agent.trust
        order = codec.encode(UnlearnOrder("d2", "admin", "a" * 32, 1.0, "gone", 0), admin.key(), "admin")
        # An order for d3 rides along, but the list revokes only d2: it is not applied from the list.
        stray = codec.encode(UnlearnOrder("d3", "admin", "b" * 32, 1.0, "gone", 0), admin.key(), "admin")
        agent._on_message(T.revocations(), _list(admin, 1, [("d2", 0)], [order, stray]), True)
        assert agent.members() == ("d3",)
        assert agent.store.is_tombstoned("d2", 0) and agent.trust.is_revoked("d2", 0) and "d2" not in agent.trust
        assert agent.store.pending_receipts() or agent.counters.receipts_sent == 1  # the order is answered
        # d2's hello (its old certificate) is refused from now on, and not parked.
        st = states["d2"]
        hello = Hello("d2", st.key().public_key.raw, st.certificate(), "generic-x86_64", "mobilenet-s", "seed-cnn")
        rejected = agent.counters.rejected
        agent._on_message(T.hello("d2"), codec.encode(hello, st.key(), "d2"), True)
        assert agent.counters.rejected == rejected + 1 and "d2" not in agent._parked.senders() and "d2" not in agent.trust
    finally:
        agent.stop()


def test_a_list_not_signed_by_the_admin_or_an_old_one_changes_nothing(tmp_path):
    admin, states, agent = _agent(tmp_path)
    try:
        order = codec.encode(UnlearnOrder("d2", "admin", "a" * 32, 1.0, "gone", 0), admin.key(), "admin")
        forged = _list(admin, 5, [("d2", 0)], [order], signer=states["d3"].key(), sender="admin")
        agent._on_message(T.revocations(), forged, True)
        assert agent.members() == ("d2", "d3") and "d2" in agent.trust
        # A list without the order still takes the revoked device's seed out.
        agent._on_message(T.revocations(), _list(admin, 2, [("d3", 0)], []), True)
        assert "d3" not in agent.trust and agent.members() == ("d2",) and agent.store.seed_info("d3") is None
        before = agent.counters.duplicates
        agent._on_message(T.revocations(), _list(admin, 1, [("d2", 0)], [order]), True)  # older than v2
        assert agent.counters.duplicates == before + 1 and "d2" in agent.trust and agent.members() == ("d2",)
    finally:
        agent.stop()
