"""The production agent stays lean: no onnx (seed checks and graph fusion run in child processes) and no
CLI framework in the agent process, even after it installed a neighbour's seed and fused its graph."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import fleet_kit as fk
import pytest
import typer
import typer.main

from hdus_edge.bench.serve import scrape_metric
from hdus_edge.cli.agent_cmd import agent as agent_command
from hdus_edge.cli.entry import agent_parser, run_plain_agent
from hdus_edge.transport.ports import free_port

HEAVY = ("onnx", "google.protobuf", "typer", "click", "rich", "pydantic", "torch")

# Runs the agent as `python -m hdus_edge agent ...` does; on SIGUSR1 it writes the heavy modules loaded.
_AGENT = textwrap.dedent("""
    import json, signal, sys
    from hdus_edge.cli.entry import run_plain_agent

    def dump(*_):
        heavy = sorted({m.split('.')[0] if m.split('.')[0] != 'google' else 'google.protobuf'
                        for m in sys.modules if m.split('.')[0] in {HEAVY} or m.startswith('google.protobuf')})
        with open(sys.argv[1], 'w') as fh:
            json.dump(heavy, fh)

    signal.signal(signal.SIGUSR1, dump)
    sys.exit(run_plain_agent(sys.argv[2:]))
""").replace("{HEAVY}", repr(set(HEAVY)))


def _stderr_of(proc: subprocess.Popen) -> str:
    """The agent's stderr, for a failure message: stop it first (reading a live pipe would block)."""
    proc.kill()
    return proc.communicate(timeout=30)[1].decode(errors="replace")[-2000:]


def _loaded_after_a_seed(tmp_path, broker: str, *extra: str) -> list[str]:
    """Start d0 as a process, let d1 (in this process) send its seed, wait for the fused graph, dump."""
    _, states = fk.provision(tmp_path, broker, ids=("d0", "d1"))
    port = free_port()
    dump = tmp_path / "modules.json"
    proc = subprocess.Popen([sys.executable, "-c", _AGENT, str(dump), "agent", "--state-dir", str(states["d0"].root),
                             "--http", str(port), *extra], stderr=subprocess.PIPE)
    peer = None
    try:
        deadline = time.monotonic() + 90
        while scrape_metric(port, "hdus_agent_ready") != 1.0:
            assert proc.poll() is None and time.monotonic() < deadline, _stderr_of(proc)
            time.sleep(0.1)
        peer = fk.start_agent(states["d1"], broker)
        while not (scrape_metric(port, "hdus_ensemble_members") == 1.0 and scrape_metric(port, "hdus_ensemble_fused") == 1.0):
            assert proc.poll() is None and time.monotonic() < deadline, "d0 did not install and fuse d1's seed"
            time.sleep(0.1)
        proc.send_signal(signal.SIGUSR1)
        while not dump.exists() or not dump.read_text():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.1)
        return json.loads(dump.read_text())
    finally:
        if peer is not None:
            peer.stop()
        if proc.poll() is None:  # (a failure above has already stopped it)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0


def test_the_agent_process_loads_neither_onnx_nor_the_cli_framework(tmp_path, mosquitto_broker):
    assert _loaded_after_a_seed(tmp_path, mosquitto_broker.url) == []


def test_the_check_sees_onnx_when_seeds_are_checked_in_process(tmp_path, mosquitto_broker):
    # The same probe on an agent that checks seeds in-process: onnx shows up (the check can fail).
    assert "onnx" in _loaded_after_a_seed(tmp_path, mosquitto_broker.url, "--no-probe-subprocess")


def test_plain_agent_options_are_exactly_the_agent_commands():
    # The fast path parses what the full CLI declares, no more, no less.
    app = typer.Typer(add_completion=False)
    app.command()(agent_command)
    params = typer.main.get_command(app).params
    cli_options = {opt for p in params for opt in p.opts if opt.startswith("--")} - {"--help"}
    fast_options = {opt for action in agent_parser()._actions for opt in action.option_strings}
    assert fast_options == cli_options


@pytest.mark.parametrize("argv", [["agent", "--help"], ["agent", "--bogus"], ["-v", "agent", "--state-dir", "x"],
                                  ["status"], ["agent", "--digest-interval", "soon", "--state-dir", "x"]])
def test_anything_but_a_plain_agent_line_goes_to_the_full_cli(argv):
    assert run_plain_agent(argv) is None


def test_the_fast_path_reports_errors_without_loading_the_cli(tmp_path):
    code = ("import sys; from hdus_edge.cli.entry import run_plain_agent; "
            f"rc = run_plain_agent(['agent', '--state-dir', {str(tmp_path / 'missing')!r}]); "
            "print(rc, sorted(m for m in ('typer', 'rich', 'click') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HDUS_STATE_DIR": ""})
    assert done.stdout.strip() == "2 []", done.stderr
    assert done.stderr.startswith("error: ") and "Traceback" not in done.stderr


def test_a_main_model_for_another_contract_is_refused_at_start(tmp_path, capsys):
    # The agent no longer runs check_onnx on its own models; the runtime's contract check stands in.
    import cli_lifecycle_kit as kit
    from onnx_testkit import export_zoo

    _, states, _ = kit.installed_fleet(tmp_path)
    (states["d1"].models / "main.onnx").write_bytes(export_zoo("mobilenet-s", shape=(1, 12, 12)))
    code, _, err = kit.cli(capsys, "agent", "--state-dir", states["d1"].root)
    assert code == 2
    kit.assert_one_error(err, "main model takes [1, 12, 12]", "fleet's contract is [1, 8, 8]")
