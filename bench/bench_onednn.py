"""TensorFlow's oneDNN kernels on and off (TF_ENABLE_ONEDNN_OPTS=1 / 0), side by side.

On Linux TensorFlow turns oneDNN on by itself only on CPUs with VNNI (AVX-512 or AVX),
AVX-512 BF16 or AMX; on a CPU with only AVX2 it runs its own (Eigen) kernels unless
TF_ENABLE_ONEDNN_OPTS=1, which the pipeline's scripts set (hardware.prepare_tensorflow)
because of what this measures. The variable is read once, when TensorFlow loads, so each
setting runs in its own child process, and the two settings alternate over --rounds so that
a slow spell of the machine hits both alike.
Each child measures, in fp32:
  - the matmul rate (2048 x 2048, best of 8);
  - a training step (batch 8, 128 px, the training script's model, loss and optimizer; a
    batch held in memory; median of --steps after 3 warm-up steps);
  - predict_lovasz_loss.py's frame prediction of a 640x480 and a 1376x1032 frame (128 px
    model, overlap 0.25, gaussian blend, per-tile preprocessing);
  - the logits of the seed-0 network on one fixed batch, which the parent compares across
    the settings: oneDNN sums in another order, so the numbers differ by rounding only.
Prints the median of each over the rounds and the ratio on / off, with the CPU's flags.

    python bench/bench_onednn.py [--rounds 2] [--steps 6]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import hardware  # noqa: E402

hardware.prepare_tensorflow()

SETTINGS = {"off": "0", "on": "1"}


def child(steps, logits_file):
    """One setting's measurements, as one JSON line on stdout."""
    import tensorflow as tf
    import speed
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(0, 1, (speed.BATCH, 128, 128, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, len(speed.CLASSES), (speed.BATCH, 128, 128)).astype(np.int32))
    net = speed.training_model(128, "fp32", False)
    np.save(logits_file, net(x, training=False).numpy())
    step = speed.seconds_per_step(net, tf.data.Dataset.from_tensors((x, y)).repeat(), steps)
    frames = speed.measure_prediction("fp32", 1)
    print(json.dumps({"onednn": hardware.onednn_enabled(),
                      "matmul_gflops": hardware.matmul_gflops("float32"),
                      "step_s": step,
                      **{f"frame_{name}_s": m["frame_s"] for name, m in frames.items()}}))


def run_child(setting, steps, logits_file):
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": SETTINGS[setting]}
    done = subprocess.run([sys.executable, __file__, "--child", "--steps", str(steps),
                           "--logits", str(logits_file)],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"error: the child with TF_ENABLE_ONEDNN_OPTS={SETTINGS[setting]} failed:\n"
                 f"{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2,
                   help="times each setting runs, alternating (default: 2)")
    p.add_argument("--steps", type=int, default=6,
                   help="timed training steps per child (default: 6)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--logits", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.steps, args.logits)
        return
    from datetime import UTC, datetime
    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"machine: {hardware.cpu_line(hardware.cpu_summary())}")
    results = {setting: [] for setting in SETTINGS}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-onednn-") as scratch:
        for round_ in range(args.rounds):
            for setting in SETTINGS:
                m = run_child(setting, args.steps, Path(scratch) / f"{setting}.npy")
                results[setting].append(m)
                state = {True: "on", False: "off"}.get(m["onednn"], "unknown")
                print(f"round {round_ + 1}, TF_ENABLE_ONEDNN_OPTS={SETTINGS[setting]} (oneDNN "
                      f"{state}): matmul {m['matmul_gflops']:.1f} GFLOP/s, step "
                      f"{m['step_s']:.3f} s, frames {m['frame_640x480_s']:.3f} / "
                      f"{m['frame_1376x1032_s']:.3f} s", flush=True)
        logits = {s: np.load(Path(scratch) / f"{s}.npy") for s in SETTINGS}
    print(f"\nmedians over {args.rounds} rounds (fp32; {time.perf_counter() - start:.0f} s in all)")
    print(f"{'measure':>26} {'oneDNN off':>11} {'oneDNN on':>10} {'on / off':>9}")
    for key, label in (("matmul_gflops", "matmul GFLOP/s"),
                       ("step_s", "training step s (128 px)"),
                       ("frame_640x480_s", "640x480 frame s"),
                       ("frame_1376x1032_s", "1376x1032 frame s")):
        off, on = (float(np.median([m[key] for m in results[s]])) for s in SETTINGS)
        print(f"{label:>26} {off:>11.3f} {on:>10.3f} {on / off:>9.2f}")
    difference = np.abs(logits["on"] - logits["off"])
    same = np.mean(logits["on"].argmax(-1) == logits["off"].argmax(-1))
    print(f"\nlogits of one batch, on against off: max |difference| {difference.max():.2e} "
          f"(logits up to {np.abs(logits['off']).max():.2f}); argmax the same at {same:.4%} "
          "of the pixels")


if __name__ == "__main__":
    main()
