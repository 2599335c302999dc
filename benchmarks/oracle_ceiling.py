"""What the click simulator itself reaches on the agents' held-out phantoms (issue 5's IoU target).

The agents learn their clicks from the click simulator (``napari_ibis.evaluation.next_click``:
the centre of the largest error region). This drives each segmenter with it on the same
held-out cases as ``benchmarks/agents.py`` (synthetic phantoms of seeds 90000-90059, the
ones with a target) and reports the mean IoU after k clicks, k = 1..8 (8 is the agents'
step limit), the mean of each case's best IoU along those 8 clicks (a perfect stopper), and
the mean IoU where the simulator's own training rule stops (IoU >= 0.8, as the shipped
agent's trajectories do). An agent that clicks like the simulator ends near these figures.

    python benchmarks/oracle_ceiling.py [--segmenters classical,litemedsam] [--threads 2] [--limit N]
Writes benchmarks/results/oracle_ceiling.json.
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

from napari_ibis.evaluation import simulate_clicks  # noqa: E402
from napari_ibis.metrics import miou_at  # noqa: E402
from napari_ibis.overlay import to_rgb8  # noqa: E402
from napari_ibis.segmenters import build_segmenter  # noqa: E402
from training.evaluation.benchmark import EvalConfig, cases  # noqa: E402

MAX_CLICKS = 8
TRAINING_STOP = 0.8  # data-stop08.yaml: the shipped agent's trajectories end at this IoU


def ceiling(segmenter_name: str, samples) -> dict:
    segmenter = build_segmenter(segmenter_name)
    curves, started = [], time.perf_counter()
    for sample in samples:
        run = simulate_clicks(segmenter, to_rgb8(sample.image), sample.mask, max_clicks=MAX_CLICKS)
        curves.append(run.ious)
    by_click = np.asarray(curves)  # (cases, clicks)
    reached = by_click >= TRAINING_STOP
    stop_at = np.where(reached.any(axis=1), reached.argmax(axis=1), MAX_CLICKS - 1)
    return {
        "cases": len(samples),
        "mean_iou_after_k_clicks": {str(k): miou_at(curves, k) for k in range(1, MAX_CLICKS + 1)},
        "mean_best_iou_within_8": float(by_click.max(axis=1).mean()),
        "share_reaching_0.85_within_8": float((by_click.max(axis=1) >= 0.85).mean()),
        f"stop_at_{TRAINING_STOP}": {"mean_iou": float(by_click[np.arange(len(by_click)), stop_at].mean()),
                                     "mean_clicks": float((stop_at + 1).mean())},
        "seconds_per_case": (time.perf_counter() - started) / len(samples),
    }


def main() -> None:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--segmenters", default="classical,litemedsam")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "oracle_ceiling.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    phantoms = [s for s in cases(EvalConfig(model="", output="", limit=args.limit))["phantoms (synthetic)"] if s.mask.any()]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["cases"] = "held-out synthetic phantoms, seeds 90000-90059, those with a target (benchmarks/agents.py)"
    for name in args.segmenters.split(","):
        results[name] = ceiling(name, phantoms)
        out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'segmenter':<12} {'cases':>5} " + " ".join(f"@{k:<5}" for k in range(1, MAX_CLICKS + 1))
          + f" {'best<=8':>7} {'>=0.85':>6} {'stop@0.8':>8} {'clicks':>6} {'s/case':>6}")
    for name in args.segmenters.split(","):
        r = results[name]
        curve = " ".join(f"{r['mean_iou_after_k_clicks'][str(k)]:.3f}" for k in range(1, MAX_CLICKS + 1))
        stop = r[f"stop_at_{TRAINING_STOP}"]
        print(f"{name:<12} {r['cases']:>5} {curve} {r['mean_best_iou_within_8']:>7.3f} "
              f"{r['share_reaching_0.85_within_8']:>6.2f} {stop['mean_iou']:>8.3f} {stop['mean_clicks']:>6.2f} "
              f"{r['seconds_per_case']:>6.2f}")


if __name__ == "__main__":
    main()
