"""Reading the user's files and settings, option types, and running a script's main()."""
import argparse
import errno
import json
import math
import os
import shlex
import sys
import unicodedata
from contextlib import contextmanager
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


def numbered_names(path, what="name list"):
    """(line number, name) of each non-blank line, stripped."""
    return [(number, line.strip()) for number, line
            in enumerate(read_text(path, what).splitlines(), 1) if line.strip()]


def read_name_list(path, what="name list"):
    return [name for _, name in numbered_names(path, what)]


# Label value of pixels left out of training's loss and metrics and of prediction's scores
# ("unsure" regions); never a class, so a label holds at most 255 classes.
IGNORE_LABEL = 255


# Class names become parts of file names (<image>_prob_<class>.png) and of iou.csv's header
# (iou_<class>, joined with commas): no character Windows refuses in a file name (macOS and Linux
# refuse "/" alone), and no comma.
UNSAFE_NAME_CHARS = '/\\:*?"<>|,'


def control_character(name):
    """The first character of name that no line of a list or table can hold, or None."""
    # Cc: control characters (tab, NUL, newline); Zl, Zp: the other line breaks text splits at.
    return next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)


def class_name_problem(name):
    """Why name cannot be a class name (a phrase to follow the name), or None."""
    control = control_character(name)
    unsafe = next((c for c in name if c in UNSAFE_NAME_CHARS), None)
    if control:
        return f"holds the control character {control!r}, which no file name or line can hold"
    if unsafe == ",":
        return "holds a comma, which would split the columns of iou.csv"
    if unsafe:
        return (f"holds {unsafe!r}, which a file name cannot hold "
                + ("anywhere" if unsafe == "/" else "on Windows"))
    if not name.strip():
        return "is blank"
    if name != name.strip():
        return "starts or ends with a space, which classes.txt drops when it is read"
    if not name.strip("."):
        return "is only dots, which reads as a folder ('.' or '..'), not a name"
    return None


def nfc(name):
    """A name in Unicode's composed form: macOS writes file names decomposed (an a and a
    combining diaeresis for an umlaut), so names typed, listed or copied between machines
    match only so."""
    return unicodedata.normalize("NFC", name)


def case_clash(names):
    """(i, j), i < j, of the first two names that are one file name on macOS and Windows
    (the same but for case), or None."""
    first = {}
    for j, name in enumerate(names):
        key = nfc(name).casefold()
        if key in first:
            return first[key], j
        first[key] = j
    return None


def with_new_classes(classes, new):
    """classes with the names of `new` ({name: where it came from, for the message})
    appended, after checking that none differs from another only in case and that the list
    fits a uint8 label beside IGNORE_LABEL."""
    grown = classes + list(new)
    clash = case_clash(grown)
    if clash:      # classes.txt passed read_classes: the second of the two is a new name
        first, name = (grown[i] for i in clash)
        raise PipelineError(f"{new[name]}: label {name!r} differs from {first!r} only in case: "
                            "one file name on macOS and Windows; use one spelling")
    if len(grown) > IGNORE_LABEL:
        raise PipelineError(f"{len(grown)} classes do not fit in a uint8 label with "
                            f"{IGNORE_LABEL} kept for ignored pixels")
    return grown


def read_classes(data_dir):
    path = Path(data_dir) / "classes.txt"
    if not path.is_file():
        raise PipelineError(f"{path} not found: it must list the class names, one per line, "
                            "background first")
    numbered = numbered_names(path, "class list")
    names = [name for _, name in numbered]
    if len(names) < 2:
        raise PipelineError(f"{path} lists {len(names)} class(es); at least background and one "
                            "object class are needed")
    for number, name in numbered:
        problem = class_name_problem(name)
        if problem:
            raise PipelineError(f"{path} line {number}: class name {name!r} {problem}; rename it")
    clash = case_clash(names)
    if clash:
        (line_a, a), (line_b, b) = (numbered[i] for i in clash)
        if a == b:
            raise PipelineError(f"{path} lists class {a!r} twice (lines {line_a} and {line_b}); "
                                "each line must be a new class")
        raise PipelineError(f"{path} lists {a!r} (line {line_a}) and {b!r} (line {line_b}), "
                            "which differ only in case: one file name on macOS and Windows; "
                            "rename one")
    if len(names) > IGNORE_LABEL:
        raise PipelineError(f"{path} lists {len(names)} classes; a uint8 label holds "
                            f"{IGNORE_LABEL} at most ({IGNORE_LABEL} marks pixels to ignore)")
    return names


def some_names(names, shown=3):
    """The first few names, comma-separated, with ', ...' where more follow."""
    names = list(names)
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")


def command_line():
    """The command that runs this script, as a shell would take it back."""
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])


def refuse_options_beside_merge(parser, args, used=("merge", "output", "data_dir", "work_dir")):
    """--merge joins shard folders as their runs made them: any other option the user set
    would be dropped unsaid (an --overlap or --min-area that changes nothing), so it is an
    error that names it. The folder options every script takes are let through."""
    refuse_options_beside(parser, args, "--merge joins the shards as their runs made them",
                          used, "options of the --shard I/N runs")


def refuse_options_beside(parser, args, why, used, what="options it does not use"):
    """One usage error naming the options the user set beyond `used` (argparse dests), which
    a mode of a script (`why` says which) would drop unsaid."""
    given = []
    for action in parser._actions:
        if (action.option_strings and action.dest not in used
                and action.default is not argparse.SUPPRESS
                and getattr(args, action.dest) != action.default):
            negated = getattr(args, action.dest) is False and len(action.option_strings) > 1
            given.append(action.option_strings[1 if negated else 0])
    if given:
        parser.error(f"{why}; leave out {', '.join(given)} ({what})")


def count_of(count, noun, plural=None):
    """'1 image', '2 images': a count with its noun, plural where it is not one (plural for
    nouns that take more than an s: count_of(n, "patch", "patches"))."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def agreeing(count, one, many):
    """The word that agrees with a count: agreeing(n, "has", "have") after count_of(n, ...)."""
    return one if count == 1 else many


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
        raise PipelineError(f"{what} {path} does not exist"
                            + (f": {hint}" if hint else unexpanded_pattern(path)))
    return path


def unexpanded_pattern(path):
    """The hint for a missing path that holds a file name pattern: a shell passes one on as
    written where nothing matches it (bash matches case: *.tif finds no X.TIF), and none is
    expanded where it was quoted or no shell reads it (Windows, a batch file)."""
    if not any(c in str(path) for c in "*?["):
        return ""
    return ": it holds a file name pattern that nothing matched or no shell expanded (quoted?)"


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


def held_out_count(fraction, count):
    """How many of count items scikit-learn's train_test_split(test_size=fraction) holds
    out: the fraction rounded up."""
    return math.ceil(fraction * count)


def check_split_written(work):
    """gen_img_aug.py writes split.json last: a work folder holding its output without it is
    an unfinished run, whose test/ and train/ may be of two different splits. (Patches made
    elsewhere, with no train/patches.csv and no test/, need none.)"""
    work = Path(work)
    marks = [p for p in (work / "train" / "patches.csv", work / "test") if p.exists()]
    if marks and not (work / "split.json").is_file():
        raise PipelineError(f"{work} holds output of gen_img_aug.py ({marks[0].relative_to(work)}) "
                            "but no split.json, which it writes last: its run did not finish "
                            "(interrupted, or still running); rerun gen_img_aug.py (then "
                            "pre_processing.py)")


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

UNPUBLISHED = "nothing of this run was published, and earlier results are as they were"


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C whose advice depends on how far the run had got (run_cli prints it)."""

    def __init__(self, advice):
        super().__init__(advice)
        self.advice = advice

# What the system refuses to a user's file or folder (permissions, a read-only or full disk):
# the user's to mend, so one line wherever it happens; any other OSError is a bug to show.
# EFBIG: a file size limit (ulimit -f, FAT32); ENAMETOOLONG: a name over 255 bytes;
# EISDIR, ENOTDIR: a folder where a file belongs, or the other way round.
_REFUSED_BY_THE_SYSTEM = {getattr(errno, name)
                          for name in ("EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT",
                                       "EFBIG", "ENAMETOOLONG", "EISDIR", "ENOTDIR")
                          if hasattr(errno, name)}      # Windows has no EDQUOT


class ReaderGoneProof:
    """An output stream that keeps the script working when the reader of its pipe goes away
    (`script | head`): what it writes after that is dropped, which is all the reader asked
    for. Python ignores SIGPIPE, so without this the first print after raised
    BrokenPipeError and stopped the work midway."""

    def __init__(self, stream):
        self._stream = stream
        # A locale whose encoding cannot hold a name (a class 'Zelle \u03b2' in LANG=C without
        # Python's UTF-8 mode, Windows' cp1252) escapes it, where print() raised after the work.
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")

    def write(self, text):
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop_the_rest()
            return len(text)

    def flush(self):
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop_the_rest()

    def _drop_the_rest(self):
        # The stream's own descriptor now leads to /dev/null, so its buffer and the flush at
        # exit go there too; a stream without one is replaced.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):       # io.UnsupportedOperation is both
            self._stream = open(os.devnull, "w")

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _expand_home(argv):
    """Options the shell did not expand ('--work-dir=~/w', "--work-dir '~/w'", a batch
    script's quotes) name the home folder, not a folder '~' in the current one."""
    def expand(arg):
        option, equals, value = arg.partition("=")
        if arg.startswith("--") and equals and value.startswith("~"):
            return option + "=" + os.path.expanduser(value)
        return os.path.expanduser(arg) if arg.startswith("~") else arg
    return [expand(arg) for arg in argv]


def _terminated(signum, frame):
    raise KeyboardInterrupt


def run_cli(main, interrupted=UNPUBLISHED):
    """Run a script's main(); report a PipelineError (or running out of memory, or Ctrl-C, or
    SIGTERM) as one line, exit status 2 (130 for Ctrl-C). interrupted: what a Ctrl-C leaves,
    as the script writes its outputs."""
    sys.argv[1:] = _expand_home(sys.argv[1:])
    with _sigterm_as_ctrl_c():
        _run_reporting(main, interrupted)


@contextmanager
def _sigterm_as_ctrl_c():
    """SIGTERM (kill, scancel, a batch job's time limit) stops a script as Ctrl-C does, with
    its line and its clean-up, where nothing else handles it; as before afterwards."""
    import signal
    import threading
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_reporting(main, interrupted):
    # None where the descriptor was closed at start (script >&-): print() then writes nothing
    sys.stdout, sys.stderr = (stream if stream is None or isinstance(stream, ReaderGoneProof)
                              else ReaderGoneProof(stream) for stream in (sys.stdout, sys.stderr))
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except MemoryError:
        print("error: out of memory; use smaller images, patches or batches, or a machine with "
              "more memory (nothing of this run was published)", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as stop:
        print(f"interrupted; {getattr(stop, 'advice', interrupted)}", file=sys.stderr)
        sys.exit(130)
    except OSError as err:
        if err.errno not in _REFUSED_BY_THE_SYSTEM:
            raise
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot use{where}: {err.strerror}", file=sys.stderr)
        sys.exit(2)
