"""A small simulation end to end over amqtt and Mosquitto: HDUS exact with complete receipts, every
baseline forgets the device, and the report is written with the documented keys."""

import json

import pytest

from hdus_edge.cli.app import run
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
    # HDUS: exact against a never-joined fleet retrained from scratch: (a) every remaining model
    # bit-identical, (b) running agents' outputs equal; every holder's signed receipt, evidence verifies.
    h = report["hdus"]
    assert h["exact"] and h["exact_models"] and h["models_check"]["differing"] == []
    assert set(h["models_check"]["devices"]) == {"dev-0", "dev-1", "dev-2", "dev-3"} - gone
    assert h["max_abs_diff"] <= 1e-6 and h["argmax_identical"]
    assert h["receipts_complete"] and len(h["receipts"]) == len(gone)
    for r in h["receipts"]:
        # Every remaining device held the seed (complete graph); the device forgotten alongside counts
        # as a holder only if the requester had not yet seen its own order, and then either answers
        # or is released by that order (the evidence carries it).
        others = {"dev-0", "dev-1", "dev-2", "dev-3"} - {r["target"]}
        assert others - gone <= set(r["holders"]) <= others
        assert set(r["received"]) | set(r["released"]) >= set(r["holders"]) and set(r["released"]) <= gone
    assert len(report["hdus"]["phase_seconds"]["forget"]) == (1 if cfg.forget_at_once else len(gone))
    assert h["evidence_problems"] == []
    # The evidence files are in the out folder, and an auditor verifies them with the admin's key only.
    assert len(h["evidence_files"]) == len(gone)
    for name in h["evidence_files"]:
        code, out = _verify(tmp_path / "report" / name, tmp_path / "report" / "evidence" / "admin.pub")
        assert code == 0 and out["verified"] and out["complete"] and out["target"] in gone
    # Membership inference for each forgotten device; after forgetting, the ensembles are the
    # never-joined ones, so the attack sees the same thing.
    for target in gone:
        mia = h["mia"][target]
        for key in ("target_main", "target_seed", "before", "after", "never_joined"):
            assert mia[key]["ci_low"] <= mia[key]["auc"] <= mia[key]["ci_high"], key
        assert mia["after"]["auc"] == pytest.approx(mia["never_joined"]["auc"], abs=1e-9)
    assert h["mia_auc_after"] == pytest.approx(h["mia_auc_never_joined"], abs=1e-9)
    # Baselines: the forgotten device is out everywhere; exact methods match a never-joined refit.
    for name, m in report["methods"].items():
        assert not gone & {d for d, v in m["per_device"].items() if v["after"] is not None}, name
        if name in ("isgd", "sisa-a", "dsgd", "fedunl-retrain"):
            assert m["exact"], name
        # Every exact claim here was checked against a never-joined run (verify_baselines is on).
        assert m["exact_basis"] == "retrained", name
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


def _verify(evidence, admin_pub):
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = run(["verify", str(evidence), "--admin-pub", str(admin_pub), "--json"])
    return code, json.loads(buffer.getvalue())
