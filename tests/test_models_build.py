"""Every architecture builds for every supported input shape, seeded and deterministic."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hdus_edge.models import build_model, count_macs, list_architectures
from hdus_edge.models.layers import MIN_FEATURE_SIDE, halvings_allowed, stride_plan

NAMES = [spec.name for spec in list_architectures()]
SHAPES = [(1, 8, 8), (1, 16, 16), (1, 28, 28), (1, 32, 32)]


def _pooled_map_side(model: nn.Module, shape: tuple[int, int, int]) -> int | None:
    """Smaller side of the feature map entering global average pooling (None for the MLP seed)."""
    seen: list[int] = []
    pools = [m for m in model.modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    handles = [p.register_forward_hook(lambda _m, inp, _o: seen.append(min(inp[0].shape[-2:]))) for p in pools]
    with torch.no_grad():
        model(torch.zeros(1, *shape))
    for handle in handles:
        handle.remove()
    return seen[0] if seen else None


@pytest.mark.parametrize("shape", SHAPES + [(1, 8, 32), (1, 13, 11)])
@pytest.mark.parametrize("name", NAMES)
def test_builds_and_outputs_logits_per_sample(name: str, shape: tuple[int, int, int]) -> None:
    # Prepare
    model = build_model(name, shape, num_classes=7, seed=1)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
    # Execute
    with torch.no_grad():
        logits = model(x)
    # Assert
    assert not model.training
    assert logits.shape == (3, 7) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    side = _pooled_map_side(model, shape)
    assert side is None or side >= min(MIN_FEATURE_SIDE, min(shape[1:]))


@pytest.mark.parametrize("name", NAMES)
def test_larger_inputs_get_more_downsampling(name: str) -> None:
    side_8 = _pooled_map_side(build_model(name, (1, 8, 8)), (1, 8, 8))
    side_28 = _pooled_map_side(build_model(name, (1, 28, 28)), (1, 28, 28))
    if side_8 is not None:
        assert side_8 == 4 and side_28 <= 7


def test_halvings_and_stride_plan() -> None:
    assert [halvings_allowed(s) for s in (3, 7, 8, 15, 16, 28, 32, 64)] == [0, 1, 1, 2, 2, 3, 3, 4]
    assert stride_plan((1, 8, 8), 4, priority=(2, 3, 0)) == [1, 1, 2, 1]
    assert stride_plan((1, 28, 28), 4, priority=(2, 3, 0)) == [2, 1, 2, 2]
    assert stride_plan((1, 32, 8), 4, priority=(2, 3, 0)) == [1, 1, 2, 1]  # the short side decides
    with pytest.raises(ValueError):
        stride_plan((1, 8, 8), 3, priority=(1, 1))


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights_other_seed_other_weights(name: str) -> None:
    # Prepare
    rng_before = torch.random.get_rng_state()
    # Execute
    a = build_model(name, (1, 8, 8), seed=3).state_dict()
    b = build_model(name, (1, 8, 8), seed=3).state_dict()
    c = build_model(name, (1, 8, 8), seed=4).state_dict()
    # Assert
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched


@pytest.mark.parametrize("name", NAMES)
def test_training_step_is_bitwise_deterministic_in_deterministic_mode(name: str) -> None:
    def one_step() -> list[torch.Tensor]:
        model = build_model(name, (1, 8, 8), seed=5).train()
        x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        y = torch.arange(8) % 10
        nn.functional.cross_entropy(model(x), y).backward()
        return [p.grad.clone() for p in model.parameters()]

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)  # raises on any op without a deterministic kernel
    try:
        first, second = one_step(), one_step()
    finally:
        torch.use_deterministic_algorithms(previous)
    assert all(torch.equal(g1, g2) for g1, g2 in zip(first, second))
    assert any(g.abs().sum() > 0 for g in first)


@pytest.mark.parametrize("name", NAMES)
def test_eval_output_of_a_sample_does_not_depend_on_its_batch(name: str) -> None:
    model = build_model(name, (1, 16, 16))
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batched, alone = model(x)[1], model(x[1:2])[0]
    assert torch.allclose(batched, alone, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "classes"),
    [((1, 8), 10), ((0, 8, 8), 10), ((1, 8, 8.0), 10), ((1, 8, 8), 1), ((1, 8, 8), True)],
)
def test_bad_shapes_and_class_counts_are_programming_errors(shape: tuple, classes: int) -> None:
    with pytest.raises(ValueError):
        build_model("seed-cnn", shape, classes)  # type: ignore[arg-type]


def test_mac_budgets_at_28x28() -> None:
    macs = {name: count_macs(build_model(name), (1, 28, 28)) for name in NAMES}
    assert macs["mobilenet-s"] < macs["mobilenet-m"] < macs["mobilenet-l"] <= 7_500_000  # <= 15 MFLOPs
    assert macs["resnet-8"] < macs["resnet-20"] < macs["resnet-50"] <= 20_000_000  # <= 40 MFLOPs
    assert max(macs["seed-cnn"], macs["seed-mlp"]) < macs["mobilenet-s"]


def test_count_macs_is_exact_on_a_known_model() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    assert count_macs(model, (1, 8, 8)) == 4 * 8 * 8 * 9 + 256 * 10
    assert model.training  # mode restored
