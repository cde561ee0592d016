"""Fault cases: the broker crashes, the link is cut, a device stays away past the broker's queue.

Each returns a dict of figures in which every loss, duplicate and invariant violation is a named
count. "Nothing acknowledged is lost" is checked as: every seed a device should hold arrives, every
holder applies an order the broker acknowledged; "nothing forgotten comes back" as: a forgotten
seed never reappears in an ensemble (sampled every few milliseconds while the fault plays out).
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

from hdus_edge.lab.agents import AgentFleet
from hdus_edge.lab.proxy import TcpProxy
from hdus_edge.reliability.brokers import Broker
from hdus_edge.reliability.harness import (
    Puppet,
    lab_fleet,
    lab_models,
    start_agents,
    wait_until,
)
from hdus_edge.reliability.invariants import (
    MemberSampler,
    ResurrectionWatch,
    store_violations,
)
from hdus_edge.unlearn.request import collect_receipts

logger = logging.getLogger(__name__)


def missing_pairs(fleet: AgentFleet) -> list[tuple[str, str]]:
    """(holder, neighbour) pairs whose seed a running agent should hold and does not."""
    expected = fleet.expected_members()
    return [(i, j) for i, want in expected.items() for j in want if j not in fleet.agents[i].members()]


def mark_forgotten(fleet: AgentFleet, holders: list[str], target: str, request_id: str, watch: ResurrectionWatch) -> int:
    """Tell ``watch`` which holders have finished forgetting ``target`` (order committed and the seed
    out of the ensemble: the store commits first, the ensemble follows); return how many have."""
    done = 0
    for h in holders:
        agent = fleet.agents[h]
        if agent.store.is_request_seen(request_id) and target not in agent.members():
            watch.forget(h, target)
            done += 1
    return done


def _duplicates(fleet: AgentFleet) -> int:
    return sum(a.counters.duplicates for a in fleet.agents.values())


def broker_crash_during_seeds(root: Path, kind: str, *, n: int = 5, seed: int = 0, down_s: float = 0.3,
                              timeout: float = 30.0, clean: bool = False) -> dict[str, Any]:
    """Crash (``clean``: stop) the broker while the fleet's agents start and exchange seeds; then
    start the rest and wait for every seed everywhere."""
    rng = random.Random(seed)
    with Broker(kind, root / "broker") as broker:
        fleet = lab_fleet(root / "fleet", broker.url, n, name="bseed")
        ids = sorted(fleet.states)
        split = rng.randint(1, n - 1)
        try:
            start_agents(fleet, ids[:split])
            time.sleep(rng.uniform(0.0, 0.3))  # seeds in flight
            if clean:
                broker.stop()
            else:
                broker.crash()
            time.sleep(down_s)
            broker.start()
            restarted = time.monotonic()
            start_agents(fleet, ids[split:])
            converged = wait_until(lambda: not missing_pairs(fleet), timeout, 0.02)
            recover = time.monotonic() - restarted if converged else None
            return {"broker": kind, "devices": n, "started_before_crash": split, "clean_stop": clean,
                    "time_to_recover_s": recover, "duplicates_seen": _duplicates(fleet),
                    "losses": len(missing_pairs(fleet)), "loss_examples": missing_pairs(fleet)[:3]}
        finally:
            fleet.stop()


def broker_crash_during_unlearn(root: Path, kind: str, *, n: int = 5, seed: int = 0, down_s: float = 0.3,
                                timeout: float = 30.0, offline: int | None = None) -> dict[str, Any]:
    """Crash the broker during an unlearn that only some holders have seen.

    ``offline`` holders (default: half) reach the broker through a proxy that is down when the order
    is published; once the others applied it, the broker crashes and comes back, then the proxy. The
    offline holders must still forget: from the retained order if the broker kept it, else from the
    others' tombstone digests.
    """
    rng = random.Random(seed)
    with Broker(kind, root / "broker") as broker, TcpProxy("127.0.0.1", broker.port) as proxy:
        fleet = lab_fleet(root / "fleet", broker.url, n, name="bunl")
        ids = sorted(fleet.states)
        target = ids[-1]
        holders = ids[:-1]
        away = rng.sample(holders, len(holders) // 2 if offline is None else offline)
        watch = ResurrectionWatch()
        try:
            start_agents(fleet, [i for i in ids if i not in away])
            start_agents(fleet, away, broker_url=proxy.url)
            fleet.wait_converged(timeout)
            rid = f"crash{seed:04d}" + "f" * 16
            with Puppet(broker.url, fleet.admin, fleet.states) as puppet, MemberSampler(fleet, watch):
                proxy.down()
                time.sleep(0.1)
                puppet.publish(puppet.topics.unlearn(target), puppet.order(target, request_id=rid), retain=True)
                acked = time.monotonic()
                present = [h for h in holders if h not in away]
                wait_until(lambda: mark_forgotten(fleet, present, target, rid, watch) == len(present), 10, 0.001)
                time.sleep(rng.uniform(0.0, 0.6))  # a digest may or may not have gone out
                applied_before = mark_forgotten(fleet, holders, target, rid, watch)
                broker.crash()
                time.sleep(down_s)
                broker.start()
                restarted = time.monotonic()
                proxy.restore()
                recovered = wait_until(lambda: mark_forgotten(fleet, holders, target, rid, watch) == len(holders),
                                       timeout, 0.01)
                recover = time.monotonic() - restarted if recovered else None
                latency = time.monotonic() - acked if recovered else None
                time.sleep(0.3)  # late redeliveries must not bring the seed back
            missed = [h for h in holders if not fleet.agents[h].store.is_request_seen(rid)]
            receipts = collect_receipts(broker_url=broker.url, fleet="bunl", admin_key=fleet.admin.key().public_key,
                                        request_id=rid, wait_s=1.0)
            violations = sum(len(store_violations(fleet.states[h].store_dir)) for h in holders)
            return {"broker": kind, "devices": n, "holders": len(holders), "offline_at_order": len(away),
                    "applied_before_crash": applied_before, "time_to_recover_s": recover,
                    "order_to_all_forgotten_s": latency, "losses": len(missed), "loss_examples": missed[:3],
                    "forgotten_came_back": len(watch.violations),
                    # Receipts a requester can still collect and verify (it needs the senders' hellos).
                    "receipts_collectable_after": len(receipts), "receipts_not_collectable": len(holders) - len(receipts),
                    "duplicates_seen": _duplicates(fleet), "store_violations": violations}
        finally:
            fleet.stop()


def link_cut_during_flows(root: Path, broker_url: str, *, n: int = 4, cuts: int = 5, seed: int = 0,
                          timeout: float = 30.0) -> dict[str, Any]:
    """One device reaches the broker through a proxy that is cut again and again: while it receives
    seeds, while a neighbour publishes a new version, and while it applies an unlearn order."""
    rng = random.Random(seed)
    fleet = lab_fleet(root / "fleet", broker_url, n, name="cut")
    ids = sorted(fleet.states)
    victim, target = ids[0], ids[-1]
    watch = ResurrectionWatch()
    with TcpProxy.in_front_of(broker_url) as proxy:
        try:
            start_agents(fleet, ids[1:])
            start_agents(fleet, [victim], broker_url=proxy.url)
            for _ in range(cuts):  # cut while retained seeds and hellos flow in, each time it is back
                wait_until(lambda: proxy.open_connections > 0, 10, 0.005)
                time.sleep(rng.uniform(0.0, 0.1))
                proxy.cut()
            converged = wait_until(lambda: not missing_pairs(fleet), timeout, 0.02)
            # A new seed version while the link flaps.
            peer = ids[1]
            new = lab_models(n)[ids[2]].seed_onnx  # another device's bytes: a visibly new version
            fleet.agents[peer].publish_seed(new, 2)
            wait_until(lambda: proxy.open_connections > 0, 10, 0.005)
            proxy.cut()
            got_v2 = wait_until(lambda: (info := fleet.agents[victim].store.seed_info(peer)) is not None
                                and info.version == 2, timeout, 0.02)
            # An unlearn with the link cut right after the order.
            rid = f"cut{seed:04d}" + "e" * 16
            with Puppet(broker_url, fleet.admin, fleet.states) as puppet, MemberSampler(fleet, watch):
                puppet.publish(puppet.topics.unlearn(target), puppet.order(target, request_id=rid), retain=True)
                time.sleep(rng.uniform(0.0, 0.01))
                proxy.down()
                time.sleep(0.3)
                proxy.restore()
                applied = wait_until(lambda: mark_forgotten(fleet, [victim], target, rid, watch) == 1, timeout, 0.01)
                time.sleep(0.3)  # let a late redelivery try to bring it back
            receipts = collect_receipts(broker_url=broker_url, fleet="cut", admin_key=fleet.admin.key().public_key,
                                        request_id=rid, wait_s=1.0)
            return {"devices": n, "cuts": proxy.stats.cuts, "reconnects": fleet.agents[victim].transport.connect_count - 1,
                    "seeds_converged": converged, "new_version_delivered": got_v2, "order_applied": applied,
                    "receipt_delivered": victim in receipts, "losses": int(not converged) + int(not got_v2) + int(not applied)
                    + int(victim not in receipts), "forgotten_came_back": len(watch.violations),
                    "duplicates_seen": _duplicates(fleet)}
        finally:
            fleet.stop()


def offline_past_queue_limit(root: Path, broker_url: str, *, flood: int = 40, clear_retained_order: bool = True,
                             timeout: float = 30.0) -> dict[str, Any]:
    """A device is away while more messages than the broker queues for it arrive, and an unlearn
    happens; with ``clear_retained_order`` the retained order is gone too, so only the neighbours'
    tombstone digests can tell it. On return it must apply the order and send its receipt."""
    fleet = lab_fleet(root / "fleet", broker_url, 4, name="away")
    ids = sorted(fleet.states)
    away, target = ids[0], ids[-1]
    try:
        start_agents(fleet, ids)
        fleet.wait_converged(timeout)
        fleet.agents.pop(away).stop()
        rid = "away" + "d" * 28
        with Puppet(broker_url, fleet.admin, fleet.states) as puppet:
            topics = puppet.topics
            neighbours = [i for i in ids if i != away]
            for k in range(flood):  # fill (and overflow) the absent device's queue: only it reads its inbox
                puppet.publish(topics.seed(away, neighbours[k % len(neighbours)]), b"junk-" + bytes([k % 256]))
            puppet.publish(topics.unlearn(target), puppet.order(target, request_id=rid), retain=True)
            others = [i for i in ids if i not in (away, target)]
            applied = wait_until(lambda: all(fleet.agents[i].store.is_request_seen(rid) for i in others), timeout)
            if clear_retained_order:
                puppet.publish(topics.unlearn(target), b"", retain=True)
            time.sleep(0.5)  # the digest loop re-publishes the others' digests (retained)
        back = time.monotonic()
        agent = start_agents(fleet, [away])[away]
        forgot = wait_until(lambda: agent.store.is_request_seen(rid) and target not in agent.members(), timeout)
        took = time.monotonic() - back if forgot else None
        receipts = {}
        deadline = time.monotonic() + timeout
        while away not in receipts and time.monotonic() < deadline:
            receipts = collect_receipts(broker_url=broker_url, fleet="away", admin_key=fleet.admin.key().public_key,
                                        request_id=rid, wait_s=0.5)
        return {"flooded_messages": flood, "retained_order_cleared": clear_retained_order,
                "others_applied": applied, "applied_on_return": forgot, "return_to_forgotten_s": took,
                "receipt_sent": away in receipts, "losses": int(not forgot) + int(away not in receipts)}
    finally:
        fleet.stop()


def duplicates_and_reordering(root: Path, broker_url: str, *, copies: int = 3, timeout: float = 20.0) -> dict[str, Any]:
    """The same seed, order and receipt delivered several times; a seed that arrives after its owner's
    unlearn order; an order that arrives before the seed it forgets was ever seen."""
    fleet = lab_fleet(root / "fleet", broker_url, 4, name="dups")
    ids = sorted(fleet.states)
    r, a, b, c = ids
    problems: list[str] = []
    try:
        agents = start_agents(fleet, [r, a, b])
        wait_until(lambda: agents[r].members() == (a, b), timeout)
        ra = agents[r]
        with Puppet(broker_url, fleet.admin, fleet.states) as puppet:
            t = puppet.topics
            seed_bytes = lab_models(4)[b].seed_onnx
            # The same new seed version of a, three times.
            accepted0, dups0 = ra.counters.accepted, ra.counters.duplicates
            env = puppet.seed(a, r, 7, seed_bytes)
            for _ in range(copies):
                puppet.publish(t.seed(r, a), env)
            # The first copy is installed by the seed worker; the others are counted as they arrive.
            wait_until(lambda: ra.counters.duplicates - dups0 >= copies - 1 and ra.counters.accepted > accepted0, timeout)
            if (ra.counters.accepted - accepted0, ra.counters.duplicates - dups0) != (1, copies - 1):
                problems.append(f"seed x{copies}: accepted {ra.counters.accepted - accepted0}, "
                                f"duplicates {ra.counters.duplicates - dups0}")
            # The same order, three times: applied once, one receipt.
            rid = "dup" + "c" * 29
            order = puppet.order(a, request_id=rid)
            unlearned0, receipts0 = ra.counters.unlearned, ra.counters.receipts_sent
            for _ in range(copies):
                puppet.publish(t.unlearn(a), order, retain=True)
            wait_until(lambda: a not in ra.members() and ra.counters.duplicates - dups0 >= 2 * (copies - 1), timeout)
            if (ra.counters.unlearned - unlearned0, ra.counters.receipts_sent - receipts0) != (1, 1):
                problems.append(f"order x{copies}: unlearned {ra.counters.unlearned - unlearned0}, "
                                f"receipts {ra.counters.receipts_sent - receipts0}")
            # The same receipt, re-published: the requester counts it once.
            got = collect_receipts(broker_url=broker_url, fleet="dups", admin_key=fleet.admin.key().public_key,
                                   request_id=rid, wait_s=0.5)
            if r in got:
                for _ in range(copies):
                    puppet.publish(t.receipt(rid, r), got[r].raw)
                again = collect_receipts(broker_url=broker_url, fleet="dups", admin_key=fleet.admin.key().public_key,
                                         request_id=rid, wait_s=0.5)
                if set(again) != set(got):
                    problems.append(f"receipt x{copies}: requester saw {sorted(again)}")
            else:
                problems.append("no receipt from r")
            # A seed of a that arrives after a's unlearn order: refused, never installed.
            rejected0 = ra.counters.rejected
            puppet.publish(t.seed(r, a), puppet.seed(a, r, 8, seed_bytes))
            wait_until(lambda: ra.counters.rejected > rejected0, timeout)
            if a in ra.members() or ra.counters.rejected == rejected0:
                problems.append("a seed sent after its owner's unlearn was not refused")
            # An order for c before r ever heard of c, then c's hello and seed: refused.
            fleet_c_order = puppet.order(c, request_id="early" + "b" * 27)
            puppet.publish(t.unlearn(c), fleet_c_order, retain=True)
            wait_until(lambda: ra.store.is_tombstoned(c, 0), timeout)
            ra.set_neighbors((b, c))
            puppet.publish(t.hello(c), puppet.hello(c), retain=True)
            rejected1 = ra.counters.rejected
            puppet.publish(t.seed(r, c), puppet.seed(c, r, 1, seed_bytes), retain=True)
            wait_until(lambda: ra.counters.rejected > rejected1, timeout)
            if c in ra.members():
                problems.append("a seed of a device forgotten before it was known was installed")
        violations = store_violations(fleet.states[r].store_dir)
        return {"copies": copies, "problems": problems, "store_violations": len(violations),
                "invariant_violations": len(problems) + len(violations)}
    finally:
        fleet.stop()

