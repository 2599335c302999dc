"""Rollouts: the model being trained drives the same Session and segmenters as the widget.

:class:`SamplingPolicy` wraps a model + processor as a :class:`Policy` that
samples (temperature, top-p) and keeps every request and reply. :func:`rollout`
runs a :class:`napari_ibis.session.Session` with it and returns one
:class:`Rollout`: each turn's messages, reply, the mask before and after it and
the clicks it added, so that rewards and log-probabilities can be computed
afterwards. Two modes:

* ``trajectory`` (paper): a fresh session from an empty mask, up to ``max_turns``;
* ``decision`` (the release's RL data): one turn from a given state (``init_mask``):
  a simulated trajectory's, as verl's single-decision samples, or one the model
  reached itself (``GRPOConfig.state_source``). With :class:`FirstTurnThen` the
  episode goes on after that turn with another policy (the current model, greedy),
  and :func:`first_turn` keeps only the decision for training.

:func:`episode_samples` turns a rollout into chat samples whose assistant
tokens (and only those) carry the loss: with history, one multi-turn sample;
without, one sample per turn.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from napari_ibis.errors import ActionParseError
from napari_ibis.metrics import iou
from napari_ibis.policies.base import Policy, PolicyRequest, TextSink
from napari_ibis.protocol import Profile, get_profile
from napari_ibis.segmenters.base import Segmenter
from napari_ibis.session import Session
from training.data.sources import Sample
from training.samples import RenderedSample


@dataclass
class RolloutTurn:
    messages: list[dict]  # what the model was shown (images as arrays)
    reply: str
    mask_before: np.ndarray
    mask_after: np.ndarray | None = None
    clicks: list[tuple[int, int, bool]] = field(default_factory=list)  # (row, col, positive) pixels added


@dataclass
class Rollout:
    sample: Sample
    query: str
    profile: str
    turns: list[RolloutTurn]
    stop_reason: str
    final_mask: np.ndarray
    said_absent: bool
    seconds: float
    placed: np.ndarray | None = None  # the mask the policy placed before its first turn, if it did

    @property
    def final_iou(self) -> float:
        return iou(self.sample.mask, self.final_mask)


def SamplingPolicy(model, processor, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 160):
    """The model being trained as an agent (replies sampled with ``temperature`` and ``top_p``;
    greedy at 0), generating through the same :meth:`VLMPolicy.generate` as the widget's agent."""
    from napari_ibis.policies.vlm import VLMPolicy

    return VLMPolicy.from_model(model, processor, temperature, top_p, max_new_tokens)


class _Recorder(Policy):
    """Any policy, with each request and reply kept."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.name = policy.name
        self.turns: list[tuple[PolicyRequest, str]] = []

    def identity(self) -> dict:
        return self.policy.identity()

    def place(self, image: np.ndarray, query: str, volume=None, cancel=None):
        return self.policy.place(image, query, volume, cancel)

    def respond(self, request: PolicyRequest, on_text: TextSink | None = None, cancel: threading.Event | None = None) -> str:
        reply = self.policy.respond(request, on_text, cancel)
        self.turns.append((request, reply))
        return reply


class FirstTurnThen(Policy):
    """``first`` answers the first request of an episode, ``rest`` every later one."""

    name = "first-turn-then"

    def __init__(self, first: Policy, rest: Policy) -> None:
        self.first, self.rest, self.calls = first, rest, 0

    def identity(self) -> dict:
        return {"name": self.name, "first": self.first.identity(), "rest": self.rest.identity()}

    def respond(self, request: PolicyRequest, on_text: TextSink | None = None, cancel: threading.Event | None = None) -> str:
        policy = self.first if self.calls == 0 else self.rest
        self.calls += 1
        return policy.respond(request, on_text, cancel)


def first_turn(episode: Rollout) -> Rollout:
    """The episode cut to its first turn (what a decision-mode GRPO step trains)."""
    return dataclasses.replace(episode, turns=episode.turns[:1])


def _clicks(reply: str, profile: Profile, shape: tuple[int, int]) -> list[tuple[int, int, bool]]:
    try:
        response = profile.parse(reply)
    except ActionParseError:
        return []
    return [(*profile.to_pixel(a, *shape), a.positive) for a in response.actions]


def rollout(policy: Policy, sample: Sample, query: str, segmenter: Segmenter, profile: str = "ibis-release",
            max_turns: int = 6, init_mask: np.ndarray | None = None, volume=None) -> Rollout:
    """One episode of ``policy`` on ``sample`` through a real Session (see module docstring);
    ``volume``: the :class:`~napari_ibis.policies.base.VolumeSlice` the sample's slice is from."""
    profile_obj = get_profile(profile)
    started = time.perf_counter()
    recorder = _Recorder(policy)
    session = Session(sample.image, query, recorder, segmenter, profile=profile_obj, max_steps=max_turns, init_mask=init_mask,
                      volume=volume)
    stop = None
    for event in session.run():
        stop = event
    turns = [RolloutTurn(request.messages, reply, request.mask.copy()) for request, reply in recorder.turns]
    for index, turn in enumerate(turns):
        turn.mask_after = turns[index + 1].mask_before if index + 1 < len(turns) else session.mask.copy()
        turn.clicks = _clicks(turn.reply, profile_obj, sample.mask.shape)
    said_absent = bool(session.steps) and session.current.not_present
    placed = next((s.mask.copy() for s in session.steps if s.kind == "placed"), None)
    return Rollout(sample, query, profile_obj.name, turns, stop.reason if stop else "none", session.mask.copy(),
                   said_absent, time.perf_counter() - started, placed)


def episode_samples(episode: Rollout) -> list[RenderedSample]:
    """Chat samples of a rollout in which exactly the model's own replies are trained."""
    profile = get_profile(episode.profile)

    def with_reply(turn: RolloutTurn) -> list[dict]:
        return [*turn.messages, {"role": "assistant", "content": [{"type": "text", "text": turn.reply}]}]

    if profile.use_history and episode.turns:
        messages = with_reply(episode.turns[-1])
        return [RenderedSample(messages, [True] * sum(m["role"] == "assistant" for m in messages))]
    return [RenderedSample(with_reply(turn), [True]) for turn in episode.turns]
