"""The broker as a line of defence, on real Mosquitto running the config ``broker-config`` writes.

Attacks from issue 14: a device's password with another device's client id (session takeover); a
forgotten device that keeps its broker login or clears the order about itself; a device that missed
the order; re-admission. Each check also runs against a planted weakness where it can fail.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import cli_lifecycle_kit as kit
import pytest

from hdus_edge.admin.broker import install_device_access, write_broker_config
from hdus_edge.device.agent import AgentSettings, DeviceAgent
from hdus_edge.errors import BrokerRefusedError, BrokerURLError
from hdus_edge.protocol import codec
from hdus_edge.protocol.crypto import SigningKey, issue_certificate
from hdus_edge.protocol.messages import Hello, SeedEnvelope
from hdus_edge.protocol.topics import Topics
from hdus_edge.reliability.harness import wait_until
from hdus_edge.state import StateDir
from hdus_edge.transport.mosquitto import MosquittoProcess
from hdus_edge.transport.mqtt import MqttTransport, TlsFiles
from hdus_edge.transport.ports import free_port

FAST = AgentSettings(probe_in_subprocess=False, digest_interval_s=0.5)
ROOT = Topics("kit").root


def _wait(predicate, timeout: float = 20.0) -> bool:
    return wait_until(predicate, timeout, interval=0.05)


class Generated:
    """A fleet, the broker folder ``write_broker_config`` wrote, and Mosquitto running that config."""

    def __init__(self, tmp: Path, ids=kit.IDS, **options) -> None:
        self.admin, self.states = kit.make_fleet(tmp, ids=ids)
        self.files = write_broker_config(self.admin, tmp / "broker", port=free_port(), persistence=False, **options)
        self.written = self.files.config.read_text()
        self.creds = json.loads(self.files.credentials.read_text())
        self.broker = MosquittoProcess(self.files.folder, self.files.mosquitto)

    def tls(self, user: str) -> TlsFiles:
        files = TlsFiles.from_dir(self.files.folder / "devices" / user / "keys" / "tls")
        assert files is not None
        return files

    def login(self, user: str, client_id: str, password_of: str | None = None, **kw) -> MqttTransport:
        url = self.creds[password_of or user]["url"]
        if password_of:
            url = url.replace(f"//{password_of}:", f"//{user}:")
        return MqttTransport(url, client_id, tls=self.tls(password_of or user), **kw)

    def __enter__(self) -> Generated:
        self.broker.start()
        assert self.files.config.read_text() == self.written  # the broker runs exactly what was written
        return self

    def __exit__(self, *exc: object) -> None:
        self.broker.stop()


def _takeover(g: Generated) -> tuple[bool, bool, list[str]]:
    """d2's password with d1's client id while d1 holds a persistent session; returns
    (attacker accepted, d1 never kicked, what d1 received afterwards)."""
    got: list[str] = []
    d1 = g.login("d1", "kit.d1", handler=lambda t, p, r: got.append(t))
    d1.subscribe(f"{ROOT}/membership/+")
    d1.connect(timeout=5)
    accepted = True
    try:
        attacker = MqttTransport(g.creds["d2"]["url"], "kit.d1", tls=g.tls("d2"), clean_session=True,
                                 reconnect_max_delay=60.0)
        try:
            attacker.connect(timeout=5, max_attempts=1)
        except BrokerRefusedError:
            accepted = False
        finally:
            attacker.close()
        time.sleep(0.5)
        still = d1.connected and d1.connect_count == 1  # a kicked client reconnects: the count shows it
        admin = g.login("admin", "admin-probe")
        admin.connect(timeout=5)
        admin.publish(f"{ROOT}/membership/d3", b"after", wait=True, timeout=5)
        admin.close()
        _wait(lambda: f"{ROOT}/membership/d3" in got, 5)
        return accepted, still, got
    finally:
        d1.close()


def test_a_devices_password_cannot_take_another_devices_session(tmp_path):
    with Generated(tmp_path) as g:
        accepted, still, got = _takeover(g)
        assert not accepted and still and f"{ROOT}/membership/d3" in got
        assert "Client kit.d1 already connected" not in g.broker.log_text()
        # A device's own companion login (its one-shot commands) cannot use the agent's client id either.
        with pytest.raises(BrokerRefusedError):
            g.login("d1@cli", "kit.d1", password_of="d1").connect(timeout=5, max_attempts=1)


def test_planted_unbound_client_ids_let_the_takeover_through(tmp_path):
    # The same attack against logins without a bound client id (a password file's behaviour) succeeds:
    # the check above is one that can fail.
    with Generated(tmp_path, bind_client_ids=False) as g:
        accepted, still, _ = _takeover(g)
        assert accepted and not still


def test_plain_mqtt_to_another_host_is_refused_without_insecure(monkeypatch):
    monkeypatch.delenv("HDUS_INSECURE", raising=False)
    with pytest.raises(BrokerURLError, match="plain-text"):
        MqttTransport("mqtt://10.1.2.3:1883", "kit.d1")
    MqttTransport("mqtt://10.1.2.3:1883", "kit.d1", insecure=True).close()
    MqttTransport("mqtt://127.0.0.1:1883", "kit.d1").close()  # loopback never leaves the host
    monkeypatch.setenv("HDUS_INSECURE", "1")  # what 'hdus-edge --insecure' sets
    MqttTransport("mqtt://10.1.2.3:1883", "kit.d1").close()


def _agents(g: Generated, ids) -> dict[str, DeviceAgent]:
    return {i: DeviceAgent.from_state_dir(g.states[i], settings=FAST).start() for i in ids}


def test_forgotten_device_loses_its_login_cannot_clear_its_order_and_a_device_that_missed_it_catches_up(
        tmp_path, capsys):
    # Prepare: three devices with models and their broker logins installed from the broker folder.
    with Generated(tmp_path) as g:
        for i, st in g.states.items():
            kit.install_models(st, seed=int(i[1:]))
            install_device_access(g.files.folder, i, st)
        agents = _agents(g, ("d1", "d2", "d3"))
        try:
            assert _wait(lambda: all(len(a.members()) == 2 for a in agents.values()))
            agents.pop("d3").stop()  # d3 is away during the order
        except BaseException:
            for a in agents.values():
                a.stop()
            raise
        # Execute: the admin forgets d2; the CLI revokes it after the receipts.
        code, out, _ = kit.cli(capsys, "unlearn", "d2", "--admin-dir", g.admin.root, "--wait", "20", "--json")
        report = json.loads(out)
        try:
            assert report["revocation"]["broker_logins_deleted"] == ["d2", "d2@cli"], json.dumps(report["revocation"])
            assert report["revocation"]["broker_errors"] == []
            assert "d1" in [r["device_id"] for r in report["receipts"]]
            # Assert 1: d2's logins are refused now (the agent was disconnected and cannot come back).
            assert _wait(lambda: not agents["d2"].transport.connected, 10)
            for user in ("d2", "d2@cli"):
                with pytest.raises(BrokerRefusedError):
                    g.login(user, f"kit.{user}", password_of="d2").connect(timeout=5, max_attempts=1)
        finally:
            for a in agents.values():
                a.stop()
        # Assert 2: the order sits on unlearn/d2, where only the admin writes (d1 tries to clear it);
        # the broker keeps no seed from or for d2.
        cleared = MqttTransport(g.creds["d1"]["url"].replace("//d1:", "//d1@cli:"), "kit.d1@cli", tls=g.tls("d1"),
                                clean_session=True)
        cleared.connect(timeout=5)
        cleared.publish(f"{ROOT}/unlearn/d2", b"", retain=True, wait=True, timeout=5)
        cleared.close()
        seen: dict[str, bytes] = {}
        watcher = g.login("admin", "admin-watch", handler=lambda t, p, r: seen.__setitem__(t, p), clean_session=True)
        watcher.subscribe([f"{ROOT}/unlearn/+", f"{ROOT}/revocations", f"{ROOT}/seeds/+/d2"])
        watcher.connect(timeout=5)
        time.sleep(1.0)
        watcher.close()
        assert seen.get(f"{ROOT}/unlearn/d2") == bytes.fromhex(json.loads(
            (g.admin.root / "revocations.json").read_text())["entries"]["d2"]["order"])
        assert f"{ROOT}/revocations" in seen and not any(k.startswith(f"{ROOT}/seeds/") for k in seen)
        # Assert 3: d3 was away, its session was wiped (the order queued for it is gone) and the broker
        # lost the retained order and digests (the admin clears them to play that): the revocation list
        # alone makes it delete d2's seed and refuse d2's certificate.
        wipe = g.login("d3", "kit.d3", clean_session=True)
        wipe.connect(timeout=5)
        wipe.close()
        admin_t = g.login("admin", "admin-wipe", clean_session=True)
        admin_t.connect(timeout=5)
        admin_t.publish(f"{ROOT}/unlearn/d2", b"", retain=True, wait=True, timeout=5)
        for i in g.states:
            admin_t.publish(f"{ROOT}/tombstones/{i}", b"", retain=True, wait=True, timeout=5)
        admin_t.close()
        d3 = DeviceAgent.from_state_dir(g.states["d3"], settings=FAST).start()
        try:
            assert _wait(lambda: "d2" not in d3.members(), 10), d3.members()
            assert d3.trust.is_revoked("d2", 0) and d3.store.is_tombstoned("d2", 0)
        finally:
            d3.stop()
        # Assert 4: the revocation survives a broker restart (the plugin saved its file itself).
        g.broker.restart()
        with pytest.raises(BrokerRefusedError):
            g.login("d2", "kit.d2").connect(timeout=5, max_attempts=1)


def test_a_device_cannot_clear_an_order_about_itself(tmp_path):
    with Generated(tmp_path, ids=("d1", "d2")) as g:
        admin = g.login("admin", "admin-order", clean_session=True)
        admin.connect(timeout=5)
        admin.publish(f"{ROOT}/unlearn/d2", b"order-bytes", retain=True, wait=True, timeout=5)
        admin.close()
        d2 = g.login("d2", "kit.d2", clean_session=True)
        d2.connect(timeout=5)
        d2.publish(f"{ROOT}/unlearn/d2", b"", retain=True, wait=True, timeout=5)  # acked and dropped (ACL)
        d2.close()
        seen: dict[str, bytes] = {}
        watcher = g.login("admin", "admin-watch", handler=lambda t, p, r: seen.__setitem__(t, p), clean_session=True)
        watcher.subscribe(f"{ROOT}/unlearn/+")
        watcher.connect(timeout=5)
        assert _wait(lambda: f"{ROOT}/unlearn/d2" in seen, 5)
        watcher.close()
        assert seen[f"{ROOT}/unlearn/d2"] == b"order-bytes"


def test_readmitted_device_joins_with_a_new_epoch_and_its_old_epoch_stays_refused(tmp_path, capsys):
    with Generated(tmp_path) as g:
        for i, st in g.states.items():
            kit.install_models(st, seed=int(i[1:]))
            install_device_access(g.files.folder, i, st)
        old_key = g.states["d2"].key()
        old_cert = g.states["d2"].certificate()
        code, out, _ = kit.cli(capsys, "unlearn", "d2", "--admin-dir", g.admin.root, "--wait", "3", "--json")
        assert json.loads(out)["revocation"]["broker_logins_deleted"] == ["d2", "d2@cli"]
        # Execute: re-admit d2 into a fresh state dir.
        code, out, _ = kit.cli(capsys, "readmit", "d2", "--admin-dir", g.admin.root, "--state-dir", tmp_path / "d2-new",
                               "--neighbors", "d1,d3", "--json")
        assert code == 0, out
        done = json.loads(out)
        assert done["epoch"] == 1 and done["broker_url"].startswith("mqtts://d2@")
        new = StateDir(tmp_path / "d2-new")
        assert new.certificate().epoch == 1 and (new.tls_dir / "client.crt").exists()
        kit.install_models(new, seed=7)
        agents = _agents(g, ("d1",))
        try:
            agents["d2"] = DeviceAgent.from_state_dir(new, settings=FAST).start()  # the new login works
            assert _wait(lambda: "d2" in agents["d1"].members())
            assert agents["d1"].store.seed_info("d2").epoch == 1
            # The old incarnation (epoch 0) stays refused, as a hello and as a seed.
            puppet = g.login("admin", "admin-puppet", clean_session=True)
            puppet.connect(timeout=5)
            hello = Hello("d2", old_key.public_key.raw, old_cert, "generic-x86_64", "mobilenet-s", "seed-cnn")
            puppet.publish(Topics("kit").hello("d2"), codec.encode(hello, old_key, "d2"), retain=False, wait=True)
            seed = (g.states["d2"].models / "seed.onnx").read_bytes()
            env = SeedEnvelope.build(owner="d2", to="d1", version=9, onnx=seed, arch="seed-cnn", input_shape=(-1, 1, 8, 8),
                                     num_classes=10, reference_sha256=g.admin.fleet().data.reference_sha256, epoch=0)
            puppet.publish(Topics("kit").seed("d1", "d2"), codec.encode(env, old_key, "d2"), retain=False, wait=True)
            puppet.close()
            assert _wait(lambda: agents["d1"].counters.rejected >= 2, 10)
            assert agents["d1"].store.seed_info("d2").epoch == 1 and agents["d1"].store.seed_info("d2").version == 1
            assert agents["d1"].trust.epoch_of("d2") == 1
        finally:
            for a in agents.values():
                a.stop()
        # Re-admitting a device that is not forgotten is refused.
        code, _, err = kit.cli(capsys, "readmit", "d1", "--admin-dir", g.admin.root, "--state-dir", tmp_path / "d1-new")
        assert code == 2
        kit.assert_one_error(err, "was not forgotten")


def test_old_epoch_certificate_forged_for_a_new_key_is_still_revoked():
    # Unit: a revoked epoch cannot come back with another key, a new epoch can.
    from hdus_edge.errors import RevokedError
    from hdus_edge.protocol.crypto import TrustStore

    admin = SigningKey.from_seed(b"a" * 32)
    trust = TrustStore("kit", admin.public_key)
    old = issue_certificate(admin, fleet="kit", device_id="d2", public_key=SigningKey.from_seed(b"b" * 32).public_key)
    assert trust.certify(old)
    assert trust.revoke("d2", 0) and "d2" not in trust
    with pytest.raises(RevokedError):
        trust.key_for("d2")
    with pytest.raises(RevokedError):
        trust.certify(issue_certificate(admin, fleet="kit", device_id="d2",
                                        public_key=SigningKey.from_seed(b"c" * 32).public_key, epoch=0))
    assert trust.certify(issue_certificate(admin, fleet="kit", device_id="d2",
                                           public_key=SigningKey.from_seed(b"d" * 32).public_key, epoch=1))


def test_leave_goes_on_the_devices_own_topic_and_revoke_relays_it_where_only_the_admin_writes(tmp_path, capsys):
    with Generated(tmp_path) as g:
        for i, st in g.states.items():
            kit.install_models(st, seed=int(i[1:]))
            install_device_access(g.files.folder, i, st)
        agents = _agents(g, ("d1", "d2"))
        try:
            assert _wait(lambda: "d2" in agents["d1"].members())
            # The device's one-shot commands use its command login and certificate, next to its agent.
            code, out, err = kit.cli(capsys, "publish", "--state-dir", g.states["d2"].root, "--json")
            assert code == 0 and json.loads(out)["sent_to"] == ["d1"], err
            # The device's own command login (not its agent's client id) asks to be forgotten.
            code, out, _ = kit.cli(capsys, "leave", "--state-dir", g.states["d2"].root, "--wait", "5", "--json")
            assert [r["device_id"] for r in json.loads(out)["receipts"]] == ["d1"], out
            assert agents["d2"].transport.connect_count == 1  # the command did not take the agent's session
            assert _wait(lambda: "d2" not in agents["d1"].members())
            code, out, _ = kit.cli(capsys, "revoke", "--pending", "--admin-dir", g.admin.root, "--json")
            assert code == 0, out
            [done] = json.loads(out)["revoked"]
            assert done["device"] == "d2" and done["broker_logins_deleted"] == ["d2", "d2@cli"] and done["list_version"] == 1
            # Nothing is pending any more; revoking d2 by name again is harmless.
            code, out, _ = kit.cli(capsys, "revoke", "--pending", "--admin-dir", g.admin.root, "--json")
            assert json.loads(out)["revoked"] == []
            code, out, _ = kit.cli(capsys, "revoke", "d2", "--admin-dir", g.admin.root, "--json")
            assert code == 0 and json.loads(out)["broker_errors"] == [] and json.loads(out)["list_version"] == 1, out
        finally:
            for a in agents.values():
                a.stop()
        seen: dict[str, bytes] = {}
        watcher = g.login("admin", "admin-watch", handler=lambda t, p, r: seen.__setitem__(t, p), clean_session=True)
        watcher.subscribe([f"{ROOT}/unlearn/+", f"{ROOT}/leave/+"])
        watcher.connect(timeout=5)
        assert _wait(lambda: len(seen) == 2, 5)
        watcher.close()
        assert seen[f"{ROOT}/unlearn/d2"] == seen[f"{ROOT}/leave/d2"]  # the device's order, relayed
        registry = g.admin.registry()
        assert registry["d2"]["forgotten"]["epoch"] == 0


def test_a_command_to_a_plain_text_broker_off_this_host_is_one_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HDUS_INSECURE", raising=False)
    admin, _ = kit.make_fleet(tmp_path, ids=("d1",))
    code, _, err = kit.cli(capsys, "receipts", "a" * 32, "--admin-dir", admin.root, "--broker", "mqtt://10.1.2.3:1883")
    assert code == 2
    kit.assert_one_error(err, "plain-text broker URL mqtt://10.1.2.3:1883", "--insecure")
