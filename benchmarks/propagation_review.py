"""Which propagated slices a person should look at: each slice's likeness against its Dice.

Propagation measures, on every slice, the share of the mask's cells that look like the
structure to the segmenter's encoder (``SliceResult.likeness``, :mod:`napari_ibis.appearance`).
This records it beside the slice's Dice with the true mask, for the cases of
``benchmarks/propagation.py`` (oracle start, at most 5 clicks, MobileSAM, no clicks after), to
decide from which likeness slices are listed for review, and how many that lists; a
listed slice is useful where it is wrong or the drift it points to is within 3 slices beyond
it, and is compared with the same share among the slices not listed.

    python benchmarks/propagation_review.py --sets totalseg lesions aal phantoms

Writes benchmarks/results/propagation_review.json (every slice) and prints, per threshold, the
slices listed and how often they are wrong against the slices not listed (``--table``: the
table again from the file).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "results" / "propagation_review.json"
WRONG = 0.8  # a slice whose Dice is below this needs a person's correction


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return float(2 * (a & b).sum() / total) if total else 1.0


def record(case: dict, segmenter) -> list[dict]:
    """Every propagated slice of one case: likeness, Dice, areas, and why it stopped."""
    from napari_ibis.evaluation import oracle_start
    from napari_ibis.propagation import Propagation

    truth = case["mask"]
    start = int(np.argmax(truth.sum(axis=(1, 2))))
    propagation = Propagation(case["volume"], segmenter)
    mask, _, _ = oracle_start(segmenter, 5)(propagation.rgb(start), truth[start])
    done = propagation.run_to_end(start, mask)
    return [{"slice": r.index, "distance": abs(r.index - start), "likeness": r.likeness,
             "dice": dice(r.mask, truth[r.index]), "area": int(r.mask.sum()), "true_area": int(truth[r.index].sum()),
             "side": 1 if r.index > start else -1, "stopped": r.stopped} for r in done.slices]


def listed(slices: list[dict], threshold: float) -> list[int]:
    """The slices a review list at ``threshold`` would show, by the rule of ``Propagation.run``
    (``DRIFT_LIKENESS``): in each direction from the start, the first of two or more slices in
    a row whose likeness is below it (one look where the mask starts to drift; one slice alone
    is often the encoder's noise)."""
    out = []
    for side in (1, -1):
        run: list[int] = []
        for s in sorted((s for s in slices if s["side"] == side and not s["stopped"]), key=lambda s: s["distance"]):
            run = run + [s["slice"]] if np.isfinite(s["likeness"]) and s["likeness"] < threshold else []
            if len(run) == 2:
                out.append(run[0])
    return out


def drift_found(slices: list[dict], chosen: list[int], ahead: int = 3) -> list[bool]:
    """Per listed slice: is it wrong (Dice < WRONG), or is one of the next ``ahead`` slices
    beyond it (the drift it points to)?"""
    by_slice = {s["slice"]: s for s in slices}
    out = []
    for index in chosen:
        side = by_slice[index]["side"]
        nearby = [by_slice.get(index + side * k) for k in range(ahead + 1)]
        out.append(any(s is not None and s["dice"] < WRONG for s in nearby))
    return out


def main() -> int:
    import torch

    from napari_ibis.segmenters import build_segmenter
    from propagation import _set_of, cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["totalseg", "lesions", "aal", "phantoms"])
    parser.add_argument("--sources", nargs="*", default=[], help="only cases whose source is one of these")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--table", action="store_true", help="only print the table of the slices recorded in --out")
    args = parser.parse_args()
    if args.table:
        table(json.loads(args.out.read_text()))
        return 0
    torch.set_num_threads(2)
    segmenter = build_segmenter("mobilesam")
    rows = []
    for case in cases(3, 3):
        if _set_of(case) not in args.sets or (args.sources and case["source"] not in args.sources):
            continue
        slices = record(case, segmenter)
        rows.append({k: case[k] for k in ("group", "source", "target")} | {"slices": slices})
        print(case["source"], case["target"], len(slices), "slices", flush=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    table(rows)
    return 0


def outside(s: dict) -> float:
    """The share of a slice's mask that lies outside the true mask (NaN for an empty mask)."""
    if not s["area"]:
        return float("nan")
    inside = s["dice"] * (s["area"] + s["true_area"]) / 2
    return (s["area"] - inside) / s["area"]


def table(rows: list[dict]) -> None:
    """Per threshold: slices listed, and how often they (and the slices not listed) are wrong."""
    propagated = [s for row in rows for s in row["slices"] if not s["stopped"]]
    print(f"{len(propagated)} propagated slices in {len(rows)} cases, "
          f"{np.mean([s['dice'] < WRONG for s in propagated]):.0%} of them wrong (Dice < {WRONG})")
    print("| likeness below | slices listed | cases with any | listed: wrong or drift within 3 slices | the rest | "
          "listed: > 30% of the mask outside the structure (median share) | the rest |")
    print("|---|---|---|---|---|---|---|")
    for threshold in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8):
        lists = [(row, listed(row["slices"], threshold)) for row in rows]
        rest = [(row, [s["slice"] for s in row["slices"] if not s["stopped"] and s["slice"] not in chosen])
                for row, chosen in lists]
        found = [hit for row, chosen in lists for hit in drift_found(row["slices"], chosen)]
        found_rest = [hit for row, chosen in rest for hit in drift_found(row["slices"], chosen)]
        out = np.array([outside(s) for row, chosen in lists for s in row["slices"] if s["slice"] in chosen])
        out_rest = np.array([outside(s) for row, chosen in rest for s in row["slices"] if s["slice"] in chosen])
        print(f"| {threshold} | {len(found)} | {sum(bool(c) for _, c in lists)} | {np.mean(found):.2f} | "
              f"{np.mean(found_rest):.2f} | {np.mean(out > 0.3):.2f} ({np.nanmedian(out):.2f}) | "
              f"{np.mean(out_rest > 0.3):.2f} ({np.nanmedian(out_rest):.2f}) |")


if __name__ == "__main__":
    raise SystemExit(main())
