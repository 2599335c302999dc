"""How large is one GRPO update, and does it point the right way? Measured on one question.

Takes a GRPO config, draws its first question as the run would (same seeds and
state source, from the start model), samples ``--group`` replies to it through the
real Session while keeping the log-probability the sampler gave each token, and
scores them with the config's rewards. Then:

* checks that the log-probabilities the loss is computed on (the reply re-encoded as
  a training sample) are those the sampler drew the reply with (largest difference
  over the replies' tokens);
* for each learning rate, from a fresh copy of the start model, makes the step's one
  update (AdamW, clip 1.0, the config's trained tokens and aggregation) and measures
  how far each trained reply's log-probability moved, its correlation with the
  reply's advantage, and the per-token KL between the policies before and after.

    python benchmarks/grpo_step.py training/experiments/grpo-one-question-clicks-after-dagger-r2.yaml \\
        --learning-rates 1e-4 1e-5 1e-6 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from napari_ibis.policies.vlm import VLMPolicy  # noqa: E402
from training.config import load_config  # noqa: E402
from training.rl.grpo import (  # noqa: E402
    GRPOConfig,
    Questions,
    coordinate_labels,
    coordinate_token_ids,
    policy_change,
    policy_loss,
    score,
    token_log_probs,
    trained_rollouts,
)
from training.rl.rewards import RewardConfig  # noqa: E402
from training.rl.rollout import SamplingPolicy, episode_samples, first_turn, rollout  # noqa: E402
from training.sft.encoding import collate, encode  # noqa: E402


class RecordingSampler(VLMPolicy):
    """The training policy (:meth:`VLMPolicy.from_model`) keeping the log-probability of every token it sampled."""

    def generate(self, inputs, temperature=0.0, seed=None, on_text=None, cancel=None) -> str:
        import torch

        inputs = inputs.to(self.model.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=True,
                                      temperature=temperature, top_p=self.top_p, top_k=0,
                                      pad_token_id=self.pad_token_id, output_logits=True, return_dict_in_generate=True)
        tokens = out.sequences[0, inputs["input_ids"].shape[1]:]
        logits = torch.stack(out.logits)[:, 0].float() / temperature
        self.sampled_log_probs = torch.log_softmax(logits, -1).gather(-1, tokens[:, None])[:, 0]
        return self.processor.tokenizer.decode(tokens, skip_special_tokens=True)


def main() -> None:
    import torch

    from napari_ibis.policies.vlm import VLMPolicy
    from napari_ibis.segmenters import build_segmenter

    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[1e-4, 1e-5, 1e-6])
    parser.add_argument("--group", type=int, default=16, help="sampled replies to the question")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "grpo_step.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(GRPOConfig, args.config)
    started = time.perf_counter()
    loaded = VLMPolicy(Path(config.model), device="cpu")
    start_model, processor = loaded.model, loaded.processor
    segmenter = build_segmenter(config.segmenter)
    questions = Questions(config, segmenter, rank=0)
    questions.greedy = SamplingPolicy(start_model, processor, 0.0, max_new_tokens=config.max_new_tokens)
    sample, query, init_mask = questions.next()
    torch.manual_seed(config.seed)
    sampler = RecordingSampler.from_model(start_model, processor, config.temperature, config.top_p, config.max_new_tokens)
    group, sampled = [], []
    for _ in range(args.group):
        episode = rollout(sampler, sample, query, segmenter, config.profile, 1, init_mask)
        group.append((episode, score(episode, RewardConfig(**config.rewards), config.mode)))
        sampled.append(sampler.sampled_log_probs)
    kept, advantages = trained_rollouts(group, config.trained_tokens)
    pad = processor.tokenizer.pad_token_id
    within = coordinate_token_ids(processor.tokenizer) if config.trained_tokens == "coordinates" else None
    mismatch, items = 0.0, []
    for index, advantage in zip(kept, advantages):
        encoded = encode(processor, episode_samples(first_turn(group[index][0]))[0])
        with torch.no_grad():  # the reply's tokens, re-encoded, against what the sampler drew them with
            full, mask = token_log_probs(start_model, collate([encoded], pad))
        reply = full[0][mask[0] > 0]
        drawn = sampled[index][: len(reply)]
        mismatch = max(mismatch, float((reply[: len(drawn)] - drawn).abs().max()) if len(drawn) else 0.0)
        if within is not None:
            encoded["labels"] = coordinate_labels(processor.tokenizer, encoded["input_ids"][0], encoded["labels"])
        if (encoded["labels"] != -100).any():
            with torch.no_grad():  # the policy before the update, the same for every learning rate
                encoded["old"] = token_log_probs(start_model, collate([encoded], pad), within)[0]
            items.append((encoded, float(advantage)))
    report = {"config": args.config, "question": query, "replies": args.group, "trained": len(items),
              "rewards": [terms["total"] for _, terms in group], "trained_tokens": config.trained_tokens,
              "largest_log_prob_mismatch": mismatch, "updates": {}}
    print(f"{query!r}: rewards {np.round(report['rewards'], 2).tolist()}, {len(items)} trained; "
          f"largest log-prob mismatch between sampler and loss {mismatch:.2e}")
    print("| learning rate | mean abs. change of a trained reply's log p (nats) | corr(advantage, change) | KL per token |")
    print("|---|---|---|---|")
    for learning_rate in args.learning_rates:
        model = copy.deepcopy(start_model).train()
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.0)
        total = sum(float((torch.as_tensor(e["labels"]) != -100).sum()) for e, _ in items)
        for encoded, advantage in items:
            log_probs, mask = token_log_probs(model, collate([encoded], pad), within)
            loss, _ = policy_loss(log_probs, encoded["old"], torch.tensor([advantage]), mask, config.clip_low,
                                  config.clip_high, config.loss_aggregation, total)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimiser.step()
        changes = []
        with torch.no_grad():
            for encoded, _ in items:
                log_probs, mask = token_log_probs(model, collate([encoded], pad), within)
                changes.append(float(((log_probs - encoded["old"]) * mask).sum()))
        kl = policy_change(model, items, pad, "cpu", within)
        shown = np.array([a for _, a in items])
        correlation = float(np.corrcoef(shown, changes)[0, 1]) if len(items) > 1 and np.std(shown) > 0 else float("nan")
        report["updates"][str(learning_rate)] = {"changes": changes, "mean_abs_change": float(np.mean(np.abs(changes))),
                                                 "correlation": correlation, "approx_kl": kl}
        print(f"| {learning_rate:g} | {np.mean(np.abs(changes)):.3f} | {correlation:+.2f} | {kl:.2e} |", flush=True)
    report["seconds"] = time.perf_counter() - started
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
