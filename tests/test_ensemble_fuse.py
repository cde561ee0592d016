"""The fused ensemble graph: prefixed names, packing of same-architecture seeds, shape errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from onnx_testkit import batch, export_zoo, tiny_model

from hdus_edge.ensemble.combine import combine
from hdus_edge.ensemble.fuse import (
    MAIN_PREFIX,
    OUTPUT,
    fuse_ensemble,
    member_output,
    seed_prefix,
)
from hdus_edge.ensemble.pack import signature
from hdus_edge.errors import EnsembleError
from hdus_edge.onnx.session import make_session


@pytest.fixture(scope="module")
def members() -> tuple[onnx.ModelProto, dict[str, onnx.ModelProto]]:
    main = onnx.load_from_string(export_zoo("mobilenet-s", owner="me", seed=1))
    archs = ["seed-cnn", "seed-mlp", "seed-cnn", "seed-cnn", "seed-mlp"]
    seeds = {f"dev-{i}": onnx.load_from_string(export_zoo(a, owner=f"dev-{i}", seed=30 + i)) for i, a in enumerate(archs)}
    return main, seeds


def _run(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
    return make_session(model.SerializeToString()).run(names, {"input": x})


@pytest.mark.parametrize("space", ["logits", "probs"])
def test_packed_and_unpacked_graphs_agree_with_combine(members, space: str) -> None:  # noqa: ANN001
    # Prepare
    main, seeds = members
    x = batch(24, seed=4)
    outs = [OUTPUT, member_output(MAIN_PREFIX)] + [member_output(seed_prefix(i)) for i in range(len(seeds))]
    # Execute
    packed = fuse_ensemble(main, seeds, 0.3, space, member_outputs=True, pack=True)  # type: ignore[arg-type]
    plain = fuse_ensemble(main, seeds, 0.3, space, member_outputs=True, pack=False)  # type: ignore[arg-type]
    got_p, got_u = _run(packed, x, outs), _run(plain, x, outs)
    # Assert: the same member logits, and the same ensemble as combine() over them
    for a, b in zip(got_p, got_u):
        assert np.abs(a - b).max() <= 1e-6
    assert np.abs(got_u[0] - combine(got_u[1], got_u[2:], 0.3, space)).max() <= 1e-6  # type: ignore[arg-type]
    separately = [make_session(seeds[d].SerializeToString()).run(None, {"input": x})[0] for d in sorted(seeds)]
    assert all(np.abs(s - m).max() <= 1e-6 for s, m in zip(separately, got_p[2:]))
    # packing really happened: two groups (cnn x3, mlp x2), fewer Conv nodes
    convs = lambda m: Counter(n.op_type for n in m.graph.node)["Conv"]  # noqa: E731
    assert convs(packed) < convs(plain)
    assert Counter(n.op_type for n in packed.graph.node)["Split"] == 2


def test_names_are_prefixed_per_member_and_the_graph_checks(members) -> None:  # noqa: ANN001
    main, seeds = members
    for pack in (False, True):
        fused = fuse_ensemble(main, seeds, 0.5, "probs", pack=pack)  # type: ignore[arg-type]
        onnx.checker.check_model(fused, full_check=True)
        produced = [o for n in fused.graph.node for o in n.output]
        assert len(produced) == len(set(produced))  # no name defined twice
        assert all(n.name for n in fused.graph.node) and len({n.name for n in fused.graph.node}) == len(fused.graph.node)
        prefixes = (MAIN_PREFIX, "s0", "p0", "ens/")
        assert all(t.name.startswith(prefixes) for t in fused.graph.initializer)
        assert [i.name for i in fused.graph.input] == ["input"]


def test_signature_groups_same_architecture_only(members) -> None:  # noqa: ANN001
    _, seeds = members
    sigs = {d: signature(m) for d, m in seeds.items()}
    assert sigs["dev-0"] == sigs["dev-2"] == sigs["dev-3"] and sigs["dev-1"] == sigs["dev-4"]
    assert sigs["dev-0"] != sigs["dev-1"] and None not in sigs.values()


def test_a_member_with_other_classes_is_refused(members) -> None:  # noqa: ANN001
    main, seeds = members
    with pytest.raises(EnsembleError, match="dev-x"):
        fuse_ensemble(main, {**seeds, "dev-x": tiny_model(classes=11)}, 0.5, "probs")


def test_zero_lam_or_no_seeds_is_the_main_model(members) -> None:  # noqa: ANN001
    main, seeds = members
    x = batch(4)
    main_logits = make_session(main.SerializeToString()).run(None, {"input": x})[0]
    for fused in (fuse_ensemble(main, {}, 0.5, "logits"), fuse_ensemble(main, seeds, 0.0, "logits")):
        assert np.array_equal(_run(fused, x, [OUTPUT])[0], main_logits)
