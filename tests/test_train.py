"""train_unet_xception_resnetblock.py on a tiny synthetic patch set (64x64, a few dozen steps)."""
import csv
import json
import os
import shutil
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")

import train_unet_xception_resnetblock as train  # noqa: E402
import training_callbacks  # noqa: E402
from cli import IGNORE_LABEL, Interrupted  # noqa: E402
from outputs import sha256_of  # noqa: E402
from metrics import confusion_matrix, iou_per_class  # noqa: E402
from synthetic_patches import (SIZE, held_out, make_patch_set, mean_iou,  # noqa: E402
                               synthetic_patch)

pytestmark = pytest.mark.trains


def keras_file_entries(path):
    """The names of the groups and datasets of a .keras file's weights."""
    import io
    import zipfile
    import h5py
    names = []
    with zipfile.ZipFile(path) as archive, h5py.File(
            io.BytesIO(archive.read("model.weights.h5")), "r") as weights:
        weights.visit(names.append)
    return names


def read_log(model_dir):
    with open(model_dir / "log.csv") as f:
        return list(csv.DictReader(f))


def test_model_folder_is_complete(trained_model):
    root, _ = trained_model
    model_dir = root / "work" / "weights"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["classes"] == ["background", "bead", "cell"]
    assert config["input_shape"] == [SIZE, SIZE, 3]
    assert config["color_mode"] == "grey" and config["image_channels"] == 1
    assert config["preprocessing"]["mean"] == [120.0]
    assert config["preprocessing"]["equalize"] == "patch"
    assert "histogram" not in config["preprocessing"]
    assert config["decision"] == "argmax"
    assert config["settings"]["loss"] == "lovasz-softmax"
    assert config["settings"]["optimizer"] == "nsgd"
    assert config["result"]["epochs_done"] == 3
    for name in config["weights_files"].values():
        assert (model_dir / name).is_file()
    assert len(list((model_dir / "snapshots").glob("epoch_*.h5"))) == 2
    rows = read_log(model_dir)
    assert len(rows) == 3
    minutes = [float(r["minutes"]) for r in rows]
    assert 0 < minutes[0] < minutes[1] < minutes[2]
    assert (model_dir / "curves.png").is_file()
    assert (root / "work" / "figures" / "training_curves.png").is_file()
    split = json.loads((model_dir / "split.json").read_text())
    assert len(split["train"]) == 160 and len(split["val"]) == 40
    assert not (model_dir / "backup").exists()


def test_cosine_schedule_reaches_the_optimizer(trained_model):
    root, _ = trained_model
    lrs = [float(r["lr"]) for r in read_log(root / "work" / "weights")]
    # Logged at each epoch's end: progress 1/3, 2/3 and 3/3 of the planned steps, less one step.
    assert lrs[0] < 0.01 and lrs[0] > lrs[1] > lrs[2]
    np.testing.assert_allclose(lrs[1], 0.01 * 0.5 * (1 + np.cos(np.pi * 29 / 45)), rtol=1e-4)


def test_network_learns_and_inference_mode_keeps_up(trained_model):
    from lovasz_losses_tf import LovaszSoftmaxLoss
    from model import build_model
    root, _ = trained_model
    model_dir = root / "work" / "weights"
    config = json.loads((model_dir / "config.json").read_text())
    model = keras.saving.load_model(model_dir / config["weights_files"]["best"], compile=False)
    x, y = held_out()
    loss = LovaszSoftmaxLoss()
    keras.utils.set_random_seed(2018)   # the training run's initialisation
    untrained = float(loss(y, build_model((SIZE, SIZE, 3), 3, weights=None)(x, training=True)))
    trained_loss = float(loss(y, model(x, training=False)))
    assert trained_loss <= 0.5 * untrained, (trained_loss, untrained)
    # Inference mode uses the re-estimated BatchNorm statistics; training mode the batch's own.
    iou_infer = mean_iou(model, x, y, training=False)
    iou_batch = mean_iou(model, x, y, training=True)
    assert iou_infer >= 0.9 * iou_batch, (iou_infer, iou_batch)
    assert iou_infer > 0.5


def test_best_checkpoint_reloads_with_the_same_logits(tmp_path, trained_model):
    root, _ = trained_model
    model_dir = root / "work" / "weights"
    model = keras.saving.load_model(
        model_dir / json.loads((model_dir / "config.json").read_text())["weights_files"]["best"],
        compile=False)
    x, _ = held_out(4)
    before = np.asarray(model(x, training=False))
    training_callbacks.save_model(model, tmp_path / "again.h5")
    after = np.asarray(keras.saving.load_model(tmp_path / "again.h5", compile=False)(x))
    np.testing.assert_allclose(before, after, atol=1e-5)


def test_bad_inputs_are_clear_errors(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "classes.txt").write_text("background\nbead\ncell\n")
    with pytest.raises(train.PipelineError, match="pre_processing.py"):
        train.main(["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "w"),
                    "--weights", "none"])
    make_patch_set(tmp_path / "w", 4)
    with pytest.raises(train.PipelineError, match="no such file"):
        train.main(["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "w"),
                    "--weights", str(tmp_path / "missing.h5")])
    with pytest.raises(train.PipelineError, match="2 classes"):
        train.main(["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "w"),
                    "--weights", "none", "--loss", "lovasz-hinge"])
    with pytest.raises(train.PipelineError, match="--new-head needs --init-model"):
        train.main(["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "w"),
                    "--weights", "none", "--new-head"])
    with pytest.raises(train.PipelineError, match="config.json not found"):
        train.main(["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "w"),
                    "--weights", "none", "--init-model", str(tmp_path / "data")])


@pytest.mark.parametrize("loss", train.LOSSES)
def test_every_loss_leaves_ignored_pixels_out(loss):
    """A batch whose right halves are labelled IGNORE_LABEL has the loss of its left halves
    alone, whatever the network predicts on the right."""
    classes = 2 if loss == "lovasz-hinge" else 3
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(2, 6, 8, classes)).astype("float32")
    labels = rng.integers(0, classes, (2, 6, 8))
    labels[0, 0, 0], labels[1, 0, 0] = 1, 0      # both classes present on the left (hinge)
    ignored = labels.copy()
    ignored[:, :, 4:] = IGNORE_LABEL
    fn = train.make_loss(loss, classes, "probabilities")
    left = float(fn(labels[:, :, :4], logits[:, :, :4]))
    assert float(fn(ignored, logits)) == pytest.approx(left, rel=1e-5)
    logits[:, :, 4:] = rng.normal(scale=10, size=logits[:, :, 4:].shape)
    assert float(fn(ignored, logits)) == pytest.approx(left, rel=1e-5)


def short_run(root, *extra):
    """One epoch of 2 steps on 40 patches; SWA and precise BN off and float32 unless extra
    says otherwise (a later option wins)."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "classes.txt").write_text("background\nbead\ncell\n")
    if not (root / "work").exists():
        make_patch_set(root / "work", 40)
    train.main(["--data-dir", str(root / "data"), "--work-dir", str(root / "work"),
                "--weights", "none", "--epochs", "1", "--steps-per-epoch", "2", "--val-steps", "1",
                "--bn-batches", "0", "--swa-epochs", "0", "--precision", "fp32", "--verbose", "0",
                *extra])
    return json.loads((root / "work" / "weights" / "config.json").read_text())


# Each run also takes options nothing else trains with: one training per combination.
# cross-entropy-adam also trains on colour patches and then predicts. Every run's labels
# hold ignored pixels.
RUNS = {
    "cross-entropy-adam": ["--loss", "cross-entropy", "--optimizer", "adam",
                           "--save-format", "keras", "--schedule", "constant", "--lr", "0.002"],
    "bce-dice-sgd": ["--loss", "bce-dice", "--optimizer", "sgd", "--precision", "bf16"],
    "lovasz-logits-nsgd": ["--loss", "lovasz-softmax", "--lovasz-on", "logits",
                           "--optimizer", "nsgd", "--bn-batches", "1", "--swa-epochs", "1"],
}


@pytest.mark.parametrize("run", RUNS)
def test_every_loss_and_optimizer_trains_and_is_recorded(tmp_path, run):
    make_patch_set(tmp_path / "work", 40, color=run == "cross-entropy-adam", unsure=True)
    turned = run != "lovasz-logits-nsgd"
    if not turned:      # as gen_img_aug.py --orientations none --scale 0.5 records it
        (tmp_path / "work" / "split.json").write_text('{"orientations": "none", "scale": 0.5}')
    config = short_run(tmp_path, *RUNS[run])
    assert config["orientations"] == ("all" if turned else "none")
    assert config["scale"] == (1.0 if turned else 0.5)    # for prediction to repeat
    settings = config["settings"]
    loss, optimizer = run.rsplit("-", 1)
    assert settings["optimizer"] == optimizer
    assert settings["loss"] == ("lovasz-softmax" if loss == "lovasz-logits" else loss)
    assert config["decision"] == ("sigmoid>0.51" if loss == "lovasz-logits" else "argmax")
    assert np.isfinite(config["result"]["best_val_loss"])
    model_dir = tmp_path / "work" / "weights"
    nets = {role: keras.saving.load_model(model_dir / name, compile=False)
            for role, name in config["weights_files"].items() if (model_dir / name).is_file()}
    assert set(nets) == ({"best", "swa"} if settings["swa_epochs"] else {"best"})
    if run == "cross-entropy-adam":
        assert all(name.endswith(".keras") for name in config["weights_files"].values())
        assert [p.suffix for p in (model_dir / "snapshots").iterdir()] == [".keras"]
        assert not any("optimizer" in name for name in keras_file_entries(
            model_dir / config["weights_files"]["best"]))      # for inference: no Adam moments
        assert [float(r["lr"]) for r in read_log(model_dir)] == [pytest.approx(0.002)]
        predicts_colour_images_only(model_dir, config, tmp_path)
    if run == "bce-dice-sgd":
        # bfloat16 compute, float32 weights: the saved model is float32 whatever the host.
        assert config["precision"] == "bf16"
        assert {w.dtype for w in nets["best"].weights} == {"float32"}
    if run == "lovasz-logits-nsgd":
        # One snapshot averaged: the SWA model holds the last epoch's weights, its BatchNorm
        # statistics re-estimated (a different model only there).
        last = keras.saving.load_model(model_dir / "snapshots" / "epoch_001.h5", compile=False)
        for a, b in zip(nets["swa"].weights, last.weights):
            moving = "moving" in a.path
            assert np.array_equal(np.asarray(a), np.asarray(b)) != moving, a.path


def predicts_colour_images_only(model_dir, config, tmp_path):
    """A model trained on colour patches segments a colour image and refuses a grey one."""
    import predict_lovasz_loss
    assert config["color_mode"] == "rgb" and config["image_channels"] == 3
    assert config["preprocessing"]["mean"] == [120.0] * 3
    (tmp_path / "mine").mkdir()
    img, _ = synthetic_patch(np.random.default_rng(5))
    cv2.imwrite(str(tmp_path / "mine" / "colour.png"), np.dstack([img, 255 - img, img // 2]))
    predict = ["--model-dir", str(model_dir), "--work-dir", str(tmp_path / "work"),
               "--input", str(tmp_path / "mine")]
    predict_lovasz_loss.main(predict)
    mask = cv2.imread(str(tmp_path / "work" / "predict" / "mine" / "colour.png"),
                      cv2.IMREAD_UNCHANGED)
    assert mask.shape == (SIZE, SIZE) and mask.max() < 3
    cv2.imwrite(str(tmp_path / "mine" / "grey.png"), img)
    with pytest.raises(train.PipelineError, match="grey image but the model was trained on"):
        predict_lovasz_loss.main(predict)


def with_extra_callback(monkeypatch, callback, first=False):
    original = train.make_callbacks

    def make_callbacks(*args, **kwargs):
        callbacks = original(*args, **kwargs)
        return [callback, *callbacks] if first else [*callbacks, callback]

    monkeypatch.setattr(train, "make_callbacks", make_callbacks)


def test_interrupted_training_resumes(tmp_path, monkeypatch):
    class Interrupt(Exception):
        pass

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise Interrupt

    with_extra_callback(monkeypatch, StopAfterFirstEpoch())
    with pytest.raises(Interrupt):
        short_run(tmp_path, "--epochs", "2", "--keep-snapshots")
    monkeypatch.undo()
    model_dir = tmp_path / "work" / "weights"
    assert (model_dir / "backup").is_dir()
    first_minutes = json.loads((model_dir / "state.json").read_text())["minutes"]
    config = short_run(tmp_path, "--epochs", "2", "--keep-snapshots")
    rows = read_log(model_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert config["result"]["epochs_done"] == 2
    assert not (model_dir / "backup").exists()
    # The resumed run goes on where the first stopped: its clock and its schedule.
    minutes = [float(r["minutes"]) for r in rows]
    assert 0 < minutes[0] == first_minutes < minutes[1]
    # 2 epochs of 2 steps at lr 1e-3: the last step began at progress 3/4.
    np.testing.assert_allclose(float(rows[1]["lr"]), 1e-3 * 0.5 * (1 + np.cos(0.75 * np.pi)),
                               rtol=1e-4)
    assert sorted(p.name for p in (model_dir / "snapshots").iterdir()) == [
        "epoch_001.h5", "epoch_002.h5"]


@pytest.fixture
def ctrl_c_heard():
    """Python's own SIGINT handler for the test, whatever the test run inherited: a shell
    script's job started with & ignores SIGINT (Python then installs no handler), where a
    Ctrl-C sent to the test's process was never heard."""
    import signal
    earlier = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, earlier)


@pytest.mark.usefixtures("ctrl_c_heard")
def test_ctrl_c_while_an_epoch_saves_waits_for_its_resume_backup(tmp_path, monkeypatch, capsys):
    """Ctrl-C as the first epoch's model is saved stops once the resume backup is written, so
    the rerun resumes at epoch 2 as the message says; it started over before."""
    import signal
    save, pressed = training_callbacks.save_model, []

    def save_then_ctrl_c(model, path):
        save(model, path)
        if not pressed:
            pressed.append(path)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(training_callbacks, "save_model", save_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        short_run(tmp_path, "--epochs", "2", "--keep-snapshots")
    monkeypatch.undo()
    assert "stopping once this epoch's models and resume backup are saved" in \
        capsys.readouterr().out
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    model_dir = tmp_path / "work" / "weights"
    assert json.loads((model_dir / "backup" / "training_metadata.json").read_text())[
        "epoch"] == 1
    first = read_log(model_dir)
    short_run(tmp_path, "--epochs", "2", "--keep-snapshots")
    rows = read_log(model_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1] and rows[0] == first[0]


@pytest.mark.usefixtures("ctrl_c_heard")
def test_a_second_ctrl_c_while_an_epoch_saves_stops_at_once():
    import signal
    with training_callbacks.SavesUninterrupted() as saves:
        saves.hold.on_epoch_end(0)
        os.kill(os.getpid(), signal.SIGINT)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        saves.hold.on_epoch_end(1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.usefixtures("ctrl_c_heard")
def test_an_ignored_ctrl_c_while_an_epoch_saves_stays_ignored():
    """SIGINT ignored (a job a shell script started with &): a Ctrl-C at the terminal left its
    training running, but one while an epoch saved stopped it once the backup was written."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with training_callbacks.SavesUninterrupted() as saves:
        saves.hold.on_epoch_end(0)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        saves.release.on_epoch_end(0)               # no KeyboardInterrupt


def test_a_keras_file_keeps_the_models_single_input_and_output(tmp_path, recwarn):
    """The .keras file without the optimizer was of a model of inputs and outputs: lists of
    one, which Keras warned of at every call with a single tensor."""
    inputs = keras.Input((8, 8, 3), name="image")
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="logits")(inputs), name="net")
    model.compile(optimizer="sgd", loss="mse")
    training_callbacks.save_model(model, tmp_path / "m.keras")
    saved = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    assert saved.get_config()["input_layers"] == model.get_config()["input_layers"]
    assert saved.get_config()["output_layers"] == model.get_config()["output_layers"]
    saved(np.zeros((1, 8, 8, 3), np.float32))
    assert not [w for w in recwarn if "structure of `inputs`" in str(w.message)]


def test_averaging_keras_snapshots_warns_of_no_optimizer(tmp_path, recwarn):
    """A .keras snapshot holds no optimizer: the compiled model loading it for the SWA model
    warned at each snapshot that it skipped its optimizer's variables."""
    inputs = keras.Input((8, 8, 3), name="image")
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1, name="logits")(inputs), name="net")
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    kernel = model.get_layer("logits").kernel
    for value in (1.0, 3.0):
        kernel.assign(np.full(kernel.shape, value, np.float32))
        training_callbacks.save_model(model, tmp_path / f"{value}.keras")
    train.stochastic_weight_average(model, [tmp_path / "1.0.keras", tmp_path / "3.0.keras"],
                                    None, 0, tmp_path / "swa.keras")
    assert not [w for w in recwarn if "Skipping variable loading" in str(w.message)]
    swa = keras.saving.load_model(tmp_path / "swa.keras", compile=False)
    assert np.allclose(swa.get_layer("logits").kernel.numpy(), 2.0)
    assert np.allclose(kernel.numpy(), 3.0)         # the model itself is put back


def test_the_progress_bar_shows_the_time_budget_left():
    """The bar's estimate counts the planned steps: with --time-budget it promised hours to a
    run the budget ends in minutes, unsaid."""
    class Clock:
        def minutes(self):
            return 2.0

    bar = training_callbacks.ProgressBar(1000, 10, 5, time_budget=5, clock=Clock())
    bar.on_train_begin()
    bar.on_train_batch_end(0)
    assert bar.bar.postfix == "budget 3.0 min left" and bar.bar.n == 11
    bar.on_train_end()


class PoisonWeights(keras.callbacks.Callback):
    """Turns a kernel to NaN after the given (epoch, step)s, as one bad bf16 step did."""

    def __init__(self, when):
        super().__init__()
        self.when, self.epoch = set(when), 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) in self.when:
            kernel = next(v for v in self.model.trainable_variables if len(v.shape) == 4)
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


def all_finite(path):
    model = keras.saving.load_model(path, compile=False)
    return all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)


def test_a_non_finite_step_is_rolled_back(tmp_path, monkeypatch, capsys):
    """A step that leaves NaN weights is undone: the run ends with finite models, says so
    and records it; without the guard every later epoch would train NaN. Rollbacks with a
    finite epoch between them, more than would stop a run in a row, do not stop it."""
    limit = training_callbacks.DivergenceGuard().max_rollbacks
    epochs = range(1, limit + 2)
    with_extra_callback(monkeypatch, PoisonWeights({(epoch, 0) for epoch in epochs}))
    config = short_run(tmp_path, "--epochs", str(limit + 2), "--keep-snapshots")
    model_dir = tmp_path / "work" / "weights"
    assert config["result"]["rollbacks_this_run"] == limit + 1
    out = capsys.readouterr().out
    assert out.count("step 2 of the epoch: loss or weights not finite") == limit + 1
    rows = read_log(model_dir)
    assert [int(r["epoch"]) for r in rows] == list(range(limit + 2))
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("loss", "val_loss"))
    for path in [*model_dir.glob("snapshots/*.h5"), model_dir / train.weights_name("best", "h5")]:
        assert all_finite(path), path


class NaNForwardPass(keras.callbacks.Callback):
    """Makes the given (epoch, step)s' forward pass NaN and gives the weights back their
    values after it, as one bad bf16 step on finite weights did: a kernel is NaN during the
    step only. First in the callback list, so the guard sees the weights it left."""

    def __init__(self, when):
        super().__init__()
        self.when, self.epoch, self.saved = set(when), 0, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def kernel(self):
        return next(v for v in self.model.trainable_variables if len(v.shape) == 4)

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) in self.when:
            self.saved = self.kernel().numpy()
            self.kernel().assign(np.full(self.saved.shape, np.nan, "float32"))

    def on_train_batch_end(self, batch, logs=None):
        if self.saved is not None:
            self.kernel().assign(self.saved)
            self.saved = None


def test_a_non_finite_forward_pass_costs_one_step(tmp_path, monkeypatch, capsys):
    """A NaN loss whose update the optimizer skipped costs that step, not the epoch: no
    rollback, and the BatchNorm statistics the NaN pass spoilt are restored (validation
    uses them here: --bn-batches 0). More skipped steps in a row than the guard allows roll
    the epoch back."""
    limit = training_callbacks.DivergenceGuard().max_skips
    poisoned = {(0, 1)} | {(1, step) for step in range(limit + 1)}
    with_extra_callback(monkeypatch, NaNForwardPass(poisoned), first=True)
    config = short_run(tmp_path, "--epochs", "2", "--steps-per-epoch", str(limit + 2))
    assert config["result"]["skipped_steps_this_run"] == 1 + limit
    assert config["result"]["rollbacks_this_run"] == 1
    out = capsys.readouterr().out
    assert out.count("loss not finite; the step's update was skipped") == 1 + limit
    assert f"step {limit + 1} of the epoch: loss or weights not finite; weights and " in out
    rows = read_log(tmp_path / "work" / "weights")
    assert all(np.isfinite(float(r[k])) for r in rows for k in ("loss", "val_loss"))
    assert all_finite(tmp_path / "work" / "weights" / train.weights_name("best", "h5"))


def test_a_run_that_keeps_diverging_stops_and_resumes(tmp_path, monkeypatch):
    limit = training_callbacks.DivergenceGuard().max_rollbacks
    # NaN after every step from the second epoch on: the last step's shows at the epoch's end.
    with_extra_callback(monkeypatch, PoisonWeights({(epoch, step) for epoch in (1, 2, 3)
                                                    for step in (0, 1)}))
    with pytest.raises(train.PipelineError, match="training diverged: loss or weights not "
                       f"finite {limit + 1} times in a row"):
        short_run(tmp_path, "--epochs", "4", "--keep-snapshots")
    model_dir = tmp_path / "work" / "weights"
    # Stopped before being marked finished or losing its backup: a rerun resumes.
    assert (model_dir / "backup").is_dir()
    assert not json.loads((model_dir / "state.json").read_text()).get("finished")
    assert all(all_finite(p) for p in model_dir.glob("snapshots/*.h5"))
    monkeypatch.undo()
    config = short_run(tmp_path, "--epochs", "4", "--keep-snapshots")
    assert config["result"]["epochs_done"] == 4 and config["result"]["rollbacks_this_run"] == 0


@pytest.mark.parametrize("left", ["training_metadata.json", "latest.weights.h5"])
def test_a_stop_while_a_finished_runs_backup_is_deleted_is_finished_by_the_rerun(
        tmp_path, monkeypatch, left):
    """Ctrl-C or SIGTERM while Keras deleted the backup of a run whose epochs had all run
    left half of it: the rerun refused the record alone as a damaged backup, telling to
    --restart (train anew), and took the weights alone for a run to start over."""
    def torn_deletion(self, logs=None):
        for entry in Path(self.backup_dir).iterdir():
            if entry.name != left:
                entry.unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(training_callbacks.AtomicBackupAndRestore, "on_train_end",
                        torn_deletion)
    with pytest.raises(KeyboardInterrupt):
        short_run(tmp_path, "--epochs", "2")
    monkeypatch.undo()
    model_dir = tmp_path / "work" / "weights"
    assert json.loads((model_dir / "state.json").read_text())["finished"]
    log, best = (model_dir / "log.csv").read_text(), file_digests(model_dir / "snapshots")
    config = short_run(tmp_path, "--epochs", "2")
    assert config["result"]["epochs_done"] == 2
    # Finished, not trained again: the epochs' log and snapshots are those of the first run.
    assert (model_dir / "log.csv").read_text() == log
    assert file_digests(model_dir / "snapshots") == best
    assert not (model_dir / "backup").exists()


def file_digests(folder):
    return {p.relative_to(folder): sha256_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_trained_model_is_never_destroyed(trained_model, tmp_path, capsys):
    root, args = trained_model
    model_dir = root / "work" / "weights"
    before = file_digests(model_dir)
    # A different command, or a mistyped weights file, is refused before anything changes.
    with pytest.raises(train.PipelineError, match="--restart.*--work-dir"):
        train.main(args + ["--lr", "0.5"])
    with pytest.raises(train.PipelineError, match="no such file"):
        train.main(args + ["--weights", str(tmp_path / "typo.h5")])
    assert file_digests(model_dir) == before
    # The same command again has nothing to do.
    train.main(args)
    assert "nothing to do" in capsys.readouterr().out
    assert file_digests(model_dir) == before
    # --restart trains anew; the old folder, moved aside, goes once the new run has a checkpoint.
    shutil.copytree(root, tmp_path / "copy")
    config = short_run(tmp_path / "copy", "--lr", "0.5", "--restart")
    assert config["settings"]["lr"] == 0.5 and config["result"]["epochs_done"] == 1
    assert not (tmp_path / "copy" / "work" / "weights.previous").exists()
    assert set(config["sha256"]) == {config["weights_files"]["best"], "snapshots/epoch_001.h5"}
    for name, digest in config["sha256"].items():
        assert sha256_of(tmp_path / "copy" / "work" / "weights" / name) == digest


PATCHES_IN = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
import train_unet_xception_resnetblock as train
images, labels = next(iter(train.patch_dataset(Path(sys.argv[1]), ["000000.png"], 1, 1)))
print(tuple(images.shape), tuple(labels.shape))
"""


def test_patches_in_a_non_ascii_folder_load_in_a_locale_that_is_not_utf8(tmp_path):
    """LANG=en_US.ISO-8859-1 on an old cluster, or C with Python's UTF-8 mode off: the path
    TensorFlow was given as text named no file, and training stopped with a traceback."""
    work = tmp_path / "w\u00f6rk\u2013\u03b1"
    make_patch_set(work, 1)
    env = {**os.environ, "LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}
    root = str(Path(train.__file__).parent)
    result = subprocess.run([sys.executable, "-c", PATCHES_IN.format(root=root), work],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split("\n")[-2] == f"(1, {SIZE}, {SIZE}, 3) (1, {SIZE}, {SIZE})"


def test_labels_beyond_the_classes_are_refused_before_training(tmp_path):
    make_patch_set(tmp_path / "work", 6)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "classes.txt").write_text("background\nbead\n")
    with pytest.raises(train.PipelineError, match=r"holds class 2 but .*classes.txt lists only 2"):
        train.main(["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work"),
                    "--weights", "none"])
    assert not (tmp_path / "work" / "weights").exists()
    # Patches recorded by gen_img_aug.py for another class list: a forgotten --data-dir.
    (tmp_path / "work" / "split.json").write_text(json.dumps(
        {"classes": ["background", "bead", "cell"], "label_values": [0, 1, 2]}))
    with pytest.raises(train.PipelineError, match="give the --data-dir they came from"):
        train.main(["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work"),
                    "--weights", "none"])
    (tmp_path / "work" / "split.json").write_text('{"orientations": "sideways"}')
    with pytest.raises(train.PipelineError, match="'orientations' must be one of"):
        train.main(["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work"),
                    "--weights", "none"])
    (tmp_path / "work" / "split.json").write_text('{"scale": "half"}')
    with pytest.raises(train.PipelineError, match="'scale' must be a positive number"):
        train.main(["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work"),
                    "--weights", "none"])
    # As recorded by gen_img_aug.py: ignored pixels (255) are no class; 2 is one too many.
    record = {"classes": ["background", "bead"], "label_values": [0, 1, IGNORE_LABEL]}
    train.check_patch_labels(tmp_path, record["classes"], tmp_path, record)
    record["label_values"] = [0, 2, IGNORE_LABEL]
    with pytest.raises(train.PipelineError, match="hold class 2 but"):
        train.check_patch_labels(tmp_path, record["classes"], tmp_path, record)


def test_resume_drops_log_rows_the_backup_lacks(tmp_path):
    # Killed after epoch 3 was logged but before its backup was saved: the backup holds 2.
    model_dir = tmp_path / "weights"
    (model_dir / "backup").mkdir(parents=True)
    (model_dir / "backup" / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    (model_dir / "log.csv").write_text("epoch,loss\n0,0.9\n1,0.8\n2,0.7\n")
    (model_dir / "state.json").write_text('{"epochs_done": 3, "best_val_loss": 0.5}')
    train.align_with_backup(model_dir)
    assert (model_dir / "log.csv").read_text() == "epoch,loss\n0,0.9\n1,0.8\n"
    assert json.loads((model_dir / "state.json").read_text()) == {"epochs_done": 2,
                                                                  "best_val_loss": 0.5}


def write_patch_sources(work, frames):
    """patches.csv as gen_img_aug.py writes it: patch i comes from frames[i % len(frames)]."""
    names = sorted(p.name for p in (work / "train" / "prep").glob("*.png"))
    rows = [f"{n},{frames[i % len(frames)]},0,0,0" for i, n in enumerate(names)]
    (work / "train" / "patches.csv").write_text("patch,image,y,x,transform\n" + "\n".join(rows))


def kernels(model_file):
    """(layer name, array) of every trainable weight, in build order: Keras numbers unnamed
    layers per process, so weights are matched by position."""
    net = keras.saving.load_model(model_file, compile=False)
    return [(layer.name, np.asarray(w)) for layer in net.layers for w in layer.trainable_weights]


def test_fine_tuning_starts_from_the_trained_model(trained_model, tmp_path):
    """--init-model: with a learning rate too small to move them, the fine-tuned weights are
    the trained model's; --new-head keeps all but a new last layer (here for two classes and
    the Lovasz hinge loss); the sha256 of the model it started from is recorded."""
    root, args = trained_model
    source_dir = root / "work" / "weights"
    source = json.loads((source_dir / "config.json").read_text())
    start = kernels(source_dir / source["weights_files"]["best"])
    frozen = ["--epochs", "1", "--steps-per-epoch", "1", "--lr", "1e-12", "--swa-epochs", "0"]

    with pytest.raises(train.PipelineError, match="--init-model .* is the folder this run "
                                                  "writes .*another --work-dir or --model-dir"):
        train.main(args + frozen + ["--init-model", str(source_dir)])     # into itself
    train.main(args + frozen + ["--init-model", str(source_dir), "--model-dir",
                                str(tmp_path / "same")])
    config = json.loads((tmp_path / "same" / "config.json").read_text())
    assert config["init_model"]["sha256"] == source["sha256"][source["weights_files"]["best"]]
    tuned = kernels(tmp_path / "same" / config["weights_files"]["best"])
    assert len(tuned) == len(start)
    assert all(np.allclose(a, b, atol=1e-6) for (_, a), (_, b) in zip(tuned, start))

    two = tmp_path / "two_classes"
    two.mkdir()
    (two / "classes.txt").write_text("background\nparticle\n")
    make_patch_set(tmp_path / "work2", 40, unsure=True)
    two_args = ["--data-dir", str(two), "--work-dir", str(tmp_path / "work2"), "--weights",
                "none", "--val-steps", "1", "--bn-batches", "2", "--verbose", "0", *frozen,
                "--loss", "lovasz-hinge", "--init-model", str(source_dir),
                "--model-dir", str(tmp_path / "new")]
    for path in (tmp_path / "work2" / "train" / "label").glob("*.png"):   # classes 0 and 1
        label = cv2.imread(str(path), 0)
        cv2.imwrite(str(path), np.where(label == IGNORE_LABEL, label, label > 0).astype(np.uint8))
    with pytest.raises(train.PipelineError, match="--new-head"):
        train.main(two_args)
    # Patches cut at another scale than the model works at.
    split_file = tmp_path / "work2" / "split.json"
    split_file.write_text('{"scale": 0.5}')
    with pytest.raises(train.PipelineError, match="works at scale 1 of the frames, these "
                                                  "patches were cut at 0.5"):
        train.main(two_args + ["--new-head"])
    split_file.unlink()
    train.main(two_args + ["--new-head"])
    config = json.loads((tmp_path / "new" / "config.json").read_text())
    assert config["num_classes"] == 2 and config["settings"]["loss"] == "lovasz-hinge"
    assert np.isfinite(config["result"]["best_val_loss"])
    tuned = kernels(tmp_path / "new" / config["weights_files"]["best"])
    assert len(tuned) == len(start)
    pairs = list(zip(tuned, start))
    assert [a.shape[-1] for (name, a), _ in pairs if name == "logits"] == [2, 2]
    assert all(np.allclose(a, b, atol=1e-6) for (name, a), (_, b) in pairs if name != "logits")


def test_validation_frames_give_no_training_patch(tmp_path):
    make_patch_set(tmp_path, 60)
    frames = [f"frame_{i}" for i in range(10)]
    write_patch_sources(tmp_path, frames)
    split = train.split_patches(tmp_path, 0.2, 2018)
    assert split["by"] == "image" and len(split["val_frames"]) == 2
    source = {f"{i:06d}.png": frames[i % 10] for i in range(60)}
    assert {source[n] for n in split["val"]} == set(split["val_frames"])
    assert not {source[n] for n in split["train"]} & set(split["val_frames"])
    assert sorted(split["train"] + split["val"]) == sorted(source)
    assert split == train.split_patches(tmp_path, 0.2, 2018)           # deterministic
    by_patch = train.split_patches(tmp_path, 0.2, 2018, by="patch")
    assert by_patch["by"] == "patch" and len(by_patch["val"]) == 12


def test_frames_the_first_model_learnt_are_held_out_last(tmp_path, capsys):
    """Fine-tuning on a new split of the data folder: frames the --init-model model trained
    on would choose the best checkpoint on pictures it learnt."""
    make_patch_set(tmp_path, 60)
    frames = [f"frame_{i}" for i in range(10)]
    write_patch_sources(tmp_path, frames)
    learnt = set(frames[:8])
    for seed in range(5):
        split = train.split_patches(tmp_path, 0.2, seed, learnt=learnt)
        assert set(split["val_frames"]) == {"frame_8", "frame_9"}
    split = train.split_patches(tmp_path, 0.3, 0, learnt=learnt)       # 3 held out, 2 new
    train.warn_of_held_out_frames_trained_on(split["val_frames"], learnt, "M")
    assert "1 frame held out for validation" in capsys.readouterr().out


def test_the_first_models_frames_are_carried_on_by_their_pictures():
    recorded = {"image_digests": {"a": "d1", "b": "d2", "z_p0": "d3"},
                "stack_of": {"z_p0": "z.tif"}}
    assert train.frames_learnt(recorded, {"old_a": "d1", "z": "d3"}) == {"a", "z.tif"}
    assert train.frames_learnt(recorded, None) == set()
    merged = train.with_earlier_frames({"a": "d1", "b": "d2"}, {"a": "d9", "c": "d1", "e": "d5"})
    assert merged == {"a": "d1", "b": "d2", "a (--init-model)": "d9", "c": "d1", "e": "d5"}
    assert train.with_earlier_frames(None, {"e": "d5"}) == {"e": "d5"}
    assert train.with_earlier_frames({"a": "d1"}, None) == {"a": "d1"}


def test_planes_of_a_stack_validate_together(tmp_path):
    """Neighbouring planes of a stack look alike: they are held out as one frame."""
    make_patch_set(tmp_path, 80)
    frames = [f"z_p{k}" for k in range(6)] + [f"frame_{i}" for i in range(4)]
    write_patch_sources(tmp_path, frames)
    stack_of = {f"z_p{k}": "z.tif" for k in range(6)}
    for seed in range(6):
        split = train.split_patches(tmp_path, 0.4, seed, recorded={"stack_of": stack_of})
        source = {f"{i:06d}.png": frames[i % 10] for i in range(80)}
        sides = {source[n] in stack_of for n in split["val"]}, \
            {source[n] in stack_of for n in split["train"]}
        assert True not in sides[0] or True not in sides[1], seed     # never on both sides
        assert len(split["val_frames"]) == 2                           # of 5 groups


def test_too_few_frames_fall_back_to_a_patch_split(tmp_path, capsys):
    make_patch_set(tmp_path, 20)
    write_patch_sources(tmp_path, ["a", "b"])
    split = train.split_patches(tmp_path, 0.2, 2018)
    assert split["by"] == "patch" and split["val_frames"] == [] and len(split["val"]) == 4
    assert "--val-split-by patch" in capsys.readouterr().out


def test_patches_missing_from_patches_csv_are_refused(tmp_path):
    make_patch_set(tmp_path, 6)
    write_patch_sources(tmp_path, ["a", "b", "c"])
    (tmp_path / "train" / "prep" / "000099.png").write_bytes(
        (tmp_path / "train" / "prep" / "000000.png").read_bytes())
    (tmp_path / "train" / "label" / "000099.png").write_bytes(
        (tmp_path / "train" / "label" / "000000.png").read_bytes())
    with pytest.raises(train.PipelineError, match="does not list patch 000099.png"):
        train.split_patches(tmp_path, 0.2, 2018)


def test_logged_validation_iou_is_predictions_convention(trained_model):
    """The log's val IoU at the best epoch equals IoU from the summed confusion matrix of the
    best model's argmax on the validation batches, with absent classes scored 1."""
    root, args = trained_model
    model_dir = root / "work" / "weights"
    config = json.loads((model_dir / "config.json").read_text())
    model = keras.saving.load_model(model_dir / config["weights_files"]["best"], compile=False)
    split = json.loads((model_dir / "split.json").read_text())
    val = train.patch_dataset(root / "work", split["val"], 1, 8)
    cm = sum(confusion_matrix(y, np.argmax(np.asarray(model(x, training=False)), -1), 3)
             for x, y in val.take(2))      # --val-steps 2
    rows = read_log(model_dir)
    best = min(rows, key=lambda r: float(r["val_loss"]))
    expected = iou_per_class(cm)
    assert float(best["val_mean_iou"]) == pytest.approx(expected.mean(), abs=2e-3)
    for c, name in enumerate(config["classes"]):
        assert float(best[f"val_iou_{name}"]) == pytest.approx(expected[c], abs=2e-3)


def test_old_lovasz_option_spelling_still_works():
    assert train.parse_args(["--lovasz-input", "softmax"]).lovasz_on == "probabilities"
    assert train.parse_args(["--lovasz-input", "logits"]).lovasz_on == "logits"
    assert train.parse_args([]).lovasz_on == "probabilities"


def test_a_finished_model_records_a_changed_faint_filter(tmp_path, capsys):
    config = short_run(tmp_path)
    # Validation of the synthetic patches was by patch: no frames to calibrate on.
    assert config["settings"]["faint_filter"] == "calibrate" and config["faint_filter"] is None
    assert "validation was by patch" in capsys.readouterr().out
    model_dir = tmp_path / "work" / "weights"
    # As if a calibration had found a threshold: switching the filter off removes it.
    config["faint_filter"] = {"threshold": 3.0, "frames": 4}
    (model_dir / "config.json").write_text(json.dumps(config))
    models = {p: d for p, d in file_digests(model_dir).items() if p.suffix == ".h5"}
    config = short_run(tmp_path, "--faint-filter", "off")
    assert "now has --faint-filter off" in capsys.readouterr().out
    assert config["settings"]["faint_filter"] == "off" and config["faint_filter"] is None
    assert config["result"]["epochs_done"] == 1
    assert {p: d for p, d in file_digests(model_dir).items() if p.suffix == ".h5"} == models
    short_run(tmp_path, "--faint-filter", "off")
    assert "nothing to do" in capsys.readouterr().out
    config = short_run(tmp_path)
    assert "now has --faint-filter calibrate" in capsys.readouterr().out
    assert config["settings"]["faint_filter"] == "calibrate" and config["faint_filter"] is None


@pytest.mark.parametrize("option, value", [("--momentum", "2"), ("--momentum", "-0.1"),
                                           ("--momentum", "1"), ("--seed", "-1"),
                                           ("--random-state", "-1"), ("--seed", str(2 ** 32))])
def test_an_option_keras_or_numpy_would_refuse_is_refused_by_the_parser(option, value, capsys):
    """Refused before the model folder changes: Keras' own momentum check came after a new
    folder was made (holding no model) or a --restart had moved the old one aside."""
    with pytest.raises(SystemExit):
        train.parse_args([option, value])
    assert option in capsys.readouterr().err


@pytest.mark.parametrize("argv, named", [
    (["--cluster", "slurm"], "--cluster slurm needs --strategy multiworker"),
    (["--strategy", "mirrored", "--cluster", "slurm"], "--cluster slurm needs"),
    (["--strategy", "one", "--cpu-devices", "2"], "--cpu-devices 2 needs --strategy mirrored"),
    (["--strategy", "multiworker", "--cpu-devices", "2"], "--strategy multiworker does not"),
    (["--cluster-timeout", "60"], "--cluster-timeout needs --strategy multiworker"),
    (["--strategy", "multiworker", "--cluster-timeout", "-1"], "--cluster-timeout")])
def test_a_device_option_the_strategy_would_ignore_is_refused(argv, named, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert named in capsys.readouterr().err


def test_device_options_their_strategy_uses_are_taken():
    assert train.parse_args(["--strategy", "multiworker", "--cluster", "slurm"]).cluster == "slurm"
    assert train.parse_args(["--cpu-devices", "2"]).cpu_devices == 2
    assert train.parse_args(["--strategy", "mirrored", "--cpu-devices", "2"]).cpu_devices == 2


def test_seeds_and_momentum_in_range_are_taken():
    args = train.parse_args(["--momentum", "0", "--seed", "0", "--random-state", str(2 ** 32 - 1)])
    assert (args.momentum, args.seed, args.random_state) == (0.0, 0, 2 ** 32 - 1)


@pytest.mark.parametrize("restart", [[], ["--restart"]])
def test_training_never_mixes_its_files_with_a_folder_of_other_files(tmp_path, restart):
    """A --model-dir of the user's (here a copy of the data folder), the work or data folder,
    a folder holding them, or a <model-dir>.previous of the user's is refused before anything
    changes: training wrote among the user's files, a --restart then moved them aside and
    deleted them, and the work folder's split.json (gen_img_aug.py's record) was overwritten."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "classes.txt").write_text("background\nbead\ncell\n")
    make_patch_set(tmp_path / "work", 40)
    (tmp_path / "work" / "split.json").write_text('{"orientations": "none"}')
    shutil.copytree(tmp_path / "data", tmp_path / "mine")
    (tmp_path / "mine" / "src").mkdir()
    (tmp_path / "mine" / "src" / "frame.png").write_bytes(b"an image of the user's")
    (tmp_path / "work" / "weights.previous").mkdir()
    (tmp_path / "work" / "weights.previous" / "notes.txt").write_text("the user's")
    before = file_digests(tmp_path)
    for model_dir, match in (
            ("mine", r"mine holds files that training does not write \(classes.txt, src\)"),
            ("work", "--model-dir .*work is or holds the --work-dir folder"),
            ("data", "--model-dir .*data is or holds the --data-dir folder"),
            (".", "is or holds the --work-dir folder"),
            ("work/weights", r"weights.previous holds files .* \(notes.txt\); training in "
                             ".*weights would delete that folder")):
        with pytest.raises(train.PipelineError, match=match):
            short_run(tmp_path, "--model-dir", str(tmp_path / model_dir), *restart)
        assert file_digests(tmp_path) == before, model_dir
    assert not (tmp_path / "work" / "weights").exists()


def test_a_folder_of_training_files_alone_is_a_model_folder(tmp_path):
    """What training writes, a killed run's temporary files included, is no user's file."""
    folder = tmp_path / "weights"
    (folder / "snapshots").mkdir(parents=True)
    for name in ("config.json", "log.csv", train.weights_name("best", "h5"),
                 ".config.json.tmp-0123abcd-42-x1y2.json",
                 ".DS_Store", "._log.csv", "Thumbs.db", ".nfs0000000001"):   # the system's
        (folder / name).write_text("")
    train.check_model_dir(folder, tmp_path / "work", tmp_path / "data", None)
    (folder / "notes.txt").write_text("")
    with pytest.raises(train.PipelineError, match=r"\(notes.txt\)"):
        train.check_model_dir(folder, tmp_path / "work", tmp_path / "data", None)


def test_a_val_split_that_leaves_no_training_patch_is_one_line(tmp_path):
    make_patch_set(tmp_path, 10)
    with pytest.raises(train.PipelineError, match="--val-split 0.99 of the 10 patches leaves 0 "
                                                  "to train on and 10 to validate on"):
        train.split_patches(tmp_path, 0.99, 2018, by="patch")
    # Too few frames to split by image: the same patch split, the same refusal.
    with pytest.raises(train.PipelineError, match="leaves 0 to train on"):
        train.split_patches(tmp_path, 0.99, 2018)
    assert len(train.split_patches(tmp_path, 0.85, 2018, by="patch")["train"]) == 1


def test_a_batch_larger_than_the_training_patches_is_noted(tmp_path, monkeypatch, capsys):
    class Built(Exception):
        pass

    def build(*args):
        raise Built

    monkeypatch.setattr(train, "build", build)      # the note comes before the model is built
    with pytest.raises(Built):
        short_run(tmp_path, "--batch-size", "64")
    assert ("note: a batch of 64 is more than the 32 training patches"
            in capsys.readouterr().out)


def test_the_same_command_on_other_patches_is_not_told_to_rerun_itself(tmp_path):
    """Where only the patches or statistics changed, the command that trained the model is
    the one just refused: rerunning it cannot resume anything."""
    args = train.parse_args(["--work-dir", str(tmp_path)])
    model_dir = tmp_path / "weights"
    model_dir.mkdir()
    (model_dir / "state.json").write_text("{}")
    config = {"settings": vars(args), "settings_hash": "of the patches it trained on",
              "labels_sha256": "of their labels"}
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(train.PipelineError) as refused:
        train.plan_model_folder(model_dir, "of these patches", args)
    message = str(refused.value)
    assert "other training data" in message and "this command cannot resume it" in message
    assert "rerun that command" not in message and "add --restart" in message
    # A folder of a version that hashed no labels is matched by that version's rule.
    del config["labels_sha256"]
    (model_dir / "config.json").write_text(json.dumps(config))
    assert train.plan_model_folder(model_dir, "of these patches", args,
                                   earlier="of the patches it trained on") == "fresh"
    with pytest.raises(train.PipelineError, match="other training data"):
        train.plan_model_folder(model_dir, "of the patches it trained on", args,
                                earlier="of these patches")
    config["labels_sha256"] = "of their labels"
    (model_dir / "config.json").write_text(json.dumps(config))
    args.lr = 0.5
    with pytest.raises(train.PipelineError, match="--lr 0.001 -> 0.5.*rerun that command"):
        train.plan_model_folder(model_dir, "of these patches", args)


def test_split_names_the_training_frames(tmp_path):
    make_patch_set(tmp_path, 20)
    assert train.split_patches(tmp_path, 0.2, 2018)["train_frames"] is None   # made elsewhere
    write_patch_sources(tmp_path, ["a", "b"])
    assert train.split_patches(tmp_path, 0.2, 2018, by="patch")["train_frames"] == ["a", "b"]
    # A patches.csv that misses a patch: a patch split goes on, naming no frames.
    csv_path = tmp_path / "train" / "patches.csv"
    csv_path.write_text("\n".join(csv_path.read_text().splitlines()[:-1]))
    assert train.split_patches(tmp_path, 0.2, 2018, by="patch")["train_frames"] is None
    with pytest.raises(train.PipelineError, match="does not list patch"):
        train.split_patches(tmp_path, 0.2, 2018, by="image")


def test_config_records_the_frames_trained_and_validated_on(tmp_path):
    """For prediction to tell frames the model trained on from unseen ones, by their images'
    pixel digests (gen_img_aug.py's; a blank frame has none)."""
    frames = [f"frame_{i}" for i in range(5)]
    make_patch_set(tmp_path / "work", 40)
    write_patch_sources(tmp_path / "work", frames)
    pictures = {name: f"digest of {name}" for name in frames[1:]}
    (tmp_path / "work" / "split.json").write_text(json.dumps({"image_digests": pictures}))
    config = short_run(tmp_path, "--faint-filter", "off")
    assert config["val_split_by"] == "image" and len(config["val_frames"]) == 1
    assert config["train_frames"] == sorted(set(frames) - set(config["val_frames"]))
    assert config["train_image_digests"] == {name: f"digest of {name}"
                                             for name in config["train_frames"]
                                             if name != "frame_0"}
    model_dir = tmp_path / "work" / "weights"
    split = json.loads((model_dir / "split.json").read_text())
    assert split["train_frames"] == config["train_frames"]
    config["train_image_digests"] = ["not", "a", "map"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(train.PipelineError, match="'train_image_digests' must map"):
        train.read_config(model_dir)
    # Models trained before the fields were recorded still load.
    del config["train_frames"], config["train_image_digests"]
    (model_dir / "config.json").write_text(json.dumps(config))
    assert "train_frames" not in train.read_config(model_dir)
    assert train.read_config(model_dir)["train_image_digests"] is None


def test_patches_of_an_unfinished_gen_img_aug_run_are_refused(tmp_path):
    """gen_img_aug.py writes split.json last: patches.csv without it is an unfinished run,
    whose intensity rule, orientations and scale nobody recorded."""
    make_patch_set(tmp_path / "work", 40)
    write_patch_sources(tmp_path / "work", ["a", "b", "c"])
    with pytest.raises(train.PipelineError, match="no split.json, which it writes last.*"
                                                  "rerun gen_img_aug.py"):
        short_run(tmp_path)
    assert not (tmp_path / "work" / "weights").exists()


def test_the_fingerprint_sees_labels_and_classes_not_folder_paths(tmp_path):
    """Relabelled frames cut again give the same image patches and statistics: the model
    folder must not call itself done. The same folder named otherwise (--model-dir given or
    by default, a moved project) is the same model."""
    make_patch_set(tmp_path / "work", 12)
    work = tmp_path / "work"
    stats = json.loads((work / "train_mean_std.json").read_text())
    split = train.split_patches(work, 0.2, 2018, "patch")
    names = split["train"] + split["val"]
    classes = ["background", "bead", "cell"]

    def fingerprint(argv, classes=classes):
        args = train.parse_args(["--work-dir", str(work), *argv])
        return train.settings_fingerprint(args, stats, split, None, classes,
                                          train.labels_digest(work, names, classes, work))

    before = fingerprint([])
    assert fingerprint(["--model-dir", str(work / "weights")]) == before
    assert fingerprint(["--data-dir", str(tmp_path / "elsewhere")]) == before
    assert fingerprint([], ["background", "cell", "bead"]) != before
    label = work / "train" / "label" / names[0]
    swapped = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    swapped[swapped == 1], swapped[swapped == 2] = 9, 1
    swapped[swapped == 9] = 2
    cv2.imwrite(str(label), swapped)
    assert fingerprint([]) != before


@pytest.mark.parametrize("damage, message", [
    ("csv", "has no column 'image'"),
    ("label size", r"000003.png is 128x128, the patches are 64x64"),
    ("rgb stats", r"of 3-channel \(rgb\) patches, but the patches .* have 1"),
    ("old stats", "does not say its colour mode"),
])
def test_a_damaged_work_folder_is_one_line_before_training(tmp_path, damage, message):
    work = tmp_path / "work"
    make_patch_set(work, 12)
    stats_path = work / "train_mean_std.json"
    stats = json.loads(stats_path.read_text())
    if damage == "csv":
        (work / "train" / "patches.csv").write_text(
            "patch,y,x,transform\n" + "".join(f"{i:06d}.png,0,0,0\n" for i in range(12)))
        (work / "split.json").write_text("{}")
    elif damage == "label size":
        cv2.imwrite(str(work / "train" / "label" / "000003.png"), np.zeros((128, 128), np.uint8))
    elif damage == "rgb stats":
        stats.update(mean=[120.0] * 3, std=[30.0] * 3, channels=3, color_mode="rgb")
    else:
        del stats["color_mode"], stats["channels"]
    stats_path.write_text(json.dumps(stats))
    with pytest.raises(train.PipelineError, match=message):
        short_run(tmp_path)
    assert not (work / "weights").exists()


def test_a_model_moved_aside_by_a_stopped_restart_is_not_deleted_by_another_run(tmp_path):
    """A --restart killed before its first checkpoint leaves the earlier model in
    <model-dir>.previous; a later run without --restart must not delete it unasked."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "classes.txt").write_text("background\nbead\ncell\n")
    make_patch_set(tmp_path / "work", 40)
    aside = tmp_path / "work" / "weights.previous"
    (aside / "snapshots").mkdir(parents=True)
    (aside / train.weights_name("best", "h5")).write_bytes(b"the earlier model")
    (aside / "config.json").write_text("{}")
    (tmp_path / "work" / "weights").mkdir()
    (tmp_path / "work" / "weights" / "config.json").write_text("{}")   # the stopped restart's
    before = file_digests(aside)
    with pytest.raises(train.PipelineError, match=r"weights.previous holds the model folder a "
                                                  r"--restart moved aside.*add --restart"):
        short_run(tmp_path, "--lr", "0.02")
    assert file_digests(aside) == before
    short_run(tmp_path, "--lr", "0.02", "--restart")     # as the message says: it lets it go
    assert not aside.exists()


def test_a_training_into_a_model_folder_another_is_training_is_refused(tmp_path):
    short_run(tmp_path)
    model_dir = tmp_path / "work" / "weights"
    before = file_digests(model_dir)
    with train.model_folder_lock(model_dir):     # as another process would hold it
        with pytest.raises(train.PipelineError,
                           match=r"weights is being trained by train_unet_xception_resnetblock"
                                 r"\.py \(process \d+\); wait for it to finish, or use "
                                 r"another --model-dir"):
            short_run(tmp_path, "--lr", "0.02", "--restart")
    assert file_digests(model_dir) == before
    assert not (tmp_path / "work" / "weights.previous").exists()
    short_run(tmp_path, "--lr", "0.02", "--restart")        # released when that run ended


def test_a_workers_scratch_folder_another_run_is_training_in_is_left_alone(tmp_path):
    """A second cluster run with --restart (or other settings) cleared worker 1's scratch
    folder of the run still training, and was refused by its lock only after."""
    from types import SimpleNamespace
    model_dir = tmp_path / "weights"
    scratch = tmp_path / ".weights.worker1"
    scratch.mkdir()
    (scratch / "state.json").write_text("{}")
    worker1 = SimpleNamespace(cluster_resolver=SimpleNamespace(task_type="worker", task_id=1))
    args = train.parse_args(["--strategy", "multiworker", "--restart"])
    with train.model_folder_lock(scratch), ExitStack() as held:   # as worker 1 holds it
        with pytest.raises(train.PipelineError, match=r"\.weights\.worker1 is being trained"):
            train.worker_scratch(held, model_dir, worker1, "hash", args, "hash")
    assert (scratch / "state.json").is_file()
    with ExitStack() as held:                                       # that run ended
        assert train.worker_scratch(held, model_dir, worker1, "hash", args, "hash") == \
            (scratch, "fresh")
    assert not scratch.exists()


def test_training_refuses_a_work_folder_whose_patches_are_being_cut_again(tmp_path):
    from outputs import work_lock
    make_patch_set(tmp_path / "work", 40)
    with work_lock(tmp_path / "work", "gen_img_aug.py"):
        with pytest.raises(train.PipelineError, match=r"work is being written by gen_img_aug"
                                                      r"\.py \(process \d+\); wait"):
            short_run(tmp_path)
    assert not (tmp_path / "work" / "weights").exists()


@pytest.mark.parametrize("model_dir", ["/", "//"])
def test_the_root_as_model_folder_is_refused(tmp_path, model_dir):
    make_patch_set(tmp_path / "work", 4)
    with pytest.raises(train.PipelineError, match="is the file system's root"):
        train.main(["--work-dir", str(tmp_path / "work"), "--model-dir", model_dir])


def test_a_relative_model_folder_names_its_neighbours_by_its_real_name(tmp_path, monkeypatch):
    """'.' and '..' have no name of their own to put .previous or .lock after."""
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    args = train.parse_args(["--model-dir", "."])
    assert train.aside_folder(train.model_folder(args)) == tmp_path / "sub.previous"
    args = train.parse_args(["--model-dir", ".."])
    assert train.aside_folder(train.model_folder(args)) == tmp_path.with_name(
        f"{tmp_path.name}.previous")


class CtrlC(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        raise KeyboardInterrupt


def test_ctrl_c_before_a_restarts_first_checkpoint_says_where_the_earlier_model_is(
        tmp_path, monkeypatch):
    """The usual advice (the same command without --restart resumes) is wrong there: that
    command is refused while <model-dir>.previous holds the earlier model."""
    short_run(tmp_path)
    with_extra_callback(monkeypatch, CtrlC(), first=True)
    with pytest.raises(Interrupted, match=r"weights.previous still holds the earlier model "
                                          r"folder.*rerun with --restart.*remove .*weights "
                                          r"\(it holds no model yet\) and move the earlier "
                                          r"folder back in its place"):
        short_run(tmp_path, "--lr", "0.02", "--restart")
    monkeypatch.undo()
    short_run(tmp_path, "--lr", "0.02", "--restart")     # as it says: it lets it go
    assert not (tmp_path / "work" / "weights.previous").exists()
    with_extra_callback(monkeypatch, CtrlC(), first=True)
    with pytest.raises(KeyboardInterrupt) as stop:
        short_run(tmp_path, "--model-dir", str(tmp_path / "another"))
    assert not isinstance(stop.value, Interrupted)      # the script's usual advice


def test_validation_steps_are_at_most_the_validation_batches(capsys):
    assert train.validation_steps(None, 20, 8, False) is None      # Keras runs them all
    assert train.validation_steps(None, 20, 8, True) == 2           # whole global batches
    assert train.validation_steps(2, 20, 8, False) == 2
    assert capsys.readouterr().out == ""
    assert train.validation_steps(100, 20, 8, False) == 3
    assert "--val-steps 100 is more than the 3 batches" in capsys.readouterr().out
    assert train.validation_steps(100, 5, 8, True) == 1


def tiny_model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_snapshots_beyond_epoch_999_are_kept_and_taken_in_epoch_order(tmp_path):
    """epoch_1000 sorts before epoch_999 by name: the newest snapshot was deleted as the
    oldest, and --weights last and SWA took older ones."""
    from model_folder import model_file
    snaps = tmp_path / "snapshots"
    snaps.mkdir()
    for epoch in (999, 1000):
        (snaps / f"epoch_{epoch}.h5").write_bytes(b"")
    checkpoints = training_callbacks.Checkpoints(tmp_path, tmp_path / "best.h5", "h5", 2,
                                                 lambda saved: None)
    checkpoints.set_model(tiny_model())
    checkpoints.on_epoch_end(1000, {"val_loss": 1.0, "minutes": 0.0})
    assert sorted(p.name for p in snaps.iterdir()) == ["epoch_1000.h5", "epoch_1001.h5"]
    (snaps / "epoch_999.h5").write_bytes(b"")
    assert [p.name for p in train.snapshot_files(snaps)] == [
        "epoch_999.h5", "epoch_1000.h5", "epoch_1001.h5"]
    assert model_file(tmp_path, {}, "last").name == "epoch_1001.h5"


@pytest.mark.parametrize("damage", ["weights missing", "weights truncated"])
def test_a_backup_that_cannot_be_restored_is_one_line(tmp_path, damage):
    """Keras trained on from fresh weights where the backup's record stood without its
    weights (having skipped the epochs the record names), and raised h5py's traceback for a
    weights file cut short (a project copied incompletely)."""
    backup = tmp_path / "backup"
    saving = training_callbacks.AtomicBackupAndRestore(str(backup))
    saving.set_model(tiny_model())
    saving.on_epoch_end(0)
    weights = backup / "latest.weights.h5"
    if damage == "weights missing":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:500])
    resuming = training_callbacks.AtomicBackupAndRestore(str(backup))
    resuming.set_model(tiny_model())
    with pytest.raises(train.PipelineError, match=f"the resume backup {backup} cannot be "
                                                  "restored .*copy the model folder again.*"
                                                  "--restart"):
        resuming.on_train_begin()


@pytest.mark.parametrize("config", [None, "{not json", "[]"])
def test_a_model_folder_whose_config_is_lost_is_not_told_to_rerun_its_command(tmp_path,
                                                                               config):
    """No command matches a folder whose config.json is missing or unreadable, the one just
    refused included: rerunning it cannot resume the model."""
    args = train.parse_args(["--work-dir", str(tmp_path)])
    model_dir = tmp_path / "weights"
    (model_dir / "backup").mkdir(parents=True)
    if config is not None:
        (model_dir / "config.json").write_text(config)
    with pytest.raises(train.PipelineError) as refused:
        train.plan_model_folder(model_dir, "of these patches", args, "of the old rule")
    message = str(refused.value)
    assert "config.json no longer records" in message and "cannot resume it" in message
    assert "rerun that command" not in message and "add --restart" in message


def test_a_finished_model_of_other_settings_is_not_told_to_resume(tmp_path):
    args = train.parse_args(["--work-dir", str(tmp_path)])
    model_dir = tmp_path / "weights"
    model_dir.mkdir()
    (model_dir / "state.json").write_text('{"finished": true}')
    config = {"settings": {**vars(args), "lr": 0.5}, "settings_hash": "of lr 0.5",
              "labels_sha256": "of their labels", "result": {"epochs_done": 25}}
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(train.PipelineError) as refused:
        train.plan_model_folder(model_dir, "of lr 0.001", args)
    message = str(refused.value)
    assert "(--lr 0.5 -> 0.001); its training has finished (to train it on, give " \
           f"--init-model {model_dir} and another --model-dir), add --restart" in message
    assert "deleted at the new run's first checkpoint" in message
    assert "resume" not in message


def test_fine_tuning_from_an_unfinished_training_says_so(trained_model, tmp_path, capsys):
    """--init-model of a folder whose training was interrupted took its best model so far
    (here of 1 epoch of 3) for the trained model, without a word."""
    root, _ = trained_model
    folder = tmp_path / "interrupted"
    shutil.copytree(root / "work" / "weights", folder)
    config = json.loads((folder / "config.json").read_text())
    del config["result"]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "state.json").write_text('{"epochs_done": 1, "best_val_loss": 0.5}')
    args = train.parse_args(["--init-model", str(folder)])
    train.check_init_model(args, config["classes"], 1.0)
    assert (f"note: the training of --init-model {folder} has not finished (1 of 3 epochs "
            "done): fine-tuning starts from its best model so far") in capsys.readouterr().out
    shutil.copy(root / "work" / "weights" / "config.json", folder / "config.json")
    train.check_init_model(args, config["classes"], 1.0)      # finished: nothing to say
    assert "has not finished" not in capsys.readouterr().out


def test_a_model_file_given_as_init_model_is_told_to_give_its_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "classes.txt").write_text("background\nbead\ncell\n")
    make_patch_set(tmp_path / "w", 4)
    best = tmp_path / "old" / train.weights_name("best", "h5")
    best.parent.mkdir()
    best.write_bytes(b"\x89HDF")
    with pytest.raises(train.PipelineError, match="--init-model .*_best.h5 is a model file; give "
                                                  "the model folder training wrote, the one "
                                                  "holding its config.json"):
        train.main(["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "w"),
                    "--weights", "none", "--init-model", str(best),
                    "--model-dir", str(tmp_path / "new")])
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("argv, named", [
    (["--optimizer", "adam", "--momentum", "0.5"], "--momentum 0.5 has no effect with "
                                                   "--optimizer adam"),
    (["--loss", "cross-entropy", "--lovasz-on", "logits"], "--lovasz-on logits has no effect"),
    (["--init-model", "m", "--weights", "x.h5"], "--weights x.h5 has no effect with "
                                                 "--init-model")])
def test_an_option_the_others_make_void_is_refused_not_recorded_as_used(argv, named, capsys):
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert named in capsys.readouterr().err


def test_label_patches_edited_to_a_class_beyond_the_list_are_refused(tmp_path):
    """split.json records the values gen_img_aug.py wrote; a label patch edited since trained
    silently with Lovasz-softmax and stopped cross-entropy with a traceback."""
    work = tmp_path / "work"
    make_patch_set(work, 12)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "classes.txt").write_text("background\nbead\ncell\n")
    (work / "split.json").write_text(json.dumps(
        {"classes": ["background", "bead", "cell"], "label_values": [0, 1, 2]}))
    label = cv2.imread(str(work / "train" / "label" / "000005.png"), cv2.IMREAD_UNCHANGED)
    label[:4, :4] = 5
    cv2.imwrite(str(work / "train" / "label" / "000005.png"), label)
    with pytest.raises(train.PipelineError, match=r"000005.png holds class 5 but .* lists only 3"):
        short_run(tmp_path)
    assert not (work / "weights").exists()


@pytest.mark.parametrize("damage, message", [
    ("prep", r"prep holds 9 preprocessed patches, gen_img_aug.py cut 12"),
    ("csv", r"patches.csv is missing, which says the frame of every patch")])
def test_a_work_folder_missing_what_gen_img_aug_recorded_is_refused(tmp_path, damage, message):
    work = tmp_path / "work"
    make_patch_set(work, 12)
    (work / "split.json").write_text(json.dumps({"patches": {"num_patches": 12}}))
    if damage == "prep":
        for i in range(3):
            (work / "train" / "prep" / f"{i:06d}.png").unlink()
    # make_patch_set writes no patches.csv, as one deleted since
    with pytest.raises(train.PipelineError, match=message):
        short_run(tmp_path)


def test_a_resumed_auto_precision_keeps_the_one_the_run_began_in(tmp_path, capsys):
    """auto decides by a timing, which another host or a busy one answers otherwise."""
    args = train.parse_args([])
    (tmp_path / "config.json").write_text(json.dumps({"precision": "bf16"}))
    assert train.resumed_precision(args, tmp_path, "resume") == "bf16"
    assert "--precision auto: bf16, as the run being resumed began" in capsys.readouterr().out
    assert train.resumed_precision(args, tmp_path, "new") == "auto"
    assert train.resumed_precision(train.parse_args(["--precision", "fp32"]), tmp_path,
                                   "resume") == "fp32"


def test_a_run_the_time_budget_cut_short_says_how_far_it_got():
    """A budget spent on start-up left a model of one step that the run reported as done."""
    from argparse import Namespace
    cut = train.budget_cut(Namespace(time_budget=0.01), {"steps": 1.0, "loss": 0.8}, 45)
    assert cut == ", stopped by the 0.01-minute --time-budget after 1 step of 45"
    assert train.budget_cut(Namespace(time_budget=5), {"steps": 45.0}, 45) == ""
    assert train.budget_cut(Namespace(time_budget=None), {"steps": 3.0}, 45) == ""


def write_frames(data, seed, count=4, side=96):
    """A data folder of `count` frames whose pixels follow their label (a bead square and a
    cell bar), plus noise of the seed."""
    rng = np.random.default_rng(seed)
    for sub in ("src", "label"):
        (data / sub).mkdir(parents=True)
    (data / "classes.txt").write_text("background\nbead\ncell\n")
    for i in range(count):
        label = np.zeros((side, side), np.uint8)
        label[10:30, 10 + 5 * i:30 + 5 * i] = 1
        label[50:70, 20:80] = 2
        image = (label * 80 + rng.integers(0, 60, label.shape)).astype(np.uint8)
        cv2.imwrite(str(data / "src" / f"f{i}.png"), image)
        cv2.imwrite(str(data / "label" / f"f{i}.png"), label)


def test_held_out_frames_unlike_those_the_patches_came_from_are_refused(tmp_path):
    """The faint-object filter is calibrated on the held-out frames read again from
    --data-dir after training: frames of the same names of another data set (or edited since
    gen_img_aug.py) would fit the model's threshold to frames its patches never came from."""
    import gen_img_aug
    import pre_processing
    write_frames(tmp_path / "data", 0)
    write_frames(tmp_path / "other", 1)
    work = tmp_path / "work"
    gen_img_aug.main(["--data-dir", str(tmp_path / "data"), "--work-dir", str(work),
                      "--num-patches", "40", "--patch-size", "64", "--workers", "1"])
    pre_processing.main(["--work-dir", str(work), "--workers", "1"])
    argv = ["--work-dir", str(work), "--weights", "none", "--epochs", "1",
            "--steps-per-epoch", "1", "--val-steps", "1", "--bn-batches", "0",
            "--swa-epochs", "0", "--precision", "fp32", "--verbose", "0"]
    with pytest.raises(train.PipelineError, match=r"held-out frame f\d in .*other is not the "
                                                  r"one gen_img_aug.py cut the patches from"):
        train.main(["--data-dir", str(tmp_path / "other"), *argv])
    assert not (work / "weights").exists()
    # The data folder the patches came from, saved again losslessly, is the same frames.
    for path in (tmp_path / "data" / "src").glob("*.png"):
        cv2.imwrite(str(path.with_suffix(".tif")), cv2.imread(str(path), cv2.IMREAD_UNCHANGED))
        path.unlink()
    train.main(["--data-dir", str(tmp_path / "data"), *argv])
    assert json.loads((work / "weights" / "config.json").read_text())["faint_filter"]["frames"]
