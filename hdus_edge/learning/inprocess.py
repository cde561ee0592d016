"""An in-process HDUS fleet: the learning core without a network.

Each device trains its main model on its own client data, distils its seed on the shared reference
set, and holds its neighbours' seeds in a map keyed by device id. ``unlearn(j)`` deletes s_j from
every holder, and that is all forgetting takes: nothing a device learned depends on any neighbour,
so the fleet afterwards is the fleet in which j never existed (``tests/test_fleet_exactness.py``
proves it by building that fleet).
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import os
import queue
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from hdus_edge.arch_names import DEFAULT_SEED_ARCH
from hdus_edge.data import ClientData, Dataset
from hdus_edge.ensemble.combine import DEFAULT_LAM, CombineSpace, check_lam, combine
from hdus_edge.errors import ConfigError
from hdus_edge.learning.distill import DistillConfig, DistillReport, distill
from hdus_edge.learning.train import (
    TrainConfig,
    TrainReport,
    check_input_shape,
    predict_logits,
    torch_threads,
    train,
)
from hdus_edge.models import build_model
from hdus_edge.topology import Graph

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSpec:
    """One device: its id, architectures, and the seed for every random choice it makes."""

    device_id: str
    main_arch: str
    seed_arch: str = DEFAULT_SEED_ARCH
    seed: int = 0


@dataclass(frozen=True)
class LearningConfig:
    """How every device trains, distils and combines."""

    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    lam: float = DEFAULT_LAM  # weight of the neighbours' seeds; see DEFAULT_LAM for why
    space: CombineSpace = "probs"  # averaging probabilities beat logits on digits and MNIST (bench accuracy)

    def __post_init__(self) -> None:
        check_lam(self.lam)


@dataclass
class TrainedDevice:
    """A device after local training and distillation."""

    spec: DeviceSpec
    main: nn.Module
    seed_model: nn.Module
    train_report: TrainReport
    distill_report: DistillReport


# progress(device_id, phase, done, total)
FleetProgress = Callable[[str, str, int, int], None]


def train_device(
    spec: DeviceSpec,
    client: ClientData,
    reference: Dataset,
    cfg: LearningConfig,
    progress: FleetProgress | None = None,
) -> TrainedDevice:
    """Train one device's main model on its own data, then distil its seed on ``reference``."""
    input_shape = client.train.input_shape
    num_classes = client.train.num_classes
    main = build_model(spec.main_arch, input_shape, num_classes, seed=spec.seed)
    check_input_shape(input_shape, client.train)
    train_cfg = replace(cfg.train, seed=spec.seed)
    train_report = train(main, client.train, train_cfg, _bind(progress, spec.device_id, "train"))
    seed_model = build_model(spec.seed_arch, input_shape, num_classes, seed=spec.seed + 1)
    distill_cfg = replace(cfg.distill, seed=spec.seed)
    distill_report = distill(
        main, seed_model, reference, distill_cfg, eval_data=client.test, progress=_bind(progress, spec.device_id, "distill")
    )
    return TrainedDevice(spec, main, seed_model, train_report, distill_report)


def distill_device(
    device: TrainedDevice,
    client: ClientData,
    reference: Dataset,
    cfg: LearningConfig,
    progress: FleetProgress | None = None,
) -> TrainedDevice:
    """The same device with a fresh seed distilled from its (unchanged) main model on ``reference``.

    The new seed starts from the same initial weights as ``train_device`` would give it, so
    distilling on the original reference reproduces the original seed.
    """
    spec = device.spec
    seed_model = build_model(spec.seed_arch, client.train.input_shape, client.train.num_classes, seed=spec.seed + 1)
    report = distill(device.main, seed_model, reference, replace(cfg.distill, seed=spec.seed), eval_data=client.test,
                     progress=_bind(progress, spec.device_id, "distill"))
    return replace(device, seed_model=seed_model, distill_report=report)


class InProcessFleet:
    """Trained devices, a neighbour graph, and the seeds each device holds."""

    def __init__(self, devices: Sequence[TrainedDevice], graph: Graph, lam: float, space: CombineSpace) -> None:
        self.devices: dict[str, TrainedDevice] = {d.spec.device_id: d for d in devices}
        unknown = {n for nbrs in graph.values() for n in nbrs} | set(graph)
        unknown -= set(self.devices)
        if unknown:
            raise ConfigError(f"neighbour graph names unknown devices: {sorted(unknown)}")
        self.graph: Graph = {i: frozenset(graph.get(i, frozenset())) for i in self.devices}
        self.lam = check_lam(lam)
        self.space: CombineSpace = space
        # holdings[i][j] = s_j as held by device i; the only channel between devices.
        self.holdings: dict[str, dict[str, nn.Module]] = {i: {} for i in self.devices}

    def exchange_seeds(self) -> None:
        """Hand every device its neighbours' seeds (what MQTT does in a real fleet)."""
        for i, nbrs in self.graph.items():
            for j in sorted(nbrs):
                self.holdings[i][j] = self.devices[j].seed_model

    def members(self, device_id: str) -> tuple[str, ...]:
        """The ids of the seeds in ``device_id``'s ensemble, sorted."""
        return tuple(sorted(self.holdings[device_id]))

    def member_logits(self, device_id: str, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Main logits and the held seeds' logits (sorted by owner id) for ``x``."""
        main = predict_logits(self.devices[device_id].main, x)
        seeds = [predict_logits(self.holdings[device_id][j], x) for j in self.members(device_id)]
        return main, seeds

    def ensemble_output(self, device_id: str, x: np.ndarray) -> np.ndarray:
        """The device's ensemble output for ``x``: (1 - lam) * main + lam * mean(seeds)."""
        main, seeds = self.member_logits(device_id, x)
        return combine(main, seeds, self.lam, self.space)

    def main_output(self, device_id: str, x: np.ndarray) -> np.ndarray:
        """The device's main model alone, in the ensemble's output space."""
        return combine(predict_logits(self.devices[device_id].main, x), [], 0.0, self.space)

    def unlearn(self, target: str) -> dict[str, bool]:
        """Forget ``target``: every holder deletes s_target; the device leaves the fleet.

        Returns ``{holder: held_it}`` for every remaining device.
        """
        if target not in self.devices:
            raise ConfigError(f"unknown device {target!r}", hint=f"devices: {', '.join(sorted(self.devices))}")
        held = {i: self.holdings[i].pop(target, None) is not None for i in self.devices if i != target}
        del self.devices[target], self.holdings[target], self.graph[target]
        self.graph = {i: nbrs - {target} for i, nbrs in self.graph.items()}
        logger.info("unlearned %s: deleted from %d holders", target, sum(held.values()))
        return held


def default_workers() -> int:
    """Worker processes for fleet training: ``$HDUS_WORKERS``, else one per core (at most 4)."""
    env = os.environ.get("HDUS_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


def train_devices(
    specs: Sequence[DeviceSpec],
    clients: Mapping[str, ClientData],
    reference: Dataset,
    cfg: LearningConfig,
    progress: FleetProgress | None = None,
    workers: int | None = None,
) -> list[TrainedDevice]:
    """Train and distil every device, in worker processes when ``workers`` > 1.

    Devices are independent (exactness demands it), so they train in parallel. Each worker runs
    torch on one thread: small models scale better across processes than across threads, and a
    fixed thread count keeps results identical run to run. The result does not depend on how
    devices are spread over workers.
    """
    missing = [s.device_id for s in specs if s.device_id not in clients]
    if missing:
        raise ConfigError(f"no client data for devices {missing}")
    return _run_jobs([(s.device_id, train_device, (s, clients[s.device_id], reference, cfg)) for s in specs],
                     workers, progress)


# A job: (device_id, function, args); the function takes ``progress`` after ``args``.
_Job = tuple[str, Callable[..., TrainedDevice], tuple]


def _run_jobs(jobs: Sequence[_Job], workers: int | None, progress: FleetProgress | None) -> list[TrainedDevice]:
    """Run the jobs here (one torch thread) or in spawned worker processes; results in job order."""
    workers = default_workers() if workers is None else workers
    if workers <= 1 or len(jobs) <= 1:
        with torch_threads(1):
            return [fn(*args, progress) for _, fn, args in jobs]
    ctx = multiprocessing.get_context("spawn")  # fork after torch's thread pools started can hang
    updates = ctx.Queue()
    results: dict[str, TrainedDevice] = {}
    report = progress is not None
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_worker_init, initargs=(updates,)) as pool:
        pending: dict[Future, str] = {pool.submit(_packed_call, fn, _pack(args), report): device_id
                                      for device_id, fn, args in jobs}
        while pending:
            done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(updates, progress)
            for fut in done:
                results[pending.pop(fut)] = _unpack(fut.result())
        _drain(updates, progress)
    return [results[device_id] for device_id, _, _ in jobs]


# Models cross the process boundary as bytes. Pickled as they are, torch would share every tensor
# through shared memory and keep one file descriptor open per tensor in this process for as long as
# the model lives: six MobileNet-L devices left 1,250 descriptors, and paho's select() cannot watch
# a socket numbered past 1024, so the agents started next could not connect.
def _pack(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _unpack(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=False)  # our own bytes, from our own worker


def _packed_call(fn: Callable[..., TrainedDevice], packed_args: bytes, report: bool) -> bytes:
    return _pack(fn(*_unpack(packed_args), _forward if report else None))


def redistill_devices(
    devices: Sequence[TrainedDevice],
    clients: Mapping[str, ClientData],
    reference: Dataset,
    cfg: LearningConfig,
    progress: FleetProgress | None = None,
    workers: int | None = None,
) -> list[TrainedDevice]:
    """Distil every device's seed again on another reference set, keeping the main models.

    What a fleet does when it changes its reference set; the studies use it to vary only the
    reference. Runs in worker processes like ``train_devices``.
    """
    return _run_jobs([(d.spec.device_id, distill_device, (d, clients[d.spec.device_id], reference, cfg))
                      for d in devices], workers, progress)


def build_fleet(
    specs: Sequence[DeviceSpec],
    clients: Mapping[str, ClientData],
    reference: Dataset,
    graph: Graph,
    cfg: LearningConfig,
    progress: FleetProgress | None = None,
    workers: int | None = None,
) -> InProcessFleet:
    """Train and distil every device, then exchange seeds along ``graph``."""
    devices = train_devices(specs, clients, reference, cfg, progress, workers)
    fleet = InProcessFleet(devices, graph, cfg.lam, cfg.space)
    fleet.exchange_seeds()
    return fleet


def _bind(progress: FleetProgress | None, device_id: str, phase: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(device_id, phase, done, total)


_updates: "multiprocessing.Queue | None" = None


def _worker_init(updates: "multiprocessing.Queue") -> None:
    global _updates
    _updates = updates
    torch.set_num_threads(1)


def _forward(device_id: str, phase: str, done: int, total: int) -> None:
    # Every 5th step is plenty for a progress bar and keeps the queue quiet.
    if _updates is not None and (done % 5 == 0 or done == total):
        _updates.put((device_id, phase, done, total))


def _drain(updates: "multiprocessing.Queue", progress: FleetProgress | None) -> None:
    while True:
        try:
            item = updates.get_nowait()
        except queue.Empty:
            return
        if progress is not None:
            progress(*item)
