"""The README's two commands are the project's entry: CI runs exactly the second one."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)  # the first fenced bash block
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_readme_first_block_is_two_commands() -> None:
    assert _readme_commands() == ["./run demo", "./run test"]
    text = (REPO / "README.md").read_text()
    assert "## Two commands on a fresh machine" in text
    assert "setup.sh" not in text and "python3 -m pytest" not in text
    assert not (REPO / "tools" / "setup.sh").exists()


def test_ci_runs_exactly_the_readme_test_command() -> None:
    lines = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    assert commands == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', _readme_commands()[1]]


def test_run_script_usage() -> None:
    # Prepare / Execute: no set-up happens for a wrong or missing command
    assert subprocess.run(["bash", "-n", str(REPO / "run")], timeout=30).returncode == 0
    assert (REPO / "run").stat().st_mode & 0o111  # ./run works after a plain git clone
    for argv in ([], ["bogus"]):
        done = subprocess.run([str(REPO / "run"), *argv], capture_output=True, text=True, timeout=30)
        # Assert
        assert done.returncode == 2 and "usage: ./run demo" in done.stderr and "./run test" in done.stderr
