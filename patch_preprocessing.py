"""The paper's per-patch preprocessing and the training statistics it uses."""
from pathlib import Path

import cv2
import numpy as np

from cli import PipelineError, finite_numbers, read_json

DEFAULT_GAMMA = 1.2
MEAN_STD_NAME = "train_mean_std"


def gamma_lut(gamma=DEFAULT_GAMMA):
    levels = np.arange(256, dtype=np.float64) / 255.0
    return np.clip(np.rint(255.0 * levels ** (1.0 / gamma)), 0, 255).astype(np.uint8)


def preprocess_patch(patch, mean, std, gamma=DEFAULT_GAMMA):
    """The paper's preprocessing of one patch or tile (uint8 HxW or HxWxC -> uint8).

    z-score with the training statistics, min-max of z within this patch to 0..255,
    histogram equalization, gamma 1/gamma through a lookup table. Colour patches are
    processed channel by channel with per-channel statistics. A constant patch maps to 0.
    """
    x = np.asarray(patch, dtype=np.float64)
    channels = x[:, :, None] if x.ndim == 2 else x
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
