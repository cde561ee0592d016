"""The seed store: seeds, versions, tombstones, request ids, receipts, audit, recovery of bad files."""

import os
import random

import pytest

from hdus_edge.device.store import AUDIT_NAME, INDEX_NAME, SeedStore
from hdus_edge.errors import ReplayError, StoreError, TombstonedError
from hdus_edge.protocol.messages import SeedEnvelope, sha256_hex


class Clock:
    """A clock that ticks one second per reading, so records are reproducible."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _bytes(seed: int, n: int = 4096) -> bytes:
    return random.Random(seed).randbytes(n)


def _open(root) -> SeedStore:
    return SeedStore(root, clock=Clock())


def _files_containing(root, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


@pytest.fixture
def store(tmp_path):
    with _open(tmp_path / "store") as s:
        yield s


def test_put_get_list(store):
    # Prepare
    a, b = _bytes(1), _bytes(2)
    # Execute
    sa = store.put_seed("a", 1, a, epoch=0, arch="seed-4k", meta={"num_classes": 10})
    store.put_seed("b", 7, b, epoch=3, arch="seed-6k")
    # Assert
    assert store.get_seed("a") == a and store.get_seed("b") == b and store.get_seed("c") is None
    assert [s.owner for s in store.list_seeds()] == ["a", "b"]
    assert sa.sha256 == sha256_hex(a) and sa.size == len(a) and sa.meta == {"num_classes": 10}
    assert store.seed_path("a").read_bytes() == a
    assert store.highest_version("b") == (3, 7)


def test_put_envelope_keeps_the_contract(store):
    env = SeedEnvelope.build(
        owner="a", to="me", version=2, onnx=_bytes(3), arch="seed", input_shape=(-1, 1, 8, 8), num_classes=10,
        reference_sha256="f" * 64, epoch=1,
    )  # fmt: skip
    seed = store.put_envelope(env)
    assert seed.meta == {"input_shape": [-1, 1, 8, 8], "num_classes": 10, "reference_sha256": "f" * 64}
    assert (seed.version, seed.epoch, seed.sha256) == (2, 1, env.sha256)


def test_wrong_sha_is_a_programming_error(store):
    with pytest.raises(ValueError, match="not the hash"):
        store.put_seed("a", 1, b"x", epoch=0, arch="s", sha256="0" * 64)
    assert store.list_seeds() == []


def test_versions_only_go_up_even_after_delete(tmp_path):
    root = tmp_path / "s"
    with _open(root) as store:
        store.put_seed("a", 2, _bytes(1), epoch=0, arch="s")
        for version in (1, 2):
            with pytest.raises(ReplayError):
                store.put_seed("a", version, _bytes(9), epoch=0, arch="s")
        assert store.get_seed("a") == _bytes(1)  # the refused put changed nothing
        assert store.delete_seed("a") == sha256_hex(_bytes(1))
        assert store.delete_seed("a") is None
        with pytest.raises(ReplayError):
            store.put_seed("a", 2, _bytes(1), epoch=0, arch="s")
    with _open(root) as store:  # the floor survives a restart
        with pytest.raises(ReplayError):
            store.put_seed("a", 2, _bytes(1), epoch=0, arch="s")
        store.put_seed("a", 3, _bytes(3), epoch=0, arch="s")
        # A re-admitted incarnation (higher epoch) may start its versions again; an older epoch may not.
        store.put_seed("a", 1, _bytes(4), epoch=1, arch="s")
        with pytest.raises(ReplayError):
            store.put_seed("a", 99, _bytes(5), epoch=0, arch="s")
        assert store.get_seed("a") == _bytes(4)


def test_replacing_a_seed_leaves_one_file(store):
    store.put_seed("a", 1, _bytes(1), epoch=0, arch="s")
    store.put_seed("a", 2, _bytes(2), epoch=0, arch="s")
    assert sorted(p.name for p in (store.root / "seeds").iterdir()) == ["a@0-2.onnx"]
    assert _files_containing(store.root, _bytes(1)[:64]) == []


def test_unlearn_deletes_tombstones_and_refuses(store):
    # Prepare
    data = _bytes(1)
    store.put_seed("a", 1, data, epoch=0, arch="s")
    store.put_seed("b", 1, _bytes(2), epoch=0, arch="s")
    # Execute
    removed = store.apply_unlearn("a", 0, "req-1")
    # Assert
    assert removed == sha256_hex(data)
    assert store.get_seed("a") is None and store.get_seed("b") == _bytes(2)
    assert store.is_tombstoned("a", 0) and not store.is_tombstoned("a", 1) and not store.is_tombstoned("b", 0)
    with pytest.raises(TombstonedError, match="req-1"):
        store.put_seed("a", 5, data, epoch=0, arch="s")
    with pytest.raises(TombstonedError):
        store.check_seed("a", 6, 0)
    store.put_seed("a", 1, _bytes(3), epoch=1, arch="s")  # re-admitted with a new epoch
    assert store.get_seed("a") == _bytes(3)


def test_old_order_spares_a_readmitted_seed(store):
    store.put_seed("a", 1, _bytes(1), epoch=2, arch="s")
    assert store.apply_unlearn("a", 1, "req-old") is None
    assert store.get_seed("a") == _bytes(1)
    assert [t.epoch for t in store.tombstones()] == [1]


def test_tombstone_epoch_never_goes_down(store):
    store.add_tombstone("a", 3, "r3")
    store.add_tombstone("a", 1, "r1")
    assert [(t.epoch, t.request_id) for t in store.tombstones()] == [(3, "r3")]
    assert store.is_tombstoned("a", 2)


def test_request_ids_are_used_once(tmp_path):
    root = tmp_path / "s"
    with _open(root) as store:
        assert store.mark_request_seen("r1") is True
        assert store.mark_request_seen("r1") is False
        store.apply_unlearn("a", 0, "r2")
        with pytest.raises(ReplayError):
            store.apply_unlearn("a", 0, "r2")
    with _open(root) as store:
        assert store.seen_requests() == ["r1", "r2"]
        assert store.mark_request_seen("r2") is False
        with pytest.raises(ReplayError):
            store.apply_unlearn("b", 0, "r1")
        assert store.tombstones()[0].target == "a" and len(store.tombstones()) == 1


def test_no_seed_bytes_remain_anywhere_after_delete_and_unlearn(store):
    # Prepare
    a, b = _bytes(11, 8192), _bytes(12, 8192)
    store.put_seed("a", 1, a, epoch=0, arch="s")
    store.put_seed("b", 1, b, epoch=0, arch="s")
    assert _files_containing(store.root, a[:32]) and _files_containing(store.root, b[:32])
    # Execute
    store.delete_seed("a")
    store.apply_unlearn("b", 0, "req-9", receipt=lambda sha: b"receipt for " + sha.encode())
    # Assert: no file under the root holds any 32-byte window of either seed
    for data in (a, b):
        for start in range(0, len(data) - 32, 1024):
            assert _files_containing(store.root, data[start : start + 32]) == []
        assert _files_containing(store.root, data.hex()[:64].encode()) == []
    assert list((store.root / "seeds").iterdir()) == []


def test_pending_receipts_survive_restart_until_sent(tmp_path):
    root = tmp_path / "s"
    with _open(root) as store:
        store.put_seed("a", 1, _bytes(1), epoch=0, arch="s")
        removed = store.apply_unlearn("a", 0, "req-1", receipt=lambda sha: f"R:{sha}".encode())
        store.record_receipt_pending("req-2", b"R2")
    with _open(root) as store:
        pending = store.pending_receipts()
        assert [(p.request_id, p.data) for p in pending] == [("req-1", f"R:{removed}".encode()), ("req-2", b"R2")]
        assert store.mark_receipt_sent("req-1") is True and store.mark_receipt_sent("req-1") is False
    with _open(root) as store:
        assert [p.request_id for p in store.pending_receipts()] == ["req-2"]


def test_audit_records_every_decision(store):
    store.put_seed("a", 1, _bytes(1), epoch=0, arch="s")
    with pytest.raises(ReplayError):
        store.put_seed("a", 1, _bytes(1), epoch=0, arch="s")
    store.apply_unlearn("a", 0, "req-1", receipt=b"R")
    with pytest.raises(TombstonedError):
        store.put_seed("a", 2, _bytes(2), epoch=0, arch="s")
    store.mark_receipt_sent("req-1")
    store.audit("reject", sender="x", reason="bad signature")
    events = store.audit_events()
    assert [e["event"] for e in events] == [
        "accept", "reject", "delete", "tombstone", "receipt_pending", "reject", "receipt_sent", "reject",
    ]  # fmt: skip
    assert events[1]["reason"] == "replay" and events[5]["reason"] == "tombstoned"
    assert events[2]["sha256"] == sha256_hex(_bytes(1)) and events[2]["request_id"] == "req-1"
    assert all(isinstance(e["at"], float) for e in events)


def test_audit_refuses_payloads(store):
    with pytest.raises(TypeError, match="bytes"):
        store.audit("accept", data=b"onnx")
    with pytest.raises(TypeError):
        store.audit("accept", data=[bytearray(b"x")])
    with pytest.raises(ValueError, match="hash"):
        store.audit("accept", data="ab" * 4096)
    assert store.audit_events() == []


def test_a_second_open_is_refused(tmp_path):
    with _open(tmp_path / "s"):
        with pytest.raises(StoreError, match="already open"):
            _open(tmp_path / "s")
    _open(tmp_path / "s").close()  # free again once closed


def test_corrupt_index_refuses_to_open(tmp_path):
    root = tmp_path / "s"
    with _open(root) as store:
        store.apply_unlearn("a", 0, "r1")
    (root / INDEX_NAME).write_bytes(b'{"format": 1, "seeds": [')
    with pytest.raises(StoreError, match="corrupt"):
        _open(root)
    _open(tmp_path / "fresh").close()


def test_seed_corrupted_at_rest_is_never_served(store):
    store.put_seed("a", 1, _bytes(1), epoch=0, arch="s")
    path = store.seed_path("a")
    path.write_bytes(_bytes(1)[:100])  # half of it
    assert store.get_seed("a") is None
    assert store.list_seeds() == [] and not path.exists()
    assert store.audit_events()[-1]["event"] == "corrupt"


def test_torn_audit_line_is_cut_on_open(tmp_path):
    root = tmp_path / "s"
    with _open(root) as store:
        store.audit("note", n=1)
    with open(root / AUDIT_NAME, "ab") as fh:
        fh.write(b'{"at":1,"event":"no')
    with _open(root) as store:
        store.audit("note", n=2)
        assert [e["n"] for e in store.audit_events()] == [1, 2]


def test_closed_store_refuses_writes(tmp_path):
    store = _open(tmp_path / "s")
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.mark_request_seen("r1")


def test_files_are_private(store):
    store.put_seed("a", 1, _bytes(1), epoch=0, arch="s")
    assert os.stat(store.root / "seeds").st_mode & 0o077 == 0
    assert os.stat(store.root / AUDIT_NAME).st_mode & 0o077 == 0
