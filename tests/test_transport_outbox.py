"""The durable outbox: messages survive a reopen until removed; order is publish order."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hdus_edge.errors import StoreError
from hdus_edge.transport.outbox import FILENAME, Outbox


def test_pending_survives_reopen_in_order(tmp_path: Path) -> None:
    # Prepare
    box = Outbox(tmp_path)
    a = box.put("t/a", b"\x00\x01", retain=True)
    b = box.put("t/b", b"", retain=False)
    c = box.put("t/c", b"c" * 1000, retain=False)
    box.remove(b)
    box.close()

    # Execute
    again = Outbox(tmp_path)
    items = again.pending()

    # Assert
    assert [(i.id, i.topic, i.payload, i.retain) for i in items] == [
        (a, "t/a", b"\x00\x01", True),
        (c, "t/c", b"c" * 1000, False),
    ]
    assert len(again) == 2
    assert [i.id for i in again.pending(exclude=[a])] == [c]
    again.close()


def test_ids_are_never_reused(tmp_path: Path) -> None:
    # Prepare: remove the newest row; a reused id would make a later PUBACK delete the wrong row
    box = Outbox(tmp_path)
    first = box.put("t", b"1", retain=False)
    box.remove(first)
    box.close()

    # Execute
    box = Outbox(tmp_path)
    second = box.put("t", b"2", retain=False)

    # Assert
    assert second > first
    box.close()


def test_memory_outbox_is_not_durable() -> None:
    box = Outbox(None)
    box.put("t", b"x", retain=False)
    assert len(box) == 1 and box.path is None
    box.close()


def test_corrupt_outbox_is_a_store_error(tmp_path: Path) -> None:
    # Prepare
    (tmp_path / FILENAME).write_bytes(b"this is not a sqlite database" * 100)

    # Execute / Assert
    with pytest.raises(StoreError, match="outbox"):
        Outbox(tmp_path)


def test_committed_rows_are_on_disk_without_close(tmp_path: Path) -> None:
    # Prepare: no close(), as after a crash
    box = Outbox(tmp_path)
    box.put("t/x", b"payload", retain=False)

    # Execute: a second, independent reader sees the committed row
    rows = sqlite3.connect(tmp_path / FILENAME).execute("SELECT topic, payload FROM outbox").fetchall()

    # Assert
    assert rows == [("t/x", b"payload")]
    box.close()


def test_a_volatile_message_is_held_in_memory_sent_again_on_reconnect_and_gone_after_a_restart(tmp_path: Path,
                                                                                               monkeypatch) -> None:
    # Prepare: count what reaches the disk (SQLite commits are reported to files.count_syncs)
    from hdus_edge import files

    box = Outbox(tmp_path)
    durable = box.put("t/durable", b"d", retain=True)
    syncs = files.sync_count()
    # Execute
    volatile = box.put("t/receipt", b"r", retain=True, durable=False)
    # Assert: no commit, but pending (a reconnect re-publishes it) until removed
    assert files.sync_count() == syncs
    assert volatile <= 0 < durable
    assert [i.topic for i in box.pending()] == ["t/durable", "t/receipt"] and len(box) == 2
    assert [i.topic for i in box.pending(exclude=[volatile])] == ["t/durable"]
    box.remove(volatile)
    assert files.sync_count() == syncs and [i.id for i in box.pending()] == [durable]
    box.put("t/receipt2", b"r", retain=True, durable=False)
    box.close()
    # A restart keeps the durable message only: the caller owns the volatile one's durable copy
    again = Outbox(tmp_path)
    assert [i.topic for i in again.pending()] == ["t/durable"]
    again.close()
