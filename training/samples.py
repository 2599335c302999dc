"""The chat-sample format shared by data building, SFT and RL (imports nothing else of training).

A trajectory is rendered per profile into :class:`RenderedSample` objects: with
history off (``ibis-release``) every move is its own sample (system + one user
turn + the answer), with history on (``paper``) the whole trajectory is one
multi-turn, multi-image sample. ``trained`` flags which assistant turns carry the
loss (not the moves flagged wrong, which stay as self-correction context).
Images stay numpy arrays; :func:`pil_messages` converts them where a processor
wants PIL images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_ibis.clicker import error_regions
from napari_ibis.overlay import to_rgb8
from napari_ibis.policies.base import pil_messages
from napari_ibis.protocol import Response, Turn, get_profile

__all__ = ["RenderedSample", "pil_messages", "render", "response", "with_replies", "focus_region"]


@dataclass
class RenderedSample:
    """Chat messages (images as arrays) and which assistant turns are trained."""

    messages: list[dict]
    trained: list[bool]  # one flag per assistant message
    # where the trained decision should look, for the target-map loss: the decision's focus region
    # (focus_region) in one-decision samples, the named structure in multi-turn ones
    target_mask: np.ndarray | None = None


def response(move, trajectory, profile) -> Response:
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


def render(trajectory, profile_name: str = "ibis-release") -> list[RenderedSample]:
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
        turns.append(Turn(observation, text, profile.format(response(move, trajectory, profile))))
        flags.append(not move.wrong)
    truth = trajectory.sample.mask
    if profile.use_history:
        return [RenderedSample(with_replies(profile, turns), flags, truth)]
    return [RenderedSample(with_replies(profile, [turn]), [flag], focus_region(truth, move))
            for turn, flag, move in zip(turns, flags, trajectory.moves) if flag]


def with_replies(profile, turns: list[Turn]) -> list[dict]:
    messages = profile.messages(turns, use_history=True)
    messages.append({"role": "assistant", "content": [{"type": "text", "text": turns[-1].reply}]})
    return messages


def focus_region(truth: np.ndarray, move) -> np.ndarray:
    """Where one decision should look: the error region a refinement click goes into.

    For a click on a non-empty mask, the connected part of the error it lies in (what
    the mask missed for a positive click, what it wrongly holds for a negative one);
    for a first click, a keyword action or a click outside any error, the whole
    target. The target-map terms of :mod:`training.sft.target_map` train on it, so the
    head that learnt to find the named structure learns to find what is wrong.
    """
    truth = np.asarray(truth, dtype=bool)
    if move.click is None or not move.mask_before.any():
        return truth
    from scipy.ndimage import label

    missed, extra = error_regions(truth, move.mask_before)
    parts, _ = label(missed if move.click.positive else extra)
    part = parts[move.click.row, move.click.col]
    return parts == part if part else truth
