"""How many cells get_contour.py --split-touching recovers as objects of their own.

The sample's LabelMe files draw every cell as a polygon of its own, so they are instances
whose union is the semantic mask the pipeline predicts. For each DEPTH this prints the cells,
the objects found in their union, the cells matched by one object at IoU > 0.5, and the
objects matching no cell (a cell split in two, or cells left merged beyond 0.5).

    python bench/split_touching.py [--labelme data/labelme] [--depths 0 1 2 3 5 8]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from labelme_to_label import polygon_mask  # noqa: E402
from touching import split_touching  # noqa: E402


def cell_instances(json_path, label="cell"):
    """The polygons of `label` in a LabelMe file as an instance mask (later over earlier)."""
    doc = json.loads(Path(json_path).read_text(encoding="utf-8"))
    height, width = doc["imageHeight"], doc["imageWidth"]
    instances = np.zeros((height, width), np.int32)
    shapes = [s for s in doc["shapes"] if s["label"] == label and s["shape_type"] == "polygon"]
    for number, shape in enumerate(shapes, start=1):
        instances[polygon_mask(shape["points"], height, width)] = number
    return instances


def matched_cells(instances, objects):
    """Cells whose largest overlapping object covers them at IoU > 0.5."""
    found = 0
    for cell in range(1, instances.max() + 1):
        inside = instances == cell
        ids, counts = np.unique(objects[inside], return_counts=True)
        counts[ids == 0] = 0
        if not counts.any():
            continue
        best = ids[np.argmax(counts)]
        found += counts.max() / np.count_nonzero(inside | (objects == best)) > 0.5
    return int(found)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labelme", default="data/labelme")
    p.add_argument("--depths", type=float, nargs="+", default=[0, 1, 2, 3, 5, 8],
                   help="0: touching cells left as one object (no splitting)")
    args = p.parse_args()
    files = sorted(Path(args.labelme).glob("*.json"))
    masks = [cell_instances(f) for f in files]
    print(f"{len(files)} LabelMe files in {args.labelme}")
    print("depth | cells | objects | cells matched (IoU > 0.5) | objects matching none | s/frame")
    for depth in args.depths:
        cells = objects = matched = 0
        start = time.perf_counter()
        for instances in masks:
            binary = (instances > 0).astype(np.uint8)
            if depth:
                binary = split_touching(binary, depth)
            count, labels = cv2.connectedComponents(binary, connectivity=8)
            cells += int(instances.max())
            objects += count - 1
            matched += matched_cells(instances, labels)
        seconds = (time.perf_counter() - start) / len(masks)
        print(f"{depth:g} | {cells} | {objects} | {matched} ({matched / cells:.1%}) | "
              f"{objects - matched} | {seconds:.2f}")


if __name__ == "__main__":
    main()
