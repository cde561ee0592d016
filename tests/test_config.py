"""Profiles and fleet configs: every shipped profile validates; every bad file gets one clear error."""

from pathlib import Path

import pytest

from hdus_edge.config import (
    DataSection,
    FleetConfig,
    FleetSection,
    list_profiles,
    load_fleet_config,
    load_profile,
    profiles_dir,
    to_toml,
)
from hdus_edge.errors import ConfigError, UnknownProfileError

EXPECTED = {
    "raspberry-pi-zero-2w",
    "raspberry-pi-4",
    "raspberry-pi-5",
    "jetson-nano",
    "jetson-orin-nano",
    "generic-x86_64",
}


def test_every_device_class_has_a_valid_profile():
    assert EXPECTED <= set(list_profiles())
    for name in EXPECTED:
        p = load_profile(name)
        assert p.name == name
        assert p.runtime.providers[-1] == "CPUExecutionProvider"


def test_jetson_profiles_put_gpu_providers_first():
    for name in ("jetson-nano", "jetson-orin-nano"):
        assert load_profile(name).runtime.providers[0] in ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(UnknownProfileError, match="unknown profile 'pi-9'") as err:
        load_profile("pi-9")
    assert "raspberry-pi-4" in str(err.value)


def _profile_with(tmp_path: Path, old: str, new: str) -> Path:
    text = (profiles_dir() / "raspberry-pi-4.toml").read_text()
    assert old in text
    path = tmp_path / "custom.toml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(
    "old,new,match",
    [
        ("batch_size = 32", "batch_size = 32\nbatchsize = 3", r"unknown key 'batchsize'"),
        ("epochs = 30", 'epochs = "thirty"', r"train\.epochs: expected int"),
        ("epochs = 30", "epochs = 0", r"train\.epochs.*>= 1"),
        ("intra_op_threads = 4", "intra_op_threads = 500", r"intra_op_threads"),
        ('main_arch = "mobilenet-m"', 'main_arch = "vgg-99"', r"model\.main_arch.*vgg-99"),
        ('main_arch = "mobilenet-m"', 'main_arch = "seed-cnn"', r"seed architecture, not a main"),
        ('providers = ["CPUExecutionProvider"]', 'providers = ["CUDAExecutionProvider"]', r"CPUExecutionProvider"),
        ("[limits]", "[limitz]", r"unknown key 'limitz'"),
        ("seed_compute_multiple = 4.0", "seed_compute_multiple = 0.5", r"limits\.seed_compute_multiple"),
        ("parked_per_topic = 8", "parked_per_topic = 0", r"limits\.parked_per_topic"),
        ("parked_total_bytes = 4194304", "parked_total_bytes = 10", r"limits\.parked_total_bytes"),
        ("audit_rate_per_s = 20.0", "audit_rate_per_s = 0.0", r"limits\.audit_rate_per_s"),
        ("probe_run_ms = 1000.0", "probe_run_ms = 0.0", r"limits\.probe_run_ms"),
    ],
)
def test_bad_profile_names_file_and_key(tmp_path, old, new, match):
    path = _profile_with(tmp_path, old, new)
    with pytest.raises(ConfigError, match=match) as err:
        load_profile(str(path))
    assert str(path) in str(err.value)


def test_broken_toml_is_a_config_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model\nmain_arch = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profile(str(path))


def test_fleet_config_round_trips_through_toml(tmp_path):
    cfg = FleetConfig(FleetSection("lab", "mqtt://127.0.0.1:1883"), DataSection((1, 28, 28), 10, "public", "ab" * 32))
    path = tmp_path / "fleet.toml"
    path.write_text(to_toml(cfg))
    assert load_fleet_config(path) == cfg
    assert cfg.topic_root == "hdus/v1/lab"


@pytest.mark.parametrize("bad,match", [("lam = 1.5", "lam"), ('space = "median"', "space")])
def test_fleet_config_rejects_impossible_values(tmp_path, bad, match):
    path = tmp_path / "fleet.toml"
    path.write_text(f'[fleet]\nname = "lab"\n[ensemble]\n{bad}\n')
    with pytest.raises(ConfigError, match=match):
        load_fleet_config(path)


def test_the_profile_limits_reach_the_agent_settings():
    """Issue 14's caps come from the profile: what a neighbour or an insider may cost."""
    from hdus_edge.config import FleetConfig, FleetSection
    from hdus_edge.device.agent import settings_for

    class _State:  # the two things settings_for reads from a state dir
        def fleet(self):
            return FleetConfig(FleetSection("t"))

        def profile(self):
            return load_profile("raspberry-pi-zero-2w")

    settings = settings_for(_State())  # type: ignore[arg-type]
    limits = load_profile("raspberry-pi-zero-2w").limits
    assert settings.seed_compute_multiple == limits.seed_compute_multiple
    assert settings.probe_timeout_s == limits.probe_timeout_s == 30.0
    assert settings.parking.per_topic == limits.parked_per_topic
    assert settings.parking.total_bytes == limits.parked_total_bytes
    assert settings.audit_limit.burst == limits.audit_burst
