"""Wires every command group into one Typer app and turns ``HdusError`` into one red line.

This is the only place that catches ``HdusError``: commands raise, ``run`` prints
``error: WHAT (hint: ...)`` to stderr and returns the error's exit code; ``--debug`` re-raises so a
developer sees the traceback. Command modules import heavy libraries (torch) inside the command
body, so ``predict`` and ``agent`` stay torch-free; on a base install (no extras) such an import
fails, and ``run`` turns it into a ``MissingExtraError`` naming the extra to install (exit 2).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Annotated

import click
import typer

from hdus_edge.errors import HdusError, MissingExtraError

app = typer.Typer(
    name="hdus-edge",
    help="Decentralized learning with exact, instant unlearning for edge fleets (HDUS).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_debug = {"on": False}

# typer >= 0.29 raises its own copy of click's exceptions (typer.TyperException and below); older
# typer raises click's. Both families are caught, so a usage error is one message and exit 2.
_USAGE_ERRORS: tuple[type[Exception], ...] = (click.ClickException, getattr(typer, "TyperException", click.ClickException))
_ABORTS: tuple[type[BaseException], ...] = (click.exceptions.Abort, typer.Abort)
_EXITS: tuple[type[BaseException], ...] = (click.exceptions.Exit, typer.Exit)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks instead of one-line errors.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-v info, -vv debug).")] = 0,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow plain-text mqtt:// to a host that is not loopback (a lab).")] = False,
) -> None:
    """hdus-edge: train, distill, share seeds over MQTT, and forget any device exactly."""
    _debug["on"] = debug
    if insecure:
        import os

        from hdus_edge.transport.url import INSECURE_ENV

        os.environ[INSECURE_ENV] = "1"  # read by every MQTT connection, also in child processes
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register() -> None:
    # Imported here so a command module's import error names that module, and to keep the
    # wiring in one readable list.
    from hdus_edge.cli import (
        agent_cmd,
        bench_cmd,
        broker_cmd,
        data_cmd,
        demo_cmd,
        inspect_cmd,
        models_cmd,
        sim_cmd,
    )

    app.command("demo")(demo_cmd.demo)
    app.command("agent")(agent_cmd.agent)
    app.command("inspect")(inspect_cmd.inspect)
    app.command("broker")(broker_cmd.broker)
    app.add_typer(bench_cmd.bench_app, name="bench")
    app.add_typer(models_cmd.models_app, name="models")
    app.add_typer(sim_cmd.sim_app, name="sim")
    app.add_typer(data_cmd.data_app, name="data")
    _register_lifecycle()


def _register_lifecycle() -> None:
    # The device lifecycle, in the order a user meets it: set up, train, share, forget.
    from hdus_edge.cli import (
        broker_config_cmd,
        dashboard_cmd,
        device_cmd,
        fleet_cmd,
        lifecycle_cmd,
        predict_cmd,
        profiles_cmd,
        provision_cmd,
        readmit_cmd,
        samples_cmd,
        service_cmd,
        unlearn_cmd,
        verify_cmd,
    )

    app.add_typer(profiles_cmd.profiles_app, name="profiles")
    app.add_typer(fleet_cmd.fleet_app, name="fleet")
    app.command("provision")(provision_cmd.provision)
    app.command("broker-config")(broker_config_cmd.broker_config)
    app.command("train")(lifecycle_cmd.train)
    app.command("forget-samples")(samples_cmd.forget_samples)
    app.command("distill")(lifecycle_cmd.distill)
    app.command("export")(lifecycle_cmd.export)
    app.command("publish")(lifecycle_cmd.publish)
    app.command("predict")(predict_cmd.predict)
    app.command("status")(device_cmd.status)
    app.command("members")(device_cmd.members)
    app.add_typer(device_cmd.neighbors_app, name="neighbors")
    app.command("leave")(unlearn_cmd.leave)
    app.command("unlearn")(unlearn_cmd.unlearn)
    app.command("receipts")(unlearn_cmd.receipts)
    app.command("revoke")(unlearn_cmd.revoke)
    app.command("readmit")(readmit_cmd.readmit)
    app.command("dashboard")(dashboard_cmd.dashboard)
    app.command("verify")(verify_cmd.verify)
    app.add_typer(service_cmd.service_app, name="service")


_register()


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` and return the exit code (never raises ``HdusError``)."""
    try:
        result = app(args=list(argv) if argv is not None else None, standalone_mode=False)
    except HdusError as exc:
        return _fail(exc)
    except ImportError as exc:  # ModuleNotFoundError, or a module's own words around one
        missing = MissingExtraError.from_import(exc)
        if missing is None or _debug["on"]:
            raise
        return _fail(missing)
    except _ABORTS:
        _print_error("aborted")
        return 130
    except _USAGE_ERRORS as exc:
        show = getattr(exc, "show", None)
        if show is not None:
            show()
        else:
            _print_error(str(exc))
        return int(getattr(exc, "exit_code", 2))
    except _EXITS as exc:
        return int(exc.exit_code)
    return result if isinstance(result, int) else 0


def _fail(exc: HdusError) -> int:
    if _debug["on"]:
        raise exc
    _print_error(str(exc))
    return exc.exit_code


def _print_error(text: str) -> None:
    from rich.console import Console
    from rich.text import Text

    # Text, not markup: messages carry shapes like [1, 1, 8, 8] that markup would eat.
    Console(stderr=True, highlight=False, soft_wrap=True).print(Text.assemble(("error:", "bold red"), " ", text))


def main() -> None:
    """Console-script entry point."""
    sys.exit(run())
