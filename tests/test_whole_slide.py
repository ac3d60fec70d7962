"""whole_slide.py: TIFF planes read row by row, the streamed intensity range, tiled masks."""
import numpy as np
import pytest
import tifffile

import whole_slide as W
from image_io import (DEFAULT_INTENSITY, StackPlane, intensity_range, pixel_histogram,
                      pixel_size_um, range_from_histogram, read_image, to_color_mode)
from cli import PipelineError
from geometry import reflect_pad

RULES = [DEFAULT_INTENSITY, {"rule": "percentile", "low": 2.0, "high": 97.5}, {"rule": "full"},
         {"rule": "fixed", "low": 100.0, "high": 3000.0}]


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.int8, np.uint8])
def test_histogram_percentiles_are_numpys(dtype):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype)
    for n in (1, 2, 7, 1000, 4099):
        pixels = rng.integers(info.min, info.max, n, endpoint=True).astype(dtype)
        for low, high in ((0.1, 99.9), (0, 100), (33.3, 34.1), (50, 50.000001)):
            rule = {"rule": "percentile", "low": low, "high": high}
            got = range_from_histogram(pixel_histogram(pixels), pixels.dtype, rule)
            expected = tuple(np.percentile(pixels.astype(np.float64), (low, high)))
            if not expected[1] > expected[0]:
                expected = (float(pixels.min()), float(pixels.max()))
            assert got == expected, (n, low, high)


def write_variants(tmp_path, img):
    """The same pixels as TIFFs of several layouts: tiled, strips, compressed or not."""
    files = {
        "tiled": dict(tile=(64, 48), compression="zlib"),
        "strips": dict(rowsperstrip=7),
        "one_strip": dict(rowsperstrip=img.shape[0]),
        "lzw_strips": dict(rowsperstrip=16, compression="lzw"),
    }
    paths = {}
    for name, options in files.items():
        paths[name] = tmp_path / f"{name}.tif"
        tifffile.imwrite(paths[name], img, photometric="rgb" if img.ndim == 3 else None,
                         **options)
    return paths


@pytest.mark.parametrize("dtype, channels", [(np.uint16, 0), (np.float32, 0), (np.uint8, 3),
                                             (np.uint16, 3)])
def test_rows_read_on_demand_are_the_stored_rows(tmp_path, dtype, channels):
    rng = np.random.default_rng(2)
    shape = (203, 150) + ((channels,) if channels else ())
    img = (rng.random(shape) * 5000).astype(dtype)
    for name, path in write_variants(tmp_path, img).items():
        with W.open_tiff_rows(path) as rows:
            assert rows.shape == img.shape and rows.dtype == img.dtype
            for y0, y1 in ((0, 1), (5, 70), (60, 203), (0, 203), (202, 203), (3, 4)):
                assert np.array_equal(rows.rows(y0, y1), img[y0:y1]), (name, y0, y1)
            assert len(rows._decoded) <= 2 or name == "strips"


def test_a_stack_plane_is_read_row_by_row(tmp_path):
    planes = np.arange(3 * 40 * 30, dtype=np.uint16).reshape(3, 40, 30)
    tifffile.imwrite(tmp_path / "s.tif", planes, tile=(16, 16), photometric="minisblack")
    with W.open_tiff_rows(StackPlane(tmp_path / "s.tif", 2)) as rows:
        assert np.array_equal(rows.rows(10, 33), planes[2, 10:33])


def test_files_that_cannot_be_read_by_rows_are_read_whole(tmp_path):
    import cv2
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((5, 5), np.uint8))
    tifffile.imwrite(tmp_path / "planar.tif", np.zeros((3, 20, 20), np.uint8),
                     photometric="rgb", planarconfig="separate")
    assert W.open_tiff_rows(tmp_path / "a.png") is None
    assert W.open_tiff_rows(tmp_path / "planar.tif") is None
    assert W.plane_shape(tmp_path / "a.png") == (5, 5)
    assert W.plane_shape(tmp_path / "planar.tif") == (20, 20)


@pytest.mark.parametrize("dtype", [np.uint16, np.int16])
@pytest.mark.parametrize("rule", RULES)
def test_streamed_range_of_integer_planes_is_the_in_memory_range(tmp_path, dtype, rule,
                                                                  monkeypatch):
    monkeypatch.setattr(W, "BAND_ROWS", 32)
    rng = np.random.default_rng(4)
    img = rng.normal(1000, 300, (301, 77)).astype(dtype)
    img[5, 5] = 30000                      # a hot pixel
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(32, 32))
    with W.open_tiff_rows(tmp_path / "a.tif") as rows:
        assert W.streamed_intensity_range(rows, rule, "a") == intensity_range(img, rule)


def test_streamed_range_of_float_planes(tmp_path, monkeypatch):
    """Minimum and maximum exact; percentiles from a sample, close to the whole plane's."""
    monkeypatch.setattr(W, "BAND_ROWS", 40)
    monkeypatch.setattr(W, "SAMPLE_PIXELS", 5000)
    img = np.random.default_rng(5).normal(0.5, 0.1, (400, 300)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", img, rowsperstrip=25)
    with W.open_tiff_rows(tmp_path / "f.tif") as rows:
        assert W.streamed_intensity_range(rows, {"rule": "full"}, "f") == intensity_range(
            img, {"rule": "full"})
        low, high = W.streamed_intensity_range(rows, DEFAULT_INTENSITY, "f")
    exact_low, exact_high = intensity_range(img, DEFAULT_INTENSITY)
    spread = img.std()
    assert abs(low - exact_low) < 0.2 * spread and abs(high - exact_high) < 0.2 * spread
    img[399, 299] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", img, rowsperstrip=25)
    with W.open_tiff_rows(tmp_path / "nan.tif") as rows:
        for intensity in (DEFAULT_INTENSITY, {"rule": "fixed", "low": 0.0, "high": 1.0}):
            with pytest.raises(PipelineError, match="1 NaN or infinite"):
                W.streamed_intensity_range(rows, intensity, "image nan.tif")


@pytest.mark.parametrize("color_mode", ["grey", "rgb"])
def test_streamed_rows_are_the_in_memory_frames_rows(tmp_path, color_mode):
    """What the model sees of a streamed plane, mirrored past the border as the tiles ask,
    equals the same rows of the frame read whole."""
    rng = np.random.default_rng(6)
    img = rng.integers(0, 4095, (90, 70, 3) if color_mode == "rgb" else (90, 70),
                       dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", img, tile=(32, 32),
                     photometric="rgb" if color_mode == "rgb" else None)
    whole = to_color_mode(read_image(tmp_path / "a.tif"), color_mode)
    with W.open_tiff_rows(tmp_path / "a.tif") as rows:
        frame = W.StreamedFrame(rows, DEFAULT_INTENSITY, color_mode, "a")
        for y0, y1, width in ((0, 90, 70), (60, 124, 96), (85, 300, 200), (0, 1, 70)):
            expected = reflect_pad(whole, y1, width)[y0:y1]
            assert np.array_equal(W.mirrored_rows(frame, y0, y1, width), expected)


@pytest.mark.parametrize("rule", RULES)
def test_a_1_bit_plane_streams_as_0_and_255_as_read_whole(tmp_path, rule):
    """1-bit pixels are 0 and 255, 8-bit pixels used as they are, whatever the rule: read as
    0 and 1 through --intensity fixed, a streamed plane came out all 0."""
    img = np.random.default_rng(10).random((70, 50)) > 0.5
    tifffile.imwrite(tmp_path / "b.tif", img, rowsperstrip=16)
    whole = read_image(tmp_path / "b.tif", rule)
    assert set(np.unique(whole)) == {0, 255}
    with W.open_tiff_rows(tmp_path / "b.tif") as rows:
        frame = W.StreamedFrame(rows, rule, "grey", "b")
        assert frame.range is None and np.array_equal(frame.rows(0, 70), whole)


def test_tiled_mask_written_band_by_band(tmp_path):
    rng = np.random.default_rng(7)
    mask = rng.integers(0, 3, (600, 530), dtype=np.uint8)
    starts = [0, 3, 100, 101, 356, 599, 600]
    bands = [(a, mask[a:b]) for a, b in zip(starts, starts[1:])]
    W.write_tiled_mask(tmp_path / "m.tif", mask.shape, iter(bands), pixel_size=0.25)
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled
        assert np.array_equal(tif.asarray(), mask)
    assert pixel_size_um(tmp_path / "m.tif") == pytest.approx(0.25)


def test_overview_keeps_every_step_th_pixel(monkeypatch):
    monkeypatch.setattr(W, "OVERVIEW_SIDE", 40)
    image = np.random.default_rng(8).integers(0, 255, (130, 95, 3), dtype=np.uint8)
    overview = W.Overview(image.shape, channels=(3,))
    for y0, y1 in ((0, 7), (7, 64), (64, 130)):
        overview.add(y0, image[y0:y1])
    assert overview.step == 4
    assert np.array_equal(overview.image, image[::4, ::4])


def test_a_damaged_plane_is_one_clear_error(tmp_path):
    """Strips or tiles damaged in the file: a PipelineError naming the file, raised when the
    rows are reached (the header was whole)."""
    img = np.random.default_rng(9).integers(0, 60000, (300, 200), dtype=np.uint16)
    path = tmp_path / "bad.tif"
    tifffile.imwrite(path, img, tile=(64, 64), compression="zlib")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3] + b"\xff" * (len(data) - len(data) * 2 // 3))
    with W.open_tiff_rows(path) as rows:
        assert np.array_equal(rows.rows(0, 10), img[:10])
        with pytest.raises(PipelineError, match="cannot read TIFF .*bad.tif"):
            rows.rows(250, 300)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_plane_cut_short_is_refused_when_opened_not_when_its_rows_are_reached(tmp_path,
                                                                                dtype):
    """A slide whose copy did not finish: refused before the model loads
    (predict_lovasz_loss.streamed_frames opens every TIFF), not after the hours of
    prediction the rows before the cut take (8-bit planes have no first pass)."""
    img = np.random.default_rng(9).integers(0, 200, (300, 200)).astype(dtype)
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, img, rowsperstrip=16)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(PipelineError, match="TIFF .*cut.tif is cut short .*save it again"):
        W.open_tiff_rows(path)
