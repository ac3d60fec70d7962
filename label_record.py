"""What labelme_to_label.py records of the labels it draws (data/labelme_to_label.json): each
label file's sha256 and the classes it was drawn with, so that a rerun replaces its own labels
only and gen_img_aug.py can tell a label whose classes moved in classes.txt since."""
import json
import shlex
from pathlib import Path

import numpy as np

from cli import PipelineError
from outputs import sha256_of

RECORD = "labelme_to_label.json"


def read_record(data_dir):
    """{label file name: {"sha256": digest, "classes": class names it was drawn with}} of the
    labels labelme_to_label.py wrote into <data_dir>/label; a label written before the classes were
    recorded has its digest alone."""
    try:
        record = json.loads((Path(data_dir) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    return {name: {"sha256": entry} if isinstance(entry, str) else entry
            for name, entry in record.items() if isinstance(entry, (str, dict))}


def drawn_as_recorded(record, label_path):
    """Whether label_path is, byte for byte, a label labelme_to_label.py wrote (read_record)."""
    digest = record.get(label_path.name, {}).get("sha256")
    return digest is not None and digest == sha256_of(label_path)


# The labelme_to_label.py option that reads each kind of file a label is drawn from.
SOURCE_OPTIONS = {"json": "--input", "mask": "--instances"}


def redraw_command(record, data_dir, classes):
    """labelme_to_label.py on every folder whose files drew a label still in <data_dir>/label
    with other classes than these (read_record), with the options that drew it: a plain rerun
    reads data/labelme alone, so corrections converted from another folder (README, "Correct
    and retrain") kept their old class numbers. A folder that also holds a file of the name
    another folder's label was drawn from (a frame corrected in a second folder) runs before
    that folder, which is run too: the other way round, a correction was drawn over."""
    runs = {}   # the run's options -> [its folder, names of the files it drew, any label stale]
    for name, entry in sorted(record.items()):
        if not (Path(data_dir) / "label" / name).exists():
            continue
        options = entry.get("options")
        for kind, option in SOURCE_OPTIONS.items():
            if isinstance(entry.get(kind), str):       # relative to the data folder, or absolute
                source = Path(data_dir) / entry[kind]
                drew = runs.setdefault(shlex.join([option, str(source.parent), *(
                    options if isinstance(options, list) else [])]), [source.parent, set(), False])
                drew[1].add(source.name)
                drew[2] = drew[2] or entry.get("classes") != classes

    def draws_over(first, then):    # whether run `first` redraws a label `then` drew last
        folder = runs[first][0]
        return folder != runs[then][0] and any((folder / n).exists() for n in runs[then][1])

    chosen = [run for run, (_, _, stale) in runs.items() if stale]
    for run in chosen:              # the list grows as it is read
        chosen += [other for other in runs if other not in chosen and draws_over(run, other)]
    ordered = []
    while chosen:                   # in a cycle, no order keeps every label: the first
        run = next((r for r in chosen if not any(draws_over(o, r) for o in chosen if o != r)),
                   chosen[0])
        ordered.append(run)
        chosen.remove(run)
    command = f"labelme_to_label.py --data-dir {shlex.quote(str(data_dir))}"
    return " ".join([command, *ordered[:1]]) + "".join(f", then with {r}" for r in ordered[1:])


def moved_classes(values, before, classes):
    """(value, name) of each of the values that meant a class of the list `before` which
    `classes` lists at another index: pixels that would be learnt as another class."""
    return [(int(v), before[v]) for v in values if v < len(before) and before[v] in classes
            and classes.index(before[v]) != v]


def moved_class(value, name, classes, classes_path):
    """How a class moved (moved_classes) reads in a refusal."""
    now = f", and class {value} as {classes[value]!r}" if value < len(classes) else ""
    return (f"{classes_path} now lists {name!r} as class {classes.index(name)}{now}: its pixels "
            "would be learnt as another class")


def check_drawn_classes(record, label_path, label, classes, classes_path, data_dir):
    """Refuse a label labelme_to_label.py drew, its file as written (read_record), whose values
    meant classes that classes_path now lists at other indices, or no longer lists beyond its
    end: a class moved in classes.txt after the conversion (the list reordered, a class put
    before it) would be learnt as another, and a class removed would be called a value the
    label should not hold. A class no longer listed at a value still listed was renamed or
    removed, which cannot be told apart: the (value, name drawn, name now) of each are
    returned, for a note, with the classes appended since, which the label cannot hold."""
    entry = record.get(label_path.name, {})
    drawn = entry.get("classes")
    if not isinstance(drawn, list) or drawn == classes:
        return set(), []
    values = np.unique(label)
    moved = moved_classes(values, drawn, classes)
    renamed = {(int(v), drawn[v], classes[v]) for v in values
               if v < min(len(drawn), len(classes)) and drawn[v] not in classes}
    removed = [(int(v), drawn[v]) for v in values if len(classes) <= v < len(drawn)]
    added = [name for name in classes[len(drawn):] if name not in drawn]
    if not (moved or renamed or removed or added) or not drawn_as_recorded(record, label_path):
        return set(), []
    if moved:
        value, name = moved[0]
        raise PipelineError(f"label {label_path} was drawn by labelme_to_label.py with {name!r} "
                            f"as class {value}, but "
                            f"{moved_class(value, name, classes, classes_path)}; rerun "
                            f"{redraw_command(record, data_dir, classes)}, to redraw the labels "
                            "with the classes as listed now, or restore the order of the classes")
    if removed:
        value, name = removed[0]
        # An instance mask has no shapes to delete, and --instances takes no --ignore-labels.
        fix = ("convert its masks again with --instance-class naming a class listed now, or "
               "move the label away" if isinstance(entry.get("mask"), str) else
               f"delete its shapes and rerun {redraw_command(record, data_dir, classes)} (with "
               f"{name} among its --ignore-labels, its shapes are left out of training instead)")
        raise PipelineError(f"label {label_path} was drawn by labelme_to_label.py with {name!r} "
                            f"as class {value}, which {classes_path} no longer lists (it lists "
                            f"{len(classes)} classes): list it again, or {fix}")
    return renamed, added
