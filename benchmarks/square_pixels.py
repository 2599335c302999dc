"""Slices with unequal row and column spacing: does seeing them at square pixels help?

A volume acquired coronally or sagittally with thick slices, shown axially, has axial
slices whose rows lie the slice thickness apart and whose columns the in-plane spacing
apart. This benchmark makes such slices from real ones: every F rows of a held-out slice
averaged into one (a coronal acquisition F times thicker than the pixels are wide; the
mask keeps the middle row of each group), then asks the default agent, and the click
simulator, for the structure three ways:

* ``square``: the original slice (the reference);
* ``as it is``: the squashed slice handed over as an array (pixel_aspect 1, before);
* ``square pixels``: the squashed slice with its pixel aspect F (``Session(pixel_aspect=F)``:
  the agent and the segmenter see it resampled to square pixels, napari_ibis/square_pixels.py).

IoU on the grid the case was asked on. Cases: TotalSegmentator's held-out patients (real CT
series and MR; labels are TotalSegmentator's own outputs), structures over 500 px, and AAL
regions of the held-out Colin27 slices (real MRI, atlas labels) over 100 px.

``--parts volumes``: the same squashing applied to every slice of TotalSegmentator's held-out
CT series (512 x 512 x 20), its liver, spleen and stomach propagated both ways from their
exact mask on their largest slice (MobileSAM, no clicks), with and without square pixels;
3-D Dice on the squashed grid.

    python benchmarks/square_pixels.py --factors 2 4
    python benchmarks/square_pixels.py --parts volumes --factors 4

Writes benchmarks/results/square_pixels.json and prints a table.
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
OUT = ROOT / "benchmarks" / "results" / "square_pixels.json"


def squash(image: np.ndarray, mask: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ``factor`` rows of ``image`` averaged into one; the mask's middle row of each group."""
    rows = image.shape[0] // factor * factor
    grouped = image[:rows].reshape(rows // factor, factor, *image.shape[1:]).astype(np.float32).mean(axis=1)
    return np.rint(grouped).astype(image.dtype), np.asarray(mask)[factor // 2:rows:factor]


def propagated(factor: int, segmenter) -> dict:
    """3-D Dice of the held-out CT series' liver, spleen and stomach propagated from their
    exact start masks on the series squashed ``factor`` times in rows, as it is and at square pixels."""
    from napari_ibis import assets, io
    from napari_ibis.metrics import dice
    from napari_ibis.propagation import Propagation, PropagationDone
    from training.data.sources import totalseg_class_maps

    root = assets.path("totalsegmentator", "tests/reference_files")
    ct = io.read_image(root / "example_ct_dicom").data
    labels = io.read_image(root / "example_seg_dicom.nii.gz").data
    rows = ct.shape[1] // factor * factor
    volume = ct[:, :rows].reshape(ct.shape[0], rows // factor, factor, ct.shape[2]).mean(axis=2)
    labels = labels[:, factor // 2:rows:factor]
    names = {v: k for k, v in totalseg_class_maps()["total"].items()}
    out = {}
    for organ in ("liver", "spleen", "stomach"):
        truth = labels == names[organ]
        start = int(np.argmax(truth.sum(axis=(1, 2))))
        for label, aspect in (("as it is", 1.0), ("square pixels", float(factor))):
            started = time.perf_counter()
            propagation = Propagation(volume, segmenter, pixel_aspect=aspect)
            done = [e for e in propagation.run(start, truth[start], "both") if isinstance(e, PropagationDone)][0]
            out[f"x{factor} {organ} {label}"] = {
                "dice_3d": float(dice(truth, done.labels > 0)), "slices": int((done.labels > 0).any(axis=(1, 2)).sum()),
                "true_slices": int(truth.any(axis=(1, 2)).sum()), "seconds": round(time.perf_counter() - started, 1)}
            print(f"x{factor} {organ} {label}", json.dumps(out[f"x{factor} {organ} {label}"]), flush=True)
    return out


def run_case(image, mask, query, policy, segmenter, aspect, max_steps) -> dict:
    from napari_ibis.metrics import iou
    from napari_ibis.session import Session

    started = time.perf_counter()
    session = Session(image, query, policy, segmenter, max_steps=max_steps, pixel_aspect=aspect)
    for _ in session.run():
        pass
    return {"iou": float(iou(np.asarray(mask, bool), session.mask)), "steps": len(session.steps),
            "said_absent": bool(session.steps and session.current.not_present),
            "seconds": round(time.perf_counter() - started, 2)}


def main() -> int:
    import torch

    from agents_real import case_sets
    from napari_ibis.policies import load_policy
    from napari_ibis.policies.oracle import OraclePolicy
    from napari_ibis.segmenters import build_segmenter
    from napari_ibis.square_pixels import SquareGrid
    from training.data import text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--parts", nargs="+", choices=["slices", "volumes"], default=["slices"])
    parser.add_argument("--model", default=str(ROOT / "resources/models/pointer"))
    parser.add_argument("--segmenter", default="mobilesam")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--oracle-clicks", type=int, default=3)
    parser.add_argument("--aal", type=int, default=15, help="AAL regions (held-out Colin27 slices)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    policy, segmenter = load_policy(args.model), build_segmenter(args.segmenter)
    record = json.loads(args.out.read_text()) if args.out.exists() else {}  # the other part's results stay
    if "volumes" in args.parts:
        started = time.perf_counter()
        record["volumes"] = {key: value for factor in args.factors for key, value in propagated(factor, segmenter).items()}
        record["volumes_seconds"] = time.perf_counter() - started
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    if "slices" not in args.parts:
        return 0
    sets = case_sets(0, chosen=("totalseg", "aal"))
    cases = []
    for set_name, samples in sets.items():
        chosen = [s for s in samples if np.asarray(s.mask).sum() >= (500 if "totalseg" in set_name else 100)]
        cases += [(set_name, s) for s in (chosen if "totalseg" in set_name else chosen[: args.aal])]
    rng, rows, started = np.random.default_rng(0), [], time.perf_counter()
    for set_name, sample in cases:
        query = text.query(sample.target, sample.modality, rng)
        row = {"set": set_name, "source": sample.source, "query": query,
               "square": run_case(sample.image, sample.mask, query, policy, segmenter, 1.0, args.max_steps)}
        for factor in args.factors:
            image, mask = squash(sample.image, sample.mask, factor)
            grid = SquareGrid(mask.shape, factor)
            for label, aspect, truth in (("as it is", 1.0, mask), ("square pixels", float(factor), grid.mask_in(mask))):
                row[f"x{factor} {label}"] = run_case(image, mask, query, policy, segmenter, aspect, args.max_steps)
                oracle = OraclePolicy(truth)  # it clicks on the grid the agent sees
                row[f"x{factor} {label}"]["oracle_iou"] = run_case(
                    image, mask, query, oracle, segmenter, aspect, args.oracle_clicks)["iou"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for set_name in sets:
        chosen = [r for r in rows if r["set"] == set_name]
        for key in [k for k in chosen[0] if k not in ("set", "source", "query")]:
            summary[f"{set_name} | {key}"] = {
                "cases": len(chosen), "agent_iou": float(np.mean([r[key]["iou"] for r in chosen])),
                "said_absent": float(np.mean([r[key]["said_absent"] for r in chosen])),
                "oracle_iou": float(np.mean([r[key]["oracle_iou"] for r in chosen])) if "oracle_iou" in chosen[0][key] else None}
    record |= {"model": args.model, "segmenter": args.segmenter, "max_steps": args.max_steps,
               "oracle_clicks": args.oracle_clicks, "factors": args.factors,
               "seconds": time.perf_counter() - started, "summary": summary, "cases": rows}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print("| set | slice | cases | agent IoU | agent 'not present' | oracle IoU (3 clicks) |")
    print("|---|---|---|---|---|---|")
    for key, value in summary.items():
        oracle = "-" if value["oracle_iou"] is None else f"{value['oracle_iou']:.3f}"
        set_name, variant = key.split(" | ")
        print(f"| {set_name} | {variant} | {value['cases']} | {value['agent_iou']:.3f} | {value['said_absent']:.2f} | {oracle} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
