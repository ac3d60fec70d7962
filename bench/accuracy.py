"""Test-set accuracy of the whole pipeline on a real data set, beside the classical floor.

Runs the pipeline's own scripts one after another as subprocesses, exactly as a user would,
in a work folder (temporary unless --work-dir):
  gen_img_aug.py     --data-dir DATASET --work-dir W --num-patches N --patch-size P
                     --foreground-fraction F --orientations auto --scale S
                     (the data set's test.txt fixes the held-out test images)
  pre_processing.py  --work-dir W --color-mode grey|rgb --equalize auto
  train_unet_xception_resnetblock.py --data-dir DATASET --work-dir W --weights none
                     --time-budget MIN --lr --epochs --steps-per-epoch --val-steps ...
  predict_lovasz_loss.py --data-dir DATASET --work-dir W --weights best [--tta]
then scores the masks in W/test/predict against DATASET/label, on the test.txt images only:
the confusion matrix summed over the images gives the per-class IoU, the mean IoU and, for 2
classes, the foreground IoU (class 1). The classical baseline (bench/baseline.py) is scored
on the same images with the same code. Where a test label holds objects drawn as a bare
outline (label_outlines.py; two of bbbc030's cells), the record lists them and scores the same
masks a second time with each outline and the background it encloses left out
("without_bare_outlines"); the headline scores the labels as they are.

Writes bench/results/<dataset>[-<tag>].json (replacing one of the same name): the scores,
the baseline's, the exact command and stage commands, every setting, wall time per stage,
the training summary and the machine. Prints a table.

The defaults are the best 2-core CPU setting measured so far (bench/README.md): 20,000
patches of 128 px, three quarters of them cut around an object, lr 0.01, 60 minutes of training in
epochs of 200 steps (each epoch's validation and saved models cost 13-20 s on 2 cores, so
longer epochs leave more of the hour to training), and prediction with tiles overlapping by
half and test-time augmentation over the rotations/flips the patches came in (--no-tta for
the plain prediction): 8-fold for turned patches, 2-fold where gen_img_aug.py kept the
patches of images with a direction (DIC) in the microscope's view and mirrored half of them,
none where it left them unmirrored.

Training stops at --time-budget minutes (--epochs is only an upper bound, and the cosine
learning-rate schedule anneals over the budget). Two ways to see test IoU against training
time: --curve 15 30 45 scores, from the same run, the snapshot of the last epoch that ended
within each of those minutes (mid-run models: their learning rate had not yet annealed);
or one run per budget, each annealed to its end:
    for m in 15 30 60; do python bench/accuracy.py bbbc030 --time-budget $m --tag t$m; done
--also swa best+tta scores more ways of predicting with the same trained model, and
best+unfiltered the masks without the faint-object filter that training calibrated on its
held-out frames (every other prediction applies it).

Reusing a --work-dir: rerunning after an interruption resumes the training (the training
script keeps a backup while it runs); rerunning a finished run makes the same patches again,
trains nothing (recording a changed faint-object filter), and predicts and scores anew, so
its wall times then hold no training. For a new measurement use a new folder or none.
"""
import argparse
import csv
import json
import math
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baseline  # noqa: E402
import hardware  # noqa: E402

hardware.prepare_tensorflow("2")

from baseline import REPO, RESULTS_DIR, SHARED_DATASETS  # noqa: E402
from image_io import find_label, list_images, read_image, read_label  # noqa: E402
from label_outlines import bare_outlines, mark_ignored  # noqa: E402
from outputs import write_json  # noqa: E402
from cli import PipelineError, read_classes, read_json, run_cli  # noqa: E402
from geometry import ORIENTATIONS  # noqa: E402
from parallel import default_workers  # noqa: E402
from patch_preprocessing import EQUALIZE_MODES  # noqa: E402


# ---------------------------------------------------------------- the pipeline

def stage_commands(args, dataset_dir, work, color_mode):
    """The three commands up to a trained model, in order, as {stage: argv}; prediction
    follows with predict_command once gen_img_aug.py has decided the orientations."""
    def script(name, *options):
        return [sys.executable, str(REPO / name), *map(str, options)]

    workers = ["--workers", args.workers] if args.workers else []
    return {
        "gen_img_aug": script("gen_img_aug.py", "--data-dir", dataset_dir, "--work-dir", work,
                              "--num-patches", args.num_patches,
                              "--patch-size", args.patch_size,
                              "--foreground-fraction", args.foreground_fraction,
                              "--orientations", args.orientations, "--scale", args.scale,
                              *workers),
        "pre_processing": script("pre_processing.py", "--work-dir", work,
                                 "--color-mode", color_mode, "--equalize", args.equalize,
                                 *workers),
        "train": script("train_unet_xception_resnetblock.py", "--data-dir", dataset_dir,
                        "--work-dir", work, "--weights", "none",
                        "--time-budget", args.time_budget, "--epochs", args.epochs,
                        "--steps-per-epoch", args.steps_per_epoch,
                        "--val-steps", args.val_steps, "--bn-batches", args.bn_batches,
                        "--batch-size", args.batch_size, "--lr", args.lr, "--verbose", "2",
                        *(["--keep-snapshots"] if args.curve else []),
                        *shlex.split(args.train_args)),
    }


def predict_command(args, dataset_dir, work, weights, tta, unfiltered=False):
    return [sys.executable, str(REPO / "predict_lovasz_loss.py"), "--data-dir", str(dataset_dir),
            "--work-dir", str(work), "--weights", str(weights), "--overlap", str(args.overlap),
            *(["--tta"] if tta else []), *(["--faint-filter", "off"] if unfiltered else [])]


def resolve_tta(args, work):
    """Whether the headline prediction uses TTA: as --tta/--no-tta says, else where
    gen_img_aug.py turned or mirrored the patches. TTA turns tiles, which a model trained on
    unturned patches never saw, so asking for it there is refused before training starts."""
    turned = read_json(Path(work) / "split.json", "split file").get("orientations") != "none"
    asked = args.tta or any("tta" in v.split("+") for v in args.also)
    if asked and not turned:
        raise PipelineError("gen_img_aug.py kept the patches unturned (see its edge relief "
                            "above), so test-time augmentation would show the model turned "
                            "tiles it never saw; drop --tta and +tta, or give "
                            "--orientations all")
    return turned if args.tta is None else args.tta


def run_stages(commands):
    """Run each command, streaming its output; the wall seconds of each stage."""
    seconds = {}
    for stage, argv in commands.items():
        print(f"\n=== {stage}: {shlex.join(argv)}", flush=True)
        start = time.monotonic()
        status = subprocess.run(argv, cwd=REPO).returncode
        seconds[stage] = round(time.monotonic() - start, 2)
        if status:
            raise PipelineError(f"stage {stage} failed with exit status {status} after "
                                f"{seconds[stage]:.0f} s; its output is above")
    return seconds


def score_model(dataset_dir, names, work, relabel=None):
    predict_dir = Path(work) / "test" / "predict"

    def predicted(name):
        path = predict_dir / f"{name}.png"
        if not path.is_file():
            raise PipelineError(f"prediction stage wrote no mask for test image {name} "
                                f"({path})")
        return read_label(path)

    return baseline.score_predictions(dataset_dir, names, predicted, relabel)


SCORE_KEYS = ("foreground_iou", "per_class_iou", "mean_iou", "confusion_matrix")


def score_without_bare_outlines(dataset_dir, names, work):
    """The objects of the test labels drawn as bare outlines (label_outlines.py) and, where
    there are any, the scores of the masks in W/test/predict with each outline and the
    background it encloses left out: what the headline, which scores the labels as they are,
    would be had their annotators filled them or marked them to ignore."""
    labels, left_out = {}, {}
    for name in names:
        found, mask = bare_outlines(read_label(find_label(Path(dataset_dir) / "label", name)))
        if found:
            labels[name], left_out[name] = found, mask
    if not labels:
        return {"labels": {}}
    scores = score_model(dataset_dir, names, work,
                         relabel=lambda name, label: mark_ignored(label, left_out.get(name)))
    return {"labels": labels, **{k: scores[k] for k in SCORE_KEYS if k in scores}}


def predict_and_score(args, dataset_dir, names, work, weights, tta, unfiltered=False):
    """Predict the test images with one model file and score them, quietly; a failure is
    recorded, not raised, so that one bad variant does not lose the run."""
    argv = predict_command(args, dataset_dir, work, weights, tta, unfiltered)
    start = time.monotonic()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        return {"command": shlex.join(argv), "error": done.stderr[-3000:]}
    scores = score_model(dataset_dir, names, work)
    return {"command": shlex.join(argv), "seconds": round(time.monotonic() - start, 2),
            **{k: scores[k] for k in SCORE_KEYS if k in scores}}


def epoch_minutes(work):
    """(epoch number, minutes since training started) of every epoch in the training log."""
    with open(Path(work) / "weights" / "log.csv") as f:
        return [(int(r["epoch"]) + 1, float(r["minutes"])) for r in csv.DictReader(f)]


def score_curve(args, dataset_dir, names, work):
    """Test scores of the snapshot of the last epoch ending within each --curve minute; a
    mark at or past the budget takes the last epoch, which training ends just past it."""
    if not args.curve:
        return []
    epochs = epoch_minutes(work)
    snapshots = {int(p.stem.split("_")[1]): p
                 for p in (Path(work) / "weights" / "snapshots").glob("epoch_*.*")}
    points = []
    for target in args.curve:
        limit = math.inf if target >= args.time_budget else target
        within = [(e, m) for e, m in epochs if m <= limit]
        if not within or within[-1][0] not in snapshots:
            why = "no snapshot of an epoch that ended" if within else "no epoch ended"
            points.append({"minutes_target": target, "skipped": f"{why} within {target:g} min"})
            print(f"curve: {points[-1]['skipped']}")
            continue
        epoch, minutes = within[-1]
        print(f"curve: {target:g} min -> epoch {epoch} ({minutes:.1f} min)", flush=True)
        points.append({"minutes_target": target, "epoch": epoch, "minutes": minutes,
                       **predict_and_score(args, dataset_dir, names, work, snapshots[epoch],
                                           tta=False)})
    return points


def score_variants(args, dataset_dir, names, work):
    """Scores of each --also variant: WEIGHTS[+tta][+unfiltered]."""
    variants = {}
    for variant in args.also:
        weights, *ways = variant.split("+")
        print(f"variant: {variant}", flush=True)
        variants[variant] = predict_and_score(args, dataset_dir, names, work, weights,
                                              tta="tta" in ways,
                                              unfiltered="unfiltered" in ways)
    return variants


def score_baseline(dataset_dir, names):
    """The baseline's record, or why there is none: a missing floor must not lose the run."""
    try:
        return baseline.score(dataset_dir, names)
    except PipelineError as err:
        return {"error": str(err)}


# ---------------------------------------------------------------- records

def training_summary(work):
    """What training itself recorded in its model folder's config.json."""
    path = Path(work) / "weights" / "config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    keep = ("num_train_patches", "num_val_patches", "val_split_by", "val_frames", "precision",
            "color_mode", "orientations", "decision", "faint_filter", "result")
    summary = {k: config[k] for k in keep if k in config}
    summary["equalize"] = config.get("preprocessing", {}).get("equalize", "patch")
    split = Path(work) / "split.json"
    if split.is_file():
        recorded = json.loads(split.read_text())
        summary.update({k: recorded.get(k) for k in ("edge_relief", "relief_angle")})
    return summary


def machine_info():
    """The machine, with its CPU vector flags and matmul rates measured in this run."""
    import tensorflow as tf
    return {**hardware.machine_summary(), "usable_cores": default_workers(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "platform": platform.platform()}


def check_dataset(dataset_dir):
    """The test names, after checking everything scoring will need: fail before training."""
    read_classes(dataset_dir)
    names = baseline.split_names(dataset_dir, "test")
    unlabelled = [n for n in names if find_label(Path(dataset_dir) / "label", n) is None]
    if unlabelled:
        raise PipelineError(f"test images without a label in {Path(dataset_dir) / 'label'}: "
                            f"{', '.join(unlabelled[:5])}")
    return names


def resolve_color_mode(requested, dataset_dir, names):
    if requested != "auto":
        return requested
    first = read_image(list_images(Path(dataset_dir) / "src")[names[0]])
    return "rgb" if first.ndim == 3 else "grey"


# ---------------------------------------------------------------- command line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("data")
    g.add_argument("dataset", metavar="DATASET",
                   help=f"a data set folder (src/, label/, classes.txt, test.txt), or a name "
                        f"under {SHARED_DATASETS}")
    g.add_argument("--color-mode", choices=("auto", "grey", "rgb"), default="auto",
                   help="pre_processing.py --color-mode; auto: grey for grey images, rgb for "
                        "colour (default: auto)")
    g = parser.add_argument_group("patches (gen_img_aug.py, pre_processing.py)")
    g.add_argument("--num-patches", type=int, default=20000,
                   help="training patches (default: %(default)s)")
    g.add_argument("--patch-size", type=int, default=128,
                   help="patch side, a multiple of 32 (default: %(default)s)")
    g.add_argument("--foreground-fraction", type=float, default=0.75,
                   help="share of patches that must contain foreground; 0 is the paper's "
                        "uniform sampling (default: %(default)s)")
    g.add_argument("--orientations", choices=("auto", *ORIENTATIONS), default="auto",
                   help="gen_img_aug.py's: patches in all 8 rotations/flips, as the "
                        "microscope saw them, half of those mirrored across one axis, or "
                        "decided by the images' edge relief (default: %(default)s)")
    g.add_argument("--scale", type=float, default=1.0,
                   help="gen_img_aug.py's: resample the frames by this factor before patches "
                        "are cut; prediction resamples alike and scores at full size "
                        "(default: %(default)s)")
    g.add_argument("--equalize", choices=("auto", *EQUALIZE_MODES), default="auto",
                   help="pre_processing.py's: each patch and prediction tile on its own "
                        "(patch, the paper's), all by one table from the training patches "
                        "(dataset), or auto: dataset for colour, patch for grey "
                        "(default: %(default)s)")
    g.add_argument("--workers", type=int,
                   help="processes for the two data stages (default: theirs, all cores)")
    g = parser.add_argument_group("training (train_unet_xception_resnetblock.py)")
    g.add_argument("--time-budget", type=float, default=60.0,
                   help="minutes of training (default: %(default)s)")
    g.add_argument("--epochs", type=int, default=1000,
                   help="upper bound on epochs; the time budget normally ends training first "
                        "(default: %(default)s)")
    g.add_argument("--steps-per-epoch", type=int, default=200,
                   help="training batches per epoch; every epoch ends in BatchNorm re-estimation, "
                        "validation and saved models, 13-20 s on 2 cores (default: %(default)s)")
    g.add_argument("--val-steps", type=int, default=20,
                   help="validation batches per epoch (default: %(default)s)")
    g.add_argument("--bn-batches", type=int, default=20,
                   help="batches re-estimating BatchNorm statistics (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=8, help="batch size (default: %(default)s)")
    g.add_argument("--lr", type=float, default=0.01,
                   help="learning rate; the paper's 1e-3 learns slower per CPU minute "
                        "(default: %(default)s)")
    g.add_argument("--train-args", default="",
                   help="more training options, appended last so they win, e.g. "
                        "--train-args='--swa-epochs 3 --schedule constant' (write the = sign)")
    g = parser.add_argument_group("prediction (predict_lovasz_loss.py)")
    g.add_argument("--predict-weights", choices=("best", "swa", "last"), default="best",
                   help="which trained model segments the test images (default: %(default)s)")
    g.add_argument("--overlap", type=float, default=0.5,
                   help="tile overlap, fraction of a tile; 0.5 gained 0.001-0.005 IoU over "
                        "predict_lovasz_loss.py's 0.25 in five of six measurements "
                        "(bench/README.md), for about 2x the prediction time "
                        "(default: %(default)s)")
    g.add_argument("--tta", action=argparse.BooleanOptionalAction,
                   help="test-time augmentation: average every tile over the rotations/flips "
                        "the patches came in (8 for turned patches: 8x the prediction time, "
                        "measured +0.010 mean IoU on wbc300; 2 for mirrored DIC patches) "
                        "(default: on where gen_img_aug.py turned or mirrored the patches)")
    g.add_argument("--also", nargs="+", default=[], metavar="VARIANT",
                   type=variant_type,
                   help="also score these predictions of the same model: best, swa or last, "
                        "optionally +tta, and +unfiltered for every object kept (predict "
                        "--faint-filter off), e.g. --also swa best+tta best+unfiltered")
    g.add_argument("--curve", nargs="+", type=float, default=[], metavar="MINUTES",
                   help="also score the snapshot of the last epoch that ended within each of "
                        "these training minutes (keeps every snapshot while training)")
    g = parser.add_argument_group("output")
    g.add_argument("--tag", default="",
                   help="suffix of the results file, to keep settings apart: "
                        "<dataset>-<tag>.json")
    g.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                   help="folder of the results file (default: bench/results)")
    g.add_argument("--work-dir", type=Path,
                   help="keep the pipeline's files here (default: a temporary folder, deleted "
                        "at the end)")
    args = parser.parse_args(argv)
    if args.time_budget <= 0:
        parser.error("--time-budget must be positive")
    if args.patch_size % 32:
        parser.error("--patch-size must be a multiple of 32")
    if not 0 <= args.foreground_fraction <= 1:
        parser.error("--foreground-fraction must be between 0 and 1")
    if any(not m > 0 for m in args.curve):
        parser.error("--curve minutes must be positive")
    try:
        shlex.split(args.train_args)
    except ValueError as err:
        parser.error(f"--train-args: {err}")
    return args


def variant_type(text):
    weights, *ways = text.split("+")
    if (weights not in ("best", "swa", "last") or len(set(ways)) < len(ways)
            or not set(ways) <= {"tta", "unfiltered"}):
        raise argparse.ArgumentTypeError(f"{text!r} is not best, swa or last, optionally "
                                         f"followed by +tta and/or +unfiltered")
    return text


def summary(scores):
    """One line of a variant's or curve point's scores, or why it has none."""
    if "mean_iou" not in scores:
        return scores.get("skipped") or "failed: " + scores["error"].strip().splitlines()[-1]
    return f"mean IoU {scores['mean_iou']:.3f}" + (
        f", foreground IoU {scores['foreground_iou']:.3f}"
        if scores.get("foreground_iou") is not None else "")


def report(record, path):
    seconds = record["wall_seconds"]
    columns = {"model": record}
    if "error" in record["baseline"]:
        print(f"\nno baseline: {record['baseline']['error']}")
    else:
        columns["baseline"] = record["baseline"]
    print(f"\n{record['dataset']}: {record['num_images']} test images")
    print(baseline.format_table(columns, record["classes"]))
    outlines = record["without_bare_outlines"]
    if outlines["labels"]:
        print("bare outlines in the test labels: " + ", ".join(
            f"{name} ({len(boxes)})" for name, boxes in outlines["labels"].items())
            + f"; their insides left out: {summary(outlines)}")
    for variant, scores in record["variants"].items():
        print(f"{variant:>10}: {summary(scores)}")
    for point in record["curve"]:
        at = (f"{point['minutes']:5.1f} min (epoch {point['epoch']})" if "epoch" in point
              else f"{point['minutes_target']:5.1f} min")
        print(f"after {at}: {summary(point)}")
    print("wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"written: {path}")


def main(argv=None):
    args = parse_args(argv)
    started = time.monotonic()
    dataset_dir = baseline.resolve_dataset(args.dataset)
    names = check_dataset(dataset_dir)
    path = baseline.results_path(args.results_dir, dataset_dir.name, args.tag)
    color_mode = resolve_color_mode(args.color_mode, dataset_dir, names)

    machine = machine_info()    # measured before training, on an idle CPU
    print(f"machine: {hardware.machine_line(machine)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as scratch:
        work = (args.work_dir or Path(scratch)).resolve()
        commands = stage_commands(args, dataset_dir, work, color_mode)
        seconds = run_stages({"gen_img_aug": commands["gen_img_aug"]})
        tta = resolve_tta(args, work)
        seconds.update(run_stages({k: v for k, v in commands.items() if k != "gen_img_aug"}))
        start = time.monotonic()
        curve = score_curve(args, dataset_dir, names, work)
        variants = score_variants(args, dataset_dir, names, work)
        seconds["curve_and_variants"] = round(time.monotonic() - start, 2)
        # The headline prediction runs last, so test/predict holds its masks.
        commands["predict"] = predict_command(args, dataset_dir, work, args.predict_weights,
                                              tta)
        seconds.update(run_stages({"predict": commands["predict"]}))
        start = time.monotonic()
        model = score_model(dataset_dir, names, work)
        outlines = score_without_bare_outlines(dataset_dir, names, work)
        seconds["score"] = round(time.monotonic() - start, 2)
        training = training_summary(work)

    floor = score_baseline(dataset_dir, names)
    seconds["total"] = round(time.monotonic() - started, 2)
    record = {
        "dataset": dataset_dir.name, "dataset_dir": str(dataset_dir), "date": baseline.utc_now(),
        **model,
        "test_images": names,
        "baseline": floor,
        "variants": variants,
        "without_bare_outlines": outlines,
        "curve": curve,
        "command": baseline.command_line(),
        "settings": {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "color_mode": color_mode},
        "stage_commands": {k: shlex.join(v) for k, v in commands.items()},
        "wall_seconds": seconds,
        "training": training,
        "machine": machine,
    }
    write_json(path, record)
    report(record, path)


if __name__ == "__main__":
    run_cli(main)
