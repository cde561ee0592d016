"""Serving benchmark (``hdus-edge bench serve``): the agent's inference API against the alternatives, in one run.

A fleet on a real broker (Mosquitto when installed, else the embedded one): ``dev-0`` with a main model
of its profile (raspberry-pi-4: mobilenet-m) and 8 neighbours' seed-cnn seeds at 1x28x28, the
neighbours as agents in this process, ``dev-0`` as ``python -m hdus_edge agent --http`` exactly as the
systemd unit runs it. Measured side by side:

- the agent process: start-up to ready with 8 seeds in its store (median of runs; wall and CPU
  seconds), resident memory once it serves the fused graph (VmRSS, peak VmHWM);
- batch-1 latency p50/p99: in-process ``EnsembleRuntime.predict``, over loopback HTTP with JSON
  tensors and with the binary tensor extension (keep-alive connection), and ``hdus-edge predict``
  (a process per call, as applications had to before);
- throughput (requests and samples per second) at batch 1 and 32 with 1 and 4 concurrent clients;
- churn: 4 clients call the API while neighbours swap their seeds 10 times and 10 devices are
  forgotten; every failed request is counted, with the member sets the answers named.

Goals reported against (issue 16): HTTP batch-1 p50 <= 2 ms and >= 500x faster than ``predict``;
agent RSS <= 80 MiB and ready <= 1 s; zero failed requests during the churn.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hdus_edge.config import (
    DataSection,
    EnsembleSection,
    FleetConfig,
    FleetSection,
    load_profile,
)
from hdus_edge.device.agent import AgentSettings, DeviceAgent
from hdus_edge.lab.agents import AgentFleet, DeviceModels
from hdus_edge.lab.api_client import ApiClient, infer_request
from hdus_edge.lab.synthetic import CREATED_AT, REFERENCE_SHA
from hdus_edge.transport.ports import free_port

GOALS = {"http_p50_ms": 2.0, "speedup_vs_predict": 500.0, "rss_mb": 80.0, "ready_s": 1.0, "failed_requests": 0}
SHAPE = (1, 28, 28)
NEIGHBOURS = 8
PEER_SETTINGS = AgentSettings(probe_in_subprocess=False, digest_interval_s=30.0)


@dataclass(frozen=True)
class ServeBenchConfig:
    """How much to measure; ``quick`` is a smoke run."""

    profile: str = "raspberry-pi-4"
    latency_calls: int = 2000
    predict_calls: int = 5
    throughput_s: float = 3.0
    ready_runs: int = 3
    churn: int = 10  # seed swaps, and devices forgotten, under 4 clients
    seed: int = 0

    @classmethod
    def quick(cls) -> ServeBenchConfig:
        return cls(latency_calls=300, predict_calls=2, throughput_s=1.0, ready_runs=1)


def _export(arch: str, owner: str, role: str, seed: int) -> bytes:
    from hdus_edge.models import build_model
    from hdus_edge.onnx.export import export_onnx
    from hdus_edge.onnx.metadata import Provenance

    ref = REFERENCE_SHA if role == "seed" else None
    return export_onnx(build_model(arch, SHAPE, 10, seed=seed),
                       Provenance(owner, role, arch, 1, SHAPE, 10, CREATED_AT, ref))  # type: ignore[arg-type]


class _Client:
    """One keep-alive connection posting one prepared request."""

    def __init__(self, port: int, x: np.ndarray, binary: bool) -> None:
        self.api = ApiClient(port)
        self.body, self.headers = infer_request(x, binary)

    def call(self) -> dict[str, Any]:
        return self.api.post(self.body, self.headers)[0]

    def close(self) -> None:
        self.api.close()


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50_ms": 1e3 * ordered[len(ordered) // 2],
            "p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], "calls": len(ordered)}


def _time_calls(fn: Callable[[], object], calls: int) -> dict[str, float]:
    for _ in range(min(20, calls)):
        fn()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return _percentiles(samples)


def scrape_metric(port: int, name: str) -> float | None:
    """The value of the unlabelled sample ``name`` on ``http://127.0.0.1:<port>/metrics`` (None: not there yet)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _proc_memory(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024.0
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _AgentProcess:
    """``python -m hdus_edge agent --http`` for dev-0, as the systemd unit starts it."""

    def __init__(self, state_dir: Path, broker: str, port: int, ready_file: Path) -> None:
        ready_file.unlink(missing_ok=True)
        self.port = port
        start = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hdus_edge", "agent", "--state-dir", str(state_dir), "--broker", broker,
             "--http", f"127.0.0.1:{port}", "--ready-file", str(ready_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while not ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}: {self.proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            if time.perf_counter() - start > 120:
                raise RuntimeError("agent not ready within 120 s")
            time.sleep(0.002)
        self.ready_s = time.perf_counter() - start
        self.ready_cpu_s = _cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _throughput(port: int, batch: int, clients: int, seconds: float, seed: int) -> dict[str, float]:
    x = np.random.default_rng(seed).random((batch, *SHAPE), dtype=np.float32)
    done = [0] * clients
    failed = [0] * clients
    start_at = threading.Barrier(clients + 1)
    stop = threading.Event()

    def run(k: int) -> None:
        client = _Client(port, x, binary=True)
        client.call()
        start_at.wait()
        while not stop.is_set():
            try:
                client.call()
                done[k] += 1
            except Exception:  # noqa: BLE001  # counted, reported
                failed[k] += 1
                client.close()
                client = _Client(port, x, binary=True)
        client.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start_at.wait()
    began = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    return {"batch": batch, "clients": clients, "requests_per_s": sum(done) / elapsed,
            "samples_per_s": batch * sum(done) / elapsed, "failed": sum(failed)}


def run_serve_bench(cfg: ServeBenchConfig = ServeBenchConfig(), progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every measurement; returns one JSON-able dict (see the module docstring)."""
    from hdus_edge.device.view import load_runtime
    from hdus_edge.transport.broker import EmbeddedBroker
    from hdus_edge.transport.mosquitto import MosquittoProcess
    from hdus_edge.unlearn.request import request_unlearn

    say = progress or (lambda _: None)
    began = time.monotonic()
    profile = load_profile(cfg.profile)
    say("exporting models")
    main = _export(profile.model.main_arch, "dev-0", "main", cfg.seed)
    ids = [f"dev-{k}" for k in range(1, NEIGHBOURS + cfg.churn + 1)]
    seeds = {d: _export("seed-cnn", d, "seed", cfg.seed + 1 + k) for k, d in enumerate(ids)}
    swaps = [_export("seed-cnn", ids[k % NEIGHBOURS], "seed", cfg.seed + 100 + k) for k in range(cfg.churn)]
    models = {"dev-0": DeviceModels(main, _export("seed-cnn", "dev-0", "seed", cfg.seed + 99), cfg.profile)}
    models |= {d: DeviceModels(main, seeds[d]) for d in ids}
    with tempfile.TemporaryDirectory(prefix="hdus-serve-") as tmp:
        root = Path(tmp)
        try:
            broker_ctx: Any = MosquittoProcess(root / "mosquitto").start()
            broker_name = "mosquitto"
        except Exception:  # noqa: BLE001  # not installed: the embedded broker does
            broker_ctx = EmbeddedBroker().start()
            broker_name = "amqtt"
        fleet_cfg = FleetConfig(FleetSection("serve", broker_ctx.url), DataSection(SHAPE, 10, "public", REFERENCE_SHA),
                                EnsembleSection(0.5, "probs"))
        graph = {"dev-0": frozenset(ids[:NEIGHBOURS])} | {d: frozenset() for d in ids}
        fleet = AgentFleet(root / "fleet", broker_ctx.url, fleet_cfg, models, graph, PEER_SETTINGS)
        state0 = fleet.states["dev-0"]
        agent: _AgentProcess | None = None
        try:
            say("starting the neighbours and dev-0")
            for d in ids[:NEIGHBOURS]:
                fleet.agents[d] = DeviceAgent.from_state_dir(fleet.states[d], broker_url=broker_ctx.url,
                                                             settings=PEER_SETTINGS).start()
            port = free_port()
            agent = _AgentProcess(state0.root, broker_ctx.url, port, root / "ready")
            _wait(lambda: scrape_metric(port, "hdus_ensemble_members") == NEIGHBOURS, 120, "dev-0's 8 seeds")
            agent.stop()
            # Ready with 8 seeds in the store, as after a reboot.
            readies = []
            for run in range(cfg.ready_runs):
                say(f"agent start-up {run + 1}/{cfg.ready_runs}")
                agent = _AgentProcess(state0.root, broker_ctx.url, port, root / "ready")
                readies.append((agent.ready_s, agent.ready_cpu_s))
                if run < cfg.ready_runs - 1:
                    agent.stop()
            _wait(lambda: scrape_metric(port, "hdus_ensemble_fused") == 1.0, 120, "dev-0's fused graph")
            time.sleep(2.0)
            memory = _proc_memory(agent.proc.pid)

            say("latency")
            x1 = np.random.default_rng(cfg.seed).random((1, *SHAPE), dtype=np.float32)
            runtime, _ = load_runtime(state0)
            np.save(root / "one.npy", x1)
            json_client, binary_client = _Client(port, x1, binary=False), _Client(port, x1, binary=True)
            latency = {
                "in_process": _time_calls(lambda: runtime.predict(x1), cfg.latency_calls),
                "http_json": _time_calls(json_client.call, cfg.latency_calls),
                "http_binary": _time_calls(binary_client.call, cfg.latency_calls),
            }
            answer = binary_client.call()
            json_client.close()
            binary_client.close()
            runtime.close()
            predict_cmd = [sys.executable, "-m", "hdus_edge", "predict", "--state-dir", str(state0.root),
                           str(root / "one.npy"), "--json"]
            predict_samples = []
            for _ in range(cfg.predict_calls):
                start = time.perf_counter()
                subprocess.run(predict_cmd, check=True, capture_output=True, timeout=300)
                predict_samples.append(time.perf_counter() - start)
            latency["predict_command"] = _percentiles(predict_samples)

            say("throughput")
            throughput = [_throughput(port, batch, clients, cfg.throughput_s, cfg.seed)
                          for batch in (1, 32) for clients in (1, 4)]

            say(f"churn: {cfg.churn} seed swaps and {cfg.churn} unlearns under 4 clients")
            churn = _churn(fleet, state0, port, ids, swaps, broker_ctx.url, request_unlearn)
        finally:
            if agent is not None:
                agent.stop()
            fleet.stop()
            broker_ctx.stop()
    http_p50 = latency["http_binary"]["p50_ms"]
    ready_median = statistics.median(r[0] for r in readies)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "setup": {"profile": cfg.profile, "main": profile.model.main_arch, "seeds": NEIGHBOURS, "input": list(SHAPE),
                  "broker": broker_name, "answer_parameters": answer.get("parameters", {})},
        "agent": {"ready_s_median": ready_median, "ready_s_runs": [r[0] for r in readies],
                  "ready_cpu_s_median": statistics.median(r[1] for r in readies),
                  "rss_mb": memory["VmRSS"], "peak_rss_mb": memory["VmHWM"]},
        "latency": latency,
        "throughput": throughput,
        "churn": churn,
        "ratios": {"predict_over_http_binary": latency["predict_command"]["p50_ms"] / http_p50,
                   "predict_over_http_json": latency["predict_command"]["p50_ms"] / latency["http_json"]["p50_ms"],
                   "http_binary_over_in_process": http_p50 / latency["in_process"]["p50_ms"]},
        "goals": GOALS,
        "seconds": time.monotonic() - began,
    }
    result["met"] = {
        "http_p50": http_p50 <= GOALS["http_p50_ms"],
        "speedup_vs_predict": result["ratios"]["predict_over_http_binary"] >= GOALS["speedup_vs_predict"],
        "rss": memory["VmRSS"] <= GOALS["rss_mb"],
        "ready": ready_median <= GOALS["ready_s"],
        "no_failed_requests": churn["failed_requests"] == 0,
    }
    return result


def _churn(fleet: AgentFleet, state0: Any, port: int, ids: list[str], swaps: list[bytes], broker: str,
           request_unlearn: Callable[..., Any]) -> dict[str, Any]:
    """10 seed swaps and 10 unlearns, interleaved, while 4 clients call dev-0's API."""
    targets = ids[NEIGHBOURS:]
    state0.set_neighbors(tuple(ids))  # dev-0 follows device.toml: it now wants the 10 churn devices too
    for d in targets:
        fleet.agents[d] = DeviceAgent.from_state_dir(fleet.states[d], broker_url=broker, settings=PEER_SETTINGS).start()
    _wait(lambda: scrape_metric(port, "hdus_ensemble_members") == len(ids), 120, "dev-0's 18 seeds")
    x = np.random.default_rng(7).random((1, *SHAPE), dtype=np.float32)
    member_sets: set[str] = set()
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    stop = threading.Event()

    def client_loop() -> None:
        client = _Client(port, x, binary=True)
        while not stop.is_set():
            try:
                member_sets.add(client.call()["parameters"]["members"])
                counts["ok"] += 1
            except Exception as exc:  # noqa: BLE001  # every failure is the finding
                counts["failed"] += 1
                errors.append(repr(exc)[:200])
                client.close()
                client = _Client(port, x, binary=True)
        client.close()

    threads = [threading.Thread(target=client_loop) for _ in range(4)]
    for t in threads:
        t.start()
    key = fleet.admin.key()
    began = time.perf_counter()
    try:
        for k in range(len(swaps)):
            owner = ids[k % NEIGHBOURS]
            version = 2 + k // NEIGHBOURS
            fleet.agents[owner].publish_seed(swaps[k], version)
            _wait(lambda: _seed_version(port, owner) == version, 60, f"{owner} v{version} at dev-0")
            target = targets[k]
            request_unlearn(broker_url=broker, fleet=fleet.fleet.fleet.name, admin_key=key.public_key, signer=key,
                            issuer="admin", target=target, epoch=0, wait_s=30, settle_s=0.0)
            _wait(lambda: scrape_metric(port, "hdus_ensemble_members") == len(ids) - k - 1, 60, f"{target} forgotten")
            fleet.retire([target])
    finally:
        stop.set()
        for t in threads:
            t.join()
    return {"seed_swaps": len(swaps), "unlearns": len(targets), "requests": counts["ok"] + counts["failed"],
            "failed_requests": counts["failed"], "errors": errors[:5], "member_sets_seen": len(member_sets),
            "seconds": time.perf_counter() - began}


def _seed_version(port: int, owner: str) -> float | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return None
    prefix = f'hdus_ensemble_seed_version{{owner="{owner}"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return None


def print_report(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    """The figures as a few aligned lines."""
    a, lat, r = result["agent"], result["latency"], result["ratios"]
    s = result["setup"]
    out(f"dev-0: {s['profile']} ({s['main']}) + {s['seeds']} seed-cnn seeds at {'x'.join(map(str, s['input']))}, "
        f"{s['broker']} broker, {result['machine']['cpus']} CPUs, load {result['machine']['load_avg_1m']:.1f}")
    out(f"agent: ready {a['ready_s_median']:.2f} s median (runs {', '.join(f'{v:.2f}' for v in a['ready_s_runs'])}; "
        f"CPU {a['ready_cpu_s_median']:.2f} s), RSS {a['rss_mb']:.1f} MiB (peak {a['peak_rss_mb']:.1f}); "
        f"goals <= {GOALS['ready_s']} s, <= {GOALS['rss_mb']} MiB")
    out("batch-1 latency            p50 ms     p99 ms")
    for key, label in (("in_process", "in-process predict"), ("http_json", "HTTP, JSON tensors"),
                       ("http_binary", "HTTP, binary tensors"), ("predict_command", "hdus-edge predict")):
        out(f"  {label:22s} {lat[key]['p50_ms']:9.3f} {lat[key]['p99_ms']:10.3f}")
    out(f"  predict / HTTP binary: {r['predict_over_http_binary']:.0f}x, predict / HTTP JSON: "
        f"{r['predict_over_http_json']:.0f}x (goal >= {GOALS['speedup_vs_predict']:.0f}x); "
        f"HTTP binary / in-process: {r['http_binary_over_in_process']:.1f}x")
    out("throughput (binary)       req/s   samples/s  failed")
    for t in result["throughput"]:
        out(f"  batch {t['batch']:2d}, {t['clients']} client{'s' if t['clients'] > 1 else ' '} "
            f"{t['requests_per_s']:8.0f} {t['samples_per_s']:11.0f} {t['failed']:7d}")
    c = result["churn"]
    out(f"churn: {c['seed_swaps']} seed swaps + {c['unlearns']} unlearns under 4 clients in {c['seconds']:.1f} s: "
        f"{c['requests']} requests, {c['failed_requests']} failed, {c['member_sets_seen']} member sets seen")
    out("goals met: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in result["met"].items()))
