"""``mpcs download``: synthetic archives in the official layouts served on 127.0.0.1 (no
network): download + verify, resume after a cut connection, checksum refusal, unsafe archives,
``--from`` without network, the offline message and exit code 2."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mpcs.cli import main
from mpcs.core.errors import DataError, DownloadError
from mpcs.data.datasets import DOWNLOADS
from mpcs.data.datasets.bach import scan_bach
from mpcs.data.datasets.bcc import scan_bcc
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.data.download.fetch import FetchSettings, fetch, sha256_file
from mpcs.data.download.install import install_dataset, installed
from mpcs.data.download.safe_extract import extract_archive
from mpcs.data.synth.archive import SynthSizes, pack_tar_gz, synthetic_archive
from mpcs.data.synth.breakhis import SynthConfig, write_breakhis
from tests.data.archive_server import ArchiveServer, closed_port

SIZES = SynthSizes(breakhis_patients=4, breakhis_samples=2, breakhis_image=(32, 24),
                   bach_per_class=2, bach_image=(32, 24), bcc_per_class=2, bcc_image=(32, 24))
QUICK = FetchSettings(retries=0, backoff=0.0, timeout=10.0)
SCANNERS = {"breakhis": scan_breakhis, "bach": scan_bach, "bcc": scan_bcc}


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """{name: (synthetic archive in the official layout, its counts)}."""
    out = tmp_path_factory.mktemp("archives")
    return {name: synthetic_archive(name, out, SIZES) for name in DOWNLOADS}


@pytest.fixture
def server(archives: dict[str, tuple[Path, dict]]) -> Iterator[ArchiveServer]:
    files = {f"/{path.name}": path.read_bytes() for path, _ in archives.values()}
    with ArchiveServer(files) as srv:
        yield srv


def local_source(name: str, archives: dict, server: ArchiveServer, **changes):
    """The registry entry pointed at the local server, expecting the synthetic counts."""
    path, expected = archives[name]
    return replace(DOWNLOADS[name], url=server.url(f"/{path.name}"), expected=expected,
                   **changes)


def test_official_archive_layouts(archives: dict) -> None:
    """The synthetic archives unpack like the official ones (what the fix-ups expect)."""
    with tarfile.open(archives["breakhis"][0]) as tar:
        names = tar.getnames()
    assert names[0] == "BreaKHis_v1"
    assert any(n.startswith("BreaKHis_v1/histology_slides/breast/benign/SOB/") for n in names)
    bach = zipfile.ZipFile(archives["bach"][0]).namelist()
    assert all(n.startswith("ICIAR2018_BACH_Challenge/Photos/") for n in bach)
    assert "ICIAR2018_BACH_Challenge/Photos/microscopy_ground_truth.csv" in bach
    bcc = zipfile.ZipFile(archives["bcc"][0]).namelist()
    assert all(n.endswith("_ccd.tif") for n in bcc)


@pytest.mark.parametrize("name", ["breakhis", "bach", "bcc"])
def test_download_unpack_verify(name: str, archives: dict, server: ArchiveServer,
                                tmp_path: Path) -> None:
    source = local_source(name, archives, server)
    said: list[str] = []
    result = install_dataset(source, tmp_path, settings=QUICK, progress=False,
                             say=said.append)
    assert result.ok and result.usable
    assert result.root == tmp_path / source.target
    assert result.counts == archives[name][1]
    assert len(SCANNERS[name](result.root)) == archives[name][1]["images"]
    digest = sha256_file(archives[name][0])
    assert (tmp_path / f"{name}.sha256").read_text().split() == [digest, source.archive]
    assert any(source.citation in s for s in said)  # terms and citation printed
    assert any(digest in s and "recorded" in s for s in said)
    assert not list(tmp_path.glob(".*extracting"))
    record = json.loads((tmp_path / f"{name}.verified.json").read_text())
    assert record["ok"] and record["sha256"] == digest
    # a second call reuses the verified data: no request, no second notice
    n = len(server.requests)
    said.clear()
    again = install_dataset(source, tmp_path, settings=QUICK, progress=False, say=said.append)
    assert again.root == result.root and len(server.requests) == n
    assert len(said) == 1 and "already installed" in said[0]


def test_cut_connection_resumes_to_the_same_sha256(archives: dict, server: ArchiveServer,
                                                   tmp_path: Path) -> None:
    source = local_source("breakhis", archives, server)
    path = f"/{source.archive}"
    size = archives["breakhis"][0].stat().st_size
    server.cut_next(path)
    with pytest.raises(DownloadError) as err:
        install_dataset(source, tmp_path, settings=QUICK, progress=False, say=lambda s: None)
    msg = str(err.value)
    assert source.url in msg and "--from" in msg and "kept" in msg and "\n" not in msg
    part = tmp_path / f"{source.archive}.part"
    assert part.stat().st_size == size // 2
    assert not (tmp_path / source.target).exists()

    result = install_dataset(source, tmp_path, settings=QUICK, progress=False,
                             say=lambda s: None)
    assert server.requests[-1] == (path, f"bytes={size // 2}-")
    assert result.ok and not part.exists()
    assert sha256_file(tmp_path / source.archive) == sha256_file(archives["breakhis"][0])


def test_retries_resume_within_one_call(archives: dict, server: ArchiveServer,
                                        tmp_path: Path) -> None:
    path = "/ICIAR2018_BACH_Challenge.zip"
    server.fail_next(path, 1)
    server.cut_next(path)
    waits: list[float] = []
    dest = fetch(server.url(path), tmp_path / "a.zip", FetchSettings(retries=3, backoff=0.5),
                 progress=False, sleep=waits.append)
    assert waits == [0.5, 1.0]  # back-off doubles
    assert [r for _, r in server.requests] == [None, None, f"bytes={len(dest.read_bytes()) // 2}-"]
    assert dest.read_bytes() == archives["bach"][0].read_bytes()


def test_http_404_is_not_retried(server: ArchiveServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url("/missing.zip"), tmp_path / "m.zip", FetchSettings(retries=3),
              progress=False, sleep=lambda s: pytest.fail("no retry expected"))
    assert len(server.requests) == 1


def test_progress_bar_shows_bytes_and_rate(archives: dict, server: ArchiveServer,
                                           tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fetch(server.url("/BreastCancerCell_dataset.zip"), tmp_path / "b.zip", QUICK, progress=True)
    size = archives["bcc"][0].stat().st_size / 1024
    err = capsys.readouterr().err
    assert "100%" in err and f"{size:.2f}k/{size:.2f}k [" in err and "B/s]" in err


def test_wrong_checksum_is_refused_and_kept_aside(archives: dict, server: ArchiveServer,
                                                  tmp_path: Path) -> None:
    source = local_source("bcc", archives, server, sha256="0" * 64)
    with pytest.raises(DownloadError, match="SHA-256 .* differs from the pinned value") as err:
        install_dataset(source, tmp_path, settings=QUICK, progress=False, say=lambda s: None)
    aside = tmp_path / f"{source.archive}.sha256-mismatch"
    assert str(aside) in str(err.value)
    assert sha256_file(aside) == sha256_file(archives["bcc"][0])
    assert not (tmp_path / source.archive).exists() and not (tmp_path / "bcc").exists()
    # the right pinned value passes
    good = replace(source, sha256=sha256_file(archives["bcc"][0]))
    assert install_dataset(good, tmp_path, settings=QUICK, progress=False,
                           say=lambda s: None).ok


def test_recorded_checksum_guards_a_later_download(archives: dict, server: ArchiveServer,
                                                   tmp_path: Path) -> None:
    source = local_source("bach", archives, server)
    (tmp_path / "bach.sha256").write_text("ab" * 32 + "  ICIAR2018_BACH_Challenge.zip\n")
    with pytest.raises(DownloadError, match="recorded in"):
        install_dataset(source, tmp_path, settings=QUICK, progress=False, say=lambda s: None)
    assert (tmp_path / "ICIAR2018_BACH_Challenge.zip.sha256-mismatch").is_file()


def _tar_with(tmp: Path, member: tarfile.TarInfo, data: bytes = b"x") -> Path:
    path = tmp / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        ok = tarfile.TarInfo("BreaKHis_v1/readme.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return path


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.mark.parametrize("member, why", [
    (tarfile.TarInfo("../evil.txt"), "climbs out"),
    (tarfile.TarInfo("BreaKHis_v1/../../evil.txt"), "climbs out"),
    (tarfile.TarInfo("/tmp/evil-absolute.txt"), "absolute path"),
    (_symlink("BreaKHis_v1/link", "../../evil.txt"), "points out"),
    (_symlink("BreaKHis_v1/abs", "/etc/passwd"), "points out"),
])
def test_unsafe_tar_is_refused(member: tarfile.TarInfo, why: str, tmp_path: Path) -> None:
    archive = _tar_with(tmp_path, member)
    dest = tmp_path / "a" / "b" / "staging"
    with pytest.raises(DownloadError, match=why) as err:
        extract_archive(archive, dest)
    assert str(archive) in str(err.value) and repr(member.name) in str(err.value)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "a" / "evil.txt").exists()
    assert not Path("/tmp/evil-absolute.txt").exists()
    # through the command: refused, nothing unpacked where the readers look
    to = tmp_path / "data"
    assert main(["download", "breakhis", "--to", str(to), "--from", str(archive),
                 "--quiet"]) == 2
    assert not (to / "BreaKHis_v1").exists() and not list(to.glob(".*extracting"))


def test_links_inside_the_folder_are_kept(tmp_path: Path) -> None:
    archive = _tar_with(tmp_path, _symlink("BreaKHis_v1/same", "readme.txt"))
    dest = extract_archive(archive, tmp_path / "out")
    assert (dest / "BreaKHis_v1" / "same").read_text() == "ok"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a\\..\\..\\evil.txt",
                                  "C:/evil.txt"])
def test_unsafe_zip_is_refused(name: str, tmp_path: Path) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("bcc/ok.txt", "ok")
        zf.writestr(zipfile.ZipInfo(name), "evil")
    with pytest.raises(DownloadError, match="absolute path|climbs out"):
        extract_archive(archive, tmp_path / "staging")
    assert not (tmp_path / "staging").exists() or not any((tmp_path / "staging").rglob("*"))
    assert not (tmp_path / "evil.txt").exists()


def test_zip_symlink_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    info = zipfile.ZipInfo("bcc/link")
    info.external_attr = (0o120777 << 16)
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(DownloadError, match="symbolic link"):
        extract_archive(archive, tmp_path / "staging")


def test_from_archive_needs_no_network(archives: dict, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    path, expected = archives["bach"]
    source = replace(DOWNLOADS["bach"], expected=expected)
    result = install_dataset(source, tmp_path, archive=path, progress=False,
                             say=lambda s: None)
    assert result.ok and result.source == str(path)
    assert path.is_file()  # the user's archive is left where it is


def test_from_compares_with_the_published_numbers(archives: dict, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """The real command checks the published counts: a synthetic BCC set is reported."""
    path = archives["bcc"][0]
    assert main(["download", "bcc", "--to", str(tmp_path), "--from", str(path), "--quiet"]) == 2
    out, err = capsys.readouterr()
    n = archives["bcc"][1]["images"]
    assert re.search(rf"images\s+58\s+{n}\s+DIFFERS by {n - 58:+d}\n", out)
    assert "malignant" in out and "3 count(s) differ" in out
    assert err.startswith("mpcs download: error: bcc: the data in") and "--allow-differences" in err
    assert installed(DOWNLOADS["bcc"], tmp_path) is None  # not usable for `mpcs reproduce`
    assert main(["download", "bcc", "--to", str(tmp_path), "--from", str(path), "--quiet",
                 "--allow-differences"]) == 0
    assert "differences accepted" in capsys.readouterr().out
    assert installed(DOWNLOADS["bcc"], tmp_path) is not None


def test_unreadable_images_are_named(tmp_path: Path) -> None:
    root = write_breakhis(tmp_path / "src", SynthConfig(patients=4, samples_per_patient=1,
                                                        image_size=(32, 24)), progress=False)
    counts = DOWNLOADS["breakhis"].count(root).counts
    bad = sorted(root.rglob("*.png"))[3]
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    archive = pack_tar_gz(root, "BreaKHis_v1", tmp_path / "BreaKHis_v1.tar.gz")
    result = install_dataset(replace(DOWNLOADS["breakhis"], expected=counts), tmp_path / "data",
                             archive=archive, progress=False, say=lambda s: None)
    assert not result.ok and not result.usable
    assert [Path(p).name for p, _ in result.unreadable] == [bad.name]
    assert f"unreadable: {tmp_path / 'data' / 'BreaKHis_v1'}" in result.report()
    assert ("images", counts["images"], counts["images"] - 1) in result.differences


def test_offline_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = f"http://127.0.0.1:{closed_port()}/BreaKHis_v1.tar.gz"
    code = main(["download", "breakhis", "--to", str(tmp_path), "--url", url, "--retries", "0",
                 "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"mpcs download: error: cannot download {url}")
    assert "by hand" in err and "--from ARCHIVE" in err


def test_offline_names_the_official_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture) -> None:
    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    assert main(["download", "breakhis", "--to", str(tmp_path), "--retries", "0",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot download http://www.inf.ufpr.br/vri/databases/BreaKHis_v1.tar.gz" in err
    assert "name resolution" in err


def test_bcc_without_a_known_link_says_what_to_do(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["download", "bcc", "--to", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no direct download link" in err and DOWNLOADS["bcc"].page in err
    assert "--from ARCHIVE" in err


def test_partial_file_already_complete(archives: dict, server: ArchiveServer,
                                       tmp_path: Path) -> None:
    """A .part holding the whole archive (crash before the rename) is finished by a 416."""
    data = archives["bcc"][0].read_bytes()
    (tmp_path / "x.zip.part").write_bytes(data)
    dest = fetch(server.url("/BreastCancerCell_dataset.zip"), tmp_path / "x.zip", QUICK,
                 progress=False)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert server.requests[-1][1] == f"bytes={len(data)}-"


def test_damaged_archive_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "BreaKHis_v1.tar.gz"
    bad.write_bytes(b"not an archive at all")
    with pytest.raises(DataError, match="not a tar, tar.gz or zip archive"):
        install_dataset(DOWNLOADS["breakhis"], tmp_path / "d", archive=bad, progress=False,
                        say=lambda s: None)
