"""lovasz_losses_tf against the Lovasz extension of the Jaccard loss evaluated by its definition."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lovasz_losses_tf import (LovaszHingeLoss, LovaszSoftmaxLoss, lovasz_grad,
                              lovasz_hinge, lovasz_softmax)

IGNORE = 255


# ---------------------------------------------------------------- the oracle
# The Lovasz extension evaluated by its definition, not by the implementation's sort-and-
# cumsum formula: for errors m >= 0, f(m) = integral over t > 0 of J({i : m_i >= t}) dt,
# where J(M) = |M| / |G u M| is the Jaccard loss of the mispredicted set M against the
# ground-truth set G. The level sets only change at the distinct error values, so the
# integral is an exact finite sum over them.

def jaccard_loss_of_set(mispredicted, truth):
    union = np.count_nonzero(truth | mispredicted)
    return np.count_nonzero(mispredicted) / union if union else 0.0


def lovasz_extension(errors, truth):
    errors = np.maximum(np.asarray(errors, np.float64), 0.0)
    levels = np.unique(errors[errors > 0])
    widths = np.diff(levels, prepend=0.0)
    return float(sum(w * jaccard_loss_of_set(errors >= t, truth)
                     for w, t in zip(widths, levels)))


def test_oracle_is_the_jaccard_loss_on_sets():
    """On 0/1 errors the extension is the set function itself, and it is linear along a ray."""
    rng = np.random.default_rng(1)
    truth = rng.random(30) < 0.4
    for _ in range(20):
        mispredicted = rng.random(30) < rng.random()
        value = jaccard_loss_of_set(mispredicted, truth)
        assert lovasz_extension(mispredicted.astype(float), truth) == pytest.approx(value)
        assert lovasz_extension(0.3 * mispredicted, truth) == pytest.approx(0.3 * value)


def np_lovasz_softmax_flat(probas, labels, classes):
    class_list = range(probas.shape[1]) if isinstance(classes, str) else classes
    losses = []
    for c in class_list:
        fg = labels == c
        if classes == "present" and not fg.any():
            continue
        losses.append(lovasz_extension(np.abs(fg - probas[:, c]), fg))
    return np.mean(losses) if losses else 0.0


def np_groups(x, y, per_image, ignore):
    """Yield flat (x, labels) per image or for the batch, ignored pixels removed."""
    pairs = zip(x, y) if per_image else [(x, y)]
    for xi, yi in pairs:
        yi = yi.reshape(-1)
        xi = xi.reshape(yi.size, -1)
        keep = yi != ignore if ignore is not None else np.ones(yi.size, bool)
        yield xi[keep], yi[keep]


def np_lovasz_softmax(probas, labels, classes="present", per_image=False, ignore=None):
    probas = probas.astype(np.float64)
    return np.mean([np_lovasz_softmax_flat(p, l, classes)
                    for p, l in np_groups(probas, labels, per_image, ignore)])


def np_lovasz_hinge(logits, labels, per_image=True, ignore=None):
    losses = []
    for x, y in np_groups(logits.astype(np.float64), labels, per_image, ignore):
        if y.size == 0:
            losses.append(0.0)
            continue
        fg = y == 1
        losses.append(lovasz_extension(1.0 - x[:, 0] * (2.0 * fg - 1.0), fg))
    return np.mean(losses)


def np_one_minus_miou(pred, labels, per_image):
    """1 - mean IoU over the classes present in the labels (of each image if per_image)."""
    groups = zip(pred, labels) if per_image else [(pred, labels)]
    values = []
    for p, l in groups:
        ious = [np.sum((p == c) & (l == c)) / np.sum((p == c) | (l == c)) for c in np.unique(l)]
        values.append(1.0 - np.mean(ious))
    return np.mean(values)


# ---------------------------------------------------------------- data

def random_labels(rng, shape=(3, 9, 7), num_classes=4, ignore_frac=0.0):
    labels = rng.integers(0, num_classes, shape)
    labels[rng.random(shape) < ignore_frac] = IGNORE
    return labels


def random_probas(rng, shape=(3, 9, 7), num_classes=4):
    logits = rng.normal(scale=2.0, size=(*shape, num_classes))
    return (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)


def one_hot(indices, num_classes=4):
    return np.eye(num_classes, dtype=np.float32)[indices]


# ---------------------------------------------------------------- lovasz_softmax

def test_lovasz_grad_is_the_jaccard_loss_gained_by_each_next_pixel():
    """Pixels sorted by decreasing error: entry i is J(first i+1 pixels) - J(first i)."""
    gt = np.random.default_rng(0).random((5, 40)) < 0.3
    expected = [[jaccard_loss_of_set(np.arange(40) <= i, g)
                 - jaccard_loss_of_set(np.arange(40) < i, g) for i in range(40)] for g in gt]
    np.testing.assert_allclose(lovasz_grad(gt.astype(np.float32)).numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_hard_probabilities_give_one_minus_miou(per_image, seed):
    rng = np.random.default_rng(seed)
    labels = random_labels(rng)
    labels[labels == 3] = 2  # class 3 absent from the labels but still predicted
    pred = random_labels(rng)
    if seed % 2:
        pred = np.where(rng.random(pred.shape) < 0.7, labels, pred)  # mostly right
    loss = lovasz_softmax(one_hot(pred), labels, per_image=per_image)
    assert loss.numpy() == pytest.approx(np_one_minus_miou(pred, labels, per_image), abs=1e-6)


@pytest.mark.parametrize("classes", ["present", "all", [1, 3], [2]])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [None, IGNORE, 0])
@pytest.mark.parametrize("hard", [False, True])
def test_matches_numpy_reference(classes, per_image, ignore, hard):
    rng = np.random.default_rng(7)
    labels = random_labels(rng, ignore_frac=0.3 if ignore == IGNORE else 0.0)
    labels[0, :, :4] = 1  # uneven class counts; image 0 lacks some classes
    # Hard probabilities make many non-ignored pixels tie with ignored ones at error 0.
    probas = one_hot(random_labels(rng)) if hard else random_probas(rng)
    loss = lovasz_softmax(probas, labels, classes=classes, per_image=per_image, ignore=ignore)
    expected = np_lovasz_softmax(probas, labels, classes, per_image, ignore)
    assert loss.numpy() == pytest.approx(expected, abs=1e-5)


def test_ignored_pixels_probabilities_do_not_matter():
    rng = np.random.default_rng(3)
    labels = random_labels(rng, ignore_frac=0.4)
    probas = random_probas(rng)
    garbage = np.where((labels == IGNORE)[..., None], random_probas(rng), probas)
    for per_image in (False, True):
        a = lovasz_softmax(probas, labels, per_image=per_image, ignore=IGNORE)
        b = lovasz_softmax(garbage, labels, per_image=per_image, ignore=IGNORE)
        assert a.numpy() == pytest.approx(b.numpy(), abs=1e-7)


def test_present_skips_absent_classes():
    """An absent class channel cannot change the 'present' loss. Under 'all', an
    absent class k adds max_pixels p_k (its ground truth is empty, so the Jaccard
    loss is 1 as soon as one pixel has error) to the class sum."""
    rng = np.random.default_rng(4)
    labels = random_labels(rng, num_classes=3)  # class 3 of 4 absent
    probas = random_probas(rng)
    garbage = probas.copy()
    garbage[..., 3] = rng.random(labels.shape) * 5.0  # not even a probability
    present = [lovasz_softmax(p, labels).numpy() for p in (probas, garbage)]
    assert present[0] == pytest.approx(present[1], abs=1e-7)
    for p in (probas, garbage):
        total = 4 * lovasz_softmax(p, labels, classes="all").numpy()
        assert total == pytest.approx(3 * present[0] + p[..., 3].max(), abs=1e-5)


def test_all_pixels_ignored_gives_zero():
    labels = np.full((2, 5, 5), IGNORE)
    probas = random_probas(np.random.default_rng(5), (2, 5, 5))
    for per_image in (False, True):
        assert lovasz_softmax(probas, labels, per_image=per_image, ignore=IGNORE).numpy() == 0.0


@pytest.mark.parametrize("classes", ["some", [0, 4], [-1]])
def test_bad_classes_option_raises(classes):
    with pytest.raises(ValueError):
        lovasz_softmax(random_probas(np.random.default_rng(0)), np.zeros((3, 9, 7), int),
                       classes=classes)


def softmax_loss_and_grad(logits, labels, **kwargs):
    logits = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = lovasz_softmax(tf.nn.softmax(logits), labels, **kwargs)
    return loss.numpy(), tape.gradient(loss, logits).numpy()


@pytest.mark.parametrize("case", ["absent_class", "single_class", "all_ignored"])
@pytest.mark.parametrize("per_image", [False, True])
def test_gradients_finite(case, per_image):
    rng = np.random.default_rng(6)
    logits = rng.normal(size=(2, 6, 6, 3)).astype(np.float32)
    labels = {"absent_class": random_labels(rng, (2, 6, 6), num_classes=2),
              "single_class": np.ones((2, 6, 6), int),
              "all_ignored": np.full((2, 6, 6), IGNORE)}[case]
    loss, grad = softmax_loss_and_grad(logits, labels, per_image=per_image, ignore=IGNORE)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    if case != "all_ignored":
        assert np.abs(grad).sum() > 0


def test_gradient_zero_at_ignored_pixels():
    rng = np.random.default_rng(8)
    labels = random_labels(rng, ignore_frac=0.3)
    _, grad = softmax_loss_and_grad(rng.normal(size=(3, 9, 7, 4)).astype(np.float32),
                                    labels, ignore=IGNORE)
    assert np.all(grad[labels == IGNORE] == 0)


# ---------------------------------------------------------------- XLA

@pytest.mark.parametrize("per_image", [False, True])
def test_xla_matches_eager(per_image):
    rng = np.random.default_rng(9)
    labels = random_labels(rng, ignore_frac=0.2)
    probas = random_probas(rng)
    logits = rng.normal(size=labels.shape).astype(np.float32)
    binary = np.where(labels == IGNORE, IGNORE, labels % 2)

    def losses(p, l, x, b):
        return (lovasz_softmax(p, l, per_image=per_image, ignore=IGNORE),
                lovasz_softmax(p, l, classes="all", per_image=per_image),
                lovasz_hinge(x, b, per_image=per_image, ignore=IGNORE))

    compiled = tf.function(losses, jit_compile=True)
    for eager, xla in zip(losses(probas, labels, logits, binary),
                          compiled(probas, labels, logits, binary)):
        assert xla.numpy() == pytest.approx(eager.numpy(), abs=1e-6)
    hlo = compiled.experimental_get_compiler_ir(probas, labels, logits, binary)(stage="hlo")
    assert "sort" in hlo  # really compiled by XLA, not silently run as plain TF


# ---------------------------------------------------------------- lovasz_hinge

@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [None, IGNORE, 1])
def test_hinge_matches_numpy_reference(per_image, ignore):
    rng = np.random.default_rng(10)
    labels = random_labels(rng, num_classes=2, ignore_frac=0.3 if ignore == IGNORE else 0.0)
    logits = rng.normal(scale=1.5, size=labels.shape).astype(np.float32)
    loss = lovasz_hinge(logits, labels, per_image=per_image, ignore=ignore)
    expected = np_lovasz_hinge(logits, labels, per_image, ignore)
    assert loss.numpy() == pytest.approx(expected, abs=1e-5)


def test_hinge_all_ignored_image_counts_zero():
    rng = np.random.default_rng(11)
    labels = random_labels(rng, num_classes=2)
    labels[1] = IGNORE
    logits = rng.normal(size=labels.shape).astype(np.float32)
    loss = lovasz_hinge(logits, labels, per_image=True, ignore=IGNORE)
    assert loss.numpy() == pytest.approx(np_lovasz_hinge(logits, labels, True, IGNORE), abs=1e-5)


# ---------------------------------------------------------------- Keras losses

def test_softmax_loss_class_values():
    rng = np.random.default_rng(12)
    labels = random_labels(rng)
    logits = rng.normal(size=(*labels.shape, 4)).astype(np.float32)
    expected = lovasz_softmax(tf.nn.softmax(logits), labels).numpy()
    assert LovaszSoftmaxLoss()(labels[..., None], logits).numpy() == pytest.approx(expected)
    assert LovaszSoftmaxLoss()(labels, logits).numpy() == pytest.approx(expected)
    raw = LovaszSoftmaxLoss(from_logits=False)(labels, logits).numpy()
    assert raw == pytest.approx(lovasz_softmax(logits, labels).numpy())


def test_hinge_loss_class_values():
    rng = np.random.default_rng(13)
    labels = random_labels(rng, num_classes=2)
    two = rng.normal(size=(*labels.shape, 2)).astype(np.float32)
    expected = lovasz_hinge(two[..., 1] - two[..., 0], labels).numpy()
    assert LovaszHingeLoss()(labels[..., None], two).numpy() == pytest.approx(expected)
    one = two[..., 1:] - two[..., :1]
    assert LovaszHingeLoss()(labels, one).numpy() == pytest.approx(expected)
    with pytest.raises(ValueError):
        LovaszHingeLoss()(labels, np.zeros((*labels.shape, 3), np.float32))


@pytest.mark.parametrize("loss", [
    LovaszSoftmaxLoss(from_logits=False, classes=[1], per_image=True, ignore=IGNORE),
    LovaszSoftmaxLoss(),
    LovaszHingeLoss(per_image=False, ignore=IGNORE),
])
def test_loss_serialization_round_trip(loss):
    rng = np.random.default_rng(14)
    labels = random_labels(rng, num_classes=2)
    logits = rng.normal(size=(*labels.shape, 2)).astype(np.float32)
    config = loss.get_config()
    from_config = type(loss).from_config(config)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    for other in (from_config, restored):
        assert type(other) is type(loss)
        assert other.get_config() == config
        assert other(labels, logits).numpy() == pytest.approx(loss(labels, logits).numpy())


def test_keras_fit_with_xla():
    """A model compiled with jit_compile=True and an unknown batch size trains with the loss
    as without XLA: the same losses, epoch by epoch, and falling."""
    rng = np.random.default_rng(15)
    images = rng.random((4, 8, 8, 1)).astype(np.float32)
    labels = (images[..., 0] > 0.5).astype(np.int32)[..., None]
    losses = []
    for jit_compile in (False, True):
        keras.utils.set_random_seed(15)
        inputs = keras.Input((8, 8, 1))
        model = keras.Model(inputs, keras.layers.Conv2D(2, 3, padding="same")(inputs))
        model.compile(optimizer="adam", loss=LovaszSoftmaxLoss(), jit_compile=jit_compile)
        losses.append(model.fit(images, labels, batch_size=2, epochs=4, shuffle=False,
                                verbose=0).history["loss"])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    assert losses[1][-1] < losses[1][0]


def test_bce_dice_is_small_for_perfect_and_large_for_wrong_predictions():
    from lovasz_losses_tf import BceDiceLoss
    labels = np.random.default_rng(3).integers(0, 3, (2, 8, 8))
    good = np.eye(3)[labels] * 40.0 - 20.0
    bad = np.roll(good, 1, axis=-1)
    loss = BceDiceLoss()
    assert float(loss(labels, good)) < 1e-3
    assert float(loss(labels, bad)) > 1.5
    same = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert same.get_config() == loss.get_config()
