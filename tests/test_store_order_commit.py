"""One unlearn = one index commit (issue 17, part 4): what it must sync, what it may leave unsynced.

The planted-bug tests run the same checks against a store that skips the commit's fsyncs and watch
them fail: the checks can fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hdus_edge import files
from hdus_edge.device import store as store_module
from hdus_edge.device.store import SeedStore, read_index

SEED = b"\x08\x07" * 64
ORDER = b"signed order bytes"
RID = "a" * 32


def _synced_paths(monkeypatch, action) -> list[str]:
    """Run ``action`` and return what each fsync synced (resolved from the fd)."""
    synced: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", recording)
        action()
    return synced


def check_unlearn_commit_is_synced(root: Path, monkeypatch) -> None:
    """The unlearn's only fsyncs are its commit point: the new index's data, then the directory entry."""
    with SeedStore(root) as store:
        store.put_seed("dev-003", 1, SEED, arch="seed-cnn", epoch=0)
        synced = _synced_paths(monkeypatch, lambda: store.apply_unlearn("dev-003", 0, RID, receipt=b"R", order=ORDER))
    assert len(synced) == 2, synced
    assert Path(synced[0]).name.startswith(".tmp-index.json"), synced  # renamed into place afterwards
    assert Path(synced[1]) == root.resolve(), synced


def test_an_unlearn_syncs_the_index_and_its_directory_and_nothing_else(tmp_path, monkeypatch):
    check_unlearn_commit_is_synced(tmp_path / "s", monkeypatch)
    # Everything of the step is in that commit: what a reader (or a restart) sees.
    state = read_index(tmp_path / "s")
    assert "dev-003" in state.tombstones and RID in state.seen and "dev-003" not in state.seeds
    assert state.receipts[RID].data == b"R" and state.orders[RID] == ORDER


def test_planted_bug_a_commit_without_fsync_fails_the_check(tmp_path, monkeypatch):
    def unsynced(path, data, **kwargs):
        files.atomic_write(path, data, durable=False)

    monkeypatch.setattr(store_module, "atomic_write", unsynced)
    with pytest.raises(AssertionError):
        check_unlearn_commit_is_synced(tmp_path / "s", monkeypatch)


def test_the_steps_audit_lines_are_synced_by_the_next_synced_line_or_close(tmp_path, monkeypatch):
    with SeedStore(tmp_path) as store:
        store.put_seed("dev-003", 1, SEED, arch="seed-cnn", epoch=0)
        store.apply_unlearn("dev-003", 0, RID, receipt=b"R", order=ORDER)
        assert store._audit_unsynced
        synced = _synced_paths(monkeypatch, store.close)
    assert any(Path(p).name == "audit.jsonl" for p in synced), synced
    with SeedStore(tmp_path) as store:
        events = [e["event"] for e in store.audit_events()]
    assert events[-3:] == ["delete", "tombstone", "receipt_pending"]


def test_a_receipt_acknowledged_is_dropped_in_memory_and_saved_by_the_next_commit_or_close(tmp_path):
    with SeedStore(tmp_path) as store:
        store.apply_unlearn("dev-003", 0, RID, receipt=b"R", order=ORDER)
        assert store.mark_receipt_sent(RID, durable=False) is True
        assert store.pending_receipts() == []
        # A crash now would find it pending on disk and send it again: at least once, never lost.
        assert RID in read_index(tmp_path).receipts
        store.mark_request_seen("b" * 32)  # any later commit carries the drop
        assert RID not in read_index(tmp_path).receipts
        store.apply_unlearn("dev-004", 0, "c" * 32, receipt=b"R2")
        store.mark_receipt_sent("c" * 32, durable=False)
    assert read_index(tmp_path).receipts == {}  # close saved it


def test_orders_saved_as_files_by_earlier_versions_still_count(tmp_path):
    clock = iter(float(t) for t in range(1, 100))
    with SeedStore(tmp_path, clock=lambda: next(clock)) as store:
        store.apply_unlearn("dev-003", 0, RID, order=ORDER)
        (tmp_path / "orders").mkdir()
        (tmp_path / "orders" / f"{'b' * 32}.order").write_bytes(b"old order")  # applied after RID
        store.mark_request_seen("b" * 32)
        assert store.orders() == {RID: ORDER, "b" * 32: b"old order"}
        before = (tmp_path / "index.json").read_bytes()
        store.save_order("b" * 32, b"old order")  # kept as a file already: nothing written
        store.save_order(RID, b"something else")  # kept in the index already: the first copy stays
        assert (tmp_path / "index.json").read_bytes() == before
        assert store.orders()[RID] == ORDER


def test_an_unsynced_unlink_lost_to_a_power_cut_is_completed_on_open(tmp_path):
    # Prepare: the unlearn committed, then a power cut brought the unlinked seed file back
    with SeedStore(tmp_path) as store:
        store.put_seed("dev-003", 1, SEED, arch="seed-cnn", epoch=0)
        name = store.seed_info("dev-003").file
        store.apply_unlearn("dev-003", 0, RID, receipt=b"R", order=ORDER)
    (tmp_path / "seeds" / name).write_bytes(SEED)
    # Execute
    with SeedStore(tmp_path) as store:
        # Assert: gone again, bytes included, and still refused
        assert store.get_seed("dev-003") is None and not (tmp_path / "seeds" / name).exists()
        assert store.is_tombstoned("dev-003", 0)
        assert [e["event"] for e in store.audit_events()][-1] == "recover_remove"
