"""The atlas's moved mask itself as the segmentation: how far would it go without the agent's clicks?

For every present structure of ``benchmarks/agents_real.py``'s held-out sets, the default
agent's atlas (``resources/models/pointer/atlas.npz``) is fitted to the slice as the agent
fits it (:meth:`SliceAtlas.prior`, the slice windowed as a session windows it, the same query), and the prior above 0.5 is taken as the mask. Reported
per set: how many structures got a prior (and by which fit), the mean IoU where they did,
and over all present structures (no prior counts 0), also for structures > 500 px. The
agent's own IoU on the same cases is in ``benchmarks/results/agents_real-*.json``.

With ``--agent FOLDER`` the agent also runs each case with a prior from that mask, as from
an imported mask (the session's ``init_mask``, MobileSAM, at most 8 steps): does it keep,
repair or spoil it? Absent names are asked too, to see how often a start mask makes it
miss "not present".

With ``--deform A`` the atlas bends its regions' grey fits with TV-L1 attachment ``A``
(``SliceAtlas.deform``; 0: the scale-and-shift fit alone), and the region moved without
the blur (``SliceAtlas.last_region``) is reported beside the blurred extent.

    python benchmarks/atlas_mask.py [--agent resources/models/pointer] [--deform 0]

Writes benchmarks/results/atlas_mask.json (``--deform``: atlas_mask-deform-A.json).
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
    import argparse

    from agents_real import case_sets, score  # the same cases as the agents' table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default=None, help="a model folder to run from the atlas's mask")
    parser.add_argument("--sets", nargs="+", default=["totalseg", "aal", "mni"])
    parser.add_argument("--deform", type=float, default=None, help="TV-L1 attachment of the regions' bending (0: none)")
    args = parser.parse_args()
    policy = segmenter = None
    if args.agent:
        from napari_ibis.policies import load_policy
        from napari_ibis.segmenters import build_segmenter
        from training.rl.rollout import rollout

        policy, segmenter = load_policy(args.agent), build_segmenter("mobilesam")

    from napari_ibis.grounding.atlas import SliceAtlas
    from napari_ibis.metrics import iou
    from napari_ibis.overlay import to_rgb8
    from training.data import text

    atlas = SliceAtlas.load(ROOT / "resources" / "models" / "pointer" / "atlas.npz")
    if args.deform is not None:
        atlas.deform = args.deform
    results = {}
    for name, cases in case_sets(0, chosen=tuple(args.sets)).items():
        rows, absent, rng = [], [], np.random.default_rng(0)
        for case in cases:
            query = text.query(case.target, case.modality, rng)  # drawn for every case, as agents_real.py draws them
            prior = atlas.prior(to_rgb8(case.image), query)  # the slice as a session shows it to the agent
            start = None if prior is None else prior > 0.5
            agent = None if policy is None or start is None else score(
                case, rollout(policy, case, query, segmenter, max_turns=8, init_mask=start))
            if not case.mask.any():
                if agent is not None:
                    absent.append(agent["said_absent"])
                continue
            rows.append({"source": case.source, "area": int(case.mask.sum()), "fit": atlas.last_fit,
                         "iou": None if start is None else float(iou(case.mask, start)),
                         "region_iou": None if start is None else float(iou(case.mask, atlas.last_region)),
                         "agent_iou": None if agent is None else agent["iou"],
                         "agent_said_absent": None if agent is None else agent["said_absent"]})
        fitted = [r for r in rows if r["iou"] is not None]
        large = [r for r in rows if r["area"] > 500]
        results[name] = {
            "present": len(rows), "fitted": len(fitted),
            "fitted_by": {kind: sum(r["fit"] == kind for r in rows) for kind in ("grey", "edges")},
            "mean_iou_where_fitted": float(np.mean([r["iou"] for r in fitted])) if fitted else None,
            "mean_iou_all": float(np.sum([r["iou"] for r in fitted]) / len(rows)) if rows else None,
            "mean_region_iou_all": float(np.sum([r["region_iou"] for r in fitted]) / len(rows)) if rows else None,
            "large": len(large),
            "mean_iou_all_large": float(np.sum([r["iou"] or 0.0 for r in large]) / len(large)) if large else None,
            "agent_from_it": None if policy is None or not fitted else {
                "mean_iou_where_fitted": float(np.mean([r["agent_iou"] for r in fitted])),
                "false_not_present": float(np.mean([r["agent_said_absent"] for r in fitted])),
                "absent_asked_with_a_start_mask": len(absent),
                "not_present_right": float(np.mean(absent)) if absent else None},
            "cases": rows}
        summary = {k: v for k, v in results[name].items() if k != "cases"}
        print(name, json.dumps(summary), flush=True)
    out = OUT.with_name("atlas_mask-agent.json") if args.agent else OUT
    if args.deform is not None:
        out = out.with_name(f"{out.stem}-deform-{args.deform:g}.json")
    out.write_text(json.dumps({"agent": args.agent, "sets": results} if args.agent else results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
