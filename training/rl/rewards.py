"""The paper's rewards (section 3.3, appendix C), as pure functions of masks and text.

Constants default to those of the released reward function
(shared/docs/RELEASED_PROTOCOL.md) and live in :class:`RewardConfig`:

* format: 1 when the reply has the trained layout (``<think>`` block, one
  ``<action>`` block the profile parses, a closed ``<answer>``; a final turn must
  carry its answer), else 0;
* answer: piecewise on IoU (> 0.8: 3, > 0.7: 2, > 0.5: 1, else 0); for a closed
  question (the target is absent) 3 for saying "not present", else 0;
* click placement: +1 for a positive click in the false-negative region or a
  negative click in the false-positive region of the mask *before* the click, -1
  otherwise, 0 for turns without a click;
* progressive: 1 when the IoU after the action is strictly higher than before
  (0 on a final turn); ``progress_gain`` > 0 adds that many times the IoU change
  itself, so that a click that mends more earns more (not in the release: 0);
* length: 1 up to the optimal number of steps (5), then -0.2 per extra step.

The total is the sum of the enabled terms divided by ``normaliser`` (5, as in the
release). Every term is returned separately so that each can be logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from napari_ibis.errors import ActionParseError
from napari_ibis.metrics import iou
from napari_ibis.protocol import Profile, Response, get_profile

_LAYOUT = re.compile(r"\s*<think>\n.*?\S.*?\n</think>\n\s*<action>\n.+?\n</action>(?:\n\s*<answer>\n.*?\n</answer>)?\s*", re.DOTALL)


@dataclass(frozen=True)
class RewardConfig:
    """Reward constants; the defaults are the released IBISAgent's."""

    answer_levels: tuple[tuple[float, float], ...] = ((0.8, 3.0), (0.7, 2.0), (0.5, 1.0))
    closed_answer: float = 3.0
    wrong_absent_answer: float = 0.0  # answering "not present" when the target is there (release: 0)
    placement_hit: float = 1.0
    placement_miss: float = -1.0
    progress: float = 1.0
    progress_gain: float = 0.0  # > 0: the progress term also pays this times (IoU after - IoU before)
    optimal_steps: int = 5
    length_bonus: float = 1.0
    length_penalty: float = 0.2
    normaliser: float = 5.0
    use_placement: bool = True
    use_progress: bool = True
    use_length: bool = True


DEFAULT_REWARDS = RewardConfig()


def parse_or_none(text: str, profile: Profile | str) -> Response | None:
    try:
        return get_profile(profile).parse(text)
    except ActionParseError:
        return None


def format_reward(text: str, profile: Profile | str = "ibis-release") -> float:
    """1 if ``text`` has the trained layout and a parsable action (final turns answered)."""
    response = parse_or_none(text, profile)
    if response is None or not _LAYOUT.fullmatch(text):
        return 0.0
    final = response.terminate or response.not_present
    if final and not response.answer:
        return 0.0
    return 1.0


def answer_reward(iou_value: float, config: RewardConfig = DEFAULT_REWARDS) -> float:
    """Piecewise reward on the IoU of the mask the turn leaves behind."""
    for threshold, value in config.answer_levels:
        if iou_value > threshold:
            return value
    return 0.0


def closed_answer_reward(said_absent: bool, present: bool, config: RewardConfig = DEFAULT_REWARDS) -> float:
    """Exact match for the closed question "is the target there?" (a wrong "not present" may cost)."""
    if said_absent != present:
        return config.closed_answer
    return config.wrong_absent_answer if said_absent else 0.0


def placement_reward(row: int, col: int, positive: bool, truth: np.ndarray, mask_before: np.ndarray,
                     config: RewardConfig = DEFAULT_REWARDS) -> float:
    """+hit when a positive click falls in the missed region or a negative one in the spill, else miss."""
    height, width = truth.shape
    if not (0 <= row < height and 0 <= col < width):
        return config.placement_miss
    region = (truth & ~mask_before) if positive else (mask_before & ~truth)
    return config.placement_hit if region[row, col] else config.placement_miss


def progress_reward(iou_before: float, iou_after: float, final: bool, config: RewardConfig = DEFAULT_REWARDS) -> float:
    if final:
        return 0.0
    return (config.progress if iou_after > iou_before else 0.0) + config.progress_gain * (iou_after - iou_before)


def length_reward(step: int, config: RewardConfig = DEFAULT_REWARDS) -> float:
    """``step`` counts from 1: the bonus up to the optimum, a linear penalty after it."""
    if step <= config.optimal_steps:
        return config.length_bonus
    return -config.length_penalty * (step - config.optimal_steps)


def step_reward(text: str, truth: np.ndarray, mask_before: np.ndarray, mask_after: np.ndarray, step: int,
                clicks: list[tuple[int, int, bool]], profile: Profile | str = "ibis-release",
                config: RewardConfig = DEFAULT_REWARDS) -> dict[str, float]:
    """All terms for one decision (the release's single-decision RL sample) and their total.

    ``clicks`` are the (row, col, positive) pixels the turn added; ``mask_after`` is
    what the segmenter made of them (equal to ``mask_before`` on a final turn).
    """
    profile = get_profile(profile)
    response = parse_or_none(text, profile)
    present = bool(truth.any())
    terms = {"format": format_reward(text, profile), "answer": 0.0, "placement": 0.0, "progress": 0.0, "length": 0.0}
    if response is not None:
        final = response.terminate or response.not_present
        said_absent = response.not_present or (response.terminate and not mask_after.any())  # as the Session reads it
        if not present or said_absent:
            terms["answer"] = closed_answer_reward(said_absent, present, config)
        else:
            terms["answer"] = answer_reward(iou(truth, mask_after), config)
        if config.use_placement and clicks:
            terms["placement"] = float(np.mean([placement_reward(r, c, p, truth, mask_before, config) for r, c, p in clicks]))
        if config.use_progress and present:
            terms["progress"] = progress_reward(iou(truth, mask_before), iou(truth, mask_after), final, config)
        if config.use_length:
            terms["length"] = length_reward(step, config)
    terms["total"] = sum(terms.values()) / config.normaliser
    return terms


def final_answer_reward(truth: np.ndarray, final_mask: np.ndarray, said_absent: bool,
                        config: RewardConfig = DEFAULT_REWARDS) -> float:
    """The answer term on where an episode ended: exact match if the target is absent or the
    agent said so, else piecewise on the final mask's IoU."""
    present = bool(truth.any())
    if not present or said_absent:
        return closed_answer_reward(said_absent, present, config)
    return answer_reward(iou(truth, final_mask), config)


def trajectory_reward(step_terms: list[dict[str, float]], truth: np.ndarray, final_mask: np.ndarray, said_absent: bool,
                      config: RewardConfig = DEFAULT_REWARDS) -> dict[str, float]:
    """One reward for a whole multi-turn rollout (paper): per-turn format, placement and
    progress averaged over its turns, the answer on the final mask, the length on the turn count."""
    turns = max(len(step_terms), 1)
    terms = {key: sum(t[key] for t in step_terms) / turns for key in ("format", "placement", "progress")}
    terms["answer"] = final_answer_reward(truth, final_mask, said_absent, config)
    terms["length"] = length_reward(len(step_terms), config) if config.use_length else 0.0
    if not config.use_placement:
        terms["placement"] = 0.0
    if not config.use_progress:
        terms["progress"] = 0.0
    terms["total"] = sum(terms.values()) / config.normaliser
    return terms
