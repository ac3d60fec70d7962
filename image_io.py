"""Images and labels as the pipeline reads and writes them: one intensity rule for every image
that is not 8-bit, palette labels read as their indices, one clear error for a bad file."""
import atexit
import errno
import hashlib
import io
import logging
import os
import re
import shutil
import struct
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISBLK, S_ISCHR, S_ISDIR, S_ISFIFO, S_ISREG, S_ISSOCK

import cv2
import numpy as np

from geometry import dihedral
from outputs import SYSTEM_FILES, atomic_write_bytes, folder_identity, temp_target
from cli import (IGNORE_LABEL, PipelineError, agreeing, control_character, count_of, nfc,
                 some_names)
from native_messages import caught_native_stderr

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LABEL_EXTS = (".png", ".tif", ".tiff", ".npy")
LOSSY_EXTS = (".jpg", ".jpeg")
# Label files of other kinds that a user may save (Paint, ImageJ, GIMP): named, not passed over.
OTHER_LABEL_EXTS = (".bmp", ".gif", ".webp", ".pgm", ".ppm", ".jp2")
COLOR_MODES = ("grey", "rgb")

# ---------------------------------------------------------------- intensity rule
#
# 8-bit images are used exactly as stored (the paper). Every other image (16-bit, 32-bit,
# float) is mapped to 0..255 by one rule, the same in augmentation, prediction and contours:
#   percentile LO HI  (default 0.1 99.9) the LO..HI percentile range of the frame's own pixels
#                     -> 0..255, values outside clipped. 0.1/99.9 rather than cellpose's 1/99
#                     or csbdeep's 3/99.8: sparse objects (2 % of a bbbc030 frame is cells,
#                     beads far less) must keep their range, while the few hot or dead pixels
#                     of a camera (< 0.1 %) no longer decide the scale.
#   full              the frame's minimum..maximum -> 0..255 (one hot pixel flattens it).
#   fixed LO HI       LO..HI -> 0..255 for every frame, clipped (e.g. 0 4095 for 12-bit data).
# A frame whose range is empty (constant) becomes 0. NaN or infinite pixels are an error.
DEFAULT_INTENSITY = {"rule": "percentile", "low": 0.1, "high": 99.9}
INTENSITY_RULES = ("percentile", "full", "fixed")


def intensity_from_tokens(tokens):
    """The rule dict from --intensity's words: full | percentile LO HI | fixed LO HI."""
    rule, numbers = tokens[0], tokens[1:]
    usage = "--intensity takes full, percentile LO HI or fixed LO HI"
    if rule not in INTENSITY_RULES:
        raise ValueError(f"{usage}, not {rule!r}")
    if rule == "full":
        if numbers:
            raise ValueError(f"{usage}; full takes no numbers")
        return {"rule": "full"}
    if len(numbers) != 2:
        raise ValueError(f"{usage}; {rule} needs two numbers")
    try:
        low, high = (float(n) for n in numbers)
    except ValueError:
        raise ValueError(f"{usage}; {' '.join(numbers)!r} are not numbers") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"--intensity {rule}: LO and HI must be finite with LO < HI")
    if rule == "percentile" and not 0 <= low < high <= 100:
        raise ValueError("--intensity percentile: LO and HI must lie in 0..100")
    return {"rule": rule, "low": low, "high": high}


def check_intensity(rule, where):
    """A recorded rule (from config.json or predict.json), validated."""
    if not isinstance(rule, dict) or rule.get("rule") not in INTENSITY_RULES:
        raise PipelineError(f"{where}: 'intensity' is not a valid rule ({rule!r})")
    tokens = [rule["rule"]] + ([str(rule.get("low")), str(rule.get("high"))]
                               if rule["rule"] != "full" else [])
    try:
        return intensity_from_tokens(tokens)
    except ValueError as err:
        raise PipelineError(f"{where}: {err}") from None


def add_intensity_option(group, default_text):
    group.add_argument("--intensity", nargs="+", metavar="RULE",
                       help="how images that are not 8-bit become 0..255: 'percentile LO HI' "
                            "(the LO..HI percentiles of each frame, clipped), 'full' (each "
                            "frame's min..max) or 'fixed LO HI' (the same range for every "
                            f"frame); 8-bit images are used as they are ({default_text})")


def parse_intensity(parser, tokens, default):
    if tokens is None:
        return default
    try:
        return intensity_from_tokens(tokens)
    except ValueError as err:
        parser.error(str(err))


def to_uint8(img, intensity, what):
    """Apply the intensity rule: uint8 stays as it is, anything else maps to 0..255."""
    if img.dtype == np.uint8:
        return img
    check_finite(img, what)
    return scale_to_uint8(img, *intensity_range(img, intensity))


def check_finite(img, what):
    if img.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(img)))
        if bad:
            raise PipelineError(f"{what} has {count_of(bad, 'NaN or infinite pixel')}; replace "
                                f"{agreeing(bad, 'it', 'them')} with a "
                                "number (e.g. 0 or the background level) and run again")


def intensity_range(img, intensity):
    """(low, high) of the intensity rule for a whole frame in memory (not uint8)."""
    if intensity["rule"] == "fixed":
        return intensity["low"], intensity["high"]
    if has_histogram(img.dtype):
        return range_from_histogram(pixel_histogram(img), img.dtype, intensity)
    x = img.astype(np.float64)
    if intensity["rule"] == "percentile":
        low, high = np.percentile(x, (intensity["low"], intensity["high"]))
        if high > low:
            return low, high
    # A frame almost all one value: its few other pixels set the range.
    return x.min(), x.max()


def has_histogram(dtype):
    """Integer pixels of up to 16 bits: their percentiles come exactly from a histogram, so a
    frame read a band at a time gets the same range as one read whole."""
    return np.dtype(dtype).kind in "iu" and np.dtype(dtype).itemsize <= 2


def pixel_histogram(pixels):
    """Counts of every possible value of an integer type of up to 16 bits, from its minimum."""
    dtype = np.dtype(pixels.dtype)
    shifted = pixels.ravel().astype(np.int64) - np.iinfo(dtype).min
    return np.bincount(shifted, minlength=1 << (8 * dtype.itemsize))


def range_from_histogram(hist, dtype, intensity):
    """intensity_range from a pixel_histogram: the same values np.percentile gives (linear
    interpolation between the two nearest order statistics)."""
    offset = np.iinfo(dtype).min
    cumulative = np.cumsum(hist)
    n = int(cumulative[-1])

    def value_at(rank):    # the rank-th smallest pixel, from 0
        return float(np.searchsorted(cumulative, rank, side="right") + offset)

    lowest, highest = value_at(0), value_at(n - 1)
    if intensity["rule"] == "percentile":
        low, high = (_interpolated_rank(value_at, n, q) for q in (intensity["low"],
                                                                 intensity["high"]))
        if high > low:
            return low, high
    return lowest, highest


def _interpolated_rank(value_at, n, percent):
    # numpy's 'linear' method, step for step, so both give the same float.
    virtual = (n - 1) * (np.float64(percent) / 100)
    below = np.floor(virtual)
    gamma = virtual - below
    a, b = value_at(int(below)), value_at(min(int(below) + 1, n - 1))
    diff = b - a
    return float(b - diff * (1 - gamma)) if gamma >= 0.5 else float(a + diff * gamma)


def scale_to_uint8(img, low, high):
    """low..high -> 0..255, values outside clipped; an empty range gives 0."""
    if high <= low:
        return np.zeros(img.shape, np.uint8)
    x = img.astype(np.float64)
    return np.rint(np.clip((x - low) * (255.0 / (high - low)), 0, 255)).astype(np.uint8)


def describe_intensity(intensity):
    if intensity["rule"] == "full":
        return "full (each frame's min..max)"
    return f"{intensity['rule']} {intensity['low']:g} {intensity['high']:g}"


# ---------------------------------------------------------------- TIFF
#
# TIFF goes through tifffile, which reads what microscopes write: 8/16/32-bit integer and
# float pixels, OME-TIFF and ImageJ hyperstacks, compressed pages (with imagecodecs). Only a
# format's first series is read (in an OME file of several positions or a pyramid, the first
# position at full resolution). A file of no format of its own, written a frame at a time
# (tifffile's append=True or one write() per frame), holds a series per frame: its series are
# one stack when they are alike, and refused when they are not. Every plane of the stack
# (each Z, T or C step) is a frame; a colour plane (3 or 4 samples per pixel, chunky or
# planar) is one RGB frame, grey+alpha one grey frame.

TIFF_EXTS = (".tif", ".tiff")

# Length units of OME (PhysicalSizeXUnit) and ImageJ ('unit'), in micrometres: those of
# OME's that a scale of an image can be in (OME's list runs from yoctometres to parsecs).
# Inches too: a flatbed scanner's plates and gels are scaled in dots per inch (2400 dpi,
# 10.6 um), and OME's unit of inches is "in"; a thousandth of one is a "thou" or "mil".
MICROMETRES = {"um": 1.0, "\u00b5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
               "micrometre": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "dm": 1e5, "m": 1e6,
               "km": 1e9, "\u00e5": 1e-4, "angstrom": 1e-4, "pm": 1e-6, "fm": 1e-9,
               "in": 25400.0, "inch": 25400.0, "thou": 25.4, "mil": 25.4, "ft": 304800.0,
               "yd": 914400.0}


@dataclass(frozen=True)
class StackPlane:
    """One plane of a multi-plane TIFF, a frame of its own."""
    path: Path
    index: int

    @property
    def name(self):
        return f"{self.path.name} (plane {self.index})"

    def __str__(self):
        return f"{self.path} (plane {self.index})"


# A Micro-Manager MMStack file is read as neither an MMStack (tifffile reads the index maps of
# every <prefix>_MMStack*.tif beside it, joining the files of an acquisition into each) nor an
# ImageJ hyperstack (its ImageJ header counts the planes of the whole acquisition).
MMSTACK_AS_PAGES = {"is_mmstack": False, "is_imagej": False}


def open_tiff(path):
    """A TIFF's own planes. A file of a multi-file OME-TIFF (as Bio-Formats writes them)
    lists the planes of its companions too, which tifffile would read from them, zeroing those
    whose file is not beside it: each file then held the whole set, read once per file. The
    files of a Micro-Manager MMStack set (<name>_MMStack_Pos0.ome.tif, then _Pos0_1.ome.tif
    ...), which tifffile joins by name, each give their own pages so too (MMSTACK_AS_PAGES)."""
    import tifffile
    try:
        with tags_past_end(path):
            tif = tifffile.TiffFile(path, _multifile=False)     # as tifffile's --nomultifile
            if tif.is_mmstack:
                tif.close()
                tif = tifffile.TiffFile(path, _multifile=False, **MMSTACK_AS_PAGES)
        return tif
    except PipelineError:
        tif.close()     # whole, but its tags run past its end
        raise
    except struct.error:
        # too short for the offset of its first image, which tifffile unpacks unchecked
        raise _cut_short(path, "its header runs past its end") from None
    except (tifffile.TiffFileError, ValueError, OSError, EOFError, IndexError) as err:
        # tifffile calls an empty file one of a bad header (header=b''); say what it is.
        why = f"{NOT_AN_IMAGE} (0 bytes)" if _is_empty(path) else err
        raise PipelineError(f"cannot read TIFF {path}: {why}") from None


# tifffile's line for a tag whose value would run past the end of the file: it logs it and
# reads on without the tag. tifffile and Bio-Formats write an OME file's OME-XML last, so a copy
# cut there read as a plain stack, its pixel size gone, with that bare line before each read.
TAG_PAST_END = re.compile(r"<tifffile\.TiffTag (\d+) @\d+> invalid value offset (\d+)")
# Its line for a next image past the end, which _refuse_cut says in words: else bare before it.
PAGE_PAST_END = re.compile(r"<tifffile\.TiffPages @\d+> invalid page offset \d+")


class _TagsPastEnd(logging.Filter):
    """Takes tifffile's TAG_PAST_END lines (an offset from 8 up: below 8 it is damage, not a
    cut), counting them, and its PAGE_PAST_END lines out of its log."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def filter(self, record):
        found = TAG_PAST_END.search(record.getMessage())
        if found and int(found[2]) >= 8:
            self.tags.append(int(found[1]))
            return False
        return not PAGE_PAST_END.search(record.getMessage())


@contextmanager
def tags_past_end(path):
    """Refuse, as a file cut short, a TIFF whose tags read within the block (tifffile reads a
    page's tags when it first reaches the page) have values past its end."""
    past_end = _TagsPastEnd()
    logging.getLogger("tifffile").addFilter(past_end)
    try:
        yield
    finally:
        logging.getLogger("tifffile").removeFilter(past_end)
    if past_end.tags:
        from tifffile import TIFF
        tag = TIFF.TAGS.get(past_end.tags[0], f"tag {past_end.tags[0]}")
        raise _cut_short(path, f"the value of its {tag} lies past its end")


def _is_empty(path):
    try:
        return os.path.getsize(path) == 0
    except (OSError, TypeError):    # gone since, or not a path
        return False


# tifffile's kinds of files that record no format of their own: 'shaped' (a series per write
# of tifffile) and 'generic' (a plain TIFF's pages, a series per shape and coding). Other
# formats' further series are positions, slide labels or macro pictures, not planes of a stack.
STACK_KINDS = ("shaped", "generic")
ALPHA = ((1,), (2,))    # extra samples of one alpha: tifffile's EXTRASAMPLE ASSOCALPHA, UNASSALPHA
# Colour spaces whose samples are not red, green, blue (or grey): tifffile hands them out as
# stored, and read as RGB a CMYK image loses its black and its colours invert.
NOT_RGB = {5: "CMYK (separated)", 8: "CIELab", 9: "ICCLab", 10: "ITULab"}
MINISWHITE = 0
GREY_PHOTOMETRIC = (MINISWHITE, 1)   # and MINISBLACK
PHOTOMETRIC_PALETTE = 3


def _series_layout(series, path):
    """(number of frames, axes of one frame) of a TIFF series."""
    axes, shape = series.axes, series.shape
    space = NOT_RGB.get(int(series.keyframe.photometric))
    if space:
        raise PipelineError(f"{path}: TIFF of {space} colours, which are not read; save it as "
                            "RGB or grey")
    # Two samples are grey+alpha only where the file says so; else they are two channels.
    colour = (2, 3, 4) if tuple(series.keyframe.extrasamples) in ALPHA else (3, 4)
    if axes.endswith("YXS") and shape[-1] in colour:
        frame_axes = 3
    elif axes.endswith("SYX") and shape[-3] in colour:
        frame_axes = 3
    elif axes.endswith("YX"):
        frame_axes = 2
    elif axes[-3:-1] == "YX" and shape[-1] == 1:
        frame_axes = 3      # one sample on an axis of its own, as tifffile saves a[..., None]
    else:
        raise PipelineError(f"{path}: TIFF axes {axes} {shape} are not planes of Y x X pixels")
    samples = shape[-1] if axes.endswith("YXS") else shape[-3] if axes.endswith("SYX") else 1
    if samples in (3, 4) and int(series.keyframe.photometric) in GREY_PHOTOMETRIC:
        # Grey channels (DIC, fluorescence), not RGB (and alpha): read as colour they would be
        # mixed into one grey, a fourth dropped.
        raise PipelineError(f"{path}: TIFF of {samples} grey channels, which are not read as "
                            "one image; save them as planes of a stack (a frame each) or as RGB")
    return int(np.prod(shape[:-frame_axes], dtype=np.int64)), axes[-frame_axes:]


def first_series(tif, path):
    """(the series of the file's frames, their number, the axes of one frame): the first
    series, or the series of a file written a frame at a time joined into one."""
    try:
        with tags_past_end(path):
            found = tif.series
    except PipelineError:
        raise
    except Exception as err:    # tifffile raises many kinds on a damaged file
        raise PipelineError(f"cannot read TIFF {path}: {type(err).__name__}: {err}") from None
    if not found:
        raise PipelineError(f"cannot read TIFF {path}: it holds no image")
    parts = _without_previews(_stack_parts(tif, path))
    frames = ((parts[0], *_series_layout(parts[0], path)) if len(parts) == 1
              else _joined(parts, path))
    _refuse_cut(tif, path, frames[1])
    return frames


def _refuse_cut(tif, path, count):
    """Refuse a TIFF cut short (a copy or save that did not finish), which tifffile reads as
    the images before the cut: a stack of planes as its first plane alone, named as a file
    of one plane, with a line in the log at most."""
    cut = _cut_chain(tif) or _missing_imagej_planes(tif, count)
    if cut:
        raise _cut_short(path, cut)


def refuse_cut_plane(tif, page, path):
    """Refuse a plane whose data runs past the end of the file: read row by row, a whole
    slide cut short would fail only once prediction reached the cut, after hours."""
    ends = np.add(np.asarray(page.dataoffsets, np.uint64), page.databytecounts)
    if len(ends) and int(ends.max()) > tif.filehandle.size:
        raise _cut_short(path, f"its pixels run to byte {int(ends.max())}, the file ends at "
                               f"{tif.filehandle.size}")


def _cut_short(path, what):
    return PipelineError(f"TIFF {path} is cut short ({what}): a copy or save that did not "
                         "finish? Copy or save it again")


def _cut_chain(tif):
    """What is wrong with the chain of the file's images, each header pointing to the next:
    None where the last one ends it (points to 0), as a whole file's does."""
    fmt = tif.tiff
    try:
        tif.filehandle.seek(tif.pages.next_page_offset)
        data = tif.filehandle.read(fmt.offsetsize)
    except (OSError, TypeError, ValueError) as err:
        return f"the header of its image {len(tif.pages)} cannot be read: {err}"
    if len(data) < fmt.offsetsize:
        return f"the header of its image {len(tif.pages)} runs past its end"
    if struct.unpack(fmt.offsetformat, data)[0]:
        return f"the header of its image {len(tif.pages) + 1} lies past its end or is damaged"
    return None


def _missing_imagej_planes(tif, count):
    """The planes an ImageJ file's header lists that tifffile found no data for (a file of
    over 4 GiB has one image header for all its planes, its planes stored one after another
    behind it, so a cut leaves the chain whole). One image that carries a stack's header (its
    first plane saved by tiffsplit or with the stack's tags) lists planes it never held: its
    file ends where its pixels do, or holds its header after them."""
    try:
        listed = int((tif.imagej_metadata or {}).get("images", 1)) if tif.is_imagej else 1
    except (TypeError, ValueError):
        return None
    if listed <= count or len(tif.pages) != 1:     # several headers: _cut_chain's to judge
        return None
    page, size = tif.pages.first, tif.filehandle.size
    end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts)), default=0)
    if end > size or (size > end and page.offset < end):
        return f"its ImageJ header lists {listed} planes, it holds {count}"
    return None


def _stack_parts(tif, path):
    """The series that hold a file's frames. Pyramid levels are no series of their own; a
    reduced image that is no level (a thumbnail) is skipped, even where it comes first. A
    format's further series are read only where they differ from the first (a slide's label
    or macro picture): series alike are positions or wells, which are not one frame."""
    first = tif.series[0]
    if first.kind not in STACK_KINDS:
        side = _plane_side(first)
        alike = [s for s in tif.series[1:] if side is not None and _plane_side(s) == side
                 and s.dtype == first.dtype and not s.keyframe.is_reduced]
        if alike:
            raise _positions(path, len(alike) + 1, side)
        return tif.series[:1]
    if first.kind == "generic" and tif.is_ome:
        # a file of a multi-file OME-TIFF (open_tiff): its planes come as one generic series,
        # so the positions it holds are counted in its OME-XML
        side = _plane_side(first)
        here = _ome_images_here(tif, side) if side is not None else 0
        if here > 1:
            raise _positions(path, here, side)
    return [s for s in tif.series if not s.keyframe.is_reduced] or tif.series[:1]


def _positions(path, count, side):
    height, width = side
    return PipelineError(f"{path} holds {count} images of {width}x{height} pixels (positions "
                         "or wells of one acquisition), which are not read as one: save each "
                         "as a file of its own")


def _ome_images_here(tif, side):
    """How many OME Images of planes of `side` (height, width) have pixels in this file: a
    TiffData without a UUID, or with this file's, is this file's."""
    import xml.etree.ElementTree as ET
    try:
        root = ET.fromstring(tif.ome_metadata)
    except (ET.ParseError, TypeError, ValueError):
        return 0
    tag = lambda e: e.tag.rsplit("}", 1)[-1]        # noqa: E731
    own = root.attrib.get("UUID")
    count = 0
    for pixels in (p for image in root if tag(image) == "Image" for p in image
                   if tag(p) == "Pixels"):
        if (pixels.get("SizeY"), pixels.get("SizeX")) != tuple(map(str, side)):
            continue
        for data in (d for d in pixels if tag(d) == "TiffData"):
            uuids = [u for u in data if tag(u) == "UUID"]
            if not uuids or any(u.text == own or u.get("FileName") == tif.filename
                                for u in uuids):
                count += 1
                break
    return count


def _plane_side(series):
    """(height, width) of a series' planes; None for a series without Y and X axes."""
    if "Y" not in series.axes or "X" not in series.axes:
        return None
    return series.shape[series.axes.index("Y")], series.shape[series.axes.index("X")]


def _without_previews(parts):
    """The parts but those smaller on both sides than the largest that come before or after
    every other in the file: a preview or overlay page not flagged as reduced, which the
    file's main image was read without before. A smaller plane between planes stays, so a
    stack that holds one is refused (_joined) rather than read without it and renumbered."""
    sides = [_plane_side(s) for s in parts]
    if len(parts) == 1 or None in sides:       # _series_layout refuses a part without Y, X
        return parts
    height, width = max(sides, key=lambda hw: hw[0] * hw[1])
    order = sorted(range(len(parts)), key=lambda i: _file_order(parts[i].keyframe))
    small = [sides[i][0] < height and sides[i][1] < width for i in order]
    first = small.index(False)
    last = len(small) - small[::-1].index(False)
    return [parts[i] for i in sorted(order[first:last])]


def _joined(parts, path):
    """Series of alike frames, a page each, as one series of their pages in file order (a plain
    TIFF's series group pages by coding, so they may interleave); anything else is refused."""
    import tifffile
    layouts = [(*_series_layout(s, path), s.shape, s.dtype) for s in parts]
    frames = {(axes, shape[-len(axes):], dtype) for _, axes, shape, dtype in layouts}
    # the joined series reads frame k as its page k, so each frame must be one page
    if len(frames) > 1 or any(len(s) != count for s, (count, *_) in zip(parts, layouts)):
        counts = Counter(f"{axes} {shape} {dtype}" for _, axes, shape, dtype in layouts)
        held = ", ".join((f"{n} x " if n > 1 else "") + image for image, n in counts.items())
        raise PipelineError(f"{path} holds {len(parts)} images that are not planes of one stack "
                            f"({held}); save each image, or each stack of planes alike, as a "
                            "file of its own")
    (axes, shape, dtype), = frames
    pages = sorted((page for s in parts for page in s), key=_file_order)
    return (tifffile.TiffPageSeries(pages, (len(pages), *shape), dtype, "I" + axes,
                                    parent=parts[0].parent, kind=parts[0].kind), len(pages), axes)


def _file_order(page):
    # a page's index is a number, or (page, n) for the n-th SubIFD of a page
    return np.ravel(page.index).tolist()


# The stack read last, kept open between reads of its frames: opening a TIFF parses its pages,
# every one of them where the file was written a frame at a time, so reopening it for each
# frame cost time growing with the square of the frame count.
_kept_stack = {}


def _open_frames(path):
    """(open TiffFile, the series of its frames, their number, the axes of one frame). A
    file of several frames stays open for the next call, until another file is read or it
    changes on disk; the caller closes a single-frame file."""
    stat = Path(path).stat()
    key = (str(Path(path).resolve()), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    if _kept_stack.get("key") == key:
        return _kept_stack["frames"]
    _close_kept_stack()     # another file, or this one changed: Windows would keep it locked
    tif = open_tiff(path)
    try:
        frames = (tif, *first_series(tif, path))
    except BaseException:
        tif.close()
        raise
    if frames[2] > 1:
        _kept_stack.update(key=key, frames=frames)
    return frames


@atexit.register
def _close_kept_stack():
    if "frames" in _kept_stack:
        _kept_stack.pop("frames")[0].close()
        _kept_stack.pop("key")


def tiff_frame_count(path):
    tif, _, count, _ = _open_frames(path)
    if count == 1:
        tif.close()
    return count


def _tiff_plane(path, index):
    """(frame `index` of a TIFF as stored, samples last; the file's number of frames; the
    frame's tifffile page, for its tags)."""
    tif, series, count, frame_axes = _open_frames(path)
    try:
        if index >= count:
            raise PipelineError(f"{path} holds {count} planes; there is no plane {index}")
        img = series.asarray() if count == 1 else _stack_plane(tif, series, count, index,
                                                                    len(frame_axes))
        key = _plane_keyframe(series, count, index)
        if int(key.photometric) == PHOTOMETRIC_PALETTE:
            key.colormap        # a tag read when first asked for: ask while the file is open
    except PipelineError:
        raise
    except Exception as err:    # tifffile and its codecs raise many kinds
        where = f" (plane {index} of {count})" if count > 1 else ""
        raise PipelineError(f"cannot read TIFF {path}{where}: {type(err).__name__}: "
                            f"{err}") from None
    finally:
        if count == 1:
            tif.close()
    img = np.asarray(img)
    if img.ndim != len(frame_axes):
        img = img.reshape(img.shape[-len(frame_axes):])
    if frame_axes == "SYX":
        img = np.moveaxis(img, 0, -1)
    elif frame_axes[:2] == "YX" and img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.dtype.kind == "c" or img.size == 0:
        raise PipelineError(f"cannot read TIFF {path}: {img.dtype} pixels of shape {img.shape}")
    return img, count, key


def _stack_plane(tif, series, count, index, frame_ndim):
    """Plane `index` of a stack as stored: through its page, or, where the file holds no page
    of its own for it but stores the planes one after another (ImageJ's files of over
    4 GiB, tifffile's truncate=True: one IFD for them all), read from where it lies."""
    if frame_page(series, count, index) is not None or series.dataoffset is None:
        return tif.asarray(series=series, key=index)
    size = int(np.prod(series.shape, dtype=np.int64)) // count
    tif.filehandle.seek(series.dataoffset + index * size * series.dtype.itemsize)
    plane = tif.filehandle.read_array(series.dtype.newbyteorder(tif.byteorder), size)
    return plane.reshape(series.shape[-frame_ndim:])


def frame_page(series, count, index):
    """The tifffile page of frame `index` of a series of `count` frames, where each frame is
    a page of its own; else None (a frame of several pages, or a page tifffile cannot find)."""
    pages = series.pages
    return pages[index] if len(pages) == count and index < count else None


def _plane_keyframe(series, count, index):
    """The page whose tags describe frame `index`: its own page's, as whole_slide.TiffRows
    reads it (a plain TIFF's pages joined into one series may differ in photometric or bits
    per sample), else the series'."""
    page = frame_page(series, count, index)
    return series.keyframe if page is None else page.keyframe


def _read_tiff(path, index):
    """A TIFF frame as an image (tiff_image)."""
    img, _, key = _tiff_plane(path, index)
    return np.ascontiguousarray(tiff_image(img, key))


def tiff_image(img, key):
    """Stored samples of a TIFF plane (or rows of one) as an image: as shown
    (tiff_pixels_as_shown), 1-bit pixels as 0 and 255, 8-bit pixels used as they are."""
    img = tiff_pixels_as_shown(img, key)
    return img.astype(np.uint8) * 255 if img.dtype == np.bool_ else img


def tiff_image_dtype(dtype):
    """The pixel type of tiff_image of stored pixels of type dtype."""
    return np.dtype(np.uint8) if np.dtype(dtype) == np.bool_ else np.dtype(dtype)


def tiff_pixels_as_shown(img, key):
    """Stored samples of a TIFF plane (or rows of one) whose tifffile page is key, as an
    image: alpha dropped, and a MinIsWhite grey plane (0 stored for white, as scanners and
    some older microscope software write it) turned so that higher is brighter, as viewers
    and cv2 show it and as every other format stores grey: read as stored, its objects would
    be the inverse of the same picture saved as PNG."""
    if img.ndim == 3:
        img = img[:, :, 0] if img.shape[2] == 2 else img[:, :, :3]
    if int(key.photometric) == PHOTOMETRIC_PALETTE and img.ndim == 2:
        return palette_colours(img, key.colormap)
    if int(key.photometric) != MINISWHITE:
        return img
    if img.dtype == np.bool_:
        return ~img
    if img.dtype.kind == "u":       # 12 bits stored in 16 turn within 0..4095
        top = min((1 << int(key.bitspersample)) - 1, int(np.iinfo(img.dtype).max))
        return (top - np.minimum(img, top)).astype(img.dtype)
    if img.dtype.kind == "i":
        return ~img                 # -1 - v: the type's range onto itself, reversed
    return -img


def palette_colours(indices, colormap):
    """The grey levels a grey palette plane shows, as viewers and cv2 show it (and the same
    picture saved as PNG gives): such a palette may run inverted, so its indices are not the
    picture. A palette of colours (an ImageJ LUT such as Fire) is how a microscope's values
    were displayed, not other values: those planes keep their indices, as ImageJ measures
    them. 8-bit for 8-bit indices, as cv2 reads them: libtiff keeps the high byte of each
    16-bit entry (PIL writes v * 256, tifffile v * 257), and takes a colormap of values under
    256 as 8-bit already."""
    colours = np.asarray(colormap, np.float64).reshape(3, -1)
    if not (colours == colours[0]).all():
        return indices
    grey = colours[0]
    if indices.dtype.itemsize == 1 or indices.dtype == np.bool_:
        grey = (grey if grey.max() < 256 else grey // 256).astype(np.uint8)
    else:
        grey = grey.astype(np.uint16)
    return grey[np.minimum(indices.astype(np.intp), len(grey) - 1)]


def pixel_size_um(source):
    """The side in micrometres of a TIFF's square pixels (pixel_sizes_um); None where none is
    recorded, and where the pixels are not square: no one size measures them."""
    return square_side(pixel_sizes_um(source))


def square_side(sizes):
    """The side of a pixel of (width, height) sizes where it is square, else None."""
    if sizes is None or not np.isclose(*sizes, rtol=1e-3, atol=0):
        return None
    return sizes[0]


def pixel_sizes_um(source):
    """(width, height) of a pixel in micrometres as a TIFF records them (OME PhysicalSizeX and
    Y, or ImageJ's X and Y resolution and unit; the height as the width where only that is
    given); None where none is recorded or the unit is not a length."""
    return tiff_scale(source).sizes


@dataclass(frozen=True)
class TiffScale:
    """What a TIFF says of its scale, read in one opening. sizes: pixel_sizes_um. plain: the
    (width, height) in micrometres that the resolution of a TIFF without OME or ImageJ
    metadata gives, in pixels per inch or centimetre; not taken for a pixel size, as image
    programs write a resolution (72 dpi, 300 dpi) to any picture, while a microscope's
    software records its scale in OME or ImageJ metadata. unknown_unit: the unit of a pixel
    size recorded in a unit not read (the size is then not read either)."""
    sizes: tuple = None
    plain: tuple = None
    unknown_unit: str = None


def tiff_scale(source):
    """The TiffScale of an image file: empty for files other than TIFF."""
    path = source.path if isinstance(source, StackPlane) else Path(source)
    if path.suffix.lower() not in TIFF_EXTS:
        return TiffScale()
    with open_tiff(path) as tif:
        if tif.is_ome:
            return _ome_scale(tif.ome_metadata)
        page = tif.pages[0]
        if tif.is_imagej:
            unit = str((tif.imagej_metadata or {}).get("unit", ""))
            scale = _micrometres(unit)
            return TiffScale(sizes=_resolution_sizes(page, scale),
                             unknown_unit=_unknown(unit, scale, "XResolution" in page.tags))
        return TiffScale(plain=_resolution_sizes(page,
                                                 RESOLUTION_UNITS.get(int(page.resolutionunit))))


# Micrometres per unit of TIFF's ResolutionUnit: 2 inch (also where the tag is missing), 3
# centimetre; 1 is no unit.
RESOLUTION_UNITS = {2: 25400.0, 3: 1e4}

# Units that say a size is not one of length (ImageJ writes "pixel" for an image of no scale;
# OME allows "pixel" and "reference frame").
NO_LENGTH = ("", "pixel", "pixels", "reference frame")


def _unknown(unit, scale, recorded):
    """The unit of a size recorded (recorded) in a unit of length not read, else None."""
    known = scale is not None or str(unit).strip().lower() in NO_LENGTH
    return None if known or not recorded else str(unit)


def _ome_scale(xml):
    import xml.etree.ElementTree as ET
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return TiffScale()
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return TiffScale()
    units = {axis: pixels.attrib.get(f"PhysicalSize{axis}Unit", "µm") for axis in "XY"}
    unknown = [_unknown(units[axis], _micrometres(units[axis]),
                        f"PhysicalSize{axis}" in pixels.attrib) for axis in "XY"]

    def side(axis, default):
        if f"PhysicalSize{axis}" not in pixels.attrib:
            return default
        return _positive(pixels.attrib[f"PhysicalSize{axis}"], _micrometres(units[axis]))

    width = side("X", None)
    height = side("Y", width)
    sizes = None if width is None or height is None else (width, height)
    return TiffScale(sizes=sizes, unknown_unit=next((u for u in unknown if u), None))


def _resolution_sizes(page, scale):
    """A page's XResolution and YResolution, in pixels per unit, as sizes in micrometres for
    `scale` micrometres per unit; None without a unit or XResolution."""
    if "XResolution" not in page.tags or scale is None:
        return None

    def side(tag):
        numerator, denominator = page.tags[tag].value
        return _positive(denominator / numerator if numerator else 0, scale)

    width = side("XResolution")
    height = side("YResolution") if "YResolution" in page.tags else width
    return None if width is None or height is None else (width, height)


def _micrometres(unit):
    """Micrometres per unit; µ may come as the micro sign, the Greek mu or ImageJ's escape."""
    text = str(unit).strip().lower()
    for mu in ("\\u00b5", "\u03bc"):
        text = text.replace(mu, "\u00b5")
    return MICROMETRES.get(text)


def _positive(value, scale):
    try:
        size = float(value) * scale
    except (TypeError, ValueError):
        return None
    return size if np.isfinite(size) and size > 0 else None


# ---------------------------------------------------------------- reading images

# Image formats a microscope or a viewer may leave beside the images, which are not read: a
# folder holding them is listed without them, and the scripts say so.
UNREAD_IMAGE_EXTS = (".gif", ".webp", ".jp2", ".j2k", ".heic", ".heif", ".avif", ".czi",
                     ".nd2", ".lif", ".lsm", ".ims", ".vsi", ".pgm", ".ppm")


def files_in(folder):
    """A folder's files, sorted; none where there is no such folder or it cannot be listed
    (what must be read is read through list_images and find_label, which say so)."""
    try:
        return sorted(p for p in Path(folder).iterdir() if p.is_file())
    except OSError:
        return []


def unread_images(folder):
    """The names of a folder's files in an image format the pipeline does not read."""
    return [p.name for p in files_in(folder)
            if p.suffix.lower() in UNREAD_IMAGE_EXTS and not p.name.startswith(".")]


def note_hidden_images(folder):
    """Say which image files list_images skips for a name that starts with '.', as a file
    browser hides them: a frame renamed so by mistake would be left out unsaid. What macOS
    and this pipeline leave (._x.tif, temporary files) is not the user's and goes unsaid."""
    hidden = [p.name for p in files_in(folder) if p.name.startswith(".")
              and p.suffix.lower() in IMAGE_EXTS and not SYSTEM_FILES.fullmatch(p.name)
              and temp_target(p.name) is None]
    if hidden:
        print(f"note: {count_of(len(hidden), 'hidden image file')} in {folder} "
              f"{agreeing(len(hidden), 'is', 'are')} skipped, as every name "
              f"that starts with '.' is: {some_names(hidden)}; rename them to include them")


def list_images(src, page=None, frames=None):
    """Map frame name to source for every image in a folder, sorted by name; a single image
    file gives itself. A source is the file's path, or a StackPlane for each plane of a TIFF
    stack, named <stem>_p<k> (k from 0, zero-padded), or only plane `page` of every stack,
    named <stem>. Hidden files are skipped. With `frames`, a collection of frame names, only
    the files that may hold them are opened (others beside them are not read at all)."""
    src = Path(src)
    if src.is_dir():
        paths = [p for p in sorted(src.iterdir())
                 if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS]
        if frames is not None:
            # a frame named as a file is that file; else it may be a plane of <stem>_p<k>
            held = {frame_stem(p.name) for p in paths}
            stems = {name if name in held else PLANE_SUFFIX.sub("", name) for name in frames}
            paths = [p for p in paths if frame_stem(p.name) in stems]
    elif os.path.lexists(src):      # a FIFO or a broken link too: check_regular_file says so
        if src.suffix.lower() not in IMAGE_EXTS:
            raise PipelineError(f"{src} is not an image file ({', '.join(IMAGE_EXTS)})")
        paths = [src]
    else:
        what = "image" if src.suffix.lower() in IMAGE_EXTS else "image folder"
        raise PipelineError(f"{what} {src} does not exist")
    for path in paths:
        # A frame's name is a line of train.txt and test.txt and a cell of the CSV files.
        if control_character(path.name):
            raise PipelineError(f"image file name {path.name!r} in {path.parent} holds the "
                                f"control character {control_character(path.name)!r}; "
                                "rename the file")
        if any("\udc80" <= c <= "\udcff" for c in path.name):
            raise PipelineError(f"image file name {path.name!r} in {path.parent} is not UTF-8 "
                                "(copied from an older system or an archive); rename the file")
        check_regular_file(path)
    found, composed = {}, {}
    for path in paths:
        for name, source in _frames_of(path, page):
            if nfc(name) in composed:
                other = composed[nfc(name)]
                how = "" if other == name else (" (they differ only in how their accented "
                                                "letters are encoded; rename one)")
                raise PipelineError(f"two images share the name {name!r} in {src}: "
                                    f"{found[other].name} and {source.name}{how}")
            found[name], composed[nfc(name)] = source, name
    return found


# What an entry named like an image may be instead of a file. Read, a FIFO or a device waits
# for a writer and the run hangs; the others fail only after the frames before them have been
# predicted, and that work is thrown away.
NOT_FILES = ((S_ISDIR, "a folder"), (S_ISFIFO, "a FIFO"), (S_ISSOCK, "a socket"),
             (S_ISCHR, "a character device"), (S_ISBLK, "a block device"))


def check_regular_file(path):
    """Refuse an image entry that is no regular file or link to one."""
    what = _not_a_file(path)
    if what:
        raise PipelineError(f"{path.name} in {path.parent} is not a regular file ({what}); "
                            "images must be files or links to files")


def _not_a_file(path):
    """What an entry is where it is no regular file or link to one, else None: from its mode
    alone, so that a FIFO is never opened."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic link in a loop"
        if err.errno in (errno.ENOENT, errno.ENOTDIR) and os.path.islink(path):
            return "a broken symbolic link"
        return err.strerror or str(err)
    if S_ISREG(mode):
        return None
    return next((kind for is_kind, kind in NOT_FILES if is_kind(mode)), "of no known kind")


PLANE_SUFFIX = re.compile(r"_p\d+$")     # of a stack's frame names, <stem>_p<k>


def frame_stem(file_name):
    """The frame name of an image file: its name without the extension, and x.ome.tif's
    without .ome.tif."""
    stem, suffix = Path(file_name).stem, Path(file_name).suffix.lower()
    return stem[:-4] if suffix in TIFF_EXTS and stem.lower().endswith(".ome") else stem


PNG_SIGNATURE, JPEG_START = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"

# The first bytes of the formats read. Files are read by their suffix: cv2 decodes a TIFF named
# .png too, but as its first plane alone and without its tags (MinIsWhite, palette).
MAGIC = ((b"II*\0", "TIFF"), (b"MM\0*", "TIFF"), (b"II+\0", "TIFF"), (b"MM\0+", "TIFF"),
         (PNG_SIGNATURE[:4], "PNG"), (JPEG_START, "JPEG"), (b"BM", "BMP"))
SUFFIX_OF_FORMAT = {"TIFF": ".tif", "PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp"}


def check_format_of_name(path):
    """Refuse an image file of TIFF data under another suffix, or of other data under a TIFF
    suffix, naming what it holds and the name to give it."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return          # reading its pixels says why
    check_format_of_bytes(path, head)


def check_format_of_bytes(path, head):
    """check_format_of_name for a file whose first bytes (head, 4 or more) are read."""
    kind = next((k for magic, k in MAGIC if head.startswith(magic)), None)
    if kind is None or (kind == "TIFF") == (path.suffix.lower() in TIFF_EXTS):
        return
    raise PipelineError(f"{path} holds {kind} data whatever its name says; rename it "
                        f"{frame_stem(path.name)}{SUFFIX_OF_FORMAT[kind]}")


def _frames_of(path, page):
    """(name, source) of each frame an image file holds; x.ome.tif is named x."""
    check_format_of_name(path)
    stem = frame_stem(path.name)
    count = tiff_frame_count(path) if path.suffix.lower() in TIFF_EXTS else 1
    # a file of one plane too: else --page 5 would predict its plane 0 as if it were plane 5
    if page is not None and page >= count:
        planes = "1 plane" if count == 1 else f"{count} planes (0..{count - 1})"
        raise PipelineError(f"{path} holds {planes}; there is no plane {page} (--page)")
    if count == 1:
        return [(stem, path)]
    if page is not None:
        return [(stem, StackPlane(path, page))]
    return [(plane_name(stem, k, count), StackPlane(path, k)) for k in range(count)]


def plane_name(stem, index, count):
    """The frame name of plane `index` of a stack of `count`: zero-padded, so the names sort."""
    return f"{stem}_p{index:0{len(str(count - 1))}d}"


def find_label(label_dir, name):
    """The label file of frame `name`, or None where it has none. Two labels for one frame are
    refused, and so is a JPEG one by name: its compression changes the class values."""
    found = files_named(label_dir, name, LABEL_EXTS)
    if len(found) > 1:
        raise PipelineError(f"{name} has {len(found)} labels in {label_dir}: "
                            f"{', '.join(p.name for p in found)}; keep one")
    if found:
        return found[0]
    lossy = files_named(label_dir, name, LOSSY_EXTS)
    if lossy:
        raise PipelineError(f"found {lossy[0]}; labels must be lossless: .png, .tif or .npy")
    other = files_named(label_dir, name, OTHER_LABEL_EXTS)
    if other:
        raise PipelineError(f"found {other[0]}, a label of a kind not read; save it as .png, "
                            ".tif or .npy")
    for path in (Path(label_dir) / f"{name}{ext}" for ext in LABEL_EXTS):
        kind = _not_a_file(path) if os.path.lexists(path) else None
        if kind:
            raise PipelineError(f"label {path} is not a regular file ({kind}); make it the "
                                f"label file of {name}, or remove it")
    return None


def find_frame_label(label_dir, name, source):
    """find_label of a frame; a plane that --page named as its file also by its name in the
    stack, <name>_p<k>, under which every plane is labelled (README)."""
    found = find_label(label_dir, name)
    if found is None and isinstance(source, StackPlane) and name == frame_stem(source.path.name):
        found = find_label(label_dir,
                           plane_name(name, source.index, tiff_frame_count(source.path)))
    return found


def unmatched_labels(label_dir, used):
    """The label files in label_dir that find_frame_label found for no frame (used: the label
    paths it found, None for a frame without one), sorted: a name mistyped, or an image gone
    or of a format not read. Hidden files and files of other kinds are passed over. By file,
    not by name, as find_label matches names in either Unicode form and in any case."""
    used = {folder_identity(p) for p in used if p is not None}
    return [p for p in files_in(label_dir) if not p.name.startswith(".")
            and p.suffix.lower() in LABEL_EXTS and folder_identity(p) not in used]


def files_named(folder, name, exts):
    """The files of a folder named `name` plus one of exts, in the order of exts. Suffixes
    match in any case, as images are listed (cameras and Windows tools write NAME.TIF), and
    names in either Unicode form (files from a Mac often come in NFD, most tools write NFC)."""
    listing = _listing(folder)
    stem = nfc(name)
    found = {}
    # The spellings themselves too: a file system that ignores case (macOS, Windows) finds
    # cell1.png for frame Cell1, as it shows the user.
    spelled = (Path(folder) / f"{name}{ext}" for ext in exts)
    listed = (Path(folder) / n for ext in exts for n in listing.get((stem, ext), ()))
    for path in (*listed, *(p for p in spelled if p.is_file())):
        try:
            stat = path.stat()
        except FileNotFoundError:       # removed since the folder was listed: no label
            continue
        # Two names of one file (hard links) are one label, not two.
        found.setdefault((stat.st_dev, stat.st_ino), path)
    return list(found.values())


# Folders as listed by _listing, kept between calls: find_label runs once per image, and a
# listing per call cost time growing with the square of the number of labels. A listing is
# used again only while the folder's mtime is unchanged, and kept only where that mtime is
# older than the listing by RACY_NS: a file created in the same tick of a coarse clock
# (FAT keeps 2 s, older Linux kernels a few ms) would leave the mtime as it was.
_listings = {}
RACY_NS = 3 * 10**9


def _listing(folder):
    """{(NFC stem, lower-case suffix): file names, sorted} of a folder; empty where there is
    no such folder or it cannot be listed."""
    listed_at = time.time_ns()
    try:
        stat = os.stat(folder)
        folder_id = (stat.st_dev, stat.st_ino)
        if folder_id in _listings and _listings[folder_id][0] == stat.st_mtime_ns:
            return _listings[folder_id][1]
        names = sorted(e.name for e in os.scandir(folder) if e.is_file())
    except OSError:     # none, or one that can be entered but not listed: the probes find
        return {}
    listing = {}
    for n in names:
        stem, suffix = os.path.splitext(n)
        listing.setdefault((nfc(stem), suffix.lower()), []).append(n)
    if listed_at - stat.st_mtime_ns > RACY_NS:
        _listings[folder_id] = (stat.st_mtime_ns, listing)
    return listing


def read_raw_image(source):
    """The pixels of an image file or stack plane as viewers show them (EXIF turns, MinIsWhite
    grey turned to brighter-higher), in their own type: HxW or HxWx3 RGB (alpha dropped)."""
    if isinstance(source, StackPlane):
        return _read_tiff(source.path, source.index)
    path = Path(source)
    if path.suffix.lower() in TIFF_EXTS:
        return _read_tiff(path, 0)
    return _decoded(_file_bytes(path, "image"), f"image {path}")


def read_image(source, intensity=DEFAULT_INTENSITY):
    """An image file or stack plane as the pipeline sees it: uint8, HxW (grey) or HxWx3 (RGB)."""
    return to_uint8(read_raw_image(source), intensity, f"image {source}")


def decode_image(data, what, intensity=DEFAULT_INTENSITY, raw=False):
    """Decode the bytes of a PNG or JPEG file exactly as read_image reads such files."""
    img = _decoded(bytes(data), what)
    return img if raw else to_uint8(img, intensity, what)


def _file_bytes(path, kind):
    """A file's bytes, read once for every step that needs them (pixels, tags, header)."""
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise PipelineError(f"cannot read {kind} {path}: {err.strerror or err}") from None


def _decoded(data, what):
    """A PNG, JPEG or other cv2 image file's bytes as its pixels are shown (EXIF turn), RGB;
    a grey+alpha PNG, which cv2 gives as four channels, grey (as a grey+alpha TIFF is)."""
    img = _grey_of_grey_alpha(_imdecode(data, what), data)
    return as_shown(_channels_as_rgb(img, what), exif_orientation(data))


def _grey_of_grey_alpha(img, data):
    """The grey of a grey+alpha PNG, which cv2 gives as four channels, grey in the first
    three; any other image as it is."""
    grey_alpha = (png_header(data) or (None,) * 4)[3] == PNG_GREY_ALPHA
    return img[:, :, 0] if grey_alpha and img.ndim == 3 else img


# OpenCV's own log line for a file it cannot decode (a BMP cut short: '[ERROR:0@0.05] global
# loadsave.cpp ... Unexpected end of input stream') would come bare before the one error
# line that says so.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

# Lines by which libpng and libjpeg report a damaged file. A JPEG decoded despite one has
# pixels the decoder made up (grey or shifted blocks), so it is refused like one that fails.
DAMAGE_MESSAGES = ("libpng error", "Corrupt JPEG data", "Premature end of JPEG file")


# Why an image file gave no pixels, where its bytes say no more (none at all, or no format).
NOT_AN_IMAGE = "empty, truncated or not an image file"


def _reports_damage(line):
    return line.startswith(DAMAGE_MESSAGES)


def _imdecode(data, what):
    """cv2's pixels of a file's bytes, as stored; one error line naming the file, with what
    its decoder said (printed bare otherwise), where they are unreadable or damaged."""
    img = None
    with caught_native_stderr(_reports_damage) as damage:
        if data:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or damage:
        why = (NOT_AN_IMAGE if img is None else
               "the file is damaged and its decoder made up some of its pixels")
        said = f" ({'; '.join(damage)})" if damage else ""
        raise PipelineError(f"cannot read {what}: {why}{said}")
    return img


def _channels_as_rgb(img, what):
    if img.ndim == 3:
        if img.shape[2] == 1:
            return img[:, :, 0]
        if img.shape[2] == 4:
            return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        if img.shape[2] == 3:
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        raise PipelineError(f"{what} has {img.shape[2]} channels; grey, RGB or RGBA expected")
    return img


# ---------------------------------------------------------------- EXIF orientation
#
# A JPEG or PNG may hold its pixels turned and record the turn in its EXIF Orientation tag
# (phones on an eyepiece, some camera adapters). Viewers and LabelMe show such an image turned
# as the tag says, and annotations are drawn on what they show; cv2's IMREAD_UNCHANGED, which
# keeps 16-bit pixels and alpha, ignores the tag. So images and labels that are not TIFF are
# turned here as viewers turn them, and masks come out as the image is shown. TIFF's own
# Orientation tag is left alone, as tifffile and ImageJ leave it.
EXIF_ORIENTATION = 0x0112
# Each tag value as the turn of geometry.dihedral that shows the stored array as viewers do
# (2-4 mirror or half-turn, 5 and 7 swap rows and columns, 6 and 8 turn a quarter).
DIHEDRAL_OF_ORIENTATION = {2: 4, 3: 2, 4: 6, 5: 7, 6: 3, 7: 5, 8: 1}

# Only a file holding one of these bytes has EXIF (JPEG's APP1 segment, PNG's eXIf chunk, the
# text chunk ImageMagick writes into PNG): the others, the patches the pipeline writes among
# them, are not opened again by PIL, which decodes a whole PNG to look for its tags.
EXIF_MARKERS = (b"Exif", b"eXIf", b"Raw profile type exif")


def exif_orientation(source):
    """The EXIF Orientation tag (1-8) of an image file (path) or its bytes, read as LabelMe
    reads it to show an image; 1 where it has none or it cannot be parsed (cv2 has read the
    pixels already: a bad tag is no reason to refuse them)."""
    from PIL import UnidentifiedImageError
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        if not any(m in data for m in EXIF_MARKERS):
            return 1
        with warnings.catch_warnings(), pil_open(io.BytesIO(data)) as img:
            warnings.simplefilter("ignore")         # a damaged tag would warn at every read
            value = img.getexif().get(EXIF_ORIENTATION, 1)    # a PNG reads all its chunks
            # LabelMe (PIL's _getexif) turns only an image with EXIF, as PIL reads it: an
            # XMP tiff:Orientation then stands in for a missing EXIF one, alone it does not,
            # and neither does a TIFF's own tag.
            if "exif" not in img.info and "Raw profile type exif" not in img.info:
                return 1
        return value if value in DIHEDRAL_OF_ORIENTATION else 1
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, TypeError, KeyError):
        return 1


def pil_open(source):
    """PIL's reader of an image file, for what cv2 does not give (tags, label indices). The
    files are the user's own, and PIL's guard against decompression bombs refuses a slide."""
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None
    return Image.open(source)


def as_shown(img, orientation):
    """The stored pixels turned as an EXIF Orientation value tells viewers to show them."""
    turn = DIHEDRAL_OF_ORIENTATION.get(orientation)
    return img if turn is None else dihedral(img, turn)


def to_color_mode(img, color_mode):
    """Convert an image to the pipeline's colour mode: 'grey' (HxW) or 'rgb' (HxWx3)."""
    if color_mode == "grey":
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    if color_mode == "rgb":
        return img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)
    raise ValueError(f"unknown colour mode {color_mode!r}; choose one of {COLOR_MODES}")


# ---------------------------------------------------------------- labels

def read_label(path):
    """A class-index label as uint8: PNG (grey of 1 to 16 bits, its values as stored; palette
    PNGs, as LabelMe exports, give their indices, grey+alpha ones their grey), a TIFF of one
    plane (through tifffile), or a numeric .npy."""
    label = _label_plane(path)
    if label.min() < 0 or label.max() > 255:
        raise PipelineError(f"label {path} holds values outside 0..255 ({int(label.min())}.."
                            f"{int(label.max())}){instance_hint(path, np.unique(label))}")
    return label.astype(np.uint8)


def read_instance_mask(path):
    """An instance mask as stored (whole numbers of any depth, kept in their type: a cast
    would wrap some objects' numbers to 0): 0 background, each other value one object, as
    StarDist, Cellpose and most crowded-scene data sets ship them."""
    mask = _label_plane(path)
    if mask.min() < 0:
        raise PipelineError(f"instance mask {path} holds negative values; 0 is background and "
                            "each object a positive number")
    return mask


# Values beyond the classes that make a label more likely an instance mask (objects numbered
# one by one) than a semantic label with a class missing from classes.txt.
INSTANCE_VALUES = 3


def instance_hint(path, values, num_classes=0):
    """What to do with a label whose values go beyond the classes, where they look like
    objects numbered one by one: empty where they do not."""
    beyond = values[values >= max(num_classes, 1)]
    if len(beyond[beyond != IGNORE_LABEL]) < INSTANCE_VALUES:
        return ""
    return (f"; if it numbers objects one by one (an instance mask, as StarDist and Cellpose "
            f"write; {int((values > 0).sum())} numbers here), move the masks out of "
            f"{Path(path).parent} and convert them to class indices with labelme_to_label.py "
            "--instances FOLDER")


def _label_plane(path):
    """A label file's one plane of whole numbers, as stored (read_label's formats)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        label = _load_npy(path)
    elif path.suffix.lower() in TIFF_EXTS:
        check_format_of_name(path)
        label = _tiff_label(path)
    else:
        data = _file_bytes(path, "label")
        if data.startswith(JPEG_START):
            raise PipelineError(f"label {path} holds JPEG data whatever its name says; labels "
                                "must be lossless (JPEG changes class values along every "
                                "edge): save it as PNG from the original")
        # TIFF data named .png: PIL would read its first page alone, and its tags not at all.
        check_format_of_bytes(path, data)
        label = _indices_by_pil(data)
        if label is None:
            label = _imdecode(data, f"label {path}")
        label = as_shown(_png_grey(label, data), exif_orientation(data))
    if label.ndim == 3:
        raise PipelineError(f"label {path} has {label.shape[2]} channels; a label must hold one "
                            "class index per pixel (a grey or palette PNG)")
    if label.ndim != 2 or label.size == 0:
        raise PipelineError(f"label {path} is not a 2-D array of class indices")
    if not np.issubdtype(label.dtype, np.integer) and not np.issubdtype(label.dtype, np.bool_):
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise PipelineError(f"label {path} holds values that are not whole numbers")
    return label


def pixel_digest(*arrays):
    """sha256 (hex) of arrays' pixels, with their types and shapes: frames of the same pixels
    (a copy, a link) share it, and so does a frame saved again losslessly or moved elsewhere,
    where a file's digest would differ. gen_img_aug.py records one of each frame and its
    label, which training checks the frames it reads again against (picture_digest tells
    one picture stored otherwise)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.dtype} {array.shape}\0".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def picture_digest(raw):
    """sha256 (hex) of the picture an image shows, however it is stored: grey where all its
    channels are alike (an RGB copy of a grey frame), its values over its largest one (an
    8-bit frame saved again as 16-bit, its values as they are or scaled up), with its shape.
    Frames of one picture share it; frames that differ by an offset (planes of a stack as
    the light fades) do not. It tells a frame the model trained on, and twin frames, where
    pixel_digest tells a frame changed."""
    img = np.asarray(raw)
    if img.ndim == 3 and (img == img[..., :1]).all():
        img = img[..., 0]
    img = img.astype(np.float64)
    # Integers over integers: a frame and its copy scaled by a whole factor divide to the
    # same correctly rounded quotients.
    return pixel_digest(img / (float(np.abs(img).max()) or 1.0))


def frame_differs(source, label_path, digest):
    """Whether a frame (an image source) and its label are not those of pixel_digest
    `digest`; False where either the digest or the label is missing: nothing to compare."""
    if digest is None or label_path is None:
        return False
    return pixel_digest(read_raw_image(source), read_label(label_path)) != digest


def frames_changed(sources, data_dir, digests):
    """The names of the frames of sources ({name: source in data_dir/src}) whose image or
    label (in data_dir/label) differ from their pixel_digest in digests, as gen_img_aug.py
    recorded them (split.json: frame_digests); frames without a digest or a label are taken
    as they are."""
    label_dir = Path(data_dir) / "label"
    return [name for name, source in sources.items()
            if frame_differs(source, find_frame_label(label_dir, name, source),
                             digests.get(name))]


def _tiff_label(path):
    """A TIFF label's plane as stored: samples kept (alpha too) and 1-bit pixels as 0 and 1,
    where an image's would read as 0 and 255, the ignore value."""
    label, count, _ = _tiff_plane(path, 0)
    if count > 1:
        raise PipelineError(f"label {path} holds {count} planes; a label is one plane of class "
                            "indices (label each plane of a stack as <name>_p<k>)")
    return label


# numpy dtype kinds a .npy label may hold: bool, integers, floats (whole numbers). Strings,
# dates and records are no class indices, and complex values would lose their imaginary part.
NUMERIC_KINDS = "biuf"


def _load_npy(path):
    """A .npy label; an axis of one, as a[None] or a[..., None] leaves it, dropped."""
    try:
        label = np.load(path, allow_pickle=False)
    except ValueError:
        raise PipelineError(f"label {path} holds Python objects, which are not loaded (they "
                            "could run code); save a numeric array, e.g. np.save(path, "
                            "label.astype(np.uint8))") from None
    except (OSError, EOFError) as err:
        raise PipelineError(f"cannot read label {path}: not a valid .npy file ({err})") from None
    if label.dtype.kind not in NUMERIC_KINDS:
        raise PipelineError(f"label {path} holds {label.dtype} values, not class indices; save "
                            "a numeric array, e.g. np.save(path, label.astype(np.uint8))")
    if label.ndim == 3 and 1 in (label.shape[0], label.shape[2]):
        label = label[0] if label.shape[0] == 1 else label[:, :, 0]
    if label.ndim == 3:
        raise PipelineError(f"label {path} is a {' x '.join(map(str, label.shape))} array; a "
                            "label is one H x W plane of class indices (of a one-hot or "
                            "per-class array, save its argmax over the class axis)")
    return label


PNG_GREY, PNG_GREY_ALPHA = 0, 4


PNG_HEADER_BYTES = 26


def png_header(data):
    """(height, width, bits per sample, colour type) from the first PNG_HEADER_BYTES of a PNG
    file; None for any other file."""
    head = data[:PNG_HEADER_BYTES]
    if len(head) < PNG_HEADER_BYTES or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return (int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big"), head[24],
            head[25])


def _png_grey(label, data):
    """A grey PNG label's indices as stored. cv2 and PIL stretch a 2- or 4-bit grey PNG's
    0..3 and 0..15 to 0..255, and cv2 gives a 16-bit grey+alpha one (which PIL reads as
    8-bit RGBA) as four channels, grey in the first three."""
    depth, colour = (png_header(data) or (None,) * 4)[2:]
    if colour == PNG_GREY and depth in (2, 4):
        return label // (255 // (2 ** depth - 1))
    return _grey_of_grey_alpha(label, data)


# PIL modes whose values are class indices as PIL reads them, where cv2 would give a palette's
# colours, 1-bit pixels as 0 and 255 (the ignore value) and grey+alpha as four channels. A
# palette's transparency comes as P too: PIL reads no PNG as PA.
INDEX_MODES = ("P", "1", "LA")


def _indices_by_pil(data):
    """The class indices of a palette, 1-bit or grey+alpha image file's bytes (alpha dropped,
    as images drop it); None for any other image, which cv2 reads."""
    from PIL import UnidentifiedImageError
    try:
        with pil_open(io.BytesIO(data)) as img:
            if img.mode not in INDEX_MODES:
                return None
            indices = np.array(img)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None
    return indices[:, :, 0] if indices.ndim == 3 else indices


def check_label_size(label, label_path, shape, image):
    """One line where a label is not the size (shape) of its image (a file or stack plane),
    naming the EXIF turn that explains a label drawn on a turned image's stored pixels."""
    if label.shape == tuple(shape[:2]):
        return
    turned = not isinstance(image, StackPlane) and exif_orientation(image) != 1
    raise PipelineError(f"label {label_path} is {label.shape[1]}x{label.shape[0]} but its "
                        f"image {image} is {shape[1]}x{shape[0]}" + (
                            " as shown: its EXIF Orientation tag turns it, and a label must be "
                            "drawn on the image as viewers and LabelMe show it" if turned else ""))


def label_fits_stored_pixels(label, image, source, ratio=1.1):
    """Whether a label lines up better with an EXIF-turned image's stored pixels than with
    the image as shown. A label drawn on the stored pixels (in Fiji or napari, which ignore
    the tag, or by a script) has the shape of the shown image too where the turn is a half
    turn or mirror, or a quarter turn of a square image, so check_label_size cannot tell.
    The fit of a label is the image's gradient along the label's object edges against the
    frame's mean gradient; the label turned as the tag turns the pixels is tried too."""
    if isinstance(source, StackPlane) or Path(source).suffix.lower() in TIFF_EXTS:
        return None
    orientation = exif_orientation(source)
    turned = as_shown(label, orientation)
    if orientation == 1 or turned.shape != label.shape:
        return None
    grey = to_color_mode(image, "grey").astype(np.float32)
    gradient = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1))
    mean = float(gradient.mean())

    def fit(lbl):
        edges = cv2.morphologyEx(np.ascontiguousarray(lbl), cv2.MORPH_GRADIENT,
                                 np.ones((3, 3), np.uint8)) > 0
        return float(gradient[edges].mean()) / mean if edges.any() and mean > 0 else 0.0

    return orientation if fit(turned) > ratio * fit(label) else None


def check_label_values(label, num_classes, path, classes_source):
    """The label's values, sorted, after checking that each is one of the num_classes
    classes that classes_source (a classes.txt, the model) lists, or IGNORE_LABEL."""
    values = np.unique(label)
    wrong = values[(values >= num_classes) & (values != IGNORE_LABEL)]
    if len(wrong):
        raise PipelineError(f"label {path} holds class {int(wrong[0])} but {classes_source} "
                            f"lists only {num_classes} classes (0..{num_classes - 1}; "
                            f"{IGNORE_LABEL} marks pixels to ignore); fix the label or the class "
                            f"list{instance_hint(path, values, num_classes)}")
    return values


# ---------------------------------------------------------------- writing

def encode_image(path, img):
    """PNG/TIFF bytes of an HxW or HxWx3 (RGB) image, by the path's suffix."""
    arr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    ok, buf = cv2.imencode(Path(path).suffix, arr)
    if not ok:
        raise PipelineError(f"cannot encode {path}")
    return buf.tobytes()


def write_image(path, img, atomic=True):
    """Write an HxW or HxWx3 (RGB) image (PNG is lossless).

    Atomic by default: readers never see half a file. Files inside a staging folder
    (outputs.staged_output) are published with the folder and skip the extra rename.
    """
    data = encode_image(path, img)
    if atomic:
        atomic_write_bytes(path, data)
        return
    try:
        Path(path).write_bytes(data)
    except OSError as err:
        raise PipelineError(f"cannot write {path}: {err.strerror}") from None


def write_tiff(path, img, pixel_size=None):
    """A TIFF through tifffile (zlib-compressed): HxW or HxWx3 RGB, any pixel type, with the
    pixel size in micrometres as ImageJ records it where given."""
    import tifffile
    options = {"compression": "zlib", "photometric": "rgb" if img.ndim == 3 else "minisblack"}
    if pixel_size and img.dtype in (np.uint8, np.uint16, np.float32):
        options.update(imagej=True, resolution=(1 / pixel_size, 1 / pixel_size),
                       metadata={"unit": "um"})
    try:
        tifffile.imwrite(path, img, **options)
    except OSError as err:
        raise PipelineError(f"cannot write {path}: {err.strerror}") from None


def copy_frame(source, folder, name):
    """Copy a frame into a folder: a whole file as a copy (its metadata kept), a stack plane
    as <name>.tif of its pixels as read_raw_image reads them, with the stack's pixel size."""
    if isinstance(source, StackPlane):
        write_tiff(Path(folder) / f"{name}.tif", read_raw_image(source), pixel_size_um(source))
    else:
        shutil.copy2(source, Path(folder) / Path(source).name)


def lossless_suffix(img):
    """.png where PNG keeps every value (8 and 16 bit), else .tif (float, 32-bit)."""
    return ".png" if img.dtype in (np.uint8, np.uint16) else ".tif"

