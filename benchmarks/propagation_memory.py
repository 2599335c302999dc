"""Memory and speed of propagation through a long volume: 500 slices of 512x512.

The volume is synthetic (int16, CT-like: a body of soft tissue with noise and a bright
tube, an aorta-like vessel whose radius and position drift slowly through all slices), so
that the structure runs through every slice and propagation has to visit all of them. The
start slice is the middle one with the tube's exact mask; propagation runs both ways with
no agent check. Reported: the volume's own size, the process's resident memory before
and its peak during the run (``ru_maxrss``), slices propagated, seconds per slice, and the
3-D Dice with the tube.

    python benchmarks/propagation_memory.py --segmenter mobilesam --slices 500

Writes benchmarks/results/propagation_memory-SEGMENTER.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def tube_volume(slices: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int16 volume, bool mask of the tube), slice by slice to keep the build's memory low."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    body = ((yy - size / 2) / (size * 0.42)) ** 2 + ((xx - size / 2) / (size * 0.46)) ** 2 <= 1
    volume = np.empty((slices, size, size), np.int16)
    mask = np.empty((slices, size, size), bool)
    for z in range(slices):
        phase = z / slices * 2 * np.pi
        cy, cx = size * (0.55 + 0.05 * np.sin(phase)), size * (0.5 + 0.06 * np.cos(1.3 * phase))
        radius = size * (0.045 + 0.012 * np.sin(2 * phase))
        mask[z] = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        noise = rng.normal(0, 12, (size, size)).astype(np.float32)
        volume[z] = np.where(body, 40 + noise, -1000) + np.where(mask[z], 120, 0)
    return volume, mask


def main() -> int:
    import torch

    from napari_ibis.metrics import dice
    from napari_ibis.propagation import Propagation, PropagationDone
    from napari_ibis.segmenters import build_segmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segmenter", default="mobilesam")
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    volume, truth = tube_volume(args.slices, args.size)
    segmenter = build_segmenter(args.segmenter)
    before = rss_gib()
    start = args.slices // 2
    propagation = Propagation(volume, segmenter, window="ct:40,400")
    started = time.perf_counter()
    for event in propagation.run(start, truth[start], "both"):
        if isinstance(event, PropagationDone):
            done = event
        elif event.index % 50 == 0:
            print(f"slice {event.index}: {int(event.mask.sum())} px, rss {rss_gib():.2f} GiB", flush=True)
    seconds = time.perf_counter() - started
    result = {
        "segmenter": args.segmenter, "slices": args.slices, "size": args.size, "threads": args.threads,
        "volume_gib": volume.nbytes / 2**30, "truth_and_labels_gib": 2 * truth.nbytes / 2**30,
        "rss_before_run_gib": before, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "slices_propagated": len(done.slices), "seconds": seconds, "seconds_per_slice": seconds / max(1, len(done.slices)),
        "dice_3d": float(dice(truth, done.labels)), "stopped": [(r.index, r.stopped) for r in done.slices if r.stopped],
    }
    print(json.dumps(result, indent=1))
    out = ROOT / "benchmarks" / "results" / f"propagation_memory-{args.segmenter}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
