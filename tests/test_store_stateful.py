"""Random sequences of store operations against a plain-Python model, reopening the store at random."""

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from hdus_edge.device.store import SeedStore
from hdus_edge.errors import ReplayError, TombstonedError
from hdus_edge.protocol.messages import sha256_hex

OWNERS = st.sampled_from(["a", "b", "c"])
REQUESTS = st.sampled_from(["r1", "r2", "r3", "r4"])


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="hdus-store-"))
        self.store = SeedStore(self.dir, clock=lambda: 7.0)
        # The model: what the store must show.
        self.seeds: dict[str, tuple[int, int, bytes]] = {}  # owner -> (epoch, version, data)
        self.highest: dict[str, tuple[int, int]] = {}
        self.tombs: dict[str, int] = {}
        self.seen: set[str] = set()

    def teardown(self) -> None:
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(owner=OWNERS, epoch=st.integers(0, 2), version=st.integers(1, 4), data=st.binary(min_size=1, max_size=64))
    def put(self, owner, epoch, version, data):
        if owner in self.tombs and epoch <= self.tombs[owner]:
            expected = TombstonedError
        elif owner in self.highest and (epoch, version) <= self.highest[owner]:
            expected = ReplayError
        else:
            expected = None
        if expected is not None:
            with pytest.raises(expected):
                self.store.put_seed(owner, version, data, epoch=epoch, arch="s")
            return
        self.store.put_seed(owner, version, data, epoch=epoch, arch="s")
        self.seeds[owner] = (epoch, version, data)
        self.highest[owner] = (epoch, version)

    @rule(owner=OWNERS)
    def delete(self, owner):
        held = self.seeds.pop(owner, None)
        assert self.store.delete_seed(owner) == (None if held is None else sha256_hex(held[2]))

    @rule(victim=OWNERS, epoch=st.integers(0, 2), request_id=REQUESTS)
    def unlearn(self, victim, epoch, request_id):
        target = victim  # ("target" is a reserved rule argument in hypothesis)
        if request_id in self.seen:
            with pytest.raises(ReplayError):
                self.store.apply_unlearn(target, epoch, request_id)
            return
        held = self.seeds.get(target)
        removed = None
        if held is not None and held[0] <= epoch:
            removed = sha256_hex(self.seeds.pop(target)[2])
        self.tombs[target] = max(epoch, self.tombs.get(target, -1))
        self.seen.add(request_id)
        assert self.store.apply_unlearn(target, epoch, request_id, receipt=b"R") == removed

    @rule(request_id=REQUESTS)
    def mark_seen(self, request_id):
        assert self.store.mark_request_seen(request_id) == (request_id not in self.seen)
        self.seen.add(request_id)

    @rule(request_id=REQUESTS)
    def receipt_sent(self, request_id):
        self.store.mark_receipt_sent(request_id)

    @rule()
    def reopen(self):
        self.store.close()
        self.store = SeedStore(self.dir, clock=lambda: 7.0)

    @invariant()
    def visible_state_matches_the_model(self):
        store = self.store
        assert [s.owner for s in store.list_seeds()] == sorted(self.seeds)
        for owner, (epoch, version, data) in self.seeds.items():
            info = store.seed_info(owner)
            assert (info.epoch, info.version) == (epoch, version) and store.get_seed(owner) == data
        assert {t.target: t.epoch for t in store.tombstones()} == self.tombs
        assert set(store.seen_requests()) == self.seen
        assert {o: store.highest_version(o) for o in self.highest} == self.highest
        # Disk holds exactly the indexed seeds, nothing else.
        assert {p.name for p in (self.dir / "seeds").iterdir()} == {s.file for s in store.list_seeds()}


StoreMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=25, deadline=None)
test_store_matches_model = StoreMachine.TestCase
