"""Connected objects of a mask too large for memory: found band by band, merged where they
cross a band edge, measured as if the mask had been whole; and outline_length, the perimeter
estimate of both this and get_contour's whole-mask path."""
from dataclasses import dataclass
import math

import cv2
import numpy as np


@dataclass(slots=True)     # a whole slide has hundreds of thousands
class Measure:
    """One object as get_contour.py lists it: pixels, outer outline, sums for the centroid,
    bounding box (inclusive), and its first pixel in raster order (y, x)."""
    area: int
    perimeter: float
    sum_x: int
    sum_y: int
    left: int
    top: int
    right: int
    bottom: int
    seed: tuple

    def merge(self, other):
        self.area += other.area
        self.sum_x += other.sum_x
        self.sum_y += other.sum_y
        self.left, self.top = min(self.left, other.left), min(self.top, other.top)
        self.right, self.bottom = max(self.right, other.right), max(self.bottom, other.bottom)
        self.seed = min(self.seed, other.seed)


# Vossepoel & Smeulders' corner-count estimator (1982) of the length of the line a chain of
# 8-connected steps digitises: per even (axis) step, per odd (diagonal) step, per corner (a
# step unlike the one before). Fitted to lines of every direction, it errs by 2 % at most (on
# lines along the grid); plain 1 and sqrt(2) per step read a circle 5 % long.
EVEN_STEP, ODD_STEP, CORNER = 0.980, 1.406, -0.091
# The chain runs through the boundary pixels' centres, which lie inside the pixels' outline,
# on average by half a pixel along the grid axis nearest its normal: 0.5 max(|cos a|, |sin a|)
# for a normal at angle a. That is the support function of a diamond of half-diagonal 0.5, so
# the outline is longer by the diamond's perimeter, 2 sqrt(2) (Steiner's formula).
CENTRES_TO_OUTLINE = 2 * math.sqrt(2)


def outline_length(contour):
    """Estimated length of the outline of the pixels a closed cv2.findContours chain
    (CHAIN_APPROX_NONE) goes round: unbiased for digitised discs from a radius of about 5
    (2 pi r), 2 % short along straight edges on the grid and 1.5 pixels more round a rectangle
    on it (whose corners the diamond cuts); 0 for a lone pixel, whose chain has no steps.
    Integer counts, so the chain from any start point gives the same float."""
    points = contour.reshape(-1, 2)
    if len(points) < 2:
        return 0.0
    steps = np.diff(points, axis=0, append=points[:1])      # the last one closes the chain
    odd = int(np.count_nonzero(steps[:, 0] * steps[:, 1]))
    codes = 3 * steps[:, 0] + steps[:, 1]                    # one number per direction
    # The first step follows the last; slices, not np.roll, which takes twice the time (a
    # slide has hundreds of thousands of objects).
    corners = int(np.count_nonzero(codes[1:] != codes[:-1])) + int(codes[0] != codes[-1])
    return (EVEN_STEP * (len(steps) - odd) + ODD_STEP * odd + CORNER * corners
            + CENTRES_TO_OUTLINE)


def outer_perimeters(binary, labels, count):
    """outline_length of the outer outline of each component 1..count-1, as get_contour
    measures a whole mask."""
    perimeters = np.zeros(count)
    contours, hierarchy = cv2.findContours(binary, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE)
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0] if contours else ()):
        if parent < 0:
            x, y = contour[0, 0]
            perimeters[labels[y, x]] = outline_length(contour)
    return perimeters


class _Merger:
    """Union-find over the components of all bands, by global index."""

    def __init__(self):
        self.parent = []

    def add(self, n):
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return start

    def find(self, i):
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a, b):
        a, b = self.find(a), self.find(b)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def _touching_pairs(above, below):
    """(label above, label below, x below) of the 8-connected pixel pairs across a band edge."""
    width = len(above)
    pairs = []
    for dx in (-1, 0, 1):
        a = above[max(0, -dx):width - max(0, dx)]
        b = below[max(0, dx):width - max(0, -dx)]
        hit = (a >= 0) & (b >= 0)
        xs = np.nonzero(hit)[0] + max(0, dx)
        pairs.append(np.stack([a[hit], b[hit], xs], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def objects_of_class(read_rows, shape, c, band_rows):
    """Every 8-connected object of class c, in raster order of their first pixels: a list of
    Measure. read_rows(y0, y1) gives mask rows; only one band and the last row of the band
    above are held, and objects that span bands are cut out again by their bounding box to
    measure their outline."""
    height, width = shape
    merger, parts, spans = _Merger(), [], []
    above = None            # global indices along the previous band's last row (-1: none)
    for y0 in range(0, height, band_rows):
        binary = (read_rows(y0, min(height, y0 + band_rows)) == c).astype(np.uint8)
        count, labels, stats, centroids = cv2.connectedComponentsWithStats(
            binary, connectivity=8, ltype=cv2.CV_32S)
        perimeters = outer_perimeters(binary, labels, count)
        start = merger.add(count - 1) - 1        # global index of local label l: start + l
        for i in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[i])
            seed_x = int(np.argmax(labels[y] == i))
            parts.append(Measure(area, perimeters[i], round(centroids[i][0] * area),
                                 round((centroids[i][1] + y0) * area), x, y + y0, x + w - 1,
                                 y + y0 + h - 1, (y + y0, seed_x)))
        edge = np.where(labels[0] > 0, labels[0] + start, -1)
        if above is not None:
            for a, b, _ in _touching_pairs(above, edge):
                merger.union(int(a), int(b))
                spans.append(int(b))
        above = np.where(labels[-1] > 0, labels[-1] + start, -1)
    objects = {}
    for i, part in enumerate(parts):
        root = merger.find(i)
        if root in objects:
            objects[root].merge(part)
        else:
            objects[root] = part
    for root in {merger.find(i) for i in spans}:
        objects[root].perimeter = _perimeter_of(read_rows, objects[root], c)
    return sorted(objects.values(), key=lambda m: m.seed)


def _perimeter_of(read_rows, measure, c):
    """The outline of an object that crosses bands, from the rows of its bounding box."""
    crop = read_rows(measure.top, measure.bottom + 1)[:, measure.left:measure.right + 1]
    _, labels = cv2.connectedComponents((crop == c).astype(np.uint8), connectivity=8,
                                        ltype=cv2.CV_32S)
    seed_y, seed_x = measure.seed
    own = (labels == labels[seed_y - measure.top, seed_x - measure.left]).astype(np.uint8)
    return outer_perimeters(own, own.astype(np.int32), 2)[1]
