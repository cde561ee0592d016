"""A reliability lab: a provisioned fleet on disk, a puppet that speaks for its devices, snapshots.

``lab_fleet`` provisions devices with untrained exported models (``synthetic_models``: the suite
measures faults, not accuracy) on one broker, as an ``AgentFleet`` whose agents the case starts and
stops one by one. ``Puppet`` publishes correctly signed messages in any device's or the admin's
name, so a case can play a neighbour without running its agent (or play a malicious one).
``snapshot`` captures everything a rejected message must leave unchanged.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdus_edge.config import DataSection, EnsembleSection, FleetConfig, FleetSection
from hdus_edge.device.agent import AgentSettings, DeviceAgent
from hdus_edge.lab.agents import AgentFleet, DeviceModels
from hdus_edge.lab.synthetic import REFERENCE_SHA
from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import SigningKey
from hdus_edge.protocol.fields import ADMIN_ID
from hdus_edge.protocol.messages import (
    Hello,
    NeighborList,
    SeedEnvelope,
    TombstoneDigest,
    UnlearnOrder,
)
from hdus_edge.protocol.topics import Topics
from hdus_edge.state import AdminDir, StateDir
from hdus_edge.topology import Graph, build_graph
from hdus_edge.transport.mqtt import MqttTransport

logger = logging.getLogger(__name__)

INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10
# In-process probes: a fleet of agents in one process measuring faults; the hostile-ONNX cases turn
# the child-process probe on explicitly.
LAB_SETTINGS = AgentSettings(probe_in_subprocess=False, digest_interval_s=0.5)


@functools.lru_cache(maxsize=4)
def lab_models(n: int, seed: int = 0) -> dict[str, DeviceModels]:
    """``n`` devices (``dev-000`` ...) with exported untrained models; cached per process."""
    from hdus_edge.lab.synthetic import synthetic_models

    return synthetic_models(n, INPUT_SHAPE, seed)


def fleet_config(name: str, broker_url: str) -> FleetConfig:
    """The lab's fleet config: 8x8 single-channel inputs, 10 classes, lam 0.5 over probabilities."""
    return FleetConfig(FleetSection(name, broker_url), DataSection(INPUT_SHAPE, NUM_CLASSES, "public", REFERENCE_SHA),
                       EnsembleSection(0.5, "probs"))


def lab_fleet(
    root: Path,
    broker_url: str,
    n: int,
    *,
    name: str = "rel",
    graph: Graph | None = None,
    degree: int | None = None,
    settings: AgentSettings = LAB_SETTINGS,
    seed: int = 0,
) -> AgentFleet:
    """Provision ``n`` devices (nothing started): complete graph unless ``graph`` or ``degree`` is given."""
    models = lab_models(n, seed)
    ids = sorted(models)
    if graph is None:
        graph = build_graph("complete", ids) if degree is None else build_graph("random-regular", ids, degree=degree, seed=seed)
    return AgentFleet(root, broker_url, fleet_config(name, broker_url), models, graph, settings)


def start_agents(fleet: AgentFleet, ids: Iterable[str], broker_url: str | None = None,
                 settings: AgentSettings | None = None) -> dict[str, DeviceAgent]:
    """Start the agents of ``ids`` (one at a time: amqtt 0.12 dislikes concurrent subscribes)."""
    started = {}
    for device_id in ids:
        agent = DeviceAgent.from_state_dir(fleet.states[device_id], broker_url=broker_url or fleet.broker_url,
                                           settings=settings or fleet.settings)
        fleet.agents[device_id] = agent.start()
        started[device_id] = agent
    return started


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# --- the puppet ----------------------------------------------------------------------------------


class Puppet:
    """Publishes correctly signed messages in the name of provisioned devices and the admin.

    One MQTT connection (clean session); ``publish`` waits for the broker's PUBACK.
    """

    def __init__(self, broker_url: str, admin: AdminDir, states: Mapping[str, StateDir], *, client_id: str | None = None) -> None:
        self.admin = admin
        self.states = dict(states)
        fleet = admin.fleet()
        self.topics = Topics(fleet.fleet.name)
        self.input_shape = (-1, *fleet.data.input_shape)
        self.num_classes = fleet.data.num_classes
        self.reference_sha256 = fleet.data.reference_sha256 or REFERENCE_SHA
        self._keys: dict[str, SigningKey] = {}
        self.transport = MqttTransport(broker_url, client_id or f"puppet-{uuid.uuid4().hex[:10]}", clean_session=True)

    def __enter__(self) -> Puppet:
        self.transport.connect(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.transport.close()

    def key(self, signer: str) -> SigningKey:
        """The signing key of a device, or the admin's for ``"admin"``."""
        if signer not in self._keys:
            self._keys[signer] = self.admin.key() if signer == ADMIN_ID else self.states[signer].key()
        return self._keys[signer]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish and wait for the PUBACK (``TimeoutError`` if none comes in 10 s)."""
        if not self.transport.publish(topic, payload, retain=retain, wait=True, timeout=10):
            raise TimeoutError(f"broker did not acknowledge {topic}")

    # --- messages, signed by their rightful author unless ``key`` says otherwise -------------

    def hello(self, device_id: str, *, key: SigningKey | None = None) -> bytes:
        st = self.states[device_id]
        cert = st.certificate()
        msg = Hello(device_id, st.key().public_key.raw, cert, "generic-x86_64", "resnet-8", "seed-cnn")
        return codec.encode(msg, key or st.key(), device_id)

    def seed(self, owner: str, to: str, version: int, onnx: bytes, *, epoch: int = 0,
             key: SigningKey | None = None, signer: str | None = None) -> bytes:
        env = SeedEnvelope.build(owner=owner, to=to, version=version, onnx=onnx, arch="seed-cnn",
                                 input_shape=self.input_shape, num_classes=self.num_classes,
                                 reference_sha256=self.reference_sha256, epoch=epoch)
        signer = signer or owner
        return codec.encode(env, key or self.key(signer), signer)

    def order(self, target: str, *, issuer: str = ADMIN_ID, epoch: int = 0, request_id: str | None = None,
              key: SigningKey | None = None, signer: str | None = None, issued_at: float | None = None) -> bytes:
        msg = UnlearnOrder(target, issuer, request_id or uuid.uuid4().hex,
                           time.time() if issued_at is None else issued_at, "reliability", epoch)
        signer = signer or issuer
        return codec.encode(msg, key or self.key(signer), signer)

    def membership(self, device_id: str, neighbors: Iterable[str], version: int | None = None, *,
                   key: SigningKey | None = None, signer: str | None = None) -> bytes:
        msg = NeighborList(device_id, tuple(sorted(neighbors)), version if version is not None else int(time.time() * 1000))
        signer = signer or device_id
        return codec.encode(msg, key or self.key(signer), signer)

    def digest(self, device_id: str, orders: Iterable[bytes]) -> bytes:
        return codec.encode(TombstoneDigest(device_id, tuple(orders)), self.key(device_id), device_id)


# --- snapshots -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentSnapshot:
    """What a rejected message must leave unchanged: members, held seeds, tombstones, outputs."""

    members: tuple[str, ...]
    seeds: tuple[tuple[str, int, int, str], ...]  # (owner, version, epoch, sha256)
    tombstones: tuple[tuple[str, int], ...]
    seen: int
    forgotten: bool
    output: np.ndarray

    def differences(self, other: AgentSnapshot, atol: float = 1e-6) -> list[str]:
        """What changed from ``self`` to ``other`` (empty: nothing)."""
        diffs = []
        for name in ("members", "seeds", "tombstones", "seen", "forgotten"):
            if getattr(self, name) != getattr(other, name):
                diffs.append(f"{name}: {getattr(self, name)} -> {getattr(other, name)}")
        if self.output.shape != other.output.shape or float(np.abs(self.output - other.output).max()) > atol:
            diffs.append("ensemble output changed")
        return diffs


def probe_batch(n: int = 16, seed: int = 0) -> np.ndarray:
    """A fixed float32 batch [n, 1, 8, 8] to compare ensemble outputs with."""
    return np.random.default_rng(seed).standard_normal((n, *INPUT_SHAPE)).astype(np.float32)


def snapshot(agent: DeviceAgent, x: np.ndarray | None = None) -> AgentSnapshot:
    """The agent's observable state now."""
    batch = probe_batch() if x is None else x
    return AgentSnapshot(
        members=agent.members(),
        seeds=tuple((s.owner, s.version, s.epoch, s.sha256) for s in agent.store.list_seeds()),
        tombstones=tuple((t.target, t.epoch) for t in agent.store.tombstones()),
        seen=len(agent.store.seen_requests()),
        forgotten=bool(agent.status()["forgotten"]),
        output=agent.predict(batch),
    )


def handled(agent: DeviceAgent) -> int:
    """Messages the agent has finished with (accepted, rejected, duplicate, or applied)."""
    c = agent.counters
    return c.accepted + c.rejected + c.duplicates + c.unlearned


# --- one real agent, neighbours played by the puppet ----------------------------------------------

OUTCOMES = ("accepted", "rejected", "duplicate", "unlearned")


def settle(agent: DeviceAgent, quiet_s: float = 0.3, timeout: float = 10.0) -> None:
    """Wait until the agent's counters stay still for ``quiet_s`` (retained messages handled)."""
    c = agent.counters
    deadline = time.monotonic() + timeout
    last = (c.accepted, c.rejected, c.duplicates, c.unlearned)
    still_since = time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - still_since < quiet_s:
        time.sleep(0.02)
        now = (c.accepted, c.rejected, c.duplicates, c.unlearned)
        if now != last:
            last, still_since = now, time.monotonic()


def deliver(puppet: Puppet, agent: DeviceAgent, topic: str, payload: bytes, *, timeout: float = 30.0,
            retain: bool = False) -> str:
    """Publish ``payload`` and wait until the agent has dealt with it; return what it did.

    One of ``OUTCOMES``, read from the agent's counters, or ``"silent"`` when none moved within
    ``timeout`` (parked for an unknown sender, an accepted neighbour list, or an unexpected error).
    Messages must be delivered one at a time for the attribution to hold.
    """
    c = agent.counters
    before = (c.accepted, c.rejected, c.duplicates, c.unlearned)
    puppet.publish(topic, payload, retain=retain)

    def moved() -> bool:
        return (c.accepted, c.rejected, c.duplicates, c.unlearned) != before

    if not wait_until(moved, timeout, interval=0.002):
        return "silent"
    now = (c.accepted, c.rejected, c.duplicates, c.unlearned)
    return next(name for name, a, b in zip(OUTCOMES, before, now) if a != b)


class SingleAgentLab:
    """Device ``r`` runs a real agent; its neighbours ``a`` and ``b`` and the outsider ``c`` are
    played by the puppet (hellos, neighbour lists and seeds v1 published retained before ``r``
    starts). Use as a context manager; ``r`` holds the seeds of ``a`` and ``b`` when it enters."""

    def __init__(self, root: Path, broker_url: str, *, settings: AgentSettings = LAB_SETTINGS, name: str = "rel") -> None:
        self.ids = lab_ids = sorted(lab_models(4))
        self.r, self.a, self.b, self.c = lab_ids
        graph = {self.r: frozenset({self.a, self.b}), self.a: frozenset({self.r}), self.b: frozenset({self.r}),
                 self.c: frozenset()}
        self.fleet = lab_fleet(root, broker_url, 4, name=name, graph=graph, settings=settings)
        self.broker_url = broker_url
        self.seeds = {i: m.seed_onnx for i, m in lab_models(4).items()}
        self.versions = {self.a: 1, self.b: 1}
        self.puppet = Puppet(broker_url, self.fleet.admin, self.fleet.states)
        self.agent: DeviceAgent | None = None

    def __enter__(self) -> SingleAgentLab:
        p = self.puppet.__enter__()
        try:
            self._announce_neighbours()
            self.agent = start_agents(self.fleet, [self.r])[self.r]

            def ready(ag: DeviceAgent) -> bool:
                # Members change before the store commit and the counter: wait for both seeds' counts.
                return ag.members() == (self.a, self.b) and ag.counters.accepted >= 2

            # amqtt 0.12 can drop a retained delivery when clients come and go at the same moment
            # ("dictionary changed size during iteration"): announce once more, live, if needed.
            if not self.agent.wait_for(ready, 10):
                self._announce_neighbours()
                if not self.agent.wait_for(ready, 20):
                    raise TimeoutError(f"{self.r} did not install its neighbours' seeds: {self.agent.members()}")
            settle(self.agent)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.fleet.stop()
        self.puppet.__exit__()

    def _announce_neighbours(self) -> None:
        p, topics = self.puppet, self.puppet.topics
        for d in (self.a, self.b, self.c):
            p.publish(topics.hello(d), p.hello(d), retain=True)
        for d in (self.a, self.b):
            p.publish(topics.membership(d), p.membership(d, [self.r]), retain=True)
            p.publish(topics.seed(self.r, d), p.seed(d, self.r, 1, self.seeds[d]), retain=True)

    def next_version(self, owner: str) -> int:
        """A seed version of ``owner`` above every one used so far."""
        self.versions[owner] = self.versions.get(owner, 1) + 1
        return self.versions[owner]

    def send_seed(self, owner: str, onnx: bytes, *, timeout: float = 30.0) -> str:
        """``owner``'s next seed version with these ONNX bytes, to ``r``; what ``r`` did with it."""
        assert self.agent is not None, "use the lab as a context manager"
        payload = self.puppet.seed(owner, self.r, self.next_version(owner), onnx)
        return deliver(self.puppet, self.agent, self.puppet.topics.seed(self.r, owner), payload, timeout=timeout)
