import copy

import keras
import numpy as np
import pytest

import model as M

PAPER_PARAMS = 38_431_483


@pytest.fixture(scope="module")
def model256():
    return M.build_model((256, 256, 3), num_classes=3)


@pytest.fixture(scope="module")
def model64():
    return M.build_model((64, 64, 3), num_classes=3)


@pytest.fixture(scope="module")
def image64():
    return np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype("float32")


# ---------------------------------------------------------------- network

def test_paper_parameter_count(model256):
    assert model256.count_params() == PAPER_PARAMS
    assert model256.name == M.MODEL_NAME
    assert model256.output_shape == (None, 256, 256, 3)


@pytest.mark.parametrize("shape, classes, weights", [
    ((512, 768, 3), 2, None), ((64, 96, 1), 3, "none")])
def test_builds_for_multiples_of_32(shape, classes, weights):
    model = M.build_model(shape, num_classes=classes, weights=weights)
    assert model.output_shape == (None, shape[0], shape[1], classes)


def test_forward_pass_gives_logits(model64, image64):
    logits = model64.predict(image64, verbose=0)
    assert logits.shape == (2, 64, 64, 3)
    assert np.isfinite(logits).all()
    assert model64.get_layer("logits").activation is keras.activations.linear


@pytest.mark.parametrize("shape", [(100, 100, 3), (64, 80, 3)])
def test_rejects_sides_not_multiple_of_32(shape):
    with pytest.raises(ValueError, match="multiples of 32"):
        M.build_model(shape)


@pytest.mark.parametrize("fixture, sizes", [
    ("model256", {"block13_sepconv2_bn": 16, "block4_sepconv2_bn": 32,
                  "block3_sepconv2_bn": 63, "block2_sepconv2_bn": 125}),
    ("model64", {"block13_sepconv2_bn": 4, "block4_sepconv2_bn": 8,
                 "block3_sepconv2_bn": 15, "block2_sepconv2_bn": 29}),
])
def test_skips_found_by_name_and_padded_top_left(fixture, sizes, request):
    model = request.getfixturevalue(fixture)
    side = model.input_shape[1]
    for name, scale in M.SKIPS:
        assert model.get_layer(name).output.shape[1:3] == (sizes[name], sizes[name])
        missing = side // scale - sizes[name]
        if missing:
            pad = model.get_layer(f"{name}_pad")
            assert pad.padding == ((missing, 0), (missing, 0))
            assert pad.output.shape[1] == side // scale
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)


def test_non_square_skips_padded_per_axis():
    model = M.build_model((64, 96, 3), num_classes=2)
    # block2 gives 29 x 45 here, so 3 rows and 3 columns are missing; block3 15 x 23.
    assert model.get_layer("block2_sepconv2_bn_pad").padding == ((3, 0), (3, 0))
    assert model.get_layer("block3_sepconv2_bn_pad").padding == ((1, 0), (1, 0))
    assert model.get_layer("up1_concat").output.shape[1:3] == (32, 48)


@pytest.mark.parametrize("suffix", [".weights.h5", ".h5"])
def test_encoder_weights_from_local_file(tmp_path, suffix):
    reference = keras.applications.Xception(include_top=False, weights=None,
                                            input_tensor=keras.Input((64, 64, 3)))
    path = str(tmp_path / f"xception{suffix}")
    if suffix == ".h5":
        reference.save(path)  # legacy HDF5, the layout of Keras' ImageNet files
    else:
        reference.save_weights(path)
    model = M.build_model((64, 64, 3), num_classes=2, weights=path)
    # The model keeps Xception up to block13_sepconv2_bn, first in its layer
    # order. Compare weights in that order: Xception's shortcut layers are
    # auto-named (conv2d_N), differently in each instance.
    deepest = model.layers.index(model.get_layer("block13_sepconv2_bn"))
    got = [w.numpy() for layer in model.layers[:deepest + 1] for w in layer.weights]
    expected = reference.get_weights()[:len(got)]
    assert [w.shape for w in got] == [w.shape for w in expected]
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_missing_weights_file_is_reported(tmp_path):
    with pytest.raises(FileNotFoundError):
        M.build_model((64, 64, 3), weights=str(tmp_path / "absent.weights.h5"))


def test_imagenet_weights_need_rgb():
    with pytest.raises(ValueError, match="3 input channels"):
        M.build_model((64, 64, 1), weights="imagenet")


def test_save_and_reload_give_identical_logits(model64, image64, tmp_path):
    schedule = keras.optimizers.schedules.CosineDecay(0.01, decay_steps=100)
    model64.compile(M.NormalizedSGD(schedule),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model64.optimizer.build(model64.trainable_variables)  # so its slots are saved too
    expected = model64.predict(image64, verbose=0)
    # .keras first: Keras 3.15's legacy .h5 save pops the optimizer out of the
    # live compile config, so a later .keras save would lose it.
    keras_path = str(tmp_path / "m.keras")
    model64.save(keras_path)
    reloaded = keras.models.load_model(keras_path)
    assert isinstance(reloaded.optimizer, M.NormalizedSGD)
    assert isinstance(reloaded.optimizer._learning_rate,
                      keras.optimizers.schedules.CosineDecay)
    np.testing.assert_array_equal(reloaded.predict(image64, verbose=0), expected)

    h5_path = str(tmp_path / "m.h5")
    model64.save(h5_path)
    reloaded = keras.models.load_model(h5_path, compile=False)
    np.testing.assert_array_equal(reloaded.predict(image64, verbose=0), expected)


def test_every_batchnorm_of_the_network_is_fused(model64):
    batchnorms = [layer for layer in model64.layers
                  if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batchnorms) == 85        # Xception's 38 and the decoder's 47
    assert all(type(layer) is M.FusedBatchNormalization for layer in batchnorms)


def _batchnorm_pair(dtype):
    """A Keras BatchNormalization and a fused one with the same, non-trivial weights."""
    rng = np.random.default_rng(5)
    weights = [rng.uniform(0.5, 2.0, 6), rng.normal(0.0, 1.0, 6), rng.normal(1.0, 0.5, 6),
               rng.uniform(0.5, 3.0, 6)]
    pair = []
    for kind in (keras.layers.BatchNormalization, M.FusedBatchNormalization):
        layer = kind(momentum=0.9, dtype=dtype)
        layer.build((None, 2, 3, 6))
        layer.set_weights(weights)
        pair.append(layer)
    return pair


@pytest.mark.parametrize("training", [True, False])
def test_the_fused_layer_computes_what_keras_layer_does(training):
    """Outputs, gradients and the moving statistics' update; 2 x 2 x 3 values per channel,
    so the kernel's unbiased variance (12/11 of the biased one) would show."""
    import tensorflow as tf
    x = tf.constant(np.random.default_rng(6).normal(2.0, 3.0, (2, 2, 3, 6)), tf.float32)
    results = []
    for layer in _batchnorm_pair("float32"):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * tf.range(6, dtype=tf.float32))
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance])
    for keras_value, fused_value in zip(*results):
        np.testing.assert_allclose(np.asarray(fused_value), np.asarray(keras_value),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("training", [True, False])
def test_the_fused_layer_in_bfloat16_keeps_float32_statistics(training):
    import tensorflow as tf
    x = tf.constant(np.random.default_rng(7).normal(2.0, 3.0, (2, 2, 3, 6)), tf.float32)
    plain, fused = _batchnorm_pair("mixed_bfloat16")
    expected, y = plain(x, training=training), fused(x, training=training)
    assert y.dtype == tf.bfloat16 and fused.moving_variance.dtype == "float32"
    np.testing.assert_allclose(np.asarray(tf.cast(y, tf.float32)),
                               np.asarray(tf.cast(expected, tf.float32)), atol=0.02)
    np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(),
                               rtol=1e-2)


def test_one_value_per_channel_gives_a_zero_variance_not_nan():
    layer = M.FusedBatchNormalization(momentum=0.0)
    y = layer(np.ones((1, 1, 1, 4), "float32"), training=True)
    assert np.isfinite(np.asarray(y)).all()
    np.testing.assert_array_equal(layer.moving_variance.numpy(), np.zeros(4))


def test_moments_made_elsewhere_take_keras_path():
    """distribute.synchronize_batchnorm hands the layer moments of the global batch and
    sets fused False; the fused kernel would make its own."""
    import types
    plain, fused = _batchnorm_pair("float32")
    x = np.random.default_rng(8).normal(size=(2, 2, 3, 6)).astype("float32")
    given = (np.full(6, 1.5, "float32"), np.full(6, 4.0, "float32"))
    for layer in (plain, fused):
        layer._moments = types.MethodType(lambda self, inputs, mask: given, layer)
    fused.fused = False
    np.testing.assert_allclose(np.asarray(fused(x, training=True)),
                               np.asarray(plain(x, training=True)), rtol=1e-6)


def test_a_model_saved_with_keras_batchnorm_loads_fused(model64, image64, tmp_path):
    """Models trained before the fused layer load with it, computing as before."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from bench_fused_bn import with_keras_batchnorm
    from model_folder import load_model
    plain = with_keras_batchnorm(model64)
    assert not any(isinstance(layer, M.FusedBatchNormalization) for layer in plain.layers)
    plain.save(tmp_path / "old.h5")
    loaded = load_model(tmp_path / "old.h5")
    assert all(type(layer) is M.FusedBatchNormalization for layer in loaded.layers
               if isinstance(layer, keras.layers.BatchNormalization))
    np.testing.assert_allclose(loaded.predict(image64, verbose=0),
                               plain.predict(image64, verbose=0), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- optimizer

def _dense_model():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(2)])


def _known_gradients(model, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=v.shape).astype("float32") * 10.0 ** i
            for i, v in enumerate(model.trainable_variables)]


def test_defaults_are_the_papers():
    config = M.NormalizedSGD().get_config()
    assert config["learning_rate"] == pytest.approx(1e-3)
    assert config["momentum"] == 0.9 and config["nesterov"] is True


def test_step_is_learning_rate_times_unit_gradient():
    model = _dense_model()
    grads = _known_gradients(model)
    grads[-1] = np.zeros_like(grads[-1])  # a zero gradient must not give NaN
    before = [v.numpy() for v in model.trainable_variables]
    optimizer = M.NormalizedSGD(learning_rate=0.05, momentum=0)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    for g, old, var in zip(grads, before, model.trainable_variables):
        norm = np.linalg.norm(g)
        expected = old - 0.05 * g / norm if norm else old
        np.testing.assert_allclose(var.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_nesterov_momentum_on_normalised_gradients():
    model = _dense_model()
    var = model.trainable_variables[0]
    lr, mu = 0.1, 0.9
    optimizer = M.NormalizedSGD(learning_rate=lr, momentum=mu)
    w, velocity = var.numpy(), np.zeros(var.shape)
    for seed in (1, 2):
        g = _known_gradients(model, seed)[0]
        unit = g / np.linalg.norm(g)
        optimizer.apply_gradients([(g, var)])
        velocity = mu * velocity - lr * unit
        w = w + mu * velocity - lr * unit
        np.testing.assert_allclose(var.numpy(), w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("traced", [False, True])
def test_a_non_finite_gradient_leaves_its_variable_and_momentum_as_they_were(traced):
    """One NaN step in bf16 must not spoil the weights: the variable whose gradient is not
    finite keeps its value and momentum, in a traced step as in an eager one, and a
    variable with a finite gradient in the same step still moves."""
    import tensorflow as tf
    model = _dense_model()
    optimizer = M.NormalizedSGD(learning_rate=0.1, momentum=0.9)
    variables = model.trainable_variables
    finite = _known_gradients(model)
    step = lambda grads: optimizer.apply_gradients(zip(grads, variables))
    step = tf.function(step) if traced else step
    step([tf.constant(g) for g in finite])
    before = [v.numpy() for v in variables]
    momentum_before = [m.numpy() for m in optimizer.momentums]
    spoilt = [g.copy() for g in finite]
    spoilt[0][0, 0], spoilt[2][1, 1] = np.nan, np.inf
    step([tf.constant(g) for g in spoilt])
    for i in (0, 2):
        np.testing.assert_array_equal(variables[i].numpy(), before[i])
        np.testing.assert_array_equal(optimizer.momentums[i].numpy(), momentum_before[i])
    for i in (1, 3):
        assert not np.allclose(variables[i].numpy(), before[i])
    assert all(np.isfinite(v.numpy()).all() for v in [*variables, *optimizer.momentums])


def test_learning_rate_schedule_drives_the_steps():
    schedule = keras.optimizers.schedules.CosineDecay(0.2, decay_steps=4)
    optimizer = M.NormalizedSGD(schedule, momentum=0)
    var = _dense_model().trainable_variables[0]
    g = np.ones(var.shape, dtype="float32")
    for step in range(5):
        old = var.numpy()
        optimizer.apply_gradients([(g, var)])
        moved = np.linalg.norm(var.numpy() - old)
        # g / ||g|| has unit norm, so each step's length is that step's learning rate.
        np.testing.assert_allclose(moved, float(schedule(step)), rtol=1e-5, atol=1e-7)
    assert float(schedule(4)) == 0.0


@pytest.mark.parametrize("learning_rate", [
    3e-3, keras.optimizers.schedules.CosineDecay(0.1, decay_steps=50, alpha=0.01)])
def test_optimizer_config_round_trip(learning_rate):
    optimizer = M.NormalizedSGD(learning_rate, momentum=0.8, nesterov=False, epsilon=1e-9)
    config = optimizer.get_config()
    # Keras' from_config replaces the schedule dict in place, hence the copy.
    restored = M.NormalizedSGD.from_config(copy.deepcopy(config))
    assert restored.get_config() == config
    serialized = keras.saving.serialize_keras_object(optimizer)
    assert serialized["registered_name"] == "microseg>NormalizedSGD"
    assert keras.saving.deserialize_keras_object(serialized).get_config() == config


# ---------------------------------------------------------------- the IoU metric

@pytest.mark.parametrize("jit_compile", [False, True])
def test_logged_iou_is_the_iou_of_the_summed_confusion_matrix(jit_compile):
    """Over several batches, under XLA too (--jit-compile on), ConfusionIoU gives what
    prediction's report computes from the same predictions, ignored pixels left out."""
    from cli import IGNORE_LABEL
    from metrics import confusion_matrix, iou_per_class
    rng = np.random.default_rng(5)
    x = rng.random((6, 8, 8, 2)).astype("float32")
    y = rng.integers(0, 3, (6, 8, 8))
    y[rng.random(y.shape) < 0.3] = IGNORE_LABEL
    inputs = keras.Input((8, 8, 2))
    net = keras.Model(inputs, keras.layers.Conv2D(3, 1)(inputs))
    net.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                ignore_class=IGNORE_LABEL),
                metrics=[M.ConfusionIoU(3), M.ConfusionIoU(3, 1, name="iou_1")],
                jit_compile=jit_compile)
    logs = net.evaluate(x, y, batch_size=4, return_dict=True, verbose=0)   # batches of 4 and 2
    expected = iou_per_class(confusion_matrix(y, np.argmax(net.predict(x, verbose=0), -1), 3))
    assert logs["mean_iou"] == pytest.approx(expected.mean(), abs=1e-6)
    assert logs["iou_1"] == pytest.approx(expected[1], abs=1e-6)


# ---------------------------------------------------------------- precise BN

def _spoil_batchnorm(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(3.0, 1.0, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(5.0, 20.0, layer.moving_variance.shape))


def _relative_gap(model, batches):
    gaps = []
    for batch in batches:
        # Inference first: a training-mode call also nudges the moving statistics.
        inference = np.asarray(model(batch, training=False))
        training = np.asarray(model(batch, training=True))
        gaps.append(np.abs(inference - training).mean() / np.abs(training).mean())
    return float(np.mean(gaps))


@pytest.fixture(scope="module")
def spoilt_model_and_batches():
    rng = np.random.default_rng(3)
    # No dropout, so training-mode output is deterministic and comparable.
    model = M.build_model((64, 64, 3), num_classes=2, dropout=0.0)
    _spoil_batchnorm(model, rng)
    batches = [rng.normal(size=(4, 64, 64, 3)).astype("float32") for _ in range(3)]
    return model, batches


def test_reestimated_stats_are_average_batch_moments(spoilt_model_and_batches):
    model, batches = spoilt_model_and_batches
    names = ["block1_conv1_bn", "up2_res1_bn_short"]
    probe = keras.Model(model.input, [model.get_layer(n).input for n in names])
    # Training mode: upstream BN layers use batch statistics, as in reestimate_batchnorm.
    inputs = [[np.asarray(t, np.float64) for t in probe(b, training=True)] for b in batches]
    gap_before = _relative_gap(model, batches)

    M.reestimate_batchnorm(model, iter(batches), num_batches=3)

    for i, name in enumerate(names):
        layer = model.get_layer(name)
        means = np.mean([x[i].mean(axis=(0, 1, 2)) for x in inputs], axis=0)
        variances = np.mean([x[i].var(axis=(0, 1, 2)) for x in inputs], axis=0)
        np.testing.assert_allclose(layer.moving_mean.numpy(), means, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(), variances,
                                   rtol=1e-3, atol=1e-5)
    # What remains is the spread of batch statistics around their average,
    # large here with 4 noise images and a 2 x 2 bottleneck.
    gap_after = _relative_gap(model, batches)
    assert gap_before > 0.5
    assert gap_after < min(0.2, gap_before / 5)


def test_single_batch_makes_inference_match_training(spoilt_model_and_batches):
    model, batches = spoilt_model_and_batches
    M.reestimate_batchnorm(model, batches[:1], num_batches=1)
    assert _relative_gap(model, batches[:1]) < 1e-3


def test_reestimation_skips_dropout_and_frozen_layers():
    inp = keras.Input((5,))
    x = keras.layers.Dropout(0.5, name="drop")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    frozen = keras.layers.BatchNormalization(name="frozen")
    model = keras.Model(inp, frozen(x))
    frozen.trainable = False
    data = np.random.default_rng(4).normal(2.0, 3.0, size=(2, 64, 5)).astype("float32")

    M.reestimate_batchnorm(model, data, num_batches=2)

    # With dropout active the variance would be inflated by about 1 / (1 - rate).
    np.testing.assert_allclose(model.get_layer("bn").moving_mean.numpy(),
                               data.mean(axis=1).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(model.get_layer("bn").moving_variance.numpy(),
                               data.var(axis=1).mean(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(frozen.moving_mean.numpy(), np.zeros(5))
    np.testing.assert_array_equal(frozen.moving_variance.numpy(), np.ones(5))
    assert model.get_layer("drop").rate == 0.5


def test_reestimation_needs_enough_batches():
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    before = model.layers[0].moving_mean.numpy()
    with pytest.raises(ValueError, match="gave 1 batches"):
        M.reestimate_batchnorm(model, [np.ones((4, 3), "float32")], num_batches=2)
    np.testing.assert_array_equal(model.layers[0].moving_mean.numpy(), before)


def test_no_bn_batches_keep_the_statistics_training_left():
    """--bn-batches 0: the BatchNorm statistics stay the moving averages training kept."""
    from training_callbacks import refresh_batchnorm
    rng = np.random.default_rng(4)
    inputs = keras.Input((8, 8, 3))
    bn = keras.layers.BatchNormalization()
    net = keras.Model(inputs, bn(keras.layers.Conv2D(4, 3)(inputs)))
    batches = [rng.normal(5.0, 2.0, (2, 8, 8, 3)).astype("float32") for _ in range(2)]
    before = [np.asarray(w).copy() for w in net.weights]
    refresh_batchnorm(net, iter(batches), 0)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, net.weights))
    refresh_batchnorm(net, iter(batches), 2)      # the same call with batches does change them
    assert not np.allclose(np.asarray(bn.moving_mean), 0.0)
