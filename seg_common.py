"""Helpers shared by the pipeline scripts: reading settings, option types, transforms,
the paper's per-patch preprocessing, IoU scoring and running.

Kept free of TensorFlow so the data stages start fast. Image files: image_io.py; outputs:
outputs.py.
"""
import argparse
import json
import math
import os
from pathlib import Path

import cv2
import numpy as np

DEFAULT_GAMMA = 1.2
MEAN_STD_NAME = "train_mean_std"
WORK_DIR = "augmented_75k"     # --work-dir default in every script, the original's name

# One colour per class index for masks and figures (RGB). Index 1 green and 2 red
# follow the paper's contour colours for beads and cells.
PALETTE = np.array(
    [(0, 0, 0), (0, 200, 0), (220, 30, 30), (30, 90, 230), (240, 200, 0),
     (200, 0, 200), (0, 200, 200), (255, 128, 0), (128, 128, 255), (128, 64, 0)],
    dtype=np.uint8)


class PipelineError(Exception):
    """A problem with the user's input, reported without a traceback."""


# ---------------------------------------------------------------- reading text and settings

def read_text(path, what="file"):
    """A text file's content: UTF-8 with or without BOM, or UTF-16 with BOM (Windows editors)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise PipelineError(f"{what} {path} is a folder, not a file") from None
    except OSError as err:
        raise PipelineError(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PipelineError(f"{what} {path} is not UTF-8 text; save it as UTF-8") from None


def read_json(path, what="file"):
    """A JSON file's content, or one line saying why it cannot be read."""
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as err:
        raise PipelineError(f"{what} {path} is not valid JSON (line {err.lineno}: {err.msg}); "
                            "fix it or write it anew") from None


def read_name_list(path, what="name list"):
    return [line.strip() for line in read_text(path, what).splitlines() if line.strip()]


def read_classes(data_dir):
    path = Path(data_dir) / "classes.txt"
    if not path.is_file():
        raise PipelineError(f"{path} not found: it must list the class names, one per line, "
                            "background first")
    names = read_name_list(path, "class list")
    if len(names) < 2:
        raise PipelineError(f"{path} lists {len(names)} class(es); at least background and one "
                            "object class are needed")
    if len(set(names)) != len(names):
        raise PipelineError(f"{path} lists a class name twice; each line must be a new class")
    if len(names) > 256:
        raise PipelineError(f"{path} lists {len(names)} classes; a uint8 label holds 256 at most")
    return names


def refuse_file(path, what):
    """One line when a path meant for a folder names a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PipelineError(f"{what} {path} is a file, not a folder; choose another path")
    return path


def existing_folder(path, what, hint=""):
    """A folder the script reads from; one line when it is missing or a file."""
    path = refuse_file(path, what)
    if not path.is_dir():
        raise PipelineError(f"{what} {path} does not exist" + (f": {hint}" if hint else ""))
    return path


def finite_numbers(values, where, positive=False):
    """The values as floats, all finite (and > 0 with positive), or one line naming where."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise PipelineError(f"{where} must be numbers, got {values!r}") from None
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in numbers):
        raise PipelineError(f"{where} must be finite{' and positive' if positive else ''} "
                            f"numbers, got {values!r}; the file is damaged: write it anew")
    return numbers


# ---------------------------------------------------------------- option types

def _parsed(text, cast, kind):
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None


def finite_float(text):
    value = _parsed(text, float, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def positive_float(text):
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def non_negative_float(text):
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def positive_int(text):
    value = _parsed(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def non_negative_int(text):
    value = _parsed(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


# ---------------------------------------------------------------- geometry

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


# ---------------------------------------------------------------- preprocessing

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


# ---------------------------------------------------------------- scoring

def confusion_matrix(label, pred, num_classes):
    """num_classes x num_classes counts, rows = label, columns = prediction."""
    label = np.asarray(label, dtype=np.int64).ravel()
    pred = np.asarray(pred, dtype=np.int64).ravel()
    keep = (label >= 0) & (label < num_classes)
    idx = label[keep] * num_classes + np.clip(pred[keep], 0, num_classes - 1)
    return np.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(cm, xp=np):
    """IoU of each class from a confusion matrix: the one IoU convention of the pipeline.

    A class absent from both label and prediction scores 1 (nothing to find, nothing
    wrongly found); absent from the label but predicted scores 0. xp is numpy, or
    keras.ops for a float confusion-matrix tensor (the training log's metrics).
    """
    if xp is np:
        cm = np.asarray(cm, dtype=np.float64)
    tp = xp.diagonal(cm)
    union = xp.sum(cm, axis=0) + xp.sum(cm, axis=1) - tp
    return xp.where(union > 0, tp / xp.maximum(union, 1), 1.0)


def colorize(mask):
    """RGB picture of a class-index mask."""
    return PALETTE[np.asarray(mask) % len(PALETTE)]


# ---------------------------------------------------------------- running

def default_workers():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def parallel_map(func, tasks, workers, desc, total=None, unit="it"):
    """Yield func(task) for each task in order, over `workers` processes, with a progress bar.

    `total` counts progress units; each result must then be a (units_done, value) pair.
    """
    import multiprocessing
    from tqdm import tqdm

    tasks = list(tasks)
    bar = tqdm(total=total if total is not None else len(tasks), desc=desc, unit=unit,
               dynamic_ncols=True, disable=None)
    with bar:
        if workers <= 1:
            results = map(func, tasks)
            yield from _advance(results, bar, total)
            return
        # spawn, not fork: a parent that has TensorFlow (or any threads) loaded could deadlock a
        # forked child, and spawn behaves the same on Linux, macOS and Windows.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            yield from _advance(pool.imap(func, tasks), bar, total)


def _advance(results, bar, total):
    for result in results:
        if total is None:
            bar.update(1)
            yield result
        else:
            done, value = result
            bar.update(done)
            yield value


def run_cli(main):
    """Run a script's main(); report a PipelineError (or running out of memory, or Ctrl-C) as
    one line, exit status 2 (130 for Ctrl-C)."""
    import sys
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except MemoryError:
        print("error: out of memory; use smaller images, patches or batches, or a machine with "
              "more memory (nothing of this run was published)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; nothing of this run was published (training resumes when rerun)",
              file=sys.stderr)
        sys.exit(130)


def pyplot():
    """matplotlib.pyplot drawing into files only, so the scripts run on machines without a
    display."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, paths, pdf=False):
    """Save a matplotlib figure as PNG (and PDF when asked) to one path or each of several,
    then close it."""
    import matplotlib.pyplot as plt
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
        if pdf:
            fig.savefig(path.with_suffix(".pdf"), bbox_inches="tight")
    plt.close(fig)

