"""Loopback ports: pick a free one, wait until a listener accepts connections."""

from __future__ import annotations

import socket
import time


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    The kernel picks it; there is a small window before the caller binds it, which is fine for
    brokers started by tests and the CLI (a clash shows up as a bind error, not silently).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when a TCP connection to ``host:port`` succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(host: str, port: int, timeout: float) -> bool:
    """Poll until ``host:port`` accepts a connection; False if ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        if port_open(host, port):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
