"""Studies beyond the paper: scale, the reference set, and a poisoned seed.

Each study is a function of a frozen config that returns a JSON-able dict; ``hdus-edge sim study``
runs one and adds it as a section to the report in ``--out``. ``QUICK`` holds settings small enough
for the test suite; the defaults are what the report's figures come from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hdus_edge.errors import ConfigError
from hdus_edge.sim.studies.common import Announce, quiet
from hdus_edge.sim.studies.poisoning import PoisoningConfig, run_poisoning
from hdus_edge.sim.studies.reference import ReferenceStudyConfig, run_reference_study
from hdus_edge.sim.studies.scale import ScaleStudyConfig, run_scale_study

STUDIES: dict[str, tuple[type, Callable[..., dict[str, Any]]]] = {
    "scale": (ScaleStudyConfig, run_scale_study),
    "reference": (ReferenceStudyConfig, run_reference_study),
    "poisoning": (PoisoningConfig, run_poisoning),
}

# Small enough for CI (seconds to a minute each on 2 cores); the figures come from the defaults.
QUICK: dict[str, dict[str, Any]] = {
    "scale": {"sizes": (4, 6), "degrees": (2, 3), "dataset": "digits", "client_size": 60, "reference_size": 100,
              "test_size": 100, "train_epochs": 1, "distill_epochs": 1, "forgets": 1, "main_arch": "resnet-8",
              "workers": 1},
    "reference": {"archs": ("resnet-8",) * 3, "dataset": "digits", "client_size": 150, "test_size": 200,
                  "public_sizes": (50, 200), "train_epochs": 4, "distill_epochs": 3, "workers": 1},
    "poisoning": {"archs": ("resnet-8",) * 4, "train_epochs": 10, "distill_epochs": 10,
                  "reference_size": 200, "test_size": 200, "poisoned": "dev-1"},
}


def study_config(name: str, *, quick: bool = False, **overrides: Any) -> Any:
    """The config of study ``name``: defaults, or the quick settings, with ``overrides`` on top."""
    if name not in STUDIES:
        raise ConfigError(f"unknown study {name!r}", hint=f"use one of {', '.join(STUDIES)}")
    cls, _ = STUDIES[name]
    base = {k: v for k, v in (QUICK[name] if quick else {}).items() if k in cls.__dataclass_fields__}
    unknown = [k for k in overrides if k not in cls.__dataclass_fields__]
    if unknown:
        raise ConfigError(f"study {name!r} has no setting {unknown[0]!r}")
    return replace(cls(), **(base | overrides))


def run_study(name: str, config: Any, announce: Announce = quiet) -> dict[str, Any]:
    """Run study ``name`` with ``config`` (from ``study_config``); returns its figures."""
    return STUDIES[name][1](config, announce)


__all__ = ["QUICK", "STUDIES", "PoisoningConfig", "ReferenceStudyConfig", "ScaleStudyConfig", "run_study",
           "study_config"]
