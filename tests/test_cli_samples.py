"""The CLI of forgetting samples and adding new ones: JSON output, one clear error, status shows the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import cli_lifecycle_kit as kit

from hdus_edge.learning.samples import read_manifest


def test_train_forget_add_and_status_through_the_cli(capsys, tmp_path):
    # Prepare
    _, states = kit.make_fleet(tmp_path, ids=("d1",))
    st = states["d1"]
    data = kit.digits_folder(tmp_path / "mine", n=64)
    assert kit.cli(capsys, "train", "--state-dir", st.root, "--data", data, "--epochs", "1")[0] == 0
    assert kit.cli(capsys, "distill", "--state-dir", st.root, "--epochs", "1")[0] == 0
    assert kit.cli(capsys, "export", "--state-dir", st.root)[0] == 0
    code, out, _ = kit.cli(capsys, "status", "--state-dir", st.root, "--json")
    assert code == 0 and json.loads(out)["training"]["manifest_size"] == 64
    ids_file = tmp_path / "forget.txt"
    ids_file.write_text("\n".join(read_manifest(st).ids[:2]) + "\n")
    # Execute: forget by ids (no agent runs, so nothing to wait for), then add new samples.
    code, out, _ = kit.cli(capsys, "forget-samples", "--state-dir", st.root, "--ids", ids_file, "--json")
    forgot = json.loads(out)
    code2, out2, _ = kit.cli(capsys, "train", "--state-dir", st.root, "--add", kit.digits_folder(tmp_path / "more", n=8, offset=64), "--json")
    added = json.loads(out2)
    code3, out3, _ = kit.cli(capsys, "status", "--state-dir", st.root, "--json")
    # Assert
    assert code == 0 and forgot["samples_removed"] == 2 and forgot["seed_version"] == 2 and "complete" not in forgot
    assert code2 == 0 and added["samples_after"] == 70 and added["seed_version"] == 3
    training = json.loads(out3)["training"]
    assert code3 == 0 and training == {"manifest_size": 70, "manifest_sha256": read_manifest(st).sha256,
                                       "forgotten_samples": 2, "forgotten_still_trained_on": 0}


def test_forget_samples_errors_are_one_line_and_change_nothing(capsys, tmp_path):
    # Prepare
    _, states = kit.make_fleet(tmp_path, ids=("d1",))
    st = states["d1"]
    data = kit.digits_folder(tmp_path / "mine", n=32)
    assert kit.cli(capsys, "train", "--state-dir", st.root, "--data", data, "--epochs", "1")[0] == 0
    assert kit.cli(capsys, "distill", "--state-dir", st.root, "--epochs", "1")[0] == 0
    assert kit.cli(capsys, "export", "--state-dir", st.root)[0] == 0
    before = st.main_checkpoint.read_bytes()
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps(["0" * 32]))
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("hello\n")
    cases = [
        (("--ids", unknown), ("never trained on",)),
        (("--ids", garbage), ("not a sample id",)),
        (("--data", data), ("would leave no training data",)),
        ((), ("exactly one of --ids",)),
    ]
    for extra, fragments in cases:
        # Execute
        code, _, err = kit.cli(capsys, "forget-samples", "--state-dir", st.root, *extra)
        # Assert
        assert code == 2, err
        kit.assert_one_error(err, *fragments)
    assert st.main_checkpoint.read_bytes() == before and not st.retire_file.exists()


def test_forget_samples_with_running_agents_collects_receipts_and_saves_verifiable_evidence(capsys, tmp_path, mosquitto_broker):
    # Prepare: two trained devices whose agents run in this process.
    import dataclasses

    from hdus_edge.device.agent import DeviceAgent, settings_for
    from hdus_edge.unlearn.swap import verify_swap_evidence

    url = mosquitto_broker.url
    admin, states = kit.make_fleet(tmp_path, broker=url, ids=("d1", "d2"), name="cf")
    for k, st in enumerate(states.values()):
        data = kit.digits_folder(tmp_path / f"data{k}", n=48, offset=48 * k)
        assert kit.cli(capsys, "train", "--state-dir", st.root, "--data", data, "--epochs", "1")[0] == 0
        assert kit.cli(capsys, "distill", "--state-dir", st.root, "--epochs", "1")[0] == 0
        assert kit.cli(capsys, "export", "--state-dir", st.root)[0] == 0
    agents = [DeviceAgent.from_state_dir(st, settings=dataclasses.replace(settings_for(st), probe_in_subprocess=False)).start()
              for st in states.values()]
    try:
        assert all(a.wait_for(lambda a: len(a.members()) == 1, 20) for a in agents)
        ids_file = tmp_path / "forget.json"
        ids_file.write_text(json.dumps(list(read_manifest(states["d1"]).ids[:1])))
        # Execute
        code, out, err = kit.cli(capsys, "forget-samples", "--state-dir", states["d1"].root, "--ids", ids_file,
                                 "--wait", "30", "--json")
        # Assert
        assert code == 0, err
        result = json.loads(out)
        assert result["complete"] and result["holders"] == ["d2"] and result["receipts"] == ["d2"]
        assert verify_swap_evidence(Path(result["evidence_file"]), admin.key().public_key, "cf") == []
    finally:
        for a in agents:
            a.stop()
    # The auditor's side, offline: 'hdus-edge verify' reads the file with the admin's public key only.
    evidence = Path(result["evidence_file"])
    code, out, err = kit.cli(capsys, "verify", evidence, "--admin-pub", admin.pub_file, "--json")
    report = json.loads(out)
    assert code == 0, err
    assert report["kind"] == "seed-retire" and report["verified"] and report["complete"] and report["owner"] == "d1"
    assert [r["device_id"] for r in report["receipts"]] == ["d2"] and report["receipts"][0]["version"] == 2
    assert report["receipts"][0]["removed_sha256"] in report["retired_sha256"]
    # An attacker's edits: a changed byte in a receipt, a dropped receipt, a new version it never signed.
    data = json.loads(evidence.read_text())
    flipped = json.loads(json.dumps(data))
    sig = flipped["receipts"][0]["signed"]
    flipped["receipts"][0]["signed"] = sig[:-2] + ("00" if sig[-2:] != "00" else "01")
    dropped = {**data, "receipts": []}
    other = {**data, "sha256": "0" * 64}
    for name, forged in (("flipped", flipped), ("dropped", dropped), ("other", other)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(forged))
        code, out, _ = kit.cli(capsys, "verify", path, "--admin-pub", admin.pub_file, "--json")
        report = json.loads(out)
        assert code == 1 and not (report["verified"] and report["complete"]), (name, report)
    wrong_admin = tmp_path / "wrong.pub"
    wrong_admin.write_text("ab" * 32)
    code, out, _ = kit.cli(capsys, "verify", evidence, "--admin-pub", wrong_admin, "--json")
    assert code == 1 and not json.loads(out)["verified"]
