"""Masks to LabelMe polygons and back through labelme_to_label.py's rasterizer."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from image_io import read_label
from labelme_export import DEFAULT_TOLERANCE, annotation
from labelme_to_label import rasterize_shapes
from metrics import confusion_matrix, iou_per_class

ROOT = Path(__file__).resolve().parents[1]
BBBC030 = ROOT.parent / "shared" / "datasets" / "bbbc030"
CLASSES = ["background", "cytoplasm", "nucleus"]


def round_trip(mask, classes=CLASSES, tolerance=DEFAULT_TOLERANCE):
    doc = annotation(mask, classes, "frame.png", ".", tolerance)
    index = {name: i for i, name in enumerate(classes)}
    return rasterize_shapes(doc["shapes"], *mask.shape, index), doc


def drawn_scene():
    """Objects with holes, an object inside a hole of its own class, a nucleus filling a
    cytoplasm's hole, single pixels, a one-pixel line and objects cut by the border."""
    mask = np.zeros((120, 160), np.uint8)
    cv2.circle(mask, (40, 40), 30, 1, -1)
    cv2.circle(mask, (40, 40), 12, 2, -1)              # nucleus in the cytoplasm's hole
    cv2.rectangle(mask, (90, 10), (150, 70), 1, -1)
    cv2.rectangle(mask, (100, 20), (140, 60), 0, -1)   # a hole ...
    cv2.rectangle(mask, (115, 35), (125, 45), 1, -1)   # ... holding an island of the same class
    cv2.line(mask, (10, 100), (80, 115), 2, 1)         # one pixel wide, 8-connected
    mask[90, 100] = mask[92, 102] = 1                  # single pixels
    mask[110:, 140:] = 2                               # cut by two borders
    mask[0:5, 0:3] = 1
    return mask


def test_drawn_scene_comes_back_exactly_without_simplification():
    mask = drawn_scene()
    back, doc = round_trip(mask, tolerance=0)
    assert np.array_equal(back, mask)
    labels = [s["label"] for s in doc["shapes"]]
    assert labels.count("background") == 2             # the two holes
    assert all(s["shape_type"] == "polygon" and len(s["points"]) >= 3 for s in doc["shapes"])


def test_simplified_drawn_scene_keeps_every_object_and_hole():
    mask = drawn_scene()
    back, doc = round_trip(mask)
    exact = round_trip(mask, tolerance=0)[1]
    assert [s["label"] for s in doc["shapes"]] == [s["label"] for s in exact["shapes"]]
    assert iou_per_class(confusion_matrix(mask, back, 3)).min() >= 0.97


def test_a_small_object_that_simplification_folds_flat_is_kept_unsimplified():
    """An 8-connected V of four pixels simplifies to a polygon around no pixel centre, which
    labelme_to_label.py refuses: the export must never write a shape its reader refuses."""
    mask = np.zeros((8, 8), np.uint8)
    for x, y in [(2, 2), (3, 3), (2, 4), (4, 4)]:
        mask[y, x] = 1
    back, _ = round_trip(mask)
    np.testing.assert_array_equal(back, mask)


def test_document_is_what_labelme_writes(tmp_path):
    (tmp_path / "img").mkdir()
    doc = annotation(drawn_scene(), CLASSES, tmp_path / "img" / "a.tif", tmp_path / "json")
    assert doc["imagePath"] == "../img/a.tif" and doc["imageData"] is None
    assert (doc["imageHeight"], doc["imageWidth"]) == (120, 160)
    assert set(doc["shapes"][0]) == {"label", "points", "group_id", "description", "shape_type",
                                     "flags", "mask"}


def test_simplification_keeps_few_vertices_close_to_the_outline():
    mask = np.zeros((200, 200), np.uint8)
    cv2.circle(mask, (100, 100), 80, 1, -1)
    exact = annotation(mask, CLASSES, "a.png", ".", 0)["shapes"][0]["points"]
    simple = annotation(mask, CLASSES, "a.png", ".", 1.0)["shapes"][0]["points"]
    assert len(simple) < len(exact) / 2
    outline = np.float32(exact)
    # every simplified vertex lies on the traced outline's polygon within the tolerance
    assert max(abs(cv2.pointPolygonTest(outline, tuple(map(float, p)), True))
               for p in simple) <= 1.0 + 1e-6


def test_random_nested_blobs_come_back_exactly_without_simplification():
    rng = np.random.default_rng(1)
    for _ in range(3):
        noise = cv2.GaussianBlur(rng.random((90, 110)), (0, 0), 3)
        mask = np.digitize(noise, np.quantile(noise, [0.5, 0.8])).astype(np.uint8)
        assert np.array_equal(round_trip(mask, tolerance=0)[0], mask)


def per_class_round_trip_iou(paths, classes):
    total = 0
    for path in paths:
        mask = read_label(path)
        total = total + confusion_matrix(mask, round_trip(mask, classes)[0], len(classes))
    return iou_per_class(total)


def test_sample_masks_round_trip():
    paths = sorted((ROOT / "data" / "label").glob("*.png"))
    assert paths, "the sample data's labels are part of the repository"
    assert per_class_round_trip_iou(paths, ["background", "bead", "cell"]).min() >= 0.98


@pytest.mark.skipif(not BBBC030.is_dir(), reason="shared data set bbbc030 not present")
def test_bbbc030_masks_round_trip():
    paths = sorted((BBBC030 / "label").glob("*.png"))[:20]
    assert per_class_round_trip_iou(paths, ["background", "cell"]).min() >= 0.98


def test_an_annotation_copied_elsewhere_still_finds_its_image(tmp_path):
    """predict --merge --output DIR copies the shards' LabelMe files to another depth."""
    from labelme_export import moved_image_path
    image = tmp_path / "work" / "test" / "src" / "a.png"
    shard = tmp_path / "work" / "test" / "predict_shard1of2" / "labelme"
    elsewhere = tmp_path / "results" / "run1" / "predict" / "labelme"
    moved = moved_image_path("../../src/a.png", shard, elsewhere)
    assert (elsewhere / moved).resolve() == image.resolve()
    beside = tmp_path / "work" / "test" / "predict" / "labelme"        # the default: as it was
    assert moved_image_path("../../src/a.png", shard, beside) == "../../src/a.png"
    # a stack plane's PNG, saved beside its annotation, travels with it
    assert moved_image_path("a_p0.png", shard, elsewhere) == "a_p0.png"
