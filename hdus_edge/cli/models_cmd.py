"""``hdus-edge models ...``: the model zoo's registry."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from hdus_edge.cli.output import console, print_json

models_app = typer.Typer(help="The model zoo: main and seed architectures by name.", no_args_is_help=True)

ShapeOpt = Annotated[int, typer.Option("--hw", help="Input height = width, for parameter and MAC counts.")]


@models_app.command("list")
def list_models(
    hw: ShapeOpt = 28,
    classes: Annotated[int, typer.Option(help="Number of classes.")] = 10,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List every registered architecture with parameters and MACs per sample.

    Example: hdus-edge models list --hw 8
    """
    rows = [_describe(spec.name, hw, classes) for spec in _specs()]
    if json_out:
        print_json(rows)
        return
    table = Table(title=f"Model zoo at 1x{hw}x{hw}, {classes} classes")
    for col in ("name", "role", "family", "size", "params", "MACs/sample"):
        table.add_column(col, justify="right" if col in ("params", "MACs/sample") else "left")
    for r in rows:
        table.add_row(r["name"], r["role"], r["family"], r["size"], f"{r['params']:,}", f"{r['macs']:,}")
    console.print(table)


@models_app.command("show")
def show_model(
    name: Annotated[str, typer.Argument(help="Architecture name, e.g. mobilenet-m.")],
    hw: ShapeOpt = 28,
    classes: Annotated[int, typer.Option(help="Number of classes.")] = 10,
) -> None:
    """Show one architecture: counts and its layer structure.

    Example: hdus-edge models show seed-cnn --hw 8
    """
    from hdus_edge.models import build_model

    info = _describe(name, hw, classes)
    console.print(info)
    console.print(build_model(name, (1, hw, hw), classes))


def _specs():  # type: ignore[no-untyped-def]
    from hdus_edge.models import list_architectures

    return list_architectures()


def _describe(name: str, hw: int, classes: int) -> dict:
    from hdus_edge.errors import ConfigError
    from hdus_edge.models import build_model, count_macs, count_parameters, get_spec

    spec = get_spec(name)
    if not 8 <= hw <= 64:
        raise ConfigError(f"--hw must be in 8..64, got {hw}")
    model = build_model(spec.name, (1, hw, hw), classes)
    return {"name": spec.name, "role": spec.role, "family": spec.family, "size": spec.size,
            "params": count_parameters(model), "macs": count_macs(model, (1, hw, hw)), "description": spec.description}
