"""Image-mask samples from every source the project can read offline.

All sources yield :class:`Sample` objects. ``group`` names the unit that must not
be split across train and evaluation (a subject, a volume, a phantom seed); see
:func:`split_by_group`.

Real sets available here without a download:

* :func:`colin27_aal`: the Colin27 T1 MRI with its 116 named AAL regions (Debian
  ``mricron-data``, BSD-3), axial slices;
* :func:`stardist_nuclei`: stardist's fluorescence nuclei image with 125
  hand-drawn instances (PyPI ``stardist``, BSD-3);
* :func:`manifest_samples`: the JSONL manifest of the public contract;
* :func:`totalseg_reference`: real CT and MR volumes with TotalSegmentator's organ labels
  (its test references, fetched at set-up; machine-made labels, not manual ground truth),
  split by patient;
* :func:`radiomics_lesions`: five real tumours (two brain MRI, a breast MRI crop, two
  lung CT) with drawn masks, pyradiomics' test cases (fetched at set-up), as volumes
  (:func:`radiomics_volumes`) or axial slices;
* :func:`phantom_samples`: the seeded synthetic phantoms of :mod:`napari_ibis.phantoms`.

Sets a user brings:

* :func:`image_mask_folder`: ``images/`` and ``masks/`` (or ``labels/``) with
  matching file names, 2-D or volumes, binary or label-valued masks;
* :func:`msd_task`: a Medical Segmentation Decathlon task folder (``dataset.json``,
  ``imagesTr/``, ``labelsTr/``), volumes sliced to 2-D.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_ibis.phantoms import LESIONS, ORGANS, phantom

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
    """Axial slices of the Colin27 brain with one AAL region each, in the display convention
    (anterior up, the patient's left on the image's right: "left hippocampus" is on the right).

    For each label, the slice of largest area and its neighbours ``spacing``
    slices apart (``slices_per_label`` in all) are taken. Slices are arrays of
    shape (217, 181): rows run from anterior to posterior.
    """
    from napari_ibis import io

    image_path, label_path = root / "ch2.nii.gz", root / "aal.nii.gz"  # same 1 mm grid
    if not label_path.exists():
        raise FileNotFoundError(f"{label_path} is missing: apt-get install mricron-data")
    volume = io.read_image(image_path).data
    atlas = io.read_image(label_path).data
    names = _aal_names(root / "aal.nii.txt")
    for label in labels:
        areas = (atlas == label).sum(axis=(1, 2))
        centre = int(np.argmax(areas))
        offsets = [spacing * (i - (slices_per_label - 1) // 2) for i in range(slices_per_label)]
        for z in (centre + o for o in offsets):
            mask = atlas[z] == label
            if mask.sum() < 20:
                continue
            yield Sample(
                image=np.ascontiguousarray(volume[z]),
                mask=np.ascontiguousarray(mask),
                target=aal_target_name(names[label]),
                modality="MRI",
                source=f"colin27-aal:z={z}:label={label}",
                group=f"colin27:z={z}",
            )


# -- TotalSegmentator's reference volumes -------------------------------------------------
# Real CT and MR volumes with TotalSegmentator's own labels (its test references, machine-made,
# not manual ground truth), fetched at set-up (napari_ibis/assets.py). Four patients: an
# abdomen-pelvis CT, a thorax CT angiography (two crops: aorta and pulmonary artery), an upper
# abdomen CT as a DICOM series, an abdominal MR. Split by patient: the DICOM CT and the MR are
# never trained on (TOTALSEG_HELD_OUT).
_TS = "tests/reference_files/"
TOTALSEG_VOLUMES = {
    # name: (image, labels: a label map or {label name: binary mask file}, class map)
    "abdomen_ct": (_TS + "example_ct.nii.gz", _TS + "example_seg_fast_force_split.nii.gz", "total"),
    "thorax_ct": (_TS + "aorta_report/test_result/models/ct_cropped.nii.gz", {
        name: f"{_TS}aorta_report/test_result/models/{name}.nii.gz"
        for name in ("aorta", "brachiocephalic_trunk", "celiac_trunk", "common_carotid_artery_left",
                     "subclavian_artery_left", "superior_mesenteric_artery", "vertebrae_T12")}, None),
    "thorax_ct_pulmonary": (_TS + "pulmonary_report/models/ct_cropped.nii.gz",
                            {"pulmonary_artery": _TS + "pulmonary_report/models/pulmonary_artery.nii.gz"}, None),
    "upper_abdomen_ct": (_TS + "example_ct_dicom", _TS + "example_seg_dicom.nii.gz", "total"),
    "abdomen_mr": (_TS + "example_mr_sm.nii.gz", _TS + "example_seg_mr.nii.gz", "total_mr"),
}
TOTALSEG_HELD_OUT = ("upper_abdomen_ct", "abdomen_mr")
TOTALSEG_PATIENTS = {"abdomen_ct": "ct1", "thorax_ct": "ct2", "thorax_ct_pulmonary": "ct2", "upper_abdomen_ct": "ct3",
                     "abdomen_mr": "mr1"}


def totalseg_class_maps() -> dict[str, dict[int, str]]:
    """TotalSegmentator's label names (``class_map`` of its map_to_binary.py), read without importing it."""
    import ast

    from napari_ibis import assets

    tree = ast.parse(assets.path("totalsegmentator", "totalsegmentator/map_to_binary.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "class_map" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ValueError("map_to_binary.py holds no class_map")


def structure_name(label: str) -> str:
    """TotalSegmentator's label as words a person types: ``kidney_left`` -> "left kidney",
    ``lung_upper_lobe_right`` -> "right lung upper lobe", ``vertebrae_L1`` -> "L1 vertebra",
    ``rib_left_3`` -> "left rib 3"."""
    words = label.split("_")
    side = [w for w in words if w in ("left", "right")]
    words = [w for w in words if w not in ("left", "right")]
    if words[0] == "vertebrae":
        words = words[1:] + ["vertebra"] if len(words) > 1 else ["vertebrae"]
    return " ".join(side + words).replace("and ", "and ")


def totalseg_reference(volumes=None, slices_per_label: int = 3, spacing_mm: float = 12.0, min_area: int = 40,
                       side: str = "all") -> Iterator[Sample]:
    """Axial slices of TotalSegmentator's reference volumes, one named structure each.

    Slices are in the display convention (anterior up, the patient's left on the image's
    right: :mod:`napari_ibis.geometry`), so "left kidney" is on the image's right. For each
    structure: the slice of largest area and its neighbours ``spacing_mm`` apart. ``side``:
    "train" (the patients never held out), "held_out" (:data:`TOTALSEG_HELD_OUT`) or "all".
    """
    from napari_ibis import io

    names = None
    chosen = volumes or [v for v in TOTALSEG_VOLUMES if side == "all" or (v in TOTALSEG_HELD_OUT) == (side == "held_out")]
    from napari_ibis import assets

    root = assets.path("totalsegmentator", "tests/reference_files").parent.parent
    for volume in chosen:
        image_file, labels_spec, class_map = TOTALSEG_VOLUMES[volume]
        loaded = io.read_image(root / image_file)
        modality = "MRI" if volume.endswith("_mr") else "CT"
        if isinstance(labels_spec, dict):
            masks = {name: io.read_image(root / path).data > 0 for name, path in labels_spec.items()}
        else:
            names = names or totalseg_class_maps()
            labels = io.read_image(root / labels_spec).data
            masks = {names[class_map][int(value)]: labels == value for value in np.unique(labels) if value}
        thickness = float(loaded.meta["geometry"].spacing[0])
        step = max(1, int(round(spacing_mm / thickness)))
        for raw_name, volume_mask in masks.items():
            if volume_mask.shape != loaded.data.shape:
                raise ValueError(f"{volume}: {raw_name} is {volume_mask.shape}, the image {loaded.data.shape}")
            areas = volume_mask.sum(axis=(1, 2))
            centre = int(np.argmax(areas))
            offsets = [step * (i - (slices_per_label - 1) // 2) for i in range(slices_per_label)]
            for z in (centre + o for o in offsets):
                if not 0 <= z < len(areas) or areas[z] < min_area:
                    continue
                yield Sample(
                    image=np.ascontiguousarray(loaded.data[z]),
                    mask=np.ascontiguousarray(volume_mask[z]),
                    target=structure_name(raw_name),
                    modality=modality,
                    source=f"totalseg:{volume}:z={z}:{raw_name}",
                    group=f"totalseg:{TOTALSEG_PATIENTS[volume]}",
                )


# pyradiomics' test cases: case -> (the target as a person names it, modality).
RADIOMICS_CASES = {
    "brain1": ("brain tumour", "MRI"),
    "brain2": ("brain tumour", "MRI"),
    "breast1": ("breast tumour", "MRI"),
    "lung1": ("lung tumour", "CT"),
    "lung2": ("lung tumour", "CT"),
}
# the kind of scan each case is (what the pointer agent's atlas calls "head" or "trunk")
RADIOMICS_KINDS = {"brain1": "head", "brain2": "head", "breast1": "trunk", "lung1": "trunk", "lung2": "trunk"}
# the cases whose every slice the atlas keeps as a reference of its kind of scan (not its labels: those
# are tumours); the two brains and lung2 are left out to measure on. With brain1 in as well, abdominal MR
# slices found brain MRI among their nearest and brain regions asked on them were no longer told
# (benchmarks/scan_kind.py, BENCHMARKS.md "A structure asked for on another kind of scan")
KIND_REFERENCES = ("breast1", "lung1")


@dataclass
class LabelledVolume:
    """One real volume (slice axis first, display convention) with the mask of one named target."""

    name: str
    volume: np.ndarray
    mask: np.ndarray
    target: str
    modality: str
    path: Path  # the image file, for tools that read it themselves (the CLI)


def radiomics_volumes(cases: Sequence[str] | None = None) -> Iterator[LabelledVolume]:
    """pyradiomics' five test tumours as volumes, read with the project's reader (NRRD header kept)."""
    from napari_ibis import assets, io

    for case in cases or RADIOMICS_CASES:
        target, modality = RADIOMICS_CASES[case]
        image_file = assets.path("pyradiomics", f"data/{case}_image.nrrd")
        image = io.read_image(image_file)
        mask = io.read_image(assets.path("pyradiomics", f"data/{case}_label.nrrd")).data > 0
        if mask.shape != image.data.shape:
            raise ValueError(f"pyradiomics {case}: mask {mask.shape} and image {image.data.shape} differ in shape")
        yield LabelledVolume(case, image.data, mask, target, modality, image_file)


def radiomics_lesions(cases: Sequence[str] | None = None, min_area: int = 20) -> Iterator[Sample]:
    """Every axial slice of pyradiomics' tumours where the tumour covers ``min_area`` pixels."""
    for case in radiomics_volumes(cases):
        for z in np.flatnonzero(case.mask.sum(axis=(1, 2)) >= min_area):
            yield Sample(image=np.ascontiguousarray(case.volume[z]), mask=np.ascontiguousarray(case.mask[z]),
                         target=case.target, modality=case.modality, source=f"pyradiomics:{case.name}:z={z}",
                         group=f"pyradiomics:{case.name}")


def threshold_lungs(hu: np.ndarray, min_part: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) lung of an axial CT slice in Hounsfield units, display convention (the
    patient's right on the image's left): the air inside the body (below -400 HU) in parts
    of at least ``min_part`` pixels (the trachea and bronchi are smaller), holes up to that
    size filled (vessels), split at the body's middle column. A classical labelling, not a
    drawn one: it follows the lungs' edge closely but keeps a tumour or a collapsed part out."""
    from scipy import ndimage as ndi
    from skimage.morphology import remove_small_holes

    air = np.asarray(hu) < -400
    outside, count = ndi.label(~air)
    right, left = np.zeros_like(air), np.zeros_like(air)
    if not count:
        return right, left
    body = ndi.binary_fill_holes(outside == 1 + int(np.argmax(ndi.sum(np.ones_like(outside), outside,
                                                                          range(1, count + 1)))))
    parts, count = ndi.label(air & body)
    columns = np.flatnonzero(body.any(axis=0))
    on_the_right = (np.arange(air.shape[1]) < (columns[0] + columns[-1]) / 2)[None, :]
    for index in range(1, count + 1):
        part = parts == index
        if part.sum() >= min_part:
            part = remove_small_holes(part, max_size=min_part)
            right |= part & on_the_right
            left |= part & ~on_the_right
    return right, left


# organs that never reach a slice on which both lungs are large (each over 10,000 px at these scans' 0.6 mm)
BELOW_THE_LUNGS = ("urinary bladder", "left kidney", "right kidney")


def trachea_by_eye(hu_slice: np.ndarray) -> np.ndarray:
    """The trachea as one looks for it on an axial CT slice where it lies: the air part (below
    -500 HU, not touching the image's edge) whose centre lies nearest the image's middle column.
    A classical labelling for slices chosen by eye, independent of ``ct_anatomy``'s tracking."""
    from scipy import ndimage as ndi

    air = np.asarray(hu_slice) < -500
    parts, count = ndi.label(air)
    edge = set(np.unique(np.concatenate([parts[0], parts[-1], parts[:, 0], parts[:, -1]])).tolist())
    centres = ndi.center_of_mass(air, parts, range(1, count + 1))
    inner = [(abs(c[1] - air.shape[1] / 2), label) for label, c in enumerate(centres, start=1) if label not in edge]
    return parts == min(inner)[1]


def radiomics_lungs(cases=("lung1", "lung2"), every: int = 3, min_area: int = 500, seed: int = 0) -> Iterator[Sample]:
    """The right and the left lung on every ``every``-th axial slice of pyradiomics' two chest
    CTs (real; lungs labelled by :func:`threshold_lungs`), where the lung covers ``min_area``
    pixels; and where both lungs are large, one organ of ``BELOW_THE_LUNGS`` asked for (absent)."""
    rng = np.random.default_rng(seed)
    for case in radiomics_volumes(cases):
        for z in range(0, case.volume.shape[0], every):
            image, lungs = np.ascontiguousarray(case.volume[z]), threshold_lungs(case.volume[z])
            for side, mask in zip(("right", "left"), lungs):
                if mask.sum() >= min_area:
                    yield Sample(image=image, mask=mask, target=f"{side} lung", modality="CT",
                                 source=f"pyradiomics:{case.name}:z={z}:{side} lung", group=f"pyradiomics:{case.name}")
            if min(mask.sum() for mask in lungs) >= 10_000:
                organ = BELOW_THE_LUNGS[rng.integers(len(BELOW_THE_LUNGS))]
                yield Sample(image=image, mask=np.zeros(image.shape, bool), target=organ, modality="CT",
                             source=f"pyradiomics:{case.name}:z={z}:{organ}:absent", group=f"pyradiomics:{case.name}")


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


def _volume_samples(image: np.ndarray, labels: np.ndarray, names: dict[int, str], modality: str, source: str,
                    group: str, slices_per_label: int, min_area: int) -> Iterator[Sample]:
    """Samples of one labelled image: 2-D as it is; a volume (slice axis first) at
    ``slices_per_label`` slices per label, evenly spread over the slices where it
    covers at least ``min_area`` pixels."""
    if image.shape[:labels.ndim] != labels.shape:
        raise ValueError(f"{source}: image {image.shape} and mask {labels.shape} differ in shape")
    for value, name in sorted(names.items()):
        region = labels == value
        if labels.ndim == 2:
            if region.sum() >= min_area:
                yield Sample(image, region, name, modality, f"{source}:label={value}", group)
            continue
        areas = region.reshape(region.shape[0], -1).sum(axis=1)
        candidates = np.flatnonzero(areas >= min_area)
        if candidates.size == 0:
            continue
        chosen = candidates[np.unique(np.linspace(0, candidates.size - 1, min(slices_per_label, candidates.size)).round().astype(int))]
        for index in chosen:
            yield Sample(np.ascontiguousarray(image[index]), np.ascontiguousarray(region[index]), name, modality,
                         f"{source}:slice={index}:label={value}", group)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".tiff", ".tif", ".png", ".npy", ".nrrd", ".dcm", ".jpg", ".jpeg"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def image_mask_folder(folder: str | Path, names: dict[int, str] | None = None, target: str = "target",
                      modality: str = "unknown", slices_per_label: int = 3, min_area: int = 20) -> Iterator[Sample]:
    """Pairs ``images/NAME.*`` + ``masks/NAME.*`` (or ``labels/``) of any format napari_ibis.io reads.

    Mask values other than 0 are separate targets named by ``names`` (value ->
    name); without it every non-zero value is called ``target``. Each image is its
    own group, so a volume never straddles a split.
    """
    from napari_ibis.io import read_image

    folder = Path(folder)
    mask_dir = next((folder / d for d in ("masks", "labels") if (folder / d).is_dir()), None)
    if not (folder / "images").is_dir() or mask_dir is None:
        raise FileNotFoundError(f"{folder} needs images/ and masks/ (or labels/) folders")
    masks = {_stem(p): p for p in sorted(mask_dir.iterdir()) if p.is_file()}
    for image_path in sorted((folder / "images").iterdir()):
        mask_path = masks.get(_stem(image_path))
        if mask_path is None:
            continue
        image = read_image(image_path).data
        labels = np.asarray(read_image(mask_path).data).astype(np.int64)
        found = {int(v): (names or {}).get(int(v), target) for v in np.unique(labels) if v != 0}
        if names is not None:
            found = {v: n for v, n in found.items() if v in names}
        yield from _volume_samples(image, labels, found, modality, f"{folder.name}:{_stem(image_path)}",
                                   f"{folder.name}:{_stem(image_path)}", slices_per_label, min_area)


def msd_task(folder: str | Path, channel: int = 0, slices_per_label: int = 3, min_area: int = 20,
             limit: int | None = None) -> Iterator[Sample]:
    """Training cases of a Medical Segmentation Decathlon task folder, sliced to 2-D.

    Names and modality come from ``dataset.json``; multi-channel volumes (e.g.
    BrainTumour's four MRI sequences) use ``channel``. One group per volume.
    """
    import nibabel as nib

    folder = Path(folder)
    meta = json.loads((folder / "dataset.json").read_text())
    names = {int(k): v.lower() for k, v in meta["labels"].items() if int(k) != 0}
    modalities = meta.get("modality", {"0": "unknown"})
    modality = modalities.get(str(channel), next(iter(modalities.values())))
    for case in meta["training"][:limit]:
        image = np.asarray(nib.load(str(folder / case["image"])).dataobj)
        labels = np.asarray(nib.load(str(folder / case["label"])).dataobj).astype(np.int64)
        if image.ndim == 4:
            image = image[..., channel]
        name = _stem(Path(case["image"]))
        # NIfTI (x, y, z) -> axial slices first, rows = y
        yield from _volume_samples(np.ascontiguousarray(image.T), np.ascontiguousarray(labels.T), names, modality,
                                   f"msd-{folder.name}:{name}", f"msd-{folder.name}:{name}", slices_per_label, min_area)


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


def phantom_samples(seeds, size: int = 128, absent_probability: float = 0.0):
    """Training samples: one per named structure of each phantom (``Sample`` objects).

    With ``absent_probability`` > 0, some samples name a structure of the same
    modality that the phantom does not hold (the "not present" answer).
    """
    for seed in seeds:
        ph = phantom(seed, size)
        rng = np.random.default_rng(seed + 10_000_019)
        for name, mask in ph.masks.items():
            yield Sample(ph.image, mask, name, ph.modality, f"phantom:seed={seed}:{name}", f"phantom:{seed}")
        absent = [n for n, _, _ in ORGANS[ph.modality] if n not in ph.masks] + (
            [LESIONS[ph.modality]] if LESIONS[ph.modality] not in ph.masks else []
        )
        if absent and rng.random() < absent_probability:
            name = absent[rng.integers(len(absent))]
            yield Sample(ph.image, np.zeros_like(ph.image, dtype=bool), name, ph.modality, f"phantom:seed={seed}:{name}:absent", f"phantom:{seed}")
