"""Bridged brokers in the lab: a core Mosquitto and site Mosquittos, with bridges the lab can cut.

``BridgedBrokers`` runs the configs ``broker-config --bridge`` writes (``admin.bridge``: the same
dynamic-security logins on every broker, each site's bridge with its own login at the core), in
plain text (the lab's own loopback and namespace links), with two lab changes: each broker also
listens on extra addresses (a namespace's link), and each site's bridge dials the core through its
own ``TcpProxy``, so that ``cut(site)`` takes that bridge down and ``restore(site)`` brings it back.
A cut stops the proxy's listener (the bridge's reconnects are refused) rather than accepting and
closing at once: a TLS bridge of Debian's Mosquitto 2.0.11 hangs on that (``tests/test_bridged_brokers``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from hdus_edge.admin.bridge import BridgedFiles, write_bridged_config
from hdus_edge.lab.proxy import TcpProxy
from hdus_edge.protocol.topics import Topics
from hdus_edge.state import AdminDir
from hdus_edge.transport.mosquitto import MosquittoProcess
from hdus_edge.transport.mqtt import MqttTransport
from hdus_edge.transport.ports import free_port

logger = logging.getLogger(__name__)


class BridgedBrokers:
    """A core and ``sites`` site brokers for the fleet of ``admin`` (its ``keys/broker.json`` names them all)."""

    def __init__(self, admin: AdminDir, root: Path, *, sites: int = 2, listen_on: Iterable[str] = (),
                 core_port: int | None = None) -> None:
        self.admin = admin
        self.fleet = admin.fleet().fleet.name
        core_port = core_port or free_port()
        self.files: BridgedFiles = write_bridged_config(
            admin, Path(root), sites=sites, core_port=core_port, site_ports=tuple(free_port() for _ in range(sites)),
            insecure_plaintext=True, persistence=False)
        self.credentials = json.loads(self.files.credentials.read_text())
        extra = tuple(f"listener {{port}} {host}" for host in listen_on)
        self.proxies: dict[str, TcpProxy] = {}
        self.brokers: dict[str, MosquittoProcess] = {}
        self.cuts = 0
        for b in self.files.brokers:
            cfg = replace(b.mosquitto, extra_lines=tuple(line.format(port=b.mosquitto.port) for line in extra))
            if cfg.bridges:
                proxy = TcpProxy("127.0.0.1", core_port)
                self.proxies[b.name] = proxy
                cfg = replace(cfg, bridges=tuple(replace(x, address=f"127.0.0.1:{proxy.port}") for x in cfg.bridges))
            self.brokers[b.name] = MosquittoProcess(b.folder, cfg)

    @property
    def core_url(self) -> str:
        """The admin's login at the core (with its password: the lab's own plain-text link)."""
        return self.admin.broker_url()

    def device_url(self, device: str, host: str | None = None) -> str:
        """``device``'s login at its site broker, dialled at ``host`` (default: loopback)."""
        url = self.credentials[device]["url"]
        return url if host is None else url.replace("@127.0.0.1:", f"@{host}:")

    def start(self) -> BridgedBrokers:
        """Core first (the bridges dial it), then the proxies and the sites."""
        self.brokers["core"].start()
        for proxy in self.proxies.values():
            proxy.start()
        for name, broker in self.brokers.items():
            if name != "core":
                broker.start()
        return self

    def stop(self) -> None:
        for broker in self.brokers.values():
            broker.stop()
        for proxy in self.proxies.values():
            proxy.stop()

    def cut(self, site: str) -> None:
        """Take ``site``'s bridge down until ``restore(site)``: its link is cut and reconnects are refused."""
        self.proxies[site].stop()
        self.cuts += 1

    def restore(self, site: str) -> None:
        """Let ``site``'s bridge reconnect (Mosquitto retries on its own backoff)."""
        old = self.proxies[site]
        self.proxies[site] = TcpProxy(*old.upstream, port=old.port).start()

    def wait_bridges_up(self, timeout: float = 60.0) -> bool:
        """Until a fresh retained probe from each site is on every broker (every bridge carries both
        ways). Published anew each round: one published while a bridge reconnects can be overwritten
        by the other side's replay of its older copy."""
        urls = self.admin_urls()
        topic = f"{Topics(self.fleet).root}/probe"
        sites = [name for name in urls if name in self.proxies]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stamp = uuid.uuid4().hex[:8]
            for site in sites:
                t = MqttTransport(urls[site], f"lab-probe-{stamp}", clean_session=True)
                try:
                    t.connect(timeout=10)
                    t.publish(f"{topic}/{site}", stamp.encode(), retain=True, wait=True, timeout=10)
                finally:
                    t.close()
            time.sleep(0.5)
            want = {f"{topic}/{site}": stamp.encode() for site in sites}
            if all(retained_messages(url, [f"{topic}/+"], 0.3) == want for url in urls.values()):
                return True
        return False

    def admin_urls(self) -> dict[str, str]:
        """Broker name -> the admin's login URL there."""
        return {b["name"]: b["url"] for b in json.loads(self.admin.broker_access_file.read_text())["brokers"]}

    def retained(self, filters: list[str], wait_s: float = 1.0) -> dict[str, list[str]]:
        """Broker name -> topics on ``filters`` holding a non-empty retained message there."""
        return {name: retained_topics(url, filters, wait_s) for name, url in self.admin_urls().items()}

    def forgotten_seeds_retained(self, forgotten: Iterable[str]) -> dict[str, list[str]]:
        """Broker name -> the retained seeds of forgotten devices (``seeds/+/<device>``) it still holds."""
        root = Topics(self.fleet).root
        filters = [f"{root}/seeds/+/{d}" for d in forgotten]
        return self.retained(filters) if filters else {name: [] for name in self.brokers}

    def __enter__(self) -> BridgedBrokers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def retained_topics(broker_url: str, filters: list[str], wait_s: float = 1.0) -> list[str]:
    """The topics on ``filters`` that hold a non-empty retained message at ``broker_url`` (sorted)."""
    return sorted(retained_messages(broker_url, filters, wait_s))


def retained_messages(broker_url: str, filters: list[str], wait_s: float = 1.0) -> dict[str, bytes]:
    """Topic -> payload of the non-empty retained messages on ``filters`` at ``broker_url``."""
    found: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_message(topic: str, payload: bytes, retained: bool) -> None:
        if retained and payload:
            with lock:
                found[topic] = payload

    t = MqttTransport(broker_url, f"lab-look-{uuid.uuid4().hex[:8]}", handler=on_message, clean_session=True)
    try:
        t.subscribe(filters)
        t.connect(timeout=10)
        time.sleep(wait_s)
    finally:
        t.close()
    with lock:
        return dict(found)
