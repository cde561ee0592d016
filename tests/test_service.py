"""``hdus-edge service install|uninstall``: a hardened unit that systemd's own verifier accepts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import cli_lifecycle_kit as kit
import pytest

from hdus_edge.device.service import UnitSpec, render_unit
from hdus_edge.errors import ConfigError

HARDENING = ("NoNewPrivileges=yes", "ProtectSystem=strict", "Restart=on-failure", "Type=notify",
             "CapabilityBoundingSet=", "PrivateDevices=yes")


def verify(unit: Path, *, user: bool, tmp_path: Path) -> str:
    """``systemd-analyze verify``: its complaints (it exits 0 on many of them, so its output counts)."""
    runtime = tmp_path / "xdg-runtime"  # a user manager needs a runtime dir even to verify offline
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    done = subprocess.run(["systemd-analyze", *(["--user"] if user else []), "verify", str(unit)],
                          capture_output=True, text=True, timeout=60, env=env)
    return f"rc={done.returncode} {done.stdout}{done.stderr}".strip() if done.returncode or done.stdout or done.stderr else ""


def _settings(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))


def test_system_unit_is_hardened_from_the_profile_and_verifies(tmp_path, capsys):
    # Prepare: d2 runs the raspberry-pi-4 profile (budget 512 MB, API on 127.0.0.1:8000)
    _, states, _ = kit.installed_fleet(tmp_path)
    units = tmp_path / "units"
    # Execute
    code, out, err = kit.cli(capsys, "service", "install", "--state-dir", states["d2"].root, "--run-as", "hdus",
                             "--unit-dir", units, "--json")
    # Assert
    assert code == 0, err
    report = json.loads(out)
    unit = Path(report["unit"])
    assert unit == units / "hdus-edge-d2.service" and report["memory_max_mb"] == 512
    text = unit.read_text()
    settings = _settings(text)
    for line in HARDENING:
        assert line in text.splitlines(), line
    state = str(states["d2"].root.resolve())
    assert settings["User"] == "hdus" and settings["ReadWritePaths"] == state and settings["MemoryMax"] == "512M"
    assert settings["ExecStart"].endswith(f"-m hdus_edge agent --state-dir {state} --http 127.0.0.1:8000")
    assert "PrivateTmp" not in settings  # the state dir is under /tmp here: a private /tmp would hide it
    assert verify(unit, user=False, tmp_path=tmp_path) == ""
    # Uninstall removes it; a second time there is nothing to remove
    code, out, _ = kit.cli(capsys, "service", "uninstall", "--state-dir", states["d2"].root, "--unit-dir", units, "--json")
    assert code == 0 and json.loads(out)["removed"] == str(unit) and not unit.exists()
    code, out, _ = kit.cli(capsys, "service", "uninstall", "--state-dir", states["d2"].root, "--unit-dir", units, "--json")
    assert code == 0 and json.loads(out)["removed"] is None


def test_user_unit_verifies_and_the_http_override(tmp_path, capsys):
    _, states, _ = kit.installed_fleet(tmp_path)
    code, out, err = kit.cli(capsys, "service", "install", "--state-dir", states["d1"].root, "--user", "--http", "",
                             "--unit-dir", tmp_path / "user-units", "--json")
    assert code == 0, err
    unit = Path(json.loads(out)["unit"])
    settings = _settings(unit.read_text())
    assert "User" not in settings and "--http" not in settings["ExecStart"] and settings["MemoryMax"] == "320M"
    assert settings["WantedBy"] == "default.target"
    assert verify(unit, user=True, tmp_path=tmp_path) == ""


def test_the_verifier_catches_a_broken_unit(tmp_path):
    # A check that cannot fail is a defect: plant a bad value and a missing interpreter.
    spec = UnitSpec("d9", "kit", tmp_path, "/usr/bin/python3", "127.0.0.1:8000", 256, "hdus", False)
    good = tmp_path / "good.service"
    good.write_text(render_unit(spec))
    assert verify(good, user=False, tmp_path=tmp_path) == ""
    bad = tmp_path / "bad.service"
    bad.write_text(render_unit(spec).replace("ProtectSystem=strict", "ProtectSystem=strictest"))
    assert "ProtectSystem" in verify(bad, user=False, tmp_path=tmp_path) or "protect system" in verify(bad, user=False, tmp_path=tmp_path)
    missing = tmp_path / "missing.service"
    missing.write_text(render_unit(UnitSpec("d9", "kit", tmp_path, "/nonexistent/python", "", 256, "hdus", False)))
    assert verify(missing, user=False, tmp_path=tmp_path) != ""


def test_refuses_root_and_unsafe_paths(tmp_path, capsys):
    _, states, _ = kit.installed_fleet(tmp_path)
    assert states["d1"].root.stat().st_uid == os.getuid()
    if os.getuid() == 0:  # the state dir is root's: without --run-as the unit would run as root
        code, _, err = kit.cli(capsys, "service", "install", "--state-dir", states["d1"].root,
                               "--unit-dir", tmp_path / "u")
        assert code == 2
        kit.assert_one_error(err, "must not run as root", "--run-as")
    code, _, err = kit.cli(capsys, "service", "install", "--state-dir", states["d1"].root, "--run-as", "root",
                           "--unit-dir", tmp_path / "u")
    assert code == 2 and not (tmp_path / "u").exists()
    with pytest.raises(ConfigError, match="cannot go into a systemd unit"):
        render_unit(UnitSpec("d9", "kit", Path("/srv/my state"), "/usr/bin/python3", "", 256, "hdus", False))


def test_sd_notify_speaks_to_path_and_abstract_sockets(tmp_path, monkeypatch):
    import socket

    from hdus_edge.device.daemon import sd_notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False  # not under systemd: nothing to do
    name = f"hdus-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)  # systemd writes an abstract address as '@name'
        listener.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("READY=1") is True and listener.recv(64) == b"READY=1"
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sd_notify("READY=1") is False  # logged, never raised: the agent runs on
