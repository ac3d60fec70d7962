"""Lovasz-softmax and Lovasz hinge losses (Berman, Rannen Triki, Blaschko, CVPR 2018)
for TensorFlow 2 / Keras 3.

Everything here keeps static shapes so it compiles under XLA
(`tf.function(jit_compile=True)`, Keras `jit_compile=True`):

* Ignored pixels are not removed; they get zero error and zero foreground. They
  then sort after every pixel with positive error and leave the foreground
  count unchanged, so each positive-error pixel gets the Lovasz gradient it
  would get with the ignored pixels removed, and the ignored pixels add
  0 * gradient. Ties at zero error do not matter: the Lovasz extension is the
  same for every order of tied errors.
* classes='present' computes a loss for every class and averages with a mask
  instead of dropping absent classes with boolean_mask.

Departure from the reference code: when no class is present (every pixel of an
image, or of the batch, ignored) the loss is 0 instead of NaN.
"""
import keras
import tensorflow as tf


def lovasz_grad(gt_sorted):
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors.

    gt_sorted: 0/1 foreground indicators ordered by decreasing error along the
    last axis; leading axes are independent problems.
    """
    gt_sorted = tf.cast(gt_sorted, tf.float32)
    gts = tf.reduce_sum(gt_sorted, axis=-1, keepdims=True)
    intersection = gts - tf.cumsum(gt_sorted, axis=-1)
    # union >= 1 from the first entry on: that entry is either foreground
    # (so gts >= 1) or adds one background pixel.
    union = gts + tf.cumsum(1.0 - gt_sorted, axis=-1)
    jaccard = 1.0 - intersection / union
    return tf.concat([jaccard[..., :1], jaccard[..., 1:] - jaccard[..., :-1]], axis=-1)


def _lovasz_extension(errors, gt):
    """Lovasz extension of the Jaccard loss along the last axis: sorted errors . grad.

    errors must be non-negative: ignored pixels rely on error 0 sorting last.
    """
    errors_sorted, order = tf.math.top_k(errors, k=tf.shape(errors)[-1], sorted=True)
    gt_sorted = tf.gather(gt, order, batch_dims=len(errors.shape) - 1)
    # The reference code treats the piecewise-constant gradient as a constant.
    grad = tf.stop_gradient(lovasz_grad(gt_sorted))
    return tf.reduce_sum(errors_sorted * grad, axis=-1)


def _pixels_by_group(x, per_image, channels=()):
    """Reshape [B,H,W,*channels] to [G,P,*channels]: G = B if per_image, else 1."""
    groups = tf.shape(x)[0] if per_image else 1
    return tf.reshape(x, [groups, -1, *channels])


def _valid_pixels(labels, ignore):
    if ignore is None:
        return tf.ones_like(labels, dtype=tf.bool)
    return tf.not_equal(labels, ignore)


def _average_classes(class_losses, fg_count, classes):
    """Average [G,C] per-class losses over the chosen classes; one value per group."""
    if classes == "present":
        present = tf.cast(fg_count > 0, class_losses.dtype)
        return tf.reduce_sum(class_losses * present, axis=-1) / tf.maximum(
            tf.reduce_sum(present, axis=-1), 1.0)
    if classes == "all":
        return tf.reduce_mean(class_losses, axis=-1)
    return tf.reduce_mean(tf.gather(class_losses, list(classes), axis=-1), axis=-1)


def _check_classes(classes, num_classes=None):
    if isinstance(classes, str):
        if classes not in ("present", "all"):
            raise ValueError(f"classes must be 'present', 'all' or a list of class indices, "
                             f"not {classes!r}")
    # Checked here because under XLA an out-of-range gather is silently clamped.
    elif num_classes is not None and not all(0 <= c < num_classes for c in classes):
        raise ValueError(f"classes {list(classes)} out of range for {num_classes} classes")


def lovasz_softmax(probas, labels, classes="present", per_image=False, ignore=None):
    """Multi-class Lovasz-softmax loss.

    probas: [B,H,W,C] class probabilities (C must be known statically).
    labels: [B,H,W] integer class indices.
    classes: 'present' (average over classes present in the labels, of each
      image when per_image), 'all', or a list of class indices.
    per_image: compute the loss per image and average over images, instead of
      over the whole batch as one image.
    ignore: label value whose pixels are left out.
    Returns a float32 scalar.
    """
    num_classes = probas.shape[-1]
    _check_classes(classes, num_classes)
    probas = _pixels_by_group(tf.cast(probas, tf.float32), per_image, [num_classes])
    labels = _pixels_by_group(tf.cast(labels, tf.int32), per_image)
    valid = _valid_pixels(labels, ignore)[..., None]
    # one_hot of an out-of-range ignore label is already all zeros; the mask
    # also covers an ignore value inside 0..C-1.
    fg = tf.one_hot(labels, num_classes) * tf.cast(valid, tf.float32)
    errors = tf.where(valid, tf.abs(fg - probas), 0.0)
    # Classes on axis 1 so that pixels are the last (sorted) axis: [G,C,P].
    class_losses = _lovasz_extension(tf.transpose(errors, [0, 2, 1]),
                                     tf.transpose(fg, [0, 2, 1]))
    group_losses = _average_classes(class_losses, tf.reduce_sum(fg, axis=1), classes)
    return tf.reduce_mean(group_losses)


def lovasz_hinge(logits, labels, per_image=True, ignore=None):
    """Binary Lovasz hinge loss.

    logits: [B,H,W] scores, positive for foreground.
    labels: [B,H,W] in {0,1} (and the ignore value, if given).
    Returns a float32 scalar.
    """
    logits = _pixels_by_group(tf.cast(logits, tf.float32), per_image)
    labels = _pixels_by_group(tf.cast(labels, tf.int32), per_image)
    valid = _valid_pixels(labels, ignore)
    fg = tf.cast(tf.equal(labels, 1) & valid, tf.float32)
    margins = 1.0 - logits * (2.0 * fg - 1.0)
    # relu before sorting instead of after (as the reference does): the order
    # of the positive errors, and all products, are the same. Ignored pixels
    # get error 0 like the softmax version.
    errors = tf.where(valid, tf.nn.relu(margins), 0.0)
    return tf.reduce_mean(_lovasz_extension(errors, fg))


def replica_share(loss):
    """A loss reduced to one value for a replica's batch, as its share of the global loss.

    Keras divides a loss it reduces itself (one value per pixel or sample) by the replicas
    in sync and sums their gradients and logged values; a loss that is already one scalar is
    left whole, so under --strategy mirrored or multiworker its value and gradient would be
    the replica count times too large."""
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / replicas if replicas > 1 else loss


def _labels_hw(y_true):
    """Keras hands y_true as float [B,H,W] or [B,H,W,1]; return int [B,H,W]."""
    if len(y_true.shape) == 4:
        y_true = tf.squeeze(y_true, axis=-1)
    return tf.cast(tf.round(y_true), tf.int32)


@keras.saving.register_keras_serializable(package="lovasz")
class LovaszSoftmaxLoss(keras.losses.Loss):
    """Keras loss: Lovasz-softmax on model outputs y_pred [B,H,W,C].

    from_logits=True applies softmax first. from_logits=False passes y_pred
    unchanged, which with a logit-producing model reproduces the original
    code (it fed raw logits to the probability-based loss).
    Returns one value for the batch, so sample_weight is not supported.
    """

    def __init__(self, from_logits=True, classes="present", per_image=False, ignore=None,
                 name="lovasz_softmax", **kwargs):
        super().__init__(name=name, **kwargs)
        _check_classes(classes)
        self.from_logits = from_logits
        self.classes = classes if isinstance(classes, str) else [int(c) for c in classes]
        self.per_image = per_image
        self.ignore = ignore

    def call(self, y_true, y_pred):
        probas = tf.nn.softmax(y_pred, axis=-1) if self.from_logits else y_pred
        return replica_share(lovasz_softmax(probas, _labels_hw(y_true), classes=self.classes,
                                            per_image=self.per_image, ignore=self.ignore))

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "classes": self.classes, "per_image": self.per_image, "ignore": self.ignore}


def binary_logit(y_pred):
    """Foreground score from a 2-class model output [B,H,W,C], C in {1,2}.

    For C=2 this is logit_1 - logit_0, the log-odds of class 1 under softmax.
    """
    if y_pred.shape[-1] == 2:
        return y_pred[..., 1] - y_pred[..., 0]
    if y_pred.shape[-1] == 1:
        return y_pred[..., 0]
    raise ValueError(f"Lovasz hinge needs 1 or 2 output channels, got {y_pred.shape[-1]}")


@keras.saving.register_keras_serializable(package="lovasz")
class LovaszHingeLoss(keras.losses.Loss):
    """Keras loss: binary Lovasz hinge on logits [B,H,W,1] or [B,H,W,2] (see binary_logit)."""

    def __init__(self, per_image=True, ignore=None, name="lovasz_hinge", **kwargs):
        super().__init__(name=name, **kwargs)
        self.per_image = per_image
        self.ignore = ignore

    def call(self, y_true, y_pred):
        return replica_share(lovasz_hinge(binary_logit(y_pred), _labels_hw(y_true),
                                          per_image=self.per_image, ignore=self.ignore))

    def get_config(self):
        return {**super().get_config(), "per_image": self.per_image, "ignore": self.ignore}


@keras.saving.register_keras_serializable(package="lovasz")
class BceDiceLoss(keras.losses.Loss):
    """Binary cross-entropy plus soft Dice loss, one-vs-rest over softmax probabilities.

    The paper's comparison baseline for segmentation losses: mean per-class binary
    cross-entropy plus 1 - mean per-class soft Dice (smoothed by `smooth`), both over the
    pixels whose label is not `ignore`.
    """

    def __init__(self, smooth=1.0, ignore=None, name="bce_dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smooth = smooth
        self.ignore = ignore

    def call(self, y_true, y_pred):
        labels = _labels_hw(y_true)
        probas = tf.nn.softmax(tf.cast(y_pred, tf.float32), axis=-1)
        valid = tf.cast(_valid_pixels(labels, self.ignore), tf.float32)
        onehot = tf.one_hot(labels, tf.shape(probas)[-1], dtype=tf.float32)
        pixel_bce = keras.losses.binary_crossentropy(onehot, probas)
        bce = tf.math.divide_no_nan(tf.reduce_sum(pixel_bce * valid), tf.reduce_sum(valid))
        axes = [0, 1, 2]
        probas = probas * valid[..., None]
        intersection = tf.reduce_sum(onehot * probas, axis=axes)
        total = tf.reduce_sum(onehot, axis=axes) + tf.reduce_sum(probas, axis=axes)
        dice = (2.0 * intersection + self.smooth) / (total + self.smooth)
        return replica_share(bce + 1.0 - tf.reduce_mean(dice))

    def get_config(self):
        return {**super().get_config(), "smooth": self.smooth, "ignore": self.ignore}
