"""A read-only view of a device's state dir, safe next to a running agent (no torch, no store lock).

The agent holds the seed store's lock while it runs, so ``predict``, ``status`` and ``members``
never open a ``SeedStore``: they read ``store/index.json`` (replaced atomically by the store at
every commit, so a reader sees the old index or the new one) and the seed files it names, and
re-hash every file against the index. A seed the agent replaced or deleted between the two reads
shows up as a missing or mismatching file; the read is then retried with the new index.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdus_edge.device.store import INDEX_NAME, SEEDS_DIR, StoredSeed, read_index
from hdus_edge.errors import StateDirError
from hdus_edge.protocol.messages import sha256_hex
from hdus_edge.state import StateDir, read_json

logger = logging.getLogger(__name__)

_READ_TRIES = 5


@dataclass(frozen=True)
class StoreView:
    """What the store's index says: seeds, tombstones (completed unlearns), receipts not yet sent."""

    seeds: tuple[StoredSeed, ...]
    tombstones: tuple[dict[str, Any], ...]
    pending_receipts: tuple[str, ...]
    seen_requests: tuple[str, ...]
    forgotten: dict[str, Any] | None = None  # this device itself was forgotten (durable; issue 14)


def seed_json(seed: StoredSeed) -> dict[str, Any]:
    """What ``status`` shows of a held seed (never its bytes)."""
    return {"owner": seed.owner, "version": seed.version, "epoch": seed.epoch, "sha256": seed.sha256,
            "arch": seed.arch, "bytes": seed.size, "received_at": seed.received_at}


def read_store_index(store_dir: Path) -> StoreView:
    """Parse ``store/index.json`` without locking (an empty view when the store was never written)."""
    path = Path(store_dir) / INDEX_NAME
    try:
        index = read_index(Path(store_dir))
    except ValueError as exc:
        raise StateDirError(f"seed store index {path} is corrupt: {exc}",
                            hint="restore it from a backup, or start the agent to see the store's own diagnosis") from None
    seeds = tuple(s for _, s in sorted(index.seeds.items()))
    tombstones = tuple({"target": t.target, "epoch": t.epoch, "request_id": t.request_id, "at": t.at}
                       for _, t in sorted(index.tombstones.items()))
    f = index.forgotten
    forgotten = None if f is None else {"target": f.target, "epoch": f.epoch, "request_id": f.request_id, "at": f.at}
    return StoreView(seeds, tombstones, tuple(index.receipts), tuple(sorted(index.seen)), forgotten)


def read_member_seeds(state: StateDir, neighbors: tuple[str, ...] | None = None) -> tuple[StoreView, dict[str, bytes]]:
    """The store's index and the verified bytes of every seed it holds for a current neighbour.

    A seed whose owner is no longer in ``device.toml`` is left out (the agent drops it too on
    start). Retries when a file changed under us (the agent committed in between).
    """
    wanted = set(state.device().neighbors if neighbors is None else neighbors)
    seeds_dir = state.store_dir / SEEDS_DIR
    for attempt in range(_READ_TRIES):
        view = read_store_index(state.store_dir)
        out: dict[str, bytes] = {}
        stale = False
        for entry in view.seeds:
            if entry.owner not in wanted:
                continue
            try:
                data = (seeds_dir / entry.file).read_bytes()
            except FileNotFoundError:
                stale = True
                break
            if sha256_hex(data) != entry.sha256:
                stale = True
                break
            out[entry.owner] = data
        if not stale:
            return view, out
        time.sleep(0.05 * (attempt + 1))
    raise StateDirError(f"seed store {state.store_dir} keeps changing or holds a corrupt seed file",
                        hint="try again; if it persists, restart the agent so the store recovers")


def load_runtime(state: StateDir) -> tuple[Any, tuple[str, ...]]:
    """An ``EnsembleRuntime`` of ``models/main.onnx`` and the neighbours' seeds in the store.

    Settings (lam, combine space, strategy, providers, threads) come from the fleet config and the
    profile, as the agent's do. Returns (runtime, member ids).
    """
    from hdus_edge.ensemble.runtime import EnsembleRuntime

    fleet = state.fleet()
    profile = state.profile()
    main = state.model_bytes("main.onnx")
    view, seeds = read_member_seeds(state)
    # One build with every seed (not main-only, then a rebuild: that fused the graph twice).
    runtime = EnsembleRuntime(
        main, fleet.ensemble.lam, fleet.ensemble.space, profile.runtime.strategy,  # type: ignore[arg-type]
        providers=profile.runtime.providers, intra_op_threads=profile.runtime.intra_op_threads,
        seeds=seeds, versions={e.owner: e.version for e in view.seeds},
    )
    return runtime, runtime.members()


def own_models(state: StateDir) -> dict[str, Any]:
    """What the device has trained and exported so far (file sizes and hashes)."""
    out: dict[str, Any] = {}
    for name in ("main.pt", "seed.pt", "main.onnx", "seed.onnx"):
        path = state.models / name
        out[name] = {"bytes": path.stat().st_size, "sha256": sha256_hex(path.read_bytes())} if path.exists() else None
    info = read_json(state.seed_info_file, "seed info") if state.seed_info_file.exists() else None
    out["seed_version"] = int(info.get("version", 0)) if isinstance(info, dict) else 0
    out["seed_info"] = info
    return out


def evidence_summaries(folder: Path) -> list[dict[str, Any]]:
    """One line per evidence file in ``folder``: request id, target, complete, receipts, missing."""
    out: list[dict[str, Any]] = []
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        try:
            ev = read_json(path, "evidence")
            out.append({"request_id": ev["request_id"], "target": ev["target"], "issuer": ev["issuer"],
                        "issued_at": ev["issued_at"], "complete": bool(ev["complete"]),
                        "receipts": [r["device_id"] for r in ev["receipts"]], "missing": list(ev["missing"]),
                        "file": str(path)})
        except (StateDirError, KeyError, TypeError) as exc:
            logger.warning("skipping evidence file %s: %s", path, exc)
    return out


def device_status(state: StateDir) -> dict[str, Any]:
    """Everything ``hdus-edge status`` shows, from the state dir alone (no broker, no store lock).

    ``agent.running`` comes from the store's lock; the connection, counters and ``forgotten`` come
    from the agent's last ``status.json`` and are reported only while it runs.
    """
    device = state.device()
    fleet = state.fleet()
    profile = state.profile()
    running = state.agent_running()
    agent_status = state.read_status()
    view, seeds = read_member_seeds(state, device.neighbors)
    held = {e.owner: e for e in view.seeds}
    members = sorted(seeds)
    stale = sorted(set(held) - set(device.neighbors))
    lam = fleet.ensemble.lam if members else 0.0
    agent: dict[str, Any] = {"running": running, "connected": bool(running and agent_status and agent_status.get("connected"))}
    if agent_status:
        agent["status_updated_at"] = agent_status.get("updated_at")
        agent["forgotten"] = bool(agent_status.get("forgotten"))
        agent["counters"] = agent_status.get("counters")
        agent["neighbors"] = agent_status.get("neighbors")
    return {
        "device_id": device.device.id,
        "fleet": fleet.fleet.name,
        "profile": profile.name,
        "state_dir": str(state.root),
        "broker": _redacted(device.device.broker or fleet.fleet.broker),
        "neighbors": list(device.neighbors),
        "members": members,
        "seeds": [seed_json(held[m]) for m in members],
        "seeds_not_neighbors": stale,
        "ensemble": {"members": ["main", *members], "lam": fleet.ensemble.lam, "effective_lam": lam,
                     "space": fleet.ensemble.space, "strategy": profile.runtime.strategy},
        "own": own_models(state),
        "unlearns": {
            "completed": list(view.tombstones),
            "pending_receipts": list(view.pending_receipts),
            "requested": evidence_summaries(state.evidence_dir),
        },
        "agent": agent,
        # From the store, so it holds while no agent runs and after restarts.
        "forgotten": view.forgotten,
        "training": training_summary(state),
    }


def training_summary(state: StateDir) -> dict[str, Any]:
    """The main model's manifest of sample ids (size and hash, never the ids or data) and forgotten samples."""
    out: dict[str, Any] = {"manifest_size": None, "manifest_sha256": None, "forgotten_samples": 0,
                           "forgotten_still_trained_on": 0}
    ids: dict[str, set[str]] = {}
    for path, what in ((state.manifest_file, "sample manifest"), (state.forgotten_samples_file, "forgotten samples")):
        if not path.exists():
            continue
        try:
            data = read_json(path, what)
        except StateDirError as exc:
            logger.warning("%s", exc.message)
            continue
        if not isinstance(data, dict):
            continue
        ids[what] = set(data.get("ids", []))
        if path == state.manifest_file:
            out["manifest_size"], out["manifest_sha256"] = data.get("size"), data.get("sha256")
        else:
            out["forgotten_samples"] = len(ids[what])
    # Non-zero only when a forget-samples run was cut short before the retraining: run it again.
    out["forgotten_still_trained_on"] = len(ids.get("sample manifest", set()) & ids.get("forgotten samples", set()))
    return out


def _redacted(url: str) -> str:
    from hdus_edge.errors import BrokerURLError
    from hdus_edge.transport.url import parse_broker_url

    try:
        return parse_broker_url(url).redacted()
    except BrokerURLError:
        return "(invalid broker URL)"
