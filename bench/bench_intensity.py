"""Does the intensity rule give the same masks for the same frames stored as 16-bit or float?

Takes the test frames of a trained work folder (8-bit), writes them again as a microscope
might: 12-bit data in a 16-bit TIFF with one hot pixel, a float32 TIFF with negative values,
and a float32 TIFF with one NaN pixel; predicts every version with predict_lovasz_loss.py and
prints, per version and rule, the exit status, the agreement of its masks with the 8-bit
frames' masks (mean IoU between the two masks) and the mean IoU against the labels.

    .venv/bin/python bench/bench_intensity.py --work-dir demo_work

Needs a trained model in <work-dir>/weights (e.g. from run_demo.sh). Writes under
<work-dir>/bench_intensity/.
"""
import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from image_io import list_images, read_image, read_label  # noqa: E402
from metrics import confusion_matrix, iou_per_class  # noqa: E402


def versions(img8):
    """name -> (array to store, suffix) of one 8-bit grey frame."""
    twelve_bit = img8.astype(np.uint16) * 16
    twelve_bit[5, 7] = 65535                      # one hot pixel
    with_negatives = (img8.astype(np.float32) - 128.0) / 300.0
    with_nan = with_negatives.copy()
    with_nan[3, 3] = np.nan
    return {"uint16_hot_pixel": twelve_bit, "float32_negative": with_negatives,
            "float32_nan": with_nan}


def predict(work, input_dir, out_dir, *extra):
    cmd = [sys.executable, str(ROOT / "predict_lovasz_loss.py"), "--work-dir", str(work),
           "--input", str(input_dir), "--output", str(out_dir), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return proc.returncode, proc.stderr.strip().splitlines()[-1:] if proc.returncode else []


def mask_agreement(a_dir, b_dir, names, num_classes):
    cm = sum(confusion_matrix(read_label(a_dir / f"{n}.png"), read_label(b_dir / f"{n}.png"),
                              num_classes) for n in names)
    return float(iou_per_class(cm).mean())


def label_iou(pred_dir, label_dir, names, num_classes):
    cm = sum(confusion_matrix(read_label(label_dir / f"{n}.png"),
                              read_label(pred_dir / f"{n}.png"), num_classes) for n in names)
    return float(iou_per_class(cm).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work-dir", required=True, type=Path)
    args = p.parse_args()
    work = args.work_dir
    classes = json.loads((work / "weights" / "config.json").read_text())["classes"]
    frames = list_images(work / "test" / "src")
    out = work / "bench_intensity"
    shutil.rmtree(out, ignore_errors=True)
    (out / "uint8").mkdir(parents=True)
    for name, path in frames.items():
        img8 = read_image(path)
        img8 = cv2.cvtColor(img8, cv2.COLOR_RGB2GRAY) if img8.ndim == 3 else img8
        cv2.imwrite(str(out / "uint8" / f"{name}.png"), img8)
        for version, arr in versions(img8).items():
            (out / version).mkdir(exist_ok=True)
            cv2.imwrite(str(out / version / f"{name}.tif"), arr)
    names = list(frames)
    label_dir = work / "test" / "label"
    code, _ = predict(work, out / "uint8", out / "pred_uint8")
    assert code == 0, "the 8-bit frames must predict"
    print(f"{len(names)} test frames of {work}; mean IoU of the 8-bit frames against the "
          f"labels: {label_iou(out / 'pred_uint8', label_dir, names, len(classes)):.4f}")
    print(f"{'stored as':<20}{'rule':<31}{'exit':>5}{'agreement':>11}{'IoU':>8}  message")
    rules = {"percentile 0.1 99.9 (default)": [], "full": ["--intensity", "full"]}
    for version in versions(np.zeros((8, 8), np.uint8)):
        for rule, extra in rules.items():
            pred = out / f"pred_{version}_{rule.split()[0]}"
            code, message = predict(work, out / version, pred, *extra)
            if code == 0:
                agree = mask_agreement(out / "pred_uint8", pred, names, len(classes))
                iou = label_iou(pred, label_dir, names, len(classes))
                print(f"{version:<20}{rule:<31}{code:>5}{agree:>11.4f}{iou:>8.4f}")
            else:
                print(f"{version:<20}{rule:<31}{code:>5}{'-':>11}{'-':>8}  {message[0][:90]}")


if __name__ == "__main__":
    main()
