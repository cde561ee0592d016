"""``hdus-edge bench scale``: fleets of one process per device, on a LAN or a WAN, measured side by side.

Each case provisions N devices with synthetic models on a random ``degree``-regular graph, runs every
agent as its own process (``lab.processes``) inside its own network namespace (``lab.netns``), and
measures from outside, with the admin's requester and clocks in their own processes:

- seed propagation: from a seed reaching the broker (seen by a subscriber in a child process) to
  the running neighbour's store accepting it (p50/p95), and launch -> converged;
- unlearn: order -> last receipt for ``forgets`` orders one after another (p50/p95), then
  ``together`` orders published at once (-> all receipts), missing receipts, and forgotten seeds
  back anywhere afterwards (resurrections: a forgotten device in any running ensemble);
- per-order work on the devices, read from each agent's status.json: a holder's apply time (store step,
  ensemble rebuild, receipt handed over; p50/p95) and the fsyncs a holder's and a non-holder's apply cost;
- cost: RSS per agent, the broker's CPU seconds and RSS, and the agents' CPU share of the wall time
  while they forget, which says how much of a figure is this machine's two cores, not the protocol.

``--net lan``: each namespace dials the broker directly over its link. ``--net wan``: through a
shaping proxy on its link (40 ms +- 10 ms one way, 1% loss as TCP shows it: see ``lab.proxy``),
because this kernel has no netem. ``--net flap``: through a proxy that cuts each site's link for
1.5-4.5 s every 4-12 s (``LinkShape.flap_*``; a seeded schedule per site), while the fleet starts and forgets.

``brokers="bridged"``: a core Mosquitto and two site Mosquittos bridged to it (``lab.bridges``: the
configs and dynamic-security logins ``broker-config --bridge`` writes, plain text), devices spread
across the sites, the admin's requester at the core, and each order followed by ``revoke`` at every
broker as ``hdus-edge unlearn`` does (the batch's after the whole batch). With ``bridge_cuts`` a
site's bridge (alternating) is cut as each sequential order and the batch go out and restored a
second later, then cut and restored until there were ``bridge_cuts`` cuts; afterwards, once the
bridges carry again and the admin ran ``revoke --all``, resurrections also count the forgotten
seeds still retained on any broker (``forgotten_seeds_retained_before_sweep``: before ``--all``).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from hdus_edge.config import DataSection, EnsembleSection, FleetConfig, FleetSection
from hdus_edge.lab.bridges import BridgedBrokers, retained_topics
from hdus_edge.lab.netns import NetworkLab
from hdus_edge.lab.outside import OutsideRequester, TopicClock
from hdus_edge.lab.processes import ProcessFleet
from hdus_edge.lab.proxy import LinkShape, TcpProxy
from hdus_edge.lab.synthetic import REFERENCE_SHA, synthetic_models
from hdus_edge.protocol.topics import Topics
from hdus_edge.topology import build_graph
from hdus_edge.transport.mosquitto import MosquittoConfig, MosquittoProcess
from hdus_edge.transport.ports import free_port
from hdus_edge.unlearn.revocation import reapply_all, revoke

logger = logging.getLogger(__name__)

NETS = {
    "lan": None,
    "wan": LinkShape(delay_s=0.040, jitter_s=0.010, loss=0.01, seed=0),
    "flap": LinkShape(flap_every_s=8.0, flap_down_s=3.0, seed=0),
}
IDLE_WINDOW_S = 5.0
DEVICES_PER_SITE = 10  # a site (namespace) per ten devices: a building's subnet, not one host each
BROKERS = ("one", "bridged")
BRIDGE_CUT_S = 1.0  # how long a cut bridge stays down (its reconnect backoff adds to it)
BRIDGE_GAP_S = 0.5  # between a restore and the next cut (after the orders)
BRIDGE_SETTLE_S = 30.0  # the most a restored bridge is given to carry again before the next cut


@dataclass(frozen=True)
class ScaleCase:
    """One row of the grid."""

    devices: int
    degree: int
    net: str = "lan"
    brokers: str = "one"  # or "bridged": a core and two site brokers
    forgets: int = 3
    together: int = 10
    bridge_cuts: int = 0  # bridged: cuts of a site's bridge while the orders go out


QUICK = (ScaleCase(50, 8, "lan"),)
FULL = tuple(ScaleCase(n, d, net) for net in ("lan", "wan") for d in (4, 8) for n in (20, 50, 100))


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def apply_figures(statuses: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Holder apply p50/p95 (ms) and fsyncs per order by role, from the agents' status.json
    (``unlearn_applies``; each keeps its recent applies). Agents without a status count for nothing."""
    ms: dict[str, list[float]] = {"holder": [], "non_holder": []}
    syncs: dict[str, list[int]] = {"holder": [], "non_holder": []}
    for status in statuses:
        applies = (status or {}).get("unlearn_applies") or {}
        for role in ms:
            ms[role] += applies.get(role, {}).get("recent_total_ms", [])
            syncs[role] += applies.get(role, {}).get("recent_fsyncs", [])
    return {
        "holder_apply_p50_ms": _pct(ms["holder"], 50), "holder_apply_p95_ms": _pct(ms["holder"], 95),
        "holder_applies": len(ms["holder"]), "non_holder_applies": len(ms["non_holder"]),
        "holder_fsyncs_p50": _pct(syncs["holder"], 50), "holder_fsyncs_max": max(syncs["holder"], default=None),
        "non_holder_fsyncs_p50": _pct(syncs["non_holder"], 50),
        "non_holder_fsyncs_max": max(syncs["non_holder"], default=None),
    }


def growth_exponent(ns: list[int], values: list[float]) -> float | None:
    """Slope of log(value) on log(N): 1.0 is linear growth (None with fewer than two usable points)."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(ns, values) if v and v > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


class _BridgeCutter:
    """Cut and restore the sites' bridges, alternating, up to ``count`` times.

    ``around(fn)``: cut the next site's bridge, run ``fn`` (the orders) meanwhile, restore after
    ``BRIDGE_CUT_S``, wait for ``fn``: so every order goes out while a bridge is down. ``finish()``:
    the cuts left, one after another. After each restore it waits (up to ``BRIDGE_SETTLE_S``) until
    the bridges carry again: every reconnect of a Mosquitto bridge replays the whole retained tree
    both ways and the far side forwards it to every subscriber, so back-to-back cuts (one every
    1.5 s) piled up a backlog that kept the bridges from carrying a fresh message for minutes here."""

    def __init__(self, brokers: BridgedBrokers, count: int) -> None:
        self.brokers = brokers
        self.count = count
        self.done = 0
        self.during_orders = 0
        self.unsettled = 0  # restores after which the bridges did not carry again within BRIDGE_SETTLE_S
        self._sites = sorted(brokers.proxies)

    def _cut(self) -> str:
        site = self._sites[self.done % len(self._sites)]
        self.brokers.cut(site)
        self.done += 1
        return site

    def _restore(self, site: str) -> None:
        self.brokers.restore(site)
        self.unsettled += not self.brokers.wait_bridges_up(BRIDGE_SETTLE_S)

    def around(self, fn: Callable[[], Any]) -> Any:
        if self.done >= self.count:
            return fn()
        site = self._cut()
        self.during_orders += 1
        result: list[Any] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                result.append(fn())
            except BaseException as exc:  # re-raised below, in the caller's thread
                errors.append(exc)

        worker = threading.Thread(target=run, name="hdus-orders-during-a-cut")
        worker.start()
        time.sleep(BRIDGE_CUT_S)
        self._restore(site)
        worker.join()
        if errors:
            raise errors[0]
        return result[0]

    def finish(self) -> None:
        while self.done < self.count:
            site = self._cut()
            time.sleep(BRIDGE_CUT_S)
            self._restore(site)
            time.sleep(BRIDGE_GAP_S)


def run_case(case: ScaleCase, root: Path, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run one case end to end; every process, namespace and proxy is gone when it returns."""
    if case.brokers not in BROKERS:
        raise ValueError(f"brokers must be one of {BROKERS}, got {case.brokers!r}")
    ids = [f"dev-{k:03d}" for k in range(case.devices)]
    models = synthetic_models(case.devices)
    graph = build_graph("random-regular", ids, degree=case.degree, seed=0)
    sites = max(1, math.ceil(case.devices / DEVICES_PER_SITE))
    port = free_port()
    bridged = case.brokers == "bridged"
    label = f"{case.devices} x {case.degree}, {case.net}, {case.brokers}"
    with NetworkLab(sites) as lab, ExitStack() as stack:
        site_of = {d: lab.sites[k // DEVICES_PER_SITE] for k, d in enumerate(ids)}
        shape = NETS[case.net]
        cfg = FleetConfig(FleetSection(f"scale{case.devices}", f"mqtt://127.0.0.1:{port}"),
                          DataSection((1, 8, 8), 10, "public", REFERENCE_SHA), EnsembleSection(0.5, "probs"))
        lab_brokers: BridgedBrokers | None = None
        proxies: list[TcpProxy] = []
        if not bridged:
            # LAN: the broker listens on every site's link. WAN: a shaping proxy does, in front of it.
            extra = () if shape else tuple(f"listener {port} {s.host_address}" for s in lab.sites)
            broker = MosquittoProcess(root / "broker", MosquittoConfig(port=port, extra_lines=extra)).start()
            stack.callback(broker.stop)
            processes = [broker]
            requester_url = broker.url
            fleet = ProcessFleet(root / "fleet", broker.url, cfg, models, graph, digest_interval_s=30.0,
                                 placement=lambda d: (lab.exec_prefix(site_of[d]), f"mqtt://{site_of[d].host_address}:{port}"))
            ports = [port]
        else:
            fleet = ProcessFleet(root / "fleet", cfg.fleet.broker, cfg, models, graph, digest_interval_s=30.0,
                                 placement=lambda d: (lab.exec_prefix(site_of[d]),
                                                      lab_brokers.device_url(d, site_of[d].host_address)))
            lab_brokers = BridgedBrokers(fleet.admin, root / "brokers", core_port=port,
                                         listen_on=() if shape else [s.host_address for s in lab.sites]).start()
            stack.callback(lab_brokers.stop)
            processes = list(lab_brokers.brokers.values())
            requester_url = lab_brokers.core_url
            ports = [b.port for b in processes]
        stack.callback(lambda: [p.stop() for p in proxies])
        if shape:
            # Each site's link its own seed: sites flap (and lose segments) independently.
            proxies += [TcpProxy("127.0.0.1", pt, host=s.host_address, port=pt, shape=replace(shape, seed=shape.seed + k)).start()
                        for k, s in enumerate(lab.sites) for pt in ports]
        stack.callback(fleet.stop)
        with OutsideRequester(fleet.admin.root, workers=case.together) as requester:
            progress(f"{label}: starting agents")
            # Each seed's first arrival on any broker (its owner's), seen from child processes:
            # where propagation starts.
            seeds = [f"{Topics(cfg.fleet.name).root}/seeds/+/+"]
            with ExitStack() as clocks:
                urls = list(lab_brokers.admin_urls().values()) if lab_brokers else [requester_url]
                watching = [clocks.enter_context(TopicClock(url, seeds)) for url in urls]
                converge_s = fleet.start(timeout=1800)
            on_broker: dict[str, float] = {}
            for clock in watching:
                for topic, at in clock.first().items():
                    on_broker[topic] = min(at, on_broker.get(topic, at))
            propagation = fleet.propagation_s(on_broker)
            rss = list(fleet.rss_bytes().values())
            forgotten: list[str] = []
            latencies: list[float] = []
            missing = 0
            missing_of: list[str] = []  # "target: holder" for each receipt that never came
            no_holders = 0  # orders whose requester found no holder to wait for
            revocation_errors: list[str] = []
            cutter = _BridgeCutter(lab_brokers, case.bridge_cuts) if lab_brokers and case.bridge_cuts else None

            def orders(fn: Callable[[], Any]) -> Any:
                return cutter.around(fn) if cutter else fn()
            # The agents' own background (heartbeats, housekeeping ticks, digests) while nothing happens:
            # what the figures below carry of this machine's two cores regardless of any order.
            idle_before, idle_t0 = fleet.cpu_seconds(), time.monotonic()
            time.sleep(IDLE_WINDOW_S)
            idle_after = fleet.cpu_seconds()
            idle_share = sum(idle_after[d] - idle_before[d] for d in idle_after if d in idle_before) / max(
                1e-9, time.monotonic() - idle_t0)
            cpu_before, wall_before = fleet.cpu_seconds(), time.monotonic()
            progress(f"{label}: {case.forgets} unlearns")
            for target in ids[:case.forgets]:
                out = orders(lambda target=target: requester.unlearn(requester_url, cfg.fleet.name, target, wait_s=60,
                                                                    revoke=bridged))
                missing += len(out["missing"])
                missing_of += [f"{target}: {d}" for d in out["missing"]]
                no_holders += not out["holders"]
                revocation_errors += out.get("revocation", {}).get("broker_errors", [])
                if out["latency_s"] is not None:
                    latencies.append(out["latency_s"])
                forgotten.append(target)
                fleet.retire([target])
            cpu_after = fleet.cpu_seconds()  # the agents still running: holders and bystanders
            cpu_share = sum(cpu_after[d] - cpu_before[d] for d in cpu_after if d in cpu_before) / max(
                1e-9, time.monotonic() - wall_before)
            batch = ids[case.forgets:case.forgets + case.together]
            progress(f"{label}: {len(batch)} unlearns at once")
            outs = orders(lambda: requester.unlearn_many(requester_url, cfg.fleet.name, batch, wait_s=120))
            missing += sum(len(o["missing"]) for o in outs)
            missing_of += [f"{t}: {d}" for t, o in zip(batch, outs) for d in o["missing"]]
            no_holders += sum(1 for o in outs if not o["holders"])
            if bridged:
                # After the whole batch: a target revoked at once loses its login before it answers
                # the other orders it holds seeds for (it is a holder of the batch's other targets).
                revocation_errors += [e for o in outs for e in revoke(fleet.admin, bytes.fromhex(o["order"]),
                                                                     broker_url=requester_url).broker_errors]
            waited = [o["latency_s"] for o in outs if o["holders"]]
            together_s = None if not waited or None in waited else max(waited)
            forgotten += batch
            fleet.retire(batch)
            if cutter:
                progress(f"{label}: the rest of {case.bridge_cuts} bridge cuts")
                cutter.finish()
            fleet.wait_converged(120)
            in_ensembles = sum(1 for d in fleet.procs for m in (fleet.members(d) or ()) if m in forgotten)
            applies = apply_figures([fleet.status(d) for d in ids])
            held_before_sweep = None
            if lab_brokers:
                bridges_back = lab_brokers.wait_bridges_up(120)
                held_before_sweep = sum(len(v) for v in lab_brokers.forgotten_seeds_retained(forgotten).values())
                # What the admin does once its bridges are back ('hdus-edge revoke --all'): a reconnecting
                # bridge replays retained copies it had queued before a clear (see unlearn.revocation).
                revocation_errors += [e for r in reapply_all(fleet.admin, broker_url=requester_url)
                                      for e in r.broker_errors]
                time.sleep(1.0)
                held = lab_brokers.forgotten_seeds_retained(forgotten)
            else:
                bridges_back = None
                root_topic = Topics(cfg.fleet.name).root
                held = {"one": retained_topics(requester_url, [f"{root_topic}/seeds/+/{d}" for d in forgotten])}
            retained_forgotten = sum(len(v) for v in held.values())
            broker_procs = [psutil.Process(b.pid) for b in processes if b.pid]
            broker_cpu = sum(sum(p.cpu_times()[:2]) for p in broker_procs) if broker_procs else None
            broker_rss = sum(p.memory_info().rss for p in broker_procs) if broker_procs else None
    return {
        **asdict(case), "processes": "one per device", "sites": sites,
        "broker_processes": len(processes),
        "converge_s": converge_s,
        "propagation_p50_s": _pct(propagation, 50), "propagation_p95_s": _pct(propagation, 95),
        "propagation_pairs": len(propagation),
        "unlearn_p50_s": _pct(latencies, 50), "unlearn_p95_s": _pct(latencies, 95),
        "together_all_receipts_s": together_s,
        "missing_receipts": missing, "missing_receipts_of": missing_of, "orders_without_holders": no_holders,
        "resurrections": in_ensembles + retained_forgotten,
        "resurrections_in_ensembles": in_ensembles, "forgotten_seeds_retained": retained_forgotten,
        "forgotten_seeds_retained_before_sweep": held_before_sweep, "bridges_back": bridges_back,
        "bridge_cuts_done": lab_brokers.cuts if lab_brokers else 0,
        "bridge_cuts_during_orders": cutter.during_orders if cutter else 0,
        "bridge_restores_unsettled": cutter.unsettled if cutter else 0,
        "revocation_errors": revocation_errors,
        "rss_per_agent_mib": (sum(rss) / len(rss) / 2**20) if rss else None,
        "broker_cpu_s": broker_cpu, "broker_rss_mib": broker_rss / 2**20 if broker_rss else None,
        "agents_cpu_share_idle": idle_share, "agents_cpu_share_while_forgetting": cpu_share, "cores": os.cpu_count(),
        "proxy_losses": sum(p.stats.lost for p in proxies), "proxy_flaps": sum(p.stats.flaps for p in proxies),
        **applies,
    }


def run_scale_bench(cases: tuple[ScaleCase, ...] = FULL, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Every case side by side, and the growth exponent in N of each (degree, net, brokers) series."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="hdus-bench-scale-") as tmp:
        for k, case in enumerate(cases):
            rows.append(run_case(case, Path(tmp) / f"case{k}", progress))
    growth = []
    for key in sorted({(r["degree"], r["net"], r["brokers"]) for r in rows}):
        series = sorted((r for r in rows if (r["degree"], r["net"], r["brokers"]) == key), key=lambda r: r["devices"])
        growth.append({"degree": key[0], "net": key[1], "brokers": key[2],
                       "unlearn_p50_exponent": growth_exponent([r["devices"] for r in series],
                                                               [r["unlearn_p50_s"] for r in series]),
                       "propagation_p95_exponent": growth_exponent([r["devices"] for r in series],
                                                                   [r["propagation_p95_s"] for r in series])})
    return {"rows": rows, "growth": growth, "load_average": os.getloadavg()}
