"""Finding the slice to start on (``--slice auto``): does the agent's search land on the structure?

The cases are propagation's (benchmarks/propagation.py): the largest structures of the
TotalSegmentator reference volumes (real CT/MR, TotalSegmentator's own labels; the
upper-abdomen CT and the abdominal MR are held-out patients, the others trained on), four
AAL structures of Colin27 (real MRI; some of its slices are trained on), pyradiomics' five
tumours (real, drawn masks, never trained on), and phantom volumes (synthetic). Besides,
questions about structures a volume does not hold (another kind of scan's, or outside the
field of view), where the right answer is "not found".

Per case: whether a slice was chosen, whether the structure is on it, its area there over
its largest area, how far (slices) from the slice of largest area, slices looked at,
seconds (2 cores unless --threads; the agent's encoders included, its loading not).

    python benchmarks/key_slice.py
    python benchmarks/key_slice.py --unsure-from benchmarks/results/key_slice.json

Writes benchmarks/results/key_slice.json and prints a table. Each case records whether the
search called its slice a guess (``unsure``: a lesion seen on most of the first pass's slices,
:attr:`napari_ibis.key_slice.KeySlice.unsure`); ``--unsure-from`` reads that off an earlier run's
recorded looks (the first pass is the same) and prints it per case, without looking again.
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
OUT = ROOT / "benchmarks" / "results" / "key_slice.json"

HELD_OUT = ("totalseg:upper_abdomen_ct", "totalseg:abdomen_mr")
# Structures each volume does not hold: another kind of scan's, or beyond its field of view
# (checked against its labels below).
ABSENT = {
    "totalseg:abdomen_ct": ["left hippocampus", "brain", "thyroid gland"],
    "totalseg:thorax_ct": ["left hippocampus", "urinary bladder"],
    "totalseg:upper_abdomen_ct": ["left hippocampus", "urinary bladder", "brain"],
    "totalseg:abdomen_mr": ["left thalamus", "urinary bladder"],
    "colin27-aal": ["liver", "left kidney", "spleen"],
}


def group_of(case: dict) -> str:
    source = case["source"]
    if source.startswith("totalseg"):
        return "real organs, held-out patients" if source in HELD_OUT else "real organs, trained-on patients"
    return case["group"]


def print_unsure(results: dict) -> int:
    """Per case of an earlier run: the first pass's slices where the structure was seen, and
    whether the search now calls its slice a guess."""
    from napari_ibis.grounding.vocabulary import names_a_lesion
    from napari_ibis.key_slice import KeySlice, first_pass
    from napari_ibis.policies.base import Located

    print("| case | target | seen on (first pass) | a guess | slice on the structure |")
    print("|---|---|---|---|---|")
    for row in results["cases"]:
        looked = {seen["slice"]: Located(seen["score"], seen["peak"], seen["present"]) for seen in row["looked"]}
        key = KeySlice(row["slice"], row["slices"], looked, names_a_lesion(row["target"]), tuple(first_pass(row["slices"])))
        if key.found:
            print(f"| {row['source']} | {row['target']} | {key.seen_on} / {len(key.spread)} | {'yes' if key.unsure else 'no'}"
                  f" | {row.get('on_structure', '-')} |")
    return 0


def summarise(rows: list[dict]) -> dict:
    out = {}
    for group in dict.fromkeys(r["group"] for r in rows):
        chosen = [r for r in rows if r["group"] == group]
        present = [r for r in chosen if r["present"]]
        absent = [r for r in chosen if not r["present"]]
        entry = {"cases": len(chosen), "looks": float(np.mean([r["looks"] for r in chosen])),
                 "seconds": float(np.mean([r["seconds"] for r in chosen]))}
        if present:
            entry |= {"found": float(np.mean([r["slice"] is not None for r in present])),
                      "on_structure": float(np.mean([r["on_structure"] for r in present])),
                      "area_share": float(np.mean([r["area_share"] for r in present])),
                      "slices_from_largest": float(np.median([r["slices_from_largest"] for r in present
                                                              if r["slices_from_largest"] is not None] or [np.nan]))}
        if absent:
            entry["not_found_when_absent"] = float(np.mean([r["slice"] is None for r in absent]))
        out[group] = entry
    return out


def main() -> int:
    import torch

    from napari_ibis.key_slice import find_slice
    from napari_ibis.policies import load_policy
    from propagation import cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="the agent's model folder (default: the default agent)")
    parser.add_argument("--organs", type=int, default=3, help="largest structures per TotalSegmentator volume")
    parser.add_argument("--phantoms", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-absent", action="store_true", help="leave out the questions about absent structures")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--keep-as", help="keep the earlier results under this name (OUT-NAME.json) before writing")
    parser.add_argument("--unsure-from", type=Path, help="an earlier run's JSON: which of its cases are a guess")
    args = parser.parse_args()
    if args.unsure_from:
        return print_unsure(json.loads(args.unsure_from.read_text()))
    if args.keep_as and args.out.is_file():
        args.out.rename(args.out.with_name(f"{args.out.stem}-{args.keep_as}.json"))
    torch.set_num_threads(args.threads)
    policy = load_policy(args.model)
    all_cases = cases(args.organs, args.phantoms)
    volumes = {c["source"]: c["volume"] for c in all_cases}
    named = {(c["source"], c["target"]) for c in all_cases}
    questions = [(c, True) for c in all_cases]
    if not args.no_absent:
        for source, targets in ABSENT.items():
            for target in targets:
                if (source, target) not in named:
                    questions.append(({"group": "absent structures (real)", "source": source, "target": target,
                                       "volume": volumes[source], "mask": None}, False))
    rows = []
    for case, present in questions:
        started = time.perf_counter()
        key = find_slice(case["volume"], f"segment the {case['target']}", policy)
        seconds = time.perf_counter() - started
        row = {"group": group_of(case) if present else case["group"], "source": case["source"], "target": case["target"],
               "present": present, "slice": key.index, "looks": len(key.looked), "slices": key.count,
               "seconds": round(seconds, 1), "looked": key.record()["looked"], "unsure": key.unsure}
        if present:
            areas = case["mask"].sum(axis=(1, 2))
            on = key.index is not None and areas[key.index] > 0
            row |= {"on_structure": bool(on), "area_share": float(areas[key.index] / areas.max()) if key.index is not None else 0.0,
                    "slices_from_largest": None if key.index is None else int(abs(key.index - int(np.argmax(areas)))),
                    "largest": int(np.argmax(areas)), "slices_with": int((areas > 0).sum())}
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = summarise(rows)
    results = {"model": str(policy.identity().get("folder")), "threads": args.threads,
               "date": time.strftime("%Y-%m-%d"), "groups": summary, "cases": rows}
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\n| group | cases | found | on the structure | area / largest | slices from largest (median) | "
          f"'not found' when absent | looks | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for group, e in summary.items():
        def f(key, fmt="{:.2f}"):
            return fmt.format(e[key]) if key in e else "-"
        print(f"| {group} | {e['cases']} | {f('found')} | {f('on_structure')} | {f('area_share')} | "
              f"{f('slices_from_largest', '{:.0f}')} | {f('not_found_when_absent')} | {e['looks']:.0f} | {e['seconds']:.0f} |")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
