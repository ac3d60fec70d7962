"""What it costs to keep a NaN step from spoiling the weights: the time of one optimizer
update of the paper's network (128 px, 2 classes, bf16 where this CPU has it), with the
normalised gradients applied as they come, with NormalizedSGD's own test of each
variable's gradient norm (the default since commit ffaf599), and with a separate check of
every gradient as Keras' LossScaleOptimizer makes (scale 1, so only its check and skip
differ). Prints the median of 40 updates, three rounds interleaved, and each as a ratio to
the first. Takes about a minute on 2 CPU cores.

    python bench/bench_nan_check.py
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hardware  # noqa: E402

hardware.prepare_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from model import NormalizedSGD, build_model  # noqa: E402
from speed import median_seconds  # noqa: E402


class UncheckedNormalizedSGD(NormalizedSGD):
    """NormalizedSGD's update before commit ffaf599: no test of the norm."""

    def update_step(self, gradient, variable, learning_rate):
        gradient = keras.ops.cast(gradient, "float32")
        norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(gradient)))
        keras.optimizers.SGD.update_step(
            self, gradient / keras.ops.maximum(norm, self.epsilon), variable, learning_rate)


def median_update_ms(optimizer, variables, gradients, repeats=40):
    optimizer.build(variables)
    update = tf.function(lambda: optimizer.apply(gradients, variables))
    return 1000 * median_seconds(lambda: update() or variables[0].numpy(), repeats)


def main():
    print(hardware.machine_line(hardware.machine_summary()))
    precision = hardware.use_precision("auto")
    net = build_model((128, 128, 3), 2, weights=None)
    variables = net.trainable_variables
    gradients = [tf.zeros_like(v) + 1e-3 for v in variables]
    kinds = {"unchecked": lambda: UncheckedNormalizedSGD(0.01),
             "norm test (default)": lambda: NormalizedSGD(0.01),
             "check of every gradient": lambda: keras.optimizers.LossScaleOptimizer(
                 NormalizedSGD(0.01), initial_scale=1.0)}
    times = {kind: [] for kind in kinds}
    for _ in range(3):
        for kind, make in kinds.items():
            times[kind].append(median_update_ms(make(), variables, gradients))
    print(f"{precision}; {len(variables)} variables, "
          f"{sum(int(np.prod(v.shape)) for v in variables):,} weights")
    base = np.median(times["unchecked"])
    for kind, values in times.items():
        print(f"{kind:24s} {' '.join(f'{v:6.1f}' for v in values)} ms  "
              f"{np.median(values) / base:.2f}x")


if __name__ == "__main__":
    main()
