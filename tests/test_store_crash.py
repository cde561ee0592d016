"""Crash safety: kill every store operation at every file-system step, reopen, check nothing is half done.

A "crash" is an exception raised from os.replace / os.unlink / os.fsync / os.write at the k-th call
(the process would die there); the store object is then abandoned and a new one opens the directory.
"""

import os
import random

import pytest

from hdus_edge.device.store import SeedStore
from hdus_edge.protocol.messages import sha256_hex

OLD, NEW, OTHER = (random.Random(k).randbytes(3000) for k in (1, 2, 3))


class Crash(BaseException):
    """Not an Exception, so no handler in the store can swallow it."""


class CrashAt:
    """Counts file-system calls; raises Crash on call number ``at`` (never when ``at`` is None)."""

    NAMES = ("replace", "unlink", "fsync", "write")

    def __init__(self, monkeypatch, at):
        self.calls = 0
        self.at = at
        for name in self.NAMES:
            monkeypatch.setattr(os, name, self._wrap(getattr(os, name)))

    def _wrap(self, real):
        def wrapped(*args, **kwargs):
            self.calls += 1
            if self.at is not None and self.calls == self.at:
                raise Crash
            return real(*args, **kwargs)

        return wrapped


def _base(root) -> None:
    with SeedStore(root, clock=lambda: 1.0) as store:
        store.put_seed("a", 1, OLD, epoch=0, arch="s")
        store.put_seed("b", 1, OTHER, epoch=0, arch="s")
        store.record_receipt_pending("req-7", b"R7")


def _snapshot(store: SeedStore) -> dict:
    return {
        "seeds": {s.owner: (s.version, s.sha256) for s in store.list_seeds()},
        "bytes": {s.owner: store.get_seed(s.owner) for s in store.list_seeds()},
        "tombstones": [(t.target, t.epoch, t.request_id) for t in store.tombstones()],
        "seen": store.seen_requests(),
        "receipts": [(r.request_id, r.data) for r in store.pending_receipts()],
        "highest": {o: store.highest_version(o) for o in ("a", "b")},
        "orders": store.orders(),
    }


def _bytes_on_disk(root, data: bytes) -> bool:
    needle = data[1000:1064]
    return any(needle in p.read_bytes() for p in root.rglob("*") if p.is_file())


OPERATIONS = {
    "replace_seed": lambda s: s.put_seed("a", 2, NEW, epoch=0, arch="s"),
    "new_owner": lambda s: s.put_seed("c", 1, NEW, epoch=0, arch="s"),
    "delete": lambda s: s.delete_seed("a"),
    "unlearn": lambda s: s.apply_unlearn("a", 0, "req-1", receipt=lambda sha: f"receipt {sha}".encode(),
                                         order=b"signed order req-1"),
    "receipt_sent": lambda s: s.mark_receipt_sent("req-7"),
    "mark_seen": lambda s: s.mark_request_seen("req-5"),
}


def _states(tmp_path, monkeypatch, op) -> tuple[dict, dict, int]:
    """Before/after snapshots of ``op`` run without a crash, and how many fs calls it makes."""
    root = tmp_path / "reference"
    _base(root)
    with SeedStore(root, clock=lambda: 1.0) as store:
        before = _snapshot(store)
        with monkeypatch.context() as m:
            counter = CrashAt(m, None)
            OPERATIONS[op](store)
        after = _snapshot(store)
    return before, after, counter.calls


@pytest.mark.parametrize("op", sorted(OPERATIONS))
def test_crash_at_every_step_leaves_before_or_after(tmp_path, monkeypatch, op):
    before, after, steps = _states(tmp_path, monkeypatch, op)
    assert before != after and steps >= 3
    outcomes = set()
    for k in range(1, steps + 1):
        # Prepare
        root = tmp_path / f"{op}-{k}"
        _base(root)
        store = SeedStore(root, clock=lambda: 1.0)
        # Execute: crash at step k, then abandon the object like a dead process would
        with monkeypatch.context() as m:
            CrashAt(m, k)
            with pytest.raises(Crash):
                OPERATIONS[op](store)
        store.close()
        # Assert: the reopened store shows exactly the old state or exactly the new one
        with SeedStore(root, clock=lambda: 1.0) as reopened:
            state = _snapshot(reopened)
            assert state in (before, after), f"crash at step {k} of {steps} left a mixed state"
            outcomes.add("after" if state == after else "before")
            assert not [p for p in root.rglob(".tmp-*")], "temp files survived recovery"
            on_disk = {p.name for p in (root / "seeds").iterdir()}
            assert on_disk == {s.file for s in reopened.list_seeds()}
            if op == "unlearn" and state["tombstones"]:
                # A receipt pending (or a tombstone) means the seed is gone, bytes included.
                assert reopened.get_seed("a") is None and not _bytes_on_disk(root, OLD)
    assert outcomes == {"before", "after"}  # both sides of the commit point were exercised


def test_half_written_files_and_strays_are_cleaned_on_open(tmp_path):
    # Prepare: a store with one good seed, then litter it the way a crash could
    root = tmp_path / "s"
    _base(root)
    seeds = root / "seeds"
    (seeds / ".tmp-a@0-9.onnx.1234").write_bytes(NEW[:1000])  # torn temp seed
    (root / ".tmp-index.json.abcd").write_bytes(b'{"format":1,"seeds":[')  # torn temp index
    (seeds / "a@0-9.onnx").write_bytes(NEW)  # renamed but never committed
    (seeds / "b@0-1.onnx").write_bytes(OTHER[:1500])  # an indexed seed, truncated
    # Execute
    with SeedStore(root, clock=lambda: 1.0) as store:
        # Assert
        assert store.get_seed("a") == OLD
        assert store.get_seed("b") is None and [s.owner for s in store.list_seeds()] == ["a"]
        files = sorted(p.name for p in root.rglob("*") if p.is_file())
        assert files == [".lock", "a@0-1.onnx", "audit.jsonl", "index.json"]
        events = [e["event"] for e in store.audit_events()]
        assert "recover_drop" in events and "recover_remove" in events
        assert sha256_hex(OLD) == store.seed_info("a").sha256


def test_crash_during_recovery_is_recovered_next_time(tmp_path, monkeypatch):
    root = tmp_path / "s"
    _base(root)
    (root / "seeds" / "b@0-1.onnx").write_bytes(b"bad")
    (root / "seeds" / "zz@0-1.onnx").write_bytes(NEW)
    for k in (1, 2, 3, 5):
        with monkeypatch.context() as m:
            CrashAt(m, k)
            try:
                SeedStore(root, clock=lambda: 1.0).close()
            except Crash:
                pass
    with SeedStore(root, clock=lambda: 1.0) as store:
        assert [s.owner for s in store.list_seeds()] == ["a"] and store.get_seed("a") == OLD
        assert not (root / "seeds" / "zz@0-1.onnx").exists()
