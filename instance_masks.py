"""Instance masks as the pipeline's class-index labels (labelme_to_label.py --instances).

An instance mask numbers the objects of a frame one by one (0 background, 1..N the objects),
as StarDist, Cellpose and most crowded-scene data sets ship them. The pipeline segments
classes, so every object becomes a pixel of one class; objects that touch become one region
of that class, as the network learns and predicts them.
"""
from pathlib import Path

import cv2
import numpy as np

from cli import (PipelineError, agreeing, class_name_problem, count_of, nfc, read_classes,
                 some_names, with_new_classes)
from image_io import (IMAGE_EXTS, LABEL_EXTS, LOSSY_EXTS, StackPlane, check_label_size,
                      frame_stem, list_images, read_instance_mask, read_raw_image)

# Cellpose saves the masks of <image>.png as <image>_masks.png (<image>_cp_masks.png from its
# GUI); other tools write <image>_mask.png.
MASK_SUFFIXES = ("_cp_masks", "_masks", "_mask")
# Cellpose's GUI session file beside an image: outlines, flows and settings, not a mask.
SESSION_SUFFIX = "_seg.npy"


def mask_files(folder):
    """The mask files directly in folder (hidden ones left out), sorted by name. Cellpose
    keeps its images beside their <image>_masks files, and its GUI a <image>_seg.npy session
    each: in a folder of masks named so, the images without such an ending (those not
    segmented yet too) and the sessions are passed over, with a note."""
    folder = Path(folder)
    try:
        files = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_file())
    except OSError as err:
        raise PipelineError(f"cannot list {folder}: {err.strerror or err}") from None
    sessions = [p for p in files if p.name.lower().endswith(SESSION_SUFFIX)]
    suffixed = any(base_name(p) != nfc(frame_stem(p.name)) for p in files)
    images = [p for p in files if suffixed and p not in sessions
              and p.suffix.lower() in IMAGE_EXTS and base_name(p) == nfc(frame_stem(p.name))]
    if sessions or images:
        print(f"note: {folder} holds " + " and ".join(
            ([f"{count_of(len(images), 'image')} beside the masks"] if images else [])
            + ([f"{count_of(len(sessions), 'Cellpose session file')} (_seg.npy)"]
               if sessions else [])) + ", passed over")
    files = [p for p in files if p not in sessions and p not in images]
    lossy = [p.name for p in files if p.suffix.lower() in LOSSY_EXTS]
    if lossy:
        raise PipelineError(f"{folder} holds JPEG masks ({some_names(lossy)}): JPEG changes the "
                            "object numbers along every edge; export them as PNG or TIFF")
    masks = [p for p in files if p.suffix.lower() in LABEL_EXTS]
    if not masks:
        raise PipelineError(f"no masks (.png, .tif, .npy) in {folder}")
    return masks


def base_name(mask_path):
    """A mask file's name less its extension and any MASK_SUFFIXES ending."""
    stem = nfc(frame_stem(Path(mask_path).name))
    suffix = next((s for s in MASK_SUFFIXES if stem.lower().endswith(s)), "")
    return stem[:len(stem) - len(suffix)]


def frame_of(mask_path, frames):
    """The frame a mask belongs to: its own name, or its name less a MASK_SUFFIXES ending;
    None where no frame bears either. frames maps names in NFC to the frames' names as
    stored: macOS stores accents decomposed, most tools composed."""
    for name in (nfc(frame_stem(Path(mask_path).name)), base_name(mask_path)):
        if name in frames:
            return frames[name]
    return None


def masks_of_frames(folder, data_dir):
    """{frame name: (its source in data_dir/src, its mask file)} for every mask in folder,
    each matched to a frame, and no frame given two masks. folder is neither the image
    folder nor the label folder the labels are written to."""
    src_dir, label_dir = Path(data_dir) / "src", Path(data_dir) / "label"
    if Path(folder).resolve() == src_dir.resolve():
        raise PipelineError(f"--instances {folder} is the image folder: each image there would "
                            "be read as a mask; move the masks to a folder of their own")
    if label_dir.is_dir() and Path(folder).resolve() == label_dir.resolve():
        raise PipelineError(f"--instances {folder} is the label folder, where the labels are "
                            "written over the masks: move the masks to a folder of their own "
                            f"(such as {Path(data_dir) / 'instances'}) and give that")
    frames = list_images(src_dir)
    if not frames:
        raise PipelineError(f"no images found in {src_dir}: put the images the masks belong to "
                            "there first")
    matched, unmatched = {}, []
    by_nfc = {nfc(name): name for name in frames}
    for path in mask_files(folder):
        frame = frame_of(path, by_nfc)
        if frame is None:
            unmatched.append(path.name)
        elif frame in matched:
            raise PipelineError(f"{matched[frame][1].name} and {path.name} in {folder} are both "
                                f"masks of {frame}; keep one")
        else:
            matched[frame] = (frames[frame], path)
    planes = {}
    for name, source in frames.items():
        if isinstance(source, StackPlane):
            planes.setdefault(nfc(frame_stem(source.path.name)), []).append(name)
    of_stack = next((name for name in unmatched if base_name(name) in planes), None)
    if of_stack:
        names = planes[base_name(of_stack)]
        raise PipelineError(f"mask {of_stack} is named as a stack in {src_dir}, whose planes are "
                            f"frames of their own ({names[0]} ... {names[-1]}): give each plane "
                            f"a mask of its own, named as its frame; to train on one plane of "
                            f"each stack (gen_img_aug.py --page K), name the mask as that plane")
    if unmatched:
        raise PipelineError(f"{count_of(len(unmatched), 'mask')} in {folder} "
                            f"{agreeing(len(unmatched), 'belongs', 'belong')} to no image in "
                            f"{src_dir} ({some_names(unmatched)}): name each mask as its image "
                            f"(or with {' or '.join(MASK_SUFFIXES)} added to the image's name)")
    return matched


def instance_class(data_dir, name, add_unknown):
    """(the class names, the index of the class the objects become, whether that name is
    added to classes.txt). Without a name, the one object class classes.txt lists."""
    classes_path = Path(data_dir) / "classes.txt"
    if not classes_path.is_file() and not (name and add_unknown):
        raise PipelineError(f"{classes_path} not found: name the class of the masks' objects "
                            "with --instance-class NAME and add --add-unknown-classes to write "
                            "it (background, NAME), or write it yourself")
    classes = read_classes(data_dir) if classes_path.is_file() else ["background"]
    if name is None:
        if len(classes) == 2:
            return classes, 1, False
        raise PipelineError(f"{classes_path} lists {len(classes) - 1} object classes "
                            f"({', '.join(classes[1:])}); name the class of the masks' "
                            "objects with --instance-class")
    # As classes.txt spells it: accents stored decomposed (macOS) or composed look alike.
    name = {nfc(c): c for c in classes}.get(nfc(name), nfc(name))
    if name == classes[0]:
        raise PipelineError(f"--instance-class {name!r} is class 0, the background, in "
                            f"{classes_path}; name the class of the objects")
    if name in classes:
        return classes, classes.index(name), False
    problem = class_name_problem(name)
    if problem:
        raise PipelineError(f"--instance-class {name!r} {problem}")
    if not add_unknown:
        meant = [c for c in classes if c.casefold() == name.casefold()]
        raise PipelineError(f"--instance-class {name!r} is not in {classes_path} (known classes: "
                            f"{', '.join(classes)}); " + (f"did you mean {meant[0]!r}?" if meant
                            else "add it there or use --add-unknown-classes"))
    return with_new_classes(classes, {name: "--instance-class"}), len(classes), True


def class_label(mask_path, source, class_index):
    """The class-index label of an instance mask: every object pixel class_index. Also the
    number of objects it numbers."""
    mask, image = read_instance_mask(mask_path), read_raw_image(source)
    check_label_size(mask, mask_path, image.shape[:2], source)
    if np.array_equal(mask, image):
        raise PipelineError(f"{mask_path} holds the pixels of its image {source}, not its "
                            "objects' numbers: give --instances the folder of the masks")
    numbers = np.unique(mask)
    label = np.where(mask > 0, class_index, 0).astype(np.uint8)
    if (numbers > 0).sum() > 1:
        return label, int((numbers > 0).sum())
    # One number for every object: a binary mask, whose objects are its connected regions.
    return label, cv2.connectedComponents((mask > 0).astype(np.uint8), connectivity=8)[0] - 1
