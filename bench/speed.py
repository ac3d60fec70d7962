"""Training and prediction speed against this machine's FLOP floor, in fp32 and bf16.

All numbers come from this one run:
  - the machine's matmul rate (2048 x 2048, best of 8) in float32 and bfloat16;
  - the network's forward FLOPs per patch (every convolution, from the layer shapes);
  - the fp32 floor of a training step: 3 x forward FLOPs (forward + the two products of
    the backward pass) x batch / fp32 matmul rate; of a frame: tiles x forward FLOPs /
    fp32 matmul rate. Every time is printed as a ratio to its fp32 floor;
  - a training step (batch 8; 128 and 256 px patches; the training script's model, loss,
    optimizer and metrics, compiled as it compiles them) on batches already in memory;
  - where a step goes: the forward pass in training mode, the loss and its gradient, the
    optimizer's update, and the rest (the backward pass through the network);
  - the input pipeline: seconds per batch of train_unet_xception_resnetblock.patch_dataset
    reading the same patches from PNG files alone, and a step fed by it, whose excess over
    the in-memory step is the pipeline's share of a step;
  - predict_lovasz_loss.py's frame prediction (overlap 0.25, gaussian blend, per-tile
    preprocessing) of 640x480 and 1376x1032 frames with a 128 px model.
On a GPU it prints patches/s and frames/s instead of CPU ratios, with fp16 and XLA.

    python bench/speed.py [--steps 6] [--frames 2] [--sizes 128 256] [--xla]

--xla adds, on a CPU, the in-memory training step compiled by XLA (the training script's
--jit-compile on) beside the same step without it.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import hardware  # noqa: E402

hardware.prepare_tensorflow()

BATCH = 8
CLASSES = ["background", "bead", "cell"]
FRAMES = {"640x480": (480, 640), "1376x1032": (1032, 1376)}
PREDICT_TILE = 128
PREPROCESSING = {"mean": [128.0], "std": [40.0], "gamma": 1.2}
TARGETS = {("train", "fp32"): 1.15, ("train", "bf16"): 0.7,
           ("predict", "fp32"): 1.1, ("predict", "bf16"): 0.65}


def synthetic_patches(work, size, count, seed=0):
    """count grey patches and 3-class labels as pre_processing.py leaves them."""
    import cv2
    rng = np.random.default_rng(seed)
    for sub in ("prep", "label"):
        (work / "train" / sub).mkdir(parents=True)
    for i in range(count):
        label = np.zeros((size, size), np.uint8)
        for _ in range(6):
            y, x = rng.integers(0, size, 2)
            cv2.circle(label, (int(x), int(y)), int(rng.integers(4, size // 6)),
                       int(rng.integers(1, 3)), -1)
        image = np.clip(rng.normal(110, 20, (size, size)) + 50.0 * label, 0, 255)
        cv2.imwrite(str(work / "train" / "prep" / f"{i:06d}.png"), image.astype(np.uint8))
        cv2.imwrite(str(work / "train" / "label" / f"{i:06d}.png"), label)
    return sorted(p.name for p in (work / "train" / "prep").glob("*.png"))


def training_model(size, precision, jit):
    """The network compiled as train_unet_xception_resnetblock.py compiles it."""
    import keras
    import train_unet_xception_resnetblock as train
    from model import NormalizedSGD, build_model
    keras.mixed_precision.set_global_policy(hardware.POLICIES[precision])
    hardware.keep_nan_visible()
    keras.utils.set_random_seed(0)
    net = build_model((size, size, 3), len(CLASSES), weights=None)
    net.compile(optimizer=NormalizedSGD(0.01), loss=train.make_loss("lovasz-softmax", 3, "softmax"),
                metrics=train.make_metrics(CLASSES), jit_compile=jit)
    return net


def seconds_per_step(net, dataset, steps):
    """Median seconds of a fit step, after three warm-up steps (tracing, allocation, oneDNN's
    choice of kernels); the median keeps a step slowed by the machine out."""
    import keras
    times = []

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter() - self.start)

    net.fit(dataset, steps_per_epoch=3, epochs=1, verbose=0)
    net.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[StepTimer()])
    return float(np.median(times))


def pipeline_seconds_per_batch(dataset, batches):
    iterator = iter(dataset)
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return (time.perf_counter() - start) / batches


def measure_training(size, precision, steps, work, names, jit=False, also_xla=False):
    """Seconds of a step on one batch held in memory and fed from the PNG files, where the
    step goes, and with also_xla the same in-memory step compiled by XLA."""
    import tensorflow as tf
    import train_unet_xception_resnetblock as train
    files = train.patch_dataset(work, names, 1, BATCH, shuffle_seed=0)
    x, y = next(iter(files))
    memory = tf.data.Dataset.from_tensors((x, y)).repeat()
    net = training_model(size, precision, jit)
    result = {"step_s": seconds_per_step(net, memory, steps),
              "step_from_files_s": seconds_per_step(net, files, steps),
              "pipeline_alone_s": pipeline_seconds_per_batch(files, 2 * steps),
              **step_parts(net, x, y, steps)}
    if also_xla:
        result["xla_step_s"] = seconds_per_step(training_model(size, precision, True), memory,
                                                steps)
    return result


def median_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def step_parts(net, x, y, repeats):
    """Where a step's time goes: the forward pass in training mode, the loss with its
    gradient with respect to the logits, the optimizer's update of every variable; the rest
    of the step is the backward pass through the network."""
    import tensorflow as tf
    forward = tf.function(lambda batch: net(batch, training=True))
    logits = tf.constant(forward(x))

    @tf.function
    def loss_and_gradient(labels, scores):
        with tf.GradientTape() as tape:
            tape.watch(scores)
            value = net.loss(labels, scores)
        return tape.gradient(value, scores)

    gradients = [tf.zeros_like(v) + 1e-3 for v in net.trainable_variables]
    update = tf.function(lambda: net.optimizer.apply(gradients, net.trainable_variables))
    return {"forward_s": median_seconds(lambda: forward(x).numpy(), repeats),
            "loss_s": median_seconds(lambda: loss_and_gradient(y, logits).numpy(), repeats),
            "update_s": median_seconds(lambda: update() or net.trainable_variables[0].numpy(),
                                       repeats)}


def measure_prediction(precision, frames, jit=False):
    import keras
    import predict_lovasz_loss as P
    from model import build_model
    keras.mixed_precision.set_global_policy(hardware.POLICIES[precision])
    keras.utils.set_random_seed(0)
    net = build_model((PREDICT_TILE, PREDICT_TILE, 3), len(CLASSES), weights=None)
    predict_batch = P.make_predict_batch(net, "argmax")
    prepare = P.TilePreparer(PREPROCESSING)
    rng = np.random.default_rng(0)
    result = {}
    for name, shape in FRAMES.items():
        images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(frames)]

        def run(image):
            return P.predict_frame(predict_batch, image, PREDICT_TILE, 0.25, "gaussian",
                                   BATCH, prepare=prepare)

        run(images[0])
        start = time.perf_counter()
        for image in images:
            run(image)
        result[name] = {"tiles": len(P.tile_positions(*shape, PREDICT_TILE, 0.25)),
                        "frame_s": (time.perf_counter() - start) / frames}
    return result


def forward_gflops(size):
    import keras
    from model import build_model, forward_flops
    keras.mixed_precision.set_global_policy("float32")
    return forward_flops(build_model((size, size, 3), len(CLASSES), weights=None)) / 1e9


def verdict(kind, precision, ratio):
    target = TARGETS[(kind, precision)]
    return f"target <= {target}: {'met' if ratio <= target else 'NOT met'}"


def cpu_report(args, machine, precisions):
    fp32 = machine["matmul_gflops"]["fp32"]
    print("\nforward GFLOP per patch: " + ", ".join(
        f"{s} px {forward_gflops(s):.2f}" for s in args.sizes))
    print("\ntraining step, batch 8 (ratios to the fp32 floor = 3 x forward FLOPs x 8 / fp32 "
          "matmul rate)")
    print(f"{'patch':>6} {'precision':>9} {'floor s':>8} {'step s':>8} {'x floor':>8} "
          f"{'from files s':>13} {'pipeline share':>15} {'pipeline alone s':>17}  target")
    parts = []
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as scratch:
        for size in args.sizes:
            work = Path(scratch) / str(size)
            names = synthetic_patches(work, size, 8 * BATCH)
            floor = 3 * forward_gflops(size) * BATCH / fp32
            for precision in precisions:
                m = measure_training(size, precision, args.steps, work, names,
                                     also_xla=args.xla)
                ratio = m["step_s"] / floor
                share = max(0.0, m["step_from_files_s"] - m["step_s"]) / m["step_from_files_s"]
                print(f"{size:>6} {precision:>9} {floor:>8.3f} {m['step_s']:>8.3f} {ratio:>8.2f} "
                      f"{m['step_from_files_s']:>13.3f} {share:>14.1%} "
                      f"{m['pipeline_alone_s']:>17.4f}  {verdict('train', precision, ratio)}; "
                      f"pipeline <= 5 %: {'met' if share <= 0.05 else 'NOT met'}", flush=True)
                parts.append((size, precision, floor, m))
    print("\nwhere a step goes (seconds; x floor = against a third of the step floor, the "
          "forward FLOPs' share)")
    print(f"{'patch':>6} {'precision':>9} {'forward':>8} {'x floor':>8} {'loss+grad':>10} "
          f"{'update':>8} {'backward (rest)':>16} {'x 2/3 floor':>12}")
    for size, precision, floor, m in parts:
        rest = m["step_s"] - m["forward_s"] - m["loss_s"] - m["update_s"]
        print(f"{size:>6} {precision:>9} {m['forward_s']:>8.3f} {m['forward_s'] / (floor / 3):>8.2f} "
              f"{m['loss_s']:>10.3f} {m['update_s']:>8.3f} {rest:>16.3f} "
              f"{rest / (2 * floor / 3):>12.2f}")
    if args.xla:
        print("\ntraining step with XLA (train_unet_xception_resnetblock.py --jit-compile on), "
              "batch 8, the same batch in memory")
        print(f"{'patch':>6} {'precision':>9} {'plain s':>8} {'XLA s':>8} {'XLA / plain':>12}")
        for size, precision, _, m in parts:
            print(f"{size:>6} {precision:>9} {m['step_s']:>8.3f} {m['xla_step_s']:>8.3f} "
                  f"{m['xla_step_s'] / m['step_s']:>12.2f}")
    print(f"\nframe prediction, {PREDICT_TILE} px model, overlap 0.25, gaussian blend, batch 8 "
          "(ratio to the fp32 floor = tiles x forward FLOPs / fp32 matmul rate)")
    print(f"{'frame':>10} {'tiles':>6} {'precision':>9} {'floor s':>8} {'frame s':>8} "
          f"{'x floor':>8}  target")
    tile_gflops = forward_gflops(PREDICT_TILE)
    for precision in precisions:
        for name, m in measure_prediction(precision, args.frames).items():
            floor = m["tiles"] * tile_gflops / fp32
            ratio = m["frame_s"] / floor
            print(f"{name:>10} {m['tiles']:>6} {precision:>9} {floor:>8.3f} {m['frame_s']:>8.3f} "
                  f"{ratio:>8.2f}  {verdict('predict', precision, ratio)}", flush=True)


def gpu_report(args, machine):
    print("\nGPU: patches/s (training, batch 8) and frames/s (prediction), fp32 and fp16 "
          "mixed precision, with XLA")
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as scratch:
        for size in args.sizes:
            work = Path(scratch) / str(size)
            names = synthetic_patches(work, size, 8 * BATCH)
            for precision in ("fp32", "fp16"):
                m = measure_training(size, precision, args.steps, work, names, jit=True)
                print(f"  training {size} px {precision}: {BATCH / m['step_s']:.1f} patches/s "
                      f"(from files {BATCH / m['step_from_files_s']:.1f})", flush=True)
    for precision in ("fp32", "fp16"):
        for name, m in measure_prediction(precision, args.frames).items():
            print(f"  predict {name} {precision}: {1 / m['frame_s']:.2f} frames/s", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6, help="timed training steps (default: 6)")
    p.add_argument("--frames", type=int, default=2, help="timed frames per size (default: 2)")
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256],
                   help="training patch sizes (default: 128 256)")
    p.add_argument("--xla", action="store_true",
                   help="on a CPU, also time the training step compiled by XLA")
    args = p.parse_args()
    from datetime import UTC, datetime
    machine = hardware.machine_summary()
    print(f"date: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(f"machine: {hardware.machine_line(machine)}")
    if machine["gpus"]:
        gpu_report(args, machine)
        return
    if hardware.cpu_has_native_bf16():
        print(f"bf16: native flags; {hardware.resolve_precision('auto', machine['bf16_conv_speedup'])[1]}")
    else:
        print("bf16: not native on this CPU (emulated; targets apply only where native)")
    cpu_report(args, machine, ("fp32", "bf16"))


if __name__ == "__main__":
    main()
