"""The faint-object filter: predicted objects with less texture than the held-out frames
show any real object to have are dropped, by a threshold chosen on those frames.

Why: the paper's per-patch preprocessing (min-max and histogram equalization of every tile
on its own) stretches a tile that holds only a faint smear until it looks like one that
holds a cell, so the network finds objects where annotators saw none. Texture measured on
the whole frame keeps what the tile's stretch threw away: a pixel's local standard deviation
(WINDOW x WINDOW) divided by the frame's median one, so exposure and gain cancel. An object's
texture is the mean of that over its pixels.

Training (train_unet_xception_resnetblock.py) predicts its held-out validation frames whole,
and calibrate() picks the threshold that maximizes their mean IoU, set in the middle of the
gap between the last object it drops and the first it keeps (the widest margin the frames
allow), among thresholds at least MARGIN below the first object they keep and that keep
one at least; where none raises it by MIN_GAIN, no filter. Prediction applies the threshold
recorded in the model folder.
"""
import cv2
import numpy as np

from metrics import confusion_matrix, iou_per_class

WINDOW = 7
# Below this typical local standard deviation (grey levels) a frame is taken as flat, so a
# noiseless background does not make every object look infinitely textured.
FLAT = 0.5
# The least gain in the held-out frames' mean IoU that sets a filter. Smaller gains come from a
# few small objects and put the threshold among real objects' textures: on the sample data a
# gain of 0.0003 set one that dropped a real cell of a test frame (mean IoU 0.937 -> 0.914).
MIN_GAIN = 0.001
# How far (as a ratio) the threshold must lie below the faintest object it keeps. The faintest
# real object's texture moves between sets of frames: bbbc030's faintest labelled cell measured
# 10.7 and 10.56 on two models' held-out frames, 9.85 and 9.98 on their test frames (1.06-1.09x
# lower). A threshold of 10.27 set in the gap below a held-out cell of 10.56 dropped test cells
# of 9.98 and 10.06 (foreground IoU 0.909 -> 0.901); the next gap down, 4.41 to 10.00, lost
# nothing.
MARGIN = 1.2


def relative_texture(image, window=WINDOW):
    """Local standard deviation of the frame's grey levels over its median (float32, HxW).
    image: the 8-bit frame the model saw, grey HxW or RGB HxWx3."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    g = grey.astype(np.float32)
    mean = cv2.blur(g, (window, window), borderType=cv2.BORDER_REFLECT)
    square = cv2.blur(g * g, (window, window), borderType=cv2.BORDER_REFLECT)
    deviation = np.sqrt(np.maximum(square - mean * mean, 0.0))
    return deviation / max(float(np.median(deviation)), FLAT)


def objects(mask):
    """(object index per pixel, 0 = background; number of objects): 8-connected regions of
    any foreground class."""
    count, index = cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)
    return index, count - 1


def object_textures(index, count, texture):
    """Mean texture of each object 1..count (array of count values)."""
    if count == 0:
        return np.zeros(0)
    flat = index.ravel()
    sums = np.bincount(flat, weights=texture.ravel(), minlength=count + 1)
    areas = np.bincount(flat, minlength=count + 1)
    return sums[1:] / areas[1:]


def drop_faint(mask, image, threshold):
    """(mask with every object of texture under threshold set to background, objects dropped).
    threshold None leaves the mask as it is."""
    if threshold is None:
        return mask, 0
    index, count = objects(mask)
    faint = np.concatenate([[False], object_textures(index, count,
                                                     relative_texture(image)) < threshold])
    if not faint.any():
        return mask, 0
    out = mask.copy()
    out[faint[index]] = 0
    return out, int(faint.sum())


def _object_confusions(index, count, label, mask, num_classes):
    """[count, C, C]: each object's pixels by (label class, predicted class); labels outside
    the classes (255, unsure) left out as the IoU leaves them."""
    keep = (index > 0) & (label < num_classes)
    codes = ((index[keep].astype(np.int64) - 1) * num_classes + label[keep]) * num_classes \
        + mask[keep]
    counts = np.bincount(codes, minlength=count * num_classes ** 2)
    return counts.reshape(count, num_classes, num_classes)


def calibrate(frames, num_classes):
    """The filter that maximizes mean IoU on labelled frames, as recorded in config.json.

    frames: (image the model saw, predicted mask, label) per frame. Returns {"threshold":
    float or None, "frames", "objects", "dropped", "mean_iou_kept", "mean_iou_filtered"},
    and with a threshold "gap": the textures of the last object dropped and the first kept.
    """
    total = np.zeros((num_classes, num_classes), np.int64)
    textures, changes = [], []
    for image, mask, label in frames:
        total += confusion_matrix(label, mask, num_classes)
        index, count = objects(mask)
        if count == 0:
            continue
        textures.append(object_textures(index, count, relative_texture(image)))
        per_object = _object_confusions(index, count, label, mask, num_classes)
        # Dropping an object moves its pixels from their predicted class to background.
        change = -per_object
        change[:, :, 0] += per_object.sum(axis=2)
        changes.append(change)
    result = {"frames": len(frames), "objects": int(sum(len(t) for t in textures)),
              "threshold": None, "dropped": 0}
    kept = float(iou_per_class(total).mean())
    result.update(mean_iou_kept=kept, mean_iou_filtered=kept)
    textures = np.concatenate(textures) if textures else np.zeros(0)
    if len(textures) < 2:
        return result
    order = np.argsort(textures, kind="stable")
    textures = textures[order]
    # The confusion matrix after dropping the k faintest objects, k = 1..n-1. Never every
    # object: where dropping them all scores best, the model's objects on these frames are
    # false throughout (too little training, say), which no texture threshold mends, and
    # prediction would write empty masks without a word.
    after = total + np.cumsum(np.concatenate(changes)[order], axis=0)[:-1]
    scores = np.array([iou_per_class(cm).mean() for cm in after])
    # A threshold falls in the gap after the k-th faintest object (ties drop together), and
    # must leave MARGIN to the first object it keeps.
    lows, highs = textures[:-1], textures[1:]
    thresholds = np.where(lows > 0, np.sqrt(lows * highs), highs / 2)
    allowed = (highs > lows) & (highs >= MARGIN * thresholds)
    scores = np.where(allowed, scores, -np.inf)
    best = int(np.argmax(scores))
    if scores[best] < kept + MIN_GAIN:
        return result
    result.update(threshold=float(thresholds[best]), dropped=best + 1,
                  mean_iou_filtered=float(scores[best]),
                  gap=[float(lows[best]), float(highs[best])])
    return result
