"""Supervised fine-tuning on click-simulated trajectories (paper section 3.2).

A trajectory is rendered per profile into chat samples: with history off
(``ibis-release``) every move is its own sample (system + one user turn + the
answer), with history on (``paper``) the whole trajectory is one multi-turn,
multi-image sample. Labels are -100 on system, user, observation and image tokens
and on moves flagged wrong (self-correction context): only the assistant tokens
of correct moves, with their closing ``<|im_end|>``, are trained.

``SFTConfig`` maps 1:1 onto ``napari-ibis sft CONFIG`` (a JSON or YAML file).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import random
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from napari_ibis.overlay import to_rgb8
from napari_ibis.protocol import Turn, get_profile

from ..checkpoints import lora_keys, save, start_run
from ..config import check_choices
from ..data.trajectories import Trajectory
from ..samples import RenderedSample, render
from . import target_map
from .encoding import collate, encode


@dataclass
class SFTConfig:
    """Supervised fine-tuning settings (``napari-ibis sft CONFIG`` reads these keys)."""

    model: str  # folder of the model to start from
    output: str  # folder to write
    data: str | list = ""  # a dataset folder written by `napari-ibis data build` (or a list of them); empty: build one from `extra`
    profile: Literal["ibis-release", "paper"] = "ibis-release"
    steps: int = 100
    batch_size: int = 1  # samples per process per micro-step
    learning_rate: float = 5e-4
    warmup_fraction: float = 0.1
    gradient_accumulation: int = 1
    seed: int = 0
    save_every: int = 0  # 0: only at the end
    resume: bool = False
    log_every: int = 10
    lora: dict = field(default_factory=dict)  # {} full fine-tuning; else peft LoraConfig keys (r, lora_alpha, ...)
    eval_every: int = 0  # first-click hit rate on held-out phantoms every N steps (0: never)
    eval_seeds: list = field(default_factory=lambda: [90000, 90025])
    target_map_weight: float = 0.0  # > 0: add the auxiliary target-map loss (training/sft/target_map.py) times this
    target_map_layer: int = 2  # hidden state it reads: 0 embeddings, i the output of decoder layer i
    target_attention_weight: float = 0.0  # > 0: one attention head learns to look at the target (target_map.attention_loss)
    target_attention_layer: int = 3  # decoder layer (1-based) whose head 0 is taught; eager attention while training
    target_position_weight: float = 0.0  # > 0: that layer's output at the answer predicts the target's centre (position_loss)
    target_attention_all_keys: bool = False  # the taught head spends all its attention on the target, not only its image share
    token_position_weight: float = 0.0  # > 0: that head's value of each image token holds the token's own x, y
    target_heads_from: str = ""  # an earlier stage's checkpoint folder: start the target-map heads from its heads
    replay_data: str = ""  # another dataset folder to mix in, so a later stage keeps what an earlier one taught
    replay_samples: int = 0  # how many of its samples (drawn once, with `seed`); 0 with replay_data: all of them
    stream: dict = field(default_factory=dict)  # {} read `data`; else first decisions of new phantoms made while training (training.sft.stream.StreamConfig keys)
    tiny: dict = field(default_factory=dict)  # build a new small model at `model` first (TinyConfig keys)
    image_size: int = 0  # > 0: images reach the model at this side (its pixel budget becomes side x side), e.g. finer image tokens
    extra: dict = field(default_factory=dict)  # without `data`: the keys of a data build config (training.data.storage.BuildConfig)

    SECTIONS = {"lora": lora_keys, "stream": lambda: _section("stream"), "tiny": lambda: _section("tiny"),
                "extra": lambda: _section("extra")}

    def __post_init__(self) -> None:
        check_choices(self)
        if self.steps < 1 or self.batch_size < 1 or self.gradient_accumulation < 1:
            raise ValueError("steps, batch_size and gradient_accumulation must be 1 or more")
        if self.stream and (self.data or self.replay_data):
            raise ValueError("`stream` makes its own samples; leave out `data` and `replay_data`")


def _section(name: str):
    """The dataclass of a nested section, imported only when a config names it."""
    if name == "stream":
        from .stream import StreamConfig

        return StreamConfig
    if name == "tiny":
        from .tiny import TinyConfig

        return TinyConfig
    from ..data.storage import BuildConfig

    return tuple(f.name for f in dataclasses.fields(BuildConfig) if f.name not in ("output", "profile"))


def train(config: SFTConfig, samples: list[RenderedSample], log=functools.partial(print, flush=True)) -> dict:
    """Fine-tune a VLM folder on rendered samples (full or LoRA; one or many processes).

    Run it under ``accelerate launch`` (or ``torchrun``) for several processes: each
    takes its share of every global batch, gradients are averaged (gloo on CPU,
    NCCL on GPUs). Only the main process writes. Returns the training record.
    """
    import torch

    warmup = max(1, int(config.steps * config.warmup_fraction))
    terms = None

    def heads(model):  # the target-map heads train with the model
        nonlocal terms
        terms = target_map.Terms(config, model)
        return [p for head in terms.heads.values() for p in head.parameters()]

    run = start_run(config, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(step, config.steps) / config.steps)), config.seed, before_optimiser=heads)
    accelerator, model, processor, optimiser, schedule = run.accelerator, run.model, run.processor, run.optimiser, run.schedule
    rank, world, trainable, checkpoint, start_step = accelerator.process_index, accelerator.num_processes, run.trainable, run.checkpoint, run.start_step
    state = run.state  # the card of a resumed run covers the whole run: losses, evaluations, time, tokens
    losses, evaluations = list(state.get("losses", [])), list(state.get("evaluations", []))
    seconds_before, tokens = float(state.get("seconds", 0.0)), int(state.get("tokens", 0))
    if state:
        terms.load(state)
    elif config.target_heads_from:
        state = torch.load(heads_file(config.target_heads_from), weights_only=True, map_location="cpu")  # a GPU run's heads load on a laptop
        log(f"target-map heads from {config.target_heads_from}: {', '.join(terms.load_heads(state)) or 'none'}")
    model.train()
    if terms.needs_attentions:
        model.set_attn_implementation("eager")  # attention weights are needed; the saved folder keeps its own setting
    model, *heads, optimiser = accelerator.prepare(model, *terms.heads.values(), optimiser)
    terms.heads = dict(zip(terms.heads, heads))
    pad_id = processor.tokenizer.pad_token_id
    evaluation = _first_click_cases(config) if config.eval_every and accelerator.is_main_process else []
    streamed = None
    if config.stream:  # each process its own lanes of new phantoms; a resumed run skips past those it saw
        from training.sft.stream import StreamConfig, batches

        streamed = batches(StreamConfig(**config.stream), processor, config.profile, config.batch_size, pad_id, rank, world,
                           skip_phantoms=start_step * config.batch_size * config.gradient_accumulation)
    order = random.Random(config.seed)  # the same stream on every process: each takes its slice
    for _ in range(0 if streamed is not None else start_step * config.gradient_accumulation):  # a streamed run has no list to draw from
        order.choices(range(len(samples)), k=config.batch_size * world)

    mean = run.mean
    started = time.perf_counter()
    for step in range(start_step, config.steps):
        optimiser.zero_grad()
        total = 0.0
        for micro in range(config.gradient_accumulation):
            if streamed is not None:
                batch = next(streamed)
            else:
                picks = order.choices(range(len(samples)), k=config.batch_size * world)
                mine = picks[rank * config.batch_size:(rank + 1) * config.batch_size]
                batch = collate([encode(processor, samples[i]) for i in mine], pad_id)
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            targets = {key: batch.pop(key) for key in target_map.BATCH_KEYS}
            sync = accelerator.no_sync(model) if micro < config.gradient_accumulation - 1 else contextlib.nullcontext()
            with sync:
                out = model(**batch, output_hidden_states=terms.needs_hidden_states, output_attentions=terms.needs_attentions)
                total += out.loss.item() / config.gradient_accumulation
                loss = out.loss + terms.loss(out, batch, targets, share=1 / config.gradient_accumulation)
                accelerator.backward(loss / config.gradient_accumulation)
            tokens += int(batch["attention_mask"].sum())
        accelerator.clip_grad_norm_(trainable, 1.0)
        optimiser.step()
        schedule.step()
        losses.append(mean(total))
        terms.end_step(mean)
        if config.log_every and (step + 1) % config.log_every == 0 and accelerator.is_main_process:
            extra = terms.describe(config.log_every)
            log(f"step {step + 1}/{config.steps} loss {np.mean(losses[-config.log_every:]):.4f}{extra}")
        if evaluation and (step + 1) % config.eval_every == 0:
            head = terms.heads.get("target_map")
            probe = None if head is None else (accelerator.unwrap_model(head), config.target_map_layer)
            result = first_click_hits(accelerator.unwrap_model(model), processor, evaluation, config.profile, map_probe=probe)
            evaluations.append({"step": step + 1, **result})
            peak = f" target-map peak on target {result['map_peak_hit_rate']:.2f}" if probe else ""
            log(f"step {step + 1}: first-click hits {result['hit_rate']:.2f} parsable {result['parsable']:.2f}{peak}")
            model.train()
        if config.save_every and (step + 1) % config.save_every == 0:
            save(accelerator, model, processor, checkpoint, config, {
                "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(), "step": step + 1, "losses": losses,
                "evaluations": evaluations, "seconds": seconds_before + time.perf_counter() - started, "tokens": tokens,
                **terms.state(accelerator.unwrap_model)})
    seconds = seconds_before + time.perf_counter() - started
    all_tokens = int(accelerator.reduce(torch.tensor([tokens], device=accelerator.device), "sum").item())
    record = {
        "config": asdict(config),
        "samples": len(samples) if streamed is None else f"streamed: {config.steps * config.batch_size * config.gradient_accumulation * world} new first decisions",
        "processes": world,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "losses": losses,
        **terms.record(),
        "first_click_evaluations": evaluations,
        "seconds": seconds,
        "tokens_per_second": all_tokens / max(seconds, 1e-9),
    }
    save(accelerator, model, processor, Path(config.output), config, None, merge=True)
    if accelerator.is_main_process:
        (Path(config.output) / "training_card.json").write_text(json.dumps(record, indent=2) + "\n")
        if terms.heads:  # a later stage can start from them (target_heads_from: this folder)
            torch.save(terms.state(accelerator.unwrap_model), Path(config.output) / HEADS_FILE)
    run.end()
    return record


HEADS_FILE = "target_heads.pt"


def heads_file(folder: str | Path) -> Path:
    """The file holding a run's target-map heads: a finished run's ``target_heads.pt``, or a checkpoint's state."""
    folder = Path(folder)
    for name in (HEADS_FILE, "trainer_state.pt"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no target-map heads in {folder}: neither {HEADS_FILE} nor trainer_state.pt is there")


def _first_click_cases(config: SFTConfig) -> list:
    from training.data.sources import phantom_samples

    return list(phantom_samples(range(*config.eval_seeds)))


def first_click_hits(model, processor, samples, profile_name: str = "ibis-release", max_new_tokens: int = 160,
                     map_probe=None) -> dict:
    """Greedy first step on each sample: share parsable, share of clicks inside the named mask, per target,
    how many distinct points the clicks take.

    ``map_probe`` (target-map head, layer): also the share of present targets on
    which the head's highest image token is one the target covers, which tells
    whether the model sees the structure even when its click misses it.
    """
    import torch

    from napari_ibis.errors import ActionParseError
    from napari_ibis.policies.vlm import VLMPolicy
    from napari_ibis.protocol import parse
    from training.data import text

    profile = get_profile(profile_name)
    model.eval()
    policy = VLMPolicy.from_model(model, processor, max_new_tokens=max_new_tokens)  # greedy, as the widget's agent
    hits, parsed, per_target, peaks, present, points = 0, 0, {}, 0, 0, set()
    rng = np.random.default_rng(0)
    for sample in samples:
        rgb = to_rgb8(sample.image)
        turn = Turn(profile.observation(rgb, None), profile.user_text(text.query(sample.target, sample.modality, rng), first=True))
        inputs = policy.encode(profile.messages([turn])).to(model.device)
        if map_probe is not None and sample.mask.any():  # where the head looks, from the prompt's hidden states
            with torch.inference_mode():
                states = model(**inputs, output_hidden_states=True).hidden_states
            peaks += _map_peak_on_target(states, inputs, map_probe, sample.mask, processor, model)
            present += 1
        reply = policy.generate(inputs)
        hit = False
        try:
            response = parse(reply, profile)
            parsed += 1
            if response.actions:
                points.add(response.actions[0])
                row, col = profile.to_pixel(response.actions[0], *sample.mask.shape)
                hit = bool(sample.mask[row, col]) if sample.mask.any() else False
            elif response.not_present:
                hit = not sample.mask.any()
        except ActionParseError:
            pass
        hits += hit
        done, total = per_target.get(sample.target, (0, 0))
        per_target[sample.target] = (done + hit, total + 1)
    count = max(len(samples), 1)
    return {"cases": len(samples), "hit_rate": hits / count, "parsable": parsed / count,
            "per_target": {k: f"{a}/{b}" for k, (a, b) in sorted(per_target.items())},
            "distinct_clicks": len(points),  # one or two: the model ignores the image
            **({"map_peak_hit_rate": peaks / max(present, 1)} if map_probe is not None else {})}


def _map_peak_on_target(prompt_states, inputs, map_probe, mask, processor, model) -> bool:
    import torch

    head, layer = map_probe
    with torch.inference_mode():
        hidden = prompt_states[layer][0]
        logits = head(hidden[inputs["input_ids"][0] == model.config.image_token_id]).squeeze(-1)
    coverage = target_map.token_coverage(mask, inputs["image_grid_thw"][0], processor.image_processor.merge_size)
    return bool(coverage[int(logits.argmax())] > 0)


def render_all(trajectories: Iterable[Trajectory], profile: str) -> list[RenderedSample]:
    return [sample for t in trajectories for sample in render(t, profile)]


def replayed(config: SFTConfig) -> list[RenderedSample]:
    """The samples of ``replay_data`` to mix into this stage's data (none without it).

    Stage 2 of the default agent learns whole trajectories from a few hundred
    phantoms; alone, it was measured to lose much of the first-click grounding that
    stage 1 had learnt from 36,287 first decisions (docs/TRAINING.md). Mixing some of
    stage 1's samples back in is the usual cure for such forgetting.
    """
    from training.data.storage import read_dataset

    if not config.replay_data:
        return []
    return read_dataset(config.replay_data, config.replay_samples or None, config.seed)


def _stream_corpus(config: SFTConfig, count: int = 4000) -> list[RenderedSample]:
    """The first ``count`` streamed samples: the texts a new model's tokenizer is trained on."""
    import itertools

    from training.sft.stream import StreamConfig, rendered_first_moves

    return list(itertools.islice(rendered_first_moves(StreamConfig(**config.stream), config.profile), count))


def main(argv=None) -> int:
    """Supervised fine-tuning on chat samples, from a model folder (or a new small one) to a model folder.

    ``napari-ibis sft CONFIG`` (or ``python -m training.sft.train CONFIG``).

    Keys: those of :class:`SFTConfig`. ``data`` names a dataset folder made by
    ``napari-ibis data build`` (or ``data dagger``), or a list of them; without it one is built first in ``OUTPUT/data``
    from ``extra`` (the keys of :func:`training.data.storage.build`). ``replay_data``
    adds samples of another folder (:func:`replayed`). ``stream`` instead makes first
    decisions of new phantoms while training (:mod:`training.sft.stream`; a GPU's stage).
    """
    from training.config import config_parser, load_config
    from training.data.storage import build_dataset, read_dataset

    args = config_parser("napari-ibis sft", SFTConfig, main.__doc__.splitlines()[0]).parse_args(argv)
    config = load_config(SFTConfig, args.config, args.set)
    if config.stream:
        samples = []
    else:
        folders = [config.data] if isinstance(config.data, str) else list(config.data)
        folders = [f for f in folders if f] or [build_dataset(
            {"seed": config.seed, **config.extra, "output": str(Path(config.output) / "data"), "profile": config.profile})]
        samples = [sample for folder in folders for sample in read_dataset(folder)] + replayed(config)
    if config.tiny and not Path(config.model).exists():
        from training.sft.tiny import TinyConfig, build_tiny_vlm

        corpus_samples = samples or _stream_corpus(config)
        corpus = [item["text"] for s in corpus_samples for m in s.messages for item in m["content"] if item["type"] == "text"]
        build_tiny_vlm(config.model, corpus, TinyConfig(**config.tiny), seed=config.seed)
    record = train(config, samples)
    print(f"done: {config.output} ({record['tokens_per_second']:.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
