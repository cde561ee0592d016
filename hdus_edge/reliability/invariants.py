"""The invariants every fault case checks (DESIGN.md section 3), read from disk without side effects.

Opening a ``SeedStore`` runs its crash recovery (removes temp files, drops unnamed seed files), which
would hide exactly what a crash test looks for; so these read ``index.json`` and the files directly,
read-only, and may run while the device's agent is dead (or alive, for the read-only parts).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hdus_edge.device.store import INDEX_NAME, SEEDS_DIR
from hdus_edge.files import TMP_PREFIX
from hdus_edge.protocol import canonical
from hdus_edge.protocol.messages import sha256_hex

if TYPE_CHECKING:
    from hdus_edge.lab.agents import AgentFleet
    from hdus_edge.lab.processes import ProcessFleet

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexView:
    """What ``index.json`` commits: seeds (owner -> (epoch, version, sha256, file)), tombstones
    (target -> epoch), request ids seen, and request ids whose receipt is still pending."""

    seeds: Mapping[str, tuple[int, int, str, str]]
    tombstones: Mapping[str, int]
    seen: frozenset[str]
    pending: frozenset[str]


def read_index(store_dir: Path) -> IndexView:
    """Parse the store's committed index (empty when none was ever written)."""
    path = Path(store_dir) / INDEX_NAME
    if not path.exists():
        return IndexView({}, {}, frozenset(), frozenset())
    data = canonical.loads(path.read_bytes())
    seeds = {s["owner"]: (int(s["epoch"]), int(s["version"]), s["sha256"], s["file"]) for s in data["seeds"]}
    tombs = {t["target"]: int(t["epoch"]) for t in data["tombstones"]}
    return IndexView(seeds, tombs, frozenset(data["seen"]), frozenset(r["request_id"] for r in data["receipts"]))


def store_violations(
    store_dir: Path,
    *,
    receipts_sent: Mapping[str, int] | None = None,
    published: Mapping[str, Iterable[str]] | None = None,
) -> list[str]:
    """Invariant violations in a store on disk (empty list: none).

    - every committed seed file exists and hashes to its committed sha256 (no half-written seed);
    - a tombstoned target's seed of a covered epoch is not held;
    - "receipt sent => seed deleted": for each target in ``receipts_sent`` (target -> order epoch,
      from receipts seen on the broker), no seed of that target at or below the epoch is held;
    - with ``published`` (owner -> sha256s the owner really published), every held seed is one of them.
    """
    store_dir = Path(store_dir)
    problems: list[str] = []
    try:
        view = read_index(store_dir)
    except (ValueError, KeyError, TypeError) as exc:
        return [f"index unreadable: {exc}"]
    for owner, (epoch, version, sha, name) in view.seeds.items():
        path = store_dir / SEEDS_DIR / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            problems.append(f"seed of {owner} v{version} committed but its file {name} is missing")
            continue
        if sha256_hex(data) != sha:
            problems.append(f"seed of {owner} v{version}: file {name} does not hash to its committed sha256")
        if published is not None and sha not in set(published.get(owner, ())):
            problems.append(f"seed of {owner} v{version} ({sha[:12]}) is not one {owner} published")
    for target, epoch in view.tombstones.items():
        held = view.seeds.get(target)
        if held is not None and held[0] <= epoch:
            problems.append(f"{target} is tombstoned (epoch {epoch}) but its seed v{held[1]} is held")
    for target, epoch in (receipts_sent or {}).items():
        held = view.seeds.get(target)
        if held is not None and held[0] <= epoch:
            problems.append(f"a receipt for forgetting {target} was sent but its seed v{held[1]} is held")
    return problems


def orphan_temp_files(state_root: Path, older_than: float | None = None) -> list[Path]:
    """``.tmp-*`` files anywhere under ``state_root``; with ``older_than`` (a ``time.time()``), only
    those last modified before it (a live agent's write in progress is not an orphan)."""
    found = []
    for path in Path(state_root).rglob(f"{TMP_PREFIX}*"):
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            continue  # renamed into place while we looked
        if older_than is None or mtime < older_than:
            found.append(path)
    return sorted(found)


@dataclass
class ResurrectionWatch:
    """Records every time a forgotten device's seed is back in some agent's ensemble.

    ``forget(holder, target)`` marks that ``holder`` applied the order; ``sample(members)`` (holder ->
    members now) counts a violation whenever a forgotten target is a member again.
    """

    forgotten: dict[str, set[str]]
    violations: list[str]

    def __init__(self) -> None:
        self.forgotten = {}
        self.violations = []

    def forget(self, holder: str, target: str) -> None:
        self.forgotten.setdefault(holder, set()).add(target)

    def sample(self, members: Mapping[str, Iterable[str]]) -> int:
        """Check one observation; return how many new violations it found."""
        found = 0
        for holder, now in members.items():
            back = self.forgotten.get(holder, set()) & set(now)
            for target in sorted(back):
                self.violations.append(f"{time.time():.3f}: {target}'s seed is back in {holder}'s ensemble")
                found += 1
        return found


class MemberSampler:
    """Samples every agent's members in the background and feeds a ``ResurrectionWatch``: the
    agents' own ``members()`` in an ``AgentFleet``, their ``status.json`` in a ``ProcessFleet``."""

    def __init__(self, fleet: AgentFleet | ProcessFleet, watch: ResurrectionWatch, interval: float = 0.005) -> None:
        self.fleet, self.watch, self.interval = fleet, watch, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hdus-rel-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            procs = getattr(self.fleet, "procs", None)
            if procs is not None:
                self.watch.sample({i: self.fleet.members(i) or () for i in list(procs)})
            else:
                self.watch.sample({i: a.members() for i, a in list(self.fleet.agents.items())})

    def __enter__(self) -> MemberSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
