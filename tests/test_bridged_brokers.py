"""Bridged brokers (issue 17, part 3): a core Mosquitto and two site Mosquittos, as ``broker-config --bridge`` writes them.

The writer alone (what the files say); then real brokers on loopback: retained seeds and their clears
cross the bridges both ways; a revocation deletes the logins at every broker (the plugin's control
topic is not bridged), also at a site whose bridge is down; a fleet forgets a device from the core
with holders on both sites, also with the bridges cut while the order goes out, and nothing forgotten
comes back on any broker or in any ensemble. Each security or crossing check also runs against a
planted weakness (a one-way bridge, a revoke that only reaches the core) where it must fail.
"""

from __future__ import annotations

import json
import stat
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import cli_lifecycle_kit as kit
import pytest

from hdus_edge.admin.bridge import BridgedFiles, write_bridged_config
from hdus_edge.admin.broker import install_device_access
from hdus_edge.device.agent import AgentSettings, DeviceAgent
from hdus_edge.errors import BrokerRefusedError, ConfigError
from hdus_edge.lab.proxy import TcpProxy
from hdus_edge.protocol import codec
from hdus_edge.protocol.fields import ADMIN_ID
from hdus_edge.protocol.messages import UnlearnOrder
from hdus_edge.protocol.topics import Topics
from hdus_edge.reliability.harness import wait_until
from hdus_edge.state import AdminDir
from hdus_edge.transport.mosquitto import MosquittoProcess
from hdus_edge.transport.mqtt import MqttTransport, TlsFiles
from hdus_edge.transport.ports import free_port
from hdus_edge.unlearn.commands import unlearn
from hdus_edge.unlearn.revocation import revoke

FAST = AgentSettings(probe_in_subprocess=False, digest_interval_s=0.5)
ROOT = Topics("kit").root
IDS = ("d1", "d2", "d3", "d4")  # round robin: d1, d3 on site-1; d2, d4 on site-2


def _wait(predicate, timeout: float = 20.0) -> bool:
    return wait_until(predicate, timeout, interval=0.05)


# --- the writer (pure: what the files say) --------------------------------------------------------


def test_bridge_config_writes_a_core_and_two_tls_sites_with_the_same_logins(tmp_path):
    admin, _ = kit.make_fleet(tmp_path, ids=IDS)
    files = write_bridged_config(admin, tmp_path / "b", core_port=18883)
    assert [b.name for b in files.brokers] == ["core", "site-1", "site-2"]
    assert files.site_of == {"d1": "site-1", "d2": "site-2", "d3": "site-1", "d4": "site-2"}
    creds = json.loads(files.credentials.read_text())
    assert stat.S_IMODE(files.credentials.stat().st_mode) == 0o600
    assert creds["d1"]["url"].startswith("mqtts://d1:") and creds["d1"]["url"].endswith("@127.0.0.1:18884")
    assert creds["d2"]["url"].endswith("@127.0.0.1:18885") and creds["admin"]["url"].endswith("@127.0.0.1:18883")
    access = json.loads(admin.broker_access_file.read_text())
    assert [b["name"] for b in access["brokers"]] == ["core", "site-1", "site-2"]
    assert len(admin.broker_urls()) == 3 and admin.broker_urls()[0] == creds["admin"]["url"]
    for b in files.brokers:
        conf = b.config.read_text()
        # TLS only, client certificate and password, dynamic security, nobody anonymous.
        assert "require_certificate true" in conf and "allow_anonymous false" in conf and "plugin " in conf
        assert f"listener {b.mosquitto.tls.port} 127.0.0.1" in conf and b.mosquitto.plain is False
        dyn = json.loads((b.folder / "dynamic-security.json").read_text())
        users = {c["username"]: c for c in dyn["clients"]}
        # Every broker: the same device logins bound to their client ids, and the admin.
        assert {"admin", "d1", "d1@cli", "d4", "d4@cli"} <= set(users) and users["d1"]["clientid"] == "kit.d1"
        assert stat.S_IMODE(b.config.stat().st_mode) == 0o600  # a site's config holds its bridge password
        if b.name == "core":
            assert "connection " not in conf
            assert users["bridge-site-1"]["clientid"] == "bridge.kit.site-1"
            [role] = [r for r in dyn["roles"] if r["rolename"] == "fleet-bridge"]
            assert {a["topic"] for a in role["acls"]} == {f"{ROOT}/#"}  # never $CONTROL
        else:
            assert not any(u.startswith("bridge-") for u in users)
            section = conf[conf.index("connection "):]
            for line in (f"topic {ROOT}/# both 1", "try_private true", "cleansession false", "local_cleansession false",
                         "address 127.0.0.1:18883", f"remote_username bridge-{b.name}",
                         f"remote_password {creds[f'bridge-{b.name}']['password']}",
                         "bridge_insecure false", "bridge_protocol_version mqttv311"):
                assert line in section, (line, section)
            assert f"bridge_certfile {files.folder.resolve()}/devices/bridge-{b.name}/keys/tls/client.crt" in section
    assert json.loads(files.layout.read_text())["site_of"] == files.site_of


def test_bridge_config_plaintext_only_when_asked_and_bad_options_are_one_error(tmp_path, capsys):
    admin, _ = kit.make_fleet(tmp_path, ids=IDS)
    code, out, err = kit.cli(capsys, "broker-config", "--admin-dir", admin.root, "--out", tmp_path / "p", "--bridge",
                             "--sites", "3", "--insecure-plaintext", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["tls"] is False and [b["name"] for b in report["brokers"]] == ["core", "site-1", "site-2", "site-3"]
    assert [b["dial"] for b in report["brokers"]] == ["127.0.0.1:1883", "127.0.0.1:1884", "127.0.0.1:1885",
                                                      "127.0.0.1:1886"]
    site = (tmp_path / "p" / "site-1" / "mosquitto.conf").read_text()
    assert "bridge_cafile" not in site and "require_certificate" not in site and "listener 1884 127.0.0.1" in site
    assert report["urls"]["d4"] == "mqtt://d4@127.0.0.1:1884"
    code, _, err = kit.cli(capsys, "broker-config", "--admin-dir", admin.root, "--out", tmp_path / "q", "--bridge",
                           "--sites", "2", "--site-ports", "9001")
    assert code == 2
    kit.assert_one_error(err, "one port", "2 sites")
    with pytest.raises(ConfigError, match="already holds"):
        write_bridged_config(admin, tmp_path / "p")


# --- real brokers -----------------------------------------------------------------------------------


class Bridged:
    """A fleet, the folder ``write_bridged_config`` wrote, and its three Mosquittos running it.

    ``proxy``: the bridges dial the core through a ``TcpProxy`` (to cut them). ``one_way``: plant a
    bridge that only sends (site -> core), never receives."""

    def __init__(self, tmp: Path, ids=IDS, *, proxy: bool = False, one_way: bool = False, plain: bool = False) -> None:
        self.admin, self.states = kit.make_fleet(tmp, ids=ids)
        core_port = free_port()
        self.proxy = TcpProxy("127.0.0.1", core_port).start() if proxy else None
        self.files: BridgedFiles = write_bridged_config(
            self.admin, tmp / "brokers", core_port=core_port, site_ports=(free_port(), free_port()), persistence=False,
            core_address=f"127.0.0.1:{self.proxy.port}" if self.proxy else None, insecure_plaintext=plain)
        self.creds = json.loads(self.files.credentials.read_text())
        self.brokers = {}
        for b in self.files.brokers:
            cfg = b.mosquitto
            if one_way and cfg.bridges:
                cfg = replace(cfg, bridges=(replace(cfg.bridges[0], direction="out"),))
            self.brokers[b.name] = MosquittoProcess(b.folder, cfg)

    def url(self, user: str, broker: str) -> str:
        """``user``'s login URL at ``broker`` (every broker has every login)."""
        own = self.creds[user]["url"]
        return own.rsplit("@", 1)[0] + "@" + self.files.site(broker).dial

    def login(self, user: str, client_id: str, broker: str, **kw) -> MqttTransport:
        tls = TlsFiles.from_dir(self.files.folder / "devices" / user / "keys" / "tls")
        return MqttTransport(self.url(user, broker), client_id, tls=tls, **kw)

    def retained(self, broker: str, filters: list[str], wait: float = 1.0) -> dict[str, bytes]:
        """Non-empty retained messages on ``filters`` at ``broker``, as the admin sees them."""
        got: dict[str, bytes] = {}
        t = self.login("admin", f"admin-look-{uuid.uuid4().hex[:8]}", broker, clean_session=True,
                       handler=lambda topic, payload, r: got.__setitem__(topic, payload) if r else None)
        t.subscribe(filters)
        t.connect(timeout=10)
        time.sleep(wait)
        t.close()
        return {k: v for k, v in got.items() if v}

    def bridges_up(self, timeout: float = 30.0) -> bool:
        """A fresh retained probe from each site reaches the core and the other site (the bridges carry
        again). Published anew each round: one published while a bridge reconnects can be overwritten
        by the other side's replay of its older copy (see test_a_reconnecting_bridge_...)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = uuid.uuid4().hex[:8].encode()
            for site in ("site-1", "site-2"):
                t = self.login("admin", f"admin-probe-{site}", site, clean_session=True)
                t.connect(timeout=10)
                t.publish(f"{ROOT}/probe/{site}", probe, retain=True, wait=True, timeout=10)
                t.close()
            if _wait(lambda probe=probe: all(self.retained(b, [f"{ROOT}/probe/+"], 0.3) ==
                                 {f"{ROOT}/probe/site-1": probe, f"{ROOT}/probe/site-2": probe}
                                 for b in ("core", "site-1", "site-2")), 3.0):
                return True
        return False

    def cut(self) -> None:
        """Cut both bridges and keep them down: the proxy stops listening (connects are refused).

        Not ``TcpProxy.down()``, which accepts and closes at once: a TLS bridge of Debian's
        Mosquitto 2.0.11 whose handshake meets that EOF hangs the whole site broker (it stops
        answering, even SIGTERM); upstream fixed its SSL_connect use in 2.0.15 (issue #2594)."""
        assert self.proxy is not None
        self.proxy.stop()

    def restore(self) -> None:
        assert self.proxy is not None
        self.proxy = TcpProxy(*self.proxy.upstream, port=self.proxy.port).start()

    def __enter__(self) -> Bridged:
        self.brokers["core"].start()
        for name in ("site-1", "site-2"):
            self.brokers[name].start()
        return self

    def __exit__(self, *exc: object) -> None:
        for b in self.brokers.values():
            b.stop()
        if self.proxy:
            self.proxy.stop()


def _seed_crossings(g: Bridged) -> dict[str, object]:
    """d1 (site-1) publishes a retained seed for d2 (site-2), then clears it; what each broker held."""
    topic = f"{ROOT}/seeds/d2/d1"
    got: list[bytes] = []
    d2 = g.login("d2", "kit.d2", "site-2", clean_session=True, handler=lambda t, p, r: got.append(p))
    d2.subscribe([f"{ROOT}/seeds/d2/+"])
    d2.connect(timeout=10)
    d1 = g.login("d1", "kit.d1", "site-1", clean_session=True)
    d1.connect(timeout=10)
    try:
        d1.publish(topic, b"seed-bytes", retain=True, wait=True, timeout=10)
        live = _wait(lambda: b"seed-bytes" in got, 5)
        held = {b: g.retained(b, [f"{ROOT}/seeds/+/+"]).get(topic) for b in ("core", "site-1", "site-2")}
        d1.publish(topic, b"", retain=True, wait=True, timeout=10)
        time.sleep(0.5)
        after = {b: g.retained(b, [f"{ROOT}/seeds/+/+"]).get(topic) for b in ("core", "site-1", "site-2")}
    finally:
        d1.close()
        d2.close()
    return {"live": live, "held": held, "after": after}


def test_retained_seeds_and_their_clears_cross_the_bridges_both_ways(tmp_path):
    with Bridged(tmp_path) as g:
        assert g.bridges_up()
        seen = _seed_crossings(g)
    assert seen["live"] and seen["held"] == {"core": b"seed-bytes", "site-1": b"seed-bytes", "site-2": b"seed-bytes"}
    assert seen["after"] == {"core": None, "site-1": None, "site-2": None}  # the empty retained clear crossed too


def test_planted_one_way_bridge_fails_the_crossing_check(tmp_path):
    # The same check against bridges that only send site -> core: d2 at site-2 never gets d1's seed.
    with Bridged(tmp_path, one_way=True) as g:
        time.sleep(1.0)
        seen = _seed_crossings(g)
    assert not seen["live"] and seen["held"]["site-2"] is None and seen["held"]["core"] == b"seed-bytes"


def _admin_order(admin: AdminDir, target: str) -> bytes:
    order = UnlearnOrder(target, ADMIN_ID, uuid.uuid4().hex, time.time(), "test", 0)
    return codec.encode(order, admin.key(), ADMIN_ID)


def _refused_at(g: Bridged, user: str) -> dict[str, bool]:
    out = {}
    for b in ("core", "site-1", "site-2"):
        t = g.login(user, f"kit.{user}", b, clean_session=True)
        try:
            t.connect(timeout=5, max_attempts=1)
            out[b] = False
        except BrokerRefusedError:
            out[b] = True
        finally:
            t.close()
    return out


def _revoke_during_a_cut(g: Bridged) -> dict[str, object]:
    """d1's seed for d2 retained everywhere; the bridges go down; the admin revokes d1; they come
    back. What each broker refused and held during the cut, and held once the bridges carry again."""
    d1 = g.login("d1", "kit.d1", "site-1", clean_session=True)
    d1.connect(timeout=10)
    d1.publish(f"{ROOT}/seeds/d2/d1", b"seed-bytes", retain=True, wait=True, timeout=10)
    d1.close()
    assert _wait(lambda: f"{ROOT}/seeds/d2/d1" in g.retained("site-2", [f"{ROOT}/seeds/+/+"], 0.3), 10)
    g.cut()  # both sites cut off from the core
    done = revoke(g.admin, _admin_order(g.admin, "d1"))
    refused = _refused_at(g, "d1")
    held_cut = {b: sorted(g.retained(b, [f"{ROOT}/seeds/+/d1"], 0.5)) for b in ("core", "site-1", "site-2")}
    g.restore()
    assert g.bridges_up()
    time.sleep(1.0)  # the reconnecting bridges replay each side's retained messages to the other
    held_after = {b: sorted(g.retained(b, [f"{ROOT}/seeds/+/d1"], 0.5)) for b in ("core", "site-1", "site-2")}
    return {"done": done, "refused": refused, "held_cut": held_cut, "held_after": held_after}


def test_revoke_deletes_the_logins_at_every_broker_even_a_site_whose_bridge_is_down(tmp_path):
    with Bridged(tmp_path, proxy=True) as g:
        assert g.bridges_up()
        seen = _revoke_during_a_cut(g)
        assert _refused_at(g, "d2") == {"core": False, "site-1": False, "site-2": False}
    assert seen["done"].broker_errors == () and seen["done"].broker_logins_deleted == ("d1", "d1@cli")
    assert seen["refused"] == {"core": True, "site-1": True, "site-2": True}
    nothing = {"core": [], "site-1": [], "site-2": []}
    assert seen["held_cut"] == nothing and seen["held_after"] == nothing  # nothing of d1 comes back


def test_planted_revoke_at_the_core_only_leaves_the_login_and_the_replay_brings_the_seed_back(tmp_path, monkeypatch):
    # The check above against a revoke that acts only where the admin publishes orders (the core).
    monkeypatch.setattr(AdminDir, "broker_urls", lambda self: [self.broker_url()])
    with Bridged(tmp_path, proxy=True) as g:
        assert g.bridges_up()
        seen = _revoke_during_a_cut(g)
    assert seen["refused"] == {"core": True, "site-1": False, "site-2": False}
    assert seen["held_cut"]["site-1"] == [f"{ROOT}/seeds/d2/d1"]
    # The sites replayed their retained copy when their bridge came back: the core holds it again.
    assert seen["held_after"]["core"] == [f"{ROOT}/seeds/d2/d1"], seen["held_after"]


def _start_agents(g: Bridged) -> dict[str, DeviceAgent]:
    for i, st in g.states.items():
        kit.install_models(st, seed=int(i[1:]))
        install_device_access(g.files.folder, i, st)
    agents: dict[str, DeviceAgent] = {}
    try:
        for i in g.states:
            agents[i] = DeviceAgent.from_state_dir(g.states[i], settings=FAST).start()
        assert _wait(lambda: all(len(a.members()) == len(IDS) - 1 for a in agents.values()), 60), \
            {i: a.members() for i, a in agents.items()}
    except BaseException:
        for a in agents.values():
            a.stop()
        raise
    return agents


@pytest.mark.parametrize("cut", [False, True], ids=["bridges-up", "bridges-cut-during-the-order"])
def test_a_fleet_on_two_sites_forgets_a_device_from_the_core(tmp_path, cut):
    with Bridged(tmp_path, proxy=True) as g:
        assert g.bridges_up()
        agents = _start_agents(g)  # seeds crossed: every device holds the other three, across sites
        assert g.states["d1"].device().device.broker.endswith("@" + g.files.site("site-1").dial)
        try:
            result: dict[str, object] = {}
            if cut:
                g.cut()

            def forget() -> None:
                outcome, _ = unlearn(g.admin, "d1", wait_s=60)
                result["outcome"] = outcome
                result["revocation"] = revoke(g.admin, outcome.order_raw)

            worker = threading.Thread(target=forget)
            worker.start()
            if cut:
                time.sleep(2.0)  # the order sits at the core; nothing reaches either site
                assert all("d1" in agents[i].members() for i in ("d2", "d3", "d4"))
                g.restore()
            worker.join(90)
            outcome = result["outcome"]
            assert sorted(outcome.holders) == ["d2", "d3", "d4"] and outcome.missing == ()  # both sites answered
            assert result["revocation"].broker_errors == ()
            assert _wait(lambda: all("d1" not in agents[i].members() for i in ("d2", "d3", "d4")), 10)
            assert g.bridges_up()
            time.sleep(1.0)  # let any replay of retained messages land
            for b in ("core", "site-1", "site-2"):
                assert not g.retained(b, [f"{ROOT}/seeds/+/d1", f"{ROOT}/seeds/d1/+"]), b
            assert _refused_at(g, "d1")["site-1"]  # its own site refuses it
            assert all(set(agents[i].members()) == set(IDS) - {"d1", i} for i in ("d2", "d3", "d4"))
        finally:
            for a in agents.values():
                a.stop()


def test_revoke_all_clears_what_a_reconnecting_bridge_replays(tmp_path, capsys):
    # A stale copy of a forgotten seed that a site held while its bridge was down (as when the
    # bridge queued its retained messages for replay before the clear): the replay puts it back on
    # the core; 'revoke --all' once the bridge is back takes it off every broker again.
    with Bridged(tmp_path, proxy=True) as g:
        assert g.bridges_up()
        revoke(g.admin, _admin_order(g.admin, "d1"))
        assert g.bridges_up()  # the revocation's clears crossed: none is queued for a bridge any more
        g.cut()
        stale = g.login("admin", "admin-stale", "site-1", clean_session=True)
        stale.connect(timeout=10)
        stale.publish(f"{ROOT}/seeds/d3/d1", b"stale-seed", retain=True, wait=True, timeout=10)
        stale.close()
        g.restore()
        assert g.bridges_up()
        assert _wait(lambda: g.retained("core", [f"{ROOT}/seeds/+/d1"], 0.3) == {f"{ROOT}/seeds/d3/d1": b"stale-seed"}, 10)
        code, out, err = kit.cli(capsys, "revoke", "--all", "--admin-dir", g.admin.root, "--json")
        assert code == 0, err
        [again] = json.loads(out)["revoked"]
        assert again["device"] == "d1" and again["list_version"] == 1 and again["broker_errors"] == []
        time.sleep(0.5)
        assert all(not g.retained(b, [f"{ROOT}/seeds/+/d1"], 0.5) for b in ("core", "site-1", "site-2"))


def test_the_scale_bench_runs_a_bridged_case_with_bridge_cuts_end_to_end(tmp_path):
    from hdus_edge.bench.scale import ScaleCase, run_case

    row = run_case(ScaleCase(8, 2, "lan", "bridged", forgets=1, together=2, bridge_cuts=2), tmp_path)
    assert row["brokers"] == "bridged" and row["broker_processes"] == 3 and row["bridge_cuts_done"] == 2
    assert row["missing_receipts"] == 0 and row["resurrections"] == 0 and row["revocation_errors"] == []
    assert row["bridges_back"] is True and row["together_all_receipts_s"] is not None and row["propagation_pairs"] > 0
    assert row["bridge_cuts_during_orders"] == 2  # the one order, then the batch, each sent while a bridge was down


def test_bench_scale_refuses_an_unknown_broker_layout():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "hdus_edge", "bench", "scale", "--brokers", "one,mesh"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "one, bridged" in out.stderr


def test_readmit_creates_the_new_logins_at_every_broker_and_keeps_the_devices_site(tmp_path, capsys):
    with Bridged(tmp_path) as g:
        revoke(g.admin, _admin_order(g.admin, "d1"))
        assert _refused_at(g, "d1") == {"core": True, "site-1": True, "site-2": True}
        code, out, err = kit.cli(capsys, "readmit", "d1", "--admin-dir", g.admin.root, "--state-dir", tmp_path / "d1-new",
                                 "--json")
        assert code == 0, err
        done = json.loads(out)
        assert done["epoch"] == 1 and done["broker_url"] == f"mqtts://d1@{g.files.site('site-1').dial}"
        g.creds = json.loads(g.files.credentials.read_text())  # the new password
        assert g.creds["d1"]["broker"] == "site-1"
        assert _refused_at(g, "d1") == {"core": False, "site-1": False, "site-2": False}
        # Re-applying every revocation (after a bridge came back) leaves the re-admitted device alone.
        code, out, err = kit.cli(capsys, "revoke", "--all", "--admin-dir", g.admin.root, "--json")
        assert code == 0 and json.loads(out)["revoked"] == [], out
        assert _refused_at(g, "d1") == {"core": False, "site-1": False, "site-2": False}
        assert "forgotten" not in g.admin.registry()["d1"]
