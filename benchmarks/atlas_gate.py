"""When should the atlas refuse? The gap between its likest slice and its likest slice
that holds the named structure, on real slices asked for their own structures and for
structures of another body part.

For each slice and name: the correlation (48 x 48, body box, before any fit) of the new
slice with every atlas slice, and the gap ``best of all - best of those holding the
name``. A structure of the scanned body part should have a small gap; a liver asked for
on a brain a large one. ``napari_ibis.grounding.atlas.MAX_GAP`` is set between them.

    python benchmarks/atlas_gate.py [ATLAS]     # default: resources/models/pointer/atlas.npz

Sets (real; labels by TotalSegmentator, AAL): the held-out TotalSegmentator CT and MR
(every 4 mm), held-out Colin27 slices (every 4th), the MNI152 template (every 8 mm, AAL
labels carried over). Writes benchmarks/results/atlas_gate.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from napari_ibis.grounding.atlas import MAX_GAP, SliceAtlas  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "atlas_gate.json"


def gaps(atlas: SliceAtlas, slices, names) -> list[float]:
    out = []
    for item in slices:
        everywhere = atlas.likeness(item.rgb)[0]
        for name in names(item):
            if name in atlas.holders:
                out.append(float(everywhere.max() - everywhere[atlas.holders[name]].max()))
    return out


def main() -> int:
    from training.grounding.dataset import aal_slices, mni152_aal_slices, totalseg_slices

    atlas = SliceAtlas.load(sys.argv[1] if len(sys.argv) > 1 else ROOT / "resources/models/pointer/atlas.npz")
    held = totalseg_slices("held_out", step_mm=4.0)
    ct, mr = [s for s in held if s.modality == "CT"], [s for s in held if s.modality != "CT"]
    brain, mni = aal_slices("held_out", step=4), mni152_aal_slices(step=8)
    own = lambda item: list(item.masks)[:5]  # noqa: E731
    rows = {
        "held-out CT, its own structures": gaps(atlas, ct, own),
        "held-out MR, its own structures": gaps(atlas, mr, own),
        "held-out Colin27 slices, their own regions": gaps(atlas, brain, own),
        "MNI152 template, its own regions": gaps(atlas, mni, own),
        "held-out Colin27 slices asked for liver, spleen, aorta": gaps(atlas, brain, lambda s: ["liver", "spleen", "aorta"]),
        "MNI152 template asked for liver, spleen": gaps(atlas, mni, lambda s: ["liver", "spleen"]),
        "held-out CT asked for left hippocampus, left putamen": gaps(atlas, ct, lambda s: ["left hippocampus", "left putamen"]),
    }
    report = {"max_gap": MAX_GAP, "sets": {}}
    print(f"| slices, names asked | cases | gap: min | median | max | refused (gap > {MAX_GAP}) |\n|---|---|---|---|---|---|")
    for label, values in rows.items():
        values = np.asarray(values)
        summary = {"cases": len(values), "min": float(values.min()), "median": float(np.median(values)),
                   "max": float(values.max()), "refused": float((values > MAX_GAP).mean())}
        report["sets"][label] = summary
        print(f"| {label} | {summary['cases']} | {summary['min']:.2f} | {summary['median']:.2f} | {summary['max']:.2f} "
              f"| {summary['refused']:.2f} |")
    OUT.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
