"""Hostile-input cases of the runner: ONNX payloads at an agent in its own process, envelope mutants,
and the authority matrix.

The ONNX campaign runs the victim as a separate ``hdus-edge agent`` process (probing neighbours'
models in a child process, as deployed) so that a native crash would show as a dead agent: the
"parent crashes" figure. It reads each outcome from the agent's audit log (``reject`` / ``accept``
lines) and checks the process is alive after every payload.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from hdus_edge.device.store import AUDIT_NAME
from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import SigningKey
from hdus_edge.protocol.messages import UnlearnOrder
from hdus_edge.reliability.envelope_mutants import (
    field_mutants,
    flip_mutants,
    truncation_mutants,
)
from hdus_edge.reliability.harness import (
    Puppet,
    SingleAgentLab,
    deliver,
    lab_fleet,
    lab_models,
    snapshot,
    wait_until,
)
from hdus_edge.reliability.onnx_mutants import OnnxCase, hostile_onnx_cases, mutations
from hdus_edge.reliability.zygote import AgentZygote
from hdus_edge.transport.mqtt import MqttTransport

logger = logging.getLogger(__name__)


class _AuditTail:
    """Reads the audit lines an agent appends to its store's ``audit.jsonl`` (while it runs)."""

    def __init__(self, store_dir: Path) -> None:
        self.path = Path(store_dir) / AUDIT_NAME
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def new(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        cut = data.rfind(b"\n") + 1  # a line still being written waits for the next call
        self.offset += cut
        return [json.loads(line) for line in data[:cut].splitlines() if line]


def onnx_campaign(root: Path, broker_url: str, *, mutation_count: int = 1000, seed: int = 0,
                  timeout: float = 30.0, progress: Any = None) -> dict[str, Any]:
    """Send every fixed hostile kind and ``mutation_count`` random mutations as a neighbour's next seed
    versions to an agent process that probes in a child; count outcomes, crashes and times."""
    models = lab_models(4)
    ids = sorted(models)
    r, a = ids[0], ids[1]
    graph = {r: frozenset({a}), a: frozenset({r}), ids[2]: frozenset(), ids[3]: frozenset()}
    fleet = lab_fleet(root / "fleet", broker_url, 4, name="onnx", graph=graph)
    state = fleet.states[r]
    cases: list[OnnxCase] = hostile_onnx_cases(models[a].seed_onnx, seed=seed)
    cases += list(mutations(models[a].seed_onnx, mutation_count, seed=seed))
    outcomes: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    reject_ms: list[float] = []
    must_reject_accepted: list[str] = []
    unhandled: list[str] = []
    crashes = 0
    zygote = AgentZygote(root / "agent.log")
    began = time.monotonic()
    with Puppet(broker_url, fleet.admin, fleet.states) as puppet, zygote:
        t = puppet.topics
        puppet.publish(t.hello(a), puppet.hello(a), retain=True)
        puppet.publish(t.membership(a), puppet.membership(a, [r]), retain=True)
        puppet.publish(t.seed(r, a), puppet.seed(a, r, 1, models[a].seed_onnx), retain=True)
        ready = root / "ready"

        def spawn() -> int:
            ready.unlink(missing_ok=True)
            pid = zygote.spawn(state.root, broker_url, ready, probe=True, digest_interval=30.0)
            if not wait_until(ready.exists, 60, 0.01):
                raise RuntimeError(f"the agent under test did not start; see {root / 'agent.log'}")
            return pid

        pid = spawn()
        index = state.store_dir / "index.json"
        wait_until(lambda: index.exists() and a.encode() in index.read_bytes(), 30)  # a's seed v1 installed
        tail = _AuditTail(state.store_dir)
        version = 1
        try:
            for k, case in enumerate(cases):
                version += 1
                sent = time.monotonic()
                puppet.publish(t.seed(r, a), puppet.seed(a, r, version, case.data))
                outcome = "silent"
                deadline = sent + timeout
                while time.monotonic() < deadline and outcome == "silent":
                    for event in tail.new():
                        if event["event"] == "reject" and str(event.get("topic", "")).endswith(f"/{a}"):
                            outcome = "rejected"
                        elif event["event"] == "accept" and event.get("owner") == a and event.get("version") == version:
                            outcome = "accepted"
                    if outcome == "silent":
                        if not zygote.alive(pid):
                            break
                        time.sleep(0.002)
                took_ms = 1e3 * (time.monotonic() - sent)
                if not zygote.alive(pid):
                    crashes += 1
                    outcome = "crashed"
                    pid = spawn()
                    tail = _AuditTail(state.store_dir)
                outcomes[outcome] += 1
                by_kind.setdefault(case.kind, Counter())[outcome] += 1
                if outcome == "rejected":
                    reject_ms.append(took_ms)
                elif outcome == "accepted" and case.expect == "reject":
                    must_reject_accepted.append(case.name)
                elif outcome == "silent":
                    unhandled.append(case.name)
                if progress and k % 100 == 0:
                    progress(f"hostile ONNX {k}/{len(cases)}")
        finally:
            zygote.kill(pid, sig=15)
        fleet.stop()
    return {
        "payloads": len(cases), "fixed_kinds": len(cases) - mutation_count, "mutations": mutation_count,
        "rejected": outcomes["rejected"], "accepted_valid_mutations": outcomes["accepted"] - len(must_reject_accepted),
        "false_accepts": len(must_reject_accepted), "false_accept_examples": must_reject_accepted[:5],
        "unhandled_no_reject_logged": len(unhandled), "unhandled_examples": unhandled[:5],
        "parent_crashes": crashes,
        "time_to_reject_p50_ms": float(np.percentile(reject_ms, 50)) if reject_ms else None,
        "time_to_reject_p95_ms": float(np.percentile(reject_ms, 95)) if reject_ms else None,
        "time_to_reject_max_ms": max(reject_ms) if reject_ms else None,
        "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "seconds": time.monotonic() - began,
    }


def envelope_bases(lab: SingleAgentLab) -> dict[str, tuple[str, bytes, str]]:
    """kind -> (topic, a valid envelope ``r`` would act on, its signer); ids and times fixed."""
    p, t = lab.puppet, lab.puppet.topics
    order_for_a = p.order(lab.a, request_id="f" * 32, issued_at=1_700_000_000.0)
    return {
        "seed": (t.seed(lab.r, lab.a), p.seed(lab.a, lab.r, 10_000, lab.seeds[lab.c]), lab.a),
        "order": (t.unlearn(lab.a), order_for_a, "admin"),
        "membership": (t.membership(lab.a), p.membership(lab.a, [], version=10**13), lab.a),
        "hello": (t.hello(lab.a), p.hello(lab.a), lab.a),
        "digest": (t.tombstones(lab.b), p.digest(lab.b, [order_for_a]), lab.b),
    }


def envelope_campaign(root: Path, broker_url: str, *, flips_per_region: int = 16, seed: int = 0) -> dict[str, Any]:
    """Every field mutant and ``flips_per_region`` bit flips per region of five message kinds, at one
    agent; a mutant that is not rejected is a false accept (sender-id flips may also be parked)."""
    rng = random.Random(seed)
    began = time.monotonic()
    counts: Counter[str] = Counter()
    false_accepts: list[str] = []
    with SingleAgentLab(root, broker_url) as lab:
        assert lab.agent is not None
        before = snapshot(lab.agent)
        for kind, (topic, base, signer) in envelope_bases(lab).items():
            mutants = field_mutants(base, lab.puppet.key(signer), kind)
            mutants += flip_mutants(base, rng, per_region=flips_per_region) + truncation_mutants(base, rng, count=8)
            for m in mutants:
                outcome = deliver(lab.puppet, lab.agent, topic, m.data, timeout=10)
                counts[outcome] += 1
                if outcome != "rejected":
                    false_accepts.append(f"{kind}: {m.name} -> {outcome}")
            parked_ok = 0
            for m in flip_mutants(base, rng, per_region=4, regions=("sender",)):
                outcome = deliver(lab.puppet, lab.agent, topic, m.data, timeout=0.3)
                counts[f"sender-flip {outcome}"] += 1
                if outcome in ("rejected", "silent"):
                    parked_ok += 1
                else:
                    false_accepts.append(f"{kind}: {m.name} -> {outcome}")
        changed = before.differences(snapshot(lab.agent))
    return {"mutants": sum(counts.values()), "rejected": counts["rejected"] + counts["sender-flip rejected"],
            "parked_unknown_sender": counts["sender-flip silent"], "false_accepts": len(false_accepts),
            "false_accept_examples": false_accepts[:5], "state_changed": len(changed),
            "seconds": time.monotonic() - began}


# --- the authority matrix --------------------------------------------------------------------------

SIGNERS = ("subject", "admin", "another device", "unknown key")
ORDERS = ("unlearn self", "unlearn other", "neighbour change")
POLICY = {  # (signer, order) -> accepted? (the subject: r for "unlearn self", a for the others)
    ("subject", "unlearn self"): True, ("admin", "unlearn self"): True,
    ("another device", "unlearn self"): False, ("unknown key", "unlearn self"): False,
    ("subject", "unlearn other"): True, ("admin", "unlearn other"): True,
    ("another device", "unlearn other"): False, ("unknown key", "unlearn other"): False,
    ("subject", "neighbour change"): True, ("admin", "neighbour change"): False,
    ("another device", "neighbour change"): False, ("unknown key", "neighbour change"): False,
}


def _cell_payload(lab: SingleAgentLab, signer: str, order: str, stranger: SigningKey) -> tuple[str, bytes]:
    p, t, r, a, c = lab.puppet, lab.puppet.topics, lab.r, lab.a, lab.c
    subject = r if order == "unlearn self" else a
    if order == "neighbour change":
        topic = t.membership(a)
        if signer == "subject":
            return topic, p.membership(a, [])
        if signer == "admin":
            return topic, p.membership(a, [], signer="admin")
        if signer == "another device":
            return topic, p.membership(a, [], signer=c)
        return topic, p.membership(a, [], key=stranger)
    topic = t.unlearn(subject)
    if signer == "subject":
        return topic, p.order(subject, issuer=subject)
    if signer == "admin":
        return topic, p.order(subject)
    if signer == "another device":
        return topic, p.order(subject, issuer=c)
    return topic, p.order(subject, issuer=subject, key=stranger)


def _observe(lab: SingleAgentLab, order: str, topic: str, payload: bytes, seen: list[bytes]) -> bool:
    """Deliver one cell's message; True when ``r`` acted on it, False when it rejected it."""
    assert lab.agent is not None
    agent = lab.agent
    if order == "unlearn other":
        return deliver(lab.puppet, agent, topic, payload) == "unlearned"
    rejected = agent.counters.rejected
    cleared = len([m for m in seen if not m])
    if order == "unlearn self":
        acted = lambda: agent.status()["forgotten"] is True  # noqa: E731
    else:  # a drops r from its list; r, when it accepts, clears its retained seed for a
        acted = lambda: len([m for m in seen if not m]) > cleared  # noqa: E731
    lab.puppet.publish(topic, payload)
    wait_until(lambda: acted() or agent.counters.rejected > rejected, 10)
    return bool(acted()) and agent.counters.rejected == rejected


def authority_matrix(root: Path, broker_url: str) -> dict[str, Any]:
    """Every (signer, order) cell at a real agent; ``violations`` counts cells that differ from ``POLICY``."""
    stranger = SigningKey.from_seed(bytes(range(32)))
    observed: dict[tuple[str, str], bool] = {}
    parked = False
    cells = [(s, o) for o in ORDERS for s in SIGNERS]
    # Rejected cells leave state as it was: run them all on one agent, then each accepted cell on a fresh one.
    groups = [[cell for cell in cells if not POLICY[cell]]] + [[cell] for cell in cells if POLICY[cell]]
    for k, group in enumerate(groups):
        with SingleAgentLab(root / f"lab{k}", broker_url, name=f"auth{k}") as lab:
            seen: list[bytes] = []
            watcher = MqttTransport(broker_url, f"auth-watch-{k}", handler=lambda t, p, r: seen.append(p),
                                    clean_session=True)
            watcher.subscribe([lab.puppet.topics.seed(lab.a, lab.r)])
            watcher.connect()
            try:
                wait_until(lambda: bool(seen), 5)
                for signer, order in group:
                    topic, payload = _cell_payload(lab, signer, order, stranger)
                    observed[(signer, order)] = _observe(lab, order, topic, payload, seen)
                if k == 0:  # a signer nobody certified is parked, and changes nothing
                    ghost = codec.encode(UnlearnOrder(lab.r, "dev-999", "ab" * 16, 1.0, "x", 0), stranger, "dev-999")
                    assert lab.agent is not None
                    parked = deliver(lab.puppet, lab.agent, lab.puppet.topics.unlearn(lab.r), ghost, timeout=1) == "silent" \
                        and lab.agent.status()["forgotten"] is False
            finally:
                watcher.close()
    rows = [{"signer": s, **{o: ("accepted" if observed[(s, o)] else "rejected") for o in ORDERS}} for s in SIGNERS]
    violations = [f"{s} / {o}: expected {'accept' if POLICY[(s, o)] else 'reject'}" for (s, o) in cells
                  if observed[(s, o)] != POLICY[(s, o)]]
    return {"cells": len(cells), "violations": len(violations), "violation_examples": violations,
            "uncertified_signer_parked": parked, "matrix": rows}
