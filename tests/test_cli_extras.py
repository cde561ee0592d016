"""A command whose extra is missing exits 2 with one line naming it; usage errors exit 2 too.

The base install (no extras) lacks torch, scikit-learn, matplotlib, amqtt and psutil; these tests
block those imports in a child process, as a base install would fail them. The real base install
is exercised in tests/test_device_install.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hdus_edge.cli import app as cli_app
from hdus_edge.errors import EXTRA_OF_IMPORT, MissingExtraError

# sys.modules[name] = None makes ``import name`` raise ModuleNotFoundError(name=name), as when absent.
CHILD = """
import sys
sys.modules.update(dict.fromkeys(sys.argv[1].split(",")))
from hdus_edge.cli.app import run
sys.exit(run(sys.argv[2:]))
"""


def _hd_without(blocked: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CHILD, blocked, *argv], capture_output=True, text=True, timeout=120)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("blocked", "argv", "extra"),
    [
        ("torch", ["train", "--state-dir", "{tmp}", "--data", "{tmp}"], "train"),
        ("torch", ["distill", "--state-dir", "{tmp}"], "train"),
        ("torch,sklearn,matplotlib,amqtt,psutil", ["demo"], "train"),
        ("sklearn", ["data", "split", "--dataset", "digits", "--out", "{tmp}/data"], "sim"),
        ("amqtt", ["broker", "--port", "1"], "sim"),
        ("psutil", ["bench", "reliability", "--quick"], "sim"),
    ],
)
def test_cli_missing_extra_names_it(tmp_path: Path, blocked: str, argv: list[str], extra: str) -> None:
    # Execute
    proc = _hd_without(blocked, *(a.replace("{tmp}", str(tmp_path)) for a in argv))
    # Assert
    assert proc.returncode == 2, proc.stderr
    line = _one_error_line(proc.stderr)
    assert line.endswith(f"install 'hdus-edge[{extra}]')"), line
    assert "Traceback" not in proc.stderr


def test_cli_missing_extra_only_for_an_extras_import() -> None:
    # An extra's package, or a submodule of it, maps to that extra ...
    for name, extra in EXTRA_OF_IMPORT.items():
        err = MissingExtraError.from_import(ModuleNotFoundError(f"No module named '{name}'", name=f"{name}.sub"))
        assert err is not None and err.exit_code == 2 and f"hdus-edge[{extra}]" in str(err)
    # ... also when a module re-raised the import error in its own words
    try:
        try:
            raise ModuleNotFoundError("No module named 'amqtt'", name="amqtt")
        except ImportError as inner:
            raise ImportError("the embedded broker needs amqtt") from inner
    except ImportError as wrapped:
        err = MissingExtraError.from_import(wrapped)
    assert err is not None and "hdus-edge[sim]" in str(err)
    # ... anything else stays a bug to see, not a hint to install something
    assert MissingExtraError.from_import(ModuleNotFoundError("No module named 'numpy'", name="numpy")) is None
    assert MissingExtraError.from_import(ModuleNotFoundError("no name")) is None


def test_cli_other_missing_module_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a command failing on an import that no extra provides (a broken install)
    def broken() -> None:
        raise ModuleNotFoundError("No module named 'numpy'", name="numpy")

    monkeypatch.setattr(cli_app.app, "registered_commands", [])
    cli_app.app.command("broken")(broken)
    cli_app.app.command("other")(lambda: None)
    # Execute / Assert
    with pytest.raises(ModuleNotFoundError):
        cli_app.run(["broken"])


def test_cli_missing_extra_debug_shows_the_import_error(tmp_path: Path) -> None:
    proc = _hd_without("torch", "--debug", "distill", "--state-dir", str(tmp_path))
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ModuleNotFoundError" in proc.stderr


@pytest.mark.parametrize("argv", [["models", "show", "--bogus"], ["no-such-command"]])
def test_cli_usage_error_exits_2_without_traceback(argv: list[str]) -> None:
    # typer >= 0.29 raises its own copy of click's exceptions; they too end in a message and exit 2.
    proc = subprocess.run([sys.executable, "-m", "hdus_edge", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "Error:" in proc.stderr
