"""Class colours for masks and figures, and drawing and saving matplotlib figures into files."""
import functools
import math
from pathlib import Path

import numpy as np

from cli import IGNORE_LABEL
from outputs import atomic_file, ensure_folder

# One colour per class index for masks and figures (RGB). Index 1 green and 2 red
# follow the paper's contour colours for beads and cells.
PALETTE = np.array(
    [(0, 0, 0), (0, 200, 0), (220, 30, 30), (30, 90, 230), (240, 200, 0),
     (200, 0, 200), (0, 200, 200), (255, 128, 0), (128, 128, 255), (128, 64, 0)],
    dtype=np.uint8)
IGNORE_COLOUR = np.array((128, 128, 128), np.uint8)


def colorize(mask):
    """RGB picture of a class-index mask; ignored pixels (IGNORE_LABEL) grey."""
    mask = np.asarray(mask)
    return np.where((mask == IGNORE_LABEL)[..., None], IGNORE_COLOUR,
                    PALETTE[palette_index(mask)])


def palette_index(classes):
    """Where class indices take their colour in PALETTE: past its end the object colours come
    round again, never background's black (class 10 would look like background)."""
    classes = np.asarray(classes)      # kept in its type: a slide's mask is large
    return np.where(classes == 0, 0, (classes - 1) % (len(PALETTE) - 1) + 1)


def class_colour(c):
    """Class c's RGB colour as a tuple of ints, for OpenCV's drawing."""
    return tuple(int(v) for v in PALETTE[palette_index(c)])


@functools.lru_cache(maxsize=8)
def font_for(texts):
    """Path of a TrueType font with a glyph for every character of texts (a tuple): OpenCV's
    own fonts draw ASCII only, and '?' for the rest. matplotlib's DejaVu Sans first (Latin,
    Greek, Cyrillic), then the fonts this machine has (CJK where one is installed); None where
    no font has them all."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font
    needed = {ord(ch) for text in texts for ch in text}
    bundled = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    # matplotlib's Last Resort font maps every character to a box that names its block.
    others = sorted({f.fname for f in font_manager.fontManager.ttflist} - {bundled})
    for path in [bundled, *(p for p in others if "lastresort" not in Path(p).name.lower())]:
        try:
            if needed <= FT2Font(path).get_charmap().keys():
                return path
        except (OSError, RuntimeError):     # a font file it cannot read: the next one
            continue
    return None


@functools.lru_cache(maxsize=8)
def note_missing_glyphs(texts):
    """Once a run: which names no font here can draw whole."""
    print(f"note: no font on this machine has every character of {', '.join(texts)}; the "
          "pictures' legends show boxes for those missing (install a font that has them, "
          "such as Debian's fonts-noto-cjk for Chinese, Japanese or Korean names)")


class LegendText:
    """Class names measured and drawn into a picture (H x W x 3 uint8) in a font that has
    their characters (font_for), text `height` pixels high; in DejaVu Sans, which shows
    boxes for the characters it lacks, where no font has them all."""

    def __init__(self, texts, height):
        from PIL import ImageFont
        from matplotlib import font_manager
        path = font_for(tuple(texts))
        if path is None:
            path = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
            note_missing_glyphs(tuple(texts))
        self.font = ImageFont.truetype(path, max(8, int(round(height))))

    def width(self, text):
        return int(math.ceil(self.font.getlength(text)))

    def draw(self, picture, text, x, middle, colour):
        """text from x, centred on row `middle`, in colour (a tuple of the picture's
        channels); picture is changed in place."""
        from PIL import Image, ImageDraw
        canvas = Image.fromarray(picture)
        ImageDraw.Draw(canvas).text((x, middle), text, font=self.font, fill=tuple(colour),
                                    anchor="lm")
        picture[:] = np.asarray(canvas)


def pyplot():
    """matplotlib.pyplot drawing into files only, so the scripts run on machines without a
    display."""
    import matplotlib
    matplotlib.use("Agg")
    # File and class names are the user's: a '$' in one is text, not a formula to parse.
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, paths, pdf=False):
    """Save a matplotlib figure as PNG (and PDF when asked) to one path or each of several,
    then close it."""
    import matplotlib.pyplot as plt
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        path = Path(path)
        ensure_folder(path.parent, "figures folder")
        # A kill or a full disk while saving leaves the earlier figure, not a torn one.
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
        if pdf:
            with atomic_file(path.with_suffix(".pdf")) as tmp:
                fig.savefig(tmp, bbox_inches="tight")
    plt.close(fig)
