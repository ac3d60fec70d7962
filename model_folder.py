"""The trained model folder: config.json checked field by field, a model file chosen by name,
verified against the sha256 that training recorded, and loaded."""
import math
import os
from pathlib import Path

from image_io import COLOR_MODES, DEFAULT_INTENSITY, check_intensity
from outputs import sha256_of
from cli import PipelineError, case_clash, class_name_problem, count_of, read_json
from geometry import ORIENTATIONS, check_scale
from patch_preprocessing import check_preprocessing

# How a pixel's class is decided: the most probable class, or the original's rule for a
# model trained on raw logits (--lovasz-on logits).
ARGMAX, SIGMOID_RULE = DECISIONS = ("argmax", "sigmoid>0.51")


def aside_folder(model_dir):
    """Where training's --restart moves the earlier model folder until the new run's first
    checkpoint."""
    model_dir = Path(model_dir)
    return model_dir.with_name(f"{model_dir.name}.previous")


def aside_hint(model_dir):
    """Where the model a --restart replaces still lies, if one does: a prediction between a
    --restart and its first checkpoint (or after a restart stopped before one) finds no
    model in the folder, and the one it ran with until then is in <model-dir>.previous."""
    aside = aside_folder(model_dir)
    if not (aside / "config.json").is_file():
        return ""
    return (f"; the model trained there before a --restart is in {aside} until the new "
            f"run's first checkpoint (--model-dir {aside} predicts with it)")


def read_config(model_dir, option="--model-dir"):
    """The model folder's config.json, checked field by field; `option` names where the
    folder came from."""
    path = Path(model_dir) / "config.json"
    if Path(model_dir).is_file():
        raise PipelineError(f"{option} {model_dir} is a file; give the model folder that holds "
                            f"config.json and the weights ({Path(model_dir).parent})")
    if not path.is_file():
        inside = Path(model_dir) / "weights" / "config.json"
        hint = f" ({inside.parent} holds one)" if inside.is_file() else ""
        raise PipelineError(f"{path} not found: train a model first, or point {option} at "
                            f"a model folder{hint}{aside_hint(model_dir)}")
    config = read_json(path, "model config")
    if not isinstance(config, dict):
        raise PipelineError(f"{path} is not a model config written by training")
    missing = [k for k in ("classes", "patch_size", "color_mode", "preprocessing", "decision",
                           "weights_files") if k not in config]
    if missing:
        raise PipelineError(f"{path} lacks {', '.join(missing)}; was it written by training?")
    classes, size = config["classes"], config["patch_size"]
    if not (isinstance(classes, list) and len(classes) >= 2
            and all(isinstance(c, str) for c in classes)):
        raise PipelineError(f"{path}: 'classes' must list at least two class names")
    # The names make file names (<name>_prob_<class>.png) and columns, as classes.txt's do.
    for name in classes:
        problem = class_name_problem(name)
        if problem:
            raise PipelineError(f"{path}: class name {name!r} {problem}; rename it")
    clash = case_clash(classes)
    if clash:
        a, b = (classes[i] for i in clash)
        raise PipelineError(f"{path}: 'classes' lists {a!r} twice" if a == b else
                            f"{path}: class names {a!r} and {b!r} are one file name on macOS "
                            "and Windows (the same but for case); rename one")
    if not (isinstance(size, list) and len(size) == 2
            and all(isinstance(v, int) and v > 0 for v in size)):
        raise PipelineError(f"{path}: 'patch_size' must be [height, width] in pixels")
    if config["decision"] not in DECISIONS:
        raise PipelineError(f"{path}: unknown decision {config['decision']!r}; expected one of "
                            f"{DECISIONS}")
    if config["color_mode"] not in COLOR_MODES:
        raise PipelineError(f"{path}: unknown color_mode {config['color_mode']!r}")
    check_preprocessing(config["preprocessing"], f"{path}: preprocessing")
    check_file_names(config["weights_files"], config.get("sha256", {}), path)
    # Models trained before the rule was recorded read non-8-bit images by today's default.
    config["intensity"] = check_intensity(config.get("intensity", DEFAULT_INTENSITY), path)
    config["orientations"] = check_orientations(config.get("orientations", "all"), path)
    # Models trained before --scale worked at the frames' own resolution.
    config["scale"] = check_scale(config.get("scale", 1.0), path)
    config["page"] = check_page(config.get("page"), path)
    # Models trained before the faint-object filter keep every object.
    config["faint_filter"] = check_faint_filter(config.get("faint_filter"), path)
    # Models trained before the digests were recorded know their frames by name alone.
    config["train_image_digests"] = check_train_image_digests(
        config.get("train_image_digests"), path)
    return config


def check_file_names(weights_files, hashes, where):
    """weights_files names the best (and swa) model file, sha256 maps file names to digests:
    both objects of strings, as training writes them."""
    if not _strings(weights_files) or "best" not in weights_files:
        raise PipelineError(f"{where}: 'weights_files' must map 'best' (and 'swa') to the "
                            f"model files' names; got {weights_files!r}")
    if not _strings(hashes):
        raise PipelineError(f"{where}: 'sha256' must map model file names to their sha256; "
                            f"got {hashes!r}")


def check_train_image_digests(value, where):
    """The training frames' image digests ({frame: sha256 hex}) training recorded, or None
    where it recorded none."""
    if value is not None and not _strings(value):
        raise PipelineError(f"{where}: 'train_image_digests' must map frame names to their "
                            f"images' pixel digests, or be null; got {value!r}")
    return value


def _strings(value):
    """Whether value is an object of strings, as training writes its maps of names."""
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str)
                                           for k, v in value.items())


def check_faint_filter(value, where):
    """A recorded faint-object calibration (faint_objects.calibrate), validated; None where
    training recorded none."""
    if value is None:
        return None
    threshold = value["threshold"] if isinstance(value, dict) and "threshold" in value \
        else "missing"
    if threshold is not None and not _texture(threshold):
        raise PipelineError(f"{where}: 'faint_filter' must record a 'threshold' that is a "
                            f"texture of 0 or more, or null; got {threshold!r}")
    return value


def _texture(value):
    """Whether value is a usable texture threshold: a finite number of 0 or more."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value)) and value >= 0
    except OverflowError:
        return False


def check_orientations(value, where):
    """A recorded --orientations of gen_img_aug.py, validated; "all" where none was recorded
    (patches made before the option were always turned)."""
    if not isinstance(value, str) or value not in ORIENTATIONS:
        raise PipelineError(f"{where}: 'orientations' must be one of {', '.join(ORIENTATIONS)}, "
                            f"not {value!r}")
    return value


def check_page(value, where):
    """A recorded --page of gen_img_aug.py (the plane of each stack trained on), validated;
    None where every plane was a frame, as before the option."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                              or value < 0):
        raise PipelineError(f"{where}: 'page' must be a plane number from 0, or null; "
                            f"got {value!r}")
    return value


def model_file(model_dir, config, choice):
    """Path of the model file that --weights names."""
    model_dir = Path(model_dir)
    if choice in ("best", "swa"):
        hint = missing_model_hint(model_dir, config, choice)
        if choice not in config["weights_files"]:
            raise PipelineError(f"--weights {choice}: {model_dir / 'config.json'} names no "
                                f"{choice} model{hint}")
        path = model_dir / config["weights_files"][choice]
        if not path.is_file():
            raise PipelineError(f"--weights {choice}: {path} not found{hint}")
        return path
    if choice == "last":
        snapshots = snapshot_files(model_dir / "snapshots")
        if not snapshots:
            raise PipelineError(f"--weights last: no snapshots in {model_dir / 'snapshots'}"
                                f"{missing_model_hint(model_dir, config, choice)}")
        return snapshots[-1]
    for path in (model_dir / choice, Path(choice)):
        if path.is_file():
            return path
    raise PipelineError(f"--weights {choice}: not best, swa, last or an existing model file "
                        f"(looked in {model_dir} and the current folder)")


def missing_model_hint(model_dir, config, choice):
    """Why a model file --weights names is missing, as far as the model folder tells: an
    unfinished training has not written it yet (the SWA model comes last), a finished one
    with --swa-epochs 0 never writes the SWA model."""
    progress = unfinished_training(model_dir, config)
    if progress is not None:
        return (f" (its training has not finished: {progress}; rerun the training command "
                f"to finish it{aside_hint(model_dir)})")
    if choice != "swa":
        return ""
    settings = config.get("settings")
    if not isinstance(settings, dict) or "swa_epochs" not in settings:
        return " (trained with --swa-epochs 0?)"     # a config.json that does not say
    if settings["swa_epochs"] == 0:
        return " (trained with --swa-epochs 0, as config.json's settings record)"
    return " (training wrote it: moved or deleted since?)"


def unfinished_training(model_dir, config):
    """How far a model folder's training got where it has not finished (interrupted), such
    as '1 of 3 epochs done'; None where it finished (config.json records its result, which
    training writes last) or config.json was not written by training."""
    settings = config.get("settings")
    if not isinstance(settings, dict) or "result" in config:
        return None
    path = Path(model_dir) / "state.json"
    try:    # written at each epoch's end: none before the first
        state = read_json(path, "training state") if path.is_file() else {}
    except PipelineError:
        state = {}
    done = state.get("epochs_done") if isinstance(state, dict) else None
    if not isinstance(done, int) or done < 1:
        return "no epoch done yet"
    if state.get("finished"):     # the epochs ran; the SWA model and calibration did not
        return f"{count_of(done, 'epoch')} done, not the steps after them"
    planned = settings.get("epochs")
    return (f"{done} of {count_of(planned, 'epoch')} done" if isinstance(planned, int)
            else f"{count_of(done, 'epoch')} done")


def snapshot_files(folder):
    """The snapshots epoch_NNN.* in a folder in epoch order, not name order: the numbers have
    three digits up to epoch 999 and more after, and by name epoch_1000 came before epoch_999,
    so the newest snapshot was taken for the oldest (deleted as one, left out of SWA, passed
    over by --weights last)."""
    def epoch(path):
        number = path.stem[len("epoch_"):]
        return (int(number) if number.isdigit() else -1, path.name)
    return sorted(Path(folder).glob("epoch_*.*"), key=epoch)


# What a model file's inputs and outputs mean: models that differ in any of these cannot be
# averaged, nor one of them run with the other's config.json.
RECIPE_KEYS = ("classes", "patch_size", "color_mode", "preprocessing", "decision", "scale",
               "orientations", "intensity")


def own_model_folder(path):
    """(folder, config) of the model folder training saved a model file in (its folder, or
    the one above for snapshots/), known by its config.json recording the file's sha256;
    (None, None) where there is none."""
    path = Path(os.path.abspath(path))
    folder = path.parent.parent if path.parent.name == "snapshots" else path.parent
    try:
        config = read_config(folder)
    except PipelineError:       # no config.json there, or one that is no model's
        return None, None
    if path.relative_to(folder).as_posix() not in config.get("sha256", {}):
        return None, None
    return folder, config


def check_same_recipe(path, model_dir, config):
    """Refuse a model file from another model folder whose config.json says its inputs or
    classes differ from those of model_dir (the preprocessing and decision applied to it)."""
    folder, other = own_model_folder(path)
    if folder is None or folder == Path(os.path.abspath(model_dir)):
        return
    differ = [k for k in RECIPE_KEYS if other.get(k) != config.get(k)]
    if differ:
        key = differ[0]
        raise PipelineError(f"{path} comes from {folder}, whose config.json differs from "
                            f"{Path(model_dir) / 'config.json'} in {', '.join(differ)} "
                            f"({other.get(key)!r} against {config.get(key)!r}): its outputs "
                            "cannot be read or averaged as this model's")


def verify_model_file(path, model_dir, config, unchecked=" (--no-verify loads it anyway)"):
    """Refuse a model file whose sha256 is not the one training recorded in config.json, and
    return that sha256 (None for a file outside any model folder, not checked); `unchecked`
    says how to load it all the same, where the script can."""
    try:   # abspath, not resolve: a model file linked into the folder is the folder's file
        name = Path(os.path.abspath(path)).relative_to(os.path.abspath(model_dir)).as_posix()
    except ValueError:
        # A file of another model folder (an ensemble's second seed): its own config.json
        # recorded its sha256.
        folder, own = own_model_folder(path)
        if folder is None:
            print(f"note: {path} lies outside the model folder; its integrity is not checked")
            return None
        return verify_model_file(path, folder, own, unchecked)
    expected = config.get("sha256", {}).get(name)
    if expected is None:
        raise PipelineError(f"{path}: config.json records no sha256 for {name} (trained by an "
                            f"older version, or not written by training){unchecked}")
    if sha256_of(path) != expected:
        raise PipelineError(f"{path} is not the file training saved (its sha256 differs from "
                            f"{Path(model_dir) / 'config.json'}'s): it is damaged or was "
                            f"replaced; train again{unchecked}")
    return expected


def load_model(path):
    import absl.logging
    import keras
    import lovasz_losses_tf  # noqa: F401  (registers the losses a saved model may name)
    import model  # also registers NormalizedSGD and FusedBatchNormalization
    absl.logging.set_verbosity(absl.logging.ERROR)
    try:
        net = keras.saving.load_model(path, compile=False)
    except Exception as err:     # h5py, Keras and zipfile each raise their own types
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PipelineError(f"cannot load model {path}: {first_line}") from None
    # A model saved before the fused layer existed computes as it did, in the faster kernel.
    return model.with_fused_batchnorm(net)
