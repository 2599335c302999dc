"""Segmenter quality under the click protocol on real cases.

20 simulated clicks per case, no early stop, benchmark clicker (1-pixel padding,
ties to the negative click). Real sets:

* Colin27 T1 MRI with AAL regions (Debian mricron-data): 10 structures x 3 axial slices;
* stardist's fluorescence nuclei: 40 hand-drawn instances (seeded draw);
* TotalSegmentator's reference volumes (fetched at set-up; 4 patients, CT and MR, its own
  machine-made labels): every other slice of ``totalseg_reference`` (109 of 218 slices).

Each backend runs in its own process (``--backends``) and writes
``benchmarks/results/segmenters-BACKEND.json``; ``--table`` prints the table of every
backend measured so far and writes ``benchmarks/results/segmenters.json``.

    python benchmarks/segmenters.py --backends mobilesam --threads 1 &
    python benchmarks/segmenters.py --backends litemedsam --threads 1
    python benchmarks/segmenters.py --table

``--together`` decodes every call's clicks as one object, as SAM's decoder takes them (no
parts apart, :mod:`napari_ibis.segmenters.parts`); with it or ``--sets`` the result goes to
``benchmarks/results/parts-BACKEND[-together].json``, outside the table.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def sets(nuclei: int) -> dict:
    from training.data.sources import colin27_aal, stardist_nuclei, totalseg_reference

    return {
        "colin27-aal (real MRI)": list(colin27_aal(slices_per_label=3)),
        "stardist-nuclei (real fluorescence)": list(stardist_nuclei(count=nuclei)),
        "totalsegmentator (real CT/MR)": list(totalseg_reference())[::2],
    }


def measure(backend: str, clicks: int, nuclei: int, together: bool = False, only: tuple[str, ...] = ()) -> dict:
    import torch

    from napari_ibis.evaluation import simulate_clicks
    from napari_ibis.metrics import click_summary
    from napari_ibis.overlay import to_rgb8
    from napari_ibis.segmenters import build_segmenter

    segmenter = build_segmenter(backend)
    if together:
        segmenter.decodes_parts_apart = False  # every call's clicks as one object, as SAM's decoder takes them
    result = {"backend": backend + ("@together" if together else ""), "identity": segmenter.identity(), "clicks": clicks,
              "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads", "sets": {}}
    for set_name, samples in sets(nuclei).items():
        if only and not any(word in set_name for word in only):
            continue
        started = time.perf_counter()
        curves = [simulate_clicks(segmenter, to_rgb8(s.image), s.mask, max_clicks=clicks).ious for s in samples]
        seconds = time.perf_counter() - started
        summary = click_summary(curves, clicks)
        summary["seconds_per_case"] = seconds / len(samples)
        result["sets"][set_name] = summary
        print(f"{set_name:<38} {backend:<11} cases={len(samples):3d} NoC@85={summary['noc@85']:.2f} "
              f"mIoU@1={summary['miou@1']:.3f} @5={summary['miou@5']:.3f} s/case={summary['seconds_per_case']:.1f}", flush=True)
    return result


def table() -> str:
    measured = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("segmenters-*.json"))]
    lines = ["| set | cases | backend | mIoU@1 | @3 | @5 | @10 | @20 | NoC@85 (never) | NoC@90 (never) | s / case |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    names = list(measured[0]["sets"]) if measured else []
    for set_name in names:
        for result in measured:
            s = result["sets"][set_name]
            lines.append(f"| {set_name} | {s['cases']} | {result['backend']} | {s['miou@1']:.3f} | {s['miou@3']:.3f} | "
                         f"{s['miou@5']:.3f} | {s['miou@10']:.3f} | {s['miou@20']:.3f} | {s['noc@85']:.2f} ({s['never@85']}) | "
                         f"{s['noc@90']:.2f} ({s['never@90']}) | {s['seconds_per_case']:.1f} |")
    mean = {r["backend"]: sum(r["sets"][n]["noc@85"] for n in names) / len(names) for r in measured}
    lines.append("")
    lines.append("mean NoC@85 over the sets: " + ", ".join(f"{b} {v:.2f}" for b, v in sorted(mean.items(), key=lambda kv: kv[1])))
    (RESULTS / "segmenters.json").write_text(json.dumps({"backends": measured, "mean_noc@85": mean}, indent=2) + "\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--nuclei", type=int, default=40)
    parser.add_argument("--backends", default="")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="print the table of every backend measured so far")
    parser.add_argument("--together", action="store_true",
                        help="decode every call's clicks as one object (no parts apart: segmenters/parts.py), to compare")
    parser.add_argument("--sets", nargs="*", default=[], help="only the sets whose name holds one of these words")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    import torch

    torch.set_num_threads(args.threads)
    for backend in filter(None, args.backends.split(",")):
        result = measure(backend, args.clicks, args.nuclei, args.together, tuple(args.sets))
        out = RESULTS / (f"segmenters-{backend.split(':')[0]}.json" if not (args.together or args.sets) else
                         f"parts-{backend.split(':')[0]}{'-together' if args.together else ''}.json")
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
