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


@bench_app.command("inference")
def inference(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer calls and repeats (about a minute).")] = False,
) -> None:
    """torch eager vs onnxruntime; main alone vs per-member sessions vs fused (K = 1..16 seeds); fp32 vs int8.

    Example: hdus-edge bench inference --quick
    """
    from hdus_edge.bench.inference import print_report, run_inference_bench

    result = run_inference_bench(quick=quick)
    if json_out:
        print_json(result)
    else:
        print_report(result)


@bench_app.command("unlearn")
def unlearn(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    sizes: Annotated[str, typer.Option(help="Comma-separated fleet sizes.")] = "5,20,50",
    brokers: Annotated[str, typer.Option(help="Comma-separated brokers: amqtt, mosquitto.")] = "amqtt,mosquitto",
    forgets: Annotated[int, typer.Option(help="Devices forgotten one after another per fleet (latency samples).")] = 8,
) -> None:
    """Unlearn latency (order to last receipt) and seed propagation vs retraining from scratch.

    Example: hdus-edge bench unlearn --sizes 5,20 --brokers mosquitto
    """
    from hdus_edge.bench.unlearn import run_unlearn_bench
    from hdus_edge.errors import ConfigError

    try:
        size_list = tuple(int(v) for v in sizes.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--sizes must be comma-separated integers, got {sizes!r}") from None
    broker_list = tuple(b.strip() for b in brokers.split(",") if b.strip())
    if any(b not in ("amqtt", "mosquitto") for b in broker_list) or not broker_list:
        raise ConfigError(f"--brokers must name amqtt and/or mosquitto, got {brokers!r}")
    if any(n < 3 for n in size_list):
        raise ConfigError("every fleet size must be at least 3")
    status = None if json_out else console.status("starting")

    def progress(what: str) -> None:
        if status is not None:
            status.update(f"measuring {what}")

    if status is not None:
        status.start()
    try:
        result = run_unlearn_bench(size_list, broker_list, forgets, progress)
    finally:
        if status is not None:
            status.stop()
    if json_out:
        print_json(result)
        return
    table = Table(title="Forgetting one device: HDUS unlearn vs retraining the fleet")
    for col in ("broker", "devices", "neighbours", "seed propagation", "unlearn p50", "unlearn p95", "samples",
                "retrain fleet (est.)", "speed-up (p95)"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(r["broker"], str(r["devices"]), str(r["degree"]), f"{r['seed_propagation_s']:.2f} s",
                      f"{1e3 * r['unlearn_p50_s']:.0f} ms", f"{1e3 * r['unlearn_p95_s']:.0f} ms",
                      f"{r['unlearn_samples']} ({r['incomplete']} incomplete)", f"{r['retrain_fleet_s']:.0f} s",
                      f"{r['speedup_vs_retrain']:.0f}x" if r["speedup_vs_retrain"] else "-")
    console.print(table)
    console.print(f"Retraining one device (resnet-8 main + seed, digits) measured {result['retrain_one_device_s']:.1f} s; "
                  "the fleet estimate multiplies it by the remaining devices.")


@bench_app.command("reliability")
def reliability(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Every case at reduced size (under 15 minutes).")] = False,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    only: Annotated[str, typer.Option(help="Comma-separated cases to run (default: all), e.g. 'sigkill,soak'.")] = "",
) -> None:
    """Faults, hostile input and load: one table of figures; every loss, violation, crash and false
    accept is a named count that must be 0 (exit code 1 otherwise).

    Example: hdus-edge bench reliability --quick --json > reliability.json
    """
    from dataclasses import replace

    from hdus_edge.errors import ConfigError
    from hdus_edge.reliability.runner import (
        CASES,
        FULL,
        QUICK,
        run_reliability,
        table_rows,
    )

    cases = tuple(c.strip() for c in only.split(",") if c.strip())
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        raise ConfigError(f"--only names unknown cases {unknown}", hint=f"choose from {', '.join(CASES)}")
    profile = replace(QUICK if quick else FULL, seed=seed, only=cases)
    status = None if json_out else console.status("starting")
    if status is not None:
        status.start()
    try:
        result = run_reliability(profile, None if status is None else lambda what: status.update(f"running {what}"))
    finally:
        if status is not None:
            status.stop()
    if json_out:
        print_json(result)
    else:
        table = Table(title=f"Reliability ({profile.name} profile, {result['seconds'] / 60:.1f} min)")
        for col in ("case", "variant", "figures"):
            table.add_column(col)
        for case, variant, figures in table_rows(result):
            table.add_row(case, variant, figures)
        console.print(table)
        console.print("Must-be-zero totals: " + ", ".join(f"{k} {v}" for k, v in result["totals"].items()))
        for failed in result["failed_checks"]:
            console.print(f"[red]not zero:[/red] {failed}")
    if result["failed_checks"]:
        raise typer.Exit(1)


@bench_app.command("forget-samples")
def forget_samples(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Digits, 4 devices, few epochs (minutes); default: MNIST, 6 devices.")] = False,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
) -> None:
    """Forgetting 1 and 100 samples on one device (K = 1, 4, 8 shards) vs retraining the fleet (DSGD, FedUnl).

    Time runs from the request to the last neighbour's signed swap receipt; every row is checked
    bit-identical against a device trained from scratch without the samples.

    Example: hdus-edge bench forget-samples --quick --json > forget-samples.json
    """
    from hdus_edge.bench.forget_samples import (
        ForgetSamplesBenchConfig,
        run_forget_samples_bench,
    )
    from hdus_edge.sim.retrain_cost import fleet_retrain_seconds

    cfg = ForgetSamplesBenchConfig.quick(seed) if quick else ForgetSamplesBenchConfig.full(seed)
    status = None if json_out else console.status("starting")
    if status is not None:
        status.start()
    try:
        result = run_forget_samples_bench(cfg, None if status is None else lambda what: status.update(what),
                                          fleet_retrain_seconds)
    finally:
        if status is not None:
            status.stop()
    if json_out:
        print_json(result)
        return
    names = list(result["fleet_retrain_seconds"])
    table = Table(title=f"Forgetting samples on one device ({cfg.data}, {cfg.devices} devices) vs retraining the fleet")
    for col in ("samples", "shards", "exact", "to last receipt", *[f"vs {n}" for n in names], "acc before", "acc after"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        speed = [f"{r['speedup_vs_fleet_retrain'][n]:.0f}x" if r["speedup_vs_fleet_retrain"][n] else "-" for n in names]
        table.add_row(str(r["samples"]), str(r["shards"]), "yes" if r["exact"] else "NO",
                      f"{r['seconds']:.2f} s" if r["seconds"] is not None else "incomplete", *speed,
                      pct(r["acc_before"]), pct(r["acc_after"]))
    console.print(table)
    console.print("Fleet retrain: " + ", ".join(f"{n} {v:.1f} s" for n, v in result["fleet_retrain_seconds"].items())
                  + f"; finished in {result['seconds']:.0f} s.")
