"""Trajectory generation and SFT throughput on 2 cores (issue 4).

Trajectories: click-simulated on synthetic phantoms (seeds 1000-1039, one sample
per named structure) and on real stardist nuclei (20), per segmenter backend,
stop at IoU 0.9 or 20 clicks: trajectories per second, mean length and final IoU
(the paper's appendix table: 8.69 steps, IoU 0.943 with MedSAM2 on real data).
SFT: 30 steps of full fine-tuning of the tiny Qwen2.5-VL on release-profile
samples, one process: tokens per second.

    python benchmarks/training_data.py
Writes benchmarks/results/training_data.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from napari_ibis.protocol import PROFILES  # noqa: E402
from napari_ibis.segmenters import build_segmenter  # noqa: E402
from training.data.sources import (
    phantom_samples,  # noqa: E402
    stardist_nuclei,  # noqa: E402
)
from training.data.trajectories import simulate  # noqa: E402
from training.sft.tiny import build_tiny_vlm  # noqa: E402
from training.sft.train import SFTConfig, render_all, train  # noqa: E402


def main() -> None:
    torch.set_num_threads(2)
    sets = {
        "phantoms (synthetic, seeds 1000-1039)": [s for s in phantom_samples(range(1000, 1040)) if s.mask.any()],
        "stardist nuclei (real, 20)": list(stardist_nuclei(count=20, seed=1)),
    }
    results: dict = {"trajectories": {}}
    kept = []
    for backend in ("litemedsam", "classical"):
        segmenter = build_segmenter(backend)
        for name, samples in sets.items():
            rng = np.random.default_rng(0)
            started = time.perf_counter()
            trajectories = [simulate(s, segmenter, rng, stop_iou=0.9, max_steps=20) for s in samples]
            seconds = time.perf_counter() - started
            row = {
                "cases": len(samples),
                "trajectories_per_second": len(samples) / seconds,
                "mean_clicks": float(np.mean([t.clicks for t in trajectories])),
                "mean_final_iou": float(np.mean([t.final_iou for t in trajectories])),
                "reached_0.9": int(sum(t.final_iou >= 0.9 for t in trajectories)),
            }
            results["trajectories"][f"{backend} / {name}"] = row
            print(backend, name, json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
            if backend == "litemedsam" and name.startswith("phantoms"):
                kept = trajectories
    folder = build_tiny_vlm(Path(tempfile.mkdtemp()) / "tiny", [p.system_prompt() for p in PROFILES.values()])
    samples = render_all(kept[:40], "ibis-release")
    record = train(SFTConfig(model=str(folder), output=str(Path(tempfile.mkdtemp()) / "sft"), steps=30, log_every=0), samples)
    results["sft"] = {
        "model": "tiny Qwen2.5-VL (2.8 M parameters)",
        "processes": 1,
        "samples": len(samples),
        "steps": 30,
        "tokens_per_second": record["tokens_per_second"],
        "loss_first5": float(np.mean(record["losses"][:5])),
        "loss_last5": float(np.mean(record["losses"][-5:])),
    }
    print(json.dumps(results["sft"], indent=2))
    out = ROOT / "benchmarks" / "results" / "training_data.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
