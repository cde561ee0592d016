"""Probe runs: execute a checked model on a small batch and check the output's shape and values.

``probe_run`` runs in this process. ``probe_in_subprocess`` runs the same probe in a child Python
with an address-space limit and a timeout, so a native crash, a hang or a memory blow-up inside
onnxruntime costs a child process, not the agent. Given a ``LoadPolicy`` the child first runs the
safe-loading checks (``checks.check_onnx``, with onnx's checker and shape inference): the agent then
never loads onnx itself (~18 MiB resident it would keep), and a crash in the checker costs the child too.
A rejection comes back as the same ``OnnxRejectedError`` subclass, with the same message.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import numpy as np

from hdus_edge import errors
from hdus_edge.errors import OnnxRejectedError, ProbeRunError
from hdus_edge.onnx.contract import LoadPolicy, ModelContract
from hdus_edge.onnx.session import make_session

logger = logging.getLogger(__name__)

PROBE_BATCH = 4


def probe_inputs(contract: ModelContract, batch: int = PROBE_BATCH, seed: int = 0) -> np.ndarray:
    """Zeros for the first sample, standard normal for the rest: float32 [batch, C, H, W]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *contract.input_shape)).astype(np.float32)
    x[0] = 0.0
    return x


def probe_run(
    data: bytes,
    contract: ModelContract,
    *,
    batch: int = PROBE_BATCH,
    seed: int = 0,
    providers: Sequence[str] | None = None,
    run_budget_ms: float | None = None,
) -> None:
    """Load ``data`` in onnxruntime and run one batch; ``ProbeRunError`` unless the output is
    float32 [batch, num_classes] and finite, and (with ``run_budget_ms``) the run took at most that."""
    session = make_session(data, providers=providers, intra_op_threads=1)
    x = probe_inputs(contract, batch, seed)
    began = time.perf_counter()
    try:
        outputs = session.run(None, {session.get_inputs()[0].name: x})
    except Exception as exc:  # noqa: BLE001  # onnxruntime's pybind errors have no common base
        raise ProbeRunError(f"probe run failed: {type(exc).__name__}: {exc}") from None
    took_ms = 1e3 * (time.perf_counter() - began)
    check_probe_output(outputs, batch, contract.num_classes)
    if run_budget_ms is not None and took_ms > run_budget_ms:
        raise ProbeRunError(
            f"probe batch of {batch} took {took_ms:.0f} ms, over the budget of {run_budget_ms:g} ms; "
            "every prediction would pay for it"
        )


def check_probe_output(outputs: Sequence[np.ndarray], batch: int, num_classes: int) -> None:
    """Raise ``ProbeRunError`` unless ``outputs`` is one finite float32 [batch, num_classes] array."""
    if len(outputs) != 1:
        raise ProbeRunError(f"probe run gave {len(outputs)} outputs, expected 1")
    y = np.asarray(outputs[0])
    if y.dtype != np.float32 or y.shape != (batch, num_classes):
        raise ProbeRunError(f"probe output is {y.dtype} {list(y.shape)}, expected float32 [{batch}, {num_classes}]")
    if not np.isfinite(y).all():
        raise ProbeRunError(f"probe output has {int((~np.isfinite(y)).sum())} non-finite values (NaN or inf)")


# The child reads the model from stdin, limits itself before importing onnxruntime, and reports
# one JSON line; exit code 0 = passed, 3 = a clean ProbeRunError, anything else = crash.
_CHILD = r"""
import json, resource, sys
mem = int(sys.argv[1]) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
cpu = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
data = sys.stdin.buffer.read()
from hdus_edge.errors import OnnxRejectedError
from hdus_edge.onnx.contract import LoadPolicy, ModelContract
from hdus_edge.onnx.probe import probe_run
contract = ModelContract(**json.loads(sys.argv[3]))
opts = json.loads(sys.argv[4])
candidate = data[:opts["split"]]
try:
    if opts["max_bytes"] > 0:
        from hdus_edge.onnx.checks import check_onnx
        policy = LoadPolicy(max_bytes=opts["max_bytes"])
        if opts["budget_multiple"] is not None:  # the fleet's own seed follows the candidate on stdin
            import onnx
            from hdus_edge.onnx.contract import ComputeBudget
            from hdus_edge.onnx.cost import graph_cost
            reference = graph_cost(onnx.load_from_string(data[opts["split"]:]))
            policy = LoadPolicy(max_bytes=opts["max_bytes"], compute_budget=ComputeBudget(reference, opts["budget_multiple"]))
        check_onnx(candidate, contract, policy)
    probe_run(candidate, contract, run_budget_ms=opts["run_budget_ms"])
except OnnxRejectedError as exc:
    print(json.dumps({"ok": False, "error": exc.message, "kind": type(exc).__name__}), flush=True)
    sys.exit(3)
print(json.dumps({"ok": True}), flush=True)
"""


def probe_in_subprocess(
    data: bytes,
    contract: ModelContract,
    timeout_s: float = 20.0,
    mem_mb: int = 2048,
    policy: LoadPolicy | None = None,
    run_budget_ms: float | None = None,
    budget_reference: bytes | None = None,
    budget_multiple: float | None = None,
) -> None:
    """``probe_run`` in a child process limited to ``mem_mb`` MiB of address space and ``timeout_s``;
    with ``policy``, ``check_onnx`` (its ``max_bytes``, default limits otherwise) runs there first.

    ``run_budget_ms`` bounds the probe batch's run itself (the profile's ``limits.probe_run_ms``).
    With ``policy``, ``budget_reference`` (the fleet's own seed, ONNX bytes) and ``budget_multiple``,
    the seed compute budget is checked there too, before the run (``ComputeBudgetError``): the agent
    process never loads onnx.

    Raises ``ProbeRunError`` when the probe fails, the child crashes (signal), runs out of memory
    or time; a failed check raises its own ``OnnxRejectedError`` subclass. The default memory
    limit leaves room for onnxruntime's thread pools and arenas.
    """
    if policy is not None and policy != LoadPolicy(max_bytes=policy.max_bytes):
        raise ValueError("only a policy's max_bytes travels to the probe child; check other limits in-process")
    checked_budget = policy is not None and budget_reference is not None and budget_multiple is not None
    if timeout_s <= 0 or mem_mb <= 0:
        raise ValueError("timeout_s and mem_mb must be positive")
    spec = json.dumps({"height": contract.height, "width": contract.width,
                       "num_classes": contract.num_classes, "channels": contract.channels})
    # OMP/ORT thread pools each reserve stack address space; one thread keeps the child small.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _CHILD, str(int(mem_mb)), str(max(1, int(timeout_s) + 1)), spec,
           json.dumps({"max_bytes": policy.max_bytes if policy is not None else 0, "run_budget_ms": run_budget_ms,
                       "budget_multiple": budget_multiple if checked_budget else None, "split": len(data)})]
    try:
        stdin = bytes(data) + (bytes(budget_reference) if checked_budget else b"")  # type: ignore[arg-type]
        done = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout_s, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise ProbeRunError(f"probe run did not finish within {timeout_s:g} s; the child was killed") from None
    report = _last_json(done.stdout)
    if done.returncode == 0 and report.get("ok") is True:
        return
    if done.returncode == 3 and "error" in report:
        kind = getattr(errors, str(report.get("kind", "")), ProbeRunError)
        if not (isinstance(kind, type) and issubclass(kind, OnnxRejectedError)):
            kind = ProbeRunError
        raise kind(str(report["error"]))
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name if -done.returncode in signal.valid_signals() else "?"
        raise ProbeRunError(f"probe run crashed with signal {name} ({-done.returncode})")
    tail = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
    raise ProbeRunError(
        f"probe child exited with code {done.returncode} (memory limit {mem_mb} MiB?): {tail[0][:300]}"
    )


def _last_json(stdout: bytes) -> dict[str, object]:
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return {}
