"""Objects labelled by their outline alone.

A hand-drawn outline that was never filled (an unclosed polygon, a line tool, a fill that
leaked) leaves a ring of object pixels around an inside labelled background: training then
teaches that the cell's inside is background, and scoring counts a right prediction there as
false. Such a ring is thin (a 3x3 erosion leaves little of it) and covers a small share of
the area it encloses (its convex hull), where a filled object, even a crescent, is thick
somewhere. Thin objects that enclose nothing much (fibres, short arcs) stay below min_area.
"""
import cv2
import numpy as np

from cli import IGNORE_LABEL

MIN_AREA = 400          # pixels of enclosed area: far below a cell in any data set measured
MAX_FILLED = 0.4        # share of its hull a bare outline covers (0.07 and 0.08 on bbbc030's)
MAX_THICK = 0.2         # share of it left by a 3x3 erosion (0 for a 1-pixel outline)


def bare_outlines(label, min_area=MIN_AREA):
    """The foreground components (any class but 0 and IGNORE_LABEL) that look like bare
    outlines: a list of (x, y, w, h, outline pixels, hull pixels) and their convex hulls as
    one boolean mask (None when there is none)."""
    foreground = ((label > 0) & (label != IGNORE_LABEL)).astype(np.uint8)
    count, components, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    found, hulls = [], None
    for i in range(1, count):
        x, y, w, h, pixels = (int(v) for v in stats[i])
        if w * h < min_area or pixels >= MAX_FILLED * w * h:
            continue            # the hull lies within the box: neither can qualify
        ring = (components[y:y + h, x:x + w] == i).astype(np.uint8)
        hull = np.zeros_like(ring)
        points = cv2.findNonZero(ring)
        cv2.fillConvexPoly(hull, cv2.convexHull(points), 1)
        hull_pixels = int(hull.sum())
        thick = cv2.countNonZero(cv2.erode(ring, np.ones((3, 3), np.uint8)))
        if (hull_pixels < min_area or pixels >= MAX_FILLED * hull_pixels
                or thick > MAX_THICK * pixels):
            continue
        found.append((x, y, w, h, pixels, hull_pixels))
        if hulls is None:
            hulls = np.zeros(label.shape, bool)
        hulls[y:y + h, x:x + w] |= hull > 0
    return found, hulls


def ignore_bare_outlines(label):
    """The label with each bare outline's hull marked IGNORE_LABEL, so that scoring leaves
    out what its annotator did not label; the label itself when there is none."""
    _, hulls = bare_outlines(label)
    if hulls is None:
        return label
    label = label.copy()
    label[hulls] = IGNORE_LABEL
    return label


def describe_bare_outlines(name, found):
    """One warning line about an image's bare outlines."""
    where = ", ".join(f"{w}x{h} px at ({x}, {y})" for x, y, w, h, _, _ in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return (f"warning: the label of {name} holds {len(found)} object(s) drawn as a bare outline "
            f"({where}{more}): the inside counts as background; fill them, or mark them "
            f"{IGNORE_LABEL} (ignore)")
