"""Training statistics and the paper's per-patch preprocessing.

Reads   <work-dir>/train/src/*.png                (patches from gen_img_aug.py)
Writes  <work-dir>/train_mean_std.npy and .json   mean and standard deviation of all pixels
        <work-dir>/train/prep/*.png               each patch preprocessed on its own

Statistics are streamed: each patch adds its 256-bin histogram to a running total, so
they are exact (integer counts) and no more than one patch per worker is in memory.

Preprocessing of one patch (patch_preprocessing.preprocess_patch, reused by prediction on each
tile): z = (x - mean) / std; min-max of z within the patch to 0..255; histogram
equalization; gamma out = 255 * (in / 255) ** (1 / gamma). That is the paper's rule,
--equalize patch, and the default for grey images, where it evens out uneven illumination.
With --equalize dataset, the default for --color-mode rgb, the equalization comes instead
from the histogram of all training patches' pixels (recorded in the statistics and the
model's config.json): one table per channel, the same for every patch and every prediction
tile, so colour channels keep their relation from patch to patch (equalized apart within
each patch, a patch's hues depend on what else it holds) and a tile holding only background
or one faint object is not stretched to full contrast.

Colour: --color-mode grey (the paper: every image read as grey) converts colour images to
luminance first; --color-mode rgb keeps three channels and treats each channel on its own
(per-channel statistics, min-max and equalization).
"""
import argparse
import csv
import io

import numpy as np

from image_io import (COLOR_MODES, list_images, read_image, read_raw_image, to_color_mode,
                      write_image)
from outputs import atomic_write_bytes, staged_output, work_lock, write_json
from cli import (PipelineError, check_split_written, count_of, existing_folder, positive_float,
                 positive_int, run_cli, WORK_DIR)
from parallel import default_workers, parallel_map
from patch_preprocessing import (DEFAULT_GAMMA, EQUALIZE_MODES, MEAN_STD_NAME, dataset_lut_for,
                                 preprocess_patch, resolve_equalize)

CHUNK = 200


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("folders")
    g.add_argument("--data-dir", default="data",
                   help="data folder (not read here; accepted like every script) "
                        "(default: %(default)s)")
    g.add_argument("--work-dir", default=WORK_DIR,
                   help="folder written by gen_img_aug.py (default: %(default)s)")
    g = p.add_argument_group("preprocessing")
    g.add_argument("--color-mode", choices=COLOR_MODES, default="grey",
                   help="grey: convert to grey, as the paper; rgb: keep colour, each channel "
                        "normalized and equalized on its own (default: %(default)s)")
    g.add_argument("--equalize", choices=("auto", *EQUALIZE_MODES), default="auto",
                   help="patch: min-max and equalize each patch and prediction tile on its "
                        "own, as the paper; dataset: one equalization table from all training "
                        "patches' pixels, the same for every patch and tile; auto: dataset "
                        "for --color-mode rgb, patch for grey (default: %(default)s)")
    g.add_argument("--gamma", type=positive_float, default=DEFAULT_GAMMA,
                   help="gamma of the final lookup table, as the paper (default: %(default)s)")
    g.add_argument("--workers", type=positive_int, default=default_workers(),
                   help="processes (default: all cores, %(default)s)")
    return p.parse_args(argv)


def channel_histograms(paths, color_mode):
    """Per-channel 256-bin pixel histograms summed over the given patches (int64)."""
    channels = 1 if color_mode == "grey" else 3
    hist = np.zeros((channels, 256), np.int64)
    for path in paths:
        img = read_image(path)
        if color_mode == "rgb" and img.ndim == 2:
            raise grey_for_colour(f"the patch {path} (of the frame {patch_frame(path)})")
        img = to_color_mode(img, color_mode).reshape(-1, channels)
        for c in range(channels):
            hist[c] += np.bincount(img[:, c], minlength=256)
    return hist


def patch_frame(path):
    """The frame a patch was cut from, as gen_img_aug.py's patches.csv says (None unsaid)."""
    try:
        with open(path.parent.parent / "patches.csv", newline="", encoding="utf-8") as f:
            return next((row.get("image") for row in csv.DictReader(f)
                         if row.get("patch") == path.name), None)
    except (OSError, csv.Error, UnicodeDecodeError):
        return None


def grey_for_colour(what):
    return PipelineError(f"--color-mode rgb: {what} is grey, and a colour model refuses grey "
                         "frames at prediction; save the grey frames in colour (their grey in "
                         "three channels) and rerun gen_img_aug.py, or use --color-mode grey")


def check_test_frames_in_colour(work):
    """Refuse a grey test frame for a colour model before training, which would be refused
    only at prediction, after the training."""
    test = work / "test" / "src"
    for name, source in (list_images(test) if test.is_dir() else {}).items():
        if read_raw_image(source).ndim == 2:
            raise grey_for_colour(f"the test frame {name}")


class HistogramTask:
    def __init__(self, color_mode):
        self.color_mode = color_mode

    def __call__(self, paths):
        return len(paths), channel_histograms(paths, self.color_mode)


def stats_from_histogram(hist):
    """Exact per-channel mean and (population) standard deviation from integer histograms."""
    levels = np.arange(256, dtype=object)
    means, stds = [], []
    for row in hist:
        counts = row.astype(object)     # Python integers: sums stay exact at any patch count
        n, s, ss = counts.sum(), (counts * levels).sum(), (counts * levels * levels).sum()
        means.append(float(s) / float(n))
        stds.append(float(n * ss - s * s) ** 0.5 / float(n))
    return means, stds


def streamed_histogram(paths, color_mode, workers):
    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    return sum(parallel_map(HistogramTask(color_mode), chunks, min(workers, len(chunks)),
                            "statistics", total=len(paths), unit="patch"))


class PreprocessTask:
    def __init__(self, out_dir, stats):
        self.out_dir, self.mean, self.std = out_dir, stats["mean"], stats["std"]
        self.gamma, self.color_mode = stats["gamma"], stats["color_mode"]
        self.lut = dataset_lut_for(stats)

    def __call__(self, paths):
        for path in paths:
            img = to_color_mode(read_image(path), self.color_mode)
            write_image(self.out_dir / path.name,
                        preprocess_patch(img, self.mean, self.std, self.gamma, self.lut),
                        atomic=False)
        return len(paths), None


def save_stats(work, stats):
    buffer = io.BytesIO()
    np.save(buffer, np.array([stats["mean"], stats["std"]], dtype=np.float64).squeeze())
    atomic_write_bytes(work / f"{MEAN_STD_NAME}.npy", buffer.getvalue())
    write_json(work / f"{MEAN_STD_NAME}.json", stats)


def main(argv=None):
    args = parse_args(argv)
    work = existing_folder(args.work_dir, "--work-dir",
                           "run gen_img_aug.py first")
    patch_paths(work)       # refused before the lock file is made, if nothing is there
    # Listed again under the lock: a gen_img_aug.py run ending meanwhile changes the patches.
    with work_lock(work, "pre_processing.py"):
        preprocess_patches(work, patch_paths(work), args)


def patch_paths(work):
    """The patches of a work folder that a finished gen_img_aug.py run left."""
    patch_dir = work / "train" / "src"
    paths = sorted(patch_dir.glob("*.png")) if patch_dir.is_dir() else []
    if not paths:
        raise PipelineError(f"no patches in {patch_dir}: run gen_img_aug.py first")
    check_split_written(work)
    return paths


def preprocess_patches(work, paths, args):
    """The statistics of the patches, then every patch preprocessed into train/prep."""
    if args.color_mode == "rgb":
        check_test_frames_in_colour(work)
    hist = streamed_histogram(paths, args.color_mode, args.workers)
    mean, std = stats_from_histogram(hist)
    # Every patch has been read. The old statistics go before train/prep changes and the new
    # ones come last: without them training refuses to start, so an interrupted run can never
    # pair new statistics with old preprocessed patches or the reverse.
    for suffix in (".json", ".npy"):
        (work / f"{MEAN_STD_NAME}{suffix}").unlink(missing_ok=True)
    equalize = resolve_equalize(args.equalize, args.color_mode)
    stats = {"mean": mean, "std": std, "color_mode": args.color_mode, "channels": len(mean),
             "gamma": args.gamma, "equalize": equalize, "num_patches": len(paths)}
    if equalize == "dataset":
        stats["histogram"] = hist.tolist()
    print(f"mean {np.round(mean, 3).tolist()}, std {np.round(std, 3).tolist()} over "
          f"{count_of(len(paths), 'patch', 'patches')}")

    chunks = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    with staged_output(work / "train" / "prep") as staging:
        task = PreprocessTask(staging, stats)
        for _ in parallel_map(task, chunks, min(args.workers, len(chunks)), "preprocess",
                              total=len(paths), unit="patch"):
            pass
    save_stats(work, stats)
    print(f"wrote {count_of(len(paths), 'preprocessed patch', 'preprocessed patches')} to "
          f"{work / 'train' / 'prep'} and the statistics to {work / (MEAN_STD_NAME + '.json')}")


if __name__ == "__main__":
    run_cli(main, interrupted="the earlier statistics stay until every patch has been read; "
                              "once they are gone training refuses the work folder until "
                              "pre_processing.py runs to its end")
