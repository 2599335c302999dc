"""Per-step cost of the agent loop on 2 cores (issue 2).

1. Without a VLM: a 512x512 real slice (stardist nuclei, 16-bit fluorescence), a
   10-step session with the LiteMedSAM segmenter. The clicks are the oracle's,
   recorded in a first session and replayed as text, so that the per-step time is
   segment + overlay + event (+ parsing), not the simulator's own distance
   transforms. Reports the first step (5 box proposals; the embedding is made
   when the session starts), the median of the others, and the encoder calls
   (target: 1).
2. With a tiny randomly initialised Qwen2.5-VL built from a config (not a trained
   model): seconds per step and generated tokens per second.

    python benchmarks/step_cost.py
Writes benchmarks/results/step_cost.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from napari_ibis.policies.base import Policy  # noqa: E402
from napari_ibis.policies.oracle import OraclePolicy  # noqa: E402
from napari_ibis.policies.vlm import VLMPolicy  # noqa: E402
from napari_ibis.protocol import PROFILES  # noqa: E402
from napari_ibis.segmenters import build_segmenter  # noqa: E402
from napari_ibis.session import MaskUpdated, Session, StepStarted  # noqa: E402
from training.data.sources import stardist_nuclei  # noqa: E402
from training.sft.tiny import TinyConfig, build_tiny_vlm  # noqa: E402


class Replay(Policy):
    """Says the recorded replies again, at no cost."""

    name = "replay"

    def __init__(self, replies: list[str]) -> None:
        self.replies = iter(replies)

    def respond(self, request, on_text=None, cancel=None) -> str:
        return next(self.replies)


def timed_steps(session: Session) -> list[float]:
    times, started = [], None
    for event in session.run():
        if isinstance(event, StepStarted):
            started = time.perf_counter()
        elif isinstance(event, MaskUpdated):
            session.profile.observation(session.rgb, event.step.mask)  # the next observation image
            times.append(time.perf_counter() - started)
    return times


def main() -> None:
    torch.set_num_threads(2)
    sample = next(stardist_nuclei(count=1))
    segmenter = build_segmenter("litemedsam")
    recorded = Session(sample.image, "segment the nucleus", OraclePolicy(sample.mask, stop_iou=1.01), segmenter, max_steps=10)
    list(recorded.run())
    replies = [step.raw for step in recorded.steps if step.kind == "click"]
    segmenter = build_segmenter("litemedsam")  # a fresh one: count its encoder calls
    started = time.perf_counter()
    session = Session(sample.image, "segment the nucleus", Replay(replies), segmenter, max_steps=len(replies))
    embed_seconds = time.perf_counter() - started
    times = timed_steps(session)
    no_vlm = {
        "image": "stardist nuclei 512x512 (real)",
        "steps": len(times),
        "embedding_seconds": embed_seconds,
        "first_step_ms": times[0] * 1000,
        "median_step_ms_after_first": statistics.median(times[1:]) * 1000,
        "max_step_ms": max(times) * 1000,
        "encoder_calls": segmenter.encoder_calls,
    }
    print(json.dumps(no_vlm, indent=2))

    corpus = [p.system_prompt() for p in PROFILES.values()]
    folder = build_tiny_vlm(Path(tempfile.mkdtemp()) / "tiny", corpus, TinyConfig())
    policy = VLMPolicy(folder, max_new_tokens=64)
    session = Session(sample.image, "segment the nucleus", policy, segmenter, max_steps=10)
    started = time.perf_counter()
    events = list(session.run())
    seconds = time.perf_counter() - started
    outputs = [s.raw for s in session.steps] + session.rejected_outputs
    tokens = sum(len(policy.processor.tokenizer(text).input_ids) for text in outputs)
    turns = sum(1 for e in events if isinstance(e, StepStarted))
    vlm = {
        "model": f"random Qwen2.5-VL from a config, {sum(p.numel() for p in policy.model.parameters()) / 1e6:.1f} M parameters",
        "turns": turns,
        "seconds_per_turn": seconds / max(turns, 1),
        "generated_tokens": tokens,
        "tokens_per_second": tokens / seconds,
        "stop": events[-1].reason,
    }
    print(json.dumps(vlm, indent=2))
    out = ROOT / "benchmarks" / "results" / "step_cost.json"
    out.write_text(json.dumps({"without_vlm": no_vlm, "tiny_random_vlm": vlm}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
