"""Tests for mpcs.data.images: robust RGB loading and cheap image checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mpcs.core.errors import DataError, MpcsError
from mpcs.data.images import (
    IMAGE_EXTENSIONS,
    check_image,
    is_image_file,
    is_stray_file,
    load_rgb,
)

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
BCC_DIR = SHARED_DATA / "bcc"
BREAKHIS_DIR = SHARED_DATA / "breakhis"


def as_array(image: Image.Image) -> np.ndarray:
    """Check the image is 8-bit RGB and return its pixels."""
    assert image.mode == "RGB"
    array = np.asarray(image)
    assert array.dtype == np.uint8
    assert array.shape == (image.height, image.width, 3)
    return array


def save(image: Image.Image, path: Path, **kwargs: object) -> Path:
    """Save ``image`` to ``path`` and return the path."""
    image.save(path, **kwargs)
    return path


# --------------------------------------------------------------------------- conversions


def test_rgb_png_is_returned_unchanged(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = save(Image.fromarray(pixels), tmp_path / "rgb.png")
    np.testing.assert_array_equal(as_array(load_rgb(path)), pixels)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 12
    path = save(Image.fromarray(gray), tmp_path / "gray.png")
    array = as_array(load_rgb(path))
    for channel in range(3):
        np.testing.assert_array_equal(array[..., channel], gray)


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 255, 0)  # fully transparent blue -> white
    rgba[1, 0] = (0, 0, 0, 128)  # half transparent black -> mid grey
    rgba[1, 1] = (0, 255, 0, 255)
    path = save(Image.fromarray(rgba, mode="RGBA"), tmp_path / "rgba.png")
    array = as_array(load_rgb(path))
    assert tuple(array[0, 0]) == (255, 0, 0)
    assert tuple(array[0, 1]) == (255, 255, 255)
    assert all(120 <= v <= 135 for v in array[1, 0])
    assert tuple(array[1, 1]) == (0, 255, 0)


def test_gray_alpha_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("LA", (2, 1), (0, 0))
    image.putpixel((1, 0), (0, 255))
    array = as_array(load_rgb(save(image, tmp_path / "la.png")))
    assert tuple(array[0, 0]) == (255, 255, 255)
    assert tuple(array[0, 1]) == (0, 0, 0)


def test_palette_image_is_expanded(tmp_path: Path) -> None:
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    image.putdata([0, 1, 2])
    array = as_array(load_rgb(save(image, tmp_path / "palette.png")))
    assert [tuple(p) for p in array[0]] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_palette_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    image.putdata([0, 1])
    path = save(image, tmp_path / "palette_t.png", transparency=0)
    array = as_array(load_rgb(path))
    assert tuple(array[0, 0]) == (255, 255, 255)
    assert tuple(array[0, 1]) == (200, 100, 50)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path, suffix: str) -> None:
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / f"gray16{suffix}")
    array = as_array(load_rgb(path))
    assert list(array[0, :, 0]) == [0, 1, 128, 255]
    assert (array[..., 0] == array[..., 2]).all()


def test_32_bit_integer_tiff_with_16_bit_values_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0, 32896, 65535]], dtype=np.int32)
    path = save(Image.fromarray(values, mode="I"), tmp_path / "gray32.tif")
    array = as_array(load_rgb(path))
    assert list(array[0, :, 0]) == [0, 128, 255]


def test_float_tiff_in_unit_range_is_scaled(tmp_path: Path) -> None:
    values = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    path = save(Image.fromarray(values, mode="F"), tmp_path / "float.tif")
    array = as_array(load_rgb(path))
    assert list(array[0, :, 0]) == [0, 128, 255]


def test_cmyk_is_converted(tmp_path: Path) -> None:
    image = Image.new("CMYK", (2, 2), (0, 0, 0, 0))  # no ink -> white
    array = as_array(load_rgb(save(image, tmp_path / "cmyk.tif")))
    assert (array == 255).all()


def test_bilevel_is_converted(tmp_path: Path) -> None:
    image = Image.new("1", (2, 1), 0)
    image.putpixel((1, 0), 1)
    array = as_array(load_rgb(save(image, tmp_path / "bw.png")))
    assert tuple(array[0, 0]) == (0, 0, 0)
    assert tuple(array[0, 1]) == (255, 255, 255)


@pytest.mark.parametrize("suffix", [".tif", ".tiff", ".jpg", ".bmp"])
def test_other_formats_load_as_rgb(tmp_path: Path, suffix: str) -> None:
    image = Image.new("RGB", (9, 4), (200, 100, 50))
    loaded = load_rgb(save(image, tmp_path / f"image{suffix}"))
    array = as_array(loaded)
    assert loaded.size == (9, 4)
    assert np.abs(array.astype(int) - (200, 100, 50)).max() <= 3


def test_compressed_tiff_loads(tmp_path: Path) -> None:
    image = Image.new("RGB", (16, 8), (10, 20, 30))
    path = save(image, tmp_path / "packbits.tif", compression="packbits")
    assert (as_array(load_rgb(path)) == (10, 20, 30)).all()


def test_load_rgb_returns_an_independent_image(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (3, 3), (1, 2, 3)), tmp_path / "a.png")
    image = load_rgb(path)
    path.unlink()  # the file is closed and the pixels are in memory
    assert image.getpixel((0, 0)) == (1, 2, 3)


# --------------------------------------------------------------------------- failures


def write_truncated_png(path: Path) -> Path:
    """Write a valid noisy PNG, then cut it in half."""
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("function", [load_rgb, check_image])
def test_missing_file(tmp_path: Path, function) -> None:
    path = tmp_path / "missing_image.png"
    with pytest.raises(DataError, match="file not found") as info:
        function(path)
    assert "missing_image.png" in str(info.value)


@pytest.mark.parametrize("function", [load_rgb, check_image])
def test_empty_file(tmp_path: Path, function) -> None:
    path = tmp_path / "zero_bytes.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"file is empty \(0 bytes\)") as info:
        function(path)
    assert "zero_bytes.png" in str(info.value)


@pytest.mark.parametrize("function", [load_rgb, check_image])
def test_not_an_image(tmp_path: Path, function) -> None:
    path = tmp_path / "notes_in_disguise.png"
    path.write_text("this is not a PNG\n" * 10)
    with pytest.raises(DataError, match="not an image file") as info:
        function(path)
    assert "notes_in_disguise.png" in str(info.value)


@pytest.mark.parametrize("function", [load_rgb, check_image])
def test_truncated_png(tmp_path: Path, function) -> None:
    path = write_truncated_png(tmp_path / "cut_short.png")
    with pytest.raises(DataError, match="truncated or corrupt image") as info:
        function(path)
    assert "cut_short.png" in str(info.value)


def test_truncated_jpeg_fails_at_load(tmp_path: Path) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = tmp_path / "cut_short.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert check_image(path) == (64, 64)  # header only: documented behaviour
    with pytest.raises(DataError, match="truncated or corrupt image") as info:
        load_rgb(path)
    assert "cut_short.jpg" in str(info.value)


def test_corrupt_pixel_data_passes_check_but_fails_load(tmp_path: Path) -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = tmp_path / "garbled.png"
    Image.fromarray(pixels).save(path)
    data = bytearray(path.read_bytes())
    start = data.index(b"IDAT") + 4
    data[start + 10 : start + 200] = bytes(190)  # zero out compressed data, keep the end
    path.write_bytes(bytes(data))
    assert check_image(path) == (32, 32)
    with pytest.raises(DataError, match="truncated or corrupt image") as info:
        load_rgb(path)
    assert "garbled.png" in str(info.value)


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(DataError, match="folder") as info:
        load_rgb(folder)
    assert "folder.png" in str(info.value)


def test_data_error_is_an_mpcs_error(tmp_path: Path) -> None:
    with pytest.raises(MpcsError):
        load_rgb(tmp_path / "nothing.png")


# --------------------------------------------------------------------------- checks


def test_check_image_returns_width_and_height(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (700, 456)), tmp_path / "short.png")
    assert check_image(path) == (700, 456)
    assert check_image(str(path)) == (700, 456)


def test_file_name_helpers() -> None:
    assert IMAGE_EXTENSIONS == {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
    assert is_image_file("a.PNG") and is_image_file("b.tiff") and not is_image_file("c.txt")
    for name in ["Thumbs.db", "thumbs.db", ".DS_Store", "desktop.ini", "README.md",
                 "counts.csv", "notes.TXT", ".hidden.png", "._SOB_B_A-14-1-100-001.png"]:
        assert is_stray_file(name), name
    for name in ["SOB_B_A-14-22549AB-100-001.png", "image.jpg", "data.zip"]:
        assert not is_stray_file(name), name


# --------------------------------------------------------------------------- real data


def test_real_bcc_tiffs_load_as_rgb() -> None:
    if not BCC_DIR.is_dir():
        pytest.skip(f"real BCC sample data not found at {BCC_DIR}")
    files = sorted(BCC_DIR.glob("*.tif"))
    assert files, f"no .tif files in {BCC_DIR}"
    for path in files:
        assert check_image(path) == (896, 768)
        image = load_rgb(path)
        array = as_array(image)
        assert image.size == (896, 768)
        assert array.std() > 5  # real tissue, not a blank image


def test_real_breakhis_png_loads_as_rgb() -> None:
    if not BREAKHIS_DIR.is_dir():
        pytest.skip(f"real BreakHis sample data not found at {BREAKHIS_DIR}")
    path = next(iter(sorted(BREAKHIS_DIR.rglob("*.png"))))
    image = load_rgb(path)
    as_array(image)
    assert image.size == check_image(path) == (700, 460)
