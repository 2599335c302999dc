"""How far does position alone carry a named structure to a new patient? (TotalSegmentator volumes)

No image features: each structure's mean mask over the training patients' axial slices, in
coordinates of a box around the body, and the first click at its peak on the held-out
patients' slices. The pointer agent v8 gets the same kind of coordinates as two of its
input channels (``napari_ibis.grounding.head.body_box``: the box of every pixel brighter
than 25 of 255), so this measures what those channels can give and how the box's
definition moves it:

* ``bright pixels``: v8's box;
* ``largest part, opening R``: ``body_box(kind="largest_part", opening=R)``, the largest
  connected part after a morphological opening with a disk of R x the image side (meant to
  drop the CT table and arms beside the body; the head's setting uses R = 0.02).

    python benchmarks/position_prior.py

Writes benchmarks/results/position_prior.json and prints a table (share of first clicks
inside, by modality and structure size; real data, labels made by TotalSegmentator).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "position_prior.json"
GRID = 48
SIZES = (("< 100 px", 0, 100), ("100-500 px", 100, 500), ("> 500 px", 500, 10**9))


def first_clicks(box_of) -> list[dict]:
    from skimage.transform import resize

    from training.grounding.dataset import totalseg_slices

    prior, seen = {}, {}
    for item in totalseg_slices("train", step_mm=3.0):
        top, left, bottom, right = box_of(item.rgb)
        for name, mask in item.masks.items():
            cropped = resize(mask[top:bottom, left:right].astype(np.float32), (GRID, GRID), order=1)
            prior[name] = prior.get(name, 0) + cropped
            seen[name] = seen.get(name, 0) + 1
    rows = []
    for item in totalseg_slices("held_out", step_mm=2.0):
        top, left, bottom, right = box_of(item.rgb)
        for name, mask in item.masks.items():
            if name not in prior:
                continue  # never labelled on a training patient: position says nothing about it
            i, j = np.unravel_index(int(np.argmax(prior[name])), (GRID, GRID))
            row = min(int(top + (i + 0.5) * (bottom - top) / GRID), mask.shape[0] - 1)
            col = min(int(left + (j + 0.5) * (right - left) / GRID), mask.shape[1] - 1)
            rows.append({"modality": item.modality, "name": name, "area": int(mask.sum()), "hit": bool(mask[row, col])})
    return rows


def main() -> int:
    from napari_ibis.grounding.head import body_box

    boxes = {"bright pixels (v8)": body_box}
    for opening in (0.01, 0.02, 0.03, 0.05):
        boxes[f"largest part, opening {opening:g}"] = lambda rgb, o=opening: body_box(rgb, kind="largest_part", opening=o)
    results = {}
    print("| box | modality | " + " | ".join(label for label, _, _ in SIZES) + " |")
    print("|---|---|" + "---|" * len(SIZES))
    for label, box_of in boxes.items():
        rows = first_clicks(box_of)
        results[label] = {}
        for modality in ("CT", "MRI"):
            cells = []
            for size, low, high in SIZES:
                chosen = [r["hit"] for r in rows if r["modality"] == modality and low <= r["area"] < high]
                results[label][f"{modality} {size}"] = {"cases": len(chosen), "inside": float(np.mean(chosen)) if chosen else None}
                cells.append(f"{np.mean(chosen):.2f} ({len(chosen)})" if chosen else "-")
            print(f"| {label} | {modality} | " + " | ".join(cells) + " |")
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
