"""Frames too large to hold in memory: TIFF rows decoded on demand, the intensity range of a
whole plane gathered band by band, and masks written as tiled BigTIFF a band at a time."""
import math
from pathlib import Path

import numpy as np

from image_io import (PHOTOMETRIC_PALETTE, TIFF_EXTS, StackPlane, check_finite, first_series,
                      frame_page, has_histogram, open_tiff, pixel_histogram, range_from_histogram,
                      read_raw_image, refuse_cut_plane, scale_to_uint8, tiff_image,
                      tiff_image_dtype, to_color_mode)
from cli import PipelineError

# Frames of more megapixels than this are streamed by default (predict_lovasz_loss.py and
# get_contour.py --stream-above). In memory, prediction holds float copies of the frame and
# its float32 class probabilities twice over: tens of bytes per pixel, beside the ~1 GB of
# TensorFlow and the model.
STREAM_ABOVE_MP = 16
BAND_ROWS = 1024            # rows per band where a pass over the plane is not tile-driven
MASK_TILE = 256             # tile side of streamed mask TIFFs
OVERVIEW_SIDE = 4096        # longest side of the overview pictures of a streamed frame
SAMPLE_PIXELS = 1 << 24     # pixels sampled for percentiles of float or 32-bit planes


def megapixels(shape):
    return shape[0] * shape[1] / 1e6


# ---------------------------------------------------------------- reading

class TiffRows:
    """One plane of a TIFF whose rows are decoded on demand, one row of strips or tiles at a
    time; at most two such rows stay decoded. Use open_tiff_rows to make one."""

    def __init__(self, tif, page, path):
        self.tif, self.page, self.path = tif, page, path
        key = page.keyframe
        self.key = key
        self.dtype = key.dtype
        self.image_dtype = tiff_image_dtype(key.dtype)     # of image_rows: 1-bit as uint8
        samples = key.samplesperpixel
        self.shape = (key.imagelength, key.imagewidth) + ((samples,) if samples > 1 else ())
        self.chunk_rows = key.tilelength if key.is_tiled else key.rowsperstrip
        self.chunks_across = math.ceil(key.imagewidth / key.tilewidth) if key.is_tiled else 1
        self.decode_args = {"_fullsize": False}
        if key.compression in (6, 7, 34892, 33007):     # JPEG variants need their tables
            self.decode_args.update(jpegtables=page.jpegtables, jpegheader=key.jpegheader)
        self._decoded = {}

    def close(self):
        self.tif.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def height(self):
        return self.shape[0]

    @property
    def width(self):
        return self.shape[1]

    def rows(self, y0, y1):
        """Rows y0..y1-1 (within the plane) as stored."""
        first, last = y0 // self.chunk_rows, (y1 - 1) // self.chunk_rows
        for r in [r for r in self._decoded if not first <= r <= last]:
            del self._decoded[r]
        parts = [self._chunk_row(r) for r in range(first, last + 1)]
        block = parts[0] if len(parts) == 1 else np.concatenate(parts)
        start = first * self.chunk_rows
        return block[y0 - start:y1 - start]

    def image_rows(self, y0, y1, step=1):
        """Rows y0..y1-1 (every step-th row and column from y0) as an image, of image_dtype
        (image_io.tiff_image, as the plane read whole); a mask's are rows() as stored."""
        return tiff_image(self.rows(y0, y1)[::step, ::step], self.key)

    def _chunk_row(self, r):
        if r in self._decoded:
            return self._decoded[r]
        top = r * self.chunk_rows
        height = min(self.chunk_rows, self.height - top)
        out = np.empty((height, *self.shape[1:]), self.dtype)
        indices = range(r * self.chunks_across, (r + 1) * self.chunks_across)
        page, fh = self.page, self.tif.filehandle
        try:
            segments = fh.read_segments([page.dataoffsets[i] for i in indices],
                                        [page.databytecounts[i] for i in indices],
                                        indices=indices, sort=True, lock=fh.lock, flat=True)
            for data, index in segments:
                segment, (_, _, y, x, _), shape = self.key.decode(data, index,
                                                                  **self.decode_args)
                y -= top
                h, w = min(shape[1], height - y), min(shape[2], self.width - x)
                target = out[y:y + h, x:x + w]
                if segment is None:
                    target[...] = self.key.nodata
                else:
                    target[...] = segment[0, :h, :w].reshape(target.shape)
        except PipelineError:
            raise
        except Exception as err:    # tifffile and its codecs raise many kinds
            raise PipelineError(f"cannot read TIFF {self.path}: {type(err).__name__}: "
                                f"{err}") from None
        self._decoded[r] = out
        return out


def open_tiff_rows(source):
    """A TiffRows for an image file or stack plane, or None where the plane cannot be read
    row by row (not a TIFF, samples stored in separate planes, volumes, planes that tifffile
    assembles from several pages, palette planes, whose grey palette maps each pixel)."""
    path = source.path if isinstance(source, StackPlane) else Path(source)
    if path.suffix.lower() not in TIFF_EXTS:
        return None
    index = source.index if isinstance(source, StackPlane) else 0
    tif = open_tiff(path)
    try:
        series, count, _ = first_series(tif, path)
        page = frame_page(series, count, index)
        key = page.keyframe if page is not None else None
        if (key is None or key.planarconfig == 2 and key.samplesperpixel > 1
                or key.imagedepth > 1 or key.samplesperpixel not in (1, 3, 4)
                or int(key.photometric) == PHOTOMETRIC_PALETTE
                or key.dtype is None or key.dtype.kind == "c"
                or key.compression in (65000, 65001, 65002) or tif.is_ndpi):
            tif.close()
            return None
        refuse_cut_plane(tif, page, path)
        return TiffRows(tif, page, path)
    except BaseException:
        tif.close()
        raise


def plane_shape(source):
    """(height, width) of an image file or stack plane, read from its header only where
    possible (TIFF); other files are decoded."""
    rows = open_tiff_rows(source)
    if rows is not None:
        with rows:
            return rows.shape[:2]
    return read_raw_image(source).shape[:2]


def bands(height, rows=None):
    """(y0, y1) of consecutive bands of `rows` (default BAND_ROWS) covering `height` rows."""
    rows = rows or BAND_ROWS
    return [(y, min(height, y + rows)) for y in range(0, height, rows)]


def streamed_intensity_range(reader, intensity, what):
    """(low, high) of the intensity rule for a whole plane read band by band, or None for
    8-bit planes (used as stored). Integer planes of up to 16 bits get the exact range of
    the in-memory path from a histogram; float and 32-bit planes get exact minimum and
    maximum, and percentiles from SAMPLE_PIXELS pixels spread over the plane. A float plane
    is refused here for a NaN or infinite pixel, before any band is predicted."""
    dtype = reader.image_dtype
    if dtype == np.uint8:       # 1-bit planes too, as 0 and 255
        return None
    if intensity["rule"] == "fixed":
        if dtype.kind == "f":   # else found at its band, maybe hours into a slide
            for y0, y1 in bands(reader.height):
                check_finite(reader.image_rows(y0, y1), what)
        return intensity["low"], intensity["high"]
    if has_histogram(dtype):
        # whole rows of strips or tiles, so each is decoded once
        rows = reader.chunk_rows * max(1, BAND_ROWS // 4 // reader.chunk_rows)
        hist = sum(pixel_histogram(reader.image_rows(y0, y1))
                   for y0, y1 in bands(reader.height, rows))
        return range_from_histogram(hist, dtype, intensity)
    low, high, sample = math.inf, -math.inf, []
    step = max(1, math.ceil(math.sqrt(math.prod(reader.shape) / SAMPLE_PIXELS)))
    for y0, y1 in bands(reader.height):
        block = reader.image_rows(y0, y1)
        check_finite(block, what)
        low, high = min(low, float(block.min())), max(high, float(block.max()))
        first = -y0 % step
        sample.append(block[first::step, ::step].astype(np.float64).ravel())
    if intensity["rule"] == "percentile":
        lo, hi = np.percentile(np.concatenate(sample), (intensity["low"], intensity["high"]))
        if hi > lo:
            return float(lo), float(hi)
    return low, high


class StreamedFrame:
    """A TIFF plane as the model sees it, row by row: mapped to 0..255 by the intensity rule
    with the range of the whole plane, in the model's colour mode. Rows asked for beyond
    the border are mirrored as geometry.reflect_pad mirrors them."""

    def __init__(self, reader, intensity, color_mode, what):
        self.reader, self.color_mode = reader, color_mode
        self.shape = reader.shape[:2]
        self.range = streamed_intensity_range(reader, intensity, what)

    def rows(self, y0, y1, step=1):
        """Rows y0..y1-1 within the plane (every step-th row and column from y0), as uint8
        in the model's colour mode."""
        raw = self.reader.image_rows(y0, y1, step)
        if self.range is not None:      # every float pixel checked finite by then
            raw = scale_to_uint8(raw, *self.range)
        return to_color_mode(raw, self.color_mode)


def mirrored_rows(source, y0, y1, width):
    """Rows y0..y1-1 of an image reflect-padded to at least `width` columns and as many rows
    as asked: reflect_pad(image, y1, width)[y0:y1] of a whole image, read through
    source.rows(a, b) (a StreamedFrame, or ArrayRows for an image in memory)."""
    h, w = source.shape[:2]
    index = mirror_index(np.arange(y0, y1), h)
    low = int(index.min())
    rows = source.rows(low, int(index.max()) + 1)[index - low]
    return rows if width <= w else rows[:, mirror_index(np.arange(width), w)]


def mirror_index(index, n):
    """Where reflect_pad's padding takes each index from: a symmetric mirror, repeated."""
    m = np.asarray(index) % (2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


class ArrayRows:
    """An image in memory with the rows() of a StreamedFrame."""

    def __init__(self, image):
        self.image, self.shape = image, image.shape[:2]

    def rows(self, y0, y1):
        return self.image[y0:y1]


# ---------------------------------------------------------------- writing

def write_tiled_mask(path, shape, rows_iter, pixel_size=None):
    """A class-index mask as a tiled, zlib-compressed BigTIFF, written from (first row, rows)
    pairs that come top to bottom; only one row of tiles is held. OME metadata carries the
    pixel size in micrometres where given."""
    import tifffile
    height, width = shape
    metadata = {"axes": "YX"}
    if pixel_size:
        metadata.update(PhysicalSizeX=pixel_size, PhysicalSizeXUnit="\u00b5m",
                        PhysicalSizeY=pixel_size, PhysicalSizeYUnit="\u00b5m")

    def tiles():
        pending = np.zeros((0, width), np.uint8)
        for y, rows in rows_iter:
            pending = np.concatenate([pending, rows])
            at_end = y + len(rows) == height
            while len(pending) >= MASK_TILE or (at_end and len(pending)):
                band, pending = pending[:MASK_TILE], pending[MASK_TILE:]
                for x in range(0, width, MASK_TILE):
                    yield band[:, x:x + MASK_TILE]

    try:
        tifffile.imwrite(path, tiles(), shape=(height, width), dtype=np.uint8,
                         tile=(MASK_TILE, MASK_TILE), compression="zlib", bigtiff=True,
                         ome=True, metadata=metadata)
    except OSError as err:
        raise PipelineError(f"cannot write {path}: {err.strerror}") from None


class Overview:
    """A picture of a large frame shrunk to OVERVIEW_SIDE on its longest side, filled band
    by band by keeping every step-th row and column (nearest neighbour: class indices stay
    class indices)."""

    def __init__(self, shape, channels=()):
        self.step = max(1, math.ceil(max(shape[:2]) / OVERVIEW_SIDE))
        height, width = (math.ceil(n / self.step) for n in shape[:2])
        self.image = np.zeros((height, width, *channels), np.uint8)

    def add(self, y, rows):
        """Rows of the frame from row y."""
        first = -y % self.step
        self.add_sampled(y + first, rows[first::self.step, ::self.step])

    def add_sampled(self, y, kept):
        """Rows already thinned to every step-th row and column, the first being row y (a
        multiple of step)."""
        start = y // self.step
        self.image[start:start + len(kept)] = kept
