"""Training in worker processes hands the models back without leaving resources behind."""

import os

from hdus_edge.data import load_digits, split_fleet
from hdus_edge.learning.distill import DistillConfig
from hdus_edge.learning.inprocess import (
    DeviceSpec,
    LearningConfig,
    redistill_devices,
    train_devices,
)
from hdus_edge.learning.train import TrainConfig


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_models_from_worker_processes_hold_no_file_descriptors() -> None:
    # Regression: tensors came back through torch's shared memory, one descriptor each for as long
    # as the model lived (1,255 after six MobileNet-L devices); past 1024, paho's select() could no
    # longer watch a new socket and the simulator's agents failed to connect.
    data = split_fleet(load_digits(), 4, reference_size=100, test_size=100, seed=0)
    specs = [DeviceSpec(f"d{k}", "mobilenet-l", seed=k) for k in range(4)]
    clients = {s.device_id: c for s, c in zip(specs, data.clients)}
    cfg = LearningConfig(train=TrainConfig(epochs=1), distill=DistillConfig(epochs=1))
    before = _open_fds()
    devices = train_devices(specs, clients, data.reference, cfg, workers=2)
    again = redistill_devices(devices, clients, data.reference.subset(range(50)), cfg, workers=2)
    assert _open_fds() - before < 20  # a few for the pool's pipes at most, not one per tensor
    assert [d.spec.device_id for d in again] == ["d0", "d1", "d2", "d3"]
    assert all(d.distill_report.reference_samples == 50 for d in again)
