"""Broker-trust cases of the runner (issue 14, attacks 1 and 2, "TLS optional"), on real Mosquitto
running the config ``hdus-edge broker-config`` writes (TLS only, dynamic-security logins).

- ``session_takeover``: every device's password with every other device's client id (and its
  command login with the agent's id) while the victim holds a persistent session. Counted: accepted
  logins, victims kicked, messages a victim lost. For scale, the same attack against logins whose
  client ids are not bound (what a password file gives): ``accepted_without_binding``.
- ``forgotten_revoked``: the admin forgets a device while one holder is away. Before it is revoked the
  target tries to clear the order about itself and publishes a new seed (v9); then the holder comes
  back with a wiped session to a broker that lost the retained order and every digest. Counted: the
  target's logins still accepted, the order cleared, its seeds retained on the broker, and whether
  the holder installed its seed (``forgotten_came_back``).
- ``tls_only``: the default config's listeners: a plain-text connection, TLS without a client
  certificate, and plain ``mqtt://`` to a non-loopback host from the client side.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from hdus_edge.admin.broker import (
    BrokerFiles,
    install_device_access,
    write_broker_config,
)
from hdus_edge.device.agent import DeviceAgent
from hdus_edge.errors import BrokerRefusedError, BrokerUnreachableError, BrokerURLError
from hdus_edge.lab.agents import AgentFleet
from hdus_edge.protocol import codec
from hdus_edge.protocol.messages import SeedEnvelope
from hdus_edge.protocol.topics import Topics
from hdus_edge.reliability.harness import LAB_SETTINGS, lab_fleet, wait_until
from hdus_edge.transport.mosquitto import MosquittoProcess
from hdus_edge.transport.mqtt import MqttTransport, TlsFiles
from hdus_edge.transport.ports import free_port
from hdus_edge.transport.url import companion_user
from hdus_edge.unlearn.commands import unlearn as admin_unlearn
from hdus_edge.unlearn.revocation import revoke

logger = logging.getLogger(__name__)

_PLACEHOLDER = "mqtt://127.0.0.1:9"  # the fleet's broker until broker-config gives each device its login


class TrustLab:
    """A provisioned lab fleet (nothing started) and Mosquitto running its generated broker config."""

    def __init__(self, root: Path, n: int, *, bind_client_ids: bool = True, seed: int = 0) -> None:
        self.fleet: AgentFleet = lab_fleet(root / "fleet", _PLACEHOLDER, n, name="trust", seed=seed)
        self.admin = self.fleet.admin
        self.files: BrokerFiles = write_broker_config(self.admin, root / "broker", port=free_port(), persistence=False,
                                                      bind_client_ids=bind_client_ids)
        self.creds: dict[str, Any] = json.loads(self.files.credentials.read_text())
        for device, state in self.fleet.states.items():
            install_device_access(self.files.folder, device, state)
        self.broker = MosquittoProcess(self.files.folder, self.files.mosquitto)
        self.topics = Topics("trust")
        self.agents: dict[str, DeviceAgent] = {}

    @property
    def ids(self) -> list[str]:
        return sorted(self.fleet.states)

    def tls(self, user: str) -> TlsFiles:
        files = TlsFiles.from_dir(self.files.folder / "devices" / user / "keys" / "tls")
        assert files is not None
        return files

    def login(self, user: str, client_id: str, *, password_of: str | None = None, **kw: Any) -> MqttTransport:
        """A connection (not connected) as ``user`` with the password of ``password_of`` (default: its own)."""
        owner = password_of or user
        url = self.creds[owner]["url"].replace(f"//{owner}:", f"//{user}:")
        return MqttTransport(url, client_id, tls=self.tls(owner), **kw)

    def accepted(self, transport: MqttTransport) -> bool:
        """Whether the broker accepts ``transport``'s login (it is closed afterwards)."""
        try:
            transport.connect(timeout=5, max_attempts=1)
            return True
        except (BrokerRefusedError, BrokerUnreachableError):
            return False
        finally:
            transport.close()

    def start_agent(self, device: str) -> DeviceAgent:
        self.agents[device] = DeviceAgent.from_state_dir(self.fleet.states[device], settings=LAB_SETTINGS).start()
        return self.agents[device]

    def retained(self, filters: list[str], wait_s: float = 1.0) -> dict[str, bytes]:
        """The non-empty retained messages under ``filters``, as the admin sees them."""
        seen: dict[str, bytes] = {}
        lock = threading.Lock()

        def on(topic: str, payload: bytes, retained: bool) -> None:
            with lock:
                if retained and payload:
                    seen[topic] = payload

        t = self.login("admin", f"admin-look-{time.monotonic_ns()}", handler=on, clean_session=True)
        t.subscribe(filters)
        t.connect(timeout=5)
        time.sleep(wait_s)
        t.close()
        return seen

    def __enter__(self) -> TrustLab:
        self.broker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for agent in self.agents.values():
            try:
                agent.stop()
            except Exception:  # a stopped agent must not hide the case's figures
                logger.exception("stopping an agent failed")
        self.broker.stop()


def _takeovers(lab: TrustLab) -> dict[str, int]:
    attempts = accepted = kicked = lost = 0
    for victim in lab.ids:
        got: list[str] = []
        holder = lab.login(victim, f"trust.{victim}", handler=lambda t, p, r, got=got: got.append(t))
        marker = lab.topics.membership(f"{victim}-probe")  # no device has this id: only the victim's filter sees it
        holder.subscribe(marker)
        holder.connect(timeout=5)
        try:
            for attacker in lab.ids:
                if attacker == victim:
                    continue
                for user in (attacker, companion_user(attacker)):
                    attempts += 1
                    before = holder.connect_count
                    accepted += lab.accepted(lab.login(user, f"trust.{victim}", password_of=attacker, clean_session=True,
                                                       reconnect_max_delay=60.0))
                    time.sleep(0.2)
                    # A kicked client is down or has reconnected since: either way it was kicked.
                    kicked += int(not holder.connected or holder.connect_count != before)
                    holder.wait_connected(10)
            admin = lab.login("admin", f"admin-mark-{victim}", clean_session=True)
            admin.connect(timeout=5)
            admin.publish(marker, b"x", wait=True, timeout=5)
            admin.close()
            lost += 0 if wait_until(lambda marker=marker, got=got: marker in got, 5) else 1
        finally:
            holder.close()
    return {"attempts": attempts, "accepted": accepted, "victims_kicked": kicked, "victim_messages_lost": lost}


def session_takeover(root: Path, n: int = 3) -> dict[str, Any]:
    """Attack 1 on the generated config, and on the same config without bound client ids."""
    began = time.monotonic()
    with TrustLab(root / "bound", n) as lab:
        figures = _takeovers(lab)
    with TrustLab(root / "unbound", n, bind_client_ids=False) as lab:
        unbound = _takeovers(lab)
    return {**figures, "accepted_without_binding": unbound["accepted"], "kicked_without_binding": unbound["victims_kicked"],
            "lost_without_binding": unbound["victim_messages_lost"], "seconds": time.monotonic() - began}


def forgotten_revoked(root: Path, wait_s: float = 15.0) -> dict[str, Any]:
    """Attack 2: a forgotten device keeps no login, cannot clear its order, and its seed never comes back."""
    with TrustLab(root, 3) as lab:
        away, holder, target = lab.ids
        for d in lab.ids:
            lab.start_agent(d)
        lab.fleet.agents = lab.agents
        lab.fleet.wait_converged(60)
        lab.agents.pop(away).stop()  # away during the order
        began = time.monotonic()
        outcome, _ = admin_unlearn(lab.admin, target, wait_s=wait_s)  # the away holder's receipt: not before it returns
        # Still admitted until revoked: the target tries to clear the order and sends a new seed v9.
        state = lab.fleet.states[target]
        attacker = lab.login(companion_user(target), f"trust.{target}@cli", password_of=target, clean_session=True)
        attacker.connect(timeout=5)
        attacker.publish(lab.topics.unlearn(target), b"", retain=True, wait=True, timeout=5)
        env = SeedEnvelope.build(owner=target, to=away, version=9, onnx=(state.models / "seed.onnx").read_bytes(),
                                 arch="seed-cnn", input_shape=(-1, *lab.admin.fleet().data.input_shape),
                                 num_classes=lab.admin.fleet().data.num_classes,
                                 reference_sha256=lab.admin.fleet().data.reference_sha256, epoch=0)
        v9 = codec.encode(env, state.key(), target)
        attacker.publish(lab.topics.seed(away, target), v9, retain=True, wait=True, timeout=5)
        attacker.close()
        order_cleared = int(lab.topics.unlearn(target) not in lab.retained([lab.topics.unlearn(target)], 0.5))
        t0 = time.monotonic()
        done = revoke(lab.admin, outcome.order_raw)
        revoke_s = time.monotonic() - t0
        logins_accepted = sum(lab.accepted(lab.login(u, c, password_of=target))
                              for u, c in ((target, f"trust.{target}"), (companion_user(target), f"trust.{target}@cli")))
        seeds_retained = len(lab.retained([f"{lab.topics.root}/seeds/+/{target}", f"{lab.topics.root}/seeds/{target}/+"]))
        # The away holder returns with a wiped session to a broker that lost the order and the digests.
        lab.agents.pop(holder).stop()
        lab.accepted(lab.login(away, f"trust.{away}", clean_session=True))  # wipes its session
        wipe = lab.login("admin", "admin-wipe", clean_session=True)
        wipe.connect(timeout=5)
        for topic in [lab.topics.unlearn(target), *(lab.topics.tombstones(d) for d in lab.ids)]:
            wipe.publish(topic, b"", retain=True, wait=True, timeout=5)
        back = lab.start_agent(away)
        forgot = wait_until(lambda: target not in back.members(), 15)
        back_s = time.monotonic() - t0
        wipe.publish(lab.topics.seed(away, target), v9, retain=False, wait=True, timeout=5)  # replayed once more
        time.sleep(1.0)
        wipe.close()
        came_back = int(target in back.members() or (back.store.seed_info(target) is not None))
        return {
            "forgotten_logins_accepted": logins_accepted, "order_cleared_by_target": order_cleared,
            "forgotten_seeds_retained": seeds_retained, "forgotten_came_back": came_back,
            "away_holder_forgot": forgot, "receipts": len(outcome.receipts), "logins_deleted": len(done.broker_logins_deleted),
            "revoke_s": revoke_s, "order_to_revoked_s": t0 - began + revoke_s, "away_return_to_forgotten_s": back_s,
        }


def tls_only(root: Path) -> dict[str, Any]:
    """Weakness "TLS optional / plain-text listener stays open", on the default generated config."""
    with TrustLab(root, 2) as lab:
        port = lab.files.mosquitto.tls.port if lab.files.mosquitto.tls else lab.files.mosquitto.port
        d = lab.ids[0]
        password = lab.creds[d]["password"]
        plain = lab.accepted(MqttTransport(f"mqtt://{d}:{password}@127.0.0.1:{port}", f"trust.{d}", clean_session=True))
        no_cert = lab.accepted(MqttTransport(lab.creds[d]["url"], f"trust.{d}", clean_session=True,
                                             tls=TlsFiles(ca_file=lab.tls(d).ca_file)))
        with_cert = lab.accepted(lab.login(d, f"trust.{d}", clean_session=True))
        try:
            MqttTransport("mqtt://192.0.2.10:1883", "probe", insecure=False).close()
            off_host = 1
        except BrokerURLError:
            off_host = 0
        listeners = sum(1 for line in lab.files.config.read_text().splitlines() if line.startswith("listener "))
    return {"listeners": listeners, "plaintext_listener_open": int(plain), "tls_without_client_cert_accepted": int(no_cert),
            "tls_with_client_cert_accepted": int(with_cert), "non_loopback_plaintext_allowed": off_host}
