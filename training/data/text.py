"""Queries, refinement prompts, answers and reasoning for training trajectories.

Follows the paper's appendix B.2: initialisation queries from direct commands to
goal-oriented statements, plus interrogative sub-templates (conditional,
compound, clinical protocol, indirect, concise); refinement prompts that ask for
the next step, point at an error, or ask for verification; final answers in
five styles. Everything is filled with the target name and the modality.

Reasoning for a click is written from what the agent can see (the image and the
green mask), never from privileged knowledge: :func:`leaks` rejects text that
names the oracle's colours or error classes.
"""

from __future__ import annotations

import re

import numpy as np

from napari_ibis.policies.oracle import describe_place

QUERY_TEMPLATES = {
    "direct": ["Segment the {target}.", "segment the {target}", "Please segment the {target} in this {modality} image."],
    "descriptive": ["Outline the {target} visible in this {modality} scan.", "Delineate the boundary of the {target}."],
    "goal": ["I need the {target} masked for volume measurement.", "To plan treatment, mark the {target} in this {modality} image."],
    "conditional": ["Is there a {target}? If so, please segment it."],
    "compound": ["Can you find and segment the {target}?"],
    "protocol": ["I need to verify the presence of a {target} in this {modality} study; segment it if present."],
    "indirect": ["I'm wondering if there's a {target} here; could you show me where it is?"],
    "concise": ["Visible {target}? Please provide segmentation."],
}
REFINEMENT_TEMPLATES = {
    "next": ["What is the next step?", "Continue refining the {target}."],
    "error": ["The mask does not match the {target} boundary yet.", "Check whether the mask covers the whole {target}."],
    "verify": ["Is this segmentation of the {target} complete?"],
}
ANSWER_TEMPLATES = {
    "concise": ["Segmentation complete."],
    "confident": ["The object has been successfully segmented."],
    "referencing": ["The {target} is fully segmented."],
    "question": ["Yes, the {target} was found and segmented."],
    "conversational": ["All done! The {target} is outlined."],
}
ABSENT_ANSWERS = [
    "There is no {target} in this {modality} image, so nothing was segmented.",
    "I could not find a {target} here; the image does not show one.",
]

FORBIDDEN = ("red", "blue", "cross", "tp", "fp", "fn", "ground truth", "ground-truth", "oracle", "true positive",
             "false positive", "false negative")
_FORBIDDEN_RE = re.compile(r"\b(" + "|".join(re.escape(w) for w in FORBIDDEN) + r")\b", re.IGNORECASE)


def leaks(text: str) -> list[str]:
    """Privileged words in ``text`` (empty when the text is clean)."""
    return sorted({m.group(0).lower() for m in _FORBIDDEN_RE.finditer(text)})


def _pick(rng: np.random.Generator, templates: dict[str, list[str]], **fields) -> str:
    style = sorted(templates)[rng.integers(len(templates))]
    options = templates[style]
    return options[rng.integers(len(options))].format(**fields)


def query(target: str, modality: str, rng: np.random.Generator) -> str:
    return _pick(rng, QUERY_TEMPLATES, target=target, modality=modality)


def refinement(target: str, rng: np.random.Generator) -> str:
    return _pick(rng, REFINEMENT_TEMPLATES, target=target)


def answer(target: str, modality: str, rng: np.random.Generator, present: bool = True) -> str:
    if not present:
        return ABSENT_ANSWERS[rng.integers(len(ABSENT_ANSWERS))].format(target=target, modality=modality)
    return _pick(rng, ANSWER_TEMPLATES, target=target)


def _relative(mask: np.ndarray, row: int, col: int) -> str:
    """Where (row, col) lies from the centre of the visible mask, in words."""
    rows, cols = np.nonzero(mask)
    dy, dx = row - rows.mean(), col - cols.mean()
    parts = []
    if abs(dy) > 2 and abs(dy) >= abs(dx) / 2:
        parts.append("below" if dy > 0 else "above")
    if abs(dx) > 2 and abs(dx) >= abs(dy) / 2:
        parts.append("to the right of" if dx > 0 else "to the left of")
    return " and ".join(parts) + " the mask's centre" if parts else "near the mask's centre"


def reasoning(target: str, modality: str, mask: np.ndarray | None, row: int, col: int, positive: bool,
              rng: np.random.Generator) -> str:
    """A first-person thought for a click, from what the agent sees (image + green mask)."""
    shape = mask.shape if mask is not None else (1, 1)
    place = describe_place(row, col, *shape)
    if mask is None or not mask.any():
        options = [
            f"This is a {modality} image and there is no mask yet. The {target} appears in {place} of the image; "
            f"I will place a positive point on a clear part of it.",
            f"No mask is shown, so this is the first step. I look for the {target}: it lies in {place} of the image. "
            f"A positive point there starts the segmentation.",
        ]
    elif positive:
        options = [
            f"The green mask covers part of the {target}, but tissue that belongs to it, {_relative(mask, row, col)}, "
            f"is still uncovered. I add a positive point there.",
            f"The mask stops short of the {target}'s boundary in {place} of the image; that region looks like the same structure. "
            f"A positive point will extend the mask.",
        ]
    else:
        options = [
            f"The green mask spills beyond the {target} in {place} of the image; that area does not look like the {target}. "
            f"I place a negative point to remove it.",
            f"Part of the mask, {_relative(mask, row, col)}, covers tissue outside the {target}'s boundary. "
            f"A negative point there should trim it.",
        ]
    text = options[rng.integers(len(options))]
    assert not leaks(text), text
    return text


def stop_reasoning(target: str, rng: np.random.Generator) -> str:
    options = [f"The green mask now follows the boundary of the {target} closely; no further point is needed.",
               f"The mask matches the {target}'s outline; I will stop here."]
    return options[rng.integers(len(options))]


def absent_reasoning(target: str, modality: str, rng: np.random.Generator) -> str:
    options = [f"I examine the {modality} image for a {target} but see no structure that looks like one.",
               f"Nothing in this image has the appearance of a {target}."]
    return options[rng.integers(len(options))]
