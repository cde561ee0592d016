"""Changing whose seeds a device wants (``hdus-edge neighbors add|remove``; no torch).

``device.toml`` is the source of truth. Without a running agent the change is complete here: a
removed neighbour's seed also leaves the store, and the next agent start subscribes to the new
neighbours, drops what it no longer wants and announces the new list. A running agent holds the
store's lock; it watches ``device.toml`` and applies the change itself within a second.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from hdus_edge.state import StateDir, user_device_id

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NeighborChange:
    """A neighbour list before and after a change, and what happened to the store."""

    device_id: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    agent_running: bool
    seeds_removed: tuple[str, ...]

    @property
    def added(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.after) - set(self.before)))

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.before) - set(self.after)))

    def to_json(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "before": list(self.before), "neighbors": list(self.after),
                "added": list(self.added), "removed": list(self.removed), "agent_running": self.agent_running,
                "seeds_removed": list(self.seeds_removed)}


def change_neighbors(state: StateDir, *, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()) -> NeighborChange:
    """Add and remove neighbours in ``device.toml``; drop removed neighbours' seeds when no agent runs."""
    device = state.device()
    me = device.device.id
    add = tuple(user_device_id(n, "neighbour id") for n in add)
    remove = tuple(user_device_id(n, "neighbour id") for n in remove)
    before = device.neighbors
    after = tuple(sorted((set(before) | set(add)) - set(remove) - {me}))
    running = state.agent_running()
    if after != before:
        state.set_neighbors(after)
    dropped: list[str] = []
    gone = sorted(set(before) - set(after))
    if gone and not running:
        from hdus_edge.device.store import SeedStore

        with SeedStore(state.store_dir) as store:
            for j in gone:
                if store.delete_seed(j, reason="neighbour removed") is not None:
                    dropped.append(j)
    logger.info("neighbours of %s: %s -> %s", me, before, after)
    return NeighborChange(me, before, after, running, tuple(dropped))
