"""Segmenter quality under the click protocol on real cases (issue 2).

20 simulated clicks per case, no early stop, benchmark clicker (1-pixel padding,
ties to the negative click). Real sets: Colin27 T1 MRI with AAL regions (Debian
mricron-data; 10 structures x 3 axial slices) and stardist's fluorescence nuclei
(40 hand-drawn instances, seeded draw). Prints a table and writes
benchmarks/results/segmenters.json.

    python benchmarks/segmenters.py [--clicks 20] [--nuclei 40] [--backends litemedsam,classical]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from napari_ibis.evaluation import simulate_clicks  # noqa: E402
from napari_ibis.metrics import click_summary  # noqa: E402
from napari_ibis.overlay import to_rgb8  # noqa: E402
from napari_ibis.segmenters import build_segmenter  # noqa: E402
from training.data.sources import colin27_aal, stardist_nuclei  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--nuclei", type=int, default=40)
    parser.add_argument("--backends", default="litemedsam,classical")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "segmenters.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    sets = {
        "colin27-aal (real MRI)": list(colin27_aal(slices_per_label=3)),
        "stardist-nuclei (real fluorescence)": list(stardist_nuclei(count=args.nuclei)),
    }
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads", "clicks": args.clicks, "sets": {}}
    for set_name, samples in sets.items():
        results["sets"][set_name] = {"cases": len(samples), "backends": {}}
        for backend in args.backends.split(","):
            segmenter = build_segmenter(backend)
            started = time.perf_counter()
            curves = [simulate_clicks(segmenter, to_rgb8(s.image), s.mask, max_clicks=args.clicks).ious for s in samples]
            seconds = time.perf_counter() - started
            summary = click_summary(curves, args.clicks)
            summary["seconds_per_click"] = seconds / (len(samples) * args.clicks)
            summary["encoder_calls"] = segmenter.encoder_calls
            results["sets"][set_name]["backends"][backend] = summary
            print(f"{set_name:<38} {backend:<11} cases={len(samples):3d} " + " ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items() if k != "cases"), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
