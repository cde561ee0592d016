"""``FleetFeed``: rebuilds the fleet snapshot when anything changes and hands the latest JSON to the web.

One thread renders; any number of HTTP threads read. It renders on every broker message (debounced, so
a burst renders once) and when ``stamp()`` (checked every ``poll_s`` seconds: file times of the admin
dir, the broker link's state) changes, so an idle fleet costs a few ``stat`` calls, not a render. A new
version is published only when the JSON differs apart from its time stamp. Rendering errors are
logged and the last good version stays up.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

DEBOUNCE_S = 0.05  # a burst of messages (an unlearn, a start-up) renders once
POLL_S = 0.5  # disk changes show within this, pushes within 1 s in all


class FleetFeed:
    """The latest snapshot as JSON bytes with a version number; ``wait_newer`` blocks until it moves."""

    def __init__(
        self,
        render: Callable[[], dict[str, Any]],
        wait_change: Callable[[int, float], int],
        *,
        stamp: Callable[[], object] = lambda: None,
        poll_s: float = POLL_S,
    ) -> None:
        self._render = render
        self._wait_change = wait_change
        self._stamp = stamp
        self._poll_s = poll_s
        self._cond = threading.Condition()
        self._version = 0
        self._body = b"{}"
        self._compare: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hdus-dashboard-feed", daemon=True)

    def start(self) -> FleetFeed:
        self.refresh()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def current(self) -> tuple[int, bytes]:
        with self._cond:
            return self._version, self._body

    def wait_newer(self, version: int, timeout: float) -> tuple[int, bytes] | None:
        """The latest (version, body) once newer than ``version``; None after ``timeout`` or on stop."""
        with self._cond:
            self._cond.wait_for(lambda: self._version > version or self._stop.is_set(), timeout)
            if self._version > version and not self._stop.is_set():
                return self._version, self._body
            return None

    def refresh(self) -> bool:
        """Render now; True when a new version was published."""
        try:
            doc = self._render()
        except Exception:  # a bug in rendering must not take the page down; the last version stays
            logger.exception("dashboard: rendering the fleet view failed")
            return False
        compare = {k: v for k, v in doc.items() if k != "generated_at"}
        with self._cond:
            if compare == self._compare:
                return False
            self._compare = compare
            self._version += 1
            self._body = json.dumps(doc, default=str).encode()
            self._cond.notify_all()
            return True

    def _loop(self) -> None:
        seen = self._wait_change(-1, 0)
        last_stamp = self._stamp()
        while not self._stop.is_set():
            changed = self._wait_change(seen, self._poll_s)
            if self._stop.is_set():
                return
            stamp = self._stamp()
            if changed == seen and stamp == last_stamp:
                continue
            if changed != seen:
                time.sleep(DEBOUNCE_S)
                seen = self._wait_change(changed, 0)
            last_stamp = self._stamp()
            self.refresh()
