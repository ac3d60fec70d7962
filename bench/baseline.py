"""The classical floor: what a few image operations score, with no learning at all.

Grey images, 2 classes (bbbc030, DIC cells): "texture" method. DIC cells are textured and the
background is smooth, even where the illumination shading varies, so
  local standard deviation over a --window square (from box means of x and x^2)
  -> Otsu threshold (per image) -> morphological closing by a disc of radius --close
     (joins the textured rim of a cell whose middle is smooth, so that the next step fills it)
  -> holes filled -> objects under --min-area pixels removed -> class 1.

Colour images, 3 classes background/cytoplasm/nucleus (wbc300, stained blood smears): "stain"
method. In CIELAB the b* axis (yellow to blue) orders the stains: nuclei are deep blue-purple,
cytoplasm paler blue-purple, plasma and red cells cream to pink. So
  Otsu with two thresholds on b* (per image): lowest band = nucleus, middle band = cell
  -> nucleus: objects under --min-area removed
  -> cell: holes filled, objects under --min-area removed, only objects that hold nucleus
     pixels kept (a white cell has a nucleus; red cells do not), and only within --reach pixels
     of the convex hull of the nucleus (the middle band also catches the edges of red cells
     that touch the white cell) -> cytoplasm = cell minus nucleus.

The defaults were chosen on the training images only (names not in test.txt), never on the
test images; `--split train` shows those scores. Other image kinds or class counts have no
method here and are reported as an error.

    python bench/baseline.py bbbc030             # test split; writes bench/results/bbbc030-baseline.json
    python bench/baseline.py wbc300 --split train
"""
import argparse
import re
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from image_io import find_label, list_images, read_image, read_label, write_image  # noqa: E402
from outputs import write_json  # noqa: E402
from cli import PipelineError, read_classes, read_name_list, run_cli  # noqa: E402
from metrics import confusion_matrix, iou_per_class  # noqa: E402

SHARED_DATASETS = REPO.parent / "shared" / "datasets"
RESULTS_DIR = REPO / "bench" / "results"
DEFAULTS = {"window": 3, "close": 10, "min_area": 100, "reach": 25}


# ---------------------------------------------------------------- data

def resolve_dataset(arg):
    """A data set folder: the path itself if it exists, else a name under ../shared/datasets."""
    for candidate in (Path(arg), SHARED_DATASETS / arg):
        if candidate.is_dir():
            return candidate.resolve()
    known = sorted(p.name for p in SHARED_DATASETS.iterdir() if p.is_dir()) \
        if SHARED_DATASETS.is_dir() else []
    raise PipelineError(f"data set {arg!r} is neither a folder nor a name under "
                        f"{SHARED_DATASETS} (there: {', '.join(known) or 'nothing'})")


def split_names(dataset_dir, split):
    """Image names of the 'test' split (test.txt) or the 'train' split (all the others)."""
    test_file = Path(dataset_dir) / "test.txt"
    if not test_file.is_file():
        raise PipelineError(f"{test_file} not found: a fixed test list is needed so that every "
                            "method is scored on the same images")
    images = list_images(Path(dataset_dir) / "src")
    test = read_name_list(test_file)
    missing = [n for n in test if n not in images]
    if missing:
        raise PipelineError(f"{test_file} names images that {Path(dataset_dir) / 'src'} lacks: "
                            f"{', '.join(missing[:5])}")
    held_out = set(test)
    return test if split == "test" else [n for n in images if n not in held_out]


def results_path(results_dir, dataset_name, tag):
    if tag and not re.fullmatch(r"[A-Za-z0-9._-]+", tag):
        raise PipelineError(f"tag {tag!r} may hold only letters, digits, '.', '_' and '-'")
    return Path(results_dir) / (f"{dataset_name}-{tag}.json" if tag else f"{dataset_name}.json")


def command_line():
    return shlex.join(["python", *sys.argv])


def utc_now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- building blocks

def otsu_thresholds(values, levels=2, bins=256):
    """Otsu's thresholds splitting values into `levels` (2 or 3) classes.

    Class k holds t[k-1] <= value < t[k]. Works on any real values (a histogram of `bins`
    bins over their range); a constant input puts everything in the lowest class.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return [np.inf] * (levels - 1)
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    p = hist / hist.sum()
    mass = np.cumsum(p)
    moment = np.cumsum(p * (edges[:-1] + edges[1:]) / 2)

    def spread(w, m):
        # The between-class variance is, up to a constant, the sum of m^2 / w over classes.
        return np.where(w > 0, m * m / np.maximum(w, 1e-300), 0.0)

    if levels == 2:
        score = spread(mass, moment) + spread(1 - mass, moment[-1] - moment)
        return [edges[int(np.argmax(score[:-1])) + 1]]
    if levels != 3:
        raise ValueError("otsu_thresholds supports 2 or 3 levels")
    wi, mi, wj, mj = mass[:, None], moment[:, None], mass[None, :], moment[None, :]
    score = spread(wi, mi) + spread(wj - wi, mj - mi) + spread(1 - wj, moment[-1] - mj)
    i, j = np.indices(score.shape)
    score[(j <= i) | (j >= bins - 1)] = -np.inf
    i, j = np.unravel_index(int(np.argmax(score)), score.shape)
    return [edges[i + 1], edges[j + 1]]


def local_std(grey, window):
    x = grey.astype(np.float32)
    mean = cv2.blur(x, (window, window))
    mean_sq = cv2.blur(x * x, (window, window))
    return np.sqrt(np.maximum(mean_sq - mean * mean, 0))


def disc(radius):
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def fill_holes(mask):
    """Everything enclosed by an object's outer contour becomes part of the object."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out.astype(bool)


def remove_small(mask, min_area):
    """Drop 8-connected objects of fewer than min_area pixels."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_area
    keep[0] = False
    return keep[labels]


def keep_touching(mask, seeds):
    """The objects of mask that share at least one pixel with seeds."""
    _, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.zeros(labels.max() + 1, bool)
    keep[np.unique(labels[mask & seeds])] = True
    keep[0] = False
    return keep[labels]


def grown_hull(mask, reach):
    """The convex hull of all mask pixels, grown by `reach` pixels."""
    points = cv2.findNonZero(mask.astype(np.uint8))
    out = np.zeros(mask.shape, np.uint8)
    if points is not None:
        cv2.fillConvexPoly(out, cv2.convexHull(points), 1)
    return cv2.dilate(out, disc(reach)).astype(bool) if reach else out.astype(bool)


# ---------------------------------------------------------------- methods

def segment_texture(image, window, close, min_area):
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    texture = local_std(grey, window)
    mask = (texture >= otsu_thresholds(texture)[0]).astype(np.uint8)
    if close:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, disc(close))
    return remove_small(fill_holes(mask), min_area).astype(np.uint8)


def segment_stain(image, reach, min_area):
    blue_yellow = cv2.cvtColor(image, cv2.COLOR_RGB2LAB)[:, :, 2]
    t_nucleus, t_cell = otsu_thresholds(blue_yellow, levels=3)
    nucleus = remove_small(blue_yellow < t_nucleus, min_area)
    cell = remove_small(fill_holes(blue_yellow < t_cell), min_area)
    cell = (keep_touching(cell, nucleus) & grown_hull(nucleus, reach)) | nucleus
    out = np.zeros(blue_yellow.shape, np.uint8)
    out[cell] = 1
    out[nucleus] = 2
    return out


def method_for(image, num_classes):
    if num_classes == 2:
        return "texture"
    if num_classes == 3 and image.ndim == 3:
        return "stain"
    kind = "colour" if image.ndim == 3 else "grey"
    raise PipelineError(f"no classical baseline for {kind} images with {num_classes} classes "
                        "(there is one for 2 classes, and for colour images with 3)")


def segment(image, num_classes=2, window=DEFAULTS["window"], close=DEFAULTS["close"],
            min_area=DEFAULTS["min_area"], reach=DEFAULTS["reach"]):
    """Class-index mask (uint8, HxW) of a uint8 grey (HxW) or RGB (HxWx3) image."""
    if method_for(image, num_classes) == "texture":
        return segment_texture(image, window, close, min_area)
    return segment_stain(image, reach, min_area)


# ---------------------------------------------------------------- scoring

def iou_summary(cm, classes):
    """The IoU record every bench result uses, from a confusion matrix summed over images."""
    iou = iou_per_class(cm)
    return {
        "foreground_iou": float(iou[1]) if len(classes) == 2 else None,
        "per_class_iou": {name: float(v) for name, v in zip(classes, iou)},
        "mean_iou": float(np.mean(iou)),
        "confusion_matrix": np.asarray(cm).tolist(),
    }


def score_predictions(dataset_dir, names, predict, relabel=None):
    """IoU of predict(name) -> mask against <dataset>/label, summed over the named images;
    relabel(name, label) -> label, if given, changes each label before it is scored."""
    dataset_dir = Path(dataset_dir)
    classes = read_classes(dataset_dir)
    total = np.zeros((len(classes), len(classes)), np.int64)
    for name in names:
        label_path = find_label(dataset_dir / "label", name)
        if label_path is None:
            raise PipelineError(f"no label for {name} in {dataset_dir / 'label'}")
        label, mask = read_label(label_path), predict(name)
        if relabel is not None:
            label = relabel(name, label)
        if mask.shape != label.shape:
            raise PipelineError(f"{name}: prediction is {mask.shape}, label {label.shape}")
        total += confusion_matrix(label, mask, len(classes))
    return {"classes": classes, "num_images": len(names), **iou_summary(total, classes)}


def score(dataset_dir, names, masks_dir=None, **params):
    """The baseline's IoU record on the named images; params override DEFAULTS."""
    dataset_dir = Path(dataset_dir)
    params = {**DEFAULTS, **params}
    num_classes = len(read_classes(dataset_dir))
    images = list_images(dataset_dir / "src")
    methods = set()

    def predict(name):
        image = read_image(images[name])
        methods.add(method_for(image, num_classes))
        mask = segment(image, num_classes, **params)
        if masks_dir:
            write_image(Path(masks_dir) / f"{name}.png", mask)
        return mask

    start = time.monotonic()
    result = score_predictions(dataset_dir, names, predict)
    return {"method": "+".join(sorted(methods)), "settings": params,
            "seconds": round(time.monotonic() - start, 2), **result}


def format_table(columns, classes):
    """Per-class IoU of one or more scored methods side by side: columns = {title: record}."""
    titles = list(columns)
    rows = [("class", *titles)]
    rows += [(c, *(f"{columns[t]['per_class_iou'][c]:.4f}" for t in titles)) for c in classes]
    rows.append(("mean IoU", *(f"{columns[t]['mean_iou']:.4f}" for t in titles)))
    if len(classes) == 2:
        rows.append(("foreground IoU", *(f"{columns[t]['foreground_iou']:.4f}" for t in titles)))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{r[0]:<{width}}  " + "  ".join(f"{v:>10}" for v in r[1:]) for r in rows)


# ---------------------------------------------------------------- command line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("dataset", metavar="DATASET",
                   help=f"a data set folder, or a name under {SHARED_DATASETS}")
    g.add_argument("--split", choices=("test", "train"), default="test",
                   help="test: the test.txt images (the benchmark); train: the others, the "
                        "only ones the defaults were chosen on (default: test)")
    g = parser.add_argument_group("texture method (2 classes)")
    g.add_argument("--window", type=int, default=DEFAULTS["window"],
                   help="side of the square for the local standard deviation, pixels "
                        "(default: %(default)s)")
    g.add_argument("--close", type=int, default=DEFAULTS["close"],
                   help="radius of the closing disc before hole filling, pixels; 0 skips it "
                        "(default: %(default)s)")
    g = parser.add_argument_group("stain method (colour, 3 classes)")
    g.add_argument("--reach", type=int, default=DEFAULTS["reach"],
                   help="how far the cell may reach beyond the convex hull of its nucleus, "
                        "pixels (default: %(default)s)")
    g = parser.add_argument_group("both methods")
    g.add_argument("--min-area", type=int, default=DEFAULTS["min_area"],
                   help="objects smaller than this many pixels are removed "
                        "(default: %(default)s)")
    g = parser.add_argument_group("output")
    g.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                   help="where <dataset>-baseline[-train].json goes (default: bench/results)")
    g.add_argument("--masks-dir", type=Path,
                   help="also write each mask there as <name>.png, class index per pixel")
    args = parser.parse_args(argv)
    if args.window < 2:
        parser.error("--window must be at least 2 pixels")
    if min(args.close, args.reach, args.min_area) < 0:
        parser.error("--close, --reach and --min-area must not be negative")
    return args


def main(argv=None):
    args = parse_args(argv)
    dataset_dir = resolve_dataset(args.dataset)
    names = split_names(dataset_dir, args.split)
    params = {"window": args.window, "close": args.close, "min_area": args.min_area,
              "reach": args.reach}
    result = score(dataset_dir, names, args.masks_dir, **params)
    tag = "baseline" if args.split == "test" else "baseline-train"
    path = results_path(args.results_dir, dataset_dir.name, tag)
    write_json(path, {"dataset": dataset_dir.name, "dataset_dir": str(dataset_dir),
                      "split": args.split, "date": utc_now(), "command": command_line(),
                      **result})
    print(f"{dataset_dir.name}, {args.split} split, {len(names)} images, classical baseline "
          f"({result['method']}), {result['seconds']:.1f} s")
    print(format_table({"baseline": result}, result["classes"]))
    print(f"written: {path}")


if __name__ == "__main__":
    run_cli(main)
