"""The paper's network with Keras' BatchNormalization against model.FusedBatchNormalization.

Keras 3 builds batch normalisation from separate ops and, under a bfloat16 policy, casts each
input to float32 and back; model.py's layer runs TensorFlow's fused kernel instead. Both
networks hold the same weights. In one process, alternating over --rounds so that a slow
spell of the machine hits both alike, for each precision this CPU runs (fp32, and bf16 where
--precision auto would pick it):
  - a training step (batch 8, 128 px, the training script's model, loss and optimizer, a
    batch held in memory; median of --steps after 3 warm-up steps), with grappler's
    remapper off as training runs (hardware.keep_nan_visible);
  - predict_lovasz_loss.py's prediction of a 1376x1032 frame (128 px model, overlap 0.25,
    gaussian blend, per-tile preprocessing), with the remapper on as prediction runs;
  - the logits of both networks on one batch, in training and inference mode (dropout off),
    which should agree to rounding.
Prints the medians over the rounds and the ratio fused / Keras, with the CPU's flags.

    python bench/bench_fused_bn.py [--rounds 3] [--steps 8] [--frames 1]
"""
import argparse
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import hardware  # noqa: E402

hardware.prepare_tensorflow()

FRAME = (1032, 1376)


def with_keras_batchnorm(net):
    """The same network and weights with Keras' own BatchNormalization layers."""
    from model import rebuilt

    def unfuse(layer):
        if layer["class_name"] != "FusedBatchNormalization":
            return False
        layer.update(module="keras.layers", class_name="BatchNormalization",
                     registered_name=None)
        return True

    return rebuilt(net, unfuse)


def both_networks(size, precision, compiled):
    """The fused network as training builds it (speed.training_model) and its Keras twin."""
    import speed
    import train_unet_xception_resnetblock as train
    from model import NormalizedSGD
    fused = speed.training_model(size, precision, False)
    plain = with_keras_batchnorm(fused)
    if compiled:
        plain.compile(optimizer=NormalizedSGD(0.01),
                      loss=train.make_loss("lovasz-softmax", 3, "softmax"),
                      metrics=train.make_metrics(speed.CLASSES))
    return {"keras": plain, "fused": fused}


def training_steps(precision, steps):
    import tensorflow as tf
    import speed
    hardware.keep_nan_visible()
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 255, (speed.BATCH, 128, 128, 3)).astype(np.float32))
    y = tf.constant(rng.integers(0, 3, (speed.BATCH, 128, 128)).astype(np.int32))
    batches = tf.data.Dataset.from_tensors((x, y)).repeat()
    return {kind: speed.seconds_per_step(net, batches, steps)
            for kind, net in both_networks(128, precision, True).items()}


def frame_seconds(precision, frames):
    import tensorflow as tf
    import predict_lovasz_loss as P
    import speed
    tf.config.optimizer.set_experimental_options({"remapping": True})
    images = [np.random.default_rng(i).integers(0, 256, FRAME, dtype=np.uint8)
              for i in range(frames)]
    prepare = P.TilePreparer(speed.PREPROCESSING)
    result = {}
    for kind, net in both_networks(speed.PREDICT_TILE, precision, False).items():
        predict_batch = P.make_predict_batch(net, "argmax")

        def run(image):
            return P.predict_frame(predict_batch, image, speed.PREDICT_TILE, 0.25, "gaussian",
                                   speed.BATCH, prepare=prepare)

        run(images[0])
        start = time.perf_counter()
        for image in images:
            run(image)
        result[kind] = (time.perf_counter() - start) / frames
    return result


def logits_gap(precision):
    """Largest |fused - Keras| logit on one batch, training and inference mode, and the
    share of pixels whose argmax agrees."""
    import tensorflow as tf
    from keras import layers
    nets = both_networks(128, precision, False)
    for net in nets.values():
        for layer in net.layers:
            if isinstance(layer, layers.Dropout):
                layer.rate = 0.0
    x = np.random.default_rng(1).uniform(0, 255, (8, 128, 128, 3)).astype(np.float32)
    gaps = {}
    for training in (True, False):
        out = {kind: np.asarray(tf.function(lambda b, n=net: n(b, training=training))(x))
               for kind, net in nets.items()}
        gaps["training" if training else "inference"] = (
            float(np.abs(out["fused"] - out["keras"]).max()),
            float((out["fused"].argmax(-1) == out["keras"].argmax(-1)).mean()))
    return gaps


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3,
                   help="times each measurement runs, alternating (default: 3)")
    p.add_argument("--steps", type=int, default=8,
                   help="timed training steps per network and round (default: 8)")
    p.add_argument("--frames", type=int, default=1,
                   help="timed 1376x1032 frames per network and round (default: 1)")
    args = p.parse_args()
    import keras
    machine = hardware.machine_summary()
    precision, _ = hardware.resolve_precision("auto", machine["bf16_conv_speedup"])
    precisions = ["fp32"] + (["bf16"] if precision == "bf16" else [])
    print(f"date: {datetime.now(timezone.utc).isoformat(timespec='seconds')}")
    print(f"machine: {hardware.machine_line(machine)}; --precision auto: {precision}")
    times = {}
    for round_number in range(1, args.rounds + 1):
        for prec in precisions:
            for name, measured in (("training step s", training_steps(prec, args.steps)),
                                   ("1376x1032 frame s", frame_seconds(prec, args.frames))):
                for kind, seconds in measured.items():
                    times.setdefault((prec, name), {}).setdefault(kind, []).append(seconds)
                print(f"round {round_number}, {prec}, {name}: keras {measured['keras']:.3f}, "
                      f"fused {measured['fused']:.3f}", flush=True)
    print(f"\nmedians over {args.rounds} rounds")
    print(f"{'precision':>9} {'measure':>18} {'keras':>8} {'fused':>8} {'fused / keras':>14}")
    for (prec, name), kinds in times.items():
        plain, fused = np.median(kinds["keras"]), np.median(kinds["fused"])
        print(f"{prec:>9} {name:>18} {plain:8.3f} {fused:8.3f} {fused / plain:14.2f}")
    print()
    for prec in precisions:
        keras.mixed_precision.set_global_policy(hardware.POLICIES[prec])
        for mode, (gap, agree) in logits_gap(prec).items():
            print(f"logits, {prec}, {mode} mode: max |fused - keras| {gap:.3g}; "
                  f"argmax the same at {100 * agree:.4f}% of the pixels")


if __name__ == "__main__":
    main()
