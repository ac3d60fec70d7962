"""Time per 640x480 frame of predict_lovasz_loss.py's batched tiling, against one
model.predict per tile as the original did, and against the FLOP floor of this machine.

The model is the paper's network at 256x256x3 with 3 classes and random weights (speed
does not depend on the weights). Both ways include the per-tile preprocessing. The FLOP
floor is the model's convolution FLOPs per frame (counted from the layer shapes; batch
norm and activations are left out, so the floor is a little low) divided by the rate of a
large float32 tf.matmul measured in the same run. All numbers come from this one run.

    python bench/bench_predict.py [--frames 3] [--batch-size 8]
"""
import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import hardware  # noqa: E402

hardware.prepare_tensorflow()

import predict_lovasz_loss as P  # noqa: E402
from geometry import reflect_pad  # noqa: E402

FRAME = (480, 640)
TILE = 256
PREPROCESSING = {"mean": [128.0], "std": [40.0], "gamma": 1.2}


def per_tile_predict(model, prepare, frame):
    """The original's way: non-overlapping tiles, one model.predict each."""
    h, w = frame.shape[:2]
    positions = P.tile_positions(h, w, TILE, 0)
    padded = reflect_pad(frame, positions[-1][0] + TILE, positions[-1][1] + TILE)
    out = np.zeros(padded.shape[:2] + (model.output_shape[-1],), np.float32)
    for y, x in positions:
        tile = prepare(padded[y:y + TILE, x:x + TILE])
        out[y:y + TILE, x:x + TILE] = model.predict(tile[None], verbose=0)[0]
    return out[:h, :w]


def seconds_per_frame(run, frames):
    run(frames[0])            # warm-up: tracing and first-call allocations
    start = time.perf_counter()
    for frame in frames:
        run(frame)
    return (time.perf_counter() - start) / len(frames)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--frames", type=int, default=3, help="timed frames per method (default: 3)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="tiles per call of the batched way (default: 8)")
    args = p.parse_args()

    import keras
    from model import build_model, forward_flops
    keras.utils.set_random_seed(0)
    model = build_model((TILE, TILE, 3), 3, weights=None)
    predict_batch = P.make_predict_batch(model, "argmax")
    prepare = P.TilePreparer(PREPROCESSING)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, FRAME, dtype=np.uint8) for _ in range(args.frames)]
    tiles = len(P.tile_positions(*FRAME, TILE, 0))
    tiles_default = len(P.tile_positions(*FRAME, TILE, 0.25))

    rate = hardware.matmul_gflops("float32") * 1e9
    floor = forward_flops(model) * tiles / rate
    print(f"{os.cpu_count()} CPUs; matmul {rate / 1e9:.1f} GFLOP/s; model "
          f"{forward_flops(model) / 1e9:.2f} GFLOP per {TILE}x{TILE} tile; frame "
          f"{FRAME[1]}x{FRAME[0]} = {tiles} tiles without overlap, {tiles_default} at 0.25")

    def batched(overlap, blend):
        return lambda frame: P.predict_frame(predict_batch, frame, TILE, overlap, blend,
                                             args.batch_size, prepare=prepare)

    results = [
        ("original: model.predict per tile", tiles,
         seconds_per_frame(lambda f: per_tile_predict(model, prepare, f), frames)),
        (f"batched tiles, batch {args.batch_size}, overlap 0", tiles,
         seconds_per_frame(batched(0, "uniform"), frames)),
        ("batched, overlap 0.25 gaussian (default)", tiles_default,
         seconds_per_frame(batched(0.25, "gaussian"), frames)),
    ]
    print(f"{'method':<44}{'tiles':>6}{'s/frame':>9}{'x floor':>9}")
    print(f"{'FLOP floor (conv FLOPs / matmul rate)':<44}{tiles:>6}{floor:>9.3f}{1:>9.2f}")
    for name, n, seconds in results:
        print(f"{name:<44}{n:>6}{seconds:>9.3f}{seconds / (floor * n / tiles):>9.2f}")
    original, ours = results[0][2], results[1][2]
    print(f"batched vs original: {original / ours:.2f}x faster at the same tiling; "
          f"{ours / floor:.2f}x the FLOP floor")


if __name__ == "__main__":
    main()
