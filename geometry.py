"""The 8 rotations/flips of an image, reflect-padding to a minimum size, and resampling to
the pixel scale a model works at."""
import math

import cv2
import numpy as np

from cli import PipelineError

# Sides the network takes are multiples of this: its encoder halves the size 5 times. Here,
# not in model.py, so that scripts which check sizes need not load TensorFlow.
INPUT_MULTIPLE = 32
# A transform t turns an image by the dihedral index t % 8 and, from INVERTED up, also
# inverts its intensities (labels and probabilities are only turned).
INVERTED = 8
# How training patches may be turned, as the transforms each allows (the first is the
# identity): "all" 8 rotations/flips (the paper's); "none" for images whose look depends on
# direction (DIC relief); the identity and the one mirror whose axis lies along that
# direction, which maps relief onto relief of the same sign (a DIC image mirrored across its
# shear axis is a DIC image of the mirrored object); or "rotate-invert", the identity and the
# half turn with inverted intensities, which maps relief along any axis onto itself (a DIC
# image is the derivative of the optical path along the shear: the half-turned object's
# derivative is the half-turned image negated). Axes as angles of (x right, y down).
ORIENTATIONS = {"all": tuple(range(8)), "none": (0,),
                "flip-rows": (0, 6), "transpose": (0, 7), "flip-columns": (0, 4),
                "antitranspose": (0, 5), "rotate-invert": (0, INVERTED + 2)}
MIRROR_AXES = {"flip-rows": 0, "transpose": 45, "flip-columns": 90, "antitranspose": 135}


def dihedral(arr, k):
    """The (k % 8)-th of the 8 rotations/flips of the first two axes (a transform's turn)."""
    k %= INVERTED
    out = np.rot90(arr, k % 4, axes=(0, 1))
    if k >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def inverse_dihedral(arr, k):
    k %= INVERTED
    out = arr[:, ::-1] if k >= 4 else arr
    return np.ascontiguousarray(np.rot90(out, -(k % 4), axes=(0, 1)))


def inverts(t):
    """Whether transform t inverts the image's intensities."""
    return t >= INVERTED


def invert_intensities(img):
    """A uint8 image with its intensities inverted (255 - v)."""
    return np.subtract(255, img, dtype=np.uint8)


def transform_image(img, t):
    """A uint8 image through transform t: intensities inverted where t asks, then turned."""
    return dihedral(invert_intensities(img) if inverts(t) else img, t)


def reflect_pad(arr, min_h, min_w):
    """Reflect-pad the bottom/right so the image is at least min_h x min_w."""
    h, w = arr.shape[:2]
    pad_h, pad_w = max(0, min_h - h), max(0, min_w - w)
    if not (pad_h or pad_w):
        return arr
    pads = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (arr.ndim - 2)
    # np.pad 'symmetric' repeats edge pixels and, unlike 'reflect', works for any pad size.
    return np.pad(arr, pads, mode="symmetric")


def scaled_size(shape, scale):
    """(height, width) of an image of `shape` resampled by `scale`, at least 1 x 1."""
    return tuple(max(1, round(n * scale)) for n in shape[:2])


def resample_image(img, shape):
    """An image (HxW or HxWxC) resampled to shape (h, w): pixel areas averaged when it
    shrinks, bilinear when it grows; the same array where the size is already right."""
    h, w = shape
    if img.shape[:2] == (h, w):
        return img
    shrinking = h * w < img.shape[0] * img.shape[1]
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA if shrinking
                      else cv2.INTER_LINEAR)


def resample_label(label, shape):
    """A class-index label resampled to shape (h, w): each new pixel takes the value that
    covers most of its area (a majority vote, so no value is made up and thin classes are not
    shifted the way nearest-neighbour picking shifts them); nearest neighbour when it grows."""
    h, w = shape
    if label.shape == (h, w):
        return label
    if h * w >= label.size:
        return cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    values = np.unique(label)
    votes = np.stack([resample_image((label == v).astype(np.float32), shape) for v in values])
    return values[votes.argmax(axis=0)].astype(label.dtype)


def resample_probabilities(probs, shape):
    """Per-class probabilities [h', w', C] brought to shape (h, w) bilinearly, so the class
    boundary falls between the coarse pixels where the probabilities cross."""
    h, w = shape
    if probs.shape[:2] == (h, w):
        return probs
    channels = [cv2.resize(probs[:, :, c], (w, h), interpolation=cv2.INTER_LINEAR)
                for c in range(probs.shape[2])]
    return np.stack(channels, axis=-1)


def check_scale(value, where):
    """A recorded pixel scale, validated: a positive finite number (1.0 where none was
    recorded, the original's full resolution)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value <= 0:
        raise PipelineError(f"{where}: 'scale' must be a positive number, not {value!r}")
    return float(value)
