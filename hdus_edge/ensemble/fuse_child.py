"""Build the fused ensemble graph in a child process, so the agent itself never loads onnx.

Graph building needs the onnx library (protobuf messages for every member, the fused graph, the
opset converter): about 11 MiB resident that glibc keeps after the first fuse, and a noticeable part
of start-up on a Pi. The agent fuses on a background thread anyway (per-member sessions serve in the
meantime, ``EnsembleRuntime(background_fuse=True)``), so it hands the members' bytes to a short-lived
``python -c`` child that runs ``fuse.fuse_ensemble`` and writes the fused model's bytes back. The
child gets an address-space and CPU limit like the probe child; any failure is an ``EnsembleError``
and the per-member snapshot keeps serving. The result is the same bytes as an in-process fuse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping

from hdus_edge.errors import EnsembleError

# stdin: one JSON line (ids in order, byte sizes, lam, space, pack, max_bytes), then the main model's
# and each seed's bytes back to back; stdout: the fused model's bytes.
_CHILD = r"""
import json, resource, sys
mem = int(sys.argv[1]) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
cpu = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
head = json.loads(sys.stdin.buffer.readline())
data = sys.stdin.buffer.read()
from hdus_edge.ensemble.fuse import fuse_ensemble
from hdus_edge.onnx.checks import parse_onnx
blobs, at = [], 0
for size in head["sizes"]:
    blobs.append(data[at:at + size])
    at += size
main = parse_onnx(blobs[0], max_bytes=head["max_bytes"])
seeds = {d: parse_onnx(b, max_bytes=head["max_bytes"]) for d, b in zip(head["ids"], blobs[1:])}
fused = fuse_ensemble(main, seeds, head["lam"], head["space"], member_outputs=False, pack=head["pack"])
sys.stdout.buffer.write(fused.SerializeToString())
"""


def fuse_in_subprocess(
    main: bytes,
    seeds: Mapping[str, bytes],
    lam: float,
    space: str,
    *,
    pack: bool = True,
    max_bytes: int = 512 * 1024 * 1024,
    timeout_s: float = 120.0,
    mem_mb: int = 2048,
) -> bytes:
    """The fused model's bytes for ``main`` + ``seeds`` (device id -> bytes), built in a child process.

    Raises ``EnsembleError`` when the child fails, crashes, or runs out of time or memory.
    """
    ids = sorted(seeds)
    head = {"ids": ids, "sizes": [len(main), *(len(seeds[d]) for d in ids)], "lam": float(lam), "space": space,
            "pack": bool(pack), "max_bytes": int(max_bytes)}
    payload = json.dumps(head).encode() + b"\n" + bytes(main) + b"".join(bytes(seeds[d]) for d in ids)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _CHILD, str(int(mem_mb)), str(max(1, int(timeout_s) + 1))]
    try:
        done = subprocess.run(cmd, input=payload, capture_output=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise EnsembleError(f"building the fused graph took over {timeout_s:g} s; the child was killed") from None
    if done.returncode != 0 or not done.stdout:
        tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise EnsembleError(f"the fuse child exited with code {done.returncode}: {tail[0][:300]}")
    return done.stdout
