"""EnsembleRuntime: fused graph == per-member sessions == combine(); exact removal; atomic rebuilds."""

from __future__ import annotations

import threading

import numpy as np
import onnx
import pytest
from onnx_testkit import batch, export_zoo, tiny_model, to_bytes

from hdus_edge.ensemble.combine import combine
from hdus_edge.ensemble.runtime import EnsembleRuntime
from hdus_edge.errors import (
    DataShapeError,
    EnsembleError,
    ExternalDataError,
    ProbeRunError,
)

# Insertion order on purpose unsorted: the runtime sorts by device id.
DEVICES = ("pi-d", "pi-a", "jetson-c", "pi-b")


@pytest.fixture(scope="module")
def main_bytes() -> bytes:
    return export_zoo("resnet-8", owner="me", seed=11)


@pytest.fixture(scope="module")
def seeds() -> dict[str, bytes]:
    archs = ("seed-cnn", "seed-mlp", "seed-cnn", "seed-mlp")
    return {d: export_zoo(a, owner=d, seed=20 + i) for i, (d, a) in enumerate(zip(DEVICES, archs))}


def _runtime(main: bytes, seeds: dict[str, bytes], ids: tuple[str, ...], **kwargs: object) -> EnsembleRuntime:
    rt = EnsembleRuntime(main, kwargs.pop("lam", 0.4), **kwargs)  # type: ignore[arg-type]
    for d in ids:
        rt.add_seed(d, seeds[d])
    return rt


@pytest.mark.parametrize("space", ["logits", "probs"])
@pytest.mark.parametrize("k", [0, 1, 4])
def test_fused_equals_sessions_equals_combine(main_bytes: bytes, seeds: dict[str, bytes], k: int, space: str) -> None:
    # Prepare
    ids = DEVICES[:k]
    x = batch(32, seed=k)
    fused = _runtime(main_bytes, seeds, ids, space=space, strategy="fused")
    per_member = _runtime(main_bytes, seeds, ids, space=space, strategy="sessions")
    # Execute
    a, b = fused.predict(x), per_member.predict(x)
    members = per_member.predict_members(x)
    ref = combine(members.main, [members.seeds[d] for d in sorted(ids)], 0.4, space)  # type: ignore[arg-type]
    # Assert
    assert fused.members() == per_member.members() == tuple(sorted(ids))
    assert a.shape == (32, 10) and a.dtype == np.float32
    assert np.abs(a - b).max() <= 1e-6 and np.abs(a - ref).max() <= 1e-6
    fused_members = fused.predict_members(x)
    assert np.abs(fused_members.main - members.main).max() <= 1e-6
    assert all(np.abs(fused_members.seeds[d] - members.seeds[d]).max() <= 1e-6 for d in ids)
    if space == "probs":
        assert np.allclose(a.sum(axis=1), 1.0, atol=1e-5)
    if k > 0:  # the seeds really take part
        assert np.abs(a - combine(members.main, [], 0.4, space)).max() > 1e-4  # type: ignore[arg-type]


def test_member_order_does_not_depend_on_arrival(main_bytes: bytes, seeds: dict[str, bytes]) -> None:
    x = batch(8)
    forward = _runtime(main_bytes, seeds, DEVICES)
    backward = _runtime(main_bytes, seeds, DEVICES[::-1])
    assert np.array_equal(forward.predict(x), backward.predict(x))
    assert forward.fused_model_bytes == backward.fused_model_bytes


@pytest.mark.parametrize("strategy", ["fused", "sessions"])
def test_remove_equals_never_added(main_bytes: bytes, seeds: dict[str, bytes], strategy: str) -> None:
    # Prepare
    x = batch(16, seed=3)
    rt = _runtime(main_bytes, seeds, DEVICES, strategy=strategy)
    never = _runtime(main_bytes, seeds, tuple(d for d in DEVICES if d != "pi-a"), strategy=strategy)
    # Execute
    removed = rt.remove("pi-a")
    # Assert
    assert removed and rt.members() == ("jetson-c", "pi-b", "pi-d")
    assert np.array_equal(rt.predict(x), never.predict(x))
    assert rt.remove("pi-a") is False  # held none: nothing changes


@pytest.mark.parametrize("strategy", ["fused", "sessions"])
def test_remove_leaves_no_bytes_of_the_seed(main_bytes: bytes, seeds: dict[str, bytes], strategy: str) -> None:
    # Prepare: the seed's weights, as raw bytes, must be findable before and gone after
    rt = _runtime(main_bytes, seeds, DEVICES, strategy=strategy)
    weights = [t.raw_data for t in onnx.load_from_string(seeds["pi-b"]).graph.initializer if len(t.raw_data) >= 64]
    assert weights and all(any(w in blob for blob in rt.held_bytes()) for w in weights)
    if strategy == "fused":
        assert rt.fused_model_bytes is not None and all(w in rt.fused_model_bytes for w in weights)
    # Execute
    rt.remove("pi-b")
    # Assert
    assert not any(w in blob for w in weights for blob in rt.held_bytes())
    assert "pi-b" not in rt.members() and "pi-b" not in rt.predict_members(batch(2)).seeds
    if strategy == "fused":
        assert b"pi-b" not in (rt.fused_model_bytes or b"")  # not even its id in the member list


@pytest.mark.parametrize("strategy", ["fused", "sessions"])
def test_a_seed_that_breaks_the_build_changes_nothing(main_bytes: bytes, seeds: dict[str, bytes], strategy: str) -> None:
    rt = _runtime(main_bytes, seeds, DEVICES[:2], strategy=strategy)
    x = batch(8)
    before, members = rt.predict(x), rt.members()
    nan_seed = tiny_model()
    nan_seed.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(np.full((64, 10), np.nan, np.float32), "W"))
    with pytest.raises(EnsembleError):  # 11 classes against the main model's 10
        rt.add_seed("bad", to_bytes(tiny_model(classes=11)))
    with pytest.raises(ProbeRunError, match="'nan' broke the ensemble"):
        rt.add_seed("nan", to_bytes(nan_seed))
    external = tiny_model()
    external.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
    with pytest.raises(ExternalDataError):
        rt.add_seed("ext", to_bytes(external), validate=True)
    assert rt.members() == members and np.array_equal(rt.predict(x), before)


def test_predict_never_fails_while_members_change(main_bytes: bytes, seeds: dict[str, bytes]) -> None:
    rt = _runtime(main_bytes, seeds, ())
    x = batch(4)
    errors: list[BaseException] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                assert rt.predict(x).shape == (4, 10)
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            for d in DEVICES:
                rt.add_seed(d, seeds[d])
            for d in DEVICES:
                rt.remove(d)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == [] and rt.members() == ()


def test_no_seeds_means_the_main_model_alone(main_bytes: bytes) -> None:
    x = batch(8)
    logits = EnsembleRuntime(main_bytes, 0.9, "logits").predict(x)
    probs = EnsembleRuntime(main_bytes, 0.9, "probs", strategy="sessions").predict(x)
    assert np.allclose(probs, combine(logits, [], 0.9, "probs"), atol=1e-6)


def test_a_seed_at_a_newer_opset_is_converted(main_bytes: bytes, seeds: dict[str, bytes]) -> None:
    newer = export_zoo("seed-cnn", owner="new", seed=99, opset=18)
    fused = _runtime(main_bytes, {**seeds, "new": newer}, ("new", "pi-a"))
    per_member = _runtime(main_bytes, {**seeds, "new": newer}, ("new", "pi-a"), strategy="sessions")
    x = batch(8)
    assert np.abs(fused.predict(x) - per_member.predict(x)).max() <= 1e-6


@pytest.mark.parametrize("space", ["logits", "probs"])
def test_int8_members_give_the_same_result_both_ways(main_bytes: bytes, seeds: dict[str, bytes], space: str) -> None:
    # Prepare: a static-int8 main model, one dynamic-int8 seed, one static-int8 seed, one fp32 seed
    from hdus_edge.onnx.quantize import quantize_int8

    calibration = batch(64, seed=7)
    main = quantize_int8(main_bytes, calibration=calibration).data
    mixed = {"pi-a": quantize_int8(seeds["pi-a"]).data, "pi-b": quantize_int8(seeds["pi-b"], calibration=calibration).data,
             "pi-d": seeds["pi-d"]}
    x = batch(16, seed=8)
    # Execute
    fused = EnsembleRuntime(main, 0.5, space)  # type: ignore[arg-type]
    per_member = EnsembleRuntime(main, 0.5, space, strategy="sessions")  # type: ignore[arg-type]
    fused.replace_all(mixed)
    per_member.replace_all(mixed)
    # Assert
    assert np.abs(fused.predict(x) - per_member.predict(x)).max() <= 1e-6


def test_bad_arguments(main_bytes: bytes) -> None:
    with pytest.raises(EnsembleError, match="lam"):
        EnsembleRuntime(main_bytes, 1.5)
    with pytest.raises(EnsembleError, match="space"):
        EnsembleRuntime(main_bytes, 0.5, "votes")  # type: ignore[arg-type]
    with pytest.raises(EnsembleError, match="strategy"):
        EnsembleRuntime(main_bytes, 0.5, strategy="magic")  # type: ignore[arg-type]
    rt = EnsembleRuntime(main_bytes, 0.5, intra_op_threads=1)
    with pytest.raises(DataShapeError, match=r"expected \[N, 1, 8, 8\]"):
        rt.predict(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(ValueError):
        rt.add_seed("", b"")
