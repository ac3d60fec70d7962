"""The paper's per-patch preprocessing, its dataset-wide variant, and the training statistics
they use."""
from pathlib import Path

import cv2
import numpy as np

from cli import PipelineError, agreeing, finite_numbers, read_json

DEFAULT_GAMMA = 1.2
MEAN_STD_NAME = "train_mean_std"
# patch: the paper's, each patch or tile min-maxed and equalized on its own. dataset: one
# table for every patch and tile, the equalization of all training patches' pixels together.
EQUALIZE_MODES = ("patch", "dataset")


def resolve_equalize(requested, color_mode):
    """--equalize auto: one table for colour, where equalizing each channel of each patch
    apart changes the patch's hues; the paper's per-patch rule for grey, where it evens out
    uneven illumination (measured in bench/README.md)."""
    if requested != "auto":
        return requested
    return "dataset" if color_mode == "rgb" else "patch"


def gamma_lut(gamma=DEFAULT_GAMMA):
    levels = np.arange(256, dtype=np.float64) / 255.0
    return np.clip(np.rint(255.0 * levels ** (1.0 / gamma)), 0, 255).astype(np.uint8)


def dataset_lut(histogram, gamma=DEFAULT_GAMMA):
    """Per-channel lookup tables (C x 256 uint8): equalization by the summed histogram of the
    training patches (as cv2.equalizeHist does for one image), then gamma.

    Levels below the lowest one in the histogram map to 0. Unlike the per-patch rule, a pixel's
    value does not depend on the rest of its patch, so a faint object alone in a tile stays
    faint and a tile's result does not depend on where the tiling puts its borders.
    """
    hist = np.asarray(histogram, dtype=np.float64).reshape(-1, 256)
    cdf = np.cumsum(hist, axis=1)
    lowest = cdf[np.arange(len(hist)), (hist > 0).argmax(axis=1)][:, None]
    scale = 255.0 / np.maximum(cdf[:, -1:] - lowest, 1.0)
    equalized = np.clip(np.rint((cdf - lowest) * scale), 0, 255).astype(np.uint8)
    return gamma_lut(gamma)[equalized]


def dataset_lut_for(stats):
    """The dataset-wide tables for stats recorded with equalize 'dataset', else None."""
    if stats.get("equalize", "patch") == "patch":
        return None
    return dataset_lut(stats["histogram"], stats["gamma"])


def preprocess_patch(patch, mean, std, gamma=DEFAULT_GAMMA, lut=None):
    """The preprocessing of one patch or tile (uint8 HxW or HxWxC -> uint8).

    The paper's (lut None): z-score with the training statistics, min-max of z within this
    patch to 0..255, histogram equalization, gamma 1/gamma through a lookup table. Colour
    patches are processed channel by channel with per-channel statistics. A constant patch
    maps to 0. With lut (dataset_lut_for(): equalize 'dataset'), each channel goes through its
    table instead.
    """
    x = np.asarray(patch)
    channels = x[:, :, None] if x.ndim == 2 else x
    if lut is not None:
        out = np.stack([lut[c][channels[:, :, c]] for c in range(channels.shape[2])], axis=2)
        return out[:, :, 0] if x.ndim == 2 else out
    channels = channels.astype(np.float64)
    mean = np.broadcast_to(np.asarray(mean, dtype=np.float64), (channels.shape[2],))
    std = np.broadcast_to(np.asarray(std, dtype=np.float64), (channels.shape[2],))
    lut = gamma_lut(gamma)
    out = np.empty(channels.shape, np.uint8)
    for c in range(channels.shape[2]):
        z = (channels[:, :, c] - mean[c]) / (std[c] if std[c] > 0 else 1.0)
        lo, hi = z.min(), z.max()
        if hi > lo:
            scaled = np.rint((z - lo) * (255.0 / (hi - lo))).astype(np.uint8)
            out[:, :, c] = cv2.LUT(cv2.equalizeHist(scaled), lut)
        else:
            out[:, :, c] = 0
    return out[:, :, 0] if x.ndim == 2 else out


def load_mean_std(path):
    """Read and check the statistics JSON written by pre_processing.py."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} not found: run pre_processing.py first")
    stats = read_json(path, "statistics file")
    check_preprocessing(stats, path)
    return stats


def check_preprocessing(stats, where):
    """Mean, std and gamma of the preprocessing: finite, one per channel, std >= 0, gamma > 0."""
    if not isinstance(stats, dict) or not all(k in stats for k in ("mean", "std", "gamma")):
        raise PipelineError(f"{where} lacks mean, std or gamma; write it anew "
                            "(pre_processing.py)")
    mean = finite_numbers(np.atleast_1d(stats["mean"]).tolist(), f"{where}: mean")
    std = finite_numbers(np.atleast_1d(stats["std"]).tolist(), f"{where}: std")
    finite_numbers([stats["gamma"]], f"{where}: gamma", positive=True)
    if len(mean) != len(std) or len(mean) not in (1, 3) or min(std) < 0:
        raise PipelineError(f"{where}: mean and std must give 1 or 3 channels, std not negative")
    equalize = stats.get("equalize", "patch")
    if equalize not in EQUALIZE_MODES:
        raise PipelineError(f"{where}: equalize must be one of {', '.join(EQUALIZE_MODES)}, "
                            f"not {equalize!r}")
    if equalize == "dataset":
        check_histogram(stats.get("histogram"), len(mean), where)


def check_histogram(histogram, channels, where):
    """A histogram per channel of 256 counts: whole numbers, not negative, not all 0."""
    try:
        hist = np.asarray(histogram, dtype=np.float64)
    except (TypeError, ValueError):
        hist = None
    if (hist is None or hist.shape != (channels, 256) or not np.isfinite(hist).all()
            or (hist < 0).any() or (hist != np.rint(hist)).any() or (hist.sum(axis=1) == 0).any()):
        raise PipelineError(f"{where}: equalize 'dataset' needs a histogram of 256 whole, "
                            "non-negative counts for "
                            + agreeing(channels, "its channel", f"each of the {channels} channels")
                            + "; "
                            "write it anew (pre_processing.py)")
