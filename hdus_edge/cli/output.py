"""Shared CLI output: consoles, JSON printing, and a rich progress bar for fleet phases."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def _clean(value: Any) -> Any:
    # JSON has no NaN; null is what a reader's parser expects for "not measured".
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def print_json(obj: Any) -> None:
    """Print ``obj`` as one JSON document on stdout (NaN -> null)."""
    sys.stdout.write(json.dumps(_clean(obj), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal, or '-' when missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * value:.1f}%"


@contextmanager
def status_line(enabled: bool = True, prefix: str = "") -> Iterator[Callable[[str], None]]:
    """A one-line spinner while a benchmark runs (off for ``--json``); yields its progress callback."""
    if not enabled:
        yield lambda what: None
        return
    status = console.status("starting")
    status.start()
    try:
        yield lambda what: status.update(prefix + what)
    finally:
        status.stop()


@contextmanager
def fleet_progress(enabled: bool = True) -> Iterator[Any]:
    """A rich progress bar with one task per (device, phase); yields a FleetProgress callable."""
    if not enabled:
        yield None
        return
    bars = Progress(
        TextColumn("{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )
    tasks: dict[tuple[str, str], Any] = {}

    def update(device_id: str, phase: str, done: int, total: int) -> None:
        key = (device_id, phase)
        if key not in tasks:
            tasks[key] = bars.add_task(f"{phase} {device_id}", total=total)
        bars.update(tasks[key], completed=done)

    with bars:
        yield update
