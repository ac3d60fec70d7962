"""What labelme_to_label.py records of the labels it draws (data/labelme_to_label.json): each
label file's sha256 and the classes it was drawn with, so that a rerun replaces its own labels
only and gen_img_aug.py can tell a label whose classes moved in classes.txt since."""
import json
from pathlib import Path

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


def check_drawn_classes(record, label_path, values, classes, classes_path):
    """Refuse a label labelme_to_label.py drew, its file as written (read_record), whose values
    meant classes that classes_path now lists at other indices: a class moved in classes.txt
    after the conversion (the list reordered, a class put before it) would be learnt as
    another. A class no longer listed was renamed or removed, which cannot be told apart: the
    (value, name drawn, name now) of each are returned, for a note."""
    entry = record.get(label_path.name, {})
    drawn = entry.get("classes")
    if not isinstance(drawn, list):
        return set()
    moved = [(int(v), drawn[v]) for v in values if v < len(drawn) and drawn[v] in classes
             and classes.index(drawn[v]) != v]
    renamed = {(int(v), drawn[v], classes[v]) for v in values
               if v < min(len(drawn), len(classes)) and drawn[v] not in classes}
    if not (moved or renamed) or not drawn_as_recorded(record, label_path):
        return set()
    if not moved:
        return renamed
    value, name = moved[0]
    now = f", and class {value} as {classes[value]!r}" if value < len(classes) else ""
    raise PipelineError(f"label {label_path} was drawn by labelme_to_label.py with {name!r} as "
                        f"class {value}, but {classes_path} now lists {name!r} as class "
                        f"{classes.index(name)}{now}: its pixels would be learnt as another "
                        "class; run labelme_to_label.py again to redraw the labels with the "
                        "classes as listed now, or restore the order of the classes")
