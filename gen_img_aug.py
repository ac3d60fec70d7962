"""Split the labelled images into train and test, then cut random augmented patches.

Reads   <data-dir>/src/<name>.<png|jpg|tif>, <data-dir>/label/<name>.<png|tif|npy>,
        <data-dir>/classes.txt and, if present, <data-dir>/test.txt (the fixed test list).
Writes  <work-dir>/split.json, train.txt, test.txt      the split, reproducible from files
        <work-dir>/test/src, test/label                 the held-out images and labels (the
                                                        rest of test/ is left as it is)
        <work-dir>/train/src, train/label               the patches (lossless PNG)
        <work-dir>/train/patches.csv                    where each patch came from
        <work-dir>/figures/samples.png                  sample images with their annotations

Each patch is a random crop of a random training image with one of the 8 rotations/flips
(the paper's), unless the images have a direction: in DIC or oblique-illumination relief one
side of every object is bright and the other dark, a turned patch shows relief no microscope
makes, and which side of the relief the annotators' outline follows is no longer learnable.
--orientations auto (the default) measures this "edge relief" on the training images (0 where
objects look the same all round, about 0.8 for pure relief) and its direction, and from 0.25
up keeps the patches as the microscope saw them. 'flip-rows', 'transpose', 'flip-columns' and
'antitranspose' also mirror half of them across the axis at 0, 45, 90 or 135 degrees, the one
mirror that maps relief along that axis onto relief of the same sign (measured on bbbc030,
relief along 52 degrees: no gain over 'none'). 'rotate-invert' turns half of them by 180
degrees and inverts their intensities, which maps relief along any axis onto itself (grey
images: a half-turned DIC image, negated, is the DIC image of the half-turned object).
'all' and 'none' decide it yourself.
With --foreground-fraction F, a fraction F of the patches (chosen at random) are instead
random crops that contain a randomly chosen foreground pixel (any class but 0), which gives
sparse objects more of the training signal. Label value 255 marks pixels to ignore ("unsure"
regions, see labelme_to_label.py --ignore-labels): it is neither a class nor foreground, and
training and scoring leave those pixels out. With --scale S the frames and labels are
resampled by S before patches are cut (pixel areas averaged, labels by majority vote), so a
128 px patch of S = 0.5 covers the field of a 256 px one; the scale is recorded, prediction
resamples each frame the same way and brings the probabilities back to the frame's own
pixels. Patch i depends only on (--seed, i) and the
images, so the output is the same for any --workers.
An object labelled by its outline alone (a thin ring around an inside labelled background,
label_outlines.py) is reported with a warning and listed in split.json: training would
learn its inside as background. Fill it, or paint the outline and its inside 255 to leave
it out.
"""
import argparse
import csv
import math
import os
from pathlib import Path

import cv2
import numpy as np

from instance_masks import base_name
from image_io import (DEFAULT_INTENSITY, IMAGE_EXTS, LABEL_EXTS, StackPlane,
                      add_intensity_option, check_label_size, check_label_values, copy_frame,
                      describe_intensity, files_in, find_frame_label, frame_stem,
                      label_fits_stored_pixels, list_images, note_hidden_images,
                      parse_intensity, picture_digest, pixel_digest, read_image, read_label,
                      read_raw_image, to_uint8, unmatched_labels, unread_images, write_image)
from outputs import (atomic_write_text, folder_identity, foreign_entries, remove_leftovers,
                     same_or_inside, staged_output, work_lock, write_json)
from cli import (IGNORE_LABEL, PipelineError, agreeing, count_of, finite_float, held_out_count,
                 non_negative_int, positive_int, nfc, read_classes, read_json, refuse_file,
                 read_name_list, run_cli, seed_value, some_names, WORK_DIR)
from figures import colorize, save_figure, pyplot
from geometry import (INPUT_MULTIPLE, MIRROR_AXES, ORIENTATIONS, dihedral, reflect_pad,
                      resample_image, resample_label, scaled_size, transform_image)
from label_outlines import bare_outlines, describe_bare_outlines
from label_record import (check_drawn_classes, drawn_as_recorded, moved_class, moved_classes,
                          read_record, redraw_command)
from parallel import default_workers, parallel_map

TEST_SIZE, RANDOM_STATE = 0.1, 2018     # the paper's split
MAX_SCALE = 4               # beyond, upsampled frames hold no detail worth the memory
CHUNK = 200                 # patches per task: big enough to amortise, small for a smooth bar
CACHE_BYTES = 1 << 30       # per worker: images stay cached up to this, whatever the patch count
_caches = {}                # per process; the pool sends each task a fresh copy of the writer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("folders")
    g.add_argument("--data-dir", default="data", help="data folder (default: %(default)s)")
    g.add_argument("--work-dir", default=WORK_DIR,
                   help="output folder for split, test copy and patches (default: %(default)s)")
    g = p.add_argument_group("train/test split (ignored when <data-dir>/test.txt exists)")
    g.add_argument("--test-size", type=finite_float, default=TEST_SIZE,
                   help="fraction of images held out for test, as the paper (default: %(default)s)")
    g.add_argument("--random-state", type=seed_value, default=RANDOM_STATE,
                   help="seed of train_test_split, as the paper (default: %(default)s)")
    g = p.add_argument_group("patches")
    g.add_argument("--num-patches", type=positive_int, default=75000,
                   help="number of random training patches, as the paper (default: %(default)s)")
    g.add_argument("--patch-size", type=positive_int, default=256,
                   help=f"patch side in pixels, a multiple of {INPUT_MULTIPLE} as the network "
                        "needs, as the paper (default: %(default)s)")
    g.add_argument("--foreground-fraction", type=finite_float, default=0.0,
                   help="fraction of patches forced to contain a foreground pixel; 0 is the "
                        "paper's uniform sampling (default: %(default)s)")
    g.add_argument("--orientations", choices=("auto", *ORIENTATIONS), default="auto",
                   help="'all': each patch in one of the 8 rotations/flips, as the paper; "
                        "'none': patches as the microscope saw them, for images with a "
                        "direction such as DIC relief; 'flip-rows', 'transpose', "
                        "'flip-columns', 'antitranspose': half of those mirrored across the "
                        "axis at 0, 45, 90 or 135 degrees (x right, y down), for relief "
                        "along that axis; 'rotate-invert': half of those turned by 180 "
                        "degrees with inverted intensities, for grey relief along any axis; "
                        "'auto': 'none' where the training images' edge "
                        f"relief is at least {DIRECTED_RELIEF}, else 'all' (recorded for "
                        "training and prediction; default: %(default)s)")
    g.add_argument("--scale", type=finite_float, default=1.0,
                   help="resample the frames by this factor before cutting patches, e.g. 0.5 "
                        "where objects are many pixels across and a patch should hold more "
                        "of them; recorded for prediction, which scores and writes masks at "
                        "the frames' own size. It may not shrink a frame below "
                        f"{INPUT_MULTIPLE} px on its shorter side, less than one pixel at the "
                        "network's deepest level (default: %(default)s, the original's)")
    g.add_argument("--seed", type=seed_value, default=2018,
                   help="seed of crop positions and transforms (default: %(default)s)")
    g.add_argument("--workers", type=positive_int, default=default_workers(),
                   help="processes writing patches; the output does not depend on it "
                        "(default: all cores, %(default)s)")
    g = p.add_argument_group("images")
    g.add_argument("--page", type=non_negative_int, metavar="K",
                   help="TIFF stacks: take only plane K (from 0) of each, named like its file "
                        "and labelled <name>.png (or <name>_p<k>.png), such as the nuclear "
                        "channel of a two-channel file; K above 0 is refused for a file of one "
                        "plane; recorded for training and prediction (default: every plane, "
                        "each a frame named <name>_p<k>)")
    add_intensity_option(g, "default: percentile 0.1 99.9; recorded for training and "
                            "prediction")
    p.add_argument("--pdf", action="store_true",
                   help="also write the samples figure as PDF")
    args = p.parse_args(argv)
    args.intensity = parse_intensity(p, args.intensity, DEFAULT_INTENSITY)
    if not 0 <= args.foreground_fraction <= 1:
        p.error("--foreground-fraction must be between 0 and 1")
    if args.patch_size % INPUT_MULTIPLE:
        p.error(f"--patch-size must be a multiple of {INPUT_MULTIPLE}: the network's encoder "
                "halves the size 5 times, and training refuses other patches")
    if not 0 < args.scale <= MAX_SCALE:
        p.error(f"--scale must be above 0 and at most {MAX_SCALE}")
    if not 0 < args.test_size < 1:
        p.error("--test-size must be between 0 and 1")
    return args


# ---------------------------------------------------------------- split

def labelled_images(data_dir, classes, intensity, page=None):
    """name -> (image path, label path, (h, w)) for every image, checking every image and label
    (readable, same size, classes within classes.txt and, for a label labelme_to_label.py drew,
    at the indices it drew them; drawn on the image as shown where an EXIF tag turns it);
    also each label's values, each image's edge sums, for the images that have any, the
    objects labelled by a bare outline (label_outlines.bare_outlines), the digest of each
    frame's image alone (image_io.picture_digest; blank frames, which may well repeat, left
    out) and each frame's digest with its label's. With page, plane `page` of each stack
    alone (list_images)."""
    images = list_images(Path(data_dir) / "src", page)
    note_hidden_images(Path(data_dir) / "src")
    if not images:
        raise PipelineError(f"no images found in {Path(data_dir) / 'src'}")
    label_of = {name: find_frame_label(Path(data_dir) / "label", name, source)
                for name, source in images.items()}
    missing = [n for n in images if label_of[n] is None]
    if missing:
        raise PipelineError(f"{count_of(len(missing), 'image')} "
                            f"{agreeing(len(missing), 'has', 'have')} no label in "
                            f"{Path(data_dir) / 'label'}: "
                            f"{some_names(missing, 10)}"
                            f"{masks_named_hint(Path(data_dir) / 'label', missing)}")
    table, values, edges, outlines, flattened, wide, renamed = {}, {}, {}, {}, {}, 0, set()
    drawn_before = {}   # class appended to classes.txt -> labels drawn before it was
    stored, pictures, digests = [], {}, {}
    classes_path, drawn = Path(data_dir) / "classes.txt", read_record(data_dir)
    for name, img_path in images.items():
        lbl_path = label_of[name]
        raw, lbl = read_raw_image(img_path), read_label(lbl_path)
        img = to_uint8(raw, intensity, f"image {img_path}")
        wide += raw.dtype != np.uint8
        if raw.min() != raw.max():      # blank frames may well repeat
            pictures[name] = picture_digest(raw)
        if flattened_by_fixed_range(raw, intensity):
            flattened[frame_file(img_path)] = (raw.min(), raw.max())
        check_label_size(lbl, lbl_path, img.shape, img_path)
        orientation = label_fits_stored_pixels(lbl, img, img_path)
        if orientation:
            stored.append(f"{lbl_path.name} (EXIF Orientation {orientation})")
        # First: a class removed from classes.txt since labelme_to_label.py drew the label is
        # named, where check_label_values would only call its value one too many.
        found, appended = check_drawn_classes(drawn, lbl_path, lbl, classes, classes_path,
                                              data_dir)
        renamed |= found
        for added in appended:
            drawn_before.setdefault(added, []).append(lbl_path.name)
        values[name] = check_label_values(lbl, len(classes), lbl_path, classes_path).tolist()
        table[name] = (img_path, lbl_path, img.shape[:2])
        digests[name] = pixel_digest(raw, lbl)
        edges[name] = edge_sums(img, lbl)
        found, _ = bare_outlines(lbl)
        if found:
            outlines[name] = found
    if stored:
        raise PipelineError(f"{count_of(len(stored), 'label')} "
                            f"{agreeing(len(stored), 'lines up with its', 'line up with their')} "
                            "image's stored pixels, not with the image as its EXIF Orientation "
                            "tag shows it: "
                            f"{some_names(stored)}; draw or turn the labels on the image as "
                            "viewers and LabelMe show it")
    report_unused_labels(Path(data_dir), [lbl for _, lbl, _ in table.values()])
    redraw = redraw_command(drawn, data_dir, classes) if renamed or drawn_before else None
    for value, was, now in sorted(renamed):
        print(f"note: labels drawn by labelme_to_label.py with class {value} as {was!r} "
              f"train it as {now!r}, the name {classes_path} now gives it (renamed?); if "
              f"{was!r} is another class, rerun {redraw}")
    for added, labels in drawn_before.items():
        # Where the frames show the new class, its objects there train as background.
        were = "was" if len(labels) == 1 else "were"
        print(f"note: {count_of(len(labels), 'label')} {were} drawn by labelme_to_label.py before "
              f"{classes_path} listed {added!r} ({some_names(sorted(labels))}): any {added} in "
              f"their frames trains as background; label it there and rerun {redraw}")
    check_flattened(flattened, wide, intensity)
    return table, values, edges, outlines, pictures, digests


def check_twin_frames(pictures, test, table):
    """Frames of one picture (pictures: their image_io.picture_digest; a copy, a link, or
    one saved again in another bit depth or as RGB) on both sides of the split would test
    the model on a frame it trained on: refused. On one side they are noted: such a frame
    weighs twice in the patches."""
    groups = {}
    for name, digest in pictures.items():
        groups.setdefault(digest, []).append(name)
    twins = [names for names in groups.values() if len(names) > 1]
    for names in twins:
        held = [n for n in names if n in test]
        if held and len(held) < len(names):
            kept = next(n for n in names if n not in test)
            raise PipelineError(f"{frame_file(table[held[0]][0])} (test) and "
                                f"{frame_file(table[kept][0])} (train) hold the same picture "
                                "(a copy, a link, or one saved again in another bit depth or "
                                "as RGB): the test would score a frame the model trained on; "
                                "remove one")
    if twins:
        shown = "; ".join(" = ".join(frame_file(table[n][0]) for n in names)
                          for names in twins[:3])
        print(f"note: frames of the same picture, a copy, a link or one saved again ({shown}"
              + (f"; {len(twins) - 3} more" if len(twins) > 3 else "")
              + "): each weighs as that many frames in the patches")


def frame_file(source):
    """The name a frame is shown by: its file's, a stack plane's file and plane."""
    if isinstance(source, StackPlane):
        return f"{source.path.name} plane {source.index}"
    return Path(source).name


def flattened_by_fixed_range(raw, intensity):
    """Whether --intensity fixed LO HI flattens a frame that is not 8-bit: clips nearly all
    of its pixel values to 0 or 255, or fits all of them into one grey level (float frames
    of 0..1 under 'fixed 0 4095'). Clipping a background on purpose leaves the objects'
    pixels (a percent or more) in range. The other rules follow each frame's own values."""
    if raw.dtype == np.uint8 or intensity["rule"] != "fixed":
        return False
    low, high = intensity["low"], intensity["high"]
    outside = np.mean((raw < low) | (raw > high))
    span = (float(raw.max()) - float(raw.min())) * 255 / (high - low)
    return bool(outside > 0.99 or 0 < span < 1)


def check_flattened(flattened, wide, intensity):
    """Refuse an --intensity fixed LO HI that flattens every frame that is not 8-bit
    (flattened_by_fixed_range; flattened: file -> its (lowest, highest) value; wide: how many
    frames are not 8-bit): every patch would be blank or saturated. Where only some are, a
    warning names them (a dark frame may be meant)."""
    if not flattened:
        return
    low = min(float(lo) for lo, _ in flattened.values())
    high = max(float(hi) for _, hi in flattened.values())
    what = (f"--intensity {describe_intensity(intensity)} flattens {len(flattened)} of the "
            f"{count_of(wide, 'image')} that {agreeing(wide, 'is', 'are')} not 8-bit "
            f"({some_names(sorted(flattened))}, values within {low:g}..{high:g}): nearly all of "
            f"their pixels lie outside {intensity['low']:g}..{intensity['high']:g}, or all "
            "within one grey level of it")
    if len(flattened) < wide:
        print(f"warning: {what}; they train as blank or saturated frames")
        return
    raise PipelineError(f"{what}, so every patch would be blank or saturated; give --intensity "
                        "fixed the range of the images' values, or use 'percentile 0.1 99.9' "
                        "or 'full'")


def masks_named_hint(label_dir, missing):
    """Where files of the label folder are named as the frames' masks (<image>_masks.tif,
    as Cellpose writes them): what to do with them; else empty."""
    wanted = {nfc(name) for name in missing}
    try:
        named = sorted(p.name for p in Path(label_dir).iterdir()
                       if base_name(p) in wanted and p.suffix.lower() in LABEL_EXTS)
    except OSError:
        return ""
    if not named:
        return ""
    return (f" ({some_names(named)} in it are named as their masks: rename each <frame>.png if "
            "it holds class indices, or, if it numbers objects one by one, move them to a "
            "folder of their own and convert them with labelme_to_label.py --instances FOLDER)")


def report_unused_labels(data_dir, used):
    """Warn of label files that find_frame_label found for no image (used: the label paths it
    found): left out of the data set, most often because their image is of a format not read
    (GIF, WebP) or was removed."""
    unused = unmatched_labels(data_dir / "label", used)
    if not unused:
        return
    stems = {nfc(p.stem) for p in unused}
    unread = [n for n in unread_images(data_dir / "src") if nfc(frame_stem(n)) in stems]
    print(f"warning: {count_of(len(unused), 'label')} in {data_dir / 'label'} "
          f"{agreeing(len(unused), 'matches', 'match')} no image in {data_dir / 'src'} and "
          f"{agreeing(len(unused), 'is', 'are')} left out: {some_names(p.name for p in unused)}"
          + (f"; their images {some_names(unread)} are of a format not read (images are "
             f"{', '.join(IMAGE_EXTS)})" if unread else ""))


def has_object(values):
    """Whether a label's values hold an object class (neither background nor ignored)."""
    return any(0 < v != IGNORE_LABEL for v in values)


def check_object_classes(values, classes, data_dir):
    """Refuse labels that hold no object class: training would never see one (a 0/255 mask
    marks its objects as pixels to ignore)."""
    if has_object(values):
        return
    objects = "1" if len(classes) == 2 else f"1..{len(classes) - 1}"
    raise PipelineError(f"the labels in {Path(data_dir) / 'label'} hold only the "
                        f"{agreeing(len(values), 'value', 'values')} "
                        f"{', '.join(map(str, values))}, no object class ({objects} in "
                        f"{Path(data_dir) / 'classes.txt'}); {IGNORE_LABEL} marks pixels to "
                        "ignore, so a binary mask must be 0 and 1 (more classes: 1, 2, ... in "
                        "the order classes.txt lists them); labelme_to_label.py --instances "
                        "FOLDER makes every non-zero pixel of masks moved to FOLDER an object")


def check_mask_labels(values_of, table, data_dir):
    """Refuse labels of 0 and 255 alone among labels of object classes (check_object_classes
    passed): most likely 0/255 masks, whose objects would train as ignored pixels. One that
    labelme_to_label.py drew is an --ignore-labels region in a frame without objects; where
    other labels mark ignored pixels too, it may be such a region drawn elsewhere: a note."""
    drawn = read_record(data_dir)
    masks = sorted(table[name][1].name for name, values in values_of.items()
                   if IGNORE_LABEL in values and set(values) <= {0, IGNORE_LABEL}
                   and not drawn_as_recorded(drawn, table[name][1]))
    if not masks:
        return
    advice = (f"save labels as class indices: 0 background, 1, 2, ... in the order of "
              f"{Path(data_dir) / 'classes.txt'} ({IGNORE_LABEL} only for pixels to ignore)")
    if any(IGNORE_LABEL in values and has_object(values) for values in values_of.values()):
        print(f"note: {count_of(len(masks), 'label')} in {Path(data_dir) / 'label'} "
              f"{agreeing(len(masks), 'holds', 'hold')} only background "
              f"and ignored pixels ({some_names(masks)}); if "
              f"{agreeing(len(masks), 'it is a', 'they are')} 0/{IGNORE_LABEL} "
              f"{agreeing(len(masks), 'mask', 'masks')}, {agreeing(len(masks), 'its', 'their')} "
              f"objects train as ignored pixels: {advice}")
        return
    raise PipelineError(f"{count_of(len(masks), 'label')} in {Path(data_dir) / 'label'} "
                        f"{agreeing(len(masks), 'holds', 'hold')} only the "
                        f"values 0 and {IGNORE_LABEL} ({some_names(masks)}) while other labels "
                        f"hold object classes: as 0/{IGNORE_LABEL} masks, their objects would "
                        f"train as ignored pixels and the rest as background; {advice}")


def check_classes_since_split(work, digests, values_of, table, classes, data_dir):
    """Refuse labels unchanged (same image and label pixels) since the work folder's last
    split cut them for a class list in which a value they hold named a class now listed at
    another index: classes.txt reordered under labels made elsewhere (check_drawn_classes
    reads labelme_to_label.py's record of its own) would train them as other classes, unsaid."""
    try:
        record = read_json(work / "split.json", "split record")
    except PipelineError:
        return                      # no earlier split, or one this run replaces anyway
    before = record.get("classes") if isinstance(record, dict) else None
    earlier = record.get("frame_digests") if isinstance(record, dict) else None
    if not isinstance(before, list) or not isinstance(earlier, dict) or before == classes:
        return
    for name in sorted(n for n, digest in digests.items() if earlier.get(n) == digest):
        moved = moved_classes(values_of[name], before, classes)
        if moved:
            value, was = moved[0]
            how = moved_class(value, was, classes, Path(data_dir) / "classes.txt")
            raise PipelineError(f"label {table[name][1]} is unchanged since {work / 'split.json'} "
                                f"cut it for the classes {before}, with {was!r} as class {value}, "
                                f"but {how}; renumber the labels for the classes as listed now, "
                                "or restore the order of the classes (where the earlier list was "
                                "the wrong one, cut the patches into a new --work-dir)")


def check_training_classes(values_of, train, classes):
    """Refuse a split whose training images hold no object (every one went to the test set)
    and warn of each class no training image holds: the network can never learn it."""
    seen = {v for name in train for v in values_of[name]}
    if not has_object(seen):
        raise PipelineError(f"none of the {count_of(len(train), 'training image')} holds an "
                            "object; the labelled objects are all in test images: split otherwise "
                            "(test.txt in the data folder, or --random-state, --test-size), "
                            "or label objects in the training images")
    absent = [f"{classes[i]} ({i})" for i in range(1, len(classes)) if i not in seen]
    if absent:
        print(f"warning: no training image holds class(es) {', '.join(absent)}: the network "
              "cannot learn them (they are only in test images or in no label)")


def check_scaled_frames(table, scale):
    """Refuse a --scale that shrinks a frame below INPUT_MULTIPLE on its shorter side: less
    than one pixel at the network's deepest level."""
    if scale >= 1:
        return
    name, (_, _, shape) = min(table.items(), key=lambda item: min(item[1][2]))
    scaled = scaled_size(shape, scale)
    if min(scaled) >= INPUT_MULTIPLE:
        return
    least = min(1.0, math.ceil(100 * INPUT_MULTIPLE / min(shape)) / 100)
    raise PipelineError(f"--scale {scale:g} shrinks {name} from {shape[1]}x{shape[0]} to "
                        f"{scaled[1]}x{scaled[0]}: a frame needs {INPUT_MULTIPLE} px on its "
                        f"shorter side, one pixel at the network's deepest level (its encoder "
                        f"halves the size 5 times); use --scale {least:g} or more")


# Edge relief from which images are taken to have a direction. Measured: 0.49 on bbbc030
# (DIC), 0.04 on wbc300 (stained blood smears), 0.02 on the sample data.
DIRECTED_RELIEF = 0.25
# Degrees by which the relief's direction may miss a chosen mirror's axis before a warning:
# the mirrored relief lies twice that from the microscope's.
MIRROR_TOLERANCE = 10


def report_outlines(outlines, most=5):
    """A warning line for each of the first images whose label holds a bare outline."""
    for name in sorted(outlines)[:most]:
        print(describe_bare_outlines(name, outlines[name]))
    if len(outlines) > most:
        more = len(outlines) - most
        print(f"warning: {count_of(more, 'more label')} {agreeing(more, 'holds', 'hold')} bare "
              "outlines (split.json lists them all)")


def edge_sums(img, lbl, max_pixels=4_000_000):
    """One frame's sums for `edge_relief`: its brightness (less its median) along its object
    edges times each edge's inward direction (x and y), and times the edge's strength. Large
    frames are measured shrunk (image and masks averaged alike, so they stay aligned), which
    keeps the relief and bounds the memory."""
    scored = (lbl != IGNORE_LABEL).astype(np.uint8) * 255
    inside = ((lbl > 0) & (lbl != IGNORE_LABEL)).astype(np.uint8) * 255
    scale = min(1.0, (max_pixels / lbl.size) ** 0.5)
    if scale < 1:
        size = (max(1, round(lbl.shape[1] * scale)), max(1, round(lbl.shape[0] * scale)))
        img, scored, inside = (cv2.resize(a, size, interpolation=cv2.INTER_AREA)
                               for a in (img, scored, inside))
    if min(inside.shape) < 2:
        return [0.0, 0.0, 0.0]      # a single row or column has no outline to lean
    grey = img.astype(np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    weight = scored.astype(np.float32) / 255
    gy, gx = np.gradient(cv2.GaussianBlur(inside.astype(np.float32) / 255, (0, 0), 2))
    bright = (grey - np.median(grey[weight > 0.5] if (weight > 0.5).any() else grey)) * weight
    return [float((bright * gx).sum()), float((bright * gy).sum()),
            float((np.abs(bright) * np.hypot(gx, gy)).sum())]


def edge_relief(sums):
    """How much object edges are brighter on one side of the frames than on the other, over
    frames' `edge_sums`: near 0 where objects look the same all round (stains, fluorescence,
    phase halos), about pi/4 for pure DIC relief, where an edge's brightness follows the
    cosine of its angle to the shear."""
    x, y, total = np.sum(sums, axis=0) if len(sums) else (0.0, 0.0, 0.0)
    return float(np.hypot(x, y) / total) if total > 0 else 0.0


def relief_angle(sums):
    """The axis along which frames' `edge_sums` say the relief runs, in degrees 0 to 180
    (x right, y down: 45 runs from the upper left to the lower right)."""
    x, y, _ = np.sum(sums, axis=0) if len(sums) else (0.0, 0.0, 0.0)
    return float(np.degrees(np.arctan2(y, x)) % 180)


def choose_orientations(requested, relief):
    if requested != "auto":
        return requested
    return "none" if relief >= DIRECTED_RELIEF else "all"


def orientation_warning(orientations, relief, angle):
    """A line of warning where the chosen orientations make patches no microscope makes: a
    mirror whose axis misses the images' relief, or inverted intensities of images without
    relief (the inverse of a stain or a fluorescence is no image of either); else None."""
    if orientations == "rotate-invert" and relief < DIRECTED_RELIEF:
        return (f"warning: --orientations rotate-invert inverts the intensities of half the "
                f"patches, which maps only DIC relief onto itself, but these images show none "
                f"(edge relief {relief:.2f}, under {DIRECTED_RELIEF}): its inverted patches "
                "show images no microscope makes; 'auto' turns them to the 8 rotations/flips")
    axis = MIRROR_AXES.get(orientations)
    if axis is None or relief < DIRECTED_RELIEF:
        return None
    miss = abs((angle - axis + 90) % 180 - 90)
    if miss <= MIRROR_TOLERANCE:
        return None
    return (f"warning: --orientations {orientations} mirrors across {axis} degrees but the "
            f"relief runs along {angle:.0f} degrees, {miss:.0f} off: its mirrored patches show "
            "relief no microscope makes")


def describe_orientations(orientations):
    if orientations == "all":
        return "turned to the 8 rotations/flips"
    if orientations == "none":
        return "as the microscope saw them (no rotations/flips)"
    if orientations == "rotate-invert":
        return ("as the microscope saw them, half of them turned by 180 degrees with their "
                "intensities inverted (rotate-invert)")
    return f"as the microscope saw them, half of them mirrored ({orientations})"


def note_small_frames(sizes, patch_size):
    """A note naming the training frames smaller than a patch: each of their patches is
    mostly the frame mirrored to fill it, and drawn as often as a patch of a full frame."""
    small = {name: (h, w) for name, (h, w) in sizes.items() if h < patch_size or w < patch_size}
    if small:
        shown = some_names([f"{name} {w}x{h}" for name, (h, w) in sorted(small.items())])
        print(f"note: {len(small)} of {count_of(len(sizes), 'training frame')} "
              f"{agreeing(len(small), 'is', 'are')} smaller than the {patch_size} px patches "
              f"({shown}): {agreeing(len(small), 'its', 'their')} patches are filled with the "
              "frame mirrored; use a smaller --patch-size, or leave "
              f"{agreeing(len(small), 'it', 'them')} out")


def check_memory(shapes, patch_size, workers):
    """Refuse a patch size whose padded images would not fit in memory, before writing."""
    h, w = max(shapes, key=lambda s: max(s[0], patch_size) * max(s[1], patch_size))
    padded = max(h, patch_size) * max(w, patch_size)
    # Per worker: a padded RGB image and its label with room for its foreground list
    # (ImageCache), and the patch being encoded.
    needed = workers * (padded * (3 + 5) + 4 * patch_size ** 2)
    available = available_memory()
    if available is not None and needed > 0.8 * available:
        raise PipelineError(f"--patch-size {patch_size} needs about {needed / 2 ** 30:.1f} GiB "
                            f"({count_of(workers, 'worker')}, "
                            f"{agreeing(workers, 'holding', 'each holding')} a "
                            f"{max(w, patch_size)}x{max(h, patch_size)} padded image) but "
                            f"{available / 2 ** 30:.1f} GiB is free; use a patch size near the "
                            f"image size (largest image {w}x{h}) or fewer --workers")


def available_memory():
    """Bytes of memory available to new allocations (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def split_names(names, data_dir, test_size, random_state, stack_of=None, file_of=None):
    """(train, test, how) from <data-dir>/test.txt if present, else the paper's random split,
    which keeps the planes of one TIFF stack (stack_of: frame -> file) on one side."""
    fixed = Path(data_dir) / "test.txt"
    if fixed.is_file():
        listed = read_name_list(fixed)
        if not listed:      # a list emptied by mistake, or meant: usable either way
            print(f"note: {fixed} lists no image, so all {count_of(len(names), 'image')} "
                  f"{agreeing(len(names), 'trains', 'train')} and none is "
                  "held out for testing (prediction finds no test image to score); list test "
                  "images there, or remove it for the paper's random split")
        test_set = listed_frames(listed, names, file_of or {}, fixed)
        warn_of_split_stacks(test_set, stack_of or {}, fixed)
        return [n for n in names if n not in test_set], sorted(test_set), f"fixed list {fixed}"
    from sklearn.model_selection import train_test_split
    groups = frame_groups(names, stack_of or {})
    if len(groups) < 2:
        raise PipelineError("at least two labelled images (or stacks) are needed to split train "
                            "and test")
    held_out = held_out_count(test_size, len(groups))
    if held_out >= len(groups):
        raise PipelineError(f"--test-size {test_size:g} of {len(groups)} images (or stacks) "
                            f"holds out {held_out}, which leaves no training image; use a "
                            f"smaller --test-size or list the test images in {fixed}")
    train, test = train_test_split(list(groups), test_size=test_size, random_state=random_state)
    return (sorted(n for g in train for n in groups[g]), sorted(n for g in test for n in groups[g]),
            f"train_test_split(test_size={test_size}, random_state={random_state})"
            + (", planes of a stack kept together" if stack_of else ""))


def note_unused_split_options(args):
    """A note where --test-size or --random-state was given but a fixed test list decides the
    split, so that neither is taken for having been applied."""
    fixed = Path(args.data_dir) / "test.txt"
    given = [f"{option} {value:g}" for option, value, default in
             (("--test-size", args.test_size, TEST_SIZE),
              ("--random-state", args.random_state, RANDOM_STATE)) if value != default]
    if given and fixed.is_file():
        print(f"note: {' and '.join(given)} not used: {fixed} lists the test images (remove "
              "it for a random split)")


def listed_frames(listed, names, file_of, fixed):
    """The frames a fixed test list names: a frame by its name; else a file by its name, its
    extension in any case or none (a stack: all its planes). Names compare in Unicode's
    composed form."""
    frame_named = {nfc(name): name for name in names}
    frames_of = {}
    for name in names:
        file = file_of.get(name, name)
        for key in {file_key(file), nfc(frame_stem(file))}:
            frames_of.setdefault(key, set()).add(name)
    found = [{frame_named[nfc(entry)]} if nfc(entry) in frame_named
             else frames_of.get(file_key(entry)) for entry in listed]
    unknown = [entry for entry, frames in zip(listed, found) if not frames]
    if unknown:
        raise PipelineError(f"{fixed} lists images not in src/: {some_names(unknown, 10)} (list "
                            "a file's name, with or without its extension, or one plane of a "
                            "stack as <name>_p<k>)")
    return set().union(*found)


def file_key(file):
    """A file name as listed names are matched to it: composed, its extension lower case."""
    path = Path(nfc(file))
    return path.stem + path.suffix.lower()


def warn_of_split_stacks(test, stack_of, fixed):
    """A stack with planes on both sides scores the test planes against their neighbours."""
    for stack, planes in frame_groups(sorted(stack_of), stack_of).items():
        held_out = [p for p in planes if p in test]
        if 0 < len(held_out) < len(planes):
            print(f"warning: {fixed} lists {some_names(held_out)} but not the other "
                  f"{count_of(len(planes) - len(held_out), 'plane')} of the stack {stack}, "
                  f"which {agreeing(len(planes) - len(held_out), 'trains', 'train')}; "
                  "neighbouring planes look alike, so their test scores will flatter the "
                  "model (list the stack's name to hold out all its planes)")


def frame_groups(names, stack_of):
    """{group: frames} in name order: a stack's planes together, every other frame alone."""
    groups = {}
    for name in names:
        groups.setdefault(stack_of.get(name, name), []).append(name)
    return groups


def patch_settings(args):
    """What decides the patches beyond the split, recorded so that they can be cut again."""
    return {"num_patches": args.num_patches, "patch_size": args.patch_size, "seed": args.seed,
            "foreground_fraction": args.foreground_fraction}


def write_split(work, train, test, how, classes, label_values, intensity, stack_of,
                orientations, relief, angle, scale, outlines, patches, digests, pictures,
                data_dir, page):
    """The split files, written last: their presence marks a complete run. The frames'
    digests let training tell a data folder changed since (or another one) from the one the
    patches came from, before it reads held-out frames there again, and prediction tell test
    frames changed in the data folder since they were copied into test/. The training
    frames' image digests (pictures) go on into the model folder, for prediction to know a
    frame the model trained on by its pixels, whatever its name."""
    write_json(work / "split.json", {"method": how, "train": train, "test": test,
                                     "classes": classes, "label_values": label_values,
                                     "intensity": intensity, "stack_of": stack_of,
                                     "orientations": orientations,
                                     "edge_relief": round(relief, 4),
                                     "relief_angle": round(angle, 1), "scale": scale,
                                     "bare_outlines": outlines, "patches": patches,
                                     "frame_digests": {n: digests[n] for n in train + test},
                                     "image_digests": {n: pictures[n] for n in train
                                                       if n in pictures},
                                     "data_dir": str(Path(data_dir).resolve()),
                                     "page": page})
    atomic_write_text(work / "train.txt", "".join(f"{n}\n" for n in train))
    atomic_write_text(work / "test.txt", "".join(f"{n}\n" for n in test))


# What the pipeline writes into <work-dir>/train: this script's patches, pre_processing's.
TRAIN_FOLDER_NAMES = {"src", "label", "patches.csv", "prep"}


SPLIT_FILES = ("split.json", "train.txt", "test.txt")


def check_work_dir(work, data_dir):
    """Refuse a work folder whose rewrite would lose the user's files: the data folder itself
    (its test.txt would become the fixed list of the next run), one whose train/ or test/ holds
    the data folder, or a train/ holding files the pipeline does not write (train/ is
    replaced whole; test/src and test/label, checked by check_test_folders, too), or a file
    where the figures folder goes. test/ keeps what it holds besides src/ and label/
    (predictions and contours of earlier runs)."""
    work_id = folder_identity(work)
    is_data = work_id is not None and work_id == folder_identity(data_dir)
    if is_data or any(same_or_inside(data_dir, work / sub) for sub in ("train", "test")):
        raise PipelineError(f"--work-dir {work} is or holds the --data-dir folder {data_dir}, "
                            "which this script would change; choose a folder of its own, "
                            f"such as {WORK_DIR}")
    figures = work / "figures"
    if figures.exists() and not figures.is_dir():     # found only after publishing the split
        raise PipelineError(f"{figures} is a file, and this script writes its samples figure "
                            "into a folder of that name: move the file, or choose another "
                            "--work-dir")
    for name in SPLIT_FILES:        # found only after the patches are cut, which takes long
        if os.path.lexists(work / name) and not (work / name).is_file():
            raise PipelineError(f"{work / name} is not a file (a folder?), and this script "
                                "writes the split there: move it, or choose another --work-dir")
    foreign = foreign_entries(work / "train", TRAIN_FOLDER_NAMES.__contains__)
    if foreign:
        raise PipelineError(f"{work / 'train'} holds files the pipeline does not write "
                            f"({some_names(foreign)}), and this script replaces that folder "
                            "whole: move them, or choose another --work-dir")


def check_test_folders(work, frames):
    """Refuse a test/src or test/label holding files the pipeline does not write: both are
    replaced whole, and test/src is where prediction looks by default, so a user may have put
    images of their own there. The pipeline's are the image files of frames of the data set,
    of the last split (test.txt) for a frame since removed, and of any image with its label
    beside it (as copy_test_set writes them, where a stopped run removed test.txt)."""
    try:
        earlier = (work / "test.txt").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeError):
        earlier = []
    labelled = {frame_stem(p.name) for p in files_in(work / "test" / "src")
                if (work / "test" / "label" / f"{frame_stem(p.name)}.png").is_file()}
    ours = set(frames) | set(earlier) | labelled
    writes = {"src": lambda n: Path(n).suffix.lower() in IMAGE_EXTS and frame_stem(n) in ours,
              "label": lambda n: n.endswith(".png") and n[:-4] in ours}
    for sub, written in writes.items():
        foreign = foreign_entries(work / "test" / sub, written)
        if foreign:
            raise PipelineError(f"{work / 'test' / sub} holds files the pipeline does not "
                                f"write ({some_names(foreign)}), and this script replaces that "
                                "folder whole: move them (to predict images of your own, "
                                "give predict_lovasz_loss.py --input), or choose another "
                                "--work-dir")


def copy_test_set(table, test, src, labels):
    """The test frames and labels into the staging folders of test/src and test/label."""
    for name in test:
        img_path, lbl_path, _ = table[name]
        copy_frame(img_path, src, name)
        write_image(labels / f"{name}.png", read_label(lbl_path), atomic=False)


# ---------------------------------------------------------------- patches

def patch_params(seed, index, shapes, patch_size, foreground_fraction=0.0, foreground=None):
    """(image index, y, x, transform) of patch `index`, a function of the seed, the index and
    the images only. `foreground(image)` gives the flat indices of the image's foreground
    pixels in its padded frame; it is asked only for patches that must contain one."""
    rng = np.random.default_rng([seed, index])
    image = int(rng.integers(len(shapes)))
    h, w = (max(s, patch_size) for s in shapes[image])
    y = int(rng.integers(h - patch_size + 1))
    x = int(rng.integers(w - patch_size + 1))
    transform = int(rng.integers(8))
    if rng.random() < foreground_fraction:
        pixels = foreground(image)
        if len(pixels):     # an image without foreground keeps its uniform crop
            cy, cx = divmod(int(pixels[rng.integers(len(pixels))]), w)
            # A crop with the pixel at a random offset, shifted back inside the frame where
            # it would leave it.
            y = int(np.clip(cy - rng.integers(patch_size), 0, h - patch_size))
            x = int(np.clip(cx - rng.integers(patch_size), 0, w - patch_size))
    return image, y, x, transform


class ImageCache:
    """Padded image and label pairs, and the label's foreground pixels once asked for, kept
    in memory up to a byte budget (oldest dropped first)."""

    def __init__(self, sources, shapes, patch_size, intensity):
        self.sources, self.shapes, self.patch_size, self.items = sources, shapes, patch_size, {}
        self.intensity = intensity

    def get(self, image):
        return self._entry(image)[:2]

    def foreground(self, image):
        """Flat indices of the image's class pixels other than background in its padded
        frame."""
        entry = self._entry(image)
        if len(entry) == 2:
            label = entry[1]
            entry.append(np.flatnonzero((label > 0) & (label != IGNORE_LABEL)).astype(np.int32))
        return entry[2]

    def _entry(self, image):
        if image not in self.items:
            img_path, lbl_path = self.sources[image]
            shape = self.shapes[image]      # the frame's at the patches' scale
            img = resample_image(read_image(img_path, self.intensity), shape)
            lbl = resample_label(read_label(lbl_path), shape)
            entry = [reflect_pad(img, self.patch_size, self.patch_size),
                     reflect_pad(lbl, self.patch_size, self.patch_size)]
            while self.items and sum(map(entry_bytes, self.items.values())) + \
                    entry_bytes(entry) > CACHE_BYTES:
                self.items.pop(next(iter(self.items)))
            self.items[image] = entry
        return self.items[image]


def entry_bytes(entry):
    """An entry's size, counting room for its foreground list (at most 4 bytes per pixel)
    whether or not it has been made yet."""
    return entry[0].nbytes + 5 * entry[1].nbytes


class PatchWriter:
    """Writes one chunk of patches; a picklable callable for the process pool."""

    def __init__(self, sources, shapes, out_dir, patch_size, seed, digits, foreground_fraction,
                 intensity, orientations):
        self.sources, self.shapes, self.out_dir = sources, shapes, out_dir
        self.patch_size, self.seed, self.digits = patch_size, seed, digits
        self.foreground_fraction, self.intensity = foreground_fraction, intensity
        self.orientations = orientations

    def __call__(self, span):
        key = (tuple(self.sources), tuple(self.shapes), self.patch_size, str(self.intensity))
        cache = _caches.setdefault(key, ImageCache(self.sources, self.shapes, self.patch_size,
                                                   self.intensity))
        rows = []
        for index in range(*span):
            image, y, x, k = patch_params(self.seed, index, self.shapes, self.patch_size,
                                          self.foreground_fraction, cache.foreground)
            # The transform is drawn whatever the orientations, so all crop the same places.
            allowed = ORIENTATIONS[self.orientations]
            k = allowed[k % len(allowed)]
            img, lbl = cache.get(image)
            crop = (slice(y, y + self.patch_size), slice(x, x + self.patch_size))
            name = f"{index:0{self.digits}d}.png"
            write_image(self.out_dir / "src" / name, transform_image(img[crop], k), atomic=False)
            write_image(self.out_dir / "label" / name, dihedral(lbl[crop], k), atomic=False)
            rows.append((name, image, y, x, k))
        return len(rows), rows


def patch_writers(workers, num_patches):
    """The processes that write patches: --workers, but no more than there are chunks."""
    return min(workers, math.ceil(num_patches / CHUNK))


def write_patches(table, train, staging, num_patches, patch_size, seed, workers,
                  foreground_fraction=0.0, intensity=DEFAULT_INTENSITY, orientations="all",
                  scale=1.0):
    """The patches, their labels and patches.csv into the staging folder of train/."""
    sources = [table[n][:2] for n in train]
    shapes = [scaled_size(table[n][2], scale) for n in train]
    (staging / "src").mkdir()
    (staging / "label").mkdir()
    writer = PatchWriter(sources, shapes, staging, patch_size, seed,
                         digits=max(6, len(str(num_patches - 1))),
                         foreground_fraction=foreground_fraction, intensity=intensity,
                         orientations=orientations)
    spans = [(s, min(s + CHUNK, num_patches)) for s in range(0, num_patches, CHUNK)]
    with open(staging / "patches.csv", "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["patch", "image", "y", "x", "transform"])
        for rows in parallel_map(writer, spans, patch_writers(workers, num_patches), "patches",
                                 total=num_patches, unit="patch"):
            out.writerows((name, train[i], y, x, k) for name, i, y, x, k in rows)


# ---------------------------------------------------------------- figure

def plot_samples(table, names, classes, path, pdf=False, count=4, intensity=DEFAULT_INTENSITY):
    """The first few images beside their annotations, as a figure for the paper."""
    plt = pyplot()
    from matplotlib.patches import Patch
    names = names[:count]
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 5.2), squeeze=False)
    shown = dict(enumerate(classes))
    for col, name in enumerate(names):
        img_path, lbl_path, _ = table[name]
        img, label = read_image(img_path, intensity), read_label(lbl_path)
        axes[0, col].imshow(img, cmap="gray" if img.ndim == 2 else None)
        axes[0, col].set_title(name, fontsize=9)
        axes[1, col].imshow(colorize(label), interpolation="nearest")
        if (label == IGNORE_LABEL).any():
            shown[IGNORE_LABEL] = "ignored"
        for ax in axes[:, col]:
            ax.set_axis_off()
    handles = [Patch(color=colorize(value) / 255, label=name) for value, name in shown.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle("Sample images (top) and annotations (bottom)")
    save_figure(fig, path, pdf)


def main(argv=None):
    args = parse_args(argv)
    work = refuse_file(args.work_dir, "--work-dir")
    check_work_dir(work, args.data_dir)
    classes = read_classes(args.data_dir)
    table, values_of, edges, outlines, pictures, digests = labelled_images(
        args.data_dir, classes, args.intensity, args.page)
    label_values = sorted({v for values in values_of.values() for v in values})
    check_classes_since_split(work, digests, values_of, table, classes, args.data_dir)
    check_object_classes(label_values, classes, args.data_dir)
    check_mask_labels(values_of, table, args.data_dir)
    check_scaled_frames(table, args.scale)
    file_of = {name: (source.path if isinstance(source, StackPlane) else source).name
               for name, (source, _, _) in table.items()}
    stack_of = {name: file_of[name] for name, (source, _, _) in table.items()
                if isinstance(source, StackPlane)}
    train, test, how = split_names(sorted(table), args.data_dir, args.test_size, args.random_state,
                                   stack_of, file_of)
    if not train:
        raise PipelineError("no training images left after the split")
    note_unused_split_options(args)
    check_twin_frames(pictures, test, table)
    check_training_classes(values_of, train, classes)
    check_test_folders(work, table)
    sizes = {n: scaled_size(table[n][2], args.scale) for n in train}
    check_memory(list(sizes.values()), args.patch_size,
                 patch_writers(args.workers, args.num_patches))
    note_small_frames(sizes, args.patch_size)
    sums = [edges[n] for n in train]
    relief, angle = edge_relief(sums), relief_angle(sums)
    orientations = choose_orientations(args.orientations, relief)
    print(f"{count_of(len(table), 'labelled image')}: {len(train)} train, {len(test)} test "
          f"({how}); intensity of non-8-bit images: {describe_intensity(args.intensity)}")
    print(f"edge relief of the training images {relief:.2f} along {angle:.0f} degrees: "
          f"patches {describe_orientations(orientations)}"
          + ("" if args.orientations == "auto" else f" (--orientations {orientations})"))
    warning = orientation_warning(orientations, relief, angle)
    if warning:
        print(warning)
    report_outlines(outlines)
    # Everything is checked. test/src, test/label (the rest of test/, earlier predictions and
    # contours, is left as it is) and train/ are written into staging folders while the
    # earlier run's stay usable; then the split files go, the three folders replace the
    # earlier ones whole, and the split files come back last: a folder without them is an
    # unfinished run.
    work.mkdir(parents=True, exist_ok=True)
    with work_lock(work, "gen_img_aug.py"):
        remove_leftovers(work)
        with staged_output(work / "test" / "src") as src, \
                staged_output(work / "test" / "label") as labels, \
                staged_output(work / "train") as patches:
            copy_test_set(table, test, src, labels)
            write_patches(table, train, patches, args.num_patches, args.patch_size, args.seed,
                          args.workers, args.foreground_fraction, args.intensity, orientations,
                          args.scale)
            for name in SPLIT_FILES:
                (work / name).unlink(missing_ok=True)
        # The earlier samples figure goes with its split: a run stopped while drawing this
        # one's left a figure of other frames beside the new patches.
        for suffix in (".png", ".pdf"):
            (work / "figures" / f"samples{suffix}").unlink(missing_ok=True)
        write_split(work, train, test, how, classes, label_values, args.intensity, stack_of,
                    orientations, relief, angle, args.scale, outlines, patch_settings(args),
                    digests, pictures, args.data_dir, args.page)
    plot_samples(table, train, classes, work / "figures" / "samples.png", args.pdf,
                 intensity=args.intensity)
    scale = "" if args.scale == 1 else f" from frames resampled by {args.scale:g}"
    print(f"wrote {count_of(args.num_patches, 'patch', 'patches')} of "
          f"{args.patch_size}x{args.patch_size}{scale} to "
          f"{work / 'train'} and {count_of(len(test), 'test image')} to {work / 'test'}")


if __name__ == "__main__":
    run_cli(main, interrupted="the work folder is as it was, or, where the interruption came "
                              "as its folders were being replaced, unfinished (the later steps "
                              "refuse it) until gen_img_aug.py runs to its end, or, where it "
                              "came after the new split was written, the new split and patches "
                              "without figures/samples.png (rerun to draw it)")
