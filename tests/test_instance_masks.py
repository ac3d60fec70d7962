"""labelme_to_label.py --instances: instance masks (objects numbered one by one) as labels."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

import labelme_to_label as l2l
from cli import PipelineError
from image_io import check_label_values, read_label

ROOT = Path(__file__).resolve().parents[1]


def make_data(root, count=2, shape=(60, 80), objects=5, classes=("background", "cell")):
    """<root>/data with images in src/, classes.txt, and <root>/masks: uint16 instance masks
    of `objects` discs numbered from 1 (two of them touching)."""
    data, masks = root / "data", root / "masks"
    (data / "src").mkdir(parents=True)
    masks.mkdir()
    (data / "classes.txt").write_text("\n".join(classes) + "\n")
    for i in range(count):
        cv2.imwrite(str(data / "src" / f"f{i}.png"), np.full(shape, 40 + i, np.uint8))
        mask = np.zeros(shape, np.uint16)
        for k in range(objects):
            cv2.circle(mask, (8 + 9 * k, 20 + 5 * (k % 2)), 5, 300 + k, -1)
        cv2.imwrite(str(masks / f"f{i}.png"), mask)
    return data, masks


def convert(data, masks, *extra):
    l2l.main(["--instances", str(masks), "--data-dir", str(data), *extra])


def test_every_object_becomes_the_one_object_class(tmp_path, capsys):
    data, masks = make_data(tmp_path)
    convert(data, masks)
    mask = cv2.imread(str(masks / "f0.png"), cv2.IMREAD_UNCHANGED)
    label = read_label(data / "label" / "f0.png")
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1}
    assert np.array_equal(label == 1, mask > 0)
    assert "10 objects of class 'cell'" in capsys.readouterr().out
    record = json.loads((data / "labelme_to_label.json").read_text())
    assert record["f0.png"]["classes"] == ["background", "cell"]


def test_cellpose_names_and_tiff_masks_find_their_images(tmp_path):
    data, masks = make_data(tmp_path)
    (masks / "f0.png").rename(masks / "f0_masks.png")
    mask = cv2.imread(str(masks / "f1.png"), cv2.IMREAD_UNCHANGED).astype(np.uint32) + 70000
    mask[mask == 70000] = 0
    (masks / "f1.png").unlink()
    tifffile.imwrite(masks / "f1_cp_masks.tif", mask)
    convert(data, masks)
    assert sorted(p.name for p in (data / "label").iterdir()) == ["f0.png", "f1.png"]
    assert np.array_equal(read_label(data / "label" / "f1.png") == 1, mask > 0)


def test_named_class_among_several(tmp_path):
    data, masks = make_data(tmp_path, classes=("background", "bead", "cell"))
    with pytest.raises(PipelineError, match="2 object classes .*--instance-class"):
        convert(data, masks)
    convert(data, masks, "--instance-class", "cell")
    assert set(np.unique(read_label(data / "label" / "f0.png"))) == {0, 2}


def test_a_new_class_only_with_add_unknown_classes(tmp_path):
    data, masks = make_data(tmp_path)
    with pytest.raises(PipelineError, match="'nucleus' is not in"):
        convert(data, masks, "--instance-class", "nucleus")
    assert not (data / "label").exists()
    convert(data, masks, "--instance-class", "nucleus", "--add-unknown-classes")
    assert (data / "classes.txt").read_text().split() == ["background", "cell", "nucleus"]
    assert set(np.unique(read_label(data / "label" / "f0.png"))) == {0, 2}


def test_a_mask_of_no_image_or_of_another_size_leaves_data_as_it_was(tmp_path):
    data, masks = make_data(tmp_path)
    cv2.imwrite(str(masks / "stray.png"), np.zeros((60, 80), np.uint8))
    with pytest.raises(PipelineError, match="1 mask in .* belongs to no image .*stray.png"):
        convert(data, masks)
    (masks / "stray.png").unlink()
    cv2.imwrite(str(masks / "f1.png"), np.zeros((61, 80), np.uint16))
    with pytest.raises(PipelineError, match="is 80x61 but its image"):
        convert(data, masks)
    assert not (data / "label").exists() and not (data / "labelme_to_label.json").exists()


def test_masks_in_the_label_folder_itself_are_refused(tmp_path):
    data, masks = make_data(tmp_path)
    masks.rename(data / "label")
    with pytest.raises(PipelineError, match="is the label folder"):
        convert(data, data / "label", "--replace-labels")
    assert cv2.imread(str(data / "label" / "f0.png"), cv2.IMREAD_UNCHANGED).max() == 304


def test_a_rerun_replaces_its_own_labels_but_not_a_label_made_elsewhere(tmp_path):
    data, masks = make_data(tmp_path)
    convert(data, masks)
    cv2.imwrite(str(masks / "f0.png"), np.zeros((60, 80), np.uint16))
    convert(data, masks)
    assert read_label(data / "label" / "f0.png").max() == 0
    cv2.imwrite(str(data / "label" / "f1.png"), np.ones((60, 80), np.uint8))
    with pytest.raises(PipelineError, match="did not write"):
        convert(data, masks)


def test_options_of_labelme_files_are_refused_with_instances(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "labelme_to_label.py"), "--instances",
                           str(tmp_path), "--line-width", "3"], capture_output=True, text=True)
    assert done.returncode == 2 and "leave out --line-width" in done.stderr
    done = subprocess.run([sys.executable, str(ROOT / "labelme_to_label.py"),
                           "--instance-class", "cell"], capture_output=True, text=True)
    assert done.returncode == 2 and "give --instances too" in done.stderr


def test_an_instance_mask_read_as_a_label_says_how_to_convert_it(tmp_path):
    _, masks = make_data(tmp_path)
    with pytest.raises(PipelineError,
                       match=r"outside 0..255 \(0..304\).*instance mask.*5 numbers.*--instances"):
        read_label(masks / "f0.png")
    small = np.zeros((10, 10), np.uint8)
    small[2, 2:7] = [1, 2, 3, 4, 5]
    with pytest.raises(PipelineError, match="lists only 2 classes.*instance mask"):
        check_label_values(small, 2, "x.png", "classes.txt")
    small[2, 4:7] = 1       # one class beyond: a class missing from the list, no hint
    with pytest.raises(PipelineError) as err:
        check_label_values(small, 2, "x.png", "classes.txt")
    assert "instance" not in str(err.value)


def test_binary_masks_of_0_and_255_become_labels_of_0_and_1(tmp_path):
    data, masks = make_data(tmp_path, count=1)
    mask = np.zeros((60, 80), np.uint8)
    mask[10:30, 20:50] = 255
    cv2.imwrite(str(masks / "f0.png"), mask)
    convert(data, masks)
    assert np.array_equal(read_label(data / "label" / "f0.png"), (mask > 0).astype(np.uint8))


def test_the_image_folder_is_refused_as_the_masks_folder(tmp_path):
    data, _ = make_data(tmp_path)
    with pytest.raises(PipelineError, match="is the image folder"):
        convert(data, data / "src")
    assert not (data / "label").exists()


def test_cellposes_images_beside_their_masks_and_session_files_are_passed_over(tmp_path, capsys):
    data, masks = make_data(tmp_path)
    for i in range(2):
        (masks / f"f{i}.png").rename(masks / f"f{i}_masks.png")
        shutil.copy(data / "src" / f"f{i}.png", masks / f"f{i}.png")
    np.save(masks / "f0_seg.npy", np.array([{"outlines": None}], dtype=object),
            allow_pickle=True)
    convert(data, masks)
    assert "2 images beside the masks and 1 Cellpose session file (_seg.npy), passed over" \
        in capsys.readouterr().out
    assert sorted(p.name for p in (data / "label").iterdir()) == ["f0.png", "f1.png"]
    assert read_label(data / "label" / "f0.png").max() == 1


def test_a_class_named_in_another_case_is_asked_about_not_added(tmp_path):
    data, masks = make_data(tmp_path)
    with pytest.raises(PipelineError, match="'Cell' differs from 'cell' only in case"):
        convert(data, masks, "--instance-class", "Cell", "--add-unknown-classes")
    assert (data / "classes.txt").read_text().split() == ["background", "cell"]


def test_without_a_class_list_the_class_to_write_is_asked_for(tmp_path):
    data, masks = make_data(tmp_path)
    (data / "classes.txt").unlink()
    for extra in ([], ["--add-unknown-classes"], ["--instance-class", "cell"]):
        with pytest.raises(PipelineError, match="not found: name the class .*--instance-class"):
            convert(data, masks, *extra)
    convert(data, masks, "--instance-class", "nucleus", "--add-unknown-classes")
    assert (data / "classes.txt").read_text().split() == ["background", "nucleus"]


def test_a_mask_named_as_a_stack_is_told_to_name_its_planes(tmp_path):
    data, masks = make_data(tmp_path, count=1)
    tifffile.imwrite(data / "src" / "st.tif", np.zeros((3, 60, 80), np.uint8),
                     photometric="minisblack")
    tifffile.imwrite(masks / "st_masks.tif", np.zeros((3, 60, 80), np.uint16),
                     photometric="minisblack")
    with pytest.raises(PipelineError, match=r"named as a stack .*\(st_p0 ... st_p2\).*"
                                            r"--page K\), name the mask as that plane"):
        convert(data, masks)
    (masks / "st_masks.tif").unlink()       # as the message says: the plane gen_img_aug takes
    mask = np.zeros((60, 80), np.uint16)
    mask[10:20, 10:20] = 3
    tifffile.imwrite(masks / "st_p1_masks.tif", mask, photometric="minisblack")
    convert(data, masks)
    assert np.array_equal(read_label(data / "label" / "st_p1.png"), (mask > 0).astype(np.uint8))


def test_object_numbers_past_32_bits_stay_objects(tmp_path):
    data, masks = make_data(tmp_path, count=1)
    (masks / "f0.png").unlink()
    mask = np.zeros((60, 80), np.int64)
    mask[5:15, 5:15] = 2 ** 32
    mask[30:40, 30:40] = 7
    np.save(masks / "f0.npy", mask)
    convert(data, masks)
    assert np.array_equal(read_label(data / "label" / "f0.png") == 1, mask > 0)


def test_a_binary_masks_objects_are_its_connected_regions(tmp_path, capsys):
    data, masks = make_data(tmp_path, count=1)
    mask = np.zeros((60, 80), np.uint8)
    mask[5:15, 5:15] = mask[30:40, 30:40] = mask[50:55, 60:70] = 255
    cv2.imwrite(str(masks / "f0.png"), mask)
    convert(data, masks)
    assert "3 objects of class 'cell'" in capsys.readouterr().out


def test_cellpose_masks_in_the_label_folder_are_told_how_to_convert(tmp_path, capsys):
    import gen_img_aug
    data, masks = make_data(tmp_path)
    (data / "label").mkdir()
    for mask in masks.iterdir():
        mask.rename(data / "label" / f"{Path(mask).stem}_masks.tif")
    with pytest.raises(PipelineError, match="f0_masks.tif, f1_masks.tif in it are named as "
                                            "their masks: rename .*--instances"):
        gen_img_aug.main(["--data-dir", str(data), "--work-dir", str(tmp_path / "work")])


def test_an_image_not_segmented_yet_beside_cellpose_masks_is_passed_over(tmp_path, capsys):
    """f2 has no mask yet: named as its frame, it was read as a mask all object."""
    data, masks = make_data(tmp_path, count=3)
    for i in range(3):
        if i < 2:
            (masks / f"f{i}.png").rename(masks / f"f{i}_masks.png")
        shutil.copy(data / "src" / f"f{i}.png", masks / f"f{i}.png")
    convert(data, masks)
    assert "3 images beside the masks" in capsys.readouterr().out
    assert sorted(p.name for p in (data / "label").iterdir()) == ["f0.png", "f1.png"]


def test_an_image_given_as_its_own_mask_is_refused(tmp_path):
    data, masks = make_data(tmp_path, count=1)
    shutil.copy(data / "src" / "f0.png", masks / "f0.png")
    with pytest.raises(PipelineError, match="holds the pixels of its image"):
        convert(data, masks)


def test_a_class_list_full_to_the_ignore_value_takes_no_more(tmp_path):
    classes = ["background", *(f"c{i}" for i in range(1, 255))]
    data, masks = make_data(tmp_path, classes=classes)
    with pytest.raises(PipelineError, match="256 classes do not fit"):
        convert(data, masks, "--instance-class", "new", "--add-unknown-classes")
    assert not (data / "label").exists()


def test_names_with_accents_stored_decomposed_match(tmp_path):
    import unicodedata
    class_name = unicodedata.normalize("NFD", "Zellkörper")
    data, masks = make_data(tmp_path, count=1, classes=("background", class_name))
    decomposed = unicodedata.normalize("NFD", "zelle_ä")
    (data / "src" / "f0.png").rename(data / "src" / f"{decomposed}.png")
    (masks / "f0.png").rename(masks / f"{unicodedata.normalize('NFC', 'zelle_ä')}_masks.png")
    convert(data, masks, "--instance-class", "Zellkörper")
    assert [unicodedata.normalize("NFC", p.name) for p in (data / "label").iterdir()] == \
        ["zelle_ä.png"]


def test_a_class_removed_since_masks_were_converted_is_told_how_to_convert_them_again(
        tmp_path):
    """Labels drawn from instance masks have no shapes to delete and --instances takes no
    --ignore-labels: the advice for LabelMe labels could not be followed."""
    import gen_img_aug
    data, masks = make_data(tmp_path, classes=("background", "cell", "nucleus"))
    convert(data, masks, "--instance-class", "nucleus")
    (data / "classes.txt").write_text("background\ncell\n")
    with pytest.raises(PipelineError, match=r"'nucleus' as class 2, which .* no longer lists .*: "
                                            r"list it again, or convert its masks again with "
                                            r"--instance-class naming a class listed now"):
        gen_img_aug.main(["--data-dir", str(data), "--work-dir", str(tmp_path / "work")])
    convert(data, masks, "--instance-class", "cell")            # the advice, followed
    assert read_label(data / "label" / "f0.png").max() == 1
