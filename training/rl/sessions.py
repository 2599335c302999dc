"""Training samples from the sessions people kept (:mod:`napari_ibis.inbox`).

The accepted mask is the ground truth of its slice. Each state of a kept session
becomes one decision sample of the release's protocol, in the format of every other
dataset folder (:mod:`training.data.storage`), so SFT mixes it with the rest:

* where the person clicked, that click is the expert's action at that state;
* every other state the agent reached (before its clicks and its answer, before a
  brush edit) is labelled by the click simulator against the accepted mask, as
  DAgger does (:func:`training.rl.dagger.expert_move`);
* a step the person rejected or undid is a self-reflection sample: on the wrong mask
  it made, the simulator's repair (the release grammar has no undo);
* the accepted mask itself: the answer (or "not present" when the person accepted that).

    napari-ibis data from-sessions INBOX OUT
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_ibis.errors import InputError
from napari_ibis.inbox import KeptSession, TrainingInbox
from napari_ibis.metrics import iou
from napari_ibis.segmenters.base import Click
from training.data import text
from training.data.sources import Sample
from training.data.trajectories import EXPERT_STOP_IOU, Move

DEFAULT_MODALITY = "medical"


def sample_of(kept: KeptSession) -> Sample:
    """The kept slice with its accepted mask as the ground truth (empty when "not present" was accepted)."""
    mask = np.zeros_like(kept.accepted) if kept.not_present else kept.accepted
    return Sample(kept.rgb, mask, kept.target, kept.modality or DEFAULT_MODALITY, f"session:{kept.id}",
                  f"session:{kept.id}")


def decisions(kept: KeptSession, rng: np.random.Generator, stop_iou: float = EXPERT_STOP_IOU) -> list[tuple[str, Move]]:
    """(kind, expert move) for each distinct state of a kept session, the person's clicks first."""
    from training.rl.dagger import expert_move

    sample = sample_of(kept)
    chosen: dict[bytes, tuple[str, Move]] = {}

    def key(mask: np.ndarray) -> bytes:
        return np.packbits(mask).tobytes()

    for step in kept.steps:  # the person's clicks: what an expert did at that state
        if step.source == "user" and step.record["kind"] == "click" and step.record["clicks"]:
            click = step.record["clicks"][0]
            row, col, positive = click["row"], click["col"], click["positive"]
            thought = text.reasoning(sample.target, sample.modality, step.before, row, col, positive, rng)
            chosen.setdefault(key(step.before), ("person", Move(step.before, thought, Click(
                row, col, positive, sample.target, "user"))))
    states = [("agent_state", step.before) for step in kept.steps if step.source in ("agent", "user")]
    states += [("self_reflection", step.after) for step in kept.steps
               if step.source == "agent" and step.status != "active" and step.record["kind"] == "click"]
    states.append(("answer", sample.mask))
    for kind, mask in states:
        if key(mask) in chosen:
            continue
        move = expert_move(sample, mask, rng, stop_iou)
        if move is not None:
            chosen[key(mask)] = (kind, move)
    return list(chosen.values())


def from_sessions(inbox: str | Path, out: str | Path, profile: str = "ibis-release", seed: int = 0,
                  stop_iou: float = EXPERT_STOP_IOU, progress=None) -> Path:
    """Write the decision samples of every session in ``inbox`` to the dataset folder ``out`` (resumable)."""
    from training.data.storage import append_samples, sample_rng, written_ids
    from training.rl.dagger import decision_sample

    folder = Path(out)
    sessions = [kept.at_square_pixels() for kept in TrainingInbox(inbox).sessions()]
    if not sessions:
        raise InputError(f"{inbox}: no kept sessions (turn on 'keep for training' or use --keep-for-training)")
    done = written_ids(folder)

    def items():
        for kept in (progress(sessions) if progress else sessions):
            sample = sample_of(kept)
            rng = sample_rng(seed, sample)
            answer = text.answer(sample.target, sample.modality, rng, present=bool(sample.mask.any()))
            first_state = kept.meta["initial_area"] == 0
            meta = {"target": sample.target, "modality": sample.modality, "source": sample.source,
                    "group": sample.group, "profile": profile, "query": kept.query}
            for index, (kind, move) in enumerate(decisions(kept, rng, stop_iou)):
                first = first_state and not move.mask_before.any()
                rendered = decision_sample(sample, kept.query, move, first, answer, profile)
                yield f"{sample.source}:{index}", rendered, {
                    **meta, "kind": f"session_{kind}",
                    "state_iou": float(iou(sample.mask, move.mask_before)) if sample.mask.any() else None,
                    "expert": move.keyword or ("positive" if move.click.positive else "negative")}

    append_samples(folder, items(), done)
    return folder
