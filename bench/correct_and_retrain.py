"""Correct and retrain, measured: does fine-tuning a model on corrected predictions beat
training from scratch for the same time?

The loop a lab runs, with a real data set's true labels standing in for the corrections:
  1. train a first model on the first --first training frames (sorted by name) for
     --first-budget minutes;
  2. predict the next --more training frames with it (their IoU says how much correcting
     the lab would face) and take their true labels as the corrected masks;
  3. on all first + more frames, for --budget minutes each:
       fine-tune:  train_unet_xception_resnetblock.py --init-model <first model>
       scratch:    the same command without --init-model (--weights none);
  4. score both on the data set's test.txt frames.
Every stage is the pipeline's own script run as a subprocess with bench/accuracy.py's
settings (20,000 patches of 128 px, half with foreground, lr 0.01, cosine over the budget),
predicting without test-time augmentation.

Writes bench/results/<dataset>-retrain[-<tag>].json (the scores, commands, wall times and
the machine with its CPU flags and matmul rates) and prints the table for README.md.
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import accuracy  # noqa: E402
import baseline  # noqa: E402
import hardware  # noqa: E402

hardware.prepare_tensorflow("2")

from baseline import REPO, RESULTS_DIR  # noqa: E402
from image_io import find_label, list_images, read_label  # noqa: E402
from outputs import write_json  # noqa: E402
from cli import PipelineError, read_json, run_cli  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="a data set folder or a name under ../shared/datasets")
    p.add_argument("--first", type=int, default=10,
                   help="training frames of the first model (default: %(default)s)")
    p.add_argument("--more", type=int, default=20,
                   help="frames predicted, corrected and added (default: %(default)s)")
    p.add_argument("--first-budget", type=float, default=10.0,
                   help="minutes of training of the first model (default: %(default)s)")
    p.add_argument("--budget", type=float, default=10.0,
                   help="minutes of fine-tuning, and of training from scratch "
                        "(default: %(default)s)")
    p.add_argument("--tag", default="", help="suffix of the results file")
    p.add_argument("--work-dir", type=Path,
                   help="keep the files here (default: a temporary folder)")
    args = p.parse_args(argv)
    if min(args.first, args.more) < 1 or min(args.first_budget, args.budget) <= 0:
        p.error("--first and --more must be positive whole numbers, the budgets positive")
    return args


def frame_subset(dataset_dir, names, test, folder):
    """A data set folder holding only the given frames and the test frames, as links."""
    images = list_images(Path(dataset_dir) / "src")
    for sub in ("src", "label"):
        (folder / sub).mkdir(parents=True)
    for name in [*names, *test]:
        os.symlink(images[name].resolve(), folder / "src" / images[name].name)
        label = find_label(Path(dataset_dir) / "label", name)
        os.symlink(label.resolve(), folder / "label" / label.name)
    (folder / "classes.txt").write_text((Path(dataset_dir) / "classes.txt").read_text())
    (folder / "test.txt").write_text("".join(f"{n}\n" for n in test))
    return folder


def run(stage, argv, seconds):
    print(f"\n=== {stage}: {shlex.join(map(str, argv))}", flush=True)
    start = time.monotonic()
    if subprocess.run(list(map(str, argv)), cwd=REPO).returncode:
        raise PipelineError(f"stage {stage} failed; its output is above")
    seconds[stage] = round(time.monotonic() - start, 1)


def scores_of(dataset_dir, names, masks_dir):
    scores = baseline.score_predictions(dataset_dir, names,
                                        lambda n: read_label(Path(masks_dir) / f"{n}.png"))
    return {k: scores[k] for k in ("foreground_iou", "per_class_iou", "mean_iou")
            if k in scores}


def training_record(model_dir):
    result = json.loads((Path(model_dir) / "config.json").read_text())["result"]
    return {"optimizer_steps": result["last_epoch"].get("steps"), "epochs": result["epochs_done"]}


def main(argv=None):
    args = parse_args(argv)
    dataset_dir = baseline.resolve_dataset(args.dataset)
    test = accuracy.check_dataset(dataset_dir)
    train_frames = sorted(set(list_images(dataset_dir / "src")) - set(test))
    if len(train_frames) < args.first + args.more:
        raise PipelineError(f"{dataset_dir} has {len(train_frames)} training frames; --first "
                            f"{args.first} + --more {args.more} need more")
    first, more = train_frames[:args.first], train_frames[args.first:args.first + args.more]
    path = baseline.results_path(RESULTS_DIR, f"{dataset_dir.name}-retrain", args.tag)
    machine = accuracy.machine_info()
    print(f"machine: {hardware.machine_line(machine)}", flush=True)
    settings = accuracy.parse_args([str(dataset_dir), "--no-tta"])   # 8x faster prediction
    color_mode = accuracy.resolve_color_mode("auto", dataset_dir, test)
    seconds, commands = {}, {}

    with tempfile.TemporaryDirectory(prefix="bench-retrain-") as scratch:
        root = (args.work_dir or Path(scratch)).resolve()
        # 1. the first model
        small = frame_subset(dataset_dir, first, test, root / "data_first")
        settings.time_budget = args.first_budget
        stages = accuracy.stage_commands(settings, small, root / "first", color_mode)
        for stage in ("gen_img_aug", "pre_processing", "train", "predict"):
            commands[f"first_{stage}"] = stages[stage]
            run(f"first_{stage}", stages[stage], seconds)
        first_model = root / "first" / "weights"
        results = {"first model": {**scores_of(dataset_dir, test, root / "first" / "test" / "predict"),
                                   **training_record(first_model)}}

        # 2. the first model's masks of the next frames, before correction
        more_data = frame_subset(dataset_dir, more, [], root / "data_more")
        commands["predict_more"] = [*stages["predict"], "--input", more_data / "src",
                                    "--labels", more_data / "label", "--output",
                                    root / "more_predicted"]
        run("predict_more", commands["predict_more"], seconds)
        before = read_json(root / "more_predicted" / "iou.json", "IoU report")["dataset"]["iou"]

        # 3. fine-tune and train from scratch on all frames, same budget
        allframes = frame_subset(dataset_dir, first + more, test, root / "data_all")
        settings.time_budget = args.budget
        stages = accuracy.stage_commands(settings, allframes, root / "all", color_mode)
        for stage in ("gen_img_aug", "pre_processing"):
            commands[f"all_{stage}"] = stages[stage]
            run(f"all_{stage}", stages[stage], seconds)
        for variant, extra in (("fine-tune", ["--init-model", first_model]), ("scratch", [])):
            model_dir, masks = root / "all" / variant, root / "all" / f"{variant}_test"
            commands[f"{variant}_train"] = [*stages["train"], "--model-dir", model_dir, *extra]
            commands[f"{variant}_predict"] = [*stages["predict"], "--model-dir", model_dir,
                                              "--output", masks]
            run(f"{variant}_train", commands[f"{variant}_train"], seconds)
            run(f"{variant}_predict", commands[f"{variant}_predict"], seconds)
            results[variant] = {**scores_of(dataset_dir, test, masks),
                                **training_record(model_dir)}

    record = {"dataset": dataset_dir.name, "date": baseline.utc_now(),
              "command": baseline.command_line(), "first_frames": first, "more_frames": more,
              "test_frames": test, "first_budget_min": args.first_budget,
              "budget_min": args.budget,
              "first_model_on_more_frames": before,
              "results": results,
              "commands": {k: shlex.join(map(str, v)) for k, v in commands.items()},
              "wall_seconds": seconds, "machine": machine}
    write_json(path, record)
    report(record, path)


def report(record, path):
    key = "foreground_iou" if record["results"]["scratch"].get("foreground_iou") is not None \
        else "mean_iou"
    print(f"\n{record['dataset']}: test IoU ({key}) of {len(record['test_frames'])} frames")
    print(f"{'model':<34}{'frames':>7}{'minutes':>9}{'steps':>7}{key:>16}")
    rows = [("first model", len(record["first_frames"]), record["first_budget_min"], None),
            ("fine-tuned from it", len(record["first_frames"]) + len(record["more_frames"]),
             record["budget_min"], "fine-tune"),
            ("from scratch", len(record["first_frames"]) + len(record["more_frames"]),
             record["budget_min"], "scratch")]
    for label, frames, minutes, variant in rows:
        result = record["results"][variant or "first model"]
        steps = result.get("optimizer_steps")
        print(f"{label:<34}{frames:>7}{minutes:>9g}{steps if steps else '':>7}"
              f"{result[key]:>16.4f}")
    print(f"first model's IoU on the {len(record['more_frames'])} frames to correct: "
          + ", ".join(f"{k} {v:.3f}" for k, v in record["first_model_on_more_frames"].items()))
    print(f"written: {path}")


if __name__ == "__main__":
    run_cli(main)
