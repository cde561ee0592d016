"""The agent runs on devices without torch: building and starting one never imports it."""

import subprocess
import sys
import textwrap

import fleet_kit as fk


def test_agent_from_state_dir_never_imports_torch(tmp_path, embedded_broker):
    _, states = fk.provision(tmp_path, embedded_broker, ids=("d0", "d1"))
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from hdus_edge.cli import app  # the CLI wiring too
        from hdus_edge.device.agent import DeviceAgent
        from hdus_edge.state import StateDir
        agent = DeviceAgent.from_state_dir(StateDir(Path({str(states['d0'].root)!r})), broker_url={embedded_broker!r})
        agent.start()
        agent.stop()
        bad = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
        assert not bad, bad[:5]
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
