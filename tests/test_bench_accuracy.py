"""bench/baseline.py's building blocks on synthetic images, and (slow) bench/accuracy.py end to end.

The slow test runs the whole pipeline on ../shared/datasets/bbbc030 with a tiny budget
(about 3 minutes on a 2-core AVX-512 host, more than 10 where only AVX2: it predicts the 20
1376x1032 test frames four times); the default run (pytest -q) skips it. Run it with
    .venv/bin/python -m pytest -q -m slow tests/test_bench_accuracy.py
or with RUN_SLOW=1 in the environment of any pytest run.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import accuracy  # noqa: E402
import baseline  # noqa: E402
from metrics import confusion_matrix, iou_per_class  # noqa: E402

BBBC030 = baseline.SHARED_DATASETS / "bbbc030"


def textured_discs(seed=0, size=256):
    """Smooth shaded background with three noisy (textured) discs; image and true mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = 100 + 40 * xx / size          # slow shading, as uneven illumination
    mask = np.zeros((size, size), np.uint8)
    for cy, cx, r in [(60, 60, 25), (150, 180, 35), (200, 60, 20)]:
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    image = image + mask * rng.normal(0, 25, (size, size)) + rng.normal(0, 1, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def foreground_iou(truth, pred):
    return iou_per_class(confusion_matrix(truth, pred, 2))[1]


def test_texture_segments_textured_discs():
    image, truth = textured_discs()
    assert foreground_iou(truth, baseline.segment(image, 2)) > 0.8


def test_texture_drops_small_textured_specks():
    image, truth = textured_discs(seed=2)
    rng = np.random.default_rng(3)
    image[20:26, 200:206] = rng.integers(0, 255, (6, 6))     # textured, but 36 px
    pred = baseline.segment(image, 2, min_area=100)
    assert not pred[15:31, 195:211].any()
    assert foreground_iou(truth, pred) > 0.8


def test_texture_treats_colour_as_grey():
    image, truth = textured_discs(seed=1)
    colour = np.repeat(image[:, :, None], 3, axis=2)
    assert np.array_equal(baseline.segment(colour, 2), baseline.segment(image, 2))


def test_fill_holes_fills_a_ring_but_not_the_outside():
    yy, xx = np.mgrid[:50, :50]
    squared = (yy - 25) ** 2 + (xx - 25) ** 2
    disc = squared <= 16 ** 2
    ring = disc & (squared > 12 ** 2)
    ring[0:3, 0:3] = True                # an object in the corner: nothing to fill
    assert np.array_equal(baseline.fill_holes(ring), disc | ring)


def test_remove_small_drops_specks_and_keeps_objects():
    mask = np.zeros((60, 60), bool)
    mask[10:30, 10:30] = True            # 400 px object
    mask[50, 50] = True                  # 1 px speck
    mask[40:42, 5:7] = True              # 4 px speck
    kept = baseline.remove_small(mask, 100)
    assert kept[10:30, 10:30].all()
    assert kept.sum() == 400


def test_otsu_separates_three_clusters():
    rng = np.random.default_rng(0)
    clusters = [rng.normal(m, 3, 1000) for m in (40, 120, 200)]
    low, high = baseline.otsu_thresholds(np.concatenate(clusters), levels=3)
    assert clusters[0].max() < low <= clusters[1].min()
    assert clusters[1].max() < high <= clusters[2].min()


def test_otsu_of_a_constant_puts_everything_below():
    assert baseline.otsu_thresholds(np.full(10, 7.0)) == [np.inf]


def test_stain_separates_nucleus_cytoplasm_background():
    # Cream background, pale blue-purple cell, deep purple nucleus (RGB), as in wbc300.
    image = np.zeros((120, 120, 3), np.uint8)
    image[:] = (240, 225, 200)
    truth = np.zeros((120, 120), np.uint8)
    cv2.circle(truth, (60, 60), 40, 1, thickness=-1)
    cv2.circle(truth, (60, 60), 20, 2, thickness=-1)
    image[truth == 1] = (190, 170, 210)
    image[truth == 2] = (100, 50, 140)
    iou = iou_per_class(confusion_matrix(truth, baseline.segment(image, 3), 3))
    assert iou.min() > 0.9


def test_no_method_for_grey_three_classes():
    with pytest.raises(baseline.PipelineError, match="no classical baseline"):
        baseline.segment(np.zeros((10, 10), np.uint8), 3)


def test_curve_takes_the_last_snapshot_within_each_mark(tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    (weights / "snapshots").mkdir(parents=True)
    (weights / "log.csv").write_text("epoch,loss,minutes\n0,0.5,5.0\n1,0.4,10.0\n"
                                     "2,0.3,14.0\n3,0.2,20.5\n")
    for epoch in (1, 3, 4):                 # epoch 2's snapshot is gone
        (weights / "snapshots" / f"epoch_{epoch:03d}.h5").write_bytes(b"")
    monkeypatch.setattr(accuracy, "predict_and_score",
                        lambda args, d, n, w, snapshot, tta: {"file": Path(snapshot).name})
    args = argparse.Namespace(curve=[3, 12, 15, 20, 30], time_budget=20)
    points = accuracy.score_curve(args, None, [], tmp_path)
    assert [p.get("file") for p in points] == [None, None, "epoch_003.h5", "epoch_004.h5",
                                                "epoch_004.h5"]
    assert "no epoch ended within 3" in points[0]["skipped"]
    assert "no snapshot" in points[1]["skipped"]
    assert points[2]["epoch"] == 3 and points[2]["minutes"] == 14.0
    # Training ends just past its budget: a mark at the budget is the last epoch.
    assert points[3]["epoch"] == 4


def test_curve_is_empty_without_marks(tmp_path):
    args = argparse.Namespace(curve=[], time_budget=20)
    assert accuracy.score_curve(args, None, [], tmp_path) == []


def test_variants_combine_tta_and_the_unfiltered_masks(tmp_path):
    args = accuracy.parse_args(["bbbc030", "--also", "best+tta+unfiltered", "swa"])
    assert args.also == ["best+tta+unfiltered", "swa"]
    command = accuracy.predict_command(args, tmp_path, tmp_path, "best", True, unfiltered=True)
    assert command[-3:] == ["--tta", "--faint-filter", "off"]
    assert "--faint-filter" not in accuracy.predict_command(args, tmp_path, tmp_path, "swa",
                                                            False)


@pytest.mark.parametrize("bad", ["best+", "+tta", "swa+TTA", "final", "best+tta+tta",
                                 "best+raw", "best+unfiltered+unfiltered"])
def test_bad_variants_are_refused(bad, capsys):
    with pytest.raises(SystemExit):
        accuracy.parse_args(["bbbc030", "--also", bad])
    assert "is not best, swa or last" in capsys.readouterr().err


@pytest.mark.parametrize("argv, orientations, tta", [
    ([], "all", True), (["--no-tta"], "all", False), ([], "none", False),
    (["--no-tta"], "none", False), (["--tta"], "all", True), ([], "transpose", True)])
def test_headline_prediction_uses_tta_where_patches_were_turned(tmp_path, argv, orientations,
                                                                 tta):
    args = accuracy.parse_args(["bbbc030", *argv])
    gen = accuracy.stage_commands(args, tmp_path, tmp_path, "grey")["gen_img_aug"]
    assert gen[gen.index("--orientations") + 1] == "auto"
    (tmp_path / "split.json").write_text(json.dumps({"orientations": orientations}))
    assert accuracy.resolve_tta(args, tmp_path) is tta
    assert ("--tta" in accuracy.predict_command(args, tmp_path, tmp_path, "best", tta)) is tta


@pytest.mark.parametrize("extra", [["--tta"], ["--also", "swa+tta"]])
def test_tta_is_refused_for_unturned_patches(extra, tmp_path):
    # Checked once gen_img_aug.py has decided (or obeyed --orientations), before training.
    (tmp_path / "split.json").write_text(json.dumps({"orientations": "none"}))
    for orientations in ("auto", "none"):
        args = accuracy.parse_args(["bbbc030", "--orientations", orientations, *extra])
        with pytest.raises(accuracy.PipelineError, match="kept the patches unturned"):
            accuracy.resolve_tta(args, tmp_path)


def check_iou_record(record, classes):
    assert list(record["per_class_iou"]) == classes
    # The scores are those of the summed confusion matrix the record holds.
    expected = iou_per_class(np.array(record["confusion_matrix"]))
    assert list(record["per_class_iou"].values()) == pytest.approx(expected)
    assert record["mean_iou"] == pytest.approx(expected.mean())
    assert record["foreground_iou"] == record["per_class_iou"][classes[1]]
    assert np.asarray(record["confusion_matrix"]).shape == (len(classes), len(classes))


def slow_requested(config):
    return os.environ.get("RUN_SLOW") == "1" or config.getoption("markexpr") == "slow"


@pytest.mark.slow
@pytest.mark.skipif(not BBBC030.is_dir(), reason=f"{BBBC030} not present")
def test_accuracy_bench_writes_a_complete_record(tmp_path, request):
    if not slow_requested(request.config):
        pytest.skip("slow: run with -m slow, or set RUN_SLOW=1")
    command = [sys.executable, str(REPO / "bench" / "accuracy.py"), "bbbc030",
               "--num-patches", "200", "--patch-size", "64", "--workers", "1",
               "--time-budget", "0.5", "--epochs", "2", "--steps-per-epoch", "5",
               "--val-steps", "2", "--bn-batches", "2", "--train-args=--swa-epochs 2",
               "--foreground-fraction", "0.5", "--curve", "30", "--also", "swa",
               "best+unfiltered",
               "--overlap", "0", "--tag", "tiny", "--results-dir", str(tmp_path)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=2400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    record = json.loads((tmp_path / "bbbc030-tiny.json").read_text())
    classes = ["background", "cell"]
    assert record["dataset"] == "bbbc030" and record["classes"] == classes
    check_iou_record(record, classes)
    check_iou_record(record["baseline"], classes)
    assert record["num_images"] == 20 == len(record["test_images"])
    # Two of bbbc030's test labels hold a cell drawn as a bare outline.
    outlines = record["without_bare_outlines"]
    assert sorted(outlines["labels"]) == ["cho45", "cho60"]
    check_iou_record(outlines, classes)
    assert "bench/accuracy.py bbbc030" in record["command"]
    assert record["settings"]["num_patches"] == 200 and record["settings"]["color_mode"] == "grey"
    assert set(record["stage_commands"]) == {"gen_img_aug", "pre_processing", "train", "predict"}
    # bbbc030 is DIC: its patches stay unturned, so its model predicts without TTA.
    assert record["training"]["orientations"] == "none"
    assert record["training"]["edge_relief"] > 0.25
    assert abs(record["training"]["relief_angle"] - 45) <= 10
    assert "--tta" not in record["stage_commands"]["predict"]
    seconds = record["wall_seconds"]
    assert set(seconds) == {"gen_img_aug", "pre_processing", "train", "curve_and_variants",
                            "predict", "score", "total"}
    assert seconds["total"] >= sum(v for k, v in seconds.items() if k != "total")
    epochs = record["training"]["result"]["epochs_done"]
    assert epochs >= 1
    assert "--foreground-fraction 0.5" in record["stage_commands"]["gen_img_aug"]
    assert "--lr 0.01" in record["stage_commands"]["train"]
    # Within 30 minutes, the curve's one point is the last epoch, scored like the headline.
    [point] = record["curve"]
    assert point["epoch"] == epochs and 0 < point["minutes"] <= 30
    assert f"epoch_{epochs:03d}" in point["command"]
    check_iou_record(point, classes)
    assert list(record["variants"]) == ["swa", "best+unfiltered"]
    assert "--weights swa" in record["variants"]["swa"]["command"]
    check_iou_record(record["variants"]["swa"], classes)
    assert record["variants"]["best+unfiltered"]["command"].endswith("--faint-filter off")
    check_iou_record(record["variants"]["best+unfiltered"], classes)
    # The filter was calibrated on the held-out training frames, predicted whole.
    faint = record["training"]["faint_filter"]
    assert faint["frames"] == len(record["training"]["val_frames"]) >= 3
    assert record["machine"]["cpu"] and record["machine"]["cpu_cores"] >= 1
    assert isinstance(record["machine"]["gpus"], list)
    assert record["date"].endswith("+00:00")
