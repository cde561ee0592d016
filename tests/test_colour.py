"""Colour (3-channel) inputs end to end: loaders, the zoo at C = 3, export and ONNX checks, predict.

Synthetic colour data: each class is a colour (red, green, blue, ...) painted as a square at a
class-dependent place, so a grey version of the same image loses the information that tells
some classes apart, and the tests can see that all three channels arrived.
"""

from __future__ import annotations

import json

import cli_lifecycle_kit as kit
import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from hdus_edge.data import load_data_folder, load_npz, save_npz
from hdus_edge.data.images import load_image_folder, read_image
from hdus_edge.device.inputs import read_input
from hdus_edge.errors import DataError, DataShapeError, OnnxRejectedError
from hdus_edge.models import build_model, list_architectures
from hdus_edge.onnx.checks import LoadPolicy, ModelContract, check_onnx
from hdus_edge.onnx.export import export_onnx
from hdus_edge.onnx.metadata import Provenance

COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=np.uint8)


def colour_images(n: int, side: int = 12, seed: int = 0, noise: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, side, side, 3] images (channels last, as image files hold them) and labels 0..3,
    on a background of uniform noise in [0, noise] (distinct images for disjoint sets)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(COLOURS), n)
    x = rng.integers(0, noise + 1, (n, side, side, 3)).astype(np.uint8)
    for i, label in enumerate(y):
        top, left = rng.integers(0, side - 5, 2)
        x[i, top : top + 5, left : left + 5] = COLOURS[label]
    return x, y.astype(np.int64)


def image_folder(root, x: np.ndarray, y: np.ndarray | None) -> object:
    """PNG files, one subfolder per class (or flat when ``y`` is None)."""
    for i, img in enumerate(x):
        folder = root if y is None else root / str(int(y[i]))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"img-{i:03d}.png")
    return root


# --- loaders ---------------------------------------------------------------------------------------


def test_npz_takes_colour_channels_first_or_last(tmp_path):
    x, y = colour_images(6)
    np.savez(tmp_path / "last.npz", x=x, y=y)
    np.savez(tmp_path / "first.npz", x=x.transpose(0, 3, 1, 2), y=y)
    last, first = load_npz(tmp_path / "last.npz"), load_npz(tmp_path / "first.npz")
    assert last.input_shape == first.input_shape == (3, 12, 12)
    np.testing.assert_array_equal(last.x, first.x)
    np.testing.assert_allclose(last.x.max(axis=(2, 3)), COLOURS[y] / np.float32(255))
    # save_npz round-trips a colour set unchanged
    back = load_npz(save_npz(last, tmp_path / "again.npz"))
    np.testing.assert_array_equal(back.x, last.x)
    np.savez(tmp_path / "two.npz", x=np.zeros((2, 2, 8, 8), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(DataShapeError, match="C = 1"):
        load_npz(tmp_path / "two.npz")


def test_image_folder_with_class_subfolders_reads_rgb_exactly(tmp_path):
    x, y = colour_images(10)
    ds = load_data_folder(image_folder(tmp_path / "data", x, y))
    assert ds.input_shape == (3, 12, 12) and ds.num_classes == int(y.max()) + 1
    # files are read subfolder by subfolder, in name order
    order = sorted(range(len(y)), key=lambda i: (int(y[i]), f"img-{i:03d}.png"))
    np.testing.assert_array_equal(ds.y, y[order])
    np.testing.assert_array_equal(ds.x, x[order].transpose(0, 3, 1, 2).astype(np.float32) / 255)


def test_grey_image_folder_stays_one_channel_and_flat_folders_are_unlabeled(tmp_path):
    grey = (np.arange(3 * 64, dtype=np.uint8).reshape(3, 8, 8))
    folder = tmp_path / "grey"
    folder.mkdir()
    for i, img in enumerate(grey):
        Image.fromarray(img).save(folder / f"{i}.png")
    ds = load_image_folder(folder)
    assert ds.input_shape == (1, 8, 8) and (ds.y == -1).all()
    np.testing.assert_array_equal(ds.x[:, 0], grey / np.float32(255))


def test_image_folder_errors_name_the_problem(tmp_path):
    x, y = colour_images(4)
    image_folder(tmp_path / "a", x, y)
    Image.fromarray(x[0]).save(tmp_path / "a" / "stray.png")
    with pytest.raises(DataError, match="ambiguous"):
        load_image_folder(tmp_path / "a")
    image_folder(tmp_path / "b" / "cats", x, None)
    with pytest.raises(DataError, match="class id"):
        load_image_folder(tmp_path / "b")
    image_folder(tmp_path / "c", x, None)
    Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / "c" / "z.png")
    with pytest.raises(DataShapeError, match="differ in size"):
        load_image_folder(tmp_path / "c")


def test_read_image_converts_to_the_channels_asked_for(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert np.allclose(read_image(tmp_path / "c.png", 3)[:, 0, 0], [200 / 255, 100 / 255, 50 / 255])
    luma = read_image(tmp_path / "c.png", 1)
    assert luma.shape == (1, 4, 4) and abs(float(luma[0, 0, 0]) * 255 - (0.299 * 200 + 0.587 * 100 + 0.114 * 50)) < 1
    Image.fromarray(np.full((4, 4), 77, np.uint8)).save(tmp_path / "g.png")
    assert np.allclose(read_image(tmp_path / "g.png", 3), 77 / 255)  # grey repeated in R, G and B
    (tmp_path / "g.pgm").write_bytes(b"P5 4 4 255\n" + bytes([77]) * 16)
    assert np.allclose(read_input(tmp_path / "g.pgm", (3, 4, 4)), 77 / 255)
    np.save(tmp_path / "hwc.npy", rgb[None])
    np.testing.assert_array_equal(read_input(tmp_path / "hwc.npy", (3, 4, 4)), read_input(tmp_path / "c.png", (3, 4, 4)))


# --- zoo, export, checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("arch", [s.name for s in list_architectures()])
def test_every_architecture_exports_and_passes_the_checks_at_three_channels(arch):
    model = build_model(arch, (3, 16, 16), 4, seed=0)
    prov = Provenance("d1", "seed" if arch.startswith("seed") else "main", arch, 1, (3, 16, 16), 4, kit.CREATED)
    data = export_onnx(model, prov)
    policy = LoadPolicy(max_bytes=64 * 1024 * 1024)  # main models are larger than a seed's cap
    checked = check_onnx(data, ModelContract(16, 16, 4, channels=3), policy)
    assert checked.provenance.input_shape == (3, 16, 16)
    x = np.random.default_rng(0).random((2, 3, 16, 16), dtype=np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)
    with pytest.raises(OnnxRejectedError, match="input"):  # a grey fleet refuses a colour model
        check_onnx(data, ModelContract(16, 16, 4, channels=1), policy)


# --- the CLI: a colour fleet from reference to predict ---------------------------------------------


def test_colour_fleet_trains_distils_exports_and_predicts_a_colour_png(capsys, tmp_path):
    # Prepare: a public colour reference (unlabeled images), the device's own colour images.
    ref_x, _ = colour_images(48, seed=1, noise=60)
    reference = image_folder(tmp_path / "reference", ref_x, None)
    own_x, own_y = colour_images(64, seed=2, noise=60)
    own = image_folder(tmp_path / "mine", own_x, own_y)
    probe_x, _ = colour_images(1, seed=3, noise=60)
    Image.fromarray(probe_x[0]).save(tmp_path / "probe.png")
    admin, st = tmp_path / "admin", tmp_path / "d1"
    # Execute
    code, out, _ = kit.cli(capsys, "fleet", "init", "--admin-dir", admin, "--fleet", "rgb", "--broker", kit.DEAD_BROKER,
                           "--reference", reference, "--classes", "4", "--json")
    assert code == 0, out
    fleet = json.loads(out)
    steps = [("provision", "--admin-dir", admin, "--profile", "generic-x86_64", "--device-id", "d1", "--state-dir", st),
             ("train", "--state-dir", st, "--data", own, "--epochs", "2"),
             ("distill", "--state-dir", st, "--epochs", "1"),
             ("export", "--state-dir", st)]
    for argv in steps:
        code, out, err = kit.cli(capsys, *argv)
        assert code == 0, (argv[0], out, err)
    code, out, err = kit.cli(capsys, "predict", "--state-dir", st, tmp_path / "probe.png", "--json")
    # Assert: the fleet takes [3, 12, 12]; predict read the PNG in colour and ran the main model.
    assert fleet["input_shape"] == [3, 12, 12]
    assert code == 0, err
    report = json.loads(out)
    probs = np.array(report["predictions"][0]["probabilities"])
    assert probs.shape == (4,) and abs(probs.sum() - 1) < 1e-5
    main = ort.InferenceSession((st / "models" / "main.onnx").read_bytes(), providers=["CPUExecutionProvider"])
    x = probe_x.transpose(0, 3, 1, 2).astype(np.float32) / 255
    logits = main.run(None, {"input": x})[0]
    np.testing.assert_allclose(probs, np.exp(logits[0]) / np.exp(logits[0]).sum(), atol=1e-5)
