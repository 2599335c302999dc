"""Image-mask samples from every source the project can read offline.

All sources yield :class:`Sample` objects. ``group`` names the unit that must not
be split across train and evaluation (a subject, a volume, a phantom seed); see
:func:`split_by_group`.

Real sets available here without a download:

* :func:`colin27_aal`: the Colin27 T1 MRI with its 116 named AAL regions (Debian
  ``mricron-data``, BSD-3), axial slices;
* :func:`stardist_nuclei`: stardist's fluorescence nuclei image with 125
  hand-drawn instances (PyPI ``stardist``, BSD-3);
* :func:`manifest_samples`: the JSONL manifest of the public contract.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

AAL_DIR = Path("/usr/share/mricron/templates")


@dataclass
class Sample:
    """One 2-D case: a slice, the binary mask of the named target, and where it came from."""

    image: np.ndarray
    mask: np.ndarray
    target: str
    modality: str
    source: str
    group: str


def _aal_names(path: Path) -> dict[int, str]:
    names = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            names[int(parts[0])] = parts[1]
    return names


def aal_target_name(raw: str) -> str:
    """``Hippocampus_L`` -> ``left hippocampus``; ``Cerebelum_6_R`` -> ``right cerebellum 6``."""
    words = raw.replace("Cerebelum", "Cerebellum").split("_")
    side = {"L": "left", "R": "right"}.get(words[-1])
    if side:
        words = [side] + words[:-1]
    text = " ".join(words)
    text = re.sub(r"([a-z])([A-Z])", r"\1 \2", text)
    return text.lower()


def colin27_aal(
    labels: Sequence[int] = (37, 38, 71, 72, 73, 74, 77, 78, 29, 30),
    slices_per_label: int = 3,
    spacing: int = 4,
    root: Path = AAL_DIR,
) -> Iterator[Sample]:
    """Axial slices of the Colin27 brain with one AAL region each.

    For each label, the slice of largest area and its neighbours ``spacing``
    slices apart (``slices_per_label`` in all) are taken. Slices are arrays of
    shape (217, 181): rows run along the anterior-posterior axis.
    """
    import nibabel as nib

    image_path, label_path = root / "ch2.nii.gz", root / "aal.nii.gz"  # same 1 mm grid
    if not label_path.exists():
        raise FileNotFoundError(f"{label_path} is missing: apt-get install mricron-data")
    volume = np.asarray(nib.load(str(image_path)).dataobj)
    atlas = np.asarray(nib.load(str(label_path)).dataobj)
    names = _aal_names(root / "aal.nii.txt")
    for label in labels:
        areas = (atlas == label).sum(axis=(0, 1))
        centre = int(np.argmax(areas))
        offsets = [spacing * (i - (slices_per_label - 1) // 2) for i in range(slices_per_label)]
        for z in (centre + o for o in offsets):
            mask = (atlas[:, :, z] == label).T[::-1]
            if mask.sum() < 20:
                continue
            yield Sample(
                image=np.ascontiguousarray(volume[:, :, z].T[::-1]),
                mask=np.ascontiguousarray(mask),
                target=aal_target_name(names[label]),
                modality="MRI",
                source=f"colin27-aal:z={z}:label={label}",
                group=f"colin27:z={z}",
            )


def stardist_nuclei(count: int | None = None, seed: int = 0, min_area: int = 30) -> Iterator[Sample]:
    """Single nuclei of stardist's 512x512 fluorescence test image, one per sample.

    ``count`` instances are drawn at random (seeded) from the 125 annotated ones;
    nuclei that touch the border or cover fewer than ``min_area`` pixels are skipped.
    """
    from stardist.data import test_image_nuclei_2d

    image, labels = test_image_nuclei_2d(return_mask=True)
    ids = [i for i in np.unique(labels) if i != 0]
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])))
    ids = [i for i in ids if i not in border and (labels == i).sum() >= min_area]
    rng = np.random.default_rng(seed)
    if count is not None and count < len(ids):
        ids = sorted(rng.choice(ids, size=count, replace=False).tolist())
    for i in ids:
        yield Sample(
            image=image,
            mask=labels == i,
            target="nucleus",
            modality="fluorescence microscopy",
            source=f"stardist-nuclei:label={i}",
            group=f"nucleus:{i}",
        )


def manifest_samples(manifest: str | Path) -> Iterator[Sample]:
    """Samples of a manifest JSONL file (see napari_ibis.io.read_manifest)."""
    from napari_ibis.io import read_manifest

    for case in read_manifest(manifest):
        yield Sample(
            image=case.image,
            mask=case.mask,
            target=case.target,
            modality=case.modality,
            source=case.source,
            group=case.source.split(":")[0],
        )


def split_by_group(samples: Iterable[Sample], eval_fraction: float = 0.2, salt: str = "napari-ibis") -> tuple[list[Sample], list[Sample]]:
    """(train, eval): a sample's side depends only on a hash of its group."""
    train, evaluation = [], []
    for sample in samples:
        digest = hashlib.sha256(f"{salt}:{sample.group}".encode()).digest()
        (evaluation if digest[0] / 256 < eval_fraction else train).append(sample)
    return train, evaluation


def write_manifest(samples: Iterable[Sample], folder: str | Path, name: str = "manifest.jsonl") -> Path:
    """Write samples as TIFF image/mask pairs plus a manifest JSONL; returns its path."""
    import tifffile

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    lines = []
    for index, sample in enumerate(samples):
        stem = f"{index:05d}"
        tifffile.imwrite(folder / "images" / f"{stem}.tif", sample.image)
        tifffile.imwrite(folder / "masks" / f"{stem}.tif", sample.mask.astype(np.uint8))
        lines.append(
            json.dumps(
                {
                    "image": f"images/{stem}.tif",
                    "mask": f"masks/{stem}.tif",
                    "target": sample.target,
                    "modality": sample.modality,
                    "source": sample.source,
                }
            )
        )
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path
