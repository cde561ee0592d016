"""A small simulation end to end over amqtt and Mosquitto: HDUS exact with complete receipts, every
baseline forgets the device, and the report is written with the documented keys."""

import json

import pytest

from hdus_edge.sim.config import SimConfig
from hdus_edge.sim.runner import run_sim

TINY = SimConfig(
    archs=("resnet-8", "mobilenet-s", "resnet-8", "mobilenet-s"), train_epochs=2, distill_epochs=3,
    reference_size=200, test_size=200, forget=("dev-3",), budget="tiny", verify_baselines=True, workers=1,
)


@pytest.mark.parametrize("broker", ["amqtt", "mosquitto"])
def test_small_simulation_reports_exact_hdus_and_forgetting_baselines(tmp_path, broker, mosquitto_broker):
    # Prepare
    # On Mosquitto, two devices are forgotten at the same moment.
    cfg = TINY if broker == "amqtt" else SimConfig(**{**TINY.__dict__, "broker": mosquitto_broker.url,
                                                      "methods": ("isgd", "sisa-a", "dsgd"),
                                                      "forget": ("dev-2", "dev-3"), "forget_at_once": True})
    gone = set(cfg.forget)
    # Execute
    report = run_sim(cfg, tmp_path / "report")
    # Assert: files and keys.
    for name in ("report.md", "report.json", "accuracy.png", "forget_cost.png", "recovery.png", "devices.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    parsed = json.loads((tmp_path / "report" / "report.json").read_text())
    for method in parsed["methods"].values():
        assert {"acc_before", "acc_after", "forget_seconds", "exact"} <= set(method)
    assert {"max_abs_diff", "receipts", "mia_auc_before", "mia_auc_after", "mia_auc_never_joined"} <= set(parsed["hdus"])
    assert "settings" in parsed
    # HDUS: exact against the never-joined fleet, every holder's signed receipt, evidence verifies.
    h = report["hdus"]
    assert h["max_abs_diff"] <= 1e-6 and h["argmax_identical"]
    assert h["receipts_complete"] and len(h["receipts"]) == len(gone)
    for r in h["receipts"]:
        # Every remaining device held the seed (complete graph); the device forgotten alongside counts
        # as a holder only if the requester had not yet seen its own order.
        others = {"dev-0", "dev-1", "dev-2", "dev-3"} - {r["target"]}
        assert others - gone <= set(r["holders"]) <= others
        assert set(r["received"]) >= set(r["holders"])
    assert len(report["hdus"]["phase_seconds"]["forget"]) == (1 if cfg.forget_at_once else len(gone))
    assert h["evidence_problems"] == []
    # After forgetting, the ensemble is the never-joined one, so the attack sees the same thing.
    assert h["mia_auc_after"] == pytest.approx(h["mia_auc_never_joined"], abs=1e-9)
    # Baselines: the forgotten device is out everywhere; exact methods match a never-joined refit.
    for name, m in report["methods"].items():
        assert not gone & {d for d, v in m["per_device"].items() if v["after"] is not None}, name
        if name in ("isgd", "sisa-a", "dsgd", "fedunl-retrain"):
            assert m["exact"], name
    if "fedunl" in report["methods"]:
        assert report["methods"]["fedunl"]["exact"] is False
    assert report["methods"]["hdus"]["forget_epochs"] == 0
    # HDUS against each baseline: points, bytes and forgetting-cost ratios, in the report too.
    versus = report["comparison"]
    assert set(versus) == set(report["methods"]) - {"hdus"}
    sisa, hdus = report["methods"]["sisa-a"], report["methods"]["hdus"]
    assert versus["sisa-a"]["bytes_ratio"] == pytest.approx(sisa["train_bytes"] / hdus["train_bytes"])
    assert versus["sisa-a"]["bytes_ratio"] > 1  # full main models cost more to ship than seeds
    assert versus["dsgd"]["forget_speedup"] > 1
    assert "## HDUS against each baseline" in (tmp_path / "report" / "report.md").read_text()
