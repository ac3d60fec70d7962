"""How long get_contour.py --split-touching takes: touching.py, whose reconstruction and
growth compute again only the pixels beside those the step before changed, against the same
steps over the whole window each time (the code before), in one run, on a long winding
filament with bulges (its ridge is thousands of steps long) and on many touching discs. The
carved masks must be the same bit for bit.

    python bench/split_touching_speed.py [--frame 4000] [--length 3000] [--width 15]
        [--bulges 3] [--discs 1500]
"""
import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import touching  # noqa: E402


def full_window_reconstruct(marker, mask):
    """touching.reconstruct_by_dilation before: a step over the whole window each time."""
    current = np.minimum(marker, mask).astype(np.float32)
    while True:
        grown = np.minimum(cv2.dilate(current, touching.KERNEL), mask)
        if np.array_equal(grown, current):
            return current
        current = grown


def full_window_grow(seeds, distance):
    """touching.grow_seeds before: a step over the whole window each time."""
    labels = seeds.astype(np.float32)
    free = (distance > 0) & (labels == 0)
    top = float(distance.max())
    step = max(touching.LEVEL_STEP, top / touching.LEVELS)
    for level in np.arange(top, 0, -step):
        open_now = free & (distance >= level - step)
        while True:
            highest = cv2.dilate(labels, touching.KERNEL)
            reached = open_now & (highest > 0)
            if not reached.any():
                break
            lowest = cv2.erode(np.where(labels > 0, labels, np.float32(np.inf)), touching.KERNEL)
            labels[reached] = np.where(lowest[reached] < highest[reached], -1,
                                       highest[reached])
            open_now &= ~reached
            free &= ~reached
    return labels.astype(np.int32)


def filament(frame, length, width, bulges, seed=0):
    """A filament `length` px long along its axis and `width` px wide, winding as a sine
    600 px high, with `bulges` discs of radius 12-20 evenly along it (its ends among them),
    on a frame x frame mask."""
    x = np.arange(frame - 200, dtype=np.float64)
    y = 600 * np.sin(x / 150)
    along = np.concatenate([[0], np.cumsum(np.hypot(np.diff(x), np.diff(y)))])
    if along[-1] < length:
        sys.exit(f"a filament {length} px long does not fit a frame of {frame}")
    keep = along <= length
    points = np.stack([x[keep] + 100, y[keep] + frame / 2], axis=1)
    mask = np.zeros((frame, frame), np.uint8)
    cv2.polylines(mask, [np.round(points).astype(np.int32)], False, 1, width)
    rng = np.random.default_rng(seed)
    for i in np.linspace(0, keep.sum() - 1, bulges).astype(int):
        cv2.circle(mask, tuple(np.round(points[i]).astype(int)), int(rng.integers(12, 21)),
                   1, -1)
    return mask


def discs(frame, count, seed=0):
    """count discs of radius 8-29 at random on a frame x frame mask, many touching."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((frame, frame), np.uint8)
    for _ in range(count):
        centre = tuple(int(v) for v in rng.integers(0, frame, 2))
        cv2.circle(mask, centre, int(rng.integers(8, 30)), 1, -1)
    return mask


def timed(binary, depth, reference):
    """The carved mask and the seconds split_touching took, with the steps of before where
    reference."""
    saved = touching.reconstruct_by_dilation, touching.grow_seeds
    if reference:
        touching.reconstruct_by_dilation = full_window_reconstruct
        touching.grow_seeds = full_window_grow
    try:
        start = time.perf_counter()
        carved = touching.split_touching(binary, depth)
        return carved, time.perf_counter() - start
    finally:
        touching.reconstruct_by_dilation, touching.grow_seeds = saved


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frame", type=int, default=4000, help="the filament's frame's side")
    p.add_argument("--length", type=int, default=3000, help="the filament's length, px")
    p.add_argument("--width", type=int, default=15, help="the filament's width, px")
    p.add_argument("--bulges", type=int, default=3, help="discs along the filament")
    p.add_argument("--discs", type=int, default=1500, help="discs on the 2048x2048 frame")
    p.add_argument("--depth", type=float, default=touching.SPLIT_DEPTH)
    args = p.parse_args()
    cases = [(f"filament {args.length} x {args.width} px, {args.bulges} bulges",
              filament(args.frame, args.length, args.width, args.bulges)),
             (f"{args.discs} discs", discs(2048, args.discs))]
    print("mask | frame | regions | largest window | objects | full-window s | front s | "
          "ratio | identical")
    for name, binary in cases:
        old, old_s = timed(binary, args.depth, reference=True)
        new, new_s = timed(binary, args.depth, reference=False)
        regions, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
        w, h = stats[1 + np.argmax(stats[1:, 2] * stats[1:, 3]), 2:4]
        objects = cv2.connectedComponents(new, connectivity=8)[0] - 1
        print(f"{name} | {binary.shape[1]}x{binary.shape[0]} | {regions - 1} | {w}x{h} | "
              f"{objects} | {old_s:.2f} | {new_s:.2f} | {old_s / new_s:.1f} | "
              f"{np.array_equal(old, new)}")
        if not np.array_equal(old, new):
            sys.exit(f"{name}: the carved masks differ in {np.count_nonzero(old != new)} px")


if __name__ == "__main__":
    main()
