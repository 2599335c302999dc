"""Does registering a labelled patient onto a new one find named structures? (TotalSegmentator volumes)

The classical answer to "few labelled patients, find the organ on a new one" is atlas
registration. This measures it on the same held-out slices as benchmarks/position_prior.py
(the DICOM CT and the MR patients, never trained on), with the training patients' slices
as the atlas:

1. both slices are cropped to the body (``body_box(kind="largest_part")``) and resized to
   a common grid, so body position and size are matched (an affine start);
2. the atlas slice most like the new slice (normalised cross-correlation of the grey
   levels, or of their gradient magnitude, which ignores that CT and MR colour tissues
   differently) is chosen, or the ``top`` most alike;
3. optionally a dense deformation (TV-L1 optical flow, scikit-image) moves each atlas
   slice onto the new one, and the atlas masks move with it;
4. the first click for a named structure is the point of the (voted) moved mask farthest
   from its edge. Where no chosen atlas slice holds the structure, the atlas says "not
   on this slice", which counts as a miss here.

    python benchmarks/atlas_prior.py [WORD ...]      # only the variants whose label holds a WORD
    python benchmarks/atlas_prior.py --fuse FOLDER    # a pointer folder without atlas.npz

Writes benchmarks/results/atlas_prior.json and prints a table: share of first clicks
inside and mean IoU of the moved mask, by modality and structure size (real data, labels
made by TotalSegmentator, not by hand). ``--fuse`` compares, on the same cases, the first
click of the pointer agent's map alone, of the shipped atlas prior alone
(``napari_ibis.grounding.atlas``, its similarity gate included) and of the map times the
prior squared, as the agent weights it (benchmarks/results/atlas_prior-fused.json).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from napari_ibis.grounding.atlas import (GRID, MATCH_GRID, _coords, _crop as _to_grid, _grey, _scale_shift,  # noqa: E402
                                         _uncrop as _from_grid, _unit)
from napari_ibis.grounding.head import body_box  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "atlas_prior.json"

SIZES = (("< 100 px", 0, 100), ("100-500 px", 100, 500), ("> 500 px", 500, 10**9))


def _box(rgb):
    return body_box(rgb, kind="largest_part")


def _features(grey_grid: np.ndarray, kind: str) -> np.ndarray:
    from skimage.filters import sobel

    return _unit(sobel(grey_grid) if kind == "gradient" else grey_grid)


class Atlas:
    """The training patients' slices on the common grid: grey levels, match features, masks."""

    def __init__(self, slices, match: str) -> None:
        self.match = match
        self.grey, self.features, self.masks, self.sources = [], [], [], []
        for item in slices:
            box = _box(item.rgb)
            grey = _to_grid(_grey(item.rgb), box, GRID)
            self.grey.append(grey)
            self.features.append(_features(_to_grid(_grey(item.rgb), box, MATCH_GRID), match).ravel())
            self.masks.append({name: _to_grid(mask, box, GRID) for name, mask in item.masks.items()})
            self.sources.append(item.source)
        self.features = np.stack(self.features)
        self.names = set().union(*(m.keys() for m in self.masks))

    def closest(self, rgb: np.ndarray, top: int, among=None) -> list[int]:
        feature = _features(_to_grid(_grey(rgb), _box(rgb), MATCH_GRID), self.match).ravel()
        scores = self.features @ feature
        if among is not None:
            scores = np.where([among in masks for masks in self.masks], scores, -np.inf)
        return list(np.argsort(-scores)[:top])


def _affine(target: np.ndarray, moving: np.ndarray) -> np.ndarray:
    """(2, GRID, GRID) coordinates into ``moving`` for each target pixel: the scale and shift
    per axis the shipped atlas fits (napari_ibis.grounding.atlas)."""
    (sy, sx, ty, tx), _ = _scale_shift(_to_grid(target, (0, 0, GRID, GRID), MATCH_GRID),
                                  _to_grid(moving, (0, 0, GRID, GRID), MATCH_GRID))
    rows, cols = np.meshgrid(*(np.arange(GRID, dtype=np.float32),) * 2, indexing="ij")
    return _coords((sy, sx, ty * GRID / MATCH_GRID, tx * GRID / MATCH_GRID), rows, cols, (GRID - 1) / 2)


def moved_masks(atlas: Atlas, rgb: np.ndarray, top: int, deform: bool, affine: bool = False,
                among=None) -> dict[str, np.ndarray]:
    """Each named structure's share of the ``top`` closest atlas slices (of those in ``among``)
    that put it at each pixel of ``rgb`` (after the optional affine and deformation)."""
    from skimage.registration import optical_flow_tvl1
    from skimage.transform import warp

    box = _box(rgb)
    target = _to_grid(_grey(rgb), box, GRID)
    votes: dict[str, np.ndarray] = {}
    chosen = atlas.closest(rgb, top, among)
    rows, cols = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    for index in chosen:
        coords = np.array([rows, cols], dtype=np.float32)
        if affine:
            coords = _affine(target, atlas.grey[index])
        if deform:
            moving = warp(atlas.grey[index], coords, order=1, mode="constant")
            flow = optical_flow_tvl1(target, moving, attachment=10, num_iter=20)
            coords = np.array([warp(coords[0], np.array([rows + flow[0], cols + flow[1]]), order=1, mode="edge"),
                               warp(coords[1], np.array([rows + flow[0], cols + flow[1]]), order=1, mode="edge")])
        for name, grid_mask in atlas.masks[index].items():
            moved = warp(grid_mask, coords, order=1, mode="constant")
            votes[name] = votes.get(name, 0) + moved / len(chosen)
    return {name: _from_grid(vote, box, rgb.shape[:2]) for name, vote in votes.items()}


def evaluate(atlas: Atlas, held_out, top: int, deform: bool, affine: bool, conditioned: bool) -> list[dict]:
    from napari_ibis.policies.pointer import interior_point

    rows = []
    for item in held_out:
        moved = None if conditioned else moved_masks(atlas, item.rgb, top, deform, affine)
        for name, truth in item.masks.items():
            if name not in atlas.names:
                continue  # never labelled on a training patient
            if conditioned:
                moved = moved_masks(atlas, item.rgb, top, deform, affine, among=name)
            predicted = moved.get(name, np.zeros(truth.shape)) >= 0.5
            hit = False
            if predicted.any():
                hit = bool(truth[interior_point(predicted)])
            union = np.logical_or(predicted, truth).sum()
            rows.append({"modality": item.modality, "name": name, "area": int(truth.sum()), "hit": hit,
                         "said_absent": not predicted.any(), "iou": float(np.logical_and(predicted, truth).sum() / union)})
    return rows


def fused_clicks(train, held_out, folder: str) -> list[dict]:
    """First clicks of the pointer agent's map alone, of the shipped atlas prior alone
    (napari_ibis.grounding.atlas.SliceAtlas) and of the map times the prior squared, as the
    agent weights it when its folder holds an atlas."""
    from napari_ibis.grounding.atlas import SliceAtlas
    from napari_ibis.policies.pointer import ATLAS_POWER, PointerPolicy, interior_point, candidates

    atlas = SliceAtlas.from_slices(train)
    policy = PointerPolicy(folder)
    if policy.atlas is not None:
        raise SystemExit(f"{folder} holds an atlas already: give the folder without one")
    rows = []
    for item in held_out:
        for name, truth in item.masks.items():
            if name not in atlas.names:
                continue
            query = f"segment the {name}"
            head = policy.probability_map(item.rgb, query)
            prior = atlas.prior(item.rgb, query)
            row = {"modality": item.modality, "name": name, "area": int(truth.sum()), "atlas used": prior is not None}
            if prior is None:  # the fitted atlas slice is too unlike this one: the agent keeps its map
                prior = np.ones_like(head)
                row["atlas"] = False
            maps = {"head": head, "head x atlas^2": head * prior**ATLAS_POWER}
            if row["atlas used"]:
                maps["atlas"] = prior
            for label, probability in maps.items():
                row[label] = bool(truth[interior_point(candidates(probability, 0.0)[0])])
            rows.append(row)
    return rows


def main() -> int:
    from training.grounding.dataset import totalseg_slices

    if sys.argv[1:2] == ["--fuse"]:
        train = totalseg_slices("train", step_mm=3.0)
        held_out = totalseg_slices("held_out", step_mm=2.0)
        rows = fused_clicks(train, held_out, sys.argv[2])
        for modality in ("CT", "MRI"):
            for size, low, high in SIZES:
                chosen = [r for r in rows if r["modality"] == modality and low <= r["area"] < high]
                print(modality, size, len(chosen), {k: round(float(np.mean([r[k] for r in chosen])), 2)
                                                    for k in ("atlas used", "head", "atlas", "head x atlas^2")})
        (OUT.parent / "atlas_prior-fused.json").write_text(json.dumps(rows, indent=1) + "\n")
        return 0

    train = totalseg_slices("train", step_mm=3.0)
    held_out = totalseg_slices("held_out", step_mm=2.0)
    variants = {  # match, top, deform, affine, conditioned on the query
        "closest grey slice, body box only": ("grey", 1, False, False, False),
        "closest gradient slice, body box only": ("gradient", 1, False, False, False),
        "closest grey slice + TV-L1": ("grey", 1, True, False, False),
        "3 closest gradient slices + TV-L1, vote": ("gradient", 3, True, False, False),
        "closest slice with the structure (grey)": ("grey", 1, False, False, True),
        "closest slice with the structure (gradient)": ("gradient", 1, False, False, True),
        "closest slice with the structure (grey) + affine": ("grey", 1, False, True, True),
        "closest slice with the structure (grey) + affine + TV-L1": ("grey", 1, True, True, True),
        "3 closest slices with the structure (grey) + affine, vote": ("grey", 3, False, True, True),
    }
    atlases = {}
    results = {"atlas slices": len(train), "held-out slices": len(held_out), "variants": {}}
    print(f"atlas: {len(train)} training slices; held out: {len(held_out)} slices")
    print("| variant | modality | " + " | ".join(f"inside {s}" for s, _, _ in SIZES) + " | IoU > 500 px | said absent |")
    print("|---|---|" + "---|" * (len(SIZES) + 2))
    only = sys.argv[1:]
    for label, (match, top, deform, affine, conditioned) in variants.items():
        if only and not any(word in label for word in only):
            continue
        atlas = atlases.setdefault(match, Atlas(train, match))
        started = time.perf_counter()
        rows = evaluate(atlas, held_out, top, deform, affine, conditioned)
        seconds = (time.perf_counter() - started) / len(held_out)
        entry = {"seconds per slice": seconds}
        for modality in ("CT", "MRI"):
            cells = []
            for size, low, high in SIZES:
                chosen = [r for r in rows if r["modality"] == modality and low <= r["area"] < high]
                entry[f"{modality} {size}"] = {"cases": len(chosen),
                                               "inside": float(np.mean([r["hit"] for r in chosen])) if chosen else None,
                                               "iou": float(np.mean([r["iou"] for r in chosen])) if chosen else None}
                cells.append(f"{entry[f'{modality} {size}']['inside']:.2f} ({len(chosen)})" if chosen else "-")
            large = [r for r in rows if r["modality"] == modality and r["area"] >= 500]
            absent = [r for r in rows if r["modality"] == modality]
            print(f"| {label} | {modality} | " + " | ".join(cells)
                  + f" | {np.mean([r['iou'] for r in large]):.2f} | {np.mean([r['said_absent'] for r in absent]):.2f} |")
            entry[f"{modality} said absent"] = float(np.mean([r["said_absent"] for r in absent]))
        entry["cases"] = rows
        results["variants"][label] = entry
        OUT.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
