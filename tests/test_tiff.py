"""Microscope TIFF through tifffile: pixel types, stacks as frames, colour layouts, pixel sizes,
and a stack carried from prediction to the object table in micrometres."""
import csv
import itertools
import json
import struct
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

import get_contour
import image_io
from image_io import (DEFAULT_INTENSITY, StackPlane, copy_frame, list_images, pixel_size_um,
                      pixel_sizes_um, read_image, read_label, read_raw_image,
                      tiff_pixels_as_shown, to_color_mode, to_uint8, write_tiff)
from cli import PipelineError
from whole_slide import open_tiff_rows


def ramp(h=40, w=50, dtype=np.uint16, scale=37):
    return ((np.arange(h * w).reshape(h, w) * scale) % 4001 + 100).astype(dtype)


def stack(planes, h=40, w=50):
    return np.stack([ramp(h, w, scale=7 + 3 * k) for k in range(planes)])


def test_16_bit_and_float_tiff_read_as_stored_then_through_the_rule(tmp_path):
    sixteen, floats = ramp(), ramp().astype(np.float32) / 4096 - 0.5
    tifffile.imwrite(tmp_path / "a.tif", sixteen)
    tifffile.imwrite(tmp_path / "b.tif", floats, compression="zlib")
    assert np.array_equal(read_raw_image(tmp_path / "a.tif"), sixteen)
    assert np.array_equal(read_raw_image(tmp_path / "b.tif"), floats)
    for name, pixels in (("a.tif", sixteen), ("b.tif", floats)):
        assert np.array_equal(read_image(tmp_path / name),
                              to_uint8(pixels, DEFAULT_INTENSITY, name))


def test_every_plane_of_a_stack_is_a_frame(tmp_path):
    planes = stack(12)
    tifffile.imwrite(tmp_path / "z.tif", planes, photometric="minisblack")
    tifffile.imwrite(tmp_path / "single.tif", planes[0])
    frames = list_images(tmp_path)
    # zero-padded so that the names sort in plane order
    assert list(frames) == ["single", *(f"z_p{k:02d}" for k in range(12))]
    assert frames["single"] == tmp_path / "single.tif"
    assert frames["z_p07"] == StackPlane(tmp_path / "z.tif", 7)
    for k in (0, 7, 11):
        assert np.array_equal(read_raw_image(frames[f"z_p{k:02d}"]), planes[k])


def test_page_picks_one_plane_per_stack_named_like_the_file(tmp_path):
    planes = stack(3)
    tifffile.imwrite(tmp_path / "z.tif", planes, photometric="minisblack")
    frames = list_images(tmp_path / "z.tif", page=2)
    assert list(frames) == ["z"]
    assert np.array_equal(read_raw_image(frames["z"]), planes[2])
    with pytest.raises(PipelineError, match=r"holds 3 planes \(0..2\); there is no plane 3"):
        list_images(tmp_path, page=3)


@pytest.mark.parametrize("name", ["single.tif", "single.png"])
def test_page_beyond_a_file_of_one_plane_is_refused_not_read_as_plane_0(tmp_path, name):
    plane = ramp(dtype=np.uint8)
    if name.endswith(".tif"):
        tifffile.imwrite(tmp_path / name, plane)
    else:
        cv2.imwrite(str(tmp_path / name), plane)
    for page in (None, 0):
        assert list_images(tmp_path, page=page) == {"single": tmp_path / name}
    with pytest.raises(PipelineError, match=rf"{name} holds 1 plane; there is no plane 5"):
        list_images(tmp_path, page=5)


def test_ome_hyperstack_planes_in_file_order(tmp_path):
    data = np.arange(2 * 3 * 2 * 20 * 30, dtype=np.uint16).reshape(2, 3, 2, 20, 30)
    tifffile.imwrite(tmp_path / "cells.ome.tif", data, ome=True, metadata={"axes": "TZCYX"})
    frames = list_images(tmp_path)
    assert list(frames)[0] == "cells_p00" and len(frames) == 12    # .ome is not in the name
    flat = data.reshape(12, 20, 30)
    for k in (0, 5, 11):
        assert np.array_equal(read_raw_image(frames[f"cells_p{k:02d}"]), flat[k])


def test_colour_tiff_chunky_and_planar_read_as_rgb(tmp_path):
    rgb = np.dstack([ramp(dtype=np.uint8, scale=k) for k in (1, 3, 5)])
    tifffile.imwrite(tmp_path / "chunky.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                     planarconfig="separate")
    tifffile.imwrite(tmp_path / "rgba.tif", np.dstack([rgb, rgb[:, :, :1]]), photometric="rgb",
                     extrasamples=["unassalpha"])
    assert list(list_images(tmp_path)) == ["chunky", "planar", "rgba"]
    for name in ("chunky", "planar", "rgba"):
        assert np.array_equal(read_raw_image(tmp_path / f"{name}.tif"), rgb), name


def test_a_trailing_axis_of_one_sample_reads_as_a_plane(tmp_path):
    plane = ramp()
    tifffile.imwrite(tmp_path / "one.tif", plane[..., None])        # axes YXQ
    tifffile.imwrite(tmp_path / "two.tif", np.stack([plane, plane + 1])[..., None])
    assert list(list_images(tmp_path)) == ["one", "two_p0", "two_p1"]
    assert np.array_equal(read_raw_image(tmp_path / "one.tif"), plane)
    assert np.array_equal(read_raw_image(StackPlane(tmp_path / "two.tif", 1)), plane + 1)
    tifffile.imwrite(tmp_path / "label.tif", (plane % 3).astype(np.uint8)[..., None])
    assert np.array_equal(read_label(tmp_path / "label.tif"), plane % 3)
    for saved in ((plane % 3)[None], (plane % 3)[..., None]):
        np.save(tmp_path / "label.npy", saved.astype(np.uint8))
        assert np.array_equal(read_label(tmp_path / "label.npy"), plane % 3)


def test_four_grey_channels_are_refused_not_read_as_rgb_and_alpha(tmp_path):
    channels = np.dstack([ramp(dtype=np.uint8, scale=k) for k in (1, 3, 5, 7)])
    tifffile.imwrite(tmp_path / "four.tif", channels, photometric="minisblack",
                     planarconfig="contig", extrasamples=["unspecified"] * 3)
    with pytest.raises(PipelineError, match=r"four\.tif: TIFF of 4 grey channels"):
        read_raw_image(tmp_path / "four.tif")
    tifffile.imwrite(tmp_path / "rgba.tif", channels, photometric="rgb",
                     extrasamples=["unassalpha"])
    assert np.array_equal(read_raw_image(tmp_path / "rgba.tif"), channels[:, :, :3])


@pytest.mark.parametrize("layout", ["chunky", "planar", "stack", "miniswhite"])
def test_three_grey_channels_are_refused_not_mixed_into_one_grey(tmp_path, layout):
    """DIC, fluorescence and fluorescence/2 stored as the samples of a grey TIFF."""
    channels = np.dstack([ramp(dtype=np.uint8, scale=k) for k in (1, 3, 5)])
    options = {"photometric": "minisblack", "extrasamples": ["unspecified"] * 2}
    if layout == "planar":
        channels = np.moveaxis(channels, -1, 0)
        options["planarconfig"] = "separate"
    elif layout == "stack":
        channels = np.stack([channels, channels])
    elif layout == "miniswhite":
        options["photometric"] = "miniswhite"
    tifffile.imwrite(tmp_path / "three.tif", channels, **options)
    with pytest.raises(PipelineError, match=r"three\.tif: TIFF of 3 grey channels, which are "
                                            r"not read as one image"):
        list_images(tmp_path)


def test_channels_on_an_axis_of_their_own_stay_frames(tmp_path):
    """ImageJ and OME store channels as planes, a frame each, whatever their number."""
    planes = stack(3).astype(np.uint8)
    tifffile.imwrite(tmp_path / "ij.tif", planes, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "c.ome.tif", planes, ome=True, metadata={"axes": "CYX"})
    frames = list_images(tmp_path)
    assert list(frames) == ["c_p0", "c_p1", "c_p2", "ij_p0", "ij_p1", "ij_p2"]
    for name in ("c", "ij"):
        assert np.array_equal(read_raw_image(frames[f"{name}_p2"]), planes[2]), name


def test_cmyk_and_lab_tiffs_are_refused_not_read_as_rgb(tmp_path):
    cmyk = np.dstack([ramp(dtype=np.uint8, scale=k) for k in (1, 3, 5, 7)])
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    tifffile.imwrite(tmp_path / "lab.tif", cmyk[:, :, :3], photometric="cielab")
    for name, space in (("cmyk", "CMYK"), ("lab", "CIELab")):
        with pytest.raises(PipelineError, match=rf"{name}\.tif: TIFF of {space}.* save it as RGB"):
            read_raw_image(tmp_path / f"{name}.tif")


def test_min_is_white_grey_is_read_as_shown_and_labels_as_stored(tmp_path):
    """A MinIsWhite plane (0 stored for white) reads as viewers and cv2 show it, brighter
    higher, as the same picture saved as PNG would; a label's values are indices, kept."""
    sixteen = ramp()
    tifffile.imwrite(tmp_path / "sixteen.tif", 65535 - sixteen, photometric="miniswhite")
    assert np.array_equal(read_raw_image(tmp_path / "sixteen.tif"), sixteen)
    twelve = SimpleNamespace(photometric=0, bitspersample=12)  # 12 bits stored in 16
    assert np.array_equal(tiff_pixels_as_shown(4095 - sixteen % 4096, twelve), sixteen % 4096)
    eight = ramp(dtype=np.uint8, scale=3)
    tifffile.imwrite(tmp_path / "eight.tif", 255 - eight, photometric="miniswhite")
    assert np.array_equal(read_raw_image(tmp_path / "eight.tif"), eight)
    signed = (ramp(dtype=np.int16) - 2000).astype(np.int16)
    tifffile.imwrite(tmp_path / "signed.tif", signed, photometric="miniswhite")
    assert np.array_equal(read_raw_image(tmp_path / "signed.tif"), -1 - signed)
    floats = ramp().astype(np.float32) / 4096
    tifffile.imwrite(tmp_path / "float.tif", floats, photometric="miniswhite")
    assert np.array_equal(read_raw_image(tmp_path / "float.tif"), -floats)
    bits = ramp() % 2 == 1
    tifffile.imwrite(tmp_path / "bits.tif", bits, photometric="miniswhite")
    assert np.array_equal(read_raw_image(tmp_path / "bits.tif"), np.where(bits, 0, 255))
    # the rule maps each to the black-is-low picture a MinIsBlack file of it gives
    tifffile.imwrite(tmp_path / "black.tif", eight)
    assert np.array_equal(read_image(tmp_path / "eight.tif"), read_image(tmp_path / "black.tif"))
    with open_tiff_rows(tmp_path / "eight.tif") as rows:
        assert np.array_equal(rows.image_rows(3, 9), eight[3:9])
    tifffile.imwrite(tmp_path / "label.tif", (eight % 3).astype(np.uint8),
                     photometric="miniswhite")
    assert np.array_equal(read_label(tmp_path / "label.tif"), eight % 3)


def test_a_grey_palette_reads_as_shown_a_colour_one_and_a_label_as_their_indices(tmp_path):
    """A grey palette TIFF (PIL's mode P, an inverting LUT) shows its colormap's greys, as cv2
    and a palette PNG give them: its indices, under a palette running inverted, would be the
    inverse of the picture. A palette of colours (ImageJ's Fire) only displayed the values,
    which are kept; so are a label's indices, its classes."""
    eight = ramp(dtype=np.uint8, scale=3)
    inverted = np.tile(np.arange(256)[::-1].astype(np.uint16) * 257, (3, 1))
    tifffile.imwrite(tmp_path / "grey.tif", 255 - eight, photometric="palette",
                     colormap=inverted)
    assert np.array_equal(read_raw_image(tmp_path / "grey.tif"), eight)
    assert np.array_equal(read_raw_image(tmp_path / "grey.tif"),
                          cv2.imread(str(tmp_path / "grey.tif"), cv2.IMREAD_GRAYSCALE))
    assert open_tiff_rows(tmp_path / "grey.tif") is None      # read whole, as shown
    colours = np.stack([np.arange(256), np.zeros(256), 255 - np.arange(256)]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "colour.tif", eight, photometric="palette",
                     colormap=colours * 257)
    assert np.array_equal(read_raw_image(tmp_path / "colour.tif"), eight)
    tifffile.imwrite(tmp_path / "label.tif", eight % 3, photometric="palette",
                     colormap=inverted)
    assert np.array_equal(read_label(tmp_path / "label.tif"), eight % 3)



def test_a_grey_palette_written_by_pil_reads_as_cv2_shows_it(tmp_path):
    """PIL stores a palette entry v as v * 256 (tifffile as v * 257); libtiff, and so cv2 and
    viewers, keep its high byte: scaled by 255 / 65535 instead, every grey from 129 up came
    out one lower."""
    eight = ramp(dtype=np.uint8, scale=3)
    image = Image.fromarray(eight, mode="P")
    image.putpalette([255 - i for i in range(256) for _ in range(3)])
    image.save(tmp_path / "pil.tif")
    assert np.array_equal(read_raw_image(tmp_path / "pil.tif"),
                          cv2.imread(str(tmp_path / "pil.tif"), cv2.IMREAD_GRAYSCALE))
    assert np.array_equal(read_raw_image(tmp_path / "pil.tif"), 255 - eight)

def frame_at_a_time(path, frames, how):
    """A file as acquisition loops write it, one series per frame."""
    if how == "append":
        for frame in frames:
            tifffile.imwrite(path, frame, append=True)
    else:
        with tifffile.TiffWriter(path) as tif:
            for frame in frames:
                tif.write(frame)


@pytest.mark.parametrize("how", ["append", "write per frame"])
@pytest.mark.parametrize("colour", [False, True])
def test_a_stack_written_a_frame_at_a_time_gives_every_frame(tmp_path, how, colour):
    planes = stack(3)
    if colour:
        planes = np.stack([np.dstack([p, p // 2, p // 3]) for p in planes]).astype(np.uint8)
    frame_at_a_time(tmp_path / "stack0.tif", planes, how)
    frames = list_images(tmp_path)
    assert list(frames) == ["stack0_p0", "stack0_p1", "stack0_p2"]    # as a one-series stack
    for k in range(3):
        assert np.array_equal(read_raw_image(frames[f"stack0_p{k}"]), planes[k])
        with open_tiff_rows(frames[f"stack0_p{k}"]) as rows:    # the whole-slide reader too
            assert np.array_equal(rows.rows(0, 40), planes[k])
    assert np.array_equal(read_raw_image(list_images(tmp_path, page=2)["stack0"]), planes[2])


def test_a_stack_is_opened_once_for_all_its_frames_and_again_when_it_changes(tmp_path,
                                                                              monkeypatch):
    """Opening a frame-at-a-time file parses every page: opened once per frame, reading its
    frames took time growing with the square of their number."""
    import image_io
    opened = []
    monkeypatch.setattr(image_io, "open_tiff",
                        lambda path, real=image_io.open_tiff: opened.append(path) or real(path))
    planes = stack(4)
    frame_at_a_time(tmp_path / "t.tif", planes, "append")
    frames = list_images(tmp_path)
    for k in range(4):
        assert np.array_equal(read_raw_image(frames[f"t_p{k}"]), planes[k])
    assert len(opened) == 1
    frame_at_a_time(tmp_path / "u.tif", planes[:2], "append")   # another file: opened apart
    assert np.array_equal(read_raw_image(StackPlane(tmp_path / "u.tif", 1)), planes[1])
    (tmp_path / "t.tif").unlink()
    frame_at_a_time(tmp_path / "t.tif", planes[::-1], "append")  # rewritten: read anew
    assert np.array_equal(read_raw_image(frames["t_p0"]), planes[3])
    assert len(opened) == 3


def test_an_unflagged_preview_page_is_passed_over_as_before(tmp_path):
    """A small RGB page after the image, not marked as reduced: the image alone is the frame."""
    image = ramp(64, 64)
    with tifffile.TiffWriter(tmp_path / "p.tif") as tif:
        tif.write(image)
        tif.write(np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    frames = list_images(tmp_path)
    assert list(frames) == ["p"]
    assert np.array_equal(read_raw_image(frames["p"]), image)


def test_a_smaller_plane_between_planes_is_refused_not_dropped(tmp_path):
    """Dropped, the planes after it would be renumbered: plane 2 read as _p1."""
    planes = stack(2)
    frame_at_a_time(tmp_path / "mid.tif", [planes[0], planes[1][:20, :25], planes[1]], "append")
    with pytest.raises(PipelineError, match=r"mid.tif holds 3 images that are not planes"):
        list_images(tmp_path)
    (tmp_path / "mid.tif").unlink()
    small = np.zeros((16, 16), np.uint16)
    frame_at_a_time(tmp_path / "ends.tif", [small, planes[0], planes[1], small], "append")
    frames = list_images(tmp_path)
    assert list(frames) == ["ends_p0", "ends_p1"]
    assert np.array_equal(read_raw_image(frames["ends_p1"]), planes[1])


def test_positions_of_an_ome_file_are_refused_its_label_picture_skipped(tmp_path):
    planes = stack(2)
    with tifffile.TiffWriter(tmp_path / "positions.ome.tif", ome=True) as tif:
        for plane in planes:
            tif.write(plane, metadata={"axes": "YX"})
    with pytest.raises(PipelineError, match=r"positions.ome.tif holds 2 images of 50x40 "
                                            r"pixels .*save each as a file of its own"):
        list_images(tmp_path / "positions.ome.tif")
    with tifffile.TiffWriter(tmp_path / "slide.ome.tif", ome=True) as tif:
        tif.write(planes, metadata={"axes": "ZYX"})
        tif.write(np.zeros((30, 90, 3), np.uint8), photometric="rgb")    # a label picture
    frames = list_images(tmp_path / "slide.ome.tif")
    assert list(frames) == ["slide_p0", "slide_p1"]
    assert np.array_equal(read_raw_image(frames["slide_p1"]), planes[1])


def test_only_the_files_of_the_frames_asked_for_are_opened(tmp_path):
    """get_contour reads the images of the masks it has, never files beside them that
    prediction did not read (a damaged one would stop it)."""
    tifffile.imwrite(tmp_path / "s.tif", stack(2))
    tifffile.imwrite(tmp_path / "a.tif", ramp())
    (tmp_path / "broken.tif").write_bytes(b"II*\0 not a tiff")
    with pytest.raises(PipelineError, match="broken.tif"):
        list_images(tmp_path)
    assert list(list_images(tmp_path, frames=["a", "s_p1"])) == ["a", "s_p0", "s_p1"]
    assert list(list_images(tmp_path, page=1, frames=["s"])) == ["s"]
    # a file named like a plane is that file, not a plane of the stack beside it
    cv2.imwrite(str(tmp_path / "s_p1.png"), np.zeros((8, 8), np.uint8))
    assert list_images(tmp_path, frames=["s_p1"]) == {"s_p1": tmp_path / "s_p1.png"}


def test_a_series_of_one_part_is_kept_whatever_its_pages():
    """tifffile lists a page it cannot find (an OME plane in a missing file) as None."""
    lone = SimpleNamespace(axes="ZYX", shape=(2, 40, 50), pages=[None, None])
    assert image_io._without_previews([lone]) == [lone]


def test_pages_of_a_plain_tiff_stay_in_file_order_whatever_their_coding(tmp_path):
    # tifffile's series of a plain TIFF group pages by coding: here pages 0 and 2, then 1
    planes = stack(3)
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as tif:
        for plane, compression in zip(planes, (None, "zlib", None)):
            tif.write(plane, compression=compression, metadata=None)
    frames = list_images(tmp_path)
    assert list(frames) == ["mixed_p0", "mixed_p1", "mixed_p2"]
    for k in range(3):
        assert np.array_equal(read_raw_image(frames[f"mixed_p{k}"]), planes[k])


def test_each_plane_is_shown_by_its_own_page_photometric(tmp_path):
    """A plain TIFF whose second page is MinIsWhite and first MinIsBlack: each plane reads as
    shown by its own page's tags, in memory as row by row (whole_slide)."""
    planes = stack(2).astype(np.uint16) * 200
    with tifffile.TiffWriter(tmp_path / "photo.tif") as tif:
        tif.write(planes[0], photometric="minisblack", metadata=None)
        tif.write(65535 - planes[1], photometric="miniswhite", metadata=None)
    frames = list_images(tmp_path)
    assert list(frames) == ["photo_p0", "photo_p1"]
    for k in range(2):
        assert np.array_equal(read_raw_image(frames[f"photo_p{k}"]), planes[k]), k
        with open_tiff_rows(frames[f"photo_p{k}"]) as rows:
            assert np.array_equal(rows.image_rows(0, rows.height), planes[k]), k


def test_a_thumbnail_is_no_frame_wherever_it_lies(tmp_path):
    planes, thumb = stack(2), np.zeros((7, 9), np.uint16)
    with tifffile.TiffWriter(tmp_path / "first.tif") as tif:
        tif.write(thumb, subfiletype=1, metadata=None)    # a reduced image, no pyramid level
        for plane in planes:
            tif.write(plane, metadata=None)
    with tifffile.TiffWriter(tmp_path / "between.tif") as tif:
        tif.write(planes[0])
        tif.write(thumb, subfiletype=1)
        tif.write(planes[1])
    frames = list_images(tmp_path)
    assert list(frames) == ["between_p0", "between_p1", "first_p0", "first_p1"]
    for name in ("between", "first"):
        for k in range(2):
            assert np.array_equal(read_raw_image(frames[f"{name}_p{k}"]), planes[k])


@pytest.mark.parametrize("second, held", [
    (np.zeros((60, 12), np.uint16), r"YX \(40, 50\) uint16, YX \(60, 12\) uint16"),
    (ramp().astype(np.float32), r"YX \(40, 50\) uint16, YX \(40, 50\) float32")])
def test_images_that_are_no_stack_are_refused_naming_what_the_file_holds(tmp_path, second,
                                                                         held):
    frame_at_a_time(tmp_path / "odd.tif", [ramp(), second], "append")
    with pytest.raises(PipelineError, match=rf"odd.tif holds 2 images that are not planes of "
                                            rf"one stack \({held}\)"):
        list_images(tmp_path)


def test_grey_and_alpha_tiff_is_grey_with_alpha_dropped_as_from_png(tmp_path):
    grey = ramp(dtype=np.uint8, scale=5)
    grey_alpha = np.dstack([grey, np.full_like(grey, 200)])
    tifffile.imwrite(tmp_path / "ga.tif", grey_alpha, photometric="minisblack",
                     extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(grey_alpha, -1, 0),
                     photometric="minisblack", planarconfig="separate",
                     extrasamples=["assocalpha"])
    Image.fromarray(grey_alpha, mode="LA").save(tmp_path / "la.png")
    for name in ("ga.tif", "planar.tif"):
        assert np.array_equal(read_raw_image(tmp_path / name), grey), name
        for mode in ("grey", "rgb"):
            assert np.array_equal(to_color_mode(read_image(tmp_path / name), mode),
                                  to_color_mode(read_image(tmp_path / "la.png"), mode))
    # two samples that the file does not call grey and alpha are two channels: not guessed
    tifffile.imwrite(tmp_path / "two.tif", grey_alpha, photometric="minisblack",
                     extrasamples=["unspecified"])
    with pytest.raises(PipelineError, match="TIFF axes YXS"):
        read_raw_image(tmp_path / "two.tif")


def test_tiff_labels_read_as_class_indices(tmp_path):
    classes = (np.arange(40 * 50).reshape(40, 50) // 700).astype(np.uint8)     # 0..2
    write_tiff(tmp_path / "mask.tif", classes, pixel_size=0.5)    # as --mask-format tif does
    tifffile.imwrite(tmp_path / "sixteen.tiff", classes.astype(np.uint16), compression="zlib")
    tifffile.imwrite(tmp_path / "bits.tif", classes == 1)           # 1-bit: 1, not 255 (ignore)
    for name, expected in (("mask.tif", classes), ("sixteen.tiff", classes),
                           ("bits.tif", (classes == 1).astype(np.uint8))):
        label = read_label(tmp_path / name)
        assert label.dtype == np.uint8 and np.array_equal(label, expected), name


@pytest.mark.parametrize("kind, message", [
    ("float", "holds values that are not whole numbers"), ("rgb", "has 3 channels"),
    ("grey+alpha", "has 2 channels"), ("stack", "holds 3 planes; a label is one plane")])
def test_a_tiff_label_that_is_no_class_index_plane_is_refused(tmp_path, kind, message):
    path = tmp_path / "l.tif"
    values = (np.arange(40 * 50).reshape(40, 50) // 700).astype(np.uint8)
    if kind == "float":
        tifffile.imwrite(path, values / 2.0)                        # probabilities, say
    elif kind == "rgb":
        tifffile.imwrite(path, np.dstack([values] * 3), photometric="rgb")
    elif kind == "grey+alpha":
        tifffile.imwrite(path, np.dstack([values] * 2), photometric="minisblack",
                         extrasamples=["unassalpha"])
    else:
        frame_at_a_time(path, [values] * 3, "append")
    with pytest.raises(PipelineError, match=f"label .*l.tif {message}"):
        read_label(path)


def multi_file_ome(folder, planes):
    """The files of a multi-file OME-TIFF as Bio-Formats writes them: a plane
    each, each file's OME-XML listing the planes of all of them by file name and UUID."""
    uuid = "urn:uuid:00000000-0000-0000-0000-00000000000{}".format
    tiff_data = "".join(f'<TiffData FirstC="{c}" IFD="0" PlaneCount="1"><UUID FileName='
                        f'"c{c}.ome.tif">{uuid(c)}</UUID></TiffData>' for c in range(len(planes)))
    height, width = planes[0].shape
    for c, plane in enumerate(planes):
        xml = (f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="{uuid(c)}">'
               f'<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" '
               f'Type="uint16" SizeX="{width}" SizeY="{height}" SizeC="{len(planes)}" SizeZ="1" '
               f'SizeT="1">{"<Channel/>" * len(planes)}{tiff_data}</Pixels></Image></OME>')
        tifffile.imwrite(folder / f"c{c}.ome.tif", plane, description=xml, metadata=None)


def test_a_file_of_a_multi_file_ome_tiff_gives_its_own_planes(tmp_path, caplog):
    """Not its companions' too: read alone, those were zeroed (and refused as 'page is None'
    once reached), and beside them, each file gave the whole set, every plane twice."""
    planes = [ramp(), 4000 - ramp()]
    multi_file_ome(tmp_path, planes)
    frames = list_images(tmp_path)
    assert list(frames) == ["c0", "c1"]
    for frame, plane in zip(frames.values(), planes):
        assert np.array_equal(read_raw_image(frame), plane)
    (tmp_path / "c1.ome.tif").unlink()
    assert np.array_equal(read_raw_image(list_images(tmp_path)["c0"]), planes[0])
    assert not [r for r in caplog.records if r.name == "tifffile"]



def test_a_file_of_a_multi_file_ome_tiff_of_two_positions_is_refused(tmp_path):
    """Read on its own (open_tiff), such a file's planes come as one generic series: its two
    positions were read as a stack of two planes, where the set read whole refused them."""
    uuid = "urn:uuid:00000000-0000-0000-0000-00000000000{}".format
    files = {"a.ome.tif": [0, 1], "b.ome.tif": [2]}
    images = "".join(
        f'<Image ID="Image:{image}"><Pixels ID="Pixels:{image}" DimensionOrder="XYCZT" '
        f'Type="uint16" SizeX="50" SizeY="40" SizeC="1" SizeZ="1" SizeT="1"><Channel/>'
        f'<TiffData IFD="{ifd}" PlaneCount="1"><UUID FileName="{name}">{uuid(f)}</UUID>'
        f'</TiffData></Pixels></Image>'
        for f, (name, held) in enumerate(files.items()) for ifd, image in enumerate(held))
    for f, (name, held) in enumerate(files.items()):
        xml = (f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
               f'UUID="{uuid(f)}">{images}</OME>')
        with tifffile.TiffWriter(tmp_path / name) as tif:
            for k, image in enumerate(held):
                tif.write(ramp() + image, description=xml if k == 0 else None, metadata=None)
    with pytest.raises(PipelineError, match="a.ome.tif holds 2 images of 50x40 pixels"):
        list_images(tmp_path)
    assert np.array_equal(read_raw_image(list_images(tmp_path / "b.ome.tif")["b"]), ramp() + 2)


def mm_image(plane, start, end, t, notes):
    """An image of a Micro-Manager MMStack file at byte `start`: its header of 13 tags (and
    the descriptions `notes`, (offset, text), in the first image's), its pixels right after it,
    as tifffile finds the images of a set's other files, its resolutions and metadata."""
    height, width = plane.shape
    count = 13 + len(notes)
    pixels = start + 2 + 12 * count + 4
    after = pixels + plane.nbytes
    entries = [(256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 16), (259, 3, 1, 1),
               (262, 3, 1, 1), *((270, 2, len(text), at) for at, text in notes),
               (273, 4, 1, pixels), (277, 3, 1, 1), (278, 3, 1, height),
               (279, 4, 1, plane.nbytes), (282, 5, 1, after), (283, 5, 1, after + 8),
               (296, 3, 1, 3), (51123, 2, 16, after + 16)]
    return b"".join([struct.pack("<H", count), *(struct.pack("<HHII", *e) for e in entries),
                     struct.pack("<I", end), plane.astype("<u2").tobytes(),
                     struct.pack("<4I", 65000, 1, 65000, 1),
                     f'{{"Frame": {t:4d}}}'.encode().ljust(16, b"\0")])


def mmstack_file(path, planes, first_t, summary, descriptions):
    """One file of a Micro-Manager MMStack set as its MultipageTiffWriter lays it out: a header
    naming where the acquisition's summary and the file's index map (each image's time point
    and offset) lie, its images (mm_image), the first carrying `descriptions` (the set's
    OME-XML, an ImageJ header of all its planes), then display settings and comments."""
    u32 = lambda *values: struct.pack(f"<{len(values)}I", *values)     # noqa: E731
    summary, empty = json.dumps(summary).encode(), b"{}"
    notes = [text.encode() + b"\0" for text in descriptions]
    starts = [40 + len(summary) + 8 + 20 * len(planes)]
    for k, plane in enumerate(planes):
        tags = 13 + (0 if k else len(notes))
        starts.append(starts[-1] + 2 + 12 * tags + 4 + plane.nbytes + 32)
    at = list(itertools.accumulate(map(len, notes), initial=starts.pop()))
    display, comments = at[-1], at[-1] + 8 + len(empty)
    header = u32(starts[0], 54773648, 40 + len(summary), 483765892, display, 99384722, comments,
                 2355492, len(summary))
    index_map = u32(3453623, len(planes),
                    *(n for k, s in enumerate(starts) for n in (0, 0, first_t + k, 0, s)))
    images = [mm_image(plane, start, end, first_t + k, list(zip(at, notes)) if k == 0 else [])
              for k, (plane, start, end) in enumerate(zip(planes, starts, [*starts[1:], 0]))]
    path.write_bytes(b"".join([b"II*\0", header, summary, index_map, *images, *notes,
                               u32(347834724, len(empty)), empty, u32(84720485, len(empty)),
                               empty]))


def mmstack_set(folder, planes, split):
    """A time-lapse of one position saved by Micro-Manager as files of `split` planes each
    (cells_MMStack_Pos0.ome.tif, cells_MMStack_Pos0_1.ome.tif ...), each carrying the OME-XML
    of them all (naming each plane's file) and an ImageJ header of all the planes."""
    names = [f"cells_MMStack_Pos0{f'_{k}' if k else ''}.ome.tif"
             for k in range(-(-len(planes) // split))]
    uuid = "urn:uuid:00000000-0000-0000-0000-00000000000{}".format
    tiff_data = "".join(f'<TiffData FirstT="{t}" IFD="{t % split}" PlaneCount="1"><UUID '
                        f'FileName="{names[t // split]}">{uuid(t // split)}</UUID></TiffData>'
                        for t in range(len(planes)))
    height, width = planes[0].shape
    xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
           f'<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="{width}" '
           f'SizeY="{height}" SizeC="1" SizeZ="1" SizeT="{len(planes)}" PhysicalSizeX="0.65" '
           f'PhysicalSizeY="0.65"><Channel/>{tiff_data}</Pixels></Image></OME>')
    imagej = f"ImageJ=1.53t\nimages={len(planes)}\nframes={len(planes)}\nhyperstack=true\n"
    summary = {"MicroManagerVersion": "2.0.1", "Prefix": "cells", "Frames": len(planes),
               "Slices": 1, "Channels": 1, "Positions": 1}
    for k, name in enumerate(names):
        mmstack_file(folder / name, planes[k * split:(k + 1) * split], k * split, summary,
                     (xml, imagej))
    return names


def test_a_file_of_a_micro_manager_mmstack_set_gives_its_own_planes(tmp_path, caplog):
    """tifffile joins the files of a set by name: each gave the planes of them all (zeros for
    a file not beside it, with a warning), and its ImageJ header counts them all too."""
    planes = stack(3)
    first, second = mmstack_set(tmp_path, planes, split=2)
    frames = list_images(tmp_path / first)
    assert list(frames) == ["cells_MMStack_Pos0_p0", "cells_MMStack_Pos0_p1"]
    for frame, plane in zip(frames.values(), planes):
        assert np.array_equal(read_raw_image(frame), plane)
        with open_tiff_rows(frame) as rows:     # the whole-slide reader too
            assert np.array_equal(rows.rows(0, 40), plane)
    assert list(list_images(tmp_path / second)) == ["cells_MMStack_Pos0_1"]
    assert pixel_size_um(tmp_path / first) == pytest.approx(0.65)     # its OME-XML still read
    (tmp_path / first).unlink()
    assert np.array_equal(read_raw_image(tmp_path / second), planes[2])
    assert not [r for r in caplog.records if r.name == "tifffile"]


def test_a_folder_of_a_whole_mmstack_set_gives_each_plane_once(tmp_path):
    planes = stack(5)
    mmstack_set(tmp_path, planes, split=2)
    frames = list_images(tmp_path)
    held = {"cells_MMStack_Pos0_p0": 0, "cells_MMStack_Pos0_p1": 1,
            "cells_MMStack_Pos0_1_p0": 2, "cells_MMStack_Pos0_1_p1": 3, "cells_MMStack_Pos0_2": 4}
    assert sorted(frames) == sorted(held)
    for name, k in held.items():
        assert np.array_equal(read_raw_image(frames[name]), planes[k]), name


def test_pixel_size_from_ome_and_imagej_metadata(tmp_path, capsys):
    img = ramp()
    tifffile.imwrite(tmp_path / "um.ome.tif", img, ome=True,
                     metadata={"PhysicalSizeX": 0.65, "PhysicalSizeXUnit": "µm"})
    tifffile.imwrite(tmp_path / "nm.ome.tif", img, ome=True,
                     metadata={"PhysicalSizeX": 325, "PhysicalSizeXUnit": "nm"})
    tifffile.imwrite(tmp_path / "ij.tif", img, imagej=True, resolution=(1 / 0.1625, 1 / 0.1625),
                     metadata={"unit": "micron"})
    tifffile.imwrite(tmp_path / "ij_escaped.tif", img, imagej=True, resolution=(2.0, 2.0),
                     metadata={"unit": "\\u00B5m"})
    tifffile.imwrite(tmp_path / "ij_pixels.tif", img, imagej=True, resolution=(2.0, 2.0),
                     metadata={"unit": "pixel"})
    tifffile.imwrite(tmp_path / "plain.tif", img, resolution=(2.0, 2.0))
    tifffile.imwrite(tmp_path / "angstrom.ome.tif", img, ome=True,
                     metadata={"PhysicalSizeX": 2500, "PhysicalSizeXUnit": "\u00c5",
                               "PhysicalSizeY": 2500, "PhysicalSizeYUnit": "\u00c5"})
    tifffile.imwrite(tmp_path / "scanned.ome.tif", img, ome=True,        # 2400 dpi
                     metadata={"PhysicalSizeX": 1 / 2400, "PhysicalSizeXUnit": "in"})
    tifffile.imwrite(tmp_path / "scanned_ij.tif", img, imagej=True, resolution=(2400, 2400),
                     metadata={"unit": "inch"})
    # pixels twice as tall as wide: no one size measures them
    tifffile.imwrite(tmp_path / "tall.ome.tif", img, ome=True,
                     metadata={"PhysicalSizeX": 0.2, "PhysicalSizeY": 0.4})
    tifffile.imwrite(tmp_path / "tall_ij.tif", img, imagej=True, resolution=(5.0, 2.5),
                     metadata={"unit": "um"})
    expected = {"um.ome.tif": 0.65, "nm.ome.tif": 0.325, "ij.tif": 0.1625,
                "ij_escaped.tif": 0.5, "ij_pixels.tif": None, "plain.tif": None,
                "angstrom.ome.tif": 0.25, "tall.ome.tif": None, "tall_ij.tif": None,
                "scanned.ome.tif": 25400 / 2400, "scanned_ij.tif": 25400 / 2400}
    for name, size in expected.items():
        assert pixel_size_um(tmp_path / name) == pytest.approx(size), name
    for name in ("tall.ome.tif", "tall_ij.tif"):
        assert pixel_sizes_um(tmp_path / name) == pytest.approx((0.2, 0.4)), name
    images = {name: tmp_path / name for name in ("um.ome.tif", "tall.ome.tif")}
    sizes = get_contour.image_pixel_sizes(images, list(images), None)
    assert sizes == {"um.ome.tif": pytest.approx(0.65), "tall.ome.tif": None}
    assert "1 image records pixels that are not square (tall.ome.tif: 0.2 x 0.4" in \
        capsys.readouterr().out
    assert get_contour.image_pixel_sizes(images, list(images), 0.3) == dict.fromkeys(images, 0.3)


def test_a_copied_plane_keeps_its_pixels_and_pixel_size(tmp_path):
    planes = stack(2)
    tifffile.imwrite(tmp_path / "z.ome.tif", planes, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.4})
    (tmp_path / "out").mkdir()
    copy_frame(StackPlane(tmp_path / "z.ome.tif", 1), tmp_path / "out", "z_p1")
    assert np.array_equal(read_raw_image(tmp_path / "out" / "z_p1.tif"), planes[1])
    assert pixel_size_um(tmp_path / "out" / "z_p1.tif") == pytest.approx(0.4)


@pytest.mark.parametrize("damage", ["truncated", "not a tiff"])
def test_a_damaged_tiff_is_one_clear_error(tmp_path, damage):
    tifffile.imwrite(tmp_path / "good.tif", stack(3), photometric="minisblack")
    data = (tmp_path / "good.tif").read_bytes()
    bad = tmp_path / "bad.tif"
    bad.write_bytes(data[:len(data) // 3] if damage == "truncated" else b"II*\0garbage" * 9)
    said = "TIFF .*bad.tif is cut short" if damage == "truncated" else \
        "cannot read TIFF .*bad.tif"
    with pytest.raises(PipelineError, match=said):
        read_raw_image(list_images(bad).popitem()[1])


def test_a_tiff_cut_within_its_first_bytes_is_one_clear_error(tmp_path):
    """tifffile unpacks the offset of the first image unchecked: a traceback (struct.error)."""
    tifffile.imwrite(tmp_path / "good.tif", ramp())
    (tmp_path / "cut.tif").write_bytes((tmp_path / "good.tif").read_bytes()[:6])
    with pytest.raises(PipelineError, match="TIFF .*cut.tif is cut short .*header runs past"):
        list_images(tmp_path / "cut.tif")


def test_an_ome_tiff_cut_within_its_ome_xml_is_refused_with_one_line(tmp_path, capfd):
    """tifffile writes the OME-XML last and reads a file cut there without it, logging a bare
    line: the planes came as a plain stack, their pixel size gone."""
    tifffile.imwrite(tmp_path / "good.ome.tif", stack(2), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    data = (tmp_path / "good.ome.tif").read_bytes()
    description = tifffile.TiffFile(tmp_path / "good.ome.tif").pages.first.tags[270]
    assert description.valueoffset + description.count == len(data)    # the XML comes last
    (tmp_path / "cut.ome.tif").write_bytes(data[:description.valueoffset + 20])
    with pytest.raises(PipelineError, match="TIFF .*cut.ome.tif is cut short .*"
                                            "ImageDescription lies past its end"):
        list_images(tmp_path / "cut.ome.tif")
    # a stack cut in a later image's header: the pipeline's line alone, not tifffile's too
    tifffile.imwrite(tmp_path / "pages.tif", stack(3), photometric="minisblack")
    data = (tmp_path / "pages.tif").read_bytes()
    (tmp_path / "pages.tif").write_bytes(data[:int(len(data) * 0.6)])
    capfd.readouterr()
    with pytest.raises(PipelineError, match="pages.tif is cut short"):
        list_images(tmp_path / "pages.tif")
    assert capfd.readouterr().err == ""
    assert list(list_images(tmp_path / "good.ome.tif")) == ["good_p0", "good_p1"]
    assert pixel_size_um(tmp_path / "good.ome.tif") == pytest.approx(0.5)


def test_an_empty_tiff_is_called_empty_as_an_empty_png_is(tmp_path):
    """tifffile calls a file of 0 bytes one of a bad header (header=b'')."""
    for name, kind in (("x.png", "image"), ("x.tif", "TIFF")):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(PipelineError, match=rf"^cannot read {kind} \S*{name}: empty, "
                                                "truncated or not an image file"):
            read_raw_image(tmp_path / name)
    with pytest.raises(PipelineError, match=r"x\.tif: empty, truncated .*\(0 bytes\)$"):
        list_images(tmp_path / "x.tif")


@pytest.mark.parametrize("how", [dict(imagej=True, metadata={"axes": "ZYX"}),
                                 dict(imagej=True, truncate=True, metadata={"axes": "ZYX"}),
                                 dict(ome=True, metadata={"axes": "ZYX"})])
def test_a_stack_cut_short_is_refused_not_read_as_its_first_plane(tmp_path, how):
    """tifffile reads an ImageJ or OME stack cut short (a copy that did not finish) as a file
    of its first plane alone, which was predicted as such, named as a file of one plane."""
    tifffile.imwrite(tmp_path / "good.tif", stack(4), **how)
    data = (tmp_path / "good.tif").read_bytes()
    for fraction in (0.3, 0.6):
        (tmp_path / "cut.tif").write_bytes(data[:int(len(data) * fraction)])
        with pytest.raises(PipelineError, match="TIFF .*cut.tif is cut short .*save it again"):
            list_images(tmp_path / "cut.tif")


def test_a_stack_with_one_header_cut_within_its_first_plane_is_refused(tmp_path):
    tifffile.imwrite(tmp_path / "good.tif", stack(4), imagej=True, truncate=True,
                     metadata={"axes": "ZYX"})
    data = (tmp_path / "good.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[:int(len(data) * 0.15)])
    with pytest.raises(PipelineError, match="TIFF .*cut.tif is cut short"):
        list_images(tmp_path / "cut.tif")


@pytest.mark.parametrize("writer", ["tifffile", "pillow"])
def test_a_plane_saved_with_its_stacks_imagej_header_is_read_not_taken_for_a_cut(tmp_path,
                                                                               writer):
    """The first plane of an ImageJ stack saved with the stack's tags (Pillow's save with
    tiffinfo=im.tag_v2, tiffsplit) keeps 'images=4' in its description: a whole file of one
    plane, refused as a stack cut short."""
    planes = stack(4)
    tifffile.imwrite(tmp_path / "stack.tif", planes, imagej=True, metadata={"axes": "ZYX"})
    if writer == "pillow":
        with Image.open(tmp_path / "stack.tif") as im:
            im.save(tmp_path / "plane.tif", tiffinfo=im.tag_v2)
    else:
        with tifffile.TiffFile(tmp_path / "stack.tif") as tif:
            description = tif.pages.first.description
        tifffile.imwrite(tmp_path / "plane.tif", planes[0], description=description,
                         metadata=None)
    frames = list_images(tmp_path / "plane.tif")
    assert len(frames) == 1
    assert np.array_equal(read_raw_image(frames.popitem()[1]), planes[0])


def test_an_imagej_stack_with_one_header_for_all_its_planes_gives_every_plane(tmp_path):
    """ImageJ saves a stack of over 4 GiB with one image header for all its planes, stored
    one after another: planes after the first were refused (IndexError)."""
    planes = stack(9).reshape(3, 3, 40, 50).astype(">u2")
    tifffile.imwrite(tmp_path / "big.tif", planes, imagej=True, truncate=True, byteorder=">",
                     metadata={"axes": "TZYX"})
    frames = list_images(tmp_path / "big.tif")
    assert len(frames) == 9
    for k, source in enumerate(frames.values()):
        assert np.array_equal(read_raw_image(source), planes.reshape(9, *planes.shape[2:])[k])


def test_stack_masks_as_tiff_and_objects_in_micrometres(tmp_path):
    """get_contour.py on the TIFF masks of a stack: planes matched by name, the OME pixel
    size applied to each plane's objects, an explicit --pixel-size winning."""
    planes = np.zeros((2, 60, 80), np.uint16)
    masks = np.zeros((2, 60, 80), np.uint8)
    masks[0, 10:20, 10:30] = 1                  # 200 px
    masks[1, 30:50, 40:60] = 1                  # 400 px
    planes[masks == 1] = 3000
    (tmp_path / "src").mkdir()
    (tmp_path / "pred").mkdir()
    tifffile.imwrite(tmp_path / "src" / "s.ome.tif", planes, ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.5})
    for k in range(2):
        tifffile.imwrite(tmp_path / "pred" / f"s_p{k}.tif", masks[k])
    (tmp_path / "pred" / "predict.json").write_text(json.dumps({
        "classes": ["background", "cell"], "images": ["s_p0", "s_p1"],
        "input_dir": str(tmp_path / "src"), "label_dir": None, "page": None,
        "mask_format": "tif"}))

    def objects(*extra):
        get_contour.main(["--work-dir", str(tmp_path / "work"), "--pred-dir",
                          str(tmp_path / "pred"), "--output", str(tmp_path / "out"),
                          "--no-panels", *extra])
        with open(tmp_path / "out" / "objects.csv") as f:
            return {r["image"]: r for r in csv.DictReader(f)}

    rows = objects()
    assert {n: float(r["area_px"]) for n, r in rows.items()} == {"s_p0": 200, "s_p1": 400}
    assert {n: float(r["area_um2"]) for n, r in rows.items()} == {"s_p0": 50, "s_p1": 100}
    assert {float(r["pixel_size_um"]) for r in rows.values()} == {0.5}
    assert float(objects("--pixel-size", "2")["s_p1"]["area_um2"]) == 1600
