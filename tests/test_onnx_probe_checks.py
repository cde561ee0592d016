"""Safe-loading checks inside the probe child (how the agent checks seeds without loading onnx):
the same verdicts, the same error classes and messages as ``check_onnx`` in-process."""

from __future__ import annotations

import pytest
from onnx_testkit import export_zoo

from hdus_edge.errors import ContractMismatchError, PayloadTooLargeError, ProbeRunError
from hdus_edge.onnx.checks import check_onnx
from hdus_edge.onnx.contract import LoadPolicy, ModelContract
from hdus_edge.onnx.probe import probe_in_subprocess

CONTRACT = ModelContract(height=8, width=8, num_classes=10)


@pytest.mark.parametrize("data, policy, error", [
    (export_zoo("seed-cnn", classes=5), LoadPolicy(), ContractMismatchError),
    (export_zoo("seed-cnn"), LoadPolicy(max_bytes=1024), PayloadTooLargeError),
])
def test_the_child_rejects_as_check_onnx_does(data, policy, error):
    with pytest.raises(error) as in_process:
        check_onnx(data, CONTRACT, policy)
    with pytest.raises(error) as in_child:
        probe_in_subprocess(data, CONTRACT, timeout_s=60, policy=policy)
    assert type(in_child.value) is type(in_process.value) and in_child.value.message == in_process.value.message


def test_without_a_policy_the_child_only_probes():
    # The size cap is not checked (the probe runs the model and passes); a wrong output is a probe failure.
    probe_in_subprocess(export_zoo("seed-cnn"), CONTRACT, timeout_s=60)
    with pytest.raises(ProbeRunError):
        probe_in_subprocess(export_zoo("seed-cnn", classes=5), CONTRACT, timeout_s=60)
    probe_in_subprocess(export_zoo("seed-cnn"), CONTRACT, timeout_s=60, policy=LoadPolicy())


def test_only_max_bytes_travels_to_the_child():
    with pytest.raises(ValueError, match="max_bytes"):
        probe_in_subprocess(export_zoo("seed-cnn"), CONTRACT, policy=LoadPolicy(max_nodes=3))
