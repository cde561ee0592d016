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
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from hdus_edge.config import DataSection, EnsembleSection, FleetConfig, FleetSection
from hdus_edge.lab.netns import NetworkLab
from hdus_edge.lab.outside import OutsideRequester, TopicClock
from hdus_edge.lab.processes import ProcessFleet
from hdus_edge.lab.proxy import LinkShape, TcpProxy
from hdus_edge.lab.synthetic import REFERENCE_SHA, synthetic_models
from hdus_edge.protocol.topics import Topics
from hdus_edge.topology import build_graph
from hdus_edge.transport.mosquitto import MosquittoConfig, MosquittoProcess
from hdus_edge.transport.ports import free_port

logger = logging.getLogger(__name__)

NETS = {
    "lan": None,
    "wan": LinkShape(delay_s=0.040, jitter_s=0.010, loss=0.01, seed=0),
    "flap": LinkShape(flap_every_s=8.0, flap_down_s=3.0, seed=0),
}
DEVICES_PER_SITE = 10  # a site (namespace) per ten devices: a building's subnet, not one host each


@dataclass(frozen=True)
class ScaleCase:
    """One row of the grid."""

    devices: int
    degree: int
    net: str = "lan"
    brokers: str = "one"
    forgets: int = 3
    together: int = 10


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


def run_case(case: ScaleCase, root: Path, progress: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run one case end to end; every process, namespace and proxy is gone when it returns."""
    ids = [f"dev-{k:03d}" for k in range(case.devices)]
    models = synthetic_models(case.devices)
    graph = build_graph("random-regular", ids, degree=case.degree, seed=0)
    sites = max(1, math.ceil(case.devices / DEVICES_PER_SITE))
    port = free_port()
    with NetworkLab(sites) as lab:
        site_of = {d: lab.sites[k // DEVICES_PER_SITE] for k, d in enumerate(ids)}
        shape = NETS[case.net]
        # LAN: the broker listens on every site's link. WAN: a shaping proxy does, in front of it.
        extra = () if shape else tuple(f"listener {port} {s.host_address}" for s in lab.sites)
        broker = MosquittoProcess(root / "broker", MosquittoConfig(port=port, extra_lines=extra)).start()
        # Each site's link its own seed: sites flap (and lose segments) independently.
        proxies = [TcpProxy("127.0.0.1", port, host=s.host_address, port=port, shape=replace(shape, seed=shape.seed + k)).start()
                   for k, s in enumerate(lab.sites)] if shape else []
        cfg = FleetConfig(FleetSection(f"scale{case.devices}", broker.url),
                          DataSection((1, 8, 8), 10, "public", REFERENCE_SHA), EnsembleSection(0.5, "probs"))
        fleet = ProcessFleet(root / "fleet", broker.url, cfg, models, graph, digest_interval_s=30.0,
                             placement=lambda d: (lab.exec_prefix(site_of[d]), f"mqtt://{site_of[d].host_address}:{port}"))
        try:
            with OutsideRequester(fleet.admin.root, workers=case.together) as requester:
                progress(f"{case.devices} x {case.degree}, {case.net}: starting agents")
                # Each seed's arrival on the broker, seen from a child process: where propagation starts.
                with TopicClock(broker.url, [f"{Topics(cfg.fleet.name).root}/seeds/+/+"]) as clock:
                    converge_s = fleet.start(timeout=1800)
                propagation = fleet.propagation_s(clock.first())
                rss = list(fleet.rss_bytes().values())
                forgotten: list[str] = []
                latencies: list[float] = []
                missing = 0
                no_holders = 0  # orders whose requester found no holder to wait for
                cpu_before, wall_before = fleet.cpu_seconds(), time.monotonic()
                progress(f"{case.devices} x {case.degree}, {case.net}: {case.forgets} unlearns")
                for target in ids[:case.forgets]:
                    out = requester.unlearn(broker.url, cfg.fleet.name, target, wait_s=60)
                    missing += len(out["missing"])
                    no_holders += not out["holders"]
                    if out["latency_s"] is not None:
                        latencies.append(out["latency_s"])
                    forgotten.append(target)
                    fleet.retire([target])
                cpu_after = fleet.cpu_seconds()  # the agents still running: holders and bystanders
                cpu_share = sum(cpu_after[d] - cpu_before[d] for d in cpu_after if d in cpu_before) / max(
                    1e-9, time.monotonic() - wall_before)
                batch = ids[case.forgets:case.forgets + case.together]
                progress(f"{case.devices} x {case.degree}, {case.net}: {len(batch)} unlearns at once")
                outs = requester.unlearn_many(broker.url, cfg.fleet.name, batch, wait_s=120)
                missing += sum(len(o["missing"]) for o in outs)
                no_holders += sum(1 for o in outs if not o["holders"])
                waited = [o["latency_s"] for o in outs if o["holders"]]
                together_s = None if not waited or None in waited else max(waited)
                forgotten += batch
                fleet.retire(batch)
                fleet.wait_converged(120)
                resurrections = sum(1 for d in fleet.procs for m in (fleet.members(d) or ()) if m in forgotten)
                applies = apply_figures([fleet.status(d) for d in ids])
                broker_proc = psutil.Process(broker.pid) if broker.pid else None
                broker_cpu = sum(broker_proc.cpu_times()[:2]) if broker_proc else None
                broker_rss = broker_proc.memory_info().rss if broker_proc else None
        finally:
            fleet.stop()
            for p in proxies:
                p.stop()
            broker.stop()
    return {
        **asdict(case), "processes": "one per device", "sites": sites,
        "converge_s": converge_s,
        "propagation_p50_s": _pct(propagation, 50), "propagation_p95_s": _pct(propagation, 95),
        "propagation_pairs": len(propagation),
        "unlearn_p50_s": _pct(latencies, 50), "unlearn_p95_s": _pct(latencies, 95),
        "together_all_receipts_s": together_s,
        "missing_receipts": missing, "orders_without_holders": no_holders, "resurrections": resurrections,
        "rss_per_agent_mib": (sum(rss) / len(rss) / 2**20) if rss else None,
        "broker_cpu_s": broker_cpu, "broker_rss_mib": broker_rss / 2**20 if broker_rss else None,
        "agents_cpu_share_while_forgetting": cpu_share, "cores": os.cpu_count(),
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
