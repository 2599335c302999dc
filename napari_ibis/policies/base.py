"""The policy protocol: given the conversation so far, write the next model turn.

Every policy returns raw text in its profile's grammar; the session parses it
with the same parser whatever the policy (so an oracle or a remote server is
held to the same rules as a local model). Streaming goes through ``on_text``,
cancellation through ``cancel`` (a ``threading.Event``): a policy checks it at
least once per generated token and raises :class:`~napari_ibis.errors.Cancelled`.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..protocol import Profile, Response
from ..segmenters.base import Click

TextSink = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class VolumeSlice:
    """The volume a slice was cut from, for a policy that looks through it (the pointer agent
    registers a brain atlas onto a brain volume): the 3-D array in the display convention
    (:mod:`napari_ibis.geometry`), its spacing in mm along those axes, the plane the slice is
    seen in (:data:`~napari_ibis.geometry.VIEWS`) and its index across that plane."""

    volume: np.ndarray
    spacing: tuple[float, float, float]
    view: str = "axial"
    index: int = 0

    def at(self, index: int) -> VolumeSlice:
        """The same volume, slice ``index``."""
        return VolumeSlice(self.volume, self.spacing, self.view, int(index))


def volume_slice(volume, spacing, axes: tuple[int, ...] = (), index: int = 0) -> VolumeSlice | None:
    """A :class:`VolumeSlice` of a grey 3-D ``volume`` (display order) whose ``spacing`` is known,
    seen along ``axes`` (view order, () for axial); None where there is no such volume (a 2-D
    image, RGB, no spacing)."""
    from ..geometry import VIEWS

    views = {value: name for name, value in VIEWS.items()}
    if volume is None or np.ndim(volume) != 3 or spacing is None or len(tuple(spacing)) != 3 or tuple(axes) not in views:
        return None
    return VolumeSlice(volume, tuple(float(s) for s in spacing), views[tuple(axes)], int(index))


@dataclass
class PolicyRequest:
    """What a policy may look at to decide a turn."""

    profile: Profile
    query: str
    image: np.ndarray
    mask: np.ndarray | None
    clicks: tuple[Click, ...]
    step: int
    messages: list[dict[str, Any]] = field(default_factory=list)
    temperature: float = 0.0  # 0: greedy (the release's decoding); above 0: sample, to ask for another reply
    seed: int = 0  # the sampling seed, so that a sampled reply can be reproduced
    volume: VolumeSlice | None = None  # the volume the slice is from, where the caller has one


@dataclass
class Placement:
    """A mask a policy places before its first click, and why (the pointer agent places an
    atlas region, whose borders are not edges to click along, where its atlas holds it)."""

    mask: np.ndarray
    thought: str


@dataclass
class Located:
    """How clearly a policy sees the named structure on one slice, before any click: ``score``
    ranks slices (the pointer agent: its map's probability summed over the most likely
    region, so a larger and clearer cross-section scores higher), ``peak`` is its confidence at
    the likeliest pixel and ``present`` whether that reaches the policy's presence threshold.
    ``basis``: what the answer rests on where it is not a confidence the policy measured (the
    pointer agent's brain atlas registered onto the volume), "" otherwise."""

    score: float
    peak: float
    present: bool
    basis: str = ""


class Policy(ABC):
    name: str = "policy"

    def identity(self) -> dict:
        """What a trajectory file records about this policy (never secrets)."""
        return {"name": self.name}

    def place(self, image: np.ndarray, query: str, volume: VolumeSlice | None = None,
              cancel: threading.Event | None = None) -> Placement | None:
        """A mask to start a fresh run from, before the first turn; None (the default): the
        run starts from nothing. The session asks once, on a run with no steps and no mask.
        ``volume``: the volume ``image`` was cut from, where there is one; ``cancel``: Stop
        (:class:`~napari_ibis.errors.Cancelled` where the work is long)."""
        return None

    def locate(self, image: np.ndarray, query: str, volume: VolumeSlice | None = None,
               cancel: threading.Event | None = None) -> Located | None:
        """How clearly the structure ``query`` names shows on ``image`` (the slice as the agent
        sees it), to choose the slice of a volume to start on; None (the default): this policy
        cannot say without running a session (a language model answers in words)."""
        return None

    def region_through(self, image: np.ndarray, query: str, volume: VolumeSlice | None):
        """What the policy knows of ``query``'s structure on every slice of ``volume`` (``image``:
        its slice as the agent sees it), as a callable index -> bool mask that propagation takes
        instead of the segmenter's reading; None (the default): nothing, the segmenter follows."""
        return None

    @abstractmethod
    def respond(
        self,
        request: PolicyRequest,
        on_text: TextSink | None = None,
        cancel: threading.Event | None = None,
    ) -> str:
        """The next turn as raw text (``<think>…</think><action>…</action>…``)."""


class DecidingPolicy(Policy):
    """A policy that decides each turn itself (the oracle, the pointer agent) and writes the
    decision in the profile's grammar, so that the session parses it like a model's text."""

    @abstractmethod
    def decide(self, request: PolicyRequest) -> Response:
        """The next turn as a parsed response."""

    def respond(self, request: PolicyRequest, on_text: TextSink | None = None, cancel: threading.Event | None = None) -> str:
        from ..errors import Cancelled

        if cancel is not None and cancel.is_set():
            raise Cancelled("stopped")
        text = request.profile.format(self.decide(request))
        if on_text is not None:
            on_text(text)
        return text


def pil_messages(messages: list[dict]) -> list[dict]:
    """The same chat messages with every image (a numpy array) as a PIL image, as
    transformers' processors take them. The one place this conversion is made."""
    from PIL import Image

    return [
        {"role": message["role"],
         "content": [{"type": "image", "image": Image.fromarray(item["image"])} if item["type"] == "image" else item
                     for item in message["content"]]}
        for message in messages
    ]
