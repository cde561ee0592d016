"""The studies beyond the paper: their pure parts, and each study end to end at quick settings on a
real broker (the figures in the report come from the default settings, not these)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from hdus_edge.cli.app import app
from hdus_edge.data import Dataset, load_digits, split_fleet
from hdus_edge.errors import ConfigError
from hdus_edge.learning.distill import DistillConfig
from hdus_edge.learning.inprocess import (
    DeviceSpec,
    LearningConfig,
    distill_device,
    train_device,
)
from hdus_edge.learning.train import TrainConfig
from hdus_edge.sim.report import add_study
from hdus_edge.sim.studies import run_study, study_config
from hdus_edge.sim.studies.common import growth_exponent
from hdus_edge.sim.studies.poisoning import flip_labels
from hdus_edge.sim.studies.reference import ReferenceStudyConfig, reference_variants

# --- pure parts ---------------------------------------------------------------------------------


@given(st.lists(st.integers(0, 9), min_size=1, max_size=50))
@settings(max_examples=50, deadline=None)
def test_label_flips_move_every_label_and_reverse_is_an_involution(labels: list[int]) -> None:
    ds = Dataset(x=np.zeros((len(labels), 1, 2, 2), np.float32), y=np.array(labels), num_classes=10)
    rev, shift = flip_labels(ds, "reverse"), flip_labels(ds, "shift")
    assert np.array_equal(flip_labels(rev, "reverse").y, ds.y)
    assert np.all(shift.y != ds.y) and np.all((shift.y - ds.y) % 10 == 1)
    assert np.array_equal(rev.y, 9 - ds.y)
    assert rev.x is ds.x  # only the labels change


def test_growth_exponent_reads_linear_and_quadratic_growth() -> None:
    assert growth_exponent([10, 30, 100], [20, 60, 200]) == pytest.approx(1.0)
    assert growth_exponent([10, 30, 100], [1, 9, 100]) == pytest.approx(2.0)
    assert np.isnan(growth_exponent([10], [5]))
    assert np.isnan(growth_exponent([10, 30], [None, 3]))  # type: ignore[list-item]


def test_reference_variants_are_stratified_subsets_of_the_public_split_and_seeded_noise() -> None:
    data = split_fleet(load_digits(), 3, reference_size=400, test_size=200, seed=0)
    cfg = ReferenceStudyConfig(public_sizes=(100, 400), noise_size=0, seed=3)
    variants = reference_variants(data, cfg)
    assert list(variants) == ["public-100", "public-400", "noise-400"]
    whole = {row.tobytes() for row in data.reference.x}
    small = variants["public-100"]
    assert len(small) == 100 and all(row.tobytes() in whole for row in small.x)
    assert small.class_counts().min() >= 9  # stratified: every class present, about 10 each
    assert len(variants["public-400"]) == 400
    noise = variants["noise-400"]
    assert len(noise) == 400 and not noise.labeled
    assert np.array_equal(noise.x, reference_variants(data, cfg)["noise-400"].x)  # same seed, same bytes


def test_distilling_again_on_the_same_reference_reproduces_the_seed_and_keeps_the_main_model() -> None:
    data = split_fleet(load_digits(), 3, reference_size=200, test_size=100, seed=1)
    cfg = LearningConfig(train=TrainConfig(epochs=1), distill=DistillConfig(epochs=1))
    device = train_device(DeviceSpec("a", "resnet-8", seed=7), data.clients[0], data.reference, cfg)
    again = distill_device(device, data.clients[0], data.reference, cfg)
    assert again.main is device.main
    for p, q in zip(device.seed_model.state_dict().values(), again.seed_model.state_dict().values()):
        assert torch.equal(p, q)
    other = distill_device(device, data.clients[0], data.reference.subset(np.arange(50)), cfg)
    assert other.distill_report.reference_samples == 50
    assert not all(torch.equal(p, q) for p, q in zip(device.seed_model.state_dict().values(),
                                                     other.seed_model.state_dict().values()))


def test_study_config_rejects_unknown_studies_and_settings() -> None:
    with pytest.raises(ConfigError, match="unknown study"):
        study_config("nope")
    with pytest.raises(ConfigError, match="no setting"):
        study_config("scale", colour="red")
    with pytest.raises(ConfigError, match="forgets"):
        run_study("scale", study_config("scale", quick=True, forgets=5))
    assert study_config("reference", quick=True, seed=4).seed == 4


def test_a_study_becomes_a_section_of_an_existing_report(tmp_path) -> None:
    (tmp_path / "report.json").write_text(json.dumps({"studies": {}, "other": 1}))
    result = {"settings": {"archs": ["a", "b"], "dataset": "digits", "partition": "iid", "client_size": 10,
                           "test_size": 5, "lam": 0.5, "train_epochs": 1, "distill_epochs": 1, "noise_kind": "mixed",
                           "seed": 0},
              "main_alone": {"local": 0.5, "global": 0.4},
              "variants": {"public-10": {"samples": 10, "kind": "public", "distill_seconds_total": 1.0,
                                         "phase_seconds": 1.0,
                                         "mean": {"agreement_local": 0.9, "agreement_global": 0.8, "seed_acc_global": 0.7,
                                                  "ensemble_local": 0.6, "ensemble_global": 0.55}}}}
    add_study(tmp_path, "reference", result)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["other"] == 1 and report["studies"]["reference"]["main_alone"]["global"] == 0.4
    md = (tmp_path / "report.md").read_text()
    assert "## Reference set" in md and "| public-10 | 10 | 90.0% | 80.0% | 70.0% | 60.0% | 55.0% |" in md
    assert (tmp_path / "study_reference.png").stat().st_size > 1000


# --- end to end at quick settings ------------------------------------------------------------


def test_poisoning_study_measures_the_damage_and_forgetting_removes_it_exactly(embedded_broker) -> None:
    cfg = study_config("poisoning", quick=True, broker=embedded_broker)
    r = run_study("poisoning", cfg)
    f = r["forget"]
    assert f["exact"] and f["exact_models"] and f["models_differing"] == []
    assert f["max_abs_diff_vs_never_joined"] <= 1e-6 and f["argmax_identical"]
    assert f["receipts"] >= f["holders"] == 3 and not f["evidence_problems"]
    assert r["settings"]["neighbours"] == ["dev-0", "dev-2", "dev-3"]
    # The poisoned seed learned the attacker's labels; the honest twin did not.
    assert r["seed_attack_success"]["poisoned"] > r["seed_attack_success"]["honest"]
    # The agents' ONNX ensembles (before/after) agree with the in-process torch fleet of the lam sweep.
    at_half = next(row for row in r["lam_sweep"] if row["lam"] == 0.5)
    assert r["mean"]["poisoned"]["global"] == pytest.approx(at_half["poisoned"], abs=1e-9)
    assert r["mean"]["after_forget"]["global"] == pytest.approx(at_half["after_forget"], abs=1e-9)
    assert r["mean"]["clean"]["global"] == pytest.approx(at_half["clean"], abs=1e-9)
    by_topology = {row["topology"]: row for row in r["topology_sweep"]}
    assert set(by_topology) == {"complete", "random-regular", "ring"}
    assert by_topology["ring"]["seeds_per_neighbour"] == 2 and by_topology["complete"]["seeds_per_neighbour"] == 3
    assert by_topology["complete"]["poisoned"] == pytest.approx(at_half["poisoned"], abs=1e-12)
    assert r["drop_global"] == pytest.approx(r["mean"]["clean"]["global"] - r["mean"]["poisoned"]["global"])


def test_scale_study_counts_one_seed_message_per_directed_edge_on_mosquitto(tmp_path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["sim", "study", "scale", "--quick", "--broker", "mosquitto", "--out", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert [(row["devices"], row["degree"]) for row in r["rows"]] == [(4, 2), (4, 3), (6, 2), (6, 3)]
    for row in r["rows"]:
        assert row["seed_messages"] == row["devices"] * row["degree"]
        assert row["unlearn_incomplete"] == 0 and row["receipts"] >= row["holders"] == row["degree"]
        assert row["propagation_s"] > 0 and row["publish_bytes"] > row["seed_messages"] * 10_000  # seeds are ~22 KiB
    assert r["growth"]["exponent_in_n"]["2"]["publish_messages"] == pytest.approx(1.0, abs=0.05)
    assert set(r["growth"]["degree_ratio"]) == {"4", "6"}
    assert r["settings"]["processes"] == "one per device" and all(row["processes"] == "one per device" for row in r["rows"])
    assert all(row["rss_per_agent_mib"] > 0 for row in r["rows"])  # measured on the agent processes
    assert "## Scale" in (out / "report.md").read_text() and "one process per agent" in (out / "report.md").read_text()


def test_scale_study_can_keep_its_agents_in_one_process(tmp_path) -> None:
    cfg = study_config("scale", quick=True, sizes=(4,), degrees=(2,), processes=False)
    r = run_study("scale", cfg)
    assert r["settings"]["processes"] == "one" and [row["processes"] for row in r["rows"]] == ["one"]
    assert r["rows"][0]["seed_messages"] == 8 and r["rows"][0]["unlearn_incomplete"] == 0


def test_reference_study_keeps_the_main_models_and_varies_only_the_seeds() -> None:
    cfg = replace(study_config("reference", quick=True), public_sizes=(60, 200))
    r = run_study("reference", cfg)
    assert list(r["variants"]) == ["public-60", "public-200", "noise-200"]
    for name, v in r["variants"].items():
        assert v["samples"] == int(name.split("-")[1])
        assert v["distill_steps"] == cfg.distill_epochs * -(-v["samples"] // 64)  # batch 64
        for key in ("agreement_local", "agreement_global", "seed_acc_global", "ensemble_local", "ensemble_global"):
            assert 0.0 <= v["mean"][key] <= 1.0
    seeds = [tuple(v["per_device"]["dev-0"].values()) for v in r["variants"].values()]
    assert len(set(seeds)) == 3  # every reference gives a different seed


def test_a_simulation_run_keeps_the_studies_already_in_its_report_folder(tmp_path) -> None:
    from hdus_edge.sim.report import existing_studies

    assert existing_studies(tmp_path) == {}
    (tmp_path / "report.json").write_text("{not json")
    assert existing_studies(tmp_path) == {}
    (tmp_path / "report.json").write_text(json.dumps({"studies": {"scale": {"rows": []}}}))
    assert existing_studies(tmp_path) == {"scale": {"rows": []}}


def test_traffic_meter_waits_for_the_expected_messages_before_a_snapshot(embedded_broker) -> None:
    from hdus_edge.protocol.topics import Topics
    from hdus_edge.sim.hdus_run import TrafficMeter
    from hdus_edge.transport.mqtt import MqttTransport

    meter = TrafficMeter(embedded_broker, "metered").start()
    sender = MqttTransport(embedded_broker, "metered-sender", clean_session=True)
    try:
        sender.connect()
        topics = Topics("metered")
        for k in range(3):
            sender.publish(topics.unlearn(f"dev-{k}"), b"x" * 10, wait=False)
        meter.settle(quiet_s=0.2, max_s=20, unlearn=3)
        assert meter.snapshot() == {"messages": {"unlearn": 3}, "bytes": {"unlearn": 30}}
    finally:
        sender.close()
        meter.close()
