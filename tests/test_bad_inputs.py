"""Bad inputs across the six scripts: each is refused with exit 2 and one readable `error:` line
naming what is at fault, leaving no partial output and earlier output byte-identical; inputs
that are merely unusual (16-bit, float, palette, BOM, RGBA, odd sizes) are accepted.

Scripts run in-process through cli.run_cli, as their `__main__` does, so the exit code
and stderr are the ones a user sees. Nothing here trains the network.
"""
import base64
import csv
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import traceback
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

import cli
import gen_img_aug
import get_contour
import labelme_to_label
import outputs
import pre_processing
import predict_lovasz_loss
import train_unet_xception_resnetblock as train
from image_io import DEFAULT_INTENSITY
from geometry import inverse_dihedral

CLASSES = ["background", "bead", "cell"]
BEST = "unet_xception_resnet_nsgd32_lovaszsoftmax_best.h5"
SWA = "unet_xception_resnet_nsgd32_lovaszsoftmax_swa.h5"
TILE = 32
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- running and checking

def run(module, args, capsys):
    """(exit code, stdout, stderr) of module.main(args) run as its command line runs it."""
    capsys.readouterr()
    code = 0
    try:
        cli.run_cli(lambda: module.main([str(a) for a in args]))
    except SystemExit as exit_info:
        code = exit_info.code if isinstance(exit_info.code, int) else \
            (0 if exit_info.code is None else 1)
    except Exception:   # noqa: BLE001  an escaped exception is what Python prints and exits 1 on
        captured = capsys.readouterr()
        return 1, captured.out, captured.err + traceback.format_exc()
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def refusal_line(code, err, *names):
    """The single `error:` line of a refusal, after checking it names every one of names."""
    assert code == 2, f"exit {code}, expected a refusal (2); stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("error: "), line
    for name in names:
        assert str(name) in line, f"{name!r} missing from: {line}"
    return line


def argparse_refusal(code, err, option):
    assert code == 2, f"exit {code}, expected 2; stderr:\n{err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("usage:"), err
    assert ": error:" in lines[-1] and option in lines[-1], lines[-1]


def accepted(code, err):
    assert code == 0, f"exit {code}, expected 0; stderr:\n{err}"
    assert "Traceback" not in err, err


def snapshot(root):
    """Every path under root: 'dir' for folders, the sha256 of each file's bytes."""
    state = {}
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir() and not path.is_symlink():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


def assert_unchanged(root, before):
    """No file or folder appeared, vanished or changed under root (staging folders included)."""
    after = snapshot(root)
    staging = [p for p in after if ".tmp-" in p.rsplit("/", 1)[-1]]
    assert not staging, f"staging leftovers: {staging}"
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    assert not (added or removed or changed), \
        f"output changed: added {added}, removed {removed}, changed {changed}"


def write(path, arr):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr), path
    return path


def noise(h, w, seed=0, channels=None):
    shape = (h, w) if channels is None else (h, w, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_bad_image(path, kind):
    """An image file that no decoder can read: cut in half, empty, or text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "truncated":
        ok, buf = cv2.imencode(path.suffix, noise(40, 40, seed=9))
        assert ok
        path.write_bytes(buf.tobytes()[:len(buf) // 2])
    elif kind == "zero-byte":
        path.write_bytes(b"")
    else:
        path.write_text("this is a text file, saved with a .png name\n")
    return path


def multipage_tiff(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwritemulti(str(path), [noise(40, 40, 1), noise(40, 40, 2)])
    return path


def dead_pid():
    """A process id no process can have: above the kernel's limit."""
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        pid_max = 2 ** 22
    pid = max(pid_max, 2 ** 22) + 7
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


def leftover(folder, name, pid):
    """A staging folder as outputs.py names it, made by process `pid` on this host."""
    prefix = outputs._temp_prefix(name)
    assert f"-{outputs._HOST}-{os.getpid()}-" in prefix
    path = folder / (prefix.replace(f"-{os.getpid()}-", f"-{pid}-") + "killed")
    (path / "sub").mkdir(parents=True)
    (path / "sub" / "half.png").write_bytes(b"half a file")
    return path


def assert_published_mode(folder):
    # mkdtemp makes staging folders 0o700; a published folder must follow the umask.
    expected = 0o777 & ~outputs.UMASK
    assert stat.S_IMODE(folder.stat().st_mode) == expected, \
        f"{folder} mode {oct(stat.S_IMODE(folder.stat().st_mode))}, umask gives {oct(expected)}"


# ---------------------------------------------------------------- data for gen_img_aug

def make_data(root, images, labels=None, classes=CLASSES, test=None):
    """<root>/data with the given images ({file name: array}), labels of a class 1 diagonal
    unless given ({file name: array}), classes.txt and, with test, a fixed test list."""
    data = root / "data"
    (data / "src").mkdir(parents=True)
    (data / "label").mkdir()
    (data / "classes.txt").write_text("\n".join(classes) + "\n")
    for filename, img in images.items():
        write(data / "src" / filename, img)
    labels = labels if labels is not None else {
        f"{Path(f).stem}.png": np.eye(*img.shape[:2], dtype=np.uint8) for f, img in images.items()}
    for filename, lbl in labels.items():
        write(data / "label" / filename, lbl)
    if test:
        (data / "test.txt").write_text("\n".join(test) + "\n")
    return data


def aug_args(data, work, *extra, patch=32, count=4):
    return ["--data-dir", data, "--work-dir", work, "--num-patches", count, "--patch-size",
            patch, "--workers", 1, *extra]


def earlier_work(work):
    """A work folder holding an earlier run's split and patches."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "split.json").write_text('{"train": ["old"], "test": []}\n')
    (work / "train.txt").write_text("old\n")
    (work / "test.txt").write_text("")
    write(work / "train" / "src" / "000000.png", noise(32, 32, 5))
    write(work / "train" / "label" / "000000.png", np.zeros((32, 32), np.uint8))
    return work


def patch_of_train_image(work):
    """The single whole-image patch, turned back to the image's orientation."""
    with open(work / "train" / "patches.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1
    patch = cv2.imread(str(work / "train" / "src" / rows[0]["patch"]), cv2.IMREAD_UNCHANGED)
    return inverse_dihedral(patch, int(rows[0]["transform"]))


# ---------------------------------------------------------------- intensity (image_io)

def test_16bit_image_with_one_hot_pixel_keeps_its_grey_levels(tmp_path, capsys):
    ramp = np.linspace(1000, 2000, 64 * 64).reshape(64, 64).astype(np.uint16)
    hot = ramp.copy()
    hot[10, 20] = 65535          # one hot camera pixel: 0.02 % of the frame
    data = make_data(tmp_path, {"a.png": hot, "b.png": ramp}, test=["b"])
    work = tmp_path / "work"
    code, _, err = run(gen_img_aug, aug_args(data, work, patch=64, count=1), capsys)
    accepted(code, err)
    patch = patch_of_train_image(work)
    # min..max scaling would squeeze the ramp into about 4 levels.
    assert len(np.unique(patch)) >= 200
    assert patch.min() == 0 and patch.max() == 255


def test_float_tiff_with_negative_values_maps_monotonically(tmp_path, capsys):
    ramp = np.linspace(-100, 100, 64 * 64, dtype=np.float32).reshape(64, 64)
    data = make_data(tmp_path, {"a.tif": ramp, "b.tif": ramp / 2 + 10}, test=["b"])
    work = tmp_path / "work"
    code, _, err = run(gen_img_aug, aug_args(data, work, patch=64, count=1), capsys)
    accepted(code, err)
    values = patch_of_train_image(work).ravel().astype(np.int64)
    # A uint8 cast of negative values wraps around: the raster-order ramp would jump down.
    assert np.all(np.diff(values) >= 0), "grey levels do not follow the float values"
    assert values[0] == 0 and values[-1] == 255


def test_nan_pixels_are_refused_with_file_and_count(tmp_path, capsys):
    img = np.linspace(0, 1, 40 * 40, dtype=np.float32).reshape(40, 40)
    bad = img.copy()
    bad[1, 1] = bad[5, 7] = bad[30, 2] = np.nan
    data = make_data(tmp_path, {"a.tif": img, "nanny.tif": bad})
    earlier_work(tmp_path / "work")
    before = snapshot(tmp_path)
    code, _, err = run(gen_img_aug, aug_args(data, tmp_path / "work"), capsys)
    refusal_line(code, err, "nanny.tif", "3 NaN", "replace them")
    assert_unchanged(tmp_path, before)


@pytest.mark.parametrize("module, words", [
    (gen_img_aug, ["percentile", "5"]),
    (gen_img_aug, ["fixed", "10", "2"]),
    (gen_img_aug, ["bogus"]),
    (predict_lovasz_loss, ["full", "3"]),
    (get_contour, ["percentile", "5", "200"]),
], ids=["aug-percentile-one-number", "aug-fixed-reversed", "aug-bogus", "predict-full-number",
        "contour-percentile-over-100"])
def test_bad_intensity_words_are_refused_by_the_option_parser(module, words, tmp_path, capsys):
    code, _, err = run(module, ["--work-dir", tmp_path / "work", "--data-dir", tmp_path / "data",
                                "--intensity", *words], capsys)
    argparse_refusal(code, err, "--intensity")
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- training keeps models

def make_patch_set(work, count=4, size=TILE, seed=0):
    """A work folder as gen_img_aug.py + pre_processing.py leave it (prep = raw here)."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        img = rng.integers(60, 200, (size, size), dtype=np.uint8)
        lbl = np.zeros((size, size), np.uint8)
        lbl[4:12, 4:12] = 1
        lbl[20:28, 16:30] = 2
        write(work / "train" / "prep" / f"{i:06d}.png", img)
        write(work / "train" / "label" / f"{i:06d}.png", lbl)
    (work / "train_mean_std.json").write_text(json.dumps(
        {"mean": [120.0], "std": [30.0], "color_mode": "grey", "channels": 1, "gamma": 1.2}))
    return work


def fake_trained_model(model_dir, command):
    """A model folder that holds a (pretend) model trained by `command`."""
    (model_dir / "snapshots").mkdir(parents=True)
    settings = vars(train.parse_args([str(a) for a in command]))
    (model_dir / "config.json").write_text(json.dumps({
        "classes": CLASSES, "settings_hash": "0123456789abcdef", "settings": settings}))
    (model_dir / BEST).write_bytes(np.random.default_rng(1).bytes(4096))
    (model_dir / "snapshots" / "epoch_025.h5").write_bytes(np.random.default_rng(2).bytes(4096))
    (model_dir / "state.json").write_text('{"best_val_loss": 0.4, "epochs_done": 25}\n')
    (model_dir / "log.csv").write_text("epoch,loss,val_loss\n0,0.9,0.8\n")
    return model_dir


def train_setup(root):
    data = root / "data"
    data.mkdir()
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    work = make_patch_set(root / "work")
    return data, work


def test_training_with_another_command_never_touches_the_trained_model(tmp_path, capsys):
    data, work = train_setup(tmp_path)
    command = ["--data-dir", data, "--work-dir", work, "--weights", "none", "--epochs", "1",
               "--verbose", "0"]
    model_dir = fake_trained_model(work / "weights", [*command, "--lr", "0.001"])
    before = snapshot(tmp_path)
    code, _, err = run(train, [*command, "--lr", "0.05"], capsys)
    # Only --lr differs, so --work-dir can only come from the advice on what to do.
    refusal_line(code, err, model_dir, "--lr", "--restart", "--work-dir")
    assert_unchanged(tmp_path, before)


def test_mistyped_weights_file_leaves_the_model_folder_untouched(tmp_path, capsys):
    data, work = train_setup(tmp_path)
    command = ["--data-dir", data, "--work-dir", work, "--epochs", "1", "--verbose", "0"]
    fake_trained_model(work / "weights", [*command, "--weights", "/data/xception.h5"])
    before = snapshot(tmp_path)
    code, _, err = run(train, [*command, "--weights", "/no/such.h5"], capsys)
    refusal_line(code, err, "--weights /no/such.h5", "none")
    assert_unchanged(tmp_path, before)


def test_training_refuses_patches_cut_for_other_classes(tmp_path, capsys):
    data, work = train_setup(tmp_path)
    (work / "split.json").write_text(json.dumps({
        "train": ["a"], "test": ["b"], "classes": ["background", "cell"], "label_values": [0, 1],
        "intensity": DEFAULT_INTENSITY}))
    before = snapshot(tmp_path)
    code, _, err = run(train, ["--data-dir", data, "--work-dir", work, "--weights", "none",
                               "--epochs", "1", "--verbose", "0"], capsys)
    refusal_line(code, err, work / "split.json", data / "classes.txt", "gen_img_aug.py")
    assert_unchanged(tmp_path, before)


def test_infinite_learning_rate_is_refused_by_the_option_parser(tmp_path, capsys):
    data, work = train_setup(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run(train, ["--data-dir", data, "--work-dir", work, "--weights", "none",
                               "--lr", "inf"], capsys)
    argparse_refusal(code, err, "--lr")
    assert_unchanged(tmp_path, before)


# ---------------------------------------------------------------- labels against classes

def test_label_with_a_class_beyond_classes_txt_is_refused(tmp_path, capsys):
    lbl = np.zeros((40, 40), np.uint8)
    lbl[5:9, 5:9] = 5
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)},
                     labels={"a.png": np.zeros((40, 40), np.uint8), "b.png": lbl})
    earlier_work(tmp_path / "work")
    before = snapshot(tmp_path)
    code, _, err = run(gen_img_aug, aug_args(data, tmp_path / "work"), capsys)
    line = refusal_line(code, err, data / "label" / "b.png", data / "classes.txt",
                        "fix the label or the class list")
    assert "class 5" in line
    assert_unchanged(tmp_path, before)


def palette_png(path, indices):
    img = Image.frombytes("P", indices.shape[::-1], indices.astype(np.uint8).tobytes())
    # Palette colours unlike the indices: read as colour, the label would be meaningless.
    img.putpalette([0, 0, 0, 255, 40, 40, 40, 255, 90] + [7] * (256 * 3 - 9))
    img.save(path)


def class_blocks(h, w, shift=0):
    lbl = np.zeros((h, w), np.uint8)
    lbl[4 + shift:20, 4:24] = 1
    lbl[24:36, 10 + shift:30] = 2
    return lbl


def test_labels_unchanged_since_the_last_split_under_reordered_classes_are_refused(tmp_path,
                                                                                    capsys):
    """Labels made elsewhere (no labelme_to_label.py record) and classes.txt reordered: a rerun
    into the same work folder cut bead pixels as cells, unsaid, though split.json held the
    classes those same labels were cut for."""
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)},
                     labels={"a.png": class_blocks(40, 40), "b.png": class_blocks(40, 40, 3)},
                     test=["b"])
    work = tmp_path / "work"
    accepted(*run(gen_img_aug, aug_args(data, work), capsys)[::2])
    (data / "classes.txt").write_text("background\ncell\nbead\n")
    before = snapshot(tmp_path)
    code, _, err = run(gen_img_aug, aug_args(data, work), capsys)
    line = refusal_line(code, err, data / "label" / "a.png", work / "split.json",
                        data / "classes.txt")
    assert "with 'bead' as class 1, but" in line and "now lists 'bead' as class 2" in line
    assert_unchanged(tmp_path, before)
    (data / "classes.txt").write_text("\n".join([*CLASSES, "nucleus"]) + "\n")   # appended
    accepted(*run(gen_img_aug, aug_args(data, work), capsys)[::2])
    (data / "classes.txt").write_text("background\ncell\nbead\n")
    for name, shift in (("a", 0), ("b", 3)):                 # renumbered for the new order
        write(data / "label" / f"{name}.png", (3 - class_blocks(40, 40, shift)) % 3)
    accepted(*run(gen_img_aug, aug_args(data, work), capsys)[::2])


@pytest.mark.parametrize("kind", ["palette", "uint16"])
def test_palette_and_16bit_labels_are_read_as_class_indices(kind, tmp_path, capsys):
    labels = {"a": class_blocks(40, 40), "b": class_blocks(40, 40, shift=3)}
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)},
                     labels={}, test=["b"])
    for name, lbl in labels.items():
        if kind == "palette":
            palette_png(data / "label" / f"{name}.png", lbl)
        else:
            write(data / "label" / f"{name}.png", lbl.astype(np.uint16))
    work = tmp_path / "work"
    code, _, err = run(gen_img_aug, aug_args(data, work), capsys)
    accepted(code, err)
    copied = cv2.imread(str(work / "test" / "label" / "b.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(copied, labels["b"])
    assert json.loads((work / "split.json").read_text())["label_values"] == [0, 1, 2]


def test_pickled_npy_label_is_refused_without_loading_it(tmp_path, capsys):
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)},
                     labels={"a.png": np.zeros((40, 40), np.uint8)})
    np.save(data / "label" / "b.npy", np.zeros((40, 40), dtype=object), allow_pickle=True)
    earlier_work(tmp_path / "work")
    before = snapshot(tmp_path)
    code, _, err = run(gen_img_aug, aug_args(data, tmp_path / "work"), capsys)
    refusal_line(code, err, data / "label" / "b.npy", "np.save")
    assert_unchanged(tmp_path, before)


@pytest.mark.parametrize("array, said", [
    (np.eye(40, dtype=np.uint8).astype(str), "<U3 values"),
    (np.eye(40, dtype=np.complex64) * (1 + 2j), "complex64 values"),
    (np.eye(40, dtype=np.uint8).astype("datetime64[s]"), "datetime64[s] values"),
    (np.stack([1 - np.eye(40, dtype=np.uint8), np.eye(40, dtype=np.uint8)]), "2 x 40 x 40 array")],
    ids=["strings", "complex", "dates", "one-hot"])
def test_npy_label_of_no_class_indices_is_refused(array, said, tmp_path, capsys):
    """Strings and dates gave a traceback, complex values lost their imaginary part unsaid,
    and a one-hot (classes, H, W) array was said to have W channels."""
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)},
                     labels={"a.png": np.eye(40, dtype=np.uint8)})
    np.save(data / "label" / "b.npy", array)
    earlier_work(tmp_path / "work")
    before = snapshot(tmp_path)
    code, _, err = run(gen_img_aug, aug_args(data, tmp_path / "work"), capsys)
    refusal_line(code, err, data / "label" / "b.npy", said)
    assert_unchanged(tmp_path, before)


# ---------------------------------------------------------------- labelme_to_label.py

def shape(label, points, shape_type="rectangle"):
    return {"label": label, "points": points, "group_id": None, "shape_type": shape_type,
            "flags": {}}


def labelme_doc(name, shapes, image_path=None, size=(30, 40)):
    return {"version": "5.5.0", "flags": {}, "shapes": shapes,
            "imagePath": image_path or f"{name}.png", "imageData": None,
            "imageHeight": size[0], "imageWidth": size[1]}


def labelme_project(root, docs, classes_bytes=None):
    """<root>/labelme with an image and JSON per doc, <root>/data with classes.txt and an
    earlier converted pair (old.png) in src/ and label/."""
    data, labelme = root / "data", root / "labelme"
    labelme.mkdir(parents=True)
    (data / "src").mkdir(parents=True)
    (data / "label").mkdir()
    (data / "classes.txt").write_bytes(classes_bytes or "\n".join(CLASSES).encode() + b"\n")
    write(data / "src" / "old.png", noise(30, 40, 7))
    write(data / "label" / "old.png", class_blocks(30, 40)[:30])
    for i, (name, doc) in enumerate(docs.items()):
        write(labelme / f"{name}.png", noise(30, 40, i))
        text = doc if isinstance(doc, (str, bytes)) else json.dumps(doc)
        (labelme / f"{name}.json").write_bytes(text if isinstance(text, bytes) else text.encode())
    return data, labelme


GOOD_SHAPES = [shape("cell", [[2, 3], [12, 9]])]


@pytest.mark.parametrize("bad_shape, names", [
    (shape("cell", [[1, 1], [9, 9]], "blob"), ["blob"]),
    (shape("cell", [[1, 1], [9, 9]], "polygon"), ["polygon", "cell"]),
    (shape("bead", [[1, 1], ["x", 9]], "rectangle"), ["rectangle", "bead"]),
], ids=["unknown-shape-type", "polygon-with-two-points", "non-numeric-point"])
def test_labelme_checks_every_file_before_writing_any(bad_shape, names, tmp_path, capsys):
    data, labelme = labelme_project(tmp_path, {
        "a_good": labelme_doc("a_good", GOOD_SHAPES),
        "b_bad": labelme_doc("b_bad", [*GOOD_SHAPES, bad_shape])})
    before = snapshot(tmp_path)
    code, _, err = run(labelme_to_label, ["--input", labelme, "--data-dir", data], capsys)
    refusal_line(code, err, labelme / "b_bad.json", *names)
    assert_unchanged(tmp_path, before)    # a_good's image and label were not written either


@pytest.mark.parametrize("image_path", ["/etc/hostname", "../../x.png"])
def test_image_path_outside_the_folders_is_refused(image_path, tmp_path, capsys):
    data, labelme = labelme_project(tmp_path, {
        "a": labelme_doc("a", GOOD_SHAPES, image_path=image_path)})
    before = snapshot(tmp_path)
    code, _, err = run(labelme_to_label, ["--input", labelme, "--data-dir", data], capsys)
    refusal_line(code, err, labelme / "a.json", "--allow-outside-paths")
    assert_unchanged(tmp_path, before)


def test_image_path_outside_is_read_with_allow_outside_paths(tmp_path, capsys):
    picture = write(tmp_path / "elsewhere" / "pic.png", noise(30, 40, 3))
    data, labelme = labelme_project(tmp_path, {
        "a": labelme_doc("a", GOOD_SHAPES, image_path="../elsewhere/pic.png")})
    code, _, err = run(labelme_to_label, ["--input", labelme, "--data-dir", data,
                                          "--allow-outside-paths"], capsys)
    accepted(code, err)
    np.testing.assert_array_equal(cv2.imread(str(data / "src" / "a.png"), cv2.IMREAD_UNCHANGED),
                                  cv2.imread(str(picture), cv2.IMREAD_UNCHANGED))
    assert (cv2.imread(str(data / "label" / "a.png"), cv2.IMREAD_UNCHANGED) == 2).sum() == 60


def test_malformed_labelme_json_is_refused(tmp_path, capsys):
    data, labelme = labelme_project(tmp_path, {
        "a": labelme_doc("a", GOOD_SHAPES), "b": '{"shapes": [ {"label": "cell",'})
    before = snapshot(tmp_path)
    code, _, err = run(labelme_to_label, ["--input", labelme, "--data-dir", data], capsys)
    refusal_line(code, err, labelme / "b.json", "not valid JSON", "write it anew")
    assert_unchanged(tmp_path, before)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_labelme_json_with_a_byte_order_mark_is_read(encoding, tmp_path, capsys):
    text = json.dumps(labelme_doc("a", GOOD_SHAPES))
    data, labelme = labelme_project(tmp_path, {"a": text.encode(encoding)})
    assert (labelme / "a.json").read_bytes()[:2] in (b"\xef\xbb", b"\xff\xfe", b"\xfe\xff")
    code, _, err = run(labelme_to_label, ["--input", labelme, "--data-dir", data], capsys)
    accepted(code, err)
    assert (cv2.imread(str(data / "label" / "a.png"), cv2.IMREAD_UNCHANGED) == 2).sum() == 60


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16"])
def test_classes_txt_with_a_byte_order_mark_is_read(encoding, tmp_path, capsys):
    # A shape labelled with the first class only matches if the BOM is not part of its name.
    shapes = [shape("background", [[0, 0], [40, 30]]), shape("cell", [[2, 3], [12, 9]])]
    data, labelme = labelme_project(tmp_path, {"a": labelme_doc("a", shapes)},
                                    classes_bytes="background\nbead\ncell\n".encode(encoding))
    code, _, err = run(labelme_to_label, ["--input", labelme, "--data-dir", data], capsys)
    accepted(code, err)
    label = cv2.imread(str(data / "label" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert sorted(np.unique(label).tolist()) == [0, 2] and (label == 2).sum() == 60


def test_classes_txt_with_invalid_bytes_is_refused(tmp_path, capsys):
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)})
    (data / "classes.txt").write_bytes(b"background\nbe\xffad\ncell\n")
    before = snapshot(tmp_path)
    code, _, err = run(gen_img_aug, aug_args(data, tmp_path / "work"), capsys)
    refusal_line(code, err, data / "classes.txt", "save it as UTF-8")
    assert_unchanged(tmp_path, before)


def test_empty_labelme_folder_is_refused(tmp_path, capsys):
    data, labelme = labelme_project(tmp_path, {})
    before = snapshot(tmp_path)
    code, _, err = run(labelme_to_label, ["--input", labelme, "--data-dir", data], capsys)
    refusal_line(code, err, labelme)
    assert_unchanged(tmp_path, before)


def test_labelme_files_in_subfolders_are_counted_in_a_note(tmp_path, capsys):
    data, labelme = labelme_project(tmp_path, {"a": labelme_doc("a", GOOD_SHAPES)})
    for folder in ("batch2", ".hidden"):
        write(labelme / folder / "b.png", noise(30, 40, 3))
        (labelme / folder / "b.json").write_text(json.dumps(labelme_doc("b", GOOD_SHAPES)))
    code, out, err = run(labelme_to_label, ["--input", labelme, "--data-dir", data], capsys)
    accepted(code, err)
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "1 .json file in" in notes[0] and "batch2/b.json" in notes[0]
    assert not (data / "label" / "b.png").exists()

    (labelme / "a.json").unlink()
    code, _, err = run(labelme_to_label, ["--input", labelme, "--data-dir", data], capsys)
    refusal_line(code, err, labelme, "1 in its subfolders", "batch2/b.json", "--input")


@pytest.mark.parametrize("where, embed", [("labelme", False), ("src", False), ("src", True)],
                         ids=["beside-the-json", "in-data-src", "in-data-src-embedded"])
def test_labelme_image_that_is_a_tiff_stack_is_refused(where, embed, tmp_path, capsys):
    # gen_img_aug.py wants a label per plane (stack_p0, stack_p1): a label stack.png fits none.
    data, labelme = labelme_project(tmp_path, {})
    stack = multipage_tiff((labelme if where == "labelme" else data / "src") / "stack.tif")
    doc = labelme_doc("stack", GOOD_SHAPES, size=(40, 40),
                      image_path="stack.tif" if where == "labelme" else "../data/src/stack.tif")
    if embed:
        doc["imageData"] = base64.b64encode(cv2.imencode(".png", noise(40, 40, 1))[1]).decode()
    (labelme / "stack.json").write_text(json.dumps(doc))
    before = snapshot(tmp_path)
    code, _, err = run(labelme_to_label, ["--input", labelme, "--data-dir", data], capsys)
    refusal_line(code, err, labelme / "stack.json", stack.name, "2 planes", "imagePath")
    assert_unchanged(tmp_path, before)


def test_labelme_removes_a_killed_runs_staging_folder(tmp_path, capsys):
    data, labelme = labelme_project(tmp_path, {"a": labelme_doc("a", GOOD_SHAPES)})
    dead = leftover(tmp_path, "data", dead_pid())
    live = leftover(tmp_path, "data", 1)     # pid 1 always runs: another run's work in progress
    code, _, err = run(labelme_to_label, ["--input", labelme, "--data-dir", data], capsys)
    accepted(code, err)
    assert not dead.exists()
    assert live.exists()
    assert (data / "label" / "a.png").is_file()


# ---------------------------------------------------------------- gen_img_aug.py inputs

@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("kind", ["truncated", "zero-byte", "text"])
def test_unreadable_image_in_data_src_is_refused(kind, suffix, tmp_path, capsys):
    data = make_data(tmp_path, {"a.png": noise(40, 40)},
                     labels={"a.png": np.zeros((40, 40), np.uint8),
                             "b.png": np.zeros((40, 40), np.uint8)})
    write_bad_image(data / "src" / f"b{suffix}", kind)
    earlier_work(tmp_path / "work")
    before = snapshot(tmp_path)
    code, _, err = run(gen_img_aug, aug_args(data, tmp_path / "work"), capsys)
    refusal_line(code, err, data / "src" / f"b{suffix}")
    assert_unchanged(tmp_path, before)


def test_stack_labelled_as_one_frame_is_refused(tmp_path, capsys):
    # Each plane of a stack is a frame and needs its own label, stack_p0.png, stack_p1.png.
    data = make_data(tmp_path, {"a.png": noise(40, 40)},
                     labels={"a.png": np.zeros((40, 40), np.uint8),
                             "stack.png": np.zeros((40, 40), np.uint8)})
    multipage_tiff(data / "src" / "stack.tif")
    earlier_work(tmp_path / "work")
    before = snapshot(tmp_path)
    code, _, err = run(gen_img_aug, aug_args(data, tmp_path / "work"), capsys)
    refusal_line(code, err, "2 images have no label", "stack_p0, stack_p1")
    assert_unchanged(tmp_path, before)


def test_empty_data_src_is_refused(tmp_path, capsys):
    data = make_data(tmp_path, {})
    before = snapshot(tmp_path)
    code, _, err = run(gen_img_aug, aug_args(data, tmp_path / "work"), capsys)
    refusal_line(code, err, data / "src")
    assert_unchanged(tmp_path, before)


def test_absurd_patch_size_is_refused_before_the_work_folder_changes(tmp_path, capsys):
    if (gen_img_aug.available_memory() or 0) > 2 ** 39:
        pytest.skip("over 512 GiB free: a 200000 px patch might fit, nothing to refuse")
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)})
    work = earlier_work(tmp_path / "work")
    before = snapshot(tmp_path)
    code, _, err = run(gen_img_aug, aug_args(data, work, patch=200000), capsys)
    refusal_line(code, err, "--patch-size 200000", "GiB", "--workers")
    assert_unchanged(tmp_path, before)      # not even split.json removed or test/ started
    assert not (work / "test").exists()


def test_grey_and_colour_images_mixed_are_accepted_in_grey_mode(tmp_path, capsys):
    images = {"g1.png": noise(48, 48, 1), "g2.png": noise(48, 48, 2),
              "c1.png": noise(48, 48, 3, channels=3), "c2.png": noise(48, 48, 4, channels=3)}
    data = make_data(tmp_path, images, test=["g2"])
    work = tmp_path / "work"
    code, _, err = run(gen_img_aug, aug_args(data, work, count=12), capsys)
    accepted(code, err)
    with open(work / "train" / "patches.csv") as f:
        sources = {row["image"] for row in csv.DictReader(f)}
    assert "g1" in sources and sources & {"c1", "c2"}, sources
    code, _, err = run(pre_processing, ["--work-dir", work, "--color-mode", "grey",
                                        "--workers", 1], capsys)
    accepted(code, err)
    prep = sorted((work / "train" / "prep").glob("*.png"))
    assert len(prep) == 12
    assert all(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).ndim == 2 for p in prep)


# ---------------------------------------------------------------- option values

@pytest.mark.parametrize("module, option, value", [
    (pre_processing, "--gamma", "nan"),
    (get_contour, "--pixel-size", "nan"),
    (predict_lovasz_loss, "--overlap", "nan"),
    (predict_lovasz_loss, "--overlap", "0.95"),
    (gen_img_aug, "--foreground-fraction", "nan"),
    (gen_img_aug, "--scale", "nan"),
    (gen_img_aug, "--scale", "0"),
    (gen_img_aug, "--scale", "-0.5"),
    (gen_img_aug, "--scale", "5"),
], ids=["pre_processing-gamma", "get_contour-pixel-size", "predict-overlap",
        "predict-overlap-0.95",
        "gen_img_aug-foreground-fraction", "gen_img_aug-scale-nan", "gen_img_aug-scale-0",
        "gen_img_aug-scale-negative", "gen_img_aug-scale-5"])
def test_nan_option_values_are_refused_by_the_option_parser(module, option, value, tmp_path,
                                                            capsys):
    code, _, err = run(module, ["--work-dir", tmp_path / "work", "--data-dir", tmp_path / "data",
                                option, value], capsys)
    argparse_refusal(code, err, option)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("module, extra, named", [
    (predict_lovasz_loss, ["--overlap", "0.5", "--tta"], "--overlap, --tta"),
    (predict_lovasz_loss, ["--weights", "swa"], "--weights"),
    (get_contour, ["--min-area", "50"], "--min-area"),
    (get_contour, ["--no-panels"], "--no-panels"),
    (get_contour, [], None)], ids=["predict", "weights", "contour", "negated", "control"])
def test_options_a_merge_would_drop_are_refused(module, extra, named, tmp_path, capsys):
    """--merge joins what the shards' runs made: an option given with it changed nothing,
    unsaid. The folder options every script takes stay allowed."""
    code, _, err = run(module, ["--work-dir", tmp_path / "work", "--data-dir", tmp_path / "data",
                                "--merge", tmp_path / "a_shard1of2", tmp_path / "a_shard2of2",
                                *extra], capsys)
    if named is None:       # reaches the merge, which finds no shard folders
        assert code == 2 and err.startswith("error: ") and "usage:" not in err, err
    else:
        argparse_refusal(code, err, named)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("module, option", [(predict_lovasz_loss, "--input"),
                                            (predict_lovasz_loss, "--merge"),
                                            (get_contour, "--merge"), (get_contour, "--pred-dir"),
                                            (labelme_to_label, "--input")])
def test_a_file_pattern_that_reached_the_script_is_told_so(module, option, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    pattern = tmp_path / "in" / "*.tif"
    code, _, err = run(module, ["--work-dir", tmp_path / "work", option, pattern], capsys)
    refusal_line(code, err, pattern, "a file name pattern that nothing matched or no shell "
                 "expanded (quoted?)")


def test_a_negative_overlap_is_told_what_overlap_is(tmp_path, capsys):
    code, _, err = run(predict_lovasz_loss, ["--work-dir", tmp_path / "work", "--overlap=-0.1"],
                       capsys)
    argparse_refusal(code, err, "--overlap")
    assert "from 0 (tiles side by side)" in err and "not -0.1" in err


def test_one_model_named_twice_is_refused_not_run_twice(model_dir, tmp_path, capsys):
    inp = input_folder(tmp_path, {"a.png": noise(40, 40)})
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work", "--input",
                                                         inp, "--weights", "best", "best"),
                       capsys)
    refusal_line(code, err, "--weights", "twice")


@pytest.mark.parametrize("module", [gen_img_aug, pre_processing, train, predict_lovasz_loss],
                         ids=["gen_img_aug", "pre_processing", "train", "predict"])
def test_work_folder_that_is_a_file_is_refused(module, tmp_path, capsys):
    work = tmp_path / "work"
    work.write_text("not a folder\n")
    before = snapshot(tmp_path)
    code, _, err = run(module, ["--work-dir", work, "--data-dir", tmp_path / "data"], capsys)
    refusal_line(code, err, "--work-dir", work)
    assert_unchanged(tmp_path, before)


def test_a_file_where_the_figures_folder_goes_is_refused_before_anything_changes(tmp_path,
                                                                               capsys):
    """It gave a traceback once the split and patches were already replaced."""
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)})
    work = earlier_work(tmp_path / "work")
    (work / "figures").write_text("notes\n")
    before = snapshot(tmp_path)
    code, _, err = run(gen_img_aug, aug_args(data, work), capsys)
    refusal_line(code, err, work / "figures", "--work-dir")
    assert_unchanged(tmp_path, before)


# ---------------------------------------------------------------- pre_processing.py

def test_unreadable_patch_keeps_the_earlier_statistics_and_prep(tmp_path, capsys):
    work = tmp_path / "work"
    for i in range(3):
        write(work / "train" / "src" / f"{i:06d}.png", noise(32, 32, i))
    (work / "split.json").write_text("{}")
    code, _, err = run(pre_processing, ["--work-dir", work, "--workers", 1], capsys)
    accepted(code, err)
    write_bad_image(work / "train" / "src" / "000003.png", "truncated")
    before = snapshot(tmp_path)
    code, _, err = run(pre_processing, ["--work-dir", work, "--workers", 1], capsys)
    refusal_line(code, err, work / "train" / "src" / "000003.png")
    assert_unchanged(tmp_path, before)


@pytest.mark.parametrize("module", [gen_img_aug, pre_processing],
                         ids=["gen_img_aug", "pre_processing"])
def test_a_work_folder_another_run_is_writing_is_refused(module, tmp_path, capsys):
    """Two gen_img_aug.py runs on one folder mixed one's test/ with the other's train/."""
    from outputs import LOCK_NAME, work_lock
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)})
    work = earlier_work(tmp_path / "work")
    args = aug_args(data, work) if module is gen_img_aug else ["--work-dir", work,
                                                               "--workers", 1]
    with work_lock(work, "gen_img_aug.py"):
        before = snapshot(tmp_path)
        code, _, err = run(module, args, capsys)
        refusal_line(code, err, work, "is in use by gen_img_aug.py")
        assert_unchanged(tmp_path, before)
    accepted(*run(module, args, capsys)[::2])         # free again once the holder is done
    assert (work / LOCK_NAME).is_file()


def test_a_work_folder_gen_img_aug_did_not_finish_is_refused(tmp_path, capsys):
    """Killed mid-rerun, gen_img_aug.py leaves new test/ beside old train/ and no split.json:
    neither statistics nor a test score may come from that folder."""
    work = tmp_path / "work"
    for i in range(3):
        write(work / "train" / "src" / f"{i:06d}.png", noise(32, 32, i))
    write(work / "test" / "src" / "a.png", noise(32, 32))
    before = snapshot(tmp_path)
    code, _, err = run(pre_processing, ["--work-dir", work, "--workers", 1], capsys)
    refusal_line(code, err, work, "split.json", "gen_img_aug.py")
    code, _, err = run(predict_lovasz_loss, ["--work-dir", work], capsys)
    refusal_line(code, err, work, "split.json", "gen_img_aug.py")
    assert_unchanged(tmp_path, before)


# ---------------------------------------------------------------- predict_lovasz_loss.py

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A model folder as training writes it, around a one-layer network (no training)."""
    keras = pytest.importorskip("keras")
    folder = tmp_path_factory.mktemp("model")
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((TILE, TILE, 3)),
                            keras.layers.Conv2D(len(CLASSES), 3, padding="same")])
    keras.saving.save_model(net, folder / BEST, include_optimizer=False)
    config = {
        "model": "unet_xception_resnetblock", "classes": CLASSES, "num_classes": len(CLASSES),
        "input_shape": [TILE, TILE, 3], "patch_size": [TILE, TILE], "color_mode": "grey",
        "image_channels": 1, "intensity": dict(DEFAULT_INTENSITY),
        "preprocessing": {"mean": [120.0], "std": [30.0], "gamma": 1.2,
                          "input_scale": "prep / 255, grey repeated to 3 channels"},
        "decision": "argmax", "weights_files": {"best": BEST, "swa": SWA},
        "settings_hash": "0123456789abcdef", "sha256": {BEST: outputs.sha256_of(folder / BEST)},
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder


def copy_model(model_dir, root):
    return Path(shutil.copytree(model_dir, root / "model"))


def colour_model(model_dir, root):
    model = copy_model(model_dir, root)
    config = json.loads((model / "config.json").read_text())
    config.update(color_mode="rgb", image_channels=3)
    config["preprocessing"].update(mean=[120.0] * 3, std=[30.0] * 3, input_scale="prep / 255")
    (model / "config.json").write_text(json.dumps(config, indent=2))
    return model


def earlier_prediction(out):
    """An output folder of an earlier prediction run."""
    write(out / "old.png", class_blocks(40, 40))
    write(out / "old_color.png", noise(40, 40, 8, channels=3))
    (out / "predict.json").write_text(json.dumps({"classes": CLASSES, "images": ["old"]}))
    return out


def predict_args(model, work, *extra):
    return ["--model-dir", model, "--work-dir", work, "--data-dir", work.parent / "data",
            "--batch-size", 64, *extra]


def input_folder(root, images):
    folder = root / "inp"
    folder.mkdir()
    for filename, img in images.items():
        write(folder / filename, img)
    return folder


def nan_statistics(model):
    config = json.loads((model / "config.json").read_text())
    config["preprocessing"]["mean"] = [float("nan")]
    (model / "config.json").write_text(json.dumps(config))
    assert '"mean": [NaN]' in (model / "config.json").read_text()
    return model / "config.json", "mean", "write it anew"


def short_equalization_histogram(model):
    config = json.loads((model / "config.json").read_text())
    config["preprocessing"].update(equalize="dataset", histogram=[[5] * 255])
    (model / "config.json").write_text(json.dumps(config))
    return model / "config.json", "histogram", "write it anew"


def unknown_equalization(model):
    config = json.loads((model / "config.json").read_text())
    config["preprocessing"]["equalize"] = "frame"
    (model / "config.json").write_text(json.dumps(config))
    return model / "config.json", "equalize", "'frame'"


def negative_scale(model):
    config = json.loads((model / "config.json").read_text())
    config["scale"] = -0.5
    (model / "config.json").write_text(json.dumps(config))
    return model / "config.json", "'scale' must be a positive number"


def random_bytes_in_the_model(model):
    data = bytearray((model / BEST).read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = np.random.default_rng(3).bytes(64)
    (model / BEST).write_bytes(bytes(data))
    return model / BEST, "sha256", "--no-verify"


def truncated_config(model):
    text = (model / "config.json").read_text()
    (model / "config.json").write_text(text[:len(text) // 2])
    return model / "config.json", "not valid JSON", "write it anew"


def edited_config(model, **fields):
    config = json.loads((model / "config.json").read_text())
    config.update(fields)
    (model / "config.json").write_text(json.dumps(config))


def weights_files_as_a_list(model):
    edited_config(model, weights_files=[BEST])
    return model / "config.json", "'weights_files' must map 'best'"


def weights_files_without_best(model):
    edited_config(model, weights_files={"swa": SWA})
    return model / "config.json", "'weights_files' must map 'best'"


def sha256_as_a_list(model):
    edited_config(model, sha256=["0" * 64])
    return model / "config.json", "'sha256' must map model file names"


def a_class_named_twice(model):
    classes = json.loads((model / "config.json").read_text())["classes"]
    edited_config(model, classes=[classes[0], classes[1], classes[1].upper()][:len(classes)])
    return model / "config.json", "are one file name on macOS"


def a_class_listed_twice(model):
    classes = json.loads((model / "config.json").read_text())["classes"]
    edited_config(model, classes=[classes[0], classes[1], classes[1]][:len(classes)])
    return model / "config.json", f"'classes' lists {classes[1]!r} twice"


def a_class_name_with_a_slash(model):
    classes = json.loads((model / "config.json").read_text())["classes"]
    edited_config(model, classes=[classes[0], "be/ad", *classes[2:]])
    return model / "config.json", "class name 'be/ad' holds '/'"


@pytest.mark.parametrize("damage", [nan_statistics, short_equalization_histogram,
                                    unknown_equalization, negative_scale,
                                    random_bytes_in_the_model,
                                    truncated_config, weights_files_as_a_list,
                                    weights_files_without_best, sha256_as_a_list,
                                    a_class_named_twice, a_class_listed_twice,
                                    a_class_name_with_a_slash])
def test_a_damaged_model_folder_is_refused(model_dir, tmp_path, capsys, damage):
    model = copy_model(model_dir, tmp_path)
    expected_words = damage(model)
    inp = input_folder(tmp_path, {"a.png": noise(40, 40)})
    earlier_prediction(tmp_path / "work" / "predict" / "inp")
    before = snapshot(tmp_path)
    code, _, err = run(predict_lovasz_loss, predict_args(model, tmp_path / "work", "--input", inp),
                       capsys)
    refusal_line(code, err, *expected_words)
    assert_unchanged(tmp_path, before)


def test_single_image_file_as_input_is_segmented(model_dir, tmp_path, capsys):
    picture = write(tmp_path / "pics" / "frame.png", noise(50, 70))
    work = tmp_path / "work"
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, work, "--input", picture),
                       capsys)
    accepted(code, err)
    mask = cv2.imread(str(work / "predict" / "frame" / "frame.png"), cv2.IMREAD_UNCHANGED)
    assert mask is not None and mask.shape == (50, 70) and mask.max() < len(CLASSES)


def second_input_of_the_name_is_refused(model_dir, work, first, second, capsys):
    """Predict first, then see second, whose default output is first's, refused and nothing
    beside the work folder's parent changed."""
    accepted(*run(predict_lovasz_loss, predict_args(model_dir, work, "--input", first),
                  capsys)[::2])
    before = snapshot(work.parent)
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, work, "--input", second),
                       capsys)
    refusal_line(code, err, str(first.resolve()), "--output")
    assert_unchanged(work.parent, before)


def test_another_folder_of_the_same_name_does_not_replace_earlier_predictions(model_dir,
                                                                               tmp_path, capsys):
    """day1/images and day2/images both default to W/predict/images: the second is refused
    and day 1's masks stay; the same input again, or --output, is predicted."""
    work = tmp_path / "work"
    day1 = write(tmp_path / "day1" / "images" / "plate1.png", noise(40, 40)).parent
    day2 = write(tmp_path / "day2" / "images" / "plate2.png", noise(40, 40, 1)).parent
    second_input_of_the_name_is_refused(model_dir, work, day1, day2, capsys)
    accepted(*run(predict_lovasz_loss, predict_args(model_dir, work, "--input", day1),
                  capsys)[::2])
    accepted(*run(predict_lovasz_loss, predict_args(model_dir, work, "--input", day2, "--output",
                                                    work / "predict" / "day2"), capsys)[::2])
    assert (work / "predict" / "images" / "plate1.png").is_file()
    assert (work / "predict" / "day2" / "plate2.png").is_file()


def test_another_image_of_the_same_name_does_not_replace_earlier_predictions(model_dir,
                                                                              tmp_path, capsys):
    """in/x.png and in/x.tif both default to W/predict/x: the second is refused, and the
    contours of the first find their own image although a second one shares its name."""
    work = tmp_path / "work"
    png = write(tmp_path / "in" / "x.png", noise(40, 40))
    tif = write(tmp_path / "in" / "x.tif", noise(40, 40, 1))
    second_input_of_the_name_is_refused(model_dir, work, png, tif, capsys)
    accepted(*run(get_contour, ["--pred-dir", work / "predict" / "x", "--work-dir", work],
                  capsys)[::2])


def test_an_input_of_the_name_predicted_meanwhile_is_not_replaced(model_dir, tmp_path, capsys,
                                                                 monkeypatch):
    """day2/images predicted to W/predict/images while day1/images, begun before, still runs:
    day 1's run, which found the folder empty, is refused when it would publish over day 2's
    masks (it said they were written), not replace them."""
    work = tmp_path / "work"
    day1 = write(tmp_path / "day1" / "images" / "plate1.png", noise(40, 40)).parent
    day2 = write(tmp_path / "day2" / "images" / "plate2.png", noise(40, 40, 1)).parent
    day2_masks = tmp_path / "day2_masks"    # what day 2's run publishes, made beforehand
    accepted(*run(predict_lovasz_loss, predict_args(model_dir, work, "--input", day2,
                                                    "--output", day2_masks), capsys)[::2])
    real = predict_lovasz_loss.FrameRun.in_memory

    def day2_finishes_meanwhile(self, *args):
        shutil.copytree(day2_masks, work / "predict" / "images")
        return real(self, *args)
    monkeypatch.setattr(predict_lovasz_loss.FrameRun, "in_memory", day2_finishes_meanwhile)
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, work, "--input", day1),
                       capsys)
    refusal_line(code, err, str(day2.resolve()), "--output")
    assert (work / "predict" / "images" / "plate2.png").is_file()
    assert not (work / "predict" / "images" / "plate1.png").exists()


def test_a_model_file_of_another_folder_is_verified_by_its_own_config(model_dir, tmp_path,
                                                                      capsys):
    """--weights best ../seed2/weights/<best>: the second seed's config.json recorded its
    sha256, so a file replaced there (here by another, loadable model) is refused like one
    of --model-dir, not averaged in with a note that it goes unchecked."""
    keras = pytest.importorskip("keras")
    seed2 = Path(shutil.copytree(model_dir, tmp_path / "seed2"))
    keras.utils.set_random_seed(1)
    net = keras.Sequential([keras.Input((TILE, TILE, 3)),
                            keras.layers.Conv2D(len(CLASSES), 3, padding="same")])
    keras.saving.save_model(net, seed2 / BEST, include_optimizer=False)
    inp = input_folder(tmp_path, {"a.png": noise(40, 40)})
    args = predict_args(model_dir, tmp_path / "work", "--input", inp, "--weights", "best",
                        seed2 / BEST)
    before = snapshot(tmp_path)
    code, _, err = run(predict_lovasz_loss, args, capsys)
    refusal_line(code, err, seed2 / BEST, seed2 / "config.json", "--no-verify")
    assert_unchanged(tmp_path, before)
    accepted(*run(predict_lovasz_loss, [*args, "--no-verify"], capsys)[::2])


@pytest.mark.parametrize("bad_label, said", [((30, 30), "is 30x30"), ((40, 40), "class 7")],
                         ids=["other-size", "other-class"])
def test_a_bad_label_stops_the_run_before_the_model_loads(bad_label, said, model_dir, tmp_path,
                                                         capsys, monkeypatch):
    """A label of another size, or holding a class the model lacks, for the last frame: not
    found after every frame before it was predicted, whose work the error throws away."""
    inp = input_folder(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)})
    label = class_blocks(*bad_label)
    if said == "class 7":
        label[0, 0] = 7
    write(tmp_path / "labels" / "a.png", class_blocks(40, 40))
    write(tmp_path / "labels" / "b.png", label)

    def loads_the_model(*args, **kwargs):
        raise AssertionError("the model was loaded before every label was read")
    monkeypatch.setattr(predict_lovasz_loss, "open_model", loads_the_model)
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work", "--input",
                                                         inp, "--labels", tmp_path / "labels"),
                       capsys)
    refusal_line(code, err, tmp_path / "labels" / "b.png", said)


@pytest.mark.parametrize("option", ["--input", "--labels"])
def test_images_or_labels_read_from_the_output_folder_are_refused(option, model_dir, tmp_path,
                                                                  capsys):
    """An earlier run's mask given as an image, or its masks as labels to compare with, with
    --output that run's folder: the run would replace the folder whole, and with it what it
    read."""
    out = earlier_prediction(tmp_path / "out")
    inp = input_folder(tmp_path, {"old.png": noise(40, 40)})
    read = ["--input", out / "old.png"] if option == "--input" else \
        ["--input", inp, "--labels", out]
    before = snapshot(tmp_path)
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work", *read,
                                                         "--output", out), capsys)
    refusal_line(code, err, option, out, "--output")
    assert_unchanged(tmp_path, before)


def test_labels_of_a_data_set_with_other_classes_are_refused(model_dir, tmp_path, capsys):
    inp = input_folder(tmp_path, {"a.png": noise(40, 40)})
    other = tmp_path / "other"
    write(other / "label" / "a.png", class_blocks(40, 40) % 2)
    (other / "classes.txt").write_text("background\nnucleus\n")
    before = snapshot(tmp_path)
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work", "--input",
                                                         inp, "--labels", other / "label"),
                       capsys)
    refusal_line(code, err, other / "classes.txt", "nucleus")
    assert_unchanged(tmp_path, before)
    (other / "classes.txt").write_text("\n".join(CLASSES) + "\n")     # the model's: scored
    accepted(*run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work", "--input",
                                                    inp, "--labels", other / "label"),
                  capsys)[::2])
    assert (tmp_path / "work" / "predict" / "inp" / "iou.csv").is_file()


def test_labels_of_a_class_appended_since_the_model_was_trained_are_refused_as_such(
        model_dir, tmp_path, capsys):
    """A class appended to classes.txt after training: the refusal said the labels' values
    would be scored as other classes, which they keep; what is amiss is a class the model
    never predicts."""
    inp = input_folder(tmp_path, {"a.png": noise(40, 40)})
    write(tmp_path / "data" / "label" / "a.png", class_blocks(40, 40))
    (tmp_path / "data" / "classes.txt").write_text("\n".join([*CLASSES, "nucleus"]) + "\n")
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work", "--input",
                                                         inp, "--labels",
                                                         tmp_path / "data" / "label"), capsys)
    line = refusal_line(code, err, tmp_path / "data" / "classes.txt", model_dir,
                        "before 'nucleus' was added, and never predicts it",
                        f"--init-model {model_dir} --new-head, with a --model-dir of its own")
    assert "scored as other classes" not in line


def test_test_labels_cut_for_other_classes_than_the_models_are_refused(model_dir, tmp_path,
                                                                        capsys):
    """A work folder's test labels carry no classes.txt beside them: cut after classes.txt was
    reordered, they were scored as the model's classes of the same numbers, unsaid, though
    split.json records the classes they were cut for."""
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)},
                     labels={"a.png": class_blocks(40, 40), "b.png": class_blocks(40, 40, 3)},
                     classes=["background", "cell", "bead"], test=["b"])
    work = tmp_path / "work"
    accepted(*run(gen_img_aug, aug_args(data, work), capsys)[::2])
    before = snapshot(tmp_path)
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, work), capsys)
    refusal_line(code, err, work / "test" / "label", work / "split.json",
                 "scored as other classes")
    assert_unchanged(tmp_path, before)
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")      # the model's order
    for name, shift in (("a", 0), ("b", 3)):
        write(data / "label" / f"{name}.png", (3 - class_blocks(40, 40, shift)) % 3)
    accepted(*run(gen_img_aug, aug_args(data, work), capsys)[::2])
    accepted(*run(predict_lovasz_loss, predict_args(model_dir, work), capsys)[::2])
    assert (work / "test" / "predict" / "iou.csv").is_file()


@pytest.mark.parametrize("names, extra, clash", [
    (("s", "s_color"), (), "s_color.png"),
    (("x", f"x_prob_{CLASSES[1]}"), ("--save-probs",), f"x_prob_{CLASSES[1]}.png"),
    (("a", "b_color"), ("--shard", "1/2"), None),       # not a clash: the control
    (("z", "iou"), (), "iou.png"),
    (("Ab", "ab"), (), "ab.png")], ids=["color", "prob", "none", "report", "case"])
def test_frames_whose_outputs_would_overwrite_each_other_are_refused(names, extra, clash,
                                                                      model_dir, tmp_path,
                                                                      capsys):
    inp = input_folder(tmp_path, {f"{n}.png": noise(40, 40, k) for k, n in enumerate(names)})
    before = snapshot(tmp_path)
    code, _, err = run(predict_lovasz_loss,
                       predict_args(model_dir, tmp_path / "work", "--input", inp, *extra), capsys)
    if clash is None:
        accepted(code, err)
        return
    refusal_line(code, err, names[1], clash)
    assert_unchanged(tmp_path, before)


def test_frame_names_near_the_file_systems_limit_are_predicted_or_refused_before_work(
        model_dir, tmp_path, capsys):
    """A 240-byte name fits in all its outputs, but the temporary name of its LabelMe file did
    not, and that error came after the frames were predicted; a name whose
    <name>_contour.png (get_contour.py's, the longest) cannot fit is refused before the first
    frame, though its own <name>_color.png would."""
    fits, too_long = "f" * 240, "t" * 244
    inp = input_folder(tmp_path, {f"{fits}.png": noise(40, 40)})
    out = tmp_path / "out"
    accepted(*run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work", "--input",
                                                    inp, "--output", out, "--to-labelme"),
                  capsys)[::2])
    assert (out / "labelme" / f"{fits}.json").is_file()
    accepted(*run(get_contour, ["--pred-dir", out, "--output", tmp_path / "contours",
                                "--figures-dir", tmp_path / "figures"], capsys)[::2])
    assert (tmp_path / "contours" / f"{fits}_contour.png").is_file()

    (tmp_path / "long").mkdir()
    inp = input_folder(tmp_path / "long", {f"{too_long}.png": noise(40, 40)})
    before = snapshot(tmp_path)
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work", "--input",
                                                         inp, "--output", tmp_path / "o2"),
                       capsys)
    refusal_line(code, err, f"{too_long}_contour.png", "256 bytes", "shorter name")
    assert_unchanged(tmp_path, before)


def test_frames_that_clash_across_shards_are_refused_in_each(model_dir, tmp_path, capsys):
    """x in shard 1 and x_color in shard 2 would overwrite each other when merged."""
    inp = input_folder(tmp_path, {"x.png": noise(40, 40), "x_color.png": noise(40, 40, 1)})
    for shard in ("1/2", "2/2"):
        code, _, err = run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work",
                                                             "--input", inp, "--shard", shard),
                           capsys)
        refusal_line(code, err, "x_color.png")


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("image", [noise(1, 1), noise(64, 5000), noise(3, 5000),
                                   noise(40, 50, channels=4)],
                         ids=["1x1", "64x5000", "3x5000", "rgba"])
def test_unusual_images_are_segmented(image, scale, model_dir, tmp_path, capsys):
    """Also by a model whose patches came from resampled frames (gen_img_aug.py --scale):
    the masks are of the frame's own size all the same."""
    model = model_dir
    if scale != 1:
        model = copy_model(model_dir, tmp_path)
        config = json.loads((model / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, "scale": scale}))
    picture = write(tmp_path / "pics" / "odd.png", image)
    out = tmp_path / "out"
    code, _, err = run(predict_lovasz_loss, predict_args(model, tmp_path / "work", "--input",
                                                         picture, "--output", out), capsys)
    accepted(code, err)
    mask = cv2.imread(str(out / "odd.png"), cv2.IMREAD_UNCHANGED)
    assert mask is not None and mask.shape == image.shape[:2]
    assert json.loads((out / "predict.json").read_text())["scale"] == scale


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("kind", ["truncated", "zero-byte", "text"])
def test_unreadable_image_in_input_folder_is_refused(kind, suffix, model_dir, tmp_path, capsys):
    inp = input_folder(tmp_path, {"a.png": noise(40, 40)})
    write_bad_image(inp / f"b{suffix}", kind)
    earlier_prediction(tmp_path / "work" / "predict" / "inp")
    before = snapshot(tmp_path)
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work",
                                                         "--input", inp), capsys)
    refusal_line(code, err, inp / f"b{suffix}")
    assert_unchanged(tmp_path, before)


@pytest.mark.parametrize("file, page, said", [("stack.tif", 2, "holds 2 planes"),
                                               ("a.png", 1, "holds 1 plane")])
def test_page_beyond_a_file_is_refused(file, page, said, model_dir, tmp_path, capsys):
    inp = input_folder(tmp_path, {})
    if file == "stack.tif":
        multipage_tiff(inp / file)
    else:
        write(inp / file, noise(40, 40))
    earlier_prediction(tmp_path / "work" / "predict" / "inp")
    before = snapshot(tmp_path)
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work",
                                                         "--input", inp, "--page", page), capsys)
    refusal_line(code, err, inp / file, said, f"no plane {page}")
    assert_unchanged(tmp_path, before)


@pytest.mark.parametrize("kind", ["a folder", "a broken symbolic link"])
def test_an_input_entry_that_is_no_file_is_refused_before_any_frame(kind, model_dir, tmp_path,
                                                                     capsys):
    """Refused when the folder is listed, not after a.png was predicted and thrown away."""
    inp = input_folder(tmp_path, {"a.png": noise(40, 40)})
    if kind == "a folder":
        (inp / "b.png").mkdir()
    else:
        (inp / "b.png").symlink_to(inp / "gone.png")
    earlier_prediction(tmp_path / "work" / "predict" / "inp")
    before = snapshot(tmp_path / "work")
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work",
                                                         "--input", inp), capsys)
    refusal_line(code, err, f"b.png in {inp} is not a regular file ({kind})")
    assert_unchanged(tmp_path / "work", before)


@pytest.mark.parametrize("bad", ["truncated", "grey for a colour model"])
def test_a_frame_that_cannot_be_predicted_stops_the_run_before_the_model_loads(
        bad, model_dir, tmp_path, capsys, monkeypatch):
    """Not after the frames before it were predicted, whose work the error throws away."""
    if bad == "truncated":
        inp = input_folder(tmp_path, {"a.png": noise(40, 40)})
        write_bad_image(inp / "b.png", "truncated")
        model, said = model_dir, inp / "b.png"
    else:
        inp = input_folder(tmp_path, {"a.png": noise(40, 40, 0, 3), "b.png": noise(40, 40)})
        model, said = colour_model(model_dir, tmp_path), "is a grey image"

    def loads_the_model(*args, **kwargs):
        raise AssertionError("the model was loaded before every frame was read")
    monkeypatch.setattr(predict_lovasz_loss, "open_model", loads_the_model)
    code, _, err = run(predict_lovasz_loss, predict_args(model, tmp_path / "work", "--input",
                                                         inp), capsys)
    refusal_line(code, err, said)


def test_failed_prediction_creates_no_output_folder(model_dir, tmp_path, capsys):
    inp = input_folder(tmp_path, {"a.png": noise(40, 40)})
    write_bad_image(inp / "b.png", "truncated")
    before = snapshot(tmp_path)
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work",
                                                         "--input", inp), capsys)
    refusal_line(code, err, inp / "b.png")
    assert_unchanged(tmp_path, before)      # neither work/ nor work/predict/ appears


def test_empty_input_folder_is_refused(model_dir, tmp_path, capsys):
    inp = input_folder(tmp_path, {})
    earlier_prediction(tmp_path / "work" / "predict" / "inp")
    before = snapshot(tmp_path)
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work",
                                                         "--input", inp), capsys)
    refusal_line(code, err, inp)
    assert_unchanged(tmp_path, before)


def test_prediction_removes_a_killed_runs_staging_folder_and_follows_the_umask(
        model_dir, tmp_path, capsys):
    inp = input_folder(tmp_path, {"a.png": noise(40, 40)})
    out = earlier_prediction(tmp_path / "out")
    dead = leftover(tmp_path, "out", dead_pid())
    live = leftover(tmp_path, "out", 1)
    code, _, err = run(predict_lovasz_loss, predict_args(model_dir, tmp_path / "work", "--input",
                                                         inp, "--output", out), capsys)
    accepted(code, err)
    assert not dead.exists()
    assert live.exists()
    assert sorted(p.name for p in out.iterdir()) == [".predict.json.files", "a.png",
                                                     "a_color.png", "predict.json"]
    assert_published_mode(out)


# ---------------------------------------------------------------- get_contour.py

def contour_work(root, masks, earlier=True):
    """work/test/{src,predict} as prediction leaves them for the given {name: mask}, plus an
    earlier contours output."""
    work = root / "work"
    for name, mask in masks.items():
        write(work / "test" / "src" / f"{name}.png", noise(*mask.shape, seed=len(name)))
        write(work / "test" / "predict" / f"{name}.png", mask)
    (work / "test" / "predict" / "predict.json").write_text(json.dumps({
        "classes": CLASSES, "images": list(masks), "input_dir": str(work / "test" / "src"),
        "label_dir": None, "intensity": DEFAULT_INTENSITY}))
    if earlier:
        contours = work / "test" / "contours"
        write(contours / "old_contour.png", noise(40, 40, 6, channels=3))
        (contours / "objects.csv").write_text("image,class,object_id\nold,cell,1\n")
    return work


def test_malformed_predict_json_is_refused(tmp_path, capsys):
    work = contour_work(tmp_path, {"a": class_blocks(40, 40)})
    (work / "test" / "predict" / "predict.json").write_text('{"classes": ["background",')
    before = snapshot(tmp_path)
    code, _, err = run(get_contour, ["--work-dir", work, "--data-dir", tmp_path / "data"], capsys)
    refusal_line(code, err, work / "test" / "predict" / "predict.json", "not valid JSON")
    assert_unchanged(tmp_path, before)


def test_mask_with_a_class_beyond_the_classes_is_refused(tmp_path, capsys):
    mask = class_blocks(40, 40)
    mask[30:34, 2:6] = 7
    work = contour_work(tmp_path, {"a": mask})
    before = snapshot(tmp_path)
    code, _, err = run(get_contour, ["--work-dir", work, "--data-dir", tmp_path / "data"], capsys)
    line = refusal_line(code, err, work / "test" / "predict" / "a.png")
    assert "class 7" in line
    assert_unchanged(tmp_path, before)


def test_failed_contour_run_leaves_no_panel_of_the_images_before(tmp_path, capsys):
    bad = class_blocks(40, 40)
    bad[30:34, 2:6] = 7
    work = contour_work(tmp_path, {"a": class_blocks(40, 40), "b": bad})
    before = snapshot(tmp_path)
    code, _, err = run(get_contour, ["--work-dir", work, "--data-dir", tmp_path / "data"], capsys)
    refusal_line(code, err, work / "test" / "predict" / "b.png")
    assert_unchanged(tmp_path, before)      # no figures/panel_a.png from the aborted run


def test_contours_remove_a_killed_runs_staging_folder_and_follow_the_umask(tmp_path, capsys):
    work = contour_work(tmp_path, {"a": class_blocks(40, 40)})
    dead = leftover(work / "test", "contours", dead_pid())
    live = leftover(work / "test", "contours", 1)
    code, _, err = run(get_contour, ["--work-dir", work, "--data-dir", tmp_path / "data",
                                     "--no-panels"], capsys)
    accepted(code, err)
    assert not dead.exists()
    assert live.exists()
    contours = work / "test" / "contours"
    assert sorted(p.name for p in contours.iterdir()) == [".objects.csv.files", "a_contour.png",
                                                          "objects.csv"]
    assert_published_mode(contours)


# ---------------------------------------------------------------- gen_img_aug.py settings

def refused_before_the_work_folder_changes(tmp_path, capsys, data, *extra, patch=32):
    """The stderr of a gen_img_aug.py run refused (exit 2) with an earlier run's work folder
    and everything under tmp_path left as it was."""
    work = earlier_work(tmp_path / "work")
    before = snapshot(tmp_path)
    code, _, err = run(gen_img_aug, aug_args(data, work, *extra, patch=patch), capsys)
    assert code == 2, f"exit {code}, expected a refusal (2); stderr:\n{err}"
    assert_unchanged(tmp_path, before)
    return err


@pytest.mark.parametrize("value, shown", [(cli.IGNORE_LABEL, "0, 255"), (0, "the value 0,")],
                         ids=["binary-0-255", "all-background"])
def test_labels_without_an_object_class_are_refused(value, shown, tmp_path, capsys):
    label = np.zeros((40, 40), np.uint8)
    label[10:20, 10:20] = value
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)},
                     {"a.png": label, "b.png": label}, classes=["background", "cell"])
    err = refused_before_the_work_folder_changes(tmp_path, capsys, data)
    refusal_line(2, err, data / "label", shown, "255 marks pixels to ignore", "0 and 1",
                 "labelme_to_label.py --instances")


def labels_beside(other):
    """Labels a: a cell, b: background alone, c: `other`."""
    cell = np.zeros((40, 40), np.uint8)
    cell[10:20, 10:20] = 1
    return {"a.png": cell, "b.png": np.zeros((40, 40), np.uint8), "c.png": other}


def test_a_0_255_mask_among_class_index_labels_is_refused_naming_it(tmp_path, capsys):
    mask = labels_beside(None)["a.png"] * cli.IGNORE_LABEL
    data = make_data(tmp_path, {f"{n}.png": noise(40, 40, i) for i, n in enumerate("abc")},
                     labels_beside(mask), classes=["background", "cell"])
    err = refused_before_the_work_folder_changes(tmp_path, capsys, data)
    refusal_line(2, err, "1 label in", data / "label", "(c.png)", "only the values 0 and 255",
                 "0 background, 1, 2, ...", data / "classes.txt")


def test_ignored_regions_are_not_taken_for_a_0_255_mask_where_other_labels_mark_them(
        tmp_path, capsys):
    """Background alone, and ignored pixels beside objects, are no masks; a label of
    background and ignored pixels is one only where no other label marks ignored pixels, and
    is named in a note where others do."""
    labels = labels_beside(np.zeros((40, 40), np.uint8))
    labels["a.png"][30:35, 30:35] = cli.IGNORE_LABEL
    data = make_data(tmp_path, {f"{n}.png": noise(40, 40, i) for i, n in enumerate("abc")},
                     labels, classes=["background", "cell"])
    code, out, err = run(gen_img_aug, aug_args(data, tmp_path / "work"), capsys)
    accepted(code, err)
    assert "note:" not in out
    labels["c.png"][5:9, 5:9] = cli.IGNORE_LABEL
    write(data / "label" / "c.png", labels["c.png"])
    code, out, err = run(gen_img_aug, aug_args(data, tmp_path / "work"), capsys)
    accepted(code, err)
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "1 label in" in notes[0] and "holds only background" in notes[0] and "(c.png)" in notes[0]


@pytest.mark.parametrize("listed", ["", " \n\t\n"], ids=["empty", "blank-lines"])
def test_a_test_list_of_no_name_trains_every_image_with_a_note(listed, tmp_path, capsys):
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)})
    (data / "test.txt").write_text(listed)
    code, out, err = run(gen_img_aug, aug_args(data, tmp_path / "work"), capsys)
    accepted(code, err)
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and f"{data / 'test.txt'} lists no image" in notes[0]
    assert "all 2 images train" in notes[0]
    assert json.loads((tmp_path / "work" / "split.json").read_text())["test"] == []


@pytest.mark.parametrize("option, value", [("--seed", "-1"), ("--random-state", "-1"),
                                           ("--random-state", str(2 ** 32))])
def test_seeds_numpy_or_sklearn_cannot_take_are_refused_by_the_option_parser(
        option, value, tmp_path, capsys):
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)})
    err = refused_before_the_work_folder_changes(tmp_path, capsys, data, option, value)
    argparse_refusal(2, err, option)


def test_test_size_that_leaves_no_training_image_is_refused(tmp_path, capsys):
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)})
    err = refused_before_the_work_folder_changes(tmp_path, capsys, data, "--test-size", "0.99")
    refusal_line(2, err, "--test-size 0.99", "2 images", "no training image")


def test_split_options_a_fixed_test_list_leaves_unused_are_noted(tmp_path, capsys):
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1),
                                "c.png": noise(40, 40, 2)}, test=["b"])
    code, out, err = run(gen_img_aug, aug_args(data, tmp_path / "work", "--test-size", "0.5",
                                               "--random-state", "7"), capsys)
    accepted(code, err)
    notes = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, out
    for said in ("--test-size 0.5", "--random-state 7", "not used", str(data / "test.txt")):
        assert said in notes[0], notes[0]
    assert json.loads((tmp_path / "work" / "split.json").read_text())["test"] == ["b"]
    code, out, err = run(gen_img_aug, aug_args(data, tmp_path / "work"), capsys)
    accepted(code, err)
    assert "note:" not in out


def ramp(low, high, dtype):
    return np.linspace(low, high, 40 * 40).reshape(40, 40).astype(dtype)


@pytest.mark.parametrize("images, rule, said", [
    ({"a.tif": ramp(0, 1, np.float32), "b.tif": ramp(0.2, 0.9, np.float32)},
     ["fixed", "0", "4095"], "values within 0..1"),
    ({"a.png": ramp(1000, 4000, np.uint16), "b.png": ramp(500, 3000, np.uint16)},
     ["fixed", "0", "255"], "values within 500..4000")], ids=["float-squeezed", "16bit-clipped"])
def test_a_fixed_intensity_range_that_flattens_every_frame_is_refused(images, rule, said,
                                                                     tmp_path, capsys):
    data = make_data(tmp_path, images)
    err = refused_before_the_work_folder_changes(tmp_path, capsys, data, "--intensity", *rule)
    refusal_line(2, err, f"--intensity {' '.join(rule)} flattens 2 of the 2 images", said,
                 "every patch would be blank or saturated")


def test_a_fixed_intensity_range_that_flattens_some_frames_is_warned_of(tmp_path, capsys):
    data = make_data(tmp_path, {"a.png": ramp(0, 4095, np.uint16),
                                "dim.png": ramp(6000, 9000, np.uint16)})
    code, out, err = run(gen_img_aug, aug_args(data, tmp_path / "work", "--intensity", "fixed",
                                               "0", "4095"), capsys)
    accepted(code, err)
    warnings = [line for line in out.splitlines() if "--intensity" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: --intensity fixed 0 4095 "
                                                         "flattens 1 of the 2 images"), out
    assert "dim.png" in warnings[0] and "a.png" not in warnings[0]


def test_a_fixed_intensity_range_that_clips_a_background_on_purpose_is_taken(tmp_path, capsys):
    """Fluorescence: a background of 100 clipped to 0 by 'fixed 110 4000', the cells (4 % of
    the pixels) in range."""
    frames = {}
    for i in range(2):
        img = np.full((40, 40), 100, np.uint16)
        img[10:18, 10:18] = 2000 + 100 * i
        frames[f"f{i}.png"] = img
    data = make_data(tmp_path, frames)
    code, out, err = run(gen_img_aug, aug_args(data, tmp_path / "work", "--intensity", "fixed",
                                               "110", "4000"), capsys)
    accepted(code, err)
    assert "flattens" not in out


def test_memory_is_counted_for_the_processes_that_write_patches(tmp_path, capsys, monkeypatch):
    # 4 patches are one chunk, written by one process whatever --workers says.
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)})
    one_worker = 40 * 40 * 8 + 4 * 32 ** 2
    monkeypatch.setattr(gen_img_aug, "available_memory", lambda: 10 * one_worker)
    args = aug_args(data, tmp_path / "work")
    args[args.index("--workers") + 1] = 64
    code, _, err = run(gen_img_aug, args, capsys)
    accepted(code, err)
    # As many chunks as workers: all 64 write, and that is refused before any is written.
    args[args.index("--num-patches") + 1] = 64 * gen_img_aug.CHUNK
    args[args.index("--work-dir") + 1] = tmp_path / "other"
    code, _, err = run(gen_img_aug, args, capsys)
    refusal_line(code, err, "--patch-size 32", "64 workers", "fewer --workers")
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("size", [1, 33, 48])
def test_patch_size_the_network_cannot_take_is_refused_by_the_option_parser(size, tmp_path,
                                                                            capsys):
    data = make_data(tmp_path, {"a.png": noise(40, 40), "b.png": noise(40, 40, 1)})
    err = refused_before_the_work_folder_changes(tmp_path, capsys, data, patch=size)
    argparse_refusal(2, err, "--patch-size")
    assert "multiple of 32" in err and "halves" in err


@pytest.mark.parametrize("scale", ["1e-6", "0.75"])
def test_scale_that_shrinks_a_frame_below_32_px_is_refused(scale, tmp_path, capsys):
    data = make_data(tmp_path, {"a.png": noise(100, 100), "b.png": noise(40, 60, 1)})
    err = refused_before_the_work_folder_changes(tmp_path, capsys, data, "--scale", scale)
    refusal_line(2, err, f"--scale {float(scale):g} shrinks b from 60x40", "32 px",
                 "--scale 0.8 or more")
    code, _, err = run(gen_img_aug, aug_args(data, tmp_path / "work", "--scale", "0.8"), capsys)
    accepted(code, err)


@pytest.mark.parametrize("kwargs, ctrl_c, said", [
    ({}, KeyboardInterrupt, "earlier results are as they were"),
    ({"interrupted": "the folder is unfinished"}, KeyboardInterrupt, "the folder is unfinished"),
    ({"interrupted": "the folder is unfinished"}, cli.Interrupted("it got further"),
     "it got further")])
def test_ctrl_c_is_one_line_that_says_what_it_left(kwargs, ctrl_c, said, capsys):
    def interrupted():
        raise ctrl_c
    with pytest.raises(SystemExit) as stop:
        cli.run_cli(interrupted, **kwargs)
    assert stop.value.code == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err and "Traceback" not in err


def test_what_the_system_refuses_is_one_line_and_other_os_errors_stay_tracebacks(capsys):
    def read_only():
        raise OSError(30, "Read-only file system", "/mnt/ro/out")
    with pytest.raises(SystemExit) as stop:
        cli.run_cli(read_only)
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: cannot use /mnt/ro/out: Read-only file system\n"

    def a_bug():
        raise OSError(9, "Bad file descriptor")
    with pytest.raises(OSError, match="Bad file descriptor"):
        cli.run_cli(a_bug)


@pytest.mark.parametrize("code, name", [(27, "File too large"), (36, "File name too long"),
                                        (21, "Is a directory"), (20, "Not a directory")])
def test_a_file_size_limit_a_long_name_or_a_folder_in_a_files_place_is_one_line(code, name,
                                                                               capsys):
    def refused():
        raise OSError(code, name, "/data/w/split.json")
    with pytest.raises(SystemExit) as stop:
        cli.run_cli(refused)
    assert stop.value.code == 2
    assert capsys.readouterr().err == f"error: cannot use /data/w/split.json: {name}\n"


def test_sigterm_stops_a_script_as_ctrl_c_does_with_one_line(tmp_path):
    """kill, scancel and a batch job's time limit send SIGTERM: it ended the script with no
    line and its staging folders left behind."""
    script = ("import os, signal, sys, time; sys.path.insert(0, sys.argv[1]); import cli\n"
              "def main():\n"
              "    try:\n"
              "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)\n"
              "    finally:\n"
              "        print('cleaned up')\n"
              "cli.run_cli(main, interrupted='nothing was published')\n"
              "assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL\n")
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 130
    assert proc.stdout == "cleaned up\n"
    assert proc.stderr == "interrupted; nothing was published\n"


def test_a_name_the_terminals_encoding_cannot_hold_is_escaped_not_a_traceback():
    """LANG=C without Python's UTF-8 mode (or Windows' cp1252): printing a class 'Zelle \u03b2'
    raised UnicodeEncodeError after the work was done, and errors the same way."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); import cli\n"
              "def main():\n"
              "    print('cells: Zelle \\u03b2')\n"
              "    raise cli.PipelineError('no class Zelle \\u03b2')\n"
              "cli.run_cli(main)\n")
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONIOENCODING": ""}
    proc = subprocess.run([sys.executable, "-c", script, str(ROOT)], capture_output=True,
                          env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == b"cells: Zelle \\u03b2\n"
    assert proc.stderr == b"error: no class Zelle \\u03b2\n"


def test_a_quoted_tilde_names_the_home_folder_not_a_folder_named_tilde(monkeypatch):
    monkeypatch.setenv("HOME", "/home/lab")
    assert cli._expand_home(["--work-dir", "~/w", "--output=~/out", "--x=a~b", "a~"]) == \
        ["--work-dir", "/home/lab/w", "--output=/home/lab/out", "--x=a~b", "a~"]


def test_an_image_name_that_is_not_utf_8_is_refused_before_anything_is_written(tmp_path,
                                                                              capsys):
    data = make_data(tmp_path, {"a.png": np.eye(64, dtype=np.uint8) * 200,
                                "b.png": np.eye(64, dtype=np.uint8)[::-1] * 200})
    os.rename(data / "src" / "b.png", os.fsencode(data / "src") + b"/\xe42.png")
    os.rename(data / "label" / "b.png", os.fsencode(data / "label") + b"/\xe42.png")
    code, _, err = run(gen_img_aug, aug_args(data, tmp_path / "work"), capsys)
    refusal_line(code, err, "is not UTF-8", "rename the file")
    assert not (tmp_path / "work").exists()


def test_a_failed_figure_leaves_the_earlier_one_whole(tmp_path, monkeypatch):
    from figures import pyplot, save_figure
    plt = pyplot()
    path = tmp_path / "figures" / "samples.png"
    fig = plt.figure()
    save_figure(fig, path)
    before = path.read_bytes()
    fig = plt.figure()

    def torn(target, **kwargs):
        Path(target).write_bytes(before[:100])
        raise OSError(27, "File too large", str(target))
    monkeypatch.setattr(fig, "savefig", torn)
    with pytest.raises(OSError):
        save_figure(fig, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["samples.png"]


def test_an_h5_write_failure_is_the_oserror_it_names():
    from training_callbacks import h5_write_errors
    with pytest.raises(OSError) as err:
        with h5_write_errors("/m/best.h5"):
            raise RuntimeError("Can't decrement id ref count (unable to extend file properly, "
                               "errno = 28, error message = 'No space left on device')")
    assert err.value.errno == 28 and err.value.filename == "/m/best.h5"
    with pytest.raises(RuntimeError, match="other"):
        with h5_write_errors("/m/best.h5"):
            raise RuntimeError("other")


def test_a_model_dir_given_as_its_config_file_or_its_work_folder_is_told_where_to_point(
        tmp_path):
    from model_folder import read_config
    (tmp_path / "w" / "weights").mkdir(parents=True)
    (tmp_path / "w" / "weights" / "config.json").write_text("{}")
    with pytest.raises(cli.PipelineError, match=r"config.json is a file; give the model "
                                                r"folder .*\(.*weights\)"):
        read_config(tmp_path / "w" / "weights" / "config.json")
    with pytest.raises(cli.PipelineError, match=r"not found: .*a model folder \(.*weights "
                                                r"holds one\)"):
        read_config(tmp_path / "w")
