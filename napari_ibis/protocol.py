"""Prompt profiles and the action grammar the agent speaks.

A profile owns everything that depends on how a model was trained: the system
prompt, the user messages of the first and later turns, whether history is kept,
the coordinate convention, the parser and the formatter of model output, and the
observation image. Two profiles ship:

``ibis-release``
    What the released IBISAgent 7B weights were trained on (see
    ``resources/prompts/ibis-release``): one action per turn,
    ``Positive Point (x, y)`` / ``Negative Point (x, y)`` / ``Terminate`` (or
    ``Termination``), x = column and y = row in [0, 1] with four decimals.
``paper``
    The method as written in the paper: several
    ``(target, positive|negative, (x, y))`` triples per action with x, y in
    0-1000, ``End``, ``Undo`` and ``Not present`` keywords, history kept.

Everything the session stores is in pixels; only this module converts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ._resources import read_text
from .errors import ActionParseError
from .overlay import compose

__all__ = [
    "Action",
    "ActionParseError",
    "PROFILES",
    "PaperProfile",
    "Profile",
    "ReleaseProfile",
    "Response",
    "Turn",
    "format_response",
    "get_profile",
    "parse",
]

MAX_OUTPUT_CHARS = 32_000
"""Longer model output is rejected unread: no profile's answer is that long."""


@dataclass(frozen=True)
class Action:
    """One click in model space: ``x`` is the column, ``y`` the row, both in [0, 1]."""

    positive: bool
    x: float
    y: float
    target: str | None = None


@dataclass(frozen=True)
class Response:
    """What one model turn said, once parsed."""

    thought: str = ""
    actions: tuple[Action, ...] = ()
    answer: str | None = None
    terminate: bool = False
    undo: bool = False
    not_present: bool = False
    raw: str = field(default="", compare=False, repr=False)


@dataclass
class Turn:
    """One user turn of the conversation: the image shown, the text, the reply."""

    image: np.ndarray
    text: str
    reply: str | None = None


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def _tag(name: str) -> re.Pattern[str]:
    return re.compile(rf"<{name}>(.*?)</{name}>", re.S)


_THINK, _ACTION, _ANSWER = _tag("think"), _tag("action"), _tag("answer")


def _snippet(text: str, limit: int = 60) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


class Profile:
    """Base class: prompts, grammar and coordinate convention of one model family."""

    name: str = ""
    use_history: bool = False
    coordinate_scale: float = 1.0
    terminate_word: str = "Terminate"

    # -- prompts ---------------------------------------------------------------
    def system_prompt(self) -> str:
        return read_text("prompts", self.name, "system_prompt.txt")

    def user_text(self, query: str, first: bool) -> str:
        template = "first_prompt.txt" if first else "refinement_prompt.txt"
        return read_text("prompts", self.name, template).replace("{query}", query)

    def observation(self, rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """The image the model sees: the original, or the mask painted over it."""
        if mask is None or not np.any(mask):
            return rgb
        return compose(rgb, mask)

    def messages(self, turns: Sequence[Turn], use_history: bool | None = None) -> list[dict[str, Any]]:
        """Chat messages in the ``transformers`` multimodal format (images as arrays)."""
        keep = self.use_history if use_history is None else use_history
        shown = list(turns) if keep else list(turns)[-1:]
        out: list[dict[str, Any]] = [
            {"role": "system", "content": [{"type": "text", "text": self.system_prompt()}]}
        ]
        for turn in shown:
            out.append(
                {
                    "role": "user",
                    "content": [{"type": "image", "image": turn.image}, {"type": "text", "text": turn.text}],
                }
            )
            if turn.reply is not None and turn is not shown[-1]:
                out.append({"role": "assistant", "content": [{"type": "text", "text": turn.reply}]})
        return out

    # -- coordinates -----------------------------------------------------------
    def to_pixel(self, action: Action, height: int, width: int) -> tuple[int, int]:
        """(row, col) of an action: ``int(x * W)`` clamped to W - 1, as in the release."""
        col = min(int(action.x * width), width - 1)
        row = min(int(action.y * height), height - 1)
        return row, col

    def action_at(self, row: int, col: int, positive: bool, height: int, width: int, target: str | None = None) -> Action:
        """The action whose coordinates, once formatted and parsed, land on (row, col)."""
        x = self._quantise((col + 0.5) / width)
        y = self._quantise((row + 0.5) / height)
        return Action(positive=positive, x=x, y=y, target=target)

    def _quantise(self, unit: float) -> float:
        raise NotImplementedError

    # -- grammar ---------------------------------------------------------------
    def parse(self, text: str) -> Response:
        if not isinstance(text, str):
            raise ActionParseError(f"model output must be text, got {type(text).__name__}")
        if len(text) > MAX_OUTPUT_CHARS:
            raise ActionParseError(f"model output is {len(text)} characters long; no valid answer is that long")
        bodies = _ACTION.findall(text)
        if not bodies:
            if "<action>" in text:
                raise ActionParseError("model output opens <action> but never closes it")
            raise ActionParseError(f"model output has no <action>…</action> block: '{_snippet(text)}'")
        if len(bodies) > 1:
            raise ActionParseError(f"model output has {len(bodies)} <action> blocks; one is allowed per turn")
        think = _THINK.search(text)
        answer = _ANSWER.search(text)
        if answer is None and "<answer>" in text:
            answer_text: str | None = text.split("<answer>", 1)[1].strip()
        else:
            answer_text = answer.group(1).strip() if answer else None
        fields = self._parse_action(bodies[0].strip())
        return Response(
            thought=think.group(1).strip() if think else "",
            answer=answer_text,
            raw=text,
            **fields,
        )

    def _parse_action(self, body: str) -> dict[str, Any]:
        raise NotImplementedError

    def _coordinate(self, raw: str, axis: str) -> float:
        value = float(raw)
        if not math.isfinite(value) or not 0.0 <= value <= self.coordinate_scale:
            raise ActionParseError(
                f"{axis} = {raw} lies outside the image (must be within 0 and {self.coordinate_scale:g})"
            )
        return value / self.coordinate_scale

    def format(self, response: Response) -> str:
        """Render a response exactly as a model of this profile is trained to write it."""
        out = f"<think>\n{response.thought}\n</think>\n<action>\n{self._format_action(response)}\n</action>"
        if response.answer is not None:
            out += f"\n<answer>\n{response.answer}\n</answer>"
        return out

    def _format_action(self, response: Response) -> str:
        raise NotImplementedError


class ReleaseProfile(Profile):
    """The released IBISAgent weights: one point or Terminate per turn, 0-1 coordinates."""

    name = "ibis-release"
    use_history = False
    coordinate_scale = 1.0
    terminate_word = "Termination"  # the word the release's RL reward checked for

    _POINT = re.compile(rf"(Positive|Negative)\s+Point\s*\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)\.?", re.I)
    _TERMINATE = re.compile(r"(?:Terminate|Termination)\.?", re.I)

    def _parse_action(self, body: str) -> dict[str, Any]:
        if self._TERMINATE.fullmatch(body):
            return {"terminate": True}
        point = self._POINT.fullmatch(body)
        if point is None:
            found = len(self._POINT.findall(body)) + len(re.findall(r"Terminat", body, re.I))
            if found > 1:
                raise ActionParseError(f"two actions in one <action> block: '{_snippet(body)}'")
            raise ActionParseError(f"cannot read the action '{_snippet(body)}'")
        positive = point.group(1).lower() == "positive"
        x = self._coordinate(point.group(2), "x")
        y = self._coordinate(point.group(3), "y")
        return {"actions": (Action(positive=positive, x=x, y=y),)}

    def _quantise(self, unit: float) -> float:
        return round(unit, 4)

    def _format_action(self, response: Response) -> str:
        if response.terminate:
            return self.terminate_word
        if len(response.actions) != 1:
            raise ValueError("the ibis-release profile allows exactly one action per turn")
        act = response.actions[0]
        sign = "Positive" if act.positive else "Negative"
        return f"{sign} Point ({act.x:.4f}, {act.y:.4f})"


class PaperProfile(Profile):
    """The paper's grammar: (target, attribute, (x, y)) triples in 0-1000, history kept."""

    name = "paper"
    use_history = True
    coordinate_scale = 1000.0
    terminate_word = "End"

    _TRIPLE = re.compile(
        rf"\(\s*([^,()<>]+?)\s*,\s*(positive|negative)\s*,\s*\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)\s*\)", re.I
    )
    _KEYWORDS = {
        "end": "terminate",
        "<end>": "terminate",
        "terminate": "terminate",
        "undo": "undo",
        "not present": "not_present",
        "notpresent": "not_present",
    }

    def _parse_action(self, body: str) -> dict[str, Any]:
        keyword = self._KEYWORDS.get(body.strip(" .").lower())
        if keyword == "not_present":
            return {"terminate": True, "not_present": True}
        if keyword is not None:
            return {keyword: True}
        actions = []
        position = 0
        for match in self._TRIPLE.finditer(body):
            between = body[position : match.start()]
            if between.strip(" ;,\n\t"):
                raise ActionParseError(f"cannot read '{_snippet(between)}' in the action")
            position = match.end()
            actions.append(
                Action(
                    positive=match.group(2).lower() == "positive",
                    x=self._coordinate(match.group(3), "x"),
                    y=self._coordinate(match.group(4), "y"),
                    target=match.group(1).strip(),
                )
            )
        rest = body[position:]
        if rest.strip(" ;,\n\t"):
            if actions or any(word in rest.lower() for word in ("end", "undo", "present")):
                raise ActionParseError(f"conflicting or unreadable actions: '{_snippet(body)}'")
            raise ActionParseError(f"cannot read the action '{_snippet(body)}'")
        if not actions:
            raise ActionParseError("the <action> block is empty")
        seen: dict[tuple[str, float, float], bool] = {}
        for act in actions:
            key = ((act.target or "").lower(), act.x, act.y)
            if seen.setdefault(key, act.positive) != act.positive:
                raise ActionParseError(
                    f"conflicting actions: the same point is both positive and negative for '{act.target}'"
                )
        return {"actions": tuple(actions)}

    def _quantise(self, unit: float) -> float:
        return round(unit * 1000) / 1000

    def _format_action(self, response: Response) -> str:
        if response.not_present:
            return "Not present"
        if response.terminate:
            return self.terminate_word
        if response.undo:
            return "Undo"
        if not response.actions:
            raise ValueError("a response with no action must terminate, undo or say not present")
        parts = []
        for act in response.actions:
            sign = "positive" if act.positive else "negative"
            parts.append(f"({act.target or 'target'}, {sign}, ({round(act.x * 1000)}, {round(act.y * 1000)}))")
        return "; ".join(parts)


PROFILES: dict[str, Profile] = {p.name: p for p in (ReleaseProfile(), PaperProfile())}


def get_profile(profile: str | Profile) -> Profile:
    """The profile named ``profile`` (a profile object passes through)."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(f"unknown profile '{profile}'; choose one of {', '.join(PROFILES)}") from None


def parse(text: str, profile: str | Profile = "ibis-release") -> Response:
    """Parse one model turn. Raises :class:`ActionParseError` and nothing else on bad text."""
    return get_profile(profile).parse(text)


def format_response(response: Response, profile: str | Profile = "ibis-release") -> str:
    return get_profile(profile).format(response)
