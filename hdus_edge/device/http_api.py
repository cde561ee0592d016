"""The agent's live ensemble over HTTP: the Open Inference Protocol (KServe v2 / Triton REST) and /metrics.

Routes (the ensemble is served as model ``ensemble``, version ``1``):

- ``GET /v2/health/live``, ``GET /v2/health/ready`` (503 until the agent runs), ``GET /v2`` (server
  metadata), ``GET /v2/models/ensemble[/versions/1]`` (inputs, outputs, shapes, datatypes),
  ``GET /v2/models/ensemble[/versions/1]/ready``;
- ``POST /v2/models/ensemble[/versions/1]/infer``: one FP32 input ``input`` [N, C, H, W], one FP32
  output (``probabilities`` or ``logits``, after the fleet's combine space) [N, classes]; JSON tensors
  or the binary tensor extension (``Inference-Header-Content-Length``), both ways. Every answer's
  ``parameters`` name the snapshot that produced it: ``members``, ``seed_versions``,
  ``ensemble_generation``, read from the same snapshot as the output (``EnsembleRuntime.predict_labelled``),
  so an answer during a seed swap or an unlearn is the old ensemble's or the new one's, never a mix;
- ``GET /metrics``: Prometheus text (``hdus_edge.device.metrics``).

A bad request (unknown route or model, malformed JSON, wrong input name, datatype or shape, a
non-finite value, a body over ``max_body_bytes``, a batch over ``max_batch``) gets a 4xx with
``{"error": "..."}`` (the protocol's error object) and touches nothing: parsing is pure and runs
before the ensemble sees the tensor.

Why the standard library's ``http.server.ThreadingHTTPServer``: it adds no dependency and no native
code to a device image (a Pi Zero 2 W has 512 MB), is maintained with CPython, and costs about 0.5 MiB
(measured: RSS after importing the agent 75.5 MiB, with ``http.server`` 75.9). An inference is a few
hundred microseconds of onnxruntime (which releases the GIL), so a thread per connection is enough
for the handful of local clients a device serves; ``hdus-edge bench serve`` prints the figures. Its
known gaps are closed here: connections are capped (``max_connections``, else 503 at once), idle or
slow connections time out (``idle_timeout_s``), bodies need a ``Content-Length`` within the cap and
are read in one bounded call. It listens on loopback unless a host is given.
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from hdus_edge.device.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from hdus_edge.device.metrics import AgentMetrics
from hdus_edge.ensemble.runtime import EnsembleRuntime
from hdus_edge.errors import ApiListenError, DataShapeError

logger = logging.getLogger(__name__)

MODEL_NAME = "ensemble"
MODEL_VERSION = "1"
INPUT_NAME = "input"
DATATYPE = "FP32"
HEADER_LENGTH = "Inference-Header-Content-Length"  # the binary tensor extension's header
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class ApiLimits:
    """What one request and the server may take (the profile's ``[api]`` section sets them)."""

    max_body_bytes: int = 4 * 1024 * 1024  # a batch of 256 at 28x28 in JSON is ~2 MB
    max_batch: int = 256
    max_connections: int = 16  # each is a thread; beyond, 503 at once
    idle_timeout_s: float = 30.0  # a keep-alive or slow connection is closed after this


class ApiError(Exception):
    """A request the API refuses: HTTP ``status`` and a message for the ``{"error": ...}`` body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InferRequest:
    """A parsed, checked inference request."""

    request_id: str | None
    x: np.ndarray  # float32 [N, C, H, W]
    binary_output: bool


def output_name(space: str) -> str:
    """The output tensor's name: what the fleet's combine space makes of it."""
    return "probabilities" if space == "probs" else "logits"


def model_metadata(runtime: EnsembleRuntime) -> dict[str, Any]:
    """The protocol's model metadata: inputs and outputs with shapes and datatypes (-1: any batch)."""
    c = runtime.contract
    return {
        "name": MODEL_NAME,
        "versions": [MODEL_VERSION],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT_NAME, "datatype": DATATYPE, "shape": [-1, *c.input_shape]}],
        "outputs": [{"name": output_name(runtime.space), "datatype": DATATYPE, "shape": [-1, c.num_classes]}],
        "parameters": {"members": ",".join(runtime.members()), "space": runtime.space, "lam": runtime.lam},
    }


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_infer_request(
    body: bytes, header_length: int | None, input_shape: tuple[int, int, int], out_name: str, limits: ApiLimits
) -> InferRequest:
    """Check an inference request (JSON, or JSON + binary tensors) against the model; pure.

    Raises ``ApiError`` (400) naming what is wrong: malformed JSON, not one input named ``input``,
    datatype other than FP32, a shape other than [N, C, H, W] with 1 <= N <= ``max_batch``, data that
    does not fill the shape, a non-finite value, unknown requested outputs.
    """
    if header_length is not None:
        if not 0 <= header_length <= len(body):
            raise ApiError(400, f"{HEADER_LENGTH} is {header_length}, but the body has {len(body)} bytes")
        head, binary = body[:header_length], memoryview(body)[header_length:]
    else:
        head, binary = body, memoryview(b"")
    try:
        request = json.loads(head, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ApiError(400, f"malformed JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(request, dict):
        raise ApiError(400, "the request must be a JSON object")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, f"'inputs' must hold exactly one tensor, named {INPUT_NAME!r}")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise ApiError(400, f"unknown input {tensor.get('name')!r}; the model's input is {INPUT_NAME!r}")
    if tensor.get("datatype") != DATATYPE:
        raise ApiError(400, f"input datatype {tensor.get('datatype')!r} is not {DATATYPE}")
    shape = tensor.get("shape")
    if (not isinstance(shape, list) or len(shape) != 4 or not all(type(d) is int for d in shape)
            or tuple(shape[1:]) != tuple(input_shape) or not 1 <= shape[0] <= limits.max_batch):
        raise ApiError(400, f"input shape {shape} is not [N, {', '.join(map(str, input_shape))}] "
                            f"with 1 <= N <= {limits.max_batch}")
    count = math.prod(shape)
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise ApiError(400, "input 'parameters' must be an object")
    if "binary_data_size" in params:
        size = params["binary_data_size"]
        if type(size) is not int or size != 4 * count:
            raise ApiError(400, f"binary_data_size {size!r} does not match shape {shape} in FP32 ({4 * count} bytes)")
        if len(binary) != size:
            raise ApiError(400, f"the body holds {len(binary)} bytes of binary tensor data, expected {size}")
        x = np.frombuffer(binary, dtype="<f4").reshape(shape)
    else:
        if len(binary):
            raise ApiError(400, "binary data follows the JSON header, but no input declares binary_data_size")
        if "data" not in tensor:
            raise ApiError(400, "input has neither 'data' nor binary_data_size")
        try:
            flat = np.asarray(tensor["data"], dtype=np.float32)
        except (ValueError, TypeError) as exc:
            raise ApiError(400, f"input data is not a (nested) list of numbers: {exc}") from None
        if flat.size != count or (flat.ndim != 1 and list(flat.shape) != shape):
            raise ApiError(400, f"input data has {flat.size} values in shape {list(flat.shape)}; shape {shape} needs {count}")
        x = flat.reshape(shape)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ApiError(400, "input holds NaN or infinite values")
    request_params = request.get("parameters") or {}
    if not isinstance(request_params, dict):
        raise ApiError(400, "request 'parameters' must be an object")
    binary_output = bool(request_params.get("binary_data_output", False))
    outputs = request.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise ApiError(400, "'outputs' must be a list of objects")
        for o in outputs:
            if o.get("name") != out_name:
                raise ApiError(400, f"unknown output {o.get('name')!r}; the model's output is {out_name!r}")
            binary_output = bool((o.get("parameters") or {}).get("binary_data", binary_output))
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ApiError(400, "'id' must be a string")
    return InferRequest(request_id, x, binary_output)


def encode_infer_response(
    request: InferRequest, output: np.ndarray, out_name: str, parameters: dict[str, Any]
) -> tuple[bytes, int | None]:
    """The response body and, for binary output, its JSON header's length (the extension's header)."""
    out = np.ascontiguousarray(output, dtype="<f4")
    tensor: dict[str, Any] = {"name": out_name, "datatype": DATATYPE, "shape": list(out.shape)}
    if request.binary_output:
        tensor["parameters"] = {"binary_data_size": out.nbytes}
    else:
        tensor["data"] = out.ravel().tolist()
    answer: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": MODEL_VERSION, "parameters": parameters,
                              "outputs": [tensor]}
    if request.request_id is not None:
        answer["id"] = request.request_id
    head = json.dumps(answer, separators=(",", ":")).encode()
    if request.binary_output:
        return head + out.tobytes(), len(head)
    return head, None


class InferenceServer:
    """The agent's HTTP API on a thread per connection (``start`` / ``stop``)."""

    def __init__(
        self,
        runtime: EnsembleRuntime | Callable[[], EnsembleRuntime],
        metrics: AgentMetrics,
        address: tuple[str, int],
        *,
        ready: Callable[[], bool] = lambda: True,
        limits: ApiLimits = ApiLimits(),
        server_name: str = "hdus-edge",
    ) -> None:
        # A callable gives the live runtime: the agent builds a new one when its main model changes.
        self._runtime_of = runtime if callable(runtime) and not isinstance(runtime, EnsembleRuntime) else (lambda: runtime)
        self.metrics = metrics
        self.limits = limits
        self.ready = ready
        self.server_name = server_name
        self.out_name = output_name(self.runtime.space)
        try:
            self._httpd = _Server(address, _Handler, self, limits.max_connections)
        except OSError as exc:
            raise ApiListenError(f"cannot serve the inference API on {address[0]}:{address[1]}: {exc.strerror or exc}",
                                 hint="choose another --http address, or stop what listens there") from None
        self._thread: threading.Thread | None = None

    @property
    def runtime(self) -> EnsembleRuntime:
        """The ensemble answers come from (the agent's current one)."""
        return self._runtime_of()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound (port 0 asks the OS for a free one)."""
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def start(self) -> InferenceServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="hdus-http", daemon=True)
        self._thread.start()
        logger.info("inference API at %s", self.url)
        return self

    def stop(self) -> None:
        """Stop accepting, close the socket (requests in flight finish on their daemon threads)."""
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> InferenceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- request handling (handler threads) --------------------------------------------------

    def infer(self, body: bytes, header_length: int | None) -> tuple[bytes, int | None]:
        began = time.perf_counter()
        request = parse_infer_request(body, header_length, self.runtime.contract.input_shape, self.out_name, self.limits)
        try:
            answer = self.runtime.predict_labelled(request.x)
        except DataShapeError as exc:  # the contract changed under us: cannot happen, but never a 500
            raise ApiError(400, exc.message) from None
        params = {
            "members": ",".join(answer.members),
            "seed_versions": ",".join(f"{m}={answer.versions.get(m, 0)}" for m in answer.members),
            "ensemble_generation": answer.generation,
            "fused": answer.fused,
        }
        body_out, head_len = encode_infer_response(request, answer.output, self.out_name, params)
        self.metrics.latency.observe(time.perf_counter() - began)
        self.metrics.batch.inc(request.x.shape[0])
        return body_out, head_len


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: type, api: InferenceServer, max_connections: int) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.api = api
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:  # over the cap: answer at once instead of queueing a thread per connection
                body = b'{"error":"too many connections"}'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: Triton's clients reuse connections
    # Headers and body go out in two writes; with Nagle on, the second waits for the client's
    # delayed ACK (40 ms per request, measured).
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        self.timeout = self.server.api.limits.idle_timeout_s
        super().setup()

    def version_string(self) -> str:
        return self.server.api.server_name

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  # the base class's name
        logger.debug("%s %s", self.address_string(), format % args)

    # --- routing ---------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802  # http.server's naming
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")

    def _route(self, method: str) -> None:
        api = self.server.api
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        self._body_read = False
        try:
            if path == "/v2/health/live":
                self._expect(method, "GET")
                self._send(200, b"")
            elif path == "/v2/health/ready":
                self._expect(method, "GET")
                self._send_json(200 if api.ready() else 503, {"ready": api.ready()})
            elif path == "/v2":
                self._expect(method, "GET")
                from hdus_edge import __version__

                self._send_json(200, {"name": api.server_name, "version": __version__,
                                      "extensions": ["binary_tensor_data"]})
            elif path == "/metrics":
                self._expect(method, "GET")
                self._send(200, api.metrics.render(), METRICS_CONTENT_TYPE)
            elif path.startswith("/v2/models/"):
                self._model_route(method, path[len("/v2/models/"):])
            else:
                raise ApiError(404, f"no route {path}")
        except ApiError as exc:
            if path.endswith("/infer"):
                api.metrics.inferences.labels("client_error").inc()
            self._close_if_body_unread()
            self._send_json(exc.status, {"error": exc.message})
        except Exception as exc:  # a bug: answered, logged, and the server goes on
            logger.exception("HTTP %s %s failed", method, path)
            if path.endswith("/infer"):
                api.metrics.inferences.labels("server_error").inc()
            self._close_if_body_unread()
            self._send_json(500, {"error": f"internal error: {type(exc).__name__}"})

    def _close_if_body_unread(self) -> None:
        # A refused request's unread body would be parsed as the next request on this connection.
        if not self._body_read and (self.headers.get("Content-Length", "0").strip() not in ("", "0")
                                    or self.headers.get("Transfer-Encoding")):
            self.close_connection = True

    def _model_route(self, method: str, rest: str) -> None:
        api = self.server.api
        parts = rest.split("/")
        if parts[0] != MODEL_NAME:
            raise ApiError(404, f"unknown model {parts[0]!r}; this server serves {MODEL_NAME!r}")
        parts = parts[1:]
        if parts[:1] == ["versions"]:
            if len(parts) < 2 or parts[1] != MODEL_VERSION:
                raise ApiError(404, f"unknown version {parts[1] if len(parts) > 1 else ''!r} of {MODEL_NAME!r}; "
                                    f"it has version {MODEL_VERSION}")
            parts = parts[2:]
        if not parts:
            self._expect(method, "GET")
            self._send_json(200, model_metadata(api.runtime))
        elif parts == ["ready"]:
            self._expect(method, "GET")
            self._send_json(200 if api.ready() else 503, {"name": MODEL_NAME, "ready": api.ready()})
        elif parts == ["infer"]:
            self._expect(method, "POST")
            body, header_length = self._read_body()
            if not api.ready():
                raise ApiError(503, "the agent is not ready")
            out, head_len = api.infer(body, header_length)
            api.metrics.inferences.labels("ok").inc()
            headers = {HEADER_LENGTH: str(head_len)} if head_len is not None else {}
            self._send(200, out, "application/octet-stream" if head_len is not None else "application/json", headers)
        else:
            raise ApiError(404, f"no route /v2/models/{rest}")

    # --- I/O helpers -------------------------------------------------------------------------

    def _expect(self, method: str, allowed: str) -> None:
        if method != allowed:
            raise ApiError(405, f"{method} is not allowed here; use {allowed}")

    def _read_body(self) -> tuple[bytes, int | None]:
        limits = self.server.api.limits
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            self.close_connection = True
            raise ApiError(411, "chunked bodies are not accepted; send Content-Length")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            self.close_connection = True
            raise ApiError(411, "Content-Length is required")
        try:
            length = int(length_text)
        except ValueError:
            self.close_connection = True
            raise ApiError(400, f"Content-Length {length_text!r} is not a number") from None
        if length < 0:
            self.close_connection = True
            raise ApiError(400, "Content-Length is negative")
        if length > limits.max_body_bytes:
            self.close_connection = True  # the unread body would be taken for the next request
            raise ApiError(413, f"body of {length} bytes is over the cap of {limits.max_body_bytes}")
        body = self.rfile.read(length)
        self._body_read = True
        if len(body) != length:
            self.close_connection = True
            raise ApiError(400, f"body ended after {len(body)} of {length} bytes")
        header = self.headers.get(HEADER_LENGTH)
        if header is None:
            return body, None
        try:
            return body, int(header)
        except ValueError:
            raise ApiError(400, f"{HEADER_LENGTH} {header!r} is not a number") from None

    def _send_json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload, separators=(",", ":")).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
