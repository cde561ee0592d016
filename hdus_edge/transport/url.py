"""Broker URLs: ``mqtt://[user:pass@]host[:port]`` and ``mqtts://...`` (TLS).

Pure: parsing only, no sockets. Anything else (another scheme, a path, a query, a bad port) raises
``BrokerURLError`` naming the part that is wrong.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass, field, replace

from hdus_edge.errors import BrokerURLError

# IANA-registered MQTT ports; used when the URL leaves the port out.
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}

_EXPECTED = "expected mqtt://host:port or mqtts://host:port, optionally with user:password@"


@dataclass(frozen=True)
class BrokerURL:
    """Where a broker listens and how to log in.

    ``password`` is left out of ``repr`` so URLs can be logged; ``str()`` gives the redacted form too.
    """

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        """True for ``mqtts://``: the connection must use TLS."""
        return self.scheme == "mqtts"

    def redacted(self) -> str:
        """The URL without the password, for logs and error messages."""
        user = f"{urllib.parse.quote(self.username, safe='')}@" if self.username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}"

    def __str__(self) -> str:
        return self.redacted()

    @classmethod
    def parse(cls, text: str) -> BrokerURL:
        """Parse ``text``; raise ``BrokerURLError`` when it is not a broker URL we support."""
        return parse_broker_url(text)


def parse_broker_url(text: str) -> BrokerURL:
    """Parse a broker URL such as ``mqtt://127.0.0.1:1883`` or ``mqtts://dev1:secret@broker:8883``."""
    if not isinstance(text, str):
        raise TypeError(f"broker URL must be a str, not {type(text).__name__}")
    raw = text.strip()
    if not raw:
        raise BrokerURLError(f"empty broker URL; {_EXPECTED}")
    if "://" not in raw:
        raise BrokerURLError(f"broker URL {raw!r} has no scheme; {_EXPECTED}")
    parts = urllib.parse.urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise BrokerURLError(f"broker URL {_safe(raw)!r} has scheme {parts.scheme!r}; {_EXPECTED}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BrokerURLError(f"broker URL {_safe(raw)!r} has a path, query or fragment; {_EXPECTED}")
    try:
        port = parts.port  # raises ValueError for non-numeric or out-of-range ports
    except ValueError:
        raise BrokerURLError(f"broker URL {_safe(raw)!r} has an invalid port; use 1-65535") from None
    if port == 0:
        raise BrokerURLError(f"broker URL {_safe(raw)!r} has port 0; use 1-65535")
    host = parts.hostname
    if not host:
        raise BrokerURLError(f"broker URL {_safe(raw)!r} has no host; {_EXPECTED}")
    username = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    if username == "":
        raise BrokerURLError(f"broker URL {_safe(raw)!r} has an empty user name")
    return BrokerURL(
        scheme=scheme,
        host=host,
        port=port if port is not None else DEFAULT_PORTS[scheme],
        username=username,
        password=password,
    )


INSECURE_ENV = "HDUS_INSECURE"
"""Set to 1 (``hdus-edge --insecure``) to allow plain-text ``mqtt://`` to a host that is not loopback."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): traffic that never leaves the host."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plaintext(url: BrokerURL, insecure: bool) -> None:
    """Refuse plain-text ``mqtt://`` to a host that is not loopback unless ``insecure`` (a lab).

    Passwords and every seed would cross the network in clear; ``mqtts://`` with the state dir's
    ``keys/tls/`` client certificate is the default ``broker-config`` writes.
    """
    if url.tls or insecure or is_loopback(url.host):
        return
    raise BrokerURLError(
        f"plain-text broker URL {url} leaves this host unencrypted; refused",
        hint="use mqtts:// (hdus-edge broker-config writes a TLS broker), or pass --insecure for a lab network",
    )


def companion_login(url: BrokerURL, client_id: str, role: str = "cli") -> tuple[BrokerURL, str]:
    """The login of a device's one-shot commands next to its agent: user ``<user>@<role>``, client id
    ``<client_id>@<role>``. The broker binds each client id to one user, so a command must not reuse the
    agent's (it would take the agent's session over); '@' never occurs in a device id."""
    user = companion_user(url.username, role) if url.username is not None else None
    return replace(url, username=user), f"{client_id}@{role}"


def companion_user(username: str, role: str = "cli") -> str:
    """The user name of ``username``'s one-shot commands (see ``companion_login``)."""
    return f"{username}@{role}"


def _safe(raw: str) -> str:
    # Never echo a password back in an error message.
    scheme, sep, rest = raw.partition("://")
    if "@" not in rest:
        return raw
    cred, _, tail = rest.rpartition("@")
    user = cred.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{tail}" if ":" in cred else raw
