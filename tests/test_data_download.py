"""``mmprompt data download`` against a real HTTP server on 127.0.0.1 serving archives made here.

The archives hold fake datasets (tests/fake_datasets.py) in each dataset's official archive layout; the
catalogue entries keep their real layout fields (extract, strip, into) and only their URLs and checksums
point at the loopback server, so a passing `data check` after the download proves the catalogue's layout.
Formats covered: .tar.gz (DTD, Caltech101, FGVC-Aircraft), .zip (EuroSAT), plain files (split files).
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import logging
import tarfile
import urllib.request
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import pytest

from fake_datasets import make_fake_dataset
from loopback import LoopbackServer
from mmprompt.cli import main
from mmprompt.data import DATASETS
from mmprompt.data import download as dl
from mmprompt.data.datasets.catalog import CatalogError, parse_catalog
from mmprompt.data.errors import DataError
from mmprompt.data.extract import UnsafeArchiveError, extract_archive
from mmprompt.data.fetch import DownloadError


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request the downloader makes must go to this machine: a test that would go out fails."""
    real = urllib.request.build_opener

    def guarded(*handlers: object) -> urllib.request.OpenerDirector:
        opener = real(*handlers)
        send = opener.open

        def open_local(request: object, *args: object, **kwargs: object) -> object:
            url = request.full_url if isinstance(request, urllib.request.Request) else str(request)
            assert urlparse(url).hostname in ("127.0.0.1", "localhost"), f"a test tried to reach {url}"
            return send(request, *args, **kwargs)

        opener.open = open_local  # type: ignore[method-assign]
        return opener

    monkeypatch.setattr(urllib.request, "build_opener", guarded)


@pytest.fixture
def server():
    with LoopbackServer() as s:
        yield s


def tar_gz(folder: Path, prefix: str) -> bytes:
    """``folder``'s content as a .tar.gz whose members start with ``prefix``/ (the official archive's top)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for path in sorted(folder.rglob("*")):
            tf.add(path, arcname=f"{prefix}/{path.relative_to(folder).as_posix()}", recursive=False)
    return buf.getvalue()


def zip_bytes(folder: Path, prefix: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}/{path.relative_to(folder).as_posix()}")
    return buf.getvalue()


def serve_dataset(monkeypatch: pytest.MonkeyPatch, server: LoopbackServer, key: str,
                  payloads: dict[str, bytes], urls: dict[str, list[str]] | None = None,
                  md5: dict[str, str] | None = None) -> None:
    """Point ``key``'s catalogue files at the server (real layout fields kept), with the payloads' MD5s."""
    info = DATASETS[key]
    files = []
    for f in info.files:
        data = payloads[f.name]
        server.files[f"/{f.name}"] = data
        files.append(dataclasses.replace(
            f, urls=tuple((urls or {}).get(f.name, [server.url(f"/{f.name}")])), size=len(data), sha256=None,
            md5=(md5 or {}).get(f.name, hashlib.md5(data).hexdigest())))
    monkeypatch.setitem(DATASETS, key, dataclasses.replace(info, files=tuple(files)))


def dtd_payloads(tmp_path: Path) -> dict[str, bytes]:
    made = make_fake_dataset("dtd", tmp_path / "made", n_classes=3, per_class=5)
    split = (made / "split_zhou_DescribableTextures.json").read_bytes()
    return {"dtd-r1.0.1.tar.gz": tar_gz(made / "images", "dtd/images"), "split_zhou_DescribableTextures.json": split}


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main(["data", "download", *map(str, argv), "--no-progress"])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_download_extracts_into_the_official_layout_then_checks_and_skips_when_complete(
        tmp_path: Path, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    serve_dataset(monkeypatch, server, "dtd", dtd_payloads(tmp_path))
    root = tmp_path / "data"
    code, out, err = run(capsys, "dtd", "--data-root", root)
    assert code == 0, err
    assert "dtd: " in out and "OK: the dataset is ready" in out  # the data check's summary
    assert len(list((root / "dtd" / "images").glob("*/*.jpg"))) == 15
    assert (root / "dtd" / dl.MARKER).is_file()
    assert not (root / dl.WORK_DIR / "dtd").exists()  # archives and staging removed
    served = len(server.requests)
    code, out, _ = run(capsys, "dtd", "--root", root)  # the old spelling of --data-root is accepted
    assert code == 0 and "complete (downloaded earlier), skipped" in out
    assert len(server.requests) == served  # nothing downloaded again


def test_a_cut_download_is_continued_with_a_range_request(
        tmp_path: Path, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    made = make_fake_dataset("caltech101", tmp_path / "made", n_classes=3, per_class=5)
    archive = tar_gz(made / "101_ObjectCategories", "101_ObjectCategories")
    serve_dataset(monkeypatch, server, "caltech101", {
        "101_ObjectCategories.tar.gz": archive,
        "split_zhou_Caltech101.json": (made / "split_zhou_Caltech101.json").read_bytes()})
    half = len(archive) // 2
    server.cut["/101_ObjectCategories.tar.gz"] = half
    code, out, err = run(capsys, "caltech101", "--data-root", tmp_path / "data")
    assert code == 0, err
    ranges = [r for p, r in server.requests if p == "/101_ObjectCategories.tar.gz"]
    assert ranges == [None, f"bytes={half}-"]
    assert "OK: the dataset is ready" in out


def test_a_partial_file_from_an_earlier_run_is_continued(
        tmp_path: Path, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    payloads = dtd_payloads(tmp_path)
    serve_dataset(monkeypatch, server, "dtd", payloads)
    root = tmp_path / "data"
    work = root / dl.WORK_DIR / "dtd"
    work.mkdir(parents=True)
    archive = payloads["dtd-r1.0.1.tar.gz"]
    (work / "dtd-r1.0.1.tar.gz.part").write_bytes(archive[:1000])
    (work / "dtd-r1.0.1.tar.gz.part.url").write_text(server.url("/dtd-r1.0.1.tar.gz") + "\n")
    code, _, err = run(capsys, "dtd", "--data-root", root)
    assert code == 0, err
    assert ("/dtd-r1.0.1.tar.gz", "bytes=1000-") in server.requests
    assert ("/dtd-r1.0.1.tar.gz", None) not in server.requests


def test_a_wrong_checksum_is_refused_and_nothing_is_left_in_place(
        tmp_path: Path, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    serve_dataset(monkeypatch, server, "dtd", dtd_payloads(tmp_path), md5={"dtd-r1.0.1.tar.gz": "0" * 32})
    root = tmp_path / "data"
    code, _, err = run(capsys, "dtd", "--data-root", root)
    assert code == 3
    assert "dtd-r1.0.1.tar.gz" in err and "expected 00000000000000000000000000000000" in err
    assert not (root / "dtd").exists()
    work = root / dl.WORK_DIR / "dtd"
    assert not list(work.glob("dtd-r1.0.1.tar.gz*"))  # neither the file nor a partial copy
    assert not [p for p in (work / "staging").rglob("*") if p.is_file()]


def test_a_failing_source_falls_back_to_the_next_one_with_one_line(
        tmp_path: Path, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, capsys, caplog) -> None:
    made = make_fake_dataset("eurosat", tmp_path / "made", n_classes=3, per_class=5)
    server.fail["/broken/EuroSAT.zip"] = 503
    serve_dataset(monkeypatch, server, "eurosat", {
        "EuroSAT.zip": zip_bytes(made / "2750", "2750"),
        "split_zhou_EuroSAT.json": (made / "split_zhou_EuroSAT.json").read_bytes()},
        urls={"EuroSAT.zip": [server.url("/broken/EuroSAT.zip", host="localhost"), server.url("/EuroSAT.zip")]})
    with caplog.at_level(logging.WARNING, logger="mmprompt.data.fetch"):
        code, out, err = run(capsys, "eurosat", "--data-root", tmp_path / "data")
    assert code == 0, err
    lines = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert lines == ["EuroSAT.zip: localhost failed (HTTP 503 Service Unavailable); trying 127.0.0.1"]
    assert "OK: the dataset is ready" in out


def test_no_working_source_names_every_host(tmp_path: Path, server: LoopbackServer,
                                            monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    server.fail["/x.tar.gz"] = 500
    serve_dataset(monkeypatch, server, "dtd", dtd_payloads(tmp_path),
                  urls={"dtd-r1.0.1.tar.gz": [server.url("/x.tar.gz")]})
    code, _, err = run(capsys, "dtd", "--data-root", tmp_path / "data")
    assert code == 3 and "127.0.0.1: HTTP 500" in err and "--from-archive" in err


def test_an_extraction_failing_halfway_leaves_no_partial_folder(
        tmp_path: Path, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    payloads = dtd_payloads(tmp_path)
    payloads["dtd-r1.0.1.tar.gz"] = payloads["dtd-r1.0.1.tar.gz"][:-200]  # truncated: extraction breaks
    serve_dataset(monkeypatch, server, "dtd", payloads)  # its MD5 is that of the truncated file
    root = tmp_path / "data"
    code, _, err = run(capsys, "dtd", "--data-root", root)
    assert code == 3 and "damaged" in err
    assert not (root / "dtd").exists()
    work = root / dl.WORK_DIR / "dtd"
    assert not list(work.glob("extract-*"))  # the temporary folder is gone
    assert not [p for p in (work / "staging").rglob("*") if p.is_file() and p.suffix == ".jpg"]


def test_from_archive_installs_local_archives_without_the_network(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    made = make_fake_dataset("fgvc_aircraft", tmp_path / "made", n_classes=3, per_class=5)
    archive = tar_gz(made, "fgvc-aircraft-2013b/data")
    info = DATASETS["fgvc_aircraft"]
    (f,) = info.files
    local = tmp_path / "mine"
    local.mkdir()
    (local / f.name).write_bytes(archive)
    dead = "http://127.0.0.1:9/nothing-listens-here"  # would fail if it were used
    monkeypatch.setitem(DATASETS, "fgvc_aircraft", dataclasses.replace(
        info, files=(dataclasses.replace(f, urls=(dead,), md5=hashlib.md5(archive).hexdigest()),)))
    code, out, err = run(capsys, "fgvc_aircraft", "--data-root", tmp_path / "data", "--from-archive", local)
    assert code == 0, err
    assert "OK: the dataset is ready" in out
    assert (local / f.name).is_file()  # the user's own archive is left alone


def test_from_archive_with_the_wrong_file_is_refused(tmp_path: Path, capsys) -> None:
    wrong = tmp_path / "dtd-r1.0.1.tar.gz"
    wrong.write_bytes(b"not the archive")
    code, _, err = run(capsys, "dtd", "--data-root", tmp_path / "data", "--from-archive", wrong)
    assert code == 3 and "dtd-r1.0.1.tar.gz" in err and "MD5" in err and "fff73e5086ae6bdbea199a49dfb8a4c1" in err
    assert not (tmp_path / "data" / "dtd").exists()
    unrelated = tmp_path / "cars_train.tgz"
    unrelated.write_bytes(b"x")
    code, _, err = run(capsys, "dtd", "--data-root", tmp_path / "data", "--from-archive", unrelated)
    assert code == 3 and "not one of the files of dtd" in err


def test_imagenet_without_its_archives_says_where_to_get_them(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "imagenet", "--data-root", tmp_path / "data")
    assert code == 3 and "image-net.org" in err and "--from-archive" in err


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "a/../../evil.txt"])
def test_tar_members_outside_the_folder_are_refused(tmp_path: Path, member: str) -> None:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo(member)
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(UnsafeArchiveError, match="refused"):
        extract_archive(archive, "tar", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


@pytest.mark.parametrize("target", ["/etc/passwd", "../../outside", "sub/../../../outside"])
def test_tar_links_pointing_outside_are_refused(tmp_path: Path, target: str) -> None:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("images/link")
        info.type, info.linkname = tarfile.SYMTYPE, target
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="link"):
        extract_archive(archive, "tar", tmp_path / "out")
    assert not (tmp_path / "out" / "images" / "link").is_symlink()


def test_zip_members_outside_the_folder_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok/a.txt", "fine")
        zf.writestr("../evil.txt", "evil")
    with pytest.raises(UnsafeArchiveError, match="'..'"):
        extract_archive(archive, "zip", tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_an_unsafe_archive_from_a_server_leaves_nothing(tmp_path: Path, server: LoopbackServer,
                                                         monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    payloads = dtd_payloads(tmp_path)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        good = tarfile.TarInfo("dtd/images/banded/a.jpg")
        good.size = 3
        tf.addfile(good, io.BytesIO(b"jpg"))
        evil = tarfile.TarInfo("dtd/../../escaped.txt")
        evil.size = 4
        tf.addfile(evil, io.BytesIO(b"evil"))
    payloads["dtd-r1.0.1.tar.gz"] = buf.getvalue()
    serve_dataset(monkeypatch, server, "dtd", payloads)
    code, _, err = run(capsys, "dtd", "--data-root", tmp_path / "data")
    assert code == 3 and "refused" in err
    assert not (tmp_path / "data" / "dtd").exists()
    assert not list(tmp_path.rglob("escaped.txt"))


def test_disk_full_stops_with_the_space_needed_and_what_is_complete(
        tmp_path: Path, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    payloads = dtd_payloads(tmp_path)
    serve_dataset(monkeypatch, server, "dtd", payloads)
    root = tmp_path / "data"
    assert run(capsys, "dtd", "--data-root", root)[0] == 0
    made = make_fake_dataset("eurosat", tmp_path / "made2", n_classes=3, per_class=5)
    serve_dataset(monkeypatch, server, "eurosat", {
        "EuroSAT.zip": zip_bytes(made / "2750", "2750"),
        "split_zhou_EuroSAT.json": (made / "split_zhou_EuroSAT.json").read_bytes()})
    usage = dl.shutil.disk_usage(root)
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda p: usage._replace(free=10))
    code, _, err = run(capsys, "dtd", "eurosat", "--data-root", root)
    assert code == 5  # files: the disk is full
    assert "for eurosat: it needs about" in err and "0 kB free" in err and "Complete so far: dtd" in err
    assert "run the command again" in err
    monkeypatch.undo()  # restores the catalogue too: serve again with space
    serve_dataset(monkeypatch, server, "eurosat", {
        "EuroSAT.zip": zip_bytes(made / "2750", "2750"),
        "split_zhou_EuroSAT.json": (made / "split_zhou_EuroSAT.json").read_bytes()})
    monkeypatch.setenv("NO_PROXY", "*")
    assert run(capsys, "dtd", "eurosat", "--data-root", root)[0] == 0


def test_bad_roots_and_names_are_clear_errors(tmp_path: Path, capsys) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    code, _, err = run(capsys, "dtd", "--data-root", a_file)
    assert code == 3 and "is a file; expected a folder" in err
    code, _, err = run(capsys, "dtd", "--data-root", a_file / "below")
    assert code == 3 and "cannot write to the data root" in err
    code, _, err = run(capsys, "dtdd", "--data-root", tmp_path)
    assert code == 3 and "unknown dataset 'dtdd'" in err and "caltech101" in err and "imagenet_r" in err
    assert "Traceback" not in err


def test_dry_run_all_prints_the_full_plan(tmp_path: Path, capsys) -> None:
    code, out, _ = run(capsys, "all", "--data-root", tmp_path / "data", "--dry-run")
    assert code == 0
    for key, info in DATASETS.items():
        if info.files:
            assert f"{key} -> " in out
            for f in info.files:
                assert f.name in out
    assert "www.robots.ox.ac.uk" in out and "huggingface.co" in out
    assert "checksum unknown (none published)" in out and "md5 fff73e5086ae" in out
    assert "disk space needed: about" in out
    assert not (tmp_path / "data").exists()  # a dry run writes nothing


def test_the_catalogue_validates_download_files() -> None:
    entry = """
datasets:
  - key: x
    coop_name: X
    folder: x
    image_subdir: images
    num_classes: 2
    download: words
    reader: {name: class_folders, images: images}
    files:
      - {name: x.tar.gz, what: images, size: 10, md5: NOTHEX, urls: [https://example.org/x.tar.gz]}
"""
    with pytest.raises(CatalogError, match=r"dataset 'x': field 'files', item 1: field 'md5'"):
        parse_catalog(entry)
    with pytest.raises(CatalogError, match="field 'into'"):
        parse_catalog(entry.replace("md5: NOTHEX", "into: ../up"))
    with pytest.raises(CatalogError, match="unknown field"):
        parse_catalog(entry.replace("md5: NOTHEX", "sha1: abc"))


def test_every_catalogue_file_has_a_source_or_instructions() -> None:
    for info in DATASETS.values():
        for f in info.files:
            assert f.md5 is None or len(f.md5) == 32
            assert f.urls or info.manual, f"{info.key}/{f.name}: no source and no instructions"


def test_download_error_is_a_data_error() -> None:
    assert issubclass(DownloadError, DataError)


def test_imagenet_from_its_ilsvrc2012_archives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """The official archives: a tar of one tar per class, a flat tar of validation images, the devkit."""
    np = pytest.importorskip("numpy")
    scipy_io = pytest.importorskip("scipy.io")
    made = make_fake_dataset("imagenet", tmp_path / "made", n_classes=3, per_class=6)
    mine = tmp_path / "mine"
    mine.mkdir()
    wnids = sorted(p.name for p in (made / "images" / "train").iterdir())
    with tarfile.open(mine / "ILSVRC2012_img_train.tar", "w") as outer:
        for wnid in wnids:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as tf:
                for img in sorted((made / "images" / "train" / wnid).iterdir()):
                    tf.add(img, arcname=img.name)
            info = tarfile.TarInfo(f"{wnid}.tar")
            info.size = len(inner.getvalue())
            outer.addfile(info, io.BytesIO(inner.getvalue()))
    val = sorted((made / "images" / "val").glob("*/*"))
    ids = {w: i + 1 for i, w in enumerate(wnids)}  # ILSVRC2012_ID of each class
    truth = []
    with tarfile.open(mine / "ILSVRC2012_img_val.tar", "w") as tf:
        for n, img in enumerate(val, 1):
            tf.add(img, arcname=f"ILSVRC2012_val_{n:08d}.JPEG")
            truth.append(ids[img.parent.name])
    devkit = tmp_path / "devkit" / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    synsets = np.array([(i, w, 0) for w, i in ids.items()] + [(1001, "n00000001", 5)],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    scipy_io.savemat(str(devkit / "meta.mat"), {"synsets": synsets})
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{t}\n" for t in truth))
    (mine / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(tar_gz(devkit.parent, "ILSVRC2012_devkit_t12"))
    (mine / "classnames.txt").write_bytes((made / "classnames.txt").read_bytes())
    info = DATASETS["imagenet"]
    files = [dataclasses.replace(f, md5=hashlib.md5((mine / f.name).read_bytes()).hexdigest(),
                                 urls=("http://127.0.0.1:9/unused",)) for f in info.files]
    monkeypatch.setitem(DATASETS, "imagenet", dataclasses.replace(info, files=tuple(files)))
    root = tmp_path / "data"
    code, out, err = run(capsys, "imagenet", "--data-root", root, "--from-archive", mine)
    assert code == 0, err
    assert "OK: the dataset is ready" in out
    images = root / "imagenet" / "images"
    assert sorted(p.relative_to(images / "train").as_posix() for p in (images / "train").rglob("*.JPEG")) == \
        sorted(p.relative_to(made / "images" / "train").as_posix() for p in (made / "images" / "train").rglob("*.JPEG"))
    for n, img in enumerate(val, 1):  # each validation image is in its class's folder
        sorted_copy = images / "val" / img.parent.name / f"ILSVRC2012_val_{n:08d}.JPEG"
        assert sorted_copy.read_bytes() == img.read_bytes()
    assert not list((images / "train").glob("*.tar"))


def test_a_tls_error_is_one_line_naming_the_host_and_the_fallback(
        tmp_path: Path, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, capsys, caplog) -> None:
    payloads = dtd_payloads(tmp_path)
    tls = server.url("/dtd-r1.0.1.tar.gz").replace("http://", "https://").replace("127.0.0.1", "localhost")
    serve_dataset(monkeypatch, server, "dtd", payloads,
                  urls={"dtd-r1.0.1.tar.gz": [tls, server.url("/dtd-r1.0.1.tar.gz")]})
    with caplog.at_level(logging.WARNING, logger="mmprompt.data.fetch"):
        code, _, err = run(capsys, "dtd", "--data-root", tmp_path / "data")
    assert code == 0, err
    (line,) = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert line.startswith("dtd-r1.0.1.tar.gz: localhost failed (TLS error: ") and line.endswith("; trying 127.0.0.1")
    assert "\n" not in line


def test_a_proxy_that_refuses_is_named_in_the_error(tmp_path: Path, server: LoopbackServer,
                                                    monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    serve_dataset(monkeypatch, server, "dtd", dtd_payloads(tmp_path))
    monkeypatch.delenv("NO_PROXY")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    code, _, err = run(capsys, "dtd", "--data-root", tmp_path / "data")
    assert code == 3 and "127.0.0.1: connection refused (a proxy or firewall?)" in err
    assert "through the proxy http://127.0.0.1:9" in err
    assert server.requests == []  # nothing went around the proxy


def test_a_dataset_that_cannot_be_downloaded_does_not_stop_the_others(
        tmp_path: Path, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    serve_dataset(monkeypatch, server, "dtd", dtd_payloads(tmp_path))
    root = tmp_path / "data"
    code, out, err = run(capsys, "imagenet", "dtd", "--data-root", root)
    assert code == 3
    assert "complete: dtd. Not downloaded: imagenet (" in err and "image-net.org" in err
    assert "OK: the dataset is ready" in out and (root / "dtd" / dl.MARKER).is_file()


def test_a_read_only_root_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    def read_only(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(dl.tempfile, "NamedTemporaryFile", read_only)
    code, _, err = run(capsys, "dtd", "--data-root", tmp_path)
    assert code == 3
    assert f"cannot write to the data root {tmp_path} (Read-only file system)" in err and "Traceback" not in err


def test_the_plan_counts_what_a_partial_download_still_needs(tmp_path: Path) -> None:
    root = tmp_path / "data"
    work = root / dl.WORK_DIR / "dtd"
    work.mkdir(parents=True)
    (work / "dtd-r1.0.1.tar.gz.part").write_bytes(b"x" * 1000)
    (plan,) = dl.plan_downloads(["dtd"], root)
    archive, split = plan.files
    assert (archive.state, archive.partial_bytes, split.state) == ("partial", 1000, "todo")
    assert plan.to_download == archive.file.size - 1000 + split.file.size


def test_a_disk_filling_up_midway_stops_and_the_rerun_continues_without_downloading_again(
        tmp_path: Path, server: LoopbackServer, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    serve_dataset(monkeypatch, server, "dtd", dtd_payloads(tmp_path))
    real = dl.extract_archive

    def full(*args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(dl, "extract_archive", full)
    root = tmp_path / "data"
    code, _, err = run(capsys, "dtd", "--data-root", root)
    assert code == 5 and "not enough disk space" in err and "Complete so far: none" in err
    assert not (root / "dtd").exists()
    assert (root / dl.WORK_DIR / "dtd" / "dtd-r1.0.1.tar.gz").is_file()  # the verified archive is kept
    monkeypatch.setattr(dl, "extract_archive", real)
    served = [p for p, _ in server.requests]
    code, out, err = run(capsys, "dtd", "--data-root", root)
    assert code == 0, err
    assert "OK: the dataset is ready" in out
    # the archive was not downloaded again; only the split file, not reached before, was fetched
    assert [p for p, _ in server.requests][len(served):] == ["/split_zhou_DescribableTextures.json"]


def test_the_loopback_guard_stops_a_request_to_another_host(tmp_path: Path) -> None:
    from mmprompt.data.fetch import fetch_file

    file = DATASETS["dtd"].files[0]
    with pytest.raises(AssertionError, match="a test tried to reach https://www.robots.ox.ac.uk/"):
        fetch_file(file, tmp_path / file.name, progress=False)
