"""History mode's prefill, with and without the reused conversation cache.

With history on (the ``paper`` profile) every request re-sends every earlier image and
turn, so the prompt grows with each step. The ``vlm`` policy keeps the key/value cache of
the conversation and prefills only what is new (:class:`napari_ibis.policies.vlm.PrefixCache`).
This runs one 10-step conversation twice through the bundled small agent (v7, Qwen3-VL,
resources/models/default), once reusing the cache and once not: a real CT slice (the
TotalSegmentator held-out liver), the masks of the click simulator's first ten clicks on it
(MobileSAM when fetched, else LiteMedSAM), the model's own replies (at most 48 new tokens)
as the history. Per step: prompt tokens, tokens taken from the cache, prefill seconds (to
the first new token) and the whole reply's seconds.

    python benchmarks/history_cache.py --threads 2

Writes benchmarks/results/history_cache.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def conversation_states(steps: int) -> tuple[np.ndarray, list]:
    """A real slice (RGB) and the masks of the click simulator's first ``steps - 1`` clicks."""
    from napari_ibis.evaluation import simulate_clicks
    from napari_ibis.overlay import to_rgb8
    from napari_ibis.segmenters import build_segmenter, default_segmenter
    from training.data.sources import totalseg_reference

    sample = max((s for s in totalseg_reference(side="held_out") if s.target == "liver"), key=lambda s: s.mask.sum())
    rgb = to_rgb8(sample.image)
    run = simulate_clicks(build_segmenter(default_segmenter()), rgb, sample.mask, max_clicks=steps - 1, stop_iou=1.01)
    masks, segmenter = [None], build_segmenter(default_segmenter())
    segmenter.set_image(rgb)
    logits = None
    for number in range(1, len(run.clicks) + 1):
        result = segmenter.segment(run.clicks[:number], logits)
        masks.append(result.mask)
        logits = result.logits
    return rgb, masks[:steps]


def converse(policy, rgb, masks) -> list[dict]:
    from napari_ibis.policies.base import PolicyRequest
    from napari_ibis.protocol import Turn, get_profile

    profile = get_profile("paper")
    turns, rows = [], []
    for step, mask in enumerate(masks, start=1):
        turns.append(Turn(profile.observation(rgb, mask), profile.user_text("segment the liver", first=step == 1)))
        request = PolicyRequest(profile, "segment the liver", rgb, mask, (), step, profile.messages(turns, True))
        reply = policy.respond(request)
        turns[-1] = Turn(turns[-1].image, turns[-1].text, reply)
        rows.append({"step": step, **policy.last_generation, "reply_chars": len(reply)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    import torch

    from napari_ibis.policies.vlm import VLMPolicy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=str(ROOT / "resources" / "models" / "default"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rgb, masks = conversation_states(args.steps)
    result = {"model": args.model, "image": list(rgb.shape[:2]), "steps": args.steps,
              "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads"}
    for mode in ("reused", "not reused"):
        policy = VLMPolicy(args.model, device="cpu", max_new_tokens=48)
        policy.reuse_cache = mode == "reused"
        converse(policy, rgb, masks[:1])  # warm-up: the first call pays for lazy initialisation
        policy._prefix.clear()
        rows = converse(policy, rgb, masks)
        first, last = rows[0], rows[-1]
        result[mode] = {"rows": rows, "step1_prefill_s": first["seconds_prefill"],
                        f"step{args.steps}_prefill_s": last["seconds_prefill"],
                        "ratio": last["seconds_prefill"] / first["seconds_prefill"],
                        f"step{args.steps}_prompt_tokens": last["prompt_tokens"],
                        f"step{args.steps}_prefilled_tokens": last["prompt_tokens"] - last["reused_tokens"]}
        print(mode, json.dumps({k: v for k, v in result[mode].items() if k != "rows"}), flush=True)
    (RESULTS / "history_cache.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
