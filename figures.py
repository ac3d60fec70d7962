"""Class colours for masks and figures, and drawing and saving matplotlib figures into files."""
import functools
import math
import warnings
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
    needed = {ord(ch) for text in texts for ch in text}
    bundled = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    # Upright regular faces first: a name in bold or oblique would stand out of its figure.
    plain = {f.fname: (f.style != "normal", f.weight not in (400, "normal", "regular"),
                       f.stretch != "normal") for f in font_manager.fontManager.ttflist}
    others = sorted(set(plain) - {bundled}, key=lambda path: (plain[path], path))
    # matplotlib's Last Resort font maps every character to a box that names its block.
    for path in [bundled, *(p for p in others if "lastresort" not in Path(p).name.lower())]:
        if needed <= characters_of(path):
            return path
    return None


@functools.lru_cache(maxsize=None)
def characters_of(path):
    """The code points a font file has glyphs for; none where it cannot be read."""
    from matplotlib.ft2font import FT2Font
    try:
        return frozenset(FT2Font(path).get_charmap())
    except (OSError, RuntimeError):     # a font file it cannot read offers no glyph
        return frozenset()


_glyphs_noted = False       # the note comes once a run, not once a frame name


def note_missing_glyphs(texts):
    """Once a run: which names no font here can draw whole."""
    global _glyphs_noted
    if _glyphs_noted:
        return
    _glyphs_noted = True
    print(f"note: no font on this machine has every character of {', '.join(texts)}; names "
          "in figures and in the pictures' legends show boxes for the characters no font has "
          "(install a font that has them, such as Debian's fonts-noto-cjk for Chinese, "
          "Japanese or Korean names)")


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
    # A name in a script matplotlib's font lacks warns once per character, with source paths,
    # as soon as a figure is laid out; save_figure draws it in a font that has it, or says
    # in one note that none has.
    warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from (current )?font",
                            category=UserWarning)
    import matplotlib.pyplot as plt
    return plt


def use_fonts_for_texts(fig):
    """Draw each text of a figure whose characters its font lacks (file and class names in
    Chinese, say) in a font that has them all (font_for), where this machine has one; note
    once where none has."""
    from matplotlib import font_manager
    from matplotlib.text import Text
    for ax in fig.axes:
        # Tick labels (class names along a bar chart) get their text as the figure is laid
        # out: asked for, they get it now, and keep the font the draw finds them in.
        ax.get_xticklabels(), ax.get_yticklabels()
    unmatched = []
    for text in fig.findobj(Text):
        if not text.get_visible() or not lacks_glyphs(text):
            continue
        path = font_for(tuple(text.get_text().split("\n")))
        if path is None:
            unmatched.append(text.get_text().replace("\n", " "))
        else:
            text.set_fontproperties(font_manager.FontProperties(fname=path,
                                                                size=text.get_fontsize()))
    if unmatched:
        note_missing_glyphs(tuple(dict.fromkeys(unmatched)))


def lacks_glyphs(text):
    """Whether a matplotlib Text holds a character its font has no glyph for (line breaks
    aside: matplotlib breaks the lines there)."""
    from matplotlib import font_manager
    needed = set(map(ord, text.get_text().replace("\n", "")))
    return not needed <= characters_of(font_manager.findfont(text.get_fontproperties()))


def save_figure(fig, paths, pdf=False):
    """Save a matplotlib figure as PNG (and PDF when asked) to one path or each of several,
    then close it."""
    import matplotlib.pyplot as plt
    # Here, not where each figure sets its texts: one place sees every text of every figure.
    use_fonts_for_texts(fig)
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
