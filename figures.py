"""Class colours for masks and figures, and drawing and saving matplotlib figures into files."""
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
