"""Turn LabelMe annotations into the pipeline's image and class-index label pairs.

Reads   <input>/*.json                   LabelMe files (not those of its subfolders, which
                                         a note counts); each finds its image through
                                         embedded base64 imageData (preferred: it is exactly
                                         what was annotated) or imagePath, relative to the JSON;
                                         the imagePath file where imageData is a lossy or
                                         8-bit copy of it (LabelMe embeds a 16-bit TIFF as an
                                         8-bit JPEG)
        <data-dir>/classes.txt           class names, background first; a shape's label
                                         is its class's line number (0-based)
Writes  <data-dir>/src/<name>.png        the image, grey or colour as stored (.tif for float
                                         pixels or a TIFF that records its pixel size); not
                                         rewritten when imagePath is <data-dir>/src/<name>.*
        <data-dir>/label/<name>.png      uint8 class index per pixel, 0 = background,
                                         255 = ignored (shapes of an --ignore-labels label)
where <name> is the JSON file's name without .json.

With --instances FOLDER it reads instance masks instead (0 background, each object a number
of its own: StarDist's, Cellpose's <image>_masks.png, most crowded-scene data sets) of the
images already in <data-dir>/src, and writes each as <data-dir>/label/<frame>.png with every
object pixel of one class (--instance-class, or the one object class of classes.txt).

Regions an annotator is unsure of can be drawn with a label named in --ignore-labels (for
example "unsure"): their pixels become 255, which training leaves out of the loss and
metrics and prediction leaves out of its scores. Such a label is not a class.

Shapes: polygon, rectangle (two opposite corners), circle (centre and a point on the
rim), line and linestrip (--line-width wide, round ends), point (a disc of
--point-radius) and mask (a base64 PNG placed with its top-left corner at the first
point). Later shapes are drawn over earlier ones.

Pixel convention, LabelMe's canvas coordinates: pixel (column i, row j) is the square
[i, i+1) x [j, j+1) with its centre at (i + 0.5, j + 0.5); it belongs to a shape when its
centre lies inside (polygon and rectangle edges are half-open, so a rectangle with integer
corners covers exactly (x2 - x1) * (y2 - y1) pixels and neighbours sharing an edge do not
overlap). Mask shapes are pixel arrays: their top-left pixel is (int(x1), int(y1)), as
in LabelMe's own export.
"""
import argparse
import base64
import binascii
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from image_io import (IMAGE_EXTS, JPEG_START, LABEL_EXTS, TIFF_EXTS, decode_image,
                      files_named, lossless_suffix, pixel_size_um, read_raw_image,
                      tiff_frame_count, write_image, write_tiff)
from label_record import RECORD, drawn_as_recorded, read_record
from outputs import sha256_of, staged_output
from cli import (IGNORE_LABEL, PipelineError, agreeing, class_name_problem, control_character,
                 count_of, finite_numbers, nfc, positive_float, read_classes, read_json,
                 refuse_file, refuse_options_beside, run_cli, some_names, unexpanded_pattern,
                 with_new_classes, WORK_DIR)
from instance_masks import class_label, instance_class, masks_of_frames

# LabelMe's own export (labelme_json_to_dataset) draws lines 10 px wide and points with
# radius 5; the same defaults give the same labels from the same annotations.
DEFAULT_INPUT = "data/labelme"
DEFAULT_LINE_WIDTH = 10.0
DEFAULT_POINT_RADIUS = 5.0
# Points each shape type holds: (fewest, most), None = no limit.
POINT_COUNTS = {"polygon": (3, None), "rectangle": (2, 2), "circle": (2, 2), "line": (2, 2),
                "linestrip": (2, None), "point": (1, 1), "mask": (2, 2)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("folders")
    g.add_argument("--input", default=None,
                   help=f"folder of LabelMe .json files (default: {DEFAULT_INPUT})")
    g.add_argument("--allow-outside-paths", action="store_true",
                   help="read images whose imagePath leads outside the annotation folder and "
                        "the data folder (refused by default: a shared annotation file could "
                        "otherwise make this script read any file on the disk)")
    g.add_argument("--data-dir", default="data",
                   help="data folder receiving src/ and label/, holding classes.txt "
                        "(default: %(default)s)")
    g.add_argument("--work-dir", default=WORK_DIR,
                   help="accepted like every pipeline script; this one writes nothing there "
                        "(default: %(default)s)")
    g.add_argument("--replace-labels", action="store_true",
                   help="replace labels in <data-dir>/label that this script did not write "
                        "(drawn by hand, or made elsewhere) where a .json of the same name "
                        "gives other pixels; refused by default, as they would be lost")
    g = p.add_argument_group("drawing")
    g.add_argument("--line-width", type=positive_float, default=DEFAULT_LINE_WIDTH,
                   help="width in pixels of line and linestrip shapes: pixels whose centre is "
                        "within half of it from the line (default: %(default)s, as LabelMe's "
                        "own export)")
    g.add_argument("--point-radius", type=positive_float, default=DEFAULT_POINT_RADIUS,
                   help="radius in pixels of the disc drawn for a point shape (default: "
                        "%(default)s, as LabelMe's own export)")
    g = p.add_argument_group("instance masks (instead of LabelMe files)")
    g.add_argument("--instances", metavar="FOLDER",
                   help="read instance masks from FOLDER (PNG, TIFF or .npy of whole "
                        "numbers of any depth; 0 background, each object a number of its own) "
                        "of the images in <data-dir>/src, named as the image or with _masks, "
                        "_cp_masks or _mask added (Cellpose's images beside their masks and "
                        "its _seg.npy files are passed over), and write their class-index "
                        "labels; keep the masks out of <data-dir>/label, where the labels go, "
                        "and out of <data-dir>/src")
    g.add_argument("--instance-class", metavar="NAME",
                   help="class of the masks' objects (default: the one object class "
                        "classes.txt lists)")
    g = p.add_argument_group("classes")
    g.add_argument("--add-unknown-classes", action="store_true",
                   help="append labels missing from classes.txt to it, in order of first "
                        "appearance, instead of stopping with an error (a missing classes.txt "
                        "is then started with 'background')")
    g.add_argument("--ignore-labels", type=label_names, default=[], metavar="NAME[,NAME...]",
                   help=f"LabelMe labels whose shapes mark pixels to ignore (for example "
                        f"'unsure'): drawn as {IGNORE_LABEL}, left out of training and scoring; "
                        "not classes, so not in classes.txt (default: none)")
    args = p.parse_args(argv)
    if args.instances is not None:
        refuse_options_beside(p, args, "--instances reads instance masks, not LabelMe files",
                              used=("instances", "instance_class", "data_dir", "work_dir",
                                    "replace_labels", "add_unknown_classes"))
    elif args.instance_class is not None:
        p.error("--instance-class names the class of --instances masks; give --instances too")
    return args


def redraw_options(args):
    """The options that drew these labels, recorded for advice to redraw them (label_record.
    redraw_command): a rerun without them refuses the imagePath files or the --ignore-labels
    shapes, or draws lines and points at another size."""
    options = ["--allow-outside-paths"] if args.allow_outside_paths else []
    if args.ignore_labels:
        options += ["--ignore-labels", ",".join(args.ignore_labels)]
    for option, value, default in (("--line-width", args.line_width, DEFAULT_LINE_WIDTH),
                                   ("--point-radius", args.point_radius, DEFAULT_POINT_RADIUS)):
        if value != default:
            options += [option, str(value)]     # exactly as given: :g keeps 6 digits
    return options


def label_names(text):
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected comma-separated label names, got {text!r}")
    return names


# ---------------------------------------------------------------- rasterization

def pixel_centres(x0, y0, x1, y1):
    """Centres of the pixels in columns x0..x1-1 and rows y0..y1-1, as two 2-D arrays."""
    return np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)


def polygon_mask(points, height, width):
    """Even-odd scanline fill of the pixels whose centre lies inside the polygon."""
    pts = np.asarray(points, dtype=np.float64)
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    rows = np.arange(max(0, int(np.floor(y0.min()))), min(height, int(np.ceil(y0.max())) + 1))
    yc = rows[:, None] + 0.5
    # Half-open in y: a row centre on a vertex counts the vertex once; flat edges never cross.
    crosses = (np.minimum(y0, y1) <= yc) & (yc < np.maximum(y0, y1))
    with np.errstate(divide="ignore", invalid="ignore"):
        xc = x0 + (yc - y0) * (x1 - x0) / (y1 - y0)
    r, e = np.nonzero(crosses)
    # Each crossing flips inside/outside from the first column whose centre is at or past it.
    cols = np.clip(np.ceil(xc[r, e] - 0.5), 0, width).astype(np.int64)
    flips = np.zeros((len(rows), width + 1), np.int64)
    np.add.at(flips, (r, cols), 1)
    mask = np.zeros((height, width), bool)
    mask[rows] = (np.cumsum(flips, axis=1)[:, :width] % 2) == 1
    return mask


def rectangle_mask(points, height, width):
    (xa, ya), (xb, yb) = points
    corners = [(xa, ya), (xb, ya), (xb, yb), (xa, yb)]
    return polygon_mask(corners, height, width)


def disc_mask(centre, radius, height, width):
    cx, cy = centre
    x0, y0 = max(0, int(np.floor(cx - radius))), max(0, int(np.floor(cy - radius)))
    x1 = min(width, int(np.ceil(cx + radius)) + 1)
    y1 = min(height, int(np.ceil(cy + radius)) + 1)
    mask = np.zeros((height, width), bool)
    if x0 < x1 and y0 < y1:
        xs, ys = pixel_centres(x0, y0, x1, y1)
        mask[y0:y1, x0:x1] = (xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2
    return mask


def circle_mask(points, height, width):
    (cx, cy), (px, py) = points
    return disc_mask((cx, cy), np.hypot(px - cx, py - cy), height, width)


def polyline_mask(points, height, width, line_width):
    """Pixels whose centre lies within line_width / 2 of any segment (round ends and joins)."""
    half = line_width / 2
    pts = np.asarray(points, dtype=np.float64)
    mask = np.zeros((height, width), bool)
    for a, b in zip(pts[:-1], pts[1:]):
        x0 = max(0, int(np.floor(min(a[0], b[0]) - half)))
        y0 = max(0, int(np.floor(min(a[1], b[1]) - half)))
        x1 = min(width, int(np.ceil(max(a[0], b[0]) + half)) + 1)
        y1 = min(height, int(np.ceil(max(a[1], b[1]) + half)) + 1)
        if x0 >= x1 or y0 >= y1:
            continue
        xs, ys = pixel_centres(x0, y0, x1, y1)
        d = b - a
        length2 = d @ d
        t = np.zeros(xs.shape) if length2 == 0 else np.clip(
            ((xs - a[0]) * d[0] + (ys - a[1]) * d[1]) / length2, 0, 1)
        near = np.hypot(xs - a[0] - t * d[0], ys - a[1] - t * d[1]) <= half
        mask[y0:y1, x0:x1] |= near
    return mask


def embedded_mask(shape, points, height, width):
    """LabelMe 5.x mask shape: a PNG of the box starting at pixel (int(x1), int(y1))."""
    if not shape.get("mask"):
        raise PipelineError("mask shape has no 'mask' data")
    pixels = decode_embedded(shape["mask"], "the shape's mask") > 0
    if pixels.ndim == 3:
        pixels = pixels.any(axis=2)
    x0, y0 = (int(v) for v in points[0])
    mask = np.zeros((height, width), bool)
    h, w = pixels.shape
    top, left = max(0, y0), max(0, x0)
    bottom, right = min(height, y0 + h), min(width, x0 + w)
    if top < bottom and left < right:
        mask[top:bottom, left:right] = pixels[top - y0:bottom - y0, left - x0:right - x0]
    return mask


def type_of(shape):
    return shape.get("shape_type") or "polygon"   # as LabelMe reads a missing type


def shape_mask(shape, height, width, line_width, point_radius):
    shape_type = type_of(shape)
    if shape_type not in POINT_COUNTS:
        raise PipelineError(f"unsupported shape_type {shape_type!r} (label "
                            f"{shape.get('label')!r}); known: {', '.join(POINT_COUNTS)}")
    points = check_points(shape, shape_type)
    if shape_type == "polygon":
        return polygon_mask(points, height, width)
    if shape_type == "rectangle":
        return rectangle_mask(points, height, width)
    if shape_type == "circle":
        return circle_mask(points, height, width)
    if shape_type in ("line", "linestrip"):
        return polyline_mask(points, height, width, line_width)
    if shape_type == "point":
        return disc_mask(points[0], point_radius, height, width)
    return embedded_mask(shape, points, height, width)


# Farther than any image reaches (a whole slide is 1e5-1e6 pixels): beyond it the float
# arithmetic of the fills loses the pixels, or overflows.
MAX_COORDINATE = 1e8


def check_points(shape, shape_type):
    fewest, most = POINT_COUNTS[shape_type]
    what = f"{shape_type} shape labelled {shape.get('label')!r}"
    try:
        points = np.asarray(shape.get("points"), dtype=np.float64)
    except (TypeError, ValueError):
        points = np.empty(0)
    except OverflowError:
        points = np.full((1, 2), np.inf)
    if not (points.ndim == 2 and points.shape[1] == 2
            and fewest <= len(points) <= (most or len(points))):
        wanted = f"exactly {fewest}" if fewest == most else f"at least {fewest}"
        raise PipelineError(f"{what} needs {wanted} [x, y] {agreeing(fewest, 'point', 'points')}, "
                            f"got {shape.get('points')!r}")
    finite_numbers(points.ravel().tolist(), f"the point coordinates of the {what}")
    if np.abs(points).max() > MAX_COORDINATE:
        raise PipelineError(f"the {what} has a point {np.abs(points).max():.3g} pixels from the "
                            "image's corner, which no image has: the file is damaged; redraw "
                            "the shape in LabelMe")
    return points


def rasterize_shapes(shapes, height, width, class_index, line_width=DEFAULT_LINE_WIDTH,
                     point_radius=DEFAULT_POINT_RADIUS, hidden=None):
    """Class-index label (uint8, height x width) of LabelMe shapes, later shapes on top.

    class_index maps each label name to its class number (IGNORE_LABEL for ignored ones).
    A shape that covers no pixel is refused, as a shape with too few points is: whatever the
    annotator marked with it would be background. With a list as hidden, the shapes wholly
    drawn over by later ones are appended to it.
    """
    label = np.zeros((height, width), np.uint8)
    owner = np.zeros((height, width), np.int32)     # the shape each pixel shows, 0 = none
    empty = []
    for number, shape in enumerate(shapes, 1):
        name = shape.get("label")
        if not isinstance(name, str) or name not in class_index:
            raise PipelineError(f"unknown label {name!r}; known classes: "
                                f"{', '.join(class_index)}")
        mask = shape_mask(shape, height, width, line_width, point_radius)
        if not mask.any():
            empty.append(f"{number} ({type_of(shape)} {name!r})")
        label[mask] = class_index[name]
        owner[mask] = number
    if empty:
        raise PipelineError(f"{agreeing(len(empty), 'shape', 'shapes')} {', '.join(empty)} "
                            f"{agreeing(len(empty), 'covers', 'cover')} no pixel of the {height} x "
                            f"{width} image: outside it, of zero area, or between pixel "
                            f"centres; redraw or delete {agreeing(len(empty), 'it', 'them')} "
                            "in LabelMe")
    if hidden is not None:
        shown = set(np.unique(owner).tolist())
        hidden += [f"{n} ({type_of(s)} {s.get('label')!r})" for n, s in enumerate(shapes, 1)
                   if n not in shown]
    return label


# ---------------------------------------------------------------- LabelMe files

def embedded_bytes(b64, what):
    """The image file's bytes of LabelMe's base64-encoded imageData."""
    try:
        return base64.b64decode(b64, validate=False)
    except (binascii.Error, TypeError, ValueError) as err:
        raise PipelineError(f"{what} is not valid base64 ({err})") from None


def decode_embedded(b64, what):
    """Pixels of LabelMe's base64-encoded imageData."""
    return decode_image(embedded_bytes(b64, what), what, raw=True)


def load_annotation(json_path):
    data = read_json(json_path, "LabelMe file")
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list):
        raise PipelineError(f"{json_path}: no 'shapes' list; is it a LabelMe file?")
    if not all(isinstance(s, dict) for s in data["shapes"]):
        raise PipelineError(f"{json_path}: every entry of 'shapes' must be an object")
    return data


def image_file(json_path, data, allowed_roots=None):
    """The file imagePath names, if it exists; LabelMe on Windows writes backslashes.

    With allowed_roots, a path that leads outside all of them is refused.
    """
    rel = data.get("imagePath")
    if not rel or not isinstance(rel, str):
        return None
    path = json_path.parent / rel.replace("\\", "/")
    if allowed_roots is not None:
        real = path.resolve()
        if not any(real.is_relative_to(root.resolve()) for root in allowed_roots):
            raise PipelineError(f"{json_path}: imagePath {rel!r} leads outside the annotation "
                                "folder and the data folder; move the image there, or pass "
                                "--allow-outside-paths if you trust this file")
    return path if path.is_file() else None


def check_image_source(json_path, data, allowed_roots):
    """Refuse an annotation without an image, or whose imagePath file is a TIFF stack."""
    embedded = bool(data.get("imageData"))
    try:
        path = image_file(json_path, data, allowed_roots)
    except PipelineError:
        if not embedded:
            raise
        path = None     # outside the folders allowed: the embedded image is read alone
    if path is None and not embedded:
        raise PipelineError(f"{json_path}: image not found: no embedded imageData and imagePath "
                            f"{data.get('imagePath')!r} is not a file next to it"
                            + image_nearby(json_path, data))
    if path is not None:
        check_one_plane(json_path, path)


def image_nearby(json_path, data):
    """'; X lies beside it ...' where an image beside the JSON has imagePath's file name (a
    Windows path, another case) or the JSON's name with any image extension; else ''."""
    rel = data.get("imagePath") if isinstance(data.get("imagePath"), str) else ""
    base = rel.replace("\\", "/").rsplit("/", 1)[-1]
    stems = {Path(base).stem.lower(), json_path.stem.lower()} - {""}
    found = sorted(p.name for p in json_path.parent.iterdir() if p.is_file()
                   and (p.name.lower() == base.lower() or (p.stem.lower() in stems
                        and p.suffix.lower() in IMAGE_EXTS)))
    return (f"; {found[0]} lies beside it: if that is the image annotated, set imagePath to "
            f"{found[0]!r} (open and save it in LabelMe, or edit the JSON)") if found else ""


def check_one_annotation_per_image(annotations, allowed_roots):
    """Refuse two LabelMe files of one image (one imagePath file, or one embedded image and
    no file): each would make a frame of its own with part of the picture's objects labelled
    (the rest trained as background), and the two could fall on both sides of the split."""
    seen = {}
    for json_path, data in annotations.items():
        try:
            path = image_file(json_path, data, allowed_roots)
        except PipelineError:           # outside the folders allowed: the embedded image is read
            path = None
        key = path.resolve() if path is not None else data.get("imageData") or json_path
        if key in seen:
            raise PipelineError(f"{seen[key].name} and {json_path.name} in {json_path.parent} "
                                "annotate the same image: each would be a frame with part of "
                                "its objects; merge their shapes into one file")
        seen[key] = json_path


def check_one_plane(json_path, path):
    """Refuse a TIFF of several planes: LabelMe shows one of them (its first page), while
    the pipeline takes each plane as a frame <name>_p<k> with a label of its own, so a stack
    in src/ would get a label of no frame's name, and one copied from here would lose its
    other planes."""
    if path.suffix.lower() not in TIFF_EXTS:
        return
    try:
        planes = tiff_frame_count(path)
    except PipelineError:       # unreadable: load_image says so where the file is needed
        return
    if planes > 1:
        raise PipelineError(f"{json_path}: its image {path} is a TIFF stack of {planes} planes "
                            "and an annotation is of one: save the plane you annotated "
                            "(LabelMe shows the first page) as an image of its own and point "
                            "imagePath at it")


def load_image(json_path, data, allowed_roots=None):
    """The annotated image's pixels as read_raw_image reads them (any bit depth, RGB order)."""
    if data.get("imageData"):
        if not isinstance(data["imageData"], str):
            raise PipelineError(f"{json_path}: imageData must be a base64 string")
        raw = embedded_bytes(data["imageData"], f"{json_path}: imageData")
        img = decode_image(raw, f"{json_path}: imageData", raw=True)
        original = lossless_original(json_path, data, allowed_roots, img, raw)
        img = img if original is None else original
    else:
        img = read_raw_image(image_file(json_path, data, allowed_roots))
    stated = stated_size(json_path, data)
    if stated is not None and stated != img.shape[:2]:
        raise PipelineError(f"{json_path}: imageHeight x imageWidth is {stated[0]:g} x "
                            f"{stated[1]:g} but the image is {img.shape[0]} x {img.shape[1]}")
    return img


def lossless_original(json_path, data, allowed_roots, embedded, raw):
    """The imagePath file's pixels where the embedded image is a lossy or shallower copy of
    them: LabelMe embeds an image it cannot show as it is (a 16-bit TIFF) as an 8-bit JPEG,
    and training on that copy would train on other pixels than prediction reads. Same
    height and width, and either JPEG bytes or more bits per sample in the file; else None."""
    try:
        path = image_file(json_path, data, allowed_roots)
        original = read_raw_image(path) if path is not None else None
    except PipelineError:       # outside the folders allowed, or not readable: the copy stands
        return None
    if original is None or original.shape[:2] != embedded.shape[:2]:
        return None
    deeper = original.dtype.kind == "f" or original.dtype.itemsize > embedded.dtype.itemsize
    if not (raw.startswith(JPEG_START) or deeper):
        return None
    if not same_picture(original, embedded):
        raise PipelineError(f"{json_path}: imageData is not a copy of the imagePath file {path} "
                            "(same size, other picture): the shapes were drawn on imageData; "
                            "point imagePath at the image annotated, or open the file in LabelMe "
                            "and save the annotation again")
    return original


def same_picture(original, embedded, least=0.5, most_pixels=200_000):
    """Whether a lossy or shallower copy shows the original's picture: their grey levels rise
    together (rank correlation: near 1 for a JPEG or any monotone mapping of deeper pixels,
    clipped or not; near 0 for another picture or the same one turned). A flat picture passes:
    nothing tells."""
    a, b = (np.asarray(x, np.float64) for x in (original, embedded))
    a, b = (x.mean(axis=2) if x.ndim == 3 else x for x in (a, b))
    step = max(1, a.size // most_pixels)
    a, b = a.ravel()[::step], b.ravel()[::step]
    if a.std() == 0 or b.std() == 0:
        return True
    return np.corrcoef(ranks(a), ranks(b))[0, 1] >= least


def ranks(values):
    """Each value's rank among them, tied values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


def stated_size(json_path, data):
    """(imageHeight, imageWidth) as numbers, numbers written as strings too (as point
    coordinates are read); None where the file leaves either out."""
    size = []
    for key in ("imageHeight", "imageWidth"):
        value = data.get(key)
        if value is None:
            return None
        try:
            size.append(float(value))
        except (TypeError, ValueError):
            raise PipelineError(f"{json_path}: {key} {value!r} is not a number") from None
    return tuple(size)


# LabelMe's own labels.txt (examples/semantic_segmentation) lists "__ignore__" first (class -1,
# left out) and "_background_" second (class 0); labelme_json_to_dataset maps "_background_" to 0.
# Read as plain lines they would shift every class by one and train holes and ignored regions as
# object classes.
LABELME_IGNORE, LABELME_BACKGROUND = "__ignore__", "_background_"
BACKGROUND_NAMES = {"background", "_background_", "bg", "back ground", "backgrounds"}
# Names a class 0 may have that no shape is expected to use for an object either.
CLASS_ZERO_NAMES = BACKGROUND_NAMES | {"none", "void", "empty", "unlabeled", "unlabelled",
                                       "nothing", "medium"}


def labelme_conventions(classes, classes_path, annotations):
    """Refuse LabelMe's labels.txt conventions this script would read otherwise."""
    if LABELME_IGNORE in classes:
        raise PipelineError(f"{classes_path} lists {LABELME_IGNORE!r} (line "
                            f"{classes.index(LABELME_IGNORE) + 1}), LabelMe's labels.txt entry for "
                            "regions left out: here it would be a class (line 1 is class 0, "
                            f"background); remove that line and convert with --ignore-labels "
                            f"{LABELME_IGNORE}")
    if LABELME_BACKGROUND in classes[1:]:
        raise PipelineError(f"{classes_path} lists {LABELME_BACKGROUND!r} as class "
                            f"{classes.index(LABELME_BACKGROUND)}, an object class: background "
                            "must be the first line")
    if nfc(classes[0]).lower() in CLASS_ZERO_NAMES:
        return
    later = next((name for name in classes[1:] if nfc(name).lower() in BACKGROUND_NAMES), None)
    if later:
        raise PipelineError(f"{classes_path} lists {later!r} as class {classes.index(later)} and "
                            f"{classes[0]!r} on its first line, which is class 0, background: "
                            "put the background first (a comment line is read as a class too)")
    for json_path, data in annotations.items():
        for number, shape in enumerate(data["shapes"], 1):
            if shape.get("label") == classes[0]:
                raise PipelineError(f"{json_path}: shape {number} is labelled {classes[0]!r}, the "
                                    f"first line of {classes_path}, which is class 0, background: "
                                    "it would be drawn as background; put 'background' on the "
                                    "first line of the class list")


def unknown_labels(annotations, known):
    """Labels missing from known, in order of first appearance, with their first file; each
    one a valid class name, as --add-unknown-classes makes it one."""
    missing = {}
    for json_path, data in annotations.items():
        for number, shape in enumerate(data["shapes"], 1):
            name = shape.get("label")
            if not isinstance(name, str) or not name:
                raise PipelineError(f"{json_path}: a shape has no label")
            if name in known or name in missing:
                continue
            if name in (LABELME_IGNORE, LABELME_BACKGROUND):
                raise PipelineError(f"{json_path}: shape {number} is labelled {name!r}, LabelMe's "
                                    "name for " + ("regions left out: convert with "
                                    f"--ignore-labels {name}" if name == LABELME_IGNORE else
                                    "background (class 0): relabel it with the first name of "
                                    "classes.txt") + "; as a new class it would train as an object")
            problem = class_name_problem(name)
            if problem:
                raise PipelineError(f"{json_path}: the label {name!r} of shape {number} "
                                    f"({type_of(shape)}) {problem}; rename it in LabelMe")
            missing[name] = json_path
    return missing


def spell_like(annotations, names):
    """Write every shape's label as the name of `names` it is, and new ones composed: a label
    typed on macOS may store its accents decomposed, which looks the same and matched no
    class (cli.nfc)."""
    spelled = {nfc(name): name for name in names}
    for data in annotations.values():
        for shape in data["shapes"]:
            if isinstance(shape.get("label"), str):
                shape["label"] = spelled.get(nfc(shape["label"]), nfc(shape["label"]))


def dropped_class(data_dir, name, classes):
    """What to do with a label that was a class when this script drew labels now in
    data/label (read_record) and is no longer listed: renamed or removed from classes.txt, where
    --add-unknown-classes would list it again, as another class. None for another label."""
    for label, entry in sorted(read_record(data_dir).items()):
        drawn, path = entry.get("classes"), Path(data_dir) / "label" / label
        if isinstance(drawn, list) and name in drawn and path.exists():
            return (f"it was class {drawn.index(name)} when this script drew {path}: where "
                    "it was renamed, give its shapes the new name in LabelMe; where it was "
                    f"removed, delete them, or add --ignore-labels {name} to leave them out of "
                    f"training (--add-unknown-classes would list it again, as class "
                    f"{len(classes)})")
    return None


def resolve_classes(data_dir, annotations, add_unknown, ignored=()):
    """(class names after checking every label, whether unknown ones were appended).

    Labels in ignored are neither classes nor unknown."""
    classes_path = Path(data_dir) / "classes.txt"
    classes = read_classes(data_dir) if classes_path.is_file() or not add_unknown \
        else ["background"]
    both = [name for name in ignored if name in classes]
    if both:
        raise PipelineError(f"{both[0]!r} is both a class in {classes_path} and an "
                            "--ignore-labels label; remove it from one of them")
    spell_like(annotations, [*classes, *ignored])
    labelme_conventions(classes, classes_path, annotations)
    missing = unknown_labels(annotations, [*classes, *ignored])
    if missing and not add_unknown:
        name, json_path = next(iter(missing.items()))
        meant = [c for c in classes if c.casefold() == name.casefold()]
        fix = (f"did you mean {meant[0]!r}? rename the label in LabelMe" if meant else
               dropped_class(data_dir, name, classes) or
               "add it there or use --add-unknown-classes")
        raise PipelineError(f"{json_path}: label {name!r} is not in {classes_path} (known classes: "
                            f"{', '.join(classes)}); {fix}")
    return with_new_classes(classes, missing), list(missing)


# ---------------------------------------------------------------- output

def others_named(folder, name, target, exts):
    """The files of `folder` named name.<one of exts> (as find_label matches names) other
    than target."""
    return [p for p in files_named(folder, name, exts)
            if p != target and not (target.exists() and p.samefile(target))]


def holds_pixels(path, image):
    """Whether the image file at path stores exactly these pixels."""
    try:
        stored = read_raw_image(path)
    except PipelineError:
        return False
    return stored.shape == image.shape and stored.dtype == image.dtype and \
        np.array_equal(stored, image)


class WrittenLabels:
    """The labels this script wrote into data/label, each by its file's sha256 and the classes
    it was drawn with, kept in data/labelme_to_label.json: a rerun after a JSON was edited
    replaces its own label, but a label drawn by hand or made elsewhere only with
    --replace-labels; gen_img_aug.py refuses a label whose classes moved since."""

    def __init__(self, data_dir, replace, classes, options=()):
        self.replace, self.classes, self.entries = replace, list(classes), read_record(data_dir)
        self.data_dir, self.options = Path(data_dir), list(options)

    def check(self, origin, label_path, label):
        if (self.replace or not label_path.exists() or drawn_as_recorded(self.entries, label_path)
                or holds_pixels(label_path, label)):
            return
        raise PipelineError(f"{origin}: would replace {label_path}, a label this script did "
                            "not write (drawn by hand or made elsewhere), with other pixels; "
                            "move it away to keep it, or add --replace-labels")

    def add(self, staged_label, origin, kind):
        # The file it came from (kind "json" or "mask"), relative to the data folder where it
        # lies inside (a project moved elsewhere keeps it), for a rerun to tell the labels of
        # files removed.
        source = os.path.abspath(origin)
        inside = os.path.relpath(source, os.path.abspath(self.data_dir))
        self.entries[staged_label.name] = {
            "sha256": sha256_of(staged_label), "classes": self.classes,
            kind: source if inside.startswith("..") else inside, "options": self.options}

    def orphaned(self, input_dir, kind):
        """Labels this script drew from files (of kind "json" or "mask") of input_dir removed
        since, still in data/label as it wrote them: their frames train on, which a user who
        deleted the annotation to drop a frame does not expect."""
        folder = os.path.abspath(input_dir)
        found = []
        for name, entry in sorted(self.entries.items()):
            source = entry.get(kind)
            if not isinstance(source, str):
                continue        # written by an earlier version, which kept no source
            source = os.path.join(os.path.abspath(self.data_dir), source)
            label = self.data_dir / "label" / name
            if (os.path.dirname(source) == folder and not os.path.exists(source)
                    and drawn_as_recorded(self.entries, label)):
                found.append(name)
        return found

    def save(self, staging):
        (Path(staging) / RECORD).write_text(
            json.dumps(self.entries, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def check_src_shows(json_path, in_src, image):
    """Refuse an imagePath file in data/src, the frame the pipeline trains on, that no longer
    shows the picture the shapes were drawn on (imageData, saved mirrored or replaced since)."""
    stored = read_raw_image(in_src)
    if stored.shape[:2] != image.shape[:2] or not same_picture(stored, image):
        raise PipelineError(f"{json_path}: imageData shows another picture than its imagePath "
                            f"file {in_src}, which the pipeline trains on: the shapes were drawn "
                            "on imageData; open the file in LabelMe and check the shapes, or "
                            "replace the file with the image annotated")


def source_pixel_size(json_path, data, image, allowed_roots):
    """The pixel size (micrometres) the imagePath TIFF records where its pixels are those
    written: a PNG copy would lose it, and get_contour.py its micrometre columns."""
    try:
        path = image_file(json_path, data, allowed_roots)
    except PipelineError:
        return None
    if path is None or path.suffix.lower() not in TIFF_EXTS or not holds_pixels(path, image):
        return None
    return pixel_size_um(path)


def write_pair(json_path, data, image, label, data_dir, staging, written, pixel_size=None):
    """The image (lossless, its own bit depth) and label into the staging folder, after
    checking that data/src holds no other image of that name and that an image file of the
    target's name holds these pixels (it is left as it is: a rerun, or the embedded copy of
    the user's file; another picture there would be lost), and that data/label holds no
    other label of that name, nor one that `written` (WrittenLabels) says it may not replace."""
    name = json_path.stem
    src_dir = Path(data_dir) / "src"
    named = image_file(json_path, data)
    # imagePath already in data/src: the pipeline finds it there, and a copy would give two
    # images of one picture.
    if named is not None and named.resolve().parent == src_dir.resolve():
        if named.stem != name:
            raise PipelineError(f"{json_path}: its image {named.name} is in {src_dir} under "
                                f"another name: a copy named {name!r} would make two images "
                                f"of one picture, {named.stem!r} without a label; rename the "
                                f"JSON {named.stem}.json")
        check_src_shows(json_path, named, image)
    else:
        keeps_size = pixel_size and image.dtype in (np.uint8, np.uint16, np.float32)
        target = src_dir / f"{name}{'.tif' if keeps_size else lossless_suffix(image)}"
        clash = others_named(src_dir, name, target, IMAGE_EXTS)
        if clash and holds_pixels(clash[0], image):
            target = clash[0]       # written by an earlier run in another format: left as it is
        elif clash:
            raise PipelineError(f"{json_path}: would write {target} but {clash[0]} already holds "
                                f"an image named {name!r}")
        if not target.exists() and keeps_size:
            write_tiff(staging / "src" / target.name, image, pixel_size)
        elif not target.exists():
            write_image(staging / "src" / target.name, image, atomic=False)
        elif not holds_pixels(target, image):
            raise PipelineError(f"{json_path}: would replace {target}, whose pixels are not "
                                f"those of {image_origin(named, data, image)}; move that file "
                                "away, or set imagePath to it")
    write_label(json_path, "json", name, label, data_dir, staging, written)


def image_origin(named, data, image):
    """Where an annotation's image came from, for messages: the imagePath file `named`
    (without imageData, or where load_image took it over a lossy embedded copy) or the
    embedded imageData."""
    if named is not None and (not data.get("imageData") or holds_pixels(named, image)):
        return f"its imagePath file {named}"
    return "the image this annotation holds (imageData)"


def write_label(origin, kind, name, label, data_dir, staging, written):
    """The label of frame `name`, drawn from file `origin` (of kind "json" or "mask"), into
    the staging folder, after checking that data/label holds no other label of that name,
    nor one that `written` (WrittenLabels) says it may not replace."""
    label_path = Path(data_dir) / "label" / f"{name}.png"
    clash = others_named(label_path.parent, name, label_path, LABEL_EXTS)
    if clash:
        raise PipelineError(f"{origin}: would write {label_path} but {clash[0]} already is "
                            f"the label of {name!r}; move one of them away")
    written.check(origin, label_path, label)
    write_image(staging / "label" / label_path.name, label, atomic=False)
    written.add(staging / "label" / label_path.name, origin, kind)


def convert(json_path, data, class_index, data_dir, line_width, point_radius, staging,
            allowed_roots, written):
    image = load_image(json_path, data, allowed_roots)
    hidden = []
    try:
        label = rasterize_shapes(data["shapes"], image.shape[0], image.shape[1], class_index,
                                 line_width, point_radius, hidden)
    except PipelineError as err:
        raise PipelineError(f"{json_path}: {err}") from None
    if hidden:
        print(f"note: {json_path}: {agreeing(len(hidden), 'shape', 'shapes')} {some_names(hidden)} "
              f"{agreeing(len(hidden), 'is', 'are')} wholly covered by later "
              "shapes, which are drawn over earlier ones (as LabelMe's export does): move "
              f"{agreeing(len(hidden), 'it', 'them')} up in LabelMe's list if "
              f"{agreeing(len(hidden), 'it', 'they')} should show")
    write_pair(json_path, data, image, label, data_dir, staging, written,
               source_pixel_size(json_path, data, image, allowed_roots))
    return np.bincount(label.ravel(), minlength=IGNORE_LABEL + 1)


def summary(counts, classes, n_images, label_dir):
    """One line: pixels per class, and the ignored pixels when there are any."""
    total = max(int(counts.sum()), 1)
    parts = ", ".join(f"{c} {int(n)} ({n / total:.1%})" for c, n in zip(classes, counts))
    ignored = int(counts[IGNORE_LABEL])
    if ignored:
        parts += f"; ignored {ignored} ({ignored / total:.1%})"
    return f"{count_of(n_images, 'image')} -> {label_dir}; pixels per class: {parts}"


def nested_json(input_dir):
    """The .json files in input_dir's subfolders, relative to it: this script reads only
    those directly in input_dir, and would otherwise leave these out without a word. Hidden
    files and folders are left out, as they are directly in input_dir."""
    found = []
    for folder, subfolders, files in os.walk(input_dir):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        if Path(folder) != input_dir:
            found += [(Path(folder) / f).relative_to(input_dir).as_posix() for f in sorted(files)
                      if f.lower().endswith(".json") and not f.startswith(".")]
    return found


def input_folder(path, holds):
    """The folder path names, or one line saying why it is none."""
    folder = Path(path)
    if not folder.is_dir():
        raise PipelineError(f"input folder {folder} does not exist"
                            + (f" (it is a file; give the folder that holds the {holds})"
                               if folder.exists() else unexpanded_pattern(folder)))
    return folder


def note_orphaned(written, folder, kind, data_dir):
    orphaned = written.orphaned(folder, kind)
    if orphaned:
        files = "JSON files" if kind == "json" else "masks"
        print(f"note: labels drawn by this script from {files} since removed from "
              f"{folder} stay in {data_dir / 'label'}, and gen_img_aug.py trains on their "
              f"frames ({count_of(len(orphaned), 'label')}: {some_names(orphaned)}); to leave a "
              f"frame out, delete its label and its image in {data_dir / 'src'}")


def convert_instance_masks(folder, class_name, data_dir, replace, add_unknown):
    """labelme_to_label.py --instances: each mask in folder as the class-index label of its
    frame in data_dir/src, staged, so one bad mask leaves data/ as it was."""
    matched = masks_of_frames(folder, data_dir)
    classes, index, added = instance_class(data_dir, class_name, add_unknown)
    # A rerun without --instance-class may not find the class (another object class listed).
    written = WrittenLabels(data_dir, replace, classes, ["--instance-class", classes[index]])
    counts, objects = np.zeros(IGNORE_LABEL + 1, np.int64), 0
    with staged_output(data_dir, merge=True) as staging:
        (staging / "label").mkdir()
        for frame, (source, mask_path) in tqdm(matched.items(), desc="labels", unit="mask",
                                               disable=None):
            label, count = class_label(mask_path, source, index)
            write_label(mask_path, "mask", frame, label, data_dir, staging, written)
            counts += np.bincount(label.ravel(), minlength=IGNORE_LABEL + 1)
            objects += count
        written.save(staging)
        if added:
            (staging / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    if added:
        print(f"added class {classes[index]!r} to {data_dir / 'classes.txt'}")
    print(f"{count_of(objects, 'object')} of class {classes[index]!r}; "
          + summary(counts, classes, len(matched), data_dir / "label"))
    note_orphaned(written, folder, "mask", data_dir)


def main(argv=None):
    args = parse_args(argv)
    data_dir = refuse_file(args.data_dir, "--data-dir")
    if args.instances is not None:
        convert_instance_masks(input_folder(args.instances, "masks"), args.instance_class,
                               data_dir, args.replace_labels, args.add_unknown_classes)
        return
    input_dir = input_folder(DEFAULT_INPUT if args.input is None else args.input, ".json files")
    try:
        json_paths = sorted(p for p in input_dir.iterdir() if p.suffix.lower() == ".json"
                            and not p.name.startswith(".") and p.is_file())
    except OSError as err:
        raise PipelineError(f"cannot list {input_dir}: {err.strerror or err}") from None
    nested = nested_json(input_dir)
    if not json_paths:
        raise PipelineError(f"no LabelMe .json files in {input_dir}" + (
            f" ({len(nested)} in its subfolders: {some_names(nested)}; give --input the "
            "folder that holds them)" if nested else ""))
    if nested:
        print(f"note: {count_of(len(nested), '.json file')} in subfolders of {input_dir} "
              f"{agreeing(len(nested), 'is', 'are')} not read "
              f"({some_names(nested)}): only the files directly in it are; move them there, "
              "or run this script with --input on each subfolder")
    # <name> becomes a frame name, a line of train.txt and test.txt: gen_img_aug.py would
    # refuse the image written for it.
    odd = next((p for p in json_paths if control_character(p.name)), None)
    if odd:
        raise PipelineError(f"LabelMe file name {odd.name!r} in {input_dir} holds the control "
                            f"character {control_character(odd.name)!r}; rename the file")
    stems = [nfc(p.stem) for p in json_paths]
    doubled = sorted({stem for stem in stems if stems.count(stem) > 1})
    if doubled:
        raise PipelineError(f"two LabelMe files of the name {doubled[0]!r} in {input_dir} (their "
                            "names differ only in the case of the extension or in how accented "
                            "letters are encoded); each writes label/<name>.png, so "
                            "keep one")
    allowed_roots = None if args.allow_outside_paths else [input_dir, data_dir]
    annotations = {p: load_annotation(p) for p in json_paths}
    for json_path, data in annotations.items():
        check_image_source(json_path, data, allowed_roots)
    check_one_annotation_per_image(annotations, allowed_roots)
    classes, added = resolve_classes(data_dir, annotations, args.add_unknown_classes,
                                     args.ignore_labels)
    class_index = {name: i for i, name in enumerate(classes)}
    class_index.update((name, IGNORE_LABEL) for name in args.ignore_labels)
    counts = np.zeros(IGNORE_LABEL + 1, np.int64)
    written = WrittenLabels(data_dir, args.replace_labels, classes, redraw_options(args))
    # Every file is converted into a staging folder first: one bad file leaves data/ as it was.
    with staged_output(data_dir, merge=True) as staging:
        (staging / "src").mkdir()
        (staging / "label").mkdir()
        for json_path, data in tqdm(annotations.items(), desc="labels", unit="image",
                                    disable=None):
            counts += convert(json_path, data, class_index, data_dir, args.line_width,
                              args.point_radius, staging, allowed_roots, written)
        written.save(staging)
        if added:
            (staging / "classes.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
    if added:
        print(f"added {len(added)} class(es) to {data_dir / 'classes.txt'}: {', '.join(added)}")
    print(summary(counts, classes, len(annotations), data_dir / "label"))
    note_orphaned(written, input_dir, "json", data_dir)


if __name__ == "__main__":
    run_cli(main)
