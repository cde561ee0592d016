"""Issue 14's insider attacks, for ``hdus-edge bench reliability``: what one certified device, or a
forgotten one, can do to the others, and the figures that show it is bounded.

- ``forgotten_restart`` (attack 3): a forgotten device restarts its agent: it must refuse to start,
  and the broker must hold no retained membership or seed of it afterwards.
- ``parking_flood`` (attack 4): ~1 MB envelopes from made-up sender ids, parked until a hello that
  never comes; agents run in their own processes, their RSS is measured.
- ``heavy_seed`` (attack 5): a compute-heavy seed of allowed operators from a certified neighbour:
  refused by the static budget; and with the budget off, an unlearn order while the seed worker is
  busy probing it (the order must not wait for the probe).
- ``audit_flood`` (weakness in 6): thousands of garbage messages, the audit log's growth.
- ``insider_flood`` (the goal): 10,000 messages from one authenticated device; every other agent's
  RSS growth (target <= 20 MB) and the delay of an unlearn receipt (target <= 1 s) against a
  baseline measured in the same run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from hdus_edge.device.agent import DeviceAgent
from hdus_edge.device.store import AUDIT_NAME
from hdus_edge.errors import DeviceForgottenError
from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import SigningKey
from hdus_edge.protocol.messages import SeedEnvelope
from hdus_edge.reliability.harness import (
    LAB_SETTINGS,
    Puppet,
    SingleAgentLab,
    lab_fleet,
    settle,
    start_agents,
    wait_until,
)
from hdus_edge.reliability.onnx_mutants import heavy_seed_model
from hdus_edge.reliability.zygote import AgentZygote
from hdus_edge.state import StateDir
from hdus_edge.transport.mqtt import MqttTransport
from hdus_edge.unlearn.commands import unlearn

logger = logging.getLogger(__name__)

MB = 2**20
_AHEAD = 600  # how far a flood may run ahead of its slowest receiver (the broker queues 1,000 per client)
FLOOD_RSS_TARGET_MB = 20.0
FLOOD_DELAY_TARGET_S = 1.0


# --- the broker `hdus-edge broker-config` writes ---------------------------------------------------


class GeneratedBroker:
    """Mosquitto running the config ``broker-config`` writes for a fleet (passwords, per-device ACL):
    every client, the attacker included, connects with its own credentials (``url(user)``)."""

    def __init__(self, admin: Any, folder: Path) -> None:
        from hdus_edge.admin.broker import write_broker_config
        from hdus_edge.transport.ports import free_port

        self.port = free_port()
        # Plain text: this lab tests credentials and rights (dynamic security); TLS has its own case.
        files = write_broker_config(admin, folder, port=self.port, persistence=False, insecure_plaintext=True)
        if files.credentials is None:
            raise RuntimeError("broker-config wrote no credentials")
        self._creds = json.loads(files.credentials.read_text())
        self._config = files.config
        self._proc: subprocess.Popen[bytes] | None = None

    def url(self, user: str) -> str:
        """``user``'s broker URL (a device id, or ``admin``)."""
        return str(self._creds[user]["url"])

    def __enter__(self) -> GeneratedBroker:
        from hdus_edge.transport.mosquitto import find_binary
        from hdus_edge.transport.ports import wait_for_port

        self._proc = subprocess.Popen([find_binary("mosquitto"), "-c", str(self._config)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_for_port("127.0.0.1", self.port, 10):
            self.__exit__()
            raise RuntimeError(f"mosquitto did not start with {self._config}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None


# --- payloads ------------------------------------------------------------------------------------


def made_up_sender_envelope(k: int, size: int, to: str, seed: int = 0) -> bytes:
    """A well-formed, correctly self-signed seed envelope from ``fake-<k>``, a sender no admin
    certified: an agent can only park it until a hello that never comes. ``size`` bytes of body."""
    key = SigningKey.from_seed(np.random.default_rng([seed, k]).bytes(32))
    body = np.random.default_rng([seed, k, 1]).bytes(size)
    env = SeedEnvelope.build(owner=f"fake-{k}", to=to, version=1, onnx=body, arch="seed-cnn",
                             input_shape=(-1, 1, 8, 8), num_classes=10, reference_sha256="0" * 64, epoch=0)
    return codec.encode(env, key, f"fake-{k}")


def garbage(k: int, size: int, seed: int = 0) -> bytes:
    """``size`` random bytes: rejected at decoding, audited (rate-limited)."""
    return np.random.default_rng([seed, k, 2]).bytes(size)


def retained_topics(broker_url: str, topic_filter: str, quiet_s: float = 0.5, timeout: float = 5.0) -> list[str]:
    """Topics the broker holds a retained, non-empty message on under ``topic_filter``."""
    seen: dict[str, bool] = {}
    last = [time.monotonic()]

    def on(topic: str, payload: bytes, retained: bool) -> None:
        if retained:
            seen[topic] = bool(payload)
            last[0] = time.monotonic()

    probe = MqttTransport(broker_url, f"retained-{os.getpid()}-{time.monotonic_ns()}", handler=on, clean_session=True)
    try:
        probe.subscribe([topic_filter])
        probe.connect(timeout=10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and time.monotonic() - last[0] < quiet_s:
            time.sleep(0.05)
    finally:
        probe.close()
    return sorted(t for t, held in seen.items() if held)


# --- attack 3: a forgotten device restarts ---------------------------------------------------------


def forgotten_restart(root: Path, broker_url: str) -> dict[str, Any]:
    """Forget the running device ``r``, then restart its agent twice: it must refuse each time."""
    with SingleAgentLab(root, broker_url) as lab:
        agent = lab.agent
        assert agent is not None
        p = lab.puppet
        p.publish(p.topics.unlearn(lab.r), p.order(lab.r), retain=True)
        forgot = wait_until(lambda: agent.forgotten, 30)
        lab.fleet.stop()
        refused = 0
        for _ in range(2):
            try:
                DeviceAgent.from_state_dir(lab.fleet.states[lab.r], broker_url=broker_url, settings=LAB_SETTINGS).start()
            except DeviceForgottenError:
                refused += 1
        root_topic = p.topics.root
        retained = (retained_topics(broker_url, f"{root_topic}/membership/{lab.r}")
                    + retained_topics(broker_url, f"{root_topic}/seeds/+/{lab.r}"))
    # The order comes while r's agent is down (its neighbours' agents are down too: nobody else
    # clears r's retained seeds): on return r must forget itself and leave nothing retained.
    with SingleAgentLab(root / "missed", broker_url) as lab:
        p = lab.puppet
        lab.fleet.stop()
        p.publish(p.topics.unlearn(lab.r), p.order(lab.r), retain=True)
        back = start_agents(lab.fleet, [lab.r])[lab.r]
        forgot_on_return = back.wait_for(lambda a: a.forgotten, 30)
        time.sleep(0.5)  # the clears it publishes reach the broker
        lab.fleet.stop()
        root_topic = p.topics.root
        left = (retained_topics(broker_url, f"{root_topic}/membership/{lab.r}")
                + retained_topics(broker_url, f"{root_topic}/seeds/+/{lab.r}"))
    return {"forgotten_seen": forgot, "restarts": 2, "restarts_refused": refused,
            "restarts_not_refused": 2 - refused, "retained_after_restart": len(retained),
            "missed_order_not_applied": int(not forgot_on_return), "missed_order_retained_after": len(left)}


# --- attack 5 and the audit flood: one agent in this process ----------------------------------------


def heavy_seed(root: Path, broker_url: str) -> dict[str, Any]:
    """A heavy seed is refused by the static budget; with the budget off, an order while the seed
    worker probes it is applied without waiting for the probe."""
    out: dict[str, Any] = {}
    probing = replace(LAB_SETTINGS, probe_in_subprocess=True)
    with SingleAgentLab(root / "budget", broker_url, settings=probing) as lab:
        agent = lab.agent
        assert agent is not None
        began = time.perf_counter()
        outcome = lab.send_seed(lab.a, heavy_seed_model())
        out["refused"] = outcome == "rejected"
        out["time_to_reject_ms"] = 1e3 * (time.perf_counter() - began)
        reasons = [e.get("reason") for e in agent.store.audit_events() if e["event"] == "reject"]
        out["reason"] = reasons[-1] if reasons else None
        out["heavy_installed"] = int(outcome == "accepted")
    unbudgeted = replace(probing, seed_compute_multiple=None, probe_run_ms=None, probe_timeout_s=120.0)
    with SingleAgentLab(root / "nobudget", broker_url, settings=unbudgeted) as lab:
        agent = lab.agent
        assert agent is not None
        p = lab.puppet
        p.publish(p.topics.seed(lab.r, lab.a), p.seed(lab.a, lab.r, lab.next_version(lab.a), heavy_seed_model()))
        wait_until(lambda: agent.pending_seeds() > 0, 10)
        sent = time.perf_counter()
        p.publish(p.topics.unlearn(lab.b), p.order(lab.b), retain=True)
        wait_until(lambda: agent.counters.unlearned >= 1, 60, interval=0.002)
        applied = time.perf_counter()
        probing_when_applied = agent.pending_seeds() > 0
        wait_until(lambda: agent.pending_seeds() == 0, 120)
        done = time.perf_counter()
        out["order_applied_ms_while_probing"] = 1e3 * (applied - sent)
        out["probe_busy_when_order_applied"] = probing_when_applied
        out["seed_work_ms"] = 1e3 * (done - sent)
        # The order must not have waited for the seed work: 1 when it did.
        out["order_waited_for_seed_work"] = int(not probing_when_applied)
    return out


def audit_flood(root: Path, broker_url: str, messages: int = 5000, size: int = 256) -> dict[str, Any]:
    """``messages`` garbage messages at one agent: the audit log's growth and its summary line."""
    with SingleAgentLab(root, broker_url) as lab:
        agent = lab.agent
        assert agent is not None
        audit = agent.store.root / AUDIT_NAME
        before = audit.stat().st_size
        rejected_before = agent.counters.rejected
        topic = lab.puppet.topics.tombstones(lab.c)
        for k in range(messages):
            lab.puppet.transport.publish(topic, garbage(k, size), wait=False)
            if k % 200 == 199:
                # In step with the agent, so the broker's queue limit (1,000) drops none of the flood.
                lab.puppet.transport.flush(60)
                wait_until(lambda k=k: agent.counters.rejected - rejected_before >= k + 1 - _AHEAD, 60)
        lab.puppet.transport.flush(60)
        # Until every message is handled, or the count stays still (the broker drops what exceeds
        # its queue limit for a slow client; those never come).
        settle(agent, quiet_s=2.0, timeout=90)
        agent.store.flush_audit_summary()
        grown = audit.stat().st_size - before
        events = agent.store.audit_events()
        summaries = [e for e in events if e["event"] == "audit_suppressed"]
        rejected = agent.counters.rejected - rejected_before
        return {"messages": messages, "rejected": rejected,
                "audit_growth_kb": grown / 1024, "audit_bytes_per_message": grown / max(1, rejected),
                "suppressed_counted": sum(e["count"] for e in summaries),
                "unbounded_before_kb": messages * 166 / 1024}  # the figure: ~166 B a message


# --- agents in their own processes: the parking flood and the 10,000-message flood -------------------


class _ProcessFleet:
    """Agents of a lab fleet as ``hdus-edge agent`` processes (forked by the zygote)."""

    def __init__(self, root: Path, broker_url: str, n: int, attacker: str | None = None,
                 urls: dict[str, str] | None = None) -> None:
        ids = [f"dev-{k:03d}" for k in range(n)]
        honest = [d for d in ids if d != attacker]
        graph = {d: frozenset(set(honest) - {d}) for d in honest}
        if attacker:
            graph[attacker] = frozenset()
        self.fleet = lab_fleet(root, broker_url, n, graph=graph)
        self.broker_url = broker_url
        self.root = root
        self.honest = honest
        self.pids: dict[str, int] = {}
        self.urls = urls or {}  # device -> its own broker URL (credentials); default: broker_url
        self.zygote = AgentZygote(root / "agents.log")

    def __enter__(self) -> _ProcessFleet:
        self.zygote.start()
        try:
            for d in self.honest:
                ready = self.root / f"{d}.ready"
                self.pids[d] = self.zygote.spawn(self.fleet.states[d].root, self.urls.get(d, self.broker_url), ready,
                                                 digest_interval=1.0)
                if not wait_until(ready.exists, 60):
                    raise TimeoutError(f"agent {d} did not start; see {self.root / 'agents.log'}")
            if not wait_until(self.converged, 120, interval=0.2):
                raise TimeoutError("process fleet did not exchange its seeds")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for pid in self.pids.values():
            self.zygote.kill(pid, 15)
        self.zygote.close()

    def status(self, device_id: str) -> dict[str, Any]:
        return StateDir(self.fleet.states[device_id].root).read_status() or {}

    def converged(self) -> bool:
        return all(len(self.status(d).get("members", [])) == len(self.honest) - 1 for d in self.honest)

    def rss_mb(self) -> dict[str, float]:
        """RSS of each running agent (a forgotten one has exited by itself)."""
        out = {}
        for d, pid in self.pids.items():
            try:
                out[d] = psutil.Process(pid).memory_info().rss / MB
            except psutil.NoSuchProcess:
                continue
        return out


def parking_flood(root: Path, broker_url: str, messages: int = 300, size: int = 1 << 20) -> dict[str, Any]:
    """``messages`` envelopes of ``size`` bytes from made-up senders at agent processes (attack 4)."""
    with _ProcessFleet(root, broker_url, 4, attacker="dev-003") as pf:
        time.sleep(2.0)
        before = pf.rss_mb()
        with Puppet(broker_url, pf.fleet.admin, pf.fleet.states) as p:
            topic = p.topics.tombstones("dev-003")
            for k in range(messages):
                p.transport.publish(topic, made_up_sender_envelope(k, size, pf.honest[0]), wait=False)
                if k % 20 == 19:
                    p.transport.flush(60)
            p.transport.flush(120)
        wait_until(lambda: all(pf.status(d).get("counters", {}).get("parked", 0) >= messages * 0.9 for d in pf.honest),
                   120, interval=0.5)
        time.sleep(2.0)
        after = pf.rss_mb()
        statuses = {d: pf.status(d) for d in pf.honest}
    growth = {d: after[d] - before[d] for d in pf.honest}
    return {"messages": messages, "message_kb": size / 1024, "rss_mb_before": max(before.values()),
            "rss_mb_after": max(after.values()), "rss_growth_mb_max": max(growth.values()),
            "parked_now_max": max(s.get("parked", {}).get("messages", 0) for s in statuses.values()),
            "parked_mb_now_max": max(s.get("parked", {}).get("bytes", 0) for s in statuses.values()) / MB,
            "parked_dropped_min": min(s.get("counters", {}).get("parked_dropped", 0) for s in statuses.values()),
            "over_target": int(max(growth.values()) > FLOOD_RSS_TARGET_MB)}


def insider_flood(root: Path, messages: int = 10_000, size: int = 8 << 10) -> dict[str, Any]:
    """The goal: ``messages`` from one authenticated device (half made-up-sender envelopes, half
    garbage, on its own topic) while the admin forgets a device; RSS growth of every other agent and
    the receipt delay against a baseline order in the same run (targets: 20 MB, 1 s). Mosquitto runs
    the config ``broker-config`` writes; every client uses its own credentials."""
    pf = _ProcessFleet(root, "mqtt://127.0.0.1:1", 6, attacker="dev-005")  # provisioned, not started
    attacker = "dev-005"
    with GeneratedBroker(pf.fleet.admin, root / "broker") as broker:
        pf.urls = {d: broker.url(d) for d in pf.honest}
        admin_url = broker.url("admin")
        with pf:
            admin = pf.fleet.admin
            time.sleep(2.0)
            base = unlearn(admin, "dev-004", broker_url=admin_url, wait_s=30)[0]
            baseline_s = base.latency_s
            observed = [d for d in pf.honest if d not in ("dev-003", "dev-004")]  # the targets stop when forgotten
            before = {d: v for d, v in pf.rss_mb().items() if d in observed}
            sent = [0]

            def handled(d: str) -> int:
                c = pf.status(d).get("counters", {})
                return int(c.get("rejected", 0)) + int(c.get("parked", 0))

            start = {d: handled(d) for d in observed}

            def flood() -> None:
                # The attacker's own account and client id: the ACL lets it write its own topics only.
                with Puppet(broker.url(attacker), admin, pf.fleet.states,
                            client_id=f"{pf.fleet.fleet.fleet.name}.{attacker}") as p:
                    topic = p.topics.tombstones(attacker)
                    for k in range(messages):
                        data = made_up_sender_envelope(k, size, "dev-000") if k % 2 == 0 else garbage(k, size)
                        p.transport.publish(topic, data, wait=False)
                        sent[0] = k + 1
                        if k % 200 == 199:
                            p.transport.flush(60)
                            # In step with the slowest agent (its status file, ~1 s behind), so the
                            # broker's queue limit drops none of the flood.
                            wait_until(lambda k=k: min(handled(d) - start[d] for d in observed) >= k + 1 - _AHEAD,
                                       60, interval=0.1)
                    p.transport.flush(120)

            flooder = threading.Thread(target=flood, name="insider-flood")
            flood_began = time.monotonic()
            flooder.start()
            wait_until(lambda: sent[0] >= messages // 5, 120)
            during = unlearn(admin, "dev-003", broker_url=admin_url, wait_s=60)[0]
            flooder.join()
            flood_s = time.monotonic() - flood_began
            wait_until(lambda: min(handled(d) - start[d] for d in observed) >= messages, 60, interval=0.2)
            time.sleep(3.0)
            after = {d: v for d, v in pf.rss_mb().items() if d in observed}
            statuses = {d: pf.status(d) for d in observed}
            delivered = min(handled(d) - start[d] for d in observed)
    growth = {d: after[d] - before[d] for d in observed}
    delay = None if during.latency_s is None or baseline_s is None else during.latency_s - baseline_s
    return {"messages": messages, "message_kb": size / 1024, "flood_s": flood_s,
            "rss_growth_mb_max": max(growth.values()), "rss_mb_after_max": max(after.values()),
            "receipt_latency_s_baseline": baseline_s, "receipt_latency_s_during_flood": during.latency_s,
            "receipt_delay_s": delay, "receipts_missing": len(during.missing) + len(base.missing),
            "delivered_min": delivered,
            "rejected_min": min(s.get("counters", {}).get("rejected", 0) for s in statuses.values()),
            "parked_dropped_min": min(s.get("counters", {}).get("parked_dropped", 0) for s in statuses.values()),
            "rss_over_target": int(max(growth.values()) > FLOOD_RSS_TARGET_MB),
            "delay_over_target": int(delay is None or delay > FLOOD_DELAY_TARGET_S)}
