"""The seed store: one device's durable repository of neighbours' seeds, tombstones and audit trail.

Layout under ``root``::

    index.json          every fact (seeds, tombstones, seen request ids, version floors, pending receipts,
                        the signed orders applied (for the tombstone digest), and whether this device
                        itself was forgotten)
    seeds/<owner>@<epoch>-<version>.onnx   one file per held seed, named by content version
    orders/<request id>.order   signed orders saved by earlier versions (read, never written now)
    audit.jsonl         append-only JSON lines, fsynced; hashes only, never seed bytes; lines that
                        outside input triggers are rate-limited (``AuditLimit``) with a summary line
    .lock               flock'd while a SeedStore is open (one process per store)

Why files and one JSON index rather than SQLite: the state is small (tens of seeds, hundreds of ids), the
seed bodies must be plain files anyway (onnxruntime reads them, an operator inspects them), and a single
index file replaced atomically gives one commit point for every operation, including an unlearn.

Durability protocol (every write): data goes to a ``.tmp-*`` file in the same directory, is fsynced,
renamed over its final name with ``os.replace`` and the directory is fsynced. The ``index.json`` replace
is the commit point of every operation; it plays the role of the journal. Seed files are named by
(owner, epoch, version), never overwritten in place, so:

- a new seed is written to its own file first, then committed in the index, then the old file goes;
- an unlearn commits the index (tombstone + request id + seed entry gone + pending receipt + the signed
  order) in one replace, then unlinks the seed file. That replace is the step's only durable write (two
  fsyncs: the temp index and its directory): the unlink needs no directory fsync (a seed file the index
  does not name is removed on open) and the step's audit lines ride on the next synced audit line (the
  index, not the audit log, is what recovery trusts).

A crash at any point leaves either the old or the new index. On open, recovery replays what the index
says: stray temp files are removed, every indexed seed is re-hashed (a missing or corrupt one is dropped
and audited), and every seed file the index does not name is removed, which completes an interrupted
unlearn or replacement. ``get_seed`` re-hashes on every read, so a half-written seed is never served.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdus_edge.errors import ReplayError, StoreError, TombstonedError
from hdus_edge.files import TMP_PREFIX, atomic_write, fsync, fsync_dir
from hdus_edge.protocol import canonical
from hdus_edge.protocol.fields import (
    check_counter,
    check_device_id,
    check_name,
    check_request_id,
    check_sha256,
)
from hdus_edge.protocol.messages import SeedEnvelope, sha256_hex

logger = logging.getLogger(__name__)

INDEX_FORMAT = 1
INDEX_NAME = "index.json"
AUDIT_NAME = "audit.jsonl"
LOCK_NAME = ".lock"
SEEDS_DIR = "seeds"
ORDERS_DIR = "orders"
MAX_AUDIT_STRING = 1024  # long strings are refused so no encoded seed can end up in the audit log


@dataclass(frozen=True)
class AuditLimit:
    """A token bucket for audit lines that outside input can trigger (rejections).

    Lines that record what this device did (accept, delete, tombstone, receipt) are never limited;
    a rejection is worth a line, but 5,000 garbage messages are worth one summary. The defaults
    keep a flood to ~20 lines a second (~4 KB/s, ~330 MB a day at worst) while a normal fleet's few
    rejections all get their own line.
    """

    rate_per_s: float = 20.0
    burst: int = 100

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError(f"audit limit must be positive: {self}")


class _AuditBucket:
    """Token bucket state; ``suppressed`` counts lines dropped since the last summary, by event."""

    def __init__(self, limit: AuditLimit, now: float) -> None:
        self.limit = limit
        self.tokens = float(limit.burst)
        self.at = now
        self.suppressed: dict[str, int] = {}
        self.suppressed_since = 0.0

    def take(self, now: float) -> bool:
        self.tokens = min(float(self.limit.burst), self.tokens + max(0.0, now - self.at) * self.limit.rate_per_s)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


@dataclass(frozen=True)
class StoredSeed:
    """An index entry: a seed held on disk (the bytes are in ``seeds/<file>``)."""

    owner: str
    version: int
    epoch: int
    sha256: str
    arch: str
    size: int
    received_at: float
    file: str
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tombstone:
    """``target``'s seeds of epoch <= ``epoch`` are forgotten and refused (``request_id`` ordered it)."""

    target: str
    epoch: int
    request_id: str
    at: float


@dataclass(frozen=True)
class PendingReceipt:
    """An encoded receipt committed with its unlearn and not yet confirmed sent."""

    request_id: str
    data: bytes
    created_at: float


@dataclass
class _State:
    seeds: dict[str, StoredSeed] = field(default_factory=dict)
    tombstones: dict[str, Tombstone] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)
    highest: dict[str, tuple[int, int]] = field(default_factory=dict)  # owner -> (epoch, version)
    receipts: dict[str, PendingReceipt] = field(default_factory=dict)
    forgotten: Tombstone | None = None  # this device itself was forgotten (by this order, up to this epoch)
    orders: dict[str, bytes] = field(default_factory=dict)  # request id -> signed order, as it travelled

    def copy(self) -> _State:
        return _State(
            dict(self.seeds), dict(self.tombstones), dict(self.seen), dict(self.highest), dict(self.receipts),
            self.forgotten, dict(self.orders),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT,
            "seeds": [
                {
                    "owner": s.owner,
                    "version": s.version,
                    "epoch": s.epoch,
                    "sha256": s.sha256,
                    "arch": s.arch,
                    "size": s.size,
                    "received_at": s.received_at,
                    "file": s.file,
                    "meta": dict(s.meta),
                }
                for s in self.seeds.values()
            ],
            "tombstones": [
                {"target": t.target, "epoch": t.epoch, "request_id": t.request_id, "at": t.at}
                for t in self.tombstones.values()
            ],
            "seen": self.seen,
            "highest": {owner: list(ev) for owner, ev in self.highest.items()},
            "receipts": [
                {"request_id": r.request_id, "data": r.data.hex(), "created_at": r.created_at}
                for r in self.receipts.values()
            ],
            "orders": {rid: data.hex() for rid, data in self.orders.items()},
        } | ({} if self.forgotten is None else {"forgotten": {
            "target": self.forgotten.target, "epoch": self.forgotten.epoch,
            "request_id": self.forgotten.request_id, "at": self.forgotten.at}})

    @classmethod
    def from_json(cls, data: Any) -> _State:
        if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
            raise ValueError(f"index format is not {INDEX_FORMAT}")
        state = cls()
        for s in data["seeds"]:
            seed = StoredSeed(**s)
            check_device_id(seed.owner)
            check_sha256(seed.sha256)
            if seed.file != _seed_file_name(seed.owner, seed.epoch, seed.version):
                raise ValueError(f"seed file name {seed.file!r} does not match its entry")
            state.seeds[seed.owner] = seed
        for t in data["tombstones"]:
            state.tombstones[t["target"]] = Tombstone(**t)
        state.seen = {check_request_id(k): float(v) for k, v in data["seen"].items()}
        state.highest = {check_device_id(k): (int(v[0]), int(v[1])) for k, v in data["highest"].items()}
        for r in data["receipts"]:
            state.receipts[r["request_id"]] = PendingReceipt(r["request_id"], bytes.fromhex(r["data"]), r["created_at"])
        # (An index written before orders moved into it has none: they are files in orders/.)
        state.orders = {check_request_id(k): bytes.fromhex(v) for k, v in data.get("orders", {}).items()}
        if data.get("forgotten") is not None:
            f = data["forgotten"]
            state.forgotten = Tombstone(check_device_id(f["target"]), int(f["epoch"]), check_request_id(f["request_id"]),
                                        float(f["at"]))
        return state


def read_index(root: Path) -> _State:
    """Parse ``<root>/index.json`` with the store's own rules, without its lock.

    The store replaces the index atomically, so a reader next to a running agent (``status``,
    ``predict``) sees one whole version. Never written: the empty index. Corrupt: ``ValueError``.
    """
    try:
        data = (Path(root) / INDEX_NAME).read_bytes()
    except FileNotFoundError:
        return _State()
    try:
        return _State.from_json(canonical.loads(data))
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(str(exc)) from None


def _seed_file_name(owner: str, epoch: int, version: int) -> str:
    return f"{owner}@{epoch}-{version}.onnx"


def _check_audit_value(value: Any, key: str) -> None:
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"audit field {key!r} is bytes; the audit log holds hashes, never payloads")
    if isinstance(value, str):
        if len(value) > MAX_AUDIT_STRING:
            raise ValueError(f"audit field {key!r} is {len(value)} characters; log a hash instead")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_audit_value(item, key)
    elif isinstance(value, dict):
        for k, item in value.items():
            _check_audit_value(item, f"{key}.{k}")
    elif value is not None and not isinstance(value, (bool, int, float)):
        raise TypeError(f"audit field {key!r} has type {type(value).__name__}; use JSON scalars")


class SeedStore:
    """A device's seed repository on disk. Open it once per process; every method is thread-safe.

    Every mutating method is one atomic step: when it returns, the change is durable; when it raises or
    the process dies first, a reopened store shows the state before it (or after it, once committed).
    """

    def __init__(self, root: Path, *, clock: Callable[[], float] = time.time,
                 audit_limit: AuditLimit = AuditLimit()) -> None:
        self.root = Path(root)
        self._clock = clock
        self._bucket = _AuditBucket(audit_limit, clock())
        self.audit_suppressed_total = 0  # limited audit lines dropped since open (summarised in the log)
        self._lock = threading.RLock()
        self._seeds_dir = self.root / SEEDS_DIR
        try:
            self._seeds_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StoreError(f"cannot create seed store at {self.root}: {exc.strerror}") from None
        self._lock_fd = -1
        self._audit_fd = -1
        self._audit_unsynced = False  # audit lines written with sync=False since the last fsync
        self._unsaved = False  # an in-memory change (a receipt sent) that the next commit or close() saves
        try:
            self._lock_fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open seed store at {self.root}: {exc.strerror}") from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise StoreError(
                f"seed store {self.root} is already open (another agent or process holds it)",
                hint="stop the other hdus-edge agent using this state directory",
            ) from None
        try:
            self._audit_fd = self._open_audit()
            self._state = self._load_index()
            self._recover()
        except BaseException:
            self.close()
            raise

    # --- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Save what is only in memory, release the process lock and the audit file (idempotent)."""
        if self._unsaved and self._lock_fd >= 0:
            try:
                self._commit(self._state.copy(), [])
            except (OSError, StoreError):
                logger.warning("could not save %s on close; sent receipts are sent again", self.root)
        if self._audit_fd >= 0:
            try:
                self._flush_suppressed()
                if self._audit_unsynced:
                    fsync(self._audit_fd)
            except (OSError, StoreError):
                logger.warning("could not write the audit summary of %s", self.root)
            os.close(self._audit_fd)
            self._audit_fd = -1
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> SeedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open_audit(self) -> int:
        path = self.root / AUDIT_NAME
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        # A crash mid-append can leave a torn last line: cut it so every line parses.
        size = os.fstat(fd).st_size
        if size:
            tail = os.pread(fd, min(size, 65536), max(0, size - 65536))
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                keep = (size - len(tail) + cut + 1) if cut >= 0 else 0
                if cut < 0 and size > len(tail):
                    raise StoreError(f"audit log {path} ends in a line longer than 64 KiB; it is corrupt")
                os.ftruncate(fd, keep)
                fsync(fd)
                logger.warning("audit log %s: cut a torn last line (%d bytes)", path, size - keep)
        return fd

    def _load_index(self) -> _State:
        try:
            return read_index(self.root)
        except ValueError as exc:
            # Never start empty here: that would drop the tombstones and let forgotten seeds back in.
            raise StoreError(
                f"seed store index {self.root / INDEX_NAME} is corrupt: {exc}",
                hint="restore it from a backup, or remove the state directory to start over (tombstones are lost)",
            ) from None

    def _recover(self) -> None:
        for directory in (self.root, self._seeds_dir, self.root / ORDERS_DIR):
            for stray in directory.glob(f"{TMP_PREFIX}*"):  # (a missing orders/ globs to nothing)
                stray.unlink()
                logger.warning("recovery: removed stray temp file %s", stray)
        state = self._state.copy()
        for owner, seed in list(state.seeds.items()):
            problem = self._check_file(seed)
            if problem is not None:
                del state.seeds[owner]
                logger.error("recovery: dropped seed of %s: %s", owner, problem)
                self._audit("recover_drop", owner=owner, sha256=seed.sha256, reason=problem)
        named = {s.file for s in state.seeds.values()}
        orphans = [p for p in self._seeds_dir.iterdir() if p.name not in named]
        if state.seeds != self._state.seeds:
            self._commit(state, [])
        for orphan in orphans:
            orphan.unlink()
            self._audit("recover_remove", file=orphan.name)
            logger.info("recovery: removed seed file %s that the index does not hold", orphan.name)
        if orphans:
            fsync_dir(self._seeds_dir)

    def _check_file(self, seed: StoredSeed) -> str | None:
        try:
            data = (self._seeds_dir / seed.file).read_bytes()
        except FileNotFoundError:
            return "file missing"
        if len(data) != seed.size or sha256_hex(data) != seed.sha256:
            return "file corrupt (sha256 mismatch)"
        return None

    # --- commit ------------------------------------------------------------------------------

    def _commit(self, state: _State, remove_files: Iterable[str], *, sync_removals: bool = True) -> None:
        """Make ``state`` durable (the commit point), then remove files it no longer names.

        ``sync_removals=False`` leaves the unlinks unsynced: a file that comes back after a power cut
        is one the index does not name, and recovery removes it on open.
        """
        if self._lock_fd < 0:
            raise StoreError(f"seed store {self.root} is closed")
        atomic_write(self.root / INDEX_NAME, canonical.dumps(state.to_json()))
        self._state = state
        self._unsaved = False
        removed = False
        for name in remove_files:
            try:
                (self._seeds_dir / name).unlink()
                removed = True
            except FileNotFoundError:
                pass
        if removed and sync_removals:
            fsync_dir(self._seeds_dir)

    # --- seeds -------------------------------------------------------------------------------

    def check_seed(self, owner: str, version: int, epoch: int) -> None:
        """Raise ``TombstonedError`` or ``ReplayError`` when a seed with these ids would be refused.

        Cheap, so an agent can call it before the costly safe-load of the ONNX bytes. Refusals are audited.
        """
        with self._lock:
            check_device_id(owner, "seed owner")
            check_counter(version, "seed version", minimum=1)
            check_counter(epoch, "seed epoch")
            tomb = self._state.tombstones.get(owner)
            if tomb is not None and epoch <= tomb.epoch:
                self._audit("reject", owner=owner, version=version, epoch=epoch, reason="tombstoned", limited=True)
                raise TombstonedError(
                    f"seed of {owner!r} (epoch {epoch}) refused: {owner!r} was forgotten up to epoch {tomb.epoch} "
                    f"(request {tomb.request_id})",
                    hint="the admin must re-admit the device with a higher epoch",
                )
            floor = self._state.highest.get(owner)
            if floor is not None and (epoch, version) <= floor:
                self._audit("reject", owner=owner, version=version, epoch=epoch, reason="replay", limited=True)
                raise ReplayError(
                    f"seed of {owner!r} version {version} (epoch {epoch}) is not newer than the version "
                    f"{floor[1]} (epoch {floor[0]}) already seen"
                )

    def put_seed(
        self,
        owner: str,
        version: int,
        onnx_bytes: bytes,
        *,
        epoch: int,
        arch: str,
        sha256: str | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> StoredSeed:
        """Store ``owner``'s seed, replacing the one held; durable when this returns.

        Raises ``TombstonedError`` when ``owner`` is forgotten at ``epoch``, ``ReplayError`` unless
        (``epoch``, ``version``) is above everything seen from ``owner`` (also after a delete).
        ``sha256``, when given, must be the hash of ``onnx_bytes`` (``ValueError`` otherwise). ``meta``
        holds small JSON values (input shape, classes, reference hash) kept with the entry.
        """
        if not isinstance(onnx_bytes, bytes):
            raise TypeError(f"onnx_bytes must be bytes, got {type(onnx_bytes).__name__}")
        check_name(arch, "seed arch")
        digest = sha256_hex(onnx_bytes)
        if sha256 is not None and sha256 != digest:
            raise ValueError(f"sha256 {sha256[:16]}... is not the hash of the given bytes ({digest[:16]}...)")
        meta = dict(meta or {})
        canonical.dumps(meta)  # TypeError now rather than a failed commit later
        with self._lock:
            self.check_seed(owner, version, epoch)
            name = _seed_file_name(owner, epoch, version)
            atomic_write(self._seeds_dir / name, onnx_bytes)
            seed = StoredSeed(owner, version, epoch, digest, arch, len(onnx_bytes), self._clock(), name, meta)
            state = self._state.copy()
            old = state.seeds.get(owner)
            state.seeds[owner] = seed
            state.highest[owner] = (epoch, version)
            self._commit(state, [old.file] if old is not None and old.file != name else [])
            self._audit(
                "accept", owner=owner, version=version, epoch=epoch, sha256=digest, size=len(onnx_bytes),
                replaced=None if old is None else old.sha256,
            )  # fmt: skip
            logger.info("stored seed of %s v%d (%s...)", owner, version, digest[:12])
            return seed

    def put_envelope(self, env: SeedEnvelope) -> StoredSeed:
        """``put_seed`` for a verified ``SeedEnvelope``, keeping its contract fields as meta."""
        meta = {
            "input_shape": list(env.input_shape),
            "num_classes": env.num_classes,
            "reference_sha256": env.reference_sha256,
        }
        return self.put_seed(
            env.owner, env.version, env.onnx, epoch=env.epoch, arch=env.arch, sha256=env.sha256, meta=meta
        )

    def get_seed(self, owner: str) -> bytes | None:
        """The bytes of ``owner``'s seed, re-hashed on read; None when none is held (or it went bad)."""
        with self._lock:
            seed = self._state.seeds.get(owner)
            if seed is None:
                return None
            try:
                data = (self._seeds_dir / seed.file).read_bytes()
            except FileNotFoundError:
                data = None
            if data is None or sha256_hex(data) != seed.sha256:
                # Corrupt at rest: drop it rather than serve it; the owner's next version replaces it.
                logger.error("seed of %s is missing or corrupt on disk; dropped", owner)
                state = self._state.copy()
                del state.seeds[owner]
                self._commit(state, [seed.file])
                self._audit("corrupt", owner=owner, sha256=seed.sha256)
                return None
            return data

    def seed_info(self, owner: str) -> StoredSeed | None:
        """The index entry of ``owner``'s seed, or None."""
        with self._lock:
            return self._state.seeds.get(owner)

    def seed_path(self, owner: str) -> Path | None:
        """Path of ``owner``'s seed file (for onnxruntime); prefer ``get_seed``, which re-hashes."""
        with self._lock:
            seed = self._state.seeds.get(owner)
            return None if seed is None else self._seeds_dir / seed.file

    def list_seeds(self) -> list[StoredSeed]:
        """Held seeds, sorted by owner (the ensemble's member order)."""
        with self._lock:
            return [self._state.seeds[o] for o in sorted(self._state.seeds)]

    def highest_version(self, owner: str) -> tuple[int, int] | None:
        """(epoch, version) of the newest seed ever accepted from ``owner``, or None."""
        with self._lock:
            return self._state.highest.get(owner)

    def delete_seed(self, owner: str, *, reason: str = "delete") -> str | None:
        """Remove ``owner``'s seed (no tombstone: it may come back with a newer version); return its sha256."""
        with self._lock:
            seed = self._state.seeds.get(owner)
            if seed is None:
                return None
            state = self._state.copy()
            del state.seeds[owner]
            self._commit(state, [seed.file])
            self._audit("delete", owner=owner, sha256=seed.sha256, version=seed.version, reason=reason)
            return seed.sha256

    # --- tombstones, request ids, unlearn ------------------------------------------------------

    def is_tombstoned(self, owner: str, epoch: int) -> bool:
        """True when seeds of ``owner`` at ``epoch`` are forgotten."""
        with self._lock:
            tomb = self._state.tombstones.get(owner)
            return tomb is not None and epoch <= tomb.epoch

    def tombstones(self) -> list[Tombstone]:
        """Held tombstones, sorted by target."""
        with self._lock:
            return [self._state.tombstones[t] for t in sorted(self._state.tombstones)]

    def is_request_seen(self, request_id: str) -> bool:
        """True when ``request_id`` was already applied."""
        with self._lock:
            return request_id in self._state.seen

    def seen_requests(self) -> list[str]:
        """Every request id applied, sorted."""
        with self._lock:
            return sorted(self._state.seen)

    def mark_request_seen(self, request_id: str) -> bool:
        """Record ``request_id`` durably; False when it was already recorded (a replay)."""
        check_request_id(request_id)
        with self._lock:
            if request_id in self._state.seen:
                return False
            state = self._state.copy()
            state.seen[request_id] = self._clock()
            self._commit(state, [])
            return True

    def add_tombstone(self, target: str, epoch: int, request_id: str) -> str | None:
        """Forget ``target`` up to ``epoch``: tombstone it and drop a covered seed; return the removed sha256."""
        with self._lock:
            return self._unlearn(target, epoch, request_id, mark_seen=False, receipt=None, order=None)

    def apply_unlearn(
        self,
        target: str,
        epoch: int,
        request_id: str,
        receipt: bytes | Callable[[str | None], bytes] | None = None,
        *,
        order: bytes | None = None,
    ) -> str | None:
        """Apply an unlearn order as ONE atomic step; return the removed seed's sha256 (None: held none).

        Commits together: the tombstone, ``request_id`` as seen, the seed entry's removal (only when its
        epoch <= ``epoch``: a re-admitted incarnation survives an old order), when given the pending
        receipt, and when given the signed ``order`` bytes (kept for the tombstone digest, ``orders``).
        ``receipt`` may be a callable that gets the removed sha256 and returns the encoded receipt. Then
        the seed file is unlinked; a crash before that is completed on open. So "receipt pending or
        sent" always implies "seed gone". Two fsyncs in all (the index commit); the audit lines are
        written unsynced (see the module docstring). Raises ``ReplayError`` for a seen ``request_id``.
        """
        with self._lock:
            if request_id in self._state.seen:
                self._audit("reject", target=target, request_id=request_id, reason="replay", limited=True)
                raise ReplayError(f"unlearn request {request_id!r} was already applied")
            return self._unlearn(target, epoch, request_id, mark_seen=True, receipt=receipt, order=order)

    def _unlearn(
        self,
        target: str,
        epoch: int,
        request_id: str,
        *,
        mark_seen: bool,
        receipt: bytes | Callable[[str | None], bytes] | None,
        order: bytes | None,
    ) -> str | None:
        check_device_id(target, "unlearn target")
        check_counter(epoch, "unlearn epoch")
        check_request_id(request_id)
        now = self._clock()
        state = self._state.copy()
        held = state.tombstones.get(target)
        if held is None or epoch > held.epoch:
            state.tombstones[target] = Tombstone(target, epoch, request_id, now)
        seed = state.seeds.get(target)
        removed: StoredSeed | None = None
        if seed is not None and seed.epoch <= epoch:
            removed = state.seeds.pop(target)
        if mark_seen:
            state.seen[request_id] = now
        removed_sha = None if removed is None else removed.sha256
        if receipt is not None:
            data = receipt(removed_sha) if callable(receipt) else receipt
            if not isinstance(data, bytes):
                raise TypeError(f"receipt must be bytes, got {type(data).__name__}")
            state.receipts[request_id] = PendingReceipt(request_id, data, now)
        if order is not None:
            state.orders.setdefault(request_id, bytes(order))
        self._commit(state, [] if removed is None else [removed.file], sync_removals=False)
        # No fsync for the step's audit lines: the index commit above is what makes the step durable
        # (and what recovery trusts), and every fsync here delays the receipt the requester waits for.
        # The next synced audit line, or close(), makes them durable.
        if removed is not None:
            self._audit("delete", owner=target, sha256=removed.sha256, version=removed.version, reason="unlearn",
                        request_id=request_id, sync=False)  # fmt: skip
        self._audit("tombstone", target=target, epoch=epoch, request_id=request_id, sync=False)
        if receipt is not None:
            self._audit("receipt_pending", request_id=request_id, target=target, removed_sha256=removed_sha, sync=False)
        logger.info("forgot %s up to epoch %d (request %s), removed %s", target, epoch, request_id, removed_sha)
        return removed_sha

    # --- this device itself forgotten -----------------------------------------------------------

    def mark_forgotten(self, device_id: str, epoch: int, request_id: str) -> None:
        """Record durably that this device (``device_id``) was forgotten up to ``epoch`` by ``request_id``.

        One commit with ``request_id`` marked seen. A restarted agent reads it (``forgotten``) and
        refuses to publish: forgetting must survive a restart of the forgotten device itself.
        """
        check_device_id(device_id)
        check_counter(epoch, "forgotten epoch")
        check_request_id(request_id)
        with self._lock:
            held = self._state.forgotten
            if held is not None and held.epoch >= epoch and request_id in self._state.seen:
                return
            state = self._state.copy()
            now = self._clock()
            if held is None or epoch >= held.epoch:
                state.forgotten = Tombstone(device_id, epoch, request_id, now)
            state.seen.setdefault(request_id, now)
            self._commit(state, [])
            self._audit("forgotten", device_id=device_id, epoch=epoch, request_id=request_id)

    def forgotten(self) -> Tombstone | None:
        """The order that forgot this device (its ``epoch`` is the last incarnation it covers), or None."""
        with self._lock:
            return self._state.forgotten

    # --- receipts ----------------------------------------------------------------------------

    def record_receipt_pending(self, request_id: str, receipt_bytes: bytes) -> None:
        """Keep an encoded receipt durably until ``mark_receipt_sent``; re-send ``pending_receipts`` after a restart."""
        check_request_id(request_id)
        if not isinstance(receipt_bytes, bytes):
            raise TypeError(f"receipt_bytes must be bytes, got {type(receipt_bytes).__name__}")
        with self._lock:
            state = self._state.copy()
            state.receipts[request_id] = PendingReceipt(request_id, receipt_bytes, self._clock())
            self._commit(state, [])
            self._audit("receipt_pending", request_id=request_id)

    def mark_receipt_sent(self, request_id: str, *, durable: bool = True) -> bool:
        """Drop the pending receipt of ``request_id``; False when none was pending.

        ``durable=False`` (the broker acknowledged it) changes memory only; the next commit or
        ``close()`` saves it, and a crash before that sends the receipt once more (receivers take
        duplicates), which is cheaper than two fsyncs per receipt.
        """
        with self._lock:
            if request_id not in self._state.receipts:
                return False
            state = self._state.copy()
            del state.receipts[request_id]
            if durable:
                self._commit(state, [])
            else:
                self._state, self._unsaved = state, True
            self._audit("receipt_sent", request_id=request_id, sync=durable)
            return True

    def pending_receipts(self) -> list[PendingReceipt]:
        """Receipts committed but not confirmed sent, oldest first."""
        with self._lock:
            return sorted(self._state.receipts.values(), key=lambda r: (r.created_at, r.request_id))

    # --- applied orders (for the tombstone gossip) ----------------------------------------------

    def save_order(self, request_id: str, order_bytes: bytes) -> None:
        """Keep the signed order ``request_id`` as it travelled, so neighbours that missed it can
        get it from this device's tombstone digest. Idempotent (no write when it is kept already);
        ``apply_unlearn(order=...)`` keeps it in the same commit as the rest of the step."""
        check_request_id(request_id)
        with self._lock:
            if request_id in self._state.orders or (self.root / ORDERS_DIR / f"{request_id}.order").exists():
                return
            state = self._state.copy()
            state.orders[request_id] = bytes(order_bytes)
            self._commit(state, [])

    def orders(self) -> dict[str, bytes]:
        """Every saved signed order by request id, in the order they were applied (oldest first).

        Digests carry the newest orders: sorted by name (random request ids), "the last 64" would be
        any 64, and a newer order could drop out of every digest. Orders saved but not yet marked
        seen come last. Files in ``orders/`` (written by earlier versions) count too.
        """
        with self._lock:
            kept = dict(self._state.orders)
            legacy = self.root / ORDERS_DIR
            if legacy.is_dir():
                for path in legacy.glob("*.order"):
                    kept.setdefault(path.stem, path.read_bytes())
            seen = self._state.seen
            return {rid: kept[rid] for rid in sorted(kept, key=lambda rid: (seen.get(rid, float("inf")), rid))}

    # --- audit -------------------------------------------------------------------------------

    def audit(self, event: str, *, limited: bool = False, sync: bool = True, **fields: Any) -> bool:
        """Append one fsynced JSON line ``{"at", "event", **fields}``; bytes and long strings are refused.

        ``sync=False`` leaves the fsync to the next synced line (or ``flush_audit_summary``/``close``):
        for a line whose fact is already durable elsewhere (the index).

        ``limited`` lines (what outside input triggers: rejections) go through the store's
        ``AuditLimit``; over it they are counted, not written, and the next limited line that fits is
        preceded by one ``audit_suppressed`` line with the counts (so is ``close``). Returns whether
        the line was written.
        """
        with self._lock:
            return self._audit(event, sync=sync, limited=limited, **fields)

    def _audit(self, event: str, sync: bool = True, limited: bool = False, **fields: Any) -> bool:
        # sync=False leaves the fsync to the next audit line of the same step.
        check_name(event, "audit event")
        for key, value in fields.items():
            _check_audit_value(value, key)
        if self._audit_fd < 0:
            raise StoreError(f"seed store {self.root} is closed")
        now = self._clock()
        if limited:
            bucket = self._bucket
            if not bucket.take(now):
                if not bucket.suppressed:
                    bucket.suppressed_since = now
                bucket.suppressed[event] = bucket.suppressed.get(event, 0) + 1
                self.audit_suppressed_total += 1
                return False
            self._flush_suppressed(sync=False)
        record = {"at": now, "event": event, **fields}
        os.write(self._audit_fd, canonical.dumps(record) + b"\n")
        if sync:
            fsync(self._audit_fd)
        self._audit_unsynced = not sync
        return True

    def _flush_suppressed(self, sync: bool = True) -> None:
        bucket = self._bucket
        if not bucket.suppressed or self._audit_fd < 0:
            return
        record = {"at": self._clock(), "event": "audit_suppressed", "count": sum(bucket.suppressed.values()),
                  "by_event": dict(sorted(bucket.suppressed.items())), "since": bucket.suppressed_since}
        bucket.suppressed = {}
        os.write(self._audit_fd, canonical.dumps(record) + b"\n")
        if sync:
            fsync(self._audit_fd)

    def flush_audit_summary(self) -> None:
        """Write the ``audit_suppressed`` summary now if lines were dropped (the agent's housekeeping tick)."""
        with self._lock:
            self._flush_suppressed()

    def audit_events(self) -> list[dict[str, Any]]:
        """Every audit record, oldest first."""
        with self._lock:
            lines = (self.root / AUDIT_NAME).read_bytes().splitlines()
            return [canonical.loads(line) for line in lines if line]

    def __repr__(self) -> str:
        state = self._state
        return f"SeedStore({str(self.root)!r}, seeds={len(state.seeds)}, tombstones={len(state.tombstones)})"

