"""The agent ablation (issue 5; paper tables 4-5): each training stage on the same held-out cases.

Cases: synthetic phantoms of seeds 90000-90059 (never used by any training config;
about 10% ask for a structure that is absent), the evaluation side of the Colin27/AAL
slices and of stardist's nuclei (real). Each model folder runs through the real
Session with greedy decoding, the classical segmenter (the one its data was made
with) and at most 8 steps; see training/evaluate.py for the metrics.

    python benchmarks/agents.py                       # every model below that exists
    python benchmarks/agents.py --only SFT --threads 1  # one entry (two can run side by side)
Updates benchmarks/results/agents.json (one entry per model) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.evaluate import EvalConfig, cases, evaluate

MODELS = {
    "untrained (random init)": "runs/default/init",
    "SFT": "runs/default/sft",
    "SFT + GRPO (release reward constants)": "runs/default/grpo-release-constants",
    "SFT + GRPO without placement and progressive rewards (release constants)": "runs/default/grpo-no-region-rewards",
    "SFT + GRPO (shipped: a wrong 'not present' costs 3)": "runs/default/grpo",
}
OUT = ROOT / "benchmarks" / "results" / "agents.json"


def main() -> None:
    import torch

    from napari_ibis.policies.vlm import VLMPolicy
    from napari_ibis.segmenters import build_segmenter

    parser = argparse.ArgumentParser()
    parser.add_argument("--only", action="append", help="model names from MODELS (default: all that exist)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="cases per set (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = EvalConfig(model="", output="", real=["aal", "nuclei"], limit=args.limit)
    sets = cases(config)
    results = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for name, folder in MODELS.items():
        if (args.only and name not in args.only) or not (ROOT / folder / "config.json").is_file():
            continue
        policy = VLMPolicy(ROOT / folder, max_new_tokens=200)
        segmenter = build_segmenter("classical")
        entry = {"folder": folder, "threads": args.threads, "sets": {}}
        for set_name, samples in sets.items():
            started = time.perf_counter()
            summary = evaluate(policy, samples, segmenter, config.profile, config.max_steps, config.seed)["summary"]
            entry["sets"][set_name] = summary
            print(f"{name} / {set_name}: {json.dumps({k: round(v, 3) for k, v in summary.items()})} "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        results = json.loads(OUT.read_text()) if OUT.is_file() else {}  # another process may have written meanwhile
        results[name] = entry
        OUT.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)


def print_table(results: dict) -> None:
    print("| model | set | cases | mean IoU | Dice | entity F1 | absent answered | steps | parsable | oracle IoU, same clicks | s/case |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, entry in results.items():
        for set_name, s in entry["sets"].items():
            print(f"| {name} | {set_name} | {s['cases']} | {s['mean_iou']:.3f} | {s['mean_dice']:.3f} | "
                  f"{s['entity_f1']:.3f} | {s['absent_answered_right']:.2f} | {s['mean_steps']:.2f} | "
                  f"{s['parsable_share']:.2f} | {s['oracle_iou_same_clicks']:.3f} | {s['seconds_per_case']:.2f} |")


if __name__ == "__main__":
    main()
