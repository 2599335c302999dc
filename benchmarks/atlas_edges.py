"""Which fit the shipped atlas makes, and where its prior puts the first click, per kind of slice.

The atlas (``napari_ibis.grounding.atlas.SliceAtlas``) fits its CT and brain slices by grey
levels; where they correlate below ``MIN_SIMILARITY`` (an MR slice against CT slices) it
fits them by their edges (gradient magnitude), and refuses below ``MIN_EDGE_SIMILARITY``.
For every structure the atlas holds on the held-out TotalSegmentator slices (real CT and MR,
every 2 mm; labels made by TotalSegmentator) and on held-out phantoms (synthetic, seeds
90000-90059): which fit was made (grey, edges, none), the edges' similarity where the grey
fit failed, and whether the point of the prior farthest inside its half-peak region lies in
the structure. Also scikit-image's bundled photographs (not scans), each asked for five
structures: how often the atlas fits where nothing it holds can be.

    python benchmarks/atlas_edges.py [ATLAS]     # default: resources/models/pointer/atlas.npz

Writes benchmarks/results/atlas_edges.json and prints a table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from napari_ibis.grounding.atlas import MIN_EDGE_SIMILARITY, SliceAtlas  # noqa: E402
from napari_ibis.overlay import to_rgb8  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "atlas_edges.json"


def outcomes(atlas: SliceAtlas, rgb: np.ndarray, masks: dict) -> list[dict]:
    from napari_ibis.policies.pointer import interior_point

    rows = []
    for name, truth in masks.items():  # truth None: a photograph, nothing to be inside
        if name not in atlas.holders:
            continue
        prior = atlas.prior(rgb, f"segment the {name}")
        row = {"name": name, "area": 0 if truth is None else int(truth.sum()), "fit": atlas.last_fit,
               "similarity": atlas.last_similarity}
        if prior is not None and truth is not None:
            row["inside"] = bool(truth[interior_point(prior >= 0.5)])
        rows.append(row)
    return rows


ASKED = ("liver", "spleen", "left kidney", "aorta", "left hippocampus")
PHOTOGRAPHS = ("camera", "astronaut", "coins", "immunohistochemistry", "retina", "moon", "page", "hubble_deep_field",
               "chelsea", "rocket", "horse", "text", "clock", "cell", "grass", "gravel", "brick")  # in the wheel


def photographs() -> list[np.ndarray]:
    from skimage import data

    out = []
    for name in PHOTOGRAPHS:
        rgb = to_rgb8(np.asarray(getattr(data, name)()))
        out.append(np.repeat(rgb[..., None], 3, axis=2) if rgb.ndim == 2 else rgb[..., :3])
    return out


def main() -> int:
    from training.data.sources import phantom_samples
    from training.grounding.dataset import totalseg_slices

    atlas = SliceAtlas.load(sys.argv[1] if len(sys.argv) > 1 else ROOT / "resources/models/pointer/atlas.npz")
    held = totalseg_slices("held_out", step_mm=2.0)
    sets = {"held-out CT (real)": [r for s in held if s.modality == "CT" for r in outcomes(atlas, s.rgb, s.masks)],
            "held-out MR (real)": [r for s in held if s.modality != "CT" for r in outcomes(atlas, s.rgb, s.masks)],
            "phantoms (synthetic)": [r for s in phantom_samples(range(90000, 90060), absent_probability=0.0)
                                     for r in outcomes(atlas, to_rgb8(s.image), {s.target: np.asarray(s.mask, bool)})],
            "photographs (scikit-image, not scans)": [r for rgb in photographs()
                                                      for r in outcomes(atlas, rgb, dict.fromkeys(ASKED))]}
    report = {"min_edge_similarity": MIN_EDGE_SIMILARITY, "sets": {}}
    print("| slices | structures | fitted by grey | by edges | refused | edges' similarity where grey failed: "
          "min / median / max | first click inside (edges fits) | > 500 px | 100-500 px |\n|---|---|---|---|---|---|---|---|---|")
    for label, rows in sets.items():
        edges = [r for r in rows if r["fit"] != "grey" and r["similarity"] is not None]
        similarity = np.asarray([r["similarity"] for r in edges])
        fitted = [r for r in rows if r["fit"] == "edges" and "inside" in r]

        def inside(low, high):
            chosen = [r["inside"] for r in fitted if low <= r["area"] < high]
            return f"{np.mean(chosen):.2f} ({len(chosen)})" if chosen else "-"

        summary = {"structures": len(rows), "grey": float(np.mean([r["fit"] == "grey" for r in rows])),
                   "edges": float(np.mean([r["fit"] == "edges" for r in rows])),
                   "refused": float(np.mean([r["fit"] is None for r in rows])),
                   "edge_similarity": [float(similarity.min()), float(np.median(similarity)),
                                       float(similarity.max())] if edges else None,
                   "inside": inside(0, 10**9), "inside > 500 px": inside(500, 10**9),
                   "inside 100-500 px": inside(100, 500), "rows": rows}
        report["sets"][label] = summary
        spread = " / ".join(f"{v:.2f}" for v in summary["edge_similarity"]) if edges else "-"
        print(f"| {label} | {len(rows)} | {summary['grey']:.2f} | {summary['edges']:.2f} | {summary['refused']:.2f} | "
              f"{spread} | {summary['inside']} | {summary['inside > 500 px']} | "
              f"{summary['inside 100-500 px']} |")
    OUT.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
