"""The simulation report: report.json (every figure), report.md (tables a reader scans) and PNG plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hdus_edge.sim.studies.report import render_sections, save_figure
from hdus_edge.sim.studies.report import write_plots as write_study_plots

METHOD_ORDER = ("hdus", "isgd", "dsgd", "fedunl", "fedunl-retrain", "sisa-a")


def _pct(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * v:.1f}%"


def _secs(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v * 1000:.0f} ms" if v < 1 else f"{v:.1f} s"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _exact(method: dict[str, Any]) -> str:
    """'yes (retrained)' only when a never-joined run was trained and compared; otherwise what is claimed."""
    if not method["exact"]:
        return "no"
    return "yes (retrained)" if method.get("exact_basis") == "retrained" else "by construction"


def ordered_methods(report: dict[str, Any]) -> list[str]:
    """Method names in the report's canonical order."""
    names = list(report["methods"])
    return sorted(names, key=lambda n: METHOD_ORDER.index(n) if n in METHOD_ORDER else 99)


def comparison_rows(report: dict[str, Any]) -> list[list[str]]:
    """One row per method: accuracies, forgetting cost, bytes, exactness (strings for tables)."""
    rows = []
    for name in ordered_methods(report):
        m = report["methods"][name]
        rows.append([
            name, _pct(m["acc_before"]), _pct(m["acc_after"]), _pct(m["acc_before_global"]), _pct(m["acc_after_global"]),
            _secs(m["forget_seconds"]), f"{m['forget_epochs']:g}", f"{m['train_bytes'] / 2**20:.2f}",
            _exact(m),
        ])
    return rows


COLUMNS = ["method", "local before", "local after", "global before", "global after", "forget time",
           "epochs redone", "MiB sent", "exact"]


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md and the plots into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md"}
    paths["json"].write_text(json.dumps(_clean(report), indent=2) + "\n")
    studies = report.get("studies") or {}
    if "methods" in report:
        paths |= write_plots(report, out_dir)
    paths |= write_study_plots(studies, out_dir)
    plots = {k: v.name for k, v in paths.items() if v.suffix == ".png"}
    lines = render_markdown(report, plots).splitlines() if "methods" in report else ["# HDUS fleet simulation", ""]
    paths["md"].write_text("\n".join(lines + [""] + render_sections(studies, plots)).rstrip() + "\n")
    return paths


def existing_studies(out_dir: Path) -> dict[str, Any]:
    """The studies in ``out_dir/report.json`` (empty when there is none or it is unreadable)."""
    try:
        return dict(json.loads((out_dir / "report.json").read_text()).get("studies") or {})
    except (OSError, ValueError, AttributeError):
        return {}


def add_study(out_dir: Path, name: str, result: dict[str, Any]) -> dict[str, Path]:
    """Put one study's figures into the report in ``out_dir`` (created if absent) and rewrite it."""
    path = out_dir / "report.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report.setdefault("studies", {})[name] = result
    return write_report(report, out_dir)


def render_markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    """The human report."""
    s, h = report["settings"], report["hdus"]
    lines = [
        "# HDUS fleet simulation",
        "",
        f"{s['n_devices']} devices ({', '.join(s['archs'])}), dataset `{s['dataset']}`, partition `{s['partition']}`, "
        f"reference `{s['reference']}` ({s['reference_size']} samples), topology `{s['topology']}`, lam {s['lam']} "
        f"over {s['space']}, T = {s['temperature']}; forgotten: {', '.join(s['forget'])}; baselines at the "
        f"`{s['budget']}` budget; seed {s['seed']}. Finished in {report['seconds']:.0f} s.",
        "",
        "## Comparison",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in comparison_rows(report)]
    lines += [
        "",
        "Accuracy is the mean over the devices that remain, on each device's local test split (its own",
        "distribution) and on the fleet's held-out global test set. HDUS forget time is the latency from",
        "the signed order to the last signed receipt over the real broker; baselines' is their compute.",
        "",
        *_versus(report.get("comparison") or {}),
        "## HDUS: exactness and evidence",
        "",
        f"- Exact: {'yes' if h.get('exact') else 'NO'}, against a fleet that never had the device(s), trained from "
        f"scratch (same seeds, same data for the others): (a) remaining models bit-identical (weights and ONNX "
        f"bytes): {h.get('exact_models')}{_differing(h)}; (b) running agents' ensembles after the fused graphs "
        f"settled: max |diff| = {h['max_abs_diff']:.2e}, identical predictions: {h['argmax_identical']}.",
        f"- Signed receipts complete: {h['receipts_complete']} ({_receipt_counts(h['receipts'])}); "
        f"evidence verified offline: {'yes' if not h['evidence_problems'] else h['evidence_problems']}"
        f"{_evidence_files(h)}.",
        *_mia_lines(h.get("mia") or {}),
        f"- Broker traffic: {_traffic(h['traffic'])}.",
        f"- Phases: train + distill {h['phase_seconds']['train_distill']:.1f} s, export "
        f"{h['phase_seconds']['export']:.1f} s, seeds to every neighbour {h['phase_seconds']['publish']:.2f} s.",
        "",
    ]
    for key, title in (("accuracy", "Accuracy per method"), ("cost", "Cost of forgetting (log scale)"),
                       ("recovery", "Accuracy after forgetting"), ("devices", "HDUS per device, before and after")):
        if key in plots:
            lines += [f"## {title}", "", f"![{title}]({plots[key]})", ""]
    return "\n".join(lines)


def _versus(comparison: dict[str, Any]) -> list[str]:
    if not comparison:
        return []
    lines = ["## HDUS against each baseline", "",
             "| baseline | HDUS minus it, local (pts) | global (pts) | its bytes to train / HDUS's | its forget time / HDUS's |",
             "|---|---|---|---|---|"]
    for name in sorted(comparison, key=lambda n: METHOD_ORDER.index(n) if n in METHOD_ORDER else 99):
        c = comparison[name]
        ratio = "- (sends none)" if not c["bytes_ratio"] else f"{c['bytes_ratio']:.1f}x"
        speed = _speedup(c["forget_speedup"])
        lines.append(f"| {name} | {c['points_local_after']:+.1f} | {c['points_global_after']:+.1f} | {ratio} | {speed} |")
    return lines + [""]


def _speedup(ratio: float | None) -> str:
    if ratio is None or ratio < 0.01:
        return "- (nothing to undo)"  # ISGD holds nobody's data; SISA-A drops a model it holds
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2f}x"


def _receipt_counts(receipts: list[dict[str, Any]]) -> str:
    return ", ".join(f"{r['target']}: {len(r['received'])}/{len(r['holders'])} holders" for r in receipts)


def _differing(h: dict[str, Any]) -> str:
    diff = (h.get("models_check") or {}).get("differing") or []
    return f" (differ: {', '.join(diff)})" if diff else ""


def _evidence_files(h: dict[str, Any]) -> str:
    files = h.get("evidence_files") or []
    return f"; files: {', '.join(files)} (check with `hdus-edge verify FILE --admin-pub evidence/admin.pub`)" if files else ""


def _ci(r: dict[str, Any] | None) -> str:
    if not r or r.get("auc") is None:
        return "-"
    return f"{r['auc']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def _mia_lines(mia: dict[str, Any]) -> list[str]:
    lines = []
    for target, m in mia.items():
        lines.append(
            f"- Membership inference on {target} (calibrated attack: offline RMIA with {m.get('reference_models')} "
            f"reference models trained on the public reference set; members: its {m.get('members')} training "
            f"samples, non-members: its {m.get('nonmembers')} held-out samples; AUC [95% bootstrap CI]): "
            f"its main model {_ci(m.get('target_main'))} (raw loss attack {_ci(m.get('loss_attack_target_main'))}; "
            f"it fits its training samples to {_pct(m.get('target_train_accuracy'))} and its held-out ones to "
            f"{_pct(m.get('target_heldout_accuracy'))}), "
            f"its seed {_ci(m.get('target_seed'))}; former neighbours' ensembles (mean) before {_ci(m.get('before'))}, "
            f"after {_ci(m.get('after'))}, never-joined fleet {_ci(m.get('never_joined'))}.")
    return lines


def _traffic(t: dict[str, Any]) -> str:
    parts = [f"{k} {t['messages'].get(k, 0)} msgs / {t['bytes'].get(k, 0) / 1024:.0f} KiB" for k in sorted(t["messages"])]
    return "; ".join(parts) or "none"


def write_plots(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Accuracy bars, forgetting cost (log), recovery curves, per-device before/after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ordered_methods(report)
    methods = report["methods"]
    paths: dict[str, Path] = {}

    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(names))
    for offset, key, label in ((-0.3, "acc_before", "local, before"), (-0.1, "acc_after", "local, after"),
                               (0.1, "acc_before_global", "global, before"), (0.3, "acc_after_global", "global, after")):
        ax.bar([x + offset for x in xs], [100 * (methods[n][key] or 0) for n in names], width=0.2, label=label)
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Accuracy before and after forgetting")
    paths["accuracy"] = save_figure(fig, out_dir / "accuracy.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    secs = [max(methods[n]["forget_seconds"] or 1e-6, 1e-6) for n in names]
    ax.bar(names, secs, color=["tab:green" if methods[n]["exact"] else "tab:red" for n in names])
    ax.set_yscale("log")
    ax.set_ylabel("seconds to forget one device (log)")
    ax.set_title("Cost of forgetting (green: exact, red: approximate)")
    paths["cost"] = save_figure(fig, out_dir / "forget_cost.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    for n in names:
        curve = methods[n].get("recovery") or []
        if len(curve) > 1:
            ax.plot([p[0] for p in curve], [100 * p[1] for p in curve], marker="o", label=n)
        elif curve:
            ax.axhline(100 * curve[0][1], linestyle="--", label=f"{n} (immediate)")
    ax.set_xlabel("rounds of retraining / repair after forgetting")
    ax.set_ylabel("mean local accuracy (%)")
    ax.legend(fontsize=8)
    ax.set_title("Accuracy over time after forgetting")
    paths["recovery"] = save_figure(fig, out_dir / "recovery.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    per = methods["hdus"]["per_device"]
    ids = sorted(per)
    ax.bar([k - 0.2 for k in range(len(ids))], [100 * per[i]["before"]["local"] for i in ids], width=0.4, label="before")
    ax.bar([k + 0.2 for k in range(len(ids))], [100 * (per[i]["after"] or {"local": 0})["local"] for i in ids],
           width=0.4, label="after (0: forgotten)")
    ax.set_xticks(range(len(ids)), ids)
    ax.set_ylabel("local accuracy (%)")
    ax.legend(fontsize=8)
    ax.set_title("HDUS per device")
    paths["devices"] = save_figure(fig, out_dir / "devices.png")
    return paths

