"""Bugs the reliability suite found in code outside its area, fixed in 631cd6d; these tests keep them
fixed (each failed before the fix; the fix is described in each docstring).

1. Non-UTF-8 string fields in an ONNX model make the safe-loading checks raise ``TypeError`` (not a
   rejection): the agent logs an "unexpected error", audits nothing, counts nothing.
2. No bound on graph size: a neighbour's seed of 5,000 allowed nodes is installed and slows every
   inference of the device by orders of magnitude.
3. After the broker loses its retained state (amqtt or Mosquitto restarted without persistence, or
   Mosquitto killed between autosaves), agents never re-announce: devices that join later never
   certify the others (their seeds stay parked) and never get or send seeds.
4. A SIGKILL during an atomic write leaves ``.tmp-*`` files that no restart removes: the status file's
   temp in the state dir (seen in the SIGKILL campaign) and saved orders' temps in ``store/orders``.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from hdus_edge.device.store import SeedStore
from hdus_edge.errors import OnnxRejectedError
from hdus_edge.onnx.checks import ModelContract, check_onnx
from hdus_edge.reliability.cases_faults import broker_crash_during_seeds
from hdus_edge.reliability.harness import (
    LAB_SETTINGS,
    SingleAgentLab,
    lab_fleet,
    lab_models,
    start_agents,
)
from hdus_edge.reliability.invariants import orphan_temp_files
from hdus_edge.reliability.onnx_mutants import deep_chain_model

CONTRACT = ModelContract(8, 8, 10)


def _seed() -> bytes:
    return lab_models(4)["dev-001"].seed_onnx


def _non_utf8(where: str) -> bytes:
    """A valid seed with one string made invalid UTF-8 (same length, so the protobuf still parses)."""
    data = _seed()
    if where == "op_type":  # NodeProto.op_type is field 4: tag 0x22, then the length
        assert b'"\x04Relu' in data
        return data.replace(b'"\x04Relu', b'"\x04\xffelu', 1)
    # The provenance's reference hash: 64 hex digits, found once in the bytes.
    ref = b"0" * 64
    assert data.count(ref) == 1
    return data.replace(ref, b"\xff" + ref[1:], 1)


@pytest.mark.parametrize("where", ["op_type", "metadata"])
def test_bug1_non_utf8_strings_are_a_rejection_not_a_type_error(where):
    """Fix: in ``parse_onnx``, refuse a model whose string fields are not valid UTF-8 (the onnx
    proto2 binding returns them as ``bytes``), e.g. by walking the parsed model once, or by catching
    ``TypeError``/``UnicodeDecodeError`` around the checks and raising ``NotOnnxError``."""
    data = _non_utf8(where)
    with pytest.raises(OnnxRejectedError):
        check_onnx(data, CONTRACT)


def test_bug1_at_the_agent_the_rejection_is_counted_and_audited(tmp_path, embedded_broker):
    with SingleAgentLab(tmp_path, embedded_broker) as lab:
        outcome = lab.send_seed(lab.a, _non_utf8("op_type"), timeout=5)
        assert outcome == "rejected"  # today: "silent" (logged as an unexpected error)
        assert lab.agent.members() == (lab.a, lab.b)


def test_bug2_a_deep_chain_of_allowed_nodes_is_refused(tmp_path, embedded_broker):
    """Fix: add ``LoadPolicy.max_nodes`` (zoo seeds have about 10 nodes, the largest zoo main model
    a few hundred; 1,024 leaves room) checked in ``check_onnx`` right after parsing, plus a cap on
    graph depth; raise ``OnnxCheckError``."""
    chain = deep_chain_model(5000)
    assert len(chain) < 200_000  # small: the size cap does not help
    settings = replace(LAB_SETTINGS, probe_in_subprocess=True)
    with SingleAgentLab(tmp_path, embedded_broker, settings=settings) as lab:
        x = np.zeros((1, 1, 8, 8), np.float32)
        started = time.perf_counter()
        for _ in range(20):
            lab.agent.predict(x)
        before_s = time.perf_counter() - started
        outcome = lab.send_seed(lab.a, chain)
        started = time.perf_counter()
        for _ in range(20):
            lab.agent.predict(x)
        after_s = time.perf_counter() - started
        assert outcome == "rejected", f"installed; 20 predictions took {after_s:.3f} s instead of {before_s:.3f} s"


@pytest.mark.parametrize("kind", ["amqtt", "mosquitto-memory", "mosquitto-persistent"])
def test_bug3_devices_joining_after_the_broker_lost_its_state_converge(tmp_path, kind):
    """Fix (device/agent.py): on every reconnect (``MqttTransport.connect_count`` grew, or an on-connect hook)
    re-publish hello, neighbour list and digest, and forget ``_published`` so that the neighbours'
    re-announced lists make it publish its seed again; receivers dedupe by (version, sha256). Also park
    per (sender, topic) rather than the last 16 messages per sender, so the periodic digests cannot
    evict a parked seed."""
    figures = broker_crash_during_seeds(tmp_path, kind, n=3, seed=5, timeout=8)
    assert figures["losses"] == 0, figures


def test_bug4_a_killed_status_write_leaves_no_orphan_after_restart(tmp_path, embedded_broker):
    """Fix: remove stale ``.tmp-*`` files of the state dir when the agent starts (``state.atomic_write_bytes``
    names them ``.tmp-<name>-<pid>``, so a new process never reuses a dead one's)."""
    fleet = lab_fleet(tmp_path, embedded_broker, 2, name="orph")
    state = fleet.states["dev-000"]
    leftover = state.root / ".tmp-status.json-999999"  # what a SIGKILL mid-write of status.json leaves
    leftover.write_bytes(b'{"half": ')
    try:
        start_agents(fleet, ["dev-000"])
    finally:
        fleet.stop()
    assert orphan_temp_files(state.root) == []


def test_bug4_store_recovery_also_cleans_the_orders_folder(tmp_path):
    """Fix: ``SeedStore._recover`` scans ``orders/`` for ``.tmp-*`` too (``save_order`` writes there
    with the same temp-file protocol)."""
    (tmp_path / "orders").mkdir()
    leftover = tmp_path / "orders" / ".tmp-abc.order.12345678"
    leftover.write_bytes(b"half an order")
    with SeedStore(tmp_path):
        pass
    assert not leftover.exists()
