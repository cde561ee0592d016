"""Counting the fsyncs of one unlearn order on one agent, end to end (a helper for tests and reports).

What is counted, from the order's delivery until the agent is idle again: every ``os.fsync`` and
``os.fdatasync`` made from Python (the store's index commits and audit lines, ``files.atomic_write``,
the status file) plus one per durable commit of the transport's SQLite outbox (WAL with
``synchronous=FULL`` syncs the log once per commit; SQLite calls fsync from C, out of reach of a
monkeypatch). The path covers the store step, the receipt, the retained-seed clears, the acks that
take messages out of the outbox, the saved order for the digest, the audit lines, the status file
and the housekeeping tick that publishes the digest after an order.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from hdus_edge.device.agent import DeviceAgent
from hdus_edge.reliability.harness import wait_until
from hdus_edge.transport.outbox import Outbox


@dataclass
class SyncCount:
    """fsyncs by where they came from: ``fsync``/``fdatasync`` (Python) and ``outbox`` (SQLite commits)."""

    by_kind: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_kind.values())


@contextmanager
def counting_syncs(monkeypatch) -> Iterator[SyncCount]:
    """Count every fsync in the process while the block runs (see the module docstring)."""
    count = SyncCount()
    lock = threading.Lock()

    def bump(kind: str) -> None:
        with lock:
            count.by_kind[kind] += 1

    def wrap(name: str):
        real = getattr(os, name)

        def counted(fd: int) -> None:
            bump(name)
            real(fd)

        return counted

    real_put, real_remove = Outbox.put, Outbox.remove

    def put(self, topic, payload, retain, *args, **kwargs):
        row = real_put(self, topic, payload, retain, *args, **kwargs)
        if self.path is not None and row > 0:  # a row in the SQLite file (volatile rows have ids <= 0)
            bump("outbox")
        return row

    def remove(self, item_id):
        if self.path is not None and item_id > 0:
            bump("outbox")
        return real_remove(self, item_id)

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", wrap("fsync"))
        patch.setattr(os, "fdatasync", wrap("fdatasync"))
        patch.setattr(Outbox, "put", put)
        patch.setattr(Outbox, "remove", remove)
        yield count


def deliver_and_settle(agent: DeviceAgent, topic: str, payload: bytes) -> None:
    """Hand ``payload`` to the agent as its transport would, then wait until everything it caused is
    done: outbox acked, the digest tick run (its work is under the agent's lock)."""
    agent._on_message(topic, payload, False)
    assert agent.transport.flush(timeout=30), "outbox not acknowledged"
    assert wait_until(lambda: agent._digest_due_at is None, 30), "digest tick did not run"
    with agent._lock:  # the tick's body (digest, audit summary, status) has finished
        pass
    assert agent.transport.flush(timeout=30), "digest not acknowledged"
    assert wait_until(lambda: agent.transport.pending == 0, 30), "acks not processed"
