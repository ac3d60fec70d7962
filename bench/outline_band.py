"""An experiment on noisy outlines: leave a 2 px band across every class boundary of the
training patches' labels out of the loss (label 255, ignored), so that training neither
rewards nor punishes the 1-2 px by which hand-drawn outlines disagree with the image.

It paints the band into WORK/train/label in place, so run it on a copy of a work folder
made by gen_img_aug.py (the test labels, in WORK/test, are left as they are), then train
and predict there as usual:

    cp -r W/train W/test W/split.json W/train_mean_std.* W2/
    python bench/outline_band.py W2
"""
import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cli import IGNORE_LABEL, PipelineError, run_cli  # noqa: E402

# The four neighbours, as offsets into a label padded by one pixel.
NEIGHBOURS = ((0, 1), (2, 1), (1, 0), (1, 2))


def outline_band(label):
    """The pixels that touch another class (both sides of every boundary), ignored ones
    left out."""
    padded = np.pad(label, 1, mode="edge")
    h, w = label.shape
    band = np.zeros(label.shape, bool)
    for dy, dx in NEIGHBOURS:
        neighbour = padded[dy:dy + h, dx:dx + w]
        band |= (neighbour != label) & (neighbour != IGNORE_LABEL)
    return band & (label != IGNORE_LABEL)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path, help="a copy of a gen_img_aug.py work folder")
    args = parser.parse_args(argv)
    labels = sorted((args.work / "train" / "label").glob("*.png"))
    if not labels:
        raise PipelineError(f"no training labels in {args.work / 'train' / 'label'}")
    painted = 0
    for path in labels:
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        band = outline_band(label)
        label[band] = IGNORE_LABEL
        painted += int(band.sum())
        if not cv2.imwrite(str(path), label):
            raise PipelineError(f"could not write {path}")
    print(f"{painted:,} pixels of {len(labels)} labels ignored")


if __name__ == "__main__":
    run_cli(main)
