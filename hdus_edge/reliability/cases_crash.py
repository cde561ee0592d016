"""The SIGKILL campaign: an agent killed at random moments while it writes seeds and while it
unlearns, hundreds of times, with its invariants checked after every kill and every restart.

Set-up: device ``v`` (the victim) runs as a separate ``hdus-edge agent`` process (forked by the
``AgentZygote``); its real neighbours run in this process and keep publishing new seed versions
("churn"), so ``v`` is almost always installing one; its other neighbours ("ghosts") are played by
the puppet, and every so often the admin orders one forgotten and ``v`` is killed within
milliseconds of the order. Checked:

- after every kill, on disk (read-only): every committed seed file exists and hashes right (no
  half-written seed), no tombstoned seed held, "receipt sent => seed deleted" for every receipt of
  ``v`` seen on the broker, every held seed is one its owner really published;
- after every restart: no ``.tmp-*`` file older than the restart (orphans of an earlier run);
- at the end: every ordered ghost forgotten, and a receipt of ``v`` on the broker for every order.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hdus_edge.protocol import codec
from hdus_edge.protocol.messages import Receipt, sha256_hex
from hdus_edge.reliability.harness import (
    Puppet,
    lab_fleet,
    lab_models,
    start_agents,
    wait_until,
)
from hdus_edge.reliability.invariants import (
    orphan_temp_files,
    read_index,
    store_violations,
)
from hdus_edge.reliability.zygote import AgentZygote
from hdus_edge.topology import Graph
from hdus_edge.transport.mqtt import MqttTransport

logger = logging.getLogger(__name__)


@dataclass
class CrashFigures:
    """What the campaign measured; every count of violations is named as such."""

    kills: int = 0
    kills_before_ready: int = 0
    kills_during_unlearn: int = 0
    unlearn_orders: int = 0
    seed_versions_published: int = 0
    violations: list[str] = field(default_factory=list)
    orphan_temp_files: list[str] = field(default_factory=list)
    restart_to_ready_s: list[float] = field(default_factory=list)
    final_missing_receipts: int = 0
    final_not_forgotten: int = 0
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures."""
        ready = self.restart_to_ready_s
        return {
            "kills": self.kills,
            "kills_before_ready": self.kills_before_ready,
            "kills_during_unlearn": self.kills_during_unlearn,
            "unlearn_orders": self.unlearn_orders,
            "seed_versions_published": self.seed_versions_published,
            "invariant_violations": len(self.violations),
            "orphan_temp_files": len(set(self.orphan_temp_files)),
            "missing_receipts_at_end": self.final_missing_receipts,
            "forgotten_seeds_still_held_at_end": self.final_not_forgotten,
            "restart_to_ready_p50_s": float(np.percentile(ready, 50)) if ready else None,
            "restart_to_ready_p95_s": float(np.percentile(ready, 95)) if ready else None,
            "violation_examples": self.violations[:5],
            "orphan_examples": sorted(set(self.orphan_temp_files))[:5],
            "seconds": self.seconds,
        }


class _ReceiptWatch:
    """Collects the victim's receipts from the broker: request id -> target."""

    def __init__(self, broker_url: str, puppet: Puppet, victim: str) -> None:
        self.victim = victim
        self.got: dict[str, str] = {}
        self._lock = threading.Lock()
        self.transport = MqttTransport(broker_url, f"crash-receipts-{victim}", handler=self._on, clean_session=True)
        self.transport.subscribe([f"{puppet.topics.root}/receipts/+/{victim}"])
        self.transport.connect(timeout=10)

    def _on(self, topic: str, payload: bytes, retained: bool) -> None:
        if not payload:
            return
        try:
            msg = codec.decode(payload).msg
        except Exception:  # noqa: BLE001  # a watcher never stops on a bad message
            return
        if isinstance(msg, Receipt):
            with self._lock:
                self.got[msg.request_id] = msg.target

    def targets(self) -> dict[str, int]:
        """Targets the victim has sent a receipt for (target -> order epoch 0)."""
        with self._lock:
            return {target: 0 for target in self.got.values()}

    def close(self) -> None:
        self.transport.close()


def sigkill_campaign(
    root: Path,
    broker_url: str,
    *,
    kills: int = 200,
    peers: int = 3,
    ghosts: int = 8,
    seed: int = 0,
    kill_window_s: tuple[float, float] = (0.02, 1.0),
    running_window_s: tuple[float, float] = (0.0, 0.5),
    churn_interval_s: tuple[float, float] = (0.1, 0.3),
    progress: Callable[[str], None] | None = None,
) -> CrashFigures:
    """Kill the victim ``kills`` times (see module docstring); ``ghosts`` orders spread over the run.

    Half the kills land during start-up (``kill_window_s`` after the fork, or at ready), half while
    it runs (``running_window_s`` after ready); the kills of an unlearn land within 30 ms of the order.
    """
    rng = random.Random(seed)
    figures = CrashFigures()
    began = time.monotonic()
    n = 1 + peers + ghosts
    models = lab_models(n)
    ids = sorted(models)
    victim, peer_ids, ghost_ids = ids[0], ids[1 : 1 + peers], ids[1 + peers :]
    graph: Graph = {victim: frozenset(peer_ids) | frozenset(ghost_ids)}
    for p in peer_ids:
        graph[p] = frozenset({victim} | (set(peer_ids) - {p}))
    for g in ghost_ids:
        graph[g] = frozenset({victim})
    fleet = lab_fleet(root / "fleet", broker_url, n, name="crash", graph=graph)
    state = fleet.states[victim]
    published: dict[str, set[str]] = {i: {sha256_hex(models[i].seed_onnx)} for i in ids}
    pool = [m.seed_onnx for m in models.values()]
    order_at = set(rng.sample(range(max(1, kills // 10), kills), min(ghosts, max(0, kills - kills // 10))))
    stop = threading.Event()
    lock = threading.Lock()
    zygote = AgentZygote(root / "agents.log")
    with Puppet(broker_url, fleet.admin, fleet.states) as puppet:
        topics = puppet.topics
        for g in ghost_ids:  # the ghosts announce themselves and send the victim their seed
            puppet.publish(topics.hello(g), puppet.hello(g), retain=True)
            puppet.publish(topics.membership(g), puppet.membership(g, [victim]), retain=True)
            puppet.publish(topics.seed(victim, g), puppet.seed(g, victim, 1, models[g].seed_onnx), retain=True)
        agents = start_agents(fleet, peer_ids)
        watch = _ReceiptWatch(broker_url, puppet, victim)
        versions = {p: 1 for p in peer_ids}

        def churn() -> None:
            # New seed versions from the real neighbours, so the victim is nearly always writing one.
            local = random.Random(seed + 1)
            while not stop.wait(local.uniform(*churn_interval_s)):
                p = local.choice(peer_ids)
                with lock:
                    versions[p] += 1
                    data = pool[(versions[p] + ids.index(p)) % len(pool)]
                    published[p].add(sha256_hex(data))
                    figures.seed_versions_published += 1
                try:
                    agents[p].publish_seed(data, versions[p])
                except Exception:  # noqa: BLE001  # churn is best effort; the checks are what matter
                    logger.exception("churn publish failed")

        churner = threading.Thread(target=churn, name="hdus-crash-churn", daemon=True)
        ordered: dict[str, str] = {}  # request id -> ghost
        ready = root / "ready"
        try:
            zygote.start()
            churner.start()
            for k in range(kills):
                ready.unlink(missing_ok=True)
                spawned_at = time.time()
                pid = zygote.spawn(state.root, broker_url, ready)
                if k in order_at and len(ordered) < len(ghost_ids):
                    # Order a ghost forgotten once the victim is up, and kill it within milliseconds.
                    wait_until(ready.exists, 10, 0.002)
                    ghost = ghost_ids[len(ordered)]
                    rid = f"crash{k:05d}" + "0" * 8
                    puppet.publish(topics.unlearn(ghost), puppet.order(ghost, request_id=rid), retain=True)
                    ordered[rid] = ghost
                    figures.unlearn_orders += 1
                    figures.kills_during_unlearn += 1
                    time.sleep(rng.uniform(0.0, 0.03))
                elif rng.random() < 0.5:
                    # During start-up: store recovery, the retained seeds' installs, the hello.
                    deadline = time.monotonic() + rng.uniform(*kill_window_s)
                    while time.monotonic() < deadline and not ready.exists():
                        time.sleep(0.002)
                else:
                    # Running: installing the new versions the neighbours keep publishing.
                    wait_until(ready.exists, 30, 0.002)
                    time.sleep(rng.uniform(*running_window_s))
                if ready.exists():
                    figures.restart_to_ready_s.append(ready.stat().st_mtime - spawned_at)
                    orphans = orphan_temp_files(state.root, older_than=spawned_at - 0.001)
                    figures.orphan_temp_files += [str(p.relative_to(state.root)) for p in orphans]
                else:
                    figures.kills_before_ready += 1
                zygote.kill(pid)
                figures.kills += 1
                with lock:
                    owners = {o: set(s) for o, s in published.items()}
                problems = store_violations(state.store_dir, receipts_sent=watch.targets(), published=owners)
                figures.violations += [f"kill {k}: {p}" for p in problems]
                if progress and k % 20 == 0:
                    progress(f"SIGKILL {k}/{kills}")
            stop.set()
            churner.join(timeout=10)
            # The last restart must finish every interrupted unlearn and send every receipt.
            ready.unlink(missing_ok=True)
            spawned_at = time.time()
            pid = zygote.spawn(state.root, broker_url, ready)
            try:
                if wait_until(ready.exists, 30, 0.005):
                    figures.restart_to_ready_s.append(ready.stat().st_mtime - spawned_at)
                    orphans = orphan_temp_files(state.root, older_than=spawned_at - 0.001)
                    figures.orphan_temp_files += [str(p.relative_to(state.root)) for p in orphans]
                wait_until(lambda: set(ordered) <= set(watch.got), 60, 0.05)
                view = read_index(state.store_dir)
                figures.final_not_forgotten = sum(1 for g in ordered.values() if g in view.seeds)
            finally:
                zygote.kill(pid, sig=15)
            figures.final_missing_receipts = len(set(ordered) - set(watch.got))
            with lock:
                owners = {o: set(s) for o, s in published.items()}
            figures.violations += [f"final: {p}" for p in
                                   store_violations(state.store_dir, receipts_sent=watch.targets(), published=owners)]
        finally:
            stop.set()
            zygote.close()
            watch.close()
            fleet.stop()
    figures.seconds = time.monotonic() - began
    return figures
