"""Does asking the agent again (sampling) help when its click looks useless? Measured, not adopted.

A third of the bundled agent's runs on held-out phantoms end because it repeats one click
three times: the release shows no click history, so an unchanged mask gives the same
greedy reply again. This benchmark wraps the model in a policy that asks once more, with
sampling (``PolicyRequest.temperature``), when the greedy reply breaks a rule, and keeps
the first sampled reply that passes:

- ``repeat``: the click repeats the agent's previous click; a passing reply is a
  parsable click elsewhere;
- ``contradiction``: a positive click inside the current mask or a negative one outside
  it (the system prompt asks for clicks in the missed or wrongly included area); a
  passing reply parses and does not contradict (a Terminate passes);
- ``contradiction-click``: the same, but only a click passes (no Terminate).

    python benchmarks/reask.py --rule repeat --tries 5 --temperature 0.7

Same cases, segmenter and greedy first replies as ``benchmarks/agents.py``; prints the
summary and the paired IoU difference to the shipped model's entry in
``benchmarks/results/agents-cases.json``; writes ``benchmarks/results/reask.json`` (one
entry per rule, tries and temperature).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from napari_ibis.policies.base import Policy, PolicyRequest  # noqa: E402
from training.evaluation.benchmark import EvalConfig, cases, evaluate, paired_difference  # noqa: E402
from training.rl.rewards import parse_or_none  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "reask.json"
SET = "phantoms (synthetic)"


class AskAgain(Policy):
    """``inner``'s greedy reply, or a sampled one when the greedy reply breaks ``rule``."""

    name = "ask-again"

    def __init__(self, inner: Policy, rule: str, tries: int, temperature: float) -> None:
        self.inner, self.rule, self.tries, self.temperature = inner, rule, tries, temperature
        self.counts = {"replies": 0, "asked_again": 0, "replaced": 0}
        self._previous = None  # the agent's previous click actions in this run

    def _actions(self, request: PolicyRequest, raw: str):
        """The click actions of a reply; () for Terminate/undo; None when it does not parse."""
        response = parse_or_none(raw, request.profile)
        if response is None:
            return None
        return () if (response.terminate or response.undo) else response.actions

    def _contradicts(self, request: PolicyRequest, actions) -> bool:
        if not actions or request.mask is None or not request.mask.any():
            return False
        height, width = request.mask.shape
        return any(bool(request.mask[request.profile.to_pixel(a, height, width)]) == a.positive for a in actions)

    def _breaks_rule(self, request: PolicyRequest, actions) -> bool:
        if self.rule == "repeat":
            return bool(actions) and actions == self._previous
        return self._contradicts(request, actions)

    def _passes(self, request: PolicyRequest, actions, greedy_actions) -> bool:
        if actions is None:
            return False
        if self.rule == "repeat":
            return bool(actions) and actions != greedy_actions
        if self.rule == "contradiction-click" and not actions:
            return False
        return not self._contradicts(request, actions)

    def respond(self, request, on_text=None, cancel=None) -> str:
        if request.step == 1:
            self._previous = None
        raw = self.inner.respond(request, on_text, cancel)
        self.counts["replies"] += 1
        actions = self._actions(request, raw)
        if actions is not None and self._breaks_rule(request, actions):
            self.counts["asked_again"] += 1
            for attempt in range(1, self.tries + 1):
                sampled = dataclasses.replace(request, temperature=self.temperature, seed=1000 * request.step + attempt)
                alternative = self.inner.respond(sampled, None, cancel)
                alternative_actions = self._actions(request, alternative)
                if self._passes(request, alternative_actions, actions):
                    self.counts["replaced"] += 1
                    raw, actions = alternative, alternative_actions
                    break
        self._previous = actions or None
        return raw


def main() -> None:
    import torch
    from agents import BASELINE, MODELS, case_ious, read_cases

    from napari_ibis.policies.vlm import VLMPolicy
    from napari_ibis.segmenters import build_segmenter

    parser = argparse.ArgumentParser()
    parser.add_argument("--rule", choices=["repeat", "contradiction", "contradiction-click"], default="repeat")
    parser.add_argument("--tries", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = EvalConfig(model=MODELS[BASELINE], output="")
    samples = cases(config)[SET]
    policy = AskAgain(VLMPolicy(ROOT / config.model, max_new_tokens=200), args.rule, args.tries, args.temperature)
    started = time.perf_counter()
    result = evaluate(policy, samples, build_segmenter("classical"), config.profile, config.max_steps, config.seed)
    shipped = read_cases().get(BASELINE, {}).get(SET)
    entry = {
        "model": config.model, "rule": args.rule, "tries": args.tries, "temperature": args.temperature,
        "threads": args.threads, "seconds": time.perf_counter() - started, "counts": policy.counts,
        "summary": result["summary"], "stops": dict(Counter(c["stop"] for c in result["cases"])),
        "vs_shipped": paired_difference(case_ious(result), shipped) if shipped else None,
    }
    everything = json.loads(OUT.read_text()) if OUT.is_file() else {}
    everything[f"{args.rule}, {args.tries} tries, temperature {args.temperature}"] = entry
    OUT.write_text(json.dumps(everything, indent=2) + "\n")
    print(json.dumps({k: entry[k] for k in ("rule", "tries", "temperature", "counts", "stops", "vs_shipped")}))
    print(json.dumps({k: round(v, 3) for k, v in result["summary"].items()}))


if __name__ == "__main__":
    main()
