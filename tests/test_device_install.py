"""A device's install: hdus-edge without extras runs the agent, predict and inspect; no torch there.

A second virtual environment, ``.venv-base/`` in the repository (git-ignored), holds only the base
install: ``pip install <this checkout>``, a wheel, no extras, dependencies from the registry. It is
cached between runs: rebuilt when pyproject.toml changes, and only the package reinstalled when the
code changes. State dirs are made here, by the full install (torch), then used there.

Also here, on the full install: no base command imports an extra's package, even where installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fleet_kit as fk

REPO = Path(__file__).resolve().parents[1]
BASE_VENV = REPO / ".venv-base"
EXTRA_PACKAGES = ("torch", "sklearn", "matplotlib", "amqtt", "psutil")
FULL = [sys.executable, "-m", "hdus_edge"]


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def _package_files() -> list[Path]:
    files = [p for p in (REPO / "hdus_edge").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return sorted([*files, REPO / "pyproject.toml", REPO / "README.md"])


def _source_copy(dst: Path) -> Path:
    # Install from a clean copy: an in-tree build would reuse a stale build/ folder.
    shutil.copytree(REPO / "hdus_edge", dst / "hdus_edge", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    return dst


def _pip(*args: str) -> None:
    done = subprocess.run([str(BASE_VENV / "bin" / "python"), "-m", "pip", "install", "-q", *args],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"pip install {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="session")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``.venv-base``: the base install of this checkout (built on first use, then cached)."""
    deps_key = f"{_digest([REPO / 'pyproject.toml'])} {sys.version_info[:3]}"
    code_key = _digest(_package_files())
    deps_stamp, code_stamp = BASE_VENV / ".deps-key", BASE_VENV / ".code-key"
    src = _source_copy(tmp_path_factory.mktemp("base-src"))
    python = BASE_VENV / "bin" / "python"
    fresh = not (python.exists() and deps_stamp.exists() and deps_stamp.read_text() == deps_key)
    if fresh:
        shutil.rmtree(BASE_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(BASE_VENV)], check=True, timeout=300)
        _pip(str(src))  # the base install: no extras, dependencies from the registry
        deps_stamp.write_text(deps_key)
    elif not (code_stamp.exists() and code_stamp.read_text() == code_key):
        _pip("--no-deps", "--force-reinstall", str(src))
    code_stamp.write_text(code_key)
    return BASE_VENV


def _base(venv: Path, *argv: object, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "hdus-edge"), *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout)


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, f"{' '.join(map(str, done.args))} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def _full(*argv: object) -> subprocess.CompletedProcess:
    return _ok(subprocess.run([*FULL, *map(str, argv)], capture_output=True, text=True, timeout=120))


def _site_packages_bytes(prefix: Path) -> int:
    site = next((prefix / "lib").glob("python3*/site-packages"))
    return sum(p.stat().st_size for p in site.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_base_install_lacks_every_extra(base_venv: Path) -> None:
    # Execute: what the base venv can import, and what it holds
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    found = _ok(subprocess.run([str(base_venv / "bin" / "python"), "-c", probe, *EXTRA_PACKAGES],
                               capture_output=True, text=True, timeout=60)).stdout.strip()
    # Assert: none of the extras' packages, and `import torch` (sklearn, matplotlib) fails there
    assert found == "[]"
    for name in ("torch", "sklearn", "matplotlib"):
        done = subprocess.run([str(base_venv / "bin" / "python"), "-c", f"import {name}"], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, name
    # the CLI's wiring imports none of them: --help works
    assert "predict" in _ok(_base(base_venv, "--help")).stdout
    # the base install is at most a quarter of the full one (this venv: torch and every extra)
    base, full = _site_packages_bytes(base_venv), _site_packages_bytes(Path(sys.prefix))
    assert 4 * base <= full, f"base install {base / 2**20:.0f} MiB, full {full / 2**20:.0f} MiB"


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_base_install_names_the_missing_extra(base_venv: Path, tmp_path: Path) -> None:
    _, states = fk.provision(tmp_path, "mqtt://127.0.0.1:9", ids=("d0",))
    for argv, extra in (
        (["train", "--state-dir", states["d0"].root, "--data", tmp_path], "train"),
        (["export", "--state-dir", states["d0"].root], "train"),
        (["data", "split", "--out", tmp_path / "data"], "sim"),
        (["broker", "--port", "1"], "sim"),
    ):
        done = _base(base_venv, *argv)
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 2, done.stderr
        assert len(lines) == 1 and lines[0].startswith("error: ") and f"install 'hdus-edge[{extra}]'" in lines[0], lines


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_base_install_carries_the_mnist_files(base_venv: Path) -> None:
    # The wheel holds the package data, and the loader checks it there too.
    code = "from hdus_edge.data import load_mnist; print(len(load_mnist('test')), len(load_mnist('train5k')))"
    out = _ok(subprocess.run([str(base_venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                             timeout=120, cwd="/")).stdout.split()
    assert out == ["10000", "5000"]
    assert "site-packages" in _ok(subprocess.run(
        [str(base_venv / "bin" / "python"), "-c", "import hdus_edge; print(hdus_edge.__file__)"],
        capture_output=True, text=True, timeout=60, cwd="/")).stdout  # a wheel install, not this checkout


def _wait_file(path: Path, procs: list[subprocess.Popen], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for p in procs:
            assert p.poll() is None, f"agent exited {p.returncode}:\n{p.stderr.read() if p.stderr else ''}"
        assert time.monotonic() < deadline, f"no {path.name} within {timeout} s"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_base_install_runs_agent_predict_and_inspect(base_venv: Path, tmp_path: Path, mosquitto_broker) -> None:
    # Prepare: two devices made by the full install (trained, exported with torch), a real broker
    _, states = fk.provision(tmp_path, mosquitto_broker.url, ids=("d0", "d1"))
    x = tmp_path / "x.npy"
    np.save(x, fk.trained_models().data.test.x[:16])
    agents: list[subprocess.Popen] = []
    try:
        # Execute: both devices' agents from the base install; they exchange seeds over the broker
        for i in ("d0", "d1"):
            agents.append(subprocess.Popen(
                [str(base_venv / "bin" / "hdus-edge"), "agent", "--state-dir", str(states[i].root),
                 "--digest-interval", "0.5", "--ready-file", str(tmp_path / f"ready-{i}")],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        for i in ("d0", "d1"):
            _wait_file(tmp_path / f"ready-{i}", agents)
        deadline = time.monotonic() + 60
        while True:
            status = json.loads(_ok(_base(base_venv, "status", "--state-dir", states["d0"].root, "--json")).stdout)
            if status["members"] == ["d1"] or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # Assert: running, connected, holding the neighbour's seed
        assert status["members"] == ["d1"] and status["agent"]["running"] and status["agent"]["connected"], status
        # predict and inspect there give what the full install gives here
        base_pred = json.loads(_ok(_base(base_venv, "predict", "--state-dir", states["d0"].root, x, "--json")).stdout)
        full_pred = json.loads(_full("predict", "--state-dir", states["d0"].root, x, "--json").stdout)
        assert base_pred["members"] == full_pred["members"] == ["d1"]
        assert [p["class"] for p in base_pred["predictions"]] == [p["class"] for p in full_pred["predictions"]]
        diff = max(abs(a - b) for pb, pf in zip(base_pred["predictions"], full_pred["predictions"])
                   for a, b in zip(pb["probabilities"], pf["probabilities"]))
        assert diff <= 1e-5
        seed = states["d1"].models / "seed.onnx"
        assert (json.loads(_ok(_base(base_venv, "inspect", seed, "--json")).stdout)
                == json.loads(_full("inspect", seed, "--json").stdout))
    finally:
        for p in agents:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in agents:
            try:
                codes.append(p.wait(20))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append("killed")
    # the agents stop cleanly on SIGTERM
    assert codes == [0, 0]


@pytest.mark.integration
@pytest.mark.parametrize("argv", [
    ["inspect", "{d0}/models/seed.onnx", "--json"],
    ["predict", "--state-dir", "{d0}", "{x}", "--json"],
    ["status", "--state-dir", "{d0}", "--json"],
    ["members", "--state-dir", "{d0}"],
    ["neighbors", "list", "--state-dir", "{d0}"],
    ["receipts", "--state-dir", "{d0}", "--offline"],
    ["provision", "--admin-dir", "{admin}", "--profile", "raspberry-pi-4", "--device-id", "d9", "--state-dir", "{d9}"],
    ["agent", "--state-dir", "{d0}", "--ready-file", "{ready}"],
])
def test_base_commands_import_no_extra(tmp_path: Path, mosquitto_broker, argv: list[str]) -> None:
    # On the full install, where every extra is importable, a device's commands still load none of
    # them (python -X importtime lists every module a process imports, lazily or not).
    admin, states = fk.provision(tmp_path, mosquitto_broker.url, ids=("d0", "d1"))
    x = tmp_path / "x.npy"
    np.save(x, fk.trained_models().data.test.x[:4])
    ready = tmp_path / "ready"
    fill = {"d0": states["d0"].root, "x": x, "admin": admin.root, "d9": tmp_path / "d9", "ready": ready}
    args = [a.format(**fill) for a in argv]
    proc = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "hdus_edge", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    if argv[0] == "agent":
        _wait_file(ready, [proc])
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in err.splitlines() if line.startswith("import time:")}
    assert len(imported) > 50  # the listing is there
    assert imported.isdisjoint(EXTRA_PACKAGES), sorted(imported & set(EXTRA_PACKAGES))
