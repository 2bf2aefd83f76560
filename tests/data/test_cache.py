"""Tests for mpcs.data.cache: decode-once memory-mapped pixel cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mpcs.data.cache as cache_mod
from mpcs.core.errors import DataError
from mpcs.core.runtime import default_cache_dir
from mpcs.data.cache import cache_key, decode_resized, load_images

SIZE = 16


def make_pngs(folder: Path, n: int = 5, seed: int = 0) -> list[Path]:
    """``n`` small RGB PNGs of different sizes (and one grayscale) with random content."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = 20 + 3 * i, 30 + 2 * i
        path = folder / f"img{i}.png"
        if i == n - 1:
            Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").save(path)
        else:
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_decode_resized_is_rgb_channel_first(tmp_path: Path) -> None:
    path = make_pngs(tmp_path, 1)[0]
    arr = decode_resized(path, SIZE)
    assert arr.shape == (3, SIZE, SIZE) and arr.dtype == np.uint8
    expected = np.asarray(Image.open(path).convert("RGB").resize(
        (SIZE, SIZE), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(arr, expected)


def test_no_cache_returns_uint8_pixels_in_order(tmp_path: Path) -> None:
    paths = make_pngs(tmp_path / "img")
    out = load_images(paths, SIZE, cache_dir=None, progress=False)
    assert out.shape == (5, 3, SIZE, SIZE) and out.dtype == np.uint8
    for i, p in enumerate(paths):
        assert np.array_equal(out[i], decode_resized(p, SIZE))
    # Grayscale is replicated to three channels.
    assert np.array_equal(out[4, 0], out[4, 1]) and np.array_equal(out[4, 1], out[4, 2])
    assert not (tmp_path / "cache").exists()


def test_cache_equals_no_cache_and_is_written(tmp_path: Path) -> None:
    paths = make_pngs(tmp_path / "img")
    cdir = tmp_path / "cache"
    plain = load_images(paths, SIZE, cache_dir=None, progress=False)
    cached = load_images(paths, SIZE, cache_dir=cdir, progress=False, workers=2)
    assert cached.shape == (5, 3, SIZE, SIZE) and cached.dtype == np.uint8
    assert np.array_equal(np.asarray(cached), plain)
    key = cache_key(paths, SIZE)
    assert cache_files(cdir) == [f"{key}.json", f"{key}.npy"]
    assert np.array_equal(np.load(cdir / f"{key}.npy"), plain)


def test_second_call_reuses_the_cache_without_decoding(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_pngs(tmp_path / "img")
    cdir = tmp_path / "cache"
    first = np.array(load_images(paths, SIZE, cache_dir=cdir, progress=False))
    npy = cdir / f"{cache_key(paths, SIZE)}.npy"
    mtime = npy.stat().st_mtime_ns

    def boom(path: object, size: int) -> np.ndarray:
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(cache_mod, "decode_resized", boom)
    second = load_images(paths, SIZE, cache_dir=cdir, progress=False)
    assert np.array_equal(np.asarray(second), first)
    assert npy.stat().st_mtime_ns == mtime
    # The same paths given as strings hit the same entry.
    third = load_images([str(p) for p in paths], SIZE, cache_dir=str(cdir), progress=False)
    assert np.array_equal(np.asarray(third), first)


def test_other_size_or_order_is_another_entry(tmp_path: Path) -> None:
    paths = make_pngs(tmp_path / "img")
    cdir = tmp_path / "cache"
    a = load_images(paths, SIZE, cache_dir=cdir, progress=False)
    b = load_images(paths, 8, cache_dir=cdir, progress=False)
    c = load_images(paths[::-1], SIZE, cache_dir=cdir, progress=False)
    assert b.shape == (5, 3, 8, 8)
    assert np.array_equal(np.asarray(c), np.asarray(a)[::-1])
    assert len(cache_files(cdir)) == 6
    assert len({cache_key(paths, SIZE), cache_key(paths, 8), cache_key(paths[::-1], SIZE)}) == 3


def test_touching_a_file_changes_the_key_and_rebuilds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_pngs(tmp_path / "img")
    cdir = tmp_path / "cache"
    load_images(paths, SIZE, cache_dir=cdir, progress=False)
    old_key = cache_key(paths, SIZE)
    st = paths[2].stat()
    os.utime(paths[2], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    new_key = cache_key(paths, SIZE)
    assert new_key != old_key
    calls: list[str] = []
    real = cache_mod.decode_resized

    def counting(path: object, size: int) -> np.ndarray:
        calls.append(str(path))
        return real(path, size)

    monkeypatch.setattr(cache_mod, "decode_resized", counting)
    load_images(paths, SIZE, cache_dir=cdir, progress=False)
    assert len(calls) == 5
    assert (cdir / f"{new_key}.npy").exists()


def test_changed_content_is_picked_up(tmp_path: Path) -> None:
    paths = make_pngs(tmp_path / "img")
    cdir = tmp_path / "cache"
    before = np.array(load_images(paths, SIZE, cache_dir=cdir, progress=False))
    st = paths[1].stat()
    Image.new("RGB", (40, 50), (255, 0, 0)).save(paths[1])
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # even if same second
    after = np.asarray(load_images(paths, SIZE, cache_dir=cdir, progress=False))
    assert np.array_equal(after[0], before[0])
    assert (after[1, 0] == 255).all() and (after[1, 1:] == 0).all()


def test_corrupt_image_raises_data_error_and_leaves_no_partial_cache(tmp_path: Path) -> None:
    paths = make_pngs(tmp_path / "img")
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[: len(data) // 2])  # truncated PNG
    cdir = tmp_path / "cache"
    with pytest.raises(DataError) as info:
        load_images(paths, SIZE, cache_dir=cdir, progress=False, workers=2)
    assert str(paths[3]) in str(info.value)
    assert cache_files(cdir) == []
    with pytest.raises(DataError, match="img3.png"):
        load_images(paths, SIZE, cache_dir=None, progress=False)


def test_not_an_image_raises_data_error(tmp_path: Path) -> None:
    paths = make_pngs(tmp_path / "img", 2)
    paths[0].write_bytes(b"this is not a png")
    cdir = tmp_path / "cache"
    with pytest.raises(DataError, match="img0.png"):
        load_images(paths, SIZE, cache_dir=cdir, progress=False)
    assert cache_files(cdir) == []


@pytest.mark.parametrize("use_cache", [False, True])
def test_missing_file_raises_data_error_naming_it(tmp_path: Path, use_cache: bool) -> None:
    # Same error with and without the cache (the cache key stats every file first).
    paths = make_pngs(tmp_path / "img", 2)
    paths.append(tmp_path / "img" / "missing.png")
    cdir = tmp_path / "cache"
    with pytest.raises(DataError, match="missing.png"):
        load_images(paths, SIZE, cache_dir=cdir if use_cache else None, progress=False)
    assert cache_files(cdir) == []


def test_empty_list(tmp_path: Path) -> None:
    out = load_images([], SIZE, cache_dir=None, progress=False)
    assert out.shape == (0, 3, SIZE, SIZE)
    out = load_images([], SIZE, cache_dir=tmp_path / "cache", progress=False)
    assert out.shape == (0, 3, SIZE, SIZE)


def test_default_cache_dir_honours_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPCS_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MPCS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "mpcs"
