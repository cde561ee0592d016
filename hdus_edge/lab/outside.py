"""Watch a fleet from another process: where a real requester or operator stands.

Benchmarks run N agents (each with four or five threads) in one Python process. A requester or a
receipt clock in that same process waits for the GIL behind all of them: at 50 agents on two cores
it saw receipts about 3 s after the broker delivered them (an external subscriber saw them within
0.8 s). The helpers here run in a spawned child process instead. Arrival times are
``time.monotonic()``, which on Linux is CLOCK_MONOTONIC and so comparable across processes.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_SPAWN = mp.get_context("spawn")  # a fork of a process with hundreds of threads is not safe


def _observe(broker_url: str, filters: list[str], out: Any, ready: Any, stop: Any) -> None:
    """Child: subscribe to ``filters``; put ``(topic, monotonic arrival)`` for each non-empty message."""
    from hdus_edge.transport.mqtt import MqttTransport

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        if payload:
            out.put((topic, time.monotonic()))

    transport = MqttTransport(broker_url, f"outside-{os.getpid()}", handler=on_message, clean_session=True)
    try:
        transport.subscribe(filters)
        transport.connect(timeout=30)
        ready.set()
        stop.wait()
    finally:
        transport.close()


class TopicClock:
    """First arrival, seen from a child process, of each message on ``filters`` (by topic)."""

    def __init__(self, broker_url: str, filters: list[str], start_timeout: float = 60.0) -> None:
        self._queue = _SPAWN.Queue()
        self._ready = _SPAWN.Event()
        self._stop = _SPAWN.Event()
        self._proc = _SPAWN.Process(target=_observe, args=(broker_url, filters, self._queue, self._ready, self._stop),
                                    name="hdus-topic-clock", daemon=True)
        self._proc.start()
        self._first: dict[str, float] = {}
        if not self._ready.wait(start_timeout):
            self.close()
            raise TimeoutError(f"the outside observer did not connect to {broker_url} in {start_timeout:g} s")

    def first(self) -> dict[str, float]:
        """Topic -> first arrival (``time.monotonic()``), for everything seen so far."""
        while True:
            try:
                topic, at = self._queue.get_nowait()
            except queue.Empty:
                break
            self._first.setdefault(topic, at)
        return dict(self._first)

    def close(self) -> None:
        """Stop the child (it disconnects cleanly first)."""
        self._stop.set()
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        self.first()  # drain what arrived before the stop

    def __enter__(self) -> TopicClock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _request_in_child(admin_root: str, broker_url: str, fleet: str, target: str, wait_s: float,
                      revoke: bool = False) -> dict[str, Any]:
    from hdus_edge.state import AdminDir
    from hdus_edge.unlearn.commands import unlearn

    # What 'hdus-edge unlearn' does: holders from the admin's registry (not a quiet window, which a
    # loaded machine outlasts), evidence saved, the target marked forgotten for the next order.
    admin = AdminDir(Path(admin_root))
    outcome, _ = unlearn(admin, target, broker_url=broker_url, wait_s=wait_s)
    out = {"latency_s": outcome.latency_s, "holders": list(outcome.holders), "receipts": len(outcome.receipts),
           "missing": list(outcome.missing), "request_id": outcome.order.request_id,
           "order": outcome.order_raw.hex()}
    if revoke:  # and then, as the CLI does, the revocation (logins, list, clears) at every broker
        from hdus_edge.unlearn.revocation import revoke as revoke_device

        out["revocation"] = revoke_device(admin, outcome.order_raw, broker_url=broker_url).to_json()
    return out


class OutsideRequester:
    """``request_unlearn`` as the admin, in spawned child processes reused for every order
    (``workers`` of them, so that as many orders can be published at the same moment)."""

    def __init__(self, admin_root: Path, workers: int = 1) -> None:
        self.admin_root = str(admin_root)
        self._pool = ProcessPoolExecutor(max_workers=max(1, workers), mp_context=_SPAWN)

    def unlearn(self, broker_url: str, fleet: str, target: str, wait_s: float = 30.0,
                revoke: bool = False) -> dict[str, Any]:
        """Order ``target`` forgotten; returns latency_s (None: incomplete), holders, receipts, missing
        (and with ``revoke``, what ``revoke`` did afterwards, as ``hdus-edge unlearn`` does)."""
        return self._pool.submit(_request_in_child, self.admin_root, broker_url, fleet, target, wait_s, revoke).result()

    def unlearn_many(self, broker_url: str, fleet: str, targets: list[str], wait_s: float = 60.0,
                     revoke: bool = False) -> list[dict[str, Any]]:
        """Order every one of ``targets`` forgotten at once (up to ``workers`` in parallel); outcomes in order."""
        futures = [self._pool.submit(_request_in_child, self.admin_root, broker_url, fleet, t, wait_s, revoke)
                   for t in targets]
        return [f.result() for f in futures]

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> OutsideRequester:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
