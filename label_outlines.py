"""Objects labelled by their outline alone.

A hand-drawn outline that was never filled (an unclosed polygon, a line tool, a fill that
leaked) leaves a ring of object pixels around an inside labelled background: training then
teaches that the cell's inside is background, and scoring counts a right prediction there as
false. A foreground component is taken for such a ring when it is
  thin:      a 3x3 erosion leaves little of it (a filled object, even a crescent, is thick
             somewhere);
  hollow:    it covers a small share of its convex hull, which holds at least MIN_AREA pixels;
  closed:    it runs most of the way round that hull (an arc or a fibre runs along one side);
  around one inside: most of the hull that it leaves is one region (a grid of thin lines, a
             class meant to be membranes, leaves many).
An outline that touches a filled object is one component with it and is not found.
"""
import cv2
import numpy as np

from cli import IGNORE_LABEL

MIN_AREA = 400          # pixels of hull: far below a cell in any data set measured
MAX_FILLED = 0.4        # share of its hull an outline covers (0.066 and 0.081 on bbbc030's)
MAX_THICK = 0.2         # share of it left by a 3x3 erosion (0.008 and 0 on bbbc030's)
MIN_CLOSED = 0.6        # its pixels per pixel of hull perimeter: 1.13 and 1.06 on bbbc030's,
                        # 0.88 for a drawn circle, 0.69 open by a quarter, 0.55 for a half
MIN_INSIDE = 0.5        # largest region's share of hull minus outline (0.94 and 0.95)


def bare_outlines(label, min_area=MIN_AREA):
    """The foreground components (any class but 0 and IGNORE_LABEL) that look like bare
    outlines, as a list of {"box": [x, y, w, h], "outline": its pixels, "hull": its hull's
    pixels}, and one boolean mask of what their annotators left out: each outline and the
    background within its hull (None when there is none)."""
    foreground = ((label > 0) & (label != IGNORE_LABEL)).astype(np.uint8)
    count, components, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    found, left_out = [], None
    for i in range(1, count):
        x, y, w, h, pixels = (int(v) for v in stats[i])
        if w * h < min_area or pixels >= MAX_FILLED * w * h:
            continue            # the hull lies within the box: neither can qualify
        box = (slice(y, y + h), slice(x, x + w))
        ring = (components[box] == i).astype(np.uint8)
        hull = outline_hull(ring, pixels, min_area, (x, y), label.shape)
        if hull is None:
            continue
        found.append({"box": [x, y, w, h], "outline": pixels,
                      "hull": cv2.countNonZero(hull)})
        if left_out is None:
            left_out = np.zeros(label.shape, bool)
        left_out[box] |= (ring > 0) | ((hull > 0) & (label[box] == 0))
    return found, left_out


def outline_hull(ring, pixels, min_area, corner, shape):
    """The filled convex hull of a component (uint8, its box, whose corner lies at (x, y) of
    a label of the given shape) if the component is a bare outline of it, else None."""
    points = cv2.convexHull(cv2.findNonZero(ring))
    hull = np.zeros_like(ring)
    cv2.fillConvexPoly(hull, points, 1)
    hull_pixels = cv2.countNonZero(hull)
    if hull_pixels < min_area or pixels >= MAX_FILLED * hull_pixels:
        return None
    # Outside the box is background: the box's edge rows must erode too.
    eroded = cv2.erode(ring, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                       borderValue=0)
    if cv2.countNonZero(eroded) > MAX_THICK * pixels:
        return None
    if pixels < MIN_CLOSED * drawn_perimeter(points, corner, shape):
        return None
    inside = ((hull > 0) & (ring == 0)).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(inside, connectivity=4)
    if len(stats) < 2 or stats[1:, cv2.CC_STAT_AREA].max() < MIN_INSIDE * inside.sum():
        return None
    return hull


def drawn_perimeter(points, corner, shape):
    """Length of a hull's perimeter (points in box coordinates) less its edges along the
    label's border: an object cut by the frame's edge has no outline there to draw."""
    xy = points.reshape(-1, 2) + np.asarray(corner)
    last = np.array([shape[1] - 1, shape[0] - 1])
    length = 0.0
    for a, b in zip(xy, np.roll(xy, -1, axis=0)):
        along_border = any(a[k] == b[k] and a[k] in (0, last[k]) for k in (0, 1))
        if not along_border:
            length += float(np.hypot(*(b - a)))
    return length


def ignore_bare_outlines(label):
    """The label with each bare outline and the background within its hull marked
    IGNORE_LABEL, so that scoring leaves out what its annotator did not label; the label
    itself when there is none."""
    _, left_out = bare_outlines(label)
    if left_out is None:
        return label
    label = label.copy()
    label[left_out] = IGNORE_LABEL
    return label


def describe_bare_outlines(name, found):
    """One warning line about an image's bare outlines."""
    where = ", ".join("{2}x{3} px at ({0}, {1})".format(*o["box"]) for o in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return (f"warning: the label of {name} holds {len(found)} object(s) drawn as a bare outline "
            f"({where}{more}): the inside counts as background; fill them, or paint each "
            f"outline and its inside {IGNORE_LABEL} (ignore)")
