"""Fleets as they really run: one OS process per device, devices on their own (namespaced) hosts.

Real Mosquitto, real ``hdus-edge agent`` processes, real network namespaces (the suite runs as root).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from hdus_edge.bench.scale import ScaleCase, apply_figures, growth_exponent, run_case
from hdus_edge.config import DataSection, EnsembleSection, FleetConfig, FleetSection
from hdus_edge.lab.netns import NetworkLab, remove_stale_namespaces
from hdus_edge.lab.outside import OutsideRequester, TopicClock
from hdus_edge.lab.processes import ProcessFleet
from hdus_edge.lab.synthetic import REFERENCE_SHA, synthetic_models
from hdus_edge.topology import build_graph

pytestmark = pytest.mark.integration


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_each_device_is_its_own_process_and_forgetting_reaches_every_holder(mosquitto_broker, tmp_path):
    # Prepare: five devices, each neighbour of two others, each agent its own OS process.
    models = synthetic_models(5)
    ids = sorted(models)
    graph = build_graph("ring", ids, degree=2, seed=0)
    cfg = FleetConfig(FleetSection("procs", mosquitto_broker.url), DataSection((1, 8, 8), 10, "public", REFERENCE_SHA),
                      EnsembleSection(0.5, "probs"))
    with ProcessFleet(tmp_path, mosquitto_broker.url, cfg, models, graph, digest_interval_s=5.0) as fleet, \
            OutsideRequester(fleet.admin.root) as requester:
        # Execute
        with TopicClock(mosquitto_broker.url, ["hdus/v1/procs/seeds/+/+"]) as clock:
            fleet.start(timeout=180, wave=1)  # one at a time: each later seed meets running holders
        pids = {agent.proc.pid for agent in fleet.procs.values()}
        propagation = fleet.propagation_s(clock.first())
        target = ids[0]
        holders = {d for d in ids if target in graph[d]}
        out = requester.unlearn(mosquitto_broker.url, "procs", target, wait_s=60)
        fleet.retire([target])
        fleet.wait_converged(60)
        # Assert: five processes besides this one; every holder answered; nobody holds the target.
        assert len(pids) == 5 and all(p != __import__("os").getpid() for p in pids)
        assert out["missing"] == [] and set(out["holders"]) == holders and out["latency_s"] is not None
        assert all(target not in (fleet.members(d) or ()) for d in fleet.procs)
        assert propagation and all(p >= 0 for p in propagation)
        assert all(rss > 0 for rss in fleet.rss_bytes().values())
        # Each agent says in its status what the order cost it: holders 2 fsyncs, the others only
        # the tombstone commit (issue 17, part 4).
        applies = {d: fleet.status(d)["unlearn_applies"] for d in ids if d != target}
        assert {d for d, a in applies.items() if a["holder"]["count"]} == holders
        assert all(a["non_holder"]["count"] == 1 for d, a in applies.items() if d not in holders)
        assert all(f <= 2 for a in applies.values() for role in ("holder", "non_holder") for f in a[role]["recent_fsyncs"])
    assert fleet.procs == {}  # stopped on exit


def test_a_flapping_link_during_unlearns_loses_no_receipt_and_resurrects_nothing(mosquitto_broker, tmp_path):
    from hdus_edge.lab.proxy import LinkShape, TcpProxy
    from hdus_edge.reliability.invariants import store_violations

    # Prepare: five agent processes, each behind its own link that goes down for 0.5-1.5 s every
    # 1-3 s (seeded per device); the requester dials the broker directly, as the admin's site would.
    models = synthetic_models(5)
    ids = sorted(models)
    graph = build_graph("complete", ids)
    cfg = FleetConfig(FleetSection("flap", mosquitto_broker.url), DataSection((1, 8, 8), 10, "public", REFERENCE_SHA),
                      EnsembleSection(0.5, "probs"))
    url = mosquitto_broker.url.removeprefix("mqtt://")
    host, port = url.rsplit(":", 1)
    links = {d: TcpProxy(host, int(port), shape=LinkShape(flap_every_s=2.0, flap_down_s=1.0, seed=k)).start()
             for k, d in enumerate(ids)}
    try:
        with ProcessFleet(tmp_path, mosquitto_broker.url, cfg, models, graph, digest_interval_s=2.0,
                          placement=lambda d: ([], links[d].url)) as fleet, \
                OutsideRequester(fleet.admin.root) as requester:
            fleet.start(timeout=240, wave=5)
            # Execute: two devices forgotten one after another while the links keep flapping.
            outcomes = {}
            for target in ids[:2]:
                outcomes[target] = requester.unlearn(mosquitto_broker.url, "flap", target, wait_s=120)
                fleet.retire([target])
            # Let every link go down and come back at least twice more: reconnects re-deliver the
            # broker's retained messages, and a forgotten seed must not come back with them.
            flaps_then = {d: links[d].stats.flaps for d in fleet.procs}
            deadline = time.monotonic() + 60
            while any(links[d].stats.flaps < flaps_then[d] + 2 for d in fleet.procs) and time.monotonic() < deadline:
                time.sleep(0.2)
            fleet.wait_converged(120)
            # Assert: every holder's receipt arrived; nobody holds a forgotten seed, in memory or on disk.
            for target, out in outcomes.items():
                assert out["missing"] == [] and out["latency_s"] is not None, (target, out)
                assert len(out["holders"]) == 4 - list(outcomes).index(target)
            assert all(links[d].stats.flaps >= flaps_then[d] + 2 for d in fleet.procs)
            assert all(not set(ids[:2]) & set(fleet.members(d) or ()) for d in fleet.procs)
            sent = {t: 0 for t in ids[:2]}
            assert [v for d in fleet.procs for v in store_violations(fleet.states[d].store_dir, receipts_sent=sent)] == []
            assert sum(link.stats.cuts for link in links.values()) > 0
    finally:
        for link in links.values():
            link.stop()


def test_a_namespaced_device_reaches_only_its_link(tmp_path):
    before = _namespaces()
    with NetworkLab(2) as lab:
        site = lab.sites[0]
        assert {s.namespace for s in lab.sites} <= _namespaces()
        code = ("import socket, sys\n"
                "s = socket.socket(); s.settimeout(3)\n"
                f"sys.exit(s.connect_ex(('{site.host_address}', 9)))\n")
        # Something answers at the link's far end (a refusal, not a timeout or 'unreachable').
        refused = subprocess.run([*lab.exec_prefix(site), sys.executable, "-c", code], timeout=30)
        assert refused.returncode == 111  # ECONNREFUSED: the address is there, the port closed
        other = lab.sites[1]
        code_other = code.replace(site.host_address, other.address)
        unreachable = subprocess.run([*lab.exec_prefix(site), sys.executable, "-c", code_other], timeout=30)
        assert unreachable.returncode != 0 and unreachable.returncode != 111  # no route between sites
    assert _namespaces() == before  # torn down


def test_namespaces_of_a_killed_run_are_removed_by_the_next(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    name = f"hdus-{dead.pid}-0"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in remove_stale_namespaces()
        assert name not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_the_scale_bench_runs_a_wan_case_end_to_end(tmp_path):
    row = run_case(ScaleCase(8, 2, "wan", forgets=1, together=2), tmp_path)
    assert row["missing_receipts"] == 0 and row["resurrections"] == 0
    assert row["unlearn_p50_s"] is not None and row["together_all_receipts_s"] is not None
    assert row["processes"] == "one per device" and row["propagation_pairs"] > 0
    # Across the shaped link a round trip takes at least 2 x (40 - 10) ms: the order and a receipt.
    assert row["unlearn_p50_s"] >= 0.06
    assert row["holder_applies"] >= 1 and row["holder_apply_p50_ms"] is not None


def test_apply_figures_pool_the_agents_recent_applies_by_role():
    statuses = [
        {"unlearn_applies": {"holder": {"recent_total_ms": [4.0, 6.0], "recent_fsyncs": [2, 2]},
                             "non_holder": {"recent_total_ms": [1.0], "recent_fsyncs": [2]}}},
        {"unlearn_applies": {"holder": {"recent_total_ms": [8.0], "recent_fsyncs": [3]}}},
        None,  # no status written yet
    ]
    figures = apply_figures(statuses)
    assert figures["holder_apply_p50_ms"] == 6.0 and figures["holder_applies"] == 3
    assert figures["holder_fsyncs_max"] == 3 and figures["non_holder_fsyncs_p50"] == 2.0
    assert apply_figures([None])["holder_apply_p95_ms"] is None


def test_growth_exponent_reads_a_power_law():
    assert growth_exponent([10, 20, 40], [1.0, 2.0, 4.0]) == pytest.approx(1.0)
    assert growth_exponent([10, 20, 40], [1.0, 4.0, 16.0]) == pytest.approx(2.0)
    assert growth_exponent([10], [1.0]) is None


def test_bench_scale_refuses_a_fleet_too_small_for_its_unlearns():
    out = subprocess.run([sys.executable, "-m", "hdus_edge", "bench", "scale", "--sizes", "12", "--degrees", "4",
                          "--nets", "lan", "--json"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "at least 15" in out.stderr
    bad_net = subprocess.run([sys.executable, "-m", "hdus_edge", "bench", "scale", "--nets", "moon"],
                             capture_output=True, text=True, timeout=120)
    assert bad_net.returncode == 2 and "lan, wan" in bad_net.stderr


def test_two_network_labs_at_once_take_different_addresses():
    # Two runs on one machine (a benchmark next to the tests): each link gets a /24 nobody else holds.
    with NetworkLab(2) as first, NetworkLab(2) as second:
        subnets = [s.host_address.rsplit(".", 1)[0] for s in first.sites + second.sites]
        names = [s.namespace for s in first.sites + second.sites] + [s.host_if for s in first.sites + second.sites]
        assert len(set(subnets)) == 4 and len(set(names)) == 8
        for site in (first.sites[0], second.sites[1]):
            code = f"import socket, sys\ns = socket.socket(); s.settimeout(3)\nsys.exit(s.connect_ex(('{site.host_address}', 9)))\n"
            assert subprocess.run([*second.exec_prefix(site), sys.executable, "-c", code], timeout=30).returncode == 111
    assert not any(n.startswith(f"hdus-{__import__('os').getpid()}-") for n in _namespaces())
