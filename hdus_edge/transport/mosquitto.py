"""Mosquitto for real fleets and tests: config, per-device ACL, password file, a managed process.

``render_config`` writes a ``mosquitto.conf`` (2.0 syntax) for one loopback listener, optionally a
TLS listener (client certificates required, the certificate's CN used as the user name), persistence,
queue and size limits. ``acl_rules`` gives each device write access only to topics that carry its own
id as the sender (``%u`` = user name = device id). ``write_password_file`` hashes passwords with
Debian's ``mosquitto_passwd``. ``MosquittoProcess`` runs ``mosquitto -c FILE``, waits until it accepts
connections, and can stop, kill and restart it on the same port (fault tests), logs in a file.
``MosquittoBridge`` is one ``connection`` section: this broker bridging a topic tree to another.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from hdus_edge.errors import TransportError
from hdus_edge.transport.ports import free_port

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
INSTALL_HINT = "install Mosquitto: 'apt-get install mosquitto' (Debian/Ubuntu) or 'brew install mosquitto'"
_SEARCH = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin", "/opt/homebrew/sbin", "/opt/homebrew/bin")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # fleet ids and user names that are safe inside topics


@dataclass(frozen=True)
class MosquittoTls:
    """A TLS listener: the broker's certificate, the CA its clients' certificates must chain to."""

    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = True
    # The client certificate's CN becomes the user name, so the same %u ACL patterns apply.
    use_identity_as_username: bool = True


@dataclass(frozen=True)
class MosquittoBridge:
    """A ``connection`` section: this broker bridges ``topics`` to the broker at ``address``, both ways.

    Defaults carry Mosquitto 2.0's bridge behaviour (``man mosquitto.conf``, ``src/bridge.c``):
    ``try_private`` marks the connection as a bridge, so the remote broker neither echoes a message
    back to where it came from nor drops the retain flag (retained seeds and their clears stay
    retained on the other side; the local side subscribes with no-local and retain-as-published by
    itself). ``cleansession false`` + ``local_cleansession false``: QoS 1 messages are queued on
    both sides while the link is down and delivered after it is back. On every (re)connect each side
    also replays its retained messages on ``topics`` to the other.
    """

    name: str
    address: str  # host:port of the remote broker
    topics: tuple[str, ...]  # patterns bridged ``direction``
    remote_clientid: str
    direction: str = "both"  # the fleet needs both; ``out``/``in`` exist for tests that plant a one-way bridge
    remote_username: str | None = None
    remote_password: str | None = field(default=None, repr=False)
    qos: int = 1  # the fleet's QoS both ways: 0 would lose orders and receipts across a cut
    protocol_version: str = "mqttv311"
    try_private: bool = True
    cleansession: bool = False
    local_cleansession: bool = False
    notifications: bool = True  # ``$SYS/broker/connection/<remote_clientid>/state`` (1/0) ...
    notifications_local_only: bool = True  # ... on this broker only: the remote's ACL need not allow $SYS
    keepalive_interval: int = 15  # a dead link is noticed in ~1.5x this
    restart_timeout: tuple[int, int] = (1, 10)  # reconnect backoff: base and cap, seconds
    cafile: Path | None = None  # TLS to the remote when set (with the bridge's client certificate)
    certfile: Path | None = None
    keyfile: Path | None = None

    def lines(self) -> list[str]:
        """The section's config lines."""
        out = [f"connection {self.name}", f"address {self.address}",
               *[f"topic {t} {self.direction} {self.qos}" for t in self.topics],
               f"remote_clientid {self.remote_clientid}",
               f"bridge_protocol_version {self.protocol_version}",
               f"try_private {_bool(self.try_private)}",
               f"cleansession {_bool(self.cleansession)}",
               f"local_cleansession {_bool(self.local_cleansession)}",
               f"notifications {_bool(self.notifications)}",
               f"notifications_local_only {_bool(self.notifications_local_only)}",
               f"keepalive_interval {self.keepalive_interval}",
               f"restart_timeout {self.restart_timeout[0]} {self.restart_timeout[1]}",
               "start_type automatic"]
        if self.remote_username is not None:
            out.append(f"remote_username {self.remote_username}")
        if self.remote_password is not None:
            out.append(f"remote_password {self.remote_password}")
        if (self.cafile is None) != (self.certfile is None) or (self.certfile is None) != (self.keyfile is None):
            raise ValueError("a TLS bridge needs cafile, certfile and keyfile together")
        if self.cafile is not None:
            out += [f"bridge_cafile {self.cafile}", f"bridge_certfile {self.certfile}",
                    f"bridge_keyfile {self.keyfile}", "bridge_insecure false"]
        return out


@dataclass(frozen=True)
class MosquittoConfig:
    """What goes into ``mosquitto.conf``. Defaults carry the reason for their value."""

    port: int
    host: str = "127.0.0.1"  # loopback: tests and single-host demos; real fleets bind outward
    allow_anonymous: bool = True  # tests; fleets set False together with a password file or TLS
    password_file: Path | None = None
    acl_file: Path | None = None
    tls: MosquittoTls | None = None
    plain: bool = True  # the plain-text listener on ``port``; False with ``tls``: a TLS-only broker
    # Mosquitto's dynamic-security plugin and its JSON file (``hdus_edge.transport.dynsec``).
    dynsec_plugin: Path | None = None
    dynsec_file: Path | None = None
    persistence: bool = False  # keeps sessions, queues and retained messages across restarts
    persistence_dir: Path | None = None  # default: <workdir>/data
    autosave_interval: int = 1800  # Mosquitto's default; it always saves on a clean stop
    # Per offline client. A device away for a while must not lose seeds or unlearn orders queued for
    # it; 1000 (Mosquitto's default) is ample for one fleet's control traffic.
    max_queued_messages: int = 1000
    # Seeds are up to 8 MiB plus a signed header; larger messages are acknowledged and dropped.
    # (Mosquitto 2 suggests max_packet_size instead, but that disconnects the sender, which would
    # reconnect and re-send the same message from its outbox forever.)
    message_size_limit: int = 12 * MIB
    tcp_nodelay: bool = True  # Mosquitto's own sockets; default off would add Nagle delays
    log_types: tuple[str, ...] = ("error", "warning", "notice", "information")
    bridges: tuple[MosquittoBridge, ...] = ()  # after the listeners: a section ends the main config
    extra_lines: tuple[str, ...] = ()  # raw config lines appended at the end (fault tests)


def render_config(config: MosquittoConfig, persistence_dir: Path | None = None) -> str:
    """The text of a ``mosquitto.conf`` for ``config``."""
    lines = [
        "# generated by hdus-edge (hdus_edge.transport.mosquitto); edits are overwritten",
        "per_listener_settings false",
    ]
    if os.name == "posix" and os.geteuid() == 0:
        # As root, Mosquitto drops to user 'mosquitto', which could not read our files.
        lines.append("user root")
    lines += [
        f"allow_anonymous {_bool(config.allow_anonymous)}",
        f"max_queued_messages {config.max_queued_messages}",
        f"message_size_limit {config.message_size_limit}",
        f"set_tcp_nodelay {_bool(config.tcp_nodelay)}",
        "log_dest stderr",
        "log_timestamp true",
        "connection_messages true",
        # error + notice always: MosquittoProcess reads startup failures and "running" from the log.
        *[f"log_type {t}" for t in dict.fromkeys(("error", "notice", *config.log_types))],
    ]
    if config.password_file is not None:
        lines.append(f"password_file {config.password_file}")
    if config.acl_file is not None:
        lines.append(f"acl_file {config.acl_file}")
    if (config.dynsec_plugin is None) != (config.dynsec_file is None):
        raise ValueError("dynsec_plugin and dynsec_file go together")
    if config.dynsec_plugin is not None:
        lines += [f"plugin {config.dynsec_plugin}", f"plugin_opt_config_file {config.dynsec_file}"]
    if not config.plain and config.tls is None:
        raise ValueError("plain=False needs a TLS listener")
    if config.persistence:
        where = config.persistence_dir or persistence_dir
        if where is None:
            raise ValueError("persistence=True needs a persistence_dir")
        lines += [
            "persistence true",
            f"persistence_location {str(where).rstrip('/')}/",  # Mosquitto wants the trailing slash
            f"autosave_interval {config.autosave_interval}",
        ]
    else:
        lines.append("persistence false")
    if config.plain:
        lines += ["", f"listener {config.port} {config.host}"]
    if config.tls is not None:
        tls = config.tls
        lines += [
            "",
            f"listener {tls.port} {config.host}",
            f"cafile {tls.ca_file}",
            f"certfile {tls.cert_file}",
            f"keyfile {tls.key_file}",
            f"require_certificate {_bool(tls.require_certificate)}",
            f"use_identity_as_username {_bool(tls.use_identity_as_username)}",
        ]
    lines += list(config.extra_lines)
    for bridge in config.bridges:
        lines += ["", *bridge.lines()]
    return "\n".join(lines) + "\n"


def acl_rules(fleet: str, admins: Sequence[str] = ("admin",)) -> str:
    """Mosquitto ACL text for fleet ``fleet`` (topics of DESIGN.md section 4).

    A device (user name = device id) may write only where it is the sender: its own ``devices/<id>/``
    subtree (hello, presence), ``seeds/<to>/<id>``, ``membership/<id>``, ``unlearn/<id>`` (forget
    me), ``receipts/<request>/<id>``; plus ``seeds/<id>/+``, to clear retained seeds addressed to it
    after an unlearn (only it reads those). It reads the seeds addressed to it and the fleet's public
    topics. ``admins`` may read and write everything under the fleet's root (unlearn orders,
    membership, clearing a forgotten device's topics). Anonymous clients get nothing.
    """
    if not _NAME.match(fleet):
        raise ValueError(f"fleet id must match {_NAME.pattern}, got {fleet!r}")
    root = f"hdus/v1/{fleet}"
    lines = [f"# hdus-edge ACL for fleet {fleet}: %u is the device id (user name or certificate CN)"]
    for admin in admins:
        if not _NAME.match(admin):
            raise ValueError(f"admin user name must match {_NAME.pattern}, got {admin!r}")
        lines += [f"user {admin}", f"topic readwrite {root}/#", ""]
    lines += [
        f"pattern write {root}/devices/%u/#",
        f"pattern write {root}/seeds/+/%u",
        f"pattern write {root}/seeds/%u/+",
        f"pattern write {root}/membership/%u",
        f"pattern write {root}/unlearn/%u",
        f"pattern write {root}/receipts/+/%u",
        f"pattern write {root}/tombstones/%u",
        f"pattern read {root}/devices/#",
        f"pattern read {root}/seeds/%u/+",
        f"pattern read {root}/membership/+",
        f"pattern read {root}/unlearn/+",
        f"pattern read {root}/receipts/#",
        f"pattern read {root}/tombstones/+",
    ]
    return "\n".join(lines) + "\n"


def write_acl_file(path: Path, fleet: str, admins: Sequence[str] = ("admin",)) -> Path:
    """Write ``acl_rules(fleet, admins)`` to ``path``; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(acl_rules(fleet, admins))
    return path


def write_password_file(path: Path, users: Mapping[str, str], passwd_binary: str | None = None) -> Path:
    """Write a Mosquitto password file for ``users`` (name -> password), hashed by ``mosquitto_passwd -U``."""
    if not users:
        raise ValueError("at least one user is needed")
    for name, secret in users.items():
        if not _NAME.match(name) or ":" in secret or "\n" in secret:
            raise ValueError(f"bad user name or password for {name!r} (no ':' or newlines; name {_NAME.pattern})")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.writelines(f"{name}:{secret}\n" for name, secret in users.items())
    binary = passwd_binary or find_binary("mosquitto_passwd")
    # -U hashes every plain-text line in place: one process for all users.
    result = subprocess.run([binary, "-U", str(path)], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise TransportError(f"mosquitto_passwd -U {path} failed: {result.stderr.strip() or result.stdout.strip()}")
    return path


def find_binary(name: str = "mosquitto") -> str:
    """Path of a Mosquitto binary (``mosquitto``, ``mosquitto_passwd``); ``TransportError`` if absent."""
    found = shutil.which(name)
    if found:
        return found
    for folder in _SEARCH:  # /usr/sbin is often not on a normal user's PATH
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise TransportError(f"{name} is not installed (not on PATH nor in {', '.join(_SEARCH)})", hint=INSTALL_HINT)


class MosquittoProcess:
    """A Mosquitto broker process with a generated config, on loopback.

    ``start()`` returns when the listener(s) accept connections; ``stop()`` is a clean SIGTERM
    (Mosquitto saves its persistence db), ``kill()`` a SIGKILL (a crash), ``restart()`` stop + start
    on the same port(s). Config, log and persistence live under ``workdir``.
    """

    def __init__(
        self,
        workdir: Path,
        config: MosquittoConfig | None = None,
        *,
        binary: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        """Prepare (not start) a broker; ``config=None`` means defaults on a free port."""
        self.workdir = Path(workdir)
        self.config = config if config is not None else MosquittoConfig(port=free_port())
        self.binary = binary or find_binary("mosquitto")
        self.start_timeout = start_timeout
        self.config_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.persistence_dir = self.config.persistence_dir or self.workdir / "data"
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def with_options(cls, workdir: Path, **options: object) -> MosquittoProcess:
        """Build from ``MosquittoConfig`` fields; ``port`` defaults to a free port."""
        options.setdefault("port", free_port())
        return cls(workdir, MosquittoConfig(**options))  # type: ignore[arg-type]

    @property
    def port(self) -> int:
        """The plain listener's port."""
        return self.config.port

    @property
    def url(self) -> str:
        """``mqtt://host:port`` of the plain listener (``mqtts://`` of the TLS one on a TLS-only broker)."""
        if not self.config.plain:
            return self.tls_url
        return f"mqtt://{self.config.host}:{self.config.port}"

    @property
    def tls_url(self) -> str:
        """``mqtts://host:port`` of the TLS listener (``ValueError`` when there is none)."""
        if self.config.tls is None:
            raise ValueError("this broker has no TLS listener")
        return f"mqtts://{self.config.host}:{self.config.tls.port}"

    @property
    def pid(self) -> int | None:
        """Process id while running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> MosquittoProcess:
        """Write the config, start Mosquitto, wait until its listeners accept connections."""
        if self.running:
            raise RuntimeError("mosquitto is already running")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.config.persistence:
            self.persistence_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(render_config(self.config, self.persistence_dir))
        with open(self.log_path, "ab") as log:
            offset = log.tell()
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        # Ready = this run logged "running" (after opening every listener) and is still alive.
        # A port probe alone is not enough: another process may hold the port.
        deadline = time.monotonic() + self.start_timeout
        while not self._logged_running(offset):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise TransportError(
                    f"mosquitto did not start on {self.config.host}:{self.config.port}: {self.log_tail()}",
                    hint=f"see {self.log_path} and {self.config_path}",
                )
            time.sleep(0.01)
        logger.info("mosquitto pid %d listening on %s", self._proc.pid, self.url)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM and wait (Mosquitto saves persistence on a clean exit); SIGKILL if it hangs."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("mosquitto pid %d ignored SIGTERM; killing it", self._proc.pid)
                self._proc.kill()
                self._proc.wait(timeout)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, nothing saved since the last autosave."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None

    def restart(self, kill: bool = False) -> MosquittoProcess:
        """Stop (or kill) and start again on the same port(s) with the same config."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start()

    def reconfigure(self, **changes: object) -> None:
        """Change config fields for the next ``start()`` (the ports stay unless given)."""
        self.config = dataclasses.replace(self.config, **changes)  # type: ignore[arg-type]

    def _logged_running(self, offset: int) -> bool:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return b" running\n" in fh.read()
        except FileNotFoundError:
            return False

    def log_text(self) -> str:
        """Everything Mosquitto logged so far (all runs)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` log lines, for error messages."""
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> MosquittoProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _bool(value: bool) -> str:
    return "true" if value else "false"
