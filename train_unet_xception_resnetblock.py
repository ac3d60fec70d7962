"""Train the Xception U-Net with residual decoder blocks on the preprocessed patches.

Reads   <work-dir>/train/prep/*.png, <work-dir>/train/label/*.png   (pre_processing.py)
        <work-dir>/train_mean_std.json, <data-dir>/classes.txt
Writes  <model-dir>/ (default <work-dir>/weights/), a self-describing model folder:
          config.json                 every setting, class names, preprocessing statistics,
                                       the faint-object filter chosen on the held-out frames
          unet_xception_resnet_nsgd32_lovaszsoftmax_best.h5    best val_loss (the original's name,
                                       kept whatever --optimizer and --loss; config.json says which)
          unet_xception_resnet_nsgd32_lovaszsoftmax_swa.h5     average of the last epochs
                                       (none with --swa-epochs 0)
          snapshots/epoch_NNN.h5       the model after each of the last --swa-epochs epochs, at
                                       least the last (after every epoch with --keep-snapshots)
          log.csv, curves.png          every epoch's losses, IoUs and minutes since the start;
                                       the curves also in <work-dir>/figures/
          split.json                   which patches trained and which validated, the
                                       validation frames and the training patches' frames
                                       with their images' pixel digests (config.json:
                                       val_frames, train_frames, train_image_digests)
          backup/                      resume state while training runs (BackupAndRestore)

Defaults follow the paper for batch 8, 25 epochs, Lovasz-softmax loss, SGD lr 1e-3 momentum
0.9 Nesterov on normalized gradients and 20 % validation (random_state 2018). They differ
where README's "Differences from the original" says, each with the option that restores the
original: validation patches from whole held-out training frames (--val-split-by patch), a
cosine learning-rate schedule (--schedule constant), precise BN and SWA (--bn-batches 0
--swa-epochs 0), bfloat16 on CPUs with native bf16 (--precision fp32), and a faint-object
filter calibrated on the held-out frames after training (--faint-filter off).
Before every validation and every saved model, BatchNorm statistics are re-estimated on
training batches ("precise BN"; see README), because validation and prediction run in
inference mode. Rerunning the same command after an interruption resumes training (Ctrl-C
while an epoch saves stops once its resume backup is written). A step whose loss is not
finite costs that step alone where its update was skipped (the default nsgd skips a
non-finite gradient); otherwise, and for an epoch whose weights are not finite, training is
rolled back to the last epoch's end; the fourth rollback in a row stops the run with an
error, to be resumed from there.
"""
import argparse
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

from hardware import add_precision_option, keep_nan_visible, prepare_tensorflow, use_precision

prepare_tensorflow()

import numpy as np  # noqa: E402

from distribute import STRATEGIES  # noqa: E402
from image_io import (DEFAULT_INTENSITY, PNG_HEADER_BYTES, check_intensity,  # noqa: E402
                      check_label_values, png_header, read_image)
from outputs import (atomic_write_text, exclusive_lock, foreign_entries,  # noqa: E402
                     lock_beside, remove_leftovers, same_or_inside, sha256_of,
                     work_read_lock, write_json)
from cli import (IGNORE_LABEL, Interrupted, PipelineError, agreeing,  # noqa: E402
                 check_split_written, command_line, count_of, existing_folder, finite_float,
                 fraction_below_one, held_out_count, non_negative_float, positive_float,
                 positive_int,
                 read_classes, read_json, refuse_file, run_cli, seed_value, some_names,
                 WORK_DIR)
from model_folder import (ARGMAX, SIGMOID_RULE, aside_folder, check_orientations,  # noqa: E402
                          check_page, load_model, model_file, own_model_folder, read_config,
                          snapshot_files, unfinished_training, verify_model_file)
from patch_preprocessing import MEAN_STD_NAME, load_mean_std  # noqa: E402
from geometry import check_scale  # noqa: E402

WEIGHTS_STEM = "unet_xception_resnet_nsgd32_lovaszsoftmax"
LOSSES = ("lovasz-softmax", "lovasz-hinge", "cross-entropy", "bce-dice")
# What training writes into a model folder besides its model files (WEIGHTS_STEM_*).
MODEL_FOLDER_NAMES = {"config.json", "split.json", "state.json", "log.csv", "curves.png",
                      "curves.pdf", "backup", "snapshots"}
# Options that change neither the model nor its data: a rerun differing only in these resumes
# (a finished model folder records a changed --faint-filter without training again).
UNHASHED_SETTINGS = ("verbose", "pdf", "restart", "faint_filter", "cluster_timeout")
# Where the folders and files are: what they hold is hashed instead (patch names, statistics,
# label bytes, class names, the --init-model file), so a project moved or named by another path
# still resumes, and the same folder given as --model-dir or by default is one model folder.
PATH_SETTINGS = ("data_dir", "work_dir", "model_dir", "init_model")
OPTIMIZERS = ("nsgd", "sgd", "adam")
# Workers started by hand, one machine after another, join within minutes; a wait beyond this
# is a worker that never started or cannot be reached.
CLUSTER_TIMEOUT_S = 600
MIN_FRAMES_FOR_IMAGE_SPLIT = 3


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("folders")
    g.add_argument("--data-dir", default="data", help="data folder with classes.txt "
                   "(default: %(default)s)")
    g.add_argument("--work-dir", default=WORK_DIR,
                   help="folder written by gen_img_aug.py and pre_processing.py "
                        "(default: %(default)s)")
    g.add_argument("--model-dir", help="output model folder: new, empty or one training wrote "
                   "(default: <work-dir>/weights)")
    g = p.add_argument_group("network")
    g.add_argument("--weights", default="imagenet",
                   help="encoder initialisation: 'imagenet' (downloaded by Keras, as the paper), "
                        "a local Xception weights file, or 'none' (default: %(default)s)")
    g.add_argument("--init-model", metavar="DIR",
                   help="start from the best weights of a trained model folder instead of "
                        "--weights: fine-tuning on corrected or more data; its classes must "
                        "be classes.txt's, unless --new-head")
    g.add_argument("--new-head", action="store_true",
                   help="with --init-model: train for a new class list; the last layer "
                        "starts afresh, every other one from the model")
    g.add_argument("--start-neurons", type=int, default=16,
                   help="decoder width multiplier (default: %(default)s)")
    g.add_argument("--dropout", type=finite_float, default=0.1,
                   help="dropout rate (default: %(default)s)")
    g = p.add_argument_group("loss and optimizer")
    g.add_argument("--loss", choices=LOSSES, default="lovasz-softmax",
                   help="training loss; lovasz-hinge needs 2 classes (default: %(default)s)")
    g.add_argument("--lovasz-on", "--lovasz-input", dest="lovasz_on",
                   choices=("probabilities", "logits", "softmax"), default="probabilities",
                   help="what the Lovasz-softmax loss is computed on: the softmax probabilities "
                        "of the network's logits, or the raw logits as the original code did; "
                        "--lovasz-input softmax, the old spelling, means probabilities "
                        "(default: %(default)s)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="nsgd",
                   help="nsgd: SGD on per-variable normalized gradients, as the paper "
                        "(default: %(default)s)")
    g.add_argument("--lr", type=positive_float, default=1e-3,
                   help="learning rate (default: %(default)s)")
    g.add_argument("--momentum", type=fraction_below_one, default=0.9,
                   help="momentum of nsgd/sgd, Nesterov (default: %(default)s)")
    g.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="cosine: anneal the learning rate to 0 over the run (planned steps or "
                        "time budget, whichever ends first); constant: what the original "
                        "effectively ran (default: %(default)s)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=25, help="epochs (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=8,
                   help="patches per step on each replica (one without --strategy "
                        "mirrored) (default: %(default)s)")
    g.add_argument("--val-split", type=finite_float, default=0.2,
                   help="fraction held out for validation: of the training frames with "
                        "--val-split-by image (at least one frame), of the patches with patch "
                        "(default: %(default)s)")
    g.add_argument("--val-split-by", choices=("image", "patch"), default="image",
                   help="image: validate on whole training frames that no training patch "
                        "comes from (needs 3 frames; else patch); patch: a random patch split "
                        "as the original, where validation shares pixels with training "
                        "(default: %(default)s)")
    g.add_argument("--random-state", type=seed_value, default=2018,
                   help="seed of the train/val split (default: %(default)s)")
    g.add_argument("--steps-per-epoch", type=positive_int,
                   help="training batches per epoch (default: one pass over the patches)")
    g.add_argument("--val-steps", type=positive_int,
                   help="validation batches per epoch (default: all validation patches)")
    g.add_argument("--time-budget", type=positive_float,
                   help="stop after this many minutes of training (default: no limit)")
    g.add_argument("--bn-batches", type=int, default=40,
                   help="training batches that re-estimate BatchNorm statistics before each "
                        "validation and save; 0 keeps Keras' moving averages "
                        "(default: %(default)s)")
    g.add_argument("--swa-epochs", type=int, default=5,
                   help="average the weights of this many last epochs into the _swa model; "
                        "0 disables (default: %(default)s)")
    g.add_argument("--keep-snapshots", action="store_true",
                   help="keep every epoch's snapshot, not only the last --swa-epochs (for "
                        "accuracy-against-time curves; about 150 MB each)")
    g.add_argument("--faint-filter", choices=("calibrate", "off"), default="calibrate",
                   help="calibrate: after training, predict the held-out validation frames "
                        "whole and record the texture under which predicted objects are "
                        "dropped, where that raises their mean IoU (prediction applies it; "
                        "see faint_objects.py); off: record none, as the original "
                        "(default: %(default)s)")
    g.add_argument("--seed", type=seed_value, default=2018,
                   help="seed of initialisation and shuffling (default: %(default)s)")
    g.add_argument("--restart", action="store_true",
                   help="train anew in a model folder that holds a model trained with other "
                        "settings: the old folder is moved to <model-dir>.previous and deleted "
                        "once the new run has saved its first checkpoint")
    g = p.add_argument_group("devices")
    g.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="one: the default device; mirrored: a replica on every visible GPU "
                        "(or --cpu-devices), each taking --batch-size patches of a global "
                        "batch, gradients and BatchNorm statistics all-reduced; multiworker: "
                        "the same over several processes or machines (--cluster; the chief "
                        "alone writes the model folder, which every worker must see); auto: "
                        "mirrored where there are several GPUs, else one (default: "
                        "%(default)s)")
    g.add_argument("--cluster", choices=("tf-config", "slurm"), default="tf-config",
                   help="with --strategy multiworker, where the workers are listed: the "
                        "TF_CONFIG variable of each process, or the SLURM job step (srun) "
                        "(default: %(default)s)")
    g.add_argument("--cluster-timeout", type=non_negative_float, metavar="SECONDS",
                   help="with --strategy multiworker, how long to wait for every worker to "
                        "join before giving up with an error; 0 waits as long as it takes "
                        f"(default: {CLUSTER_TIMEOUT_S})")
    g.add_argument("--cpu-devices", type=positive_int, default=1, metavar="N",
                   help="split the CPU into N logical devices, for a mirrored run without "
                        "GPUs (tests, and measuring the strategy's overhead; they share the "
                        "cores) (default: %(default)s)")
    g = p.add_argument_group("speed and output")
    add_precision_option(g)
    g.add_argument("--jit-compile", choices=("on", "off"), default="off",
                   help="compile the training step with XLA; on a CPU it made a step 4-6x slower "
                        "(bench/speed.py --xla) (default: %(default)s)")
    g.add_argument("--save-format", choices=("h5", "keras"), default="h5",
                   help="h5 as the original, or Keras 3's native .keras (default: %(default)s)")
    g.add_argument("--pdf", action="store_true", help="also write the curves as PDF")
    g.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                   help="progress output: 0 silent, 1 a bar over the whole run with the time "
                        "left and a line per epoch, 2 Keras' line per epoch (default: 1 on a "
                        "terminal, else 2)")
    args = p.parse_args(argv)
    if args.lovasz_on == "softmax":
        args.lovasz_on = "probabilities"
    for name in ("epochs", "batch_size", "start_neurons"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if not 0 < args.val_split < 1:
        p.error("--val-split must be between 0 and 1")
    if not 0 <= args.dropout < 1:
        p.error("--dropout must be in [0, 1)")
    if args.bn_batches < 0 or args.swa_epochs < 0:
        p.error("--bn-batches and --swa-epochs must not be negative")
    # Refused rather than ignored: a user who asked for them would believe they took effect.
    if args.cluster != "tf-config" and args.strategy != "multiworker":
        p.error(f"--cluster {args.cluster} needs --strategy multiworker")
    if args.cluster_timeout is not None and args.strategy != "multiworker":
        p.error("--cluster-timeout needs --strategy multiworker")
    if args.optimizer == "adam" and args.momentum != 0.9:
        p.error(f"--momentum {args.momentum:g} has no effect with --optimizer adam (it is "
                "nsgd's and sgd's)")
    if args.lovasz_on != "probabilities" and args.loss != "lovasz-softmax":
        p.error(f"--lovasz-on {args.lovasz_on} has no effect with --loss {args.loss} (it is "
                "the Lovasz-softmax loss's input)")
    if args.init_model and args.weights.lower() not in ("imagenet", "none"):
        p.error(f"--weights {args.weights} has no effect with --init-model, whose model gives "
                "every weight; leave --weights out")
    if args.cpu_devices > 1 and args.strategy not in ("auto", "mirrored"):
        p.error(f"--cpu-devices {args.cpu_devices} needs --strategy mirrored (or auto): "
                f"--strategy {args.strategy} does not split the CPU")
    return args


# ---------------------------------------------------------------- data

def patch_names(work):
    """Names of the preprocessed patches, each with its label."""
    prep, label = work / "train" / "prep", work / "train" / "label"
    names = sorted(p.name for p in prep.glob("*.png")) if prep.is_dir() else []
    if not names:
        raise PipelineError(f"no preprocessed patches in {prep}: run pre_processing.py first")
    missing = [n for n in names if not (label / n).is_file()]
    if missing:
        raise PipelineError(f"{count_of(len(missing), 'patch', 'patches')} "
                            f"{agreeing(len(missing), 'has', 'have')} no label in {label}, e.g. "
                            f"{missing[0]}")
    if len(names) < 2:
        raise PipelineError("at least two patches are needed for a train/val split")
    return names


def patch_sources(work, names, strict=True):
    """{patch name: the frame it was cut from}, from gen_img_aug.py's patches.csv ({} if absent,
    and where it misses a patch and not strict: a patch split needs no frames)."""
    path = work / "train" / "patches.csv"
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"patch", "image"} - set(reader.fieldnames or ())
        if missing:
            raise PipelineError(f"{path} has no column {sorted(missing)[0]!r} (it starts "
                                f"{','.join(reader.fieldnames or [])!r}); rerun gen_img_aug.py "
                                "and pre_processing.py")
        sources = {row["patch"]: row["image"] for row in reader}
    unknown = [n for n in names if n not in sources]
    if unknown and not strict:
        return {}
    if unknown:
        raise PipelineError(f"{path} does not list patch {unknown[0]} ({len(unknown)} unlisted); "
                            "rerun gen_img_aug.py and pre_processing.py")
    return sources


def split_patches(work, val_split, random_state, by="image", recorded=None, learnt=()):
    """{"by", "val_frames", "train", "val", "train_frames", "train_image_digests"}: which
    patches train and which validate, and the frames of the training patches (and
    trained_pictures of them).

    By image (the default), the validation patches are all the patches of round(val_split x
    frames) whole training frames (at least one) that no training patch comes from, so
    validation never sees pixels training saw; the planes of one TIFF stack (recorded, what
    gen_img_aug.py wrote into split.json: stack_of, frame -> file) count as one frame, as
    neighbouring planes look alike. With fewer than MIN_FRAMES_FOR_IMAGE_SPLIT frames, or by
    patch, the patches are split at random as in the paper (overlapping crops of the same
    frames then land on both sides). Frames in `learnt` (those the --init-model model trained
    on) are held out only where too few others are left.
    """
    names = patch_names(work)
    recorded = recorded or {}
    cut = recorded.get("patches", {}).get("num_patches")
    if isinstance(cut, int) and len(names) != cut:
        raise PipelineError(f"{work / 'train' / 'prep'} holds {len(names)} preprocessed patches, "
                            f"gen_img_aug.py cut {cut} ({work / 'split.json'}); rerun "
                            "pre_processing.py (and gen_img_aug.py if train/src lacks some)")
    if cut is not None and not (work / "train" / "patches.csv").is_file():
        raise PipelineError(f"{work / 'train' / 'patches.csv'} is missing, which says the frame of "
                            "every patch (without it validation would share frames with "
                            "training); rerun gen_img_aug.py and pre_processing.py")
    frame_of = patch_sources(work, names, strict=by == "image")
    split = (split_by_image(names, frame_of, val_split, random_state,
                            recorded.get("stack_of") or {}, learnt)
             if by == "image" else None) or split_by_patch(names, val_split, random_state)
    # The frames the model saw, for prediction to tell them from unseen ones (None where no
    # patches.csv says which they are).
    split["train_frames"] = sorted({frame_of[n] for n in split["train"]}) if frame_of else None
    split["train_image_digests"] = trained_pictures(split["train_frames"], recorded)
    return split


def trained_pictures(frames, recorded):
    """{training frame: the digest of its image's pixels} that gen_img_aug.py recorded
    (split.json: image_digests; blank frames, which may well repeat, have none), for
    prediction to know these frames by their pixels whatever their names; None where no
    frame is known or none was recorded (patches cut elsewhere or by an earlier version)."""
    pictures = recorded.get("image_digests")
    if frames is None or not isinstance(pictures, dict):
        return None
    return {name: pictures[name] for name in frames if name in pictures}


def with_earlier_frames(pictures, earlier):
    """The training frames' picture digests ({frame: digest}, or None) with those of the
    frames the --init-model model trained on (earlier; its config carries on its own
    starting model's too): fine-tuned, this model has learnt them all. A name of theirs
    that ours bears for another picture is kept as '<name> (--init-model)'."""
    if not earlier:
        return pictures
    merged = dict(pictures or {})
    for name, digest in earlier.items():
        if merged.get(name, digest) != digest:
            name = f"{name} (--init-model)"
        merged.setdefault(name, digest)
    return merged


def frames_learnt(recorded, earlier):
    """The frames (a stack by its file, as the validation split counts them) whose pictures
    the --init-model model trained on (earlier: its train_image_digests, or None)."""
    learnt = set((earlier or {}).values())
    stack_of = recorded.get("stack_of") or {}
    return {stack_of.get(name, name) for name, digest in
            (recorded.get("image_digests") or {}).items() if digest in learnt}


def warn_of_held_out_frames_trained_on(val_frames, learnt, init_model):
    """Say where frames held out for validation are frames the --init-model model trained
    on, too few others being left: they choose the best checkpoint, and calibrate the
    faint-object filter, on pictures the model has learnt."""
    seen = sorted(set(val_frames or ()) & learnt)
    if seen:
        print(f"warning: {count_of(len(seen), 'frame')} held out for validation "
              f"({some_names(seen)}) are frames --init-model {init_model} trained on, too few "
              "others being left: the best checkpoint is chosen on pictures the model has "
              "learnt; add new frames, or lower --val-split")


def split_by_patch(names, val_split, random_state):
    """The paper's random patch split, refused where a side would be empty."""
    from sklearn.model_selection import train_test_split
    count = held_out_count(val_split, len(names))
    if not 0 < count < len(names):
        raise PipelineError(f"--val-split {val_split:g} of the {len(names)} patches leaves "
                            f"{len(names) - count} to train on and {count} to validate on; "
                            "each side needs one: give a smaller --val-split or cut more "
                            "patches")
    train, val = train_test_split(names, test_size=val_split, random_state=random_state)
    return {"by": "patch", "val_frames": [], "train": sorted(train), "val": sorted(val)}


def split_by_image(names, frame_of, val_split, random_state, stack_of, learnt=()):
    """split_patches() by whole frames, or None (with a note) where there are too few; the
    frames of `learnt` go last in the draw of the held-out ones."""
    sources = {n: stack_of.get(frame, frame) for n, frame in frame_of.items()}
    frames = sorted({sources[n] for n in names}) if sources else []
    if len(frames) < MIN_FRAMES_FOR_IMAGE_SPLIT:
        told = count_of(len(frames), "training frame") if frames else \
            "no record of the training frames"
        print(f"note: {told}; validating on a random patch split (--val-split-by patch)")
        return None
    count = min(len(frames) - 1, max(1, round(val_split * len(frames))))
    drawn = np.random.RandomState(random_state).permutation(frames).tolist()
    drawn = [f for f in drawn if f not in learnt] + [f for f in drawn if f in learnt]
    val_frames = sorted(drawn[:count])
    held_out = set(val_frames)
    val = [n for n in names if sources[n] in held_out]
    if not val or len(val) == len(names):
        raise PipelineError(f"the {count_of(count, 'validation frame')} "
                            f"{agreeing(count, 'holds', 'hold')} {len(val)} of {len(names)} "
                            "patches; cut more patches or use --val-split-by patch")
    return {"by": "image", "val_frames": val_frames,
            "train": [n for n in names if sources[n] not in held_out], "val": val}


def check_patch_labels(work, classes, data_dir, recorded):
    """Refuse patches cut for another class list, and labels with classes beyond
    classes.txt as gen_img_aug.py recorded them in split.json (the class list and every label
    value it saw); labels_digest checks each label patch as it reads it, recorded or not."""
    if "classes" not in recorded:
        return
    classes_file = Path(data_dir) / "classes.txt"
    if recorded["classes"] != classes:
        raise PipelineError(f"the patches in {work} were cut for the classes "
                            f"{recorded['classes']} ({work / 'split.json'}) but {classes_file} "
                            f"lists {classes}; give the --data-dir they came from, or rerun "
                            "gen_img_aug.py")
    values = [v for v in recorded.get("label_values") or [0] if v != IGNORE_LABEL] or [0]
    if max(values) >= len(classes):
        raise PipelineError(f"the labels of {work} hold class {max(values)} but "
                            f"{classes_file} lists only {len(classes)} classes; fix "
                            "classes.txt or the labels and rerun gen_img_aug.py")


def check_patch_sizes(work, names, patch_shape):
    """Refuse a preprocessed patch or label patch of another size than the first patch (a
    stray file, or labels cut for another --patch-size): batching them fails mid-training."""
    for name in names:
        for sub in ("prep", "label"):
            path = work / "train" / sub / name
            with open(path, "rb") as f:
                size = (png_header(f.read(PNG_HEADER_BYTES)) or (None,) * 4)[:2]
            if size != tuple(patch_shape):
                found = "not a PNG image" if size[0] is None else f"{size[1]}x{size[0]}"
                raise PipelineError(f"{path} is {found}, the patches are {patch_shape[1]}x"
                                    f"{patch_shape[0]}; rerun gen_img_aug.py and "
                                    "pre_processing.py")


def check_statistics_fit(stats, patch, work):
    """Refuse a train_mean_std.json that is not of these preprocessed patches' run (another
    colour mode, or written by an older version without it): config.json hands its colour
    mode and statistics to prediction."""
    where = work / f"{MEAN_STD_NAME}.json"
    channels = 1 if patch.ndim == 2 else patch.shape[2]
    declared = {"grey": 1, "rgb": 3}.get(stats.get("color_mode"))
    if declared is None or stats.get("channels") != declared:
        raise PipelineError(f"{where} does not say its colour mode and channels; rerun "
                            "pre_processing.py")
    if declared != len(np.atleast_1d(stats["mean"])):
        raise PipelineError(f"{where} is of {stats['color_mode']} patches ("
                            f"{count_of(declared, 'channel')}) but holds "
                            f"{count_of(len(np.atleast_1d(stats['mean'])), 'mean')}; "
                            "the file is damaged: rerun pre_processing.py")
    if stats["channels"] != channels:
        raise PipelineError(f"{where} is of {stats['channels']}-channel ({stats['color_mode']}) "
                            f"patches, but the patches in {work / 'train' / 'prep'} have "
                            f"{channels}; rerun pre_processing.py")


def work_record(work):
    """What gen_img_aug.py recorded in <work>/split.json ({} for patches made elsewhere)."""
    path = work / "split.json"
    check_split_written(work)
    record = read_json(path, "split file") if path.is_file() else {}
    stack_of = record.get("stack_of", {}) if isinstance(record, dict) else None
    if not (isinstance(stack_of, dict)
            and all(isinstance(v, str) for v in stack_of.values())):
        raise PipelineError(f"{path} is not a split file written by gen_img_aug.py; rerun it")
    return record


# ---------------------------------------------------------------- the model folder

def settings_fingerprint(args, stats, split, init, classes, labels):
    """A hash of everything that decides the trained model: the settings, the data (patch
    names, statistics, the class names and the digest of the label patches) and the model it
    starts from; not where the folders are."""
    settings = {k: v for k, v in vars(args).items()
                if k not in UNHASHED_SETTINGS and k not in PATH_SETTINGS}
    data = {"statistics": stats, "train": split["train"], "val": split["val"],
            "classes": classes, "labels_sha256": labels}
    return _digest(settings, data, init)


def earlier_fingerprint(args, stats, split, init):
    """The hash the versions before labels_sha256 made (the settings with the folders'
    resolved paths, the patch names and statistics): a model folder of theirs that it matches
    was trained by this command on these patches, as far as they recorded, and is resumed,
    finished or refiltered as before."""
    settings = {k: v for k, v in vars(args).items() if k not in UNHASHED_SETTINGS}
    for key in ("data_dir", "work_dir", "model_dir"):
        settings[key] = str(Path(settings[key]).resolve()) if settings[key] else None
    return _digest(settings, {"statistics": stats, "train": split["train"],
                              "val": split["val"]}, init)


def _digest(settings, data, init):
    if init:
        data["init_model_sha256"] = init["sha256"]
    text = json.dumps({"settings": settings, "data": data}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def labels_digest(work, names, classes, data_dir):
    """sha256 of the label patches of the given names, in order: relabelled frames cut again
    give the same image patches and statistics, but other labels, so another model. Each
    label patch is also checked, as it is read, to hold no class beyond classes (split.json
    records the values gen_img_aug.py wrote, not a label patch edited since: Lovasz-softmax
    trained on such a value silently, cross-entropy stopped with a traceback)."""
    import cv2
    from tqdm import tqdm
    digest = hashlib.sha256()
    for name in tqdm(names, desc="check labels", unit="patch", disable=None, leave=False):
        path = work / "train" / "label" / name
        data = path.read_bytes()
        digest.update(f"{name}\0{hashlib.sha256(data).hexdigest()}\0".encode())
        label = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if label is None or label.ndim != 2:
            raise PipelineError(f"label patch {path} is not a readable one-channel image; rerun "
                                "gen_img_aug.py")
        check_label_values(label, len(classes), path, Path(data_dir) / "classes.txt")
    return digest.hexdigest()


def holds_checkpoint(model_dir):
    return (any(model_dir.glob(f"{WEIGHTS_STEM}_*.*"))
            or any(model_dir.glob("snapshots/epoch_*.*")))


def holds_training(model_dir):
    return model_dir.is_dir() and (holds_checkpoint(model_dir) or (model_dir / "backup").is_dir()
                                   or (model_dir / "state.json").is_file())


def written_by_training(name):
    """Whether a model folder's entry is one training writes."""
    return name in MODEL_FOLDER_NAMES or name.startswith(f"{WEIGHTS_STEM}_")


def check_model_dir(model_dir, work, data_dir, init_model):
    """Refuse a --model-dir whose files training would mix with others: the work or data
    folder, one that holds either, or one holding files training does not write; and a
    <model-dir>.previous holding such files. A --restart moves the model folder aside, and
    the first checkpoint deletes the folder aside, whatever they hold. The --init-model
    folder cannot be either: its model would be overwritten while it is fine-tuned."""
    for folder in (model_dir, aside_folder(model_dir)):
        if init_model and same_or_inside(init_model, folder):
            raise PipelineError(f"--init-model {init_model} is the folder this run writes "
                                f"({folder}), whose model training would replace; fine-tune "
                                "into another --work-dir or --model-dir")
    for folder, option in ((work, "--work-dir"), (Path(data_dir), "--data-dir")):
        if same_or_inside(folder, model_dir):
            raise PipelineError(f"--model-dir {model_dir} is or holds the {option} folder "
                                f"{folder}, which training and --restart would change; choose "
                                f"a folder of its own, such as {work / 'weights'}")
    for folder, fate in ((model_dir, "mix its files with them, and --restart delete them"),
                         (aside_folder(model_dir), "delete that folder")):
        foreign = foreign_entries(folder, written_by_training)
        if foreign:
            raise PipelineError(f"{folder} holds files that training does not write "
                                f"({some_names(foreign)}); "
                                f"training in {model_dir} would {fate}: move them, or choose "
                                "another --model-dir")


def plan_model_folder(model_dir, fingerprint, args, earlier=None):
    """What to do with the model folder: 'fresh', 'resume', 'finish', 'done' or 'restart';
    refuses, before anything changes, to overwrite a model trained with other settings.
    A folder of a version that hashed no labels is matched by its rule (earlier)."""
    if not holds_training(model_dir):
        return "fresh"
    if args.restart:
        return "restart"
    config_path = model_dir / "config.json"
    try:
        old = read_json(config_path, "model config") if config_path.is_file() else {}
    except PipelineError:
        old = {}
    if not isinstance(old, dict):
        old = {}
    if old.get("settings_hash") != (fingerprint if "labels_sha256" in old else earlier):
        how, resumable = how_it_differs(old, args)
        rerun = ("; its training has finished (to train it on, give --init-model "
                 f"{model_dir} and another --model-dir), " if "result" in old
                 else "; rerun that command to resume it, " if resumable
                 else ", so this command cannot resume it; ")
        raise PipelineError(f"{model_dir} holds a model trained {how}{rerun}add --restart "
                            f"to move it to {aside_folder(model_dir)} and train anew (it is "
                            "deleted at the new run's first checkpoint), or choose another "
                            "--work-dir or --model-dir")
    if "result" in old:
        return "done"
    if epochs_finished(model_dir):
        return "finish"
    if (model_dir / "backup").is_dir():
        return "resume"
    return "fresh"


def epochs_finished(model_dir):
    """Whether state.json marks the epochs all run and saved. Checked before the backup: the
    mark comes before Keras deletes the backup, and a stop within that deletion left a
    backup torn in half (the rerun refused it as damaged, telling to --restart a trained
    model, or resumed from its weights alone at epoch 1)."""
    state = model_dir / "state.json"
    return state.is_file() and bool(read_json(state, "training state").get("finished"))


def how_it_differs(old, args):
    """(how the model in a folder was trained otherwise, whether rerunning its own command
    resumes it: not where the same command now meets other data)."""
    if not old:     # no command can be matched to it, this one included: none resumes it
        return ("by a command its config.json no longer records (the file is missing or "
                "unreadable)", False)
    if "settings" not in old:
        return "by another command (its config.json records no settings)", True
    if "settings_hash" not in old:
        return ("by an earlier version of this script (its config.json has no settings "
                "hash)", True)
    changed = [k for k, v in vars(args).items() if k not in UNHASHED_SETTINGS
               and k not in PATH_SETTINGS and old["settings"].get(k) != v]
    if changed:
        return "with other settings (" + ", ".join(
            f"--{k.replace('_', '-')} {old['settings'].get(k)} -> {getattr(args, k)}"
            for k in changed[:4]) + ")", True
    return ("by this command on other training data (the patches, their labels or "
            "statistics, classes.txt or the --init-model file changed since)", False)


def prepare_model_folder(model_dir, plan):
    """Carry out the plan. 'restart' moves the old folder aside (the checkpoints callback
    deletes it once the new run has a checkpoint); a fresh start clears stale results."""
    if plan == "restart":
        aside = aside_folder(model_dir)
        if aside.exists() and not holds_checkpoint(model_dir):
            shutil.rmtree(model_dir)      # a restart that never got to a checkpoint
        else:
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(model_dir, aside)
            print(f"moved the earlier model folder to {aside}; it is deleted once this run has "
                  "saved its first checkpoint")
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(model_dir)
    if plan == "finish":     # what a deletion cut short left of a backup no longer needed
        shutil.rmtree(model_dir / "backup", ignore_errors=True)
    if plan in ("fresh", "restart"):
        for stale in [model_dir / "log.csv", model_dir / "state.json", model_dir / "config.json",
                      *model_dir.glob(f"{WEIGHTS_STEM}_*.*"),
                      *model_dir.glob("snapshots/epoch_*.*")]:
            stale.unlink(missing_ok=True)


def record_hashes(model_dir, saved=()):
    """Keep config.json's sha256 of every model file current (those saved now added, those
    gone dropped, also after a kill between the two); prediction verifies them."""
    path = model_dir / "config.json"
    config = read_json(path, "model config")
    hashes = {name: digest for name, digest in config.get("sha256", {}).items()
              if (model_dir / name).is_file()}
    for file in saved:
        hashes[file.relative_to(model_dir).as_posix()] = sha256_of(file)
    config["sha256"] = hashes
    write_json(path, config)


def patch_dataset(work, names, channels, batch_size, shuffle_seed=None, with_labels=True):
    """Batches of (image 0..1 with 3 channels, label) decoded from disk in parallel."""
    import tensorflow as tf
    # The names' bytes on disk: TensorFlow encodes a str as UTF-8, which in a locale of
    # another encoding (latin-1; C without Python's UTF-8 mode) named no file where a folder
    # held a non-ASCII character.
    images = [os.fsencode(work / "train" / "prep" / n) for n in names]
    labels = [os.fsencode(work / "train" / "label" / n) for n in names]

    def decode(image_path, label_path):
        img = tf.io.decode_png(tf.io.read_file(image_path), channels=channels)
        # The original fed the preprocessed patches as 0..1, grey repeated to 3 channels.
        img = tf.cast(img, tf.float32) / 255.0
        if channels == 1:
            img = tf.repeat(img, 3, axis=-1)
        lbl = tf.cast(tf.io.decode_png(tf.io.read_file(label_path), channels=1)[..., 0], tf.int32)
        return (img, lbl) if with_labels else img

    ds = tf.data.Dataset.from_tensor_slices((images, labels))
    if shuffle_seed is not None:
        # Shuffled after repeat, and alike for every iterator: Keras opens an iterator to
        # build the model under a strategy before the one it trains on, and a reshuffled
        # order there gave replicas other patches than one device takes.
        ds = ds.repeat().shuffle(len(names), seed=shuffle_seed, reshuffle_each_iteration=False)
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=shuffle_seed is not None).prefetch(tf.data.AUTOTUNE)


def split_evenly(names, replicas):
    """The validation patches, the first ones repeated (at most replicas - 1) so that the last
    batch splits evenly: tf.distribute hands a short batch to some replicas only, and a
    replica given no patch failed in BatchNorm."""
    count = -(-len(names) // replicas) * replicas
    return [names[i % len(names)] for i in range(count)]


# ---------------------------------------------------------------- loss, optimizer, metrics

def make_loss(name, num_classes, lovasz_on):
    """The loss by its option name; every one leaves IGNORE_LABEL pixels out."""
    import keras
    from lovasz_losses_tf import BceDiceLoss, LovaszHingeLoss, LovaszSoftmaxLoss
    if name == "lovasz-softmax":
        # The network outputs logits: the loss applies softmax itself unless told to
        # take the logits as they are.
        return LovaszSoftmaxLoss(from_logits=lovasz_on == "probabilities", ignore=IGNORE_LABEL)
    if name == "lovasz-hinge":   # two classes: checked by check_inputs
        return LovaszHingeLoss(ignore=IGNORE_LABEL)
    if name == "cross-entropy":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                          ignore_class=IGNORE_LABEL)
    return BceDiceLoss(ignore=IGNORE_LABEL)


def make_optimizer(args, learning_rate):
    import keras
    from model import NormalizedSGD
    if args.optimizer == "nsgd":
        return NormalizedSGD(learning_rate=learning_rate, momentum=args.momentum, nesterov=True)
    if args.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=args.momentum,
                                    nesterov=True)
    return keras.optimizers.Adam(learning_rate=learning_rate)


def make_metrics(classes):
    from model import ConfusionIoU
    return [ConfusionIoU(len(classes), name="mean_iou")] + [
        ConfusionIoU(len(classes), c, name=f"iou_{name}") for c, name in enumerate(classes)]


# ---------------------------------------------------------------- callbacks

def make_callbacks(args, model_dir, bn_images, val_ds, val_steps, total_steps, schedule,
                   resuming, guard, saves, chief=True, evaluate=None):
    """The callbacks of a training run (training_callbacks.py), set from the options and,
    when resuming, from what the interrupted run had done by its last finished epoch; the
    DivergenceGuard `guard` first; SavesUninterrupted `saves` around the epoch's saves.
    evaluate replaces model.evaluate where it cannot run (several workers)."""
    import keras
    import training_callbacks as tc
    state_path = model_dir / "state.json"
    state = read_json(state_path, "training state") if resuming and state_path.is_file() else {}
    steps_before = state.get("epochs_done", 0) * total_steps // args.epochs
    keep = None if args.keep_snapshots else max(1, args.swa_epochs)
    clock = tc.RunClock(total_steps, args.time_budget, schedule, state.get("minutes", 0.0),
                        steps_before)
    bar = ([tc.ProgressBar(total_steps, steps_before, args.epochs, args.time_budget, clock)]
           if chief and verbosity(args) == 1 else [])
    figures = [model_dir / "curves.png", Path(args.work_dir) / "figures" / "training_curves.png"]
    curves = [tc.Curves(model_dir / "log.csv", figures, args.pdf)] if chief else []
    return [
        guard,
        clock,
        tc.PreciseBNValidation(bn_images, args.bn_batches, val_ds, val_steps, evaluate),
        saves.hold,
        tc.Checkpoints(model_dir, model_dir / weights_name("best", args.save_format),
                       args.save_format, keep, lambda saved: record_hashes(model_dir, saved),
                       state.get("best_val_loss", math.inf), aside_folder(model_dir)),
        *bar,
        keras.callbacks.CSVLogger(str(model_dir / "log.csv"), append=resuming),
        *curves,
        tc.Finished(state_path),
        tc.AtomicBackupAndRestore(str(model_dir / "backup")),
        saves.release,
    ]


def verbosity(args):
    """0 silent, 1 one progress bar for the run, 2 Keras' line per epoch."""
    return args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)


def align_with_backup(model_dir):
    """A kill between the epoch's log row and its backup leaves the backup an epoch behind:
    drop the log rows and the progress the backup lacks, so the resumed epoch is logged once."""
    meta = model_dir / "backup" / "training_metadata.json"
    epoch = read_json(meta, "backup record").get("epoch", 0) if meta.is_file() else 0
    log = model_dir / "log.csv"
    if log.is_file():
        lines = log.read_text().splitlines(keepends=True)
        kept = [line for line in lines[1:] if line.endswith("\n")
                and line.split(",")[0].isdigit() and int(line.split(",")[0]) < epoch]
        atomic_write_text(log, "".join(lines[:1] + kept))
    state_path = model_dir / "state.json"
    if state_path.is_file():
        state = read_json(state_path, "training state")
        if state.get("epochs_done", 0) > epoch:
            write_json(state_path, {**state, "epochs_done": epoch})


def weights_name(kind, save_format):
    return f"{WEIGHTS_STEM}_{kind}.{save_format}"


# ---------------------------------------------------------------- SWA

def stochastic_weight_average(model, snapshot_paths, bn_images, bn_batches, out_path):
    """Average the given weight snapshots, re-estimate BatchNorm, save; restore the model."""
    from training_callbacks import layers_only, refresh_batchnorm, save_model
    current = model.get_weights()
    total = None
    plain = layers_only(model)      # as save_model saved the snapshots
    for path in snapshot_paths:
        plain.load_weights(path)
        weights = [w.astype(np.float64) for w in model.get_weights()]
        total = weights if total is None else [t + w for t, w in zip(total, weights)]
    model.set_weights([t / len(snapshot_paths) for t in total])
    # Averaged weights need statistics of their own; averaged moving statistics don't fit them.
    refresh_batchnorm(model, bn_images, bn_batches)
    save_model(model, out_path)
    model.set_weights(current)


# ---------------------------------------------------------------- faint-object filter

def calibrate_faint_filter(args, model_dir, val_frames, precision):
    """faint_objects.calibrate() on the held-out frames predicted whole by the best model
    (the filter config.json records), or None, with a line saying why, where it cannot run."""
    if args.faint_filter == "off":
        return None
    if not val_frames:
        print("faint-object filter: validation was by patch, with no whole held-out frames "
              "to calibrate on; none recorded")
        return None
    try:
        return _calibrate_on_frames(args, model_dir, val_frames, precision)
    except PipelineError as err:
        # The model is trained and saved; the filter can be added by rerunning the command.
        print(f"faint-object filter: none recorded ({err}); rerun this command to calibrate it")
        return None


def held_out_sources(data_dir, val_frames, record):
    """{frame: image source} of the held-out frames in the data folder, refusing any that is
    not the frame gen_img_aug.py cut the patches from (record: its split.json)."""
    from image_io import list_images
    data = Path(data_dir)
    sources = list_images(data / "src", record.get("page")) if (data / "src").is_dir() else {}
    # A held-out TIFF stack is named by its file; its planes are frames of their own.
    stack_of, held_out = record.get("stack_of", {}), set(val_frames)
    found = {n: sources[n] for n in sources if stack_of.get(n, n) in held_out}
    check_frames_unchanged(found, data, record.get("frame_digests") or {})
    return found


def note_training_frames_changed(data_dir, train_frames, recorded, work):
    """Say which training frames differ in the data folder from those gen_img_aug.py cut the
    patches from (split.json's frame_digests): a label corrected since trains as it was. A
    note, not a refusal: the patches are whole without the data folder."""
    from image_io import frames_changed, list_images
    digests, data = recorded.get("frame_digests") or {}, Path(data_dir)
    frames = set(train_frames or ()) & set(digests)
    if not frames or not (data / "src").is_dir():
        return
    try:
        sources = list_images(data / "src", recorded.get("page"), frames=frames)
        changed = frames_changed({n: s for n, s in sources.items() if n in frames}, data,
                                 digests)
    except PipelineError:       # an unreadable data folder is not this run's input
        return
    if changed:
        print(f"note: {count_of(len(changed), 'training frame')} changed in {data} since "
              f"gen_img_aug.py cut the patches of {work} ({some_names(changed)}): the model "
              "trains on them as they were; rerun gen_img_aug.py and pre_processing.py to "
              "train on them as they are")


def check_frames_unchanged(frames, data, digests):
    """Refuse a frame whose pixels or label differ from those gen_img_aug.py recorded (data
    edited since, or another --data-dir of frames of the same names): the faint-object filter
    would be calibrated on frames the patches did not come from. Frames recorded by an earlier
    version, or without a label (which the calibration names), are let through."""
    from image_io import frames_changed
    changed = frames_changed(frames, data, digests)
    if changed:
        raise PipelineError(f"held-out frame {changed[0]} in {data} is not the one "
                            "gen_img_aug.py cut the patches from (changed since, or another "
                            "data folder); give the --data-dir it read, rerun gen_img_aug.py "
                            "and pre_processing.py, or add --faint-filter off")


def _calibrate_on_frames(args, model_dir, val_frames, precision):
    from faint_objects import MARGIN, MIN_GAIN, calibrate
    from image_io import find_frame_label
    import predict_lovasz_loss as predict
    data = Path(args.data_dir)
    record = work_record(Path(args.work_dir))
    sources = held_out_sources(data, val_frames, record)
    stack_of, held_out = record.get("stack_of", {}), set(val_frames)
    names = list(sources)
    missing = held_out - {stack_of.get(n, n) for n in names}
    if missing:
        raise PipelineError(f"held-out frame {sorted(missing)[0]} is no longer in {data}/src")
    start = time.monotonic()
    config = read_config(model_dir)
    classes = config["classes"]
    predict_batch, tile, prepare, _ = predict.open_model(
        model_dir, config, predict.model_files(model_dir, config, ["best"]), precision)
    frames = []
    for name in names:
        label_path = find_frame_label(data / "label", name, sources[name])
        if label_path is None:
            raise PipelineError(f"held-out frame {name} has no label in {data}/label")
        img = predict.model_image(sources[name], config["color_mode"], config["intensity"])
        label = predict.frame_label(label_path, img.shape[:2], sources[name], classes)
        probs = predict.frame_probabilities(predict_batch, img, tile, config["scale"],
                                            predict.DEFAULT_OVERLAP, "gaussian", args.batch_size,
                                            (0,), prepare)
        frames.append((img, predict.decide(probs, config["decision"]), label))
    result = calibrate(frames, len(classes))
    result["seconds"] = round(time.monotonic() - start, 1)
    if result["threshold"] is None:
        print(f"faint-object filter: no texture threshold {MARGIN}x below the faintest object "
              f"it keeps raises the mean IoU of the {count_of(len(frames), 'held-out frame')} "
              f"({result['mean_iou_kept']:.4f}) by {MIN_GAIN}; none recorded")
    else:
        print(f"faint-object filter: objects of texture under {result['threshold']:.2f} "
              f"dropped ({result['dropped']} of {result['objects']} on the "
              f"{count_of(len(frames), 'held-out frame')}: mean IoU "
              f"{result['mean_iou_kept']:.4f} -> {result['mean_iou_filtered']:.4f}), "
              f"{result['seconds']:.0f} s")
    return result


def faint_filter_outdated(args, config, val_frames):
    """Whether a finished model folder lacks the --faint-filter asked for: recorded with
    another choice (or before the option), or a calibration that could not run then."""
    if config["settings"].get("faint_filter") != args.faint_filter:
        return True
    return args.faint_filter == "calibrate" and bool(val_frames) and not config.get("faint_filter")


def finish_done(args, model_dir, val_frames):
    """A rerun of a finished training: record the --faint-filter asked for where the folder's
    is outdated, else nothing to do. Under --strategy multiworker the chief alone."""
    config = read_json(model_dir / "config.json", "model config")
    if not faint_filter_outdated(args, config, val_frames):
        print(f"{model_dir} already holds the model this command trains; nothing to do "
              "(add --restart to train it again)")
        return
    precision = use_precision(args.precision)
    config["faint_filter"] = calibrate_faint_filter(args, model_dir, val_frames, precision)
    config["settings"]["faint_filter"] = args.faint_filter
    write_json(model_dir / "config.json", config)
    print(f"{model_dir}: the trained model now has --faint-filter {args.faint_filter}")


# ---------------------------------------------------------------- main

def resolve_weights(option):
    if option.lower() == "none":
        return None
    if option == "imagenet":
        return "imagenet"
    if not Path(option).is_file():
        raise PipelineError(f"--weights {option}: no such file (use imagenet, none or a path)")
    return option


def build(args, patch_shape, num_classes):
    from model import build_model
    try:   # --init-model overwrites every weight: no ImageNet download for nothing
        return build_model((*patch_shape, 3), num_classes, args.start_neurons,
                           weights=None if args.init_model else resolve_weights(args.weights),
                           dropout=args.dropout)
    except Exception as err:  # Keras and h5py raise several types for a failed weight load
        if args.weights == "imagenet":
            raise PipelineError(f"could not load ImageNet weights for Xception ({err}); without "
                                "internet use --weights none or a local weights file") from None
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PipelineError(f"--weights {args.weights}: not usable Xception weights "
                            f"({reason})") from None


def check_init_model(args, classes, scale):
    """({best model file, its sha256}, the digests of the frames it trained on) of
    --init-model, after checking that it fits this run."""
    refuse_model_file(Path(args.init_model))
    folder = existing_folder(args.init_model, "--init-model")
    config = read_config(folder, "--init-model")
    path = model_file(folder, config, "best")
    verify_model_file(path, folder, config, unchecked="")
    note_unfinished_init_model(folder, config)
    theirs = config.get("settings", {}).get("start_neurons", args.start_neurons)
    if theirs != args.start_neurons:
        raise PipelineError(f"--init-model {folder} was built with --start-neurons {theirs}; "
                            "give the same")
    if config["scale"] != scale:
        raise PipelineError(f"--init-model {folder} works at scale {config['scale']:g} of the "
                            f"frames, these patches were cut at {scale:g}; give gen_img_aug.py "
                            f"--scale {config['scale']:g}")
    if config["classes"] != classes and not args.new_head:
        raise PipelineError(f"--init-model {folder} was trained for the classes "
                            f"{config['classes']}, {args.data_dir}/classes.txt lists {classes}; "
                            "add --new-head to train a new last layer for these classes")
    return ({"file": str(path.resolve()), "sha256": config["sha256"][path.name]},
            config["train_image_digests"])


def note_unfinished_init_model(folder, config):
    """Say so where --init-model's training was interrupted: its best model so far (of one
    epoch of 25, say) was taken without a word for the trained model the option names."""
    progress = unfinished_training(folder, config)
    if progress is not None:
        print(f"note: the training of --init-model {folder} has not finished ({progress}): "
              "fine-tuning starts from its best model so far; rerun its training command "
              "first to start from the trained model")


def refuse_model_file(path):
    """--init-model names a model folder: a model file given instead (its best .h5, say) was
    refused as a file where a folder goes, without saying which folder."""
    if not path.is_file():
        return
    folder, _ = own_model_folder(path)
    where = f" ({folder})" if folder else ", the one holding its config.json"
    raise PipelineError(f"--init-model {path} is a model file; give the model folder training "
                        f"wrote{where}: fine-tuning starts from that folder's best model")


def init_from_model(model, path, new_head):
    """Copy every layer's weights from a trained model of the same architecture (layer by
    layer in build order, as Keras may number unnamed layers differently per process); with
    new_head the logits layer keeps its fresh initialisation."""
    source = load_model(path)
    if len(source.layers) != len(model.layers):
        raise PipelineError(f"--init-model {path}: not this network ({len(source.layers)} "
                            f"layers, this one has {len(model.layers)})")
    for mine, theirs in zip(model.layers, source.layers):
        if new_head and mine.name == "logits":
            continue
        shapes = [tuple(w.shape) for w in theirs.weights]
        if type(mine) is not type(theirs) or shapes != [tuple(w.shape) for w in mine.weights]:
            raise PipelineError(f"--init-model {path}: layer {theirs.name} does not fit "
                                f"{mine.name} of this network (other classes need --new-head)")
        mine.set_weights(theirs.get_weights())


def write_config(args, model_dir, classes, stats, patch_shape, split, recorded, fingerprint,
                 labels, precision, extra=None):
    """config.json; `recorded` is what gen_img_aug.py wrote into split.json and prediction
    must repeat: {"intensity", "orientations", "scale", "page"}."""
    old = model_dir / "config.json"
    hashes = read_json(old, "model config").get("sha256", {}) if old.is_file() else {}
    config = {
        "model": "unet_xception_resnetblock",
        "classes": classes, "num_classes": len(classes),
        "input_shape": [*patch_shape, 3], "patch_size": list(patch_shape),
        "color_mode": stats["color_mode"], "image_channels": stats["channels"],
        **recorded,
        "preprocessing": {"mean": stats["mean"], "std": stats["std"], "gamma": stats["gamma"],
                          "equalize": stats.get("equalize", "patch"),
                          **({"histogram": stats["histogram"]} if "histogram" in stats else {}),
                          "input_scale": "prep / 255, grey repeated to 3 channels"},
        "decision": (SIGMOID_RULE if args.loss == "lovasz-softmax"
                     and args.lovasz_on == "logits" else ARGMAX),
        "weights_files": {k: weights_name(k, args.save_format) for k in ("best", "swa")},
        "num_train_patches": len(split["train"]), "num_val_patches": len(split["val"]),
        "val_split_by": split["by"], "val_frames": split["val_frames"],
        "train_frames": split["train_frames"],
        "train_image_digests": split["train_image_digests"],
        "precision": precision,
        "settings": {k: v for k, v in vars(args).items()},
        "settings_hash": fingerprint, "labels_sha256": labels,
        "sha256": hashes,
        "command": command_line(),
    }
    config.update(extra or {})
    write_json(model_dir / "config.json", config)
    return config


def check_inputs(args, work):
    """Everything training needs, checked before the model folder changes:
    (classes, statistics, split_patches(), patch shape, what gen_img_aug.py recorded for
    prediction (intensity rule, orientations, scale), the --init-model file and its sha256 or
    None)."""
    classes = read_classes(args.data_dir)
    stats = load_mean_std(work / f"{MEAN_STD_NAME}.json")
    recorded = work_record(work)
    where = work / "split.json"
    kept = {"intensity": check_intensity(recorded.get("intensity", DEFAULT_INTENSITY), where),
            "orientations": check_orientations(recorded.get("orientations", "all"), where),
            "scale": check_scale(recorded.get("scale", 1.0), where),
            "page": check_page(recorded.get("page"), where)}
    resolve_weights(args.weights)
    if args.new_head and not args.init_model:
        raise PipelineError("--new-head needs --init-model")
    init, earlier = (check_init_model(args, classes, kept["scale"]) if args.init_model
                     else (None, None))
    # Fine-tuning: the frames the first model learnt are held out for validation only where
    # too few others are left; it would choose the best checkpoint on pictures it has learnt.
    learnt = frames_learnt(recorded, earlier)
    split = split_patches(work, args.val_split, args.random_state, args.val_split_by, recorded,
                          learnt)
    check_patch_labels(work, classes, args.data_dir, recorded)
    note_training_frames_changed(args.data_dir, split["train_frames"], recorded, work)
    first = read_image(work / "train" / "prep" / split["train"][0])
    patch_shape = first.shape[:2]
    if patch_shape[0] % 32 or patch_shape[1] % 32:
        raise PipelineError(f"patches are {patch_shape[1]}x{patch_shape[0]}; the network needs "
                            "sides that are multiples of 32 (gen_img_aug.py --patch-size)")
    check_statistics_fit(stats, first, work)
    check_patch_sizes(work, split["train"] + split["val"], patch_shape)
    if args.faint_filter == "calibrate" and split["val_frames"]:
        # Read again from the data folder after training: refused now, not after it.
        held_out_sources(args.data_dir, split["val_frames"], recorded)
    if init:
        warn_of_held_out_frames_trained_on(split["val_frames"], learnt, args.init_model)
        split["train_image_digests"] = with_earlier_frames(split["train_image_digests"], earlier)
    if args.loss == "lovasz-hinge" and len(classes) != 2:
        raise PipelineError(f"--loss lovasz-hinge needs 2 classes, classes.txt has {len(classes)}")
    return classes, stats, split, patch_shape, kept, init


def main(argv=None):
    args = parse_args(argv)
    try:
        with ExitStack() as held:
            train_model(args, held)
    except KeyboardInterrupt:
        aside = aside_folder(model_folder(args))
        if aside.exists():
            raise Interrupted(f"{aside} still holds the earlier model folder, as this run saved "
                              "no checkpoint: rerun with --restart to train anew (it is then "
                              f"deleted), or remove {model_folder(args)} (it holds no model yet) "
                              "and move the earlier folder back in its place to keep it"
                              ) from None
        raise


def model_folder(args):
    """--model-dir, or the work folder's weights/, as an absolute path: its name makes the
    names of the folders and the lock file beside it."""
    path = Path(os.path.abspath(args.model_dir or Path(args.work_dir) / "weights"))
    if not path.name:
        raise PipelineError(f"--model-dir {args.model_dir} is the file system's root; choose "
                            "a folder of its own")
    return path


def model_folder_lock(model_dir):
    """Held while training writes model_dir: a second training into it is refused instead of
    mixing its checkpoints, log and config with this one's."""
    return exclusive_lock(lock_beside(model_dir), Path(__file__).name,
                          lambda holder: f"{model_dir} is being trained by {holder}; wait for "
                                         "it to finish, or use another --model-dir")


def hold_model_folder(held, model_dir, plan, *fingerprints):
    """Take the model folder's lock into the ExitStack held, once the plan's refusals have
    left it untouched; the plan, made before, must still hold."""
    held.enter_context(model_folder_lock(model_dir))
    if plan_model_folder(model_dir, *fingerprints) != plan:
        raise PipelineError(f"{model_dir} changed while this run prepared (another training "
                            "finished in it?); run the command again")


def train_model(args, held):
    """Train as args say, the locks on the work and model folders entered into the
    ExitStack held."""
    with refusal_told_to_cluster(args):
        work = existing_folder(args.work_dir, "--work-dir",
                               "run gen_img_aug.py and pre_processing.py first")
        held.enter_context(work_read_lock(work))
        model_dir = model_folder(args)
        refuse_file(model_dir, "--model-dir")
        check_model_dir(model_dir, work, args.data_dir, args.init_model)
        classes, stats, split, patch_shape, recorded, init = check_inputs(args, work)
        train_names, val_names = split["train"], split["val"]
        labels = labels_digest(work, train_names + val_names, classes, args.data_dir)
        fingerprint = settings_fingerprint(args, stats, split, init, classes, labels)
        earlier = earlier_fingerprint(args, stats, split, init)
        plan = plan_model_folder(model_dir, fingerprint, args, earlier)
        if plan == "fresh" and not args.restart and holds_training(aside_folder(model_dir)):
            # Left by a --restart stopped before its first checkpoint: the model it replaces.
            raise PipelineError(f"{aside_folder(model_dir)} holds the model folder a "
                                "--restart moved aside, which this run would delete once it "
                                "has a checkpoint: add --restart to train anew and let it go, "
                                f"or remove {model_dir} (it holds no model) and move the "
                                "earlier folder back in its place (or elsewhere) to keep it")
    # A multiworker process knows the folder it writes (the chief's, or a scratch one) only
    # once the cluster has formed.
    if args.strategy != "multiworker":
        hold_model_folder(held, model_dir, plan, fingerprint, args, earlier)
        if plan == "done":
            finish_done(args, model_dir, split["val_frames"])
            return

    import absl.logging
    import keras
    from distribute import describe, synchronize_batchnorm
    # Keras warns at every .h5 save that the format is legacy; h5 is the original's format.
    absl.logging.set_verbosity(absl.logging.ERROR)
    strategy, chief = open_strategy(args)                  # before TensorFlow runs anything
    if args.strategy == "multiworker":
        from worker_loop import agree_to_start
        done = agree_to_start(strategy, fingerprint, args.restart, done=chief and plan == "done")
        if chief:
            hold_model_folder(held, model_dir, plan, fingerprint, args, earlier)
        if done:
            if chief:
                finish_done(args, model_dir, split["val_frames"])
            else:
                print("the chief's model folder holds the model this command trains "
                      "already; nothing to do here")
            return
    if not chief:
        if plan == "finish":    # what is left (SWA, config.json) is the chief's alone
            print("training had finished; the chief writes the final models")
            return
        # Every worker computes and saves alike; only the chief's folder stays.
        model_dir, plan = worker_scratch(held, model_dir, strategy, fingerprint, args, earlier)
    replicas = strategy.num_replicas_in_sync
    global_batch = args.batch_size * replicas
    note_large_batch(len(train_names), global_batch)
    distribution = {"strategy": describe(strategy), "replicas": replicas,
                    "global_batch": global_batch}
    keras.utils.set_random_seed(args.seed)
    # The weights are loaded (ImageNet downloaded) before the model folder changes at all.
    precision = use_precision(resumed_precision(args, model_dir, plan))
    keep_nan_visible()
    with strategy.scope():
        model = build(args, patch_shape, len(classes))
        if init:
            init_from_model(model, Path(init["file"]), args.new_head)
        if replicas > 1:
            synchronize_batchnorm(model)
    prepare_model_folder(model_dir, plan)
    resuming = plan in ("resume", "finish")
    if plan == "resume":
        align_with_backup(model_dir)
    write_json(model_dir / "split.json", split)
    write_config(args, model_dir, classes, stats, patch_shape, split, recorded,
                 fingerprint, labels, precision, {"init_model": init, "distribution": distribution})
    if resuming:
        # A kill between publishing a model file and recording its hash leaves a stale entry;
        # every published file is whole, so hashing them all again is safe.
        record_hashes(model_dir, [*model_dir.glob(f"{WEIGHTS_STEM}_*.*"),
                                  *model_dir.glob("snapshots/epoch_*.*")])

    channels = stats["channels"]
    steps = args.steps_per_epoch or max(1, len(train_names) // global_batch)
    # Each replica takes its share of a global batch (each worker its shard of them).
    train_ds = patch_dataset(work, train_names, channels, global_batch, shuffle_seed=args.seed)
    val_ds = patch_dataset(work, split_evenly(val_names, replicas), channels, global_batch)
    bn_images = iter(patch_dataset(work, train_names, channels, args.batch_size,
                                   shuffle_seed=args.seed + 1, with_labels=False))

    from training_callbacks import DivergenceGuard, ProgressCosine, SavesUninterrupted
    with strategy.scope():
        cosine = ProgressCosine(args.lr) if args.schedule == "cosine" else None
        model.compile(optimizer=make_optimizer(args, cosine or args.lr),
                      loss=make_loss(args.loss, len(classes), args.lovasz_on),
                      metrics=make_metrics(classes), jit_compile=args.jit_compile == "on")
        # Built now: slot variables created inside the first traced step make tf.function
        # trace the whole training step a second time (about 15 s on 2 cores).
        model.optimizer.build(model.trainable_variables)
    loop = None
    if args.strategy == "multiworker":
        from worker_loop import WorkerLoop
        loop = WorkerLoop(model, strategy, global_batch, cosine)
    state_path = model_dir / "state.json"
    guard = DivergenceGuard()
    start = time.monotonic()
    if plan == "finish":
        print("training had finished; writing the final models")
    else:
        val_steps = validation_steps(args.val_steps, len(val_names), global_batch, bool(loop))
        print(f"training on {count_of(len(train_names), 'patch', 'patches')}, validating on "
              f"{len(val_names)}; "
              f"{count_of(args.epochs, 'epoch')} x {count_of(steps, 'step')} of {global_batch}"
              + (f" ({distribution['strategy']}, {args.batch_size} each)" if replicas > 1 else "")
              + (f", budget {args.time_budget} min" if args.time_budget else "")
              + (" (resuming)" if resuming else ""))
        with SavesUninterrupted() as saves:
            callbacks = make_callbacks(args, model_dir, bn_images, val_ds, val_steps,
                                       steps * args.epochs, cosine, resuming, guard, saves,
                                       chief, loop.evaluate if loop else None)
            if loop:
                loop.fit(train_ds, args.epochs, steps, callbacks)
            else:
                model.fit(train_ds, epochs=args.epochs, steps_per_epoch=steps,
                          callbacks=callbacks, shuffle=False,
                          verbose=0 if verbosity(args) == 1 else verbosity(args))
    minutes = (time.monotonic() - start) / 60

    best_path = model_dir / weights_name("best", args.save_format)
    if not best_path.is_file():
        raise PipelineError(f"no epoch gave a finite val_loss; nothing saved in {model_dir}")
    snapshots = snapshot_files(model_dir / "snapshots")
    if args.swa_epochs:
        swa_path = model_dir / weights_name("swa", args.save_format)
        stochastic_weight_average(model, snapshots[-args.swa_epochs:], bn_images,
                                  args.bn_batches, swa_path)
        record_hashes(model_dir, [swa_path])
    faint = (calibrate_faint_filter(args, model_dir, split["val_frames"], precision)
             if chief else None)
    state = read_json(state_path, "training state")
    last_epoch = last_log_row(model_dir / "log.csv")
    write_config(args, model_dir, classes, stats, patch_shape, split, recorded,
                 fingerprint, labels, precision, {
        "init_model": init, "distribution": distribution, "faint_filter": faint,
        "result": {"best_val_loss": state["best_val_loss"], "epochs_done": state["epochs_done"],
                   "swa_of_epochs": len(snapshots[-args.swa_epochs:]) if args.swa_epochs else 0,
                   "minutes_this_run": round(minutes, 2),
                   "skipped_steps_this_run": guard.skipped,
                   "rollbacks_this_run": guard.rollbacks,
                   "last_epoch": last_epoch},
    })
    if args.strategy == "multiworker":
        from worker_loop import weights_digest
        print(f"final weights sha256 {weights_digest(model)}")
    if not chief:
        shutil.rmtree(model_dir)
        print(f"done in {minutes:.1f} min as a worker; the chief wrote the model folder")
        return
    print(f"done in {minutes:.1f} min{budget_cut(args, last_epoch, steps * args.epochs)}; "
          f"best val_loss {state['best_val_loss']:.4f}. Model folder: "
          f"{model_dir} (config.json, {best_path.name}); curves: {model_dir / 'curves.png'}")


def budget_cut(args, last_epoch, planned_steps):
    """How far --time-budget let the run get, where it stopped it short of the epochs asked
    for: a budget spent on start-up leaves a model of a few steps that looks finished."""
    done = int(last_epoch.get("steps", planned_steps))
    if not args.time_budget or done >= planned_steps:
        return ""
    return (f", stopped by the {args.time_budget:g}-minute --time-budget after "
            f"{count_of(done, 'step')} of {planned_steps}")


def validation_steps(asked, patches, global_batch, fixed_count):
    """Validation batches per epoch: --val-steps, at most all the validation patches' batches
    (beyond them Keras warns that training is interrupted, which it is not); None for all
    of them, except where the loop needs a count (every worker validates on all the
    batches it is given, each a whole global batch)."""
    batches = max(1, patches // global_batch) if fixed_count else math.ceil(patches / global_batch)
    if asked and asked > batches:
        print(f"note: --val-steps {asked} is more than the {count_of(batches, 'batch', 'batches')} "
              f"of the {count_of(patches, 'validation patch', 'validation patches')}; each "
              f"validation runs {'that one' if batches == 1 else f'those {batches}'}")
        return batches
    return asked or (batches if fixed_count else None)


def note_large_batch(patches, global_batch):
    """Training batches come from the patches repeated and shuffled, so a batch larger than
    the training set works, but holds some patches twice or more: say so."""
    if global_batch > patches:
        print(f"note: a batch of {global_batch} is more than the "
              f"{count_of(patches, 'training patch', 'training patches')}, "
              "so each batch holds some of them twice or more; a smaller --batch-size or more "
              "patches avoids it")


def resumed_precision(args, model_dir, plan):
    """The --precision choice for this run: a resumed run keeps the precision that --precision
    auto chose when the run began (recorded in config.json), as auto decides by a timing that
    another host, or a busy one, answers otherwise: half a run in bf16 and half in fp32,
    recorded as the last one alone."""
    if args.precision != "auto" or plan not in ("resume", "finish"):
        return args.precision
    config = model_dir / "config.json"
    recorded = read_json(config, "model config").get("precision") if config.is_file() else None
    if recorded not in ("fp32", "bf16", "fp16"):
        return args.precision
    print(f"--precision auto: {recorded}, as the run being resumed began")
    return recorded


def open_strategy(args):
    """(the tf.distribute strategy of --strategy, whether this process is the chief)."""
    if args.strategy == "multiworker":
        from worker_loop import is_chief, make_multiworker_strategy
        timeout = CLUSTER_TIMEOUT_S if args.cluster_timeout is None else args.cluster_timeout
        strategy = make_multiworker_strategy(args.cluster, timeout or None)
        return strategy, is_chief(strategy)
    from distribute import make_strategy
    return make_strategy(args.strategy, args.cpu_devices), True


@contextmanager
def refusal_told_to_cluster(args):
    """A task of a --strategy multiworker run that refuses to train (its work or model
    folder) tells the others, which waited for it until --cluster-timeout (for ever with 0)
    and then said only that the cluster did not form: its refusal is printed at once, the
    cluster forms, and every task stops with one line."""
    try:
        yield
    except PipelineError as refusal:
        if args.strategy != "multiworker":
            raise
        print(f"error: {refusal}", file=sys.stderr, flush=True)
        print("telling the other tasks of the cluster, which wait for this one", flush=True)
        try:
            strategy, _ = open_strategy(args)
        except PipelineError as err:
            raise PipelineError(f"the other tasks could not be told: {err}") from None
        from worker_loop import agree_to_start
        agree_to_start(strategy, None, args.restart, refused=True)
        raise PipelineError("this task refused to train (the error above); the other tasks "
                            "of the cluster were told and stop too") from None


def worker_scratch(held, model_dir, strategy, fingerprint, args, earlier):
    """(folder, plan) of a worker that is not the chief: a scratch folder beside the model
    folder for the same saves the chief makes (and its own resume backup), removed when the
    run ends; one left by a run of other settings is cleared. Its lock is entered into the
    ExitStack held first: the same worker of a run still training may be writing it."""
    from worker_loop import worker_name
    scratch = model_dir.with_name(f".{model_dir.name}.{worker_name(strategy)}")
    held.enter_context(model_folder_lock(scratch))
    try:
        plan = plan_model_folder(scratch, fingerprint, args, earlier)
    except PipelineError:
        plan = "restart"
    if plan in ("done", "restart"):
        shutil.rmtree(scratch, ignore_errors=True)
        plan = "fresh"
    return scratch, plan


def last_log_row(log_path):
    """The last epoch's numbers from the CSV log (also for a run finished by a rerun)."""
    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items() if k != "epoch" and v} if rows else {}


if __name__ == "__main__":
    run_cli(main, interrupted="the model folder keeps what its last finished epoch saved; the "
                              "same command without --restart resumes from there")
