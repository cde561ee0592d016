"""Test hosts on one machine: network namespaces joined to this one by veth links (iproute2, root).

A fleet run puts each group of devices in its own namespace, as on separate hosts: its agents reach
the broker only through their group's veth link, at an address of the link's far end. Links can be
flapped (taken down and up). Shaping (delay, jitter, loss) is done by a ``lab.proxy.TcpProxy`` that
listens on the group's link address in front of the broker, because this machine's kernel has no
``sch_netem`` (``tc qdisc ... netem`` is refused).

Addresses come from 198.18.0.0/15, the range RFC 2544 sets aside for benchmarks: never routed, and
the links exist only inside namespaces this run creates. Each link takes a /24 that no interface
of this machine holds yet, chosen under a lock file, so two runs at once (two benchmarks, or tests
next to a benchmark) never share an address. Everything is torn down on ``close()``
(also when the run fails); namespaces left by a run that was killed carry its pid in their name and
are removed by the next run.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from hdus_edge.errors import ConfigError

logger = logging.getLogger(__name__)

PREFIX = "hdus-"
MAX_GROUPS = 250
RANGE = ipaddress.ip_network("198.18.0.0/15")
LOCK_FILE = Path("/run/lock/hdus-edge-netns.lock")


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


def free_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """``count`` /24s of 198.18.0.0/15 that no interface of this machine has an address in.

    Call with the lock held (``NetworkLab.open``): the subnets count as taken once addressed."""
    taken = set()
    for line in _ip("-o", "-4", "addr", "show", check=False).stdout.splitlines():
        for word in line.split():
            if "/" in word and word[0].isdigit():
                try:
                    taken.add(ipaddress.ip_interface(word).network)
                except ValueError:
                    continue
    free = [net for net in RANGE.subnets(new_prefix=24) if not any(net.overlaps(t) for t in taken)]
    if len(free) < count:
        raise ConfigError(f"only {len(free)} free /24s left in {RANGE} for {count} links",
                          hint="another run holds the rest; wait for it, or remove its namespaces ('ip netns list')")
    return free[:count]


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
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        with open(LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released on close; another run then sees our addresses
            remove_stale_namespaces()
            try:
                for k, subnet in enumerate(free_subnets(self.groups)):
                    self._add_site(k, subnet)
            except BaseException:
                self.close()
                raise
        logger.info("network lab: %d namespaces on 198.18.0.0/15", self.groups)
        return self

    def _add_site(self, k: int, subnet: ipaddress.IPv4Network) -> Site:
        # Named by the subnet's block (unique on this machine while the lab holds it), not by k:
        # two labs in one process (or one run's leftovers) never clash.
        block = (int(subnet.network_address) - int(RANGE.network_address)) >> 8
        ns = f"{self._tag}-{block}"
        host_if, peer_if = f"hdus{block}h", f"hdus{block}d"
        site = Site(k, ns, host_if, str(subnet[1]), str(subnet[2]))
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
