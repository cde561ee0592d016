"""Forgetting samples and adding new ones on one device: exact against training from scratch.

Every "exact" below is proved by training a second device from scratch on the reduced (or grown)
data and comparing weights and ONNX bit for bit; the planted-bug tests show the comparison fails
when a stale shard survives.
"""

from __future__ import annotations

import json

import cli_lifecycle_kit as kit
import numpy as np
import onnxruntime as ort
import pytest
import torch

from hdus_edge.data import load_npz, save_npz
from hdus_edge.errors import DataError, DataFormatError
from hdus_edge.learning import shards as shards_module
from hdus_edge.learning.exactness import check_shards, compare_devices
from hdus_edge.learning.samples import (
    add_samples_step,
    data_of_record_path,
    forget_samples_step,
    forgotten_ids,
    read_ids_file,
    read_manifest,
    retire_path,
)
from hdus_edge.learning.steps import (
    distill_step,
    export_step,
    load_checkpoint,
    manifest_path,
    train_step,
)
from hdus_edge.onnx.checks import LoadPolicy, ModelContract, check_onnx, parse_onnx
from hdus_edge.onnx.metadata import read_provenance

C = kit.CREATED


def trained(tmp, name, data, shards=1):
    """A fresh device d1 (same id, same reference in every fleet) trained, distilled, exported."""
    _, states = kit.make_fleet(tmp / name, ids=("d1",))
    st = states["d1"]
    train_step(st, data, epochs=1, shards=shards)
    distill_step(st, epochs=1)
    export_step(st, created_at=C)
    return st


def scratch_on(tmp, name, st, shards=1):
    """A device trained from scratch on ``st``'s current training set of record."""
    path = save_npz(load_npz(data_of_record_path(st)), tmp / f"{name}.npz")
    return trained(tmp, name, path, shards)


@pytest.mark.parametrize("shards", [1, 4])
def test_forgetting_samples_equals_training_from_scratch_without_them(tmp_path, shards):
    # Prepare
    data = kit.digits_folder(tmp_path / "mine", n=96)
    st = trained(tmp_path, "a", data, shards)
    before = read_manifest(st)
    ids = [before.ids[3], before.ids[40], before.ids[77]]
    old_seed = (st.models / "seed.onnx").read_bytes()
    # Execute
    report = forget_samples_step(st, ids, created_at=C)
    # Assert: the data, the manifest and the provenance no longer hold them ...
    after = read_manifest(st)
    assert report.samples_before == 96 and report.samples_after == 93 == after.size
    assert not set(ids) & set(after.ids) and forgotten_ids(st) == set(ids)
    prov = read_provenance(parse_onnx((st.models / "main.onnx").read_bytes()))
    assert prov.manifest_sha256 == after.sha256 and prov.samples == 93
    assert report.seed_version == 2 and report.retired_sha256 is not None
    retire = json.loads(retire_path(st).read_text())
    assert retire["version"] == 2 and retire["request_id"] == report.request_id
    assert (st.models / "seed.onnx").read_bytes() != old_seed
    # ... and every model is bit-identical to a device trained from scratch without them.
    scratch = scratch_on(tmp_path, "scratch", st, shards)
    assert compare_devices(st, scratch).to_json()["identical"] is True
    assert check_shards(st) == []
    if shards > 1:
        assert report.reused_shards and len(report.retrained_shards) < shards
        # One main graph that passes the checks and computes what the sharded torch model does.
        main_bytes = (st.models / "main.onnx").read_bytes()
        check_onnx(main_bytes, ModelContract.from_shape((1, 8, 8), 10), LoadPolicy(max_bytes=256 << 20))
        x = np.random.default_rng(0).random((7, 1, 8, 8), dtype=np.float32)
        session = ort.InferenceSession(main_bytes, providers=["CPUExecutionProvider"])
        with torch.no_grad():
            want = load_checkpoint(st.main_checkpoint, "main").model(torch.from_numpy(x)).numpy()
        tol = 0.05 if st.profile().runtime.int8 else 1e-4  # this profile may quantize its own main model
        np.testing.assert_allclose(session.run(None, {"input": x})[0], want, atol=tol)
        # Only the retrained shards were exported again: one cached member graph per shard.
        assert len(list((st.models / "shards").glob("*.onnx"))) == len(report.retrained_shards) + len(report.reused_shards)


def test_a_stale_shard_is_caught_by_both_checks(tmp_path, monkeypatch):
    # Prepare: a planted bug, every shard's old weights are reused even when its data changed.
    data = kit.digits_folder(tmp_path / "mine", n=96)
    st = trained(tmp_path, "a", data, shards=4)
    ids = [read_manifest(st).ids[10]]
    monkeypatch.setattr(shards_module, "reusable", lambda previous, wanted: previous is not None)
    # Execute
    forget_samples_step(st, ids, created_at=C)
    monkeypatch.undo()
    # Assert: the retrain-from-scratch comparison fails ...
    scratch = scratch_on(tmp_path, "scratch", st, shards=4)
    verdict = compare_devices(st, scratch)
    assert not verdict.main_weights and not verdict.identical
    # ... and the shard self-check names the stale shard, since its recorded ids are no longer its data's.
    problems = check_shards(st)
    assert problems and all("stale" in p for p in problems)


def test_adding_samples_equals_training_from_scratch_on_all_of_them(tmp_path):
    # Prepare
    first = kit.digits_folder(tmp_path / "first", n=64)
    more = kit.digits_folder(tmp_path / "more", n=32, offset=64)
    st = trained(tmp_path, "a", first, shards=4)
    # Execute
    report = add_samples_step(st, more, created_at=C)
    # Assert
    assert report.samples_after == 96 and report.seed_version == 2 and report.retired_sha256 is None
    assert not retire_path(st).exists()
    everything = kit.digits_folder(tmp_path / "all", n=96)
    scratch = trained(tmp_path, "scratch", everything, shards=4)
    assert compare_devices(st, scratch).identical


def test_forgotten_samples_never_come_back(tmp_path):
    # Prepare
    data = kit.digits_folder(tmp_path / "mine", n=64)
    st = trained(tmp_path, "a", data)
    ids = list(read_manifest(st).ids[:2])
    forget_samples_step(st, ids, created_at=C)
    # Execute: the same samples offered again, as new data and as a fresh training run.
    added = add_samples_step(st, kit.digits_folder(tmp_path / "again", n=4), created_at=C)
    retrained = train_step(st, data, epochs=1)
    # Assert
    assert added.forgotten_dropped == 2 and added.samples_added == 2
    assert retrained.forgotten_dropped == 2 and not set(ids) & set(read_manifest(st).ids)


def test_bad_requests_get_one_clear_error_and_change_nothing(tmp_path):
    # Prepare
    data = kit.digits_folder(tmp_path / "mine", n=48)
    st = trained(tmp_path, "a", data)
    files = [st.main_checkpoint, st.seed_checkpoint, st.models / "seed.onnx", st.seed_info_file,
             manifest_path(st), data_of_record_path(st)]
    before = {p: p.read_bytes() for p in files}
    manifest = read_manifest(st)
    other = kit.digits_folder(tmp_path / "other", n=3, offset=500)
    from hdus_edge.learning.samples import ids_of_samples

    cases = [
        ([], "no sample ids"),
        (ids_of_samples(other), "never trained on"),
        (list(manifest.ids), "would leave no training data"),
    ]
    for ids, fragment in cases:
        # Execute / Assert
        with pytest.raises(DataError) as caught:
            forget_samples_step(st, ids, created_at=C)
        assert fragment in caught.value.message
    bad = tmp_path / "bad.txt"
    bad.write_text("not-an-id\n")
    with pytest.raises(DataFormatError):
        read_ids_file(bad)
    assert {p: p.read_bytes() for p in files} == before
    assert not retire_path(st).exists() and forgotten_ids(st) == set()


def test_a_forget_cut_short_before_retraining_shows_in_status_and_completes_when_run_again(tmp_path, monkeypatch):
    # Prepare: the retraining dies after the ids were recorded as forgotten (a crash, a power cut).
    from hdus_edge.device.view import training_summary
    from hdus_edge.learning import steps

    data = kit.digits_folder(tmp_path / "mine", n=48)
    st = trained(tmp_path, "a", data)
    ids = list(read_manifest(st).ids[:2])

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(steps, "fit_and_save_main", crash)
    with pytest.raises(KeyboardInterrupt):
        forget_samples_step(st, ids, created_at=C)
    monkeypatch.undo()
    # Assert: status says the model still holds forgotten samples ...
    assert training_summary(st)["forgotten_still_trained_on"] == 2
    # ... and running the request again completes it, exactly.
    forget_samples_step(st, ids, created_at=C)
    assert training_summary(st)["forgotten_still_trained_on"] == 0
    assert compare_devices(st, scratch_on(tmp_path, "scratch", st)).identical
