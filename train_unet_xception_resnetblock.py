"""Train the Xception U-Net with residual decoder blocks on the preprocessed patches.

Reads   <work-dir>/train/prep/*.png, <work-dir>/train/label/*.png   (pre_processing.py)
        <work-dir>/train_mean_std.json, <data-dir>/classes.txt
Writes  <model-dir>/ (default <work-dir>/weights/), a self-describing model folder:
          config.json                 every setting, class names, preprocessing statistics
          unet_xception_resnet_nsgd32_lovaszsoftmax_best.h5    best val_loss (the original's name)
          unet_xception_resnet_nsgd32_lovaszsoftmax_swa.h5     average of the last epochs
          snapshots/epoch_NNN.h5       the model after each of the last --swa-epochs epochs
                                       (after every epoch with --keep-snapshots)
          log.csv, curves.png          every epoch's losses, IoUs and minutes since the start;
                                       the curves also in <work-dir>/figures/
          split.json                   which patches trained and which validated
          backup/                      resume state while training runs (BackupAndRestore)

Defaults are the paper's: 80/20 patch split (random_state 2018), batch 8, 25 epochs,
Lovasz-softmax loss, SGD lr 1e-3 momentum 0.9 Nesterov on normalized gradients.
Before every validation and every saved model, BatchNorm statistics are re-estimated on
training batches ("precise BN"; see README), because validation and prediction run in
inference mode. Rerunning the same command after an interruption resumes training.
"""
import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from seg_common import (MEAN_STD_NAME, PipelineError, load_mean_std, read_classes,  # noqa: E402
                        read_image, run_cli, save_figure, write_json)

WEIGHTS_STEM = "unet_xception_resnet_nsgd32_lovaszsoftmax"
LOSSES = ("lovasz-softmax", "lovasz-hinge", "cross-entropy", "bce-dice")
OPTIMIZERS = ("nsgd", "sgd", "adam")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("folders")
    g.add_argument("--data-dir", default="data", help="data folder with classes.txt "
                   "(default: %(default)s)")
    g.add_argument("--work-dir", default="augmented_75k",
                   help="folder written by gen_img_aug.py and pre_processing.py "
                        "(default: %(default)s)")
    g.add_argument("--model-dir", help="output model folder (default: <work-dir>/weights)")
    g = p.add_argument_group("network")
    g.add_argument("--weights", default="imagenet",
                   help="encoder initialisation: 'imagenet' (downloaded by Keras, as the paper), "
                        "a local Xception weights file, or 'none' (default: %(default)s)")
    g.add_argument("--start-neurons", type=int, default=16,
                   help="decoder width multiplier (default: %(default)s)")
    g.add_argument("--dropout", type=float, default=0.1, help="dropout rate (default: %(default)s)")
    g = p.add_argument_group("loss and optimizer")
    g.add_argument("--loss", choices=LOSSES, default="lovasz-softmax",
                   help="training loss; lovasz-hinge needs 2 classes (default: %(default)s)")
    g.add_argument("--lovasz-input", choices=("softmax", "logits"), default="softmax",
                   help="what Lovasz-softmax receives: softmax probabilities, or raw logits as "
                        "the original code did (default: %(default)s)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default="nsgd",
                   help="nsgd: SGD on per-variable normalized gradients, as the paper "
                        "(default: %(default)s)")
    g.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: %(default)s)")
    g.add_argument("--momentum", type=float, default=0.9,
                   help="momentum of nsgd/sgd, Nesterov (default: %(default)s)")
    g.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="cosine: anneal the learning rate to 0 over the run (planned steps or "
                        "time budget, whichever ends first); constant: what the original "
                        "effectively ran (default: %(default)s)")
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=25, help="epochs (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=8, help="batch size (default: %(default)s)")
    g.add_argument("--val-split", type=float, default=0.2,
                   help="fraction of patches for validation (default: %(default)s)")
    g.add_argument("--random-state", type=int, default=2018,
                   help="seed of the train/val patch split (default: %(default)s)")
    g.add_argument("--steps-per-epoch", type=int,
                   help="training batches per epoch (default: one pass over the patches)")
    g.add_argument("--val-steps", type=int,
                   help="validation batches per epoch (default: all validation patches)")
    g.add_argument("--time-budget", type=float,
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
    g.add_argument("--seed", type=int, default=2018,
                   help="seed of initialisation and shuffling (default: %(default)s)")
    g = p.add_argument_group("speed and output")
    g.add_argument("--mixed-precision", action="store_true",
                   help="compute in float16 (GPUs with tensor cores; slower on most CPUs)")
    g.add_argument("--jit-compile", choices=("on", "off"), default="off",
                   help="compile the training step with XLA (default: %(default)s)")
    g.add_argument("--save-format", choices=("h5", "keras"), default="h5",
                   help="h5 as the original, or Keras 3's native .keras (default: %(default)s)")
    g.add_argument("--pdf", action="store_true", help="also write the curves as PDF")
    g.add_argument("--verbose", type=int, choices=(0, 1, 2), default=None,
                   help="Keras progress output: 0 silent, 1 bar, 2 one line per epoch "
                        "(default: bar on a terminal, else one line)")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "start_neurons"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if not 0 < args.val_split < 1:
        p.error("--val-split must be between 0 and 1")
    return args


# ---------------------------------------------------------------- data

def patch_split(work, val_split, random_state):
    """(train names, val names) of the preprocessed patches, split as the paper."""
    from sklearn.model_selection import train_test_split
    prep, label = work / "train" / "prep", work / "train" / "label"
    names = sorted(p.name for p in prep.glob("*.png")) if prep.is_dir() else []
    if not names:
        raise PipelineError(f"no preprocessed patches in {prep}: run pre_processing.py first")
    missing = [n for n in names if not (label / n).is_file()]
    if missing:
        raise PipelineError(f"{len(missing)} patches have no label in {label}, e.g. {missing[0]}")
    if len(names) < 2:
        raise PipelineError("at least two patches are needed for a train/val split")
    train, val = train_test_split(names, test_size=val_split, random_state=random_state)
    return sorted(train), sorted(val)


def patch_dataset(work, names, channels, batch_size, shuffle_seed=None, with_labels=True):
    """Batches of (image 0..1 with 3 channels, label) decoded from disk in parallel."""
    import tensorflow as tf
    images = [str(work / "train" / "prep" / n) for n in names]
    labels = [str(work / "train" / "label" / n) for n in names]

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
        ds = ds.shuffle(len(names), seed=shuffle_seed, reshuffle_each_iteration=True).repeat()
    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=shuffle_seed is not None).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- loss, optimizer, metrics

def make_loss(name, num_classes, lovasz_input):
    import keras
    from lovasz_losses_tf import BceDiceLoss, LovaszHingeLoss, LovaszSoftmaxLoss
    if name == "lovasz-softmax":
        return LovaszSoftmaxLoss(from_logits=lovasz_input == "softmax")
    if name == "lovasz-hinge":
        if num_classes != 2:
            raise PipelineError(f"--loss lovasz-hinge needs 2 classes, classes.txt has {num_classes}")
        return LovaszHingeLoss()
    if name == "cross-entropy":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return BceDiceLoss()


class ProgressCosine:
    """Cosine annealing over the run's progress, which callbacks advance.

    Progress is the larger of (steps done / planned steps) and (minutes spent / time
    budget), so a time-limited run still anneals to the end of its budget.
    """

    def __init__(self, initial_lr):
        import keras
        import tensorflow as tf
        self.progress = tf.Variable(0.0, trainable=False, dtype=tf.float32)
        outer = self

        class Schedule(keras.optimizers.schedules.LearningRateSchedule):
            def __call__(self, step):
                return initial_lr * 0.5 * (1.0 + tf.cos(math.pi * tf.minimum(outer.progress, 1.0)))

            def get_config(self):
                return {"initial_lr": initial_lr}

        self.schedule = Schedule()


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
    import keras
    metrics = [keras.metrics.MeanIoU(len(classes), sparse_y_pred=False, name="mean_iou")]
    metrics += [keras.metrics.IoU(len(classes), [c], sparse_y_pred=False, name=f"iou_{name}")
                for c, name in enumerate(classes)]
    return metrics


# ---------------------------------------------------------------- callbacks

def make_callbacks(args, model_dir, bn_images, val_ds, total_steps, schedule, resuming):
    import keras
    state_path = model_dir / "state.json"
    # What the interrupted run had done by its last finished epoch.
    state = (json.loads(state_path.read_text())
             if resuming and state_path.is_file() else {})

    class Progress(keras.callbacks.Callback):
        """Advances the cosine schedule and stops when the time budget is spent."""

        def __init__(self):
            super().__init__()
            # Minutes count from the first run's start, so the budget and the log's
            # minutes column cover a resumed run too.
            self.start = time.monotonic() - 60 * state.get("minutes", 0.0)
            self.steps = state.get("epochs_done", 0) * total_steps // args.epochs

        def on_train_batch_begin(self, batch, logs=None):
            minutes = (time.monotonic() - self.start) / 60
            if schedule is not None:
                done = max(self.steps / total_steps,
                           minutes / args.time_budget if args.time_budget else 0.0)
                schedule.progress.assign(done)
            self.steps += 1

        def on_train_batch_end(self, batch, logs=None):
            if args.time_budget and (time.monotonic() - self.start) / 60 >= args.time_budget:
                self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            logs["minutes"] = round((time.monotonic() - self.start) / 60, 3)

    class PreciseBNValidation(keras.callbacks.Callback):
        """Re-estimates BatchNorm statistics, then validates in inference mode."""

        def on_epoch_end(self, epoch, logs=None):
            refresh_batchnorm(self.model, bn_images, args.bn_batches)
            results = self.model.evaluate(val_ds, steps=args.val_steps, verbose=0,
                                          return_dict=True)
            logs.update({f"val_{k}": float(v) for k, v in results.items()})
            logs["lr"] = float(self.model.optimizer.learning_rate)

    class Checkpoints(keras.callbacks.Callback):
        """Best val_loss model in the original's file, plus recent per-epoch snapshots."""

        def __init__(self):
            super().__init__()
            self.best = state.get("best_val_loss", math.inf)

        def on_epoch_end(self, epoch, logs=None):
            snap_dir = model_dir / "snapshots"
            snap_dir.mkdir(exist_ok=True)
            # A model file without optimizer state: half the size of save_weights' output.
            save_model(self.model, snap_dir / f"epoch_{epoch + 1:03d}.{args.save_format}")
            if not args.keep_snapshots:
                for old in sorted(snap_dir.glob("epoch_*.*"))[:-max(1, args.swa_epochs)]:
                    old.unlink()
            val_loss = logs.get("val_loss", math.inf)
            if val_loss < self.best:
                self.best = val_loss
                save_model(self.model, model_dir / weights_name("best", args.save_format))
                print(f"\nepoch {epoch + 1}: val_loss {val_loss:.4f} is the best so far, saved")
            write_json(state_path, {"best_val_loss": self.best, "epochs_done": epoch + 1,
                                    "minutes": logs["minutes"]})

    class Curves(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            plot_curves(model_dir / "log.csv", [model_dir / "curves.png",
                        Path(args.work_dir) / "figures" / "training_curves.png"], args.pdf)

    return [Progress(), PreciseBNValidation(), Checkpoints(),
            keras.callbacks.CSVLogger(str(model_dir / "log.csv"), append=resuming), Curves(),
            keras.callbacks.BackupAndRestore(str(model_dir / "backup"))]


def refresh_batchnorm(model, bn_images, num_batches):
    from model import reestimate_batchnorm
    if num_batches > 0:
        reestimate_batchnorm(model, bn_images, num_batches)


def weights_name(kind, save_format):
    return f"{WEIGHTS_STEM}_{kind}.{save_format}"


def save_model(model, path):
    """Save architecture and weights (not the optimizer) for inference, atomically."""
    import keras
    tmp = path.with_name(f".tmp.{path.name}")
    if path.suffix == ".h5":
        keras.saving.save_model(model, tmp, include_optimizer=False)
    else:
        keras.saving.save_model(model, tmp)
    os.replace(tmp, path)


def plot_curves(log_path, paths, pdf):
    """Loss and mean IoU, train and val, per epoch, from the CSV log."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "mean_iou", "mean IoU")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            if prefix + key in rows[0]:
                ax.plot(epochs, [float(r[prefix + key]) for r in rows], style, ms=3,
                        label="val" if prefix else "train")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, paths, pdf)


# ---------------------------------------------------------------- SWA

def stochastic_weight_average(model, snapshot_paths, bn_images, bn_batches, out_path):
    """Average the given weight snapshots, re-estimate BatchNorm, save; restore the model."""
    current = model.get_weights()
    total = None
    for path in snapshot_paths:
        model.load_weights(path)
        weights = [w.astype(np.float64) for w in model.get_weights()]
        total = weights if total is None else [t + w for t, w in zip(total, weights)]
    model.set_weights([t / len(snapshot_paths) for t in total])
    # Averaged weights need statistics of their own; averaged moving statistics don't fit them.
    refresh_batchnorm(model, bn_images, bn_batches)
    save_model(model, out_path)
    model.set_weights(current)


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
    import keras
    from model import build_model
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        return build_model((*patch_shape, 3), num_classes, args.start_neurons,
                           weights=resolve_weights(args.weights), dropout=args.dropout)
    except Exception as err:  # Keras raises several types for a failed weight download
        if args.weights == "imagenet":
            raise PipelineError(f"could not load ImageNet weights for Xception ({err}); without "
                                "internet use --weights none or a local weights file") from err
        raise


def write_config(args, model_dir, classes, stats, patch_shape, split, extra=None):
    config = {
        "model": "unet_xception_resnetblock",
        "classes": classes, "num_classes": len(classes),
        "input_shape": [*patch_shape, 3], "patch_size": list(patch_shape),
        "color_mode": stats["color_mode"], "image_channels": stats["channels"],
        "preprocessing": {"mean": stats["mean"], "std": stats["std"], "gamma": stats["gamma"],
                          "input_scale": "prep / 255, grey repeated to 3 channels"},
        "decision": ("sigmoid>0.51" if args.loss == "lovasz-softmax"
                     and args.lovasz_input == "logits" else "argmax"),
        "weights_files": {k: weights_name(k, args.save_format) for k in ("best", "swa")},
        "num_train_patches": len(split[0]), "num_val_patches": len(split[1]),
        "settings": {k: v for k, v in vars(args).items()},
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    config.update(extra or {})
    write_json(model_dir / "config.json", config)
    return config


def main(argv=None):
    args = parse_args(argv)
    work = Path(args.work_dir)
    model_dir = Path(args.model_dir) if args.model_dir else work / "weights"
    classes = read_classes(args.data_dir)
    stats = load_mean_std(work / f"{MEAN_STD_NAME}.json")
    train_names, val_names = patch_split(work, args.val_split, args.random_state)
    patch_shape = read_image(work / "train" / "prep" / train_names[0]).shape[:2]
    if patch_shape[0] % 32 or patch_shape[1] % 32:
        raise PipelineError(f"patches are {patch_shape[1]}x{patch_shape[0]}; the network needs "
                            "sides that are multiples of 32 (gen_img_aug.py --patch-size)")

    import absl.logging
    import keras
    # Keras warns at every .h5 save that the format is legacy; h5 is the original's format.
    absl.logging.set_verbosity(absl.logging.ERROR)
    keras.utils.set_random_seed(args.seed)
    model_dir.mkdir(parents=True, exist_ok=True)
    resuming = (model_dir / "backup").is_dir()
    if not resuming:
        # A fresh run must not leave an earlier run's models looking like its own.
        for stale in [model_dir / "log.csv", model_dir / "state.json",
                      *(model_dir / weights_name(k, args.save_format) for k in ("best", "swa")),
                      *model_dir.glob("snapshots/epoch_*.*")]:
            stale.unlink(missing_ok=True)
    write_json(model_dir / "split.json", {"train": train_names, "val": val_names})
    write_config(args, model_dir, classes, stats, patch_shape, (train_names, val_names))

    channels = stats["channels"]
    steps = args.steps_per_epoch or max(1, len(train_names) // args.batch_size)
    train_ds = patch_dataset(work, train_names, channels, args.batch_size, shuffle_seed=args.seed)
    val_ds = patch_dataset(work, val_names, channels, args.batch_size)
    bn_images = iter(patch_dataset(work, train_names, channels, args.batch_size,
                                   shuffle_seed=args.seed + 1, with_labels=False))

    model = build(args, patch_shape, len(classes))
    cosine = ProgressCosine(args.lr) if args.schedule == "cosine" else None
    model.compile(optimizer=make_optimizer(args, cosine.schedule if cosine else args.lr),
                  loss=make_loss(args.loss, len(classes), args.lovasz_input),
                  metrics=make_metrics(classes), jit_compile=args.jit_compile == "on")
    callbacks = make_callbacks(args, model_dir, bn_images, val_ds, steps * args.epochs, cosine,
                               resuming)
    print(f"training on {len(train_names)} patches, validating on {len(val_names)}; "
          f"{args.epochs} epochs x {steps} steps of {args.batch_size}"
          + (f", budget {args.time_budget} min" if args.time_budget else "")
          + (" (resuming)" if resuming else ""))
    verbose = args.verbose if args.verbose is not None else (1 if sys.stdout.isatty() else 2)
    start = time.monotonic()
    history = model.fit(train_ds, epochs=args.epochs, steps_per_epoch=steps, callbacks=callbacks,
                        verbose=verbose, shuffle=False)
    minutes = (time.monotonic() - start) / 60

    best_path = model_dir / weights_name("best", args.save_format)
    if not best_path.is_file():
        raise PipelineError(f"no epoch gave a finite val_loss; nothing saved in {model_dir}")
    snapshots = sorted((model_dir / "snapshots").glob("epoch_*.*"))
    if args.swa_epochs:
        stochastic_weight_average(model, snapshots[-args.swa_epochs:], bn_images,
                                  args.bn_batches, model_dir / weights_name("swa", args.save_format))
    state = json.loads((model_dir / "state.json").read_text())
    write_config(args, model_dir, classes, stats, patch_shape, (train_names, val_names), {
        "result": {"best_val_loss": state["best_val_loss"], "epochs_done": state["epochs_done"],
                   "swa_of_epochs": len(snapshots[-args.swa_epochs:]) if args.swa_epochs else 0,
                   "minutes_this_run": round(minutes, 2),
                   "last_epoch": {k: float(v[-1]) for k, v in history.history.items()}},
    })
    print(f"done in {minutes:.1f} min; best val_loss {state['best_val_loss']:.4f}. Model folder: "
          f"{model_dir} (config.json, {best_path.name}); curves: {model_dir / 'curves.png'}")


if __name__ == "__main__":
    run_cli(main)
