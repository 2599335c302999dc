"""CT padding outside the field of view: does the agent still see the scan as it learnt it?

Many CT scanners write a value far below air (-2048, -3024 HU) outside the round field of
view, and converters keep it in the NIfTI. The default window (0.5th to 99.5th percentile)
then starts at the padding: air turns mid-grey and every tissue is squashed into a few grey
levels. ``napari_ibis.overlay.percentiles`` counts such padding as air (-1024). This benchmark pads the
held-out CT series of TotalSegmentator (real, 512 x 512 x 20; labels are TotalSegmentator's
own outputs) outside its field of view (the pixels at the slice's minimum that touch its
border, 21% of each slice) and asks the default agent for every structure over 500 px:

* ``original``: the series as it is (its outside is -1024, air);
* ``padded P, counted``: padded with P, the padding counted in the window (before);
* ``padded P``: padded with P, the padding counted as air (shipped).

``--parts volumes``: the liver, spleen and stomach propagated both ways from their exact mask
on their largest slice (MobileSAM, no clicks), the same three ways; 3-D Dice.

    python benchmarks/ct_padding.py --padding -3024 -2048 --parts slices volumes

Writes benchmarks/results/ct_padding.json and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "results" / "ct_padding.json"


def outside_field_of_view(image: np.ndarray) -> np.ndarray:
    """The pixels at the slice's minimum connected to its border (a round field of view's outside)."""
    from scipy import ndimage

    labels, _ = ndimage.label(image == image.min())
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, border[border > 0])


def padded(image: np.ndarray, value: float) -> np.ndarray:
    out = np.asarray(image, dtype=np.float32).copy()
    out[outside_field_of_view(image)] = value
    return out


@contextlib.contextmanager
def padding_counted():
    """The window as it was before: every value counts in the percentiles."""
    from napari_ibis import overlay

    kept = overlay.PADDING_SHARE
    overlay.PADDING_SHARE = 2.0  # no share exceeds it
    try:
        yield
    finally:
        overlay.PADDING_SHARE = kept


def variants(paddings):
    yield "original", None, False
    for value in paddings:
        yield f"padded {value:g}, counted", value, True
        yield f"padded {value:g}", value, False


def run_case(image, mask, query, policy, segmenter, max_steps) -> dict:
    from napari_ibis.metrics import iou
    from napari_ibis.session import Session

    session = Session(image, query, policy, segmenter, max_steps=max_steps)
    for _ in session.run():
        pass
    return {"iou": float(iou(np.asarray(mask, bool), session.mask)),
            "said_absent": bool(session.steps and session.current.not_present)}


def slices(args, policy, segmenter) -> dict:
    from agents_real import case_sets
    from training.data import text

    samples = [s for s in case_sets(0, chosen=("totalseg",))["totalseg held-out (real CT/MR)"]
               if "upper_abdomen_ct" in s.source and np.asarray(s.mask).sum() >= 500]
    rng, rows = np.random.default_rng(0), []
    for sample in samples:
        query = text.query(sample.target, sample.modality, rng)
        row = {"source": sample.source, "query": query}
        for label, value, counted in variants(args.padding):
            image = sample.image if value is None else padded(sample.image, value)
            with padding_counted() if counted else contextlib.nullcontext():
                row[label] = run_case(image, sample.mask, query, policy, segmenter, args.max_steps)
        rows.append(row)
        print(json.dumps(row), flush=True)
    labels = [label for label, _, _ in variants(args.padding)]
    summary = {label: {"cases": len(rows), "agent_iou": float(np.mean([r[label]["iou"] for r in rows])),
                       "said_absent": float(np.mean([r[label]["said_absent"] for r in rows]))} for label in labels}
    return {"summary": summary, "cases": rows}


def volumes(args, segmenter) -> dict:
    from napari_ibis import assets, io
    from napari_ibis.metrics import dice
    from napari_ibis.propagation import Propagation, PropagationDone
    from training.data.sources import totalseg_class_maps

    root = assets.path("totalsegmentator", "tests/reference_files")
    ct = io.read_image(root / "example_ct_dicom").data
    labels = io.read_image(root / "example_seg_dicom.nii.gz").data
    names = {v: k for k, v in totalseg_class_maps()["total"].items()}
    out = {}
    for organ in ("liver", "spleen", "stomach"):
        truth = labels == names[organ]
        start = int(np.argmax(truth.sum(axis=(1, 2))))
        for label, value, counted in variants(args.padding):
            volume = ct if value is None else np.stack([padded(s, value) for s in ct])
            started = time.perf_counter()
            with padding_counted() if counted else contextlib.nullcontext():
                done = [e for e in Propagation(volume, segmenter).run(start, truth[start], "both")
                        if isinstance(e, PropagationDone)][0]
            out[f"{organ} | {label}"] = {"dice_3d": float(dice(truth, done.labels > 0)),
                                         "seconds": round(time.perf_counter() - started, 1)}
            print(organ, label, json.dumps(out[f"{organ} | {label}"]), flush=True)
    return out


def main() -> int:
    import torch

    from napari_ibis.policies import load_policy
    from napari_ibis.segmenters import build_segmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--padding", type=float, nargs="+", default=[-3024.0])
    parser.add_argument("--parts", nargs="+", choices=["slices", "volumes"], default=["slices"])
    parser.add_argument("--model", default=str(ROOT / "resources/models/pointer"))
    parser.add_argument("--segmenter", default="mobilesam")
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = build_segmenter(args.segmenter)
    record = {"model": args.model, "segmenter": args.segmenter, "max_steps": args.max_steps, "padding": args.padding}
    started = time.perf_counter()
    if "slices" in args.parts:
        record["slices"] = slices(args, load_policy(args.model), segmenter)
        print("| slices | cases | agent IoU | agent 'not present' |\n|---|---|---|---|")
        for label, value in record["slices"]["summary"].items():
            print(f"| {label} | {value['cases']} | {value['agent_iou']:.3f} | {value['said_absent']:.2f} |")
    if "volumes" in args.parts:
        record["volumes"] = volumes(args, segmenter)
        print("| organ | variant | 3-D Dice |\n|---|---|---|")
        for key, value in record["volumes"].items():
            organ, label = key.split(" | ")
            print(f"| {organ} | {label} | {value['dice_3d']:.3f} |")
    record["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
