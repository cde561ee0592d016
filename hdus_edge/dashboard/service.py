"""``Dashboard``: the broker mirror, the admin dir and the web server joined into one running service.

It needs the admin's public key only (``keys/admin.pub``), never the private one: the dashboard can
read and check everything and sign nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hdus_edge.dashboard.admin_files import read_admin_view
from hdus_edge.dashboard.feed import FleetFeed
from hdus_edge.dashboard.fleet_view import VerifyMemo, build_snapshot
from hdus_edge.dashboard.mirror import BrokerMirror
from hdus_edge.dashboard.server import DashboardServer
from hdus_edge.protocol.crypto import load_verify_key
from hdus_edge.protocol.topics import Topics
from hdus_edge.state import AdminDir
from hdus_edge.transport.mqtt import TlsFiles

logger = logging.getLogger(__name__)


class Dashboard:
    """``start()`` connects to the broker and serves the page; ``stop()`` undoes both."""

    def __init__(
        self,
        admin: AdminDir,
        *,
        broker_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8080,
        token: str | None = None,
        state_dirs: Sequence[Path] = (),
    ) -> None:
        fleet = admin.fleet()
        self.admin = admin
        self.fleet = fleet.fleet.name
        self.admin_key = load_verify_key(admin.pub_file)
        self.state_dirs = tuple(Path(p) for p in state_dirs)
        self.memo = VerifyMemo()  # used by the feed's one render thread only
        # The admin's own login (TLS client certificate and password from broker-config), as ``unlearn`` uses.
        url = broker_url or admin.broker_url()
        self.mirror = BrokerMirror(url, Topics(self.fleet), tls=TlsFiles.for_url(url, admin.tls_dir))
        self.feed = FleetFeed(self.render, self.mirror.wait_change, stamp=self.stamp)
        self.server = DashboardServer(self.feed, host, port, token=token)

    @property
    def url(self) -> str:
        return self.server.url

    def render(self) -> dict[str, Any]:
        """The current fleet view as JSON (what ``/api/fleet.json`` serves), with the broker link's state."""
        view = read_admin_view(self.admin, self.fleet, self.admin_key, self.state_dirs)
        doc = build_snapshot(view, self.mirror.messages(), memo=self.memo).to_json()
        self.mirror.want_seeds_for(d["device_id"] for d in doc["devices"])
        doc["broker"] = {"url": self.mirror.url, "connected": self.mirror.connected,
                         "topics": len(self.mirror.messages()), "dropped": self.mirror.dropped,
                         "seed_inboxes": self.mirror.following}
        return doc

    def stamp(self) -> tuple[object, ...]:
        """What, besides broker messages, changes the view: file times in the admin dir and state dirs,
        and the broker link (a new evidence file renames into ``evidence/``, changing its time)."""
        paths = [self.admin.registry_file, self.admin.evidence_dir, *(s / "status.json" for s in self.state_dirs)]
        return (*(_mtime_ns(p) for p in paths), self.mirror.connected, self.mirror.following)

    def start(self, connect_timeout: float = 10.0) -> Dashboard:
        try:
            self.mirror.start(timeout=connect_timeout)
            self.feed.start()
            self.server.start()
        except BaseException:
            self.stop()
            raise
        logger.info("dashboard for fleet %s on %s", self.fleet, self.server.url.split("?")[0])
        return self

    def stop(self) -> None:
        self.feed.stop()
        self.server.stop()
        self.mirror.close()

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
