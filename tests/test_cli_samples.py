"""The CLI of forgetting samples and adding new ones: JSON output, one clear error, status shows the manifest."""

from __future__ import annotations

import json

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
