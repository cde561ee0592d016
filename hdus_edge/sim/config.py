"""Simulation settings: one frozen dataclass, from CLI options or a TOML file (``[sim]`` table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hdus_edge.arch_names import DEFAULT_SEED_ARCH
from hdus_edge.config import from_dict, read_toml
from hdus_edge.data import SCHEMES
from hdus_edge.ensemble.combine import COMBINE_SPACES, DEFAULT_LAM, check_lam
from hdus_edge.errors import ConfigError
from hdus_edge.topology import TOPOLOGIES

DEMO_ARCHS = ("mobilenet-s", "resnet-8", "mobilenet-m", "resnet-20", "mobilenet-l", "resnet-8")
ALL_METHODS = ("isgd", "dsgd", "fedunl", "fedunl-retrain", "sisa-a")
BUDGETS = ("tiny", "reduced", "full")


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. Defaults: the demo (digits, 6 mixed devices, complete graph, forget dev-5)."""

    archs: tuple[str, ...] = DEMO_ARCHS  # one per device; sizes S/M/L allowed (MobileNetV2 family)
    seed_arch: str = DEFAULT_SEED_ARCH
    dataset: str = "digits"  # "digits", "mnist", or a data folder
    partition: str = "missing-class"
    alpha: float = 0.5  # Dirichlet concentration
    shards_per_client: int = 2
    client_size: int = 0  # 0: share the pool evenly
    reference: str = "public"  # "public" split or "noise"
    reference_size: int = 300
    test_size: int = 300
    topology: str = "complete"
    degree: int = 4
    lam: float = DEFAULT_LAM
    space: str = "probs"
    temperature: float = 4.0
    train_epochs: int = 20
    distill_epochs: int = 30
    forget: tuple[str, ...] = ("dev-5",)
    forget_at_once: bool = False  # all orders at the same moment, instead of one after another
    processes: bool = False  # each agent its own OS process (hdus-edge agent), outputs from its inference API
    methods: tuple[str, ...] = ALL_METHODS
    budget: str = "reduced"  # baselines' budget: "tiny" (smoke tests), "reduced" (demo), "full" (benchmark)
    baseline_arch: str = "resnet-8"  # DSGD/FedUnl need one architecture for all devices
    verify_baselines: bool = False  # refit each baseline without the forgotten device and compare
    broker: str = ""  # empty: an embedded amqtt broker
    seed: int = 0
    workers: int = 0  # training processes; 0: one per core

    @property
    def device_ids(self) -> tuple[str, ...]:
        return tuple(f"dev-{k}" for k in range(len(self.archs)))

    def validate(self) -> SimConfig:
        """Raise ``ConfigError`` for settings that cannot run."""
        from hdus_edge.sim.baselines import METHODS

        if len(self.archs) < 2:
            raise ConfigError("a simulation needs at least 2 devices")
        if self.partition not in SCHEMES:
            raise ConfigError(f"unknown partition {self.partition!r}", hint=f"use one of {', '.join(SCHEMES)}")
        if self.topology not in TOPOLOGIES:
            raise ConfigError(f"unknown topology {self.topology!r}", hint=f"use one of {', '.join(TOPOLOGIES)}")
        if self.reference not in ("public", "noise"):
            raise ConfigError(f"reference must be 'public' or 'noise', got {self.reference!r}")
        if self.space not in COMBINE_SPACES:
            raise ConfigError(f"space must be one of {COMBINE_SPACES}, got {self.space!r}")
        check_lam(self.lam)
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"unknown method {unknown[0]!r}", hint=f"use any of {', '.join(METHODS)}")
        missing = [f for f in self.forget if f not in self.device_ids]
        if missing:
            raise ConfigError(f"cannot forget {missing[0]!r}: devices are {', '.join(self.device_ids)}")
        if len(set(self.forget)) >= len(self.archs) - 1:
            raise ConfigError("forgetting must leave at least 2 devices")
        if self.budget not in BUDGETS:
            raise ConfigError(f"budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")
        if min(self.train_epochs, self.distill_epochs, self.reference_size, self.test_size) < 1:
            raise ConfigError("epochs and set sizes must be positive")
        return self


@dataclass(frozen=True)
class _SimFile:
    sim: SimConfig = field(default_factory=SimConfig)


def load_sim_config(path: Path) -> SimConfig:
    """Read ``[sim]`` from a TOML file (unknown keys and wrong types are errors naming the key)."""
    return from_dict(_SimFile, read_toml(path), str(path)).sim.validate()
