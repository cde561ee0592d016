"""``hdus-edge sim run``: the fleet simulator and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hdus_edge.cli.output import console, err_console, fleet_progress, print_json

sim_app = typer.Typer(help="Fleet simulator: HDUS on real agents vs the paper's baselines.", no_args_is_help=True)


def _split(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


@sim_app.command("run")
def run(
    config: Annotated[Path | None, typer.Option(help="TOML file with a [sim] table (options below override it).")] = None,
    out: Annotated[Path, typer.Option(help="Report folder (report.md, report.json, plots).")] = Path("hdus-report"),
    archs: Annotated[str, typer.Option(help="Main architecture per device, comma-separated (S/M/L or names).")] = "",
    dataset: Annotated[str, typer.Option(help="'digits', 'mnist' or a data folder.")] = "",
    partition: Annotated[str, typer.Option(help="missing-class, dirichlet, shards or iid.")] = "",
    reference: Annotated[str, typer.Option(help="'public' or 'noise'.")] = "",
    reference_size: Annotated[int, typer.Option(help="Reference samples (0: keep).")] = 0,
    client_size: Annotated[int, typer.Option(help="Samples per device, train + local test (0: keep).")] = 0,
    test_size: Annotated[int, typer.Option(help="Held-out test samples (0: keep).")] = 0,
    topology: Annotated[str, typer.Option(help="complete, ring, random-regular or small-world.")] = "",
    degree: Annotated[int, typer.Option(help="Neighbours per device for random-regular and small-world (0: keep).")] = 0,
    train_epochs: Annotated[int, typer.Option(help="Epochs to train each main model (0: keep).")] = 0,
    distill_epochs: Annotated[int, typer.Option(help="Epochs to distill each seed (0: keep).")] = 0,
    lam: Annotated[float | None, typer.Option(help="Weight of the device's own main model in [0, 1].")] = None,
    forget: Annotated[str, typer.Option(help="Devices to forget, comma-separated (e.g. dev-5).")] = "",
    forget_at_once: Annotated[bool, typer.Option(help="Send every unlearn order at the same moment.")] = False,
    processes: Annotated[bool, typer.Option("--processes", help=(
        "Run each agent as its own OS process (as on a device); outputs come from each agent's inference API."))] = False,
    methods: Annotated[str, typer.Option(help="Baselines, comma-separated; 'none' for HDUS only.")] = "",
    budget: Annotated[str, typer.Option(help="Baselines' budget: reduced or full.")] = "",
    broker: Annotated[str, typer.Option(help="Broker URL; default: an embedded broker.")] = "",
    seed: Annotated[int | None, typer.Option(help="Seed for every random choice.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print report.json's content.")] = False,
) -> None:
    """Run HDUS and the baselines on one fleet; write a report with tables and plots.

    Example: hdus-edge sim run --dataset mnist --archs S,M,L,L,L,L --budget full --out mnist-report
    """
    from hdus_edge.sim.config import SimConfig, load_sim_config
    from hdus_edge.sim.runner import with_overrides

    cfg = load_sim_config(config) if config else SimConfig()
    changes: dict[str, Any] = {}
    if archs:
        changes["archs"] = _split(archs)
    for key, value in (("dataset", dataset), ("partition", partition), ("reference", reference),
                       ("topology", topology), ("budget", budget), ("broker", broker)):
        if value:
            changes[key] = value
    for key, number in (("reference_size", reference_size), ("client_size", client_size), ("test_size", test_size),
                        ("degree", degree), ("train_epochs", train_epochs), ("distill_epochs", distill_epochs)):
        if number:
            changes[key] = number
    if forget:
        changes["forget"] = _split(forget)
    if forget_at_once:
        changes["forget_at_once"] = True
    if processes:
        changes["processes"] = True
    if methods:
        changes["methods"] = () if methods == "none" else _split(methods)
    if seed is not None:
        changes["seed"] = seed
    if lam is not None:
        changes["lam"] = lam
    cfg = with_overrides(cfg, **changes)
    report = run_report(cfg, out, quiet=json_out)
    if json_out:
        print_json(report)
    else:
        print_comparison(report)
        console.print(f"Report: {out / 'report.md'} (plots and report.json beside it)")


def run_report(cfg: Any, out: Path, quiet: bool) -> dict[str, Any]:
    """Run the simulation with progress output on stderr (none when ``quiet``)."""
    from hdus_edge.sim.runner import run_sim

    with fleet_progress(enabled=not quiet) as progress:
        def phase(name: str) -> None:
            if not quiet:
                err_console.print(f"[dim]- {name}[/]")

        return run_sim(cfg, out, phase=phase, progress=progress)


def print_comparison(report: dict[str, Any]) -> None:
    """The comparison table and the exactness lines."""
    from hdus_edge.sim.report import COLUMNS, comparison_rows

    table = Table(title="HDUS vs baselines (mean over remaining devices)")
    for col in COLUMNS:
        # Two-line headers keep the table inside 80 columns.
        table.add_column(col.replace(" ", "\n", 1), justify="left" if col == "method" else "right",
                         no_wrap=col == "method")
    for row in comparison_rows(report):
        table.add_row(*row)
    console.print(table)
    h = report["hdus"]
    verdict = "[bold green]EXACT[/]" if h["exact"] else "[bold red]NOT EXACT[/]"
    console.print(f"HDUS after forgetting vs a never-joined fleet retrained from scratch: models bit-identical: "
                  f"{h['exact_models']}; agents' outputs max |diff| = {h['max_abs_diff']:.2e} -> {verdict}; "
                  f"signed receipts complete: {h['receipts_complete']}; membership-inference AUC before / after / "
                  f"never-joined: {_f(h['mia_auc_before'])} / {_f(h['mia_auc_after'])} / {_f(h['mia_auc_never_joined'])}")
    versus = report.get("comparison") or {}
    if "sisa-a" in versus:
        s = versus["sisa-a"]
        ratio = "-" if not s["bytes_ratio"] else f"{s['bytes_ratio']:.0f}x"
        console.print(f"HDUS vs SISA-A: {s['points_local_after']:+.1f} pts local, {s['points_global_after']:+.1f} pts "
                      f"global, with {ratio} fewer bytes sent to train.")
    slower = {n: c["forget_speedup"] for n, c in versus.items() if (c["forget_speedup"] or 0) > 1}
    if slower:
        console.print("Forgetting one device, HDUS is faster than: "
                      + ", ".join(f"{n} {v:.0f}x" for n, v in sorted(slower.items())) + ".")


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


@sim_app.command("study")
def study(
    name: Annotated[str, typer.Argument(help="scale, reference, poisoning, or all.")],
    out: Annotated[Path, typer.Option(help="Report folder; the study becomes a section of report.md there.")] = Path("hdus-report"),
    quick: Annotated[bool, typer.Option(help="Small settings (seconds to a minute): a smoke run, not figures.")] = False,
    dataset: Annotated[str, typer.Option(help="'digits', 'mnist' or a data folder (default: the study's).")] = "",
    broker: Annotated[str, typer.Option(help="Scale/poisoning: 'mosquitto', 'amqtt' or a URL (scale); a URL (poisoning).")] = "",
    seed: Annotated[int | None, typer.Option(help="Seed for every random choice.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the study's figures as JSON.")] = False,
    in_process: Annotated[bool, typer.Option("--in-process", help=(
        "Scale: run every fleet's agents in this one process instead of one process per agent."))] = False,
) -> None:
    """Studies beyond the paper: scale (10/30/100 devices), reference set (public sizes vs noise),
    poisoning (a label-flipped device, then forgetting it).

    Example: hdus-edge sim study reference --out mnist-report
    """
    from hdus_edge.sim.report import add_study
    from hdus_edge.sim.studies import STUDIES, run_study, study_config

    names = list(STUDIES) if name == "all" else [name]
    results = {}
    for n in names:
        overrides: dict[str, Any] = {}
        if dataset:
            overrides["dataset"] = dataset
        if broker:
            overrides["broker"] = broker
        if seed is not None:
            overrides["seed"] = seed
        if in_process and n == "scale":
            overrides["processes"] = False
        cfg = study_config(n, quick=quick, **overrides)
        results[n] = run_study(n, cfg, announce=(lambda m: None) if json_out else (lambda m: err_console.print(f"[dim]- {m}[/]")))
        add_study(out, n, results[n])
    if json_out:
        print_json(results if name == "all" else results[name])
    else:
        console.print(f"Report: {out / 'report.md'} (sections: {', '.join(names)})")
