"""Does the default agent know a vertebra's level on one slice? (why it says the level is not counted)

On TotalSegmentator's CT volumes with vertebrae labelled (real; the labels are TotalSegmentator's
own outputs): the held-out upper-abdomen series (T11-T12) and the trained-on abdominal CT (S1-T11),
about ten slices of each, each handed its volume. On every slice the agent looks (``locate``, as
Find slice and its first turn do) for each vertebra level it was taught; a level counts as on the
slice where its label covers more than 50 pixels there. Reported per volume: how often a level on
the slice is called present, and how often a level not on the slice is (a vertebra is on every
slice looked at, so "present" for a level elsewhere is the map not knowing the level).

    python benchmarks/vertebra_levels.py

Writes benchmarks/results/vertebra_levels.json and prints one line per slice and a summary.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "vertebra_levels.json"
LEVELS = ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"]
VOLUMES = ("upper_abdomen_ct", "abdomen_ct")  # held-out, trained-on
SLICES = 10  # looked at per volume, among those holding a vertebra
MIN_PIXELS = 50


def main() -> int:
    import torch

    from napari_ibis import assets, io
    from napari_ibis.overlay import to_rgb8
    from napari_ibis.policies import load_policy
    from napari_ibis.policies.base import volume_slice
    from training.data.sources import TOTALSEG_VOLUMES, totalseg_class_maps

    torch.set_num_threads(2)
    policy = load_policy(str(ROOT / "resources" / "models" / "pointer"))
    root = assets.path("totalsegmentator", "tests/reference_files").parent.parent
    rows = []
    for name in VOLUMES:
        image_file, labels_file, class_map = TOTALSEG_VOLUMES[name]
        loaded = io.read_image(root / image_file)
        labels = io.read_image(root / labels_file).data
        values = {v: k for k, v in totalseg_class_maps()[class_map].items()}
        level_masks = {level: labels == values[f"vertebrae_{level}"] for level in LEVELS if f"vertebrae_{level}" in values}
        with_bone = [z for z in range(len(labels)) if any(m[z].sum() > MIN_PIXELS for m in level_masks.values())]
        volume = volume_slice(loaded.data, loaded.meta["geometry"].spacing)
        for z in [with_bone[i] for i in np.linspace(0, len(with_bone) - 1, SLICES).round().astype(int)]:
            rgb = to_rgb8(loaded.data[z])
            on = [level for level, mask in level_masks.items() if mask[z].sum() > MIN_PIXELS]
            for level in LEVELS:
                seen = policy.locate(rgb, f"segment the {level} vertebra", volume.at(z))
                rows.append({"volume": name, "slice": z, "level": level, "on_slice": level in on,
                             "present": bool(seen.present), "peak": round(float(seen.peak), 3)})
            said = " ".join(f"{r['level']}:{'Y' if r['present'] else '-'}" for r in rows[-len(LEVELS):])
            print(f"{name} slice {z}: on it {on}; called present {said}", flush=True)
    summary = {}
    for name in VOLUMES:
        mine = [r for r in rows if r["volume"] == name]
        on, off = [r for r in mine if r["on_slice"]], [r for r in mine if not r["on_slice"]]
        summary[name] = {"slices": len({r["slice"] for r in mine}), "levels_on_slice": len(on),
                         "present_when_on": float(np.mean([r["present"] for r in on])) if on else None,
                         "levels_elsewhere": len(off),
                         "present_when_elsewhere": float(np.mean([r["present"] for r in off])) if off else None}
        print(name, json.dumps(summary[name]))
    OUT.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")
    print(f"-> {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
