"""Masks -> LabelMe polygons -> masks: per-class IoU and polygon vertices per simplification
tolerance, on the sample's labels and on each shared data set's labels.

    python bench/labelme_round_trip.py [--tolerances 0 0.3 0.5 0.75 1]

The masks go through predict_lovasz_loss.py --to-labelme's code (labelme_export.annotation)
and come back through labelme_to_label.py's rasterizer; IoU follows the pipeline's one
convention (confusion matrix summed over the masks).
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline import REPO, SHARED_DATASETS  # noqa: E402
from image_io import read_label  # noqa: E402
from labelme_export import annotation  # noqa: E402
from labelme_to_label import rasterize_shapes  # noqa: E402
from cli import read_classes  # noqa: E402
from metrics import confusion_matrix, iou_per_class  # noqa: E402


def label_sets():
    """(name, class names, label files) of the sample and of every shared data set."""
    sets = [("sample", read_classes(REPO / "data"), sorted((REPO / "data" / "label").glob("*.png")))]
    if SHARED_DATASETS.is_dir():
        for folder in sorted(p for p in SHARED_DATASETS.iterdir() if (p / "label").is_dir()):
            sets.append((folder.name, read_classes(folder), sorted((folder / "label").glob("*.png"))))
    return sets


def round_trip(paths, classes, tolerance):
    """(per-class IoU, total polygon vertices) over the masks."""
    index = {name: i for i, name in enumerate(classes)}
    total, vertices = 0, 0
    for path in paths:
        mask = read_label(path)
        shapes = annotation(mask, classes, path, path.parent, tolerance)["shapes"]
        vertices += sum(len(s["points"]) for s in shapes)
        back = rasterize_shapes(shapes, *mask.shape, index)
        total = total + confusion_matrix(mask, back, len(classes))
    return iou_per_class(total), vertices


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tolerances", type=float, nargs="+", default=[0, 0.3, 0.5, 0.75, 1.0])
    args = p.parse_args(argv)
    print(f"{'labels':<10}{'masks':>6}{'tolerance px':>14}{'vertices':>10}  per-class IoU")
    for name, classes, paths in label_sets():
        for tolerance in args.tolerances:
            iou, vertices = round_trip(paths, classes, tolerance)
            print(f"{name:<10}{len(paths):>6}{tolerance:>14g}{vertices:>10}  "
                  + ", ".join(f"{c} {v:.4f}" for c, v in zip(classes, iou)))


if __name__ == "__main__":
    main()
