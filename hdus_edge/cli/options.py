"""Options every lifecycle command shares: where the state or admin dir is, JSON output, the broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from hdus_edge.state import AdminDir, StateDir

StateDirOpt = Annotated[
    Path,
    typer.Option("--state-dir", envvar="HDUS_STATE_DIR", show_envvar=False,
                 help="The device's state directory (or $HDUS_STATE_DIR)."),
]
OptionalStateDirOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", envvar="HDUS_STATE_DIR", show_envvar=False,
                 help="A device's state directory (or $HDUS_STATE_DIR)."),
]
AdminDirOpt = Annotated[
    Path,
    typer.Option("--admin-dir", envvar="HDUS_ADMIN_DIR", show_envvar=False,
                 help="The fleet admin directory (or $HDUS_ADMIN_DIR)."),
]
OptionalAdminDirOpt = Annotated[
    Path | None,
    typer.Option("--admin-dir", envvar="HDUS_ADMIN_DIR", show_envvar=False,
                 help="The fleet admin directory (or $HDUS_ADMIN_DIR)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]
BrokerOpt = Annotated[str, typer.Option("--broker", help="Broker URL; default: the device's, else the fleet's.")]


def open_state(path: Path) -> StateDir:
    """The provisioned device at ``path`` (``StateDirError`` naming what is missing)."""
    from hdus_edge.state import StateDir

    state = StateDir(path)
    state.check()
    return state


def open_admin(path: Path) -> AdminDir:
    """The fleet admin dir at ``path`` (``StateDirError`` when it holds no fleet)."""
    from hdus_edge.state import AdminDir

    admin = AdminDir(path)
    admin.fleet()
    return admin


def check_broker(url: str) -> str:
    """``url`` when it parses as a broker URL ('' passes: use the configured one)."""
    if url:
        from hdus_edge.transport.url import parse_broker_url

        parse_broker_url(url)
    return url


def split_ids(values: list[str] | None) -> tuple[str, ...]:
    """Ids given as repeated options and/or comma-separated lists, in order, without duplicates."""
    out: list[str] = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return tuple(dict.fromkeys(out))


def progress_callback(
    update: Callable[[str, str, int, int], None] | None, device_id: str, phase: str
) -> Callable[[int, int], None] | None:
    """Bind a ``fleet_progress`` updater to one (device, phase); None when there is no bar."""
    if update is None:
        return None
    return lambda done, total: update(device_id, phase, done, total)


@contextmanager
def waiting(message: str, enabled: bool = True) -> Iterator[None]:
    """A spinner on stderr while the command waits on the network (none with --json)."""
    if not enabled:
        yield
        return
    from hdus_edge.cli.output import err_console

    with err_console.status(message):
        yield
