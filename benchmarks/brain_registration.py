"""The brain atlas registered onto a whole volume (napari_ibis.grounding.brain_atlas), measured.

Test volumes: the MNI152 (ICBM 2009a) T1 template, a real average brain that is not Colin27
(brain only, no skull: harder for an atlas that has one), moved by a known random affine
transform (rotation up to ``--degrees`` about each axis, scale 0.9-1.1 per axis, shift up to 10
mm) and cut like pyradiomics' clinical brain MRIs: 0.78 mm pixels, 6.5 mm slices (the grey
levels averaged over the slab), 256 x 256 x 25. Its AAL labels move with it (nearest voxel at
each slice's centre), so the truth is exact up to how well AAL fits MNI152 (a few mm).

Per volume: seconds and mutual information of the fit, 3-D Dice of every AAL region, and per
(region, slice) with the region larger than ``--min-pixels`` on the slice the IoU of the cut
region. ``--negatives`` also fits the atlas onto volumes that are no head (TotalSegmentator's
abdominal CT and MR, a 3-D phantom), whose mutual information ``MIN_BRAIN_MATCH`` must refuse.
``--agents N`` runs the pointer agent on N region questions per moved volume and one absent
region per slice, each asked on the slice alone (the slice atlas, as before) and with the
volume (the registered region).

    python benchmarks/brain_registration.py [--volumes 3] [--negatives] [--agents 40]
    python benchmarks/brain_registration.py --agents 40 --absent 20 --slice-mm 1 --pixel-mm 1 --view coronal --out ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/agents_real.py's scoring

OUT = Path(__file__).parent / "results" / "brain_registration.json"
SLICE_MM, PIXEL_MM, FIELD_MM, FIELD_S_MM = 6.5, 0.78125, 200.0, 162.5  # 256 x 256 x 25 at 6.5 mm


def moved_brain(seed: int, degrees: float = 10.0, slice_mm: float = SLICE_MM, pixel_mm: float = PIXEL_MM):
    """(grey, labels, names, spacing): the MNI152 template and its AAL labels, moved by the
    random affine of ``seed`` and cut into axial slices ``slice_mm`` thick of ``pixel_mm``
    pixels (display order)."""
    import SimpleITK as sitk

    from napari_ibis.grounding.brain_atlas import _image
    from training.grounding.dataset import mni152_aal_volume

    template, labels, names, spacing = mni152_aal_volume()
    rng = np.random.default_rng(seed)
    # the slab: the template blurred along S as a 6.5 mm slice averages it
    from scipy import ndimage as ndi

    slab = ndi.uniform_filter1d(template.astype(np.float32), size=max(1, int(round(slice_mm / spacing[0]))), axis=0)
    source = _image(slab, spacing)
    centre = np.array(source.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in source.GetSize()]))
    transform = sitk.AffineTransform(3)
    transform.SetCenter(tuple(centre))
    angles = np.deg2rad(rng.uniform(-degrees, degrees, 3))
    rotation = sitk.Euler3DTransform((0, 0, 0), *angles).GetMatrix()
    matrix = np.asarray(rotation).reshape(3, 3) @ np.diag(rng.uniform(0.9, 1.1, 3))
    transform.SetMatrix(tuple(matrix.ravel()))
    transform.SetTranslation(tuple(rng.uniform(-10, 10, 3)))
    out_spacing = (slice_mm, pixel_mm, pixel_mm)
    slices, side = int(round(FIELD_S_MM / slice_mm)), int(round(FIELD_MM / pixel_mm))
    grid = _image(np.zeros((slices, side, side), np.float32), out_spacing)
    field_mm = np.array([side * pixel_mm, side * pixel_mm, slices * slice_mm])  # x, y, z
    grid.SetOrigin(tuple(centre - field_mm / 2))
    grey = sitk.GetArrayFromImage(sitk.Resample(source, grid, transform, sitk.sitkLinear, 0.0))
    moved_labels = sitk.GetArrayFromImage(sitk.Resample(_image(labels.astype(np.float32), spacing), grid, transform,
                                                        sitk.sitkNearestNeighbor, 0.0)).astype(np.int32)
    return grey, moved_labels, names, out_spacing


def fit_figures(atlas, grey, labels, names, spacing, min_pixels: int) -> dict:
    fit = atlas.register(grey, spacing)
    dice, ious = {}, []
    for code, name in names.items():
        truth = labels == code
        if not atlas.holds(name) or not truth.any():
            continue
        found = fit.region_volume(name)
        dice[name] = float(2 * (found & truth).sum() / (found.sum() + truth.sum()))
        for z in range(truth.shape[0]):
            if truth[z].sum() >= min_pixels:
                cut = fit.region(name, "axial", z)
                ious.append(float((cut & truth[z]).sum() / (cut | truth[z]).sum()))
    return {"seconds": round(fit.seconds, 2), "match": round(fit.match, 3), "variant": fit.variant, "regions": len(dice),
            "dice_3d": round(float(np.mean(list(dice.values()))), 3), "slice_questions": len(ious),
            "slice_iou": round(float(np.mean(ious)), 3),
            "slice_iou_at_least_half": round(float(np.mean(np.asarray(ious) >= 0.5)), 3)}


def negatives(atlas) -> dict:
    """Mutual information of fits onto volumes that are no head."""
    from napari_ibis import assets, io
    from napari_ibis.phantoms import phantom_volume

    out = {}
    for name, relative in (("abdominal CT", "tests/reference_files/example_ct.nii.gz"),
                           ("abdominal MR", "tests/reference_files/example_mr_sm.nii.gz")):
        loaded = io.read_image(assets.path("totalsegmentator", relative))
        fit = atlas.register(loaded.data, loaded.meta["geometry"].spacing)
        out[name] = {"match": round(fit.match, 3), "seconds": round(fit.seconds, 2)}
    fit = atlas.register(phantom_volume(0).image, (1.0, 1.0, 1.0))
    out["3-D phantom"] = {"match": round(fit.match, 3), "seconds": round(fit.seconds, 2)}
    return out


def agent_figures(grey, labels, names, spacing, seed: int, present: int, segmenter_spec: str, max_steps: int,
                  policy, view: str = "axial", absent: int | None = None) -> dict:
    """The pointer agent on ``present`` region questions (at least 100 px on the slice) and one
    absent region per slice (on ``absent`` slices drawn at random, where given: a region of the
    volume that misses the slice), each asked on the slice alone and with the volume; scored
    as benchmarks/agents_real.py scores."""
    from agents_real import score, summarise

    from napari_ibis.policies.base import volume_slice
    from napari_ibis.segmenters import build_segmenter
    from training.data import text
    from training.data.sources import Sample
    from training.rl.rollout import rollout

    from napari_ibis.geometry import VIEWS, oriented

    rng = np.random.default_rng(seed)
    volume = volume_slice(grey, spacing, VIEWS[view])
    grey, labels = np.asarray(oriented(grey, VIEWS[view])), np.asarray(oriented(labels, VIEWS[view]))
    held = {code: name for code, name in names.items() if policy.brain is not None and policy.brain.holds(name)}
    in_volume = [code for code in held if (labels == code).any()]
    cases = [(z, code) for z in range(labels.shape[0]) for code in in_volume if (labels[z] == code).sum() >= 100]
    cases = [cases[i] for i in sorted(rng.permutation(len(cases))[:present])]
    slices = range(labels.shape[0]) if absent is None else sorted(rng.permutation(labels.shape[0])[:absent])
    for z in slices:
        on_slice = set(np.unique(labels[z]).tolist())
        missing = [code for code in in_volume if code not in on_slice]
        if len(on_slice) > 1 and missing:
            cases.append((z, missing[rng.integers(len(missing))]))
    segmenter = build_segmenter(segmenter_spec)
    rows = {"slice": [], "volume": []}
    for z, code in cases:
        sample = Sample(np.ascontiguousarray(grey[z]), labels[z] == code, held[code], "MRI",
                        f"moved-mni{seed}:{view}={z}:{held[code]}", "mni")
        query = text.query(sample.target, sample.modality, rng)
        for mode in rows:
            episode = rollout(policy, sample, query, segmenter, max_turns=max_steps,
                              volume=volume.at(z) if mode == "volume" else None)
            rows[mode].append(score(sample, episode) | {"query": query})
    return {mode: {"summary": summarise(found), "cases": found} for mode, found in rows.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=3, help="moved MNI152 volumes (seeds 0..N-1)")
    parser.add_argument("--degrees", type=float, default=10.0)
    parser.add_argument("--min-pixels", type=int, default=500)
    parser.add_argument("--negatives", action="store_true")
    parser.add_argument("--atlas", default=None, help="a brain_atlas.npz (default: the pointer model's)")
    parser.add_argument("--agents", type=int, default=0, metavar="N",
                        help="also run the pointer agent on N region questions per volume (and one absent per slice)")
    parser.add_argument("--segmenter", default="mobilesam")
    parser.add_argument("--view", choices=("axial", "coronal", "sagittal"), default="axial",
                        help="the plane the agent's slices are cut in")
    parser.add_argument("--absent", type=int, default=None, help="absent questions per volume (default: one a slice)")
    parser.add_argument("--slice-mm", type=float, default=SLICE_MM)
    parser.add_argument("--pixel-mm", type=float, default=PIXEL_MM)
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)

    from napari_ibis.grounding.brain_atlas import ATLAS_FILE, VolumeAtlas
    from napari_ibis._resources import resource_path
    from napari_ibis.policies import POINTER_MODEL

    atlas = VolumeAtlas.load(args.atlas or resource_path(*POINTER_MODEL) / ATLAS_FILE)
    report = {"data": (f"MNI152 (real average T1, no skull) moved by random affines (+-{args.degrees} deg, scale "
                       f"0.9-1.1, +-10 mm), {args.pixel_mm} x {args.pixel_mm} mm pixels, {args.slice_mm} mm slices; "
                       f"the agent's slices {args.view}"),
              "atlas_spacing_mm": atlas.spacing, "volumes": []}
    policy = None
    if args.agents:
        from napari_ibis.policies import load_policy

        policy = load_policy(str(resource_path(*POINTER_MODEL)))
        report["agents"] = {"segmenter": args.segmenter, "max_steps": args.max_steps, "volumes": []}
    for seed in range(args.volumes):
        started = time.perf_counter()
        moved = moved_brain(seed, args.degrees, args.slice_mm, args.pixel_mm)
        figures = fit_figures(atlas, *moved, args.min_pixels)
        report["volumes"].append({"seed": seed, **figures})
        print(f"volume {seed}: {figures} ({time.perf_counter() - started:.0f} s)", flush=True)
        if policy is not None:
            found = agent_figures(*moved, seed, args.agents, args.segmenter, args.max_steps, policy, args.view,
                                  args.absent)
            report["agents"]["volumes"].append({"seed": seed, **found})
            for mode, result in found.items():
                print(f"  agent, {mode}: " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                                        for k, v in result["summary"].items()}), flush=True)
    if policy is not None:
        from agents_real import summarise

        report["agents"]["overall"] = {mode: summarise([row for volume in report["agents"]["volumes"]
                                                        for row in volume[mode]["cases"]])
                                       for mode in ("slice", "volume")}
    for key in ("dice_3d", "slice_iou", "slice_iou_at_least_half", "seconds", "match"):
        report[f"mean_{key}"] = round(float(np.mean([v[key] for v in report["volumes"]])), 3)
    if args.negatives:
        report["negatives"] = negatives(atlas)
        print("no head:", report["negatives"])
    print({k: v for k, v in report.items() if k.startswith("mean_")})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
