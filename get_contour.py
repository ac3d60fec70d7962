"""Outline every predicted object, measure it, and draw the paper's figure panels.

Reads   <pred-dir>/<name>.png|.tif       masks from predict_lovasz_loss.py (class per pixel)
        <pred-dir>/predict.json          class names, input and label folders of the run
        <image-dir>/<name>.*             the original images
Writes  <output>/<name>_contour.png      outlines over the image, one colour per class
                                         (beads green, cells red as the paper), with a
                                         legend strip added below the image
        <output>/objects.csv             one row per object, see below
        <figures-dir>/panel_<name>.png   input | ground truth (if labelled) | prediction |
                                         contours, for the paper (PDF too with --pdf)

A TIFF mask of more than --stream-above megapixels (a whole slide) is read a band of rows
at a time: the same objects.csv rows as in memory, while <name>_contour.png and the panel
are overviews at most 4096 pixels on a side (no ground-truth panel).

Defaults follow the test set: <pred-dir> <work-dir>/test/predict, <output>
<work-dir>/test/contours. For another --pred-dir the output is <pred-dir>_contours beside
it, the panels go to <work-dir>/figures/<name of the pred-dir>/, and the images and labels
are found where predict_lovasz_loss.py read them.

Objects are the 8-connected components of each non-background class. objects.csv: image,
class, object_id (per image and class, from 1, in raster order of first pixels), area_px
(pixel count), equivalent_diameter_px (of the disc of that area), perimeter_px (estimated
length of the outer outline of the object's pixels: Vossepoel & Smeulders' corner-count
weights on the chain through the boundary pixels' centres, plus the half pixel from there
to the outline, band_objects.outline_length; 2 pi r for a digitised disc, 2 % short along
edges on the pixel grid and 1.5 px more round a rectangle on it, 76.9 for a 20 x 20 square;
0 for one pixel), circularity (4 pi area / perimeter^2: 1 for a disc, pi/4 for a square;
capped at 1; unreliable below a few tens of pixels, empty under 20),
centroid_x, centroid_y (the mean column and row of the object's pixels: the top-left pixel's
centre is 0, 0, where ImageJ, measuring from its corner, has 0.5, 0.5), bbox_x, bbox_y (the
object's first column and row), bbox_w, bbox_h (pixels). An object the frame's edge cuts is
measured as far as the frame shows it, the cut in its perimeter. The area,
diameter and perimeter are also given in micrometres (area_um2, equivalent_diameter_um,
perimeter_um) with --pixel-size, or, by default, for each image whose TIFF records its pixel
size (OME PhysicalSizeX and Y, or ImageJ's resolution and unit) and whose pixels are square
and not an image program's dots per inch (a note names images of other pixels, measured in
pixels only, and those whose plain TIFF resolution, which is not read, gives a size);
pixel_size_um says which size was used.

--from-probs rebuilds the masks as the original get_contour did, from the per-class
probability maps of predict_lovasz_loss.py --save-probs: each map is scaled to 0..127 and
class c is marked where prob_c * 127 > threshold_c, taking the classes in order so later
classes overwrite earlier ones; other pixels are background.
"""
import argparse
import csv
from collections import Counter
from contextlib import nullcontext
import math
import os
from pathlib import Path

import cv2
import numpy as np

from image_io import (DEFAULT_INTENSITY, MICROMETRES, add_intensity_option, check_intensity,
                      check_label_size, find_frame_label, list_images, parse_intensity,
                      read_image, read_label, square_side, tiff_scale, to_color_mode,
                      write_image)
from band_objects import objects_of_class, outline_length
from touching import SPLIT_DEPTH, split_touching
from outputs import (COLOR_SUFFIX, PROB_INFIX, check_name_fits, contour_file, file_digests,
                     output_lock, prob_file, same_or_inside, staged_output, write_json)
from shards import (check_shard_holds, copy_shard_files, merge_object_tables, open_shards,
                    run_settings)
from cli import (PipelineError, agreeing, count_of, finite_float, non_negative_float,
                 positive_float, read_classes, read_json, refuse_options_beside_merge, run_cli,
                 some_names, unexpanded_pattern, WORK_DIR)
from figures import LegendText, class_colour, colorize, save_figure, pyplot
from whole_slide import (BAND_ROWS, STREAM_ABOVE_MP, Overview, StreamedFrame, bands,
                         megapixels, open_tiff_rows, plane_shape)

ORIGINAL_THRESHOLDS = (69, 80)   # beads, cells, on 0..127 maps
PROB_SCALE = 127
MARKER = "objects.csv"
LEGEND_TEXT_HEIGHT = 0.8     # of a legend line's height: a class name's letters
SHARD_RECORD = "shard.json"    # beside objects.csv of a prediction shard's contours
PANEL_SIDE = 1024              # longest side of the views in a whole slide's panel


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("folders")
    g.add_argument("--data-dir", default="data", metavar="DIR",
                   help="data folder; its classes.txt names the classes when <pred-dir> has no "
                        "predict.json (default: %(default)s)")
    g.add_argument("--work-dir", default=WORK_DIR, metavar="DIR",
                   help="work folder of the pipeline (default: %(default)s)")
    g.add_argument("--pred-dir", metavar="DIR", help="masks written by predict_lovasz_loss.py "
                   "(default: <work-dir>/test/predict)")
    g.add_argument("--image-dir", metavar="DIR",
                   help="original images (default: the folder predict read, else "
                        "<work-dir>/test/src)")
    g.add_argument("--label-dir", metavar="DIR",
                   help="labels for the ground-truth panel (default: the folder predict read "
                        "labels from, if any)")
    g.add_argument("--output", metavar="DIR", help="output folder, replaced as a whole (default: "
                   "<work-dir>/test/contours, or <pred-dir>_contours for another --pred-dir)")
    g.add_argument("--figures-dir", metavar="DIR", help="folder of the panel figures (default: "
                   "<work-dir>/figures, or <work-dir>/figures/<name of the --pred-dir> for "
                   "another --pred-dir)")
    g = p.add_argument_group("objects")
    g.add_argument("--min-area", type=int, default=0, metavar="PIXELS",
                   help="drop objects smaller than this many pixels, e.g. specks of noise; "
                        "they are neither drawn nor listed (default: %(default)s, keep all)")
    g.add_argument("--split-touching", type=positive_float, nargs="?", const=SPLIT_DEPTH,
                   metavar="DEPTH",
                   help="tell touching objects of a class apart: a line of background is "
                        "carved where the object narrows between two peaks of its distance "
                        "to the background that stand DEPTH pixels or more above the pass "
                        f"between them (DEPTH {SPLIT_DEPTH:g} without a value; default: off, "
                        "touching objects are one, as the mask has them)")
    g.add_argument("--stream-above", type=non_negative_float, default=STREAM_ABOVE_MP,
                   metavar="MEGAPIXELS",
                   help="TIFF masks larger than this are read a band of rows at a time; their "
                        "contour picture and panel are overviews (default: %(default)s)")
    g.add_argument("--pixel-size", type=positive_float, metavar="UM",
                   help="micrometres per pixel, for every image; adds area_um2, "
                        "equivalent_diameter_um and perimeter_um to objects.csv (default: the "
                        "pixel size an OME or ImageJ TIFF records, image by image)")
    g = p.add_argument_group("masks from probability maps (the original's thresholds)")
    g.add_argument("--from-probs", action="store_true",
                   help="build the masks from <name>_prob_<class>.png (predict --save-probs) "
                        "instead of <name>.png: class c where prob_c * 127 > its threshold, "
                        "later classes over earlier")
    g.add_argument("--thresholds", type=finite_float, nargs="+", metavar="T",
                   help="with --from-probs: one threshold on 0..127 per non-background class, "
                        "in class order; the original's are 69 for beads and 80 for cells "
                        f"(default: {' '.join(map(str, ORIGINAL_THRESHOLDS))})")
    add_intensity_option(g, "default: the rule prediction used, from predict.json; only "
                            "changes how the image under the outlines looks")
    g = p.add_argument_group("prediction shards (predict_lovasz_loss.py --shard I/N)")
    g.add_argument("--merge", nargs="+", metavar="DIR",
                   help="merge the contour folders of all N shards into the folder one run "
                        "writes (objects.csv in the run's image order, the pictures); the "
                        "output is their name without _shardIofN, or --output")
    g = p.add_argument_group("figures")
    g.add_argument("--panels", action=argparse.BooleanOptionalAction, default=True,
                   help="write panel_<name>.png per image (default: on)")
    g.add_argument("--pdf", action="store_true", help="also write the panels as PDF")
    args = p.parse_args(argv)
    if args.merge:
        refuse_options_beside_merge(p, args)
    if args.min_area < 0:
        p.error("--min-area must not be negative")
    if args.pixel_size is not None and not PIXEL_SIZE_RANGE[0] <= args.pixel_size <= \
            PIXEL_SIZE_RANGE[1]:
        p.error(f"--pixel-size is in micrometres per pixel; {args.pixel_size:g} is outside "
                f"{PIXEL_SIZE_RANGE[0]:g}..{PIXEL_SIZE_RANGE[1]:g} (a size in metres or "
                "nanometres?)")
    if args.thresholds is not None and not args.from_probs:
        p.error("--thresholds applies to masks built from probability maps: add --from-probs "
                "(the masks <name>.png are already decided)")
    if args.thresholds is None:
        args.thresholds = list(ORIGINAL_THRESHOLDS)
    # Outside 0..127 a class is marked nowhere or on every pixel: thresholds on the maps'
    # 0..255 PNG scale (138 160 for the original's) would silently find no objects.
    outside = [t for t in args.thresholds if not 0 <= t <= PROB_SCALE]
    if outside:
        p.error(f"--thresholds are on 0..{PROB_SCALE} (the maps' 0..255 halved); {outside[0]:g} "
                "is outside")
    args.intensity = parse_intensity(p, args.intensity, None)
    return args


# ---------------------------------------------------------------- masks

def mask_from_probs(probs, thresholds):
    """The original's rule: class c where prob_c * 127 > thresholds[c - 1], later c winning.

    probs: [h, w, C] probabilities in 0..1, channel 0 background (not thresholded).
    """
    mask = np.zeros(probs.shape[:2], np.uint8)
    for c, threshold in enumerate(thresholds, start=1):
        mask[probs[:, :, c] * PROB_SCALE > threshold] = c
    return mask


def read_prob_maps(pred_dir, name, classes):
    maps = []
    for cls in classes:
        path = pred_dir / prob_file(name, cls)
        if not path.is_file():
            raise PipelineError(f"{path} not found: --from-probs needs the probability maps of "
                                "predict_lovasz_loss.py --save-probs")
        maps.append(read_label(path).astype(np.float64) / 255.0)
    return np.dstack(maps)


def read_mask(path, num_classes):
    if not path.is_file():
        raise PipelineError(f"mask {path} not found")
    mask = read_label(path)
    check_mask_values(mask, num_classes, path)
    return mask


def check_mask_values(mask, num_classes, path):
    # A band of a streamed TIFF comes as stored, past read_label's checks: a negative or
    # fractional value would silently drop its pixels from every class.
    if mask.min() < 0 or mask.dtype.kind == "f" and not np.all(mask == np.round(mask)):
        raise PipelineError(f"mask {path} holds values that are not class indices (whole "
                            "numbers from 0)")
    if mask.max() >= num_classes:
        raise PipelineError(f"mask {path} holds class {mask.max()} but there are only "
                            f"{num_classes} classes")


# ---------------------------------------------------------------- objects

def find_objects(mask, num_classes, min_area=0, split_depth=None):
    """Connected objects of every non-background class; with split_depth, touching ones
    told apart (touching.split_touching).

    Returns (rows, outlines): rows are dicts of the objects.csv columns in pixels (without
    image name), outlines maps class -> contours of the kept objects, holes included.
    """
    rows, outlines = [], {}
    for c in range(1, num_classes):
        binary = (mask == c).astype(np.uint8)
        if split_depth:
            binary = split_touching(binary, split_depth)
        count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
        # RETR_CCOMP: outer boundaries (no parent) and the boundaries of their holes.
        contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
        by_component = {}
        for contour, (_, _, _, parent) in zip(contours, hierarchy[0] if contours else ()):
            x, y = contour[0, 0]
            entry = by_component.setdefault(labels[y, x], {"outer": None, "all": []})
            entry["all"].append(contour)
            if parent < 0:
                entry["outer"] = contour
        kept = sorted((i for i in range(1, count) if stats[i, cv2.CC_STAT_AREA] >= min_area),
                      key=lambda i: first_pixel(labels, stats, i))
        outlines[c] = [contour for i in kept for contour in by_component[i]["all"]]
        for object_id, i in enumerate(kept, start=1):
            x, y, w, h, area = (int(v) for v in stats[i])
            perimeter = outline_length(by_component[i]["outer"])
            rows.append(object_row(c, object_id, area, perimeter, *centroids[i], x, y, w, h))
    return rows, outlines


def find_objects_in_bands(read_rows, shape, num_classes, min_area=0):
    """find_objects' rows, one after another, for a mask read a band of rows at a time
    (band_objects.py): the same objects, numbers and order, never the whole mask in memory."""
    for c in range(1, num_classes):
        found = objects_of_class(read_rows, shape, c, BAND_ROWS)
        kept = (m for m in found if m.area >= min_area)
        for object_id, m in enumerate(kept, start=1):
            yield object_row(c, object_id, m.area, m.perimeter, m.sum_x / m.area,
                             m.sum_y / m.area, m.left, m.top, m.right - m.left + 1,
                             m.bottom - m.top + 1)


def first_pixel(labels, stats, i):
    """(y, x) of component i's first pixel in raster order (OpenCV numbers components in
    the order of 2x2 blocks, not of pixels)."""
    top = stats[i, cv2.CC_STAT_TOP]
    return top, int(np.argmax(labels[top] == i))


# Below this many pixels an outline is too coarse for its shape: a 2x2 block or a 4x4 square
# reads as round as a disc (1.0, 0.99), and a 3-pixel L above it.
MIN_CIRCULARITY_AREA = 20


def circularity(area, perimeter):
    """4 pi area / perimeter^2, capped at the disc's 1, which no shape exceeds; None, an empty
    cell ("nan" in a spreadsheet is text), for objects under MIN_CIRCULARITY_AREA pixels."""
    if area < MIN_CIRCULARITY_AREA:
        return None
    return min(1.0, 4 * math.pi * area / perimeter ** 2)


def object_row(class_index, object_id, area, perimeter, centroid_x, centroid_y, x, y, w, h):
    return {"class_index": class_index, "object_id": object_id, "area_px": area,
            "equivalent_diameter_px": math.sqrt(4 * area / math.pi),
            "perimeter_px": perimeter,
            "circularity": circularity(area, perimeter),
            "centroid_x": float(centroid_x), "centroid_y": float(centroid_y),
            "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h}


def csv_columns(um):
    return (["image", "class", "object_id", "area_px"] + (["area_um2"] if um else [])
            + ["equivalent_diameter_px"] + (["equivalent_diameter_um"] if um else [])
            + ["perimeter_px"] + (["perimeter_um"] if um else [])
            + (["pixel_size_um"] if um else [])
            + ["circularity", "centroid_x", "centroid_y", "bbox_x", "bbox_y", "bbox_w",
               "bbox_h"])


def image_pixel_sizes(images, names, given):
    """Each image's pixel side in micrometres: --pixel-size, else what its TIFF records. An
    image of pixels that are not square gets none, and a note: one size would give its
    areas and lengths wrong."""
    if given is not None:
        return dict.fromkeys(names, given)
    scales = {name: tiff_scale(images[name]) for name in names}
    sizes = {name: scale.sizes for name, scale in scales.items()}
    uneven = [name for name, size in sizes.items() if size and square_side(size) is None]
    if uneven:
        width, height = sizes[uneven[0]]
        note_in_pixels(uneven, f"{agreeing(len(uneven), 'records', 'record')} pixels that are "
                               f"not square ({uneven[0]}: {width:.6g} x {height:.6g} \u00b5m)")
    note_scales_not_read(scales)
    return without_absurd_sizes({name: square_side(size) for name, size in sizes.items()})


def note_scales_not_read(scales):
    """Notes for the images whose TIFF gives a scale that is not read (image_io.TiffScale):
    a resolution in pixels per inch or centimetre alone, or a pixel size in a unit not known.
    Their table has no micrometres and would say nothing of why, while Fiji shows the image
    to that scale."""
    plain = {name: scale.plain for name, scale in scales.items()
             if scale.plain and not written_by_image_programs(scale.plain[0])}
    if plain:
        name, (width, height) = next(iter(plain.items()))
        note_in_pixels(list(plain), f"{agreeing(len(plain), 'gives its', 'give their')} scale "
                       "only as a TIFF resolution in pixels per "
                       f"inch or centimetre ({name}: {width:.6g} x {height:.6g} \u00b5m), which "
                       "is not read (image programs write one to any picture)")
    unknown = {name: scale.unknown_unit for name, scale in scales.items() if scale.unknown_unit}
    if unknown:
        name, unit = next(iter(unknown.items()))
        note_in_pixels(list(unknown), f"{agreeing(len(unknown), 'records its', 'record their')} "
                       f"pixel size in a unit not read ({name}: {unit!r}; read are "
                       f"{', '.join(MICROMETRES)})")


def note_in_pixels(names, what):
    """what: the verb and the rest, agreeing with the number of names."""
    print(f"note: {count_of(len(names), 'image')} {what}: "
          f"{agreeing(len(names), 'its', 'their')} objects are measured in pixels only; "
          "--pixel-size gives one size for every image")


# Dots per inch that image programs write to pictures of no scale (1, the screen's 72 or 96,
# print's 300). A converter that takes dots per inch for a pixel size (Bio-Formats does)
# records them in OME or ImageJ metadata as sides of 25,400 / dpi um: 352.778 um for 72 dpi.
PROGRAM_DPI = (1, 72, 96, 300)


def written_by_image_programs(side):
    """Whether a pixel side in micrometres is that of one of PROGRAM_DPI."""
    return any(math.isclose(side, 25400 / dpi, rel_tol=1e-3) for dpi in PROGRAM_DPI)


def without_absurd_sizes(sides):
    """The recorded sides, less those outside PIXEL_SIZE_RANGE (broken metadata: a side of
    1e300 um overflows the areas, one of 1e-300 um rounds them to 0) and those of PROGRAM_DPI,
    with a note."""
    lo, hi = PIXEL_SIZE_RANGE
    absurd = [name for name, side in sides.items() if side is not None and not lo <= side <= hi]
    if absurd:
        note_in_pixels(absurd, f"{agreeing(len(absurd), 'records', 'record')} a pixel size "
                               f"outside {lo:g}..{hi:g} \u00b5m "
                               f"({absurd[0]}: {sides[absurd[0]]:.6g} \u00b5m), which is no "
                               "microscope's")
    dpi = [name for name, side in sides.items()
           if side is not None and name not in absurd and written_by_image_programs(side)]
    if dpi:
        note_in_pixels(dpi, f"{agreeing(len(dpi), 'records', 'record')} a pixel size of "
                            f"{sides[dpi[0]]:.6g} \u00b5m ({dpi[0]}), "
                            f"{25400 / sides[dpi[0]]:.0f} dots per inch, as image programs "
                            "write to pictures of no scale")
    return {name: None if name in absurd + dpi else side for name, side in sides.items()}


def csv_record(image, classes, row, pixel_size):
    """One row of objects.csv: pixel measures to 4 decimals, micrometre ones to 6 significant
    digits (an electron microscope's 0.001 um pixels would round to 0)."""
    record = {"image": image, "class": classes[row["class_index"]], **row}
    del record["class_index"]
    record = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
    if pixel_size is not None:
        record["area_um2"] = row["area_px"] * pixel_size ** 2
        record["equivalent_diameter_um"] = row["equivalent_diameter_px"] * pixel_size
        record["perimeter_um"] = row["perimeter_px"] * pixel_size
        record["pixel_size_um"] = pixel_size
        for key in ("area_um2", "equivalent_diameter_um", "perimeter_um", "pixel_size_um"):
            record[key] = float(f"{record[key]:.6g}")
    return record


class ObjectTally:
    """Objects per class and their mean area, counted as rows go to objects.csv (a whole
    slide's rows are never all in memory)."""

    def __init__(self, classes):
        self.classes = classes
        self.count = {c: 0 for c in classes[1:]}
        self.area_px = {c: 0.0 for c in classes[1:]}
        self.area_um2 = {c: [0.0, 0] for c in classes[1:]}

    @property
    def total(self):
        return sum(self.count.values())

    def add(self, record):
        cls = record["class"]
        self.count[cls] += 1
        self.area_px[cls] += record["area_px"]
        if "area_um2" in record:
            self.area_um2[cls][0] += record["area_um2"]
            self.area_um2[cls][1] += 1

    def print(self, num_images, um):
        if not num_images:
            return
        print(f"{'class':<14}{'objects':>9}{'per image':>11}{'mean area px':>14}"
              + (f"{'mean area um2':>15}" if um else ""))
        for cls in self.classes[1:]:
            n = self.count[cls]
            # No objects, no mean: "-", as for a class never measured in micrometres.
            line = (f"{cls:<14}{n:>9}{n / num_images:>11.1f}"
                    + (f"{self.area_px[cls] / n:>14.1f}" if n else f"{'-':>14}"))
            if um:
                total, measured = self.area_um2[cls]
                line += f"{total / measured:>15.2f}" if measured else f"{'-':>15}"
            print(line)


# ---------------------------------------------------------------- drawing

def draw_outlines(image, outlines, thickness=None):
    """RGB copy of the image with each class's outlines in its palette colour."""
    canvas = to_color_mode(image, "rgb").copy()
    thickness = thickness or max(1, round(max(canvas.shape[:2]) / 600))
    for c, contours in outlines.items():
        cv2.drawContours(canvas, contours, -1, class_colour(c), thickness)
    return canvas


def stretch_contrast(image):
    """0.5..99.5 percentile stretch to 0..255: microscope frames are often dim and flat."""
    lo, hi = np.percentile(image, (0.5, 99.5))
    if hi <= lo:
        return image
    return np.clip((image.astype(np.float64) - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def with_legend(canvas, classes):
    """The picture with a black strip below naming each object class in its colour."""
    width = canvas.shape[1]
    scale = max(0.5, width / 1280)
    thickness = max(1, round(scale * 2))
    line_h = int(round(28 * scale))
    text = LegendText(classes[1:], LEGEND_TEXT_HEIGHT * line_h)
    items, x, y = [], 8, 0
    for c, cls in enumerate(classes[1:], start=1):
        item_w = int(30 * scale) + text.width(cls) + int(20 * scale)
        if x + item_w > width and x > 8:
            x, y = 8, y + line_h
        items.append((c, cls, x, y))
        x += item_w
    strip = np.zeros((y + line_h, width, 3), np.uint8)
    for c, cls, x, y in items:
        colour = class_colour(c)
        mid = y + line_h // 2
        cv2.line(strip, (x, mid), (x + int(22 * scale), mid), colour, thickness + 1)
        text.draw(strip, cls, x + int(30 * scale), mid, colour)
    return np.vstack([canvas, strip])


# Micrometres per pixel that --pixel-size accepts: below, a size in metres by mistake; above,
# a metre a pixel, and areas overflow.
PIXEL_SIZE_RANGE = (1e-6, 1e6)
MAX_PANEL_ASPECT = 4.0      # height over width of one view of a panel, at the most
MIN_VIEW_ASPECT = 0.05      # height over width of one view, at the least (rows stretched)


def plot_panel(name, image, label, mask, outlines, classes, path, pdf):
    """input | ground truth | prediction | contours, sized for a full-width paper figure.

    The input is contrast-stretched for display, and the outlines are redrawn thick
    enough to survive shrinking the image to a quarter of the page width.
    """
    plt = pyplot()
    from matplotlib.patches import Patch
    shown = stretch_contrast(image)
    views = [("input", shown)]
    if label is not None:
        views.append(("ground truth", colorize(label)))
    h, w = image.shape[:2]
    views += [("prediction", colorize(mask)),
              ("contours", draw_outlines(shown, outlines, max(1, round(max(h, w) / 250))))]
    shape = "equal"
    if w > len(views) * h:
        # Side by side, the views of a frame wider than that would be slivers: one above
        # another, each takes the page's width (the panel stays under a page high), and a
        # line scan's few rows are stretched to be seen at all.
        shape = "equal" if h / w >= MIN_VIEW_ASPECT else "auto"
        fig, axes = plt.subplots(len(views), 1, figsize=(
            7.0, len(views) * (7.0 * max(h / w, MIN_VIEW_ASPECT) + 0.35) + 0.8))
    else:
        # A kymograph or a line scan (5000 x 2 px) would ask for a figure metres tall.
        aspect = min(h / w, MAX_PANEL_ASPECT)
        fig, axes = plt.subplots(1, len(views), figsize=(7.0, 7.0 / len(views) * aspect + 0.8))
    for ax, (title, view) in zip(axes, views):
        ax.imshow(view, cmap="gray", vmin=0, vmax=255, interpolation="nearest", aspect=shape)
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    handles = [Patch(color=np.array(class_colour(c)) / 255.0, label=cls)
               for c, cls in enumerate(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=len(classes), frameon=False,
               fontsize=8)
    fig.suptitle(name, fontsize=9)
    # Laid out as saved, in the fonts save_figure sets for names they lack.
    fig.set_layout_engine("tight", rect=(0, 0.08, 1, 1))
    save_figure(fig, path, pdf)


# ---------------------------------------------------------------- main

def prediction_info(pred_dir):
    """What predict_lovasz_loss.py recorded about the run ({} for masks from elsewhere)."""
    path = pred_dir / "predict.json"
    if not path.is_file():
        return {}
    info = read_json(path, "prediction record")
    if not isinstance(info, dict):
        raise PipelineError(f"{path} is not a record written by predict_lovasz_loss.py")
    classes, images = info.get("classes", []), info.get("images", [])
    if not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)
            and isinstance(images, list) and all(isinstance(n, str) for n in images)):
        raise PipelineError(f"{path}: 'classes' and 'images' must be lists of names")
    twice = sorted(n for n, count in Counter(images).items() if count > 1)
    if twice:
        # Their objects would be counted and written to objects.csv once for each listing.
        raise PipelineError(f"{path} lists {some_names(twice)} more than once (changed by "
                            "hand?): list each image once, or predict again")
    info["intensity"] = check_intensity(info.get("intensity", DEFAULT_INTENSITY), path)
    # Edited by hand, these would end in a traceback far from the record.
    folders = [info.get(k) for k in ("input_dir", "input_file", "label_dir")]
    streamed = info.get("streamed", [])
    if not (all(f is None or isinstance(f, str) for f in folders)
            and isinstance(streamed, list) and all(isinstance(n, str) for n in streamed)
            and ("shard" not in info or isinstance(info.get("all_images"), list))):
        raise PipelineError(f"{path} is not a record written by predict_lovasz_loss.py "
                            "(changed by hand?): predict again")
    page, mask_format = info.get("page"), info.setdefault("mask_format", "png")
    if not (page is None or (type(page) is int and page >= 0)) or mask_format not in ("png", "tif"):
        raise PipelineError(f"{path}: 'page' must be empty or a plane number and 'mask_format' "
                            "png or tif")
    return info


def mask_names(pred_dir, info):
    """The masks' names: predict.json's list, else every PNG but the colour views and
    probability maps that prediction writes beside a mask (x_color.png beside x.png)."""
    if "images" in info:
        return info["images"]
    stems = {p.stem for p in pred_dir.glob("*.png")}
    return sorted(s for s in stems if not beside_a_mask(s, stems))


def beside_a_mask(stem, stems):
    """Whether stem is <mask>_color or <mask>_prob_<class> of a mask among stems."""
    if stem.endswith(COLOR_SUFFIX) and stem[:-len(COLOR_SUFFIX)] in stems:
        return True
    at = stem.find(PROB_INFIX)
    while at != -1:
        if stem[:at] in stems:
            return True
        at = stem.find(PROB_INFIX, at + 1)
    return False


def check_images_predicted(images, info, image_dir, pred_dir):
    """Refuse images that are not those predict_lovasz_loss.py segmented, replaced since by
    others of their names (a test set cut again from another data folder, the microscope's
    next session in the same folder): outlines, panels and pixel sizes would be of one
    picture and the objects of another. Records without digests (older versions) pass."""
    recorded = info.get("image_sha256")
    if not isinstance(recorded, dict):
        return
    digests = file_digests({n: images[n] for n in recorded if n in images})
    changed = [n for n, digest in digests.items() if digest != recorded[n]]
    if changed:
        raise PipelineError(f"{count_of(len(changed), 'image')} in {image_dir} changed since "
                            f"{pred_dir / 'predict.json'} was written ({changed[0]}, replaced "
                            "by another of its name?): rerun predict_lovasz_loss.py first")


def prediction_folder(args):
    pred = Path(args.pred_dir) if args.pred_dir else Path(args.work_dir) / "test" / "predict"
    if not pred.is_dir():
        raise PipelineError(f"prediction folder {pred} does not exist"
                            + (unexpanded_pattern(pred) or ": run predict_lovasz_loss.py first"))
    return pred


def folders(args, pred, info):
    """(images, labels or None, output, figures) folders from options and defaults."""
    work = Path(args.work_dir)
    test_pred = work / "test" / "predict"
    is_test_set = pred.resolve() == test_pred.resolve()
    recorded = in_this_work(info.get("input_file") or info.get("input_dir"), work, is_test_set,
                            "src")
    if not args.image_dir and recorded and not Path(recorded).exists():
        raise PipelineError(f"image folder {recorded}, which {pred / 'predict.json'} records, "
                            "does not exist (moved or renamed since?): give --image-dir")
    images = Path(args.image_dir or recorded or work / "test" / "src")
    labels = args.label_dir or in_this_work(info.get("label_dir"), work, is_test_set, "label")
    # Else every ground-truth panel would be left out without a word.
    if args.label_dir and not Path(labels).is_dir():
        raise PipelineError(f"--label-dir {labels} is not a folder")
    if labels and not Path(labels).is_dir():
        print(f"note: label folder {labels}, which {pred / 'predict.json'} records, is gone "
              "(moved or renamed since?): panels without the ground truth; give --label-dir")
        labels = None
    if args.output:
        out = Path(args.output)
        if is_or_lies_in(out, pred):
            raise PipelineError(f"--output {out} is or lies inside the prediction folder "
                                f"{pred}, which a rerun of prediction replaces whole (refused "
                                "while it holds files it did not write); give a folder beside "
                                "it")
    elif is_test_set:
        out = work / "test" / "contours"
    else:
        # Spelled out first: --pred-dir . (run inside the folder) has no name to add to.
        whole = Path(os.path.abspath(pred))
        out = whole.parent / f"{whole.name}_contours"
        if not pred.is_absolute():      # printed relative, as --pred-dir was given
            out = Path(os.path.relpath(out))
    # Another folder's panels apart from the test set's: frames of one name (img001) in two
    # folders would replace each other's panels.
    figures = Path(args.figures_dir) if args.figures_dir else \
        work / "figures" if is_test_set else work / "figures" / pred.resolve().name
    if args.panels:
        check_figures_outside(figures, out)
        # Panels there would block the next prediction into it and, without predict.json,
        # be taken for masks by the next run.
        if is_or_lies_in(figures, pred):
            raise PipelineError(f"--figures-dir {figures} is or lies inside the prediction "
                                f"folder {pred}; give a folder beside it")
    return images, Path(labels) if labels else None, out, figures


# In a figures folder, which prediction folder each panel was drawn from: two prediction
# folders of one name (day1/pred, day2/pred) share figures/pred, where frames of one name
# would replace each other's panels without a word.
PANEL_RECORD = ".panels_of.json"


def panel_owners(figures, pred_dir, names):
    """The figures folder's record of panel -> prediction folder, after refusing to replace
    a panel of one of `names` that another prediction folder drew."""
    path = Path(figures) / PANEL_RECORD
    record = read_json(path, "panel record") if path.is_file() else {}
    if not isinstance(record, dict):
        record = {}
    mine = str(Path(pred_dir).resolve())
    taken = [n for n in names if record.get(f"panel_{n}.png", mine) != mine]
    if taken:
        raise PipelineError(f"{figures} holds panel_{taken[0]}.png drawn from "
                            f"{record[f'panel_{taken[0]}.png']}, another prediction folder "
                            f"({count_of(len(taken), 'panel')} in all); give --figures-dir to "
                            "keep both, or --no-panels")
    return record


def remove_earlier_pdfs(figures, names):
    """Remove the PDFs an earlier --pdf run drew of panels just redrawn as PNG alone: they
    would show the earlier prediction beside the new PNG as if they were the same panel."""
    earlier = [Path(figures) / f"panel_{name}.pdf" for name in names]
    earlier = [path for path in earlier if path.is_file()]
    for path in earlier:
        path.unlink()
    if earlier:
        print(f"note: removed {count_of(len(earlier), 'panel PDF')} of an earlier run from "
              f"{figures} ({some_names(p.name for p in earlier)}), as "
              f"{agreeing(len(earlier), 'its PNG was', 'their PNGs were')} redrawn; add --pdf "
              f"to draw {agreeing(len(earlier), 'it', 'them')} again")


def in_this_work(recorded, work, is_test_set, sub):
    """A folder predict.json records, or for the test set's test/src and test/label the ones
    of this --work-dir: a work folder moved or copied elsewhere keeps the absolute paths of
    where it was, whose images (gone, or those of the old copy) are not this folder's."""
    if recorded and is_test_set and Path(recorded).parts[-2:] == ("test", sub):
        return str(work / "test" / sub)
    return recorded


def is_or_lies_in(inner, outer):
    """Whether folder inner is outer or lies in it, by its spelling (a folder not made yet)
    or by the folders' identity on disk (a link, another letter case)."""
    return Path(os.path.abspath(inner)).is_relative_to(os.path.abspath(outer)) or \
        same_or_inside(inner, outer)


def check_names_fit(names):
    """Refuse, before the first frame, a frame whose contour picture would have a name longer
    than the file system allows (the longest this script writes, its panel's included)."""
    for name in names:
        check_name_fits(contour_file(name), f"frame {name}")


def check_figures_outside(figures, out):
    """Refuse a figures folder that is the output folder or lies inside it: the output is
    replaced whole after the panels are written, which would lose them."""
    if is_or_lies_in(figures, out):
        raise PipelineError(f"--figures-dir {figures} is or lies inside the output folder "
                            f"{out}, which is replaced whole and would lose the panels; give "
                            "another --figures-dir or --output")


class Outliner:
    """Finds, measures and draws the objects of one mask after another with the same
    settings: the mask in memory, or band by band where it is a TIFF above --stream-above
    megapixels (masks of whole slides)."""

    def __init__(self, pred_dir, info, classes, intensity, label_dir, args):
        self.pred_dir, self.classes, self.intensity = pred_dir, classes, intensity
        self.label_dir, self.args = label_dir, args
        self.suffix = "." + info.get("mask_format", "png")    # png for masks made elsewhere
        self.streamed = set(info.get("streamed", []))          # their masks are .tif

    def mask_path(self, name):
        return self.pred_dir / f"{name}{'.tif' if name in self.streamed else self.suffix}"

    def band_reader(self, name):
        """The mask of `name` opened to be read a band at a time (its header alone read yet),
        where it is a TIFF above --stream-above; else None."""
        if self.args.from_probs or not self.mask_path(name).is_file():
            return None
        reader = open_tiff_rows(self.mask_path(name))
        if reader is not None and megapixels(reader.shape) <= self.args.stream_above:
            reader.close()
            return None
        return reader

    def read_in_bands(self, name):
        reader = self.band_reader(name)
        if reader is not None:
            reader.close()
        return reader is not None

    def __call__(self, name, source, staging, panels, write_row):
        """write_row(row) for each object of one mask; its contour picture and panel
        written."""
        if not (self.args.from_probs or self.mask_path(name).is_file()):
            raise PipelineError(f"mask {self.mask_path(name)} not found")
        reader = self.band_reader(name)
        if reader is None:
            return self.in_memory(name, source, staging, panels, write_row)
        with reader:
            return self.in_bands(name, source, reader, staging, panels, write_row)

    def in_memory(self, name, source, staging, panels, write_row):
        args, classes = self.args, self.classes
        image = read_image(source, self.intensity)
        mask = (mask_from_probs(read_prob_maps(self.pred_dir, name, classes), args.thresholds)
                if args.from_probs else read_mask(self.mask_path(name), len(classes)))
        check_same_size(name, mask.shape, source, image.shape)
        rows, outlines = find_objects(mask, len(classes), args.min_area, args.split_touching)
        for row in rows:
            write_row(row)
        write_image(staging / contour_file(name),
                    with_legend(draw_outlines(image, outlines), classes), atomic=False)
        if args.panels:
            label_path = (find_frame_label(self.label_dir, name, source) if self.label_dir
                          else None)
            label = read_label(label_path) if label_path else None
            if label is not None:
                check_label_size(label, label_path, image.shape, source)
            plot_panel(name, image, label, mask, outlines, classes,
                       panels / f"panel_{name}.png", args.pdf)

    def in_bands(self, name, source, reader, staging, panels, write_row):
        """A whole-slide mask: objects found band by band; the contour picture and the panel
        are overviews at most OVERVIEW_SIDE pixels on a side, without the ground truth."""
        num_classes, shape = len(self.classes), reader.shape[:2]
        if len(reader.shape) > 2:       # RGB: read_label's refusal, not a traceback later
            raise PipelineError(f"mask {reader.path} has {reader.shape[2]} channels; a mask "
                                "must hold one class index per pixel")
        check_same_size(name, shape, source, plane_shape(source))
        mask_overview = Overview(shape)
        for y0, y1 in bands(shape[0]):
            rows = reader.rows(y0, y1)
            check_mask_values(rows, num_classes, reader.path)
            mask_overview.add(y0, rows)
        for row in find_objects_in_bands(reader.rows, shape, num_classes, self.args.min_area):
            write_row(row)
        image = image_overview(source, self.intensity, shape)
        outlines = self.overview_outlines(mask_overview.image, mask_overview.step)
        write_image(staging / contour_file(name),
                    with_legend(draw_outlines(image, outlines), self.classes), atomic=False)
        if self.args.panels:
            # A panel shows each view a few hundred pixels wide; matplotlib would hold float
            # copies of a full overview for nothing.
            k = math.ceil(max(image.shape[:2]) / PANEL_SIDE)
            small_mask = mask_overview.image[::k, ::k]
            plot_panel(f"{name} (1:{mask_overview.step * k})", image[::k, ::k], None,
                       small_mask, self.overview_outlines(small_mask, mask_overview.step * k),
                       self.classes, panels / f"panel_{name}.png", self.args.pdf)

    def overview_outlines(self, overview, step):
        """Outlines in a mask's overview (every step-th row and column kept) of the objects
        --min-area keeps: specks drawn there but left out of objects.csv would look found.
        An object keeps about one pixel in step^2 in the overview."""
        return find_objects(overview, len(self.classes), self.args.min_area / step ** 2)[1]


def check_same_size(name, mask_shape, source, image_shape):
    if tuple(mask_shape[:2]) != tuple(image_shape[:2]):
        raise PipelineError(f"mask of {name} is {mask_shape[1]}x{mask_shape[0]} but {source} is "
                            f"{image_shape[1]}x{image_shape[0]}")


def image_overview(source, intensity, shape):
    """The image shrunk like the mask's Overview, read band by band where it is a TIFF."""
    reader = open_tiff_rows(source)
    if reader is None:
        image = read_image(source, intensity)
        overview = Overview(shape, image.shape[2:])
        overview.add(0, image)
        return overview.image
    with reader:
        color_mode = "rgb" if len(reader.shape) == 3 else "grey"
        frame = StreamedFrame(reader, intensity, color_mode, f"image {source}")
        overview = Overview(shape, (3,) if color_mode == "rgb" else ())
        for y0, y1 in bands(shape[0]):
            # only the rows and columns the overview keeps are mapped to 0..255
            first = -y0 % overview.step
            if y0 + first < y1:
                overview.add_sampled(y0 + first, frame.rows(y0 + first, y1, overview.step))
    return overview.image


def main(argv=None):
    args = parse_args(argv)
    if args.merge:
        return merge(args)
    pred_dir = prediction_folder(args)
    info = prediction_info(pred_dir)
    image_dir, label_dir, out, figures = folders(args, pred_dir, info)
    classes = info.get("classes") or read_classes(args.data_dir)
    if args.from_probs and len(args.thresholds) != len(classes) - 1:
        raise PipelineError(f"--thresholds needs one value per object class "
                            f"({', '.join(classes[1:])}), got {len(args.thresholds)}")
    names = mask_names(pred_dir, info)
    if not names and "shard" not in info:     # a shard of fewer images than shards has none
        raise PipelineError(f"no masks in {pred_dir}")
    check_names_fit(names)
    images = list_images(image_dir, info.get("page"), frames=names)
    missing = [n for n in names if n not in images]
    if missing:
        raise PipelineError(f"no original image in {image_dir} for "
                            f"{count_of(len(missing), 'mask')}, e.g. "
                            f"{missing[0]}; give --image-dir")
    if not args.image_dir:
        check_images_predicted(images, info, image_dir, pred_dir)
    intensity = args.intensity or info.get("intensity", DEFAULT_INTENSITY)
    outliner = Outliner(pred_dir, info, classes, intensity, label_dir, args)
    if args.split_touching:
        check_masks_whole(outliner, names)

    owners = panel_owners(figures, pred_dir, names) if args.panels else None
    pixel_sizes = image_pixel_sizes(images, names, args.pixel_size)
    measured_in_um = any(size is not None for size in pixel_sizes.values())
    tally = ObjectTally(classes)

    from tqdm import tqdm
    # Panels are staged too and join figures/ only when every image has gone through.
    panels_output = staged_output(figures, merge=True) if args.panels else nullcontext()
    with output_lock(out, Path(__file__).name), staged_output(out, MARKER) as staging, \
            panels_output as panels, \
            open(staging / MARKER, "w", newline="", encoding="utf-8") as table:
        writer = csv.DictWriter(table, fieldnames=csv_columns(measured_in_um), restval="")
        writer.writeheader()
        for name in tqdm(names, desc="contours", unit="image", dynamic_ncols=True, disable=None):

            def write_row(row, name=name):
                record = csv_record(name, classes, row, pixel_sizes[name])
                writer.writerow(record)
                tally.add(record)

            outliner(name, images[name], staging, panels, write_row)
        if args.panels:
            mine = str(pred_dir.resolve())
            write_json(panels / PANEL_RECORD,
                       {**owners, **{f"panel_{name}.png": mine for name in names}})
        if "shard" in info:
            write_json(staging / SHARD_RECORD, {
                "shard": info["shard"], "images": names, "all_images": info["all_images"],
                "prediction": run_settings(info), **contour_settings(args, intensity)})

    if args.panels and not args.pdf:
        remove_earlier_pdfs(figures, names)
    print(f"{count_of(tally.total, 'object')} in {count_of(len(names), 'image')} -> "
          f"{out / MARKER}, contours in {out}"
          + (f", panels in {figures}" if args.panels else ""))
    tally.print(len(names), measured_in_um)


def check_masks_whole(outliner, names):
    """Refuse --split-touching, before the first mask, where a mask is read band by band:
    the watershed needs each region whole."""
    banded = [name for name in names if outliner.read_in_bands(name)]
    if banded:
        raise PipelineError(f"the masks of {some_names(banded)} are larger than --stream-above "
                            f"{outliner.args.stream_above:g} megapixels and are read band by "
                            "band; --split-touching needs each mask whole: raise "
                            "--stream-above, or leave --split-touching out")


def contour_settings(args, intensity):
    """The options that shape objects.csv and the pictures, which a shard's contours record:
    shards outlined with other options would merge into a table no single run writes."""
    return {"min_area": args.min_area, "split_touching": args.split_touching,
            "pixel_size_um": args.pixel_size,
            "from_probs": args.from_probs,
            "thresholds": args.thresholds if args.from_probs else None,
            "intensity": intensity, "stream_above_mp": args.stream_above}


def check_object_table(folder):
    """A shard's objects.csv as this script writes it: present, with its own header (not
    saved again by a spreadsheet, which changes the separator or adds columns)."""
    path = folder / MARKER
    if not path.is_file():
        raise PipelineError(f"{path} is missing: run get_contour.py on that shard again")
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), None)
    if header not in (csv_columns(False), csv_columns(True)):
        raise PipelineError(f"{path} is not the table get_contour.py wrote (its header differs; "
                            "saved again by a spreadsheet?): run get_contour.py on that shard "
                            "again")


def merge(args):
    """--merge: the contour folders of prediction shards as the folder one run writes."""
    folders, records, everything, out = open_shards(args.merge, args.output, SHARD_RECORD)
    for folder, record in zip(folders, records):
        check_object_table(folder)
        # its contour pictures: the merged folder would lack one unsaid, beside its rows
        check_shard_holds(folder, ((name, [contour_file(name)]) for name in record["images"]),
                          "run get_contour.py on that shard again")
    with output_lock(out, Path(__file__).name), staged_output(out, MARKER) as staging:
        copy_shard_files(folders, staging, skip={MARKER, SHARD_RECORD})
        count = merge_object_tables([f / MARKER for f in folders], everything, staging / MARKER)
    print(f"merged {count_of(len(folders), 'shard')}: {count_of(count, 'object')} in "
          f"{count_of(len(everything), 'image')} -> "
          f"{out / MARKER}")


if __name__ == "__main__":
    run_cli(main)
