"""Agents SIGKILLed while writing seeds and while unlearning: on restart the store is consistent,
the unlearn completes, and its receipt is sent, exactly once in effect."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import fleet_kit as fk

from hdus_edge.device.store import SeedStore
from hdus_edge.protocol.messages import sha256_hex
from hdus_edge.unlearn.request import collect_receipts, request_unlearn


def _spawn(state, broker: str, ready: Path) -> subprocess.Popen:
    ready.unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "hdus_edge", "agent", "--state-dir", str(state.root), "--broker", broker,
         "--no-probe-subprocess", "--digest-interval", "0.5", "--ready-file", str(ready)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _wait_ready(proc: subprocess.Popen, ready: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"agent exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError("agent did not become ready")
        time.sleep(0.02)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _assert_store_consistent(store_dir: Path, expected: set[str]) -> None:
    assert not [p for p in store_dir.rglob(".tmp-*")], "orphan temp files"
    with SeedStore(store_dir) as store:
        held = {s.owner for s in store.list_seeds()}
        assert held == expected, (held, expected)
        for s in store.list_seeds():
            data = store.get_seed(s.owner)
            assert data is not None and sha256_hex(data) == s.sha256
        # Invariant: a receipt committed (pending or sent) implies its seed is gone.
        for t in store.tombstones():
            assert store.seed_info(t.target) is None


def test_sigkill_during_seed_writes_and_unlearn(tmp_path, broker_url):
    rng = random.Random(7)
    ids = ("d0", "d1", "d2", "d3")
    _, states = fk.provision(tmp_path, broker_url, ids=ids)
    peers = {i: fk.start_agent(states[i], broker_url) for i in ids[1:]}
    victim, ready = states["d0"], tmp_path / "ready"
    try:
        # Seeds arrive right after connect: kill d0 at random moments while it installs them.
        for _ in range(4):
            proc = _spawn(victim, broker_url, ready)
            _wait_ready(proc, ready)
            time.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            _assert_store_consistent(victim.store_dir, _held(victim.store_dir))
        # Unlearn d3 while d0 is being killed and restarted.
        admin_dir = tmp_path / "admin"
        from hdus_edge.state import AdminDir

        admin = AdminDir(admin_dir)
        proc = _spawn(victim, broker_url, ready)
        _wait_ready(proc, ready)
        outcome_box = {}

        def kill_soon() -> None:
            time.sleep(rng.uniform(0.0, 0.05))
            os.kill(proc.pid, signal.SIGKILL)

        import threading

        killer = threading.Thread(target=kill_soon)
        killer.start()
        outcome_box["o"] = request_unlearn(
            broker_url=broker_url, fleet="t", admin_key=admin.key().public_key, signer=admin.key(), issuer="admin",
            target="d3", epoch=0, wait_s=3.0,
        )
        killer.join()
        proc.wait()
        # Restart: the unlearn completes and the receipt goes out.
        proc = _spawn(victim, broker_url, ready)
        _wait_ready(proc, ready)
        rid = outcome_box["o"].order.request_id
        deadline = time.monotonic() + 20
        receipts = {}
        while "d0" not in receipts and time.monotonic() < deadline:
            receipts = collect_receipts(broker_url=broker_url, fleet="t", admin_key=admin.key().public_key,
                                        request_id=rid, wait_s=0.5)
        assert "d0" in receipts
        _stop(proc)
        _assert_store_consistent(victim.store_dir, {"d1", "d2"})
        with SeedStore(victim.store_dir) as store:
            assert store.is_request_seen(rid) and store.pending_receipts() == []
            applied = [e for e in store.audit_events() if e["event"] == "receipt" and e.get("request_id") == rid]
            assert len(applied) >= 1  # sent at least once; the request id makes it once in effect
            assert store.is_tombstoned("d3", 0)
    finally:
        for a in peers.values():
            a.stop()


def _held(store_dir: Path) -> set[str]:
    with SeedStore(store_dir) as store:
        return {s.owner for s in store.list_seeds()}
