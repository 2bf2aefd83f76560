"""Issue 14 part B ("nothing lost, round 2"): full disk and damaged files in the image cache,
file names that are not UTF-8, CSV formula injection, pickled weights files, and names that
would become links or inlined files in the report."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import mpcs.data.cache as cache_mod
import mpcs.engine.pretrain as pretrain_mod
from mpcs.api.embed import embed
from mpcs.api.predict import predict
from mpcs.config import resolve
from mpcs.core.errors import CheckpointError, DataError
from mpcs.core.tables import csv_text, neutralise, read_csv, restore, safe_frame, safe_rows
from mpcs.data.cache import cache_key, decode_resized, load_images
from mpcs.engine.pretrain import pretrain
from mpcs.evaluation.figures import Figure, figures_markdown
from mpcs.evaluation.html import escape_markdown, markdown_to_html
from mpcs.evaluation.report import write_report
from mpcs.models import create_encoder
from tests.api.test_inference import make_finetune_ckpt
from tests.conftest import TINY_OVERRIDES

torch.set_num_threads(1)

SIZE = 16
SRC = Path(__file__).resolve().parents[1] / "src" / "mpcs"
needs_bytes_names = pytest.mark.skipif(
    not sys.platform.startswith("linux") or sys.getfilesystemencoding() != "utf-8",
    reason="file names with arbitrary bytes need Linux with a UTF-8 file-system encoding")


def make_pngs(folder: Path, n: int = 4) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text, text
    return text


# --------------------------------------------------------------------------- item 2: disk full


def test_cache_checks_free_space_before_writing(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_pngs(tmp_path / "img")
    cdir = tmp_path / "cache"
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage",
                        lambda p: usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(DataError) as exc:
        load_images(paths, SIZE, cache_dir=cdir, progress=False)
    line = one_line(exc)
    assert str(cdir) in line and "not enough free space" in line and "use_cache" in line
    assert not list(cdir.glob("*.npy")), "no (temporary) cache file may be left"


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="needs posix_fallocate")
def test_full_disk_while_reserving_the_cache_file_is_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_pngs(tmp_path / "img")
    cdir = tmp_path / "cache"
    calls: list[int] = []

    def no_space(fd: int, offset: int, length: int) -> None:
        calls.append(length)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(DataError) as exc:
        load_images(paths, SIZE, cache_dir=cdir, progress=False)
    line = one_line(exc)
    assert str(cdir) in line and os.strerror(errno.ENOSPC) in line
    assert calls and calls[0] >= len(paths) * 3 * SIZE * SIZE  # the whole array reserved
    assert not list(cdir.glob("*.npy"))


# --------------------------------------------------------------------------- item 3: checksum


def _npy(cdir: Path, paths: list[Path]) -> Path:
    return cdir / f"{cache_key(paths, SIZE)}.npy"


def test_damaged_cache_file_is_rebuilt_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_pngs(tmp_path / "img")
    cdir = tmp_path / "cache"
    expected = np.stack([decode_resized(p, SIZE) for p in paths])
    load_images(paths, SIZE, cache_dir=cdir, progress=False)
    npy = _npy(cdir, paths)
    st = npy.stat()
    with open(npy, "r+b") as f:  # bit rot in the pixels; size and mtime unchanged
        f.seek(st.st_size - 100)
        chunk = f.read(50)
        f.seek(st.st_size - 100)
        f.write(bytes(255 - b for b in chunk))
    os.utime(npy, ns=(st.st_atime_ns, st.st_mtime_ns))
    monkeypatch.setattr(cache_mod, "_VERIFIED", set(), raising=False)  # a new process
    with caplog.at_level(logging.WARNING, logger="mpcs.data.cache"):
        again = load_images(paths, SIZE, cache_dir=cdir, progress=False)
    assert np.array_equal(np.asarray(again), expected)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("damaged" in w and str(npy) in w for w in warned), warned
    info = json.loads(npy.with_suffix(".json").read_text())
    assert info["blake2b"] == hashlib.blake2b(npy.read_bytes(), digest_size=32).hexdigest()


def test_cache_file_is_hashed_once_per_process(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_pngs(tmp_path / "img")
    cdir = tmp_path / "cache"
    hashed: list[Path] = []
    real = cache_mod.file_digest

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(cache_mod, "file_digest", counting)
    load_images(paths, SIZE, cache_dir=cdir, progress=False)
    assert len(hashed) == 1  # the new file, once, for its checksum
    load_images(paths, SIZE, cache_dir=cdir, progress=False)
    load_images(paths, SIZE, cache_dir=cdir, progress=False)
    assert len(hashed) == 1  # known to this process: not hashed again
    cache_mod._VERIFIED.clear()
    load_images(paths, SIZE, cache_dir=cdir, progress=False)
    assert hashed[1:] == [_npy(cdir, paths)]


def test_cache_entry_without_checksum_is_rebuilt(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_pngs(tmp_path / "img")
    cdir = tmp_path / "cache"
    load_images(paths, SIZE, cache_dir=cdir, progress=False)
    meta = _npy(cdir, paths).with_suffix(".json")
    info = json.loads(meta.read_text())
    del info["blake2b"]
    meta.write_text(json.dumps(info))  # as an older mpcs wrote it
    monkeypatch.setattr(cache_mod, "_VERIFIED", set(), raising=False)  # a new process
    decoded: list[str] = []
    real = cache_mod.decode_resized
    monkeypatch.setattr(cache_mod, "decode_resized",
                        lambda p, s: decoded.append(str(p)) or real(p, s))
    load_images(paths, SIZE, cache_dir=cdir, progress=False)
    assert len(decoded) == len(paths)
    assert "blake2b" in json.loads(meta.read_text())


# --------------------------------------------------------------------------- item 6: bytes


@needs_bytes_names
def test_cache_key_and_cache_accept_paths_that_are_not_utf8(tmp_path: Path) -> None:
    folder = tmp_path / os.fsdecode(b"data-\xff")
    paths = make_pngs(folder)
    key = cache_key(paths, SIZE)
    pixels = load_images(paths, SIZE, cache_dir=tmp_path / "cache", progress=False)
    assert np.array_equal(np.asarray(pixels)[1], decode_resized(paths[1], SIZE))
    assert (tmp_path / "cache" / f"{key}.npy").is_file()
    # valid UTF-8 paths keep the key they had (existing caches stay valid)
    plain = make_pngs(tmp_path / "plain-é")
    h = hashlib.sha1(f"v{cache_mod.CACHE_VERSION}|{SIZE}".encode())
    for p in plain:
        st = os.stat(p)
        h.update(f"|{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}".encode())
    assert cache_key(plain, SIZE) == h.hexdigest()[:20]


@pytest.mark.slow
@needs_bytes_names
def test_pretrain_on_a_data_path_that_is_not_utf8(tiny_breakhis: Path, tmp_path: Path) -> None:
    data = tmp_path / os.fsdecode(b"caf\xe9") / "BreaKHis_v1"
    shutil.copytree(tiny_breakhis, data)
    cfg = resolve(preset="cpu-small", overrides=[*TINY_OVERRIDES, "train.threads=1"])
    result = pretrain(cfg, data, tmp_path / "run", progress=False)
    assert Path(result["checkpoint"]).is_file()


@pytest.fixture(scope="module")
def finetune_ckpt(tiny_breakhis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_finetune_ckpt(tiny_breakhis, tmp_path_factory.mktemp("hard-ft"))


@pytest.fixture
def images(tiny_breakhis: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in sorted(tiny_breakhis.rglob("*.png"))[:3]:
        shutil.copy(f, folder / f.name)
    return folder


@needs_bytes_names
@pytest.mark.parametrize("command", ["predict", "embed"])
def test_names_that_are_not_utf8_are_written_escaped(
        command: str, finetune_ckpt: Path, images: Path, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    src = next(images.glob("*.png"))
    odd = images / os.fsdecode(b"odd-\xff-name.png")
    shutil.copy(src, odd)
    out = tmp_path / "out.csv"
    run = predict if command == "predict" else embed
    with caplog.at_level(logging.WARNING):
        df = run(finetune_ckpt, images, out, batch_size=2, progress=False)
    assert len(df) == 4 and str(odd) in set(df["path"])  # the returned table keeps the name
    written = read_csv(out)
    assert len(written) == 4
    assert str(images / "odd-\\xff-name.png") in set(written["path"])
    warned = [r.getMessage() for r in caplog.records if "not UTF-8" in r.getMessage()]
    assert len(warned) == 1 and str(out) in warned[0] and "1 cell(s)" in warned[0]


# --------------------------------------------------------------------------- item 13: formulas


TRICKY = ["=cmd|' /C calc'!A0.png", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "'=x", "''-1",
          "'plain", "plain", "a=b", "", "'"]


@pytest.mark.parametrize("value", TRICKY)
def test_formula_cells_are_prefixed_and_read_back_exactly(value: str) -> None:
    cell = neutralise(value)
    assert not str(cell).startswith(("=", "+", "-", "@", "\t", "\r"))
    assert restore(cell) == value


def test_only_text_cells_change_numbers_stay_numbers(tmp_path: Path) -> None:
    df = pd.DataFrame({"path": ["=HYPERLINK(\"x\")", "-a.png", "ok.png"],
                       "score": [-1.5, 0.25, -3.0], "n": [-1, 2, 3]})
    text = csv_text(df)
    lines = text.splitlines()
    assert lines[1].startswith('"\'=HYPERLINK') and lines[2] == "'-a.png,0.25,2"
    assert lines[3] == "ok.png,-3.0,3" and ",-1.5,-1" in lines[1]
    (tmp_path / "t.csv").write_text(text)
    back = read_csv(tmp_path / "t.csv")
    assert back["path"].tolist() == df["path"].tolist()
    assert back["score"].tolist() == [-1.5, 0.25, -3.0] and back["n"].tolist() == [-1, 2, 3]
    assert safe_frame(df)["score"].dtype == np.float64
    assert safe_rows([("=x", -1)]) == [["'=x", -1]]


def test_predict_csv_holds_no_live_formula(finetune_ckpt: Path, images: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    name = "=cmd|' /C calc'!A0.png"  # on Linux: the file C calc'!A0.png in a folder
    (images / name).parent.mkdir()
    shutil.copy(next(images.glob("*.png")), images / name)
    monkeypatch.chdir(images)
    out = tmp_path / "pred.csv"
    predict(finetune_ckpt, [name, *sorted(p.name for p in images.glob("SOB*"))], out,
            progress=False)
    lines = out.read_text().splitlines()
    cells = [c for line in lines[1:] for c in line.split(",")]
    assert not [c for c in cells if c.lstrip('"').startswith(("=", "+", "-", "@"))], lines
    assert any(line.startswith("\"'=cmd|") or line.startswith("'=cmd|") for line in lines)
    assert name in set(read_csv(out)["path"])


def test_every_csv_the_project_writes_goes_through_core_tables() -> None:
    unsafe = []
    for file in SRC.rglob("*.py"):
        if file.relative_to(SRC).as_posix() == "core/tables.py":
            continue
        for i, line in enumerate(file.read_text().splitlines(), start=1):
            if ".to_csv(" in line and "safe_frame(" not in line:
                unsafe.append(f"{file.relative_to(SRC)}:{i}: {line.strip()}")
            if re.search(r"\bpd\.read_csv\(", line):
                unsafe.append(f"{file.relative_to(SRC)}:{i}: {line.strip()}")
    assert not unsafe, "\n".join(unsafe)


# --------------------------------------------------------------------------- item 14: pickles


class Payload:
    def __reduce__(self):  # noqa: ANN204 - unpickling would call print (blocked)
        return (print, ("code from a weights file was run",))


@pytest.fixture
def pickled_weights(tmp_path: Path) -> Path:
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": torch.zeros(1), "extra": Payload()}, path)
    return path


def test_pickled_weights_file_is_refused_in_our_own_line(pickled_weights: Path) -> None:
    with pytest.raises(CheckpointError) as exc:
        create_encoder("resnet18", weights=pickled_weights)
    line = one_line(exc)
    assert str(pickled_weights) in line and "refused" in line and "(print)" in line
    assert "False" not in line and "weights_only=True" in line


def test_pretrain_checks_model_weights_before_loading_data(
        pickled_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_data(*args: object, **kwargs: object) -> None:
        raise AssertionError("data were loaded before model.weights was checked")

    monkeypatch.setattr(pretrain_mod, "find_pair_sources", no_data)
    cfg = resolve(preset="cpu-small", overrides=[*TINY_OVERRIDES,
                                                 f"model.weights={pickled_weights}"])
    with pytest.raises(CheckpointError) as exc:
        pretrain(cfg, tmp_path / "no-data", tmp_path / "run", progress=False)
    assert "refused" in one_line(exc)


# --------------------------------------------------------------------------- item 16: Markdown


JS = "[x](javascript:alert(1))"


def _cells(root: Path, methods: dict[str, str]) -> Path:
    rng = np.random.default_rng(0)
    for fold in range(2):
        for folder, method in methods.items():
            cell = root / f"fold{fold}" / folder / "40X" / "lf1"
            cell.mkdir(parents=True)
            (cell / "cell.json").write_text(json.dumps({
                "dataset": "breakhis", "mode": "linear", "encoder": "resnet18",
                "init": "none", "fold": fold, "method": method, "magnification": "40X",
                "label_fraction": 1.0}))
            pd.DataFrame({"path": [f"/nowhere/img{i}.png" for i in range(8)],
                          "patient_id": [f"p{i % 4}" for i in range(8)],
                          "magnification": "40X", "label": ["benign", "malignant"] * 4,
                          "probability": rng.random(8),
                          "prediction": "benign"}).to_csv(cell / "test_predictions.csv",
                                                          index=False)
    return root


def test_report_names_are_text_not_links_or_files(tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    Image.new("RGB", (2, 2)).save(secret)
    inline = f"![a]({secret})"
    exp = _cells(tmp_path / "exp", {"base": "Random init", "m1": JS, "m2": inline})
    _, md_path = write_report(exp, figures=False)
    md = md_path.read_text()
    page = (exp / "report.html").read_text()
    assert not re.search(r"(?<!\\)\[x\]\(javascript", md)
    assert not re.search(r"(?<!\\)!\[a\]\(", md)
    assert "href=" not in page and "data:image" not in page
    assert JS in page and inline in page  # the names are shown as they are


def test_html_refuses_unsafe_links_and_images_outside_the_report(tmp_path: Path) -> None:
    (tmp_path / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    base = tmp_path / "exp"
    (base / "figures").mkdir(parents=True)
    Image.new("RGB", (2, 2)).save(base / "figures" / "a.png")
    md = "\n".join([f"Text {JS} and [web](https://example.org) and [rel](figures/a.png).", "",
                    f"![abs]({tmp_path / 'secret.png'})", "", "![up](../secret.png)", "",
                    "![ok](figures/a.png)", ""])
    page = markdown_to_html(md, base)
    assert "javascript" not in " ".join(re.findall(r'href="[^"]*"', page))
    assert 'href="https://example.org"' in page and 'href="figures/a.png"' in page
    assert page.count("data:image") == 1 and 'alt="ok"' in page
    assert page.count("outside the report folder") == 2


def test_figure_captions_are_escaped(tmp_path: Path) -> None:
    (tmp_path / "figures").mkdir()
    Image.new("RGB", (2, 2)).save(tmp_path / "figures" / "a.png")
    caption = f"Grad-CAM of {JS} vs MPCS-OP, fold0 *x* `y` | z"
    md = figures_markdown([Figure(Path("figures/a.png"), caption)])
    page = markdown_to_html(md, tmp_path)
    assert "<a " not in page and "<code>" not in page and "<em>" not in page
    assert page.count("data:image/png") == 1
    assert f"<p>{caption}</p>" in page
    assert escape_markdown("a\nb") == "a b"
