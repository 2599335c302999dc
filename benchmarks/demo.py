"""The main job on bundled defaults (README, `make demo`): nothing is downloaded.

1. The default agent (the pointer agent v8 in resources/models/pointer, trained by
   this project; v7 in resources/models/default when its encoders were not fetched)
   segments one held-out synthetic phantom through `napari-ibis segment` with the
   default segmenter, streaming its reasoning and clicks.
2. `napari-ibis eval --policy default` runs it on held-out phantoms (seeds from
   90000, never trained on) and on real images with real masks (stardist nuclei of
   the image's right half, which the pointer agent never trained on; Colin27/AAL slices
   of the AAL evaluation side) with the default segmenter (MobileSAM), next to the click
   oracle driving the same segmenter
   (what a perfect clicker gets in as many clicks), and prints one table.
Manifests and reports go to benchmarks/out/. Figures vary a little from run to run
(LiteMedSAM's decoder runs in bfloat16 where the CPU has it; thread scheduling).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from napari_ibis.phantoms import phantom  # noqa: E402
from training.data.sources import (  # noqa: E402
    colin27_aal,
    phantom_samples,  # noqa: E402
    split_by_group,
    stardist_nuclei,
    write_manifest,
)

CLI = [sys.executable, "-m", "napari_ibis.cli"]


def main() -> None:
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    example = phantom(90003)
    Image.fromarray(example.image).save(out / "phantom.png")
    target = max(example.masks, key=lambda name: example.masks[name].sum())
    print(f"== the bundled agent on a held-out {example.modality}-like phantom: 'segment the {target}' ==", flush=True)
    subprocess.run(CLI + ["segment", str(out / "phantom.png"), "--query", f"segment the {target}", "--max-steps", "6",
                          "--out", str(out / "phantom.ibis.tif"), "--force"], check=True)
    written = np.asarray(Image.open(out / "phantom.ibis.tif")) > 0
    truth = example.masks[target]
    print(f"IoU with the phantom's exact mask: {(written & truth).sum() / max((written | truth).sum(), 1):.3f}\n")

    sets = {
        "phantoms (synthetic, held out)": [s for s in phantom_samples(range(90000, 90004)) if s.mask.any()],
        "nuclei (real)": [s for s in stardist_nuclei() if np.nonzero(s.mask)[1].mean() > 280][:8],
        "brain (real)": split_by_group(list(colin27_aal()))[1][:6],
    }
    rows = []
    for name, samples in sets.items():
        manifest = write_manifest(samples, out / name.split()[0])
        for policy in ("default", "oracle"):
            print(f"== {name}: {len(samples)} cases, policy {policy} ==", flush=True)
            report = out / f"{name.split()[0]}-{policy}.json"
            subprocess.run(CLI + ["eval", str(manifest), "--policy", policy,
                                  "--max-clicks", "8", "--json", str(report), "--force"],
                           check=True, stdout=subprocess.DEVNULL)
            rows.append((name, len(samples), policy, json.loads(report.read_text())["summary"]))
    print()
    print(table(rows))
    print(f"\nReports: {out}/*.json (per case: IoU after each click, steps, seconds).")


def table(rows) -> str:
    """The README's table: one line per set and policy."""
    head = ["set", "cases", "policy", "mean IoU", "Dice", "NoC@85", "steps", "s/case"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, cases, policy, summary in rows:
        who = "bundled agent" if policy == "default" else "oracle clicks"
        lines.append(f"| {name} | {cases} | {who} | {summary['iou']:.3f} | {summary['dice']:.3f} | "
                     f"{summary['noc@85']:.1f} | {summary['mean_steps']:.1f} | {summary['seconds_per_case']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
