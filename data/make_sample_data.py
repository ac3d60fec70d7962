#!/usr/bin/env python
"""Generate seeded synthetic bright-field frames of endothelial cells and silica beads,
annotated in LabelMe's format, in the setting of Samani, Guo & Banerjee (2019).

Writes  <out-dir>/src/sample_XX.png       8-bit grey frames
        <out-dir>/labelme/sample_XX.json  LabelMe 5.x annotations: cells as polygons,
                                          beads as circles (centre + rim point)
        <out-dir>/classes.txt             background, bead, cell

Scene: low-contrast, textured, elongated cells (some touching), round beads with a
bright core and halo inside a dark rim (often touching a cell), dust specks, uneven
illumination, slight optical blur and shot/read noise. A global threshold cannot
separate beads from cells: the script prints how much their intensity histograms overlap.

Every drawn object is exactly its annotated region (a pixel belongs to a shape when its
centre (col + 0.5, row + 0.5) lies inside); later shapes cover earlier ones. Frame i
depends only on (--seed, i); its annotation only on the geometry stream, so the JSON
files stay the same when the rendering changes.
"""
import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from matplotlib.path import Path as PolygonPath
from tqdm import tqdm

# Runs as a plain script from any folder: the shared helpers live one folder up.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from image_io import write_image  # noqa: E402
from outputs import atomic_write_text, write_json  # noqa: E402
from cli import run_cli  # noqa: E402

CLASSES = ("background", "bead", "cell")
BEAD, CELL = 1, 2
LABELME_VERSION = "5.5.0"
DEFAULT_SEED = 1907         # the paper's arXiv number
GEOMETRY, APPEARANCE = 0, 1  # independent random streams per frame


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("output")
    g.add_argument("--out-dir", default=str(Path(__file__).resolve().parent),
                   help="folder receiving src/, labelme/ and classes.txt "
                        "(default: the folder of this script)")
    g.add_argument("--count", type=int, default=20,
                   help="number of frames (default: %(default)s)")
    g = p.add_argument_group("scene")
    g.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help="random seed; the same seed gives the same files (default: %(default)s)")
    g.add_argument("--width", type=int, default=640, help="frame width (default: %(default)s)")
    g.add_argument("--height", type=int, default=480, help="frame height (default: %(default)s)")
    args = p.parse_args(argv)
    if args.count < 1 or args.count > 99:
        p.error("--count must be between 1 and 99 (names have two digits)")
    if args.width < 160 or args.height < 160:
        p.error("--width and --height must be at least 160 to hold cells")
    return args


# ---------------------------------------------------------------- geometry

def pixel_centres(x0, y0, x1, y1):
    """Centres of the pixels in columns x0..x1-1, rows y0..y1-1, as (rows, cols) arrays."""
    return np.meshgrid(np.arange(x0, x1) + 0.5, np.arange(y0, y1) + 0.5)


def polygon_mask(points, height, width):
    x0, y0 = np.floor(points.min(axis=0)).astype(int).clip(0)
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + 1
    x1, y1 = min(x1, width), min(y1, height)
    xs, ys = pixel_centres(x0, y0, x1, y1)
    inside = PolygonPath(points).contains_points(np.column_stack([xs.ravel(), ys.ravel()]))
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = inside.reshape(xs.shape)
    return mask


def disc_distance(centre, height, width):
    """Distance of every pixel centre from `centre`."""
    xs, ys = pixel_centres(0, 0, width, height)
    return np.hypot(xs - centre[0], ys - centre[1])


def cell_outline(rng, centre, length, thickness, angle):
    """A simple polygon: a spindle (superellipse) with a wobbly edge, slightly bent."""
    n = int(rng.integers(30, 42))
    step = 2 * np.pi / n
    theta = np.arange(n) * step + rng.uniform(-0.4, 0.4, n) * step
    p = rng.uniform(1.1, 1.9)   # below 2 the ends are pointed, like spreading endothelial cells
    a, b = length / 2, thickness / 2
    r = (np.abs(np.cos(theta) / a) ** p + np.abs(np.sin(theta) / b) ** p) ** (-1 / p)
    wobble = sum(rng.normal(0, 0.09 / k ** 0.7) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
                 for k in range(2, 8))
    r *= np.clip(1 + wobble, 0.55, None)
    x, y = r * np.cos(theta), r * np.sin(theta)
    # A shear (x, y + f(x)) maps the plane one-to-one, so the bent outline stays simple.
    y = y + rng.uniform(-0.3, 0.3) * x ** 2 / a
    c, s = np.cos(angle), np.sin(angle)
    return np.column_stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y])


def labelme_points(points, height, width):
    """Round as an annotator's clicks would be stored, inside the image as LabelMe keeps them."""
    points = np.column_stack([np.clip(points[:, 0], 0, width), np.clip(points[:, 1], 0, height)])
    return np.round(points, 2)


def place_cells(rng, height, width):
    """Cell polygons; about a third sit against an earlier cell, the rest apart."""
    polys, specs, covered = [], [], np.zeros((height, width), bool)
    for _ in range(int(rng.integers(4, 11))):
        length = rng.uniform(40, 120)
        thickness = length * rng.uniform(0.28, 0.6)
        for _ in range(40):
            if specs and rng.random() < 0.35:
                centre, angle = neighbour_position(rng, specs[int(rng.integers(len(specs)))],
                                                   thickness)
            else:
                centre = rng.uniform([0.05 * width, 0.05 * height], [0.95 * width, 0.95 * height])
                angle = rng.uniform(0, np.pi)
            poly = labelme_points(cell_outline(rng, centre, length, thickness, angle), height, width)
            mask = polygon_mask(poly, height, width)
            if mask.sum() > 200 and (mask & covered).sum() < 0.08 * mask.sum():
                break
        else:
            continue
        polys.append(poly)
        specs.append((centre, length, thickness, angle))
        covered |= mask
    return polys


def neighbour_position(rng, spec, thickness):
    """Centre and angle for a cell lying alongside `spec`, their edges touching."""
    centre, length, other_thickness, angle = spec
    side = rng.choice([-1, 1])
    across = side * (other_thickness + thickness) / 2 * rng.uniform(0.8, 1.0)
    along = rng.uniform(-0.3, 0.3) * length
    c, s = np.cos(angle), np.sin(angle)
    new_centre = centre + np.array([c * along - s * across, s * along + c * across])
    return new_centre, angle + rng.normal(0, 0.25)


def place_beads(rng, cells, height, width):
    """(centre, rim point) pairs; about half the beads sit on a cell's edge, none overlap."""
    beads = []
    for _ in range(int(rng.integers(3, 9))):
        radius = rng.uniform(8, 14)
        for _ in range(60):
            if cells and rng.random() < 0.5:
                poly = cells[int(rng.integers(len(cells)))]
                vertex = poly[int(rng.integers(len(poly)))]
                outward = vertex - poly.mean(axis=0)
                outward /= max(np.hypot(*outward), 1e-9)
                centre = vertex + outward * radius * rng.uniform(0.2, 0.9)
            else:
                centre = rng.uniform([0, 0], [width, height])
            inside = (radius + 1 <= centre[0] <= width - radius - 1
                      and radius + 1 <= centre[1] <= height - radius - 1)
            apart = all(np.hypot(*(centre - c)) > radius + r + 2 for c, r in beads)
            if inside and apart:
                beads.append((centre, radius))
                break
    circles = []
    for centre, radius in beads:
        phi = rng.uniform(0, 2 * np.pi)
        rim = centre + radius * np.array([np.cos(phi), np.sin(phi)])
        circles.append(np.round(np.array([centre, rim]), 2))
    return circles


def frame_geometry(seed, index, height, width):
    rng = np.random.default_rng([seed, index, GEOMETRY])
    cells = place_cells(rng, height, width)
    return cells, place_beads(rng, cells, height, width)


# ---------------------------------------------------------------- appearance

def smooth_noise(rng, height, width, sigma):
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field = cv2.GaussianBlur(rng.standard_normal((height, width)), (0, 0), sigma)
    return field / max(field.std(), 1e-9)


def illumination(rng, height, width):
    """Multiplicative field: a tilt, off-centre vignetting and faint large blotches."""
    xs, ys = pixel_centres(0, 0, width, height)
    u, v = (xs - width / 2) / (width / 2), (ys - height / 2) / (width / 2)
    phi = rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(0.06, 0.16) * (u * np.cos(phi) + v * np.sin(phi))
    cu, cv = rng.uniform(-0.3, 0.3, 2)
    vignette = rng.uniform(0.12, 0.25) * ((u - cu) ** 2 + (v - cv) ** 2)
    blotches = rng.uniform(0.01, 0.03) * smooth_noise(rng, height, width, 50)
    return 1 + tilt - vignette + blotches


def add_dust(rng, scene, height, width):
    """Small out-of-focus specks, bright or dark: background that looks like something."""
    xs, ys = pixel_centres(0, 0, width, height)
    for _ in range(int(rng.integers(6, 16))):
        x, y = rng.uniform([0, 0], [width, height])
        sigma = rng.uniform(1.0, 3.5)
        amp = rng.choice([-1, 1]) * rng.uniform(10, 30)
        scene += amp * np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))


def paint_cell(rng, scene, mask, poly, textures):
    """Cytoplasm near the background level: granular texture, one-sided relief shading,
    a dark membrane line, a darker nucleus with nucleoli and a few vesicles."""
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    inside = mask[y0:y1, x0:x1]
    depth = cv2.distanceTransform(np.pad(inside, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    gx, gy = pixel_centres(x0, y0, x1, y1)
    centre = poly.mean(axis=0)
    extent = max(np.ptp(poly[:, 0]), np.ptp(poly[:, 1]), 1.0) / 2
    phi = rng.uniform(0, 2 * np.pi)
    relief = ((gx - centre[0]) * np.cos(phi) + (gy - centre[1]) * np.sin(phi)) / extent
    fine, coarse = textures[0][y0:y1, x0:x1], textures[1][y0:y1, x0:x1]
    value = (rng.uniform(-6, 6)
             + rng.uniform(4, 9) * relief
             + rng.uniform(4, 8) * fine + rng.uniform(2, 5) * coarse
             + rng.uniform(-5, 5) * (1 - np.exp(-depth / 6))
             - rng.uniform(8, 18) * np.exp(-depth / 1.2))
    value += nucleus(rng, gx, gy, centre, poly, fine)
    value += vesicles(rng, gx, gy, xs, ys)
    scene[y0:y1, x0:x1][inside] = value[inside]


def nucleus(rng, gx, gy, centre, poly, fine):
    """A dark, textured ellipse along the cell's main axis, with one to three nucleoli."""
    axis = np.linalg.svd(poly - poly.mean(axis=0), full_matrices=False)[2][0]
    half_len = np.ptp((poly - centre) @ axis) / 2
    half_wid = np.ptp((poly - centre) @ np.array([-axis[1], axis[0]])) / 2
    a, b = rng.uniform(0.2, 0.3) * half_len, rng.uniform(0.45, 0.65) * half_wid
    nc = centre + axis * rng.uniform(-0.15, 0.15) * half_len
    du, dv = gx - nc[0], gy - nc[1]
    along, across = du * axis[0] + dv * axis[1], -du * axis[1] + dv * axis[0]
    rho = np.sqrt((along / max(a, 1)) ** 2 + (across / max(b, 1)) ** 2)
    body = 1 / (1 + np.exp((rho - 1) * 8))   # soft edge: nuclei are out of the focal plane
    value = body * (-rng.uniform(8, 16) + 3 * fine)
    for _ in range(int(rng.integers(1, 4))):
        spot = nc + axis * rng.uniform(-0.5, 0.5) * a
        value -= body * rng.uniform(6, 14) * np.exp(
            -((gx - spot[0]) ** 2 + (gy - spot[1]) ** 2) / (2 * rng.uniform(1.0, 2.0) ** 2))
    return value


def vesicles(rng, gx, gy, xs, ys):
    value = np.zeros(gx.shape)
    for _ in range(int(rng.integers(2, 9))):
        k = int(rng.integers(len(xs)))
        amp = rng.choice([-1, 1]) * rng.uniform(8, 22)
        value += amp * np.exp(-((gx - xs[k] - 0.5) ** 2 + (gy - ys[k] - 0.5) ** 2) / 2.0)
    return value


def paint_bead(rng, scene, circle, height, width):
    """Radial profile of a silica bead in bright field: bright core, bright halo, dark rim;
    about a quarter are slightly out of focus, with weaker contrast."""
    centre, rim = circle
    radius = np.hypot(*(rim - centre))
    dist = disc_distance(centre, height, width)
    inside = dist <= radius
    rho = dist[inside] / radius
    contrast = rng.uniform(0.45, 0.7) if rng.random() < 0.25 else 1.0
    scene[inside] = contrast * (
        rng.uniform(-8, 4)
        + rng.uniform(15, 40) * np.exp(-(rho / 0.28) ** 2)
        + rng.uniform(15, 35) * np.exp(-((rho - 0.62) / 0.14) ** 2)
        - rng.uniform(35, 65) * np.exp(-((rho - 0.93) / 0.09) ** 2))
    return inside


def render(seed, index, cells, beads, height, width):
    """The grey frame and its class-index map for one frame's geometry."""
    rng = np.random.default_rng([seed, index, APPEARANCE])
    textures = (smooth_noise(rng, height, width, 1.2), smooth_noise(rng, height, width, 4.0))
    scene = 1.5 * textures[0] + 2.5 * smooth_noise(rng, height, width, 12)
    add_dust(rng, scene, height, width)
    label = np.zeros((height, width), np.uint8)
    for poly in cells:
        mask = polygon_mask(poly, height, width)
        paint_cell(rng, scene, mask, poly, textures)
        label[mask] = CELL
    for circle in beads:
        label[paint_bead(rng, scene, circle, height, width)] = BEAD
    # Bright field is transmitted light: the lamp's unevenness multiplies everything.
    light = (rng.uniform(125, 165) + scene) * illumination(rng, height, width)
    light = cv2.GaussianBlur(light, (0, 0), rng.uniform(0.6, 1.1))
    gain = rng.uniform(6, 10)    # electrons per grey level: sets the shot noise
    noisy = rng.poisson(np.clip(light, 0, None) * gain) / gain + rng.normal(0, 1.2, light.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), label


# ---------------------------------------------------------------- output

def labelme_json(name, cells, beads, height, width):
    def shape(label, points, shape_type):
        return {"label": label, "points": points.tolist(), "group_id": None, "description": "",
                "shape_type": shape_type, "flags": {}, "mask": None}

    return {"version": LABELME_VERSION, "flags": {},
            "shapes": [shape("cell", p, "polygon") for p in cells]
            + [shape("bead", c, "circle") for c in beads],
            "imagePath": f"../src/{name}.png", "imageData": None,
            "imageHeight": height, "imageWidth": width}


def overlap_report(hist):
    """How badly one global threshold separates bead from cell pixels."""
    p_bead, p_cell = hist[BEAD] / hist[BEAD].sum(), hist[CELL] / hist[CELL].sum()
    overlap = np.minimum(p_bead, p_cell).sum()
    # Balanced accuracy of "bead if above t" (or below t), at the best t.
    above = np.cumsum(p_cell) + (1 - np.cumsum(p_bead))
    best = max(above.max(), (2 - above).max()) / 2
    return (f"bead/cell intensity histogram overlap {overlap:.0%}; the best single global "
            f"threshold tells them apart with balanced accuracy {best:.0%} (50% = chance)")


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out_dir)
    for sub in ("src", "labelme"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    hist = np.zeros((len(CLASSES), 256), np.int64)
    for index in tqdm(range(1, args.count + 1), desc="frames", unit="frame", disable=None):
        name = f"sample_{index:02d}"
        cells, beads = frame_geometry(args.seed, index, args.height, args.width)
        image, label = render(args.seed, index, cells, beads, args.height, args.width)
        write_image(out / "src" / f"{name}.png", image)
        write_json(out / "labelme" / f"{name}.json",
                   labelme_json(name, cells, beads, args.height, args.width))
        for cls in range(len(CLASSES)):
            hist[cls] += np.bincount(image[label == cls], minlength=256)
    atomic_write_text(out / "classes.txt", "\n".join(CLASSES) + "\n")
    print(f"wrote {args.count} frames to {out / 'src'} and their annotations to {out / 'labelme'}")
    print(overlap_report(hist))


if __name__ == "__main__":
    run_cli(main)
