"""User errors end in one 'error: ...' line and a non-zero exit, never a traceback."""

import gzip
import subprocess
import sys

import pytest

from hdus_edge.cli.app import run


def _run(capsys, *argv):
    code = run(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _assert_one_error_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in err, (f, err)


def test_unknown_architecture(capsys):
    code, _, err = _run(capsys, "models", "show", "vgg-16")
    assert code == 2
    _assert_one_error_line(err, "unknown architecture 'vgg-16'", "mobilenet-s")


@pytest.mark.parametrize("lam", ["1.5", "-0.2"])
def test_lam_out_of_range(capsys, lam):
    code, _, err = _run(capsys, "demo", "--lam", lam)
    assert code == 2
    _assert_one_error_line(err, "lam must lie in [0, 1]")


def test_unknown_combine_space(capsys):
    code, _, err = _run(capsys, "demo", "--space", "median")
    assert code == 2
    _assert_one_error_line(err, "--space")


def test_missing_data_folder(capsys, tmp_path):
    code, _, err = _run(capsys, "bench", "accuracy", "--data", str(tmp_path / "nope"))
    assert code == 2
    _assert_one_error_line(err, "nope")


def test_malformed_idx_files(capsys, tmp_path):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03garbage"))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x05"))
    code, _, err = _run(capsys, "bench", "accuracy", "--data", str(tmp_path))
    assert code == 2
    _assert_one_error_line(err, "images-idx3")


def test_input_size_the_models_cannot_take(capsys):
    code, _, err = _run(capsys, "models", "list", "--hw", "4")
    assert code == 2
    _assert_one_error_line(err, "--hw")


def test_console_script_prints_one_red_line_and_exits_2():
    # Through the real entry point, as a user runs it.
    proc = subprocess.run(
        [sys.executable, "-m", "hdus_edge", "models", "show", "nope"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    _assert_one_error_line(proc.stderr, "unknown architecture")


def test_debug_flag_shows_the_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "hdus_edge", "--debug", "models", "show", "nope"], capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr
