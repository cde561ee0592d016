"""``hdus-edge demo``: the whole HDUS story on bundled data, in about a minute."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from hdus_edge.cli.output import console, fleet_progress, pct, print_json


def demo(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for every random choice (same seed, same result).")] = 0,
    forget: Annotated[int, typer.Option(help="Index (0-5) of the device to forget.")] = 5,
    lam: Annotated[float, typer.Option(help="Weight of the neighbours' seeds in each ensemble, in [0, 1].")] = 0.5,
    space: Annotated[str, typer.Option(help="Average 'probs' or 'logits'.")] = "probs",
) -> None:
    """Train 6 devices of mixed sizes on digits, share seeds, forget one, and prove it exact.

    Example: hdus-edge demo --json
    """
    from hdus_edge.errors import ConfigError
    from hdus_edge.sim.demo import DemoConfig, run_demo

    from dataclasses import replace

    from hdus_edge.ensemble.combine import COMBINE_SPACES, check_lam

    check_lam(lam)
    if space not in COMBINE_SPACES:
        raise ConfigError(f"--space must be one of {', '.join(COMBINE_SPACES)}, got {space!r}")
    base = DemoConfig()
    cfg = DemoConfig(seed=seed, forget=forget, learning=replace(base.learning, lam=lam, space=space))
    if not 0 <= forget < len(cfg.archs):
        raise ConfigError(f"--forget must be a device index in 0..{len(cfg.archs) - 1}, got {forget}")
    with fleet_progress(enabled=not json_out) as progress:
        result = run_demo(cfg, progress)
    report = result.to_json()
    if json_out:
        print_json(report)
        return
    table = Table(title=f"HDUS demo: digits, {len(cfg.archs)} devices, complete graph, one class missing each")
    table.add_column("device")
    table.add_column("main model")
    forgot = result.unlearned
    for col in ("main\nlocal", "ensemble\nlocal", "main\nglobal", "ensemble\nglobal", "after\nlocal", "after\nglobal"):
        table.add_column(col, justify="right")
    for d in report["devices"]:
        gone = d["id"] == forgot
        table.add_row(d["id"], d["arch"], pct(d["main_acc"]), pct(d["ensemble_acc"]), pct(d["main_global_acc"]),
                      pct(d["ensemble_global_acc"]), "forgotten" if gone else pct(d["after_unlearn_acc"]),
                      "" if gone else pct(d["after_unlearn_global_acc"]))
    table.caption = (f"local: the device's own test split; global: the fleet's held-out test set; "
                     f"after: ensemble after {forgot} was forgotten")
    console.print(table)
    verdict = "[bold green]EXACT[/]" if result.exactness.exact else "[bold red]NOT EXACT[/]"
    console.print(
        f"Forgot {result.unlearned}: every holder deleted its seed, no retraining. Compared with a fleet in which "
        f"{result.unlearned} never existed: max |diff| = {result.exactness.max_abs_diff:.2e}, "
        f"identical predictions = {result.exactness.argmax_identical} -> {verdict}"
    )
    console.print(f"Finished in {result.seconds:.1f} s.")
