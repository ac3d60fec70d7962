"""gen_img_aug.py and pre_processing.py: split, patches, statistics, preprocessing."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import gen_img_aug
import pre_processing
from image_io import picture_digest, read_image, read_label, read_raw_image
from geometry import (dihedral, inverse_dihedral, reflect_pad, resample_label,
                      resample_probabilities, scaled_size)
from patch_preprocessing import dataset_lut, gamma_lut, preprocess_patch
from outputs import LOCK_NAME
from cli import PipelineError

ROOT = Path(__file__).resolve().parents[1]
BBBC030 = ROOT.parent / "shared" / "datasets" / "bbbc030"
NUM_CLASSES = 3


def asymmetric_label(h, w):
    """A label with no rotational or mirror symmetry: an L of class 1, a bar of class 2."""
    lbl = np.zeros((h, w), np.uint8)
    lbl[h // 8:h // 2, w // 8:w // 8 + max(2, w // 10)] = 1
    lbl[h // 2 - max(2, h // 10):h // 2, w // 8:w // 2] = 1
    lbl[3 * h // 4:3 * h // 4 + max(2, h // 12), w // 3:w - 2] = 2
    return lbl


def make_dataset(root, sizes, color=False, seed=0):
    """Images whose pixel values encode the label (value // 80 == class) plus noise."""
    rng = np.random.default_rng(seed)
    (root / "src").mkdir(parents=True)
    (root / "label").mkdir()
    (root / "classes.txt").write_text("background\nbead\ncell\n")
    for i, (h, w) in enumerate(sizes):
        lbl = asymmetric_label(h, w)
        img = (lbl.astype(np.int32) * 80 + rng.integers(0, 60, (h, w))).astype(np.uint8)
        if color:
            img = np.dstack([img, img // 2, 255 - img])
        cv2.imwrite(str(root / "src" / f"im{i:02d}.png"), img)
        cv2.imwrite(str(root / "label" / f"im{i:02d}.png"), lbl)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    sizes = [(120, 90), (97, 151), (64, 64), (50, 200), (130, 70), (80, 80),
             (101, 77), (90, 140), (70, 95), (40, 60), (115, 123)]
    return make_dataset(tmp_path_factory.mktemp("data"), sizes)


def run_aug(data, work, *extra):
    gen_img_aug.main(["--data-dir", str(data), "--work-dir", str(work), "--num-patches", "60",
                      "--patch-size", "64", "--workers", "1", *extra])


def test_dihedral_has_eight_distinct_invertible_transforms():
    a = np.arange(12).reshape(3, 4)
    outs = [dihedral(a, k) for k in range(8)]
    assert len({o.tobytes() + bytes(o.shape) for o in outs}) == 8
    for k, o in enumerate(outs):
        np.testing.assert_array_equal(inverse_dihedral(o, k), a)


def test_split_is_deterministic_and_follows_the_paper(dataset, tmp_path):
    run_aug(dataset, tmp_path / "a")
    run_aug(dataset, tmp_path / "b")
    a = json.loads((tmp_path / "a" / "split.json").read_text())
    b = json.loads((tmp_path / "b" / "split.json").read_text())
    assert a == b
    assert a["patches"] == {"num_patches": 60, "patch_size": 64, "seed": 2018,
                            "foreground_fraction": 0.0}
    from sklearn.model_selection import train_test_split
    names = sorted(p.stem for p in (dataset / "src").glob("*.png"))
    _, expected_test = train_test_split(names, test_size=0.1, random_state=2018)
    assert a["test"] == sorted(expected_test)
    assert sorted(a["train"] + a["test"]) == names
    assert sorted(p.stem for p in (tmp_path / "a" / "test" / "src").iterdir()) == a["test"]
    assert sorted(p.stem for p in (tmp_path / "a" / "test" / "label").iterdir()) == a["test"]


def test_fixed_test_list_is_honoured(dataset, tmp_path):
    data = tmp_path / "data"
    make_dataset(data, [(60, 60)] * 6)
    (data / "test.txt").write_text("im01\nim04\n")
    run_aug(data, tmp_path / "w")
    split = json.loads((tmp_path / "w" / "split.json").read_text())
    assert split["test"] == ["im01", "im04"]
    assert split["train"] == ["im00", "im02", "im03", "im05"]
    patched = {line.split(",")[1] for line in
               (tmp_path / "w" / "train" / "patches.csv").read_text().splitlines()[1:]}
    assert patched <= set(split["train"])


def test_planes_of_a_tiff_stack_are_frames_of_the_data_set(tmp_path):
    """A 16-bit stack in src/ trains and tests plane by plane: labels stack_p<k>.png, a test
    plane copied into the test set as a TIFF of its own with its pixels unchanged."""
    import tifffile
    data = make_dataset(tmp_path / "data", [(60, 60)] * 2)
    labels = np.stack([asymmetric_label(60, 60)] * 3)
    planes = (labels.astype(np.uint16) * 900 + 300 + np.arange(3)[:, None, None] * 40)
    tifffile.imwrite(data / "src" / "stack.tif", planes, photometric="minisblack")
    for k in range(3):
        cv2.imwrite(str(data / "label" / f"stack_p{k}.png"), labels[k])
    (data / "test.txt").write_text("stack_p1\n")
    run_aug(data, tmp_path / "w")
    split = json.loads((tmp_path / "w" / "split.json").read_text())
    assert split["test"] == ["stack_p1"]
    assert split["train"] == ["im00", "im01", "stack_p0", "stack_p2"]
    assert np.array_equal(tifffile.imread(tmp_path / "w" / "test" / "src" / "stack_p1.tif"),
                          planes[1])
    patched = {line.split(",")[1] for line in
               (tmp_path / "w" / "train" / "patches.csv").read_text().splitlines()[1:]}
    assert {"stack_p0", "stack_p2"} <= patched


def test_a_fixed_list_names_files_as_users_write_them(tmp_path, capsys):
    """A stack by its file's name holds out all its planes, a file's name may keep its
    extension (in any case), a frame's own name names that frame alone, and a name typed
    composed finds a file whose name macOS wrote decomposed."""
    import unicodedata
    names = ["im00", unicodedata.normalize("NFD", "zelle_\u00e4"), "x", "st", "y_p0", "y_p1"] + \
        [f"st_p{k}" for k in range(3)]
    stack_of = {"y_p0": "y.tif", "y_p1": "y.tif", **{f"st_p{k}": "st.tif" for k in range(3)}}
    file_of = {"im00": "im00.png", names[1]: f"{names[1]}.png", "x": "x.ome.tif",
               "st": "st.png", **stack_of}
    data = tmp_path / "data"
    data.mkdir()

    def fixed_split(listed):
        (data / "test.txt").write_text("\n".join(listed) + "\n", encoding="utf-8")
        return gen_img_aug.split_names(names, data, 0.25, 0, stack_of, file_of)[1]

    assert fixed_split(["y"]) == ["y_p0", "y_p1"]
    assert fixed_split(["st.TIF"]) == ["st_p0", "st_p1", "st_p2"]
    assert fixed_split(["st"]) == ["st"]            # a frame's own name names that frame alone
    assert fixed_split(["st.tif", "im00.png"]) == ["im00", "st_p0", "st_p1", "st_p2"]
    assert fixed_split(["zelle_\u00e4", "x.ome.tif"]) == ["x", names[1]]
    assert fixed_split(["x"]) == ["x"]
    assert "warning" not in capsys.readouterr().out
    assert fixed_split(["st_p1"]) == ["st_p1"]
    assert "warning: " in capsys.readouterr().out.replace("\n", " ")
    with pytest.raises(PipelineError, match=r"lists images not in src/: y\.png \(list a file's"):
        fixed_split(["y.png"])


def test_random_split_keeps_the_planes_of_a_stack_together():
    names = ["a", "b", "c", "d"] + [f"z_p{k}" for k in range(4)]
    stack_of = {f"z_p{k}": "z.tif" for k in range(4)}
    for seed in range(8):
        train, test, how = gen_img_aug.split_names(names, "/nonexistent", 0.4, seed, stack_of)
        assert sorted(train + test) == names and "kept together" in how
        assert all(f"z_p{k}" in test for k in range(4)) or \
            not any(n.startswith("z_") for n in test), (seed, test)
    # without stacks, the paper's split of the frames themselves, unchanged
    from sklearn.model_selection import train_test_split
    train, test = train_test_split(names, test_size=0.25, random_state=2018)
    assert gen_img_aug.split_names(names, "/nonexistent", 0.25, 2018)[:2] == \
        (sorted(train), sorted(test))


def test_patches_have_valid_labels_and_stay_aligned(dataset, tmp_path):
    run_aug(dataset, tmp_path / "w", "--num-patches", "200")
    src = sorted((tmp_path / "w" / "train" / "src").glob("*.png"))
    assert len(src) == 200
    transforms = set()
    for line in (tmp_path / "w" / "train" / "patches.csv").read_text().splitlines()[1:]:
        transforms.add(int(line.split(",")[4]))
    assert transforms == set(range(8))
    for path in src:
        img = read_image(path)
        lbl = read_label(tmp_path / "w" / "train" / "label" / path.name)
        assert img.shape == lbl.shape == (64, 64)
        assert lbl.max() < NUM_CLASSES
        np.testing.assert_array_equal(img // 80, lbl)


def check_recorded_crops(data, work, size, scale=1.0):
    """Every patch is the crop patches.csv records, of the reflect-padded frame (resampled by
    scale)."""
    for row in (work / "train" / "patches.csv").read_text().splitlines()[1:]:
        name, image, y, x, k = row.split(",")
        y, x, k = int(y), int(x), int(k)
        full = read_label(data / "label" / f"{image}.png")
        full = resample_label(full, scaled_size(full.shape, scale))
        full = np.pad(full, [(0, max(0, size - full.shape[0])),
                             (0, max(0, size - full.shape[1]))], mode="symmetric")
        expected = dihedral(full[y:y + size, x:x + size], k)
        np.testing.assert_array_equal(read_label(work / "train" / "label" / name), expected)


def test_patch_matches_its_recorded_crop(dataset, tmp_path):
    run_aug(dataset, tmp_path / "w")
    check_recorded_crops(dataset, tmp_path / "w", 64)


def test_orientations_none_keeps_the_microscopes_view_of_the_same_crops(dataset, tmp_path):
    run_aug(dataset, tmp_path / "turned")
    run_aug(dataset, tmp_path / "kept", "--orientations", "none")
    turned = (tmp_path / "turned" / "train" / "patches.csv").read_text().splitlines()
    kept = (tmp_path / "kept" / "train" / "patches.csv").read_text().splitlines()
    assert {row.rsplit(",", 1)[1] for row in kept[1:]} == {"0"}
    assert len({row.rsplit(",", 1)[1] for row in turned[1:]}) > 4
    # The same crops, only left unturned.
    assert [row.rsplit(",", 1)[0] for row in kept] == [row.rsplit(",", 1)[0] for row in turned]
    check_recorded_crops(dataset, tmp_path / "kept", 64)
    assert json.loads((tmp_path / "kept" / "split.json").read_text())["orientations"] == "none"
    assert json.loads((tmp_path / "turned" / "split.json").read_text())["orientations"] == "all"


def test_scaled_patches_are_crops_of_the_resampled_frames(dataset, tmp_path):
    run_aug(dataset, tmp_path / "w", "--scale", "0.8")
    check_recorded_crops(dataset, tmp_path / "w", 64, scale=0.8)
    assert json.loads((tmp_path / "w" / "split.json").read_text())["scale"] == 0.8
    # The image patches are resampled alike: the values still encode the label.
    for path in sorted((tmp_path / "w" / "train" / "src").glob("*.png"))[:20]:
        lbl = read_label(tmp_path / "w" / "train" / "label" / path.name)
        agree = (read_image(path) // 80 == lbl).mean()
        assert agree > 0.85, (path.name, agree)
    # Test frames are kept at their own size: prediction scores there.
    for path in (tmp_path / "w" / "test" / "src").glob("*.png"):
        assert read_image(path).shape == read_image(dataset / "src" / path.name).shape
    run_aug(dataset, tmp_path / "full")
    assert json.loads((tmp_path / "full" / "split.json").read_text())["scale"] == 1.0


def test_label_resampling_votes_by_area_and_makes_up_no_value():
    label = np.zeros((6, 8), np.uint8)
    label[0:2, 0:2] = [[1, 1], [1, 0]]          # 3 of 4 -> 1
    label[0:2, 2:4] = [[2, 2], [255, 255]]      # a tie goes to the lower value
    label[2:4, 0:4] = 255                       # ignored stays ignored
    label[4:6, 4:8] = [[1, 2, 0, 0], [2, 2, 0, 1]]
    small = resample_label(label, (3, 4))
    np.testing.assert_array_equal(small, [[1, 2, 0, 0], [255, 255, 0, 0], [0, 0, 2, 0]])
    assert set(np.unique(resample_label(label, (5, 7)))) <= {0, 1, 2, 255}
    # Growing repeats pixels; the same size is the same array.
    np.testing.assert_array_equal(resample_label(label, (12, 16))[::2, ::2], label)
    assert resample_label(label, label.shape) is label


def test_probabilities_come_back_to_the_frame_with_the_boundary_between_coarse_pixels():
    coarse = np.zeros((4, 4, 2), np.float32)
    coarse[:, :2, 1] = 1.0
    coarse[..., 0] = 1.0 - coarse[..., 1]
    fine = resample_probabilities(coarse, (8, 8))
    assert fine.shape == (8, 8, 2)
    np.testing.assert_allclose(fine.sum(axis=-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(fine.argmax(axis=-1)[0], [1, 1, 1, 1, 0, 0, 0, 0])


def disc_frames(root, look, angle=0.6, count=4):
    """Frames of random discs, either bright ('stain') or as DIC relief along `angle`."""
    rng = np.random.default_rng(4)
    (root / "src").mkdir(parents=True)
    (root / "label").mkdir()
    (root / "classes.txt").write_text("background\ncell\n")
    for i in range(count):
        lbl = np.zeros((120, 160), np.uint8)
        for _ in range(5):
            cv2.circle(lbl, (int(rng.integers(20, 140)), int(rng.integers(20, 100))),
                       int(rng.integers(8, 16)), 1, -1)
        phase = cv2.GaussianBlur(lbl.astype(np.float32), (0, 0), 1.5)
        gy, gx = np.gradient(phase)
        signal = (np.cos(angle) * gx + np.sin(angle) * gy) * 300 if look == "dic" else phase * 80
        img = np.clip(110 + signal + rng.normal(0, 4, lbl.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "src" / f"f{i}.png"), img)
        cv2.imwrite(str(root / "label" / f"f{i}.png"), lbl)
    return root


@pytest.mark.parametrize("angle", [0.0, 0.9, 2.5, -2.0])
def test_edge_relief_tells_dic_from_stained_objects(tmp_path, angle):
    for look in ("dic", "stain"):
        data = disc_frames(tmp_path / f"{look}", look, angle)
        sums = [gen_img_aug.edge_sums(cv2.imread(str(p), 0), cv2.imread(str(p).replace(
            "src", "label"), 0)) for p in sorted((data / "src").glob("*.png"))]
        relief = gen_img_aug.edge_relief(sums)
        if look == "dic":
            assert relief > 0.6
            # The axis of the shear, whichever way along it the light falls.
            assert gen_img_aug.relief_angle(sums) == \
                pytest.approx(np.degrees(angle) % 180, abs=3)
        else:
            assert relief < 0.05
    assert gen_img_aug.edge_relief([]) == 0.0


@pytest.mark.parametrize("look, angle, chosen, expected, transforms, warned", [
    ("dic", 0.8, "auto", "none", {"0"}, False),
    ("stain", 0.8, "auto", "all", {str(k) for k in range(8)}, False),
    ("dic", 0.8, "transpose", "transpose", {"0", "7"}, False),      # relief along 46 degrees
    ("dic", -0.05, "flip-rows", "flip-rows", {"0", "6"}, False),    # along 177 degrees
    ("dic", 0.8, "flip-rows", "flip-rows", {"0", "6"}, True),       # 46 degrees off its axis
    ("stain", 0.8, "flip-columns", "flip-columns", {"0", "4"}, False),
    ("dic", 2.5, "rotate-invert", "rotate-invert", {"0", "10"}, False),    # any axis
    ("stain", 0.8, "rotate-invert", "rotate-invert", {"0", "10"}, True)])  # no relief
def test_orientations_follow_the_images_relief(tmp_path, capsys, look, angle, chosen, expected,
                                               transforms, warned):
    data = disc_frames(tmp_path / look, look, angle)
    run_aug(data, tmp_path / "w", "--test-size", "0.25", "--orientations", chosen)
    split = json.loads((tmp_path / "w" / "split.json").read_text())
    assert split["orientations"] == expected
    assert ("no microscope makes" in capsys.readouterr().out) is warned
    assert {row.rsplit(",", 1)[1] for row in (tmp_path / "w" / "train" /
            "patches.csv").read_text().splitlines()[1:]} == transforms
    check_recorded_crops(data, tmp_path / "w", 64)


def test_rotate_invert_patches_show_the_microscopes_relief(tmp_path):
    """Half the patches are their crop turned by 180 degrees with inverted intensities, and
    all of them together show relief along the frames' axis and of the frames' sign, where
    plainly half-turned patches would cancel it."""
    data = disc_frames(tmp_path / "dic", "dic", 2.5, count=6)
    run_aug(data, tmp_path / "w", "--test-size", "0.25", "--orientations", "rotate-invert")
    work = tmp_path / "w"
    check_recorded_crops(data, work, 64)
    kept, turned = [], []
    for row in (work / "train" / "patches.csv").read_text().splitlines()[1:]:
        name, image, y, x, k = row.split(",")
        crop = read_image(data / "src" / f"{image}.png")[int(y):int(y) + 64, int(x):int(x) + 64]
        patch = read_image(work / "train" / "src" / name)
        lbl = read_label(work / "train" / "label" / name)
        if k == "10":
            np.testing.assert_array_equal(patch, np.rot90(255 - crop, 2))
            turned.append(gen_img_aug.edge_sums(patch, lbl))
        else:
            np.testing.assert_array_equal(patch, crop)
            kept.append(gen_img_aug.edge_sums(patch, lbl))
    assert len(kept) > 10 and len(turned) > 10
    for sums in (kept, turned):
        assert gen_img_aug.edge_relief(sums) > 0.5
        # Measured on patches cut across objects, the axis is rougher than on whole frames.
        assert gen_img_aug.relief_angle(sums) == pytest.approx(np.degrees(2.5), abs=12)
    assert gen_img_aug.relief_angle(turned) == pytest.approx(gen_img_aug.relief_angle(kept),
                                                             abs=5)
    # The relief vector itself keeps its sign: the light still falls from the same side.
    assert np.dot(np.sum(kept, axis=0)[:2], np.sum(turned, axis=0)[:2]) > 0


def test_large_frames_are_measured_shrunk_alike(tmp_path):
    data = disc_frames(tmp_path, "dic")
    img, lbl = cv2.imread(str(data / "src/f0.png"), 0), cv2.imread(str(data / "label/f0.png"), 0)
    full = gen_img_aug.edge_sums(img, lbl)
    assert gen_img_aug.edge_relief([gen_img_aug.edge_sums(img, lbl, max_pixels=5000)]) == \
        pytest.approx(gen_img_aug.edge_relief([full]), abs=0.1)


@pytest.mark.parametrize("foreground_fraction", ["0", "0.5"])
def test_same_patches_for_one_and_two_workers(dataset, tmp_path, foreground_fraction):
    outs = []
    for workers in (1, 2):
        work = tmp_path / f"w{workers}"
        subprocess.run([sys.executable, str(ROOT / "gen_img_aug.py"), "--data-dir", str(dataset),
                        "--work-dir", str(work), "--num-patches", "450", "--patch-size", "32",
                        "--workers", str(workers), "--foreground-fraction", foreground_fraction],
                       check=True, cwd=ROOT, capture_output=True)
        files = sorted((work / "train").rglob("*.png"))
        outs.append({p.relative_to(work): p.read_bytes() for p in files})
    assert len(outs[0]) == 900
    assert outs[0] == outs[1]


def sparse_dataset(root):
    """Frames with one 6x6 object each, which uniform 64 px crops mostly miss; the last is
    narrower than a patch, so its crops come from a padded frame."""
    (root / "src").mkdir(parents=True)
    (root / "label").mkdir()
    (root / "classes.txt").write_text("background\nbead\ncell\n")
    for i, (h, w, y, x, c) in enumerate([(200, 200, 20, 150, 1), (200, 200, 170, 30, 2),
                                         (300, 30, 280, 22, 1)]):
        lbl = np.zeros((h, w), np.uint8)
        lbl[y:y + 6, x:x + 6] = c
        cv2.imwrite(str(root / "src" / f"im{i}.png"), lbl * 80)
        cv2.imwrite(str(root / "label" / f"im{i}.png"), lbl)
    (root / "test.txt").write_text("")
    return root


def paper_patch_params(seed, index, shapes, patch_size):
    """The paper's uniform sampling as first written here, to pin --foreground-fraction 0."""
    rng = np.random.default_rng([seed, index])
    image = int(rng.integers(len(shapes)))
    h, w = (max(s, patch_size) for s in shapes[image])
    return (image, int(rng.integers(h - patch_size + 1)), int(rng.integers(w - patch_size + 1)),
            int(rng.integers(8)))


def foreground_share(work):
    labels = [read_label(p) for p in sorted((work / "train" / "label").glob("*.png"))]
    return np.mean([lbl.any() for lbl in labels]), labels


def test_foreground_fraction_puts_objects_in_patches(tmp_path):
    data = sparse_dataset(tmp_path / "data")
    run_aug(data, tmp_path / "uniform", "--num-patches", "200")
    run_aug(data, tmp_path / "zero", "--num-patches", "200", "--foreground-fraction", "0")
    run_aug(data, tmp_path / "all", "--num-patches", "200", "--foreground-fraction", "1")
    run_aug(data, tmp_path / "half", "--num-patches", "200", "--foreground-fraction", "0.5")
    uniform, _ = foreground_share(tmp_path / "uniform")
    assert uniform < 0.3
    # 0 is the paper's sampling, patch for patch.
    assert ((tmp_path / "zero" / "train" / "patches.csv").read_text()
            == (tmp_path / "uniform" / "train" / "patches.csv").read_text())
    split = json.loads((tmp_path / "zero" / "split.json").read_text())
    shapes = [read_label(data / "label" / f"{n}.png").shape for n in split["train"]]
    rows = (tmp_path / "zero" / "train" / "patches.csv").read_text().splitlines()[1:]
    for index, row in enumerate(rows):
        _, image, y, x, k = row.split(",")
        expected = paper_patch_params(2018, index, shapes, 64)
        assert (split["train"].index(image), int(y), int(x), int(k)) == expected
    share, labels = foreground_share(tmp_path / "all")
    assert share == 1.0
    check_recorded_crops(data, tmp_path / "all", 64)
    # The object lands anywhere in the crop, not always at one spot.
    positions = {tuple(np.argwhere(lbl)[0] // 12) for lbl in labels}
    assert len(positions) >= 8
    half, _ = foreground_share(tmp_path / "half")
    assert 0.45 < half < 0.8


def test_rerun_replaces_old_patches(dataset, tmp_path):
    run_aug(dataset, tmp_path / "w", "--num-patches", "30")
    run_aug(dataset, tmp_path / "w", "--num-patches", "10")
    assert len(list((tmp_path / "w" / "train" / "src").iterdir())) == 10
    # no staging leftovers; the lock file stays (removing it would let two runs lock apart)
    assert not [p for p in tmp_path.joinpath("w").iterdir()
                if p.name.startswith(".") and p.name != LOCK_NAME]


def test_rerun_keeps_earlier_predictions_and_refuses_to_replace_a_users_files(tmp_path):
    data = make_dataset(tmp_path / "data", [(60, 60)] * 6)
    work = tmp_path / "w"
    (data / "test.txt").write_text("im01\nim04\n")
    run_aug(data, work)
    for kept in ("predict/im01.png", "contours/objects.csv", "my_notes.txt"):
        (work / "test" / kept).parent.mkdir(parents=True, exist_ok=True)
        (work / "test" / kept).write_text("earlier result")
    (data / "test.txt").write_text("im02\n")
    run_aug(data, work)
    assert sorted(p.name for p in (work / "test" / "src").iterdir()) == ["im02.png"]
    assert sorted(p.name for p in (work / "test" / "label").iterdir()) == ["im02.png"]
    for kept in ("predict/im01.png", "contours/objects.csv", "my_notes.txt"):
        assert (work / "test" / kept).read_text() == "earlier result"
    # train/ is replaced whole (pre_processing's prep/ goes with the old patches): a file of
    # the user's there is refused before anything changes
    (work / "train" / "my_list.txt").write_text("mine")
    before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
    with pytest.raises(PipelineError, match=r"train holds files the pipeline does not write "
                                            r"\(my_list\.txt\)"):
        run_aug(data, work, "--num-patches", "10")
    assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before


def test_a_users_images_in_test_src_are_refused_before_anything_changes(tmp_path):
    data = make_dataset(tmp_path / "data", [(60, 60)] * 6)
    work = tmp_path / "w"
    (data / "test.txt").write_text("im01\nim04\n")
    run_aug(data, work)
    (data / "src" / "im04.png").unlink()        # a frame of the last split, since removed
    (data / "label" / "im04.png").unlink()
    (data / "test.txt").write_text("im02\n")
    run_aug(data, work)
    assert sorted(p.name for p in (work / "test" / "src").iterdir()) == ["im02.png"]
    # a run stopped after removing the split files, then a frame removed from the data: the
    # test copies are still known as the pipeline's by their labels beside them
    for name in ("split.json", "train.txt", "test.txt"):
        (work / name).unlink()
    (data / "src" / "im02.png").unlink()
    (data / "label" / "im02.png").unlink()
    (data / "test.txt").write_text("im03\n")
    run_aug(data, work)
    assert sorted(p.name for p in (work / "test" / "src").iterdir()) == ["im03.png"]
    for sub, mine in (("src", "my_slide.png"), ("label", "my_slide.png"), ("src", "notes.txt"),
                      ("src", "im03.json")):     # LabelMe's file beside an image it opened
        (work / "test" / sub / mine).write_text("mine")
        before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
        with pytest.raises(PipelineError, match=rf"test.{sub} holds files the pipeline does not "
                                                rf"write \({mine.replace('.', '[.]')}\)"):
            run_aug(data, work, "--num-patches", "10")
        assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before
        (work / "test" / sub / mine).unlink()


def test_training_images_without_objects_are_refused_and_a_class_they_lack_warned(tmp_path,
                                                                                   capsys):
    data = make_dataset(tmp_path / "data", [(60, 60)] * 4)
    for i in (1, 2, 3):
        cv2.imwrite(str(data / "label" / f"im{i:02d}.png"), np.zeros((60, 60), np.uint8))
    (data / "test.txt").write_text("im00\n")
    with pytest.raises(PipelineError, match="none of the 3 training images holds an object"):
        run_aug(data, tmp_path / "w")
    assert not (tmp_path / "w").exists()
    lbl = np.zeros((60, 60), np.uint8)
    lbl[10:30, 10:30] = 1
    cv2.imwrite(str(data / "label" / "im01.png"), lbl)
    run_aug(data, tmp_path / "w")
    assert "no training image holds class(es) cell (2)" in capsys.readouterr().out


def test_a_label_whose_image_is_of_a_format_not_read_is_named_in_a_warning(tmp_path, capsys):
    from PIL import Image
    data = make_dataset(tmp_path / "data", [(60, 60)] * 5)
    Image.open(data / "src" / "im00.png").save(data / "src" / "im00.gif")
    (data / "src" / "im00.png").unlink()
    run_aug(data, tmp_path / "w")
    out = capsys.readouterr().out
    assert "1 label in" in out and "matches no image" in out and "is left out: im00.png; their images im00.gif are of a " \
        "format not read" in out
    assert "4 labelled images" in out


def test_a_hidden_image_and_its_label_are_named_in_a_note_not_left_out_unsaid(tmp_path,
                                                                             capsys):
    data = make_dataset(tmp_path / "data", [(60, 60)] * 5)
    for sub in ("src", "label"):
        (data / sub / "im00.png").rename(data / sub / ".im00.png")
    shutil.copy(data / "src" / "im01.png", data / "src" / "._im01.png")     # macOS's own
    run_aug(data, tmp_path / "w")
    out = capsys.readouterr().out
    assert "note: 1 hidden image file in" in out and "is skipped" in out and ": .im00.png; rename them" in out
    assert "._im01" not in out and "4 labelled images" in out


def test_names_with_dollar_signs_are_drawn_as_text_not_formulas(tmp_path):
    data = make_dataset(tmp_path / "data", [(60, 60)])
    name = "x$_$1"
    table = {name: (data / "src" / "im00.png", data / "label" / "im00.png", (60, 60))}
    gen_img_aug.plot_samples(table, [name], ["background", "CD4$^$", "cell"],
                             tmp_path / "samples.png")
    assert (tmp_path / "samples.png").stat().st_size > 0


@pytest.mark.parametrize("data_sub", [".", "test", "train/x"])
def test_a_work_folder_that_is_or_holds_the_data_folder_is_refused(tmp_path, data_sub):
    work = tmp_path / "w"
    data = make_dataset(work / data_sub, [(60, 60)] * 6)
    with pytest.raises(PipelineError, match="is or holds the --data-dir folder"):
        run_aug(data, work)
    assert not (data / "test.txt").exists() and not (work / "split.json").exists()


def test_a_reader_that_stops_reading_does_not_stop_the_work(tmp_path):
    """`gen_img_aug.py ... | head -1`: once the pipe's reader is gone the rest of the output
    is dropped, and the run finishes without a traceback."""
    data = make_dataset(tmp_path / "data", [(60, 60)] * 6)
    proc = subprocess.Popen([sys.executable, str(ROOT / "gen_img_aug.py"), "--data-dir",
                             str(data), "--work-dir", str(tmp_path / "w"), "--num-patches", "20",
                             "--patch-size", "64", "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()         # before the script's first line: every write finds no reader
    err = proc.stderr.read().decode()
    assert proc.wait() == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert (tmp_path / "w" / "split.json").is_file()


def test_a_closed_output_is_no_reason_to_stop(tmp_path):
    """script >&- (a scheduler that gives no output): Python's sys.stdout is None, and
    print() writes nothing."""
    data = make_dataset(tmp_path / "data", [(60, 60)] * 6)
    proc = subprocess.run(f'"{sys.executable}" "{ROOT / "gen_img_aug.py"}" --data-dir "{data}" '
                          f'--work-dir "{tmp_path / "w"}" --num-patches 20 --patch-size 64 '
                          "--workers 1 >&-", shell=True, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "w" / "split.json").is_file()


def test_output_streams_are_wrapped_once_and_one_without_a_descriptor_is_replaced(capsys):
    import io
    import cli
    seen = []
    for _ in range(2):
        cli.run_cli(lambda: seen.append(sys.stdout) or print("kept"))
    assert seen[0] is seen[1] and isinstance(seen[0], cli.ReaderGoneProof)
    assert capsys.readouterr().out == "kept\nkept\n"

    class GoneReader(io.StringIO):          # a reader gone, and no descriptor to redirect
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")
    stream = cli.ReaderGoneProof(GoneReader())
    for text in ("dropped", "dropped too"):
        assert stream.write(text) == len(text)
    stream.flush()


def test_missing_label_is_a_clear_error(tmp_path):
    data = make_dataset(tmp_path / "data", [(40, 40)] * 3)
    (data / "label" / "im01.png").unlink()
    proc = subprocess.run([sys.executable, str(ROOT / "gen_img_aug.py"), "--data-dir", str(data),
                           "--work-dir", str(tmp_path / "w")], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "im01" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("color_mode", ["grey", "rgb"])
def test_streamed_statistics_equal_numpy(tmp_path, color_mode):
    data = make_dataset(tmp_path / "data", [(70, 90), (64, 64), (80, 50), (90, 90)], color=True)
    run_aug(data, tmp_path / "w", "--num-patches", "250", "--patch-size", "32")
    pre_processing.main(["--work-dir", str(tmp_path / "w"), "--color-mode", color_mode,
                         "--workers", "1"])
    stats = json.loads((tmp_path / "w" / "train_mean_std.json").read_text())
    patches = [read_image(p) for p in sorted((tmp_path / "w" / "train" / "src").glob("*.png"))]
    if color_mode == "grey":
        pixels = np.concatenate([cv2.cvtColor(p, cv2.COLOR_RGB2GRAY).ravel() for p in patches])
        pixels = pixels[:, None]
    else:
        pixels = np.concatenate([p.reshape(-1, 3) for p in patches])
    np.testing.assert_allclose(stats["mean"], pixels.mean(axis=0, dtype=np.float64), atol=1e-6)
    np.testing.assert_allclose(stats["std"], pixels.std(axis=0, dtype=np.float64), atol=1e-6)
    saved = np.load(tmp_path / "w" / "train_mean_std.npy")
    np.testing.assert_allclose(saved.reshape(2, -1), [stats["mean"], stats["std"]])
    prep = sorted((tmp_path / "w" / "train" / "prep").glob("*.png"))
    assert len(prep) == 250
    first = read_image(prep[0])
    assert first.shape == ((32, 32) if color_mode == "grey" else (32, 32, 3))


def test_preprocessing_matches_the_paper_steps():
    rng = np.random.default_rng(1)
    patch = rng.integers(30, 200, (64, 64)).astype(np.uint8)
    mean, std = 100.0, 20.0
    z = (patch - mean) / std
    scaled = np.rint((z - z.min()) / (z.max() - z.min()) * 255).astype(np.uint8)
    eq = cv2.equalizeHist(scaled)
    expected = np.clip(np.rint(255 * (eq / 255.0) ** (1 / 1.2)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(preprocess_patch(patch, mean, std), expected)


def test_preprocessing_of_constant_patch_is_valid():
    for patch in (np.full((32, 32), 77, np.uint8), np.zeros((16, 16, 3), np.uint8)):
        out = preprocess_patch(patch, [120.0], [0.0])
        assert out.dtype == np.uint8 and out.shape == patch.shape
        assert not np.isnan(out.astype(np.float64)).any()


def test_rgb_preprocessing_equalizes_each_channel():
    rng = np.random.default_rng(2)
    patch = np.dstack([rng.integers(0, 50, (32, 32)), rng.integers(100, 250, (32, 32)),
                       rng.integers(0, 255, (32, 32))]).astype(np.uint8)
    out = preprocess_patch(patch, [25, 175, 127], [14, 43, 73])
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], preprocess_patch(patch[:, :, c], 0, 1))


def test_dataset_equalization_of_one_image_is_opencvs_then_gamma():
    rng = np.random.default_rng(4)
    img = rng.integers(40, 200, (48, 64)).astype(np.uint8)
    lut = dataset_lut(np.bincount(img.ravel(), minlength=256)[None], 1.2)
    np.testing.assert_array_equal(lut[0][img], cv2.LUT(cv2.equalizeHist(img), gamma_lut(1.2)))
    assert not lut[0][:40].any() and (lut[0][199:] == 255).all()
    assert (np.diff(lut[0].astype(int)) >= 0).all()


def test_dataset_equalization_does_not_depend_on_the_rest_of_the_tile():
    """The per-patch rule stretches a faint tile to full contrast; one table does not, so a
    crop of the preprocessed frame is the preprocessed crop, wherever the tile lies."""
    rng = np.random.default_rng(5)
    frame = rng.integers(90, 110, (64, 64)).astype(np.uint8)
    frame[8:24, 8:24] = rng.integers(20, 240, (16, 16))
    lut = dataset_lut(np.bincount(frame.ravel(), minlength=256)[None])
    whole = preprocess_patch(frame, 100, 10, lut=lut)
    faint = frame[32:, 32:]
    np.testing.assert_array_equal(preprocess_patch(faint, 100, 10, lut=lut), whole[32:, 32:])
    assert np.ptp(whole[32:, 32:]) < np.ptp(preprocess_patch(faint, 100, 10))


@pytest.mark.parametrize("how", [["--equalize", "dataset"], []], ids=["asked", "auto"])
def test_dataset_equalization_is_recorded_and_applied_per_channel(tmp_path, how):
    data = make_dataset(tmp_path / "data", [(70, 90), (64, 64), (80, 50)], color=True)
    work = tmp_path / "w"
    run_aug(data, work, "--num-patches", "30", "--patch-size", "32")
    pre_processing.main(["--work-dir", str(work), "--color-mode", "rgb", *how, "--workers", "1"])
    stats = json.loads((work / "train_mean_std.json").read_text())
    assert stats["equalize"] == "dataset" and np.asarray(stats["histogram"]).shape == (3, 256)
    assert sum(stats["histogram"][0]) == 30 * 32 * 32
    lut = dataset_lut(stats["histogram"], stats["gamma"])
    for src in sorted((work / "train" / "src").glob("*.png"))[:5]:
        patch, prep = read_image(src), read_image(work / "train" / "prep" / src.name)
        for c in range(3):
            np.testing.assert_array_equal(prep[:, :, c], lut[c][patch[:, :, c]])


def test_grey_patches_keep_the_papers_rule_by_default(tmp_path):
    """auto leaves grey images to the per-patch rule: the same patches, byte for byte."""
    data = make_dataset(tmp_path / "data", [(70, 90), (64, 64), (80, 50)])
    work = tmp_path / "w"
    run_aug(data, work, "--num-patches", "20", "--patch-size", "32")
    pre_processing.main(["--work-dir", str(work), "--workers", "1"])
    stats = json.loads((work / "train_mean_std.json").read_text())
    assert stats["equalize"] == "patch" and "histogram" not in stats
    for src in sorted((work / "train" / "src").glob("*.png")):
        expected = preprocess_patch(read_image(src), stats["mean"], stats["std"], stats["gamma"])
        np.testing.assert_array_equal(read_image(work / "train" / "prep" / src.name), expected)


@pytest.mark.skipif(not BBBC030.is_dir(), reason="../shared/datasets/bbbc030 not present")
def test_bbbc030_split_and_patches(tmp_path):
    work = tmp_path / "w"
    gen_img_aug.main(["--data-dir", str(BBBC030), "--work-dir", str(work),
                      "--num-patches", "2000", "--workers", "2"])
    listed = sorted((BBBC030 / "test.txt").read_text().split())
    assert len(listed) == 20
    assert sorted(p.stem for p in (work / "test" / "src").iterdir()) == listed
    labels = sorted((work / "train" / "label").glob("*.png"))
    assert len(labels) == 2000
    for path in labels[::50]:
        lbl = read_label(path)
        assert lbl.shape == (256, 256) and lbl.max() <= 1


@pytest.mark.parametrize("equalize", ["patch", "dataset"])
@pytest.mark.parametrize("color_mode", ["grey", "rgb"])
def test_prediction_prepares_a_tile_as_training_decodes_its_patch(tmp_path, color_mode,
                                                                   equalize):
    """The network gets the same numbers, channels in the same order, for a training patch as
    tf.data decodes it and for the same crop of the image as prediction prepares it."""
    import predict_lovasz_loss
    import train_unet_xception_resnetblock as train
    data = make_dataset(tmp_path / "data", [(90, 120), (80, 100), (70, 70), (64, 90)],
                        color=True)
    work = tmp_path / "w"
    run_aug(data, work, "--num-patches", "16")
    pre_processing.main(["--work-dir", str(work), "--workers", "1", "--color-mode", color_mode,
                         "--equalize", equalize])
    prepare = predict_lovasz_loss.TilePreparer(
        json.loads((work / "train_mean_std.json").read_text()))
    rows = [row.split(",") for row in (work / "train" / "patches.csv").read_text().split()[1:]]
    decoded = next(iter(train.patch_dataset(work, [row[0] for row in rows],
                                            3 if color_mode == "rgb" else 1, len(rows))))[0]
    for (_, image, y, x, k), patch in zip(rows, np.asarray(decoded)):
        frame = predict_lovasz_loss.model_image(data / "src" / f"{image}.png", color_mode)
        frame = reflect_pad(frame, 64, 64)
        tile = dihedral(frame[int(y):int(y) + 64, int(x):int(x) + 64], int(k))
        np.testing.assert_array_equal(prepare(tile), patch)
        if color_mode == "rgb":    # so that a swap of channels would show
            assert not np.array_equal(patch[..., 0], patch[..., 2])


def test_frames_one_pixel_high_or_wide_are_patched_like_any_other(tmp_path):
    data = make_dataset(tmp_path / "data", [(64, 64), (1, 64), (64, 1), (1, 1), (50, 60)])
    run_aug(data, tmp_path / "w")
    assert len(list((tmp_path / "w" / "train" / "src").iterdir())) == 60
    assert gen_img_aug.edge_sums(np.zeros((1, 40), np.uint8), np.ones((1, 40), np.uint8)) == [
        0.0, 0.0, 0.0]


def test_two_frames_of_the_same_pixels_across_the_split_are_refused(tmp_path, capsys):
    """A copy or a link on the other side of the split: a test frame trained on."""
    data = make_dataset(tmp_path / "data", [(60, 60)] * 4)
    (data / "src" / "link.png").symlink_to("im01.png")
    (data / "label" / "link.png").symlink_to("im01.png")
    (data / "test.txt").write_text("link\n")
    with pytest.raises(PipelineError, match=r"link.png \(test\) and im01.png \(train\) hold the "
                                            r"same picture"):
        run_aug(data, tmp_path / "w")
    assert not (tmp_path / "w").exists()
    (data / "test.txt").write_text("im00\n")          # both train: noted
    for name in ("blank1", "blank2"):                 # blank frames may repeat
        cv2.imwrite(str(data / "src" / f"{name}.png"), np.full((60, 60), 7, np.uint8))
        cv2.imwrite(str(data / "label" / f"{name}.png"), np.zeros((60, 60), np.uint8))
    run_aug(data, tmp_path / "w")
    assert "note: frames of the same picture, a copy, a link or one saved again (im01.png = " \
        "link.png)" in \
        capsys.readouterr().out


def test_the_training_frames_are_recorded_by_their_images_pixels(tmp_path):
    """For prediction to know a frame the model trained on whatever its name: the digest of
    the image alone, of the training frames but blank ones (which may well repeat)."""
    data = make_dataset(tmp_path / "data", [(60, 60)] * 4)
    cv2.imwrite(str(data / "src" / "blank.png"), np.full((60, 60), 7, np.uint8))
    cv2.imwrite(str(data / "label" / "blank.png"), np.zeros((60, 60), np.uint8))
    (data / "test.txt").write_text("im03\n")
    run_aug(data, tmp_path / "w")
    recorded = json.loads((tmp_path / "w" / "split.json").read_text())["image_digests"]
    assert recorded == {name: picture_digest(read_raw_image(data / "src" / f"{name}.png"))
                        for name in ("im00", "im01", "im02")}


def test_a_training_frame_saved_again_as_rgb_is_refused_as_a_test_frame(tmp_path):
    """Grey saved as three equal channels is the same picture: its stored pixels differed."""
    data = make_dataset(tmp_path / "data", [(60, 60)] * 4)
    frame = cv2.imread(str(data / "src" / "im01.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(data / "src" / "copy.png"), np.dstack([frame] * 3))
    shutil.copy(data / "label" / "im01.png", data / "label" / "copy.png")
    (data / "test.txt").write_text("copy\n")
    with pytest.raises(PipelineError, match=r"copy.png \(test\) and im01.png \(train\) hold the "
                                            r"same picture"):
        run_aug(data, tmp_path / "w")


@pytest.mark.parametrize("orientation, stored_label, refused", [
    (6, True, True), (3, True, True), (6, False, False), (3, False, False)])
def test_a_label_drawn_on_a_turned_squares_stored_pixels_is_refused(tmp_path, orientation,
                                                                    stored_label, refused):
    """Fiji and napari ignore EXIF: a label drawn there on a square frame has the size of the
    frame as shown, so only where its objects' edges lie can tell."""
    from PIL import Image
    from image_io import DIHEDRAL_OF_ORIENTATION
    turn = DIHEDRAL_OF_ORIENTATION[orientation]
    data = make_dataset(tmp_path / "data", [(96, 96)] * 3)
    for name in ("im00", "im01", "im02"):
        shown = cv2.imread(str(data / "src" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        img = Image.fromarray(inverse_dihedral(shown, turn))
        exif = img.getexif()
        exif[0x0112] = orientation
        img.save(data / "src" / f"{name}.png", exif=exif.tobytes())
        if stored_label:
            label = cv2.imread(str(data / "label" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(data / "label" / f"{name}.png"), inverse_dihedral(label, turn))
    if refused:
        with pytest.raises(PipelineError, match=r"line up with their image's stored pixels"):
            run_aug(data, tmp_path / "w")
    else:
        run_aug(data, tmp_path / "w")


@pytest.mark.parametrize("grey", ["train", "test"])
def test_a_grey_frame_for_a_colour_model_is_refused_before_training(tmp_path, grey):
    """Training took a grey frame as grey in three channels; prediction of a colour model
    refuses grey frames, so the dead end showed only after the training."""
    data = make_dataset(tmp_path / "data", [(64, 64)] * 4, color=True)
    (data / "test.txt").write_text("im03\n")
    name = "im03" if grey == "test" else "im00"
    img = cv2.imread(str(data / "src" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(data / "src" / f"{name}.png"), img)
    run_aug(data, tmp_path / "w", "--num-patches", "40", "--patch-size", "32")
    with pytest.raises(PipelineError, match=rf"--color-mode rgb: the (patch|test frame) "
                                            rf".*{name}.* is grey.*or use --color-mode grey"):
        pre_processing.main(["--work-dir", str(tmp_path / "w"), "--color-mode", "rgb",
                             "--workers", "1"])
    assert not (tmp_path / "w" / "train" / "prep").exists()
    pre_processing.main(["--work-dir", str(tmp_path / "w"), "--color-mode", "grey",
                         "--workers", "1"])


def test_training_frames_smaller_than_a_patch_are_noted(tmp_path, capsys):
    data = make_dataset(tmp_path / "data", [(40, 60), (100, 100), (100, 90), (70, 70)])
    (data / "test.txt").write_text("im03\n")
    run_aug(data, tmp_path / "w", "--patch-size", "64")
    out = capsys.readouterr().out
    assert "note: 1 of 3 training frames is smaller than the 64 px patches (im00 60x40): " \
        "its patches are filled" in out and "or leave it out" in out


def test_a_rerun_that_fails_while_writing_leaves_the_earlier_work_folder_usable(
        tmp_path, monkeypatch):
    """The split files used to go first: a rerun stopped by a full disk or Ctrl-C made the
    earlier run's folder, 75,000 patches, unusable until a whole new run finished."""
    data = make_dataset(tmp_path / "data", [(60, 60)] * 4)
    run_aug(data, tmp_path / "w")
    before = {p.relative_to(tmp_path / "w"): p.read_bytes()
              for p in (tmp_path / "w").rglob("*") if p.is_file() and "figures" not in p.parts}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(gen_img_aug, "write_patches", full_disk)
    with pytest.raises(OSError):
        run_aug(data, tmp_path / "w", "--seed", "7")
    after = {p.relative_to(tmp_path / "w"): p.read_bytes()
             for p in (tmp_path / "w").rglob("*") if p.is_file() and "figures" not in p.parts}
    assert after == before


def test_a_rerun_stopped_while_drawing_leaves_no_samples_figure_of_the_earlier_frames(
        tmp_path, monkeypatch):
    """Ctrl-C while the samples figure was drawn, after the new split and patches were in
    place, left the earlier data set's figure beside them."""
    run_aug(make_dataset(tmp_path / "one", [(60, 60)] * 4), tmp_path / "w")
    figure = tmp_path / "w" / "figures" / "samples.png"
    assert figure.is_file()

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(gen_img_aug, "plot_samples", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        run_aug(make_dataset(tmp_path / "two", [(70, 70)] * 4, seed=1), tmp_path / "w")
    assert json.loads((tmp_path / "w" / "split.json").read_text())["train"]
    assert not figure.exists()


@pytest.mark.parametrize("name", ["split.json", "train.txt"])
def test_a_folder_where_the_split_goes_is_refused_before_the_patches(name, dataset, tmp_path,
                                                                     monkeypatch):
    """It was found only after every patch had been cut, which takes long."""
    work = tmp_path / "work"
    (work / name).mkdir(parents=True)
    cut = []
    monkeypatch.setattr(gen_img_aug, "write_patches", lambda *a, **k: cut.append(a))
    with pytest.raises(PipelineError, match=f"{name} is not a file"):
        run_aug(dataset, work)
    assert not cut and sorted(p.name for p in work.iterdir()) == [name]


def two_channel_data(root, count=4):
    """Two-channel 16-bit stacks: channel 0 shows the objects, channel 1 noise; labels drawn
    for channel 0 as <name>.png."""
    import tifffile
    (root / "src").mkdir(parents=True)
    (root / "label").mkdir()
    (root / "classes.txt").write_text("background\nbead\ncell\n")
    rng = np.random.default_rng(0)
    for i in range(count):
        label = asymmetric_label(60, 60)
        planes = np.stack([label.astype(np.uint16) * 900 + 300 + 7 * i,
                           rng.integers(0, 4000, (60, 60)).astype(np.uint16)])
        tifffile.imwrite(root / "src" / f"st{i}.tif", planes, photometric="minisblack")
        cv2.imwrite(str(root / "label" / f"st{i}.png"), label)
    return root


def test_one_plane_of_each_stack_trains_with_page(tmp_path):
    """A two-channel file gave two frames, each to be labelled; --page 0 takes the channel
    the labels are drawn on, named like the file, and split.json records it."""
    import tifffile
    data = two_channel_data(tmp_path / "data")
    (data / "test.txt").write_text("st3\n")
    with pytest.raises(PipelineError, match="have no label"):
        run_aug(data, tmp_path / "w")
    run_aug(data, tmp_path / "w", "--page", "0")
    split = json.loads((tmp_path / "w" / "split.json").read_text())
    assert split["page"] == 0 and split["test"] == ["st3"]
    assert split["train"] == ["st0", "st1", "st2"]
    assert np.array_equal(tifffile.imread(tmp_path / "w" / "test" / "src" / "st3.tif"),
                          tifffile.imread(data / "src" / "st3.tif")[0])


def test_the_planes_own_label_serves_with_page(tmp_path):
    data = two_channel_data(tmp_path / "data")
    for i in range(4):
        (data / "label" / f"st{i}.png").rename(data / "label" / f"st{i}_p1.png")
    run_aug(data, tmp_path / "w", "--page", "1")
    assert json.loads((tmp_path / "w" / "split.json").read_text())["page"] == 1


def test_held_out_frames_are_read_again_at_the_recorded_page(tmp_path):
    import train_unet_xception_resnetblock as train
    data = two_channel_data(tmp_path / "data")
    run_aug(data, tmp_path / "w", "--page", "0")
    record = json.loads((tmp_path / "w" / "split.json").read_text())
    held_out = [record["stack_of"][name] for name in record["train"][:2]]   # by file
    found = train.held_out_sources(data, held_out, record)
    assert sorted(found) == record["train"][:2]
    assert all(source.index == 0 for source in found.values())


def test_a_training_frame_relabelled_after_the_patches_is_noted(tmp_path, capsys):
    """Its patches train as they were: said at the start of training, where only a held-out
    frame changed was refused."""
    import train_unet_xception_resnetblock as train
    data = make_dataset(tmp_path / "data", [(60, 60)] * 4)
    (data / "test.txt").write_text("im03\n")
    run_aug(data, tmp_path / "w")
    record = json.loads((tmp_path / "w" / "split.json").read_text())
    capsys.readouterr()
    train.note_training_frames_changed(data, record["train"], record, tmp_path / "w")
    assert capsys.readouterr().out == ""
    label = cv2.imread(str(data / "label" / "im01.png"), 0)
    label[:5, :5] = 1
    cv2.imwrite(str(data / "label" / "im01.png"), label)
    train.note_training_frames_changed(data, record["train"], record, tmp_path / "w")
    assert "note: 1 training frame changed in" in capsys.readouterr().out
