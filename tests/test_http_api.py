"""The inference API (Open Inference Protocol) on its own: request parsing (pure), and a server over a
real ensemble spoken to by Triton's client and by raw HTTP, including every kind of bad request."""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path

import cli_lifecycle_kit as kit
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from hdus_edge.device.agent import AgentObservation
from hdus_edge.device.http_api import (
    ApiError,
    ApiLimits,
    InferenceServer,
    encode_infer_response,
    parse_infer_request,
)
from hdus_edge.device.metrics import AgentMetrics
from hdus_edge.device.view import load_runtime

SHAPE = (1, 8, 8)
LIMITS = ApiLimits(max_body_bytes=64 * 1024, max_batch=8, max_connections=4, idle_timeout_s=5)


_TRAILED = b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,1,8,8], "data": [0]}]}'


def _json_request(x: np.ndarray, **extra) -> bytes:
    tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def _parse(body: bytes, header: int | None = None):
    return parse_infer_request(body, header, SHAPE, "probabilities", LIMITS)


# --- parsing (pure) ----------------------------------------------------------------------------------


def test_json_and_binary_requests_parse_to_the_same_tensor():
    x = np.random.default_rng(0).random((3, *SHAPE), dtype=np.float32)
    nested = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 1, 8, 8],
                                     "data": x.tolist()}]}).encode()
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [3, 1, 8, 8],
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    flat = _parse(_json_request(x, id="r1"))
    assert flat.request_id == "r1" and not flat.binary_output
    assert np.array_equal(flat.x, x)
    assert np.array_equal(_parse(nested).x, x)
    binary = _parse(head + x.tobytes(), len(head))
    assert binary.binary_output and np.array_equal(binary.x, x)


@pytest.mark.parametrize("body, header, fragment", [
    (b"{not json", None, "malformed JSON"),
    (b"[" * 100000, None, "malformed JSON"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,1,8,8], "data": [NaN]}]}', None, "malformed JSON"),
    (b"[]", None, "JSON object"),
    (b'{"inputs": []}', None, "exactly one tensor"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1,1,8,8], "data": []}]}', None, "unknown input 'x'"),
    (b'{"inputs": [{"name": "input", "datatype": "INT64", "shape": [1,1,8,8], "data": []}]}', None, "datatype 'INT64'"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,1,8,9], "data": []}]}', None, "input shape"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [9,1,8,8], "data": []}]}', None, "N <= 8"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [0,1,8,8], "data": []}]}', None, "input shape"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,1,8,8.0], "data": []}]}', None, "input shape"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,1,8,8], "data": [1, 2]}]}', None, "needs 64"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,1,8,8], "data": [[1], [2, 3]]}]}', None, "input data"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,1,8,8]}]}', None, "neither"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,1,8,8], "parameters": {"binary_data_size": 8}}]}',
     None, "binary_data_size 8"),
    (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1,1,8,8], "parameters": {"binary_data_size": 256}}]}',
     None, "expected 256"),
    (_TRAILED + b"\0" * 4, len(_TRAILED), "no input declares"),
    (b'{}', 500, "body has 2 bytes"),
])
def test_bad_requests_are_refused_with_a_reason(body, header, fragment):
    with pytest.raises(ApiError) as caught:
        _parse(body, header)
    assert caught.value.status == 400 and fragment in caught.value.message


def test_non_finite_values_and_unknown_outputs_are_refused():
    x = np.zeros((1, *SHAPE), np.float32)
    x[0, 0, 0, 0] = np.inf
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 8, 8],
                                   "parameters": {"binary_data_size": 256}}]}).encode()
    with pytest.raises(ApiError, match="NaN or infinite"):
        _parse(head + x.tobytes(), len(head))
    with pytest.raises(ApiError, match="unknown output 'logits'"):
        _parse(_json_request(np.zeros((1, *SHAPE), np.float32), outputs=[{"name": "logits"}]))


def test_binary_response_carries_the_header_length_and_the_raw_tensor():
    request = _parse(_json_request(np.zeros((1, *SHAPE), np.float32), parameters={"binary_data_output": True}))
    y = np.arange(20, dtype=np.float32).reshape(2, 10)
    body, head_len = encode_infer_response(request, y, "probabilities", {"members": "a"})
    head = json.loads(body[:head_len])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 80 and head["parameters"] == {"members": "a"}
    assert np.array_equal(np.frombuffer(body[head_len:], "<f4").reshape(2, 10), y)


# --- a server over a real ensemble ---------------------------------------------------------------------


@pytest.fixture
def served(tmp_path):
    _, states, _ = kit.installed_fleet(tmp_path)
    runtime, members = load_runtime(states["d1"])
    observation = AgentObservation("d1", runtime.members(), dict(runtime.seed_versions()), runtime.generation,
                                   runtime.built_at, False, 0, 0, 0, 0, {"bad-signature": 2}, True, 3, 1, 0, True)
    server = InferenceServer(runtime, AgentMetrics(lambda: observation), ("127.0.0.1", 0), limits=LIMITS).start()
    try:
        yield server, runtime, members
    finally:
        server.stop()
        runtime.close()


def _raw(server: InferenceServer, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else {}
    finally:
        conn.close()


def test_triton_client_json_and_binary_equal_the_ensemble(served):
    # Prepare
    server, runtime, members = served
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    x = np.random.default_rng(1).random((4, *SHAPE), dtype=np.float32)
    # Execute / Assert: health and metadata as the protocol defines them
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("ensemble")
    meta = client.get_model_metadata("ensemble")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    expected = runtime.predict(x)
    for binary in (False, True):
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        result = client.infer("ensemble", [tensor], request_id="abc",
                              outputs=[triton.InferRequestedOutput("probabilities", binary_data=binary)])
        assert np.array_equal(result.as_numpy("probabilities"), expected)
        answer = result.get_response()
        assert answer["id"] == "abc"
        assert answer["parameters"]["members"] == ",".join(members)
        assert answer["parameters"]["seed_versions"] == ",".join(f"{m}=1" for m in members)
    client.close()


def test_bad_requests_over_http_get_4xx_json_and_change_nothing(served):
    # Prepare
    server, runtime, _ = served
    x = np.random.default_rng(2).random((2, *SHAPE), dtype=np.float32)
    before, generation = runtime.predict(x), runtime.generation
    good = _json_request(x)
    cases = [
        ("POST", "/v2/models/ensemble/infer", b"{oops", {}, 400),
        ("POST", "/v2/models/ensemble/infer", _json_request(np.zeros((1, 1, 8, 9), np.float32)), {}, 400),
        ("POST", "/v2/models/other/infer", good, {}, 404),
        ("POST", "/v2/models/ensemble/versions/7/infer", good, {}, 404),
        ("GET", "/v2/models/ensemble/infer", None, {}, 405),
        ("POST", "/v2/models/ensemble/infer", b"x" * (LIMITS.max_body_bytes + 1), {}, 413),
        ("POST", "/v2/models/ensemble/infer", good, {"Inference-Header-Content-Length": "zz"}, 400),
        ("GET", "/nowhere", None, {}, 404),
    ]
    # Execute / Assert
    for method, path, body, headers, status in cases:
        got, payload = _raw(server, method, path, body, headers)
        assert got == status and isinstance(payload.get("error"), str) and payload["error"], (path, got, payload)
    assert runtime.generation == generation and np.array_equal(runtime.predict(x), before)
    status, answer = _raw(server, "POST", "/v2/models/ensemble/infer", good)
    assert status == 200 and np.array_equal(np.array(answer["outputs"][0]["data"], np.float32).reshape(2, 10), before)
    # Metrics count them: 1 good answer; the 4xx on infer routes as client errors
    _, _ = _raw(server, "GET", "/v2/health/live")
    conn = http.client.HTTPConnection(*server.address, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    assert 'hdus_inference_requests_total{outcome="ok"} 1.0' in text
    assert 'hdus_inference_requests_total{outcome="client_error"} 7.0' in text
    assert 'hdus_messages_rejected_total{reason="bad-signature"} 2.0' in text
    assert "hdus_ensemble_members 2.0" in text and "hdus_broker_reconnects_total 2.0" in text
    assert 'hdus_ensemble_seed_version{owner="d2"} 1.0' in text and "hdus_inference_seconds_bucket" in text


def test_a_body_without_length_and_a_triton_error_are_4xx(served):
    server, _, _ = served
    sock = socket.create_connection(server.address, timeout=10)
    sock.sendall(b"POST /v2/models/ensemble/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert sock.recv(4096).split(b"\r\n", 1)[0] == b"HTTP/1.1 411 Length Required"
    sock.close()
    client = triton.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton.InferInput("input", [1, 1, 8, 8], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float64).astype(np.float32))
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.infer("not-the-model", [tensor])
    client.close()


def test_connections_over_the_cap_get_503_at_once(served):
    # Prepare: hold every slot with idle keep-alive connections
    server, _, _ = served
    held = [socket.create_connection(server.address, timeout=10) for _ in range(LIMITS.max_connections)]
    try:
        for s in held:  # each is being served (a request in, its answer out) and stays open
            s.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        # Execute / Assert
        extra = socket.create_connection(server.address, timeout=10)
        assert extra.recv(4096).startswith(b"HTTP/1.1 503")
        extra.close()
    finally:
        for s in held:
            s.close()
    # Slots come back once those connections close.
    for _ in range(50):
        status, _ = _raw(server, "GET", "/v2/health/ready")
        if status == 200:
            break
    assert status == 200


def test_not_ready_answers_503_and_infers_nothing(tmp_path):
    _, states, _ = kit.installed_fleet(tmp_path)
    runtime, _ = load_runtime(states["d1"])
    obs = AgentObservation("d1", (), {}, 0, 0.0, False, 0, 0, 0, 0, {}, False, 0, 0, 0, False)
    with InferenceServer(runtime, AgentMetrics(lambda: obs), ("127.0.0.1", 0), ready=lambda: False) as server:
        assert _raw(server, "GET", "/v2/health/ready")[0] == 503
        assert _raw(server, "GET", "/v2/health/live")[0] == 200
        status, payload = _raw(server, "POST", "/v2/models/ensemble/infer", _json_request(np.zeros((1, *SHAPE), np.float32)))
        assert status == 503 and "not ready" in payload["error"]
    runtime.close()
    assert Path(states["d1"].root).exists()


def test_a_refused_body_is_never_read_as_the_next_request(served):
    # A 404 before the body was read must not leave that body to be parsed as the next request.
    server, _, _ = served
    body = _json_request(np.zeros((1, *SHAPE), np.float32))
    sock = socket.create_connection(server.address, timeout=10)
    sock.sendall(b"POST /v2/models/other/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    sock.close()
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    after = rest[length:]
    assert after == b"" or after.startswith(b"HTTP/1.1 200"), after[:200]  # closed, or the next answer is right
