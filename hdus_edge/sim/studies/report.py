"""The "beyond the paper" sections of the simulation report: Markdown tables and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:.1f}%"


def _pts(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:+.1f} pts"


def _num(v: Any, fmt: str = ".2f") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def _ms(v: Any) -> str:
    return "-" if v is None else f"{1000 * v:.0f}"


def render_sections(studies: dict[str, Any], plots: dict[str, str]) -> list[str]:
    """Markdown lines for every study present, in a fixed order."""
    lines: list[str] = []
    if studies:
        lines += ["# Beyond the paper", ""]
    for name, render in (("scale", _scale), ("reference", _reference), ("poisoning", _poisoning)):
        if name in studies:
            lines += render(studies[name])
            if name in plots:
                lines += [f"![{name}]({plots[name]})", ""]
    return lines


def _scale(s: dict[str, Any]) -> list[str]:
    st = s["settings"]
    lines = [
        "## Scale",
        "",
        f"Real agents ({'one process per agent' if st.get('processes', 'one') == 'one per device' else 'all in one process'}) "
        f"on one `{st['broker']}` broker, random regular graphs; mains "
        f"`{st['main_arch']}` ({st['train_epochs']} epochs), seeds `{st['seed_arch']}` ({st['distill_epochs']} epochs), "
        f"{st['client_size']} samples per device of `{st['dataset']}`; {st['forgets']} devices forgotten one after "
        f"another per case; {st['cpu_cores']} CPU cores.",
        "",
        "| devices | neighbours | train+distil s (per device) | export s | propagation s | publish msgs | publish MiB "
        "| unlearn p50 ms | unlearn max ms | incomplete | msgs per unlearn | KiB per unlearn | MiB per agent |",
        "|" + "---|" * 13,
    ]
    for r in s["rows"]:
        lines.append(
            f"| {r['devices']} | {r['degree']} | {r['train_distill_s']:.1f} ({r['train_distill_per_device_s']:.2f}) "
            f"| {r['export_s']:.1f} | {r['propagation_s']:.2f} | {r['publish_messages']} | {r['publish_bytes'] / 2**20:.1f} "
            f"| {_ms(r['unlearn_p50_s'])} | {_ms(r['unlearn_max_s'])} | {r['unlearn_incomplete']} "
            f"| {r['forget_messages_per_unlearn']:.0f} | {r['forget_bytes_per_unlearn'] / 1024:.1f} | {r['rss_per_agent_mib']:.1f} |")
    g = s["growth"]
    lines += ["", "Growth exponent in N (log-log slope; 1 = linear):", "",
              "| neighbours | propagation | publish msgs | publish bytes | unlearn p50 | msgs per unlearn | train+distil |",
              "|---|---|---|---|---|---|---|"]
    for k, e in g["exponent_in_n"].items():
        lines.append(f"| {k} | {_num(e['propagation_s'])} | {_num(e['publish_messages'])} | {_num(e['publish_bytes'])} "
                     f"| {_num(e['unlearn_p50_s'])} | {_num(e['forget_messages_per_unlearn'])} | {_num(e['train_distill_s'])} |")
    if g["degree_ratio"]:
        lines += ["", "More neighbours (ratio of the larger to the smaller neighbour count at the same N):", "",
                  "| devices | neighbours | propagation | publish msgs | publish bytes | unlearn p50 | msgs per unlearn |",
                  "|---|---|---|---|---|---|---|"]
        for n, r in g["degree_ratio"].items():
            lines.append(f"| {n} | {r['degrees'][1]} vs {r['degrees'][0]} | {_num(r['propagation_s'])} "
                         f"| {_num(r['publish_messages'])} | {_num(r['publish_bytes'])} | {_num(r['unlearn_p50_s'])} "
                         f"| {_num(r['forget_messages_per_unlearn'])} |")
    lines += ["", "Seed traffic is one message per directed edge (N x k). Every device, holder or not, records an "
              "unlearn order as a tombstone (so the seed can never come back through a late delivery) and answers "
              "with a signed receipt, so an unlearn's traffic grows with N. The requester waits only for the k "
              "holders, but here all N agents share one process and these cores, so every device's work on the "
              "order delays the holders' receipts and the latency grows with N; on a fleet where each device has "
              "its own CPU only the holders' own work is on that path.", ""]
    return lines


def _reference(s: dict[str, Any]) -> list[str]:
    st = s["settings"]
    lines = [
        "## Reference set",
        "",
        f"{len(st['archs'])} devices ({', '.join(st['archs'])}) on `{st['dataset']}`, partition `{st['partition']}`, "
        f"{st['client_size']} samples each; main models trained once ({st['train_epochs']} epochs), seeds distilled "
        f"again on each reference ({st['distill_epochs']} epochs); lam {st['lam']}, complete graph. "
        f"Main model alone: {_pct(s['main_alone']['local'])} local / {_pct(s['main_alone']['global'])} global.",
        "",
        "| reference | samples | seed/main agreement (local) | agreement (global) | seed alone (global) "
        "| ensemble local | ensemble global | distil steps | distil s (all devices) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in s["variants"].items():
        m = r["mean"]
        lines.append(f"| {name} | {r['samples']} | {_pct(m['agreement_local'])} | {_pct(m['agreement_global'])} "
                     f"| {_pct(m['seed_acc_global'])} | {_pct(m['ensemble_local'])} | {_pct(m['ensemble_global'])} "
                     f"| {r.get('distill_steps', '-')} | {r['distill_seconds_total']:.1f} |")
    return lines + ["", "Distillation runs a fixed number of epochs, so a smaller reference set also gets fewer "
                    "optimisation steps; seed/main agreement is top-1 agreement on test data the seed never saw.", ""]


def _poisoning(s: dict[str, Any]) -> list[str]:
    st, m, f = s["settings"], s["mean"], s["forget"]
    lines = [
        "## Poisoning",
        "",
        f"`{st['poisoned']}` trains on labels flipped `{st['flip']}` and publishes its seed to "
        f"{len(st['neighbours'])} neighbours ({st['seeds_per_neighbour']:.0f} seeds each; lam {st['lam']}, "
        f"topology `{st['topology']}`, `{st['dataset']}`). The poisoned seed alone scores "
        f"{_pct(s['poisoned_seed_global_acc'])} on the global test set and predicts the attacker's label for "
        f"{_pct(s['seed_attack_success']['poisoned'])} of it (the honest seed: {_pct(s['honest_seed_global_acc'])} and "
        f"{_pct(s['seed_attack_success']['honest'])}). "
        "Mean over the neighbours:",
        "",
        "| fleet | local | global | predicted as the attacker's label |",
        "|---|---|---|---|",
        f"| honest (device trained on true labels) | {_pct(m['clean']['local'])} | {_pct(m['clean']['global'])} "
        f"| {_pct(s['attack_success']['clean'])} |",
        f"| with the poisoned seed | {_pct(m['poisoned']['local'])} | {_pct(m['poisoned']['global'])} "
        f"| {_pct(s['attack_success']['poisoned'])} |",
        f"| after forgetting it | {_pct(m['after_forget']['local'])} | {_pct(m['after_forget']['global'])} | - |",
        "",
        f"Change from the poisoned seed: {_pts(-s['drop_local'])} local, {_pts(-s['drop_global'])} global. Forgetting "
        f"it: {_pts(s['recovered_global'])} global; the rest of the way back to the honest fleet "
        f"({_pts(s['residual_global'])}) is the honest contribution the device would have made. Forgetting exact: "
        f"{'yes' if f.get('exact', True) else 'NO'} against the honest devices retrained from scratch without it "
        f"(models bit-identical: {f.get('exact_models')}); agents' max |diff| "
        f"{f['max_abs_diff_vs_never_joined']:.1e}, identical predictions {f['argmax_identical']}; receipts "
        f"{f['receipts']}/{f['holders']}.",
        "",
        "lam sweep (in-process, mean global accuracy of the neighbours):",
        "",
        "| lam | honest | poisoned | after forgetting |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['lam']} | {_pct(r['clean'])} | {_pct(r['poisoned'])} | {_pct(r['after_forget'])} |"
              for r in s["lam_sweep"]]
    if s.get("topology_sweep"):
        lines += ["", f"Topology (in-process, lam {st['lam']}; fewer neighbours give the poisoned seed more weight):", "",
                  "| topology | seeds per neighbour | honest | poisoned | after forgetting |", "|---|---|---|---|---|"]
        lines += [f"| {r['topology']} | {r['seeds_per_neighbour']:.1f} | {_pct(r['clean'])} | {_pct(r['poisoned'])} "
                  f"| {_pct(r['after_forget'])} |" for r in s["topology_sweep"]]
    return lines + [""]


def write_plots(studies: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """One PNG per study present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}
    if "scale" in studies:
        rows = studies["scale"]["rows"]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        for k in sorted({r["degree"] for r in rows}):
            rs = [r for r in rows if r["degree"] == k]
            ns = [r["devices"] for r in rs]
            axes[0].plot(ns, [r["propagation_s"] for r in rs], marker="o", label=f"{k} neighbours")
            axes[1].plot(ns, [r["publish_bytes"] / 2**20 for r in rs], marker="o", label=f"{k} neighbours")
            axes[2].plot(ns, [1000 * (r["unlearn_p50_s"] or float("nan")) for r in rs], marker="o", label=f"{k} neighbours")
        for ax, title in zip(axes, ("seed propagation (s)", "seed traffic (MiB)", "unlearn p50 (ms)")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("devices")
            ax.set_title(title)
            ax.legend(fontsize=8)
        paths["scale"] = save_figure(fig, out_dir / "study_scale.png")
    if "reference" in studies:
        variants = studies["reference"]["variants"]
        names = list(variants)
        fig, ax = plt.subplots(figsize=(8, 3.6))
        for offset, key, label in ((-0.3, "agreement_global", "seed/main agreement"), (-0.1, "seed_acc_global", "seed alone"),
                                   (0.1, "ensemble_local", "ensemble, local"), (0.3, "ensemble_global", "ensemble, global")):
            ax.bar([x + offset for x in range(len(names))], [100 * variants[n]["mean"][key] for n in names],
                   width=0.2, label=label)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_title("Reference set: seed fidelity and ensemble accuracy")
        paths["reference"] = save_figure(fig, out_dir / "study_reference.png")
    if "poisoning" in studies:
        sweep = studies["poisoning"]["lam_sweep"]
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for key, label in (("clean", "honest"), ("poisoned", "with poisoned seed"), ("after_forget", "after forgetting")):
            ax.plot([r["lam"] for r in sweep], [100 * r[key] for r in sweep], marker="o", label=label)
        ax.set_xlabel("lam (weight of the seeds)")
        ax.set_ylabel("neighbours' global accuracy (%)")
        ax.legend(fontsize=8)
        ax.set_title("Poisoning: damage and recovery")
        paths["poisoning"] = save_figure(fig, out_dir / "study_poisoning.png")
    return paths


def save_figure(fig: Any, path: Path) -> Path:
    """Lay out, write as PNG (100 dpi) and close ``fig``; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
