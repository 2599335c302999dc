"""Solid structures asked on the two chest CTs of pyradiomics (real, no labels of the organs): how much
of each final mask is air.

Neither CT holds an abdomen below the lungs' bases, so a liver, a spleen or a kidney asked there is
absent or lies at the very bottom; what is measured is whether the agent puts it in a lung. Every sixth
slice of ``lung1`` and ``lung2``, each handed its volume, 8 structures that never hold air; the default
agent and MobileSAM, at most 6 steps. ``--without-gate`` lets the map look in air again
(``PointerPolicy._off_air`` bypassed), as the agent did before.

    python benchmarks/solid_in_air.py [--without-gate]

Writes benchmarks/results/solid_in_air.json (both runs kept) and prints one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "solid_in_air.json"
QUERIES = ["segment the liver", "segment the spleen", "segment the left kidney", "segment the pancreas",
           "segment the gallbladder", "segment the T12 vertebra", "segment the left adrenal gland", "segment the aorta"]
AIR_HU = -400


def main(argv=None) -> int:
    import torch

    from napari_ibis import assets, io
    from napari_ibis.policies import load_policy
    from napari_ibis.policies.base import volume_slice
    from napari_ibis.policies.pointer import PointerPolicy
    from napari_ibis.segmenters import build_segmenter
    from napari_ibis.session import Session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--without-gate", action="store_true", help="the map looks in air too (as before)")
    parser.add_argument("--every", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.without_gate:
        PointerPolicy._off_air = lambda self, probability, volume, query: probability
    policy, segmenter = load_policy(None), build_segmenter("mobilesam")
    rows = []
    for name in ("lung1", "lung2"):
        loaded = io.read_image(assets.path("pyradiomics", f"data/{name}_image.nrrd"))
        hu, spacing = loaded.data, loaded.meta["geometry"].spacing
        for z in range(0, hu.shape[0], args.every):
            for query in QUERIES:
                session = Session(hu[z], query, policy, segmenter, max_steps=6, volume=volume_slice(hu, spacing, (), z))
                list(session.run())
                mask = session.mask
                rows.append({"case": f"{name}:{z}", "query": query, "px": int(mask.sum()),
                             "air": float(np.mean(hu[z][mask] < AIR_HU)) if mask.any() else None,
                             "not_present": bool(session.current.not_present)})
    masks = [r for r in rows if r["px"]]
    summary = {"questions": len(rows), "not_present": sum(r["not_present"] for r in rows), "masks": len(masks),
               "mostly_air": sum(r["air"] > 0.5 for r in masks),
               "mean_air_share": float(np.mean([r["air"] for r in masks])) if masks else None}
    key = "without the gate (before)" if args.without_gate else "not looked for in air (shipped)"
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    results[key] = {"summary": summary, "cases": rows}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")
    print(f"{key}: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
