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
# A step that computes, by indexing, only the pixels beside those the step before changed
# costs about as much as a step of OpenCV over SHARE pixels of the window per pixel changed,
# counting FRONT_STEP pixels more for its own calls; OpenCV's step of reconstruction is
# cheaper than that of growth (measured on windows of 40 to 1280 px square).
RECONSTRUCT_SHARE = 128
GROW_SHARE = 64
FRONT_STEP = 32


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
    no longer changes. A step can change only the pixels beside one that the step before
    changed: once those are few, only they are computed, by indexing (a step over the whole
    window each time, as many as the ridge is long, made a long filament take minutes)."""
    mask = padded(mask.astype(np.float32), -np.inf)
    current = np.minimum(padded(marker.astype(np.float32), -np.inf), mask)
    limit, around = mask.ravel(), neighbourhood(current)
    changed = None      # the pixels the step before changed, where few enough to list
    while True:
        if changed is None:
            grown = np.minimum(cv2.dilate(current, KERNEL), mask)
            moved, current = grown != current, grown
            count = np.count_nonzero(moved)
            if not count:
                return current[2:-2, 2:-2]
            if front_step(count, current.size, RECONSTRUCT_SHARE):
                changed = moved.ravel().nonzero()[0]
        else:
            flat = current.ravel()
            near = beside(changed, around)
            grown = np.minimum(flat[around[:, None] + near].max(axis=0), limit[near])
            moved = grown != flat[near]
            changed = near[moved]
            flat[changed] = grown[moved]       # after every pixel's step was computed
            if not changed.size:
                return current[2:-2, 2:-2]
            if not front_step(changed.size, flat.size, RECONSTRUCT_SHARE):
                changed = None


def grow_seeds(seeds, distance):
    """The seeds' labels grown over the pixels of distance > 0, the highest levels first,
    each level until no seed reaches further; a pixel two seeds reach in the same step is
    -1, a line between them. (cv2.watershed floods by the difference between neighbours,
    not by level, and would let one seed flow round another.) A step can reach only the
    pixels beside one that the step before labelled or, a level's first, that the level
    opened (any other open pixel had no label beside it a step before): once those are
    few, only they are looked at."""
    labels = padded(seeds.astype(np.float32), 0)
    flat, around = labels.ravel(), neighbourhood(labels)
    distance = padded(distance, 0).ravel()
    top = float(distance.max())
    step = max(LEVEL_STEP, top / LEVELS)
    levels = np.arange(top, 0, -step)
    free = np.flatnonzero((distance > 0) & (flat == 0))
    # The level each free pixel opens at: the first whose level - step its distance reaches
    # (distance >= level - step, compared in float64 as numpy compares them).
    opens_at = np.searchsorted(-(levels - step), -distance[free].astype(np.float64))
    is_open = np.zeros(flat.size, bool)
    for at in range(levels.size):
        changed = free[opens_at == at]
        is_open[changed] = True
        while changed.size:
            if front_step(changed.size, flat.size, GROW_SHARE):
                near = beside(changed, around)
                near = near[is_open[near]]
                hood = flat[around[:, None] + near]
                highest = hood.max(axis=0)
                lowest = np.where(hood > 0, hood, np.float32(np.inf)).min(axis=0)
            else:
                highest = cv2.dilate(labels, KERNEL).ravel()
                near = (is_open & (highest > 0)).nonzero()[0]
                highest = highest[near]
                lowest = cv2.erode(np.where(labels > 0, labels, np.float32(np.inf)),
                                   KERNEL).ravel()[near]
            reached = highest > 0
            changed = near[reached]
            flat[changed] = np.where(lowest[reached] < highest[reached], -1, highest[reached])
            is_open[changed] = False
    return labels[2:-2, 2:-2].astype(np.int32)


def front_step(changed, window, share):
    """Whether a step that computes only the pixels beside those changed, by indexing, is
    cheaper than a step of OpenCV over the whole window."""
    return (changed + FRONT_STEP) * share < window


def padded(image, value):
    """image with two pixels of value round it, which no step changes: a pixel's
    neighbours' neighbours are all in the array, and flat indices need no bounds."""
    out = np.full((image.shape[0] + 4, image.shape[1] + 4), value, image.dtype)
    out[2:-2, 2:-2] = image
    return out


def neighbourhood(image):
    """The offsets of a pixel's 3x3 neighbourhood in image.ravel(), in 4 bytes where the
    window's indices fit (they sort twice as fast as in 8)."""
    offsets = (np.arange(-1, 2)[:, None] * image.shape[1] + np.arange(-1, 2)).ravel()
    return offsets.astype(np.int32 if image.size < 2 ** 30 else np.int64)


def beside(pixels, around):
    """pixels (flat indices) and their neighbours, each once, in order. (np.unique is ten
    times slower.)"""
    near = np.sort((around[:, None] + pixels.astype(around.dtype, copy=False)).ravel())
    first = np.ones(near.size, bool)
    first[1:] = near[1:] != near[:-1]
    return near[first]


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
