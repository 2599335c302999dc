"""When does a propagated structure end? The appearance rule's threshold, measured.

Runs the cases of benchmarks/propagation.py (oracle start slice, <= 5 clicks) with the
appearance rule off (``min_likeness=0``; every other stop rule on), keeps each propagated
slice's mask and its likeness (the share of its cells the encoder finds more like the
structure than its surroundings on the start slice: napari_ibis/appearance.py), then
replays each direction with the rule on at several thresholds, ending at the first slice
below it ("single") or at one followed by another below it or by the end ("consecutive",
what napari_ibis/propagation.py does). Prints mean 3-D Dice per group and threshold.

    python benchmarks/propagation_likeness.py --segmenter mobilesam

Writes benchmarks/results/propagation_likeness-SEGMENTER.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
THRESHOLDS = (0.1, 0.2, 0.3, 0.4)


def replay(truth: np.ndarray, start: int, start_mask: np.ndarray, slices: list, threshold: float, consecutive: bool):
    """The labels the run would have had with the rule on at ``threshold``."""
    labels = np.zeros_like(truth)
    labels[start] = start_mask
    for up in (True, False):
        chain = [s for s in slices if (s.index > start) == up]
        for i, result in enumerate(chain):
            if not result.stopped and result.likeness < threshold:
                if not consecutive:
                    break
                following = chain[i + 1] if i + 1 < len(chain) else None
                if following is None or following.stopped or following.likeness < threshold:
                    break
            labels[result.index] = result.mask
    return labels


def main() -> int:
    import torch

    from benchmarks.propagation import _set_of, cases
    from napari_ibis.evaluation import oracle_start
    from napari_ibis.metrics import dice
    from napari_ibis.propagation import Propagation, PropagationDone
    from napari_ibis.segmenters import build_segmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segmenter", default="mobilesam")
    parser.add_argument("--sets", nargs="+", default=["totalseg", "aal", "lesions", "phantoms"])
    parser.add_argument("--phantoms", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segmenter = build_segmenter(args.segmenter)
    rules = [("off", -1.0, False)] + [(f"{kind} {t:g}", t, kind == "consecutive")
                                       for t in THRESHOLDS for kind in ("single", "consecutive")]
    dice_by = defaultdict(lambda: defaultdict(list))
    rows = []
    for case in (c for c in cases(3, args.phantoms) if _set_of(c) in args.sets):
        truth = np.asarray(case["mask"], bool)
        start = int(np.argmax(truth.sum(axis=(1, 2))))
        propagation = Propagation(case["volume"], segmenter, min_likeness=0)
        mask = oracle_start(segmenter, 5)(propagation.rgb(start), truth[start])[0]
        done = [e for e in propagation.run(start, mask) if isinstance(e, PropagationDone)][0]
        row = {k: case[k] for k in ("group", "source", "target")}
        for name, threshold, consecutive in rules:
            row[name] = dice(truth, replay(truth, start, mask, done.slices, threshold, consecutive))
            dice_by[case["group"]][name].append(row[name])
        rows.append(row)
        print(row["source"], row["target"], " ".join(f"{k} {row[k]:.3f}" for k, _, _ in rules), flush=True)
    summary = {group: {name: float(np.mean(values)) for name, values in by_rule.items()} | {"cases": len(by_rule["off"])}
               for group, by_rule in dice_by.items()}
    (RESULTS / f"propagation_likeness-{args.segmenter}.json").write_text(json.dumps({"segmenter": args.segmenter, "groups": summary, "cases": rows}, indent=1) + "\n")
    names = [name for name, _, _ in rules]
    print("| group | cases | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for group, values in summary.items():
        print(f"| {group} | {values['cases']} | " + " | ".join(f"{values[n]:.3f}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
