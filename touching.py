"""Touching objects of one class told apart (get_contour.py --split-touching).

A semantic mask makes cells that touch one region. Where the region narrows between them,
its distance to the background dips: each peak of that distance which stands at least
`depth` pixels above the pass to any higher peak (an h-maximum) seeds one object, and the
seeds grow down the distance, level by level (a watershed), until they meet. Where they meet
a line is carved out of the mask as background, as ImageJ's binary Watershed does, so the
objects are the mask's 8-connected components again and are measured as any other.
"""
import cv2
import numpy as np

# The pass a peak must stand above to seed an object of its own, in pixels: on the sample's
# cells (bench/split_touching.py) 2 splits no cell in two, where 1 splits two.
SPLIT_DEPTH = 2.0
# Below any difference of two float32 distances that are not equal, far below a pixel.
PLATEAU_STEP = 1e-3
# Distance levels the seeds grow down by: a finer step moves the lines by less than a pixel.
# A region wider than LEVELS steps is grown in LEVELS levels: each level costs a pass over
# the region, and a line moved by a fraction of the region's width is still at its waist.
LEVEL_STEP = 0.5
LEVELS = 64
KERNEL = np.ones((3, 3), np.uint8)


def split_touching(binary, depth):
    """binary (uint8, 0 and 1) with a line of background between touching objects whose
    distance peaks stand `depth` pixels or more above the pass between them. Each connected
    region is split in a window of its own: the work is that of the regions, not the frame."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    carved = binary.copy()
    for i in range(1, count):
        x, y, w, h = stats[i, :4]
        # A pixel of background round the region where the frame has one, as in the frame.
        window = (slice(max(y - 1, 0), y + h + 1), slice(max(x - 1, 0), x + w + 1))
        lines = split_lines((components[window] == i).astype(np.uint8), depth)
        if lines is not None:
            carved[window][lines] = 0
    return carved


def split_lines(region, depth):
    """The pixels to carve out of one region (0 and 1) to split it, or None where it is one
    object."""
    distance = cv2.distanceTransform(region, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    if distance.max() < depth:      # no peak stands depth above anything
        return None
    seeds = seed_labels(region, distance, depth)
    if seeds.max() < 2:
        return None
    regions = grow_seeds(seeds, distance)
    return (regions < 0) | contacts(regions)


def seed_labels(region, distance, depth):
    """One label per h-maximum of distance in a region: a regional maximum of distance
    lowered by depth and grown back under itself, where ridges whose heights differ by less
    than depth are one plateau (a long cell is one ridge of slightly uneven height)."""
    domes = reconstruct_by_dilation(distance - depth, distance)
    tops = (domes - reconstruct_by_dilation(domes - PLATEAU_STEP, domes) > PLATEAU_STEP / 2)
    return cv2.connectedComponents((tops & (region > 0)).astype(np.uint8), connectivity=8)[1]


def reconstruct_by_dilation(marker, mask):
    """Greyscale reconstruction of marker under mask: marker dilated within mask until it
    no longer changes."""
    current = np.minimum(marker, mask).astype(np.float32)
    while True:
        grown = np.minimum(cv2.dilate(current, KERNEL), mask)
        if np.array_equal(grown, current):
            return current
        current = grown


def grow_seeds(seeds, distance):
    """The seeds' labels grown over the pixels of distance > 0, the highest levels first,
    each level until no seed reaches further; a pixel two seeds reach in the same step is
    -1, a line between them. (cv2.watershed floods by the difference between neighbours,
    not by level, and would let one seed flow round another.)"""
    labels = seeds.astype(np.float32)
    free = (distance > 0) & (labels == 0)
    top = float(distance.max())
    step = max(LEVEL_STEP, top / LEVELS)
    for level in np.arange(top, 0, -step):
        open_now = free & (distance >= level - step)
        while True:
            highest = cv2.dilate(labels, KERNEL)
            reached = open_now & (highest > 0)
            if not reached.any():
                break
            lowest = cv2.erode(np.where(labels > 0, labels, np.float32(np.inf)), KERNEL)
            labels[reached] = np.where(lowest[reached] < highest[reached], -1,
                                       highest[reached])
            open_now &= ~reached
            free &= ~reached
    return labels.astype(np.int32)


def contacts(regions):
    """Pixels of one region beside a pixel of another: two fronts that reach neighbouring
    pixels in one step meet without a line pixel between them, and a line at an angle is a
    staircase whose corners two regions touch across. Carving these keeps every two apart
    under 8-connectivity."""
    contact = np.zeros(regions.shape, bool)
    # Each pixel with its neighbour right, down, down-right and down-left.
    for here, there in (((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
                        ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
                        ((slice(None, -1), slice(None, -1)), (slice(1, None), slice(1, None))),
                        ((slice(None, -1), slice(1, None)), (slice(1, None), slice(None, -1)))):
        a, b = regions[here], regions[there]
        contact[here] |= (a > 0) & (b > 0) & (a != b)
    return contact
