"""The forget-samples bench at toy size: its rows carry the promised keys and every row is exact."""

from __future__ import annotations

from hdus_edge.bench.forget_samples import (
    ForgetSamplesBenchConfig,
    run_forget_samples_bench,
)
from hdus_edge.sim.retrain_cost import fleet_retrain_seconds


def test_bench_rows_are_exact_and_complete():
    # Prepare
    cfg = ForgetSamplesBenchConfig(data="digits", devices=3, client_size=None, reference_size=150, test_size=150,
                                   epochs=1, distill_epochs=1, samples=(1, 3), shards=(1, 2), baselines=("dsgd",))
    # Execute
    result = run_forget_samples_bench(cfg, fleet_retrain=fleet_retrain_seconds)
    # Assert
    rows = result["rows"]
    assert [(r["samples"], r["shards"]) for r in rows] == [(1, 1), (3, 1), (1, 2), (3, 2)]
    for r in rows:
        assert {"samples", "shards", "exact", "seconds", "speedup_vs_fleet_retrain", "acc_before", "acc_after"} <= set(r)
        assert r["exact"] is True and r["complete"] is True and r["seconds"] > 0
        assert r["speedup_vs_fleet_retrain"]["dsgd"] > 0
    assert result["fleet_retrain_seconds"]["dsgd"] > 0 and set(result["sharding_accuracy_cost"]) == {"1", "2"}
