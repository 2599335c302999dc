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

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from napari_ibis.overlay import to_rgb8
from napari_ibis.protocol import Response, Turn, get_profile

from .trajectories import Trajectory


@dataclass
class RenderedSample:
    """Chat messages (images as arrays) and which assistant turns are trained."""

    messages: list[dict]
    trained: list[bool]  # one flag per assistant message


def _response(move, trajectory: Trajectory, profile) -> Response:
    height, width = trajectory.sample.mask.shape
    if move.keyword == "not_present":
        return Response(thought=move.thought, terminate=True, not_present=True, answer=trajectory.answer)
    if move.keyword == "terminate":
        return Response(thought=move.thought, terminate=True, answer=trajectory.answer)
    if move.keyword == "undo":
        return Response(thought=move.thought, undo=True)
    click = move.click
    action = profile.action_at(click.row, click.col, click.positive, height, width, target=trajectory.sample.target)
    return Response(thought=move.thought, actions=(action,))


def render(trajectory: Trajectory, profile_name: str = "ibis-release") -> list[RenderedSample]:
    """Chat samples for one trajectory under a profile (see module docstring)."""
    profile = get_profile(profile_name)
    rgb = to_rgb8(trajectory.sample.image)
    turns: list[Turn] = []
    flags: list[bool] = []
    first = trajectory.init_mask is None
    for move in trajectory.moves:
        if move.keyword == "undo" and profile.name == "ibis-release":
            return []  # the release grammar has no undo: such trajectories are paper-only
        observation = profile.observation(rgb, move.mask_before)
        text = profile.user_text(trajectory.query, first=first and not move.mask_before.any() and not turns)
        turns.append(Turn(observation, text, profile.format(_response(move, trajectory, profile))))
        flags.append(not move.wrong)
    if profile.use_history:
        return [RenderedSample(_with_replies(profile, turns), flags)]
    return [RenderedSample(_with_replies(profile, [turn]), [flag]) for turn, flag in zip(turns, flags) if flag]


def _with_replies(profile, turns: list[Turn]) -> list[dict]:
    messages = profile.messages(turns, use_history=True)
    messages.append({"role": "assistant", "content": [{"type": "text", "text": turns[-1].reply}]})
    return messages


def _as_pil(messages: list[dict]) -> list[dict]:
    from PIL import Image

    out = []
    for message in messages:
        content = [
            {"type": "image", "image": Image.fromarray(item["image"])} if item["type"] == "image" else item
            for item in message["content"]
        ]
        out.append({"role": message["role"], "content": content})
    return out


def encode(processor, sample: RenderedSample) -> dict:
    """Token ids, labels (-100 outside trained assistant turns), pixel values and grids."""
    messages = _as_pil(sample.messages)
    full = processor.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
    ids = full["input_ids"][0]
    labels = np.full(ids.shape[0], -100, dtype=np.int64)
    assistant_indices = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for flag, index in zip(sample.trained, assistant_indices):
        start = _length(processor, messages[:index], generation_prompt=True)
        end = _length(processor, messages[: index + 1], generation_prompt=False) - 1  # drop the trailing newline
        if flag:
            labels[start:end] = ids[start:end].numpy()
    full["labels"] = labels
    return full


def _length(processor, messages: list[dict], generation_prompt: bool) -> int:
    encoded = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_tensors="pt", add_generation_prompt=generation_prompt
    )
    return int(encoded["input_ids"].shape[1])


@dataclass
class SFTConfig:
    """Supervised fine-tuning settings (``napari-ibis sft CONFIG`` reads these keys)."""

    model: str  # folder of the model to start from
    output: str  # folder to write
    data: str = ""  # a JSONL of rendered samples written by `napari-ibis data build`, or empty for phantoms
    profile: str = "ibis-release"
    steps: int = 100
    learning_rate: float = 5e-4
    warmup_fraction: float = 0.1
    gradient_accumulation: int = 1
    seed: int = 0
    save_every: int = 0  # 0: only at the end
    resume: bool = False
    log_every: int = 10
    extra: dict = field(default_factory=dict)


def train(config: SFTConfig, samples: list[RenderedSample], log=print) -> dict:
    """Full fine-tuning of a (small) VLM folder on rendered samples; returns the loss log."""
    import torch

    from napari_ibis.policies.vlm import MODEL_CLASSES, inspect_model_folder

    import transformers

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    source = Path(config.output) / "checkpoint" if config.resume and (Path(config.output) / "checkpoint").is_dir() else Path(config.model)
    model_type = inspect_model_folder(source)
    processor = transformers.AutoProcessor.from_pretrained(source, local_files_only=True)
    model = getattr(transformers, MODEL_CLASSES[model_type]).from_pretrained(source, local_files_only=True, dtype=torch.float32)
    model.train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    warmup = max(1, int(config.steps * config.warmup_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, config.steps) / config.steps))
    )
    state_path = Path(config.output) / "checkpoint" / "trainer_state.pt"
    start_step = 0
    if config.resume and state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        start_step = int(state["step"])
    encoded = [encode(processor, s) for s in samples]
    losses: list[float] = []
    started = time.perf_counter()
    tokens = 0
    for step in range(start_step, config.steps):
        optimiser.zero_grad()
        total = 0.0
        for _ in range(config.gradient_accumulation):
            batch = encoded[rng.randrange(len(encoded))]
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            labels = torch.as_tensor(batch["labels"])[None]
            out = model(**inputs, labels=labels)
            (out.loss / config.gradient_accumulation).backward()
            total += out.loss.item() / config.gradient_accumulation
            tokens += int(inputs["input_ids"].shape[1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        losses.append(total)
        if config.log_every and (step + 1) % config.log_every == 0:
            log(f"step {step + 1}/{config.steps} loss {np.mean(losses[-config.log_every:]):.4f}")
        if config.save_every and (step + 1) % config.save_every == 0:
            _save(model, processor, Path(config.output) / "checkpoint", optimiser, schedule, step + 1)
    seconds = time.perf_counter() - started
    record = {
        "config": asdict(config),
        "samples": len(samples),
        "losses": losses,
        "seconds": seconds,
        "tokens_per_second": tokens / max(seconds, 1e-9),
    }
    _save(model, processor, Path(config.output), None, None, config.steps)
    (Path(config.output) / "training_card.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def _save(model, processor, folder: Path, optimiser, schedule, step: int) -> None:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    if optimiser is not None:
        torch.save({"optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(), "step": step}, folder / "trainer_state.pt")


def render_all(trajectories: Iterable[Trajectory], profile: str) -> list[RenderedSample]:
    return [sample for t in trajectories for sample in render(t, profile)]


def main(argv=None) -> int:
    """``napari-ibis sft CONFIG`` (or ``python -m training.sft CONFIG``): SFT -> model folder.

    Keys: those of :class:`SFTConfig`. ``data`` names a dataset folder made by
    ``napari-ibis data build``; without it one is built first in ``OUTPUT/data``
    from ``extra`` (the keys of :func:`training.storage.build`).
    """
    import argparse

    from .config_file import read_config
    from .storage import build, read_dataset

    parser = argparse.ArgumentParser(prog="napari-ibis sft")
    parser.add_argument("config")
    args = parser.parse_args(argv)
    config = SFTConfig(**read_config(args.config))
    data = config.data
    if not data:
        data = build({"seed": config.seed, **config.extra, "output": str(Path(config.output) / "data"), "profile": config.profile})
    record = train(config, read_dataset(data))
    print(f"done: {config.output} ({record['tokens_per_second']:.0f} tokens/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
