"""``inspect``: the report on a real exported seed, and the CLI's output and error paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from onnx import helper
from onnx_testkit import export_zoo, tiny_model, to_bytes

from hdus_edge.cli.app import run
from hdus_edge.errors import NotOnnxError
from hdus_edge.models import build_model, count_macs
from hdus_edge.onnx.checks import ModelContract
from hdus_edge.onnx.inspection import inspect_onnx


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inspect") / "seed.onnx"
    path.write_bytes(export_zoo("seed-cnn", owner="pi-7"))
    return path


def test_report_on_a_real_seed(seed_file: Path) -> None:
    data = seed_file.read_bytes()
    report = inspect_onnx(data)
    assert report.bytes == len(data) and report.ir_version == 8 and report.opset == 17
    assert report.inputs == [{"name": "input", "dtype": "FLOAT", "shape": ["N", 1, 8, 8]}]
    assert report.outputs == [{"name": "logits", "dtype": "FLOAT", "shape": ["N", 10]}]
    assert report.operators["Conv"] == 3 and report.operators["Gemm"] == 1
    assert report.macs == count_macs(build_model("seed-cnn", (1, 8, 8), 10), (1, 8, 8))
    assert 4000 < report.params < 6000
    assert report.metadata["hdus.owner"] == "pi-7" and report.safe and report.problems == []


def test_report_names_the_problems_of_an_unsafe_model() -> None:
    model = tiny_model(classes=11, extra_nodes=[helper.make_node("Sin", ["y"], ["z"])], output_name="z")
    report = inspect_onnx(to_bytes(model), contract=ModelContract(8, 8, 10))
    assert not report.safe
    assert any("Sin" in p for p in report.problems) and any("11" in p for p in report.problems)
    assert report.macs == 64 * 11  # the Gemm


def test_report_refuses_what_is_not_onnx() -> None:
    with pytest.raises(NotOnnxError):
        inspect_onnx(b"\x00" * 100)


def test_cli_json(seed_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["inspect", str(seed_file), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("ir_version", "opset", "inputs", "outputs", "params", "bytes", "macs", "metadata", "safe", "problems"):
        assert key in doc
    assert doc["safe"] is True and doc["bytes"] == seed_file.stat().st_size and doc["macs"] > 100_000
    assert doc["metadata"]["hdus.role"] == "seed" and doc["operators"]["Relu"] == 3


def test_cli_table_and_fleet_contract(seed_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["inspect", str(seed_file)]) == 0
    out = capsys.readouterr().out
    assert "safe to load" in out and "['N', 1, 8, 8]" in out and "pi-7" in out
    assert run(["inspect", str(seed_file), "--height", "28", "--width", "28", "--classes", "10", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["safe"] is False and any("expected ['N', 1, 28, 28]" in p for p in doc["problems"])


@pytest.mark.parametrize(
    "make,args,match",
    [
        (lambda seed: b"this is not onnx at all", [], "do not parse"),
        (lambda seed: seed[: len(seed) // 2], [], "truncated"),
        (lambda seed: seed, ["--max-bytes", "1000"], "over the cap of 1000 bytes"),
    ],
    ids=["not-onnx", "truncated", "over-cap"],
)
def test_cli_error_path(tmp_path: Path, seed_file: Path, capsys: pytest.CaptureFixture[str], make, args, match) -> None:  # noqa: ANN001
    path = tmp_path / "bad.onnx"
    path.write_bytes(make(seed_file.read_bytes()))
    assert run(["inspect", str(path), *args]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and match in captured.err
    assert captured.out == ""
