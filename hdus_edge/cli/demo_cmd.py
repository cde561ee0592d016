"""``hdus-edge demo``: the fleet simulator on defaults, on the embedded broker and bundled digits."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hdus_edge.cli.output import console, pct, print_json
from hdus_edge.ensemble.combine import DEFAULT_LAM


def demo(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    out: Annotated[Path, typer.Option(help="Where the report (markdown, JSON, plots) goes.")] = Path("hdus-report"),
    seed: Annotated[int, typer.Option(help="Seed for every random choice (same seed, same result).")] = 0,
    forget: Annotated[int, typer.Option(help="Index (0-5) of the device to forget.")] = 5,
    lam: Annotated[float, typer.Option(help="Weight of the neighbours' seeds in each ensemble, in [0, 1].")] = DEFAULT_LAM,
    space: Annotated[str, typer.Option(help="Average 'probs' or 'logits'.")] = "probs",
) -> None:
    """Six devices of mixed sizes learn on digits over an embedded MQTT broker; one is forgotten.

    Every device is a real agent (own keys, store and MQTT connection). The run proves forgetting
    exact against a fleet that never had the device, collects signed receipts, and compares HDUS
    with ISGD, DSGD, FedUnl and SISA-A at a reduced budget.

    Example: hdus-edge demo --json
    """
    from hdus_edge.cli.sim_cmd import print_comparison, run_report
    from hdus_edge.ensemble.combine import COMBINE_SPACES, check_lam
    from hdus_edge.errors import ConfigError
    from hdus_edge.sim.config import SimConfig

    base = SimConfig()
    check_lam(lam)
    if space not in COMBINE_SPACES:
        raise ConfigError(f"--space must be one of {', '.join(COMBINE_SPACES)}, got {space!r}")
    if not 0 <= forget < len(base.archs):
        raise ConfigError(f"--forget must be a device index in 0..{len(base.archs) - 1}, got {forget}")
    cfg = SimConfig(seed=seed, lam=lam, space=space, forget=(base.device_ids[forget],)).validate()
    report = run_report(cfg, out, quiet=json_out)
    summary = demo_summary(report)
    if json_out:
        print_json(summary)
        return
    table = Table(title="HDUS demo: digits, 6 devices, complete graph, one class missing each, embedded broker")
    table.add_column("device")
    table.add_column("main model")
    for col in ("main\nlocal", "ensemble\nlocal", "ensemble\nglobal", "after\nlocal", "after\nglobal"):
        table.add_column(col, justify="right")
    for d in summary["devices"]:
        gone = d["id"] in summary["unlearned"]
        table.add_row(d["id"], d["arch"], pct(d["main_acc"]), pct(d["ensemble_acc"]), pct(d["ensemble_global_acc"]),
                      "forgotten" if gone else pct(d["after_unlearn_acc"]),
                      "" if gone else pct(d["after_unlearn_global_acc"]))
    table.caption = "local: the device's own test split; global: the fleet's held-out test set"
    console.print(table)
    print_comparison(report)
    console.print(f"Finished in {summary['seconds']:.0f} s. Report: {out / 'report.md'}")


def demo_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The demo's JSON: per-device accuracies, what was forgotten, exactness, and the comparison."""
    per = report["methods"]["hdus"]["per_device"]
    devices = [
        {
            "id": i, "arch": d["arch"], "main_acc": d["main"]["local"], "main_global_acc": d["main"]["global"],
            "ensemble_acc": d["before"]["local"], "ensemble_global_acc": d["before"]["global"],
            "after_unlearn_acc": None if d["after"] is None else d["after"]["local"],
            "after_unlearn_global_acc": None if d["after"] is None else d["after"]["global"],
        }
        for i, d in sorted(per.items())
    ]
    h = report["hdus"]
    return {
        "devices": devices,
        "unlearned": list(report["settings"]["forget"]),
        # Both checks against a never-joined fleet retrained from scratch: bit-identical models and
        # equal ensemble outputs of running agents.
        "exact": bool(h["exact_models"] and h["argmax_identical"] and h["max_abs_diff"] <= 1e-6),
        "exact_models": h["exact_models"],
        "max_abs_diff": h["max_abs_diff"],
        "receipts_complete": h["receipts_complete"],
        "mia": h["mia"],
        "methods": {n: {k: m.get(k) for k in ("acc_before", "acc_after", "forget_seconds", "exact", "exact_basis")}
                    for n, m in report["methods"].items()},
        "seconds": report["seconds"],
    }
