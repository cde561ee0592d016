"""A running agent follows its state dir: neighbour changes and a newly exported seed."""

import json

import fleet_kit as fk

from hdus_edge.protocol.messages import sha256_hex


def test_agent_follows_neighbors_and_new_seed(tmp_path, embedded_broker):
    ids = ("d0", "d1", "d2")
    _, states = fk.provision(tmp_path, embedded_broker, ids=ids)
    agents = {i: fk.start_agent(states[i], embedded_broker) for i in ids}
    try:
        fk.wait_members(agents, fk.complete_members(ids))
        # Execute 1: `hdus-edge neighbors remove d1` on d0 edits device.toml.
        states["d0"].set_neighbors(("d2",))
        # Assert: d0 drops d1's seed from its ensemble and its store.
        assert agents["d0"].wait_for(lambda a: a.members() == ("d2",), 10)
        assert agents["d0"].store.seed_info("d1") is None
        # Execute 2: d1 exports a new seed (version 2).
        new_seed = fk.trained_models().seed_onnx["d3"]
        (states["d1"].models / "seed.onnx").write_bytes(new_seed)
        (states["d1"].models / "seed.json").write_text(json.dumps({"version": 2}))
        # Assert: d2 installs it; d0 (no longer a neighbour of d1) does not.
        assert agents["d2"].wait_for(lambda a: (a.store.seed_info("d1") or None) is not None
                                     and a.store.seed_info("d1").sha256 == sha256_hex(new_seed), 10)
        assert agents["d0"].store.seed_info("d1") is None
    finally:
        for a in agents.values():
            a.stop()
