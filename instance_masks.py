"""Instance masks as the pipeline's class-index labels (labelme_to_label.py --instances).

An instance mask numbers the objects of a frame one by one (0 background, 1..N the objects),
as StarDist, Cellpose and most crowded-scene data sets ship them. The pipeline segments
classes, so every object becomes a pixel of one class; objects that touch become one region
of that class, as the network learns and predicts them.
"""
from pathlib import Path

import numpy as np

from cli import PipelineError, class_name_problem, nfc, read_classes, some_names
from image_io import (LABEL_EXTS, LOSSY_EXTS, check_label_size, frame_stem, list_images,
                      read_instance_mask, read_raw_image)

# Cellpose saves the masks of <image>.png as <image>_masks.png (<image>_cp_masks.png from its
# GUI); other tools write <image>_mask.png.
MASK_SUFFIXES = ("_cp_masks", "_masks", "_mask")


def mask_files(folder):
    """The mask files directly in folder (hidden ones left out), sorted by name."""
    folder = Path(folder)
    try:
        files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    except OSError as err:
        raise PipelineError(f"cannot list {folder}: {err.strerror or err}") from None
    lossy = [p.name for p in files if p.suffix.lower() in LOSSY_EXTS]
    if lossy:
        raise PipelineError(f"{folder} holds JPEG masks ({some_names(lossy)}): JPEG changes the "
                            "object numbers along every edge; export them as PNG or TIFF")
    masks = [p for p in files if p.suffix.lower() in LABEL_EXTS]
    if not masks:
        raise PipelineError(f"no masks (.png, .tif, .npy) in {folder}")
    return masks


def frame_of(mask_path, frames):
    """The frame a mask belongs to: its own name, or its name less a MASK_SUFFIXES ending;
    None where no frame of frames bears either."""
    stem = nfc(frame_stem(Path(mask_path).name))
    if stem in frames:
        return stem
    for suffix in MASK_SUFFIXES:
        if stem.lower().endswith(suffix) and stem[:-len(suffix)] in frames:
            return stem[:-len(suffix)]
    return None


def masks_of_frames(folder, src_dir):
    """{frame name: (its source in src_dir, its mask file)} for every mask in folder, each
    matched to a frame of src_dir, and no frame given two masks."""
    frames = list_images(src_dir)
    if not frames:
        raise PipelineError(f"no images found in {src_dir}: put the images the masks belong to "
                            "there first")
    matched, unmatched = {}, []
    for path in mask_files(folder):
        frame = frame_of(path, frames)
        if frame is None:
            unmatched.append(path.name)
        elif frame in matched:
            raise PipelineError(f"{matched[frame][1].name} and {path.name} in {folder} are both "
                                f"masks of {frame}; keep one")
        else:
            matched[frame] = (frames[frame], path)
    if unmatched:
        raise PipelineError(f"{len(unmatched)} mask(s) in {folder} belong to no image in "
                            f"{src_dir} ({some_names(unmatched)}): name each mask as its image "
                            f"(or with {' or '.join(MASK_SUFFIXES)} added to the image's name)")
    return matched


def instance_class(data_dir, name, add_unknown):
    """(the class names, the index of the class the objects become, whether that name is
    added to classes.txt). Without a name, the one object class classes.txt lists."""
    classes_path = Path(data_dir) / "classes.txt"
    classes = read_classes(data_dir) if classes_path.is_file() or not add_unknown \
        else ["background"]
    if name is None:
        if len(classes) == 2:
            return classes, 1, False
        listed = (f"{len(classes) - 1} object classes ({', '.join(classes[1:])})"
                  if classes_path.is_file() else "no classes")
        raise PipelineError(f"{classes_path} lists {listed}; name the class of the masks' "
                            "objects with --instance-class")
    name = nfc(name)
    if name == classes[0]:
        raise PipelineError(f"--instance-class {name!r} is class 0, the background, in "
                            f"{classes_path}; name the class of the objects")
    if name in classes:
        return classes, classes.index(name), False
    problem = class_name_problem(name)
    if problem:
        raise PipelineError(f"--instance-class {name!r} {problem}")
    if not add_unknown:
        raise PipelineError(f"--instance-class {name!r} is not in {classes_path} (known classes: "
                            f"{', '.join(classes)}); add it there or use --add-unknown-classes")
    return classes + [name], len(classes), True


def class_label(mask_path, source, class_index):
    """The class-index label of an instance mask: every object pixel class_index. Also the
    number of objects it numbers."""
    mask = read_instance_mask(mask_path)
    check_label_size(mask, mask_path, read_raw_image(source).shape[:2], source)
    objects = np.unique(mask)
    return np.where(mask > 0, class_index, 0).astype(np.uint8), int((objects > 0).sum())
