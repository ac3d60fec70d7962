"""Images and labels as the pipeline reads and writes them: one intensity rule for every image
that is not 8-bit, palette labels read as their indices, one clear error for a bad file."""
from pathlib import Path

import cv2
import numpy as np

from outputs import atomic_write_bytes
from seg_common import PipelineError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
LABEL_EXTS = (".png", ".npy")
COLOR_MODES = ("grey", "rgb")

# ---------------------------------------------------------------- intensity rule
#
# 8-bit images are used exactly as stored (the paper). Every other image (16-bit, 32-bit,
# float) is mapped to 0..255 by one rule, the same in augmentation, prediction and contours:
#   percentile LO HI  (default 0.1 99.9) the LO..HI percentile range of the frame's own pixels
#                     -> 0..255, values outside clipped. 0.1/99.9 rather than cellpose's 1/99
#                     or csbdeep's 3/99.8: sparse objects (2 % of a bbbc030 frame is cells,
#                     beads far less) must keep their range, while the few hot or dead pixels
#                     of a camera (< 0.1 %) no longer decide the scale.
#   full              the frame's minimum..maximum -> 0..255 (one hot pixel flattens it).
#   fixed LO HI       LO..HI -> 0..255 for every frame, clipped (e.g. 0 4095 for 12-bit data).
# A frame whose range is empty (constant) becomes 0. NaN or infinite pixels are an error.
DEFAULT_INTENSITY = {"rule": "percentile", "low": 0.1, "high": 99.9}
INTENSITY_RULES = ("percentile", "full", "fixed")


def intensity_from_tokens(tokens):
    """The rule dict from --intensity's words: full | percentile LO HI | fixed LO HI."""
    rule, numbers = tokens[0], tokens[1:]
    usage = "--intensity takes full, percentile LO HI or fixed LO HI"
    if rule not in INTENSITY_RULES:
        raise ValueError(f"{usage}, not {rule!r}")
    if rule == "full":
        if numbers:
            raise ValueError(f"{usage}; full takes no numbers")
        return {"rule": "full"}
    if len(numbers) != 2:
        raise ValueError(f"{usage}; {rule} needs two numbers")
    try:
        low, high = (float(n) for n in numbers)
    except ValueError:
        raise ValueError(f"{usage}; {' '.join(numbers)!r} are not numbers") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise ValueError(f"--intensity {rule}: LO and HI must be finite with LO < HI")
    if rule == "percentile" and not 0 <= low < high <= 100:
        raise ValueError("--intensity percentile: LO and HI must lie in 0..100")
    return {"rule": rule, "low": low, "high": high}


def check_intensity(rule, where):
    """A recorded rule (from config.json or predict.json), validated."""
    if not isinstance(rule, dict) or rule.get("rule") not in INTENSITY_RULES:
        raise PipelineError(f"{where}: 'intensity' is not a valid rule ({rule!r})")
    tokens = [rule["rule"]] + ([str(rule.get("low")), str(rule.get("high"))]
                               if rule["rule"] != "full" else [])
    try:
        return intensity_from_tokens(tokens)
    except ValueError as err:
        raise PipelineError(f"{where}: {err}") from None


def add_intensity_option(group, default_text):
    group.add_argument("--intensity", nargs="+", metavar="RULE",
                       help="how images that are not 8-bit become 0..255: 'percentile LO HI' "
                            "(the LO..HI percentiles of each frame, clipped), 'full' (each "
                            "frame's min..max) or 'fixed LO HI' (the same range for every "
                            f"frame); 8-bit images are used as they are ({default_text})")


def parse_intensity(parser, tokens, default):
    if tokens is None:
        return default
    try:
        return intensity_from_tokens(tokens)
    except ValueError as err:
        parser.error(str(err))


def to_uint8(img, intensity, what):
    """Apply the intensity rule: uint8 stays as it is, anything else maps to 0..255."""
    if img.dtype == np.uint8:
        return img
    x = img.astype(np.float64)
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise PipelineError(f"{what} has {bad} NaN or infinite pixel(s); replace them with a "
                            "number (e.g. 0 or the background level) and run again")
    if intensity["rule"] == "fixed":
        low, high = intensity["low"], intensity["high"]
    elif intensity["rule"] == "percentile":
        low, high = np.percentile(x, (intensity["low"], intensity["high"]))
        if high <= low:    # a frame almost all one value: its few other pixels set the range
            low, high = x.min(), x.max()
    else:
        low, high = x.min(), x.max()
    if high <= low:
        return np.zeros(img.shape, np.uint8)
    return np.rint(np.clip((x - low) * (255.0 / (high - low)), 0, 255)).astype(np.uint8)


def describe_intensity(intensity):
    if intensity["rule"] == "full":
        return "full (each frame's min..max)"
    return f"{intensity['rule']} {intensity['low']:g} {intensity['high']:g}"


# ---------------------------------------------------------------- reading images

def list_images(src):
    """Map image name (file stem) to path for every image in a folder, sorted by name; a
    single image file gives itself. Hidden files are skipped."""
    src = Path(src)
    if src.is_file():
        if src.suffix.lower() not in IMAGE_EXTS:
            raise PipelineError(f"{src} is not an image file ({', '.join(IMAGE_EXTS)})")
        return {src.stem: src}
    if not src.is_dir():
        raise PipelineError(f"image folder {src} does not exist")
    found = {}
    for path in sorted(src.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTS:
            continue
        if path.stem in found:
            raise PipelineError(f"two images share the name {path.stem!r} in {src}: "
                                f"{found[path.stem].name} and {path.name}")
        found[path.stem] = path
    return found


def find_label(label_dir, name):
    for ext in LABEL_EXTS:
        path = Path(label_dir) / f"{name}{ext}"
        if path.is_file():
            return path
    return None


def read_raw_image(path):
    """The stored pixels of an image file, in their own type: HxW or HxWx3 RGB (alpha dropped)."""
    path = Path(path)
    pages = cv2.imcount(str(path)) if path.suffix.lower() in (".tif", ".tiff") else 1
    if pages > 1:
        raise PipelineError(f"{path} holds {pages} pages; give one frame per "
                            "file (split the stack, e.g. in Fiji: Image > Stacks > Stack to Images)")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise PipelineError(f"cannot read image {path}: empty, truncated or not an image file")
    return _channels_as_rgb(img, path)


def read_image(path, intensity=DEFAULT_INTENSITY):
    """An image file as the pipeline sees it: uint8, HxW (grey) or HxWx3 (RGB)."""
    return to_uint8(read_raw_image(path), intensity, f"image {path}")


def decode_image(data, what, intensity=DEFAULT_INTENSITY, raw=False):
    """Decode the bytes of an image file (PNG, JPEG, TIFF...) exactly as read_image reads files."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise PipelineError(f"{what} is not a readable image")
    img = _channels_as_rgb(img, what)
    return img if raw else to_uint8(img, intensity, what)


def _channels_as_rgb(img, what):
    if img.ndim == 3:
        if img.shape[2] == 1:
            return img[:, :, 0]
        if img.shape[2] == 4:
            return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        if img.shape[2] == 3:
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        raise PipelineError(f"{what} has {img.shape[2]} channels; grey, RGB or RGBA expected")
    return img


def to_color_mode(img, color_mode):
    """Convert an image to the pipeline's colour mode: 'grey' (HxW) or 'rgb' (HxWx3)."""
    if color_mode == "grey":
        return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    if color_mode == "rgb":
        return img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)
    raise ValueError(f"unknown colour mode {color_mode!r}; choose one of {COLOR_MODES}")


# ---------------------------------------------------------------- labels

def read_label(path):
    """A class-index label as uint8: PNG (palette PNGs, as LabelMe exports, give their
    indices), 8/16-bit grey, or a numeric .npy."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        label = _load_npy(path)
    else:
        label = _palette_indices(path)
        if label is None:
            label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if label is None:
            raise PipelineError(f"cannot read label {path}: empty, truncated or not an image file")
    if label.ndim == 3:
        raise PipelineError(f"label {path} has {label.shape[2]} channels; a label must hold one "
                            "class index per pixel (a grey or palette PNG)")
    if label.ndim != 2 or label.size == 0:
        raise PipelineError(f"label {path} is not a 2-D array of class indices")
    if not np.issubdtype(label.dtype, np.integer) and not np.issubdtype(label.dtype, np.bool_):
        if not np.all(np.isfinite(label)) or np.any(label != np.round(label)):
            raise PipelineError(f"label {path} holds values that are not whole numbers")
    if label.min() < 0 or label.max() > 255:
        raise PipelineError(f"label {path} holds values outside 0..255")
    return label.astype(np.uint8)


def _load_npy(path):
    try:
        return np.load(path, allow_pickle=False)
    except ValueError:
        raise PipelineError(f"label {path} holds Python objects, which are not loaded (they "
                            "could run code); save a numeric array, e.g. np.save(path, "
                            "label.astype(np.uint8))") from None
    except (OSError, EOFError) as err:
        raise PipelineError(f"cannot read label {path}: not a valid .npy file ({err})") from None


def _palette_indices(path):
    """A palette (mode P) PNG's indices; None for any other image."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            return np.array(img) if img.mode == "P" else None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None


def check_label_values(label, num_classes, path, classes_file):
    if label.max() >= num_classes:
        raise PipelineError(f"label {path} holds class {int(label.max())} but {classes_file} "
                            f"lists only {num_classes} classes (0..{num_classes - 1}); add the "
                            "missing class names there or fix the label")


# ---------------------------------------------------------------- writing

def encode_image(path, img):
    """PNG/TIFF bytes of an HxW or HxWx3 (RGB) image, by the path's suffix."""
    arr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    ok, buf = cv2.imencode(Path(path).suffix, arr)
    if not ok:
        raise PipelineError(f"cannot encode {path}")
    return buf.tobytes()


def write_image(path, img, atomic=True):
    """Write an HxW or HxWx3 (RGB) image (PNG is lossless).

    Atomic by default: readers never see half a file. Files inside a staging folder
    (outputs.staged_output) are published with the folder and skip the extra rename.
    """
    data = encode_image(path, img)
    if atomic:
        atomic_write_bytes(path, data)
        return
    try:
        Path(path).write_bytes(data)
    except OSError as err:
        raise PipelineError(f"cannot write {path}: {err.strerror}") from None


def lossless_suffix(img):
    """.png where PNG keeps every value (8 and 16 bit), else .tif (float, 32-bit)."""
    return ".png" if img.dtype in (np.uint8, np.uint16) else ".tif"

