"""The whole device lifecycle through the hdus-edge CLI only, as subprocesses, as a user runs it.

fleet init -> provision three devices (three profiles) -> broker -> train / distill / export on each
device's own data -> publish -> three agents -> predict -> status -> device 2 leaves -> signed receipts
from both others -> status shows the new ensemble -> the fleet in which device 2 never existed is
trained from scratch through the CLI: its models are bit-identical to the ones the others had, and
their predictions equal its ensembles'.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from hdus_edge.data import load_digits, save_npz, split_fleet
from hdus_edge.ensemble.runtime import EnsembleRuntime
from hdus_edge.protocol.messages import sha256_hex
from hdus_edge.transport.ports import free_port, wait_for_port

IDS = ("d1", "d2", "d3")
PROFILES = {"d1": "raspberry-pi-zero-2w", "d2": "raspberry-pi-4", "d3": "jetson-nano"}
HD = [sys.executable, "-m", "hdus_edge"]
ENV = {**os.environ, "COLUMNS": "200"}


def hd(*argv: object, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run one hdus-edge command; fail with its stderr when it does not exit 0."""
    done = subprocess.run([*HD, *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=ENV)
    assert done.returncode == 0, f"hdus-edge {' '.join(map(str, argv))} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


def hd_json(*argv: object) -> dict:
    return json.loads(hd(*argv, "--json").stdout)


def _wait_members(state: Path, expected: list[str], timeout: float = 40.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status = hd_json("status", "--state-dir", state)
        if status["members"] == expected or time.monotonic() > deadline:
            assert status["members"] == expected, status
            return status
        time.sleep(0.5)


def _write_pgm(path: Path, image: np.ndarray) -> None:
    h, w = image.shape
    path.write_bytes(f"P5\n{w} {h}\n16\n".encode() + np.round(image * 16).astype(np.uint8).tobytes())


CREATED_AT = "2026-01-01T00:00:00Z"  # fixed, so a retrained device exports the very same bytes


def _device_steps(tmp_path: Path, states: dict[str, Path], ids) -> dict[str, object]:
    """train / distill / export on each device's own data, devices in parallel; their JSON reports."""
    results: dict[str, object] = {}

    def steps(i: str) -> None:
        try:
            results[i] = (
                hd_json("train", "--state-dir", states[i], "--data", tmp_path / "data" / i, "--epochs", "6"),
                hd_json("distill", "--state-dir", states[i], "--epochs", "8"),
                hd_json("export", "--state-dir", states[i], "--created-at", CREATED_AT),
            )
        except BaseException as exc:  # re-raised in the test thread
            results[i] = exc

    threads = [threading.Thread(target=steps, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for i in ids:
        if isinstance(results[i], BaseException):
            raise results[i]  # type: ignore[misc]
    return results


def test_device_lifecycle_end_to_end_through_the_cli(tmp_path):
    started = time.monotonic()
    # --- data, as three device owners and a fleet admin would have it -----------------------------------
    data = split_fleet(load_digits(), 3, scheme="missing-class", reference_size=300, test_size=150, seed=0)
    save_npz(data.reference, tmp_path / "public" / "reference.npz")
    for k, i in enumerate(IDS):
        save_npz(data.clients[k].train, tmp_path / "data" / i / "train.npz")
    np.save(tmp_path / "test.npy", data.test.x)
    _write_pgm(tmp_path / "digit.pgm", data.test.x[0, 0])
    admin, states = tmp_path / "admin", {i: tmp_path / f"state-{i}" for i in IDS}
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    try:
        # --- set-up ---------------------------------------------------------------------------------------
        fleet = hd_json("fleet", "init", "--admin-dir", admin, "--fleet", "e2e", "--broker", url,
                        "--reference", tmp_path / "public")
        assert fleet["reference"]["samples"] == 300 and fleet["input_shape"] == [1, 8, 8]
        for i in IDS:
            hd("provision", "--admin-dir", admin, "--profile", PROFILES[i], "--device-id", i, "--state-dir", states[i],
               "--neighbors", ",".join(j for j in IDS if j != i))
        broker = subprocess.Popen([*HD, "broker", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
        procs.append(broker)
        # --- each device trains on its own data, distils, exports (devices work in parallel) ------------
        results: dict[str, object] = {}

        results = _device_steps(tmp_path, states, IDS)
        archs = {i: results[i][0]["arch"] for i in IDS}  # type: ignore[index]
        assert archs == {"d1": "mobilenet-s", "d2": "mobilenet-m", "d3": "resnet-20"}
        assert all(results[i][2]["seed_version"] == 1 for i in IDS)  # type: ignore[index]
        # --- publish: each device announces itself; later ones find the earlier ones' lists ----------------
        assert wait_for_port("127.0.0.1", port, 20), "the broker did not start"
        published = [hd_json("publish", "--state-dir", states[i]) for i in IDS]
        assert published[0]["sent_to"] == [] and published[1]["sent_to"] == ["d1"] and published[2]["sent_to"] == ["d1", "d2"]
        # --- three agents ----------------------------------------------------------------------------------
        agents = {}
        for i in IDS:
            ready = tmp_path / f"ready-{i}"
            agents[i] = subprocess.Popen([*HD, "agent", "--state-dir", str(states[i]), "--ready-file", str(ready)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
            procs.append(agents[i])
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready-{i}").exists() for i in IDS):
            assert time.monotonic() < deadline and all(a.poll() is None for a in agents.values()), "agents did not start"
            time.sleep(0.1)
        for i in IDS:
            maps = Path(f"/proc/{agents[i].pid}/maps").read_text()
            assert "libtorch" not in maps, f"agent {i} loaded torch"
        for i in IDS:
            status = _wait_members(states[i], [j for j in IDS if j != i])
            assert status["agent"]["running"] and status["agent"]["connected"]
            assert {s["owner"]: s["sha256"] for s in status["seeds"]} == {
                j: sha256_hex((states[j] / "models" / "seed.onnx").read_bytes()) for j in IDS if j != i}
        # --- predict on each device ----------------------------------------------------------------------------
        for i in IDS:
            out = hd_json("predict", "--state-dir", states[i], tmp_path / "test.npy")
            assert out["members"] == [j for j in IDS if j != i]
            probs = np.array([p["probabilities"] for p in out["predictions"]])
            assert probs.shape == (150, 10) and np.allclose(probs.sum(1), 1.0, atol=1e-4)
            accuracy = float((probs.argmax(1) == data.test.y).mean())
            assert accuracy > 0.3, (i, accuracy)  # trained (chance is 0.1); the seeds cover the missing class
        image = hd("predict", "--state-dir", states["d1"], tmp_path / "digit.pgm")
        assert "digit.pgm" in image.stdout and "main + 2 seeds (d2, d3)" in image.stdout
        # --- device 2 leaves ---------------------------------------------------------------------------------
        d2_seed = (states["d2"] / "models" / "seed.onnx").read_bytes()
        left = hd_json("leave", "--state-dir", states["d2"], "--wait", "30")
        assert left["complete"] and left["holders"] == ["d1", "d3"] and left["issuer"] == "d2"
        receipts = hd_json("receipts", left["request_id"], "--state-dir", states["d2"])
        assert receipts["verified"] and receipts["target"] == "d2" and receipts["missing"] == []
        assert [r["device_id"] for r in receipts["receipts"]] == ["d1", "d3"]
        for r in receipts["receipts"]:
            assert r["removed_sha256"] == sha256_hex(d2_seed) and set(r["sources"]) == {"broker", "evidence"}
        assert {r["device_id"]: r["members_after"] for r in receipts["receipts"]} == {"d1": ["d3"], "d3": ["d1"]}
        # --- the fleet in which d2 never existed, trained from scratch through the CLI ----------------------
        # Its own admin and fleet; d1 and d3 train on their own data with the same seeds and settings.
        never_admin, never_states = tmp_path / "never-admin", {i: tmp_path / f"never-{i}" for i in ("d1", "d3")}
        hd_json("fleet", "init", "--admin-dir", never_admin, "--fleet", "e2e-never", "--broker", url,
                "--reference", tmp_path / "public")
        for i, rest in (("d1", "d3"), ("d3", "d1")):
            hd("provision", "--admin-dir", never_admin, "--profile", PROFILES[i], "--device-id", i,
               "--state-dir", never_states[i], "--neighbors", rest)
        _device_steps(tmp_path, never_states, ("d1", "d3"))
        # (a) every remaining model is bit-identical to the one it had (ONNX bytes, created_at fixed)
        for i in ("d1", "d3"):
            for name in ("main.onnx", "seed.onnx"):
                assert (never_states[i] / "models" / name).read_bytes() == (states[i] / "models" / name).read_bytes(), (i, name)
        # --- the new ensembles ---------------------------------------------------------------------------------
        for i, rest in (("d1", "d3"), ("d3", "d1")):
            status = _wait_members(states[i], [rest])
            assert [u["target"] for u in status["unlearns"]["completed"]] == ["d2"]
            out = hd_json("predict", "--state-dir", states[i], tmp_path / "test.npy")
            assert out["members"] == [rest]
            # The ensemble of the fleet in which d2 never existed, from the retrained files.
            never = EnsembleRuntime((never_states[i] / "models" / "main.onnx").read_bytes(), fleet["lam"], "probs", "sessions")
            never.add_seed(rest, (never_states[rest] / "models" / "seed.onnx").read_bytes())
            got = np.array([p["probabilities"] for p in out["predictions"]])
            expected = never.predict(data.test.x)
            np.testing.assert_allclose(got, expected, atol=1e-6)  # predict rounds to 6 decimals
            assert np.array_equal(got.argmax(1), expected.argmax(1))
            for path in (states[i] / "store").rglob("*"):
                if path.is_file():
                    assert d2_seed not in path.read_bytes(), path
        # --- agents stop cleanly ----------------------------------------------------------------------------
        # d2 left: its agent stopped by itself with one error line (issue 14: forgotten is durable).
        assert agents["d2"].wait(20) == 1
        d2_err = agents["d2"].stderr.read().decode() if agents["d2"].stderr else ""
        assert [ln for ln in d2_err.splitlines() if ln.startswith("error: ")] == [
            ln for ln in d2_err.splitlines() if "forgotten" in ln], d2_err
        assert "error: device 'd2' was forgotten" in d2_err
        for i in ("d1", "d3"):
            agents[i].send_signal(signal.SIGTERM)
        for i in ("d1", "d3"):
            assert agents[i].wait(20) == 0, agents[i].stderr.read()[-2000:] if agents[i].stderr else ""
        seconds = time.monotonic() - started
        print(f"\nend-to-end lifecycle through the CLI: {seconds:.1f} s")
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
