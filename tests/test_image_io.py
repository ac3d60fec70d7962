"""image_io.py: the intensity rule for images that are not 8-bit, and labels as indices."""
import contextlib
import os
import re
import signal

import cv2
import numpy as np
import pytest
from PIL import Image

from image_io import (DEFAULT_INTENSITY, find_label, intensity_from_tokens, list_images,
                      read_image, read_label, to_uint8)
from cli import PipelineError


def ramp(h=40, w=50, dtype=np.uint16, scale=16):
    """A grey ramp 0..255 scaled as a 12-bit camera stores it in 16 bits."""
    base = np.linspace(0, 255, h * w).reshape(h, w)
    return (base * scale).astype(dtype), np.rint(base).astype(np.uint8)


def test_8_bit_images_are_used_as_stored():
    img = np.random.default_rng(0).integers(0, 256, (9, 7), dtype=np.uint8)
    for rule in ({"rule": "full"}, {"rule": "fixed", "low": 10.0, "high": 20.0}, DEFAULT_INTENSITY):
        assert to_uint8(img, rule, "x") is img


def test_a_hot_pixel_does_not_flatten_a_16_bit_frame():
    img, img8 = ramp()
    img[3, 4] = 65535
    default = to_uint8(img, DEFAULT_INTENSITY, "x")
    full = to_uint8(img, {"rule": "full"}, "x")
    assert len(np.unique(full)) <= 18            # min..max: the frame collapses to 17 + 1
    assert len(np.unique(default)) >= 200         # 0.1..99.9 percentile: it keeps its levels
    # Away from the hot pixel the frame is its 8-bit self, stretched by at most the clipping.
    keep = np.ones(img.shape, bool)
    keep[3, 4] = False
    assert np.corrcoef(default[keep].astype(float), img8[keep].astype(float))[0, 1] > 0.999


def test_negative_floats_map_monotonically_without_wrapping():
    values = np.linspace(-0.4, 0.4, 1000, dtype=np.float32).reshape(20, 50)
    out = to_uint8(values, DEFAULT_INTENSITY, "x").ravel()
    assert np.all(np.diff(out.astype(int)) >= 0)
    assert out[0] == 0 and out[-1] == 255


def test_fixed_range_clips_and_scales():
    img = np.array([[0, 1000, 2047.5, 4095, 5000]], np.float64)
    out = to_uint8(img, {"rule": "fixed", "low": 0.0, "high": 4095.0}, "x")
    assert out.tolist() == [[0, 62, 128, 255, 255]]


def test_nan_and_inf_pixels_are_named_and_counted():
    img = np.ones((5, 5), np.float32)
    img[1, 1], img[2, 2] = np.nan, np.inf
    with pytest.raises(PipelineError, match=r"frame.tif has 2 NaN or infinite"):
        to_uint8(img, DEFAULT_INTENSITY, "image frame.tif")


def test_constant_and_almost_constant_frames():
    assert not to_uint8(np.full((4, 4), 300, np.uint16), DEFAULT_INTENSITY, "x").any()
    sparse = np.zeros((100, 100), np.uint16)
    sparse[0, :5] = 1000        # 0.05 % of the pixels: the percentiles are both 0
    out = to_uint8(sparse, DEFAULT_INTENSITY, "x")
    assert out[0, 0] == 255 and out[50, 50] == 0


@pytest.mark.parametrize("tokens, message", [
    (["percentile", "5"], "two numbers"), (["fixed", "10", "2"], "LO < HI"),
    (["bogus"], "not 'bogus'"), (["full", "1"], "no numbers"),
    (["percentile", "-1", "50"], "0..100"), (["fixed", "0", "nan"], "finite")])
def test_bad_rules_are_refused(tokens, message):
    with pytest.raises(ValueError, match=message):
        intensity_from_tokens(tokens)


def test_tiff_16_bit_and_float_read_through_the_rule(tmp_path):
    img, _ = ramp()
    cv2.imwrite(str(tmp_path / "a.tif"), img)
    cv2.imwrite(str(tmp_path / "b.tif"), img.astype(np.float32) / 4096 - 0.5)
    a, b = read_image(tmp_path / "a.tif"), read_image(tmp_path / "b.tif")
    assert a.dtype == np.uint8 and np.array_equal(a, b)


def test_palette_label_is_read_as_indices(tmp_path):
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    pal = Image.fromarray(indices, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    pal.save(tmp_path / "l.png")
    assert np.array_equal(read_label(tmp_path / "l.png"), indices)


def test_pickled_npy_label_is_one_clear_error(tmp_path):
    np.save(tmp_path / "l.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PipelineError, match="Python objects"):
        read_label(tmp_path / "l.npy")


def test_find_label_takes_tiff_and_names_a_lossy_or_second_label(tmp_path):
    label = np.zeros((4, 5), np.uint8)
    for name in ("a.tif", "b.tiff", "c.png", "d.png", "d.tif", "h.TIF", "i.PNG"):
        cv2.imwrite(str(tmp_path / name), label)
    np.save(tmp_path / "e.npy", label)
    cv2.imwrite(str(tmp_path / "f.jpg"), label)
    for name, file in (("a", "a.tif"), ("b", "b.tiff"), ("c", "c.png"), ("e", "e.npy"),
                       ("h", "h.TIF"), ("i", "i.PNG")):
        assert find_label(tmp_path, name) == tmp_path / file
    assert find_label(tmp_path, "g") is None
    with pytest.raises(PipelineError, match=r"d has 2 labels in .*: d.png, d.tif; keep one"):
        find_label(tmp_path, "d")
    with pytest.raises(PipelineError, match=r"found .*f.jpg; labels must be lossless: .png, "
                                            r".tif or .npy"):
        find_label(tmp_path, "f")
    (tmp_path / "m.png").mkdir()
    (tmp_path / "n.png").symlink_to("nothere.png")
    for name, kind in (("m", "a folder"), ("n", "a broken symbolic link")):
        with pytest.raises(PipelineError, match=rf"label .*{name}.png is not a regular file "
                                                rf"\({kind}\)"):
            find_label(tmp_path, name)
    cv2.imwrite(str(tmp_path / "k.bmp"), label)      # saved from Paint: named, not passed over
    with pytest.raises(PipelineError, match=r"found .*k.bmp, a label of a kind not read"):
        find_label(tmp_path, "k")


def saved_with_orientation(path, pixels, orientation, **options):
    """pixels (uint8) saved by PIL with an EXIF Orientation tag."""
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif.tobytes(), **options)


def test_images_and_labels_are_read_turned_as_their_exif_orientation_shows_them(tmp_path):
    from PIL import ImageOps
    from image_io import decode_image, read_raw_image
    stored = np.random.default_rng(0).integers(0, 256, (6, 9, 3), dtype=np.uint8)
    label = np.zeros((6, 9), np.uint8)
    label[0, :2] = 1                       # a corner that every turn moves elsewhere
    for orientation in range(1, 9):
        image_path = tmp_path / f"i{orientation}.png"
        label_path = tmp_path / f"l{orientation}.png"
        saved_with_orientation(image_path, stored, orientation)
        saved_with_orientation(label_path, label, orientation)
        with Image.open(image_path) as img:
            shown = np.array(ImageOps.exif_transpose(img))
        with Image.open(label_path) as img:
            shown_label = np.array(ImageOps.exif_transpose(img))
        assert np.array_equal(read_raw_image(image_path), shown), orientation
        assert np.array_equal(decode_image(image_path.read_bytes(), "x", raw=True), shown)
        assert np.array_equal(read_label(label_path), shown_label), orientation
    # cv2 turns a JPEG as viewers do when asked for colour: the pipeline's read agrees.
    saved_with_orientation(tmp_path / "j.jpg", stored, 6, quality=100)
    viewer = cv2.cvtColor(cv2.imread(str(tmp_path / "j.jpg"), cv2.IMREAD_COLOR),
                          cv2.COLOR_BGR2RGB)
    assert read_raw_image(tmp_path / "j.jpg").shape == (9, 6, 3)
    assert np.array_equal(read_raw_image(tmp_path / "j.jpg"), viewer)


def test_a_tiffs_orientation_tag_is_left_alone(tmp_path):
    stored = np.arange(12, dtype=np.uint8).reshape(3, 4)
    saved_with_orientation(tmp_path / "t.tif", stored, 3, description="Exif")  # a marker too
    with Image.open(tmp_path / "t.tif") as img:
        assert img.getexif().get(0x0112) == 3      # the tag is there, and not used
    assert np.array_equal(read_image(tmp_path / "t.tif"), stored)
    from image_io import exif_orientation
    assert exif_orientation((tmp_path / "t.tif").read_bytes()) == 1


def test_a_1_bit_png_label_reads_as_0_and_1_and_an_image_as_0_and_255(tmp_path):
    from image_io import read_raw_image
    mask = np.zeros((5, 7), bool)
    mask[1:3, 2:6] = True
    Image.fromarray(mask).save(tmp_path / "m.png")      # PIL writes mode 1: one bit a pixel
    assert np.array_equal(read_label(tmp_path / "m.png"), mask.astype(np.uint8))
    assert np.array_equal(read_raw_image(tmp_path / "m.png"), mask.astype(np.uint8) * 255)


def test_a_grey_alpha_label_reads_as_its_grey_turned_as_shown_and_colour_is_refused(tmp_path):
    from PIL import ImageOps
    grey = np.zeros((4, 6), np.uint8)
    grey[0, :2], grey[3, 5] = 1, 2
    pixels = np.dstack([grey, np.where(grey > 0, 255, 128).astype(np.uint8)])
    saved = Image.fromarray(pixels, mode="LA")          # as GIMP exports grey with alpha
    exif = saved.getexif()
    exif[0x0112] = 6
    saved.save(tmp_path / "ga.png", exif=exif.tobytes())
    with Image.open(tmp_path / "ga.png") as img:
        assert img.mode == "LA"
        shown = np.array(ImageOps.exif_transpose(img))[:, :, 0]
    assert shown.shape == (6, 4)
    assert np.array_equal(read_label(tmp_path / "ga.png"), shown)
    for channels, mode in ((3, "RGB"), (4, "RGBA")):
        Image.fromarray(np.repeat(grey[:, :, None], channels, 2), mode).save(tmp_path / "c.png")
        with pytest.raises(PipelineError, match=f"c.png has {channels} channels; a label must"):
            read_label(tmp_path / "c.png")


def test_an_image_name_holding_a_line_break_is_refused(tmp_path):
    from image_io import list_images
    cv2.imwrite(str(tmp_path / "a\nb.png"), np.zeros((4, 5), np.uint8))
    with pytest.raises(PipelineError, match=r"image file name 'a\\nb.png' .* holds the control "
                                            r"character '\\n'; rename the file"):
        list_images(tmp_path)


def make_entry(path, kind):
    """An entry named like an image that is no image file to read."""
    if kind == "a FIFO":
        os.mkfifo(path)
    elif kind == "a folder":
        path.mkdir()
    elif kind == "a broken symbolic link":
        path.symlink_to(path.parent / "gone.png")
    else:
        path.symlink_to(path)                   # a link that leads to itself


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and symbolic links of POSIX")
@pytest.mark.parametrize("kind", ["a FIFO", "a folder", "a broken symbolic link",
                                  "a symbolic link in a loop"])
@pytest.mark.parametrize("name", ["b.png", "b.tif"])
def test_an_image_entry_that_is_no_regular_file_is_refused_when_listed(tmp_path, kind, name):
    """Read, a FIFO would hang the run and the others stop it after the frames before them
    were predicted; listed, they are refused before any is read (a FIFO by its mode alone)."""
    from image_io import list_images
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 5), np.uint8))
    (tmp_path / "c.png").symlink_to(tmp_path / "a.png")    # a link to a file is an image
    assert list(list_images(tmp_path)) == ["a", "c"]
    make_entry(tmp_path / name, kind)
    given = [] if kind == "a folder" else [tmp_path / name]   # given itself, a folder is read
    refusal = rf"^{name} in {re.escape(str(tmp_path))} is not a regular file \({kind}\); images"
    for src in (tmp_path, *given):
        with pytest.raises(PipelineError, match=refusal), within_seconds(10):
            list_images(src)


@contextlib.contextmanager
def within_seconds(seconds):
    """Fail where the block waits longer, as reading a FIFO waits for a writer: a test that
    hung would never report."""
    def interrupt(signum, frame):
        raise TimeoutError(f"still waiting after {seconds} s")
    before = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def test_find_label_takes_a_suffix_in_any_case_and_a_file_of_two_names_once(tmp_path):
    import os
    label = np.zeros((4, 5), np.uint8)
    for name in ("i0.Png", "j.tIf", "l.png", "m.Jpeg"):
        cv2.imwrite(str(tmp_path / name), label)
    with open(tmp_path / "k.npY", "wb") as file:     # np.save would add .npy to a path
        np.save(file, label)
    os.link(tmp_path / "l.png", tmp_path / "l.PNG")     # one file, two names
    for name, file in (("i0", "i0.Png"), ("j", "j.tIf"), ("k", "k.npY")):
        assert find_label(tmp_path, name) == tmp_path / file
    assert find_label(tmp_path, "l") in (tmp_path / "l.png", tmp_path / "l.PNG")
    assert find_label(tmp_path, "I0") is None           # the name itself keeps its case
    with pytest.raises(PipelineError, match=r"found .*m.Jpeg; labels must be lossless"):
        find_label(tmp_path, "m")


@pytest.mark.parametrize("image_form, label_form", [("NFD", "NFC"), ("NFC", "NFD")])
def test_find_label_pairs_names_in_either_unicode_form(tmp_path, image_form, label_form):
    import unicodedata
    label_name = unicodedata.normalize(label_form, "zelle_\u00e40") + ".png"
    cv2.imwrite(str(tmp_path / label_name), np.zeros((4, 5), np.uint8))
    found = find_label(tmp_path, unicodedata.normalize(image_form, "zelle_\u00e40"))
    assert found == tmp_path / label_name                 # the file's own spelling
    assert read_label(found).shape == (4, 5)


def test_find_label_lists_a_folder_once_and_sees_the_files_made_after(tmp_path, monkeypatch):
    import os
    import image_io
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 5), np.uint8))
    past = os.stat(tmp_path).st_mtime_ns - 10 * 10**9
    os.utime(tmp_path, ns=(past, past))                 # a folder left as it was for a while
    listings = []
    real_scandir = os.scandir
    monkeypatch.setattr(image_io.os, "scandir", lambda d: listings.append(d) or real_scandir(d))
    for _ in range(20):
        assert find_label(tmp_path, "a") == tmp_path / "a.png"
        assert find_label(tmp_path, "b") is None
    assert len(listings) == 1
    # suffixes in a case only the listing finds, not the probes of a.png, a.PNG
    cv2.imwrite(str(tmp_path / "b.Png"), np.zeros((4, 5), np.uint8))
    assert find_label(tmp_path, "b") == tmp_path / "b.Png"
    # A folder changed just now is listed again, even where the change left its mtime as it
    # was (a file made in the same tick of a coarse clock).
    now = os.stat(tmp_path).st_mtime_ns
    assert find_label(tmp_path, "c") is None
    cv2.imwrite(str(tmp_path / "c.Tif"), np.zeros((4, 5), np.uint8))
    os.utime(tmp_path, ns=(now, now))
    assert find_label(tmp_path, "c") == tmp_path / "c.Tif"


def test_find_label_in_a_folder_it_may_enter_but_not_list(tmp_path, monkeypatch):
    import image_io
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 5), np.uint8))

    def refused(folder):
        raise PermissionError(13, "Permission denied", str(folder))
    monkeypatch.setattr(image_io.os, "scandir", refused)
    assert find_label(tmp_path, "a") == tmp_path / "a.png"
    assert find_label(tmp_path, "b") is None
    assert find_label(tmp_path / "none", "a") is None


def png_with_text(path, key, text, **options):
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    (info.add_itxt if key.startswith("XML") else info.add_text)(key, text, **options)
    Image.fromarray(np.arange(24, dtype=np.uint8).reshape(4, 6)).save(path, pnginfo=info)


def test_exif_in_an_imagemagick_text_chunk_turns_and_xmp_alone_does_not(tmp_path):
    """As LabelMe shows them (PIL's _getexif): EXIF that ImageMagick wrote into a compressed
    PNG text chunk counts; an XMP tiff:Orientation without EXIF does not."""
    from image_io import read_raw_image
    exif = Image.Exif()
    exif[0x0112] = 6
    raw = exif.tobytes()
    png_with_text(tmp_path / "r.png", "Raw profile type exif",
                  f"\nexif\n{len(raw):8d}\n{raw.hex()}\n", zip=True)
    png_with_text(tmp_path / "x.png", "XML:com.adobe.xmp",
                  '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/'
                  '1999/02/22-rdf-syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/'
                  'tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>')
    for name, shape in (("r.png", (6, 4)), ("x.png", (4, 6))):
        with Image.open(tmp_path / name) as img:
            labelme_turns = (img._getexif() or {}).get(0x0112, 1) != 1
        assert labelme_turns == (shape == (6, 4))
        assert read_raw_image(tmp_path / name).shape == shape, name


def test_a_camera_jpeg_larger_than_pils_bomb_limit_is_read_and_turned(tmp_path):
    """PIL refuses files of more than twice its MAX_IMAGE_PIXELS; a slide is the user's own."""
    from PIL import Image as PILImage
    from image_io import read_raw_image
    saved_with_orientation(tmp_path / "big.jpg", np.zeros((2, 3, 3), np.uint8), 8)
    limit = PILImage.MAX_IMAGE_PIXELS
    try:
        PILImage.MAX_IMAGE_PIXELS = 2      # a 6-pixel frame is then a bomb to PIL
        assert read_raw_image(tmp_path / "big.jpg").shape == (3, 2, 3)
    finally:
        PILImage.MAX_IMAGE_PIXELS = limit


def test_two_images_whose_names_differ_only_in_unicode_form_are_named(tmp_path):
    import unicodedata
    from image_io import list_images
    for form in ("NFC", "NFD"):
        cv2.imwrite(str(tmp_path / (unicodedata.normalize(form, "zelle_\u00e4") + ".png")),
                    np.zeros((4, 5), np.uint8))
    with pytest.raises(PipelineError, match="differ only in how their accented letters"):
        list_images(tmp_path)


def test_a_label_drawn_on_a_turned_images_stored_pixels_is_told_why_it_does_not_fit(tmp_path):
    from image_io import check_label_size, read_raw_image
    saved_with_orientation(tmp_path / "p.jpg", np.zeros((20, 30, 3), np.uint8), 6)
    stored_size_label = np.zeros((20, 30), np.uint8)
    shape = read_raw_image(tmp_path / "p.jpg").shape
    with pytest.raises(PipelineError, match=r"is 30x20 but its image .*p\.jpg is 20x30 as shown: "
                                            r"its EXIF Orientation tag turns it"):
        check_label_size(stored_size_label, "p.png", shape, tmp_path / "p.jpg")
    check_label_size(stored_size_label.T, "p.png", shape, tmp_path / "p.jpg")
    saved_with_orientation(tmp_path / "q.png", np.zeros((20, 30, 3), np.uint8), 1)
    with pytest.raises(PipelineError, match=r"is 20x30 but its image .*q\.png is 30x20$"):
        check_label_size(stored_size_label.T, "q.png", (20, 30), tmp_path / "q.png")


def write_png(path, shape, depth, colour_type, rows):
    """A PNG written chunk by chunk, for the kinds neither cv2 nor PIL writes. rows: the
    filtered scanlines' bytes (filter byte 0 before each)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", shape[1], shape[0], depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def grey_png_of_depth(path, values, depth):
    """A grey PNG of `depth` bits a pixel (1, 2 or 4)."""
    per_byte = 8 // depth
    rows = b""
    for row in values:
        padded = list(row) + [0] * (-len(row) % per_byte)
        rows += b"\0" + bytes(sum(int(v) << (8 - depth * (k + 1)) for k, v in
                                  enumerate(padded[i:i + per_byte]))
                              for i in range(0, len(padded), per_byte))
    write_png(path, values.shape, depth, 0, rows)


@pytest.mark.parametrize("depth, top", [(1, 1), (2, 3), (4, 15)])
def test_a_grey_png_label_of_fewer_bits_reads_as_its_values(tmp_path, depth, top):
    values = np.array([[0, 1, top, 0, 1], [top, 0, 0, 1, top]], np.uint8)
    grey_png_of_depth(tmp_path / "l.png", values, depth)
    assert cv2.imread(str(tmp_path / "l.png"), cv2.IMREAD_UNCHANGED).max() == 255  # stretched
    assert np.array_equal(read_label(tmp_path / "l.png"), values)


def test_a_label_of_jpeg_data_is_refused_whatever_its_name(tmp_path):
    label = np.zeros((16, 16), np.uint8)
    label[4:12, 4:12] = 2
    ok, data = cv2.imencode(".jpg", label)
    (tmp_path / "l.png").write_bytes(data.tobytes())
    with pytest.raises(PipelineError, match=r"l\.png holds JPEG data .* labels must be lossless"):
        read_label(tmp_path / "l.png")


@pytest.mark.parametrize("name, data, said", [
    ("stack.png", "tiff", "stack.png holds TIFF data whatever its name says; rename it stack.tif"),
    ("pic.tif", "png", "pic.tif holds PNG data whatever its name says; rename it pic.png")])
def test_an_image_whose_suffix_lies_about_its_format_is_refused_naming_its_name(
        tmp_path, name, data, said):
    """cv2 decodes a TIFF named .png by its bytes, but only its first plane: a stack would be
    read as one frame, its other planes dropped without a word."""
    import tifffile
    planes = np.stack([ramp(dtype=np.uint8, scale=1)[0]] * 2)
    if data == "tiff":
        tifffile.imwrite(tmp_path / name, planes)
    else:
        cv2.imwrite(str(tmp_path / "x.png"), planes[0])
        os.rename(tmp_path / "x.png", tmp_path / name)
    with pytest.raises(PipelineError, match=re.escape(said)):
        list_images(tmp_path)


def test_a_16_bit_grey_alpha_png_label_reads_as_its_grey(tmp_path):
    # PIL reads this kind as 8-bit RGBA (the high bytes, all 0 here) and cv2 as four 16-bit
    # channels; the label is the grey one.
    grey = np.array([[0, 1, 2, 1, 0], [3, 0, 0, 2, 1]], np.uint16)
    alpha = np.where(grey > 0, 65535, 0).astype(np.uint16)
    samples = np.dstack([grey, alpha]).astype(">u2")
    write_png(tmp_path / "ga16.png", grey.shape, 16, 4,
              b"".join(b"\0" + row.tobytes() for row in samples))
    assert cv2.imread(str(tmp_path / "ga16.png"), cv2.IMREAD_UNCHANGED).shape == (2, 5, 4)
    assert np.array_equal(read_label(tmp_path / "ga16.png"), grey)


def test_a_missing_image_is_not_called_a_folder(tmp_path):
    with pytest.raises(PipelineError, match=r"^image \S*gone\.png does not exist"):
        list_images(tmp_path / "gone.png")
    with pytest.raises(PipelineError, match=r"^image folder \S*gone does not exist"):
        list_images(tmp_path / "gone")


def damaged(encoded, at):
    data = bytearray(encoded.tobytes())
    data[at:at + 3] = bytes([data[at] ^ 0xFF, 0xFF, 0xD0])
    return bytes(data)


def test_a_damaged_png_or_jpeg_is_one_error_naming_the_file_and_what_its_decoder_said(
        tmp_path, capfd):
    img = np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8)
    png, jpeg = (cv2.imencode(ext, img)[1] for ext in (".png", ".jpg"))
    # A flipped byte in the compressed pixels: libpng's check fails; libjpeg decodes on,
    # making up what follows.
    (tmp_path / "a.png").write_bytes(damaged(png, len(png) // 2))
    (tmp_path / "b.jpg").write_bytes(damaged(jpeg, len(jpeg) // 2))
    (tmp_path / "c.png").write_bytes(damaged(png, len(png) // 2))
    for name, said in (("a.png", "libpng error"), ("b.jpg", "Corrupt JPEG data")):
        with pytest.raises(PipelineError, match=rf"cannot read image .*{name}: .*\({said}"):
            read_image(tmp_path / name)
    with pytest.raises(PipelineError, match=r"cannot read label .*c.png: .*\(libpng error"):
        read_label(tmp_path / "c.png")
    assert capfd.readouterr().err == ""


def test_native_lines_not_kept_reach_stderr_as_they_came(capfd):
    from native_messages import caught_native_stderr
    with caught_native_stderr(lambda line: line.startswith("libpng")) as kept:
        os.write(2, b"libpng error: bad\nsomething else\n")
    assert kept == ["libpng error: bad"]
    assert capfd.readouterr().err == "something else\n"


def test_a_bmp_cut_short_is_one_error_without_opencvs_log_line(tmp_path, capfd):
    img = np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8)
    data = cv2.imencode(".bmp", img)[1].tobytes()
    (tmp_path / "a.bmp").write_bytes(data[:len(data) * 6 // 10])
    with pytest.raises(PipelineError, match=r"cannot read image .*a.bmp: empty, truncated"):
        read_image(tmp_path / "a.bmp")
    assert capfd.readouterr().err == ""


def test_a_grey_alpha_png_image_is_grey_as_a_grey_alpha_tiff_is(tmp_path):
    """cv2 gave it as four channels: a colour frame, which a grey-only check let through."""
    from image_io import read_raw_image
    grey = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), mode="LA").save(
        tmp_path / "ga.png")
    img = read_raw_image(tmp_path / "ga.png")
    assert img.ndim == 2
    np.testing.assert_array_equal(img, grey)


@pytest.mark.parametrize("data_as, named", [("tif", "png"), ("png", "tif")])
def test_a_label_whose_name_hides_its_format_is_refused(data_as, named, tmp_path):
    """A two-page TIFF label named .png read as its first page, its other page unsaid."""
    import tifffile
    label = np.zeros((2, 20, 30), np.uint8)
    label[1, 5:10, 5:10] = 1
    held = tmp_path / f"held.{data_as}"
    if data_as == "tif":
        tifffile.imwrite(held, label, photometric="minisblack")
    else:
        cv2.imwrite(str(held), label[1])
    held.rename(tmp_path / f"x.{named}")
    kind = {"tif": "TIFF", "png": "PNG"}[data_as]
    with pytest.raises(PipelineError, match=f"holds {kind} data whatever its name says; "
                                            f"rename it x.{data_as}"):
        read_label(tmp_path / f"x.{named}")


def test_one_picture_stored_otherwise_has_one_picture_digest():
    from image_io import picture_digest
    frame = np.random.default_rng(0).integers(3, 250, (30, 40), dtype=np.uint8)
    same = [frame.astype(np.uint16), frame.astype(np.uint16) * 257, np.dstack([frame] * 3)]
    assert all(picture_digest(copy) == picture_digest(frame) for copy in same)
    other = frame.copy()
    other[0, 0] += 1
    assert picture_digest(other) != picture_digest(frame)
    assert picture_digest(frame.T) != picture_digest(frame)
    assert picture_digest(frame + 2) != picture_digest(frame)      # planes as the light fades
