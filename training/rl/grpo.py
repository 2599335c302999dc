"""Multi-turn GRPO with the paper's rewards (section 3.3, appendix C).

Each step, every process takes ``questions_per_step`` questions (a sample and a
query), lets the current model answer each ``group_size`` times through the real
Session (:mod:`training.rl.rollout`), scores every rollout (:mod:`training.rl.rewards`)
and normalises the rewards within each group into advantages. The loss is the
clipped-ratio policy gradient on the model's own reply tokens only (system,
user, observation and image tokens are masked out), aggregated per token or per
sequence; a KL term to the starting model is optional (off by default, as in the
release). The ratio is taken against the log-probabilities of the model that
produced the rollouts, computed before the first update of the step; with
``mini_batches`` > 1 or ``epochs`` > 1 (each batch used that many times, as PPO and verl's
``ppo_epochs``) the later updates are off-policy and the clip bounds them.

In the release's single-decision mode each rollout is one reply from a given
state, paid on the mask it leaves; ``decision_answer: continued`` lets the current
model carry on greedily after that reply and pays the answer term on where it
ends, so that stopping now and clicking on are compared by what they lead to.
Only the decision itself is trained. ``trained_tokens: coordinates`` narrows the loss
further to the digits of the click coordinates inside ``<action>``: the group then
teaches where to click, while the choice between clicking and answering (and the
reasoning) stays as supervised training left it. Those digits are scored as a choice
among the coordinate characters only (``0``-``9`` and ``.``), so that pushing a bad
click down cannot hand its probability to a newline and break the reply. The
release's replies decide where to click in their reasoning ("below and to the left
of the mask's centre") and in the sign of the point before the digits, so
``trained_tokens: clicks`` trains every token of the replies that click (and of
unreadable ones), with advantages normalised among those replies of a group only:
answers (Termination, "not present") are neither trained nor compared with, and the
update teaches which click, not whether to click.

``GRPOConfig`` maps 1:1 onto ``napari-ibis grpo CONFIG``. Logs go to
``OUTPUT/log.jsonl`` (and TensorBoard when it is installed), one line per step
with every reward term separately.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from napari_ibis.policies.base import Policy
from training.checkpoints import lora_keys, save, start_run
from training.config import check_choices
from training.data.sources import Sample
from training.data.trajectories import EXPERT_STOP_IOU
from training.rl.rewards import RewardConfig, final_answer_reward, parse_or_none, step_reward, trajectory_reward
from training.rl.rollout import FirstTurnThen, Rollout, SamplingPolicy, episode_samples, first_turn, rollout
from training.sft import target_map
from training.sft.encoding import collate, encode


@dataclass
class GRPOConfig:
    """GRPO settings (``napari-ibis grpo CONFIG`` reads these keys)."""

    model: str  # folder to start from (usually the SFT output)
    output: str
    profile: Literal["ibis-release", "paper"] = "ibis-release"
    mode: Literal["trajectory", "decision"] = "trajectory"  # "trajectory" (paper, multi-turn) or "decision" (release: one turn from a simulated state)
    first_step_share: float = 0.0  # decision mode: share of questions asked from the empty first state
    state_source: Literal["simulated", "policy"] = "simulated"  # decision mode: states from the click simulator, or "policy": the model's own
    # decision mode: the answer term on the mask the decision leaves ("now", the release), or on the mask the
    # current model ends with when it carries on greedily from there ("continued"): a click is then worth what
    # it leads to, not only what it does at once
    decision_answer: Literal["now", "continued"] = "now"
    # every token of the model's reply; "coordinates": only the click's numbers; "clicks": whole replies that
    # click (or are unreadable), compared only among themselves, so answering is left as SFT made it
    trained_tokens: Literal["reply", "coordinates", "clicks"] = "reply"
    segmenter: str = "classical"
    seeds: list = field(default_factory=lambda: [0, 400])  # phantom seeds the questions come from
    real: list = field(default_factory=list)  # "aal", "nuclei": their training side is added
    absent_probability: float = 0.1
    steps: int = 50
    questions_per_step: int = 4  # per process
    group_size: int = 4
    max_turns: int = 6
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 160
    learning_rate: float = 1e-5
    warmup_steps: int = 0
    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    loss_aggregation: Literal["token-mean", "seq-mean-token-mean"] = "token-mean"
    mini_batches: int = 1
    epochs: int = 1  # passes over each step's rollouts (the clip bounds every update after the first)
    rewards: dict = field(default_factory=dict)  # RewardConfig keys
    lora: dict = field(default_factory=dict)
    save_every: int = 0
    resume: bool = False
    log_every: int = 1
    seed: int = 0
    # > 0: draw that many questions once (from the starting model) and ask only those, in turn, every
    # step. A sanity check that the policy gradient can raise the reward where it trains, apart from
    # whether what it learns carries to new questions
    question_pool: int = 0
    stop_iou: float = EXPERT_STOP_IOU  # where the simulated trajectories that give decision-mode states stop

    SECTIONS = {"rewards": lambda: _reward_config(), "lora": lora_keys}

    def __post_init__(self) -> None:
        check_choices(self)
        from napari_ibis.segmenters import check_spec

        check_spec(self.segmenter)
        if self.group_size < 2:
            raise ValueError(f"group_size must be 2 or more: with {self.group_size} rollout per question every advantage is 0")
        if self.steps < 1 or self.questions_per_step < 1 or self.max_turns < 1:
            raise ValueError("steps, questions_per_step and max_turns must be 1 or more")
        if not 0 < self.top_p <= 1 or self.temperature < 0:
            raise ValueError(f"top_p must lie in (0, 1] and temperature be 0 or more, not {self.top_p} and {self.temperature}")
        if self.epochs < 1 or self.mini_batches < 1:
            raise ValueError(f"epochs and mini_batches must be 1 or more, not {self.epochs} and {self.mini_batches}")
        if self.question_pool < 0:
            raise ValueError(f"question_pool must be 0 (a new question every time) or more, not {self.question_pool}")
        if self.trained_tokens == "clicks" and self.mode != "decision":
            raise ValueError("trained_tokens: clicks needs mode: decision (one reply per rollout)")


def _reward_config():
    return RewardConfig


def trained_rollouts(group: list[tuple[Rollout, dict]], trained_tokens: str) -> tuple[list[int], np.ndarray]:
    """Which rollouts of a group are trained, and their advantages (normalised among those only).

    With ``trained_tokens: clicks`` a reply that answers (Termination or "not present") is left
    out of both; every other setting trains and compares the whole group.
    """
    if trained_tokens == "clicks":
        kept = [i for i, (episode, _) in enumerate(group) if not _answers(episode)]
    else:
        kept = list(range(len(group)))
    return kept, group_advantages([group[i][1]["total"] for i in kept])


def _answers(episode: Rollout) -> bool:
    response = parse_or_none(episode.turns[0].reply, episode.profile) if episode.turns else None
    return response is not None and (response.terminate or response.not_present)


def group_advantages(rewards, eps: float = 1e-6) -> np.ndarray:
    """(r - mean) / std within one group; all zero when the rewards are equal (nothing to learn)."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.size < 2:
        return np.zeros_like(rewards)
    spread = rewards.std()
    if spread < eps:
        return np.zeros_like(rewards)
    return (rewards - rewards.mean()) / (spread + eps)


_ACTION = re.compile(r"<action>(.*?)</action>", re.S)
COORDINATE_CHARACTERS = "0123456789."


def coordinate_token_ids(tokenizer) -> list[int]:
    """Token ids of the characters click coordinates are written with (one token each)."""
    ids = tokenizer.convert_tokens_to_ids(list(COORDINATE_CHARACTERS))
    if any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError("trained_tokens: coordinates needs a tokenizer with one token per digit and for '.'")
    return ids


def coordinate_labels(tokenizer, input_ids, labels) -> np.ndarray:
    """``labels`` with every trained token masked out (-100) but the digits and points of the
    click coordinates inside ``<action>...</action>`` (``trained_tokens: coordinates``)."""
    labels = np.asarray(labels).copy()
    trained = np.flatnonzero(labels != -100)
    pieces = tokenizer.batch_decode([[int(input_ids[i])] for i in trained])
    ends = np.cumsum([len(piece) for piece in pieces])  # where each token's text ends in the trained text
    actions = [a.span(1) for a in _ACTION.finditer("".join(pieces))]
    keep = np.zeros(labels.shape, dtype=bool)
    for index, piece, end in zip(trained, pieces, ends):
        inside = any(low <= end - len(piece) and end <= high for low, high in actions)
        keep[index] = inside and len(piece.strip()) == 1 and piece.strip() in COORDINATE_CHARACTERS
    labels[~keep] = -100
    return labels


def token_log_probs(model, batch: dict, within: list[int] | None = None):
    """(log p of each next token, mask of the trained ones): both (B, T-1).

    With ``within`` (token ids), p is normalised over those tokens only: the trained
    tokens must be among them (``trained_tokens: coordinates``).
    """
    import torch

    inputs = {k: v for k, v in batch.items() if k not in ("labels", *target_map.BATCH_KEYS)}
    logits = model(**inputs).logits[:, :-1].float()
    targets = batch["input_ids"][:, 1:]
    if within is None:
        log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
    else:
        log_probs = logits.gather(-1, targets[..., None])[..., 0] - torch.logsumexp(logits[..., within], dim=-1)
    return log_probs, (batch["labels"][:, 1:] != -100).float()


def k3(log_ratio):
    """Per-token KL estimate from log(p_other / p_sampled): exp(x) - x - 1, always >= 0 (Schulman's k3)."""
    import torch

    return torch.exp(log_ratio) - log_ratio - 1


def policy_loss(log_probs, old_log_probs, advantages, mask, clip_low: float = 0.2, clip_high: float = 0.2,
                aggregation: str = "token-mean", total_tokens: float | None = None, ref_log_probs=None,
                kl_coef: float = 0.0):
    """Clipped-ratio policy-gradient loss over masked tokens; returns (loss, stats).

    ``advantages`` has one value per sequence. With ``token-mean`` the sum is
    divided by ``total_tokens`` (all trained tokens of the mini-batch, so that
    sequences split over several calls add up to one mean).
    """
    import torch

    ratio = torch.exp(log_probs - old_log_probs)
    advantage = advantages[:, None]
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantage
    per_token = -torch.minimum(unclipped, clipped)
    kl = torch.zeros_like(per_token)
    if ref_log_probs is not None and kl_coef:
        kl = k3(ref_log_probs - log_probs)
        per_token = per_token + kl_coef * kl
    if aggregation == "token-mean":
        loss = (per_token * mask).sum() / (total_tokens or mask.sum().clamp(min=1))
    elif aggregation == "seq-mean-token-mean":
        loss = ((per_token * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    else:
        raise ValueError(f"loss_aggregation must be token-mean or seq-mean-token-mean, not {aggregation!r}")
    with torch.no_grad():
        tokens = mask.sum().clamp(min=1)
        stats = {"clip_fraction": float(((unclipped != clipped).float() * mask).sum() / tokens),
                 "kl": float((kl * mask).sum() / tokens)}
    return loss, stats


def policy_change(model, items, pad_id: int, device, within: list[int] | None = None) -> float:
    """How far this step's updates moved the policy on the replies it trained: the mean per-token
    KL(old || new) of the trained tokens (:func:`k3` of log(p_new / p_old)).

    The clip only bounds the later mini-batches of a step; this shows how large each step was.
    """
    import torch

    change, tokens = 0.0, 0.0
    with torch.no_grad():
        for encoded, _ in items:
            batch = _to_device(collate([encoded], pad_id), device)
            log_probs, mask = token_log_probs(model, batch, within)
            change += float((k3(log_probs - encoded["old"]) * mask).sum())
            tokens += float(mask.sum())
    return change / max(tokens, 1.0)


def score(episode: Rollout, config: RewardConfig, mode: str = "trajectory") -> dict[str, float]:
    """Reward terms of a rollout: of its one decision, or of the whole trajectory.

    A trajectory that ended on an unreadable reply gets no length bonus: stopping
    by breaking the format must not pay.
    """
    truth = episode.sample.mask
    turns = episode.turns[:1] if mode == "decision" else episode.turns  # a continued decision's later turns are not scored
    steps = [step_reward(t.reply, truth, t.mask_before, t.mask_after, i + 1, t.clicks, episode.profile, config)
             for i, t in enumerate(turns)]
    if mode == "decision":
        terms = steps[0]
        if len(episode.turns) > 1:  # carried on after the decision (decision_answer: continued)
            terms = {**terms, "answer": final_answer_reward(truth, episode.final_mask, episode.said_absent, config)}
            terms["total"] = sum(v for k, v in terms.items() if k != "total") / config.normaliser
        return terms
    broken = episode.stop_reason == "unparsable"
    config = RewardConfig(**{**asdict(config), "use_length": config.use_length and not broken})
    return trajectory_reward(steps, truth, episode.final_mask, episode.said_absent, config)


def play(config: GRPOConfig, sampled: Policy, greedy: Policy | None, sample: Sample, query: str, segmenter,
         init_mask: np.ndarray | None) -> Rollout:
    """One episode as a GRPO step plays it: a whole trajectory, one decision, or one decision that
    ``greedy`` (the current model) carries on from (``decision_answer: continued``)."""
    if config.mode != "decision":
        return rollout(sampled, sample, query, segmenter, config.profile, config.max_turns, init_mask)
    if config.decision_answer == "continued":
        return rollout(FirstTurnThen(sampled, greedy), sample, query, segmenter, config.profile, config.max_turns, init_mask)
    return rollout(sampled, sample, query, segmenter, config.profile, 1, init_mask)


class Questions:
    """An endless, seeded stream of (sample, query, initial mask) for one process."""

    def __init__(self, config: GRPOConfig, segmenter, rank: int) -> None:
        from training.data.storage import source_samples

        self.samples: list[Sample] = source_samples(asdict(config))
        self.rng = np.random.default_rng([config.seed, rank])
        self.mode, self.segmenter = config.mode, segmenter
        self.max_turns, self.stop_iou = config.max_turns, config.stop_iou
        self.first_step_share = config.first_step_share
        self.state_source, self.profile = config.state_source, config.profile
        self.greedy: Policy | None = None  # state_source "policy": the current model, greedy (set every step)
        self.pool_size = config.question_pool
        self.pool: list[tuple[Sample, str, np.ndarray | None]] = []
        self.asked = 0

    def next(self) -> tuple[Sample, str, np.ndarray | None]:
        if not self.pool_size:
            return self.draw()
        if not self.pool:  # drawn on the first call, so policy states come from the starting model
            self.pool = [self.draw() for _ in range(self.pool_size)]
        self.asked += 1
        return self.pool[(self.asked - 1) % self.pool_size]

    def draw(self) -> tuple[Sample, str, np.ndarray | None]:
        """A new question from the seeded stream."""
        from training.data import text
        from training.data.trajectories import simulate

        sample = self.samples[self.rng.integers(len(self.samples))]
        first = self.rng.random() < self.first_step_share
        if self.mode != "decision" or not sample.mask.any() or first:
            return sample, text.query(sample.target, sample.modality, self.rng), None
        if self.state_source == "policy":
            # the mask the model itself reaches after 1 to max_turns - 1 greedy turns: the states it meets
            # at evaluation, not the simulator's better ones
            query = text.query(sample.target, sample.modality, self.rng)
            turns = int(self.rng.integers(1, max(self.max_turns, 2)))
            state = rollout(self.greedy, sample, query, self.segmenter, self.profile, turns).final_mask
            return sample, query, state if state.any() else None
        simulated = simulate(sample, self.segmenter, self.rng, stop_iou=self.stop_iou, max_steps=self.max_turns)
        states = [m.mask_before for m in simulated.moves]
        state = states[self.rng.integers(len(states))]
        return sample, simulated.query, state if state.any() else None


def train(config: GRPOConfig, log=functools.partial(print, flush=True)) -> dict:
    """Run GRPO; writes the model folder, ``log.jsonl`` and ``training_card.json``."""
    import torch

    from napari_ibis.segmenters import build_segmenter

    reference = None

    def keep_reference(model):  # the KL term's fixed copy of the start model (LoRA: the adapters switched off)
        nonlocal reference
        if config.kl_coef and not config.lora:
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        return []

    run = start_run(config, lambda s: min(1.0, (s + 1) / max(config.warmup_steps, 1)), config.seed,
                    before_optimiser=keep_reference)
    accelerator, processor, optimiser, schedule = run.accelerator, run.processor, run.optimiser, run.schedule
    rank, world, trainable, checkpoint, start_step = accelerator.process_index, accelerator.num_processes, run.trainable, run.checkpoint, run.start_step
    torch.manual_seed(config.seed + rank)
    random.seed(config.seed + rank)
    output = Path(config.output)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
    model, optimiser = accelerator.prepare(run.model, optimiser)
    segmenter = build_segmenter(config.segmenter, str(accelerator.device))
    questions = Questions(config, segmenter, rank)
    for _ in range(0 if config.question_pool else start_step * config.questions_per_step):
        questions.rng.integers(len(questions.samples))  # resume the stream roughly where it was (a pool is drawn again)
    reward_config = RewardConfig(**config.rewards)
    pad_id = processor.tokenizer.pad_token_id
    within = coordinate_token_ids(processor.tokenizer) if config.trained_tokens == "coordinates" else None
    writer = _tensorboard(output) if accelerator.is_main_process else None
    history = []
    for step in range(start_step, config.steps):
        started = time.perf_counter()
        unwrapped = accelerator.unwrap_model(model)
        unwrapped.eval()
        policy = SamplingPolicy(unwrapped, processor, config.temperature, config.top_p, config.max_new_tokens)
        questions.greedy = SamplingPolicy(unwrapped, processor, 0.0, max_new_tokens=config.max_new_tokens)
        groups: list[list[tuple[Rollout, dict]]] = []
        for _ in range(config.questions_per_step):
            sample, query, init_mask = questions.next()
            group = []
            for _ in range(config.group_size):
                episode = play(config, policy, questions.greedy, sample, query, segmenter, init_mask)
                group.append((episode, score(episode, reward_config, config.mode)))
            groups.append(group)
        rollout_seconds = time.perf_counter() - started
        # one (encoded sequence, advantage) per trained sample
        items = []
        for group in groups:
            kept, advantages = trained_rollouts(group, config.trained_tokens)
            for (episode, _), advantage in zip([group[i] for i in kept], advantages):
                for rendered in episode_samples(first_turn(episode) if config.mode == "decision" else episode):
                    encoded = encode(processor, rendered)
                    if within is not None:  # trained_tokens: coordinates
                        encoded["labels"] = coordinate_labels(processor.tokenizer, encoded["input_ids"][0], encoded["labels"])
                    if (encoded["labels"] != -100).any():  # an answer has no coordinates to train
                        items.append((encoded, float(advantage)))
        model.train()
        stats = {"clip_fraction": [], "kl": [], "loss": [], "approx_kl": []}
        if items:
            with torch.no_grad():
                for encoded, _ in items:
                    batch = _to_device(collate([encoded], pad_id), accelerator.device)
                    encoded["old"] = token_log_probs(model, batch, within)[0].detach()
                    if reference is not None:
                        encoded["ref"] = token_log_probs(reference, batch, within)[0].detach()
                    elif config.kl_coef and config.lora:
                        with accelerator.unwrap_model(model).disable_adapter():
                            encoded["ref"] = token_log_probs(model, batch, within)[0].detach()
            chunks = [c for _ in range(config.epochs) for c in np.array_split(np.arange(len(items)), config.mini_batches)]
            for chunk in chunks:
                optimiser.zero_grad()
                total_tokens = sum(float((torch.as_tensor(items[i][0]["labels"]) != -100).sum()) for i in chunk)
                for position, i in enumerate(chunk):
                    encoded, advantage = items[i]
                    batch = _to_device(collate([encoded], pad_id), accelerator.device)
                    log_probs, mask = token_log_probs(model, batch, within)
                    loss, loss_stats = policy_loss(
                        log_probs, encoded["old"], torch.tensor([advantage], device=log_probs.device), mask,
                        config.clip_low, config.clip_high, config.loss_aggregation,
                        total_tokens if config.loss_aggregation == "token-mean" else None,
                        encoded.get("ref"), config.kl_coef)
                    if config.loss_aggregation != "token-mean":
                        loss = loss / len(chunk)
                    sync = position == len(chunk) - 1
                    with accelerator.no_sync(model) if not sync else contextlib.nullcontext():
                        accelerator.backward(loss)
                    stats["loss"].append(loss.item())
                    stats["clip_fraction"].append(loss_stats["clip_fraction"])
                    stats["kl"].append(loss_stats["kl"])
                accelerator.clip_grad_norm_(trainable, 1.0)
                optimiser.step()
            stats["approx_kl"] = [policy_change(model, items, pad_id, accelerator.device, within)]
        schedule.step()
        record = _step_record(step + 1, groups, stats, rollout_seconds, time.perf_counter() - started)
        record = _gather_mean(accelerator, record)
        history.append(record)
        if accelerator.is_main_process:
            with (output / "log.jsonl").open("a") as handle:
                handle.write(json.dumps(record) + "\n")
            if writer is not None:
                for key, value in record.items():
                    if isinstance(value, (int, float)) and key != "step":
                        writer.add_scalar(key, value, step + 1)
            if config.log_every and (step + 1) % config.log_every == 0:
                log(f"step {step + 1}/{config.steps} reward {record['reward/total']:.3f} iou {record['iou']:.3f} "
                    f"parsable {record['parsable']:.2f} turns {record['turns']:.1f} ({record['seconds']:.0f} s)")
        if config.save_every and (step + 1) % config.save_every == 0:
            save(accelerator, model, processor, checkpoint, config,
                 {"optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(), "step": step + 1})
    save(accelerator, model, processor, output, config, None, merge=True)
    if (output / "log.jsonl").is_file():  # after a resume, the log holds the steps of every run
        history = [json.loads(line) for line in (output / "log.jsonl").read_text().splitlines() if line.strip()]
    card = {"config": asdict(config), "processes": world, "steps": history}
    if accelerator.is_main_process:
        (output / "training_card.json").write_text(json.dumps(card, indent=2) + "\n")
        if writer is not None:
            writer.close()
    run.end()
    return card


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _step_record(step: int, groups, stats: dict, rollout_seconds: float, seconds: float) -> dict:
    episodes = [(e, terms) for group in groups for e, terms in group]
    turns = [t for e, _ in episodes for t in e.turns]
    parsable = [t for t in turns if t.reply and parse_or_none(t.reply, episodes[0][0].profile) is not None]
    record = {"step": step, "rollouts": len(episodes)}
    for key in ("total", "format", "answer", "placement", "progress", "length"):
        record[f"reward/{key}"] = float(np.mean([terms[key] for _, terms in episodes])) if episodes else 0.0
    present = [e for e, _ in episodes if e.sample.mask.any()]
    record["iou"] = float(np.mean([e.final_iou for e in present])) if present else 0.0
    record["parsable"] = len(parsable) / max(len(turns), 1)
    record["turns"] = len(turns) / max(len(episodes), 1)
    record["zero_advantage_groups"] = sum(not group_advantages([t["total"] for _, t in g]).any() for g in groups)
    for key, values in stats.items():
        record[key] = float(np.mean(values)) if values else 0.0
    record["rollout_seconds"] = rollout_seconds
    record["seconds"] = seconds
    return record



def _gather_mean(accelerator, record: dict) -> dict:
    """Average every number of a step record over processes (sum the counts)."""
    import torch

    if accelerator.num_processes == 1:
        return record
    keys = [k for k, v in record.items() if k != "step" and isinstance(v, (int, float))]
    values = torch.tensor([float(record[k]) for k in keys], device=accelerator.device)
    reduced = accelerator.reduce(values, "mean")
    out = dict(record)
    for key, value in zip(keys, reduced.tolist()):
        out[key] = value * (accelerator.num_processes if key in ("rollouts", "zero_advantage_groups") else 1)
    return out


def _tensorboard(output: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard not installed: JSONL only
        return None
    output.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(str(output / "tensorboard"))


def main(argv=None) -> int:
    """Reinforcement learning (GRPO with the paper's rewards) from a model folder to a new one.

    ``napari-ibis grpo CONFIG``."""
    from training.config import config_parser, load_config

    args = config_parser("napari-ibis grpo", GRPOConfig, main.__doc__.splitlines()[0]).parse_args(argv)
    config = load_config(GRPOConfig, args.config, args.set)
    card = train(config)
    last = card["steps"][-1] if card["steps"] else {}
    print(f"done: {config.output} (last step reward {last.get('reward/total', float('nan')):.3f}, "
          f"iou {last.get('iou', float('nan')):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

