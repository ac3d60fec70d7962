"""Reading the user's files and settings, option types, and running a script's main()."""
import argparse
import json
import math
from pathlib import Path

WORK_DIR = "augmented_75k"     # --work-dir default in every script, the original's name


class PipelineError(Exception):
    """A problem with the user's input, reported without a traceback."""


# ---------------------------------------------------------------- reading text and settings

def read_text(path, what="file"):
    """A text file's content: UTF-8 with or without BOM, or UTF-16 with BOM (Windows editors)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise PipelineError(f"{what} {path} is a folder, not a file") from None
    except OSError as err:
        raise PipelineError(f"cannot read {what} {path}: {err.strerror}") from None
    try:
        if data.startswith((b"\xff\xfe", b"\xfe\xff")):
            return data.decode("utf-16")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise PipelineError(f"{what} {path} is not UTF-8 text; save it as UTF-8") from None


def read_json(path, what="file"):
    """A JSON file's content, or one line saying why it cannot be read."""
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as err:
        raise PipelineError(f"{what} {path} is not valid JSON (line {err.lineno}: {err.msg}); "
                            "fix it or write it anew") from None


def read_name_list(path, what="name list"):
    return [line.strip() for line in read_text(path, what).splitlines() if line.strip()]


# Label value of pixels left out of training's loss and metrics and of prediction's scores
# ("unsure" regions); never a class, so a label holds at most 255 classes.
IGNORE_LABEL = 255


def read_classes(data_dir):
    path = Path(data_dir) / "classes.txt"
    if not path.is_file():
        raise PipelineError(f"{path} not found: it must list the class names, one per line, "
                            "background first")
    names = read_name_list(path, "class list")
    if len(names) < 2:
        raise PipelineError(f"{path} lists {len(names)} class(es); at least background and one "
                            "object class are needed")
    if len(set(names)) != len(names):
        raise PipelineError(f"{path} lists a class name twice; each line must be a new class")
    if len(names) > IGNORE_LABEL:
        raise PipelineError(f"{path} lists {len(names)} classes; a uint8 label holds "
                            f"{IGNORE_LABEL} at most ({IGNORE_LABEL} marks pixels to ignore)")
    return names


def refuse_file(path, what):
    """One line when a path meant for a folder names a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PipelineError(f"{what} {path} is a file, not a folder; choose another path")
    return path


def existing_folder(path, what, hint=""):
    """A folder the script reads from; one line when it is missing or a file."""
    path = refuse_file(path, what)
    if not path.is_dir():
        raise PipelineError(f"{what} {path} does not exist" + (f": {hint}" if hint else ""))
    return path


def finite_numbers(values, where, positive=False):
    """The values as floats, all finite (and > 0 with positive), or one line naming where."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise PipelineError(f"{where} must be numbers, got {values!r}") from None
    if not all(math.isfinite(v) and (v > 0 or not positive) for v in numbers):
        raise PipelineError(f"{where} must be finite{' and positive' if positive else ''} "
                            f"numbers, got {values!r}; the file is damaged: write it anew")
    return numbers


# ---------------------------------------------------------------- option types

def _parsed(text, cast, kind):
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None


def finite_float(text):
    value = _parsed(text, float, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value


def positive_float(text):
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def non_negative_float(text):
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def positive_int(text):
    value = _parsed(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not positive")
    return value


def non_negative_int(text):
    value = _parsed(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def seed_value(text):
    """A random seed as numpy, TensorFlow and scikit-learn all take it: 0 .. 2**32 - 1."""
    value = _parsed(text, int, "a whole number")
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"{text} is not a seed: 0 to {2 ** 32 - 1}")
    return value


def fraction_below_one(text):
    value = finite_float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1)")
    return value


# ---------------------------------------------------------------- running

def run_cli(main):
    """Run a script's main(); report a PipelineError (or running out of memory, or Ctrl-C) as
    one line, exit status 2 (130 for Ctrl-C)."""
    import sys
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except MemoryError:
        print("error: out of memory; use smaller images, patches or batches, or a machine with "
              "more memory (nothing of this run was published)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; nothing of this run was published (training resumes when rerun)",
              file=sys.stderr)
        sys.exit(130)
