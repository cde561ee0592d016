"""A fleet as it really runs: every device's agent in its own OS process, with its own connection.

``AgentFleet`` (``lab.agents``) runs N agents in one Python process, so its figures at scale measure
the interpreter lock as much as the protocol. Here each device is ``hdus-edge agent`` (the same entry
point a Pi runs under systemd), optionally inside a network namespace (``lab.netns``) with its own
broker address (a shaping proxy in front of the broker, or a site broker). The fleet is watched
from outside: a device's members come from the ``status.json`` its agent writes, its seed
arrivals from its store's audit log, its memory from the kernel; with ``http=True`` its ensemble's
output from its own inference API (``predict``), as an application on the device would ask it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from hdus_edge.config import FleetConfig
from hdus_edge.device.store import AUDIT_NAME
from hdus_edge.lab.agents import (
    DeviceModels,
    order_unlearn,
    order_unlearn_together,
    provision_lab_fleet,
)
from hdus_edge.lab.api_client import ApiClient
from hdus_edge.protocol.topics import Topics
from hdus_edge.topology import Graph
from hdus_edge.transport.ports import free_port
from hdus_edge.unlearn.request import UnlearnOutcome

logger = logging.getLogger(__name__)

# Rows per inference request: the smallest profile's api.max_batch (Raspberry Pi Zero 2 W).
API_BATCH = 64

# Where a device runs: (command prefix, e.g. ``ip netns exec NS``; the broker URL it dials).
Placement = Callable[[str], tuple[list[str], str]]


@dataclass
class AgentProcess:
    """One device's running agent."""

    device_id: str
    proc: subprocess.Popen[bytes]
    ready_file: Path
    log_file: Path
    launched_at: float  # time.time(): comparable with the store's audit times
    ready_at: float | None = None
    api_port: int | None = None  # its inference API on 127.0.0.1 (``ProcessFleet.http``)


@dataclass
class ProcessFleet:
    """Provision N devices, run each agent as its own process, watch them, forget, stop."""

    root: Path
    broker_url: str
    fleet: FleetConfig
    models: Mapping[str, DeviceModels]
    graph: Graph
    digest_interval_s: float = 30.0
    # A real device probes every seed in a child process; at 100 agents on 2 cores those children
    # would be the whole measurement, so the fleet benchmarks probe in-process unless asked.
    probe_in_subprocess: bool = False
    placement: Placement | None = None
    # Serve each agent's inference API on a free loopback port (``predict``); off by default
    # because a hundred idle HTTP servers are a hundred more threads on the machine.
    http: bool = False
    # The interpreter arguments that run the CLI. A test plants a bug in every agent by pointing this
    # at a script that patches the agent and then runs ``hdus_edge.cli.entry``.
    launcher: tuple[str, ...] = ("-m", "hdus_edge")
    procs: dict[str, AgentProcess] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.admin, self.states = provision_lab_fleet(self.root, self.fleet, self.models, self.graph)

    # --- lifecycle ---------------------------------------------------------------------------

    def launch(self, device_id: str) -> AgentProcess:
        """Start ``device_id``'s agent process (returns at once)."""
        state = self.states[device_id]
        prefix, url = self.placement(device_id) if self.placement else ([], self.broker_url)
        ready = state.root / "agent.ready"
        ready.unlink(missing_ok=True)
        log = state.root / "agent.log"
        # --insecure: plain-text MQTT to a 198.18.x address is the lab's own link (lab.netns), not a network.
        cmd = [*prefix, sys.executable, *self.launcher, "--insecure", "agent", "--state-dir", str(state.root),
               "--broker", url,
               "--ready-file", str(ready), "--digest-interval", str(self.digest_interval_s)]
        if not self.probe_in_subprocess:
            cmd.append("--no-probe-subprocess")
        api_port = None
        if self.http:
            if prefix:
                raise ValueError("the inference API is reached on this host's loopback: no placement with http=True")
            api_port = free_port()
            cmd += ["--http", f"127.0.0.1:{api_port}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        with open(log, "ab") as fh:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, env=env, start_new_session=True)
        agent = AgentProcess(device_id, proc, ready, log, time.time(), api_port=api_port)
        self.procs[device_id] = agent
        return agent

    def wait_ready(self, ids: list[str], timeout: float) -> None:
        """Block until every agent of ``ids`` wrote its ready file; ``RuntimeError`` if one died."""
        deadline = time.monotonic() + timeout
        pending = set(ids)
        while pending:
            for device_id in sorted(pending):
                agent = self.procs[device_id]
                if agent.ready_file.exists():
                    agent.ready_at = agent.ready_file.stat().st_mtime
                    pending.discard(device_id)
                elif agent.proc.poll() is not None:
                    raise RuntimeError(f"agent {device_id} exited with {agent.proc.returncode}: {self._tail(agent)}")
            if pending and time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} agents not ready in {timeout:g} s, e.g. {sorted(pending)[:3]}")
            if pending:
                time.sleep(0.05)

    def start(self, timeout: float = 600.0, wave: int = 8) -> float:
        """Launch every agent, ``wave`` at a time (each wave ready before the next: on a small machine
        a hundred interpreters starting at once would measure start-up, not the protocol), then wait
        until every ensemble holds its neighbours' seeds. Returns the seconds this took."""
        begin = time.monotonic()
        ids = sorted(self.states)
        try:
            for k in range(0, len(ids), wave):
                batch = ids[k:k + wave]
                for device_id in batch:
                    self.launch(device_id)
                self.wait_ready(batch, max(1.0, timeout - (time.monotonic() - begin)))
            self.wait_converged(max(1.0, timeout - (time.monotonic() - begin)))
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - begin

    def stop(self, ids: list[str] | None = None, grace_s: float = 10.0) -> None:
        """SIGTERM the agents (all by default), SIGKILL those still running after ``grace_s``."""
        chosen = [self.procs[i] for i in (ids if ids is not None else list(self.procs)) if i in self.procs]
        for agent in chosen:
            if agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for agent in chosen:
            try:
                agent.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("agent %s ignored SIGTERM; killing it", agent.device_id)
                agent.proc.kill()
                agent.proc.wait(timeout=5)
            self.procs.pop(agent.device_id, None)

    def retire(self, targets: list[str]) -> None:
        """Stop forgotten ``targets`` and take them out of the graph (what a forgotten device does)."""
        self.stop(targets)
        gone = set(targets)
        self.graph = {i: frozenset(n - gone) for i, n in self.graph.items() if i not in gone}

    def __enter__(self) -> ProcessFleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- watching from outside ---------------------------------------------------------------

    def status(self, device_id: str) -> dict | None:
        """The agent's last ``status.json`` (None while it has written none, or mid-replace)."""
        try:
            return json.loads(self.states[device_id].status_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def members(self, device_id: str) -> tuple[str, ...] | None:
        status = self.status(device_id)
        return None if status is None else tuple(status.get("members", ()))

    def expected_members(self) -> dict[str, tuple[str, ...]]:
        """What each running agent should hold: its neighbours that are still running."""
        alive = set(self.procs)
        return {i: tuple(sorted(set(self.graph.get(i, ())) & alive)) for i in self.procs}

    def wait_converged(self, timeout: float) -> None:
        """Block until every running agent reports exactly its live neighbours' seeds."""
        expected = self.expected_members()
        deadline = time.monotonic() + timeout
        while True:
            bad = {i: self.members(i) for i in expected if self.members(i) != expected[i]}
            if not bad:
                return
            dead = [i for i in expected if self.procs[i].proc.poll() is not None]
            if dead:
                raise RuntimeError(f"agent {dead[0]} died: {self._tail(self.procs[dead[0]])}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"fleet did not converge in {timeout:g} s: {len(bad)} devices differ, "
                                   f"e.g. {sorted(bad.items())[:2]}")
            time.sleep(0.1)

    def seed_arrivals(self) -> dict[tuple[str, str], float]:
        """(holder, owner) -> when the holder's store accepted the owner's seed (first time, ``time.time()``)."""
        out: dict[tuple[str, str], float] = {}
        for holder, state in self.states.items():
            path = state.store_dir / AUDIT_NAME
            if not path.exists():
                continue
            for line in path.read_bytes().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("event") == "accept" and isinstance(record.get("owner"), str):
                    out.setdefault((holder, record["owner"]), float(record["at"]))
        return out

    def propagation_s(self, on_broker: Mapping[str, float]) -> list[float]:
        """Seconds from each seed reaching the broker (``on_broker``: topic -> ``time.monotonic()``,
        from a ``lab.outside.TopicClock`` on ``seeds/+/+``) to its holder's store accepting it, over
        the pairs whose holder was already running then (the others received a retained copy when
        they started, which times their start-up, not the fleet). Not from the owner's ready file:
        the agent publishes its seed while it starts, before writing that file."""
        wall_minus_mono = time.time() - time.monotonic()
        running_by = {d: a.ready_at for d, a in self.procs.items() if a.ready_at is not None}
        topics = Topics(self.fleet.fleet.name)
        arrivals = {pair: at for pair, at in self.seed_arrivals().items()
                    if (seen := on_broker.get(topics.seed(*pair))) is not None
                    and pair[0] in running_by and running_by[pair[0]] <= seen + wall_minus_mono}
        return seed_propagation(arrivals, on_broker, self.fleet.fleet.name)

    def _client(self, device_id: str) -> ApiClient:
        port = self.procs[device_id].api_port
        if port is None:
            raise ValueError("predict needs a ProcessFleet started with http=True")
        return ApiClient(port)

    def predict(self, device_id: str, x: np.ndarray) -> np.ndarray:
        """``device_id``'s ensemble output for ``x``, from its agent's inference API (``http=True``),
        bit for bit as the agent computed it; asked ``API_BATCH`` rows at a time (every profile's
        batch limit allows that many)."""
        client = self._client(device_id)
        try:
            return np.concatenate([client.predict(x[k:k + API_BATCH]) for k in range(0, len(x), API_BATCH)])
        finally:
            client.close()

    def wait_settled(self, timeout: float, probe: np.ndarray | None = None) -> None:
        """``AgentFleet.wait_settled`` from outside (``http=True``): converged, and every agent with
        seeds answers from the fused graph of its members (its API says ``fused``), so outputs
        compared from here on are bit for bit what the fused ensembles compute."""
        deadline = time.monotonic() + timeout
        self.wait_converged(timeout)
        expected = self.expected_members()
        for device_id in sorted(self.procs):
            status = self.status(device_id) or {}
            if not expected[device_id] or status.get("ensemble", {}).get("strategy") != "fused":
                continue
            shape = self.fleet.data.input_shape
            x = probe if probe is not None else np.zeros((1, *shape), np.float32)
            client = self._client(device_id)
            try:
                while True:
                    _, params = client.predict_labelled(x[:1])
                    if params.get("fused") and params.get("members", "").split(",") == list(expected[device_id]):
                        break
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{device_id}: no fused graph for members {expected[device_id]} "
                                           f"after {timeout:g} s (answer: {params})")
                    time.sleep(0.05)
            finally:
                client.close()

    def running(self) -> list[str]:
        """The ids of the running agents, sorted."""
        return sorted(self.procs)

    def unlearn(self, target: str, wait_s: float = 30.0) -> UnlearnOutcome:
        """The admin orders ``target`` forgotten (from this process, which runs no agent: no
        interpreter lock to wait behind); stops its agent; returns the collected receipts."""
        outcome = order_unlearn(self.admin, self.broker_url, self.fleet.fleet.name, target, wait_s)
        self.retire([target])
        return outcome

    def unlearn_together(self, targets: list[str], wait_s: float = 30.0) -> list[UnlearnOutcome]:
        """Every one of ``targets`` ordered forgotten at the same moment; outcomes in order."""
        outcomes = order_unlearn_together(self.admin, self.broker_url, self.fleet.fleet.name, targets, wait_s)
        self.retire(targets)
        return outcomes

    def rss_bytes(self) -> dict[str, int]:
        """Resident memory of each running agent (the agent process and any children it has)."""
        out = {}
        for device_id, agent in self.procs.items():
            try:
                p = psutil.Process(agent.proc.pid)
                out[device_id] = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
            except psutil.Error:
                continue
        return out

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU seconds each running agent has used so far."""
        out = {}
        for device_id, agent in self.procs.items():
            try:
                t = psutil.Process(agent.proc.pid).cpu_times()
                out[device_id] = t.user + t.system
            except psutil.Error:
                continue
        return out

    @staticmethod
    def _tail(agent: AgentProcess, lines: int = 5) -> str:
        try:
            return " | ".join(agent.log_file.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return "(no log)"


def seed_propagation(accepted: Mapping[tuple[str, str], float], on_broker: Mapping[str, float], fleet: str) -> list[float]:
    """Per (holder, owner) pair: seconds from the owner's seed for the holder reaching the broker
    (``on_broker``: topic -> ``time.monotonic()``) to the holder's store accepting it (``accepted``:
    ``time.time()``, from the audit log); pairs the broker clock did not see are left out. Pure."""
    wall_minus_mono = time.time() - time.monotonic()  # one machine: the two clocks differ by a constant
    topics = Topics(fleet)
    out = []
    for (holder, owner), at in accepted.items():
        seen = on_broker.get(topics.seed(holder, owner))
        if seen is not None:
            out.append(max(0.0, at - (seen + wall_minus_mono)))
    return out
