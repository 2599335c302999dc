"""Where an agent's refinement clicks land: does it see what its mask got wrong?

A refinement click (any click made on a non-empty mask) is *placed right* when a
positive click lies in what the mask missed (FN) or a negative one in what it
wrongly holds (FP): the regions the click simulator and the paper's placement
reward use. The script runs each model folder through the real Session (greedy,
classical segmenter, <= 8 steps) on the held-out phantoms with a target (seeds
90000-90059, synthetic) and counts, over all refinement clicks: placed right,
positive clicks inside the mask already, clicks that changed the mask, clicks that
raised the IoU; and the sessions' stop reasons and final mean IoU.

    python benchmarks/click_placement.py runs/default/sft-stream-stop08 --limit 100 --threads 1

Writes benchmarks/results/click_placement.json (one entry per folder and limit).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "results" / "click_placement.json"


def placement(folder: str | Path, limit: int | None = None) -> dict:
    from napari_ibis.clicker import error_regions
    from napari_ibis.metrics import iou
    from napari_ibis.policies.vlm import VLMPolicy
    from napari_ibis.segmenters import build_segmenter
    from training.data import text
    from training.evaluation.benchmark import EvalConfig, cases
    from training.rl.rollout import rollout

    samples = [s for s in cases(EvalConfig(model="", output="", real=[]))["phantoms (synthetic)"] if s.mask.any()]
    samples = samples[:limit]
    policy, segmenter = VLMPolicy(folder, max_new_tokens=200), build_segmenter("classical")
    rng = np.random.default_rng(0)  # the queries of training/evaluation/benchmark.py's order
    counts, stops, finals = Counter(), Counter(), []
    started = time.perf_counter()
    for sample in samples:
        episode = rollout(policy, sample, text.query(sample.target, sample.modality, rng), segmenter, "ibis-release", 8)
        stops[episode.stop_reason] += 1
        finals.append(episode.final_iou)
        for turn in episode.turns:
            if not turn.mask_before.any():
                continue
            missed, extra = error_regions(sample.mask, turn.mask_before)
            after = turn.mask_before if turn.mask_after is None else turn.mask_after
            for row, col, positive in turn.clicks:
                counts["refinement clicks"] += 1
                counts["placed right"] += bool(missed[row, col] if positive else extra[row, col])
                counts["positive"] += positive
                counts["positive, inside the mask already"] += bool(positive and turn.mask_before[row, col])
                counts["changed the mask"] += bool((after != turn.mask_before).any())
                counts["raised the IoU"] += bool(iou(sample.mask, after) > iou(sample.mask, turn.mask_before))
    clicks = max(counts["refinement clicks"], 1)
    return {"folder": str(folder), "cases": len(samples), "mean_iou": float(np.mean(finals)),
            "counts": dict(counts), "shares": {k: v / clicks for k, v in counts.items() if k != "refinement clicks"},
            "stops": dict(stops), "seconds": time.perf_counter() - started}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--limit", type=int, default=None, help="cases (default: all 213 with a target)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for folder in args.folders:
        entry = placement(folder, args.limit)
        results[f"{folder} (limit {args.limit})"] = entry
        shares = ", ".join(f"{k} {v:.2f}" for k, v in entry["shares"].items())
        print(f"{folder}: {entry['cases']} cases, mean IoU {entry['mean_iou']:.3f}, "
              f"{entry['counts'].get('refinement clicks', 0)} refinement clicks: {shares}; stops {entry['stops']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
