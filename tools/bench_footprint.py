"""Footprint of the inference side: ``hdus-edge agent`` and ``hdus-edge predict`` as a device runs them.

Sets up a fleet in a temporary folder (torch is used here, to export the models; the measured
processes never import it), gives device ``dev-0`` a main model and N neighbours' seeds in its store,
starts an embedded broker, then measures, as separate processes started the way a user starts them:

- agent start-up: from process spawn to its ``--ready-file`` (imports, store recovery, the fused
  ensemble of main + N seeds, MQTT connect and announce), median of ``--runs``;
- agent resident memory (VmRSS, and the peak VmHWM) once it is ready and idle;
- whether torch was loaded (any ``libtorch`` mapped into the process);
- ``predict`` on 64 inputs and on 1: wall time, peak RSS (VmHWM), torch loaded or not.

Targets (issue 5): agent RSS with 8 seeds < 150 MB, start-up < 2 s.

Usage: python tools/bench_footprint.py [--seeds 8] [--hw 28] [--profile raspberry-pi-4] [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RSS_TARGET_MB = 150.0
STARTUP_TARGET_S = 2.0
CREATED = "2026-01-01T00:00:00Z"


def _prepare(root: Path, seeds: int, hw: int, profile: str, broker: str) -> Path:
    """An admin dir, dev-0 with exported models and ``seeds`` neighbours' seeds in its store."""
    from hdus_edge.admin.setup import create_fleet, provision, resolve_reference
    from hdus_edge.config import load_profile
    from hdus_edge.device.store import SeedStore
    from hdus_edge.files import write_json
    from hdus_edge.models import build_model
    from hdus_edge.onnx.export import export_onnx
    from hdus_edge.onnx.metadata import Provenance
    from hdus_edge.protocol.messages import sha256_hex

    shape = (1, hw, hw)
    ref = resolve_reference("noise", size=64, input_shape=shape, num_classes=10, seed=0)
    admin, fleet = create_fleet(root / "admin", "footprint", broker, ref)
    neighbours = tuple(f"dev-{k}" for k in range(1, seeds + 1))
    state = provision(admin, root / "dev-0", "dev-0", profile, neighbors=neighbours).state
    prof = load_profile(profile)
    main_arch, seed_arch = prof.model.main_arch, prof.model.seed_arch
    main = export_onnx(build_model(main_arch, shape, 10), Provenance("dev-0", "main", main_arch, 1, shape, 10, CREATED))
    own_seed = export_onnx(build_model(seed_arch, shape, 10, seed=99),
                           Provenance("dev-0", "seed", seed_arch, 1, shape, 10, CREATED, ref.sha256))
    (state.models / "main.onnx").write_bytes(main)
    (state.models / "seed.onnx").write_bytes(own_seed)
    write_json(state.seed_info_file, {"version": 1, "sha256": sha256_hex(own_seed), "reference_sha256": ref.sha256,
                                      "arch": seed_arch, "created_at": CREATED})
    with SeedStore(state.store_dir) as store:
        for k, owner in enumerate(neighbours):
            data = export_onnx(build_model(seed_arch, shape, 10, seed=k),
                               Provenance(owner, "seed", seed_arch, 1, shape, 10, CREATED, ref.sha256))
            store.put_seed(owner, 1, data, epoch=0, arch=seed_arch)
    rng = np.random.default_rng(0)
    np.save(root / "batch.npy", rng.random((64, *shape), dtype=np.float32))
    np.save(root / "one.npy", rng.random((1, *shape), dtype=np.float32))
    return state.root


def _proc_status(pid: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024.0  # kB -> MiB
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process used so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _torch_mapped(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def _agent_run(state: Path, broker: str, ready: Path) -> dict[str, Any]:
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "hdus_edge", "agent", "--state-dir", str(state), "--broker", broker,
           "--ready-file", str(ready)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not ready.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"agent exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            if time.perf_counter() - start > 60:
                raise RuntimeError("agent not ready within 60 s")
            time.sleep(0.005)
        startup = time.perf_counter() - start
        startup_cpu = _cpu_seconds(proc.pid)
        time.sleep(3.0)  # idle: the background fuse of main + seeds has run, the first status is written
        mem = _proc_status(proc.pid)
        torch_loaded = _torch_mapped(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)
    return {"startup_s": startup, "startup_cpu_s": startup_cpu, "rss_mb": mem["VmRSS"], "peak_rss_mb": mem["VmHWM"], "torch_loaded": torch_loaded}


def _predict_run(state: Path, batch: Path) -> dict[str, Any]:
    # The CLI in-process, so the child reports its own peak (VmHWM: ru_maxrss would carry this
    # parent's peak across fork + exec on Linux) and whether torch got imported.
    code = ("import sys; from hdus_edge.cli.app import run; rc = run(sys.argv[1:]); "
            "hwm = open('/proc/self/status').read().split('VmHWM:')[1].split()[0]; "
            "sys.stderr.write('TORCH=%d HWM=%s\\n' % ('torch' in sys.modules, hwm)); sys.exit(rc)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, "predict", "--state-dir", str(state), str(batch), "--json"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=120)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"predict exited {done.returncode}: {done.stderr[-2000:]}")
    hwm_kb = int(done.stderr.rsplit("HWM=", 1)[1].split()[0])
    return {"seconds": seconds, "peak_rss_mb": hwm_kb / 1024.0, "torch_loaded": "TORCH=1" in done.stderr}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=8, help="neighbours' seeds in the ensemble")
    parser.add_argument("--hw", type=int, default=28, help="input height = width")
    parser.add_argument("--profile", default="raspberry-pi-4", help="device profile of the measured device")
    parser.add_argument("--runs", type=int, default=3, help="agent starts to take the median of")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from hdus_edge.transport.broker import EmbeddedBroker

    with tempfile.TemporaryDirectory(prefix="hdus-footprint-") as tmp, EmbeddedBroker() as broker:
        root = Path(tmp)
        state = _prepare(root, args.seeds, args.hw, args.profile, broker.url)
        runs = [_agent_run(state, broker.url, root / "ready") for _ in range(args.runs)]
        predict = {"batch_64": _predict_run(state, root / "batch.npy"), "batch_1": _predict_run(state, root / "one.npy")}
    startup = statistics.median(r["startup_s"] for r in runs)
    rss = max(r["rss_mb"] for r in runs)
    peak = max(r["peak_rss_mb"] for r in runs)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "setup": {"seeds": args.seeds, "input": [1, args.hw, args.hw], "profile": args.profile},
        "agent": {"startup_s_median": startup, "startup_s_runs": [r["startup_s"] for r in runs],
                  "startup_cpu_s_median": statistics.median(r["startup_cpu_s"] for r in runs), "rss_mb": rss,
                  "peak_rss_mb": peak, "torch_loaded": any(r["torch_loaded"] for r in runs)},
        "predict": predict,
        "targets": {"rss_mb": RSS_TARGET_MB, "startup_s": STARTUP_TARGET_S,
                    "rss_ok": peak < RSS_TARGET_MB, "startup_ok": startup < STARTUP_TARGET_S},
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        a, p = report["agent"], report["predict"]
        print(f"agent, main ({args.profile}) + {args.seeds} seeds at 1x{args.hw}x{args.hw}, "
              f"{os.cpu_count()} CPUs, load {report['machine']['load_avg_1m']:.1f}:")
        print(f"  start-up to ready: median {a['startup_s_median']:.2f} s "
              f"(runs {', '.join(f'{s:.2f}' for s in a['startup_s_runs'])}; target < {STARTUP_TARGET_S} s)")
        print(f"  CPU time to ready: median {a['startup_cpu_s_median']:.2f} s (all threads, incl. onnxruntime spinning)")
        print(f"  resident memory: {a['rss_mb']:.1f} MiB idle, {a['peak_rss_mb']:.1f} MiB peak (target < {RSS_TARGET_MB} MB)")
        print(f"  torch loaded: {a['torch_loaded']}")
        for batch, run in p.items():
            print(f"predict, {batch.replace('_', ' ')}: {run['seconds']:.2f} s, peak {run['peak_rss_mb']:.1f} MiB, "
                  f"torch loaded: {run['torch_loaded']}")
    torch_free = not report["agent"]["torch_loaded"] and not any(r["torch_loaded"] for r in predict.values())
    return 0 if report["targets"]["rss_ok"] and report["targets"]["startup_ok"] and torch_free else 1


if __name__ == "__main__":
    sys.exit(main())
