"""All six scripts in order, as a user runs them, on tiny synthetic data (64x64 patches)."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from image_io import read_label
from metrics import confusion_matrix, iou_per_class

pytestmark = pytest.mark.trains

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, cwd):
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data, work = root / "data", root / "work"
    run("data/make_sample_data.py", "--out-dir", data, "--count", "5", "--width", "200",
        "--height", "160", cwd=root)
    run("labelme_to_label.py", "--input", data / "labelme", "--data-dir", data, cwd=root)
    (data / "test.txt").write_text("sample_02\n")
    run("gen_img_aug.py", "--data-dir", data, "--work-dir", work, "--num-patches", "80",
        "--patch-size", "64", "--workers", "2", cwd=root)
    run("pre_processing.py", "--work-dir", work, "--workers", "2", cwd=root)
    run("train_unet_xception_resnetblock.py", "--data-dir", data, "--work-dir", work,
        "--weights", "none", "--epochs", "2", "--steps-per-epoch", "3", "--val-steps", "1",
        "--bn-batches", "2", "--swa-epochs", "2", "--verbose", "0", cwd=root)
    predict_out = run("predict_lovasz_loss.py", "--data-dir", data, "--work-dir", work,
                      "--save-probs", cwd=root)
    contour_out = run("get_contour.py", "--data-dir", data, "--work-dir", work, cwd=root)
    return root, data, work, predict_out, contour_out


def test_data_stages_outputs(pipeline):
    _, data, work, _, _ = pipeline
    names = sorted(p.stem for p in (data / "labelme").glob("*.json"))
    assert sorted(p.stem for p in (data / "label").glob("*.png")) == names
    assert json.loads((work / "split.json").read_text())["test"] == ["sample_02"]
    assert len(list((work / "train" / "src").glob("*.png"))) == 80
    assert len(list((work / "train" / "prep").glob("*.png"))) == 80
    assert (work / "train_mean_std.npy").is_file() and (work / "train_mean_std.json").is_file()
    assert (work / "figures" / "samples.png").is_file()


def test_training_outputs(pipeline):
    _, _, work, _, _ = pipeline
    config = json.loads((work / "weights" / "config.json").read_text())
    assert config["input_shape"] == [64, 64, 3]
    # The faint-object filter was calibrated on the held-out frame(s), predicted whole.
    faint = config["faint_filter"]
    assert faint["frames"] == len(config["val_frames"]) >= 1
    assert faint["threshold"] is None or faint["threshold"] >= 0
    assert faint["mean_iou_filtered"] >= faint["mean_iou_kept"]
    for name in config["weights_files"].values():
        assert (work / "weights" / name).stat().st_size > 1e6
    with open(work / "weights" / "log.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert (work / "figures" / "training_curves.png").is_file()


def test_prediction_outputs(pipeline):
    _, data, work, predict_out, _ = pipeline
    out = work / "test" / "predict"
    mask = read_label(out / "sample_02.png")
    assert mask.shape == (160, 200) and mask.max() < 3
    assert (out / "sample_02_color.png").is_file()
    for cls in ("background", "bead", "cell"):
        assert (out / f"sample_02_prob_{cls}.png").is_file()
    scores = json.loads((out / "iou.json").read_text())
    assert "sample_02" in json.dumps(scores)
    with open(out / "iou.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == ["sample_02", "dataset"]
    # One test image: its row and the data set's are the IoU of the mask written against
    # the label.
    expected = iou_per_class(confusion_matrix(read_label(data / "label" / "sample_02.png"),
                                              mask, 3)).mean()
    assert [float(r["mean_iou"]) for r in rows] == pytest.approx([expected, expected], abs=1e-6)
    assert "dataset" in predict_out and "bead" in predict_out
    assert (work / "figures" / "iou_per_class.png").is_file()


def test_contour_outputs(pipeline):
    _, _, work, _, contour_out = pipeline
    out = work / "test" / "contours"
    assert (out / "sample_02_contour.png").is_file()
    with open(out / "objects.csv") as f:
        header = next(csv.reader(f))
    for column in ("image", "class", "object_id", "area_px", "perimeter_px", "circularity",
                   "centroid_x", "bbox_w"):
        assert column in header
    assert (work / "figures" / "panel_sample_02.png").is_file()
    with open(out / "objects.csv") as f:
        count = len(list(csv.DictReader(f)))
    assert count > 0 and f"{count} objects in 1 image -> " in contour_out


def test_own_images_without_labels(pipeline):
    root, data, work, _, _ = pipeline
    mine = root / "my_images"
    mine.mkdir()
    img = (np.random.default_rng(0).integers(60, 200, (90, 130))).astype(np.uint8)
    import cv2
    cv2.imwrite(str(mine / "frame.tif"), img)
    run("predict_lovasz_loss.py", "--work-dir", work, "--input", mine, cwd=root)
    out = work / "predict" / "my_images"
    assert read_label(out / "frame.png").shape == (90, 130)
    assert not (out / "iou.csv").exists()
    run("get_contour.py", "--work-dir", work, "--pred-dir", out, cwd=root)
    assert (Path(f"{out}_contours") / "objects.csv").is_file()


def test_a_training_frame_is_known_by_its_pixels_not_its_name(pipeline):
    """A training frame copied under a new name is warned of; the test frame copied under a
    training frame's name, a frame the model never saw, is not."""
    root, data, work, _, _ = pipeline
    first, second = json.loads((work / "weights" / "config.json").read_text())["train_frames"][:2]
    scored = root / "scored"
    for sub in ("src", "label"):
        (scored / sub).mkdir(parents=True)
        shutil.copy(data / sub / f"{first}.png", scored / sub / "renamed.png")
        shutil.copy(data / sub / "sample_02.png", scored / sub / f"{second}.png")
    out = run("predict_lovasz_loss.py", "--work-dir", work, "--input", scored / "src",
              "--labels", scored / "label", cwd=root)
    assert (f"1 of the 2 frames scored is a frame the model in {work / 'weights'} trained on "
            f"(renamed = training frame {first}): their IoU is no test of it") in out
