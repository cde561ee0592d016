"""``hdus-edge predict``: the device's ensemble on a batch or images (onnxruntime; never imports torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from hdus_edge.cli.options import JsonOpt, StateDirOpt, open_state
from hdus_edge.cli.output import console, print_json


def predict(
    inputs: Annotated[list[Path], typer.Argument(help="A .npy / .npz batch [N, C, H, W] or [N, H, W], or images (PNG, JPEG, PGM).")],
    state_dir: StateDirOpt,
    resize: Annotated[bool, typer.Option(help="Resize images to the fleet's input size.")] = False,
    invert: Annotated[bool, typer.Option(help="Use 1 - x (dark ink on a light background).")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Predict with the device's ensemble (main model + neighbours' seeds): class and probabilities.

    Works next to a running agent: it reads the seeds from the store without locking it.

    Example: hdus-edge predict --state-dir ./dev-1 digit.png --json
    """
    import numpy as np

    from hdus_edge.device.inputs import read_inputs
    from hdus_edge.device.view import load_runtime
    from hdus_edge.ensemble.combine import softmax

    state = open_state(state_dir)
    fleet = state.fleet()
    x, sources = read_inputs(inputs, tuple(fleet.data.input_shape), resize=resize, invert=invert)  # type: ignore[arg-type]
    runtime, members = load_runtime(state)
    try:
        out = runtime.predict(x)
    finally:
        runtime.close()
    probs = out if runtime.space == "probs" else softmax(out)
    classes = probs.argmax(axis=1)
    rows = [{"source": src, "index": idx, "class": int(c), "probability": float(p[c]),
             "probabilities": [round(float(v), 6) for v in p]}
            for (src, idx), c, p in zip(sources, classes, np.asarray(probs))]
    if json_out:
        print_json({"device_id": state.device().device.id, "members": list(members), "lam": runtime.lam,
                    "space": runtime.space, "predictions": rows})
        return
    table = Table(title=f"{state.device().device.id}: main + {len(members)} seeds ({', '.join(members) or 'none'})")
    for col in ("input", "class", "p", "probabilities"):
        table.add_column(col)
    for r in rows:
        name = Path(r["source"]).name + (f"[{r['index']}]" if r["source"].endswith((".npy", ".npz")) else "")
        table.add_row(Text(name), str(r["class"]), f"{r['probability']:.3f}", " ".join(f"{v:.2f}" for v in r["probabilities"]))
    console.print(table)
