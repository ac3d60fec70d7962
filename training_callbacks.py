"""What train_unet_xception_resnetblock.py does around each step and epoch, as Keras
callbacks with explicit arguments: the rollback of a step that is not finite, the clock and
time budget that drive the cosine schedule, precise-BN validation, checkpoints, the run's
state, curves and the progress bar."""
import csv
import math
import os
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from outputs import atomic_file, write_json
from cli import PipelineError, read_json
from figures import save_figure, pyplot
from model_folder import snapshot_files


@keras.saving.register_keras_serializable(package="microseg")
class ProgressCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine annealing from initial_lr to 0 over the run's progress (0..1), which RunClock
    sets before every step: a time-limited run still anneals to the end of its budget."""

    def __init__(self, initial_lr):
        self.initial_lr = initial_lr
        self.progress = tf.Variable(0.0, trainable=False, dtype=tf.float32)

    def __call__(self, step):
        return self.initial_lr * 0.5 * (1.0 + tf.cos(math.pi * tf.minimum(self.progress, 1.0)))

    def get_config(self):
        return {"initial_lr": self.initial_lr}


class RunClock(keras.callbacks.Callback):
    """Minutes since the run first started and steps done (both carried over a resume), in
    the log every epoch; moves the schedule's progress, the larger of steps / total_steps
    and minutes / time_budget; stops training once the budget is spent."""

    def __init__(self, total_steps, time_budget=None, schedule=None, minutes_before=0.0,
                 steps_before=0):
        super().__init__()
        self.total_steps, self.time_budget, self.schedule = total_steps, time_budget, schedule
        self.start = time.monotonic() - 60 * minutes_before
        self.steps = steps_before

    def minutes(self):
        return (time.monotonic() - self.start) / 60

    def on_train_batch_begin(self, batch, logs=None):
        if self.schedule is not None:
            budget_part = self.minutes() / self.time_budget if self.time_budget else 0.0
            self.schedule.progress.assign(max(self.steps / self.total_steps, budget_part))
        self.steps += 1

    def on_train_batch_end(self, batch, logs=None):
        if self.time_budget and self.minutes() >= self.time_budget:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        logs["minutes"] = round(self.minutes(), 3)
        logs["steps"] = self.steps


class DivergenceGuard(keras.callbacks.Callback):
    """Keeps a run from training on NaN. One NaN step (bf16 on a 2-core Xeon with AMX: now
    and then, at no step that repeats from the same weights and batches) would otherwise
    turn every weight to NaN, and the rest of the run would train nothing while it looked
    busy. It checks each step's loss (model.fit and worker_loop.py log it) and, at each
    epoch's end, the epoch's loss and every weight (alike on every worker).

    A step whose loss is not finite but whose update left the weights and the optimizer
    finite (NormalizedSGD skips a non-finite gradient) costs that step alone: the BatchNorm
    statistics its forward pass made NaN get back their last epoch's values, and the
    epoch's metrics start again. Anything else, and more than max_skips such steps in a row,
    rolls the weights (BatchNorm statistics included) and the optimizer's state back to the
    end of the last epoch. The guard is first in the callback list, so a rolled-back epoch's
    validation, snapshot and backup are of the weights it returned to. The count that ends
    a run is of rollbacks in a row, with no epoch ending finite between them: max_rollbacks
    + 1 of them raise PipelineError out of the training loop, before the run is marked
    finished or its backup deleted, so a rerun resumes from the last good epoch. `skipped`
    and `rollbacks` count them all."""

    def __init__(self, max_rollbacks=3, max_skips=3):
        super().__init__()
        self.max_rollbacks, self.max_skips = max_rollbacks, max_skips
        self.rollbacks = self.skipped = 0
        self.in_a_row = self.skips_in_a_row = 0
        self.kept = None

    def _variables(self):
        return [*self.model.variables, *self.model.optimizer.variables]

    def _values(self):
        return [keras.ops.convert_to_numpy(v) for v in self._variables()]

    def on_train_batch_begin(self, batch, logs=None):
        if self.kept is None:    # here, not at train begin: after a resume has restored
            self.kept = self._values()

    def _roll_back(self, where):
        for variable, value in zip(self._variables(), self.kept):
            variable.assign(value)
        self.model.reset_metrics()
        self.rollbacks += 1
        self.in_a_row += 1
        self.skips_in_a_row = 0
        if self.in_a_row > self.max_rollbacks:
            raise PipelineError(
                f"training diverged: loss or weights not finite {self.in_a_row} times in a "
                f"row (last at {where}); the backup holds the last epoch that ended finite. "
                "Rerun the same command to resume from it, or train anew with --restart and "
                "--precision fp32 or a lower --lr")
        say(f"{where}: loss or weights not finite; weights and optimizer rolled back to the "
            f"last epoch's end ({self.in_a_row} in a row, at most {self.max_rollbacks})")

    def _skip_or_roll_back(self, where):
        variables = self._variables()
        finite = [bool(np.isfinite(v).all()) for v in self._values()]
        learned = {id(v) for v in [*self.model.trainable_variables,
                                   *self.model.optimizer.variables]}
        if (self.skips_in_a_row >= self.max_skips
                or not all(ok for v, ok in zip(variables, finite) if id(v) in learned)):
            self._roll_back(where)
            return
        for variable, ok, value in zip(variables, finite, self.kept):
            if not ok:
                variable.assign(value)
        self.model.reset_metrics()
        self.skipped += 1
        self.skips_in_a_row += 1
        say(f"{where}: loss not finite; the step's update was skipped, the weights are "
            f"finite ({self.skips_in_a_row} in a row, at most {self.max_skips})")

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            self.skips_in_a_row = 0
        else:
            self._skip_or_roll_back(f"step {batch + 1} of the epoch")

    def on_epoch_end(self, epoch, logs=None):
        # The weights too: a last step's NaN update shows in no loss of this epoch.
        values = self._values()
        if (math.isfinite(float((logs or {}).get("loss", 0.0)))
                and all(np.isfinite(v).all() for v in values)):
            self.kept = values
            self.in_a_row = 0
        else:
            self._roll_back(f"epoch {epoch + 1}")


def refresh_batchnorm(model, bn_images, num_batches):
    """Precise BN: every BatchNorm layer's statistics from num_batches training batches."""
    from model import reestimate_batchnorm
    if num_batches > 0:
        reestimate_batchnorm(model, bn_images, num_batches)


class PreciseBNValidation(keras.callbacks.Callback):
    """Re-estimates BatchNorm statistics, then validates in inference mode (val_* in the
    log, with the learning rate). evaluate(dataset, steps) -> {name: value} stands in for
    model.evaluate where that cannot run (worker_loop.py)."""

    def __init__(self, bn_images, bn_batches, val_ds, val_steps, evaluate=None):
        super().__init__()
        self.bn_images, self.bn_batches = bn_images, bn_batches
        self.val_ds, self.val_steps, self.evaluate = val_ds, val_steps, evaluate

    def on_epoch_end(self, epoch, logs=None):
        refresh_batchnorm(self.model, self.bn_images, self.bn_batches)
        if self.evaluate is None:
            results = self.model.evaluate(self.val_ds, steps=self.val_steps, verbose=0,
                                          return_dict=True)
        else:
            results = self.evaluate(self.val_ds, self.val_steps)
        logs.update({f"val_{k}": float(v) for k, v in results.items()})
        # Under a strategy the rate is a MirroredVariable, which float() does not take.
        logs["lr"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


@contextmanager
def h5_write_errors(path):
    """h5py reports a failed write (a full disk, a file size limit) as a RuntimeError naming
    the errno in its text: raise it as that OSError, which the scripts report in one line."""
    try:
        yield
    except RuntimeError as err:
        found = re.search(r"errno = (\d+)", str(err))
        if not found:
            raise
        code = int(found[1])
        raise OSError(code, os.strerror(code), str(path)) from None


def layers_only(model):
    """A never-compiled model of the same layers (and variables): saved as .keras, which has no
    include_optimizer, it holds the weights alone, where a compiled model's file held its
    optimizer's variables too, twice the size (SGD's momentum); it loads such a file without
    Keras' warning of optimizer variables skipped. input and output, not inputs and outputs:
    lists of one would be saved as its structure, warned of at each call."""
    return keras.Model(model.input, model.output, name=model.name)


def save_model(model, path):
    """Save architecture and weights (not the optimizer) for inference, atomically."""
    with atomic_file(path) as tmp, h5_write_errors(path):
        if path.suffix == ".h5":
            keras.saving.save_model(model, tmp, include_optimizer=False, overwrite=True)
        else:
            keras.saving.save_model(layers_only(model), tmp, overwrite=True)


def say(line):
    """Print a line without breaking a progress bar."""
    from tqdm import tqdm
    tqdm.write(line)


class Checkpoints(keras.callbacks.Callback):
    """After every epoch: a snapshot (the newest `keep` stay, or all with keep=None), the
    best val_loss model, the run's state; record_hashes(saved files) keeps config.json's
    hashes current. A folder moved aside by --restart goes once the new run has a model."""

    def __init__(self, model_dir, best_path, snapshot_format, keep, record_hashes,
                 best_val_loss=math.inf, aside=None):
        super().__init__()
        self.model_dir, self.best_path = model_dir, best_path
        self.snapshot_format, self.keep = snapshot_format, keep
        self.record_hashes, self.best, self.aside = record_hashes, best_val_loss, aside

    def on_epoch_end(self, epoch, logs=None):
        snap_dir = self.model_dir / "snapshots"
        snap_dir.mkdir(exist_ok=True)
        # A model file without optimizer state: half the size of save_weights' output.
        snapshot = snap_dir / f"epoch_{epoch + 1:03d}.{self.snapshot_format}"
        save_model(self.model, snapshot)
        saved = [snapshot]
        if self.keep is not None:
            for old in snapshot_files(snap_dir)[:-self.keep]:
                old.unlink()
        val_loss = logs.get("val_loss", math.inf)
        if val_loss < self.best:
            self.best = val_loss
            save_model(self.model, self.best_path)
            saved.append(self.best_path)
            say(f"epoch {epoch + 1}: val_loss {val_loss:.4f} is the best so far, saved")
        self.record_hashes(saved)
        write_json(self.model_dir / "state.json", {"best_val_loss": self.best,
                                                   "epochs_done": epoch + 1,
                                                   "minutes": logs["minutes"]})
        if self.aside is not None:
            shutil.rmtree(self.aside, ignore_errors=True)


class Finished(keras.callbacks.Callback):
    """Marks the training loop done before the backup is deleted, so a kill in between
    leaves a run that a rerun finishes rather than one it starts over."""

    def __init__(self, state_path):
        super().__init__()
        self.state_path = state_path

    def on_train_end(self, logs=None):
        if self.state_path.is_file():
            write_json(self.state_path, {**read_json(self.state_path, "training state"),
                                         "finished": True})


def plot_curves(log_path, paths, pdf):
    """Loss, mean IoU (train and val) and each class's validation IoU per epoch, from the log."""
    plt = pyplot()
    with open(log_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key, title in ((axes[0], "loss", "loss"), (axes[1], "mean_iou", "mean IoU")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            if prefix + key in rows[0]:
                ax.plot(epochs, [float(r[prefix + key]) for r in rows], style, ms=3,
                        label="val" if prefix else "train")
        ax.set_title(title)
    for key in (k for k in rows[0] if k.startswith("val_iou_")):
        axes[2].plot(epochs, [float(r[key]) for r in rows], "-s", ms=3,
                     label=key[len("val_iou_"):])
    axes[2].set_title("validation IoU per class")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.set_layout_engine("tight")      # laid out as saved, in the fonts save_figure sets
    save_figure(fig, paths, pdf)


class Curves(keras.callbacks.Callback):
    """The curves of the log so far, redrawn after every epoch."""

    def __init__(self, log_path, figure_paths, pdf):
        super().__init__()
        self.log_path, self.figure_paths, self.pdf = log_path, figure_paths, pdf

    def on_epoch_end(self, epoch, logs=None):
        plot_curves(self.log_path, self.figure_paths, self.pdf)


class ProgressBar(keras.callbacks.Callback):
    """One bar over the whole run's steps, with the time left, and a line per epoch. With a
    time budget (minutes, `clock` a RunClock), also the budget left: the steps' estimate
    alone promised hours to a run that the budget ends in minutes."""

    SHOWN = ("loss", "mean_iou", "val_loss", "val_mean_iou")

    def __init__(self, total_steps, steps_before, epochs, time_budget=None, clock=None):
        super().__init__()
        self.total_steps, self.steps_before, self.epochs = total_steps, steps_before, epochs
        self.time_budget, self.clock = time_budget, clock

    def on_train_begin(self, logs=None):
        from tqdm import tqdm
        self.bar = tqdm(total=self.total_steps, initial=self.steps_before, desc="train",
                        unit="step", dynamic_ncols=True)

    def on_train_batch_end(self, batch, logs=None):
        if self.time_budget:
            left = max(0.0, self.time_budget - self.clock.minutes())
            self.bar.set_postfix_str(f"budget {left:.1f} min left", refresh=False)
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        say(f"epoch {epoch + 1}/{self.epochs} ({logs['minutes']:.1f} min): " + ", ".join(
            f"{k} {logs[k]:.4f}" for k in self.SHOWN if k in logs))

    def on_train_end(self, logs=None):
        self.bar.close()


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' BackupAndRestore, its files replaced atomically: a kill -9 while it saves leaves
    the previous epoch's backup whole (Keras overwrites in place, and a torn file cannot be
    resumed). A backup that cannot be restored is one error line: Keras raised h5py's
    traceback for a damaged weights file, and where its record stood without the weights it
    skipped the epochs the record names and trained the rest from fresh weights, silently."""

    def _load_model(self):
        weights, record = Path(self._weights_path), Path(self._training_metadata_path)
        if record.is_file() and not weights.is_file():
            raise self._unusable(f"{weights.name} is missing")
        try:
            super()._load_model()
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise self._unusable(str(err).splitlines()[0] if str(err)
                                 else type(err).__name__) from None

    def _unusable(self, why):
        backup = Path(self.backup_dir)
        return PipelineError(f"the resume backup {backup} cannot be restored ({why}): it is "
                             "damaged or was copied incompletely; copy the model folder again "
                             "from where it trained, or add --restart to train anew")

    def _save_model(self):
        # Keras insists on the .weights.h5 suffix.
        with atomic_file(self._weights_path, suffix=".weights.h5") as tmp, \
                h5_write_errors(self._weights_path):
            self.model.save_weights(str(tmp), overwrite=True)
        write_json(Path(self._training_metadata_path),
                   {"epoch": self._current_epoch, "batch": self._last_batch_seen})


class SavesUninterrupted:
    """Holds Ctrl-C and SIGTERM from an epoch's first save to its resume backup, then stops.
    Stopped in between, the folder had the epoch's model files and log row but a backup an
    epoch behind, or none after the first epoch: the rerun started over while saying it
    resumed. A second signal stops at once. Used as a context manager around fit, which puts
    the handlers back whatever ends it; `hold` goes before the first saving callback and
    `release` after the backup."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.hold = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: self._hold())
        self.release = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: self._release())
        self._before, self._stop = {}, False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._put_back()

    def _hold(self):
        import signal
        import threading
        if threading.current_thread() is not threading.main_thread():
            return      # signals reach the main thread only, and only it may set handlers
        for name in self.SIGNALS:
            number = getattr(signal, name, None)
            # An ignored signal (SIGINT of a job a script started with &) stays ignored.
            if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
                self._before[number] = signal.signal(number, self._deferred)

    def _deferred(self, signum, frame):
        if self._stop:
            self._stop = False
            self._put_back()
            raise KeyboardInterrupt
        self._stop = True
        say("stopping once this epoch's models and resume backup are saved "
            "(again to stop now)")

    def _release(self):
        self._put_back()
        if self._stop:
            self._stop = False
            raise KeyboardInterrupt

    def _put_back(self):
        import signal
        for number, handler in self._before.items():
            signal.signal(number, handler)
        self._before = {}
