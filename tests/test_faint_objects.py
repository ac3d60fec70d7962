"""faint_objects.py: texture of predicted objects, the filter, and its calibration."""
import cv2
import numpy as np
import pytest

from cli import IGNORE_LABEL, PipelineError
from faint_objects import (MARGIN, MIN_GAIN, calibrate, drop_faint, object_textures, objects,
                           relative_texture)
from metrics import confusion_matrix, iou_per_class
from model_folder import check_faint_filter


def frame(seed=0, textured=(40, 40), faint=(40, 120), radius=15):
    """A 100x160 grey frame on a mildly noisy background: a strongly textured disc (a cell)
    and a disc as smooth as the background (a faint smear), with their masks."""
    rng = np.random.default_rng(seed)
    img = 128 + rng.normal(0, 2, (100, 160))
    yy, xx = np.mgrid[:100, :160]
    cell = (yy - textured[0]) ** 2 + (xx - textured[1]) ** 2 <= radius ** 2
    smear = (yy - faint[0]) ** 2 + (xx - faint[1]) ** 2 <= radius ** 2
    img[cell] += rng.normal(0, 30, cell.sum())
    img[smear] += 6
    return np.clip(img, 0, 255).astype(np.uint8), cell, smear


def test_texture_is_relative_to_the_frame():
    img, cell, smear = frame()
    texture = relative_texture(img)
    assert np.median(texture) == pytest.approx(1, abs=0.05)
    assert texture[cell].mean() > 5 * texture[smear].mean()
    # Exposure and gain cancel: a frame twice as bright and contrasted has the same texture.
    brighter = np.clip(img.astype(np.float64) * 2 - 128, 0, 255).astype(np.uint8)
    inside = cell & (brighter < 255) & (brighter > 0)
    assert np.allclose(relative_texture(brighter)[inside].mean(), texture[inside].mean(),
                       rtol=0.1)
    # A flat frame has no texture anywhere (and no division by a zero median).
    assert not relative_texture(np.full((20, 30), 7, np.uint8)).any()


def test_objects_are_8_connected_regions_of_any_class():
    mask = np.zeros((6, 6), np.uint8)
    mask[0, 0], mask[1, 1] = 1, 2          # diagonal neighbours of two classes: one object
    mask[4:6, 4:6] = 1
    index, count = objects(mask)
    assert count == 2 and index[0, 0] == index[1, 1] != index[5, 5]
    textures = object_textures(index, count, np.arange(36, dtype=float).reshape(6, 6))
    assert textures.tolist() == [(0 + 7) / 2, (28 + 29 + 34 + 35) / 4]


def test_drop_faint_keeps_textured_objects():
    img, cell, smear = frame()
    mask = np.zeros(img.shape, np.uint8)
    mask[cell], mask[smear] = 2, 1
    kept, dropped = drop_faint(mask, img, threshold=3.0)
    assert dropped == 1
    assert np.array_equal(kept == 2, cell) and not kept[smear].any()
    unchanged, none = drop_faint(mask, img, None)
    assert unchanged is mask and none == 0
    assert drop_faint(np.zeros_like(mask), img, 3.0)[1] == 0


def test_calibration_drops_what_the_labels_call_background():
    frames = []
    for seed in range(3):
        img, cell, smear = frame(seed)
        mask = ((cell | smear) * 1).astype(np.uint8)
        frames.append((img, mask, cell.astype(np.uint8)))
    result = calibrate(frames, 2)
    assert result["frames"] == 3 and result["objects"] == 6 and result["dropped"] == 3
    faint = max(texture_of(f, labelled=False) for f in frames)
    textured = min(texture_of(f, labelled=True) for f in frames)
    # In the gap between the faintest labelled object and the rest, at its geometric middle.
    assert result["threshold"] == pytest.approx(np.sqrt(faint * textured))
    assert result["mean_iou_kept"] < result["mean_iou_filtered"] == pytest.approx(1.0)
    # The recorded IoUs are the pipeline's one convention on the summed confusion matrix.
    total = sum(confusion_matrix(label, mask, 2) for _, mask, label in frames)
    assert result["mean_iou_kept"] == pytest.approx(iou_per_class(total).mean())


def test_no_filter_drops_every_object():
    """Held-out frames whose predicted objects are all false (a model trained for two steps
    on one held-out frame recorded such a threshold) set no filter: masks would be empty."""
    img, cell, smear = frame()
    nothing = np.zeros(img.shape, np.uint8)
    result = calibrate([(img, cell.astype(np.uint8), nothing)], 2)
    assert result["objects"] == 1 and result["threshold"] is None and result["dropped"] == 0
    result = calibrate([(img, ((cell | smear) * 1).astype(np.uint8), nothing)], 2)
    assert result["objects"] == 2 and result["dropped"] == 1      # the faint one at most


def texture_of(one_frame, labelled):
    """The mean texture of the frame's one labelled (or one unlabelled) predicted object."""
    img, mask, label = one_frame
    index, count = objects(mask)
    textures = object_textures(index, count, relative_texture(img))
    [texture] = [t for i, t in enumerate(textures)
                 if (label[index == i + 1] == 1).any() == labelled]
    return texture


def mean_iou_with(frames, threshold, num_classes):
    """Mean IoU of the frames' masks filtered at threshold, computed from scratch."""
    total = sum(confusion_matrix(label, drop_faint(mask, img, threshold)[0], num_classes)
                for img, mask, label in frames)
    return iou_per_class(total).mean()


def test_no_filter_where_faint_objects_are_real():
    # The faint smear is a labelled object; the one false object is the most textured, so
    # dropping it would drop every real object first.
    img, cell, smear = frame()
    yy, xx = np.mgrid[:100, :160]
    blob = (yy - 80) ** 2 + (xx - 80) ** 2 <= 8 ** 2
    img[blob] = np.where(np.indices(img.shape).sum(axis=0)[blob] % 2, 0, 255)
    mask = ((cell | smear | blob) * 1).astype(np.uint8)
    label = ((cell | smear) * 1).astype(np.uint8)
    result = calibrate([(img, mask, label)], 2)
    assert result["mean_iou_kept"] < 1
    assert result["threshold"] is None and result["dropped"] == 0
    assert result["mean_iou_filtered"] == result["mean_iou_kept"]
    empty = calibrate([(img, np.zeros_like(mask), label)], 2)
    assert empty["threshold"] is None and empty["objects"] == 0


def test_a_gain_too_small_to_trust_sets_no_filter():
    # A 2-pixel faint false speck beside a large, exactly predicted cell: dropping it gains
    # less than MIN_GAIN.
    img, cell, smear = frame(radius=30)
    mask = cell.astype(np.uint8)
    mask[90, 150:152] = 1
    result = calibrate([(img, mask, cell.astype(np.uint8))], 2)
    assert 0 < 1 - result["mean_iou_kept"] < MIN_GAIN
    assert result["threshold"] is None


@pytest.mark.parametrize("false_deviation, filtered", [(3, True), (26, False)])
def test_the_threshold_keeps_a_margin_below_the_faintest_object_it_keeps(false_deviation,
                                                                         filtered):
    # A false object (unlabelled) with some texture of its own beside a cell: dropping it is
    # worth far more than MIN_GAIN, but only where a threshold can sit MARGIN below the cell.
    img, cell, smear = frame()
    noisy = img.astype(np.float64)
    noisy[smear] += np.random.default_rng(1).normal(0, false_deviation, smear.sum())
    img = np.clip(noisy, 0, 255).astype(np.uint8)
    mask = ((cell | smear) * 1).astype(np.uint8)
    frames = [(img, mask, cell.astype(np.uint8))]
    cell_texture = texture_of(frames[0], labelled=True)
    false_texture = texture_of(frames[0], labelled=False)
    assert false_texture < cell_texture
    assert (cell_texture >= MARGIN ** 2 * false_texture) == filtered
    result = calibrate(frames, 2)
    if filtered:
        assert result["dropped"] == 1 and result["gap"] == pytest.approx(
            [false_texture, cell_texture])
        assert cell_texture >= MARGIN * result["threshold"] > result["threshold"] > false_texture
    else:
        assert result["threshold"] is None and "gap" not in result
        # Without the margin the best threshold would drop the false object.
        assert mean_iou_with(frames, np.sqrt(false_texture * cell_texture), 2) == pytest.approx(1)


def test_unsure_pixels_do_not_count_and_the_recorded_iou_is_the_filtered_masks():
    # Three classes, and a frame repeated (tied textures): an unsure smear (255), a false
    # faint smear of class 2, cells of class 1 and 2.
    img, cell, smear = frame(textured=(30, 40), faint=(30, 120))
    _, cell2, smear2 = frame(textured=(75, 40), faint=(75, 120), radius=10)
    img2, _, _ = frame(textured=(75, 40), faint=(75, 120), radius=10)
    img = np.where(cell2 | smear2, img2, img).astype(np.uint8)
    mask = np.zeros(img.shape, np.uint8)
    mask[cell], mask[smear], mask[cell2], mask[smear2] = 1, 1, 2, 2
    label = mask.copy()
    label[smear] = IGNORE_LABEL
    label[smear2] = 0
    frames = [(img, mask, label)] * 2
    result = calibrate(frames, 3)
    assert result["objects"] == 8 and result["dropped"] == 4
    total = sum(confusion_matrix(lab, m, 3) for _, m, lab in frames)
    assert result["mean_iou_kept"] == pytest.approx(iou_per_class(total).mean())
    assert result["mean_iou_filtered"] == pytest.approx(mean_iou_with(frames, result["threshold"], 3))
    assert result["mean_iou_filtered"] == pytest.approx(1.0)


def test_a_recorded_filter_is_checked_on_load():
    assert check_faint_filter(None, "c") is None
    assert check_faint_filter({"threshold": None}, "c") == {"threshold": None}
    assert check_faint_filter({"threshold": 2.5, "frames": 8}, "c")["threshold"] == 2.5
    for bad in ({"threshold": -1}, {"threshold": float("nan")}, {"threshold": "7"},
                {"threshold": True}, {}, [3.0], "off"):
        with pytest.raises(PipelineError, match="'faint_filter' must record a 'threshold'"):
            check_faint_filter(bad, "c")


def test_colour_frames_are_measured_in_grey():
    img, cell, smear = frame()
    colour = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    assert np.allclose(relative_texture(colour), relative_texture(img))
