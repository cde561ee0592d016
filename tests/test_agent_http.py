"""The running agent's HTTP API on a real broker: ``hdus-edge agent --http`` as a process (systemd's
readiness, Triton's client against ``hdus-edge predict``), and concurrent clients while seeds are
swapped and devices forgotten (no failure, every answer from exactly one member set)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cli_lifecycle_kit as kit
import fleet_kit as fk
import numpy as np
import tritonclient.http as triton

from hdus_edge.device.http_api import InferenceServer
from hdus_edge.device.metrics import AgentMetrics
from hdus_edge.ensemble.runtime import EnsembleRuntime
from hdus_edge.transport.ports import free_port, wait_for_port
from hdus_edge.unlearn.request import request_unlearn

HD = [sys.executable, "-m", "hdus_edge"]


def _infer(client: triton.InferenceServerClient, x: np.ndarray, binary: bool) -> tuple[np.ndarray, dict]:
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    result = client.infer("ensemble", [tensor], outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary)])
    return result.as_numpy("probabilities"), result.get_response()["parameters"]


def test_agent_process_serves_what_predict_answers_and_tells_systemd(tmp_path, mosquitto_broker, capsys):
    # Prepare: d1 with its seeds in the store; a datagram socket standing in for systemd
    _, states, _ = kit.installed_fleet(tmp_path, broker=mosquitto_broker.url)
    x = np.random.default_rng(5).random((6, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(60)
    port = free_port()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path)}
    # Execute
    agent = subprocess.Popen([*HD, "agent", "--state-dir", str(states["d1"].root), "--http", str(port)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        assert notify.recv(256) == b"READY=1"  # sent once the agent and its API are up
        wait_for_port("127.0.0.1", port, 10)
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_ready()
        via_json, params = _infer(client, x, binary=False)
        via_binary, _ = _infer(client, x, binary=True)
        code, out, err = kit.cli(capsys, "predict", "--state-dir", states["d1"].root, tmp_path / "x.npy", "--json")
        assert code == 0, err
        predicted = json.loads(out)
        # Assert: the same ensemble, the same answers
        assert params["members"] == ",".join(predicted["members"]) == "d2,d3"
        assert params["seed_versions"] == "d2=1,d3=1"
        assert np.array_equal(via_json, via_binary)
        probs = np.array([p["probabilities"] for p in predicted["predictions"]])
        assert np.abs(via_json - probs).max() <= 1e-6  # predict rounds to 6 decimals
        assert [p["class"] for p in predicted["predictions"]] == via_json.argmax(1).tolist()
        metrics = client._client_stub.get("/metrics").read().decode()  # the same connection pool
        assert "hdus_ensemble_members 2.0" in metrics and "hdus_broker_connected 1.0" in metrics
        assert 'hdus_inference_requests_total{outcome="ok"} 2.0' in metrics
        client.close()
        # A clean stop tells systemd too
        agent.send_signal(signal.SIGTERM)
        assert notify.recv(256) == b"STOPPING=1"
        assert agent.wait(30) == 0, agent.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        notify.close()


def test_a_bad_http_address_fails_before_the_agent_starts(tmp_path, capsys):
    _, states, _ = kit.installed_fleet(tmp_path)
    code, _, err = kit.cli(capsys, "agent", "--state-dir", states["d1"].root, "--http", "127.0.0.1:http")
    assert code == 2
    kit.assert_one_error(err, "no valid port")


def test_an_address_in_use_is_one_clear_error_and_the_agent_stops(tmp_path, mosquitto_broker, capsys):
    _, states, _ = kit.installed_fleet(tmp_path, broker=mosquitto_broker.url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = kit.cli(capsys, "agent", "--state-dir", states["d1"].root, "--http", f"127.0.0.1:{port}")
    assert code == 1
    kit.assert_one_error(err, f"cannot serve the inference API on 127.0.0.1:{port}")
    # The agent stopped cleanly: its store can be opened again at once.
    from hdus_edge.device.store import SeedStore

    SeedStore(states["d1"].store_dir).close()


# --- concurrent clients during swaps and unlearns ----------------------------------------------------


def _inconsistent(answers: list[tuple[str, str, np.ndarray]], expected: dict[tuple[str, str], np.ndarray]) -> list[str]:
    """Answers whose output is not the ensemble of exactly the member set and versions they name."""
    bad = []
    for members, versions, y in answers:
        ref = expected.get((members, versions))
        if ref is None or np.abs(ref - y).max() > 1e-5:
            bad.append(f"{members} {versions}")
    return bad


def test_concurrent_clients_during_seed_swaps_and_unlearns(tmp_path, mosquitto_broker):
    # Prepare: five agents on Mosquitto; d0 serves its ensemble; 4 clients call it in a loop
    broker = mosquitto_broker.url
    admin, states = fk.provision(tmp_path, broker)
    agents = {i: fk.start_agent(states[i], broker) for i in fk.IDS}
    tf = fk.trained_models()
    d0 = agents["d0"]
    server = InferenceServer(d0.runtime, AgentMetrics(d0.observe), ("127.0.0.1", 0), ready=lambda: d0.ready).start()
    x = np.ascontiguousarray(tf.data.test.x[:8])
    answers: list[tuple[str, str, np.ndarray]] = []
    failures: list[str] = []
    stop = threading.Event()

    def client_loop(k: int) -> None:
        client = triton.InferenceServerClient(server.url.removeprefix("http://"))
        while not stop.is_set():
            try:
                y, params = _infer(client, x, binary=bool(k % 2))
                answers.append((params["members"], params["seed_versions"], y))
            except Exception as exc:  # noqa: BLE001  # any failure is the finding
                failures.append(repr(exc))
        client.close()

    # d1's seed versions: v1 its own, then other devices' seeds, so every version answers differently.
    seed_of = {("d1", 1): tf.seed_onnx["d1"], ("d1", 2): tf.seed_onnx["d3"], ("d1", 3): tf.seed_onnx["d4"],
               ("d1", 4): tf.seed_onnx["d2"]}
    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(4)]
    try:
        fk.wait_members(agents, fk.complete_members(fk.IDS))
        for t in threads:
            t.start()
        # Execute: 3 seed swaps, then 2 unlearns, while the clients run
        for version in (2, 3, 4):
            agents["d1"].publish_seed(seed_of[("d1", version)], version)
            assert d0.wait_for(lambda a: a.runtime.seed_versions().get("d1") == version, 20)
            time.sleep(0.3)
        for target in ("d3", "d4"):
            outcome = request_unlearn(broker_url=broker, fleet=admin.fleet().fleet.name, admin_key=admin.key().public_key,
                                      signer=admin.key(), issuer="admin", target=target, epoch=0, wait_s=20)
            assert "d0" in {r.receipt.device_id for r in outcome.receipts}
            assert d0.wait_for(lambda a: target not in a.members(), 10)
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        server.stop()
        for a in agents.values():
            a.stop()
    # Assert: no request failed; every answer is the ensemble of exactly the set it names
    assert failures == []
    labels = sorted({(m, v) for m, v, _ in answers})
    assert len(labels) >= 5, labels  # the clients saw the swaps and the unlearns happen
    expected = {}
    for members, versions in labels:
        seeds = {}
        for item in versions.split(","):
            owner, version = item.split("=")
            seeds[owner] = seed_of.get((owner, int(version)), tf.seed_onnx[owner])
        assert sorted(seeds) == members.split(",")
        runtime = EnsembleRuntime(tf.main_onnx["d0"], fk.LEARNING.lam, fk.LEARNING.space, "sessions", seeds=seeds)
        expected[(members, versions)] = runtime.predict(x)
    assert _inconsistent(answers, expected) == []
    # The check can fail: an answer labelled with another member set is caught.
    (m0, v0, y0), other = answers[0], next(lab for lab in labels if lab != (answers[0][0], answers[0][1]))
    assert _inconsistent([(other[0], other[1], y0)], expected) == [f"{other[0]} {other[1]}"]
    assert len(answers) > 50 and Path(states["d0"].root).exists()
