"""background_fuse: membership changes take effect at once on per-member sessions; the fused graph
follows, with the same outputs, and never carries a removed seed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx_testkit import batch, export_zoo

from hdus_edge.ensemble.runtime import EnsembleRuntime

DEVICES = ("b", "a", "c")


@pytest.fixture(scope="module")
def models() -> tuple[bytes, dict[str, bytes]]:
    main = export_zoo("resnet-8", owner="me", seed=3)
    return main, {d: export_zoo("seed-cnn", owner=d, seed=40 + k) for k, d in enumerate(DEVICES)}


def test_background_fuse_matches_synchronous_and_forgets_at_once(models):
    # Prepare
    main, seeds = models
    x = batch(16, seed=1)
    sync = EnsembleRuntime(main, 0.5)
    bg = EnsembleRuntime(main, 0.5, background_fuse=True)
    for d in DEVICES:
        sync.add_seed(d, seeds[d])
        bg.add_seed(d, seeds[d])
    assert bg.wait_fused(10)
    assert np.abs(bg.predict(x) - sync.predict(x)).max() <= 1e-6
    # Execute: remove one seed
    sync.remove("a")
    bg.remove("a")
    # Assert: at once, no fused graph (it held "a") and nothing that holds a's bytes; same outputs.
    assert bg.fused_model_bytes is None
    assert seeds["a"] not in bg.held_bytes()
    assert np.abs(bg.predict(x) - sync.predict(x)).max() <= 1e-6
    # The fused graph comes back, without a's weights.
    assert bg.wait_fused(10)
    fused = onnx.load_from_string(bg.fused_model_bytes)
    a_weights = {init.raw_data for init in onnx.load_from_string(seeds["a"]).graph.initializer if init.raw_data}
    held = b"".join(init.raw_data for init in fused.graph.initializer)
    assert not any(w in held for w in a_weights if len(w) > 64)
    assert np.abs(bg.predict(x) - sync.predict(x)).max() <= 1e-6
    bg.close()


def test_a_burst_of_changes_is_fused_once_for_the_final_set(models):
    main, seeds = models
    bg = EnsembleRuntime(main, 0.5, background_fuse=True)
    for d in DEVICES:
        bg.add_seed(d, seeds[d])
    bg.remove("c")
    assert bg.wait_fused(10)
    assert bg.members() == ("a", "b")
    bg.close()
