"""Prediction in shards (--shard I/N) merged (--merge) gives the files of one run, byte for
byte: masks, predict.json, the IoU report and chart, objects.csv and the contour pictures."""
from pathlib import Path

import cv2
import numpy as np
import pytest

import get_contour
import predict_lovasz_loss as P
from cli import PipelineError
from shards import shard_names, shard_option

ROOT = Path(__file__).resolve().parents[1]


def test_shards_cover_the_images_once_in_turn():
    names = [f"f{k}" for k in range(7)]
    shards = [shard_names(names, (i, 3)) for i in (1, 2, 3)]
    assert shards == [["f0", "f3", "f6"], ["f1", "f4"], ["f2", "f5"]]
    assert shard_names(names[:1], (2, 2)) == []
    assert shard_option("2/8") == (2, 8)
    for bad in ("3/2", "2", "a/b", "1/0"):
        with pytest.raises(Exception, match="I/N|from 1 to N"):
            shard_option(bad)
    # an array job's 0-based task id is told how to count from 1
    with pytest.raises(Exception, match=r"counts from 1 .*SLURM_ARRAY_TASK_ID \+ 1"):
        shard_option("0/2")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import json

    import keras
    from model import build_model
    from outputs import sha256_of
    keras.utils.set_random_seed(1)
    folder = tmp_path_factory.mktemp("weights")
    keras.saving.save_model(build_model((64, 64, 3), 3, weights=None), folder / "m_best.h5",
                            include_optimizer=False)
    (folder / "config.json").write_text(json.dumps({
        "sha256": {"m_best.h5": sha256_of(folder / "m_best.h5")},
        "classes": ["background", "bead", "cell"], "num_classes": 3,
        "input_shape": [64, 64, 3], "patch_size": [64, 64], "color_mode": "grey",
        "image_channels": 1, "preprocessing": {"mean": [110.0], "std": [30.0], "gamma": 1.2},
        "decision": "argmax", "weights_files": {"best": "m_best.h5"},
        # The frame's typical texture: the filter drops some objects of each frame, and the
        # shards' counts must merge into the single run's.
        "faint_filter": {"threshold": 1.0}}))
    return folder


@pytest.fixture
def work(tmp_path):
    """A test set of three crops of the sample frames, with their labels."""
    frames = sorted((ROOT / "data" / "src").glob("*.png"))[:3]
    for sub in ("test/src", "test/label"):
        (tmp_path / "work" / sub).mkdir(parents=True)
    (tmp_path / "work" / "split.json").write_text("{}")    # gen_img_aug.py finished
    for frame in frames:
        image = cv2.imread(str(frame), cv2.IMREAD_GRAYSCALE)[100:260, 150:350]
        label = cv2.imread(str(ROOT / "data" / "label" / frame.name),
                           cv2.IMREAD_UNCHANGED)[100:260, 150:350]
        cv2.imwrite(str(tmp_path / "work" / "test" / "src" / frame.name), image)
        cv2.imwrite(str(tmp_path / "work" / "test" / "label" / frame.name), label)
    return tmp_path / "work"


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_sharded_and_merged_is_a_single_run(model_dir, work, tmp_path):
    base = ["--work-dir", str(work), "--model-dir", str(model_dir)]
    P.main([*base, "--output", str(tmp_path / "single")])
    chart = work / "figures" / "iou_per_class.png"
    single_chart = chart.read_bytes()
    chart.unlink()
    for i in (1, 2):
        P.main([*base, "--shard", f"{i}/2"])
    shards = [work / "test" / f"predict_shard{i}of2" for i in (1, 2)]
    assert not chart.exists()              # the chart of all images comes with the merge
    P.main(["--work-dir", str(work), "--merge", *map(str, shards)])
    merged = work / "test" / "predict"
    assert files_of(merged) == files_of(tmp_path / "single")
    assert chart.read_bytes() == single_chart
    # array jobs of one command line with --output: a folder each, merged back into it
    for i in (1, 2):
        P.main([*base, "--shard", f"{i}/2", "--output", str(tmp_path / "screen")])
    P.main(["--work-dir", str(work), "--merge",
            *(str(tmp_path / f"screen_shard{i}of2") for i in (1, 2))])
    assert files_of(tmp_path / "screen") == files_of(tmp_path / "single")

    get_contour.main(["--work-dir", str(work), "--pred-dir", str(tmp_path / "single"),
                      "--output", str(tmp_path / "single_contours"), "--no-panels"])
    for shard in shards:
        get_contour.main(["--work-dir", str(work), "--pred-dir", str(shard), "--no-panels"])
    get_contour.main(["--merge", *(str(s) + "_contours" for s in shards)])
    merged_contours = work / "test" / "predict_contours"
    assert files_of(merged_contours) == files_of(tmp_path / "single_contours")
    assert (merged_contours / "objects.csv").read_text().count("\n") > 3

    # a missing shard, or shards of two runs, are refused without touching the output
    with pytest.raises(PipelineError, match="each once"):
        P.main(["--work-dir", str(work), "--merge", str(shards[0]),
                "--output", str(tmp_path / "half")])
    P.main([*base, "--shard", "2/2", "--overlap", "0.5", "--output", str(tmp_path / "other")])
    other = tmp_path / "other_shard2of2"    # the shard's suffix follows --output too
    with pytest.raises(PipelineError, match="other settings.*overlap"):
        P.main(["--work-dir", str(work), "--merge", str(shards[0]), str(other),
                "--output", str(tmp_path / "mixed")])
    assert not (tmp_path / "half").exists() and not (tmp_path / "mixed").exists()
    # the merge never writes over a shard it reads
    before = files_of(shards[0])
    for output in (shards[0], work / "test"):
        with pytest.raises(PipelineError, match="is, holds or lies inside the shard folder"):
            P.main(["--work-dir", str(work), "--merge", *map(str, shards),
                    "--output", str(output)])
    assert files_of(shards[0]) == before
    mask = cv2.imread(str(merged / sorted(p.name for p in (work / "test/src").iterdir())[0]),
                      cv2.IMREAD_UNCHANGED)
    assert mask.shape == (160, 200) and np.all(mask < 3)


def test_a_shard_without_images_still_merges(model_dir, work, tmp_path):
    """Three images in four shards: the fourth has none, and its contours merge all the same."""
    base = ["--work-dir", str(work), "--model-dir", str(model_dir)]
    for i in range(1, 5):
        P.main([*base, "--shard", f"{i}/4"])
        get_contour.main(["--work-dir", str(work), "--no-panels",
                          "--pred-dir", str(work / "test" / f"predict_shard{i}of4")])
    empty = work / "test" / "predict_shard4of4_contours" / "objects.csv"
    assert empty.read_text().count("\n") == 1          # the header alone
    get_contour.main(["--merge", *(str(work / "test" / f"predict_shard{i}of4_contours")
                                   for i in range(1, 5))])
    assert (work / "test" / "predict_contours" / "objects.csv").read_text().count("\n") > 3


def test_a_merge_elsewhere_keeps_labelme_files_on_their_images_and_refuses_a_lost_mask(
        model_dir, work, tmp_path):
    """The shards' LabelMe files pointed at their image relative to the shard folder, so a
    merge to an --output at another depth left LabelMe without its image; a shard missing
    a mask merged into a folder that lacked it."""
    import json
    base = ["--work-dir", str(work), "--model-dir", str(model_dir), "--to-labelme",
            "--labelme-tolerance", "2"]
    for i in (1, 2):
        P.main([*base, "--shard", f"{i}/2"])
    shards = [str(work / "test" / f"predict_shard{i}of2") for i in (1, 2)]
    out = tmp_path / "results" / "run1" / "predict"
    P.main(["--work-dir", str(work), "--merge", *shards, "--output", str(out)])
    for path in (out / "labelme").glob("*.json"):
        image = out / "labelme" / json.loads(path.read_text())["imagePath"]
        assert image.resolve() == (work / "test" / "src" / f"{path.stem}.png").resolve()
    assert len(list((out / "labelme").glob("*.json"))) == 3
    first = sorted(p.name for p in (work / "test" / "src").iterdir())[0]
    (Path(shards[0]) / first).unlink()
    with pytest.raises(PipelineError, match=f"lacks {first}"):
        P.main(["--work-dir", str(work), "--merge", *shards, "--output", str(tmp_path / "m")])
    assert not (tmp_path / "m").exists()


def test_a_merge_keeps_the_predictions_of_another_input_of_the_same_name(model_dir, work,
                                                                       tmp_path):
    """day2/images merged into predict/images, where day1/images was predicted: a single run
    refuses to replace another input's predictions, and the merge replaced them unsaid."""
    frames = sorted((work / "test" / "src").iterdir())
    for day, share in (("day1", frames[:1]), ("day2", frames[1:])):
        (tmp_path / day / "images").mkdir(parents=True)
        for frame in share:
            (tmp_path / day / "images" / frame.name).write_bytes(frame.read_bytes())
    base = ["--work-dir", str(work), "--model-dir", str(model_dir)]
    P.main([*base, "--input", str(tmp_path / "day1" / "images")])
    day1 = work / "predict" / "images"
    before = files_of(day1)
    for i in (1, 2):
        P.main([*base, "--input", str(tmp_path / "day2" / "images"), "--shard", f"{i}/2"])
    shards = [str(work / "predict" / f"images_shard{i}of2") for i in (1, 2)]
    with pytest.raises(PipelineError, match="another input of the same name"):
        P.main(["--work-dir", str(work), "--merge", *shards])
    assert files_of(day1) == before
    # an --output of its own keeps both
    P.main(["--work-dir", str(work), "--merge", *shards, "--output", str(tmp_path / "day2_out")])
    assert (tmp_path / "day2_out" / f"{frames[1].stem}.png").is_file()


def test_shards_run_from_other_folders_merge_anywhere(model_dir, work, tmp_path, monkeypatch):
    """Paths given relative to where each job ran: the shards were refused as of other
    settings (model_file, chart_copy), and a merge run elsewhere wrote the IoU chart into a
    figures/ made under its own folder."""
    import os
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(work.parent)
    P.main(["--work-dir", work.name, "--model-dir",
            os.path.relpath(model_dir, work.parent), "--shard", "1/2"])
    monkeypatch.chdir(tmp_path / "elsewhere")
    P.main(["--work-dir", str(work), "--model-dir", str(model_dir), "--shard", "2/2"])
    P.main(["--work-dir", str(work), "--merge",
            *(str(work / "test" / f"predict_shard{i}of2") for i in (1, 2))])
    assert (work / "figures" / "iou_per_class.png").is_file()
    assert not any((tmp_path / "elsewhere").iterdir())


def test_a_contour_merge_refuses_a_shard_that_lost_a_picture(model_dir, work, tmp_path):
    """A contour picture deleted from a shard's folder: the prediction merge refuses such a
    shard, the contour merge published a folder without that picture."""
    base = ["--work-dir", str(work), "--model-dir", str(model_dir)]
    shards = [work / "test" / f"predict_shard{i}of2" for i in (1, 2)]
    for i, shard in enumerate(shards, 1):
        P.main([*base, "--shard", f"{i}/2"])
        get_contour.main(["--work-dir", str(work), "--pred-dir", str(shard), "--no-panels"])
    lost = sorted(Path(f"{shards[0]}_contours").glob("*_contour.png"))[0]
    lost.unlink()
    with pytest.raises(PipelineError, match=f"lacks {lost.name}"):
        get_contour.main(["--merge", *(f"{s}_contours" for s in shards)])
    assert not (work / "test" / "predict_contours").exists()


def test_shards_of_two_models_in_one_model_folder_are_not_merged(model_dir, work, tmp_path):
    """The model folder trained again (or its training resumed) between two shards' runs:
    the merge joined the masks of two models into one run's folder and IoU table."""
    import json
    import shutil

    import keras
    from model import build_model
    from outputs import sha256_of
    folder = tmp_path / "weights"
    shutil.copytree(model_dir, folder)
    base = ["--work-dir", str(work), "--model-dir", str(folder)]
    P.main([*base, "--shard", "1/2"])
    keras.utils.set_random_seed(2)
    keras.saving.save_model(build_model((64, 64, 3), 3, weights=None), folder / "m_best.h5",
                            include_optimizer=False)
    config = json.loads((folder / "config.json").read_text())
    config["sha256"] = {"m_best.h5": sha256_of(folder / "m_best.h5")}
    (folder / "config.json").write_text(json.dumps(config))
    P.main([*base, "--shard", "2/2"])
    with pytest.raises(PipelineError, match="other settings.*model_sha256"):
        P.main(["--work-dir", str(work), "--merge",
                *(str(work / "test" / f"predict_shard{i}of2") for i in (1, 2))])
    assert not (work / "test" / "predict").exists()


def test_test_set_shards_replace_the_test_sets_predictions_as_one_run_does(model_dir, work):
    """A work folder moved (to a cluster's scratch disk): its test/predict records the test
    set where it was. A single run replaces it; the merge refused it as another input's."""
    import json
    base = ["--work-dir", str(work), "--model-dir", str(model_dir)]
    P.main(base)
    record = work / "test" / "predict" / "predict.json"
    moved = {**json.loads(record.read_text()), "input_dir": "/elsewhere/work/test/src"}
    record.write_text(json.dumps(moved))
    for i in (1, 2):
        P.main([*base, "--shard", f"{i}/2"])
    P.main(["--work-dir", str(work), "--merge",
            *(str(work / "test" / f"predict_shard{i}of2") for i in (1, 2))])
    merged = json.loads(record.read_text())
    assert merged["input_dir"] == str((work / "test" / "src").resolve())
