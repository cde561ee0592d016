"""A durable outbox: a message is on disk before it is sent, and leaves only after its PUBACK.

paho keeps its session (messages in flight) in memory only, so a crash or power cut between
``publish()`` and the broker's PUBACK would lose the message. The outbox closes that gap: the
transport writes every message here first (SQLite, ``synchronous=FULL``: fsync'ed on commit),
deletes it when the PUBACK arrives, and re-publishes whatever is left when it starts again.
Delivery from our side is therefore at-least-once; receivers must tolerate duplicates.

A message whose durable copy lives elsewhere (an unlearn receipt: the seed store keeps it pending
until the broker acknowledges it, and re-sends it after a restart) goes in as ``durable=False``: held
in memory only, with an id <= 0, and re-published after a reconnect like the others; no fsync.

Thread-safe: one connection, guarded by a lock (the transport writes from the caller's thread and
deletes from its ack thread).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hdus_edge.errors import StoreError
from hdus_edge.files import count_syncs

logger = logging.getLogger(__name__)

FILENAME = "outbox.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused, so order = age
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL,
    created REAL NOT NULL
)
"""


@dataclass(frozen=True)
class OutboxItem:
    """One message waiting for its PUBACK."""

    id: int
    topic: str
    payload: bytes = field(repr=False)
    retain: bool
    created: float


class Outbox:
    """Messages not yet acknowledged by the broker, in a SQLite file under ``directory``.

    ``directory=None`` keeps them in memory only (no durability: for tools and tests that do not
    need it).
    """

    def __init__(self, directory: Path | str | None) -> None:
        self._lock = threading.Lock()
        self._volatile: dict[int, OutboxItem] = {}  # durable=False messages, by id (<= 0, going down)
        self._next_volatile = 0
        if directory is None:
            self.path: Path | None = None
            target = ":memory:"
        else:
            root = Path(directory)
            try:
                root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(f"cannot create outbox directory {root}: {exc}") from exc
            self.path = root / FILENAME
            target = str(self.path)
        try:
            # check_same_thread=False: we serialise access with our own lock instead.
            self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            if self.path is not None:
                # WAL + FULL: each commit is fsync'ed before it returns, and a crash mid-write
                # leaves the previous state intact.
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"outbox {self.path} is not usable: {exc}",
                hint="move the file away to start with an empty outbox (unsent messages in it are lost)",
            ) from exc

    def put(self, topic: str, payload: bytes, retain: bool, *, durable: bool = True) -> int:
        """Store a message durably; return its id (increasing with time).

        ``durable=False``: in memory only (lost with the process), id <= 0; for a message that its
        caller keeps durably itself and sends again after a restart.
        """
        with self._lock:
            if not durable:
                row = self._next_volatile
                self._next_volatile -= 1
                self._volatile[row] = OutboxItem(row, topic, bytes(payload), retain, time.time())
                return row
            cur = self._db.execute(
                "INSERT INTO outbox (topic, payload, retain, created) VALUES (?, ?, ?, ?)",
                (topic, sqlite3.Binary(payload), int(retain), time.time()),
            )
            self._count_commit()
            return int(cur.lastrowid)

    def remove(self, item_id: int) -> None:
        """Forget a message (its PUBACK arrived). Unknown ids are ignored."""
        with self._lock:
            if item_id <= 0:
                self._volatile.pop(item_id, None)
                return
            self._db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            self._count_commit()

    def _count_commit(self) -> None:
        if self.path is not None:  # WAL + synchronous=FULL: one fsync of the log per commit
            count_syncs()

    def pending(self, exclude: Sequence[int] = ()) -> list[OutboxItem]:
        """Messages still waiting for a PUBACK, oldest first, minus the ids in ``exclude``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, retain, created FROM outbox ORDER BY id"
            ).fetchall()
            volatile = list(self._volatile.values())
        skip = set(exclude)
        items = [
            OutboxItem(id=r[0], topic=r[1], payload=bytes(r[2]), retain=bool(r[3]), created=r[4])
            for r in rows
            if r[0] not in skip
        ]
        if volatile:  # oldest first across both kinds (a stable sort keeps the durable rows' id order)
            items = sorted(items + [v for v in volatile if v.id not in skip], key=lambda item: item.created)
        return items

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]) + len(self._volatile)

    def close(self) -> None:
        """Close the database; pending messages stay on disk for the next start."""
        with self._lock:
            self._db.close()
