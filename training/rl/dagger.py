"""Expert decisions on the states a trained model reaches itself (DAgger).

The click simulator's trajectories show the model only the simulator's own masks,
which get better with every click. At evaluation the model meets its *own* masks:
a heart where only one chamber is green, a liver half covered after a click that
changed nothing. No sample ever showed it what to do there: the v6 agent clicked the
same point again in a third of the held-out sessions, and only 10% of its clicks on
a mask went into what the mask got wrong (docs/TRAINING.md). DAgger (Ross, Gordon
and Bagnell, 2011) closes that gap: run the model, and label every state it visits
with what the expert would do there.

Here the model runs greedily through the real :class:`~napari_ibis.session.Session`
(:func:`training.rl.rollout.rollout`), and the expert is the click simulator: at
each visited mask, ``Terminate`` once the IoU reaches ``stop_iou``, otherwise the
click into the largest error region (:func:`napari_ibis.clicker.next_click`), with
the same synthesised reasoning as the trajectories. For an absent target the
expert answers "not present" on the empty mask. Each labelled state is one
one-decision sample of the release's protocol, written to a dataset folder that
SFT mixes with the trajectories (``data:`` may list several folders).

    napari-ibis data dagger training/configs/data-dagger-v6.yaml
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from napari_ibis.clicker import next_click
from napari_ibis.metrics import iou
from napari_ibis.overlay import to_rgb8
from napari_ibis.protocol import Turn, get_profile
from napari_ibis.segmenters.base import Click
from training.config import check_choices
from training.data import text
from training.data.sources import Sample
from training.data.trajectories import EXPERT_STOP_IOU, Move, Trajectory
from training.samples import focus_region


def expert_move(sample: Sample, mask: np.ndarray, rng: np.random.Generator, stop_iou: float = EXPERT_STOP_IOU) -> Move | None:
    """What the click simulator does on ``mask``; ``None`` where it has no sensible move.

    An absent target gets "not present" on an empty mask and nothing on a non-empty
    one (no simulated trajectory starts from a wrong mask of an absent structure).
    """
    truth, mask = sample.mask.astype(bool), np.asarray(mask, dtype=bool)
    if not truth.any():
        if mask.any():
            return None
        return Move(mask, text.absent_reasoning(sample.target, sample.modality, rng), keyword="not_present")
    if iou(truth, mask) >= stop_iou:
        return Move(mask, text.stop_reasoning(sample.target, rng), keyword="terminate")
    found = next_click(truth, mask)
    if found is None:
        return Move(mask, text.stop_reasoning(sample.target, rng), keyword="terminate")
    row, col, positive = found
    thought = text.reasoning(sample.target, sample.modality, mask, row, col, positive, rng)
    return Move(mask, thought, Click(row, col, positive, sample.target, "simulator"))


def decision_sample(sample: Sample, query: str, move: Move, first: bool, answer: str, profile_name: str = "ibis-release"):
    """One trained decision: the observation of ``move.mask_before``, the prompt the session
    would send (``first``: the session's first turn on an empty mask) and the expert's reply
    (``answer``: the final answer a Terminate or "not present" carries)."""
    from training.samples import RenderedSample, response, with_replies

    profile = get_profile(profile_name)
    if profile.use_history:
        raise ValueError(f"profile {profile_name!r} shows the model its history; DAgger samples are one decision each")
    trajectory = Trajectory(sample, query, "dagger", [move], answer=answer)
    observation = profile.observation(to_rgb8(sample.image), move.mask_before)
    reply = profile.format(response(move, trajectory, profile))
    turn = Turn(observation, profile.user_text(query, first=first), reply)
    return RenderedSample(with_replies(profile, [turn]), [True], focus_region(sample.mask, move))


def visited_states(episode) -> list[tuple[np.ndarray, bool]]:
    """(mask, first turn?) of each distinct state a rollout asked the model about, in order."""
    seen, states = set(), []
    for index, turn in enumerate(episode.turns):
        mask = np.asarray(turn.mask_before, dtype=bool)
        key = np.packbits(mask).tobytes()
        if key not in seen:
            seen.add(key)
            states.append((mask, index == 0))
    return states


@dataclass
class DaggerConfig:
    """A model's own states labelled by the click simulator (``napari-ibis data dagger CONFIG`` reads these keys)."""

    output: str  # the dataset folder to write (resumable)
    model: str  # the model folder that is rolled out
    profile: Literal["ibis-release", "paper"] = "ibis-release"
    segmenter: str = "classical"  # litemedsam | classical | sam2:CHECKPOINT
    seeds: list = field(default_factory=lambda: [0, 100])  # phantom seeds, [first, stop)
    real: list = field(default_factory=list)  # "nuclei" and/or "aal": their training side
    absent_probability: float = 0.1
    max_steps: int = 8  # as the evaluation
    stop_iou: float = EXPERT_STOP_IOU  # where the expert answers
    seed: int = 0

    def __post_init__(self) -> None:
        check_choices(self)
        from napari_ibis.policies import check_model
        from napari_ibis.segmenters import check_spec

        check_spec(self.segmenter)
        check_model(self.model)
        if len(self.seeds) != 2 or self.seeds[0] >= self.seeds[1]:
            raise ValueError(f"seeds must be [first, stop) with first < stop, not {self.seeds}")


def build_dagger_dataset(config: dict, progress=None) -> Path:
    """Roll the model out on each training sample and write the expert's decisions; resumable.

    ``config``: the keys of :class:`DaggerConfig` (checked first, one line for a mistake).
    """
    from napari_ibis.policies.vlm import VLMPolicy
    from napari_ibis.segmenters import build_segmenter
    from training.config import config_values
    from training.data.storage import append_samples, sample_rng, source_samples, written_ids
    from training.rl.rollout import rollout

    config = config_values(DaggerConfig, config, "data dagger config")
    folder = Path(config["output"])
    profile = config["profile"]
    policy = VLMPolicy(config["model"], max_new_tokens=200)
    segmenter = build_segmenter(config["segmenter"])
    samples = source_samples(config)
    seed, stop_iou, max_steps = config["seed"], config["stop_iou"], config["max_steps"]
    done = written_ids(folder)
    sources = {key.rsplit(":", 1)[0] for key in done}

    def items():
        for sample in (progress(samples) if progress else samples):
            sample_id = f"{sample.source}:dagger"
            if sample_id in sources:
                continue  # labelled by an earlier run
            rng = sample_rng(seed, sample)
            query = text.query(sample.target, sample.modality, rng)
            answer = text.answer(sample.target, sample.modality, rng, present=bool(sample.mask.any()))
            episode = rollout(policy, sample, query, segmenter, profile, max_steps)
            meta = {"kind": "dagger", "target": sample.target, "modality": sample.modality, "source": sample.source,
                    "group": sample.group, "profile": profile, "model": str(config["model"]),
                    "model_final_iou": float(episode.final_iou) if sample.mask.any() else None,
                    "model_stop": episode.stop_reason}
            for index, (mask, first) in enumerate(visited_states(episode)):
                move = expert_move(sample, mask, rng, stop_iou)
                if move is not None:
                    yield f"{sample_id}:{index}", decision_sample(sample, query, move, first, answer, profile), {
                        **meta, "state_iou": float(iou(sample.mask, mask)) if sample.mask.any() else None,
                        "expert": move.keyword or ("positive" if move.click.positive else "negative")}

    append_samples(folder, items(), done)
    (folder / "complete").write_text("all samples of this configuration are in samples.jsonl\n")
    return folder
