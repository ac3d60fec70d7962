"""Time per frame of predict_lovasz_loss.py's tiling where part of the frame is blank (a
slide's margin, a stitched mosaic's empty corner): flat tiles are background whatever the
network says, and no longer go through it. Against the same frame with the margin's pixels
jittered by one grey level, which makes every tile go through the network as all did before.

The network is the paper's at 128x128 (the harness's tile) with random weights, 3 classes,
the default overlap 0.25 and batch 8; the frame is 1376x1032 (bbbc030's size) with its left
`--blank` share at grey 0. Both timings come from this one run (medians, the two frames
predicted in turn), with the machine's CPU flags and matmul rates.

    python bench/flat_tiles.py [--blank 0.5] [--frames 3]
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import hardware  # noqa: E402

hardware.prepare_tensorflow()

import predict_lovasz_loss as P  # noqa: E402
# speed.py's frame, tile and preprocessing: the same prediction that speed.py times
from speed import FRAMES, PREDICT_TILE as TILE, PREPROCESSING  # noqa: E402

FRAME = FRAMES["1376x1032"]


def seconds_per_frame(run, frames, repeats):
    """Median seconds of run on each of frames, the frames taken in turn (so a machine slowed
    for a while slows both alike), after one warm-up run of each."""
    for frame in frames:
        run(frame)            # tracing and first-call allocations
    times = [[] for _ in frames]
    for _ in range(repeats):
        for frame, seconds in zip(frames, times):
            start = time.perf_counter()
            run(frame)
            seconds.append(time.perf_counter() - start)
    return [float(np.median(seconds)) for seconds in times]


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blank", type=float, default=0.5,
                   help="share of the frame's width left blank (default: 0.5)")
    p.add_argument("--frames", type=int, default=3,
                   help="timed frames per case, the cases in turn (default: 3; the median)")
    args = p.parse_args()
    if not 0 <= args.blank < 1 or args.frames < 1:
        p.error("--blank must be within 0..1 (below 1) and --frames at least 1")

    import keras
    from model import build_model
    print(hardware.machine_line(hardware.machine_summary()))
    keras.utils.set_random_seed(0)
    model = build_model((TILE, TILE, 3), 3, weights=None)
    predict_batch = P.make_predict_batch(model, "argmax")
    prepare = P.TilePreparer(PREPROCESSING)
    rng = np.random.default_rng(0)
    margin = round(FRAME[1] * args.blank)
    blank = rng.integers(0, 256, FRAME, dtype=np.uint8)
    blank[:, :margin] = 0
    jittered = blank.copy()
    jittered[:, :margin] = rng.integers(0, 2, (FRAME[0], margin), dtype=np.uint8)

    positions = P.tile_positions(*FRAME, TILE, 0.25)
    flat = sum(P.is_flat(blank[y:y + TILE, x:x + TILE]) for y, x in positions)

    def run(frame):
        return P.predict_frame(predict_batch, frame, TILE, 0.25, "gaussian", 8, prepare=prepare)

    skipped, every = seconds_per_frame(run, [blank, jittered], args.frames)
    print(f"frame {FRAME[1]}x{FRAME[0]}, left {args.blank:.0%} blank: {flat} of "
          f"{len(positions)} tiles flat")
    print(f"every tile through the network (margin jittered): {every:.2f} s/frame")
    print(f"flat tiles skipped:                               {skipped:.2f} s/frame")
    print(f"ratio: {every / skipped:.2f}x faster; tiles through the network "
          f"{len(positions) / max(1, len(positions) - flat):.2f}x fewer")


if __name__ == "__main__":
    main()
