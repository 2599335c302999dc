"""Which first moves a GRPO step favours: the group advantage of each kind of sampled decision.

Takes a GRPO config, loads its start model, draws questions as the run would
(same seeds and state source), samples ``group_size`` replies to each through the
real Session (with the config's ``decision_answer``: a continued decision is
followed by the model's greedy turns) and scores them with the config's rewards.
Prints, for each kind of first move (Termination / "not present", a click into the
error, a click elsewhere, unreadable), how often it was sampled, its mean group
advantage and its mean reward terms; writes JSON. A kind with a positive mean
advantage is what the update pushes towards.

    python benchmarks/grpo_advantages.py training/experiments/grpo-continued-after-dagger-r2.yaml --questions 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training.config import read_config  # noqa: E402
from training.rl.grpo import GRPOConfig, Questions, group_advantages, play, score  # noqa: E402
from training.rl.rewards import RewardConfig, parse_or_none, placement_reward  # noqa: E402
from training.rl.rollout import SamplingPolicy  # noqa: E402

TERMS = ("total", "format", "answer", "placement", "progress", "length")


def first_move(episode) -> str:
    turn = episode.turns[0]
    response = parse_or_none(turn.reply, episode.profile)
    if response is None:
        return "unreadable"
    if response.terminate or response.not_present:
        return "answer (Termination or not present)"
    hits = [placement_reward(r, c, p, episode.sample.mask, turn.mask_before) > 0 for r, c, p in turn.clicks]
    return "click into the error" if hits and all(hits) else "click elsewhere"


def main() -> None:
    import torch

    from napari_ibis.policies.vlm import VLMPolicy
    from napari_ibis.segmenters import build_segmenter

    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--model", help="folder to sample from (default: the config's start model)")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grpo_advantages.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = GRPOConfig(**read_config(args.config))
    folder = Path(args.model or config.model)
    loaded = VLMPolicy(folder, device="cpu")  # the model and processor, as the widget loads them
    model, processor = loaded.model, loaded.processor
    torch.manual_seed(config.seed)
    segmenter = build_segmenter(config.segmenter)
    questions = Questions(config, segmenter, rank=0)
    sampled = SamplingPolicy(model, processor, config.temperature, config.top_p, config.max_new_tokens)
    questions.greedy = SamplingPolicy(model, processor, 0.0, max_new_tokens=config.max_new_tokens)
    rewards = RewardConfig(**config.rewards)
    by_kind: dict[str, list] = defaultdict(list)
    started = time.perf_counter()
    for index in range(args.questions):
        sample, query, init_mask = questions.next()
        group = []
        for _ in range(config.group_size):
            episode = play(config, sampled, questions.greedy, sample, query, segmenter, init_mask)
            group.append((first_move(episode), score(episode, rewards, config.mode)))
        for (kind, terms), advantage in zip(group, group_advantages([t["total"] for _, t in group])):
            by_kind[kind].append({"advantage": float(advantage), **{k: terms[k] for k in TERMS}})
        print(f"question {index + 1}/{args.questions}: " + ", ".join(k for k, _ in group), flush=True)
    rollouts = sum(len(v) for v in by_kind.values())
    report = {"config": args.config, "model": str(folder), "questions": args.questions, "group_size": config.group_size,
              "temperature": config.temperature, "decision_answer": config.decision_answer,
              "seconds": time.perf_counter() - started, "kinds": {}}
    print(f"\n| first move | share of {rollouts} rollouts | mean advantage | " + " | ".join(TERMS) + " |")
    print("|---|---|---|" + "---|" * len(TERMS))
    for kind, rows in sorted(by_kind.items()):
        means = {key: float(np.mean([r[key] for r in rows])) for key in ("advantage", *TERMS)}
        report["kinds"][kind] = {"rollouts": len(rows), **means}
        print(f"| {kind} | {len(rows) / rollouts:.2f} | {means['advantage']:+.2f} | "
              + " | ".join(f"{means[k]:.2f}" for k in TERMS) + " |")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
