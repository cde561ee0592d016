"""files.py: every fsync counted; an unsynced atomic write is still atomic for readers."""

from __future__ import annotations

import os

from hdus_edge import files


def test_a_durable_write_costs_two_counted_fsyncs_an_unsynced_one_none(tmp_path, monkeypatch):
    # Prepare: count the real calls too, so the counter cannot drift from them
    real, calls = os.fsync, []
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    before = files.sync_count()
    # Execute
    files.atomic_write(tmp_path / "a.json", b"1")
    middle = files.sync_count()
    files.write_json(tmp_path / "status.json", {"x": 1}, durable=False)
    # Assert
    assert middle - before == 2 == len(calls)
    assert files.sync_count() == middle and len(calls) == 2
    assert (tmp_path / "status.json").read_text() == '{\n  "x": 1\n}\n'
    assert not list(tmp_path.glob(f"{files.TMP_PREFIX}*"))


def test_the_thread_count_leaves_out_other_threads(tmp_path):
    import threading

    mine = files.thread_sync_count()
    other = threading.Thread(target=files.atomic_write, args=(tmp_path / "b", b"2"))
    other.start()
    other.join()
    assert files.thread_sync_count() == mine
    files.atomic_write(tmp_path / "c", b"3")
    assert files.thread_sync_count() == mine + 2
