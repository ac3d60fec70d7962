"""Masks as LabelMe annotations: one polygon per object, holes kept, for correcting in LabelMe.

A polygon's vertices are in LabelMe's canvas coordinates (pixel (i, j) is the square
[i, i+1) x [j, j+1)). Each object is traced on the mask upsampled 2x, so the outline runs a
quarter pixel outside the object's boundary pixel centres and a quarter pixel inside its
neighbours' in the original frame: labelme_to_label.py, which takes a pixel when its centre is
inside, gives back exactly the mask before simplification (except where 8-connected objects of
two classes cross at a pixel corner, which only noise makes). Simplification (Douglas-Peucker)
keeps the polygon within the tolerance of that outline, so it moves the boundary of small or
thin objects by a pixel here and there.

Holes are polygons of the background class drawn after their object; shapes are listed
largest first, so that whatever lies inside another shape (a hole inside its object, a
nucleus inside a cytoplasm's hole) is drawn after it, as LabelMe draws later shapes on top.
"""
import os
from pathlib import Path

import cv2
import numpy as np

LABELME_VERSION = "5.5.0"
# Measured round trip at 0.5 px (bench/README.md): per-class IoU >= 0.992 on the sample's and
# bbbc030's masks with a third of the vertices; 0 keeps every vertex and the mask exactly.
DEFAULT_TOLERANCE = 0.5


def mask_shapes(mask, classes, tolerance=DEFAULT_TOLERANCE):
    """LabelMe polygon shapes of every object of each non-background class, largest first."""
    shapes = []
    for c in range(1, len(classes)):
        doubled = np.repeat(np.repeat((mask == c).astype(np.uint8), 2, axis=0), 2, axis=1)
        contours, hierarchy = cv2.findContours(doubled, cv2.RETR_CCOMP,
                                               cv2.CHAIN_APPROX_SIMPLE)
        for contour, (_, _, _, parent) in zip(contours, hierarchy[0] if contours else []):
            points = polygon_points(contour, tolerance)
            if points is not None:
                # a contour with a parent is a hole of that object
                shapes.append((classes[0] if parent >= 0 else classes[c], points))
    shapes.sort(key=lambda shape: -abs(cv2.contourArea(np.float32(shape[1]))))
    return [{"label": label, "points": points.tolist(), "group_id": None, "description": "",
             "shape_type": "polygon", "flags": {}, "mask": None}
            for label, points in shapes]


def polygon_points(contour, tolerance):
    """Canvas coordinates of a contour traced on the 2x mask, simplified; None if degenerate.

    A simplification that folds a small object onto itself (an 8-connected V or zigzag of a
    few pixels) covers no pixel centre, which labelme_to_label.py refuses: such a contour is
    kept unsimplified, as it covers its pixels exactly."""
    traced = contour
    if tolerance > 0:
        contour = cv2.approxPolyDP(contour, 2 * tolerance, closed=True)
    points = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / 2
    points = points if len(points) >= 3 else _as_square(points)
    if tolerance > 0 and not _covers_a_pixel(points):
        return polygon_points(traced, 0)
    return points


def _covers_a_pixel(points):
    """Whether labelme_to_label.py's rasterizer takes any pixel centre inside the polygon
    (tested in a window of its bounding box: whole-pixel shifts keep the pixel grid)."""
    from labelme_to_label import polygon_mask
    x0, y0 = np.floor(points.min(axis=0))
    x1, y1 = np.ceil(points.max(axis=0))
    return polygon_mask(points - (x0, y0), int(y1 - y0) + 1, int(x1 - x0) + 1).any()


def _as_square(points):
    """A degenerate trace (a line of single pixels collapsed by simplification): its
    bounding box, which covers the same pixel centres."""
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    x0, y0, x1, y1 = x0 - 0.25, y0 - 0.25, x1 + 0.25, y1 + 0.25
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def annotation(mask, classes, image_path, json_dir, tolerance=DEFAULT_TOLERANCE):
    """A LabelMe document for the mask of the image at image_path, to be saved in json_dir
    (imagePath relative to it, no embedded image data)."""
    return {"version": LABELME_VERSION, "flags": {},
            "shapes": mask_shapes(mask, classes, tolerance),
            "imagePath": os.path.relpath(Path(image_path).resolve(), Path(json_dir).resolve()),
            "imageData": None, "imageHeight": int(mask.shape[0]),
            "imageWidth": int(mask.shape[1])}


def moved_image_path(image_path, json_dir, new_json_dir):
    """imagePath of an annotation saved in json_dir, for a copy saved in new_json_dir: the
    same image, relative to the copy; an image beside the annotation (a stack plane's PNG)
    or given whole stays as it is."""
    if os.path.isabs(image_path):
        return image_path
    json_dir = Path(json_dir).resolve()
    image = (json_dir / image_path).resolve()
    if image.parent == json_dir:
        return image_path
    return os.path.relpath(image, Path(new_json_dir).resolve())
