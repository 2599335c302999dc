"""The atlas's moved mask itself as the segmentation: how far would it go without the agent's clicks?

For every present structure of ``benchmarks/agents_real.py``'s held-out sets, the default
agent's atlas (``resources/models/pointer/atlas.npz``) is fitted to the slice as the agent
fits it (:meth:`SliceAtlas.prior`, the slice windowed as a session windows it, the same query), and the prior above 0.5 is taken as the mask. Reported
per set: how many structures got a prior (and by which fit), the mean IoU where they did,
and over all present structures (no prior counts 0), also for structures > 500 px. The
agent's own IoU on the same cases is in ``benchmarks/results/agents_real-*.json``.

    python benchmarks/atlas_mask.py

Writes benchmarks/results/atlas_mask.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "results" / "atlas_mask.json"


def main() -> int:
    from agents_real import case_sets  # the same cases as the agents' table

    from napari_ibis.grounding.atlas import SliceAtlas
    from napari_ibis.metrics import iou
    from napari_ibis.overlay import to_rgb8
    from training.data import text

    atlas = SliceAtlas.load(ROOT / "resources" / "models" / "pointer" / "atlas.npz")
    results = {}
    for name, cases in case_sets(0, chosen=("totalseg", "aal", "mni")).items():
        rows, rng = [], np.random.default_rng(0)
        for case in cases:
            query = text.query(case.target, case.modality, rng)  # drawn for every case, as agents_real.py draws them
            if not case.mask.any():
                continue
            prior = atlas.prior(to_rgb8(case.image), query)  # the slice as a session shows it to the agent
            rows.append({"source": case.source, "area": int(case.mask.sum()), "fit": atlas.last_fit,
                         "iou": None if prior is None else float(iou(case.mask, prior > 0.5))})
        fitted = [r for r in rows if r["iou"] is not None]
        large = [r for r in rows if r["area"] > 500]
        results[name] = {
            "present": len(rows), "fitted": len(fitted),
            "fitted_by": {kind: sum(r["fit"] == kind for r in rows) for kind in ("grey", "edges")},
            "mean_iou_where_fitted": float(np.mean([r["iou"] for r in fitted])) if fitted else None,
            "mean_iou_all": float(np.sum([r["iou"] for r in fitted]) / len(rows)) if rows else None,
            "large": len(large),
            "mean_iou_all_large": float(np.sum([r["iou"] or 0.0 for r in large]) / len(large)) if large else None,
            "cases": rows}
        summary = {k: v for k, v in results[name].items() if k != "cases"}
        print(name, json.dumps(summary), flush=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
