"""Helpers shared by the pipeline scripts: data layout, image I/O, transforms,
the paper's per-patch preprocessing, and IoU scoring.

Kept free of TensorFlow so the data stages start fast.
"""
import json
import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LABEL_EXTS = (".png", ".npy")
COLOR_MODES = ("grey", "rgb")
DEFAULT_GAMMA = 1.2
MEAN_STD_NAME = "train_mean_std"

# One colour per class index for masks and figures (RGB). Index 1 green and 2 red
# follow the paper's contour colours for beads and cells.
PALETTE = np.array(
    [(0, 0, 0), (0, 200, 0), (220, 30, 30), (30, 90, 230), (240, 200, 0),
     (200, 0, 200), (0, 200, 200), (255, 128, 0), (128, 128, 255), (128, 64, 0)],
    dtype=np.uint8)


class PipelineError(Exception):
    """A problem with the user's input, reported without a traceback."""


# ---------------------------------------------------------------- data layout

def read_classes(data_dir):
    path = Path(data_dir) / "classes.txt"
    if not path.is_file():
        raise PipelineError(f"{path} not found: it must list the class names, one per line, "
                            "background first")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(names) < 2:
        raise PipelineError(f"{path} lists {len(names)} class(es); at least background and one "
                            "object class are needed")
    return names


def list_images(src_dir):
    """Map image name (file stem) to path for every image in src_dir, sorted by name."""
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise PipelineError(f"image folder {src_dir} does not exist")
    found = {}
    for path in sorted(src_dir.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTS:
            continue
        if path.stem in found:
            raise PipelineError(f"two images share the name {path.stem!r} in {src_dir}: "
                                f"{found[path.stem].name} and {path.name}")
        found[path.stem] = path
    return found


def find_label(label_dir, name):
    for ext in LABEL_EXTS:
        path = Path(label_dir) / f"{name}{ext}"
        if path.is_file():
            return path
    return None


def read_name_list(path):
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- image I/O

def read_image(path):
    """Read an image file as uint8, HxW (grey) or HxWx3 (RGB), whatever is stored on disk.

    16-bit images are stretched from 0..their maximum to 0..255 (microscope cameras
    often store 12 bits in 16); an alpha channel is dropped.
    """
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise PipelineError(f"cannot read image {path}")
    return _as_pipeline_image(img)


def decode_image(data, what):
    """Decode the bytes of an image file (PNG, JPEG, TIFF...) exactly as read_image reads files."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise PipelineError(f"{what} is not a readable image")
    return _as_pipeline_image(img)


def _as_pipeline_image(img):
    """OpenCV's decoded array -> uint8, HxW or HxWx3 RGB."""
    if img.dtype != np.uint8:
        img = img.astype(np.float64)
        top = img.max()
        img = np.zeros(img.shape, np.uint8) if top <= 0 else np.rint(img * (255.0 / top)).astype(np.uint8)
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        else:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


def to_color_mode(img, color_mode):
    """Convert an image to the pipeline's colour mode: 'grey' (HxW) or 'rgb' (HxWx3)."""
    if color_mode == "grey":
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    if color_mode == "rgb":
        return img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)
    raise ValueError(f"unknown colour mode {color_mode!r}; choose one of {COLOR_MODES}")


def read_label(path):
    path = Path(path)
    if path.suffix.lower() == ".npy":
        label = np.load(path)
    else:
        label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if label is None:
            raise PipelineError(f"cannot read label {path}")
    if label.ndim == 3:
        raise PipelineError(f"label {path} has {label.shape[2]} channels; a label must hold one "
                            "class index per pixel")
    if label.min() < 0 or label.max() > 255:
        raise PipelineError(f"label {path} holds values outside 0..255")
    return label.astype(np.uint8)


def write_image(path, img, atomic=True):
    """Write an HxW or HxWx3 (RGB) uint8 image (PNG is lossless).

    Atomic by default: written in a hidden folder beside `path` and renamed into place, so
    readers never see half a file and an interrupted write leaves nothing an image listing
    would take. Files inside a staging folder (fresh_dir) are published with the folder and
    skip this: the per-file folder and rename make parallel writers contend for the directory.
    """
    path = Path(path)
    arr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    if not atomic:
        if not cv2.imwrite(str(path), arr):
            raise PipelineError(f"cannot write {path}")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=".writing."))
    try:
        if not cv2.imwrite(str(staging / path.name), arr):
            raise PipelineError(f"cannot write {path}")
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_write_text(path, text):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes 0600; give the file ordinary permissions
    os.replace(tmp, path)


def fresh_dir(final_dir):
    """A new empty staging folder beside final_dir; publish it with publish_dir."""
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.partial."))


def publish_dir(staging, final_dir):
    """Replace final_dir with the finished staging folder, so no half-written output remains."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        old = Path(tempfile.mkdtemp(dir=final_dir.parent, prefix=f".{final_dir.name}.old."))
        os.replace(final_dir, old / final_dir.name)
        shutil.rmtree(old)
    os.replace(staging, final_dir)


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
    """Read the statistics JSON written by pre_processing.py."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path} not found: run pre_processing.py first")
    return json.loads(path.read_text())


# ---------------------------------------------------------------- scoring

def confusion_matrix(label, pred, num_classes):
    """num_classes x num_classes counts, rows = label, columns = prediction."""
    label = np.asarray(label, dtype=np.int64).ravel()
    pred = np.asarray(pred, dtype=np.int64).ravel()
    keep = (label >= 0) & (label < num_classes)
    idx = label[keep] * num_classes + np.clip(pred[keep], 0, num_classes - 1)
    return np.bincount(idx, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def iou_per_class(cm):
    """IoU of each class from a confusion matrix.

    A class absent from both label and prediction scores 1 (nothing to find, nothing
    wrongly found); absent from the label but predicted scores 0.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    return np.where(union > 0, tp / np.maximum(union, 1), 1.0)


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
    """Run a script's main(); report a PipelineError as one line and exit status 2."""
    import sys
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


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


def check_replaceable(final_dir, marker):
    """Refuse to replace an existing folder that this pipeline did not write.

    publish_dir swaps out the whole folder, so a user's --output pointing at a folder of
    their own would be lost; a folder holding `marker` (a file the script always writes)
    or an empty one is safe to replace.
    """
    final_dir = Path(final_dir)
    if final_dir.is_file():
        raise PipelineError(f"output {final_dir} is a file, not a folder")
    if final_dir.is_dir() and any(final_dir.iterdir()) and not (final_dir / marker).is_file():
        raise PipelineError(f"output folder {final_dir} exists and was not written by this "
                            f"script (no {marker}); it would be replaced, so choose another")
