"""Propagation through volumes: 3-D Dice from a start slice, per segmenter.

Cases (one structure each):

* TotalSegmentator reference volumes (real CT/MR; labels are TotalSegmentator's own
  outputs, not manual): per volume, its largest structures above 20 cm^3 (``--organs``
  per volume);
* Colin27 with AAL (real MRI, atlas labels): hippocampi, putamina, thalami;
* pyradiomics' five test tumours (real brain MRI, breast MRI, lung CT; drawn masks,
  ``--sets lesions``);
* the right and the left lung of pyradiomics' two chest CTs (real; lungs labelled slice by
  slice by a -400 HU threshold, ``threshold_lungs``, not drawn; ``--sets lungs``, not run by default);
* every vertebra TotalSegmentator labels on its CTs (real; ``--sets vertebrae``, not run by
  default): one vertebra asked for, propagation limited to how far a vertebra reaches
  (:mod:`napari_ibis.structure_limits`);
* 3-D phantoms (synthetic, exact masks): liver, kidneys, a spleen that splits, a
  liver tumour that starts and ends ("lesions").

Each case is propagated with what anatomy says about the structure its query names
(``structure_limits.limits_for("segment the TARGET")``) and the volume's slice spacing; the
phantoms have no spacing.

The click simulator segments the slice where the structure is largest (at most 5 clicks,
stopping at IoU 0.9), then propagation runs both ways with no further clicks; with
``--click-budget N`` the clicks the start slice leaves of N go to corrections (each on the
slice propagation got most wrong, propagating on from it, as a person would in the widget). Reported per
case and per group: 3-D Dice and IoU, slices propagated, seconds per propagated slice
(2 cores unless --threads), and the process's peak memory.

    python benchmarks/propagation.py --segmenters classical litemedsam mobilesam

Writes benchmarks/results/propagation.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "propagation.json"


def cases(organs_per_volume: int, phantoms: int, vertebrae: bool = False) -> list[dict]:
    from napari_ibis import assets, io
    from napari_ibis.phantoms import phantom_volume
    from training.data.sources import (AAL_DIR, TOTALSEG_VOLUMES, radiomics_volumes, structure_name,
                                       threshold_lungs, totalseg_class_maps)

    out = []
    root = assets.path("totalsegmentator", "tests/reference_files").parent.parent
    names = totalseg_class_maps()
    for volume, (image_file, labels_spec, class_map) in TOTALSEG_VOLUMES.items():
        loaded = io.read_image(root / image_file)
        voxel_cm3 = float(np.prod(loaded.meta["geometry"].spacing)) / 1000
        if isinstance(labels_spec, dict):
            masks = {structure_name(n): io.read_image(root / p).data > 0 for n, p in labels_spec.items()}
        else:
            labels = io.read_image(root / labels_spec).data
            masks = {structure_name(names[class_map][int(v)]): labels == v for v in np.unique(labels) if v}
        spacing = loaded.meta["geometry"].spacing
        large = sorted(((m.sum() * voxel_cm3, n) for n, m in masks.items() if m.sum() * voxel_cm3 >= 20), reverse=True)
        for size, name in large[:organs_per_volume]:
            out.append({"group": "real organs (TotalSegmentator, > 20 cm3)", "source": f"totalseg:{volume}",
                        "target": name, "volume": loaded.data, "mask": masks[name], "cm3": round(size, 1),
                        "spacing": spacing})
        for name, mask in masks.items() if vertebrae and loaded.data.min() < -500 else ():
            if name.endswith(" vertebra") and mask.any(axis=(1, 2)).sum() >= 5:  # CT only; T11 cut to 3 slices left out
                out.append({"group": "real vertebrae (TotalSegmentator)", "source": f"totalseg:{volume}", "target": name,
                            "volume": loaded.data, "mask": mask, "cm3": round(float(mask.sum()) * voxel_cm3, 1),
                            "spacing": spacing})
    brain_file = io.read_image(AAL_DIR / "ch2.nii.gz")
    brain, brain_spacing = brain_file.data, brain_file.meta["geometry"].spacing
    atlas = io.read_image(AAL_DIR / "aal.nii.gz").data
    for label, name in ((37, "left hippocampus"), (38, "right hippocampus"), (73, "left putamen"), (77, "left thalamus")):
        out.append({"group": "real brain structures (AAL)", "source": "colin27-aal", "target": name, "volume": brain,
                    "mask": atlas == label, "cm3": round(float((atlas == label).sum()) / 1000, 1),
                    "spacing": brain_spacing})
    for case in radiomics_volumes():
        spacing = io.read_image(case.path).meta["geometry"].spacing
        voxel_cm3 = float(np.prod(spacing)) / 1000
        out.append({"group": "real lesions (pyradiomics, drawn masks)", "source": f"pyradiomics:{case.name}",
                    "target": case.target, "volume": case.volume, "mask": case.mask,
                    "cm3": round(float(case.mask.sum()) * voxel_cm3, 2), "spacing": spacing})
    for case in radiomics_volumes(["lung1", "lung2"]):
        spacing = io.read_image(case.path).meta["geometry"].spacing
        voxel_cm3 = float(np.prod(spacing)) / 1000
        lungs = [threshold_lungs(hu) for hu in case.volume]
        for index, side in enumerate(("right", "left")):
            mask = np.stack([pair[index] for pair in lungs])
            out.append({"group": "real lungs (chest CT, threshold labels)", "source": f"lungs:{case.name}",
                        "target": f"{side} lung", "volume": case.volume, "mask": mask,
                        "cm3": round(float(mask.sum()) * voxel_cm3, 1), "spacing": spacing})
    for seed in range(phantoms):
        ph = phantom_volume(1000 + seed)
        for name, mask in ph.masks.items():
            group = "phantom lesions (synthetic)" if name == "liver tumour" else "phantom organs (synthetic)"
            out.append({"group": group, "source": f"phantom-volume:{1000 + seed}", "target": name, "volume": ph.image,
                        "mask": mask, "cm3": None, "spacing": None})
    return out


def _set_of(case: dict) -> str:
    if case["group"].startswith("real vertebrae"):
        return "vertebrae"
    return {"totalseg": "totalseg", "colin27-aal": "aal", "pyradiomics": "lesions",
            "lungs": "lungs"}.get(case["source"].split(":")[0], "phantoms")


def limits(case: dict, told: bool = True) -> dict:
    """What propagation is told about the case's structure: its limits and the slice spacing
    (``told`` False: nothing, as before napari_ibis.structure_limits)."""
    from napari_ibis.structure_limits import limits_for

    spacing = case.get("spacing")
    if not told:
        return {}
    return {"limits": limits_for(f"segment the {case['target']}"),
            "slice_spacing_mm": None if spacing is None else float(spacing[0])}


def main() -> int:
    import time

    import torch

    from napari_ibis.evaluation import evaluate_volume, oracle_start
    from napari_ibis.policies import load_policy
    from napari_ibis.propagation import agent_checker, default_window, parse_check
    from napari_ibis.segmenters import build_segmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segmenters", nargs="+", default=["classical", "litemedsam", "mobilesam"])
    parser.add_argument("--organs", type=int, default=3, help="largest structures per TotalSegmentator volume")
    parser.add_argument("--phantoms", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--window", default=None,
                        help="intensity window for every volume, or 'volume' (each volume's 0.5-99.5 percentile range); "
                             "default: propagation's own choice (CT: centred on the structure, propagation.structure_window)")
    parser.add_argument("--sets", nargs="+", default=["totalseg", "aal", "lesions", "phantoms"],
                        choices=["totalseg", "aal", "lesions", "phantoms", "lungs", "vertebrae"])
    parser.add_argument("--check", default="none",
                        help="every|none|N: the default agent checks the propagated slices (query: 'segment the TARGET')")
    parser.add_argument("--model", default=None, help="the checking agent's model folder (default: the default agent)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--sources", nargs="*", default=[], help="only cases whose source is one of these (e.g. totalseg:abdomen_mr)")
    parser.add_argument("--no-limits", action="store_true",
                        help="propagate without telling propagation what the query's structure is (structure_limits)")
    parser.add_argument("--tag", default="", help="suffix of the result's key (e.g. the window tried)")
    parser.add_argument("--start-clicks", type=int, default=5, help="the click simulator's most clicks on the start slice")
    parser.add_argument("--start-as-session", action="store_true",
                        help="the start slice as a session shows it to the segmenter (on a CT, a window centred on the "
                             "soft tissue first clicked: evaluation.as_a_session_shows); default: as the agent sees it")
    parser.add_argument("--click-budget", type=int, default=None,
                        help="clicks per volume in all: what the start slice leaves goes to corrections, each on the "
                             "slice propagation got most wrong, propagating on from it (evaluation.evaluate_volume)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    all_cases = [c for c in cases(args.organs, args.phantoms, "vertebrae" in args.sets) if _set_of(c) in args.sets
                 and (not args.sources or c["source"] in args.sources)]
    check = parse_check(args.check)
    policy = load_policy(args.model) if check else None
    for spec in args.segmenters:
        segmenter = build_segmenter(spec)
        rows, started = [], time.perf_counter()
        for case in all_cases:
            checker = agent_checker(policy, f"segment the {case['target']}", segmenter) if check else None
            window = default_window(case["volume"])[0] if args.window == "volume" else args.window
            start = oracle_start(segmenter, args.start_clicks, as_session=args.start_as_session)
            row = evaluate_volume(case["volume"], case["mask"], segmenter, start, window=window,
                                  checker=checker, check=check, click_budget=args.click_budget,
                                  **limits(case, not args.no_limits))
            row.pop("_labels")
            rows.append({k: case[k] for k in ("group", "source", "target", "cm3")} | row)
            print(spec, case["source"], case["target"], f"dice {row['dice_3d']:.3f}", f"agent steps {row['agent_steps']}",
                  f"{row['seconds_per_slice']:.2f} s/slice", flush=True)
        groups = {}
        for group in dict.fromkeys(r["group"] for r in rows):
            chosen = [r for r in rows if r["group"] == group]
            groups[group] = {"cases": len(chosen), "dice_3d": float(np.mean([r["dice_3d"] for r in chosen])),
                             "iou_3d": float(np.mean([r["iou_3d"] for r in chosen])),
                             "clicks": float(np.mean([r["clicks"] for r in chosen])),
                             "agent_steps": float(np.mean([r["agent_steps"] for r in chosen])),
                             "seconds_per_slice": float(np.mean([r["seconds_per_slice"] for r in chosen]))}
        results[spec + args.tag] = {"window": args.window or "default", "check": args.check,
                                    "limits": not args.no_limits,
                                    "start_as_session": args.start_as_session,
                                    "start_clicks": args.start_clicks, "click_budget": args.click_budget,
                                    "groups": groups, "cases": rows,
                                    "seconds": time.perf_counter() - started,
                         "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print("| segmenter | group | cases | 3-D Dice | 3-D IoU | clicks (start slice) | s per slice |")
    print("|---|---|---|---|---|---|---|")
    for spec, result in results.items():
        for group, g in result["groups"].items():
            print(f"| {spec} | {group} | {g['cases']} | {g['dice_3d']:.3f} | {g['iou_3d']:.3f} | {g['clicks']:.1f} | "
                  f"{g['seconds_per_slice']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
