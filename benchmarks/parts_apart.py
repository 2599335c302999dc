"""Clicks on the two sides of a paired structure: decoded together, or part by part.

On real CT and MR slices of TotalSegmentator's reference volumes (its own machine-made labels)
holding both members of a pair (kidneys, back muscles, iliopsoas, adrenal glands), a positive
click at the interior point of each member (the point farthest from its edge) is given to
MobileSAM in one call as SAM's decoder takes it (``_segment``), and through
:meth:`Segmenter.segment`, which decodes clicks on objects apart one part at a time
(:mod:`napari_ibis.segmenters.parts`). IoU against the two members together.

With ``--agent``, the default agent is asked on the same slices for both ("segment both
kidneys": one mask of the two, ``PointerPolicy.pair_asked``) and, as before that was read, for
one ("segment the kidney": it picks a member), 4 steps, MobileSAM: IoU against the two, and
the share of slices where the mask holds more than half of each member.

    python benchmarks/parts_apart.py [--every 4] [--agent] [--out benchmarks/results/parts_apart.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PAIRS = ("kidney", "autochthon", "iliopsoas", "adrenal_gland")
BOTH = {"kidney": "segment both kidneys", "autochthon": "segment both autochthon muscles",
        "iliopsoas": "segment both iliopsoas muscles", "adrenal_gland": "segment both adrenal glands"}
ONE = {"kidney": "segment the kidney", "autochthon": "segment the autochthon muscle",
       "iliopsoas": "segment the iliopsoas muscle", "adrenal_gland": "segment the adrenal gland"}


def main() -> int:
    import torch
    from scipy import ndimage as ndi

    from napari_ibis import assets, io
    from napari_ibis.metrics import iou
    from napari_ibis.overlay import to_rgb8
    from napari_ibis.propagation import default_window
    from napari_ibis.segmenters import build_segmenter
    from napari_ibis.segmenters.base import Click
    from training.data.sources import TOTALSEG_VOLUMES, totalseg_class_maps

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--every", type=int, default=4, help="every Nth slice holding both members")
    parser.add_argument("--min-area", type=int, default=30, help="pixels each member needs on the slice")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--agent", action="store_true", help="also ask the default agent for both, and for one")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "parts_apart.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = build_segmenter("mobilesam")
    policy = None
    if args.agent:
        from napari_ibis.policies import load_policy
        from napari_ibis.session import Session

        policy = load_policy(None)

    def ask(rgb, query, members):
        session = Session(rgb, query, policy, segmenter, max_steps=4)
        list(session.run())
        return iou(members[0] | members[1], session.mask), all(
            (session.mask & m).sum() > 0.5 * m.sum() for m in members)

    root = assets.path("totalsegmentator", "tests/reference_files").parent.parent
    names = totalseg_class_maps()
    rows = []
    started = time.perf_counter()
    for volume, (image_file, labels_spec, class_map) in TOTALSEG_VOLUMES.items():
        if isinstance(labels_spec, dict):
            continue  # the aorta and pulmonary reports label no pairs
        loaded = io.read_image(root / image_file)
        labels = io.read_image(root / labels_spec).data
        value_of = {name: value for value, name in names[class_map].items()}
        ct = default_window(loaded.data)[1]
        window = "ct:40,400" if ct else default_window(loaded.data)[0]  # a CT as a session shows soft tissue
        for pair in PAIRS:
            left, right = (value_of.get(f"{pair}_{side}") for side in ("left", "right"))
            if left is None or right is None:
                continue
            both = [z for z in range(len(labels)) if (labels[z] == left).sum() >= args.min_area
                    and (labels[z] == right).sum() >= args.min_area]
            for z in both[::args.every]:
                clicks = []
                for value in (left, right):
                    depth = ndi.distance_transform_edt(labels[z] == value)
                    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
                    clicks.append(Click(int(row), int(col), True, source="simulator"))
                truth = (labels[z] == left) | (labels[z] == right)
                rgb = to_rgb8(loaded.data[z], window)
                segmenter.set_image(rgb)
                together = iou(truth, segmenter._segment(clicks, None).mask)
                apart = iou(truth, segmenter.segment(clicks).mask)
                row = {"volume": volume, "pair": pair, "slice": z, "together": together, "apart": apart}
                if policy is not None:
                    members = [labels[z] == left, labels[z] == right]
                    row["agent_both"], row["agent_both_each"] = ask(rgb, BOTH[pair], members)
                    row["agent_one"], row["agent_one_each"] = ask(rgb, ONE[pair], members)
                rows.append(row)
                print(f"{volume:<18} {pair:<14} slice {z:3d}  together {together:.3f}  apart {apart:.3f}"
                      + (f"  agent: both {row['agent_both']:.3f}, one {row['agent_one']:.3f}" if policy else ""),
                      flush=True)
    keys = ["together", "apart"] + (["agent_both", "agent_both_each", "agent_one", "agent_one_each"] if policy else [])
    summary = {}
    for pair in [*dict.fromkeys(r["pair"] for r in rows), "all"]:
        chosen = [r for r in rows if pair in ("all", r["pair"])]
        summary[pair] = {"slices": len(chosen)} | {k: float(np.mean([r[k] for r in chosen])) for k in keys}
    print("| pair | slices | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for pair, s in summary.items():
        print(f"| {pair} | {s['slices']} | " + " | ".join(f"{s[k]:.3f}" for k in keys) + " |")
    args.out.write_text(json.dumps({"machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
                                    "seconds": time.perf_counter() - started, "summary": summary, "rows": rows},
                                   indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
