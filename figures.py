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
                    PALETTE[mask % len(PALETTE)])


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
