"""Segment full images with the trained model: tiled prediction, masks, IoU.

Reads   <model-dir>/config.json and a model file     (train_unet_xception_resnetblock.py)
        <work-dir>/test/src/*, <work-dir>/test/label/*.png  (gen_img_aug.py), or --input
Writes  <output>/<name>.png             class index per pixel (uint8); .tif with
                                        --mask-format tif and for whole slides (below)
        <output>/<name>_color.png       the mask colour-coded (class colours of the figures;
                                        an overview for whole slides)
        <output>/<name>_prob_<class>.png with --save-probs: the blended probability of each
                                        class as 8-bit grey, value / 255 = probability
        <output>/labelme/<name>.json    with --to-labelme: the mask as LabelMe polygons, to
                                        correct in LabelMe, then labelme_to_label.py
        <output>/predict.json           classes, decision, settings and the list of images
        <output>/iou.csv, iou.json, iou.png    where labels exist: per-image and dataset IoU
        <work-dir>/figures/iou_per_class.png   the IoU bar chart, for the test set

<output> is <work-dir>/test/predict for the test set, or <work-dir>/predict/<folder name>
for --input <folder>, unless --output says otherwise.

Images: PNG, JPEG, BMP and TIFF (through tifffile: 8/16/32-bit integer or float, OME-TIFF,
ImageJ TIFF). Every plane of a multi-plane TIFF (Z, T or C) is a frame <name>_p<k>, k from
0, unless --page K picks one plane per file. Images that are not 8-bit become 0..255 by the
intensity rule the model was trained with.

Tiling: tiles of the training patch size overlap by at least --overlap of a tile and are
spread evenly so the last one ends flush with the image border (as nnU-Net does); with
--overlap 0 the tiles do not overlap and the image is reflect-padded at the bottom/right to
a whole number of tiles (the original's tiling). An image smaller than a tile is padded.
Every tile is preprocessed exactly as the training patches were: on its own by the paper's
rule (z-score with the training statistics, min-max, histogram equalization, gamma; grey
models by default), or through the training set's equalization table and gamma (colour
models by default; pre_processing.py --equalize), the tiles run through the model
--batch-size at a time, and the
class probabilities of overlapping tiles are averaged, weighted by a window that is
largest at the tile centre (--blend gaussian) or flat (uniform); a tile of one value (a
blank or saturated area) shows nothing, so the others decide the pixels it shares with them
and a pixel only such tiles cover is background (such tiles skip the network: a slide's
blank margins cost next to nothing). The padding is then cropped off. --tta
also averages the rotations/flips of every tile that the model's training
patches came in: all 8 for turned patches (gen_img_aug.py's default for most images), the
mirror across the relief's axis for DIC patches kept in the microscope's view and mirrored,
the half turn with inverted intensities for DIC patches made with --orientations
rotate-invert. Several --weights (an ensemble) average every tile's probabilities over
their models, each file verified like one.
A model whose patches were cut from resampled frames (gen_img_aug.py --scale, recorded in
config.json) sees each frame resampled alike; its probabilities are brought back to the
frame's own pixels bilinearly before the decision, so masks, probabilities and IoU are at
the frame's size. Frames predicted band by band (--stream-above) need a model of scale 1.

Decision, as recorded in config.json by training:
  argmax         (default loss, Lovasz on softmax) the class of highest softmax probability.
  sigmoid>0.51   (trained with --lovasz-on logits, as the original) the original's rule:
                 a pixel passes class c where sigmoid(logit_c) > 0.51. Where several classes
                 pass, the one with the highest sigmoid wins; where none passes, the pixel
                 is background (0). The sigmoids are what is blended and saved.

Faint objects: training records in config.json a texture threshold chosen on its held-out
frames (faint_objects.py); predicted objects (8-connected regions of any class) whose mean
local contrast, relative to the frame's median, is under it are set to background, and
predict.json counts them per frame. --faint-filter off keeps every object. Probability maps
are never filtered, and frames predicted band by band keep every object (the texture needs
the whole frame).

Unfinished training: a model folder whose training was interrupted (config.json records no
result yet) predicts with the models of the epochs done so far, with a note saying how many
of the planned epochs were done and whether the faint-object filter is still to be
calibrated, and "model_finished": false in predict.json. Rerunning the training command
resumes it; the SWA model is written at its end.

IoU: per image and class, IoU = TP / (TP + FP + FN). A class absent from both the label
and the prediction of an image scores 1; absent from the label but predicted, 0. The
dataset IoU of a class comes from the confusion matrix summed over all images (not the
mean of per-image IoUs); mean_iou averages the classes, background included. Label
value 255 marks pixels left out of the scores ("unsure" regions); any other value must be
one of the model's classes.

Whole slides: a TIFF frame of more than --stream-above megapixels (default 16) is never
whole in memory. Its rows are decoded as the tiles reach them, the intensity range comes
from a first pass over the plane (exact, from a histogram, for integer pixels of up to 16
bits; from a sample of 16 M pixels for float and 32-bit percentiles), and the mask is
written a row of tiles at a time as <name>.tif, a tiled, compressed BigTIFF (whatever
--mask-format says), with the pixel size as OME metadata. <name>_color.png is then an
overview at most 4096 pixels on its longest side. The mask is the one the in-memory path
gives before the faint-object filter, bit for bit. --save-probs and --to-labelme are for
frames that fit in memory. A label for such a frame is read whole. Frames that are not TIFF
are read whole.

Colour: a colour image given to a model trained on grey images is converted to grey, as
the paper read every image as grey. A grey image given to a model trained on colour is an
error.
"""
import argparse
import csv
import io
import math
import os
from pathlib import Path

from hardware import add_precision_option, prepare_tensorflow, use_precision

prepare_tensorflow()

import numpy as np  # noqa: E402

from image_io import (DEFAULT_INTENSITY, IMAGE_EXTS, StackPlane,  # noqa: E402
                      add_intensity_option, check_label_size, check_label_values,
                      PLANE_SUFFIX, describe_intensity, find_frame_label, frames_changed,
                      frame_stem, list_images, note_hidden_images, parse_intensity,
                      picture_digest, pixel_size_um, read_label, read_raw_image, to_color_mode,
                      to_uint8, unmatched_labels, unread_images, write_image, write_tiff)
from labelme_export import DEFAULT_TOLERANCE, annotation, moved_image_path  # noqa: E402
from model_folder import (ARGMAX, DECISIONS, SIGMOID_RULE, check_page,  # noqa: E402
                          check_same_recipe, load_model, model_file, own_model_folder,
                          read_config, unfinished_training, verify_model_file)
from whole_slide import (STREAM_ABOVE_MP, ArrayRows, Overview, StreamedFrame,  # noqa: E402
                         megapixels, mirrored_rows, open_tiff_rows, write_tiled_mask)
from outputs import (atomic_write_text, check_name_fits, check_replaceable,  # noqa: E402
                     color_file, contour_file, file_digests, output_lock, prob_file,
                     same_or_inside, sha256_of, staged_output, write_json)
from shards import (check_shard_holds, copy_shard_files, merged_record,  # noqa: E402
                    open_shards, shard_folder, shard_names, shard_option)
from cli import (PipelineError, agreeing, check_split_written, count_of, read_json,  # noqa: E402
                 existing_folder, finite_float, nfc, non_negative_float, non_negative_int,
                 positive_int, read_classes, refuse_file, refuse_options_beside_merge,
                 run_cli, some_names, unexpanded_pattern, WORK_DIR)
from figures import colorize, save_figure, pyplot  # noqa: E402
from geometry import (ORIENTATIONS, dihedral, inverse_dihedral, invert_intensities,  # noqa: E402
                      inverts, resample_image, resample_probabilities, scaled_size)
from faint_objects import drop_faint  # noqa: E402
from metrics import confusion_matrix, iou_per_class  # noqa: E402
from patch_preprocessing import dataset_lut_for, preprocess_patch  # noqa: E402

SIGMOID_THRESHOLD = 0.51
DEFAULT_OVERLAP = 0.25
# Tiles per pixel grow as 1 / (1 - overlap)^2: 100 at 0.9, 10,000 at 0.99.
MAX_OVERLAP = 0.9
BLENDS = ("gaussian", "uniform")
WEIGHT_CHOICES = ("best", "swa", "last")
MARKER = "predict.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("folders")
    g.add_argument("--data-dir", default="data", metavar="DIR",
                   help="data folder (not read here: the classes come from the model folder; "
                        "accepted like every script) (default: %(default)s)")
    g.add_argument("--work-dir", default=WORK_DIR, metavar="DIR",
                   help="work folder of the pipeline (default: %(default)s)")
    g.add_argument("--input", metavar="PATH",
                   help="an image file or a folder of images to segment, any size, grey or "
                        "colour, labels not needed (default: the test set, <work-dir>/test/src)")
    g.add_argument("--page", type=non_negative_int, metavar="K",
                   help="TIFF stacks: segment only plane K (from 0) of each, named like its "
                        "file; K above 0 is refused for a file of one plane (default: every "
                        "plane, each a frame named <name>_p<k>)")
    g.add_argument("--labels", metavar="DIR",
                   help="folder of labels <name>.png/.npy for IoU (default: <work-dir>/test/label "
                        "for the test set; none with --input)")
    g.add_argument("--output", metavar="DIR",
                   help="output folder, replaced as a whole (default: <work-dir>/test/predict, "
                        "or <work-dir>/predict/<input folder or file name> with --input, "
                        "which replaces only predictions of the same input)")
    g = p.add_argument_group("model")
    g.add_argument("--model-dir", metavar="DIR", help="model folder written by training "
                   "(default: <work-dir>/weights)")
    g.add_argument("--weights", nargs="+", action="extend", metavar="best|swa|last|FILE",
                   help="best: lowest validation loss; swa: the weight average of the last "
                        "epochs; last: the newest snapshot; or the path of a model file, "
                        "e.g. snapshots/epoch_020.h5 (relative to the model folder or the "
                        "current one). Several: an ensemble, the mean of their probabilities "
                        "(as many times the compute), e.g. the best models of two training "
                        "seeds on the same work folder (default: best)")
    g.add_argument("--faint-filter", choices=("model", "off"), default="model",
                   help="model: drop predicted objects fainter than the threshold training "
                        "chose on its held-out frames (config.json 'faint_filter'; none for "
                        "models trained without it); off: keep every object, as the original "
                        "(default: %(default)s)")
    g.add_argument("--no-verify", action="store_true",
                   help="load a model file even when its sha256 is not the one config.json "
                        "recorded (a damaged or replaced file predicts garbage; use with care)")
    add_intensity_option(g, "default: the rule the model was trained with, from config.json")
    g = p.add_argument_group("tiling")
    g.add_argument("--overlap", type=finite_float, default=DEFAULT_OVERLAP, metavar="FRACTION",
                   help=f"overlap of neighbouring tiles as a fraction of the tile, 0 to "
                        f"{MAX_OVERLAP}; 0 reproduces the original's tiling "
                        "(default: %(default)s)")
    g.add_argument("--blend", choices=BLENDS, default="gaussian",
                   help="weighting of overlapping tiles' probabilities: gaussian (sigma 1/8 "
                        "of the tile, favours tile centres) or uniform (default: %(default)s)")
    g.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="tiles per model call (default: %(default)s)")
    g.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average every tile over the rotations/flips "
                        "its model was trained on (8 for turned patches: 8x the compute; 2 "
                        "for mirrored or rotate-invert DIC patches); refused for a model "
                        "whose patches kept the microscope's view unmirrored")
    add_precision_option(g)
    g.add_argument("--stream-above", type=non_negative_float, default=STREAM_ABOVE_MP,
                   metavar="MEGAPIXELS",
                   help="TIFF frames larger than this are read, predicted and written a band "
                        "of rows at a time (see 'Whole slides' above) (default: %(default)s)")
    g = p.add_argument_group("output")
    g.add_argument("--save-probs", action="store_true",
                   help="also write <name>_prob_<class>.png per class, 8-bit, value/255 = "
                        "probability (softmax, or sigmoid for the sigmoid>0.51 decision); "
                        "get_contour.py --from-probs reads them")
    g.add_argument("--mask-format", choices=("png", "tif"), default="png",
                   help="file type of the masks <name>.png|.tif; tif carries the pixel size of "
                        "a TIFF input (OME or ImageJ) for Fiji and get_contour.py "
                        "(default: %(default)s)")
    g.add_argument("--to-labelme", action="store_true",
                   help="also write <output>/labelme/<name>.json, the mask as LabelMe polygons "
                        "(one per object, holes kept) to correct in LabelMe and turn back into "
                        "labels with labelme_to_label.py")
    g.add_argument("--labelme-tolerance", type=non_negative_float, default=DEFAULT_TOLERANCE,
                   metavar="PIXELS",
                   help="largest distance a simplified polygon may stray from the traced "
                        "outline; 0 keeps every vertex (default: %(default)s)")
    g.add_argument("--pdf", action="store_true", help="also write the IoU chart as PDF")
    g = p.add_argument_group("many images over many processes or machines")
    g.add_argument("--shard", type=shard_option, metavar="I/N",
                   help="segment only shard I of N (I from 1): every N-th image from the I-th, "
                        "into <output>_shardIofN (of the default output or --output); run all "
                        "N (at once, anywhere that sees the files), then --merge")
    g.add_argument("--merge", nargs="+", metavar="DIR",
                   help="merge the N shard folders of one run into the folder a single run "
                        "writes (masks, predict.json, IoU report), byte for byte; the output "
                        "is the shards' name without _shardIofN, or --output. No model needed")
    args = p.parse_args(argv)
    if args.merge and args.shard:
        p.error("--merge takes the folders of finished shards; leave out --shard")
    if args.merge:
        refuse_options_beside_merge(p, args)
    args.weights = args.weights or ["best"]     # --weights given twice adds, as one list does
    if args.overlap < 0:
        p.error(f"--overlap is a fraction of the tile from 0 (tiles side by side) to "
                f"{MAX_OVERLAP}, not {args.overlap:g}")
    if args.overlap > MAX_OVERLAP:
        p.error(f"--overlap must be 0 to {MAX_OVERLAP}: at {MAX_OVERLAP} each pixel already "
                f"lies in about {round(1 / (1 - MAX_OVERLAP)) ** 2} tiles, and the time grows "
                "with that count")
    args.intensity = parse_intensity(p, args.intensity, None)
    return args


# ---------------------------------------------------------------- tiling

def tile_shape(tile):
    """(height, width) from a side or a (height, width) pair."""
    return (tile, tile) if np.isscalar(tile) else tuple(tile)


def _axis_starts(length, tile, overlap):
    stride = max(1, round(tile * (1 - overlap)))
    count = 1 + max(0, math.ceil((length - tile) / stride))
    if overlap == 0 or count == 1:
        return [i * stride for i in range(count)]
    # The same number of tiles as a fixed stride needs, spread so the last ends at the
    # border: no tile is mostly mirrored padding, and the overlap only grows.
    return np.round(np.linspace(0, length - tile, count)).astype(int).tolist()


def tile_positions(h, w, tile, overlap):
    """Top-left (y, x) of every tile covering an h x w image, row by row.

    With overlap > 0, ceil((side - tile) / stride) + 1 tiles per side (stride =
    round(tile * (1 - overlap))), spread evenly from 0 to side - tile so the last ends flush
    with the border. Overlap 0 gives the original's ceil(h / tile) x ceil(w / tile) grid,
    which may run past the image (reflect-padded). A side shorter than the tile gets one.
    """
    th, tw = tile_shape(tile)
    return [(y, x) for y in _axis_starts(h, th, overlap) for x in _axis_starts(w, tw, overlap)]


def blend_window(tile, blend):
    """Weight of each tile pixel when overlapping tiles are averaged (float64, max 1).

    The Gaussian (sigma = side / 8) trusts tile centres, where the network saw the most
    context, over tile borders; it never reaches 0, so every pixel keeps some weight.
    """
    th, tw = tile_shape(tile)
    if blend == "uniform":
        return np.ones((th, tw))
    if blend != "gaussian":
        raise ValueError(f"unknown blend {blend!r}; choose one of {BLENDS}")

    def bump(n):
        centre = (n - 1) / 2
        return np.exp(-0.5 * ((np.arange(n) - centre) / (n / 8)) ** 2)

    return np.outer(bump(th), bump(tw))


class RowAccumulator:
    """Window-weighted sums of tile probabilities over the rows that tiles still reach: rows
    join at the bottom as tiles need them and leave at the top once final."""

    def __init__(self, width):
        self.top, self.width = 0, width
        self.total, self.weight = None, np.zeros((0, width))

    def add(self, y, x, values, window):
        th, tw = window.shape
        if self.total is None:
            self.total = np.zeros((0, self.width, values.shape[-1]))
        grow = y + th - self.top - len(self.weight)
        if grow > 0:
            self.total = np.concatenate([self.total, np.zeros((grow, *self.total.shape[1:]))])
            self.weight = np.concatenate([self.weight, np.zeros((grow, self.width))])
        r = y - self.top
        self.total[r:r + th, x:x + tw] += window[:, :, None] * values
        self.weight[r:r + th, x:x + tw] += window

    def pop(self, y):
        """The blended probabilities of rows top..y-1 (float32), which no tile adds to any more."""
        n = y - self.top
        probs = (self.total[:n] / self.weight[:n, :, None]).astype(np.float32)
        self.total, self.weight, self.top = self.total[n:], self.weight[n:], y
        return probs


# A tile of one value in each channel (a blank or saturated area, a constant frame) shows
# nothing to segment: per-tile preprocessing maps it to zeros, on which the network draws
# objects along the tile's borders. Its weight is a trace, so any tile that shows something
# decides a pixel it covers, and a pixel only flat tiles cover is background.
FLAT_TILE_WEIGHT = 1e-9


def is_flat(raw):
    return bool(np.all(raw == raw.reshape(-1, *raw.shape[2:])[0]))


def background_only(prob):
    """Probabilities of class 0 (background) alone, shaped as prob."""
    only = np.zeros_like(prob)
    only[..., 0] = 1
    return only


def _model_inputs(read_rows, positions, tile, transforms, prepare):
    """(y, x, flat, inputs) for every tile: inputs are [(k, input)] for the transforms,
    preparing the tile once (once more with its intensities inverted where a transform
    inverts them: preprocessing is not symmetric in intensity); a flat tile's are its raw
    pixels alone, unprepared: it is background whatever the network says. The image is
    read one row of tiles at a time."""
    th, tw = tile
    inversions = sorted({inverts(k) for k in transforms})
    strip_y, strip = None, None
    for y, x in positions:
        if y != strip_y:
            strip_y, strip = y, read_rows(y, y + th)
        raw = strip[:, x:x + tw]
        if is_flat(raw):
            yield y, x, True, raw
            continue
        ready = {inverted: prepare(invert_intensities(raw) if inverted else raw)
                 for inverted in inversions}
        yield y, x, False, [(k, dihedral(ready[inverts(k)], k)) for k in transforms]


def predict_bands(predict_batch_fn, read_rows, h, w, tile, overlap=0.25, blend="gaussian",
                  batch_size=8, transforms=(0,), *, prepare):
    """Per-class probabilities of an h x w image by blended tiles, yielded top to bottom as
    (first row, probabilities [rows, w, C] float32) as soon as no later tile reaches them.

    read_rows(y0, y1) gives rows y0..y1-1 of the image reflect-padded to tiles_width
    columns (whole_slide.mirrored_rows), so only a row of tiles and the rows they overlap
    need be in memory.
    predict_batch_fn maps a float batch [N, th, tw, channels] to probabilities
    [N, th, tw, C]; it is called once per batch of batch_size tile inputs (fewer for the
    last). prepare turns one raw tile into the model input, so per-tile preprocessing sees
    exactly the pixels of its tile. Every tile goes through each of the `transforms`
    (geometry's transform indices: a rotation/flip, its intensities inverted from INVERTED
    up; (0,) none) and their back-transformed outputs are averaged. A tile of one value
    counts for a trace (FLAT_TILE_WEIGHT), as background, and is left out of the batches:
    through the network it goes only where no batch before it has shown the number of
    classes.
    """
    th, tw = tile = tile_shape(tile)
    if any(k % 2 for k in transforms) and th != tw:
        raise PipelineError(f"--tta needs square tiles, the model's are {tw}x{th}")
    positions = tile_positions(h, w, tile, overlap)
    pw = tiles_width(h, w, tile, overlap)
    window = blend_window(tile, blend)
    rows = RowAccumulator(pw)
    pending, background = [], None      # pending: (y, x, k, input) awaiting a full batch

    def run_pending():
        """Add the pending inputs' outputs; a background tile of their shape back."""
        outputs = np.asarray(predict_batch_fn(np.stack([inp for *_, inp in pending])),
                             np.float64)
        for (y, x, k, _), prob in zip(pending, outputs):
            rows.add(y, x, inverse_dihedral(prob, k), window)
        pending.clear()
        return background_only(outputs[0])

    tiles = _model_inputs(read_rows, positions, tile, transforms, prepare)
    for t, (y, x, flat, inputs) in enumerate(tiles):
        if flat:
            if background is None:
                background = background_only(np.asarray(
                    predict_batch_fn(prepare(inputs)[np.newaxis]), np.float64)[0])
            # as once for each transform, as the other tiles are added
            rows.add(y, x, background, window * (FLAT_TILE_WEIGHT * len(transforms)))
        for k, inp in [] if flat else inputs:
            pending.append((y, x, k, inp))
            if len(pending) == batch_size:
                background = run_pending()
        # Tiles come row by row: rows above the first tile not yet added in full are final.
        final = min(h, pending[0][0] if pending else (
            positions[t + 1][0] if t + 1 < len(positions) else h))
        if final > rows.top:
            yield rows.top, rows.pop(final)[:, :w]
    if pending:
        run_pending()
        yield rows.top, rows.pop(h)[:, :w]


def tiles_width(h, w, tile, overlap):
    """Columns the tiles of an h x w image span (more than w where they are padded)."""
    return max(x for _, x in tile_positions(h, w, tile, overlap)) + tile_shape(tile)[1]


def predict_frame(predict_batch_fn, image, tile, overlap=0.25, blend="gaussian", batch_size=8,
                  transforms=(0,), *, prepare):
    """Per-class probabilities [h, w, C] (float32) of a whole image in memory, by blended
    tiles (predict_bands, whose arithmetic it shares to the bit)."""
    return np.concatenate([probs for _, probs in predict_image_bands(
        predict_batch_fn, ArrayRows(image), tile, overlap, blend, batch_size, transforms,
        prepare)])


def predict_image_bands(predict_batch_fn, frame, tile, overlap, blend, batch_size, transforms,
                        prepare):
    """predict_bands of a frame with rows(y0, y1): an ArrayRows or a StreamedFrame."""
    h, w = frame.shape
    width = tiles_width(h, w, tile, overlap)
    return predict_bands(predict_batch_fn, lambda y0, y1: mirrored_rows(frame, y0, y1, width),
                         h, w, tile, overlap, blend, batch_size, transforms, prepare=prepare)


# ---------------------------------------------------------------- decision

def decide(probs, decision):
    """Class index per pixel (uint8) from blended probabilities [h, w, C].

    argmax: the most probable class. sigmoid>0.51: the classes whose sigmoid exceeds 0.51
    pass; the passing class with the highest sigmoid wins; no passing class -> 0.
    """
    if decision == ARGMAX:
        return probs.argmax(axis=-1).astype(np.uint8)
    if decision == SIGMOID_RULE:
        passing = probs > SIGMOID_THRESHOLD
        mask = np.where(passing, probs, -1.0).argmax(axis=-1)
        mask[~passing.any(axis=-1)] = 0
        return mask.astype(np.uint8)
    raise PipelineError(f"unknown decision {decision!r} in config.json; expected one of "
                        f"{DECISIONS}")


# ---------------------------------------------------------------- model

def make_predict_batch(net, decision):
    """A compiled batch -> probabilities function: softmax, or sigmoid for sigmoid>0.51."""
    import tensorflow as tf
    activation = tf.nn.softmax if decision == ARGMAX else tf.sigmoid

    # A free batch dimension: the last, shorter batch of a frame reuses the same graph.
    @tf.function(input_signature=[tf.TensorSpec([None, *net.input_shape[1:]], tf.float32)])
    def probabilities(batch):
        return activation(tf.cast(net(batch, training=False), tf.float32))

    return lambda batch: probabilities(tf.constant(batch)).numpy()


def model_image(path, color_mode, intensity=DEFAULT_INTENSITY):
    """The image in the model's colour mode, or a clear error if that is impossible."""
    return as_model_image(read_raw_image(path), path, color_mode, intensity)


def as_model_image(raw, path, color_mode, intensity):
    """model_image of the pixels read_raw_image read from path."""
    img = to_uint8(raw, intensity, f"image {path}")
    check_color_mode(img.ndim, path, color_mode)
    return to_color_mode(img, color_mode)


def check_frames_readable(images, streamed, color_mode, intensity, label_paths=None,
                          classes=None):
    """Read every frame held in memory, and its label, once before the model loads: a
    truncated file, a grey frame for a colour model, or a label of another size or of a
    class the model lacks stops the run before any frame is predicted, not after the frames
    before it (whose work an error throws away). Returns {frame: picture_digest of its image}
    of the labelled ones, the frames scored, for warn_of_training_frames without a second
    read."""
    from tqdm import tqdm
    label_paths, pictures = label_paths or {}, {}
    for name in tqdm([n for n in images if n not in streamed], desc="reading", unit="image",
                     dynamic_ncols=True, disable=None, leave=False):
        raw = read_raw_image(images[name])
        img = as_model_image(raw, images[name], color_mode, intensity)
        if label_paths.get(name) is not None:
            frame_label(label_paths[name], img.shape[:2], images[name], classes)
            pictures[name] = picture_digest(raw)
    return pictures


def check_color_mode(ndim, path, color_mode):
    if color_mode == "rgb" and ndim == 2:
        raise PipelineError(f"{path} is a grey image but the model was trained on colour (rgb) "
                            "images; give colour images, or a model trained with "
                            "pre_processing.py --color-mode grey")


def streamed_frames(images, stream_above):
    """Names of the frames predicted band by band: TIFF planes above the size limit that can
    be read row by row."""
    names = set()
    for name, source in images.items():
        rows = open_tiff_rows(source)
        if rows is not None:
            with rows:
                if megapixels(rows.shape) > stream_above:
                    names.add(name)
    return names


class TilePreparer:
    """One raw tile -> model input: the training preprocessing, 0..1, 3 channels."""

    def __init__(self, preprocessing):
        self.mean, self.std = preprocessing["mean"], preprocessing["std"]
        self.gamma = preprocessing["gamma"]
        self.lut = dataset_lut_for(preprocessing)

    def __call__(self, tile):
        x = preprocess_patch(tile, self.mean, self.std, self.gamma, self.lut)
        x = x.astype(np.float32) / 255.0
        return np.repeat(x[:, :, None], 3, axis=2) if x.ndim == 2 else x


# ---------------------------------------------------------------- scoring

def iou_rows(per_image, total_cm):
    """CSV rows: one per image (from its confusion matrix), then the dataset row from the
    summed confusion matrix."""
    rows = [[name, *iou, float(np.mean(iou))]
            for name, iou in ((n, iou_per_class(cm)) for n, cm in per_image.items())]
    dataset = iou_per_class(total_cm)
    return rows + [["dataset", *dataset, float(np.mean(dataset))]]


def write_iou(out, rows, classes, per_image, total_cm):
    # csv quotes what a name may hold (a comma, a quote), which a plain join left to split
    table = io.StringIO(newline="")
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["image", *(f"iou_{c}" for c in classes), "mean_iou"])
    writer.writerows([row[0], *(f"{v:.6f}" for v in row[1:])] for row in rows)
    atomic_write_text(out / "iou.csv", table.getvalue())

    def per_class(row):
        return {c: float(v) for c, v in zip(classes, row[1:-1])}

    write_json(out / "iou.json", {
        "convention": "IoU = TP/(TP+FP+FN) per class; 1 where a class is absent from label and "
                      "prediction, 0 where absent from the label but predicted; dataset IoU from "
                      "the confusion matrix summed over images; mean over all classes",
        "classes": classes,
        "images": {row[0]: {"iou": per_class(row), "mean_iou": row[-1],
                            "confusion_matrix": per_image[row[0]].tolist()}
                   for row in rows[:-1]},
        "dataset": {"iou": per_class(rows[-1]), "mean_iou": rows[-1][-1]},
        "confusion_matrix": {"rows": "label", "columns": "prediction",
                             "counts": total_cm.tolist()},
    })


def print_iou_table(rows, classes):
    width = max(12, *(len(r[0]) for r in rows))
    header = f"{'image':<{width}}" + "".join(f"{c[:10]:>11}" for c in classes) + f"{'mean':>11}"
    print(header)
    for row in rows:
        if row[0] == "dataset":
            print("-" * len(header))
        print(f"{row[0]:<{width}}" + "".join(f"{v:>11.4f}" for v in row[1:]))


def write_report(staging, figures, per_image, total_cm, classes, pdf):
    """iou.csv, iou.json and iou.png of the labelled images (and iou_per_class.png in the
    figures folder where one is given); the rows of the table."""
    rows = iou_rows(per_image, total_cm)
    write_iou(staging, rows, classes, per_image, total_cm)
    copies = [figures / "iou_per_class.png"] if figures else []
    plot_iou(rows[-1], classes, len(per_image), [staging / "iou.png", *copies], pdf)
    return rows


def plot_iou(dataset_row, classes, num_images, paths, pdf):
    """Bar chart of the dataset IoU per class, saved to each of paths."""
    plt = pyplot()
    ious = dataset_row[1:-1]
    fig, ax = plt.subplots(figsize=(3.4, 2.6))
    colours = colorize(np.arange(len(classes))) / 255.0
    bars = ax.bar(classes, ious, color=colours, edgecolor="black", linewidth=0.6)
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("IoU")
    ax.set_title(f"IoU per class, {count_of(num_images, 'image')} (mean {dataset_row[-1]:.3f})",
                 fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.set_layout_engine("tight")      # laid out as saved, in the fonts save_figure sets
    save_figure(fig, paths, pdf)


# ---------------------------------------------------------------- main

def folders(args):
    """(input file or folder, labels or None, output) from the options and their defaults."""
    work = Path(args.work_dir)
    if args.input:
        src = Path(args.input)
        if not src.exists():
            raise PipelineError(f"--input {src} does not exist{unexpanded_pattern(src)}")
        name = src.stem if src.is_file() else src.resolve().name
        out = Path(args.output) if args.output else work / "predict" / name
        labels = existing_folder(args.labels, "--labels") if args.labels else None
        return src, labels, out
    labels = Path(args.labels) if args.labels else work / "test" / "label"
    return (work / "test" / "src", labels if labels.is_dir() else None,
            Path(args.output) if args.output else work / "test" / "predict")


def warn_of_training_frames(names, pictures, config, model_dir):
    """Say where frames to be scored (names; pictures: check_frames_readable's digests of
    them) are frames the model trained on: their IoU tests nothing, as after a new split of
    the work folder without training again, or with a training frame copied into the test
    folder under another name. See frames_trained_on for how they are told."""
    seen = frames_trained_on(names, pictures, config)
    if not seen:
        return
    shown = [name if trained == name else f"{name} = training frame {trained}"
             for name, trained in sorted(seen.items())]
    print(f"warning: {len(seen)} of the {count_of(len(names), 'frame')} scored "
          f"{agreeing(len(seen), 'is a frame', 'are frames')} the model in "
          f"{model_dir} trained on ({some_names(shown, 5)}): their IoU is no test of it")


def frames_trained_on(names, pictures, config):
    """{frame scored: the training frame of its picture}, by config.json's
    train_image_digests (image_io.picture_digest): of the image alone, whatever the frame's
    name, label (one relabelled since is still a picture it learnt), bit depth or grey
    stored as RGB. Frames streamed band by band are never read whole, so go unchecked (not
    in pictures), as do blank ones (which may well repeat: gen_img_aug.py records no digest
    of them). Models trained before the digests were recorded know their frames by name
    alone (train_frames)."""
    trained = config["train_image_digests"]
    if trained is None:
        return {name: name for name in set(names) & set(config.get("train_frames") or ())}
    frame_of = {digest: name for name, digest in trained.items()}
    return {name: frame_of[digest] for name, digest in pictures.items() if digest in frame_of}


def note_test_frames_changed(work, frames):
    """Say which test frames differ in the data folder gen_img_aug.py read (split.json) from
    the copies it made in <work>/test, which are what is predicted and scored: a label
    corrected in data/label after the split left the scores on the old one, unsaid. Only a
    note, and only where the data folder still reads: it is not this script's input."""
    record = read_json(work / "split.json", "split record")
    data, digests = record.get("data_dir"), record.get("frame_digests") or {}
    if not isinstance(data, str) or not (Path(data) / "src").is_dir():
        return
    try:
        page = check_page(record.get("page"), work / "split.json")
        sources = list_images(Path(data) / "src", page, frames=set(frames) & set(digests))
        changed = frames_changed({n: s for n, s in sources.items() if n in frames}, data,
                                 digests)
    except PipelineError:
        return
    if changed:
        print(f"note: {count_of(len(changed), 'test frame')} changed in {data} since "
              f"gen_img_aug.py copied them into {work / 'test'} ({some_names(changed)}): the "
              "scores are of the copies; rerun gen_img_aug.py to score the new ones")


def note_page_trained(config, page, images, model_dir):
    """Say where stacks are predicted plane by plane for a model trained on one plane of each
    (gen_img_aug.py --page K, such as one channel): the other planes may show what it never
    saw. The page is not taken over: a folder of files of one plane has no plane K > 0."""
    stacks = sorted({source.path.name for source in images.values()
                     if isinstance(source, StackPlane)})
    if config["page"] is None or page is not None or not stacks:
        return
    print(f"note: {model_dir} was trained on plane {config['page']} of each stack "
          f"(gen_img_aug.py --page {config['page']}); every plane of {some_names(stacks)} is "
          f"predicted here: add --page {config['page']} for that plane alone")


def note_unscored(label_dir, label_paths, frames, src):
    """Say which labels in label_dir match no frame of a folder predicted, and how many frames
    have no label where others have one: a label named amiss (b_16 for frame b16) left its
    frame unscored and the IoU of fewer frames than meant, unsaid. label_paths: this run's
    frames' labels; frames: every frame of src (name -> source), other shards' too."""
    if src.is_dir():
        others = labels_of_other_frames(frames)
        unused = [p for p in unmatched_labels(label_dir, label_paths.values())
                  if not others(nfc(p.stem))]
        if unused:
            print(f"note: {count_of(len(unused), 'label')} in {label_dir} "
                  f"{agreeing(len(unused), 'matches', 'match')} no frame in {src} and "
                  f"{agreeing(len(unused), 'is', 'are')} not used: "
                  f"{some_names(p.name for p in unused)}; a label bears its "
                  "frame's name (x.png for x.tif, x_p<k>.png for plane k of stack x)")
    unlabelled = [name for name, path in label_paths.items() if path is None]
    if unlabelled and len(unlabelled) < len(label_paths):
        print(f"note: {len(unlabelled)} of the {count_of(len(label_paths), 'frame')} "
              f"{agreeing(len(unlabelled), 'has', 'have')} no label in {label_dir} and "
              f"{agreeing(len(unlabelled), 'is', 'are')} predicted but not scored: "
              f"{some_names(unlabelled)}")


def labels_of_other_frames(frames):
    """Whether a label's name (NFC) is that of a frame that another shard predicts, or of a
    plane that --page did not pick (x_p<k>, where stack x is predicted as its plane K): such
    a label matches no frame of this run, yet is not amiss."""
    names = {nfc(name) for name in frames}
    picked = {nfc(name) for name, source in frames.items() if isinstance(source, StackPlane)
              and name == frame_stem(source.path.name)}
    return lambda stem: stem in names or PLANE_SUFFIX.sub("", stem) in picked


def label_classes(label_dir):
    """(the classes a label folder's values index, the file listing them): its data folder's
    classes.txt, or for a work folder's test/label the classes gen_img_aug.py cut it for
    (split.json; the data folder's list may have changed since); (None, None) where neither
    is there."""
    label_dir = Path(label_dir)
    listed, split = label_dir.parent / "classes.txt", label_dir.parent.parent / "split.json"
    if listed.is_file():
        return read_classes(listed.parent), listed
    if label_dir.parent.name == "test" and split.is_file():
        record = read_json(split, "split record")
        if isinstance(record, dict) and isinstance(record.get("classes"), list):
            return record["classes"], split
    return None, None


def check_label_classes(label_dir, classes, model_dir):
    """Refuse labels of other classes than the model: the class values would be scored as
    the model's classes of the same numbers. Classes appended since the model was trained
    keep the numbers of the others, but the model never predicts them."""
    theirs, listed = label_classes(label_dir)
    if theirs is None or theirs == classes:
        return
    if theirs[:len(classes)] == classes:
        added = theirs[len(classes):]
        raise PipelineError(f"the labels in {label_dir} are of the classes {theirs} ({listed}); "
                            f"{model_dir} was trained for {classes}, before "
                            f"{', '.join(map(repr, added))} {agreeing(len(added), 'was', 'were')} "
                            f"added, and never predicts {agreeing(len(added), 'it', 'them')}: "
                            "score the labels with a model trained for their classes "
                            f"(train_unet_xception_resnetblock.py --init-model {model_dir} "
                            "--new-head, with a --model-dir of its own)")
    raise PipelineError(f"the labels in {label_dir} are of the classes {theirs} ({listed}), the "
                        f"model's are {classes}: their values would be scored as other classes")


def check_not_in_output(out, src, label_dir):
    """Refuse images or labels read from the output folder (an earlier run's masks), which
    this run replaces whole: they would be gone once it has read them."""
    for option, path in (("--input", src), ("--labels", label_dir)):
        if path is not None and same_or_inside(path if path.is_dir() else path.parent, out):
            raise PipelineError(f"{option} {path} lies in the output folder {out}, which this "
                                "run replaces whole: copy it elsewhere first, or give another "
                                "--output")


def check_same_input(out, src):
    """Refuse to replace the predictions of another folder that has the same name (the
    default output is named after the input folder: day1/images and day2/images)."""
    record_path = out / MARKER
    if not record_path.is_file():
        return
    record = read_json(record_path, "prediction record")
    if not isinstance(record, dict):
        return
    if "input_file" in record:      # a single image is recorded itself: x.png and x.tif
        earlier = record["input_file"] or record.get("input_dir")
        current = str(src.resolve())
    else:                           # a record of before: its folder alone
        earlier = record.get("input_dir")
        current = str((src.parent if src.is_file() else src).resolve())
    if earlier is not None and earlier != current:
        raise PipelineError(f"{out} holds the predictions of {earlier}, another input of the "
                            f"same name; give --output to keep both, or remove {out}")


def tta_transforms(tta, orientations, model_dir):
    """The transforms each tile goes through: with --tta, those the model's training
    patches came in (gen_img_aug.py --orientations), as geometry's transform indices."""
    if not tta:
        return (0,)
    if orientations == "none":
        # Turned tiles are images this model never saw (DIC relief turned is relief no
        # microscope makes): averaging over them blurs what it learned about direction.
        raise PipelineError(f"--tta turns tiles, but {model_dir} was trained on patches in "
                            "the microscope's orientation (gen_img_aug.py --orientations "
                            "none); predict without --tta")
    return ORIENTATIONS[orientations]


class FrameRun:
    """Predicts one frame after another with the same model and settings, writing each
    frame's outputs into the staging folder; returns its confusion matrix where it has a
    label."""

    def __init__(self, predict_batch, tile, transforms, prepare, classes, decision, color_mode,
                 intensity, scale, faint_threshold, args):
        self.predict_batch, self.tile, self.prepare = predict_batch, tile, prepare
        self.scale = scale
        self.transforms = transforms
        self.classes, self.decision = classes, decision
        self.color_mode, self.intensity, self.args = color_mode, intensity, args
        self.faint_threshold = faint_threshold
        self.dropped = {}

    def bands(self, frame):
        a = self.args
        return predict_image_bands(self.predict_batch, frame, self.tile, a.overlap, a.blend,
                                   a.batch_size, self.transforms, self.prepare)

    def in_memory(self, staging, out, name, source, label_path):
        img = model_image(source, self.color_mode, self.intensity)
        a = self.args
        probs = frame_probabilities(self.predict_batch, img, self.tile, self.scale, a.overlap,
                                    a.blend, a.batch_size, self.transforms, self.prepare)
        mask, self.dropped[name] = drop_faint(decide(probs, self.decision), img,
                                              self.faint_threshold)
        write_outputs(staging, out, name, source, img, mask, probs, self.classes, self.args)
        if label_path is None:
            return None
        return confusion_matrix(frame_label(label_path, mask.shape, source, self.classes), mask,
                                len(self.classes))

    def streamed(self, staging, out, name, source, label_path):
        """The frame a band of rows at a time: tiled mask TIFF, colour overview."""
        with open_tiff_rows(source) as reader:
            check_color_mode(len(reader.shape), source, self.color_mode)
            frame = StreamedFrame(reader, self.intensity, self.color_mode, f"image {source}")
            label = (frame_label(label_path, frame.shape, source, self.classes) if label_path
                     else None)
            overview = Overview(frame.shape)
            cm = np.zeros((len(self.classes),) * 2, np.int64)

            def masks():
                for y, probs in self.bands(frame):
                    mask = decide(probs, self.decision)
                    overview.add(y, mask)
                    if label is not None:
                        cm[:] += confusion_matrix(label[y:y + len(mask)], mask, len(cm))
                    yield y, mask

            write_tiled_mask(staging / f"{name}.tif", frame.shape, masks(),
                             pixel_size_um(source))
        write_image(staging / color_file(name), colorize(overview.image), atomic=False)
        return cm if label is not None else None


def frame_probabilities(predict_batch, img, tile, scale, overlap, blend, batch_size,
                        transforms, prepare):
    """Class probabilities [h, w, C] of a frame in memory, at the model's scale
    (gen_img_aug.py --scale), brought back to the frame's own pixels."""
    seen = resample_image(img, scaled_size(img.shape, scale))
    probs = predict_frame(predict_batch, seen, tile, overlap, blend, batch_size, transforms,
                          prepare=prepare)
    return resample_probabilities(probs, img.shape[:2])


def model_files(model_dir, config, choices):
    """The model files the --weights choices name, each once."""
    paths = [model_file(model_dir, config, choice) for choice in choices]
    twice = [str(p) for i, p in enumerate(paths)
             if p.resolve() in {q.resolve() for q in paths[:i]}]
    if twice:   # an ensemble of one model with itself is that model at twice the time
        raise PipelineError(f"--weights names {twice[0]} twice; give each model once")
    return paths


def note_unfinished_training(model_dir, config, paths, faint_choice):
    """Note each model folder predicting here (--model-dir, an ensemble's other ones) whose
    training was interrupted: its models are those of the epochs done so far. Returns whether
    every one has finished; None where --model-dir's config.json was not written by training
    and tells nothing."""
    folders = {Path(os.path.abspath(model_dir)): config}
    for path in paths:
        folder, own = own_model_folder(path)
        if folder is not None:
            folders.setdefault(folder, own)
    # None: --model-dir's config.json was not written by training and cannot tell.
    finished = True if isinstance(config.get("settings"), dict) else None
    for folder, own in folders.items():
        progress = unfinished_training(folder, own)
        if progress is None:
            continue
        finished = False
        # Only --model-dir's calibration is applied; training calibrates once its epochs ran.
        faint = ("; the faint-object filter is not calibrated yet (every object is kept)"
                 if own is config and faint_choice == "model" and faint_pending(own) else "")
        print(f"note: the training of {folder} has not finished ({progress}): its models are "
              f"those of the epochs so far{faint}; rerunning its training command (config.json's "
              "'command') resumes it")
    return finished


def faint_pending(config):
    """Whether training will calibrate a faint-object filter once its epochs have run."""
    return (config["settings"].get("faint_filter", "calibrate") == "calibrate"
            and bool(config.get("val_frames")))


def open_model(model_dir, config, paths, precision, verify=True):
    """(batch -> probabilities function, tile shape, tile preparer, the files' sha256) of the
    model files `paths` (model_files) of a model folder whose config.json has been read;
    several give the mean of their models' probabilities."""
    from model import with_precision
    verified = []
    for path in paths:
        check_same_recipe(path, model_dir, config)
        verified.append(verify_model_file(path, model_dir, config) if verify else None)
    digests = [digest or sha256_of(p) for digest, p in zip(verified, paths)]
    if len(paths) > 1:      # two names of one model: best and the snapshot it was saved from
        same = next(((paths[digests.index(d)], p) for i, (d, p) in enumerate(zip(digests, paths))
                     if d in digests[:i]), None)
        if same:
            raise PipelineError(f"--weights {same[0].name} and {same[1].name} are the same "
                                "model (their files are identical); give each model once")
    tile = tuple(config["patch_size"])
    functions = []
    for path in paths:
        net = with_precision(load_model(path), precision)
        if tuple(net.input_shape[1:3]) not in (tile, (None, None)):
            raise PipelineError(f"{path} takes {net.input_shape[1:3]} inputs but config.json "
                                f"says the patch size is {tile}")
        if net.output_shape[-1] != len(config["classes"]):
            raise PipelineError(f"{path} predicts {net.output_shape[-1]} classes but "
                                f"config.json lists {len(config['classes'])}")
        functions.append(make_predict_batch(net, config["decision"]))
    return mean_probabilities(functions), tile, TilePreparer(config["preprocessing"]), digests


def mean_probabilities(functions):
    """One batch -> probabilities function from several: their mean (an ensemble)."""
    if len(functions) == 1:
        return functions[0]
    return lambda batch: sum(f(batch) for f in functions) / len(functions)


def faint_threshold(config, choice):
    """The faint-object threshold --faint-filter CHOICE applies (None: keep every object)."""
    recorded = config.get("faint_filter")
    return recorded["threshold"] if choice == "model" and recorded else None


def frame_label(label_path, shape, source, classes):
    """The frame's label, checked against its size and the model's classes."""
    label = read_label(label_path)
    check_label_size(label, label_path, shape, source)
    check_label_values(label, len(classes), label_path, "the model")
    return label


def output_files(name, classes, mask_suffix, save_probs):
    """The files prediction writes for frame `name` (beside labelme/, a folder of its own)."""
    return [f"{name}{mask_suffix}", color_file(name),
            *(prob_file(name, cls) for cls in classes if save_probs)]


def mask_file_suffix(name, streamed, mask_format):
    """The suffix of frame `name`'s mask: a TIFF where it is streamed or --mask-format tif."""
    return ".tif" if name in streamed or mask_format == "tif" else ".png"


def check_output_files(names, classes, args, streamed):
    """Refuse frames whose outputs would overwrite each other's or the report's: frames x and
    x_color (or x_prob_cell with --save-probs) both write x_color.png; x and X are one file
    on macOS and Windows; a frame named iou would be the chart. All frames, not one shard's:
    the shards are merged into one folder. A name too long for the file system is refused
    here too, before the first frame, not at its own."""
    writer = {nfc(f).casefold(): "the report"
              for f in (MARKER, *REPORT_FILES)}
    for name in names:
        check_name_fits(contour_file(name), f"frame {name}")    # the longest (its .json too)
        suffix = mask_file_suffix(name, streamed, args.mask_format)
        for file in output_files(name, classes, suffix, args.save_probs):
            check_name_fits(file, f"frame {name}")
            other = writer.setdefault(nfc(file).casefold(), name)
            if other != name:
                who = other if other == "the report" else f"frame {other}"
                raise PipelineError(f"{who} and frame {name} would both write {file}; rename "
                                    "the image, or predict them into separate --output folders")


def write_outputs(staging, out, name, source, img, mask, probs, classes, args):
    if args.mask_format == "tif":
        write_tiff(staging / f"{name}.tif", mask, pixel_size_um(source))
    else:
        write_image(staging / f"{name}.png", mask, atomic=False)
    if args.to_labelme:
        write_labelme(staging / "labelme", out / "labelme", name, source, img, mask, classes,
                      args.labelme_tolerance)
    write_image(staging / color_file(name), colorize(mask), atomic=False)
    if args.save_probs:
        for c, cls in enumerate(classes):
            write_image(staging / prob_file(name, cls),
                        np.rint(probs[:, :, c] * 255).astype(np.uint8), atomic=False)


def write_labelme(staging, final, name, source, img, mask, classes, tolerance):
    """<name>.json for LabelMe, its imagePath relative to where the folder is published. A
    stack plane, which LabelMe cannot open, is saved beside it as the 8-bit frame the model
    saw."""
    staging.mkdir(exist_ok=True)
    if isinstance(source, StackPlane):
        write_image(staging / f"{name}.png", img, atomic=False)
        source = final / f"{name}.png"
    document = annotation(mask, classes, source, final, tolerance)
    write_json(staging / f"{name}.json", document)


def main(argv=None):
    args = parse_args(argv)
    work = refuse_file(args.work_dir, "--work-dir")
    if args.merge:
        return merge(args)
    model_dir = Path(args.model_dir) if args.model_dir else work / "weights"
    src, label_dir, out = folders(args)
    if not args.input and not src.is_dir():
        raise PipelineError(f"no test set in {src}: run gen_img_aug.py first, or give --input")
    if not args.input:
        check_split_written(work)
    images = list_images(src, args.page)
    if src.is_dir():
        note_hidden_images(src)
    skipped = unread_images(src) if src.is_dir() else []
    if skipped:
        print(f"note: {count_of(len(skipped), 'file')} in {src} "
              f"{agreeing(len(skipped), 'is', 'are')} of an image format not read and "
              f"{agreeing(len(skipped), 'is', 'are')} skipped: {some_names(skipped)} (images are "
              f"{', '.join(IMAGE_EXTS)}; save "
              f"{agreeing(len(skipped), 'it', 'them')} as PNG or TIFF)")
    if not images:
        raise PipelineError(f"no images in {src}")
    frames, everything = images, list(images)
    if args.shard:
        images = {name: images[name] for name in shard_names(everything, args.shard)}
        # also after --output: N array jobs given one command line write N folders
        out = shard_folder(out, args.shard)
    check_replaceable(out, MARKER)
    check_not_in_output(out, src, label_dir)
    if args.input and not args.output:
        check_same_input(out, src)
    # Every label is looked up now: a bad one (JPEG, two for a frame) stops the run before
    # any frame is predicted, not after.
    label_paths = ({name: find_frame_label(label_dir, name, source)
                    for name, source in images.items()} if label_dir else {})
    if label_dir:
        note_unscored(label_dir, label_paths, frames, src)
    if not args.input and label_dir:
        note_test_frames_changed(work, images)
    streamed = streamed_frames(images, args.stream_above)
    if streamed and (args.save_probs or args.to_labelme):
        raise PipelineError(f"{sorted(streamed)[0]} is larger than --stream-above "
                            f"{args.stream_above:g} megapixels and is predicted band by band; "
                            "--save-probs and --to-labelme need frames that fit in memory")
    config = read_config(model_dir)
    note_page_trained(config, args.page, images, model_dir)
    transforms = tta_transforms(args.tta, config["orientations"], model_dir)
    if streamed and config["scale"] != 1:
        raise PipelineError(f"{sorted(streamed)[0]} is larger than --stream-above "
                            f"{args.stream_above:g} megapixels and is predicted band by band, "
                            f"which works at the frames' own scale; {model_dir} was trained at "
                            f"scale {config['scale']:g} (gen_img_aug.py --scale): raise "
                            "--stream-above to predict it in memory")
    # Before TensorFlow loads (and times bf16): a missing model file is refused in a moment.
    paths = model_files(model_dir, config, args.weights)
    finished = note_unfinished_training(model_dir, config, paths, args.faint_filter)
    classes, decision = config["classes"], config["decision"]
    check_output_files(everything, classes, args, streamed)
    if label_dir:
        check_label_classes(label_dir, classes, model_dir)
    intensity = args.intensity or config["intensity"]
    pictures = check_frames_readable(images, streamed, config["color_mode"], intensity,
                                     label_paths, classes)
    warn_of_training_frames([name for name, path in label_paths.items() if path], pictures,
                            config, model_dir)
    precision = use_precision(args.precision)
    predict_batch, tile, prepare, model_digests = open_model(model_dir, config, paths,
                                                             precision, verify=not args.no_verify)
    threshold = faint_threshold(config, args.faint_filter)
    shard = f", shard {args.shard[0]}/{args.shard[1]}" if args.shard else ""
    resampled = "" if config["scale"] == 1 else f", frames resampled by {config['scale']:g}"
    models = str(paths[0]) if len(paths) == 1 else \
        f"ensemble of {len(paths)} ({', '.join(str(p) for p in paths)})"
    print(f"model {models} ({decision}, {precision}), tiles {tile[1]}x{tile[0]}, "
          f"overlap {args.overlap}, "
          f"{args.blend} blend{f', {len(transforms)}x TTA' if args.tta else ''}"
          f"{resampled}"
          f"{'' if threshold is None else f', objects of texture under {threshold:.2f} dropped'}; "
          f"{count_of(len(images), 'image')} from {src}"
          f"{shard}; intensity of non-8-bit images: {describe_intensity(intensity)}")

    if threshold is not None and streamed:
        print(f"note: the faint-object filter needs a frame whole; "
              f"{count_of(len(streamed), 'frame')} predicted band by band "
              f"{agreeing(len(streamed), 'keeps', 'keep')} every object "
              f"({some_names(sorted(streamed))})")
    run = FrameRun(predict_batch, tile, transforms, prepare, classes, decision,
                   config["color_mode"], intensity, config["scale"], threshold, args)
    # The paper figure is the test set's; a user's folder keeps its chart to itself.
    chart_copy = None if args.input else work / "figures" / "iou_per_class.png"

    from tqdm import tqdm
    per_image, total_cm = {}, np.zeros((len(classes), len(classes)), np.int64)
    # For get_contour.py to tell the images predicted from others of their names put there
    # since (a test set cut again, a folder of the next session's frames).
    digests = file_digests(images)
    with output_lock(out, Path(__file__).name), staged_output(out, MARKER) as staging:
        for name, img_path in tqdm(images.items(), desc="predict", unit="image",
                                   dynamic_ncols=True, disable=None):
            predict_one = run.streamed if name in streamed else run.in_memory
            cm = predict_one(staging, out, name, img_path, label_paths.get(name))
            if cm is not None:
                total_cm += cm
                per_image[name] = cm
        record = {
            # Whole paths, as input_dir: shards run from other folders (or the merge, which
            # writes the chart) would read a relative one against another folder.
            "classes": classes, "decision": decision, "model_file": str(paths[0].resolve()),
            "model_files": [str(p.resolve()) for p in paths],
            # What the files held: shards of one path are of one model only if these agree
            # (a model folder trained again, or resumed, between two shards' runs).
            "model_sha256": model_digests,
            "input_dir": str((src.parent if src.is_file() else src).resolve()),
            "input_file": str(src.resolve()) if src.is_file() else None,
            "label_dir": str(label_dir.resolve()) if label_dir else None,
            "intensity": intensity,
            "tile": list(tile), "scale": config["scale"], "overlap": args.overlap,
            "blend": args.blend, "tta": args.tta,
            "tta_transforms": list(transforms),
            "faint_filter": {"choice": args.faint_filter, "threshold": threshold,
                             "objects_dropped": run.dropped,
                             "not_applied_to": sorted(streamed) if threshold is not None else []},
            "precision": precision, "model_finished": finished,
            "batch_size": args.batch_size, "probability_maps": args.save_probs,
            "page": args.page, "mask_format": args.mask_format,
            "labelme": {"tolerance": args.labelme_tolerance} if args.to_labelme else None,
            "stream_above_mp": args.stream_above, "streamed": sorted(streamed),
            "images": list(images), "image_sha256": digests}
        if args.shard:
            # merged later; the chart goes to figures/ then, with every image in it
            record.update(shard=list(args.shard), all_images=everything,
                          chart_copy=str(chart_copy.resolve()) if chart_copy else None,
                          named_after_input=bool(args.input and not args.output))
        if args.input and not args.output:
            # Again: another input of the name may have been predicted there while this ran.
            check_same_input(out, src)
        rows = publish_report(staging, None if args.shard else chart_copy, per_image, total_cm,
                              classes, args.pdf)
        # Last: a file in the folder newer than the record was changed after the run.
        write_json(staging / MARKER, record)

    print(f"wrote {count_of(len(images), 'mask')} to {out}")
    report(rows, per_image, classes, out, label_dir)


def merge(args):
    """--merge: the shards' folders as the one folder a single run writes."""
    folders, records, everything, out = open_shards(args.merge, args.output, MARKER)
    for folder, record in zip(folders, records):
        check_shard_files(folder, record)
    check_replaceable(out, MARKER)
    first = records[0]
    if not args.output and first.get("named_after_input"):
        # Named after the input as a single run's folder is, it may hold the predictions of
        # another input of that name (day1/images, day2/images), which a single run keeps.
        check_same_input(out, Path(first["input_file"] or first["input_dir"]))
    classes = records[0]["classes"]
    per_image = {}
    for folder in folders:
        per_image.update(shard_confusion_matrices(folder, len(classes)))
    per_image = {name: per_image[name] for name in everything if name in per_image}
    total_cm = sum(per_image.values(), np.zeros((len(classes),) * 2, np.int64))
    chart_copy = records[0].get("chart_copy")
    with output_lock(out, Path(__file__).name), staged_output(out, MARKER) as staging:
        copy_shard_files(folders, staging, skip={MARKER, *REPORT_FILES})
        relocate_labelme(folders, staging / "labelme", out / "labelme")
        rows = publish_report(staging, Path(chart_copy) if chart_copy else None, per_image,
                              total_cm, classes, any((f / "iou.pdf").is_file() for f in folders))
        write_json(staging / MARKER, merged_record(records, everything))
    print(f"merged {count_of(len(folders), 'shard')}: {count_of(len(everything), 'mask')} in {out}")
    report(rows, per_image, classes, out, records[0]["label_dir"])


REPORT_FILES = ("iou.csv", "iou.json", "iou.png", "iou.pdf")


def check_shard_files(folder, record):
    """shards.check_shard_holds for a prediction shard: its masks, probability maps and
    LabelMe files."""
    streamed = set(record.get("streamed") or ())

    def files(name):
        written = output_files(name, record["classes"],
                               mask_file_suffix(name, streamed, record.get("mask_format")),
                               record.get("probability_maps"))
        return written + ([f"labelme/{name}.json"] if record.get("labelme") else [])

    check_shard_holds(folder, ((name, files(name)) for name in record["images"]),
                      "predict that shard again")


def relocate_labelme(folders, staging, final):
    """The shards' LabelMe files, copied into staging, with their imagePath relative to the
    merged folder `final` (--output may lie elsewhere than the shards): LabelMe would find
    no image, and labelme_to_label.py none or another one of the same name."""
    for folder in folders:
        for path in sorted((folder / "labelme").glob("*.json")):
            document = read_json(path, "LabelMe file")
            image = document.get("imagePath") if isinstance(document, dict) else None
            if not isinstance(image, str):
                continue
            moved = moved_image_path(image, folder / "labelme", final)
            if moved != image:
                write_json(staging / path.name, {**document, "imagePath": moved})


def shard_confusion_matrices(folder, num_classes):
    """Per-image confusion matrices from a shard's iou.json ({} where it has no labels)."""
    path = folder / "iou.json"
    if not path.is_file():
        return {}
    images = read_json(path, "IoU report").get("images", {})
    try:
        return {name: np.array(entry["confusion_matrix"], np.int64).reshape(
            num_classes, num_classes) for name, entry in images.items()}
    except (KeyError, TypeError, ValueError):
        raise PipelineError(f"{path} lacks per-image confusion matrices; predict the shard "
                            "again with this version") from None


def publish_report(staging, chart_copy, per_image, total_cm, classes, pdf):
    """The IoU report of the labelled images (none without labels): its rows, or None."""
    if not per_image:
        return None
    if chart_copy is None:
        return write_report(staging, None, per_image, total_cm, classes, pdf)
    with staged_output(Path(chart_copy).parent, merge=True) as figures:
        return write_report(staging, figures, per_image, total_cm, classes, pdf)


def report(rows, per_image, classes, out, label_dir):
    if rows:
        print_iou_table(rows, classes)
        print(f"IoU of {count_of(len(per_image), 'labelled image')}: {out / 'iou.csv'}, "
              f"{out / 'iou.png'}")
        labelled = sum(np.asarray(cm)[1:].sum() for cm in per_image.values())
        if labelled == 0:
            # Most often a 0/255 binary mask: 255 is the ignore label, so its objects vanish.
            print(f"warning: the labels in {label_dir} hold no pixel of any object class, only "
                  "background (0) or ignored ones (255): the object classes' IoU counts false "
                  "pixels alone. A binary mask must hold 0 and 1, not 0 and 255")
    elif label_dir:
        print(f"no labels for these images in {label_dir}; IoU skipped")


if __name__ == "__main__":
    run_cli(main)
