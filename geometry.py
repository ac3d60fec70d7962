"""The 8 rotations/flips of an image and reflect-padding to a minimum size."""
import numpy as np

# How training patches may be turned, as the `dihedral` indices each allows (the first is
# the identity): "all" 8 rotations/flips (the paper's); "none" for images whose look depends
# on direction (DIC relief); or the identity and the one mirror whose axis lies along that
# direction, which maps relief onto relief of the same sign (a DIC image mirrored across its
# shear axis is a DIC image of the mirrored object). Axes as angles of (x right, y down).
ORIENTATIONS = {"all": tuple(range(8)), "none": (0,),
                "flip-rows": (0, 6), "transpose": (0, 7), "flip-columns": (0, 4),
                "antitranspose": (0, 5)}
MIRROR_AXES = {"flip-rows": 0, "transpose": 45, "flip-columns": 90, "antitranspose": 135}


def dihedral(arr, k):
    """The k-th of the 8 rotations/flips (k in 0..7) of the first two axes."""
    out = np.rot90(arr, k % 4, axes=(0, 1))
    if k >= 4:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def inverse_dihedral(arr, k):
    out = arr[:, ::-1] if k >= 4 else arr
    return np.ascontiguousarray(np.rot90(out, -(k % 4), axes=(0, 1)))


def reflect_pad(arr, min_h, min_w):
    """Reflect-pad the bottom/right so the image is at least min_h x min_w."""
    h, w = arr.shape[:2]
    pad_h, pad_w = max(0, min_h - h), max(0, min_w - w)
    if not (pad_h or pad_w):
        return arr
    pads = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (arr.ndim - 2)
    # np.pad 'symmetric' repeats edge pixels and, unlike 'reflect', works for any pad size.
    return np.pad(arr, pads, mode="symmetric")
