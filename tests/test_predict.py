"""predict_lovasz_loss.py: tiling, blending, TTA, decisions, IoU, and a run on a real model."""
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import get_contour
import predict_lovasz_loss as P
import whole_slide as W
from outputs import sha256_of
from cli import IGNORE_LABEL, PipelineError
from geometry import dihedral, reflect_pad
from image_io import picture_digest, read_raw_image
from metrics import confusion_matrix, iou_per_class

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["background", "bead", "cell"]


def one_hot_image(h, w, classes=3, seed=0):
    """A random class map as one-hot 'probabilities': an identity model must return it."""
    labels = np.random.default_rng(seed).integers(0, classes, (h, w))
    return np.eye(classes, dtype=np.float32)[labels]


def identity(batch):
    return batch


def as_float_tile(tile):
    """The identity preparation: the tile as float32 with a channel axis."""
    tile = np.asarray(tile, np.float32)
    return tile[:, :, None] if tile.ndim == 2 else tile


# ---------------------------------------------------------------- tiling

@pytest.mark.parametrize("h, w", [(1, 1), (5, 3), (40, 70)])
def test_mirrored_rows_are_reflect_pads_rows(h, w):
    image = np.arange(h * w * 2).reshape(h, w, 2)
    for y0, y1, width in ((0, h, w), (0, 3 * h + 5, 2 * w + 7), (h // 2, 9 * h + 1, w)):
        assert np.array_equal(W.mirrored_rows(W.ArrayRows(image), y0, y1, width),
                              reflect_pad(image, y1, width)[y0:y1])


def test_bands_come_top_down_from_one_strip_of_tiles_at_a_time():
    """predict_bands reads each row of tiles once and hands rows on as soon as they are final,
    so a frame is never whole in memory; the bands put together are the frame."""
    image = one_hot_image(300, 120)
    reads = []

    def read_rows(y0, y1):
        reads.append((y0, y1))
        return W.mirrored_rows(W.ArrayRows(image), y0, y1, 120)

    bands = list(P.predict_bands(identity, read_rows, 300, 120, 32, 0.25, "gaussian",
                                 batch_size=4, prepare=as_float_tile))
    starts = sorted({y for y, _ in P.tile_positions(300, 120, 32, 0.25)})
    assert reads == [(y, y + 32) for y in starts]
    assert [y for y, _ in bands] == [0, *np.cumsum([len(b) for _, b in bands])[:-1]]
    assert max(len(b) for _, b in bands) <= 32 and len(bands) == len(starts)
    assert np.allclose(np.concatenate([b for _, b in bands]), image, atol=1e-6)


@pytest.mark.parametrize("h, w, tile", [(65, 129, 64), (77, 91, 64), (20, 37, 64),
                                        (1032, 1376, 256), (64, 64, 64)])
@pytest.mark.parametrize("overlap", [0, 0.25, 0.5])
@pytest.mark.parametrize("blend", P.BLENDS)
def test_identity_model_is_reassembled_exactly(h, w, tile, overlap, blend):
    image = one_hot_image(h, w)
    probs = P.predict_frame(identity, image, tile, overlap, blend, batch_size=5,
                            prepare=as_float_tile)
    assert probs.shape == (h, w, 3)
    np.testing.assert_array_equal(probs, image)


def everything_is_a_cell(batch):
    """A model that draws objects on any input, as the network does on a tile of zeros."""
    probs = np.zeros((*batch.shape[:3], 2), np.float32)
    probs[..., 1] = 1
    return probs


@pytest.mark.parametrize("overlap", [0, 0.5])
def test_tiles_of_one_value_show_nothing_and_leave_pixels_to_the_others(overlap):
    """A blank or saturated area: a pixel that only tiles of one value cover is background,
    one that any other tile covers is what that tile says."""
    image = np.full((96, 160), 7, np.uint8)
    image[:, 100:] = np.random.default_rng(2).integers(0, 255, (96, 60))
    probs = P.predict_frame(everything_is_a_cell, image, 32, overlap, "gaussian", batch_size=3,
                            prepare=as_float_tile)
    shown = np.zeros(image.shape, bool)
    for y, x in P.tile_positions(96, 160, 32, overlap):
        if not P.is_flat(image[y:y + 32, x:x + 32]):
            shown[y:y + 32, x:x + 32] = True
    assert 0 < shown.mean() < 1
    assert np.all(probs[shown, 1] > 0.999) and np.all(probs[~shown, 0] == 1)
    blank = P.predict_frame(everything_is_a_cell, np.zeros((50, 70, 3), np.uint16), 32,
                            overlap, "gaussian", prepare=as_float_tile)
    assert np.all(blank[..., 0] == 1)


@pytest.mark.parametrize("transforms", [(0,), (0, 5)])
def test_tiles_of_one_value_skip_the_network(transforms):
    """A flat tile is background whatever the network says of it: it went through the
    network all the same (a slide's blank margins, as long as its tissue). Once, to learn the
    number of classes, where the first batch holds flat tiles alone."""
    image = np.full((96, 160), 7, np.uint8)
    image[:, 100:] = np.random.default_rng(2).integers(0, 255, (96, 60))
    seen, sizes = [], []

    def counting(batch):
        seen.extend(batch)
        sizes.append(len(batch))
        return everything_is_a_cell(batch)

    probs = P.predict_frame(counting, image, 32, 0.5, "gaussian", batch_size=3,
                            transforms=transforms, prepare=as_float_tile)
    positions = P.tile_positions(96, 160, 32, 0.5)
    shown = sum(not P.is_flat(image[y:y + 32, x:x + 32]) for y, x in positions)
    assert 0 < shown < len(positions)
    assert len(seen) == shown * len(transforms) + 1
    assert sum(float(np.ptp(tile)) == 0 for tile in seen) == 1
    # the flat tile alone, then full batches of tiles that show something
    assert sizes[0] == 1 and set(sizes[1:-1]) == {3}
    expected = P.predict_frame(everything_is_a_cell, image, 32, 0.5, "gaussian", batch_size=1,
                               transforms=transforms, prepare=as_float_tile)
    np.testing.assert_allclose(probs, expected, rtol=0, atol=1e-12)
    # A flat tile weighs as one per transform, as the tiles beside it: with a model that
    # turning does not change, the transforms change nothing.
    plain = P.predict_frame(everything_is_a_cell, image, 32, 0.5, "gaussian", prepare=as_float_tile)
    np.testing.assert_allclose(probs, plain, rtol=0, atol=1e-12)
    seen.clear()
    P.predict_frame(counting, np.zeros((50, 70, 3), np.uint16), 32, 0.25, "gaussian",
                    prepare=as_float_tile)
    assert len(seen) == 1


@pytest.mark.parametrize("overlap", [0, 0.25])
def test_continuous_input_survives_blending(overlap):
    image = np.random.default_rng(1).random((130, 75, 2)).astype(np.float32)
    probs = P.predict_frame(identity, image, 32, overlap, "gaussian", batch_size=7,
                            prepare=as_float_tile)
    np.testing.assert_allclose(probs, image, rtol=0, atol=1e-6)


@pytest.mark.parametrize("h, w", [(65, 129), (20, 37), (128, 64), (1032, 1376)])
def test_overlap_zero_is_the_originals_grid(h, w):
    tile = 64
    positions = P.tile_positions(h, w, tile, 0)
    assert len(positions) == math.ceil(h / tile) * math.ceil(w / tile)
    assert positions[-1] == ((math.ceil(h / tile) - 1) * tile, (math.ceil(w / tile) - 1) * tile)


@pytest.mark.parametrize("h, w, overlap", [(100, 300, 0.25), (480, 640, 0.25), (1032, 1376, 0.5),
                                            (64, 65, 0.25), (20, 300, 0.1)])
def test_overlapping_tiles_end_flush_with_the_border(h, w, overlap):
    """As many tiles as the stride needs, spread so the last ends at the border, never past."""
    tile, stride = 64, round(64 * (1 - overlap))
    positions = P.tile_positions(h, w, tile, overlap)
    ys, xs = sorted({y for y, _ in positions}), sorted({x for _, x in positions})
    for starts, side in ((ys, h), (xs, w)):
        assert starts[0] == 0
        assert starts[-1] == max(0, side - tile)
        assert len(starts) == 1 + max(0, math.ceil((side - tile) / stride))
        assert np.all(np.diff(starts) <= stride)          # the overlap only grows


def test_each_tile_is_prepared_on_its_own_pixels():
    """Per-tile preprocessing must see exactly its tile of the reflect-padded image."""
    image = np.random.default_rng(2).integers(0, 255, (70, 90), dtype=np.uint8)
    seen = []

    def prepare(tile):
        seen.append(tile.copy())
        return np.zeros((32, 32, 1), np.float32)

    P.predict_frame(identity, image, 32, 0.25, "uniform", batch_size=4, prepare=prepare)
    positions = P.tile_positions(70, 90, 32, 0.25)
    padded = reflect_pad(image, positions[-1][0] + 32, positions[-1][1] + 32)
    assert len(seen) == len(positions)
    for (y, x), tile in zip(positions, seen):
        np.testing.assert_array_equal(tile, padded[y:y + 32, x:x + 32])


def test_gaussian_window_favours_the_tile_centre():
    window = P.blend_window(64, "gaussian")
    assert window.shape == (64, 64) and window.min() > 0
    assert window[31, 31] == window.max() and window[0, 0] == window.min()
    np.testing.assert_allclose(window, window.T)
    np.testing.assert_array_equal(P.blend_window((32, 64), "uniform"), np.ones((32, 64)))


def test_blending_weights_overlapping_tiles_by_the_window():
    """Two tiles that disagree: uniform gives their mean, Gaussian leans to the nearer centre."""
    def tile_constant(batch):
        first = batch[:, 0, 0, 0]
        return np.broadcast_to(first[:, None, None, None], batch.shape[:3] + (1,)).copy()

    image = np.zeros((32, 56, 1), np.float32)
    image[:, 24:] = 1.0    # the second tile (x 24..55) starts at 1, the first at 0
    image[-1] = 0.5        # neither is of one value, which would count as showing nothing
    uniform = P.predict_frame(tile_constant, image, 32, 0.25, "uniform", batch_size=2,
                              prepare=as_float_tile)
    gaussian = P.predict_frame(tile_constant, image, 32, 0.25, "gaussian", batch_size=2,
                               prepare=as_float_tile)
    assert uniform[0, 24:32, 0] == pytest.approx(0.5)
    assert np.all(np.diff(gaussian[0, 24:32, 0]) > 0)          # moves towards the second tile
    assert gaussian[0, 24, 0] < 0.5 < gaussian[0, 31, 0]


@pytest.mark.parametrize("overlap", [0, 0.25])
@pytest.mark.parametrize("orientations", ["all", "transpose", "flip-rows"])
def test_tta_of_an_identity_model_is_the_identity(overlap, orientations):
    image = one_hot_image(70, 45, seed=3)
    seen = []

    def recording_identity(batch):
        seen.extend(batch)
        return batch

    transforms = P.tta_transforms(True, orientations, "m")
    probs = P.predict_frame(recording_identity, image, 32, overlap, "gaussian", batch_size=6,
                            transforms=transforms, prepare=as_float_tile)
    np.testing.assert_array_equal(probs, image)
    tiles = len(P.tile_positions(70, 45, 32, overlap))
    assert len(seen) == len(transforms) * tiles
    first_tile = seen[:len(transforms)]
    # The model really saw the rotations/flips its patches came in, and no others.
    assert len({t.tobytes() for t in first_tile}) == len(transforms) == \
        (8 if orientations == "all" else 2)
    assert {t.tobytes() for t in first_tile} == \
        {dihedral(first_tile[0], k).tobytes() for k in transforms}


def test_mirror_tta_mirrors_across_the_relief_axis():
    tile = np.arange(16, dtype=np.float32).reshape(4, 4, 1)
    np.testing.assert_array_equal(dihedral(tile, P.tta_transforms(True, "transpose", "m")[1]),
                                  tile.transpose(1, 0, 2))
    np.testing.assert_array_equal(dihedral(tile, P.tta_transforms(True, "flip-rows", "m")[1]),
                                  tile[::-1])
    assert P.tta_transforms(False, "all", "m") == (0,)


def test_rotate_invert_tta_shows_the_model_the_half_turned_inverted_tile():
    """Each tile is prepared from its raw pixels twice, once inverted (the preprocessing is
    not symmetric in intensity), and the half-turned output is turned back before blending:
    a model that cannot tell a tile from its inverted copy gives the plain prediction."""
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (70, 45), dtype=np.uint8)
    seen, prepared = [], []

    def prepare(tile):
        prepared.append(np.array(tile))
        return (np.asarray(tile, np.float32) ** 2 / 255.0 ** 2)[:, :, None]

    def blind_to_inversion(batch):
        seen.extend(batch)
        cell = np.abs(np.sqrt(batch) - 0.5) * 2
        return np.concatenate([1 - cell, cell], axis=-1)

    transforms = P.tta_transforms(True, "rotate-invert", "m")
    assert transforms == (0, 10)
    both = P.predict_frame(blind_to_inversion, image, 32, 0.25, "gaussian", batch_size=6,
                           transforms=transforms, prepare=prepare)
    assert len(seen) == 2 * len(P.tile_positions(70, 45, 32, 0.25))
    plain = P.predict_frame(blind_to_inversion, image, 32, 0.25, "gaussian", batch_size=6,
                            prepare=prepare)
    np.testing.assert_allclose(both, plain, atol=1e-5)
    tile = image[:32, :32]
    np.testing.assert_array_equal(prepared[0], tile)
    np.testing.assert_array_equal(prepared[1], 255 - tile)
    np.testing.assert_allclose(seen[1][:, :, 0], np.rot90((255.0 - tile) ** 2 / 255.0 ** 2, 2),
                               rtol=1e-6)


@pytest.mark.parametrize("orientations, square", [("all", True), ("transpose", True),
                                                  ("flip-columns", False)])
def test_tta_needs_square_tiles_where_it_swaps_rows_and_columns(orientations, square):
    transforms = P.tta_transforms(True, orientations, "m")
    run = lambda: P.predict_frame(identity, one_hot_image(40, 40), (32, 64),  # noqa: E731
                                  transforms=transforms, prepare=as_float_tile)
    if square:
        with pytest.raises(PipelineError, match="square"):
            run()
    else:
        np.testing.assert_array_equal(run(), one_hot_image(40, 40))


@pytest.mark.parametrize("batch_size", [1, 3, 8, 100])
@pytest.mark.parametrize("tta", [False, True])
def test_one_model_call_per_batch(batch_size, tta):
    calls = []

    def counting(batch):
        calls.append(len(batch))
        return batch

    image = one_hot_image(150, 210)
    P.predict_frame(counting, image, 64, 0.25, "gaussian", batch_size,
                    P.tta_transforms(tta, "all", "m"), prepare=as_float_tile)
    inputs = len(P.tile_positions(150, 210, 64, 0.25)) * (8 if tta else 1)
    assert len(calls) == math.ceil(inputs / batch_size)
    assert sum(calls) == inputs and max(calls) <= batch_size


# ---------------------------------------------------------------- decision

def test_argmax_decision():
    probs = np.array([[[0.2, 0.5, 0.3], [0.6, 0.1, 0.3], [0.1, 0.2, 0.7]]])
    np.testing.assert_array_equal(P.decide(probs, "argmax"), [[1, 0, 2]])


def test_sigmoid_decision_is_the_originals_rule():
    probs = np.array([[
        [0.20, 0.60, 0.70],   # two pass: the higher sigmoid wins -> 2
        [0.20, 0.60, 0.40],   # one passes -> 1
        [0.30, 0.50, 0.51],   # none passes (0.51 is not above 0.51) -> background
        [0.90, 0.52, 0.10],   # background passes highest -> 0
        [0.52, 0.90, 0.10],   # bead beats a passing background -> 1
        [0.00, 0.00, 0.00],
    ]])
    mask = P.decide(probs, "sigmoid>0.51")
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [[2, 1, 0, 0, 1, 0]])


def test_unknown_decision_is_reported():
    with pytest.raises(PipelineError, match="decision"):
        P.decide(np.zeros((1, 1, 2)), "softmax>0.3")


# ---------------------------------------------------------------- IoU

def test_iou_hand_cases():
    # 4 classes: 3 appears nowhere (-> 1); 2 is predicted but not labelled (-> 0).
    label = np.array([[0, 0, 1, 1],
                      [0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 0, 2, 1]])
    cm = confusion_matrix(label, pred, 4)
    iou = iou_per_class(cm)
    np.testing.assert_allclose(iou, [3 / 4, 3 / 5, 0.0, 1.0])

    label2 = np.array([[2, 2], [2, 0]])
    pred2 = np.array([[2, 2], [0, 0]])
    cm2 = confusion_matrix(label2, pred2, 4)
    iou2 = iou_per_class(cm2)
    np.testing.assert_allclose(iou2, [1 / 2, 1.0, 2 / 3, 1.0])   # class 1 absent from both

    rows = P.iou_rows({"a": cm, "b": cm2}, cm + cm2)
    assert [r[0] for r in rows] == ["a", "b", "dataset"]
    assert rows[0][-1] == pytest.approx(np.mean([3 / 4, 3 / 5, 0, 1]))
    # Dataset IoU from the summed confusion matrix, not the mean of the images' IoUs:
    # class 0: TP 3+1, FP 0+1, FN 1+0 -> 4/6; class 1: 3/5; class 2: TP 2, FP 1, FN 1 -> 2/4.
    np.testing.assert_allclose(rows[-1][1:-1], [4 / 6, 3 / 5, 2 / 4, 1.0])
    assert rows[-1][-1] == pytest.approx(np.mean([4 / 6, 3 / 5, 2 / 4, 1.0]))


def test_iou_files(tmp_path):
    label = np.array([[0, 1], [2, 2]])
    pred = np.array([[0, 1], [2, 0]])
    cm = confusion_matrix(label, pred, 3)
    iou = iou_per_class(cm)
    name = 'x, "the second"'     # a frame name a plain join would split into more columns
    rows = P.iou_rows({name: cm}, cm)
    P.write_iou(tmp_path, rows, CLASSES, {name: cm}, cm)
    with open(tmp_path / "iou.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["image", "iou_background", "iou_bead", "iou_cell", "mean_iou"]
    assert [r["image"] for r in table] == [name, "dataset"]
    assert all(None not in r for r in table)
    assert float(table[0]["iou_cell"]) == pytest.approx(iou[2]) == pytest.approx(0.5)
    data = json.loads((tmp_path / "iou.json").read_text())
    assert data["images"][name]["confusion_matrix"] == cm.tolist()
    assert data["dataset"]["iou"]["cell"] == pytest.approx(0.5)
    assert data["confusion_matrix"]["counts"] == cm.tolist()


# ---------------------------------------------------------------- colour and model folder

def test_channel_mismatch_is_a_clear_error(tmp_path):
    grey, colour = tmp_path / "grey.png", tmp_path / "colour.png"
    cv2.imwrite(str(grey), np.full((10, 12), 90, np.uint8))
    cv2.imwrite(str(colour), np.dstack([np.full((10, 12), v, np.uint8) for v in (10, 90, 200)]))
    with pytest.raises(PipelineError, match=r"grey\.png is a grey image.*colour"):
        P.model_image(grey, "rgb")
    assert P.model_image(colour, "grey").shape == (10, 12)   # converted, as the paper
    assert P.model_image(colour, "rgb").shape == (10, 12, 3)


def test_weights_choice(tmp_path):
    config = {"weights_files": {"best": "m_best.h5", "swa": "m_swa.h5"}}
    (tmp_path / "m_best.h5").write_text("")
    (tmp_path / "snapshots").mkdir()
    for epoch in (3, 12):
        (tmp_path / "snapshots" / f"epoch_{epoch:03d}.h5").write_text("")
    assert P.model_file(tmp_path, config, "best") == tmp_path / "m_best.h5"
    assert P.model_file(tmp_path, config, "last").name == "epoch_012.h5"
    assert P.model_file(tmp_path, config, "snapshots/epoch_003.h5").name == "epoch_003.h5"
    with pytest.raises(PipelineError, match="swa"):
        P.model_file(tmp_path, config, "swa")
    with pytest.raises(PipelineError, match="not best, swa, last"):
        P.model_file(tmp_path, config, "nothing.h5")


def training_settings(*argv):
    """config.json's 'settings' as training records them (every option of its command)."""
    import train_unet_xception_resnetblock as train
    return vars(train.parse_args(["--epochs", "3", "--swa-epochs", "2", *argv]))


def write_state(folder, epochs_done, **extra):
    """state.json as training_callbacks.Checkpoints writes it at an epoch's end (Finished
    adds "finished": true once the epochs have run)."""
    (folder / "state.json").write_text(json.dumps({"best_val_loss": 0.5,
                                                   "epochs_done": epochs_done,
                                                   "minutes": 0.3, **extra}))


def test_a_missing_model_file_is_explained_by_what_the_model_folder_records(tmp_path):
    """An interrupted training has no SWA model yet (written at its end); a finished one
    with --swa-epochs 0 never writes it. Training records no 'result' until it finishes."""
    (tmp_path / "m_best.h5").write_text("")
    config = {"weights_files": {"best": "m_best.h5", "swa": "m_swa.h5"},
              "settings": training_settings(), "val_frames": ["v1"]}
    write_state(tmp_path, 1)
    unfinished = r"\(its training has not finished: {}; rerun the training command to finish it\)$"
    with pytest.raises(PipelineError, match=r"m_swa\.h5 not found " +
                       unfinished.format("1 of 3 epochs done")):
        P.model_file(tmp_path, config, "swa")
    with pytest.raises(PipelineError, match=r"no snapshots in .* " +
                       unfinished.format("1 of 3 epochs done")):
        P.model_file(tmp_path, config, "last")
    write_state(tmp_path, 3, finished=True)     # killed during SWA or the calibration
    with pytest.raises(PipelineError, match=unfinished.format(
            "3 epochs done, not the steps after them")):
        P.model_file(tmp_path, config, "swa")
    (tmp_path / "state.json").unlink()          # killed before the first epoch's end
    with pytest.raises(PipelineError, match=unfinished.format("no epoch done yet")):
        P.model_file(tmp_path, {**config, "weights_files": {"best": "m_gone.h5"}}, "best")
    config["result"] = {"epochs_done": 3}
    with pytest.raises(PipelineError, match=r"not found \(training wrote it: moved or deleted "
                                            r"since\?\)$"):
        P.model_file(tmp_path, config, "swa")
    config["settings"]["swa_epochs"] = 0
    with pytest.raises(PipelineError, match=r"not found \(trained with --swa-epochs 0, as "
                                            r"config\.json's settings record\)$"):
        P.model_file(tmp_path, config, "swa")
    del config["settings"]      # not written by training: it cannot tell
    with pytest.raises(PipelineError, match=r"not found \(trained with --swa-epochs 0\?\)$"):
        P.model_file(tmp_path, config, "swa")


def test_a_model_folder_mid_restart_names_the_folder_holding_its_earlier_model(tmp_path):
    """--restart moves the model folder to <model-dir>.previous until the new run's first
    checkpoint: a prediction meanwhile (or after the restart stopped before one) finds no
    model, and the one it predicted with until then is still there to be used."""
    folder, aside = tmp_path / "weights", tmp_path / "weights.previous"
    folder.mkdir()
    with pytest.raises(PipelineError, match=r"train a model first, or point --model-dir at "
                                            r"a model folder$"):
        P.read_config(folder)
    aside.mkdir()
    (aside / "config.json").write_text("{}")
    hint = (f"; the model trained there before a --restart is in {aside} until the new run's "
            f"first checkpoint (--model-dir {aside} predicts with it)")
    with pytest.raises(PipelineError, match=re.escape(f"a model folder{hint}") + "$"):
        P.read_config(folder)
    config = {"weights_files": {"best": "m_best.h5"}, "settings": training_settings()}
    with pytest.raises(PipelineError, match=re.escape(
            f"(its training has not finished: no epoch done yet; rerun the training command "
            f"to finish it{hint})") + "$"):
        P.model_file(folder, config, "best")


def test_an_unfinished_training_is_noted_as_far_as_it_got(tmp_path, capsys):
    config = {"settings": training_settings(), "val_frames": ["v1"]}
    write_state(tmp_path, 1)
    paths = [tmp_path / "m_best.h5"]
    assert P.note_unfinished_training(tmp_path, config, paths, "model") is False
    assert capsys.readouterr().out == (
        f"note: the training of {tmp_path} has not finished (1 of 3 epochs done): its models "
        "are those of the epochs so far; the faint-object filter is not calibrated yet (every "
        "object is kept); rerunning its training command (config.json's 'command') resumes "
        "it\n")
    # The filter left out: turned off here, or by training, or no held-out frames to set it.
    for choice, settings, frames in (("off", training_settings(), ["v1"]),
                                     ("model", training_settings("--faint-filter", "off"), ["v1"]),
                                     ("model", training_settings(), [])):
        unfiltered = {"settings": settings, "val_frames": frames}
        assert P.note_unfinished_training(tmp_path, unfiltered, paths, choice) is False
        assert "(1 of 3 epochs done): its models are those of the epochs so far; rerunning" \
            in capsys.readouterr().out
    assert P.note_unfinished_training(tmp_path, {**config, "result": {}}, paths, "model") is True
    assert P.note_unfinished_training(tmp_path, {}, paths, "model") is None
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------- a real model

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import keras
    from model import build_model
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("weights")
    net = build_model((64, 64, 3), 3, weights=None)
    keras.saving.save_model(net, folder / "m_best.h5", include_optimizer=False)
    write_config(folder, "grey", "argmax")
    return folder


def write_config(folder, color_mode, decision, **extra):
    channels = 1 if color_mode == "grey" else 3
    (folder / "config.json").write_text(json.dumps({**extra,
        "sha256": {"m_best.h5": sha256_of(folder / "m_best.h5")},
        "classes": CLASSES, "num_classes": 3, "input_shape": [64, 64, 3],
        "patch_size": [64, 64], "color_mode": color_mode, "image_channels": channels,
        "preprocessing": {"mean": [100.0] * channels, "std": [40.0] * channels, "gamma": 1.2},
        "decision": decision,
        "weights_files": {"best": "m_best.h5", "swa": "m_swa.h5"}}))


def copy_test_set(work, copy):
    for sub in ("src", "label"):
        shutil.copytree(work / "test" / sub, copy / "test" / sub)
    shutil.copy(work / "split.json", copy / "split.json")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A test set of a 70x90 grey and a 64x64 colour image with labels, a corner of a's
    marked to ignore."""
    rng = np.random.default_rng(0)
    work = tmp_path_factory.mktemp("work")
    for sub in ("test/src", "test/label", "mine"):
        (work / sub).mkdir(parents=True)
    (work / "split.json").write_text("{}")      # gen_img_aug.py's mark of a finished run
    cv2.imwrite(str(work / "test/src/a.png"), rng.integers(0, 255, (70, 90), dtype=np.uint8))
    cv2.imwrite(str(work / "test/src/b.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    label = rng.integers(0, 3, (70, 90), dtype=np.uint8)
    label[:20, :30] = IGNORE_LABEL
    cv2.imwrite(str(work / "test/label/a.png"), label)
    cv2.imwrite(str(work / "test/label/b.png"), rng.integers(0, 3, (64, 64), dtype=np.uint8))
    cv2.imwrite(str(work / "mine/c.tif"), rng.integers(0, 255, (33, 100), dtype=np.uint8))
    return work


def run_predict(*args):
    return subprocess.run([sys.executable, str(ROOT / "predict_lovasz_loss.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_real_model_on_the_test_set(model_dir, work):
    result = run_predict("--work-dir", str(work), "--model-dir", str(model_dir),
                         "--save-probs", "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    out = work / "test" / "predict"
    masks = {}
    for name, shape in (("a", (70, 90)), ("b", (64, 64))):
        masks[name] = cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert masks[name].shape == shape and masks[name].dtype == np.uint8
        assert masks[name].max() < 3
        assert cv2.imread(str(out / f"{name}_color.png")).shape == (*shape, 3)
        probs = np.dstack([cv2.imread(str(out / f"{name}_prob_{c}.png"), cv2.IMREAD_UNCHANGED)
                           for c in CLASSES]).astype(int)
        assert np.all(np.abs(probs.sum(axis=2) - 255) <= 2)        # softmax sums to 1
    with open(out / "iou.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["image"] for r in table] == ["a", "b", "dataset"]
    labels = {n: cv2.imread(str(work / f"test/label/{n}.png"), 0) for n in ("a", "b")}
    scored = {n: labels[n] != IGNORE_LABEL for n in labels}     # the ignored corner left out
    total = sum(confusion_matrix(labels[n][scored[n]], masks[n][scored[n]], 3) for n in labels)
    expected = iou_per_class(total)
    assert [float(table[-1][f"iou_{c}"]) for c in CLASSES] == pytest.approx(expected, abs=1e-6)
    assert json.loads((out / "iou.json").read_text())["dataset"]["mean_iou"] == \
        pytest.approx(expected.mean())
    assert (out / "iou.png").is_file() and (work / "figures" / "iou_per_class.png").is_file()
    assert "dataset" in result.stdout

    # The masks go on to get_contour.py, which finds images and labels through predict.json.
    get_contour.main(["--work-dir", str(work), "--min-area", "2"])
    assert (work / "test" / "contours" / "a_contour.png").is_file()
    assert (work / "figures" / "panel_b.png").is_file()


def test_several_weights_predict_the_mean_of_their_probabilities(model_dir, work, tmp_path):
    import keras
    from model import build_model
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    keras.utils.set_random_seed(1)
    keras.saving.save_model(build_model((64, 64, 3), 3, weights=None), folder / "m_other.h5",
                            include_optimizer=False)
    config = json.loads((folder / "config.json").read_text())
    config["sha256"]["m_other.h5"] = sha256_of(folder / "m_other.h5")
    (folder / "config.json").write_text(json.dumps(config))
    config = P.read_config(folder)
    batch = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    best, other = (P.open_model(folder, config, P.model_files(folder, config, [c]), "fp32")[0](
        batch) for c in ("best", "m_other.h5"))
    paths = P.model_files(folder, config, ["best", "m_other.h5"])
    assert [p.name for p in paths] == ["m_best.h5", "m_other.h5"]
    ensemble = P.open_model(folder, config, paths, "fp32")[0]
    assert np.abs(best - other).max() > 1e-3          # two different models
    np.testing.assert_allclose(ensemble(batch), (best + other) / 2, atol=1e-7)

    out = tmp_path / "out"
    P.main(["--work-dir", str(work), "--model-dir", str(folder), "--weights", "best",
            "m_other.h5", "--output", str(out)])
    record = json.loads((out / "predict.json").read_text())
    assert [Path(p).name for p in record["model_files"]] == ["m_best.h5", "m_other.h5"]
    keras.saving.save_model(build_model((64, 64, 3), 2, weights=None), folder / "m_two.h5",
                            include_optimizer=False)    # a model of other classes
    with pytest.raises(PipelineError, match="m_two.h5 predicts 2 classes but config.json "
                                            "lists 3"):
        P.open_model(folder, config, P.model_files(folder, config, ["best", "m_two.h5"]),
                     "fp32", verify=False)
    (folder / "m_other.h5").write_bytes(b"replaced")     # each file is verified
    with pytest.raises(PipelineError, match="m_other.h5 is not the file training saved"):
        P.main(["--work-dir", str(work), "--model-dir", str(folder), "--weights", "best",
                "m_other.h5", "--output", str(tmp_path / "out2")])


def test_a_model_folder_is_refused_in_the_words_of_the_option_that_named_it(tmp_path):
    """Training's --init-model has no --no-verify to offer and is not --model-dir."""
    from model_folder import read_config, verify_model_file
    with pytest.raises(PipelineError, match="point --init-model at a model folder"):
        read_config(tmp_path, "--init-model")
    (tmp_path / "m.h5").write_bytes(b"replaced")
    config = {"sha256": {"m.h5": "0" * 64}}
    with pytest.raises(PipelineError, match=r"train again$"):
        verify_model_file(tmp_path / "m.h5", tmp_path, config, unchecked="")
    with pytest.raises(PipelineError, match=r"train again \(--no-verify loads it anyway\)$"):
        verify_model_file(tmp_path / "m.h5", tmp_path, config)


def test_a_model_file_of_another_recipe_is_refused_by_its_own_config(model_dir, work, tmp_path):
    """A file from another model folder, alone or in an ensemble: its own config.json says
    what its outputs mean. The class count matching is not enough (bead and cell swapped)."""
    other = tmp_path / "other"
    shutil.copytree(model_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "classes": ["background", "cell",
                                                                         "bead"]}))
    with pytest.raises(PipelineError, match=r"m_best.h5 comes from .*other, whose config.json "
                                            r"differs from .* in classes"):
        P.main(["--work-dir", str(work), "--model-dir", str(model_dir), "--weights", "best",
                str(other / "m_best.h5"), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    (other / "config.json").write_text(json.dumps(config))      # the same recipe
    with pytest.raises(PipelineError, match=r"m_best.h5 and m_best.h5 are the same model"):
        P.main(["--work-dir", str(work), "--model-dir", str(model_dir), "--weights", "best",
                str(other / "m_best.h5"), "--output", str(tmp_path / "out")])
    import keras
    from model import build_model
    keras.utils.set_random_seed(1)
    keras.saving.save_model(build_model((64, 64, 3), 3, weights=None), other / "m_best.h5",
                            include_optimizer=False)
    write_config(other, "grey", "argmax")                       # another seed's: averaged
    P.main(["--work-dir", str(work), "--model-dir", str(model_dir), "--weights", "best",
            str(other / "m_best.h5"), "--output", str(tmp_path / "out")])
    assert (tmp_path / "out" / "a.png").is_file()


def test_a_label_with_a_class_the_model_lacks_is_refused(model_dir, work, tmp_path):
    copy = tmp_path / "work"
    copy_test_set(work, copy)
    label = cv2.imread(str(copy / "test/label/b.png"), 0)
    label[3, 4] = 7
    cv2.imwrite(str(copy / "test/label/b.png"), label)
    with pytest.raises(PipelineError, match=r"b\.png holds class 7 but the model lists only 3"):
        P.main(["--work-dir", str(copy), "--model-dir", str(model_dir)])
    assert not (copy / "test" / "predict").exists()


def test_a_lossy_label_stops_the_run_before_any_frame_is_predicted(model_dir, work, tmp_path,
                                                                  monkeypatch):
    copy = tmp_path / "work"
    copy_test_set(work, copy)
    last = sorted((copy / "test" / "label").glob("*.png"))[-1]
    cv2.imwrite(str(last.with_suffix(".jpg")), cv2.imread(str(last), 0))
    last.unlink()

    def predicted(*args):
        raise AssertionError("a frame was predicted before every label was found")
    monkeypatch.setattr(P.FrameRun, "in_memory", predicted)
    with pytest.raises(PipelineError, match="labels must be lossless"):
        P.main(["--work-dir", str(copy), "--model-dir", str(model_dir)])
    assert not (copy / "test" / "predict").exists()


def test_scoring_frames_the_model_trained_on_is_warned_of(model_dir, work, tmp_path, capsys):
    """After a new split without training again, the test set holds training frames; a
    model trained before their pixel digests were recorded knows them by name."""
    folder = tmp_path / "model"
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "train_frames": ["x", "b"]}))
    P.main(["--work-dir", str(work), "--model-dir", str(folder), "--output", str(tmp_path / "o")])
    assert "1 of the 2 frames scored is a frame the model" in capsys.readouterr().out
    (folder / "config.json").write_text(json.dumps({**config, "train_frames": ["x"]}))
    P.main(["--work-dir", str(work), "--model-dir", str(folder), "--output", str(tmp_path / "o")])
    assert "frames the model" not in capsys.readouterr().out


def with_training_frames(model_dir, folder, pictures):
    """A copy of the model folder that trained on frames of these image digests."""
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "train_frames": sorted(pictures),
                                                    "train_image_digests": pictures}))
    return folder


def image_digest(path):
    return picture_digest(read_raw_image(path))


def test_a_training_frame_under_another_name_is_warned_of(model_dir, work, tmp_path, capsys):
    """A training frame copied into the test folder as a: its pixels tell it, not its name."""
    folder = with_training_frames(model_dir, tmp_path / "model", {
        "orig": image_digest(work / "test/src/a.png"), "other": image_digest(work / "mine/c.tif")})
    P.main(["--work-dir", str(work), "--model-dir", str(folder), "--output", str(tmp_path / "o")])
    assert (f"1 of the 2 frames scored is a frame the model in {folder} trained on "
            "(a = training frame orig): their IoU is no test of it") in capsys.readouterr().out


@pytest.mark.parametrize("saved_as", ["16-bit", "16-bit scaled", "rgb"])
def test_a_training_frame_saved_otherwise_is_warned_of(saved_as, model_dir, work, tmp_path,
                                                       capsys):
    """The same picture saved again at another depth or as RGB: its stored pixels differ, the
    picture the model learnt does not."""
    import tifffile
    copy = tmp_path / "work"
    copy_test_set(work, copy)
    frame = cv2.imread(str(copy / "test/src/a.png"), cv2.IMREAD_UNCHANGED)
    (copy / "test/src/a.png").unlink()
    if saved_as == "rgb":
        cv2.imwrite(str(copy / "test/src/a.png"), np.dstack([frame] * 3))
    else:
        tifffile.imwrite(copy / "test/src/a.tif", frame.astype(np.uint16)
                         * (257 if saved_as == "16-bit scaled" else 1))
    folder = with_training_frames(model_dir, tmp_path / "model", {"orig": picture_digest(frame)})
    P.main(["--work-dir", str(copy), "--model-dir", str(folder), "--output", str(tmp_path / "o")])
    assert "(a = training frame orig)" in capsys.readouterr().out


def test_another_image_of_a_training_frames_name_is_not_warned_of(model_dir, work, tmp_path,
                                                                  capsys):
    """Frames a and b of a data set the model never saw, named as two it trained on."""
    folder = with_training_frames(model_dir, tmp_path / "model", {
        "a": image_digest(work / "mine/c.tif"), "b": "the digest of another image"})
    P.main(["--work-dir", str(work), "--model-dir", str(folder), "--output", str(tmp_path / "o")])
    assert "frames the model" not in capsys.readouterr().out


def test_labels_with_no_object_pixel_are_warned_of(model_dir, work, tmp_path, capsys):
    """0/255 masks: 255 is ignored, so no object pixel is scored; said, not left silent."""
    copy = tmp_path / "work"
    copy_test_set(work, copy)
    P.main(["--work-dir", str(copy), "--model-dir", str(model_dir)])
    assert "hold no pixel of any object class" not in capsys.readouterr().out
    for path in (copy / "test" / "label").glob("*.png"):
        label = cv2.imread(str(path), 0)
        cv2.imwrite(str(path), np.where(label > 0, 255, 0).astype(np.uint8))
    P.main(["--work-dir", str(copy), "--model-dir", str(model_dir)])
    assert "0 and 1, not 0 and 255" in capsys.readouterr().out


def test_tta_is_refused_for_a_model_trained_on_unturned_patches(work, tmp_path):
    folder = tmp_path / "dic_model"
    folder.mkdir()
    (folder / "m_best.h5").write_bytes(b"never read")
    write_config(folder, "grey", "argmax", orientations="none")
    with pytest.raises(PipelineError, match="--orientations none\\); predict without --tta"):
        P.main(["--work-dir", str(work), "--model-dir", str(folder), "--tta",
                "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    write_config(folder, "grey", "argmax", orientations="sideways")
    with pytest.raises(PipelineError, match="'orientations' must be one of"):
        P.main(["--work-dir", str(work), "--model-dir", str(folder),
                "--output", str(tmp_path / "out")])


def test_real_model_on_a_users_folder(model_dir, work, tmp_path):
    sigmoid_dir = tmp_path / "sigmoid_model"
    sigmoid_dir.mkdir()
    os.symlink(model_dir / "m_best.h5", sigmoid_dir / "m_best.h5")
    write_config(sigmoid_dir, "grey", "sigmoid>0.51", orientations="transpose")
    result = run_predict("--work-dir", str(work), "--model-dir", str(sigmoid_dir),
                         "--input", str(work / "mine"), "--tta", "--overlap", "0")
    assert result.returncode == 0, result.stderr
    out = work / "predict" / "mine"
    mask = cv2.imread(str(out / "c.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (33, 100) and mask.max() < 3
    assert not (out / "iou.csv").exists()
    info = json.loads((out / "predict.json").read_text())
    assert info["decision"] == "sigmoid>0.51" and info["images"] == ["c"]
    assert info["tta"] and info["tta_transforms"] == [0, 7]   # only the mirror it trained on


def test_a_file_changed_after_the_prediction_stops_a_rerun_that_would_lose_it(model_dir, work,
                                                                              tmp_path):
    out = tmp_path / "out"
    args = ("--work-dir", str(work), "--model-dir", str(model_dir), "--input",
            str(work / "mine"), "--output", str(out), "--to-labelme")
    for _ in range(2):                          # a rerun of an unchanged folder goes ahead
        result = run_predict(*args)
        assert result.returncode == 0, result.stderr
    assert "note: 1 file in" not in result.stdout
    corrected = out / "labelme" / "c.json"      # polygons fixed by hand for retraining
    corrected.write_text("{}")
    later = (out / "predict.json").stat().st_mtime + 10
    os.utime(corrected, (later, later))
    refused = run_predict(*args)
    assert refused.returncode == 2 and "holds files changed or added after this script wrote " \
        "it (labelme/c.json)" in refused.stderr
    assert corrected.read_text() == "{}"
    (work / "mine" / "d.gif").write_bytes(b"GIF89a")      # beside the images, not read
    shutil.copy(work / "mine" / "c.tif", work / "mine" / ".e.tif")     # hidden, not read
    try:
        shutil.rmtree(out)
        noted = run_predict(*args)
    finally:
        (work / "mine" / "d.gif").unlink()
        (work / "mine" / ".e.tif").unlink()
    assert noted.returncode == 0 and "note: 1 file in" in noted.stdout and \
        "skipped: d.gif" in noted.stdout
    assert "note: 1 hidden image file in" in noted.stdout and ": .e.tif;" in noted.stdout


def test_a_stack_is_predicted_plane_by_plane(model_dir, work, tmp_path):
    """Each plane of an OME stack gets the mask its pixels get as a file of their own; the
    TIFF masks carry the stack's pixel size; --page predicts one plane."""
    import tifffile
    from image_io import pixel_size_um
    rng = np.random.default_rng(3)
    planes = rng.integers(0, 4000, (3, 50, 70), dtype=np.uint16)
    for sub in ("stack", "planes"):
        (tmp_path / sub).mkdir()
    tifffile.imwrite(tmp_path / "stack" / "s.ome.tif", planes, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.5})
    for k, plane in enumerate(planes):
        tifffile.imwrite(tmp_path / "planes" / f"s_p{k}.tif", plane)

    def predict(folder, out, *extra):
        result = run_predict("--work-dir", str(work), "--model-dir", str(model_dir),
                             "--input", str(tmp_path / folder), "--output", str(tmp_path / out),
                             *extra)
        assert result.returncode == 0, result.stderr

    predict("stack", "stack_out", "--mask-format", "tif", "--to-labelme")
    predict("planes", "planes_out")
    predict("stack", "page_out", "--page", "1")
    info = json.loads((tmp_path / "stack_out" / "predict.json").read_text())
    assert info["images"] == ["s_p0", "s_p1", "s_p2"] and info["mask_format"] == "tif"
    for k in range(3):
        mask = tifffile.imread(tmp_path / "stack_out" / f"s_p{k}.tif")
        alone = cv2.imread(str(tmp_path / "planes_out" / f"s_p{k}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and np.array_equal(mask, alone)
        assert pixel_size_um(tmp_path / "stack_out" / f"s_p{k}.tif") == pytest.approx(0.5)
    assert np.array_equal(cv2.imread(str(tmp_path / "page_out" / "s.png"), cv2.IMREAD_UNCHANGED),
                          tifffile.imread(tmp_path / "stack_out" / "s_p1.tif"))
    # LabelMe cannot open a plane of a stack: the frame is saved beside its annotation
    doc = json.loads((tmp_path / "stack_out" / "labelme" / "s_p1.json").read_text())
    assert doc["imagePath"] == "s_p1.png"
    assert cv2.imread(str(tmp_path / "stack_out" / "labelme" / "s_p1.png")).shape[:2] == (50, 70)


def test_a_plane_picked_by_page_is_scored_and_drawn_against_its_planes_label(
        model_dir, work, tmp_path, monkeypatch):
    """--page 1 names the plane of s.tif 's', while its label is s_p01.png as every plane of a
    stack is labelled: found, not 'no labels for these images; IoU skipped'."""
    import tifffile
    rng = np.random.default_rng(4)
    for sub in ("stack", "labels"):
        (tmp_path / sub).mkdir()
    tifffile.imwrite(tmp_path / "stack" / "s.tif",
                     rng.integers(0, 255, (11, 50, 70), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "labels" / "s_p01.png"),
                rng.integers(0, 3, (50, 70), dtype=np.uint8))
    out = tmp_path / "out"
    result = run_predict("--work-dir", str(work), "--model-dir", str(model_dir), "--input",
                         str(tmp_path / "stack"), "--labels", str(tmp_path / "labels"),
                         "--page", "1", "--output", str(out))
    assert result.returncode == 0, result.stderr
    with open(out / "iou.csv") as f:
        assert [row["image"] for row in csv.DictReader(f)] == ["s", "dataset"]
    labels_drawn = {}
    monkeypatch.setattr(get_contour, "plot_panel",
                        lambda name, image, label, *rest: labels_drawn.update({name: label}))
    get_contour.main(["--work-dir", str(work), "--pred-dir", str(out),
                      "--figures-dir", str(tmp_path / "figures")])
    assert np.array_equal(labels_drawn["s"], cv2.imread(str(tmp_path / "labels" / "s_p01.png"),
                                                         cv2.IMREAD_UNCHANGED))


def test_a_frame_streamed_band_by_band_gets_the_in_memory_mask(model_dir, work, tmp_path):
    """A 16-bit tiled TIFF above --stream-above: rows decoded as tiles need them, the mask
    written as a tiled BigTIFF; mask, IoU and objects equal the in-memory run's."""
    import tifffile
    from image_io import pixel_size_um
    rng = np.random.default_rng(11)
    image = (cv2.GaussianBlur(rng.random((150, 190)), (0, 0), 4) * 60000).astype(np.uint16)
    for sub in ("slide", "labels"):
        (tmp_path / sub).mkdir()
    tifffile.imwrite(tmp_path / "slide" / "s.ome.tif", image, tile=(64, 64), compression="zlib",
                     ome=True, metadata={"axes": "YX", "PhysicalSizeX": 0.3})
    cv2.imwrite(str(tmp_path / "labels" / "s.png"), rng.integers(0, 3, (150, 190),
                                                               dtype=np.uint8))

    def predict(out, *extra):
        return run_predict("--work-dir", str(work), "--model-dir", str(model_dir), "--input",
                           str(tmp_path / "slide"), "--labels", str(tmp_path / "labels"),
                           "--output", str(tmp_path / out), "--batch-size", "5", *extra)

    for out, extra in (("whole", ()), ("bands", ("--stream-above", "0.01"))):
        result = predict(out, *extra)
        assert result.returncode == 0, result.stderr
    whole = cv2.imread(str(tmp_path / "whole" / "s.png"), cv2.IMREAD_UNCHANGED)
    with tifffile.TiffFile(tmp_path / "bands" / "s.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
        assert np.array_equal(tif.asarray(), whole)
    assert pixel_size_um(tmp_path / "bands" / "s.tif") == pytest.approx(0.3)
    assert json.loads((tmp_path / "bands" / "predict.json").read_text())["streamed"] == ["s"]
    assert (tmp_path / "bands" / "iou.csv").read_text() == \
        (tmp_path / "whole" / "iou.csv").read_text()
    assert cv2.imread(str(tmp_path / "bands" / "s_color.png")).shape[:2] == (150, 190)
    tables = []
    for out, extra in (("whole", ()), ("bands", ("--stream-above", "0.01"))):
        get_contour.main(["--work-dir", str(work), "--pred-dir", str(tmp_path / out),
                          "--no-panels", *extra])
        tables.append((tmp_path / f"{out}_contours" / "objects.csv").read_text())
    assert tables[0] == tables[1] and "0.3" in tables[0].splitlines()[1]

    refused = predict("probs", "--stream-above", "0.01", "--save-probs")
    assert refused.returncode == 2 and "need frames that fit in memory" in refused.stderr
    assert not (tmp_path / "probs").exists()


def test_predictions_go_to_labelme_and_back(model_dir, work, tmp_path):
    """--to-labelme, then labelme_to_label.py on those files: the labels are the masks."""
    import labelme_to_label
    out = tmp_path / "pred"
    result = run_predict("--work-dir", str(work), "--model-dir", str(model_dir), "--output",
                         str(out), "--to-labelme", "--labelme-tolerance", "0")
    assert result.returncode == 0, result.stderr
    data = tmp_path / "corrected"
    data.mkdir()
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    labelme_to_label.main(["--input", str(out / "labelme"), "--data-dir", str(data),
                           "--allow-outside-paths"])
    for name in ("a", "b"):
        mask = cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        label = cv2.imread(str(data / "label" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        # these masks of an untrained model are noise: where objects of two classes cross at
        # a pixel corner, a pixel may change
        assert np.count_nonzero(label != mask) <= mask.size // 500, name
        assert np.array_equal(cv2.imread(str(data / "src" / f"{name}.png"), cv2.IMREAD_UNCHANGED),
                              cv2.imread(str(work / "test" / "src" / f"{name}.png"),
                                         cv2.IMREAD_UNCHANGED))


def test_grey_image_for_a_colour_model_fails_cleanly(model_dir, work, tmp_path):
    rgb_dir = tmp_path / "rgb_model"
    rgb_dir.mkdir()
    os.symlink(model_dir / "m_best.h5", rgb_dir / "m_best.h5")
    write_config(rgb_dir, "rgb", "argmax")
    out = tmp_path / "out"
    with pytest.raises(PipelineError, match="a.png is a grey image"):
        P.main(["--work-dir", str(work), "--model-dir", str(rgb_dir), "--output", str(out)])
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))     # nothing half-written left behind


def test_foreign_output_folder_is_not_replaced(work, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(PipelineError, match="not written by this script"):
        P.main(["--work-dir", str(work), "--output", str(tmp_path)])
    assert (tmp_path / "keep.txt").is_file()


def test_the_recorded_faint_filter_drops_objects_unless_turned_off(model_dir, work, tmp_path):
    strict = tmp_path / "strict_model"
    strict.mkdir()
    os.symlink(model_dir / "m_best.h5", strict / "m_best.h5")
    # A texture no object reaches: the filter drops every object the model finds.
    write_config(strict, "grey", "argmax", faint_filter={"threshold": 1e9, "frames": 2})
    kept, dropped = tmp_path / "kept", tmp_path / "dropped"
    P.main(["--work-dir", str(work), "--model-dir", str(strict), "--output", str(kept),
            "--faint-filter", "off"])
    P.main(["--work-dir", str(work), "--model-dir", str(strict), "--output", str(dropped)])
    record = json.loads((dropped / "predict.json").read_text())["faint_filter"]
    assert record["threshold"] == 1e9
    for name in ("a", "b"):
        before = cv2.imread(str(kept / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        after = cv2.imread(str(dropped / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert not after.any()
        assert record["objects_dropped"][name] == cv2.connectedComponents(
            (before > 0).astype(np.uint8), connectivity=8)[0] - 1
    assert sum(record["objects_dropped"].values()) > 0
    assert json.loads((kept / "predict.json").read_text())["faint_filter"]["threshold"] is None
    write_config(strict, "grey", "argmax", faint_filter={"threshold": "high"})
    with pytest.raises(PipelineError, match="'faint_filter' must record a 'threshold'"):
        P.main(["--work-dir", str(work), "--model-dir", str(strict),
                "--output", str(tmp_path / "never")])
    assert not (tmp_path / "never").exists()


def unfinished_model_folder(model_dir, folder):
    """A model folder as training leaves it when interrupted after epoch 1 of 3: config.json
    as written at the start (no result, no faint_filter), the best model, state.json."""
    folder.mkdir()
    os.symlink(model_dir / "m_best.h5", folder / "m_best.h5")
    write_config(folder, "grey", "argmax", settings=training_settings(), val_frames=["v1"])
    write_state(folder, 1)
    return folder


def test_predicting_with_an_unfinished_training_is_noted_and_recorded(model_dir, work, tmp_path,
                                                                      capsys):
    folder = unfinished_model_folder(model_dir, tmp_path / "model")
    out = tmp_path / "out"
    P.main(["--work-dir", str(work), "--model-dir", str(folder), "--input", str(work / "mine"),
            "--output", str(out)])
    said = capsys.readouterr().out
    assert f"note: the training of {folder} has not finished (1 of 3 epochs done)" in said
    assert json.loads((out / "predict.json").read_text())["model_finished"] is False
    P.main(["--work-dir", str(work), "--model-dir", str(model_dir), "--input",
            str(work / "mine"), "--output", str(tmp_path / "hand_made")])
    assert "has not finished" not in capsys.readouterr().out
    record = json.loads((tmp_path / "hand_made" / "predict.json").read_text())
    assert record["model_finished"] is None     # a config.json training did not write


def test_a_missing_model_file_is_refused_before_tensorflow_times_the_precision(
        model_dir, work, tmp_path, monkeypatch):
    folder = unfinished_model_folder(model_dir, tmp_path / "model")

    def times_the_precision(choice):
        raise AssertionError("--precision resolved before the model file was found")
    monkeypatch.setattr(P, "use_precision", times_the_precision)
    with pytest.raises(PipelineError, match=r"m_swa\.h5 not found \(its training has not "
                                            r"finished: 1 of 3 epochs done; rerun"):
        P.main(["--work-dir", str(work), "--model-dir", str(folder), "--weights", "swa",
                "--input", str(work / "mine"), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_weights_given_twice_add_up_as_one_list_does():
    args = P.parse_args(["--weights", "best", "--weights", "swa"])
    assert args.weights == ["best", "swa"]
    assert P.parse_args([]).weights == ["best"]


def test_contours_refuse_images_replaced_since_the_prediction(model_dir, work, tmp_path):
    """A folder whose frames are replaced by others of their names (the microscope's next
    session, a test set cut again from another data folder) after predicting: get_contour.py
    drew the earlier masks on the new pictures, and took their pixel size, without a word."""
    frames, out = tmp_path / "frames", tmp_path / "pred"
    shutil.copytree(work / "mine", frames)
    argv = ["--work-dir", str(work), "--model-dir", str(model_dir), "--input", str(frames),
            "--output", str(out)]
    P.main(argv)
    outline = ["--work-dir", str(work), "--pred-dir", str(out), "--output",
               str(tmp_path / "contours"), "--no-panels"]
    get_contour.main(outline)
    image = cv2.imread(str(frames / "c.tif"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(frames / "c.tif"), 255 - image)
    changed = r"1 image in .*frames changed since .*predict.json was written \(c, replaced"
    with pytest.raises(PipelineError, match=changed + r".*rerun predict_lovasz_loss.py first"):
        get_contour.main(outline)
    P.main(argv)
    get_contour.main(outline)


def test_a_test_label_corrected_in_the_data_folder_after_the_split_is_noted(model_dir,
                                                                             tmp_path, capsys):
    """Prediction scores the copies gen_img_aug.py made in <work>/test: a test label
    corrected in data/label afterwards left the scores on the old one without a word."""
    import gen_img_aug
    data, work = tmp_path / "data", tmp_path / "work"
    for sub in ("src", "label"):
        (data / sub).mkdir(parents=True)
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    rng = np.random.default_rng(3)
    for name in ("a", "b", "c", "d"):
        label = np.zeros((80, 80), np.uint8)
        label[20:50, 20:50] = 2
        cv2.imwrite(str(data / "src" / f"{name}.png"),
                    (label * 60 + rng.integers(0, 40, label.shape)).astype(np.uint8))
        cv2.imwrite(str(data / "label" / f"{name}.png"), label)
    (data / "test.txt").write_text("d\n")
    gen_img_aug.main(["--data-dir", str(data), "--work-dir", str(work), "--num-patches", "8",
                      "--patch-size", "64", "--workers", "1"])
    argv = ["--work-dir", str(work), "--model-dir", str(model_dir), "--data-dir", str(data)]
    P.main(argv)
    assert "changed in" not in capsys.readouterr().out
    corrected = cv2.imread(str(data / "label" / "d.png"), cv2.IMREAD_UNCHANGED)
    corrected[50:60, 20:50] = 2
    cv2.imwrite(str(data / "label" / "d.png"), corrected)
    cv2.imwrite(str(data / "label" / "a.png"), corrected)       # a training frame: not scored
    shutil.rmtree(work / "test" / "predict")
    P.main(argv)
    out = capsys.readouterr().out
    assert f"note: 1 test frame changed in {data.resolve()} since gen_img_aug.py copied them " \
        f"into {work / 'test'} (d): the scores are of the copies" in out


def test_stacks_predicted_plane_by_plane_for_a_model_of_one_plane_are_noted(tmp_path, capsys):
    from image_io import StackPlane
    stack = {f"s_p{k}": StackPlane(tmp_path / "s.tif", k) for k in range(2)}
    P.note_page_trained({"page": 1}, None, stack, "M")
    assert "M was trained on plane 1 of each stack (gen_img_aug.py --page 1); every plane of " \
        "s.tif is predicted here: add --page 1" in capsys.readouterr().out
    for config, page, images in (({"page": None}, None, stack), ({"page": 1}, 1, stack),
                                 ({"page": 1}, None, {"a": tmp_path / "a.png"})):
        P.note_page_trained(config, page, images, "M")
        assert capsys.readouterr().out == ""


@pytest.mark.parametrize("page", [-1, 1.5, True, "0"])
def test_a_recorded_page_that_is_no_plane_number_is_refused(page):
    from model_folder import check_page
    with pytest.raises(PipelineError, match="'page' must be a plane number"):
        check_page(page, "config.json")


def test_labels_matching_no_frame_and_frames_without_one_are_noted(model_dir, work, tmp_path,
                                                                   capsys):
    """b_16.png, a typo for frame b16, left b16 unscored and the IoU of one frame, unsaid."""
    rng = np.random.default_rng(5)
    for sub in ("mine", "labels"):
        (tmp_path / sub).mkdir()
    for name in ("a8", "b16", "c"):
        cv2.imwrite(str(tmp_path / "mine" / f"{name}.png"),
                    rng.integers(0, 255, (40, 50), dtype=np.uint8))
    for name in ("a8", "b_16"):
        cv2.imwrite(str(tmp_path / "labels" / f"{name}.png"),
                    rng.integers(0, 3, (40, 50), dtype=np.uint8))
    P.main(["--work-dir", str(work), "--model-dir", str(model_dir), "--input",
            str(tmp_path / "mine"), "--labels", str(tmp_path / "labels"),
            "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert f"note: 1 label in {tmp_path / 'labels'} matches no frame in {tmp_path / 'mine'} " \
        "and is not used: b_16.png; a label bears its frame's name" in out
    assert f"note: 2 of the 3 frames have no label in {tmp_path / 'labels'} and are predicted " \
        "but not scored: b16, c" in out
    assert "IoU of 1 labelled image:" in out
    P.main(["--work-dir", str(work), "--model-dir", str(model_dir),
            "--output", str(tmp_path / "test_out")])
    out = capsys.readouterr().out
    assert "IoU of 2 labelled images" in out and "not used" not in out and "not scored" not in out


def test_labels_of_planes_not_picked_other_shards_and_nfd_names_are_not_noted(tmp_path, capsys):
    """Labels no frame of this run took, yet not amiss: the other planes' beside --page, the
    frames' of other shards (named in NFD by a Mac); a stack's own name is amiss."""
    import unicodedata
    from image_io import StackPlane, find_frame_label
    for sub in ("src", "labels"):
        (tmp_path / sub).mkdir()
    nfd = unicodedata.normalize("NFD", "zellkörper")
    for name in ("s_p0", "s_p1", "s_p2", "a", nfd, "größe"):
        (tmp_path / "labels" / f"{name}.png").write_bytes(b"")
    stack = tmp_path / "src" / "s.tif"
    # frames of another shard, one's label in NFD and one's name
    others = {"zellkörper": None, unicodedata.normalize("NFD", "größe"): None}
    # --page 1, in a shard of s and a: find_frame_label took s_p1.png for s
    paths = {"s": tmp_path / "labels" / "s_p1.png", "a": tmp_path / "labels" / "a.png"}
    P.note_unscored(tmp_path / "labels", paths,
                    {"s": StackPlane(stack, 1), "a": tmp_path / "src" / "a.png", **others},
                    tmp_path / "src")
    assert capsys.readouterr().out == ""
    planes = {f"s_p{k}": StackPlane(stack, k) for k in range(3)}    # without --page
    (tmp_path / "labels" / "s.png").write_bytes(b"")
    paths = {name: find_frame_label(tmp_path / "labels", name, source)
             for name, source in planes.items()}
    P.note_unscored(tmp_path / "labels", paths, {**planes, "a": None, **others},
                    tmp_path / "src")
    assert f"note: 1 label in {tmp_path / 'labels'} matches no frame in {tmp_path / 'src'} " \
        "and is not used: s.png; a label bears its frame's name (x.png for x.tif, " \
        "x_p<k>.png for plane k of stack x)" in capsys.readouterr().out
