"""The torch-free static cost of an ONNX graph, and the compute budget it enforces (issue 14, attack 5)."""

from __future__ import annotations

import onnx
import pytest
from onnx_testkit import export_zoo

from hdus_edge.arch_names import ARCH_ROLES
from hdus_edge.errors import ComputeBudgetError
from hdus_edge.onnx.checks import LoadPolicy, ModelContract, check_onnx, find_problems
from hdus_edge.onnx.cost import ComputeBudget, GraphCost, check_budget, graph_cost
from hdus_edge.reliability.onnx_mutants import (
    heavy_seed_model,
    memory_bomb_model,
    pooling_bomb_model,
)

CONTRACT = ModelContract(8, 8, 10)


@pytest.mark.parametrize("arch", sorted(ARCH_ROLES))
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_macs_agree_with_the_torch_count_on_every_zoo_architecture(arch, shape):
    """Convs and linear layers exactly as ``models.flops.count_macs`` counts them; the rest
    (activations, adds, pooling: one operation per element) adds at most 25%."""
    from hdus_edge.models import build_model
    from hdus_edge.models.flops import count_macs

    cost = graph_cost(onnx.load_from_string(export_zoo(arch, shape=shape)))
    torch_macs = count_macs(build_model(arch, shape, 10, seed=0), shape)
    assert cost.macs == torch_macs
    assert 0 < cost.ops <= 0.25 * torch_macs


def test_params_count_initializers_and_constants():
    cost = graph_cost(onnx.load_from_string(export_zoo("seed-mlp")))
    assert cost.params == 4810  # nn.Linear 64->64->10 with biases: 64*64+64 + 64*10+10


def test_the_heavy_seed_costs_thousands_of_zoo_seeds_and_is_refused():
    seed = graph_cost(onnx.load_from_string(export_zoo("seed-cnn")))
    heavy = graph_cost(onnx.load_from_string(heavy_seed_model()))
    assert heavy.macs > 1000 * seed.macs
    budget = ComputeBudget(seed, 4.0)
    with pytest.raises(ComputeBudgetError, match="MACs and .* other operations per sample"):
        check_budget(onnx.load_from_string(heavy_seed_model()), budget)
    with pytest.raises(ComputeBudgetError):
        check_onnx(heavy_seed_model(), CONTRACT, LoadPolicy(compute_budget=budget))
    assert any(isinstance(p, ComputeBudgetError) for p in
               find_problems(onnx.load_from_string(heavy_seed_model()), CONTRACT, LoadPolicy(compute_budget=budget)))


def test_a_seed_of_the_fleets_architecture_fits_its_budget_and_a_padded_conv_bomb_does_not():
    budget = ComputeBudget(graph_cost(onnx.load_from_string(export_zoo("seed-cnn", seed=1))), 4.0)
    check_onnx(export_zoo("seed-cnn", seed=2), CONTRACT, LoadPolicy(compute_budget=budget))
    with pytest.raises(ComputeBudgetError):
        check_onnx(memory_bomb_model(), CONTRACT, LoadPolicy(compute_budget=budget))


def test_parameters_alone_can_break_the_budget():
    budget = ComputeBudget(GraphCost(macs=10**12, params=1000), 4.0)
    with pytest.raises(ComputeBudgetError, match="parameters"):
        check_budget(onnx.load_from_string(export_zoo("seed-cnn")), budget)


def test_work_other_than_macs_counts_too_a_weightless_pooling_bomb_is_refused():
    cost = graph_cost(onnx.load_from_string(pooling_bomb_model()))
    assert cost.macs < 1000 and cost.ops > 10**9
    budget = ComputeBudget(graph_cost(onnx.load_from_string(export_zoo("seed-cnn"))), 4.0)
    with pytest.raises(ComputeBudgetError):
        check_onnx(pooling_bomb_model(), CONTRACT, LoadPolicy(compute_budget=budget))


def test_a_lenient_count_reports_what_it_can():
    """``inspect`` uses the lenient count: a model whose shapes do not infer still gets a report."""
    model = onnx.load_from_string(export_zoo("seed-cnn"))
    assert graph_cost(model, strict=False) == graph_cost(model)
