"""The process entry point (``hdus-edge``, ``python -m hdus_edge``): the agent starts without the CLI framework.

The agent is the one long-lived process on a device (a Pi Zero 2 W has 512 MB); typer, click, rich
and pydantic cost it ~5.5 MiB resident and a tenth of a second of start-up (measured), for options it
parses once. So a plain ``agent`` command line (``agent`` first, every option known and well formed)
is parsed here with argparse and handed to ``hdus_edge.device.daemon.run_agent``; anything else
(``--help``, a typo, global options, every other command) goes to the full CLI in ``app``, which stays
the one definition of every option, help text and error message (a test checks that the options
parsed here are exactly the ``agent`` command's).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path


class _NotPlain(Exception):
    """The command line is not a plain ``agent`` invocation: the full CLI handles it."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # never exit from here
        raise _NotPlain(message)


def agent_parser() -> argparse.ArgumentParser:
    """The ``agent`` command's options, as ``hdus_edge.cli.agent_cmd.agent`` declares them."""
    parser = _Parser(prog="hdus-edge agent", add_help=False, allow_abbrev=False)
    parser.add_argument("--state-dir", type=Path, default=os.environ.get("HDUS_STATE_DIR"))
    parser.add_argument("--broker", default="")
    parser.add_argument("--no-probe-subprocess", action="store_true")
    parser.add_argument("--digest-interval", type=float, default=30.0)
    parser.add_argument("--ready-file", type=Path, default=None)
    parser.add_argument("--http", default="")
    return parser


def run_plain_agent(argv: Sequence[str]) -> int | None:
    """Run ``agent ARGS`` directly and return its exit code; ``None`` when the full CLI must handle it."""
    if not argv or argv[0] != "agent":
        return None
    try:
        args = agent_parser().parse_args(list(argv[1:]))
    except _NotPlain:
        return None
    if args.state_dir is None:
        return None  # the full CLI says what is missing
    from hdus_edge.device.daemon import run_agent
    from hdus_edge.errors import HdusError

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def ready(agent: object, server: object) -> None:
        url = getattr(server, "url", None)
        print(f"agent {getattr(agent, 'device_id', '?')} running"
              + (f"; inference API at {url}/v2/models/ensemble, metrics at {url}/metrics" if url else "")
              + "; Ctrl-C stops it", file=sys.stderr, flush=True)

    try:
        run_agent(args.state_dir, broker=args.broker, probe_in_subprocess=not args.no_probe_subprocess,
                  digest_interval_s=args.digest_interval, ready_file=args.ready_file, http=args.http,
                  on_ready=ready)
    except HdusError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


def main() -> None:
    """Console-script entry point."""
    code = run_plain_agent(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    from hdus_edge.cli.app import main as full_cli

    full_cli()
