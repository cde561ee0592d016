"""Load and soak: figures, not pass/fail times.

- ``propagation_load``: N agents x d neighbours on one Mosquitto, each agent its own OS process
  (``lab.processes``: ``hdus-edge agent``, as on a device; ``processes=False``: all in this process);
  per-pair seed propagation p50/p95/p99 (from the stores' audit logs), memory of the agents and of
  Mosquitto, messages dropped.
- ``simultaneous_unlearns``: k orders at once on a converged fleet while devices keep predicting
  (through each agent's inference API, as an application would): time to all receipts, inference
  errors during the ensemble swaps, inference latency p95. Everything is read from outside the
  agents: committed request ids from each store's ``index.json``, members from ``status.json``,
  receipts on the broker.
- ``soak``: a bounded run with random link cuts, clean broker restarts, unlearns and new seed
  versions; memory growth per hour, file descriptors and threads over time, invariant violations.
  It stays in this process: new seed versions are published through the agents' own
  ``publish_seed`` (no command does that to a running agent), and its memory, descriptor and
  thread figures are those of the process that holds every agent.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from hdus_edge.device.agent import AgentSettings, DeviceAgent
from hdus_edge.lab.agents import AgentFleet
from hdus_edge.lab.api_client import ApiClient
from hdus_edge.lab.outside import TopicClock
from hdus_edge.lab.processes import ProcessFleet
from hdus_edge.lab.proxy import TcpProxy
from hdus_edge.protocol.topics import Topics
from hdus_edge.reliability.brokers import Broker
from hdus_edge.reliability.cases_faults import mark_forgotten, missing_pairs
from hdus_edge.reliability.harness import (
    Puppet,
    fleet_config,
    lab_fleet,
    lab_models,
    probe_batch,
    start_agents,
    wait_until,
)
from hdus_edge.reliability.invariants import (
    MemberSampler,
    ResurrectionWatch,
    read_index,
    store_violations,
)
from hdus_edge.topology import build_graph

logger = logging.getLogger(__name__)

# The agent's own digest period (30 s): the lab's 0.5 s would have N agents each verify 2N digests a second.
LOAD_SETTINGS = AgentSettings(probe_in_subprocess=False, digest_interval_s=30.0)
SOAK_SETTINGS = AgentSettings(probe_in_subprocess=False, digest_interval_s=5.0)


def stop_fleet(fleet: AgentFleet | ProcessFleet, workers: int = 16) -> float:
    """Stop every agent, ``workers`` at a time (one by one, 100 agents take minutes); return seconds."""
    began = time.monotonic()
    if isinstance(fleet, ProcessFleet):
        fleet.stop()  # SIGTERM to all at once, then waits: they stop in parallel
        return time.monotonic() - began
    agents = list(fleet.agents.values())
    fleet.agents.clear()

    def stop(agent: Any) -> None:
        try:
            agent.stop()
        except Exception:  # noqa: BLE001  # best effort, like AgentFleet.stop
            logger.exception("stopping agent %s failed", agent.device_id)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(stop, agents))
    return time.monotonic() - began


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _rss() -> int:
    return int(psutil.Process(os.getpid()).memory_info().rss)


def _dropped_in_log(broker: Broker) -> int:
    # Mosquitto logs one line each time it starts dropping a client's messages (queue full).
    return sum(1 for line in broker.log_text().splitlines() if "dropped" in line.lower())


class _InstallClock:
    """Samples members of every agent; records when each (holder, neighbour) seed first appeared."""

    def __init__(self, fleet: AgentFleet, interval: float = 0.005) -> None:
        self.fleet = fleet
        self.interval = interval
        self.first: dict[tuple[str, str], float] = {}
        self.started: dict[str, float] = {}
        self._agents: dict[str, DeviceAgent] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hdus-rel-clock", daemon=True)

    def watch(self, device_id: str, agent: DeviceAgent) -> None:
        """Sample ``agent`` from now on; its start time is now."""
        self.started[device_id] = time.monotonic()
        self._agents[device_id] = agent

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = time.monotonic()
            for i, agent in list(self._agents.items()):
                for j in agent.members():
                    self.first.setdefault((i, j), now)

    def __enter__(self) -> _InstallClock:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def latencies(self) -> list[float]:
        """Per pair: install time minus the later of the two devices' start (when the exchange could begin)."""
        out = []
        for (i, j), at in self.first.items():
            if i in self.started and j in self.started:
                out.append(max(0.0, at - max(self.started[i], self.started[j])))
        return out


def propagation_load(root: Path, broker: Broker, n: int, degree: int, *, timeout: float = 300.0,
                     seed: int = 0, settings: AgentSettings = LOAD_SETTINGS, processes: bool = True,
                     launcher: tuple[str, ...] | None = None) -> tuple[dict[str, Any], AgentFleet | ProcessFleet]:
    """Start ``n`` agents with ``degree`` neighbours each on ``broker``; return figures and the running fleet.

    ``processes`` (default): each agent its own process, serving its inference API (for
    ``simultaneous_unlearns``); ``launcher`` replaces ``-m hdus_edge`` (a test plants a bug with it).
    """
    if processes:
        return _propagation_load_processes(root, broker, n, degree, timeout=timeout, seed=seed, settings=settings,
                                           launcher=launcher or ("-m", "hdus_edge"))
    rss0 = _rss()
    fleet = lab_fleet(root, broker.url, n, degree=degree, name=f"load{n}x{degree}", seed=seed, settings=settings)
    ids = sorted(fleet.states)
    began = time.monotonic()
    with _InstallClock(fleet) as clock:

        def start_one(device_id: str) -> None:
            agent = DeviceAgent.from_state_dir(fleet.states[device_id], broker_url=fleet.broker_url,
                                               settings=fleet.settings)
            clock.watch(device_id, agent)  # sampled from the start, not once start() returned
            fleet.agents[device_id] = agent.start()

        # Eight at a time: devices of a real fleet boot together (Mosquitto takes concurrent subscribes).
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(start_one, ids))
        converged = wait_until(lambda: not missing_pairs(fleet), timeout, 0.05)
        time.sleep(0.05)
    lat = clock.latencies()
    missing = missing_pairs(fleet)
    figures = {
        "devices": n, "neighbours": degree, "pairs": n * degree,
        "propagation_p50_s": _pct(lat, 50), "propagation_p95_s": _pct(lat, 95), "propagation_p99_s": _pct(lat, 99),
        "time_to_converge_s": time.monotonic() - began if converged else None,
        "messages_dropped": len(missing) + _dropped_in_log(broker), "seeds_missing": len(missing),
        # RSS growth is this fleet's cost only in a fresh process: earlier fleets' freed memory is reused.
        "rss_growth_mb": (_rss() - rss0) / 2**20, "process_rss_mb": _rss() / 2**20,
        "mosquitto_rss_mb": (broker.rss_bytes() or 0) / 2**20, "threads": threading.active_count(),
        "processes": "one",
    }
    return figures, fleet


def _propagation_load_processes(root: Path, broker: Broker, n: int, degree: int, *, timeout: float, seed: int,
                                settings: AgentSettings, launcher: tuple[str, ...]) -> tuple[dict[str, Any], ProcessFleet]:
    models = lab_models(n, seed)
    ids = sorted(models)
    graph = build_graph("random-regular", ids, degree=degree, seed=seed)
    cfg = fleet_config(f"load{n}x{degree}", broker.url)
    fleet = ProcessFleet(root, broker.url, cfg, models, graph,
                         digest_interval_s=settings.digest_interval_s, probe_in_subprocess=settings.probe_in_subprocess,
                         http=True, launcher=launcher)
    # When each seed reached the broker, seen by a subscriber in its own process (the owner's agent
    # publishes it while it starts, before its ready file: that file would time start-up, not the link).
    clock = TopicClock(broker.url, [f"{Topics(cfg.fleet.name).root}/seeds/+/+"])
    try:
        converge_s: float | None = fleet.start(timeout=timeout)
    except TimeoutError:
        # start() stopped the agents; what their stores accepted until then is still on disk.
        logger.warning("load %dx%d: the fleet did not converge in %g s", n, degree, timeout)
        converge_s = None
    finally:
        clock.close()
    lat = fleet.propagation_s(clock.first())
    missing = _missing_pairs_outside(fleet)
    rss = fleet.rss_bytes()
    figures = {
        "devices": n, "neighbours": degree, "pairs": n * degree,
        # Seed on the broker (an outside subscriber's clock) -> holder's store accepted it (its audit log).
        "propagation_p50_s": _pct(lat, 50), "propagation_p95_s": _pct(lat, 95), "propagation_p99_s": _pct(lat, 99),
        "time_to_converge_s": converge_s,
        "messages_dropped": len(missing) + _dropped_in_log(broker), "seeds_missing": len(missing),
        "agents_rss_mb": sum(rss.values()) / 2**20, "rss_per_agent_mb": (sum(rss.values()) / len(rss) / 2**20) if rss else None,
        "process_rss_mb": _rss() / 2**20,
        "mosquitto_rss_mb": (broker.rss_bytes() or 0) / 2**20,
        "threads": sum(_threads(a.proc.pid) for a in fleet.procs.values()),
        "processes": "one per device",
    }
    return figures, fleet


def order_holders(graph: Mapping[str, Iterable[str]], running: Iterable[str], targets: list[str]) -> dict[str, list[str]]:
    """Who must apply and answer each of ``targets``' orders, published together: its running
    neighbours, less the other targets (a device forgotten in the same batch owes nothing, and an
    agent process stops once its own order arrives, as a real device does). Pure."""
    alive = set(running) - set(targets)
    return {t: sorted(set(graph.get(t, ())) & alive) for t in targets}


def _threads(pid: int) -> int:
    try:
        return psutil.Process(pid).num_threads()
    except psutil.Error:
        return 0


def _missing_pairs_outside(fleet: ProcessFleet) -> list[tuple[str, str]]:
    """``missing_pairs`` read from the agents' ``status.json``."""
    expected = fleet.expected_members()
    return [(i, j) for i, want in expected.items() for j in want if j not in (fleet.members(i) or ())]


def _forgotten_outside(fleet: ProcessFleet, holders: list[str], target: str, request_id: str,
                       watch: ResurrectionWatch) -> int:
    """``mark_forgotten`` from outside: the order committed in the holder's ``index.json`` and the
    target gone from the members its ``status.json`` reports (the store commits first)."""
    done = 0
    for h in holders:
        try:
            seen = request_id in read_index(fleet.states[h].store_dir).seen
        except (OSError, ValueError, KeyError, TypeError):  # mid-replace: look again next time
            seen = False
        members = fleet.members(h)
        if seen and members is not None and target not in members:
            watch.forget(h, target)
            done += 1
    return done


def _receipts_seen(clock: TopicClock) -> dict[tuple[str, str], float]:
    """(request id, device) -> first arrival of its receipt, from the clock's topics."""
    out = {}
    for topic, at in clock.first().items():
        _, rid, device = topic.rsplit("/", 2)
        out[(rid, device)] = at
    return out


def simultaneous_unlearns(fleet: AgentFleet | ProcessFleet, count: int = 10, *, predictors: int = 4, seed: int = 0,
                          wait_s: float = 120.0, receipt_wait_s: float = 90.0) -> dict[str, Any]:
    """``count`` admin orders published at once while ``predictors`` holders predict in a loop.

    Holders come from the fleet's graph (each target's neighbours); an order is done when every holder
    committed it and dropped the seed, and its receipts are the holders' receipts seen on the broker.
    A ``ProcessFleet`` (started with ``http=True``) is watched from outside and asked over its API.
    """
    rng = random.Random(seed)
    outside = isinstance(fleet, ProcessFleet)
    ids = sorted(fleet.procs if outside else fleet.agents)
    targets = rng.sample(ids, count)
    holders = order_holders(fleet.graph, ids, targets)
    rids = {t: f"load{k:04d}" + "9" * 20 for k, t in enumerate(targets)}
    predicting = rng.sample([i for i in ids if i not in targets], min(predictors, len(ids) - count))
    x = probe_batch(1)
    stop = threading.Event()
    errors: list[str] = []
    before_ms: list[float] = []
    during_ms: list[float] = []
    phase = {"during": False}

    def predict_loop(device_id: str) -> None:
        client = ApiClient(fleet.procs[device_id].api_port) if outside else None  # type: ignore[union-attr,arg-type]
        predict = client.predict if client is not None else fleet.agents[device_id].predict  # type: ignore[union-attr]
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                y = predict(x)
                if y.shape != (1, 10) or not np.isfinite(y).all():
                    errors.append(f"{device_id}: bad output {y.shape}")
            except Exception as exc:  # noqa: BLE001  # every failure is a figure
                errors.append(f"{device_id}: {type(exc).__name__}: {exc}")
            (during_ms if phase["during"] else before_ms).append(1e3 * (time.perf_counter() - t0))
            time.sleep(0.01)  # 100 predictions a second per device: a busy device, not a busy loop
        if client is not None:
            client.close()

    def forgotten_by(hs: list[str], target: str, rid: str) -> int:
        if outside:
            return _forgotten_outside(fleet, hs, target, rid, watch)  # type: ignore[arg-type]
        return mark_forgotten(fleet, hs, target, rid, watch)  # type: ignore[arg-type]

    threads = [threading.Thread(target=predict_loop, args=(d,), daemon=True) for d in predicting]
    for t in threads:
        t.start()
    time.sleep(1.0)
    watch = ResurrectionWatch()
    # Receipts are timed from another process, as a requester would see them: a clock in this one
    # waits for the GIL behind every agent (see hdus_edge/lab/outside.py).
    clock = TopicClock(fleet.broker_url, [f"hdus/v1/{fleet.fleet.fleet.name}/receipts/+/+"])
    seen: dict[tuple[str, str], float] = {}
    done_at: dict[str, float] = {}
    try:
        # Members from status.json files: sampled every 50 ms, not 5 (each sample reads N files).
        with Puppet(fleet.broker_url, fleet.admin, fleet.states) as puppet, \
                MemberSampler(fleet, watch, interval=0.05 if outside else 0.005):
            orders = {t: puppet.order(t, request_id=rids[t]) for t in targets}
            phase["during"] = True
            began = time.monotonic()
            for t in targets:  # back to back: ten orders in flight at once
                puppet.publish(puppet.topics.unlearn(t), orders[t], retain=True)

            def all_done() -> bool:
                for t in targets:
                    if t not in done_at and forgotten_by(holders[t], t, rids[t]) == len(holders[t]):
                        done_at[t] = time.monotonic()
                return len(done_at) == len(targets)

            wait_until(all_done, wait_s, 0.01)

            def all_receipts() -> bool:
                seen.update(_receipts_seen(clock))
                return all((rids[t], h) in seen for t in targets for h in holders[t])

            wait_until(all_receipts, receipt_wait_s, 0.05)
            time.sleep(0.5)
    finally:
        clock.close()
        seen.update(_receipts_seen(clock))
        stop.set()
        for t in threads:
            t.join(timeout=5)
    expected = [(rids[t], h) for t in targets for h in holders[t]]
    arrived = [seen[k] - began for k in expected if k in seen]
    # Where a missing receipt is: still pending in the holder's store, or in its outbox, or neither.
    missing_where = []
    for rid, h in (k for k in expected if k not in seen):
        if outside:
            status = fleet.status(h) or {}  # type: ignore[union-attr]
            missing_where.append(f"{h}/{rid[:8]}: store pending={rid in status.get('pending_receipts', ())}, "
                                 f"connected={status.get('connected')}")
            continue
        agent = fleet.agents[h]
        pending = [p.request_id for p in agent.store.pending_receipts()]
        missing_where.append(f"{h}/{rid[:8]}: store pending={rid in pending}, outbox={agent.transport.pending}, "
                             f"connected={agent.transport.connected}, connects={agent.transport.connect_count}")
    return {
        "orders": count, "holders": len(expected),
        "not_applied": sum(len(holders[t]) - forgotten_by(holders[t], t, rids[t]) for t in targets),
        "time_to_all_applied_s": max(done_at.values()) - began if len(done_at) == count else None,
        "missing_receipts": len(expected) - len(arrived), "missing_receipt_examples": missing_where[:5],
        "time_to_all_receipts_s": max(arrived) if len(arrived) == len(expected) and arrived else None,
        "receipt_p50_s": _pct(arrived, 50),
        "inference_errors": len(errors), "inference_error_examples": errors[:3],
        "inference_p95_ms_before": _pct(before_ms, 95), "inference_p95_ms_during": _pct(during_ms, 95),
        "inferences_during": len(during_ms), "forgotten_came_back": len(watch.violations),
        # On disk, read-only: no half-written seed, no tombstoned target's seed held, and none held
        # by a holder whose receipt for forgetting it was seen on the broker.
        "store_violations": sum(len(store_violations(
            fleet.states[h].store_dir, receipts_sent={t: 0 for t in targets if (rids[t], h) in seen}))
            for h in ids if h not in targets),
        "processes": "one per device" if outside else "one",
    }


def soak(root: Path, duration_s: float, *, n: int = 12, seed: int = 0,
         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run a fleet for ``duration_s`` with faults every few seconds (see module docstring)."""
    rng = random.Random(seed)
    models = lab_models(n)
    pool = [m.seed_onnx for m in models.values()]
    with Broker("mosquitto-persistent", root / "broker") as broker, TcpProxy("127.0.0.1", broker.port) as proxy:
        fleet = lab_fleet(root / "fleet", proxy.url, n, degree=min(4, n - 1), name="soak", seed=seed,
                          settings=SOAK_SETTINGS)
        ids = sorted(fleet.states)
        watch = ResurrectionWatch()
        samples: list[tuple[float, int, int, int]] = []  # (t, rss, fds, threads)
        events = {"link_cuts": 0, "broker_restarts": 0, "unlearns": 0, "seed_versions": 0}
        forgotten: list[tuple[str, str, list[str]]] = []
        versions = {i: 1 for i in ids}
        me = psutil.Process(os.getpid())
        try:
            start_agents(fleet, ids)
            fleet.wait_converged(120)
            gc.collect()  # a clean baseline: what earlier work left for the collector is not the soak's
            began = time.monotonic()
            next_sample = began
            with MemberSampler(fleet, watch, interval=0.02), Puppet(broker.url, fleet.admin, fleet.states) as puppet:
                while time.monotonic() - began < duration_s:
                    now = time.monotonic()
                    if now >= next_sample:
                        samples.append((now - began, int(me.memory_info().rss), me.num_fds(), threading.active_count()))
                        next_sample = now + 2.0
                    roll = rng.random()
                    alive = sorted(fleet.agents)
                    if roll < 0.45:
                        proxy.cut_one(rng)
                        events["link_cuts"] += 1
                    elif roll < 0.75:
                        device = rng.choice(alive)
                        versions[device] += 1
                        fleet.agents[device].publish_seed(pool[versions[device] % len(pool)], versions[device])
                        events["seed_versions"] += 1
                    elif roll < 0.85 and len(alive) > max(4, n - n // 3):
                        target = rng.choice(alive)
                        holders = [i for i in alive if target in fleet.agents[i].neighbors and i != target]
                        rid = f"soak{events['unlearns']:04d}" + "a" * 16
                        puppet.publish(puppet.topics.unlearn(target), puppet.order(target, request_id=rid), retain=True)
                        forgotten.append((target, rid, holders))
                        events["unlearns"] += 1
                        fleet.agents.pop(target).stop()
                        fleet.graph = {i: frozenset(nb - {target}) for i, nb in fleet.graph.items() if i != target}
                    elif roll < 0.90:
                        broker.stop()  # a clean restart (maintenance); crashes are their own case
                        time.sleep(0.2)
                        broker.start()
                        events["broker_restarts"] += 1
                    for target, rid, holders in forgotten:
                        mark_forgotten(fleet, [h for h in holders if h in fleet.agents], target, rid, watch)
                    if progress and rng.random() < 0.05:
                        progress(f"soak {time.monotonic() - began:.0f}/{duration_s:.0f} s")
                    time.sleep(rng.uniform(0.5, 1.5))
                settled = wait_until(lambda: not missing_pairs(fleet), 60, 0.1)
                missing_at_end = len(missing_pairs(fleet))
                not_forgotten = 0
                for target, rid, holders in forgotten:
                    live = [h for h in holders if h in fleet.agents]
                    wait_until(lambda: mark_forgotten(fleet, live, target, rid, watch) == len(live), 30, 0.05)
                    not_forgotten += len(live) - mark_forgotten(fleet, live, target, rid, watch)
            violations = sum(len(store_violations(fleet.states[i].store_dir)) for i in fleet.agents)
        finally:
            stop_fleet(fleet)
    t = np.array([s[0] for s in samples], float)
    rss = np.array([s[1] for s in samples], float)
    tail = t >= t.max() / 3 if len(t) else t  # skip warm-up
    growth = float(np.polyfit(t[tail], rss[tail], 1)[0] * 3600 / 2**20) if tail.sum() >= 3 else None
    fds = [s[2] for s in samples]
    threads = [s[3] for s in samples]
    return {
        "duration_s": duration_s, "devices": n, **events,
        "memory_growth_mb_per_hour": growth, "rss_mb_start": rss[0] / 2**20 if len(rss) else None,
        "rss_mb_end": rss[-1] / 2**20 if len(rss) else None,
        "open_fds_min": min(fds) if fds else None, "open_fds_max": max(fds) if fds else None,
        "open_fds_end_minus_start": fds[-1] - fds[0] if fds else None,
        "threads_min": min(threads) if threads else None, "threads_max": max(threads) if threads else None,
        "threads_end_minus_start": threads[-1] - threads[0] if threads else None,
        "converged_at_end": settled, "seeds_missing_at_end": missing_at_end,
        "forgotten_came_back": len(watch.violations), "not_forgotten_at_end": not_forgotten,
        "store_violations": violations,
        "invariant_violations": len(watch.violations) + not_forgotten + violations + missing_at_end,
    }
