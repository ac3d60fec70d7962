"""Objects labelled by their outline alone.

A hand-drawn outline that was never filled (an unclosed polygon, a line tool, a fill that
leaked) leaves a ring of object pixels around an inside labelled background: training then
teaches that the cell's inside is background, and scoring counts a right prediction there as
false. A foreground component is taken for such a ring when it is
  thin:      a 3x3 erosion leaves little of it (a filled object, even a crescent, is thick
             somewhere);
  hollow:    it covers a small share of its convex hull, which holds at least MIN_AREA pixels;
  around one inside: most of the hull it leaves is one region of background (a grid of thin
             lines, a class meant to be membranes, leaves many; an inside painted 255 none);
  closed:    that region's neighbours are mostly outline, or the frame's border where the
             object is cut by it (an arc or a fibre leaves it open to the outside).
An outline that touches a filled object is one component with it, and one that the frame cuts
into pieces is several components: neither is found.
"""
import cv2
import numpy as np

from cli import IGNORE_LABEL, agreeing, count_of

MIN_AREA = 400          # pixels of hull: far below a cell in any data set measured
MAX_FILLED = 0.4        # share of its hull an outline covers (0.066 and 0.081 on bbbc030's)
MAX_THICK = 0.2         # share of it left by a 3x3 erosion (0.008 and 0 on bbbc030's)
MIN_CLOSED = 0.6        # share of the inside's neighbours on the outline or the frame's border
MIN_INSIDE = 0.5        # largest region's share of hull minus outline (0.94 and 0.95)
MIN_OFF_BORDER = 0.25   # share of it off the frame's border (0.46 for a cell cut at a corner)


def bare_outlines(label, min_area=MIN_AREA):
    """The foreground components (any class but 0 and IGNORE_LABEL) of a uint8 label that
    look like bare outlines, as a list of {"box": [x, y, w, h], "outline": its pixels, "hull":
    its hull's pixels}, and one boolean mask of what their annotators left out: each outline
    and the background it encloses (None when there is none)."""
    foreground = cv2.inRange(label, 1, IGNORE_LABEL - 1)
    count, components, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
    x, y, w, h, pixels = stats.T.astype(np.int64)     # a box of a whole slide overflows int32
    # The hull lies within the box, so a box too small or too full cannot qualify.
    candidates = np.flatnonzero((w * h >= min_area) & (pixels < MAX_FILLED * w * h))
    found, left_out = [], None
    for i in candidates[candidates > 0]:
        box = (slice(y[i], y[i] + h[i]), slice(x[i], x[i] + w[i]))
        ring = (components[box] == i).astype(np.uint8)
        enclosed = enclosed_background(ring, label[box] == 0, int(pixels[i]), min_area,
                                       border_sides(box, label.shape))
        if enclosed is None:
            continue
        inside, hull_pixels = enclosed
        found.append({"box": [int(x[i]), int(y[i]), int(w[i]), int(h[i])],
                      "outline": int(pixels[i]), "hull": hull_pixels})
        if left_out is None:
            left_out = np.zeros(label.shape, bool)
        left_out[box] |= (ring > 0) | inside
    return found, left_out


def border_sides(box, shape):
    """Which sides of a box lie on the label's border: (top, bottom, left, right)."""
    rows, cols = box
    return rows.start == 0, rows.stop == shape[0], cols.start == 0, cols.stop == shape[1]


def enclosed_background(ring, background, pixels, min_area, on_border):
    """(the main region of background within a component's convex hull, the hull's pixels),
    in its box, if the component is a bare outline around that region, else None."""
    if off_border_pixels(ring, on_border) < MIN_OFF_BORDER * pixels:
        return None             # lines along the frame's edge enclose nothing drawn
    hull = np.zeros_like(ring)
    cv2.fillConvexPoly(hull, hull_points(ring, on_border), 1)
    hull_pixels = cv2.countNonZero(hull)
    if hull_pixels < min_area or pixels >= MAX_FILLED * hull_pixels:
        return None
    # Outside the box is background: the box's edge rows must erode too.
    eroded = cv2.erode(ring, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                       borderValue=0)
    if cv2.countNonZero(eroded) > MAX_THICK * pixels:
        return None
    inside = (hull > 0) & background
    count, regions, stats, _ = cv2.connectedComponentsWithStats(inside.astype(np.uint8),
                                                                connectivity=4)
    if count < 2:
        return None
    main = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[main, cv2.CC_STAT_AREA] < MIN_INSIDE * (hull_pixels - pixels):
        return None
    enclosed = regions == main
    if drawn_share(enclosed, ring > 0, hull > 0, on_border) < MIN_CLOSED:
        return None
    return enclosed, hull_pixels


def border_edges(on_border):
    """Index expressions of a box's rows and columns that lie on the frame's border, from
    border_sides' (top, bottom, left, right)."""
    edges = (np.s_[0, :], np.s_[-1, :], np.s_[:, 0], np.s_[:, -1])
    return [edge for side, edge in zip(on_border, edges) if side]


def off_border_pixels(ring, on_border):
    """The component's pixels that do not lie on the frame's border."""
    off = ring.copy()
    for edge in border_edges(on_border):
        off[edge] = 0
    return cv2.countNonZero(off)


def hull_points(ring, on_border):
    """The convex hull of a component and of the box's sides on the frame's border: an
    object cut by the frame reaches along it, to the corner where it is cut by two sides."""
    h, w = ring.shape
    ends = ([(0, 0), (w - 1, 0)], [(0, h - 1), (w - 1, h - 1)],
            [(0, 0), (0, h - 1)], [(w - 1, 0), (w - 1, h - 1)])
    extra = [point for side, pair in zip(on_border, ends) if side for point in pair]
    points = cv2.findNonZero(ring).reshape(-1, 2)
    return cv2.convexHull(np.vstack([points, np.array(extra, np.int32).reshape(-1, 2)]))


def drawn_share(region, ring, hull, on_border):
    """Of the pixels around a region (4-neighbours) that are outline or lie outside the hull,
    the share that is outline. Past the box lies the frame's border on the sides in on_border
    (top, bottom, left, right), counted as outline: an object cut by the frame has none there."""
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    region = np.pad(region, 1)
    around = (cv2.dilate(region.astype(np.uint8), cross) > 0) & ~region
    drawn, outside = np.pad(ring, 1), ~np.pad(hull, 1)
    for edge in border_edges(on_border):
        drawn[edge], outside[edge] = True, False
    drawn_pixels = np.count_nonzero(around & drawn)
    return drawn_pixels / max(1, drawn_pixels + np.count_nonzero(around & outside))


def mark_ignored(label, left_out):
    """A copy of the label with the pixels of left_out (bare_outlines' mask: each outline and
    the background it encloses) marked IGNORE_LABEL, so that scoring leaves out what its
    annotator did not label; the label itself when left_out is None."""
    if left_out is None:
        return label
    label = label.copy()
    label[left_out] = IGNORE_LABEL
    return label


def describe_bare_outlines(name, found):
    """One warning line about an image's bare outlines."""
    where = ", ".join("{2}x{3} px at ({0}, {1})".format(*o["box"]) for o in found[:3])
    more = f" and {len(found) - 3} more" if len(found) > 3 else ""
    return (f"warning: the label of {name} holds {count_of(len(found), 'object')} drawn as a "
            "bare outline "
            f"({where}{more}): the inside counts as background; fill "
            f"{agreeing(len(found), 'it', 'them')}, or paint each "
            f"outline and its inside {IGNORE_LABEL} (ignore)")
