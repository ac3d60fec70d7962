"""Where a prediction's errors are: whole false objects, missed objects, or object boundaries,
and what a threshold on the saved probabilities would change.

    python bench/error_anatomy.py PRED_DIR LABEL_DIR [--classes background cell]

PRED_DIR is a folder predict_lovasz_loss.py wrote: predict.json, the masks <name>.png and,
with --save-probs, <name>_prob_<class>.png; LABEL_DIR holds the labels <name>.png. For each object class, every
wrong pixel is put in one place: in a predicted object that touches no labelled one (false
object), in a labelled object that no prediction touches (missed object), within --band
pixels of the labelled boundary (boundary), or elsewhere. With probability maps, the class's
IoU for a range of thresholds on its probability (class against the rest).
"""
import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from image_io import read_label  # noqa: E402
from cli import read_json  # noqa: E402
from outputs import prob_file  # noqa: E402


def anatomy(pred, label, band):
    """Counts of the error pixels of one class mask (bool arrays) by where they lie."""
    counts = dict.fromkeys(("tp", "false_object", "missed_object", "fp_boundary",
                            "fn_boundary", "fp_elsewhere", "fn_elsewhere", "predicted_objects",
                            "false_objects", "labelled_objects", "missed_objects"), 0)
    counts["tp"] = int(np.count_nonzero(pred & label))
    fp, fn = pred & ~label, ~pred & label
    for mask, other, key in ((pred, label, "false"), (label, pred, "missed")):
        n, components = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        touched = np.unique(components[other & (components > 0)])
        lonely = np.isin(components, touched, invert=True) & (components > 0)
        counts[f"{key}_object"] = int(np.count_nonzero(lonely))
        counts["predicted_objects" if key == "false" else "labelled_objects"] += n - 1
        counts[f"{key}_objects"] = int(n - 1 - len(touched))
        if key == "false":
            fp &= ~lonely
        else:
            fn &= ~lonely
    # distance of every pixel to the labelled boundary (the nearest pixel of the other side)
    inside = cv2.distanceTransform(label.astype(np.uint8), cv2.DIST_L2, 3)
    outside = cv2.distanceTransform((~label).astype(np.uint8), cv2.DIST_L2, 3)
    near = np.where(label, inside, outside) <= band
    counts["fp_boundary"], counts["fp_elsewhere"] = (int(np.count_nonzero(fp & near)),
                                                     int(np.count_nonzero(fp & ~near)))
    counts["fn_boundary"], counts["fn_elsewhere"] = (int(np.count_nonzero(fn & near)),
                                                     int(np.count_nonzero(fn & ~near)))
    return counts


def threshold_counts(prob, label):
    """Histograms of the class probability (0..255) over the class's and the other pixels."""
    return (np.bincount(prob[label], minlength=256), np.bincount(prob[~label], minlength=256))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pred_dir", type=Path)
    p.add_argument("label_dir", type=Path)
    p.add_argument("--classes", nargs="+", default=["background", "cell"])
    p.add_argument("--band", type=float, default=1.5,
                   help="pixels from the labelled boundary that count as boundary errors "
                        "(default: %(default)s: the pixels next to it, diagonals included)")
    args = p.parse_args(argv)
    names = read_json(args.pred_dir / "predict.json", "prediction record")["images"]
    for c, cls in enumerate(args.classes[1:], start=1):
        total, hist_in, hist_out = {}, np.zeros(256), np.zeros(256)
        for name in names:
            label_full = read_label(args.label_dir / f"{name}.png")
            valid = label_full < len(args.classes)
            label = (label_full == c) & valid
            pred = (read_label(args.pred_dir / f"{name}.png") == c) & valid
            for key, value in anatomy(pred, label, args.band).items():
                total[key] = total.get(key, 0) + value
            prob_path = args.pred_dir / prob_file(name, cls)
            if prob_path.is_file():
                inside, outside = threshold_counts(read_label(prob_path)[valid], label[valid])
                hist_in, hist_out = hist_in + inside, hist_out + outside
        report(cls, total, hist_in, hist_out, args.band, len(names))


def report(cls, t, hist_in, hist_out, band, num_images):
    fp = t["false_object"] + t["fp_boundary"] + t["fp_elsewhere"]
    fn = t["missed_object"] + t["fn_boundary"] + t["fn_elsewhere"]
    iou = t["tp"] / max(1, t["tp"] + fp + fn)
    print(f"{cls}: IoU {iou:.4f} over {num_images} images; {fp} false and {fn} missed pixels")
    print(f"  false objects   {t['false_objects']:>5} of {t['predicted_objects']} predicted, "
          f"{t['false_object']} px (IoU without them "
          f"{t['tp'] / max(1, t['tp'] + fp - t['false_object'] + fn):.4f})")
    print(f"  missed objects  {t['missed_objects']:>5} of {t['labelled_objects']} labelled, "
          f"{t['missed_object']} px")
    print(f"  within {band:g} px of the labelled boundary: {t['fp_boundary']} false, "
          f"{t['fn_boundary']} missed px (IoU without them "
          f"{t['tp'] / max(1, t['tp'] + fp + fn - t['fp_boundary'] - t['fn_boundary']):.4f})")
    print(f"  elsewhere: {t['fp_elsewhere']} false, {t['fn_elsewhere']} missed px")
    if hist_in.sum():
        # class where prob >= t (of 255); IoU against the labels for each t
        tp = hist_in[::-1].cumsum()[::-1]
        fp_t = hist_out[::-1].cumsum()[::-1]
        iou_t = tp / (tp + fp_t + hist_in.sum() - tp)
        picks = [64, 96, 128, 160, 192, 224, int(iou_t.argmax())]
        print("  threshold on p(" + cls + "): " + ", ".join(
            f"{t_ / 255:.2f} -> {iou_t[t_]:.4f}" for t_ in picks[:-1])
            + f"; best {picks[-1] / 255:.2f} -> {iou_t[picks[-1]]:.4f}")


if __name__ == "__main__":
    main()
