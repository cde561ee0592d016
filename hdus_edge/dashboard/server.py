"""The dashboard's read-only web server: the page, ``/api/fleet.json`` and a server-sent event stream.

Why the standard library (``http.server.ThreadingHTTPServer``) and server-sent events: the page is
read-only and needs one server-to-browser stream, which SSE is (plain HTTP, reconnects on its own in
every browser's ``EventSource``); a websocket would add a dependency for a direction we never use.
The server is maintained with CPython, adds nothing to install on the admin's machine, and is the one
the device's inference API uses too. One thread per client is fine at an admin's handful of tabs;
streams are capped (``max_streams``) so a flood of clients cannot exhaust threads.

Access: listening on loopback, only requests whose ``Host`` names loopback are served (a web page
elsewhere cannot reach the fleet view through DNS rebinding); with a token (required when listening
elsewhere), the page and the API answer only to ``?token=...`` or ``Authorization: Bearer ...``.
Static assets hold no fleet data and need no token. Responses carry a strict Content-Security-Policy
(scripts and styles only from this server, nothing from the internet) and ``no-store``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import select
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from urllib.parse import parse_qs, urlsplit

from hdus_edge.dashboard.feed import FleetFeed
from hdus_edge.errors import ConfigError

logger = logging.getLogger(__name__)

KEEPALIVE_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
GONE_CHECK_S = 1.0  # how soon a closed client's stream slot is freed
MAX_STREAMS = 32
_STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/static/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) -> (host, port); ``ConfigError`` when malformed."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen {text!r} is not HOST:PORT", hint="e.g. 127.0.0.1:8080, or 0.0.0.0:8080 with --token")
    return host, int(port)


def is_loopback(host: str) -> bool:
    """True when ``host`` names this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _static(name: str) -> bytes:
    return resources.files("hdus_edge.dashboard").joinpath("static", name).read_bytes()


class DashboardServer:
    """Serves one ``FleetFeed`` over HTTP on ``host:port`` (port 0: any free port) until ``stop``."""

    def __init__(self, feed: FleetFeed, host: str, port: int, *, token: str | None = None,
                 max_streams: int = MAX_STREAMS) -> None:
        if not is_loopback(host) and not token:
            raise ConfigError(f"listening on {host} needs an access token", hint="pass --token, or listen on 127.0.0.1")
        self.feed = feed
        self.token = token or None
        self.loopback_only = is_loopback(host)
        self.streams = threading.BoundedSemaphore(max_streams)
        self.pages = {path: (_static(name), ctype) for path, (name, ctype) in _STATIC.items()}
        handler = type("Handler", (_Handler,), {"dashboard": self})
        server_class = _ThreadingHTTPServerV6 if ":" in host else ThreadingHTTPServer
        try:
            self.httpd = server_class((host, port), handler)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                              hint="choose another --listen port") from None
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="hdus-dashboard-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        """The page's URL (with the token, when one is required)."""
        host = str(self.httpd.server_address[0])
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> DashboardServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():  # shutdown() waits for serve_forever, which never ran otherwise
            self.httpd.shutdown()
        self.httpd.server_close()

    def allowed(self, token: str | None) -> bool:
        return self.token is None or (token is not None and hmac.compare_digest(token.encode(), self.token.encode()))


class _ThreadingHTTPServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    dashboard: DashboardServer
    server_version = "hdus-edge-dashboard"
    sys_version = ""

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self._serve(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        url = urlsplit(self.path)
        d = self.dashboard
        if d.loopback_only and not self._host_is_loopback():
            self._plain(HTTPStatus.FORBIDDEN, "this dashboard answers on loopback names only\n", head)
            return
        if url.path.startswith("/static/") and url.path in d.pages:
            self._bytes(HTTPStatus.OK, *d.pages[url.path], head)
            return
        if url.path not in d.pages and url.path not in ("/api/fleet.json", "/api/events"):
            self._plain(HTTPStatus.NOT_FOUND, "not found\n", head)
            return
        if not d.allowed(self._token(url.query)):
            self._plain(HTTPStatus.UNAUTHORIZED, "access token required: open the URL the dashboard printed\n", head)
            return
        if url.path == "/api/fleet.json":
            self._bytes(HTTPStatus.OK, d.feed.current()[1], "application/json", head)
        elif url.path == "/api/events":
            self._events(head)
        else:
            self._bytes(HTTPStatus.OK, *d.pages[url.path], head)

    def _token(self, query: str) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return auth[len("Bearer "):].strip()
        values = parse_qs(query).get("token")
        return values[0] if values else None

    def _host_is_loopback(self) -> bool:
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.strip("[]").lower() in _LOOPBACK_NAMES

    def _headers(self, status: HTTPStatus, ctype: str, length: int | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")  # the token is in the page's URL
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()

    def _bytes(self, status: HTTPStatus, body: bytes, ctype: str, head: bool) -> None:
        self._headers(status, ctype, len(body))
        if not head:
            self.wfile.write(body)

    def _plain(self, status: HTTPStatus, text: str, head: bool) -> None:
        self._bytes(status, text.encode(), "text/plain; charset=utf-8", head)

    def _events(self, head: bool) -> None:
        d = self.dashboard
        if not d.streams.acquire(blocking=False):
            self._plain(HTTPStatus.SERVICE_UNAVAILABLE, "too many open event streams\n", head)
            return
        try:
            self._headers(HTTPStatus.OK, "text/event-stream", None)
            if head:
                return
            version, body = d.feed.current()
            self._send_event(version, body, first=True)
            idle = 0.0
            while not d.feed.stopped:
                got = d.feed.wait_newer(version, GONE_CHECK_S)
                if got is not None:
                    version, body = got
                    self._send_event(version, body)
                    idle = 0.0
                    continue
                if self._client_gone():
                    return  # frees its stream slot now, not at the next failed write
                idle += GONE_CHECK_S
                if idle >= KEEPALIVE_S:
                    self.wfile.write(b": keep-alive\n\n")
                    self.wfile.flush()
                    idle = 0.0
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the browser went away
        finally:
            d.streams.release()

    def _client_gone(self) -> bool:
        # An EventSource sends nothing after its request: a readable socket means it closed.
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _send_event(self, version: int, body: bytes, first: bool = False) -> None:
        head = b"retry: 1000\n" if first else b""
        self.wfile.write(head + b"id: %d\nevent: fleet\ndata: " % version + body + b"\n\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        # Never the query string: it may carry the token.
        logger.debug("dashboard %s: %s %s", self.address_string(), self.command, urlsplit(self.path).path)
