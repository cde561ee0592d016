"""``hdus-edge data split``: carve a dataset into per-device folders, a public reference set and a test set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hdus_edge.cli.output import console, print_json

data_app = typer.Typer(help="Prepare data for devices: per-device folders and a public reference set.",
                       no_args_is_help=True)


@data_app.command("split")
def split(
    out: Annotated[Path, typer.Option(help="Folder to write into (created).")],
    dataset: Annotated[str, typer.Option(help="'digits', 'mnist' or a data folder (.npz / IDX).")] = "digits",
    devices: Annotated[int, typer.Option(help="Number of devices.")] = 3,
    partition: Annotated[str, typer.Option(help="missing-class, dirichlet, shards or iid.")] = "missing-class",
    reference_size: Annotated[int, typer.Option(help="Public reference samples.")] = 300,
    test_size: Annotated[int, typer.Option(help="Held-out test samples.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed for every random choice.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print what was written as JSON.")] = False,
) -> None:
    """Write OUT/reference/reference.npz, OUT/dev-K/train.npz (+ test.npz) and OUT/test.npy.

    The parts are disjoint (checked by content hash): the reference set holds no device's data.

    Example: hdus-edge data split --out ./data --devices 3
    """
    import numpy as np

    from hdus_edge.data import load_dataset, save_npz, split_fleet

    data = split_fleet(load_dataset(dataset), devices, scheme=partition, reference_size=reference_size,
                       test_size=test_size, seed=seed)
    written = {"reference": str(save_npz(data.reference, out / "reference" / "reference.npz"))}
    for k, client in enumerate(data.clients):
        save_npz(client.train, out / f"dev-{k}" / "train.npz")
        save_npz(client.test, out / f"dev-{k}-test" / "test.npz")
        written[f"dev-{k}"] = str(out / f"dev-{k}")
    np.save(out / "test.npy", data.test.x)
    np.save(out / "test-labels.npy", data.test.y)
    written["test"] = str(out / "test.npy")
    if json_out:
        print_json(written | {"reference_sha256": data.reference_sha256})
        return
    for name, path in written.items():
        console.print(f"{name:>10}: {path}", markup=False)
