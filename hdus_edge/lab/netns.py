"""Test hosts on one machine: network namespaces joined to this one by veth links (iproute2, root).

A fleet run puts each group of devices in its own namespace, as on separate hosts: its agents reach
the broker only through their group's veth link, at an address of the link's far end. Links can be
flapped (taken down and up). Shaping (delay, jitter, loss) is done by a ``lab.proxy.TcpProxy`` that
listens on the group's link address in front of the broker, because this machine's kernel has no
``sch_netem`` (``tc qdisc ... netem`` is refused).

Addresses come from 198.18.0.0/15, the range RFC 2544 sets aside for benchmarks: never routed, and
the links exist only inside namespaces this run creates. Everything is torn down on ``close()``
(also when the run fails); namespaces left by a run that was killed carry its pid in their name and
are removed by the next run.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass

from hdus_edge.errors import ConfigError

logger = logging.getLogger(__name__)

PREFIX = "hdus-"
MAX_GROUPS = 250


@dataclass(frozen=True)
class Site:
    """One group's host: its namespace, and the two ends of its link."""

    index: int
    namespace: str
    host_if: str  # this machine's end
    host_address: str  # where the group reaches the broker (a proxy or a listener binds here)
    address: str  # the group's own address, inside its namespace


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> list[str]:
    """Delete ``hdus-<pid>-*`` namespaces whose creating process is gone; return their names."""
    out = _ip("netns", "list", check=False).stdout
    removed = []
    for line in out.splitlines():
        name = line.split()[0] if line.strip() else ""
        parts = name.split("-")
        if not name.startswith(PREFIX) or len(parts) != 3 or not parts[1].isdigit():
            continue
        if not _alive(int(parts[1])):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    if removed:
        logger.warning("removed %d namespaces left by a killed run: %s", len(removed), ", ".join(removed))
    return removed


class NetworkLab:
    """``groups`` namespaces, each linked to this one; use as a context manager."""

    def __init__(self, groups: int) -> None:
        if not 1 <= groups <= MAX_GROUPS:
            raise ConfigError(f"a network lab has 1..{MAX_GROUPS} groups, not {groups}")
        if os.geteuid() != 0:
            raise ConfigError("network namespaces need root", hint="run as root, or use --net local")
        self.groups = groups
        self.sites: list[Site] = []
        self._tag = f"{PREFIX}{os.getpid()}"

    def open(self) -> NetworkLab:
        """Create every namespace and link (undone at once if any step fails)."""
        remove_stale_namespaces()
        try:
            for k in range(self.groups):
                self._add_site(k)
        except BaseException:
            self.close()
            raise
        logger.info("network lab: %d namespaces on 198.18.0.0/15", self.groups)
        return self

    def _add_site(self, k: int) -> Site:
        ns = f"{self._tag}-{k}"
        host_if, peer_if = f"hv{os.getpid() % 100000}h{k}", f"hv{os.getpid() % 100000}d{k}"
        site = Site(k, ns, host_if, f"198.18.{k}.1", f"198.18.{k}.2")
        _ip("netns", "add", ns)
        self.sites.append(site)  # from here on, close() removes it
        _ip("link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        _ip("link", "set", peer_if, "netns", ns)
        _ip("addr", "add", f"{site.host_address}/24", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{site.address}/24", "dev", peer_if)
        _ip("-n", ns, "link", "set", peer_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        return site

    def exec_prefix(self, site: Site) -> list[str]:
        """The command prefix that runs a program inside ``site``'s namespace."""
        return ["ip", "netns", "exec", site.namespace]

    def set_link(self, site: Site, up: bool) -> None:
        """Take ``site``'s link down (every connection through it stalls, then times out) or up."""
        _ip("link", "set", site.host_if, "up" if up else "down")

    def close(self) -> None:
        """Delete every namespace (its end of the link goes with it, and so does ours). Idempotent."""
        for site in self.sites:
            _ip("netns", "del", site.namespace, check=False)
            _ip("link", "del", site.host_if, check=False)
        self.sites.clear()

    def __enter__(self) -> NetworkLab:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()
