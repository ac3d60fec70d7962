"""Split the labelled images into train and test, then cut random augmented patches.

Reads   <data-dir>/src/<name>.<png|jpg|tif>, <data-dir>/label/<name>.<png|npy>,
        <data-dir>/classes.txt and, if present, <data-dir>/test.txt (the fixed test list).
Writes  <work-dir>/split.json, train.txt, test.txt      the split, reproducible from files
        <work-dir>/test/src, test/label                 the held-out images and labels
        <work-dir>/train/src, train/label               the patches (lossless PNG)
        <work-dir>/train/patches.csv                    where each patch came from
        <work-dir>/figures/samples.png                  sample images with their annotations

Each patch is a random crop of a random training image with one of the 8 rotations/flips.
With --foreground-fraction F, a fraction F of the patches (chosen at random) are instead
random crops that contain a randomly chosen foreground pixel (any class but 0), which gives
sparse objects more of the training signal. Patch i depends only on (--seed, i) and the
images, so the output is the same for any --workers.
"""
import argparse
import csv
import shutil
from pathlib import Path

import numpy as np

from seg_common import (PipelineError, colorize, default_workers, dihedral, find_label,
                        fresh_dir, list_images, parallel_map, publish_dir, read_classes,
                        read_image, read_label, read_name_list, reflect_pad, run_cli,
                        save_figure, write_image, write_json, atomic_write_text)

CHUNK = 200                 # patches per task: big enough to amortise, small for a smooth bar
CACHE_BYTES = 1 << 30       # per worker: images stay cached up to this, whatever the patch count
_caches = {}                # per process; the pool sends each task a fresh copy of the writer


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("folders")
    g.add_argument("--data-dir", default="data", help="data folder (default: %(default)s)")
    g.add_argument("--work-dir", default="augmented_75k",
                   help="output folder for split, test copy and patches (default: %(default)s)")
    g = p.add_argument_group("train/test split (ignored when <data-dir>/test.txt exists)")
    g.add_argument("--test-size", type=float, default=0.1,
                   help="fraction of images held out for test, as the paper (default: %(default)s)")
    g.add_argument("--random-state", type=int, default=2018,
                   help="seed of train_test_split, as the paper (default: %(default)s)")
    g = p.add_argument_group("patches")
    g.add_argument("--num-patches", type=int, default=75000,
                   help="number of random training patches, as the paper (default: %(default)s)")
    g.add_argument("--patch-size", type=int, default=256,
                   help="patch side in pixels, as the paper (default: %(default)s)")
    g.add_argument("--foreground-fraction", type=float, default=0.0,
                   help="fraction of patches forced to contain a foreground pixel; 0 is the "
                        "paper's uniform sampling (default: %(default)s)")
    g.add_argument("--seed", type=int, default=2018,
                   help="seed of crop positions and transforms (default: %(default)s)")
    g.add_argument("--workers", type=int, default=default_workers(),
                   help="processes writing patches; the output does not depend on it "
                        "(default: all cores, %(default)s)")
    p.add_argument("--pdf", action="store_true",
                   help="also write the samples figure as PDF")
    args = p.parse_args(argv)
    if args.num_patches < 1 or args.patch_size < 1 or args.workers < 1:
        p.error("--num-patches, --patch-size and --workers must be positive")
    if not 0 <= args.foreground_fraction <= 1:
        p.error("--foreground-fraction must be between 0 and 1")
    if not 0 < args.test_size < 1:
        p.error("--test-size must be between 0 and 1")
    return args


# ---------------------------------------------------------------- split

def labelled_images(data_dir, num_classes):
    """name -> (image path, label path, (h, w)) for every image, checking its label."""
    images = list_images(Path(data_dir) / "src")
    if not images:
        raise PipelineError(f"no images found in {Path(data_dir) / 'src'}")
    missing = [n for n in images if find_label(Path(data_dir) / "label", n) is None]
    if missing:
        raise PipelineError(f"{len(missing)} image(s) have no label in {Path(data_dir) / 'label'}: "
                            f"{', '.join(missing[:10])}")
    table = {}
    for name, img_path in images.items():
        lbl_path = find_label(Path(data_dir) / "label", name)
        img, lbl = read_image(img_path), read_label(lbl_path)
        if img.shape[:2] != lbl.shape:
            raise PipelineError(f"{img_path.name} is {img.shape[1]}x{img.shape[0]} but its label "
                                f"{lbl_path.name} is {lbl.shape[1]}x{lbl.shape[0]}")
        if lbl.max() >= num_classes:
            raise PipelineError(f"label {lbl_path} holds class {lbl.max()} but classes.txt lists "
                                f"only {num_classes} classes (0..{num_classes - 1})")
        table[name] = (img_path, lbl_path, img.shape[:2])
    return table


def split_names(names, data_dir, test_size, random_state):
    """(train, test, how) from <data-dir>/test.txt if present, else the paper's random split."""
    fixed = Path(data_dir) / "test.txt"
    if fixed.is_file():
        test = read_name_list(fixed)
        unknown = sorted(set(test) - set(names))
        if unknown:
            raise PipelineError(f"{fixed} lists images not in src/: {', '.join(unknown[:10])}")
        test_set = set(test)
        return [n for n in names if n not in test_set], sorted(test_set), f"fixed list {fixed}"
    from sklearn.model_selection import train_test_split
    if len(names) < 2:
        raise PipelineError("at least two labelled images are needed to split train and test")
    train, test = train_test_split(names, test_size=test_size, random_state=random_state)
    return sorted(train), sorted(test), (f"train_test_split(test_size={test_size}, "
                                         f"random_state={random_state})")


def write_split(work, train, test, how):
    write_json(work / "split.json", {"method": how, "train": train, "test": test})
    atomic_write_text(work / "train.txt", "".join(f"{n}\n" for n in train))
    atomic_write_text(work / "test.txt", "".join(f"{n}\n" for n in test))


def copy_test_set(table, test, work):
    staging = fresh_dir(work / "test")
    (staging / "src").mkdir()
    (staging / "label").mkdir()
    for name in test:
        img_path, lbl_path, _ = table[name]
        shutil.copy2(img_path, staging / "src" / img_path.name)
        write_image(staging / "label" / f"{name}.png", read_label(lbl_path), atomic=False)
    publish_dir(staging, work / "test")


# ---------------------------------------------------------------- patches

def patch_params(seed, index, shapes, patch_size, foreground_fraction=0.0, foreground=None):
    """(image index, y, x, transform) of patch `index`, a function of the seed, the index and
    the images only. `foreground(image)` gives the flat indices of the image's foreground
    pixels in its padded frame; it is asked only for patches that must contain one."""
    rng = np.random.default_rng([seed, index])
    image = int(rng.integers(len(shapes)))
    h, w = (max(s, patch_size) for s in shapes[image])
    y = int(rng.integers(h - patch_size + 1))
    x = int(rng.integers(w - patch_size + 1))
    transform = int(rng.integers(8))
    if rng.random() < foreground_fraction:
        pixels = foreground(image)
        if len(pixels):     # an image without foreground keeps its uniform crop
            cy, cx = divmod(int(pixels[rng.integers(len(pixels))]), w)
            # A crop with the pixel at a random offset, shifted back inside the frame where
            # it would leave it.
            y = int(np.clip(cy - rng.integers(patch_size), 0, h - patch_size))
            x = int(np.clip(cx - rng.integers(patch_size), 0, w - patch_size))
    return image, y, x, transform


class ImageCache:
    """Padded image and label pairs, and the label's foreground pixels once asked for, kept
    in memory up to a byte budget (oldest dropped first)."""

    def __init__(self, sources, patch_size):
        self.sources, self.patch_size, self.items = sources, patch_size, {}

    def get(self, image):
        return self._entry(image)[:2]

    def foreground(self, image):
        """Flat indices of the image's non-background pixels in its padded frame."""
        entry = self._entry(image)
        if len(entry) == 2:
            entry.append(np.flatnonzero(entry[1]).astype(np.int32))
        return entry[2]

    def _entry(self, image):
        if image not in self.items:
            img_path, lbl_path = self.sources[image]
            entry = [reflect_pad(read_image(img_path), self.patch_size, self.patch_size),
                     reflect_pad(read_label(lbl_path), self.patch_size, self.patch_size)]
            while self.items and sum(map(entry_bytes, self.items.values())) + \
                    entry_bytes(entry) > CACHE_BYTES:
                self.items.pop(next(iter(self.items)))
            self.items[image] = entry
        return self.items[image]


def entry_bytes(entry):
    """An entry's size, counting room for its foreground list (at most 4 bytes per pixel)
    whether or not it has been made yet."""
    return entry[0].nbytes + 5 * entry[1].nbytes


class PatchWriter:
    """Writes one chunk of patches; a picklable callable for the process pool."""

    def __init__(self, sources, shapes, out_dir, patch_size, seed, digits, foreground_fraction):
        self.sources, self.shapes, self.out_dir = sources, shapes, out_dir
        self.patch_size, self.seed, self.digits = patch_size, seed, digits
        self.foreground_fraction = foreground_fraction

    def __call__(self, span):
        key = (tuple(self.sources), self.patch_size)
        cache = _caches.setdefault(key, ImageCache(self.sources, self.patch_size))
        rows = []
        for index in range(*span):
            image, y, x, k = patch_params(self.seed, index, self.shapes, self.patch_size,
                                          self.foreground_fraction, cache.foreground)
            img, lbl = cache.get(image)
            crop = (slice(y, y + self.patch_size), slice(x, x + self.patch_size))
            name = f"{index:0{self.digits}d}.png"
            write_image(self.out_dir / "src" / name, dihedral(img[crop], k), atomic=False)
            write_image(self.out_dir / "label" / name, dihedral(lbl[crop], k), atomic=False)
            rows.append((name, image, y, x, k))
        return len(rows), rows


def write_patches(table, train, work, num_patches, patch_size, seed, workers,
                  foreground_fraction=0.0):
    if not train:
        raise PipelineError("no training images left after the split")
    sources = [table[n][:2] for n in train]
    shapes = [table[n][2] for n in train]
    staging = fresh_dir(work / "train")
    (staging / "src").mkdir()
    (staging / "label").mkdir()
    writer = PatchWriter(sources, shapes, staging, patch_size, seed,
                         digits=max(6, len(str(num_patches - 1))),
                         foreground_fraction=foreground_fraction)
    spans = [(s, min(s + CHUNK, num_patches)) for s in range(0, num_patches, CHUNK)]
    with open(staging / "patches.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["patch", "image", "y", "x", "transform"])
        for rows in parallel_map(writer, spans, min(workers, len(spans)), "patches",
                                 total=num_patches, unit="patch"):
            out.writerows((name, train[i], y, x, k) for name, i, y, x, k in rows)
    publish_dir(staging, work / "train")


# ---------------------------------------------------------------- figure

def plot_samples(table, names, classes, path, pdf=False, count=4):
    """The first few images beside their annotations, as a figure for the paper."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch
    names = names[:count]
    fig, axes = plt.subplots(2, len(names), figsize=(3.2 * len(names), 5.2), squeeze=False)
    for col, name in enumerate(names):
        img_path, lbl_path, _ = table[name]
        img = read_image(img_path)
        axes[0, col].imshow(img, cmap="gray" if img.ndim == 2 else None)
        axes[0, col].set_title(name, fontsize=9)
        axes[1, col].imshow(colorize(read_label(lbl_path)), interpolation="nearest")
        for ax in axes[:, col]:
            ax.set_axis_off()
    handles = [Patch(color=np.array(colorize(np.array([i])))[0] / 255, label=c)
               for i, c in enumerate(classes)]
    fig.legend(handles=handles, loc="lower center", ncol=len(classes), frameon=False)
    fig.suptitle("Sample images (top) and annotations (bottom)")
    save_figure(fig, path, pdf)


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.work_dir)
    classes = read_classes(args.data_dir)
    table = labelled_images(args.data_dir, len(classes))
    train, test, how = split_names(sorted(table), args.data_dir, args.test_size, args.random_state)
    print(f"{len(table)} labelled images: {len(train)} train, {len(test)} test ({how})")
    work.mkdir(parents=True, exist_ok=True)
    write_split(work, train, test, how)
    copy_test_set(table, test, work)
    write_patches(table, train, work, args.num_patches, args.patch_size, args.seed, args.workers,
                  args.foreground_fraction)
    plot_samples(table, train, classes, work / "figures" / "samples.png", args.pdf)
    print(f"wrote {args.num_patches} patches of {args.patch_size}x{args.patch_size} to "
          f"{work / 'train'} and {len(test)} test images to {work / 'test'}")


if __name__ == "__main__":
    run_cli(main)
