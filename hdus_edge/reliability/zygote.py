"""``AgentZygote``: start ``hdus-edge agent`` processes in milliseconds, to SIGKILL them hundreds of times.

A fresh ``python -m hdus_edge agent`` spends about a second importing numpy, onnxruntime and the CLI
before it touches its state directory; a crash campaign of 200+ kills would spend most of its time
there. The zygote is one helper process that imports all of that once, then ``fork()``s a child per
request; the child runs the CLI's own ``agent`` command function (state-dir checks, settings,
``DeviceAgent``, ready file, SIGTERM handling) exactly as ``hdus-edge agent`` does. The zygote never
creates a thread pool or a session before forking (thread pools do not survive ``fork``).

Protocol (one JSON line each way, over the zygote's stdin/stdout): ``{"state_dir", "broker",
"ready_file", "digest_interval", "probe"}`` -> ``{"pid"}``. The zygote reaps its children (SIGCHLD).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

logger = logging.getLogger(__name__)

_ZYGOTE = r"""
import json, os, signal, sys
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
from pathlib import Path
import numpy, onnxruntime  # noqa: F401  (imported once, shared by every child)
from hdus_edge.device.daemon import run_agent

def reap(*_):
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass

signal.signal(signal.SIGCHLD, reap)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(log, 2)
        code = 0
        try:
            run_agent(Path(req["state_dir"]), broker=req["broker"], probe_in_subprocess=req["probe"],
                      digest_interval_s=req["digest_interval"], ready_file=Path(req["ready_file"]))
        except BaseException as exc:
            print(f"agent exited: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            code = 1
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
"""


class AgentZygote:
    """Forks ``hdus-edge agent`` processes on request (see module docstring)."""

    def __init__(self, log_file: Path) -> None:
        self.log_file = Path(log_file)
        self._proc: subprocess.Popen[str] | None = None
        self._log: Any = None

    def start(self) -> AgentZygote:
        """Start the zygote and wait until its imports are done (``RuntimeError`` if it dies first)."""
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        self._log = open(self.log_file, "ab")  # noqa: SIM115  # closed in close()
        self._proc = subprocess.Popen([sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._log, text=True, env=env)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError(f"agent zygote did not start; see {self.log_file}")
        return self

    def spawn(self, state_dir: Path, broker: str, ready_file: Path, *, digest_interval: float = 0.5,
              probe: bool = False) -> int:
        """Fork an agent for ``state_dir``; return its pid (it touches ``ready_file`` when ready)."""
        if self._proc is None or self._proc.stdin is None or self._proc.stdout is None:
            raise RuntimeError("zygote not started")
        req = {"state_dir": str(state_dir), "broker": broker, "ready_file": str(ready_file),
               "digest_interval": digest_interval, "probe": probe, "log": str(self.log_file)}
        self._proc.stdin.write(json.dumps(req) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"agent zygote died; see {self.log_file}")
        return int(json.loads(line)["pid"])

    @staticmethod
    def alive(pid: int) -> bool:
        """True while ``pid`` runs (a zombie awaiting the zygote's reaping counts as dead)."""
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def kill(self, pid: int, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Send ``sig`` to the agent ``pid`` and wait until it is gone."""
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while self.alive(pid):
            if time.monotonic() > deadline:
                if sig != signal.SIGKILL:
                    self.kill(pid, signal.SIGKILL)
                    return
                raise TimeoutError(f"agent {pid} did not die")
            time.sleep(0.005)

    def close(self) -> None:
        """Stop the zygote (its running children are the caller's to stop first)."""
        if self._proc is None:
            return
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> AgentZygote:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
