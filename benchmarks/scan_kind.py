"""Does the atlas tell a structure asked for on another kind of scan (a liver on a brain)?

``SliceAtlas.kind_elsewhere``: a slice's nearest atlas slices by the image encoder's features
(``scan_descriptor``: averaged over the tissue; cosine about the atlas's mean) are all of a
kind of scan ("head": Colin27; "trunk": TotalSegmentator's training patients) that never
holds the named structure. Per set of ``benchmarks/agents_real.py`` and per number of
nearest slices K: the share of questions it would answer "not present". On the present
structures every answer is a false one; on ``elsewhere`` (an abdominal organ asked on a
brain, a brain region asked on an abdomen) every answer is right. Questions whose name the
atlas does not hold (nuclei, tumours) are left out: the rule never speaks for them.

Set ``kinds-held-out``: every slice of pyradiomics' scans the atlas does not keep as kind
references (a chest CT and a brain MRI, real, nothing labelled but their body part), asked
for a structure of their own kind (any answer is a false one) and of the other kind (every
answer is right). The rule reads only which kinds hold the name, so one name per kind
stands for all: the aorta (trunk) and the left thalamus (head).

    python benchmarks/scan_kind.py --folder resources/models/pointer

Writes benchmarks/results/scan_kind.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "results" / "scan_kind.json"


def main() -> int:
    import torch

    from agents_real import case_sets
    from napari_ibis.grounding.atlas import SliceAtlas, scan_descriptor
    from napari_ibis.grounding.encoders import build_encoder
    from napari_ibis.overlay import to_rgb8
    from napari_ibis.segmenters.base import image_key
    from training.data import text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(ROOT / "resources/models/pointer"))
    parser.add_argument("--sets", nargs="+", default=["totalseg", "aal", "mni", "phantoms", "elsewhere",
                                                      "kinds-held-out"])
    parser.add_argument("--nearest", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--phantoms", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    atlas = SliceAtlas.load(Path(args.folder) / "atlas.npz")
    if atlas.descriptors is None:
        raise SystemExit(f"{args.folder}/atlas.npz keeps no kinds of scan: write it again with napari-ibis atlas")
    encoder = build_encoder(atlas.encoder)
    started, result, descriptors = time.perf_counter(), {}, {}
    sets = case_sets(args.phantoms, chosen=[name for name in args.sets if name != "kinds-held-out"])
    if "kinds-held-out" in args.sets:
        sets.update(kinds_held_out())
    for set_name, samples in sets.items():
        rng = np.random.default_rng(0)
        rows = []
        for sample in samples:
            query = text.query(sample.target, sample.modality, rng)
            name = atlas.name_in(query)
            if name is None:
                continue
            rgb = sample.image if sample.image.dtype == np.uint8 and sample.image.ndim == 3 else to_rgb8(sample.image)
            key = image_key(rgb)
            if key not in descriptors:
                descriptors[key] = scan_descriptor(*encoder.encode(rgb), rgb)
            row = {"source": sample.source, "name": name, "present": bool(np.asarray(sample.mask).any())}
            for k in args.nearest:
                atlas.kind_nearest = k
                row[f"k{k}"] = atlas.kind_elsewhere(descriptors[key], name)
            rows.append(row)
        for group in ("present", "absent"):
            chosen = [r for r in rows if r["present"] == (group == "present")]
            if chosen:
                result[f"{set_name}: {group}"] = {"questions": len(chosen), **{
                    f"not present, {k} nearest": float(np.mean([bool(r[f"k{k}"]) for r in chosen])) for k in args.nearest},
                    "cases": chosen}
        print(set_name, {k: {kk: v for kk, v in d.items() if kk != "cases"} for k, d in result.items() if k.startswith(set_name)},
              flush=True)
    args.out.write_text(json.dumps({"folder": args.folder, "seconds": time.perf_counter() - started, "sets": result},
                                   indent=1) + "\n")
    print("| set | questions | " + " | ".join(f"{k} nearest" for k in args.nearest) + " |")
    print("|---|---|" + "---|" * len(args.nearest))
    for key, data in result.items():
        print(f"| {key} | {data['questions']} | " + " | ".join(f"{data[f'not present, {k} nearest']:.2f}"
                                                          for k in args.nearest) + " |")
    return 0


def kinds_held_out() -> dict[str, list]:
    """Two sets of questions on pyradiomics' scans left out of the atlas's kind references:
    a structure of the scan's own kind (present, for this rule) and of the other kind."""
    from training.data.sources import KIND_REFERENCES, RADIOMICS_CASES, Sample
    from training.grounding.dataset import kind_slices

    asked = {"trunk": "aorta", "head": "left thalamus"}
    own, other = [], []
    for kind, item in kind_slices([c for c in RADIOMICS_CASES if c not in KIND_REFERENCES]):
        image = item.rgb[..., 0]
        full, empty = np.ones(image.shape, bool), np.zeros(image.shape, bool)
        own.append(Sample(image=image, mask=full, target=asked[kind], modality=item.modality, source=item.source,
                          group=item.source))
        elsewhere = asked["head" if kind == "trunk" else "trunk"]
        other.append(Sample(image=image, mask=empty, target=elsewhere, modality=item.modality,
                            source=f"{item.source}:{elsewhere}:elsewhere", group=item.source))
    return {"chest CT and brain MRI left out of the kinds (real), own kind": own,
            "chest CT and brain MRI left out of the kinds (real), other kind": other}


if __name__ == "__main__":
    raise SystemExit(main())
