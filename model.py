"""The paper's network (Xception-encoder U-Net with residual decoder blocks), the
normalised-gradient SGD it was trained with, and precise-BN re-estimation.

The network follows "unet_xception_resnetblock" of Samani, Guo & Banerjee (2019):
Keras' Xception as encoder, skips taken from four of its blocks, and a decoder
where every stage is transposed conv -> concat skip -> conv -> 2 residual blocks.
"""
import contextlib
import itertools
import os
import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from geometry import INPUT_MULTIPLE

MODEL_NAME = "unet_xception_resnetblock"
LEAKY_SLOPE = 0.1

# Encoder layers feeding the decoder, deepest first, with the fraction of the input
# size each should have. Xception's valid convolutions leave the shallow ones a few
# pixels short; they are zero-padded at top/left as in the original code.
SKIPS = (
    ("block13_sepconv2_bn", 16),
    ("block4_sepconv2_bn", 8),
    ("block3_sepconv2_bn", 4),
    ("block2_sepconv2_bn", 2),
)
# Decoder filters of the four skip stages, as multiples of start_neurons.
SKIP_STAGE_WIDTHS = (16, 8, 4, 2)
BOTTLENECK_WIDTH = 32


# ---------------------------------------------------------------- network

@keras.saving.register_keras_serializable(package="microseg")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras' BatchNormalization computed by TensorFlow's fused kernel (FusedBatchNormV3).

    Keras 3 builds the layer from separate moment, normalisation and cast ops, and under a
    bfloat16 policy casts every input to float32 and the output back; the fused kernel
    reads bfloat16 (or float16) and keeps its statistics in float32, in one op forward and
    one backward. The same statistics, moving-average rule and outputs as Keras' layer (to
    float rounding); on a 2-core Xeon with AMX a training step of the paper's network took
    0.74x the time in bf16 and 0.94x in fp32, a frame's prediction in bf16 0.85x
    (bench/bench_fused_bn.py; bench/README.md, "Fused BatchNorm").
    Where the kernel does not apply (a mask, renorm, channels not last, moments made
    elsewhere: `fused` False, as distribute.synchronize_batchnorm sets) or is slower (fp32
    inference) it is Keras' layer.
    """

    fused = True
    FUSED_DTYPES = ("float32", "bfloat16", "float16")

    def _fusable(self, inputs, training, mask):
        rank = len(inputs.shape)
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        # In fp32 inference Keras' ops are the faster: grappler folds them into the
        # convolution before them, and a frame took 1.2x the time with the kernel.
        fp32_inference = dtype == "float32" and not (training and self.trainable)
        return (self.fused and mask is None and not self.renorm and not self.synchronized
                and rank == 4 and self.axis % rank == 3 and dtype in self.FUSED_DTYPES
                and not fp32_inference)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        channels = inputs.shape[-1]
        gamma = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels])
        beta = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels])
        if not (training and self.trainable):
            outputs, *_ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=gamma, offset=beta,
                mean=tf.cast(self.moving_mean, tf.float32),
                variance=tf.cast(self.moving_variance, tf.float32),
                epsilon=self.epsilon, data_format="NHWC", is_training=False)
            return tf.cast(outputs, self.compute_dtype)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=gamma, offset=beta, mean=tf.zeros([0]), variance=tf.zeros([0]),
            epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
            is_training=True)
        # The kernel hands out the unbiased variance; Keras' moving variance follows the
        # biased one, which the kernel normalised with.
        count = tf.cast(tf.size(inputs) // channels, tf.float32)
        variance = variance * (count - 1.0) / count
        self.moving_mean.assign(self.moving_mean * self.momentum
                                + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum
                                    + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


def _leaky(name):
    return layers.LeakyReLU(negative_slope=LEAKY_SLOPE, name=name)


def _conv(x, filters, name, size=3):
    return layers.Conv2D(filters, size, padding="same", name=name)(x)


def residual_block(x, filters, name):
    """LeakyReLU -> BN -> (conv-BN-LeakyReLU) -> (conv-BN), plus BN(input).

    The shortcut is batch-normalised too, as in the original: its BN parameters
    are part of the paper's parameter count.
    """
    y = _leaky(f"{name}_act0")(x)
    y = layers.BatchNormalization(name=f"{name}_bn0")(y)
    y = _conv(y, filters, f"{name}_conv1")
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = _leaky(f"{name}_act1")(y)
    y = _conv(y, filters, f"{name}_conv2")
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    shortcut = layers.BatchNormalization(name=f"{name}_bn_short")(x)
    return layers.Add(name=f"{name}_add")([y, shortcut])


def _conv_and_residuals(x, filters, name):
    x = _conv(x, filters, f"{name}_conv")
    x = residual_block(x, filters, f"{name}_res1")
    x = residual_block(x, filters, f"{name}_res2")
    return _leaky(f"{name}_act")(x)


def _up_stage(x, skip, filters, dropout, name):
    x = layers.Conv2DTranspose(filters, 3, strides=2, padding="same", name=f"{name}_deconv")(x)
    x = layers.Concatenate(name=f"{name}_concat")([x, skip])
    x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    return _conv_and_residuals(x, filters, name)


def _pad_to(x, height, width, name):
    """Zero-pad a skip at top/left up to (height, width); identity when it fits."""
    pad_h, pad_w = height - x.shape[1], width - x.shape[2]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f"skip {name} is {x.shape[1:3]}, larger than {(height, width)}")
    if pad_h == pad_w == 0:
        return x
    return layers.ZeroPadding2D(((pad_h, 0), (pad_w, 0)), name=f"{name}_pad")(x)


def _check_input_shape(input_shape):
    height, width, _ = input_shape
    if height is None or width is None or height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        raise ValueError(f"input height and width must be multiples of {INPUT_MULTIPLE}, "
                         f"got {input_shape}")


def _encoder(inp, weights):
    """Xception built on inp; weights is None/'none', 'imagenet' or a weights file."""
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    if weights == "imagenet" and inp.shape[-1] != 3:
        raise ValueError(f"ImageNet weights need 3 input channels, got {inp.shape[-1]}")
    if weights not in (None, "imagenet"):
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"encoder weights file {weights} not found")
    # Building on a given tensor leaves input_shape unset, which skips Xception's
    # 71-pixel minimum; the decoder only needs sides that are multiples of 32.
    return keras.applications.Xception(include_top=False, weights=weights, input_tensor=inp)


def build_model(input_shape=(256, 256, 3), num_classes=3, start_neurons=16, weights=None,
                dropout=0.1):
    """Xception U-Net with residual decoder, returning per-pixel logits.

    input_shape: (H, W, C) with H and W multiples of 32. weights: None or 'none'
    (random), 'imagenet' (needs C == 3), or a path to an Xception (include_top=False)
    weights file. Output: (H, W, num_classes) logits, no activation.
    """
    input_shape = tuple(input_shape)
    _check_input_shape(input_shape)
    height, width = input_shape[:2]
    inp = keras.Input(shape=input_shape, name="image")
    encoder = _encoder(inp, weights)
    skips = [_pad_to(encoder.get_layer(name).output, height // scale, width // scale, name)
             for name, scale in SKIPS]

    s = start_neurons
    x = _leaky("bottleneck_in_act")(skips[0])
    x = layers.MaxPooling2D(2, name="bottleneck_pool")(x)
    x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    x = _conv_and_residuals(x, BOTTLENECK_WIDTH * s, "bottleneck")

    # The deepest skip is the same tensor the bottleneck came from, before its
    # LeakyReLU, as in the original.
    for i, (skip, width_mult) in enumerate(zip(skips, SKIP_STAGE_WIDTHS)):
        x = _up_stage(x, skip, width_mult * s, dropout, f"up{4 - i}")

    x = layers.Conv2DTranspose(s, 3, strides=2, padding="same", name="up0_deconv")(x)
    x = layers.Dropout(dropout, name="up0_dropout")(x)
    x = _conv_and_residuals(x, s, "up0")
    x = layers.Dropout(dropout / 2, name="head_dropout")(x)
    # float32 even under a mixed-precision policy, so losses and softmax see full-precision logits.
    logits = layers.Conv2D(num_classes, 1, padding="same", dtype="float32", name="logits")(x)
    return with_fused_batchnorm(keras.Model(inp, logits, name=MODEL_NAME))


# ---------------------------------------------------------------- optimizer

@keras.saving.register_keras_serializable(package="microseg")
class NormalizedSGD(keras.optimizers.SGD):
    """SGD with (Nesterov) momentum on per-variable L2-normalised gradients.

    Each variable's gradient is divided by its own L2 norm before the momentum
    update, so every tensor moves by about learning_rate per step whatever the
    scale of its gradient. learning_rate may be a LearningRateSchedule; Keras
    evaluates it at the current iteration and passes the value to update_step.
    epsilon bounds the norm from below so a zero gradient gives a zero step.

    A variable whose gradient is not finite keeps its value and its momentum for the step:
    one NaN forward pass in bf16 (a 2-core Xeon with AMX gave one in about 1,500 steps)
    then costs one step, where an update would have turned every weight to NaN and cost
    training a rollback to the last epoch's end. The test is the norm this optimizer
    computes anyway: a separate pass over every gradient, as LossScaleOptimizer makes,
    took the paper's network's update to 1.30x its time on that host, this test to 0.99x
    (bench/bench_nan_check.py).
    """

    def __init__(self, learning_rate=1e-3, momentum=0.9, nesterov=True, epsilon=1e-12,
                 name="normalized_sgd", **kwargs):
        # SGD accepts only a float momentum; ints such as 0 are common in configs.
        super().__init__(learning_rate=learning_rate, momentum=float(momentum),
                         nesterov=nesterov, name=name, **kwargs)
        self.epsilon = epsilon

    def update_step(self, gradient, variable, learning_rate):
        # Runs after loss unscaling, clipping and gradient accumulation, so the
        # normalised gradient is the one that would otherwise reach SGD.
        gradient = keras.ops.cast(gradient, "float32")
        norm = keras.ops.sqrt(keras.ops.sum(keras.ops.square(gradient)))

        def update():
            super(NormalizedSGD, self).update_step(
                gradient / keras.ops.maximum(norm, self.epsilon), variable, learning_rate)

        keras.ops.cond(keras.ops.isfinite(norm), update, lambda: None)

    def get_config(self):
        config = super().get_config()
        config["epsilon"] = self.epsilon
        return config


@keras.saving.register_keras_serializable(package="microseg")
class ConfusionIoU(keras.metrics.Metric):
    """IoU from the confusion matrix summed over the epoch's batches, with the pipeline's one
    convention (metrics.iou_per_class: a class absent from label and prediction scores
    1), so training's log and prediction's report give comparable numbers.

    class_index None gives the mean over all classes, background included; an index gives
    that class's IoU. y_true: class indices; y_pred: per-class scores (argmax decides).
    """

    def __init__(self, num_classes, class_index=None, name="mean_iou", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.class_index = class_index
        # float64: float32 counts stop being exact past 2^24 pixels (two 256 px batches).
        self.confusion = self.add_variable((num_classes, num_classes), "zeros",
                                           dtype="float64", name="confusion")

    def update_state(self, y_true, y_pred, sample_weight=None):
        n = self.num_classes
        label = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
        pred = keras.ops.reshape(keras.ops.argmax(y_pred, axis=-1), (-1,))
        valid = keras.ops.logical_and(label >= 0, label < n)
        index = keras.ops.where(valid, label * n + keras.ops.cast(pred, "int32"), n * n)
        # A segment sum, not bincount: its output length is a constant, as XLA needs.
        counts = keras.ops.segment_sum(keras.ops.ones_like(index), index,
                                       num_segments=n * n + 1)[:n * n]
        self.confusion.assign_add(keras.ops.reshape(keras.ops.cast(counts, "float64"), (n, n)))

    def result(self):
        from metrics import iou_per_class
        iou = iou_per_class(self.confusion, xp=keras.ops)
        return keras.ops.cast(keras.ops.mean(iou) if self.class_index is None
                              else iou[self.class_index], "float32")

    def reset_state(self):
        self.confusion.assign(keras.ops.zeros_like(self.confusion))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes,
                "class_index": self.class_index}


def forward_flops(net):
    """FLOPs (2 x multiply-adds) of every convolution of one forward pass of one input, from
    the layer shapes; BatchNorm and activations are left out, so a floor is a little low."""
    total = 0
    for layer in net.layers:
        if not isinstance(layer, (layers.Conv2D, layers.SeparableConv2D,
                                  layers.Conv2DTranspose)):
            continue
        _, h_in, w_in, c_in = layer.input.shape
        _, h_out, w_out, c_out = layer.output.shape
        kh, kw = layer.kernel_size
        if isinstance(layer, layers.SeparableConv2D):
            mult = layer.depth_multiplier
            total += 2 * h_out * w_out * kh * kw * c_in * mult      # depthwise
            total += 2 * h_out * w_out * c_in * mult * c_out        # pointwise
        elif isinstance(layer, layers.Conv2DTranspose):
            total += 2 * h_in * w_in * kh * kw * c_in * c_out       # each input scattered
        else:
            total += 2 * h_out * w_out * kh * kw * c_in * c_out
    return total


def rebuilt(net, edit):
    """net rebuilt from its config after edit(layer_config), which says whether it changed
    that layer, with net's weights; net itself when nothing changed."""
    config = net.get_config()
    changed = [edit(layer) for layer in config["layers"]]
    if not any(changed):
        return net
    rebuilt = type(net).from_config(config)
    rebuilt.set_weights(net.get_weights())
    return rebuilt


def with_precision(net, precision):
    """The same network and weights computing in another precision (fp32, bf16, fp16).

    A saved model keeps the dtype policy it was trained under in every layer; prediction
    rebuilds it under the one asked for (the model itself when nothing changes). The
    logits layer stays float32, as build_model made it, and the input layer keeps its
    float32 input.
    """
    from hardware import POLICIES
    target = POLICIES[precision]

    def set_policy(layer):
        if layer["class_name"] == "InputLayer" or layer["config"].get("name") == "logits":
            return False
        policy = layer["config"].get("dtype")
        if (policy.get("config", {}).get("name") if isinstance(policy, dict) else policy) == target:
            return False
        layer["config"]["dtype"] = target
        return True

    return rebuilt(net, set_policy)


def with_fused_batchnorm(net):
    """The same network and weights with every Keras BatchNormalization layer a
    FusedBatchNormalization: Xception's, which keras.applications builds, and those of a
    model saved before the fused layer existed (net itself when there are none)."""
    fused = {key: value for key, value
             in keras.saving.serialize_keras_object(FusedBatchNormalization()).items()
             if key != "config"}

    def fuse(layer):
        if layer["class_name"] != "BatchNormalization":
            return False
        layer.update(fused)
        return True

    return rebuilt(net, fuse)


# ---------------------------------------------------------------- precise BN

def _reduction_axes(bn):
    rank = len(bn.input.shape)
    channel_axis = bn.axis % rank
    return tuple(axis for axis in range(rank) if axis != channel_axis)


def _batch_moments_model(model, bn_layers):
    """Model giving, per BN layer, the mean and biased variance of its input."""
    outputs = []
    for bn in bn_layers:
        # Statistics in float32 under a bfloat16/float16 policy too: Keras' moments would
        # round them back to the input's 8-bit mantissa.
        mean, variance = keras.ops.moments(keras.ops.cast(bn.input, "float32"),
                                           axes=_reduction_axes(bn))
        outputs += [mean, variance]
    # A lone input given as a list makes Keras warn on every call with a tensor.
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    return keras.Model(inputs, outputs)


# One traced probe per model and BN layer list: training re-estimates the statistics
# every epoch and for SWA, and each new trace of the probe cost about 5 s on 2 cores.
_moment_functions = weakref.WeakKeyDictionary()


def _batch_moments_function(model, bn_layers):
    cached = _moment_functions.get(model)
    if cached is None or cached[0] != bn_layers:
        probe = _batch_moments_model(model, bn_layers)
        # As a graph the probe runs about twice as fast as eagerly and frees each
        # activation once used (1.4 instead of 4 GB at 8 x 256 x 256). It is only called,
        # and so only traced, inside _dropout_off: the trace has no dropout.
        cached = bn_layers, tf.function(lambda batch: probe(batch, training=True),
                                        reduce_retracing=True)
        _moment_functions[model] = cached
    return cached[1]


@contextlib.contextmanager
def _dropout_off(model):
    # Dropout reads its rate on every call, so a zero rate switches it off in
    # training-mode calls without touching the BN layers' training behaviour.
    dropouts = [layer for layer in model.layers if isinstance(layer, layers.Dropout)]
    rates = [layer.rate for layer in dropouts]
    for layer in dropouts:
        layer.rate = 0.0
    try:
        yield
    finally:
        for layer, rate in zip(dropouts, rates):
            layer.rate = rate


def reestimate_batchnorm(model, batches, num_batches):
    """Precise BN: set each BN layer's moving statistics from num_batches batches.

    batches: iterable of input arrays/tensors (training images, preprocessed).
    The model runs in training mode so that every BN layer normalises with
    batch statistics, as during training: a layer's input then has the
    distribution the layers after it were trained on, whatever the current
    moving statistics are. Dropout is switched off meanwhile, as at inference.
    moving_mean becomes the average of the per-batch means and moving_variance
    the average of the per-batch biased variances (Keras BN normalises and
    updates its moving variance with the biased variance too). Frozen BN layers
    (trainable False) normalise with their moving statistics even in training,
    so they are left unchanged, as are BN layers inside nested sub-models.
    Raises ValueError if batches runs out first.
    """
    bn_layers = [layer for layer in model.layers
                 if isinstance(layer, layers.BatchNormalization) and layer.trainable]
    if num_batches < 1:
        raise ValueError(f"num_batches must be at least 1, got {num_batches}")
    if not bn_layers:
        return
    saved = {bn: (bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in bn_layers}
    batch_moments = _batch_moments_function(model, bn_layers)
    sums = None
    seen = 0
    try:
        with _dropout_off(model):
            for batch in itertools.islice(batches, num_batches):
                moments = [np.asarray(m, dtype=np.float64) for m in batch_moments(batch)]
                sums = moments if sums is None else [s + m for s, m in zip(sums, moments)]
                seen += 1
    finally:
        # Training-mode calls also nudge the moving statistics; undo that so an
        # error leaves the model as it was.
        for bn, (mean, variance) in saved.items():
            bn.moving_mean.assign(mean)
            bn.moving_variance.assign(variance)
    if seen < num_batches:
        raise ValueError(f"batches gave {seen} batches, {num_batches} were asked for")
    for i, bn in enumerate(bn_layers):
        bn.moving_mean.assign((sums[2 * i] / seen).astype(bn.moving_mean.dtype))
        bn.moving_variance.assign((sums[2 * i + 1] / seen).astype(bn.moving_variance.dtype))
