"""Registry contract: names, roles, sizes, parameter budgets, errors."""

from __future__ import annotations

import pytest

from hdus_edge.errors import UnknownArchitectureError
from hdus_edge.models import (
    build_model,
    count_parameters,
    get_spec,
    list_architectures,
    param_count,
    resolve_arch,
)

MAIN_NAMES = ["mobilenet-s", "mobilenet-m", "mobilenet-l", "resnet-8", "resnet-20", "resnet-50"]
SEED_NAMES = ["seed-cnn", "seed-cnn-wide", "seed-mlp"]
SHAPES = [(1, 8, 8), (1, 16, 16), (1, 28, 28), (1, 32, 32)]


def test_registry_lists_mains_and_seeds_by_role() -> None:
    assert [s.name for s in list_architectures()] == MAIN_NAMES + SEED_NAMES
    assert [s.name for s in list_architectures("main")] == MAIN_NAMES
    assert [s.name for s in list_architectures("seed")] == SEED_NAMES
    for spec in list_architectures():
        assert spec.family in ("mobilenetv2", "resnet", "seed")
        assert (spec.role == "seed") == (spec.family == "seed")
        assert spec.size in (("tiny",) if spec.role == "seed" else ("S", "M", "L"))


def test_list_architectures_rejects_unknown_role() -> None:
    with pytest.raises(ValueError, match="role"):
        list_architectures("teacher")


@pytest.mark.parametrize("name", MAIN_NAMES + SEED_NAMES)
def test_registered_param_count_matches_built_model(name: str) -> None:
    # Prepare
    spec = get_spec(name)
    # Execute
    built = count_parameters(build_model(name))
    # Assert
    assert built == spec.params == param_count(name)
    assert f"{spec.params / 1000:.1f}k params" in spec.description


def test_sizes_grow_within_each_family() -> None:
    # "noticeably" smaller: each size at least doubles the one below
    for family in ("mobilenetv2", "resnet"):
        small, medium, large = (get_spec(resolve_arch(size, family)).params for size in ("S", "M", "L"))
        assert small < medium < large
    small, medium, large = (get_spec(f"mobilenet-{s}").params for s in "sml")
    assert 2 * small < medium and 2 * medium < large


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
def test_seed_cnn_holds_4k_to_10k_parameters(shape: tuple[int, int, int]) -> None:
    assert 4_000 <= param_count("seed-cnn", shape, 10) <= 10_000


@pytest.mark.parametrize("shape", SHAPES + [(3, 32, 32)])
def test_every_seed_fits_64_kib_in_fp32_and_stays_well_below_the_smallest_main(shape: tuple[int, int, int]) -> None:
    # The seed budget (issue 15): 64 KiB of fp32 weights, and under half of any main model;
    # seed-cnn, the paper's size, stays at a fifth.
    smallest_main = min(param_count(s.name, shape, 10) for s in list_architectures("main"))
    for spec in list_architectures("seed"):
        params = param_count(spec.name, shape, 10)
        assert params * 4 <= 64 * 1024 and params * 2 <= smallest_main, (spec.name, shape, params)
    assert param_count("seed-cnn", shape, 10) * 5 <= smallest_main


def test_unknown_name_raises_and_lists_known_names() -> None:
    with pytest.raises(UnknownArchitectureError) as info:
        get_spec("mobilenet-xl")
    message = str(info.value)
    assert "mobilenet-xl" in message
    for name in MAIN_NAMES + SEED_NAMES:
        assert name in message
    assert info.value.exit_code == 2
    with pytest.raises(UnknownArchitectureError):
        build_model("vgg-16")


def test_names_are_case_insensitive() -> None:
    assert get_spec(" MobileNet-S ").name == "mobilenet-s"


def test_resolve_arch_maps_sizes_and_passes_names_through() -> None:
    assert [resolve_arch(s) for s in ("S", "M", "L")] == ["mobilenet-s", "mobilenet-m", "mobilenet-l"]
    assert [resolve_arch(s, "resnet") for s in ("s", "m", "l")] == ["resnet-8", "resnet-20", "resnet-50"]
    assert resolve_arch("tiny", "seed") == "seed-cnn"
    assert resolve_arch("resnet-20") == "resnet-20"
    assert resolve_arch("seed-mlp", "resnet") == "seed-mlp"


def test_resolve_arch_rejects_unknown_names_families_and_sizes() -> None:
    with pytest.raises(UnknownArchitectureError, match="mobilenet-s"):
        resolve_arch("mobilenet-xs")
    with pytest.raises(UnknownArchitectureError, match="mobilenetv2"):
        resolve_arch("S", "vgg")
    with pytest.raises(UnknownArchitectureError, match="no size"):
        resolve_arch("L", "seed")


def test_torch_free_name_table_matches_the_registry():
    from hdus_edge.arch_names import ARCH_ROLES
    from hdus_edge.models import list_architectures

    assert ARCH_ROLES == {spec.name: spec.role for spec in list_architectures()}
