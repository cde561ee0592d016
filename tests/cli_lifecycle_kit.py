"""Helpers for the tests/test_cli_* lifecycle tests (not a test module): fleets on disk, fast.

Models are untrained zoo exports (the CLI does not care how good they are), so a fleet with
exported models and a populated seed store costs well under a second.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from hdus_edge.admin.setup import create_fleet, provision, resolve_reference
from hdus_edge.cli.app import run
from hdus_edge.data import Dataset, load_digits, save_npz
from hdus_edge.device.store import SeedStore
from hdus_edge.state import AdminDir, StateDir

IDS = ("d1", "d2", "d3")
PROFILES = {"d1": "raspberry-pi-zero-2w", "d2": "raspberry-pi-4", "d3": "generic-x86_64"}
CREATED = "2026-01-01T00:00:00Z"
DEAD_BROKER = "mqtt://127.0.0.1:9"  # discard port: nothing listens


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = run([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_error(err: str, *fragments: str) -> None:
    """stderr is one 'error: ...' line (plus its hint), no traceback, naming every fragment."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), err
    assert "Traceback" not in err, err
    flat = " ".join(err.split())
    for f in fragments:
        assert f in flat, (f, err)


def make_fleet(tmp: Path, broker: str = DEAD_BROKER, ids=IDS, name: str = "kit") -> tuple[AdminDir, dict[str, StateDir]]:
    """An admin dir (noise reference, 1x8x8, 10 classes) and provisioned devices, complete graph."""
    ref = resolve_reference("noise", size=64, input_shape=(1, 8, 8), num_classes=10, seed=3)
    admin, _ = create_fleet(tmp / "admin", name, broker, ref)
    states = {}
    for i in ids:
        done = provision(admin, tmp / i, i, PROFILES.get(i, "generic-x86_64"), neighbors=tuple(j for j in ids if j != i))
        states[i] = done.state
    return admin, states


@functools.lru_cache(maxsize=None)
def zoo_onnx(arch: str, owner: str, role: str, seed: int, reference_sha256: str) -> bytes:
    """An untrained zoo model exported with provenance (cached: export costs ~0.2 s)."""
    from hdus_edge.models import build_model
    from hdus_edge.onnx.export import export_onnx
    from hdus_edge.onnx.metadata import Provenance

    model = build_model(arch, (1, 8, 8), 10, seed=seed)
    ref = reference_sha256 if role == "seed" else None
    return export_onnx(model, Provenance(owner, role, arch, 1, (1, 8, 8), 10, CREATED, ref))  # type: ignore[arg-type]


def install_models(state: StateDir, seed: int = 0) -> tuple[bytes, bytes]:
    """Exported main (mobilenet-s) and seed (seed-cnn) in ``models/``, seed version 1."""
    from hdus_edge.files import write_json
    from hdus_edge.protocol.messages import sha256_hex

    me = state.device().device.id
    ref = state.fleet().data.reference_sha256
    main = zoo_onnx("mobilenet-s", me, "main", seed, ref)
    seed_bytes = zoo_onnx("seed-cnn", me, "seed", seed + 100, ref)
    (state.models / "main.onnx").write_bytes(main)
    (state.models / "seed.onnx").write_bytes(seed_bytes)
    write_json(state.seed_info_file, {"version": 1, "sha256": sha256_hex(seed_bytes), "reference_sha256": ref,
                                      "arch": "seed-cnn", "created_at": CREATED})
    return main, seed_bytes


def put_seeds(state: StateDir, seeds: dict[str, bytes]) -> None:
    """Store neighbours' seeds as an agent would have (version 1, epoch 0)."""
    with SeedStore(state.store_dir) as store:
        for owner, data in seeds.items():
            store.put_seed(owner, 1, data, epoch=0, arch="seed-cnn")


def installed_fleet(tmp: Path, broker: str = DEAD_BROKER) -> tuple[AdminDir, dict[str, StateDir], dict[str, bytes]]:
    """``make_fleet`` with models in every device and every neighbour's seed in every store."""
    admin, states = make_fleet(tmp, broker)
    seeds = {i: install_models(st, seed=k)[1] for k, (i, st) in enumerate(states.items())}
    for i, st in states.items():
        put_seeds(st, {j: seeds[j] for j in states if j != i})
    return admin, states, seeds


def digits_folder(folder: Path, n: int = 120, offset: int = 0, hw: int | None = None) -> Path:
    """A data folder with one .npz of ``n`` digits (optionally resized to ``hw`` x ``hw`` by padding)."""
    digits = load_digits()
    ds = digits.subset(np.arange(offset, offset + n))
    x = ds.x
    if hw is not None:
        pad = (hw - 8) // 2
        x = np.pad(x, ((0, 0), (0, 0), (pad, hw - 8 - pad), (pad, hw - 8 - pad)))
    save_npz(Dataset(x=np.ascontiguousarray(x), y=ds.y, num_classes=10, name=folder.name), folder / "part-0.npz")
    return folder


def resolve_reference_bytes(tmp: Path) -> bytes:
    """The bytes of a valid reference.npz that is not the kit fleet's (another noise seed)."""
    ref = resolve_reference("noise", size=16, input_shape=(1, 8, 8), num_classes=10, seed=77)
    return save_npz(ref.data, tmp / "other-reference.npz").read_bytes()
