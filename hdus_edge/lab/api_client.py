"""A client of a running agent's inference API (Open Inference Protocol, KServe v2), for the lab.

What Triton's client sends, in as few lines as the benches and process fleets need: one keep-alive
connection to ``127.0.0.1:<port>``, JSON or binary tensors. Answers come back bit for bit (binary
output is the float32 bytes the ensemble computed), so outputs of agents in their own processes
can be compared exactly.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import numpy as np

INFER_PATH = "/v2/models/ensemble/infer"


def infer_request(x: np.ndarray, binary: bool) -> tuple[bytes, dict[str, str]]:
    """An infer request body and headers for ``x`` (float32 N x C x H x W)."""
    x = np.ascontiguousarray(x, dtype="<f4")
    tensor: dict[str, Any] = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
    if not binary:
        tensor["data"] = x.ravel().tolist()
        return json.dumps({"inputs": [tensor]}).encode(), {"Content-Type": "application/json"}
    tensor["parameters"] = {"binary_data_size": x.nbytes}
    head = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    return head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head)),
                                "Content-Type": "application/octet-stream"}


class ApiClient:
    """One keep-alive connection to an agent's API on loopback ``port``."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def post(self, body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], bytes]:
        """POST one prepared infer request; returns (JSON header, binary tail). ``RuntimeError`` on a non-200."""
        self.conn.request("POST", INFER_PATH, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        head_len = resp.getheader("Inference-Header-Content-Length")
        if head_len:
            return json.loads(data[: int(head_len)]), data[int(head_len):]
        return json.loads(data), b""

    def predict(self, x: np.ndarray) -> np.ndarray:
        """The ensemble's output for ``x``, exactly as the agent computed it (binary float32)."""
        return self.predict_labelled(x)[0]

    def predict_labelled(self, x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The output and the answer's parameters (members, ensemble generation, fused or not)."""
        head, tail = self.post(*infer_request(x, binary=True))
        out = head["outputs"][0]
        y = np.frombuffer(tail, dtype="<f4", count=int(np.prod(out["shape"]))).reshape(out["shape"]).copy()
        return y, dict(head.get("parameters", {}))

    def close(self) -> None:
        self.conn.close()
