"""How long Stop takes to end a propagation: the time from the cancel event (what the
widget's Stop button sets) to the end of the run.

The volume is TotalSegmentator's upper-abdomen DICOM CT series (real, 512 x 512 x 20),
started from TotalSegmentator's liver on its largest slice and propagated both ways with
no agent check, on a worker thread as in the widget. Stop is pressed at ``--presses``
moments spread over the time one slice takes, so some land in the middle of a slice's
image embedding. Reported per segmenter: the latencies (median, largest), the seconds
one slice takes (for comparison with waiting for the slice to finish), and one image
embedding with the eager encoder and with the one propagation freezes (TorchScript).

    python benchmarks/propagation_stop.py --segmenters mobilesam litemedsam

Writes benchmarks/results/propagation_stop.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "propagation_stop.json"


def liver_case() -> tuple[np.ndarray, np.ndarray]:
    from napari_ibis import assets, io

    root = assets.path("totalsegmentator", "tests/reference_files")
    volume = io.read_image(root / "example_ct_dicom").data
    liver = io.read_image(root / "example_seg_dicom.nii.gz").data == 5  # TotalSegmentator's class 5: liver
    return volume, liver


def one_stop(propagation, start: int, mask: np.ndarray, delay: float) -> tuple[float, int]:
    """Press Stop ``delay`` seconds after the run starts; the seconds until the run ends."""
    from napari_ibis.propagation import PropagationDone

    cancel, ended = threading.Event(), {}

    def work():
        for event in propagation.run(start, mask, "both", cancel):
            if isinstance(event, PropagationDone):
                ended["time"], ended["slices"] = time.perf_counter(), len(event.slices)

    worker = threading.Thread(target=work)
    worker.start()
    time.sleep(delay)
    pressed = time.perf_counter()
    cancel.set()
    worker.join()
    return ended["time"] - pressed, ended["slices"]


def embedding_seconds(segmenter, propagation, slices) -> float:
    """Mean seconds of one image embedding over ``slices``."""
    began = time.perf_counter()
    for index in slices:
        segmenter.set_image(propagation.rgb(index))
    return (time.perf_counter() - began) / len(slices)


def main() -> int:
    import torch

    from napari_ibis.propagation import Propagation
    from napari_ibis.segmenters import build_segmenter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segmenters", nargs="+", default=["mobilesam", "litemedsam"])
    parser.add_argument("--presses", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    volume, liver = liver_case()
    start = int(np.argmax(liver.sum(axis=(1, 2))))
    results = {}
    for spec in args.segmenters:
        segmenter = build_segmenter(spec)
        propagation = Propagation(volume, segmenter)
        embed = {"eager": embedding_seconds(segmenter, propagation, range(0, 3))}
        began = time.perf_counter()
        segmenter.speed_up()  # what every propagation does first
        embed["freezing"] = time.perf_counter() - began
        embed["frozen"] = embedding_seconds(segmenter, propagation, range(3, 6))
        list(propagation.run(start, liver[start], "up"))  # warm up; also times the slices
        began = time.perf_counter()
        slices = len([e for e in propagation.run(start, liver[start], "down") if hasattr(e, "index")])
        per_slice = (time.perf_counter() - began) / max(1, slices)
        delays = [0.5 + per_slice * (i + 0.5) / args.presses for i in range(args.presses)]
        latencies = [one_stop(propagation, start, liver[start], d)[0] for d in delays]
        results[spec] = {"embedding_seconds": embed, "seconds_per_slice": per_slice, "latencies": latencies,
                         "median": float(np.median(latencies)), "largest": float(np.max(latencies))}
        print(f"{spec}: Stop ended the run in {np.median(latencies) * 1000:.0f} ms (median of {len(latencies)}), "
              f"{np.max(latencies) * 1000:.0f} ms at most; one slice takes {per_slice:.2f} s; one embedding "
              f"{embed['eager']:.2f} s eager, {embed['frozen']:.2f} s frozen (freezing took {embed['freezing']:.1f} s)",
              flush=True)
    OUT.write_text(json.dumps({"volume": "totalsegmentator example_ct_dicom (512x512x20)", "threads": args.threads,
                               "segmenters": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
