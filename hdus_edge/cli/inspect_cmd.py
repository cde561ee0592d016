"""``hdus-edge inspect MODEL.onnx``: what an ONNX file holds and whether it may be loaded."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from hdus_edge.cli.output import console, print_json

if TYPE_CHECKING:
    from hdus_edge.onnx.inspection import InspectReport


def inspect(
    model: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="ONNX file to inspect.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    max_bytes: Annotated[int, typer.Option(help="Size cap in bytes; larger files are refused unread.")] = 8 * 1024 * 1024,
    height: Annotated[int | None, typer.Option(help="Fleet input height (default: from the model's metadata).")] = None,
    width: Annotated[int | None, typer.Option(help="Fleet input width (default: from the model's metadata).")] = None,
    classes: Annotated[int | None, typer.Option(help="Fleet class count (default: from the model's metadata).")] = None,
    channels: Annotated[int, typer.Option(help="Fleet input channels.")] = 1,
) -> None:
    """Show IR version, opset, inputs/outputs, operators, parameters, MACs, provenance and safety.

    Example: hdus-edge inspect seed.onnx --json
    """
    from dataclasses import replace

    from hdus_edge.errors import ConfigError
    from hdus_edge.onnx.checks import DEFAULT_POLICY, ModelContract, check_size
    from hdus_edge.onnx.inspection import inspect_onnx

    given = [v is not None for v in (height, width, classes)]
    if any(given) and not all(given):
        raise ConfigError("--height, --width and --classes go together", hint="pass all three, or none")
    contract = ModelContract(height, width, classes, channels) if all(given) else None  # type: ignore[arg-type]
    check_size(model.stat().st_size, max_bytes)  # refuse before reading a huge file
    report = inspect_onnx(model.read_bytes(), contract=contract, policy=replace(DEFAULT_POLICY, max_bytes=max_bytes))
    if json_out:
        print_json({"file": str(model), **report.to_dict()})
        return
    _print_human(model, report)


def _print_human(path: Path, report: InspectReport) -> None:
    # Values go in as Text, not markup: shapes like [N, 1, 28, 28] and a peer's metadata must
    # print as they are.
    facts = Table(title=f"{path.name}", show_header=False)
    facts.add_column("what", style="bold")
    facts.add_column("value")
    facts.add_row("file size", f"{report.bytes:,} bytes")
    facts.add_row("IR / opset", f"{report.ir_version} / {report.opset}")
    facts.add_row("producer", Text(report.producer or "-"))
    for kind, values in (("input", report.inputs), ("output", report.outputs)):
        for v in values:
            facts.add_row(kind, Text(f"{v['name']}: {v['dtype']} {v['shape']}"))
    facts.add_row("parameters", f"{report.params:,}")
    facts.add_row("MACs / sample", f"{report.macs:,}")
    facts.add_row("operators", Text(", ".join(f"{op} x{n}" for op, n in report.operators.items())))
    for key, value in report.metadata.items():
        facts.add_row(Text(f"meta {key}"), Text(value or "-"))
    facts.add_row("safe to load", "[bold green]yes[/]" if report.safe else "[bold red]no[/]")
    console.print(facts)
    for problem in report.problems:
        console.print(Text.assemble(("- ", "red"), problem))
