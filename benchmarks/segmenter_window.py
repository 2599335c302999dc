"""What the segmenter sees of a CT: the automatic window against a soft-tissue window.

MobileSAM under the click protocol (10 simulated clicks, no early stop, the benchmark
clicker) on every other CT slice of TotalSegmentator's reference volumes
(``totalseg_reference``; real CT, the labels are TotalSegmentator's own outputs), each
slice shown to the segmenter three ways:

* ``auto``: the 0.5-99.5 percentile window the agent sees (air to bone);
* ``soft``: the soft-tissue window a reader uses for the abdomen, ``ct:40,400``;
* ``centred``: a 400 HU window centred on the tissue under the first click.

``shipped`` is what a session does (:func:`napari_ibis.session.soft_tissue_window`): the
centred window where the first click lies on soft tissue, the automatic one elsewhere.
Cases are grouped by the Hounsfield units under the first click. Writes
``benchmarks/results/segmenter_window.json``; ``--table`` prints its table again.

    python benchmarks/segmenter_window.py
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
OUT = RESULTS / "segmenter_window.json"
ARMS = ("auto", "soft", "centred", "shipped")
GROUPS = {"soft tissue (-150 to 150 HU)": (-150, 150), "air and lung (below -150)": (-1e9, -150),
          "bone and contrast (above 150)": (150, 1e9)}


def measure(clicks: int, segmenter_name: str) -> dict:
    from napari_ibis.clicker import next_click
    from napari_ibis.evaluation import simulate_clicks
    from napari_ibis.grounding.ct_anatomy import looks_like_ct
    from napari_ibis.overlay import centred_window, to_rgb8
    from napari_ibis.segmenters import build_segmenter
    from napari_ibis.session import CLICK_PATCH, soft_tissue_window
    from training.data.sources import totalseg_reference

    segmenter = build_segmenter(segmenter_name)
    cases, started = [], time.perf_counter()
    for sample in list(totalseg_reference())[::2]:
        image, truth = np.asarray(sample.image), np.asarray(sample.mask) > 0
        if image.ndim != 2 or not looks_like_ct(image[None]):
            continue
        row, col, _ = next_click(truth, np.zeros_like(truth), ties="negative", padding=True)
        tissue = image[max(0, row - CLICK_PATCH):row + CLICK_PATCH + 1, max(0, col - CLICK_PATCH):col + CLICK_PATCH + 1]
        level = float(np.median(tissue))
        windows = {"auto": None, "soft": "ct:40,400", "centred": centred_window(level)}
        curves = {arm: simulate_clicks(segmenter, to_rgb8(image, w), truth, max_clicks=clicks).ious for arm, w in windows.items()}
        shipped = soft_tissue_window(image, row, col)
        assert shipped in (None, windows["centred"])
        curves["shipped"] = curves["auto" if shipped is None else "centred"]
        cases.append({"source": sample.source, "target": sample.target, "area": int(truth.sum()),
                      "first_click_hu": round(level, 1), "ious": {a: [round(v, 4) for v in c] for a, c in curves.items()}})
        print(f"{sample.source:<55} {level:7.0f} HU  IoU@1 " + " ".join(f"{a} {curves[a][0]:.2f}" for a in ARMS), flush=True)
    import torch

    return {"segmenter": segmenter_name, "clicks": clicks, "cases": cases,
            "seconds": round(time.perf_counter() - started, 1),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"}


def noc(curve: list[float], threshold: float = 0.85) -> int:
    """Clicks to reach ``threshold`` IoU, the number of clicks where it is never reached."""
    return next((i + 1 for i, v in enumerate(curve) if v >= threshold), len(curve))


def summary(cases: list[dict]) -> dict:
    out = {"cases": len(cases)}
    for arm in ARMS:
        curves = np.array([c["ious"][arm] for c in cases])
        out[arm] = {"miou@1": float(curves[:, 0].mean()), "miou@3": float(curves[:, 2].mean()),
                    "miou@5": float(curves[:, 4].mean()), f"miou@{curves.shape[1]}": float(curves[:, -1].mean()),
                    "noc@85": float(np.mean([noc(list(c)) for c in curves]))}
    return out


def table(result: dict) -> str:
    groups = {"every CT slice": result["cases"]}
    groups.update({name: [c for c in result["cases"] if low <= c["first_click_hu"] < high] for name, (low, high) in GROUPS.items()})
    last = f"miou@{result['clicks']}"
    lines = [f"| first click on | cases | window | mIoU@1 | @3 | @5 | @{result['clicks']} | NoC@85 (of {result['clicks']}) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, cases in groups.items():
        if not cases:
            continue
        s = summary(cases)
        for arm in ARMS:
            a = s[arm]
            lines.append(f"| {name} | {s['cases']} | {arm} | {a['miou@1']:.3f} | {a['miou@3']:.3f} | {a['miou@5']:.3f} | "
                         f"{a[last]:.3f} | {a['noc@85']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=10)
    parser.add_argument("--segmenter", default="mobilesam")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", action="store_true", help="print the table of the last run")
    args = parser.parse_args()
    if not args.table:
        import torch

        torch.set_num_threads(args.threads)
        OUT.write_text(json.dumps(measure(args.clicks, args.segmenter), indent=1) + "\n")
        print(f"wrote {OUT}")
    print(table(json.loads(OUT.read_text())))


if __name__ == "__main__":
    main()
