"""``hdus-edge bench ...``: benchmarks that print figures and ratios measured side by side."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from hdus_edge.cli.output import console, fleet_progress, pct, print_json, status_line

bench_app = typer.Typer(help="Benchmarks: figures and ratios measured side by side in one run.", no_args_is_help=True)


@bench_app.command("accuracy")
def accuracy(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    data: Annotated[str, typer.Option(help="'mnist' (MNIST's test split, inside the package), 'digits', or a data folder.")] = "mnist",
    client_size: Annotated[int, typer.Option(help="Samples per client (train + local test).")] = 1000,
    reference: Annotated[str, typer.Option(
        help="Public reference set: 'pool' (carved from the pool) or a data folder / .npz of public images "
             "disjoint from the pool, e.g. mnist-train5k (the bundled 5,000 MNIST training images).")] = "pool",
    reference_size: Annotated[int, typer.Option(help="Public reference samples (0: all of a separate set).")] = 2000,
    test_size: Annotated[int, typer.Option(help="Held-out global test samples.")] = 2000,
    setting: Annotated[list[str] | None, typer.Option(help="'homogeneous' and/or 'heterogeneous' (default: both).")] = None,
    train_epochs: Annotated[int, typer.Option(help="Epochs of local training (0: the default).")] = 0,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
) -> None:
    """Main alone (ISGD) vs HDUS with the original and the current seeds vs SISA-A vs centralised.

    The main models are trained once per setting; seeds are distilled from them twice (the
    original distillation and the current default), so the columns differ in the seeds only.

    Example: hdus-edge bench accuracy --setting heterogeneous --reference mnist-train5k --json
    """
    from dataclasses import replace

    from hdus_edge.bench.accuracy import (
        SETTINGS,
        AccuracyBenchConfig,
        run_accuracy_bench,
    )
    from hdus_edge.errors import ConfigError

    unknown = [s for s in setting or () if s not in SETTINGS]
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}", hint=f"use {' or '.join(SETTINGS)}")
    cfg = AccuracyBenchConfig(data=data, client_size=client_size, reference=reference, reference_size=reference_size,
                              test_size=test_size, seed=seed, settings=tuple(setting or SETTINGS))
    if train_epochs:
        cfg = replace(cfg, learning=replace(cfg.learning, train=replace(cfg.learning.train, epochs=train_epochs)))
    with fleet_progress(enabled=not json_out) as progress:
        result = run_accuracy_bench(cfg, progress)
    if json_out:
        print_json(result)
        return
    d = result["settings"]["distill"]
    table = Table(title=f"Accuracy on {data} (reference: {reference}, {result['settings']['reference_samples']} images): "
                        f"mean over devices, local / global test; lam {cfg.learning.lam} over {cfg.learning.space}")
    for col in ("setting", "seeds", "seed/main agreement", "seed alone", "HDUS ensemble", "distill s/device"):
        table.add_column(col)
    for name in cfg.settings:
        r = result[name]
        for column in ("original", "new"):
            f = r[column]
            s = d[column]
            label = f"{s['seed']}, {s['method']} {s['loss']} T={s['temperature']:g}, {s['epochs']} ep"
            table.add_row(name, f"{column}: {label}", pct(f["seed_agreement"]), pct(f["seed_alone"]),
                          f"{pct(f['ensemble_local'])} / {pct(f['ensemble_global'])}",
                          f"{f['distill_seconds_per_device']:.1f}")
        table.add_row(name, "SISA-A (full main models)", "-", "-",
                      f"{pct(r['sisa_a']['local'])} / {pct(r['sisa_a']['global'])}", "-")
        table.add_row(name, "main alone (ISGD)", "-", "-", f"{pct(r['main_local'])} / {pct(r['main_global'])}", "-")
        table.add_row(name, "distillation time, new / original (wall; CPU)", "-", "-", "-",
                      f"{r['distill_time_ratio']:.2f}x; {r['distill_cpu_time_ratio']:.2f}x")
    c = result["centralised"]
    table.add_row("centralised (upper bound)", "-", "-", "-", f"{pct(c['local'])} / {pct(c['global'])}", "-")
    console.print(table)
    sweep = Table(title="HDUS ensemble by seeds, combine space and lam (local / global)")
    sweep.add_column("setting, seeds")
    keys = [k for k in result[cfg.settings[0]]["new"] if "/lam=" in k]
    for k in keys:
        sweep.add_column(k)
    for name in cfg.settings:
        for column in ("original", "new"):
            f = result[name][column]
            sweep.add_row(f"{name}, {column}", *[f"{pct(f[k]['ensemble_local'])} / {pct(f[k]['ensemble_global'])}" for k in keys])
    console.print(sweep)
    rules = Table(title=f"Combination rules at lam {cfg.learning.lam} over probabilities (local / global)")
    for col in ("setting, seeds", "mean of seeds (shipped)", "per class, by trained classes", "by confidence"):
        rules.add_column(col)
    for name in cfg.settings:
        for column in ("original", "new"):
            f = result[name][column]
            rules.add_row(f"{name}, {column}", f"{pct(f['ensemble_local'])} / {pct(f['ensemble_global'])}",
                          *[f"{pct(f['rules'][k]['local'])} / {pct(f['rules'][k]['global'])}"
                            for k in ("trained_classes", "confidence")])
    console.print(rules)
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
    in_process: Annotated[bool, typer.Option("--in-process", help=(
        "Run every fleet's agents in this one process (the old fleet) instead of one process per agent."))] = False,
    side_by_side: Annotated[bool, typer.Option("--side-by-side", help=(
        "Run every case both ways (a process per agent, then all agents in one), to show the interpreter lock's share."))] = False,
) -> None:
    """Unlearn latency (order to last receipt) and seed propagation vs retraining from scratch.

    Each agent runs as its own process ('hdus-edge agent', as on a device) unless --in-process.
    Example: hdus-edge bench unlearn --sizes 5,20 --brokers mosquitto --side-by-side
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
    if in_process and side_by_side:
        raise ConfigError("--in-process and --side-by-side exclude each other")
    modes = ("one per device", "one") if side_by_side else ("one",) if in_process else ("one per device",)
    with status_line(not json_out, "measuring ") as progress:
        result = run_unlearn_bench(size_list, broker_list, forgets, progress, modes=modes)
    if json_out:
        print_json(result)
        return
    table = Table(title="Forgetting one device: HDUS unlearn vs retraining the fleet")
    for col in ("broker", "devices", "processes", "neighbours", "seed propagation", "unlearn p50", "unlearn p95",
                "samples", "retrain fleet (est.)", "speed-up (p95)"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(r["broker"], str(r["devices"]), r["processes"], str(r["degree"]), f"{r['seed_propagation_s']:.2f} s",
                      f"{1e3 * r['unlearn_p50_s']:.0f} ms", f"{1e3 * r['unlearn_p95_s']:.0f} ms",
                      f"{r['unlearn_samples']} ({r['incomplete']} incomplete)", f"{r['retrain_fleet_s']:.0f} s",
                      f"{r['speedup_vs_retrain']:.0f}x" if r["speedup_vs_retrain"] else "-")
    console.print(table)
    console.print(f"Retraining one device (resnet-8 main + seed, digits) measured {result['retrain_one_device_s']:.1f} s; "
                  "the fleet estimate multiplies it by the remaining devices.")


@bench_app.command("dashboard")
def dashboard(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Smaller fleets (under a minute).")] = False,
) -> None:
    """Fleet dashboard: render time by fleet size, and publish-to-page push latency on a real broker.

    Example: hdus-edge bench dashboard --quick
    """
    from hdus_edge.bench.dashboard import run_dashboard_bench

    render_sizes, push_sizes = ((3, 20, 50), (3, 20)) if quick else ((3, 20, 50, 100), (3, 20, 50))
    with status_line(not json_out, "measuring ") as progress:
        result = run_dashboard_bench(render_sizes, push_sizes, progress)
    if json_out:
        print_json(result)
        return
    table = Table(title="Dashboard render (complete graph; every seed signed, ~30 KB)")
    for col in ("devices", "retained messages", "first render", "re-render (memo)", "JSON pushed"):
        table.add_column(col, justify="right")
    for r in result["render"]:
        table.add_row(str(r["devices"]), str(r["messages"]), f"{1e3 * r['first_render_s']:.0f} ms",
                      f"{1e3 * r['rerender_s']:.0f} ms", f"{r['json_kib']:.0f} KiB")
    console.print(table)
    table = Table(title=f"Publish to page (server-sent events) on {result['broker']}; target {result['target_push_s']:.0f} s")
    for col in ("devices", "presence flip p50", "presence flip max", "unlearn order", "within target"):
        table.add_column(col, justify="right")
    for r in result["push"]:
        table.add_row(str(r["devices"]), f"{1e3 * r['presence_p50_s']:.0f} ms", f"{1e3 * r['presence_max_s']:.0f} ms",
                      f"{1e3 * r['unlearn_s']:.0f} ms", "yes" if r["within_target"] else "NO")
    console.print(table)
    console.print(f"Finished in {result['seconds']:.0f} s.")


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
    with status_line(not json_out, "running ") as progress:
        result = run_reliability(profile, progress)
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


@bench_app.command("scale")
def scale(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="One case: 50 devices x 8 neighbours on a LAN.")] = False,
    sizes: Annotated[str, typer.Option(help="Comma-separated fleet sizes (ignored with --quick).")] = "20,50,100",
    degrees: Annotated[str, typer.Option(help="Comma-separated neighbour counts.")] = "4,8",
    nets: Annotated[str, typer.Option(help="Comma-separated network profiles: lan, wan, flap (a link cut for seconds at a time).")] = "lan,wan",
    brokers: Annotated[str, typer.Option(help="Comma-separated broker layouts: one, bridged (a core and two site brokers).")] = "one",
    bridge_cuts: Annotated[int, typer.Option(min=0, help="Bridged: cut and restore a site's bridge this many times while the orders go out.")] = 20,
) -> None:
    """Fleets of one process per device in network namespaces: seed propagation, unlearn latency, cost.

    Needs root (network namespaces). Example: hdus-edge bench scale --quick
    Example: hdus-edge bench scale --sizes 20 --degrees 4 --nets lan --brokers one,bridged --json
    """
    from hdus_edge.bench.scale import BROKERS, NETS, QUICK, ScaleCase, run_scale_bench
    from hdus_edge.errors import ConfigError

    try:
        size_list = [int(v) for v in sizes.split(",") if v.strip()]
        degree_list = [int(v) for v in degrees.split(",") if v.strip()]
    except ValueError:
        raise ConfigError("--sizes and --degrees take comma-separated integers") from None
    net_list = [v.strip() for v in nets.split(",") if v.strip()]
    if not net_list or any(n not in NETS for n in net_list):
        raise ConfigError(f"--nets must name {', '.join(NETS)}, got {nets!r}")
    broker_list = [v.strip() for v in brokers.split(",") if v.strip()]
    if not broker_list or any(b not in BROKERS for b in broker_list):
        raise ConfigError(f"--brokers must name {', '.join(BROKERS)}, got {brokers!r}")
    cases = QUICK if quick else tuple(ScaleCase(n, d, net, b, bridge_cuts=bridge_cuts if b == "bridged" else 0)
                                      for b in broker_list for net in net_list for d in degree_list for n in size_list)
    for c in cases:
        if c.degree < 1 or c.devices <= c.degree or c.devices < c.forgets + c.together + 2:
            raise ConfigError(f"{c.devices} devices x {c.degree} neighbours: a fleet needs more devices than "
                              f"neighbours and at least {c.forgets + c.together + 2} ({c.forgets} unlearns, then "
                              f"{c.together} at once, and two left)")
    with status_line(not json_out) as progress:
        result = run_scale_bench(cases, progress=progress)
    if json_out:
        print_json(result)
        return

    def sec(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f} s"

    table = Table(title="Fleets of one process per device")
    for col in ("devices", "degree", "net", "brokers", "propagation p50/p95", "unlearn p50/p95", "10 at once", "missing",
                "back", "RSS/agent", "agents' CPU idle / forgetting"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(str(r["devices"]), str(r["degree"]), r["net"], f"{r['brokers']} ({r['bridge_cuts_done']} cuts)",
                      f"{sec(r['propagation_p50_s'])} / {sec(r['propagation_p95_s'])}",
                      f"{sec(r['unlearn_p50_s'])} / {sec(r['unlearn_p95_s'])}", sec(r["together_all_receipts_s"]),
                      str(r["missing_receipts"]), str(r["resurrections"]), f"{r['rss_per_agent_mib']:.0f} MiB",
                      f"{r['agents_cpu_share_idle']:.2f} / {r['agents_cpu_share_while_forgetting']:.2f} of {r['cores']} cores")
    console.print(table)
    for r in result["rows"]:
        if r.get("holder_applies"):
            console.print(f"{r['devices']} x {r['degree']}, {r['net']}: holder apply p50 {r['holder_apply_p50_ms']:.1f} ms, "
                          f"p95 {r['holder_apply_p95_ms']:.1f} ms; fsyncs per order: holder {r['holder_fsyncs_p50']:g} "
                          f"(max {r['holder_fsyncs_max']}), non-holder {r['non_holder_fsyncs_p50']} "
                          f"(max {r['non_holder_fsyncs_max']})")
    for g in result["growth"]:
        if g["unlearn_p50_exponent"] is not None:
            console.print(f"degree {g['degree']}, {g['net']}: unlearn p50 grows as N^{g['unlearn_p50_exponent']:.2f}")


@bench_app.command("serve")
def serve(
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="Fewer calls, shorter throughput runs, one start-up.")] = False,
    profile: Annotated[str, typer.Option(help="Profile of the measured device.")] = "raspberry-pi-4",
) -> None:
    """The agent's inference API: start-up and memory, batch-1 latency in-process vs HTTP (JSON, binary)
    vs hdus-edge predict, throughput at batch 1 and 32 with 1 and 4 clients, and failed requests during
    10 seed swaps and 10 unlearns.

    Example: hdus-edge bench serve --quick
    """
    from dataclasses import replace

    from hdus_edge.bench.serve import ServeBenchConfig, print_report, run_serve_bench

    cfg = replace(ServeBenchConfig.quick() if quick else ServeBenchConfig(), profile=profile)
    with status_line(not json_out) as progress:
        result = run_serve_bench(cfg, progress)
    if json_out:
        print_json(result)
    else:
        print_report(result, lambda line: console.print(line, markup=False, highlight=False))
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
    with status_line(not json_out) as progress:
        result = run_forget_samples_bench(cfg, progress, fleet_retrain_seconds)
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
