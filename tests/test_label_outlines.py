"""Objects labelled by their outline alone: found, reported by gen_img_aug.py, left out of
bench/accuracy.py's second score."""
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import gen_img_aug
from cli import IGNORE_LABEL
from label_outlines import bare_outlines, mark_ignored

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import accuracy  # noqa: E402


def ring(label, centre, radius, gap_degrees=0, value=1):
    """A 1-pixel circle, open by gap_degrees: an outline drawn and never filled."""
    cv2.ellipse(label, centre, (radius, radius), 0, gap_degrees, 360, value, 1)
    return label


def disc(label, centre, radius, value=1):
    cv2.circle(label, centre, radius, value, -1)
    return label


@pytest.mark.parametrize("gap, width", [(0, 1), (20, 1), (90, 1), (0, 2)])
def test_an_outline_is_found_and_its_hull_covers_the_inside(gap, width):
    label = disc(np.zeros((200, 200), np.uint8), (150, 150), 25)
    cv2.ellipse(label, (60, 60), (30, 30), 0, gap, 360, 1, width)
    found, left_out = bare_outlines(label)
    assert len(found) == 1
    x, y, w, h = found[0]["box"]
    assert 29 <= x <= 30 and 29 <= y <= 30 and 55 <= w <= 63 and 55 <= h <= 63
    assert found[0]["outline"] == np.count_nonzero(label[:100, :100])
    assert found[0]["hull"] > 4 * found[0]["outline"]
    assert left_out[60, 60] and left_out[60, 31] and not left_out[150, 150]
    assert not left_out[5, 5]


@pytest.mark.parametrize("centre, inside", [((100, 0), (20, 100)),     # cut by the top
                                            ((10, 10), (5, 5)),         # cut at a corner
                                            ((100, 45), (45, 100))])    # touching the top
def test_an_outline_cut_by_the_frame_is_found(centre, inside):
    """centre as (x, y), inside as (row, column)."""
    label = ring(np.zeros((200, 200), np.uint8), centre, 45)
    [found], left_out = bare_outlines(label)
    assert found["box"][1] == 0 and left_out[inside]
    assert not left_out[0, 199] and not left_out[199, 0]


def test_only_the_enclosed_background_is_left_out():
    label = ring(np.zeros((200, 200), np.uint8), (100, 50), 50)     # touches the top at a point
    _, left_out = bare_outlines(label)
    assert left_out[50, 100] and not left_out[2, 55] and not left_out[2, 145]


def scribbled(label, low=50, high=150):
    """A square spiral of 1-pixel lines 1 pixel apart: a fill scribbled in, thin and closed
    around one winding inside, but covering half its hull."""
    corners = [(low, low)]
    while high - low >= 4:
        corners += [(high, low), (high, high), (low, high), (low, low + 2), (low + 2, low + 2)]
        low, high = low + 2, high - 2
    for start, end in zip(corners, corners[1:]):
        cv2.line(label, start, end, 1, 1)
    return label


def grid(label):
    """Thin lines every 20 px in both directions: a class of membranes, not an outline."""
    label[10:190:20, 10:190] = 1
    label[10:190, 10:190:20] = 1
    label[189, 10:190] = label[10:190, 189] = 1
    return label


@pytest.mark.parametrize("draw", [
    lambda lbl: disc(lbl, (100, 100), 40),                                    # a cell
    lambda lbl: disc(disc(lbl, (100, 100), 40), (120, 100), 38, value=0),     # a crescent
    lambda lbl: cv2.line(lbl, (10, 20), (190, 180), 1, 1),                    # a fibre
    lambda lbl: ring(lbl, (100, 100), 8),                                     # a small ring
    lambda lbl: disc(ring(lbl, (100, 100), 40, value=2), (100, 100), 39),     # a membrane
    lambda lbl: cv2.circle(lbl, (100, 100), 40, 1, 4),                        # a thick ring
    lambda lbl: ring(lbl, (100, 100), 60, gap_degrees=180),                   # a half circle
    scribbled, grid,
], ids=["disc", "crescent", "fibre", "small-ring", "membrane-class", "thick-ring",
        "half-circle", "scribbled", "grid"])
def test_filled_and_thin_objects_are_not_outlines(draw):
    label = draw(np.zeros((200, 200), np.uint8))
    assert bare_outlines(label) == ([], None)
    assert mark_ignored(label, None) is label


def test_pixels_to_ignore_are_not_objects():
    label = ring(np.zeros((200, 200), np.uint8), (100, 100), 50, value=IGNORE_LABEL)
    assert bare_outlines(label) == ([], None)


def test_an_outline_around_an_inside_marked_to_ignore_is_not_reported():
    label = disc(np.zeros((200, 200), np.uint8), (100, 100), 50, value=IGNORE_LABEL)
    assert bare_outlines(ring(label, (100, 100), 50)) == ([], None)


@pytest.mark.parametrize("sides", [(0,), (0, 2), (0, 2, 3), (0, 1, 2, 3)])
def test_lines_along_the_frame_are_not_outlines(sides):
    label = np.zeros((60, 60), np.uint8)
    for side in sides:
        label[(np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1])[side]] = 1
    assert bare_outlines(label) == ([], None)


def test_ignoring_outlines_leaves_other_objects_as_they_were():
    label = disc(ring(np.zeros((200, 200), np.uint8), (60, 60), 30), (150, 150), 25, value=2)
    disc(label, (60, 60), 8, value=2)               # a nucleus labelled inside the outline
    ignored = mark_ignored(label, bare_outlines(label)[1])
    assert ignored[60, 45] == IGNORE_LABEL and ignored[60, 30] == IGNORE_LABEL
    assert ignored[60, 60] == 2 and np.array_equal(ignored[100:, 100:], label[100:, 100:])
    assert label[60, 45] == 0                       # the caller's label is not changed


def outline_dataset(root, outlined):
    """Four 120 px frames, each with a filled disc; those in `outlined` also hold a ring."""
    for sub in ("src", "label"):
        (root / sub).mkdir(parents=True)
    (root / "classes.txt").write_text("background\ncell\n")
    for i in range(4):
        label = disc(np.zeros((120, 120), np.uint8), (90, 90), 15)
        if f"f{i}" in outlined:
            ring(label, (35, 35), 25)
        image = (60 + i + 120 * disc(np.zeros_like(label), (90, 90), 15)).astype(np.uint8)
        cv2.imwrite(str(root / "src" / f"f{i}.png"), image)
        cv2.imwrite(str(root / "label" / f"f{i}.png"), label)
    return root


def test_gen_img_aug_warns_of_outlines_and_lists_them_in_the_split(tmp_path, capsys):
    data = outline_dataset(tmp_path / "data", {"f1", "f3"})
    gen_img_aug.main(["--data-dir", str(data), "--work-dir", str(tmp_path / "w"),
                      "--num-patches", "4", "--patch-size", "32", "--workers", "1"])
    warnings = [line for line in capsys.readouterr().out.splitlines() if "bare outline" in line]
    assert len(warnings) == 2 and "f1" in warnings[0] and "f3" in warnings[1]
    assert "at (10, 10)" in warnings[0]
    split = json.loads((tmp_path / "w" / "split.json").read_text())
    assert sorted(split["bare_outlines"]) == ["f1", "f3"]
    assert split["bare_outlines"]["f1"][0]["box"][:2] == [10, 10]


def test_many_labels_with_outlines_are_summed_up(capsys):
    found = [{"box": [1, 2, 30, 40], "outline": 100, "hull": 900}]
    gen_img_aug.report_outlines({f"f{i}": found for i in range(8)})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and "30x40 px at (1, 2)" in lines[0]
    assert lines[-1].startswith("warning: 3 more labels")


def test_gen_img_aug_is_quiet_about_filled_labels(tmp_path, capsys):
    data = outline_dataset(tmp_path / "data", set())
    gen_img_aug.main(["--data-dir", str(data), "--work-dir", str(tmp_path / "w"),
                      "--num-patches", "4", "--patch-size", "32", "--workers", "1"])
    assert "bare outline" not in capsys.readouterr().out
    assert json.loads((tmp_path / "w" / "split.json").read_text())["bare_outlines"] == {}


def test_accuracy_scores_again_without_the_outlines(tmp_path):
    data = outline_dataset(tmp_path / "data", {"f1"})
    predict = tmp_path / "w" / "test" / "predict"
    predict.mkdir(parents=True)
    for name in ("f0", "f1"):           # the network found the outlined cell, filled
        mask = disc(disc(np.zeros((120, 120), np.uint8), (90, 90), 15), (35, 35), 24)
        cv2.imwrite(str(predict / f"{name}.png"), mask)
    headline = accuracy.score_model(data, ["f0", "f1"], tmp_path / "w")
    without = accuracy.score_without_bare_outlines(data, ["f0", "f1"], tmp_path / "w")
    assert list(without["labels"]) == ["f1"]
    # f0's disc, predicted where no cell is labelled, still counts as false.
    assert headline["foreground_iou"] < without["foreground_iou"] < 1
    cells = 2 * np.count_nonzero(disc(np.zeros((120, 120), np.uint8), (90, 90), 15))
    false_f0 = np.count_nonzero(disc(np.zeros((120, 120), np.uint8), (35, 35), 24))
    assert without["foreground_iou"] == pytest.approx(cells / (cells + false_f0))


def test_accuracy_records_no_second_score_for_filled_labels(tmp_path):
    data = outline_dataset(tmp_path / "data", set())
    assert accuracy.score_without_bare_outlines(data, ["f0"], tmp_path / "w") == {"labels": {}}
