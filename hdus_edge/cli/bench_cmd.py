"""``hdus-edge bench ...``: benchmarks that print figures and ratios measured side by side."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from hdus_edge.cli.output import console, fleet_progress, pct, print_json

bench_app = typer.Typer(help="Benchmarks: figures and ratios measured side by side in one run.", no_args_is_help=True)


@bench_app.command("accuracy")
def accuracy(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    data: Annotated[str, typer.Option(help="'mnist' (the shared MNIST pool), 'digits', or a data folder.")] = "mnist",
    client_size: Annotated[int, typer.Option(help="Samples per client (train + local test).")] = 1000,
    reference_size: Annotated[int, typer.Option(help="Public reference samples.")] = 2000,
    test_size: Annotated[int, typer.Option(help="Held-out global test samples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
) -> None:
    """Main alone (ISGD) vs HDUS ensemble vs centralised, homogeneous and heterogeneous.

    Example: hdus-edge bench accuracy --json > accuracy.json
    """
    from hdus_edge.bench.accuracy import AccuracyBenchConfig, run_accuracy_bench

    cfg = AccuracyBenchConfig(data=data, client_size=client_size, reference_size=reference_size,
                              test_size=test_size, seed=seed)
    with fleet_progress(enabled=not json_out) as progress:
        result = run_accuracy_bench(cfg, progress)
    if json_out:
        print_json(result)
        return
    default_key = f"{cfg.learning.space}/lam={cfg.learning.lam}"
    table = Table(title=f"Accuracy on {data}: mean over devices (local test / global test)")
    for col in ("setting", "main alone (ISGD)", f"HDUS ensemble ({default_key})", "gain (local)", "seed agreement"):
        table.add_column(col)
    for name in ("homogeneous", "heterogeneous"):
        r = result[name]
        e = r[default_key]
        table.add_row(name, f"{pct(r['main_local'])} / {pct(r['main_global'])}",
                      f"{pct(e['ensemble_local'])} / {pct(e['ensemble_global'])}",
                      f"{100 * (e['ensemble_local'] - r['main_local']):+.1f} pt", pct(r["seed_agreement"]))
    c = result["centralised"]
    table.add_row("centralised (upper bound)", f"{pct(c['local'])} / {pct(c['global'])}", "-", "-", "-")
    console.print(table)
    sweep = Table(title="Ensemble accuracy by combine space and lam (local / global)")
    sweep.add_column("setting")
    keys = [k for k in result["homogeneous"] if "/lam=" in k]
    for k in keys:
        sweep.add_column(k)
    for name in ("homogeneous", "heterogeneous"):
        sweep.add_row(name, *[f"{pct(result[name][k]['ensemble_local'])} / {pct(result[name][k]['ensemble_global'])}" for k in keys])
    console.print(sweep)
    console.print(f"Finished in {result['seconds']:.0f} s.")
