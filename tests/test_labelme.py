"""labelme_to_label.py (LabelMe JSON -> image + class-index label) and the sample generator."""
import base64
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import labelme_to_label as l2l
from cli import IGNORE_LABEL, PipelineError, read_classes

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["background", "bead", "cell"]
INDEX = {name: i for i, name in enumerate(CLASSES)}


def shape(label, points, shape_type, mask=None):
    return {"label": label, "points": points, "group_id": None, "description": "",
            "shape_type": shape_type, "flags": {}, "mask": mask}


def b64_png(arr):
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return base64.b64encode(buf.tobytes()).decode("ascii")


def make_project(root, shapes_by_name, image_shape=(40, 60), embed=False):
    """<root>/data with classes.txt and <root>/labelme with one JSON (and image) per entry."""
    data, labelme = root / "data", root / "labelme"
    data.mkdir(parents=True)
    labelme.mkdir()
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    rng = np.random.default_rng(0)
    for name, shapes in shapes_by_name.items():
        img = rng.integers(0, 256, image_shape, dtype=np.uint8)
        doc = {"version": "5.5.0", "flags": {}, "shapes": shapes,
               "imagePath": f"{name}.png", "imageData": None,
               "imageHeight": image_shape[0], "imageWidth": image_shape[1]}
        if embed:
            doc["imageData"] = b64_png(img)
        else:
            cv2.imwrite(str(labelme / f"{name}.png"), img)
        (labelme / f"{name}.json").write_text(json.dumps(doc))
    return data, labelme


def run_main(data, labelme, *extra):
    l2l.main(["--input", str(labelme), "--data-dir", str(data), *extra])


# ---------------------------------------------------------------- rasterization

@pytest.mark.parametrize("corners", [[[3, 5], [13, 25]], [[13, 25], [3, 5]], [[13, 5], [3, 25]]])
def test_rectangle_covers_exactly_its_integer_area(corners):
    label = l2l.rasterize_shapes([shape("cell", corners, "rectangle")], 40, 30, INDEX)
    assert (label == 2).sum() == 10 * 20
    assert (label[5:25, 3:13] == 2).all()


def test_rectangle_with_fractional_corners_takes_pixels_whose_centre_is_inside():
    label = l2l.rasterize_shapes([shape("bead", [[2.4, 1.6], [6.6, 4.5]], "rectangle")], 10, 10, INDEX)
    # columns 2..6 have centres 2.5..6.5 in [2.4, 6.6); rows 2..3 have centres 2.5, 3.5 in [1.6, 4.5)
    assert (label == 1).sum() == 5 * 2
    assert (label[2:4, 2:7] == 1).all()


@pytest.mark.parametrize("radius", [10, 13.7, 25])
def test_circle_area_within_two_percent(radius):
    centre = (50.3, 47.8)
    rim = [centre[0] + radius * math.cos(0.7), centre[1] + radius * math.sin(0.7)]
    label = l2l.rasterize_shapes([shape("bead", [list(centre), rim], "circle")], 100, 110, INDEX)
    area = (label == 1).sum()
    assert abs(area - math.pi * radius ** 2) <= 0.02 * math.pi * radius ** 2
    assert label[int(centre[1]), int(centre[0])] == 1


def test_later_shape_is_drawn_over_earlier_one():
    cell = shape("cell", [[0, 0], [20, 0], [20, 20], [0, 20]], "polygon")
    bead = shape("bead", [[20, 10], [28, 10]], "circle")
    on_top = l2l.rasterize_shapes([cell, bead], 30, 40, INDEX)
    below = l2l.rasterize_shapes([bead, cell], 30, 40, INDEX)
    assert on_top[10, 15] == 1 and below[10, 15] == 2       # inside both
    assert on_top[10, 25] == 1 and below[10, 25] == 1       # bead only
    assert on_top[2, 2] == 2 and below[2, 2] == 2           # cell only


def test_polygon_is_filled_with_its_concavity_left_out():
    # A U shape: the notch between the arms stays background.
    u = [[0, 0], [30, 0], [30, 30], [20, 30], [20, 10], [10, 10], [10, 30], [0, 30]]
    label = l2l.rasterize_shapes([shape("cell", u, "polygon")], 40, 40, INDEX)
    assert (label == 2).sum() == 30 * 30 - 10 * 20
    assert label[20, 15] == 0 and label[20, 5] == 2 and label[5, 15] == 2


def mask_shape():
    pixels = np.zeros((6, 8), np.uint8)
    pixels[1:5, 2:7] = 255
    return shape("bead", [[10, 12], [17, 17]], "mask", mask=b64_png(pixels))


@pytest.mark.parametrize("shp, inside", [
    (shape("bead", [[5, 5], [30, 5]], "line"), (5, 20)),
    (shape("bead", [[5, 5], [30, 5], [30, 30]], "linestrip"), (20, 30)),
    (shape("bead", [[20, 20]], "point"), (20, 20)),
    (mask_shape(), (14, 15)),
], ids=["line", "linestrip", "point", "mask"])
def test_other_shape_types_draw_their_class(shp, inside):
    label = l2l.rasterize_shapes([shp], 40, 40, INDEX, line_width=4, point_radius=3)
    assert set(np.unique(label)) == {0, 1}
    assert label[inside] == 1
    if shp["shape_type"] == "point":
        assert abs((label == 1).sum() - math.pi * 9) <= 6
    if shp["shape_type"] == "mask":
        assert (label == 1).sum() == 4 * 5 and (label[13:17, 12:17] == 1).all()


def test_line_width_sets_thickness():
    line = [shape("cell", [[5.3, 20.3], [35.3, 20.3]], "line")]
    thin = l2l.rasterize_shapes(line, 40, 40, INDEX, line_width=2)
    thick = l2l.rasterize_shapes(line, 40, 40, INDEX, line_width=10)
    assert (thin[:, 20] == 2).sum() == 2 and (thick[:, 20] == 2).sum() == 10


def test_bad_points_are_reported():
    with pytest.raises(PipelineError, match=r"circle.*exactly 2 \[x, y\] points, got"):
        l2l.rasterize_shapes([shape("bead", [[1, 1]], "circle")], 10, 10, INDEX)
    with pytest.raises(PipelineError, match="unsupported shape_type 'blob'"):
        l2l.rasterize_shapes([shape("bead", [[1, 1]], "blob")], 10, 10, INDEX)
    # a damaged file: beyond any image, where the fills' float arithmetic fails
    for far in ([[0, 0], [1e308, 5], [5, 1e308]], [[10 ** 400, 10], [1, 1], [5, 5]]):
        with pytest.raises(PipelineError, match="polygon shape labelled 'bead'"):
            l2l.rasterize_shapes([shape("bead", far, "polygon")], 40, 60, INDEX)
    assert l2l.rasterize_shapes([shape("bead", [[0, 0], [1e6, 0], [0, 1e6]], "polygon")],
                                40, 60, INDEX).sum() == 40 * 60


# ---------------------------------------------------------------- files and classes

def test_unknown_label_names_file_label_and_classes(tmp_path):
    data, labelme = make_project(tmp_path, {
        "a": [shape("cell", [[1, 1], [9, 9]], "rectangle")],
        "b": [shape("dog", [[1, 1], [9, 9]], "rectangle")]})
    with pytest.raises(PipelineError) as err:
        run_main(data, labelme)
    msg = str(err.value)
    assert "b.json" in msg and "'dog'" in msg and all(c in msg for c in CLASSES)
    assert not (data / "label").exists()        # checked before anything is written


def test_a_label_of_a_class_in_another_case_is_asked_whether_it_means_that_class(tmp_path):
    data, labelme = make_project(tmp_path, {"a": [shape("Cell", [[1, 1], [9, 9]], "rectangle")]})
    with pytest.raises(PipelineError, match=r"label 'Cell' is not in .*did you mean 'cell'\? "
                                            r"rename the label in LabelMe"):
        run_main(data, labelme)


def test_a_label_of_decomposed_accents_is_its_class(tmp_path):
    """macOS may store a typed 'é' as 'e' and a combining accent: the same name to the eye."""
    import unicodedata
    name = unicodedata.normalize("NFD", "cellule_\u00e9")
    data, labelme = make_project(tmp_path, {"e": [shape(name, [[2, 3], [12, 8]], "rectangle")]})
    (data / "classes.txt").write_text("background\ncellule_\u00e9\n")
    run_main(data, labelme)
    assert (cv2.imread(str(data / "label" / "e.png"), cv2.IMREAD_UNCHANGED) == 1).sum() == 50


def test_add_unknown_classes_appends_in_order_of_first_appearance(tmp_path):
    data, labelme = make_project(tmp_path, {
        "a": [shape("dog", [[0, 0], [10, 10]], "rectangle"),
              shape("cell", [[10, 0], [20, 10]], "rectangle")],
        "b": [shape("cat", [[0, 0], [10, 10]], "rectangle"),
              shape("dog", [[10, 0], [20, 10]], "rectangle")]})
    run_main(data, labelme, "--add-unknown-classes")
    assert read_classes(data) == CLASSES + ["dog", "cat"]
    a = cv2.imread(str(data / "label" / "a.png"), cv2.IMREAD_UNCHANGED)
    b = cv2.imread(str(data / "label" / "b.png"), cv2.IMREAD_UNCHANGED)
    assert a[5, 5] == 3 and a[5, 15] == 2 and b[5, 5] == 4 and b[5, 15] == 3


def test_embedded_image_data_is_used_without_an_image_file(tmp_path):
    data, labelme = make_project(tmp_path, {"e": [shape("bead", [[2, 3], [12, 8]], "rectangle")]},
                                 image_shape=(20, 30), embed=True)
    assert not list(labelme.glob("*.png"))
    embedded = json.loads((labelme / "e.json").read_text())["imageData"]
    expected = cv2.imdecode(np.frombuffer(base64.b64decode(embedded), np.uint8),
                            cv2.IMREAD_UNCHANGED)
    run_main(data, labelme)
    src = cv2.imread(str(data / "src" / "e.png"), cv2.IMREAD_UNCHANGED)
    label = cv2.imread(str(data / "label" / "e.png"), cv2.IMREAD_UNCHANGED)
    assert src.ndim == 2 and np.array_equal(src, expected)
    assert label.shape == (20, 30) and (label == 1).sum() == 50


def test_a_16_bit_original_wins_over_labelmes_8_bit_jpeg_copy_of_it(tmp_path):
    """LabelMe embeds a TIFF it cannot show (16-bit) as an 8-bit JPEG: data/src gets the
    file's own pixels, which prediction reads too."""
    import tifffile
    data, labelme = make_project(tmp_path, {"f": [shape("bead", [[2, 3], [12, 8]], "rectangle")]},
                                 image_shape=(20, 30))
    frames = tmp_path / "frames"
    frames.mkdir()
    deep = np.random.default_rng(1).integers(200, 4200, (20, 30)).astype(np.uint16)
    tifffile.imwrite(frames / "f.tif", deep)
    shown = ((deep - 200) / 4000 * 255).astype(np.uint8)
    doc = json.loads((labelme / "f.json").read_text())
    doc.update(imagePath="../frames/f.tif",
               imageData=base64.b64encode(cv2.imencode(".jpg", shown)[1].tobytes()).decode())
    (labelme / "f.json").write_text(json.dumps(doc))
    run_main(data, labelme, "--allow-outside-paths")
    assert np.array_equal(cv2.imread(str(data / "src" / "f.png"), cv2.IMREAD_UNCHANGED), deep)
    assert (cv2.imread(str(data / "label" / "f.png"), cv2.IMREAD_UNCHANGED) == 1).sum() == 50


def test_another_picture_of_the_name_in_src_is_never_replaced_by_the_embedded_image(tmp_path):
    data, labelme = make_project(tmp_path, {"e": [shape("bead", [[2, 3], [12, 8]], "rectangle")]},
                                 image_shape=(20, 30), embed=True)
    run_main(data, labelme)
    first = (data / "src" / "e.png").stat().st_mtime_ns
    run_main(data, labelme)                 # a rerun: the same pixels, the file left as it is
    assert (data / "src" / "e.png").stat().st_mtime_ns == first
    original = np.random.default_rng(1).integers(0, 4096, (20, 30)).astype(np.uint16)
    cv2.imwrite(str(data / "src" / "e.png"), original)      # the user's 16-bit original
    (data / "label" / "e.png").unlink()
    with pytest.raises(PipelineError, match=r"would replace .*e\.png, whose pixels are not "
                                            r"those of the image this annotation holds "
                                            r"\(imageData\)"):
        run_main(data, labelme)
    assert np.array_equal(cv2.imread(str(data / "src" / "e.png"), cv2.IMREAD_UNCHANGED), original)
    assert not (data / "label" / "e.png").exists()


def test_another_picture_of_the_name_in_src_is_named_beside_the_imagepath_file(tmp_path):
    """Without imageData the image comes from the imagePath file: the refusal names it."""
    data, labelme = make_project(tmp_path, {"e": [shape("bead", [[2, 3], [12, 8]], "rectangle")]},
                                 image_shape=(20, 30))
    (data / "src").mkdir()
    other = np.random.default_rng(1).integers(0, 256, (20, 30), dtype=np.uint8)
    cv2.imwrite(str(data / "src" / "e.png"), other)
    with pytest.raises(PipelineError) as refusal:
        run_main(data, labelme)
    assert f"would replace {data / 'src' / 'e.png'}, whose pixels are not those of its " \
        f"imagePath file {labelme / 'e.png'}; move" in str(refusal.value)
    assert "imageData" not in str(refusal.value)
    assert np.array_equal(cv2.imread(str(data / "src" / "e.png"), cv2.IMREAD_UNCHANGED), other)


@pytest.mark.parametrize("height, width, error", [
    ("40", "60", None), (40.0, 60, None), ("41", "60", r"is 41 x 60 but the image is 40 x 60"),
    ("forty", 60, r"imageHeight 'forty' is not a number")])
def test_the_stated_image_size_is_read_as_a_number(tmp_path, height, width, error):
    data, labelme = make_project(tmp_path, {"e": [shape("bead", [[2, 3], [12, 8]], "rectangle")]})
    doc = json.loads((labelme / "e.json").read_text())
    doc.update(imageHeight=height, imageWidth=width)
    (labelme / "e.json").write_text(json.dumps(doc))
    if error is None:
        run_main(data, labelme)
        assert (data / "label" / "e.png").is_file()
    else:
        with pytest.raises(PipelineError, match=error):
            run_main(data, labelme)


def test_a_json_suffix_in_upper_case_is_read_and_two_files_of_one_name_refused(tmp_path):
    data, labelme = make_project(tmp_path, {"e": [shape("bead", [[2, 3], [12, 8]], "rectangle")]})
    (labelme / "e.json").rename(labelme / "e.JSON")
    run_main(data, labelme)
    assert (data / "label" / "e.png").is_file()
    (labelme / "e.json").write_text((labelme / "e.JSON").read_text())
    if len(list(labelme.iterdir())) == 3:           # a file system that tells case apart
        with pytest.raises(PipelineError, match="two LabelMe files of the name 'e'"):
            run_main(data, labelme)


def test_a_label_of_another_format_for_the_name_is_refused(tmp_path):
    data, labelme = make_project(tmp_path, {"e": [shape("bead", [[2, 3], [12, 8]], "rectangle")]})
    (data / "label").mkdir()
    np.save(data / "label" / "e.npy", np.zeros((40, 60), np.uint8))
    with pytest.raises(PipelineError, match=r"e\.npy already is the label of 'e'"):
        run_main(data, labelme)
    assert not (data / "label" / "e.png").exists()


def test_a_label_not_written_here_is_replaced_only_when_asked(tmp_path):
    """A rerun after a JSON was edited replaces the label it wrote; a hand-drawn label of the
    name (predictions of training frames converted into data/) is kept unless
    --replace-labels."""
    data, labelme = make_project(tmp_path, {"e": [shape("bead", [[2, 3], [12, 8]], "rectangle")]})
    run_main(data, labelme)
    doc = json.loads((labelme / "e.json").read_text())
    doc["shapes"][0]["points"] = [[2, 3], [20, 8]]            # edited in LabelMe
    (labelme / "e.json").write_text(json.dumps(doc))
    run_main(data, labelme)
    assert (cv2.imread(str(data / "label" / "e.png"), cv2.IMREAD_UNCHANGED) == 1).sum() == 90
    hand = np.zeros((40, 60), np.uint8)
    hand[10:20, 10:20] = 2
    cv2.imwrite(str(data / "label" / "e.png"), hand)          # drawn elsewhere
    with pytest.raises(PipelineError, match=r"would replace .*e\.png, a label this script did "
                                            r"not write.*--replace-labels"):
        run_main(data, labelme)
    assert np.array_equal(cv2.imread(str(data / "label" / "e.png"), cv2.IMREAD_UNCHANGED), hand)
    run_main(data, labelme, "--replace-labels")
    assert (cv2.imread(str(data / "label" / "e.png"), cv2.IMREAD_UNCHANGED) == 1).sum() == 90


def test_a_json_name_with_a_control_character_is_refused_before_anything_is_written(tmp_path):
    """It became data/src/a<TAB>b.png and a label, which gen_img_aug.py then refused."""
    data, labelme = make_project(tmp_path, {"a": [shape("bead", [[2, 3], [12, 8]], "rectangle")]})
    (labelme / "a.json").rename(labelme / "a\tb.json")
    with pytest.raises(PipelineError, match=r"LabelMe file name 'a\\tb\.json' .* holds the control "
                                            r"character '\\t'; rename the file"):
        run_main(data, labelme)
    assert sorted(p.name for p in data.iterdir()) == ["classes.txt"]


def corrections(root, name, shapes):
    """A second folder of LabelMe files, as README's "Correct and retrain" converts beside the
    first: <root>/corrections/<name>.json and its image."""
    folder = root / "corrections"
    folder.mkdir(exist_ok=True)
    cv2.imwrite(str(folder / f"{name}.png"), np.random.default_rng(7).integers(
        0, 256, (40, 60), dtype=np.uint8))
    (folder / f"{name}.json").write_text(json.dumps({
        "version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": f"{name}.png",
        "imageData": None, "imageHeight": 40, "imageWidth": 60}))
    return folder


def aug_args(data, work):
    return ["--data-dir", str(data), "--work-dir", str(work), "--num-patches", "4",
            "--patch-size", "32", "--workers", "1"]


def test_advice_to_redraw_labels_names_every_folder_they_were_drawn_from(tmp_path):
    """Labels converted from two folders (the first annotations, then corrections with an
    unsure region) and a reordered classes.txt: the advice was 'run labelme_to_label.py
    again', whose default --input redraws the first folder's alone, and the next run refused
    the corrections; a rerun without --ignore-labels refused the unsure region."""
    import gen_img_aug
    bead_and_cell = [shape("bead", [[2, 3], [12, 8]], "rectangle"),
                     shape("cell", [[30, 20], [50, 35]], "rectangle")]
    data, labelme = make_project(tmp_path, {"a": bead_and_cell, "b": bead_and_cell})
    run_main(data, labelme)
    more = corrections(tmp_path, "c", [*bead_and_cell,
                                       shape("unsure", [[40, 2], [50, 8]], "rectangle")])
    run_main(data, more, "--ignore-labels", "unsure")
    (data / "classes.txt").write_text("background\ncell\nbead\n")
    with pytest.raises(PipelineError) as refusal:
        gen_img_aug.main(aug_args(data, tmp_path / "work"))
    advice = f"rerun labelme_to_label.py --data-dir {data} --input {labelme}, then with " \
             f"--input {more} --ignore-labels unsure, to redraw"
    assert advice in str(refusal.value)
    run_main(data, labelme)                                 # the advice, followed as it reads
    run_main(data, more, "--ignore-labels", "unsure")
    gen_img_aug.main(aug_args(data, tmp_path / "work"))


def test_advice_to_redraw_labels_runs_a_folder_of_corrections_after_the_first(tmp_path):
    """Frame a corrected in a second folder: the advice ran the folders in the order of their
    labels' names, corrections first, and the first folder's a.json drew over the correction,
    unsaid; with the corrections already redrawn, it left them out and did the same."""
    import gen_img_aug
    bead = shape("bead", [[2, 3], [12, 8]], "rectangle")
    data, labelme = make_project(tmp_path, {"a": [bead], "b": [bead]})
    run_main(data, labelme)
    fixed = tmp_path / "corrections"
    fixed.mkdir()
    (fixed / "a.png").write_bytes((labelme / "a.png").read_bytes())
    (fixed / "a.json").write_text(json.dumps({
        **json.loads((labelme / "a.json").read_text()),
        "shapes": [bead, shape("cell", [[30, 20], [50, 35]], "rectangle")]}))
    run_main(data, fixed)
    (data / "classes.txt").write_text("background\ncell\nbead\n")
    for first in (True, False):
        with pytest.raises(PipelineError) as refusal:
            gen_img_aug.main(aug_args(data, tmp_path / "work"))
        assert f"rerun labelme_to_label.py --data-dir {data} --input {labelme}, then with " \
               f"--input {fixed}, to redraw" in str(refusal.value)
        if first:
            run_main(data, fixed)                           # the corrections alone redrawn
    run_main(data, labelme)                                 # the advice, followed as it reads
    run_main(data, fixed)
    corrected = cv2.imread(str(data / "label" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert (corrected == 1).sum() == 300                    # the cell of the correction
    gen_img_aug.main(aug_args(data, tmp_path / "work"))


def test_labels_drawn_before_a_class_was_appended_are_noted_with_the_folder_to_redraw(
        tmp_path, capsys):
    """A class appended to classes.txt keeps every index, so the earlier labels pass; but they
    cannot hold it, and any object of it in their frames trained as background, unsaid."""
    import gen_img_aug
    data, labelme = make_project(tmp_path, {
        name: [shape("bead", [[2, 3], [12, 8]], "rectangle")] for name in ("a", "b")})
    run_main(data, labelme)
    (data / "classes.txt").write_text("\n".join([*CLASSES, "nucleus"]) + "\n")
    run_main(data, corrections(tmp_path, "c", [shape("nucleus", [[2, 3], [12, 8]], "rectangle")]))
    capsys.readouterr()
    gen_img_aug.main(aug_args(data, tmp_path / "work"))
    assert f"note: 2 labels were drawn by labelme_to_label.py before {data / 'classes.txt'} " \
           "listed 'nucleus' (a.png, b.png): any nucleus in their frames trains as background; " \
           f"label it there and rerun labelme_to_label.py --data-dir {data} --input {labelme}\n" \
        in capsys.readouterr().out
    run_main(data, labelme)                                 # redrawn: nothing to say
    gen_img_aug.main(aug_args(data, tmp_path / "work"))
    assert "note:" not in capsys.readouterr().out


@pytest.mark.parametrize("listed, dropped, value", [
    (["background", "bead"], "cell", 2),                     # the last class removed
    (["background", "cell"], "bead", 1),                     # one before another removed
    (["background", "beads", "cell"], "bead", 1)],           # renamed
    ids=["removed-last", "removed", "renamed"])
def test_a_class_removed_or_renamed_in_classes_txt_is_named_with_how_to_drop_it(
        tmp_path, capsys, listed, dropped, value):
    """A class removed from classes.txt: gen_img_aug.py called the last one's value one too
    many ('fix the label or the class list'), and labelme_to_label.py, rerun as advised,
    refused its shapes with 'add it there or use --add-unknown-classes', which lists it
    again: no advice said how to drop a class."""
    import gen_img_aug
    data, labelme = make_project(tmp_path, {
        name: [shape("bead", [[2, 3], [12, 8]], "rectangle"),
               shape("cell", [[30, 20], [50, 35]], "rectangle")] for name in ("a", "b")})
    run_main(data, labelme)
    (data / "classes.txt").write_text("\n".join(listed) + "\n")
    if dropped == "cell":
        with pytest.raises(PipelineError, match=rf"label .*a\.png was drawn by labelme_to_label"
                                                rf"\.py with 'cell' as class 2, which .* no "
                                                rf"longer lists \(it lists 2 classes\): list it "
                                                rf"again, or delete its shapes and rerun "
                                                rf"labelme_to_label\.py --data-dir {data} "
                                                rf"--input {labelme} \(with cell among its "
                                                rf"--ignore-labels"):
            gen_img_aug.main(aug_args(data, tmp_path / "work"))
    with pytest.raises(PipelineError, match=rf"label '{dropped}' is not in .*; it was class "
                                            rf"{value} when this script drew .*a\.png: where it "
                                            rf"was renamed, give its shapes the new name in "
                                            rf"LabelMe; where it was removed, delete them, or add "
                                            rf"--ignore-labels {dropped} to leave them out"):
        run_main(data, labelme)
    run_main(data, labelme, "--ignore-labels", dropped)     # the advice, followed
    gen_img_aug.main(aug_args(data, tmp_path / "work"))


def test_a_label_written_before_classes_were_recorded_is_still_replaced(tmp_path):
    """The record of an earlier version (a digest alone per label) still says whose it is."""
    data, labelme = make_project(tmp_path, {"e": [shape("bead", [[2, 3], [12, 8]], "rectangle")]})
    run_main(data, labelme)
    record = json.loads((data / l2l.RECORD).read_text())
    (data / l2l.RECORD).write_text(json.dumps({n: e["sha256"] for n, e in record.items()}))
    doc = json.loads((labelme / "e.json").read_text())
    doc["shapes"][0]["points"] = [[2, 3], [20, 8]]            # edited in LabelMe
    (labelme / "e.json").write_text(json.dumps(doc))
    run_main(data, labelme)
    assert (cv2.imread(str(data / "label" / "e.png"), cv2.IMREAD_UNCHANGED) == 1).sum() == 90
    assert json.loads((data / l2l.RECORD).read_text())["e.png"]["classes"] == CLASSES


@pytest.mark.parametrize("listed, refused", [
    (["background", "cell", "bead"], "'bead' as class 1, but .* now lists 'bead' as class 2, "
                                     "and class 1 as 'cell'"),
    (["background", "nucleus", "bead", "cell"], "'bead' as class 1, .* as class 2, and class 1 "
                                                "as 'nucleus'"),
    (["background", "bead", "cell", "nucleus"], None),      # appended: each index keeps its class
    (["background", "beads", "cell"], None)],               # renamed: no class moved
    ids=["reordered", "inserted", "appended", "renamed"])
def test_labels_whose_classes_moved_in_classes_txt_since_they_were_drawn_are_refused(
        tmp_path, capsys, listed, refused):
    """classes.txt edited after the conversion gave the labels' values other classes: bead
    pixels were learnt as cells, unsaid. A label redrawn (or drawn by hand since) passes."""
    import gen_img_aug
    data, labelme = make_project(tmp_path, {
        name: [shape("bead", [[2, 3], [12, 8]], "rectangle"),
               shape("cell", [[30, 20], [50, 35]], "rectangle")] for name in ("a", "b")})
    run_main(data, labelme)
    (data / "classes.txt").write_text("\n".join(listed) + "\n")
    work = tmp_path / "work"
    args = ["--data-dir", str(data), "--work-dir", str(work), "--num-patches", "4",
            "--patch-size", "32", "--workers", "1"]
    if refused is None:
        gen_img_aug.main(args)
        renamed = "note: labels drawn by labelme_to_label.py with class 1 as 'bead' train it " \
                  "as 'beads'"
        assert (renamed in capsys.readouterr().out) is ("beads" in listed)
        return
    with pytest.raises(PipelineError, match=r"label .*a\.png was drawn by labelme_to_label\.py "
                                            rf"with {refused}: .*rerun labelme_to_label\.py "
                                            rf"--data-dir {data} --input {labelme}, to redraw"):
        gen_img_aug.main(args)
    assert not work.exists()
    run_main(data, labelme)                                     # redrawn with the new order
    gen_img_aug.main(args)
    split = json.loads((work / "split.json").read_text())
    assert split["classes"] == listed
    assert split["label_values"] == sorted([0, listed.index("bead"), listed.index("cell")])


def test_a_phone_jpeg_is_labelled_as_labelme_showed_it_turned_by_its_exif_tag(tmp_path):
    """LabelMe shows a JPEG turned as its EXIF Orientation tag says and records the turned
    size and coordinates; the label must line up with the image as the pipeline reads it."""
    from PIL import Image
    from image_io import read_image
    data, labelme = make_project(tmp_path, {"p": [shape("bead", [[0, 0], [4, 3]], "rectangle")]},
                                 image_shape=(30, 20))       # the shown size: 30 rows, 20 columns
    stored = np.full((20, 30), 40, np.uint8)      # as the camera wrote it, a quarter turn away
    stored[-4:, :3] = 250     # the bright corner that shows at the top left after a clockwise turn
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(labelme / "p.jpg", exif=exif.tobytes(), quality=100)
    (labelme / "p.png").unlink()
    doc = json.loads((labelme / "p.json").read_text())
    doc["imagePath"] = "p.jpg"
    (labelme / "p.json").write_text(json.dumps(doc))
    run_main(data, labelme)
    image = read_image(data / "src" / "p.png")
    label = cv2.imread(str(data / "label" / "p.png"), cv2.IMREAD_UNCHANGED)
    assert image.shape == label.shape == (30, 20)
    assert image[label == 1].min() > 200 and image[label == 0].max() < 100


def test_missing_image_is_reported_with_the_json(tmp_path):
    data, labelme = make_project(tmp_path, {"m": [shape("bead", [[2, 3], [12, 8]], "rectangle")]})
    (labelme / "m.png").unlink()
    with pytest.raises(PipelineError, match=r"m\.json: image not found"):
        run_main(data, labelme)


def test_colour_stays_colour_and_image_already_in_src_is_not_rewritten(tmp_path):
    data, labelme = make_project(tmp_path, {"c": [shape("cell", [[0, 0], [5, 5]], "rectangle")]})
    (data / "src").mkdir()
    colour = np.dstack([np.full((40, 60), v, np.uint8) for v in (10, 120, 250)])
    cv2.imwrite(str(data / "src" / "c.jpg"), colour)
    doc = json.loads((labelme / "c.json").read_text())
    doc["imagePath"] = "../data/src/c.jpg"
    (labelme / "c.json").write_text(json.dumps(doc))
    before = (data / "src" / "c.jpg").stat().st_mtime_ns
    run_main(data, labelme)
    assert sorted(p.name for p in (data / "src").iterdir()) == ["c.jpg"]
    assert (data / "src" / "c.jpg").stat().st_mtime_ns == before
    assert (data / "label" / "c.png").is_file()


def test_unsure_regions_become_ignored_pixels_that_patches_never_aim_at(tmp_path, capsys):
    """--ignore-labels draws its shapes as IGNORE_LABEL, which is no class; gen_img_aug.py
    keeps those pixels, records the value, and --foreground-fraction 1 aims every patch at a
    class pixel, never at an ignored one."""
    import gen_img_aug
    unsure = shape("unsure", [[20, 4], [58, 38]], "rectangle")
    data, labelme = make_project(tmp_path, {
        "a": [shape("cell", [[2, 30], [6, 34]], "rectangle"), unsure],
        "b": [shape("bead", [[2, 2], [6, 6]], "rectangle"), unsure,
              shape("skip", [[0, 0], [1, 1]], "rectangle")]})
    run_main(data, labelme, "--ignore-labels", "unsure,skip")
    assert "; ignored 2585 (53.9%)" in capsys.readouterr().out     # 38 x 34 twice, and 1
    assert read_classes(data) == CLASSES
    a = cv2.imread(str(data / "label" / "a.png"), cv2.IMREAD_UNCHANGED)
    assert (a == IGNORE_LABEL).sum() == 38 * 34 and (a == 2).sum() == 16

    work = tmp_path / "work"
    gen_img_aug.main(["--data-dir", str(data), "--work-dir", str(work), "--num-patches", "30",
                      "--patch-size", "32", "--foreground-fraction", "1", "--workers", "1"])
    assert json.loads((work / "split.json").read_text())["label_values"] == [0, 1, 2,
                                                                            IGNORE_LABEL]
    patches = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
               for p in (work / "train" / "label").glob("*.png")]
    assert any((p == IGNORE_LABEL).any() for p in patches)
    assert all(((p > 0) & (p < IGNORE_LABEL)).any() for p in patches)


def test_a_frame_of_unsure_regions_alone_is_no_0_255_mask(tmp_path, capsys):
    """A label this script drew with ignored pixels and no object is class indices, though a
    label of 0 and 255 alone beside labels of objects is refused where made elsewhere."""
    import gen_img_aug
    data, labelme = make_project(tmp_path, {
        "a": [shape("cell", [[2, 30], [6, 34]], "rectangle")],
        "b": [shape("unsure", [[20, 4], [58, 38]], "rectangle")]})
    run_main(data, labelme, "--ignore-labels", "unsure")
    args = ["--data-dir", str(data), "--work-dir", str(tmp_path / "work"), "--num-patches", "4",
            "--patch-size", "32", "--workers", "1"]
    capsys.readouterr()
    gen_img_aug.main(args)
    assert "note:" not in capsys.readouterr().out
    label = cv2.imread(str(data / "label" / "b.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(data / "label" / "b.png"), label[::-1])     # as if drawn elsewhere
    with pytest.raises(PipelineError, match=r"only the values 0 and 255 \(b\.png\)"):
        gen_img_aug.main(args)


def test_an_ignored_label_that_is_also_a_class_is_refused(tmp_path):
    data, labelme = make_project(tmp_path, {"a": [shape("cell", [[1, 1], [9, 9]], "rectangle")]})
    with pytest.raises(PipelineError, match="'cell' is both a class in .* and an --ignore-label"):
        run_main(data, labelme, "--ignore-labels", "cell")
    assert not (data / "label").exists()


# ---------------------------------------------------------------- command line

def run_script(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "labelme_to_label.py"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def test_command_line_end_to_end(tmp_path):
    shapes = {"x": [shape("cell", [[1, 1], [30, 1], [30, 20]], "polygon"),
                    shape("bead", [[20, 20], [25, 20]], "circle")]}
    data, labelme = make_project(tmp_path, shapes)
    done = run_script("--input", str(labelme), "--data-dir", str(data), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 image ->" in done.stdout
    label = cv2.imread(str(data / "label" / "x.png"), cv2.IMREAD_UNCHANGED)
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2}
    src = cv2.imread(str(data / "src" / "x.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(src, cv2.imread(str(labelme / "x.png"), cv2.IMREAD_UNCHANGED))
    assert not [p for p in data.rglob(".*")]     # no staging left behind


def test_command_line_bad_label_exits_2_without_traceback(tmp_path):
    data, labelme = make_project(tmp_path, {"y": [shape("dog", [[1, 1], [9, 9]], "rectangle")]})
    done = run_script("--input", str(labelme), "--data-dir", str(data), cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "'dog'" in done.stderr and "y.json" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- sample data

def test_sample_generator_reproduces_committed_annotations(tmp_path):
    committed = sorted((ROOT / "data" / "labelme").glob("*.json"))
    assert len(committed) == 20
    done = subprocess.run([sys.executable, str(ROOT / "data" / "make_sample_data.py"),
                           "--out-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "labelme").glob("*.json")) == \
        [p.name for p in committed]
    for path in committed:
        assert (tmp_path / "labelme" / path.name).read_bytes() == path.read_bytes(), path.name
    assert (tmp_path / "classes.txt").read_text() == (ROOT / "data" / "classes.txt").read_text()


def test_committed_labels_match_committed_annotations():
    label_dir = ROOT / "data" / "label"
    for path in sorted((ROOT / "data" / "labelme").glob("*.json"))[:3]:
        doc = json.loads(path.read_text())
        expected = l2l.rasterize_shapes(doc["shapes"], doc["imageHeight"], doc["imageWidth"],
                                        INDEX)
        stored = cv2.imread(str(label_dir / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(stored, expected), path.name
        assert {1, 2} <= set(np.unique(stored))


# ---------------------------------------------------------------- names and shapes refused

@pytest.mark.parametrize("name", ["bead/x", "cell, big", "a\\b", "x:y", 'say "hi"', "a\tb",
                                  "..", "ok?"])
def test_class_names_that_cannot_be_file_name_parts_are_refused(name, tmp_path):
    # They go into <image>_prob_<class>.png and iou.csv's header, read far down the pipeline.
    (tmp_path / "classes.txt").write_text(f"background\n\n{name}\ncell\n")
    with pytest.raises(PipelineError) as err:
        read_classes(tmp_path)
    assert f"line 3: class name {name!r}" in str(err.value) and "\n" not in str(err.value)


def test_sample_class_names_are_accepted():
    folders = [ROOT / "data", *sorted((ROOT.parent / "shared" / "datasets").glob("*"))]
    for folder in (f for f in folders if (f / "classes.txt").is_file()):
        assert read_classes(folder)[0] == "background", folder


@pytest.mark.parametrize("second, expected", [
    ("bead", "class 'bead' twice (lines 2 and 4)"),
    ("Bead", "'bead' (line 2) and 'Bead' (line 4), which differ only in case")])
def test_a_doubled_class_name_is_named(second, expected, tmp_path):
    (tmp_path / "classes.txt").write_text(f"background\nbead\ncell\n{second}\n")
    with pytest.raises(PipelineError, match=re.escape(expected)):
        read_classes(tmp_path)


@pytest.mark.parametrize("label, why", [
    ("cell ", "of shape 2 (rectangle) starts or ends with a space"),
    ("nucleus\nbead", "of shape 2 (rectangle) holds the control character '\\n'"),
    ("   ", "of shape 2 (rectangle) is blank"),
    ("bead/x", "of shape 2 (rectangle) holds '/'"),
    ("Cell", "differs from 'cell' only in case")])
def test_add_unknown_classes_refuses_labels_that_cannot_be_class_names(label, why, tmp_path):
    data, labelme = make_project(tmp_path, {
        "a": [shape("cell", [[1, 1], [9, 9]], "rectangle")],
        "b": [shape("bead", [[1, 1], [9, 9]], "rectangle"),
              shape(label, [[10, 10], [19, 19]], "rectangle")]})
    with pytest.raises(PipelineError) as err:
        run_main(data, labelme, "--add-unknown-classes")
    assert "b.json" in str(err.value) and repr(label) in str(err.value) and why in str(err.value)
    assert (data / "classes.txt").read_text() == "\n".join(CLASSES) + "\n"
    assert not (data / "label").exists()


def test_command_line_label_with_a_newline_is_one_error_line(tmp_path):
    data, labelme = make_project(tmp_path, {
        "y": [shape("nucleus\nbead", [[1, 1], [9, 9]], "rectangle")]})
    done = run_script("--input", str(labelme), "--data-dir", str(data), "--add-unknown-classes",
                      cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "y.json" in done.stderr


def test_shapes_that_cover_no_pixel_are_refused_naming_each(tmp_path):
    """Outside the image, three points on a line, a circle of radius 0: the label would be
    background where the annotator marked something."""
    data, labelme = make_project(tmp_path, {
        "a": [shape("cell", [[1, 1], [9, 9]], "rectangle")],
        "b": [shape("cell", [[1, 1], [9, 9]], "rectangle"),
              shape("bead", [[70, 50], [80, 60]], "rectangle"),
              shape("cell", [[1, 1], [5, 5], [9, 9]], "polygon"),
              shape("bead", [[20, 20], [20, 20]], "circle")]})
    with pytest.raises(PipelineError) as err:
        run_main(data, labelme)
    assert str(err.value).startswith(str(labelme / "b.json")) and \
        "shapes 2 (rectangle 'bead'), 3 (polygon 'cell'), 4 (circle 'bead') cover no pixel" in \
        str(err.value)
    assert not (data / "label").exists()


def test_a_coordinate_that_is_not_a_number_is_named_so():
    bad = shape("cell", [[1, 1], [math.nan, 5], [9, 1]], "polygon")
    with pytest.raises(PipelineError, match="point coordinates of the polygon shape labelled "
                                            "'cell' must be finite numbers"):
        l2l.rasterize_shapes([bad], 10, 10, INDEX)


# ---------------------------------------------------------------- found by a probe, 2026-12-07

@pytest.mark.parametrize("classes, labels, error", [
    (["__ignore__", "_background_", "cell"], ["cell"], r"lists '__ignore__' \(line 1\).*"
     r"--ignore-labels __ignore__"),
    (["background", "cell", "_background_"], ["cell"], r"'_background_' as class 2"),
    (["cell", "bead", "background"], ["cell"], r"'background' as class 2 and 'cell' on its first"),
    (["cell", "bead"], ["bead", "cell"], r"shape 2 is labelled 'cell', the first line"),
    (["background", "cell"], ["cell", "_background_"], r"shape 2 is labelled '_background_', "
     r"LabelMe's name for background"),
    (["_background_", "cell"], ["cell", "_background_"], None),     # LabelMe's own list
    (["void", "bead"], ["bead"], None)])
def test_class_lists_that_would_shift_or_swallow_classes_are_refused(tmp_path, classes, labels,
                                                                     error):
    data, labelme = make_project(tmp_path, {"a": [
        shape(name, [[2 + 3 * i, 3], [14 + 3 * i, 12]], "rectangle")
        for i, name in enumerate(labels)]})
    (data / "classes.txt").write_text("\n".join(classes) + "\n")
    if error is None:
        run_main(data, labelme)
        assert (data / "label" / "a.png").is_file()
        return
    with pytest.raises(PipelineError, match=error):
        run_main(data, labelme, "--add-unknown-classes")
    assert not (data / "label").exists()


def test_a_src_file_that_no_longer_shows_the_embedded_picture_is_refused(tmp_path):
    data, labelme = make_project(tmp_path, {"e": [shape("bead", [[2, 3], [12, 8]], "rectangle")]},
                                 image_shape=(20, 30), embed=True)
    doc = json.loads((labelme / "e.json").read_text())
    picture = cv2.imdecode(np.frombuffer(base64.b64decode(doc["imageData"]), np.uint8),
                           cv2.IMREAD_UNCHANGED)
    (data / "src").mkdir()
    doc["imagePath"] = "../data/src/e.png"
    (labelme / "e.json").write_text(json.dumps(doc))
    cv2.imwrite(str(data / "src" / "e.png"), picture)
    run_main(data, labelme)                 # the same picture: the label is drawn on it
    (data / "label" / "e.png").unlink()
    cv2.imwrite(str(data / "src" / "e.png"), picture[:, ::-1])     # saved mirrored since
    with pytest.raises(PipelineError, match=r"imageData shows another picture than its "
                                            r"imagePath file"):
        run_main(data, labelme)
    assert not (data / "label" / "e.png").exists()


def test_a_jpeg_copy_stands_for_its_own_picture_but_not_for_another(tmp_path):
    data, labelme = make_project(tmp_path, {"f": [shape("bead", [[2, 3], [12, 8]], "rectangle")]},
                                 image_shape=(60, 80))
    yy, xx = np.mgrid[:60, :80]
    picture = (20 + 2 * xx + 30 * np.sin(yy / 5.0)).astype(np.uint8)
    other = np.ascontiguousarray(picture[:, ::-1])          # the same scene, mirrored
    doc = json.loads((labelme / "f.json").read_text())
    doc["imageData"] = base64.b64encode(cv2.imencode(".jpg", picture)[1].tobytes()).decode()
    (labelme / "f.json").write_text(json.dumps(doc))
    cv2.imwrite(str(labelme / "f.png"), other)
    with pytest.raises(PipelineError, match=r"imageData is not a copy of the imagePath file"):
        run_main(data, labelme)
    cv2.imwrite(str(labelme / "f.png"), picture)
    run_main(data, labelme)
    assert np.array_equal(cv2.imread(str(data / "src" / "f.png"), cv2.IMREAD_UNCHANGED), picture)


def test_an_image_in_src_under_another_name_than_its_json_is_refused(tmp_path):
    data, labelme = make_project(tmp_path, {"annot01": [shape("bead", [[2, 3], [12, 8]],
                                                              "rectangle")]})
    (data / "src").mkdir()
    (labelme / "annot01.png").rename(data / "src" / "scan 01.png")
    doc = json.loads((labelme / "annot01.json").read_text())
    doc["imagePath"] = "../data/src/scan 01.png"
    (labelme / "annot01.json").write_text(json.dumps(doc))
    with pytest.raises(PipelineError, match=r"its image scan 01.png is in .* under another name"
                                            r".*rename the JSON scan 01.json"):
        run_main(data, labelme)
    assert sorted(p.name for p in (data / "src").iterdir()) == ["scan 01.png"]


@pytest.mark.parametrize("image_path", [r"C:\Users\me\scans\m.png", "M.PNG", "m.jpg"])
def test_a_missing_image_names_the_one_beside_the_json(tmp_path, image_path):
    data, labelme = make_project(tmp_path, {"m": [shape("bead", [[2, 3], [12, 8]], "rectangle")]})
    doc = json.loads((labelme / "m.json").read_text())
    doc["imagePath"] = image_path
    (labelme / "m.json").write_text(json.dumps(doc))
    with pytest.raises(PipelineError, match=r"image not found.*; m\.png lies beside it"):
        run_main(data, labelme)


def test_a_shape_wholly_drawn_over_is_noted(tmp_path, capsys):
    data, labelme = make_project(tmp_path, {"h": [
        shape("bead", [[10, 10], [14, 14]], "rectangle"),
        shape("cell", [[2, 2], [30, 30]], "rectangle")]})
    run_main(data, labelme)
    out = capsys.readouterr().out
    assert re.search(r"note: .*h\.json: shape 1 \(rectangle 'bead'\) is wholly covered", out)


@pytest.mark.parametrize("embed", [False, True])
def test_two_annotations_of_one_image_are_refused(tmp_path, embed):
    data, labelme = make_project(tmp_path, {"img": [shape("cell", [[1, 1], [9, 9]], "rectangle")]},
                                 embed=embed)
    doc = json.loads((labelme / "img.json").read_text())
    doc["shapes"] = [shape("bead", [[20, 20], [25, 25]], "rectangle")]
    (labelme / "img_beads.json").write_text(json.dumps(doc))
    with pytest.raises(PipelineError, match=r"img.json and img_beads.json in .* annotate the "
                                            r"same image.*merge their shapes"):
        run_main(data, labelme)
    assert not (data / "label").exists()


def test_a_tiff_beside_its_json_keeps_its_pixel_size_in_src(tmp_path):
    """A PNG copy lost the micrometres per pixel that get_contour.py reports sizes in."""
    import tifffile
    from image_io import pixel_size_um, read_raw_image
    data, labelme = make_project(tmp_path, {"t": [shape("bead", [[2, 3], [12, 8]], "rectangle")]})
    frame = read_raw_image(labelme / "t.png")
    (labelme / "t.png").unlink()
    tifffile.imwrite(labelme / "t.tif", frame, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"unit": "um"})
    doc = json.loads((labelme / "t.json").read_text())
    doc["imagePath"] = "t.tif"
    (labelme / "t.json").write_text(json.dumps(doc))
    run_main(data, labelme)
    assert sorted(p.name for p in (data / "src").iterdir()) == ["t.tif"]
    assert np.array_equal(read_raw_image(data / "src" / "t.tif"), frame)
    assert pixel_size_um(data / "src" / "t.tif") == pytest.approx(0.65)
    run_main(data, labelme)                 # a rerun finds its own copy


def test_a_copy_an_earlier_run_wrote_in_another_format_is_kept(tmp_path):
    data, labelme = make_project(tmp_path, {"t": [shape("bead", [[2, 3], [12, 8]], "rectangle")]})
    run_main(data, labelme)
    frame = cv2.imread(str(data / "src" / "t.png"), cv2.IMREAD_UNCHANGED)
    (data / "src" / "t.png").unlink()
    cv2.imwrite(str(data / "src" / "t.bmp"), frame)     # as an earlier version might have
    run_main(data, labelme)
    assert sorted(p.name for p in (data / "src").iterdir()) == ["t.bmp"]


def test_labels_of_annotations_removed_since_are_noted_as_still_trained_on(tmp_path, capsys):
    """An annotation deleted to drop its frame left the label and image written from it, and
    gen_img_aug.py kept training on the frame without a word."""
    data, labelme = make_project(tmp_path, {
        name: [shape("bead", [[2, 3], [12, 8]], "rectangle")] for name in ("a", "b", "c")})
    run_main(data, labelme)
    assert "note:" not in capsys.readouterr().out
    (labelme / "b.json").unlink()
    run_main(data, labelme)
    out = capsys.readouterr().out
    assert re.search(r"note: labels drawn by this script from JSON files since removed from "
                     r".*labelme stay in .*label, and gen_img_aug.py trains on their frames "
                     r"\(1 label: b\.png\); to leave a frame out, delete its label and its image",
                     out), out
    # Another folder's annotations (corrections added beside the first ones) are no removal.
    more = tmp_path / "more"
    more.mkdir()
    (labelme / "a.json").rename(more / "d.json")
    (labelme / "a.png").rename(more / "d.png")
    doc = json.loads((more / "d.json").read_text())
    (more / "d.json").write_text(json.dumps({**doc, "imagePath": "d.png"}))
    run_main(data, more)
    assert "b.png" not in capsys.readouterr().out
