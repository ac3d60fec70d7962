"""get_contour.py: object outlines, measurements, the object table, thresholds and figures."""
import contextlib
import csv
import json
import math
import shutil
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from band_objects import outline_length
import get_contour as G
import image_io
import touching

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from split_touching_speed import full_window_grow, full_window_reconstruct  # noqa: E402
from cli import PipelineError
from figures import PALETTE

CLASSES = ["background", "bead", "cell"]
DISCS = [(10, (40, 40)), (15, (110, 45)), (25, (220, 60))]            # beads: radius, centre
SQUARES = [((30, 110), 40), ((120, 120), 25)]                          # cells: top-left, side
SPECKS = [(5, 180), (290, 185)]                                        # single bead pixels


def drawn_mask():
    mask = np.zeros((200, 300), np.uint8)
    for r, centre in DISCS:
        cv2.circle(mask, centre, r, 1, -1)
    for (x, y), side in SQUARES:
        mask[y:y + side, x:x + side] = 2
    for x, y in SPECKS:
        mask[y, x] = 1
    return mask


@pytest.fixture
def pred(tmp_path):
    """A prediction folder as predict_lovasz_loss.py leaves it, plus images and labels."""
    for sub in ("src", "label", "predict"):
        (tmp_path / sub).mkdir()
    mask = drawn_mask()
    image = np.random.default_rng(0).integers(0, 120, mask.shape, dtype=np.uint8)
    for name in ("one", "two"):
        cv2.imwrite(str(tmp_path / "src" / f"{name}.png"), image)
        cv2.imwrite(str(tmp_path / "predict" / f"{name}.png"), mask)
    cv2.imwrite(str(tmp_path / "label" / "one.png"), mask)
    (tmp_path / "predict" / "predict.json").write_text(json.dumps({
        "classes": CLASSES, "images": ["one", "two"], "input_dir": str(tmp_path / "src"),
        "label_dir": str(tmp_path / "label")}))
    return tmp_path


def run(pred, *extra):
    G.main(["--work-dir", str(pred / "work"), "--pred-dir", str(pred / "predict"),
            "--output", str(pred / "contours"), "--figures-dir", str(pred / "figures"), *extra])
    with open(pred / "contours" / "objects.csv") as f:
        return list(csv.DictReader(f))


def test_areas_of_drawn_discs_and_squares():
    rows, _ = G.find_objects(drawn_mask(), 3)
    beads = sorted((r for r in rows if r["class_index"] == 1 and r["area_px"] > 1),
                   key=lambda r: r["area_px"])
    for (radius, (cx, cy)), row in zip(DISCS, beads):
        assert row["area_px"] == pytest.approx(math.pi * radius ** 2, rel=0.02)
        assert row["equivalent_diameter_px"] == pytest.approx(2 * radius, rel=0.01)
        assert (row["centroid_x"], row["centroid_y"]) == pytest.approx((cx, cy), abs=0.01)
        assert 0.85 < row["circularity"] < 1.05
    dots = [r for r in rows if r["area_px"] == 1]
    assert dots and all(r["circularity"] is None for r in dots)   # an empty cell, not "nan"
    cells = [r for r in rows if r["class_index"] == 2]
    for ((x, y), side), row in zip(SQUARES, cells):
        assert row["area_px"] == side ** 2
        assert (row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"]) == (x, y, side, side)
        assert row["perimeter_px"] == pytest.approx(4 * side, rel=0.04)   # the pixels' outline


def test_counts_ids_and_min_area():
    rows, _ = G.find_objects(drawn_mask(), 3)
    assert sum(r["class_index"] == 1 for r in rows) == len(DISCS) + len(SPECKS)
    assert sum(r["class_index"] == 2 for r in rows) == len(SQUARES)
    assert [r["object_id"] for r in rows if r["class_index"] == 2] == [1, 2]
    kept, outlines = G.find_objects(drawn_mask(), 3, min_area=10)
    assert sum(r["class_index"] == 1 for r in kept) == len(DISCS)
    assert [r["object_id"] for r in kept if r["class_index"] == 1] == [1, 2, 3]
    assert len(outlines[1]) == len(DISCS)
    smallest = min(r["area_px"] for r in kept)        # "smaller than" min-area: equal stays
    assert len(G.find_objects(drawn_mask(), 3, min_area=smallest)[0]) == len(kept)
    assert len(G.find_objects(drawn_mask(), 3, min_area=smallest + 1)[0]) == len(kept) - 1


def test_a_ring_is_one_object_with_its_hole_outlined():
    mask = np.zeros((80, 80), np.uint8)
    cv2.circle(mask, (40, 40), 30, 1, -1)
    cv2.circle(mask, (40, 40), 12, 0, -1)
    cv2.circle(mask, (40, 40), 5, 1, -1)       # an object inside the hole
    rows, outlines = G.find_objects(mask, 2)
    assert len(rows) == 2 and len(outlines[1]) == 3    # ring outer + hole, inner disc
    ring, inner = rows                                 # raster order of their first pixels
    assert ring["area_px"] + inner["area_px"] == np.sum(mask == 1)
    assert ring["area_px"] == pytest.approx(math.pi * (30 ** 2 - 12 ** 2), rel=0.02)
    assert ring["perimeter_px"] == pytest.approx(2 * math.pi * 30, rel=0.1)   # outer only


def sampled(inside, size):
    """The pixels of a size x size frame whose centres the shape inside(x, y) holds, x and y
    from the frame's centre: a shape as a camera samples it."""
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    return inside(x, y).astype(np.uint8)


def circularity(mask):
    (row,), _ = G.find_objects(mask, 2)
    return row["circularity"]


@pytest.mark.parametrize("radius", [5, 10, 30, 100])
def test_digitised_discs_have_a_circularity_of_one(radius):
    """Discs off the pixel grid by fractions of a pixel: 1 on average, each within 0.05 (the
    pixel centres' chance positions along a short outline sway it)."""
    rng = np.random.default_rng(radius)
    scores = []
    for dx, dy in rng.random((8, 2)):
        r = radius + rng.random()
        scores.append(circularity(sampled(lambda x, y: np.hypot(x - dx, y - dy) <= r,
                                          2 * radius + 8)))
    assert np.mean(scores) == pytest.approx(1, abs=0.015) and min(scores) > 0.95


def test_a_disc_drawn_by_opencv_has_a_circularity_near_one():
    mask = np.zeros((80, 80), np.uint8)
    cv2.circle(mask, (40, 40), 30, 1, -1)
    assert circularity(mask) == pytest.approx(1, abs=0.03)


@pytest.mark.parametrize("degrees", [0, 10, 22.5, 30, 45])
def test_squares_have_a_circularity_near_a_quarter_pi(degrees):
    turn = math.radians(degrees)
    c, s = math.cos(turn), math.sin(turn)
    mask = sampled(lambda x, y: np.maximum(abs(c * x + s * y), abs(c * y - s * x)) <= 20, 70)
    # Edges along the grid are read 2 % short, the estimator's worst direction.
    low, high = (0.8, 0.845) if degrees == 0 else (math.pi / 4 - 0.04, math.pi / 4 + 0.04)
    assert low < circularity(mask) < high


@pytest.mark.parametrize("side, perimeter, roundness", [(40, 155.3, 0.83), (20, 76.9, 0.85)])
def test_squares_on_the_grid_read_as_the_readme_says(side, perimeter, roundness):
    """README's figures: 2 % and 1.5 px short of 4 x side; the centroid the mean pixel index
    (the top-left pixel's centre at 0, 0), the box from the first column and row."""
    mask = np.zeros((side + 20, side + 30), np.uint8)
    mask[10:10 + side, 5:5 + side] = 1
    (row,), _ = G.find_objects(mask, 2)
    assert row["perimeter_px"] == pytest.approx(perimeter, abs=0.05)
    assert row["circularity"] == pytest.approx(roundness, abs=0.005)
    assert (row["centroid_x"], row["centroid_y"]) == (5 + (side - 1) / 2, 10 + (side - 1) / 2)
    assert (row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"]) == (5, 10, side, side)


@pytest.mark.parametrize("pixels", [[[1, 1]], [[1, 0], [0, 1]], [[1, 1, 1]], [[1, 1], [1, 0]],
                                    [[1, 1], [1, 1]], [[1, 1, 1]] * 3, [[1] * 4] * 4])
def test_tiny_objects_have_no_circularity(pixels):
    """Their outlines are too coarse for a shape: a 4x4 square read 0.99, as round as a
    disc."""
    assert circularity(np.pad(np.array(pixels, np.uint8), 1)) is None


def test_the_outline_length_is_the_same_from_any_start_and_either_way_round():
    """The streamed path measures an object crossing bands from its own crop, whose contour
    may start elsewhere: the length must not depend on it, to the last bit."""
    mask = sampled(lambda x, y: np.hypot(x - 0.3, y) <= 9.6, 30)
    assert mask[5, 14] and not mask[4, 14]
    mask[1:5, 14] = 1                                          # a spur: corners, there and back
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    (contour,) = contours
    length = outline_length(contour)
    for start in range(0, len(contour), 7):
        rolled = np.roll(contour, -start, axis=0)
        assert outline_length(rolled) == length and outline_length(rolled[::-1]) == length


def test_object_table_and_contour_images(pred, capsys):
    rows = run(pred, "--min-area", "10")
    assert list(rows[0]) == ["image", "class", "object_id", "area_px", "equivalent_diameter_px",
                             "perimeter_px", "circularity", "centroid_x", "centroid_y",
                             "bbox_x", "bbox_y", "bbox_w", "bbox_h"]
    assert len(rows) == 2 * (len(DISCS) + len(SQUARES))
    assert sum(r["class"] == "bead" and r["image"] == "one" for r in rows) == len(DISCS)
    summary = capsys.readouterr().out
    assert "bead" in summary and "cell" in summary

    picture = cv2.cvtColor(cv2.imread(str(pred / "contours" / "one_contour.png")),
                           cv2.COLOR_BGR2RGB)
    assert picture.shape[1] == 300 and picture.shape[0] > 200      # image + legend strip
    (x, y), side = SQUARES[0]
    np.testing.assert_array_equal(picture[y + side // 2, x], PALETTE[2])      # cell in red
    np.testing.assert_array_equal(picture[40, 40 - 10], PALETTE[1])           # bead in green
    assert (pred / "figures" / "panel_one.png").is_file()
    assert (pred / "figures" / "panel_two.png").is_file()


def test_pixel_size_scales_areas(pred):
    plain = run(pred)
    scaled = run(pred, "--pixel-size", "0.5")
    assert {"area_um2", "equivalent_diameter_um", "perimeter_um"} <= set(scaled[0])
    for a, b in zip(plain, scaled):
        assert float(b["area_um2"]) == pytest.approx(float(a["area_px"]) * 0.25, abs=1e-3)
        assert float(b["equivalent_diameter_um"]) == pytest.approx(
            float(a["equivalent_diameter_px"]) * 0.5, abs=1e-3)


def test_from_probs_applies_the_originals_thresholds(pred):
    """bead where p*127 > 69, cell where p*127 > 80, cell winning where both pass."""
    probs = np.zeros((200, 300, 3), np.uint8)
    bead = np.ceil(255 * 70 / 127)       # just over 69 on the 0..127 scale
    probs[10:30, 10:30, 1] = bead
    probs[10:30, 50:70, 1] = np.floor(255 * 69 / 127)   # just under: no object
    probs[100:140, 100:140, 2] = np.ceil(255 * 81 / 127)
    probs[100:120, 100:140, 1] = bead     # overlaps the cell: the later class wins
    probs[150:170, 200:240, 2] = np.floor(255 * 80 / 127)  # just under 80
    for name in ("one", "two"):
        for c, cls in enumerate(CLASSES):
            cv2.imwrite(str(pred / "predict" / f"{name}_prob_{cls}.png"), probs[:, :, c])
    rows = run(pred, "--from-probs", "--thresholds", "69", "80")
    one = [r for r in rows if r["image"] == "one"]
    assert [(r["class"], int(r["area_px"])) for r in one] == [("bead", 400), ("cell", 1600)]
    mask = G.mask_from_probs(probs / 255.0, [69, 80])
    assert mask[110, 120] == 2 and mask[20, 20] == 1 and mask[20, 60] == 0
    at_threshold = np.zeros((1, 2, 3))
    at_threshold[0, 0, 1] = 69 / 127
    at_threshold[0, 1, 1] = np.nextafter(69 / 127, 1)
    assert at_threshold[0, 0, 1] * 127 == 69                 # exactly on it: not above
    np.testing.assert_array_equal(G.mask_from_probs(at_threshold, [69, 80]), [[0, 1]])


def test_from_probs_needs_maps_and_thresholds(pred):
    with pytest.raises(PipelineError, match="--save-probs"):
        run(pred, "--from-probs")
    with pytest.raises(PipelineError, match="one value per object class"):
        run(pred, "--from-probs", "--thresholds", "69")


def test_thresholds_without_from_probs_are_refused_not_ignored(capsys):
    with pytest.raises(SystemExit):
        G.parse_args(["--thresholds", "50", "60"])
    assert "--from-probs" in capsys.readouterr().err.splitlines()[-1]
    assert G.parse_args(["--from-probs"]).thresholds == list(G.ORIGINAL_THRESHOLDS)


@pytest.mark.parametrize("thresholds", [["138", "160"], ["-1", "80"]])
def test_thresholds_off_the_0_to_127_scale_are_refused(thresholds, capsys):
    """On the PNG maps' 0..255 scale a class was marked nowhere (or, below 0, everywhere)
    and no objects were found, without a word."""
    with pytest.raises(SystemExit):
        G.parse_args(["--from-probs", "--thresholds", *thresholds])
    assert "are on 0..127" in capsys.readouterr().err.splitlines()[-1]
    assert G.parse_args(["--from-probs", "--thresholds", "0", "127"]).thresholds == [0, 127]


def test_masks_without_predict_json_use_classes_txt(pred):
    (pred / "predict" / "predict.json").unlink()
    (pred / "data").mkdir()
    (pred / "data" / "classes.txt").write_text("background\nbead\ncell\n")
    rows = run(pred, "--data-dir", str(pred / "data"), "--image-dir", str(pred / "src"),
               "--no-panels")
    assert {r["image"] for r in rows} == {"one", "two"}
    assert not (pred / "figures").exists()


def test_without_predict_json_only_a_masks_colour_view_and_maps_are_passed_over(tmp_path):
    for stem in ("a", "a_color", "a_prob_cell", "b_color", "c_prob_x"):
        cv2.imwrite(str(tmp_path / f"{stem}.png"), np.zeros((4, 4), np.uint8))
    assert G.mask_names(tmp_path, {}) == ["a", "b_color", "c_prob_x"]


def test_bad_masks_are_reported(pred):
    cv2.imwrite(str(pred / "predict" / "two.png"), np.full((200, 300), 7, np.uint8))
    with pytest.raises(PipelineError, match="class 7"):
        run(pred)
    cv2.imwrite(str(pred / "predict" / "two.png"), np.zeros((20, 30), np.uint8))
    with pytest.raises(PipelineError, match="30x20"):
        run(pred)
    assert not (pred / "contours").exists()


@pytest.mark.parametrize("edit", [{"streamed": 5}, {"input_dir": 5}, {"label_dir": ["x"]},
                                  {"shard": [1, 2]}])
def test_a_prediction_record_edited_by_hand_is_refused_in_one_line(pred, edit):
    """Each ended in a traceback (a shard's record without all_images: a KeyError)."""
    record = pred / "predict" / "predict.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), **edit}))
    with pytest.raises(PipelineError, match="not a record written by predict_lovasz_loss.py"):
        run(pred)


def test_a_prediction_record_listing_an_image_twice_is_refused(pred):
    """Its objects were written to objects.csv, and counted, once for each listing."""
    record = pred / "predict" / "predict.json"
    record.write_text(json.dumps({**json.loads(record.read_text()),
                                  "images": ["one", "two", "one"]}))
    with pytest.raises(PipelineError, match=r"predict\.json lists one more than once"):
        run(pred)
    assert not (pred / "contours").exists()


# ---------------------------------------------------------------- masks read band by band

def blob_mask(seed, h, w):
    """Random blobs of two classes, many touching the border and each other."""
    rng = np.random.default_rng(seed)
    mask = (cv2.GaussianBlur(rng.random((h, w)), (0, 0), 3) > 0.5).astype(np.uint8)
    mask[cv2.GaussianBlur(rng.random((h, w)), (0, 0), 2) > 0.55] = 2
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_objects_found_band_by_band_are_the_whole_masks(seed, monkeypatch):
    """Same objects, measurements (floats bit for bit) and raster order for any band height,
    objects crossing band edges included."""
    mask = blob_mask(seed, 150 + 7 * seed, 170)
    whole, _ = G.find_objects(mask, 3, min_area=3)
    for band_rows in (1, 2, 9, 64, 1000):
        monkeypatch.setattr(G, "BAND_ROWS", band_rows)
        found = G.find_objects_in_bands(lambda y0, y1: mask[y0:y1], mask.shape, 3, min_area=3)
        assert list(found) == whole, band_rows


@pytest.mark.parametrize("size", ["6.5e-8", "1e200"])
def test_a_pixel_size_in_the_wrong_unit_is_refused(size, capsys):
    with pytest.raises(SystemExit):
        G.parse_args(["--pixel-size", size])
    assert "is in micrometres per pixel" in capsys.readouterr().err.splitlines()[-1]


def test_micrometre_columns_keep_their_digits_at_an_electron_microscopes_pixel_size():
    row = G.object_row(1, 1, 2, 4.0, 1.5, 2.5, 1, 2, 2, 1)
    record = G.csv_record("a", ["background", "cell"], row, 0.0065)
    assert record["area_um2"] == pytest.approx(2 * 0.0065 ** 2, rel=1e-5) and \
        record["area_um2"] > 0
    assert record["pixel_size_um"] == 0.0065 and record["centroid_x"] == 1.5


def test_the_panel_of_a_line_scan_stays_a_page_high(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (5000, 2), dtype=np.uint8)
    mask = (image > 128).astype(np.uint8)
    G.plot_panel("scan", image, None, mask, {}, ["background", "cell"], tmp_path / "p.png",
                 False)
    height, width = cv2.imread(str(tmp_path / "p.png")).shape[:2]
    assert height < 3000 and width < 1200


@pytest.mark.parametrize("shape", [(200, 2000), (2, 5000)], ids=["wide", "line-scan-across"])
def test_the_views_of_a_wide_frame_go_one_above_another(shape, tmp_path):
    """Side by side, each view of a frame ten times wider than high was a sliver a few
    pixels high."""
    image = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    mask = (image > 128).astype(np.uint8)
    G.plot_panel("wide", image, mask, mask, {}, ["background", "cell"], tmp_path / "p.png",
                 False)
    height, width = cv2.imread(str(tmp_path / "p.png")).shape[:2]
    assert 400 < height < 3000 and width < 1200


def test_panels_of_another_prediction_folder_go_to_a_figures_folder_of_its_name(tmp_path):
    work = tmp_path / "w"
    for pred, figures in ((work / "test" / "predict", work / "figures"),
                          (work / "predict" / "new", work / "figures" / "new")):
        pred.mkdir(parents=True)
        args = G.parse_args(["--work-dir", str(work), "--pred-dir", str(pred)])
        assert G.folders(args, pred, {})[3] == figures
    args = G.parse_args(["--work-dir", str(work), "--pred-dir", str(pred), "--figures-dir", "f"])
    assert G.folders(args, pred, {})[3] == Path("f")


def test_object_ids_follow_the_raster_order_of_first_pixels():
    mask = np.zeros((4, 12), np.uint8)
    mask[1, 2] = 1          # first pixel in row 1
    mask[0, 9] = 1          # row 0: comes first, though OpenCV's 2x2 blocks see (1, 2) first
    rows, _ = G.find_objects(mask, 2)
    assert [(r["bbox_y"], r["bbox_x"]) for r in rows] == [(0, 9), (1, 2)]


def test_a_large_tiff_mask_is_outlined_band_by_band(pred, monkeypatch):
    """A TIFF mask above --stream-above: the same objects.csv as in memory; the contour
    picture and the panel are overviews."""
    import tifffile
    monkeypatch.setattr(G, "BAND_ROWS", 16)
    mask = blob_mask(9, 200, 300)
    tifffile.imwrite(pred / "src" / "big.tif", (np.arange(200 * 300) % 999).astype(
        np.uint16).reshape(200, 300), tile=(64, 64))
    for stem in ("one", "two"):
        (pred / "predict" / f"{stem}.png").unlink()
    for stem in ("two", "big"):
        tifffile.imwrite(pred / "predict" / f"{stem}.tif", mask, tile=(32, 32))
    info = json.loads((pred / "predict" / "predict.json").read_text())
    info.update(mask_format="tif", images=["two", "big"])
    (pred / "predict" / "predict.json").write_text(json.dumps(info))
    in_memory = run(pred)
    assert run(pred, "--stream-above", "0.01") == in_memory
    contour = cv2.imread(str(pred / "contours" / "big_contour.png"))
    assert contour.shape[1] == 300 and (pred / "figures" / "panel_big.png").is_file()


@pytest.mark.parametrize("spoil, message", [
    (lambda m: np.dstack([m] * 3), "has 3 channels"),
    (lambda m: np.where(m == 1, 1.5, m).astype(np.float32), "not class indices"),
    (lambda m: np.where(m == 1, -1, m.astype(np.int16)), "not class indices"),
])
def test_a_streamed_mask_of_no_class_indices_is_refused_as_in_memory(pred, spoil, message):
    """Read band by band, an RGB mask ended in a traceback, and negative or fractional values
    dropped their pixels from every class without a word."""
    import tifffile
    (pred / "predict" / "two.png").unlink()
    tifffile.imwrite(pred / "predict" / "two.tif", spoil(drawn_mask()), tile=(32, 32))
    info = json.loads((pred / "predict" / "predict.json").read_text())
    (pred / "predict" / "predict.json").write_text(json.dumps({**info, "streamed": ["two"]}))
    with pytest.raises(PipelineError, match=message):
        run(pred, "--stream-above", "0")
    assert not (pred / "contours").exists()


def test_image_overview_keeps_every_step_th_pixel_of_the_mapped_image(tmp_path, monkeypatch):
    import tifffile

    import whole_slide
    from image_io import DEFAULT_INTENSITY, read_image
    monkeypatch.setattr(whole_slide, "OVERVIEW_SIDE", 50)
    monkeypatch.setattr(whole_slide, "BAND_ROWS", 37)
    image = np.random.default_rng(3).integers(0, 4000, (203, 170), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", image, tile=(32, 32))
    overview = G.image_overview(tmp_path / "a.tif", DEFAULT_INTENSITY, image.shape)
    assert np.array_equal(overview, read_image(tmp_path / "a.tif")[::5, ::5])


# ---------------------------------------------------------------- folders and shards

@pytest.mark.parametrize("inside", ["", "panels"])
def test_panels_in_the_output_folder_are_refused_not_lost(pred, inside):
    """--figures-dir = --output (or a folder in it): the output replaced whole after the
    panels were written dropped them (first run) or left them in the old output (later)."""
    figures = pred / "contours" / inside
    for _ in range(2):
        with pytest.raises(PipelineError, match="--figures-dir .* inside the output folder"):
            run(pred, "--figures-dir", str(figures))
        assert not (pred / "contours").exists()
    run(pred, "--figures-dir", str(figures), "--no-panels")      # no panels, nothing to lose


def test_the_prediction_folder_given_as_dot_gets_its_contours_beside_it(pred, monkeypatch):
    monkeypatch.chdir(pred / "predict")
    G.main(["--work-dir", str(pred / "work"), "--pred-dir", ".", "--no-panels"])
    assert (pred / "predict_contours" / "objects.csv").is_file()
    assert sorted(p.name for p in (pred / "predict").iterdir()) == \
        ["one.png", "predict.json", "two.png"]


def test_a_pixel_size_no_microscope_has_is_measured_in_pixels(pred, capsys):
    """An OME-TIFF recording 1e300 um pixels overflowed the areas (a traceback), one of
    1e-300 um gave areas of 0."""
    import tifffile
    image = cv2.imread(str(pred / "src" / "one.png"), cv2.IMREAD_GRAYSCALE)
    for name, size in (("one", 1e300), ("two", 1e-300)):
        (pred / "src" / f"{name}.png").unlink()
        tifffile.imwrite(pred / "src" / f"{name}.ome.tif", image,
                         metadata={"PhysicalSizeX": size, "PhysicalSizeY": size})
    rows = run(pred, "--no-panels")
    assert "area_um2" not in rows[0]
    assert "2 images record a pixel size outside" in capsys.readouterr().out


def test_a_pixel_size_of_an_image_programs_dots_per_inch_is_measured_in_pixels(pred, capsys):
    """72 dpi taken for a pixel size (as OME by a converter, or as ImageJ's calibration in cm)
    gave 352.778 um pixels, cells of square millimetres, without a word."""
    import tifffile
    image = cv2.imread(str(pred / "src" / "one.png"), cv2.IMREAD_GRAYSCALE)
    for name in ("one", "two"):
        (pred / "src" / f"{name}.png").unlink()
    tifffile.imwrite(pred / "src" / "one.ome.tif", image,
                     metadata={"PhysicalSizeX": 352.7778, "PhysicalSizeY": 352.7778})
    tifffile.imwrite(pred / "src" / "two.tif", image, imagej=True,
                     resolution=(72 / 2.54, 72 / 2.54), metadata={"unit": "cm"})
    rows = run(pred, "--no-panels")
    assert "area_um2" not in rows[0]
    assert "2 images record a pixel size of 352.778 \u00b5m (one), 72 dots per inch" in \
        capsys.readouterr().out


def test_a_plain_tiffs_resolution_is_named_not_taken_for_a_pixel_size(pred, capsys):
    """A TIFF without OME or ImageJ metadata whose resolution is 10,000 pixels per centimetre
    (1 um pixels, as Fiji shows it) was measured in pixels without a word of why."""
    import tifffile
    image = cv2.imread(str(pred / "src" / "one.png"), cv2.IMREAD_GRAYSCALE)
    for name, resolution, unit in (("one", 1e4, "CENTIMETER"), ("two", 72, "INCH")):
        (pred / "src" / f"{name}.png").unlink()
        tifffile.imwrite(pred / "src" / f"{name}.tif", image, resolution=(resolution, resolution),
                         resolutionunit=unit, metadata=None)
    rows = run(pred, "--no-panels")
    assert "area_um2" not in rows[0]
    out = capsys.readouterr().out
    assert "note: 1 image gives its scale only as a TIFF resolution in pixels per inch or " \
        "centimetre (one: 1 x 1 \u00b5m), which is not read" in out       # 72 dpi is no scale
    assert "dots per inch" not in out


def test_a_pixel_size_in_a_unit_not_read_is_named(pred, capsys):
    """OME allows units of length beyond those read (furlongs, light years): such a size was
    measured in pixels without a word; a unit of no length ("pixel") is no scale, and feet
    and thousandths of an inch are read."""
    import tifffile
    image = cv2.imread(str(pred / "src" / "one.png"), cv2.IMREAD_GRAYSCALE)
    for name, metadata in (("one", {"PhysicalSizeX": 1e-9, "PhysicalSizeXUnit": "ly"}),
                           ("two", {"PhysicalSizeX": 1, "PhysicalSizeXUnit": "pixel"})):
        (pred / "src" / f"{name}.png").unlink()
        tifffile.imwrite(pred / "src" / f"{name}.ome.tif", image, ome=True, metadata=metadata)
    rows = run(pred, "--no-panels")
    assert "area_um2" not in rows[0]
    out = capsys.readouterr().out
    assert "note: 1 image records its pixel size in a unit not read (one: 'ly'; read are um," \
        in out and "its objects are measured in pixels only" in out and "two" not in out
    for unit, micrometres in (("ft", 304800.0), ("thou", 25.4), ("mil", 25.4)):
        path = pred / f"{unit}.ome.tif"
        tifffile.imwrite(path, image, ome=True, metadata={
            "PhysicalSizeX": 0.5 / micrometres, "PhysicalSizeXUnit": unit})
        assert image_io.tiff_scale(path).sizes == pytest.approx((0.5, 0.5)), unit


def contour_shards(pred, *options):
    """The prediction folder split into shards 1/2 and 2/2 as predict --shard writes them,
    each outlined with its options (a list per shard)."""
    info = json.loads((pred / "predict" / "predict.json").read_text())
    folders = []
    for i, name in ((1, "one"), (2, "two")):
        shard = pred / f"predict_shard{i}of2"
        shard.mkdir()
        (shard / f"{name}.png").write_bytes((pred / "predict" / f"{name}.png").read_bytes())
        (shard / "predict.json").write_text(json.dumps(
            {**info, "images": [name], "shard": [i, 2], "all_images": ["one", "two"]}))
        G.main(["--work-dir", str(pred / "work"), "--pred-dir", str(shard), "--no-panels",
                *options[i - 1]])
        folders.append(str(shard) + "_contours")
    return folders


@pytest.mark.parametrize("options, differs", [
    ((["--min-area", "10"], []), "min_area"),
    ((["--pixel-size", "0.5"], []), "pixel_size_um"),
    ((["--split-touching"], []), "split_touching"),
])
def test_contours_of_shards_outlined_otherwise_are_not_merged(pred, options, differs):
    """A table with specks dropped, or micrometres given, in one shard only is no table a
    single run writes."""
    folders = contour_shards(pred, *options)
    with pytest.raises(PipelineError, match=f"other settings .*{differs}"):
        G.main(["--merge", *folders])
    assert not (pred / "predict_contours").exists()


def test_contours_of_shards_of_two_predictions_are_not_merged(pred):
    folders = contour_shards(pred, [], [])
    record = pred / "predict_shard2of2" / "predict.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "model_file": "other.h5"}))
    G.main(["--work-dir", str(pred / "work"), "--pred-dir", str(record.parent), "--no-panels"])
    with pytest.raises(PipelineError, match=r"other settings .*\(prediction\)"):
        G.main(["--merge", *folders])


@pytest.mark.parametrize("spoil, message", [
    (lambda f: (f / "objects.csv").unlink(), "objects.csv is missing"),
    (lambda f: (f / "objects.csv").write_text((f / "objects.csv").read_text().replace(",", ";")),
     "not the table get_contour.py wrote"),
    (lambda f: (f / "shard.json").write_text('{"shard": 1}'), "not a shard's record as"),
])
def test_a_shards_contours_changed_by_hand_are_refused_in_one_line(pred, spoil, message):
    folders = contour_shards(pred, [], [])
    G.main(["--merge", *folders, "--output", str(pred / "merged")])       # the control
    spoil(Path(folders[0]))
    with pytest.raises(PipelineError, match=message):
        G.main(["--merge", *folders, "--output", str(pred / "again")])
    assert not (pred / "again").exists()


def test_panels_of_two_prediction_folders_of_one_name_do_not_replace_each_other(pred):
    """day1/pred and day2/pred both send their panels to figures/pred: the second run's
    panel of a frame of the same name is refused, not drawn over the first's."""
    other = pred / "day2" / "predict"
    shutil.copytree(pred / "predict", other)
    G.main(["--work-dir", str(pred / "work"), "--pred-dir", str(pred / "predict"),
            "--output", str(pred / "c1"), "--figures-dir", str(pred / "figures")])
    before = (pred / "figures" / "panel_one.png").read_bytes()
    with pytest.raises(PipelineError, match=r"panel_one\.png drawn from .*another prediction"):
        G.main(["--work-dir", str(pred / "work"), "--pred-dir", str(other),
                "--output", str(pred / "c2"), "--figures-dir", str(pred / "figures")])
    assert (pred / "figures" / "panel_one.png").read_bytes() == before
    G.main(["--work-dir", str(pred / "work"), "--pred-dir", str(pred / "predict"),
            "--output", str(pred / "c1"), "--figures-dir", str(pred / "figures")])  # a rerun


def test_the_printed_table_gives_no_mean_area_for_a_class_without_objects(capsys):
    """A class found nowhere has no mean area: it read 0.0 px, an area no object has."""
    tally = G.ObjectTally(["background", "bead", "cell"])
    for area in (10.0, 30.0):
        tally.add({"class": "bead", "area_px": area})
    tally.print(2, um=False)
    bead, cell = capsys.readouterr().out.splitlines()[1:]
    assert bead.split() == ["bead", "2", "1.0", "20.0"]
    assert cell.split() == ["cell", "0", "0.0", "-"]


def test_a_rerun_without_pdf_removes_the_earlier_pdfs_of_the_panels_it_redraws(pred, capsys):
    """A panel's PDF from a --pdf run showed the earlier prediction beside the PNG drawn anew,
    as if they were one panel; without panels redrawn (--no-panels) it stays."""
    run(pred, "--pdf")
    figures = pred / "figures"
    assert (figures / "panel_one.pdf").is_file() and (figures / "panel_two.pdf").is_file()
    run(pred, "--no-panels")
    assert (figures / "panel_one.pdf").is_file() and (figures / "panel_two.pdf").is_file()
    capsys.readouterr()
    run(pred)
    assert not list(figures.glob("*.pdf")) and (figures / "panel_one.png").is_file()
    assert (f"note: removed 2 panel PDFs of an earlier run from {figures} (panel_one.pdf, "
            "panel_two.pdf), as their PNGs were redrawn; add --pdf to draw them again"
            in capsys.readouterr().out)


def test_a_work_folder_moved_elsewhere_outlines_its_own_test_set(tmp_path):
    """predict.json records absolute paths: after the work folder moved (to a cluster's
    scratch disk, say), its test set's images and labels are the ones beside it."""
    old = tmp_path / "old" / "test"
    for sub in ("src", "label", "predict"):
        (old / sub).mkdir(parents=True)
    mask = drawn_mask()
    cv2.imwrite(str(old / "src" / "one.png"), np.full(mask.shape, 60, np.uint8))
    cv2.imwrite(str(old / "label" / "one.png"), mask)
    cv2.imwrite(str(old / "predict" / "one.png"), mask)
    (old / "predict" / "predict.json").write_text(json.dumps({
        "classes": CLASSES, "images": ["one"], "input_dir": str(old / "src"),
        "label_dir": str(old / "label")}))
    new = tmp_path / "new"
    (tmp_path / "old").rename(new)
    G.main(["--work-dir", str(new)])
    assert (new / "test" / "contours" / "objects.csv").is_file()


@pytest.mark.parametrize("inside", ["predict/contours", "predict"])
def test_contours_inside_the_prediction_folder_are_refused(pred, inside):
    """A rerun of the prediction would then be refused for the folder it did not write."""
    with pytest.raises(PipelineError, match=r"is or lies inside the prediction folder"):
        G.main(["--work-dir", str(pred / "work"), "--pred-dir", str(pred / "predict"),
                "--output", str(pred / inside), "--no-panels"])
    assert sorted(p.name for p in (pred / "predict").iterdir()) == ["one.png", "predict.json",
                                                                  "two.png"]


@pytest.mark.parametrize("inside", ["", "figures"])
def test_panels_inside_the_prediction_folder_are_refused(pred, inside):
    """Panels there blocked the next prediction into it, and without predict.json the next
    run took them for masks and asked for an --image-dir already given."""
    with pytest.raises(PipelineError, match=r"--figures-dir .* inside the prediction folder"):
        run(pred, "--figures-dir", str(pred / "predict" / inside))
    assert sorted(p.name for p in (pred / "predict").iterdir()) == ["one.png", "predict.json",
                                                                  "two.png"]


def test_a_streamed_masks_pictures_leave_out_what_min_area_drops(pred):
    """A whole slide's contour picture outlined the specks --min-area left out of
    objects.csv, which the same mask in memory does not draw."""
    import tifffile
    for stem in ("one", "two"):
        (pred / "predict" / f"{stem}.png").unlink()
        tifffile.imwrite(pred / "predict" / f"{stem}.tif", drawn_mask())
    info = json.loads((pred / "predict" / "predict.json").read_text())
    (pred / "predict" / "predict.json").write_text(json.dumps({**info, "mask_format": "tif"}))
    in_memory = run(pred, "--min-area", "10", "--no-panels")
    picture = cv2.imread(str(pred / "contours" / "one_contour.png"))
    assert run(pred, "--min-area", "10", "--no-panels", "--stream-above", "0.01") == in_memory
    np.testing.assert_array_equal(cv2.imread(str(pred / "contours" / "one_contour.png")),
                                  picture)


def test_classes_past_the_palettes_end_are_drawn_in_its_object_colours(pred):
    """Eleven object classes: the outlines stopped with an IndexError, and class 10 took
    background's black in the colour views."""
    classes = ["background", *(f"c{i}" for i in range(1, 12))]
    mask = np.zeros((200, 300), np.uint8)
    for c in range(1, 12):
        mask[10 + 15 * c:20 + 15 * c, 40:60] = c
    for name in ("one", "two"):
        cv2.imwrite(str(pred / "predict" / f"{name}.png"), mask)
    info = json.loads((pred / "predict" / "predict.json").read_text())
    (pred / "predict" / "predict.json").write_text(json.dumps({**info, "classes": classes}))
    rows = run(pred)
    assert [r["class"] for r in rows if r["image"] == "one"] == classes[1:]
    picture = cv2.cvtColor(cv2.imread(str(pred / "contours" / "one_contour.png")),
                           cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(picture[10 + 15 * 10, 40], PALETTE[1])    # class 10
    np.testing.assert_array_equal(picture[10 + 15 * 11, 40], PALETTE[2])    # class 11


def test_the_object_table_is_utf8_in_a_locale_that_is_not(pred):
    """LANG=en_US.ISO-8859-1 on an old cluster, Windows' cp1252, or C with Python's UTF-8
    mode off: a class or image name the locale cannot hold stopped the table midway."""
    import os
    import subprocess
    import sys
    info = json.loads((pred / "predict" / "predict.json").read_text())
    classes = ["background", "bead", "Zelle \u03b2"]
    (pred / "predict" / "predict.json").write_text(json.dumps({**info, "classes": classes}))
    # The terminal's encoding is another matter than the table's: stdout takes UTF-8 here.
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run(
        [sys.executable, G.__file__, "--work-dir", pred / "work", "--pred-dir",
         pred / "predict", "--output", pred / "contours", "--no-panels"],
        env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(pred / "contours" / "objects.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sum(r["class"] == "Zelle \u03b2" for r in rows) == 2 * len(SQUARES)


# ---------------------------------------------------------------- touching objects

def touching_mask():
    """Two touching discs, a long thin ellipse whose ridge is uneven, a disc at the frame's
    edge and a disc narrower than the split depth's peaks (class 2, cells)."""
    mask = np.zeros((200, 300), np.uint8)
    cv2.circle(mask, (60, 100), 30, 2, -1)
    cv2.circle(mask, (110, 100), 30, 2, -1)
    cv2.ellipse(mask, (220, 60), (60, 12), 30, 0, 360, 2, -1)
    cv2.circle(mask, (0, 190), 20, 2, -1)
    cv2.circle(mask, (220, 160), 2, 2, -1)
    return mask


def test_touching_discs_are_split_and_other_shapes_left_whole():
    mask = touching_mask()
    whole, _ = G.find_objects(mask, 3)
    split, outlines = G.find_objects(mask, 3, split_depth=G.SPLIT_DEPTH)
    assert len(whole) == 4 and len(split) == 5 and len(outlines[2]) == 5
    pair = sorted((r for r in split if 25 <= r["centroid_x"] <= 145 and r["area_px"] > 2000),
                  key=lambda r: r["centroid_x"])
    assert len(pair) == 2 and abs(pair[0]["area_px"] - pair[1]["area_px"]) <= 2
    assert 58 <= pair[0]["centroid_x"] <= 62 and 108 <= pair[1]["centroid_x"] <= 112
    # Only the line between the two is carved: one pixel wide, as long as their contact.
    carved = sum(r["area_px"] for r in whole) - sum(r["area_px"] for r in split)
    contact = 2 * math.sqrt(30 ** 2 - 25 ** 2)
    assert contact - 2 <= carved <= 1.5 * contact
    others = lambda rows: sorted((r["area_px"], r["bbox_x"], r["bbox_y"]) for r in rows  # noqa
                                 if not 25 <= r["centroid_x"] <= 145 or r["centroid_y"] > 150)
    assert others(split) == others(whole)


@pytest.mark.parametrize("degrees", range(0, 180, 15))
def test_the_split_line_keeps_the_halves_apart_under_8_connectivity(degrees):
    """A line at an angle is a staircase: halves that touch across one of its corners would
    be one 8-connected object again."""
    mask = np.zeros((200, 200), np.uint8)
    turn = math.radians(degrees)
    cv2.circle(mask, (100, 100), 30, 1, -1)
    cv2.circle(mask, (round(100 + 50 * math.cos(turn)), round(100 + 50 * math.sin(turn))), 30,
               1, -1)
    rows, _ = G.find_objects(mask, 2, split_depth=G.SPLIT_DEPTH)
    assert len(rows) == 2


def test_fronts_that_meet_side_by_side_are_kept_apart():
    """Two seeds' fronts reaching neighbouring pixels in one step met with no line pixel
    between them: the picture showed a dashed line, objects.csv one object."""
    yy, xx = np.mgrid[:40, :50]
    mask = (((yy - 20) ** 2 + (xx - 15) ** 2 <= 49)
            | ((yy - 20) ** 2 + (xx - 29) ** 2 <= 81)).astype(np.uint8)
    assert len(G.find_objects(mask, 2, split_depth=G.SPLIT_DEPTH)[0]) == 2


@pytest.mark.parametrize("radii", [(6, 6), (9, 10), (10, 10), (12, 14)])
def test_every_carved_pair_of_discs_is_two_objects(radii):
    for degrees in range(0, 180, 30):
        for overlap in (0.6, 0.75, 0.85):
            turn, apart = math.radians(degrees), sum(radii) * overlap
            mask = np.zeros((80, 80), np.uint8)
            cv2.circle(mask, (40, 40), radii[0], 1, -1)
            cv2.circle(mask, (round(40 + apart * math.cos(turn)),
                              round(40 + apart * math.sin(turn))), radii[1], 1, -1)
            rows = G.find_objects(mask, 2, split_depth=G.SPLIT_DEPTH)[0]
            assert len(rows) in (1, 2)
            if len(rows) == 1:
                assert rows[0]["area_px"] == int(mask.sum()), "carved, yet one object"


def winding_filament():
    """A sine-shaped filament 9 px wide and some 900 px long with four bulges."""
    x = np.arange(20, 300)
    points = np.stack([x, 130 + 90 * np.sin(x / 20)], axis=1).round().astype(np.int32)
    mask = np.zeros((260, 320), np.uint8)
    cv2.polylines(mask, [points], False, 1, 9)
    for i in (0, 90, 170, 279):
        cv2.circle(mask, tuple(int(v) for v in points[i]), 10 + i % 4, 1, -1)
    return mask


def random_discs(seed):
    """14 discs of radius 6-25 at random, some touching."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((200, 200), np.uint8)
    for _ in range(14):
        cv2.circle(mask, tuple(int(v) for v in rng.integers(0, 200, 2)),
                   int(rng.integers(6, 26)), 1, -1)
    return mask


@pytest.mark.parametrize("share", [None, 0])
def test_split_touching_by_the_moving_front_carves_as_steps_over_the_window(monkeypatch,
                                                                           share):
    """touching.py computes again only the pixels beside those the step before changed,
    where they are few (with share 0, at every step but a reconstruction's first): the lines
    carved are those of the same steps over the whole window, bit for bit."""
    if share is not None:
        monkeypatch.setattr(touching, "RECONSTRUCT_SHARE", share)
        monkeypatch.setattr(touching, "GROW_SHARE", share)
    masks = [random_discs(seed) for seed in range(1, 5)] + [winding_filament()]
    carved = [touching.split_touching(mask, G.SPLIT_DEPTH) for mask in masks]
    monkeypatch.setattr(touching, "reconstruct_by_dilation", full_window_reconstruct)
    monkeypatch.setattr(touching, "grow_seeds", full_window_grow)
    for mask, ours in zip(masks, carved):
        reference = touching.split_touching(mask, G.SPLIT_DEPTH)
        assert (reference != mask).any()
        assert np.array_equal(ours, reference)


def test_split_touching_through_the_command_line(pred):
    for name in ("one", "two"):
        cv2.imwrite(str(pred / "predict" / f"{name}.png"), touching_mask())
    assert len(run(pred)) == 8
    assert len(run(pred, "--split-touching")) == 10


def test_split_touching_refuses_a_mask_read_band_by_band(pred, monkeypatch):
    import tifffile
    (pred / "predict" / "two.png").unlink()
    tifffile.imwrite(pred / "predict" / "two.tif", touching_mask(), tile=(32, 32))
    info = json.loads((pred / "predict" / "predict.json").read_text())
    (pred / "predict" / "predict.json").write_text(json.dumps({**info, "streamed": ["two"]}))
    seen = []
    monkeypatch.setattr(G, "find_objects", lambda *a, **k: seen.append(a) or ([], {}))
    with pytest.raises(PipelineError, match="masks of two are larger than --stream-above "
                                            ".*--split-touching needs each mask whole"):
        run(pred, "--split-touching", "--stream-above", "0.01")
    assert not (pred / "contours").exists() and not seen     # before the first mask


def test_legends_draw_class_names_beyond_ascii():
    """OpenCV's fonts draw every character past ASCII as '?': 'αβγ' looked like '???'."""
    def legend(name):
        return G.with_legend(np.zeros((20, 640, 3), np.uint8), ["background", name])[20:]
    import figures
    assert figures.font_for(("αβγ", "α-Zelle")) is not None       # letters, not boxes
    assert not np.array_equal(legend("αβγ"), legend("???"))
    assert not np.array_equal(legend("α-Zelle"), legend("?-Zelle"))


def test_a_name_no_font_here_can_draw_is_noted_once(monkeypatch, capsys):
    import figures
    monkeypatch.setattr(figures, "font_for", lambda texts: None)
    monkeypatch.setattr(figures, "_glyphs_noted", False)       # once a run: as if it began
    for _ in range(2):
        G.with_legend(np.zeros((20, 640, 3), np.uint8), ["background", "ε-cell"])
    out = capsys.readouterr().out
    assert out.count("no font on this machine has every character of ε-cell") == 1


@contextlib.contextmanager
def glyph_warnings():
    """The messages of matplotlib's missing-glyph warnings given in the block."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        found = []
        yield found
    found += [str(w.message) for w in caught if "missing from font" in str(w.message)]


def test_names_in_figures_are_drawn_in_a_font_that_has_their_characters(tmp_path, capsys):
    """A name with a character matplotlib's DejaVu Sans lacks (U+1D81, which matplotlib's
    STIX fonts have) drawn in a font that has it, not as a box with a raw glyph warning: in
    a title, and as a class along a bar chart (a tick label, which has its text only once
    the figure is laid out)."""
    import figures
    with glyph_warnings() as warned:
        plt = figures.pyplot()
        fig, ax = plt.subplots()
        ax.set_title("\u1d81-Zelle")
        ax.bar(["background", "\u1d81-Zelle"], [0.9, 0.7])
        figures.save_figure(fig, tmp_path / "f.png", pdf=True)
    for text in (ax.title, ax.get_xticklabels()[1]):
        font = text.get_fontproperties().get_file()
        assert font and 0x1D81 in figures.characters_of(str(font))
    assert not warned and "no font" not in capsys.readouterr().out


def test_frame_names_no_font_has_are_noted_once_not_warned_of_glyph_by_glyph(pred, capsys,
                                                                           monkeypatch):
    """get_contour.py's panel titles of frames named in Chinese printed matplotlib's
    'UserWarning: Glyph 32454 ... missing from font(s) DejaVu Sans' with source paths."""
    import figures
    monkeypatch.setattr(figures, "_glyphs_noted", False)
    names = ["zellkörper_ß_细胞", "zweites_细胞"]
    for old, new in zip(("one", "two"), names):
        for sub in ("src", "predict"):
            (pred / sub / f"{old}.png").rename(pred / sub / f"{new}.png")
    (pred / "label" / "one.png").rename(pred / "label" / f"{names[0]}.png")
    record = json.loads((pred / "predict" / "predict.json").read_text())
    (pred / "predict" / "predict.json").write_text(json.dumps({**record, "images": names}))
    with glyph_warnings() as warned:
        run(pred)
    assert (pred / "figures" / f"panel_{names[1]}.png").is_file() and not warned
    out = capsys.readouterr().out
    if figures.font_for(tuple(names)) is None:         # no CJK font on this machine
        assert out.count("note: no font on this machine has every character of") == 1
        assert "every character of zellkörper_ß_细胞; names in figures" in out
    else:
        assert "no font" not in out


def test_a_label_folder_that_is_not_there_is_said(pred, capsys):
    """Every ground-truth panel was left out without a word, for a --label-dir mistyped or a
    recorded label folder moved since."""
    with pytest.raises(PipelineError, match="--label-dir .*labels_typo is not a folder"):
        run(pred, "--label-dir", str(pred / "labels_typo"))
    (pred / "label").rename(pred / "label_moved")
    run(pred)
    assert f"note: label folder {pred / 'label'}, which " in capsys.readouterr().out
    run(pred, "--label-dir", str(pred / "label_moved"))
