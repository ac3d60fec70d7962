"""Whole-slide frames in bounded memory: peak memory and time of predict_lovasz_loss.py and
get_contour.py on synthetic 16-bit tiled TIFF frames of growing size, and the exact match of
the band-by-band path with the in-memory path.

The frames are a mosaic of the sample data's frames (data/src, mirrored in turn so their
edges meet), scaled to 16 bits (value x 200 + 500), written as a zlib-compressed tiled
BigTIFF of 512 px tiles without ever holding the frame in memory. The model is a small
trained one: --model-dir, or by default one trained here on the sample data for 90 steps
(128 px patches; a minute or two). Each script runs as a subprocess, as a user runs it; its
peak resident memory (RSS) comes from the kernel's accounting of that process (wait4).

Seconds per megapixel are compared with the FLOP floor: the model's forward FLOPs per tile
times the tiles of the frame, at the matmul rate of the precision prediction used, both
measured in this run.

    python bench/bench_big_frame.py [--sizes 5000 10000 20000] [--crop 2000] [--model-dir DIR]

--keep DIR keeps the slides, model and outputs; a later run with --keep DIR --model-dir
DIR/train/weights --reuse-predictions measures the contours again on the same predictions.
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import hardware  # noqa: E402

hardware.prepare_tensorflow()

TIFF_TILE = 512


# Runs one command and prints its peak RSS in KiB. A process's peak counts what it held
# before exec, so the command is started from this small interpreter rather than from the
# benchmark's own process, which holds TensorFlow.
MEASURE = ("import os, subprocess, sys; p = subprocess.Popen(sys.argv[1:]); "
           "_, status, usage = os.wait4(p.pid, 0); "
           "print(os.waitstatus_to_exitcode(status), usage.ru_maxrss, file=sys.stderr)")


def run_measured(args, log):
    """Run a pipeline script; (seconds, peak RSS in MiB) of its process."""
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, *map(str, args)],
                              cwd=ROOT, stdout=out, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    *messages, last = done.stderr.strip().splitlines() or [""]
    with open(log, "a") as out:
        out.write("\n".join(messages) + "\n")
    code, peak_kib = (int(v) for v in last.split())
    if code != 0:
        sys.exit(f"{args[0]} failed; see {log}:\n" + Path(log).read_text()[-2000:])
    return seconds, peak_kib / 1024      # Linux reports KiB


def sample_frames():
    import cv2
    frames = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
              for p in sorted((ROOT / "data" / "src").glob("*.png"))]
    if not frames:
        sys.exit("no sample frames in data/src")
    return np.stack(frames)


def mosaic_pixels(frames, y0, y1, x0, x1):
    """Rows y0..y1-1, columns x0..x1-1 of the endless mosaic, 16-bit."""
    n, fh, fw = frames.shape
    ys, xs = np.arange(y0, y1)[:, None], np.arange(x0, x1)[None, :]
    cell_y, cell_x = ys // fh, xs // fw
    which = (cell_y * 7 + cell_x * 3) % n
    # mirror every other cell so neighbouring frames meet edge to edge
    r = np.where(cell_y % 2, fh - 1 - ys % fh, ys % fh)
    c = np.where(cell_x % 2, fw - 1 - xs % fw, xs % fw)
    return frames[which, r, c].astype(np.uint16) * 200 + 500


def write_slide(path, frames, height, width, top=0, left=0):
    """A tiled BigTIFF of the mosaic's region, written tile by tile."""
    import tifffile

    def tiles():
        for y in range(top, top + height, TIFF_TILE):
            for x in range(left, left + width, TIFF_TILE):
                yield mosaic_pixels(frames, y, min(y + TIFF_TILE, top + height),
                                    x, min(x + TIFF_TILE, left + width))

    tifffile.imwrite(path, tiles(), shape=(height, width), dtype=np.uint16,
                     tile=(TIFF_TILE, TIFF_TILE), compression="zlib", bigtiff=True)


def train_small_model(work):
    Path(work).mkdir(parents=True, exist_ok=True)
    data = ["--data-dir", "data", "--work-dir", work]
    steps = [["gen_img_aug.py", *data, "--num-patches", "600", "--patch-size", "128"],
             ["pre_processing.py", "--work-dir", work],
             ["train_unet_xception_resnetblock.py", *data, "--weights", "none", "--lr", "0.01",
              "--epochs", "3", "--steps-per-epoch", "30", "--val-steps", "5",
              "--bn-batches", "5", "--swa-epochs", "0"]]
    for step in steps:
        run_measured(step, Path(work) / f"{step[0]}.log")
    return Path(work) / "weights"


def flop_floor_seconds(model_dir, shape, precision, rates):
    """Seconds the model's forward FLOPs for every tile of the frame take at the matmul rate."""
    import keras
    import predict_lovasz_loss as P
    from model import build_model, forward_flops
    config = json.loads((Path(model_dir) / "config.json").read_text())
    tile = tuple(config["patch_size"])
    keras.mixed_precision.set_global_policy("float32")
    flops = forward_flops(build_model((*tile, 3), len(config["classes"]), weights=None))
    tiles = len(P.tile_positions(*shape, tile, 0.25))
    return flops * tiles / (rates[precision] * 1e9), tiles


def measure_prediction(predict, slide, out, folder, side, model_dir, precision, machine):
    """predict_lovasz_loss.py on one slide: seconds, peak RSS, against the FLOP floor."""
    seconds, peak_mib = run_measured([*predict, "--input", slide, "--output", out],
                                     folder / f"predict_{side}.log")
    floor_s, tiles = flop_floor_seconds(model_dir, (side, side), precision,
                                        machine["matmul_gflops"])
    mp = side * side / 1e6
    return {"megapixels": mp, "tiles": tiles, "predict_s": round(seconds, 1),
            "predict_peak_rss_mib": round(peak_mib), "predict_s_per_mp": round(seconds / mp, 3),
            "predict_vs_flop_floor": round(seconds / floor_s, 2)}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000],
                   help="sides of the square frames (default: %(default)s)")
    p.add_argument("--crop", type=int, default=2000,
                   help="side of the crop predicted both ways (default: %(default)s)")
    p.add_argument("--model-dir", help="a trained model folder (default: train one here)")
    p.add_argument("--keep", help="keep the frames and outputs in this folder")
    p.add_argument("--reuse-predictions", action="store_true",
                   help="with --keep of an earlier run: measure the contours again, and take "
                        "each slide's prediction and its numbers from that run (the previous "
                        "bench/results/big-frame.json)")
    args = p.parse_args()
    if args.reuse_predictions and not (args.keep and args.model_dir):
        p.error("--reuse-predictions needs the --keep folder and --model-dir of that run")

    machine = hardware.machine_summary()
    precision = hardware.resolve_precision("auto", machine["bf16_conv_speedup"])[0]
    print(f"machine: {hardware.machine_line(machine)}; prediction in {precision}")
    frames = sample_frames()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="big_frame_"))
    folder.mkdir(parents=True, exist_ok=True)
    model_dir = Path(args.model_dir) if args.model_dir else train_small_model(folder / "train")
    predict = ["predict_lovasz_loss.py", "--model-dir", model_dir, "--work-dir", folder]

    # The same crop both ways: in memory (the default up to 16 MP) and band by band.
    crop = folder / "crop" / "crop.tif"
    crop.parent.mkdir(exist_ok=True)
    write_slide(crop, frames, args.crop, args.crop)
    outputs = {}
    for way, extra in (("in_memory", []), ("bands", ["--stream-above", "0"])):
        out = folder / f"crop_{way}"
        run_measured([*predict, "--input", crop, "--output", out, *extra], folder / f"{way}.log")
        run_measured(["get_contour.py", "--pred-dir", out, "--work-dir", folder, "--no-panels",
                      *extra], folder / f"{way}_contour.log")
        outputs[way] = out
    import cv2
    import tifffile
    in_memory = cv2.imread(str(outputs["in_memory"] / "crop.png"), cv2.IMREAD_UNCHANGED)
    banded = tifffile.imread(outputs["bands"] / "crop.tif")
    same_mask = bool(np.array_equal(in_memory, banded))
    same_objects = ((folder / "crop_in_memory_contours" / "objects.csv").read_bytes()
                    == (folder / "crop_bands_contours" / "objects.csv").read_bytes())
    print(f"{args.crop}x{args.crop} crop: mask band by band == in memory: {same_mask} "
          f"({np.count_nonzero(in_memory)} object pixels); objects.csv identical: "
          f"{same_objects}")

    out_json = ROOT / "bench" / "results" / "big-frame.json"
    earlier = ({r["side"]: r for r in json.loads(out_json.read_text())["sizes"]}
               if args.reuse_predictions and out_json.is_file() else {})
    rows = []
    for side in args.sizes:
        slide = folder / f"slide_{side}" / f"slide_{side}.tif"
        out = folder / f"pred_{side}"
        if side in earlier and slide.is_file() and (out / "predict.json").is_file():
            measured = {k: v for k, v in earlier[side].items()
                        if k.startswith("predict") or k in ("megapixels", "tiles")}
        else:
            slide.parent.mkdir(exist_ok=True)
            write_slide(slide, frames, side, side)
            measured = measure_prediction(predict, slide, out, folder, side, model_dir,
                                          precision, machine)
        contour_s, contour_mib = run_measured(["get_contour.py", "--pred-dir", out,
                                               "--work-dir", folder],
                                              folder / f"contour_{side}.log")
        objects = sum(1 for _ in open(folder / f"pred_{side}_contours" / "objects.csv")) - 1
        rows.append({"side": side, **measured, "contour_s": round(contour_s, 1),
                     "contour_peak_rss_mib": round(contour_mib), "objects": objects})
        print(json.dumps(rows[-1]))
        for path in (slide, out / f"slide_{side}.tif"):
            if not args.keep:
                path.unlink()

    print(f"\n{'side':>7}{'MP':>7}{'predict s':>11}{'s/MP':>7}{'x floor':>9}{'RSS MiB':>9}"
          f"{'contour s':>11}{'RSS MiB':>9}{'objects':>9}")
    for r in rows:
        print(f"{r['side']:>7}{r['megapixels']:>7.0f}{r['predict_s']:>11.0f}"
              f"{r['predict_s_per_mp']:>7.2f}{r['predict_vs_flop_floor']:>9.2f}"
              f"{r['predict_peak_rss_mib']:>9}{r['contour_s']:>11.0f}"
              f"{r['contour_peak_rss_mib']:>9}{r['objects']:>9}")
    largest, smallest = rows[-1], rows[0]
    for what in ("predict", "contour"):
        peak = largest[f"{what}_peak_rss_mib"]
        growth = peak / smallest[f"{what}_peak_rss_mib"]
        print(f"{what}: peak RSS {peak} MiB at {largest['side']}^2 (target < 2048: "
              f"{'met' if peak < 2048 else 'NOT met'}), x{growth:.2f} from {smallest['side']}^2 "
              f"for x{largest['megapixels'] / smallest['megapixels']:.0f} the pixels")
    result = {"date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
              "machine": machine, "precision": precision, "crop": args.crop,
              "crop_mask_identical": same_mask, "crop_objects_identical": same_objects,
              "sizes": rows}
    if earlier:
        result["predictions_from"] = json.loads(out_json.read_text())["command"]
    out_json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out_json}")
    if not (same_mask and same_objects):
        sys.exit("the band-by-band path differs from the in-memory path")


if __name__ == "__main__":
    main()
