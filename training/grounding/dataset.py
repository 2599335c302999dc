"""Slices with every named structure on them, for the query-conditioned head.

A :class:`Slice` holds one rendered slice (RGB, as the agent's session shows it), the
masks of all named structures on it, and the names that its source labels elsewhere
but that are absent here (for "not present" questions). Sources, each split so that
nothing evaluated is trained on:

- TotalSegmentator's reference volumes (real CT/MR, labels made by TotalSegmentator,
  not by hand): split by patient (``TOTALSEG_HELD_OUT`` never trained on);
- the Colin27 brain with the AAL atlas (real MRI, atlas labels): split by slice, with the
  same hash as every other AAL use (:func:`training.data.sources.split_by_group`);
- stardist's nuclei image (real fluorescence): the left half trains, the right half is
  held out (one image only, so halves stand in for images);
- synthetic phantoms: seeds below 90000 train, from 90000 on held out;
- the MNI152 template with the AAL labels carried into its grid (evaluation only: a second
  brain, an average of 152, whose labels are Colin27's and so only approximate).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_ibis.overlay import to_rgb8

HELD_OUT_PHANTOM_SEEDS = (90000, 90200)


@dataclass
class Slice:
    rgb: np.ndarray  # (H, W, 3) uint8, as a session renders it
    masks: dict[str, np.ndarray]  # name -> bool (H, W), every named structure present
    absent: tuple[str, ...]  # names labelled elsewhere in the source, not on this slice
    modality: str
    source: str  # e.g. "totalseg:abdomen_ct:z=40"
    kind: str  # "totalseg", "aal", "nuclei", "phantom": what a report groups by
    ambiguous: tuple[str, ...] = field(default_factory=tuple)  # names with several instances (any one is right)

    @property
    def key(self) -> str:
        return hashlib.sha256(self.rgb.tobytes() + str(self.rgb.shape).encode()).hexdigest()[:20]


def _structures(labels: np.ndarray, names: dict[int, str], min_area: int) -> dict[str, np.ndarray]:
    present = {}
    for value in np.unique(labels):
        if value and int(value) in names:
            mask = labels == value
            if mask.sum() >= min_area:
                present[names[int(value)]] = mask
    return present


def totalseg_slices(side: str, step_mm: float = 6.0, min_area: int = 20) -> list[Slice]:
    """Axial slices of TotalSegmentator's volumes in the display convention, ``step_mm`` apart."""
    from napari_ibis import assets, io
    from training.data.sources import (TOTALSEG_HELD_OUT, TOTALSEG_VOLUMES, structure_name,
                                       totalseg_class_maps)

    root = assets.path("totalsegmentator", "tests/reference_files").parent.parent
    class_maps = totalseg_class_maps()
    out = []
    for volume, (image_file, labels_spec, class_map) in TOTALSEG_VOLUMES.items():
        if (volume in TOTALSEG_HELD_OUT) != (side == "held_out"):
            continue
        loaded = io.read_image(root / image_file)
        modality = "MRI" if volume.endswith("_mr") else "CT"
        if isinstance(labels_spec, dict):
            labels = np.zeros(loaded.data.shape, dtype=np.int16)
            names = {}
            for index, (raw, path) in enumerate(labels_spec.items(), start=1):
                labels[io.read_image(root / path).data > 0] = index
                names[index] = structure_name(raw)
        else:
            labels = io.read_image(root / labels_spec).data
            names = {k: structure_name(v) for k, v in class_maps[class_map].items()}
        labelled = {names[int(v)] for v in np.unique(labels) if v and int(v) in names}
        thickness = float(loaded.meta["geometry"].spacing[0])
        step = max(1, int(round(step_mm / thickness)))
        for z in range(0, labels.shape[0], step):
            masks = _structures(labels[z], names, min_area)
            if not masks:
                continue
            out.append(Slice(to_rgb8(loaded.data[z]), masks, tuple(sorted(labelled - set(masks))), modality,
                             f"totalseg:{volume}:z={z}", "totalseg"))
    return out


def augmented(slices: list[Slice], copies: int, seed: int = 0, min_kept: float = 0.5) -> list[Slice]:
    """``copies`` altered versions of each slice, as another patient or scanner might show it:
    a random affine (scale 0.8-1.25 per axis, rotation within 10 degrees, shift within 10% of
    the side; never a flip, which would swap left and right) and a random gamma (0.7-1.4) of
    the grey levels. A structure keeps its name where at least ``min_kept`` of its area stays
    in the image; one pushed out of it is dropped (neither present nor asked as absent)."""
    from skimage.transform import AffineTransform, warp

    rng = np.random.default_rng(seed)
    out = []
    for item in slices:
        height, width = item.rgb.shape[:2]
        for copy in range(copies):
            centre = np.array([width, height]) / 2
            move = (AffineTransform(translation=-centre)
                    + AffineTransform(scale=rng.uniform(0.8, 1.25, 2), rotation=np.deg2rad(rng.uniform(-10, 10)))
                    + AffineTransform(translation=centre + rng.uniform(-0.1, 0.1, 2) * [width, height]))
            grey = warp(item.rgb / 255.0, move.inverse, order=1, mode="constant") ** rng.uniform(0.7, 1.4)
            masks = {}
            for name, mask in item.masks.items():
                moved = warp(mask.astype(np.float32), move.inverse, order=0, mode="constant") > 0.5
                if moved.sum() >= min_kept * mask.sum():
                    masks[name] = moved
            if masks:
                out.append(Slice(np.round(grey * 255).astype(np.uint8), masks, item.absent, item.modality,
                                 f"{item.source}:augmented={copy}", item.kind, item.ambiguous))
    return out


def recontrasted(slices: list[Slice], copies: int, seed: int = 0, knots: int = 6) -> list[Slice]:
    """``copies`` of each CT slice in another contrast, as an MR sequence might show the same
    anatomy (the way SynthSeg learns segmentation for any contrast: Billot et al., Medical Image
    Analysis 2023): the body's grey levels through a random curve that need not rise, with its
    ``knots`` at random quantiles of the body's grey levels (so that fat, fluid, the organs and
    bone each get a level of their own: fat may come out brighter than the organs and bone dark),
    air kept dark as an MR shows it (the slice blurred a little first: a CT's grain, steepened by the
    curve, is no MR's), then a random gamma, a smooth random brightness field across
    the slice (a coil's falloff) and a little noise. Labelled "MRI", so that the queries which
    name the modality are asked of them too. The masks stay as they are; only CT slices are copied
    (an MR's grey levels carry no Hounsfield scale)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    out = []
    for item in slices:
        if item.modality != "CT":
            continue
        grey = item.rgb[..., 0].astype(np.float32) / 255.0
        height, width = grey.shape
        air = float(np.quantile(grey, 0.02)) + 0.1  # the air around the body and in the lungs lies below
        body = grey[grey > air]
        if body.size < 100:
            continue
        for copy in range(copies):
            where = np.r_[0.0, air, np.sort(np.quantile(body, rng.uniform(0, 1, knots))), 1.0 + 1e-6]
            levels = np.r_[0.0, rng.uniform(0.0, 0.1), rng.uniform(0.1, 1.0, knots + 1)]
            smooth = ndi.gaussian_filter(grey, rng.uniform(0.5, 1.0))  # a CT's grain, steepened by the curve, is no MR's
            curve = np.interp(smooth, np.maximum.accumulate(where), levels)
            field = ndi.zoom(rng.uniform(0.7, 1.3, (3, 3)), (height / 3, width / 3), order=1)
            field = np.pad(field, ((0, max(0, height - field.shape[0])), (0, max(0, width - field.shape[1]))),
                           mode="edge")[:height, :width]
            seen = curve ** rng.uniform(0.7, 1.4) * field + rng.normal(0, 0.02, grey.shape)
            seen = np.clip(seen, 0, None) / max(float(np.quantile(seen, 0.999)), 1e-6)
            out.append(Slice(np.repeat(np.round(np.clip(seen, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2),
                             item.masks, item.absent, "MRI", f"{item.source}:recontrasted={copy}", item.kind,
                             item.ambiguous))
    return out


def aal_slices(side: str, step: int = 2, min_area: int = 20, view: str = "axial") -> list[Slice]:
    """Colin27 slices with every AAL region on them; ``side`` by the AAL slice hash.

    ``view``: "axial" (the slices every other AAL use takes) or "coronal" (superior up,
    the patient's left on the right, as the axial slices); coronal slices have their own
    hash groups (``colin27-coronal:y=...``)."""
    from napari_ibis import io
    from training.data.sources import AAL_DIR, Sample, _aal_names, aal_target_name, split_by_group

    volume = io.read_image(AAL_DIR / "ch2.nii.gz").data
    atlas = io.read_image(AAL_DIR / "aal.nii.gz").data
    if view == "coronal":  # display axes (S, P, L): a coronal slice is (S, L), flipped so that superior is up
        volume, atlas = volume[::-1].transpose(1, 0, 2), atlas[::-1].transpose(1, 0, 2)
    elif view != "axial":
        raise ValueError(f"view must be axial or coronal, not {view!r}")
    prefix, axis = ("colin27", "z") if view == "axial" else ("colin27-coronal", "y")
    names = {k: aal_target_name(v) for k, v in _aal_names(AAL_DIR / "aal.nii.txt").items()}
    out = []
    for index in range(0, atlas.shape[0], step):
        probe = Sample(None, None, "", "", "", f"{prefix}:{axis}={index}")
        train, held = split_by_group([probe])
        if (side == "held_out") != bool(held):
            continue
        masks = _structures(atlas[index], names, min_area)
        if masks:
            source = f"colin27-aal:z={index}" if view == "axial" else f"colin27-aal-coronal:y={index}"
            out.append(Slice(to_rgb8(volume[index]), masks, tuple(sorted(set(names.values()) - set(masks))), "MRI",
                             source, "aal"))
    return out


def mni152_aal_volume() -> tuple[np.ndarray, np.ndarray, dict[int, str], tuple[float, ...]]:
    """The MNI152 (ICBM 2009a) T1 template and the AAL regions on its grid, both in the
    display convention: (template, labels, code -> region name, spacing mm).

    AAL was drawn on Colin27, which lies in the same MNI millimetres; the labels are carried
    into the template's grid by the two files' affines (nearest voxel), so they are only as
    right as Colin27 matches the average brain (a few millimetres). Never trained on: the
    one labelled brain that is not the training brain."""
    from napari_ibis import io
    from napari_ibis.geometry import display_ornt
    from training.data.sources import AAL_DIR, _aal_names, aal_target_name

    import nibabel as nib

    template_file, raw_template, labels = _mni152_aal_in_file_order()
    template = io.read_image(template_file)  # in the display convention
    labels = nib.orientations.apply_orientation(labels, display_ornt(raw_template.affine, raw_template.shape)[0])
    if labels.shape != template.data.shape:
        raise ValueError(f"MNI152 labels {labels.shape} do not match the template {template.data.shape}")
    names = {k: aal_target_name(v) for k, v in _aal_names(AAL_DIR / "aal.nii.txt").items()}
    return template.data, labels, names, tuple(template.meta["geometry"].spacing)


def _mni152_aal_in_file_order():
    """(the template's file, its nibabel image, the AAL labels on its voxels in the file's order)."""
    from scipy import ndimage as ndi

    from napari_ibis import assets
    from training.data.sources import AAL_DIR

    import nibabel as nib

    template_file = assets.path("mni152", "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    raw_template, raw_aal = nib.load(template_file), nib.load(AAL_DIR / "aal.nii.gz")
    to_aal = np.linalg.inv(raw_aal.affine) @ raw_template.affine  # template voxel -> AAL voxel, through millimetres
    labels = ndi.affine_transform(np.asarray(raw_aal.dataobj), to_aal[:3, :3], to_aal[:3, 3],
                                  output_shape=raw_template.shape, order=0, mode="constant")
    return template_file, raw_template, labels


def write_mni152_aal(path) -> Path:
    """The AAL labels carried onto the MNI152 template (:func:`mni152_aal_volume`) as a NIfTI on
    the template's own grid, to open beside it; returns the template's file."""
    import nibabel as nib

    template_file, raw_template, labels = _mni152_aal_in_file_order()
    nib.save(nib.Nifti1Image(labels.astype(np.int16), raw_template.affine), str(path))
    return Path(template_file)


def mni152_aal_slices(step: int = 6, min_area: int = 20) -> list[Slice]:
    """Axial slices of the MNI152 template with the AAL regions on them (:func:`mni152_aal_volume`),
    every ``step``-th."""
    template, labels, names, _ = mni152_aal_volume()
    out = []
    for index in range(0, labels.shape[0], step):
        masks = _structures(labels[index], names, min_area)
        if masks:
            out.append(Slice(to_rgb8(template[index]), masks, tuple(sorted(set(names.values()) - set(masks))),
                             "MRI", f"mni152-aal:z={index}", "mni"))
    return out


def session_slices(inbox) -> list[Slice]:
    """The kept sessions of a training inbox (:mod:`napari_ibis.inbox`): each slice with the
    accepted mask under the structure its query names, or that name as absent when the
    person accepted "not present"; at square pixels, as the agent sees them."""
    from napari_ibis.inbox import TrainingInbox

    out = []
    for kept in (k.at_square_pixels() for k in TrainingInbox(inbox).sessions()):
        masks = {} if kept.not_present or not kept.accepted.any() else {kept.target: kept.accepted}
        absent = (kept.target,) if not masks else ()
        out.append(Slice(kept.rgb, masks, absent, kept.modality or "medical", f"session:{kept.id}", "session"))
    return out


def kind_slices(cases) -> list[tuple[str, Slice]]:
    """Every axial slice of pyradiomics' ``cases`` (``KIND_REFERENCES``, or the ones kept out of
    it), each with the kind of scan it is ("head", "trunk"): scans whose body part is known
    but whose structures are not labelled, so the atlas learns kinds of scan from them, not
    where anything lies. Their tumour masks are not kept."""
    from training.data.sources import RADIOMICS_KINDS, radiomics_volumes

    return [(RADIOMICS_KINDS[case.name], Slice(to_rgb8(case.volume[z]), {}, (), case.modality,
                                               f"pyradiomics:{case.name}:z={z}", "kind"))
            for case in radiomics_volumes(cases) for z in range(case.volume.shape[0])]


def nuclei_slices(side: str) -> list[Slice]:
    """stardist's nuclei image: the left half (train) or the right half (held out); the
    query "nucleus" has many right answers."""
    from stardist.data import test_image_nuclei_2d

    image, labels = test_image_nuclei_2d(return_mask=True)
    half = image.shape[1] // 2
    columns = slice(0, half) if side == "train" else slice(half, None)
    crop, crop_labels = image[:, columns], labels[:, columns]
    rgb = to_rgb8(crop)
    return [Slice(rgb, {"nucleus": crop_labels > 0}, ("liver",), "fluorescence microscopy",
                  f"stardist-nuclei:{side}", "nuclei", ambiguous=("nucleus",))]


def phantom_slices(seeds) -> list[Slice]:
    from napari_ibis.phantoms import LESIONS, ORGANS, phantom

    out = []
    for seed in seeds:
        ph = phantom(seed)
        named = {n for n, _, _ in ORGANS[ph.modality]} | {LESIONS[ph.modality]}
        masks = {k: v for k, v in ph.masks.items() if v.any()}
        ambiguous = ("nucleus", "cell") if ph.modality == "fluorescence microscopy" else ()
        out.append(Slice(to_rgb8(ph.image), masks, tuple(sorted(named - set(masks))), ph.modality,
                         f"phantom:seed={seed}", "phantom", ambiguous=ambiguous))
    return out


def probe_sets(phantoms_train: int = 60, phantoms_held_out: int = 40) -> tuple[list[Slice], dict[str, list[Slice]]]:
    """(training slices, held-out sets by name)."""
    train = (totalseg_slices("train") + aal_slices("train", step=3) + nuclei_slices("train")
             + phantom_slices(range(phantoms_train)))
    held_totalseg = totalseg_slices("held_out", step_mm=2.0)
    held = {
        "totalseg held-out CT (real)": [s for s in held_totalseg if s.modality == "CT"],
        "totalseg held-out MR (real)": [s for s in held_totalseg if s.modality == "MRI"],
        "aal held-out (real MRI)": aal_slices("held_out", step=1),
        "nuclei right half (real)": nuclei_slices("held_out"),
        "phantoms held-out (synthetic)": phantom_slices(range(HELD_OUT_PHANTOM_SEEDS[0], HELD_OUT_PHANTOM_SEEDS[0] + phantoms_held_out)),
    }
    return train, held


# -- features, cached on disk ------------------------------------------------------------
def cache_folder() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-ibis")) / "features"


def features_of(encoder, slices: list[Slice], log=None):
    """(features (N, C, g, g) float16 tensor, framings) for ``slices``; cached by encoder and slice."""
    import torch

    folder = cache_folder() / encoder.name
    folder.mkdir(parents=True, exist_ok=True)
    stacked, framings = [], []
    for index, item in enumerate(slices):
        file = folder / f"{item.key}.pt"
        if file.is_file():
            features = torch.load(file, weights_only=True)
        else:
            features = encoder.encode(item.rgb)[0].half()
            torch.save(features, file)
            if log and index % 25 == 0:
                log(f"{encoder.name}: {index + 1}/{len(slices)} slices encoded")
        stacked.append(features)
        framings.append(encoder.framing(item.rgb))
    return torch.stack(stacked), framings
