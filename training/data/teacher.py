"""Optional teacher: richer click reasoning from any OpenAI-compatible endpoint.

The paper had a strong VLM write the thought behind each simulated click while it
saw the true extent of the target. :class:`Teacher` does the same with whatever
endpoint a user has (vLLM, an API): it sends an *oracle view* (the image, the
current mask in green, the target's true outline in blue, the planned click as a
yellow cross) and asks for a first-person thought that only uses what the agent
itself will see. Replies that are empty, too long, do not name the target or
leak privileged words (:func:`training.data.text.leaks`) are rejected; the synthesised
reasoning is kept instead, so a flaky or absent endpoint never stops a data build.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_ibis.errors import ModelError
from napari_ibis.overlay import compose, to_rgb8
from napari_ibis.policies.base import PolicyRequest
from napari_ibis.policies.remote import RemotePolicy
from training.data import text

SYSTEM = (
    "You write the reasoning of a segmentation agent. The agent sees a {modality} image with its current mask as a "
    "semi-transparent green overlay. You also see privileged hints the agent does NOT see: a blue outline of the true "
    "extent of the {target} and a yellow cross where the agent will place its next point. Write one to three sentences "
    "in the first person explaining, from the anatomy and the green mask only, why a {kind} point at the cross is the "
    "right next move for segmenting the {target}. Never mention the blue outline, the cross, colours other than the "
    "green mask, ground truth, true or false positives or negatives. Reply with the sentences only."
)


def oracle_view(image: np.ndarray, truth: np.ndarray, mask: np.ndarray | None, row: int, col: int) -> np.ndarray:
    """RGB: the agent's observation plus the target's outline (blue) and the planned click (yellow cross)."""
    rgb = to_rgb8(image)
    view = compose(rgb, mask) if mask is not None and mask.any() else rgb.copy()
    outline = truth & ~ndi.binary_erosion(truth)
    view[outline] = (40, 80, 255)
    size = max(2, min(truth.shape) // 40)
    height, width = truth.shape
    view[max(row - size, 0):min(row + size + 1, height), col] = (255, 230, 0)
    view[row, max(col - size, 0):min(col + size + 1, width)] = (255, 230, 0)
    return view


class Teacher:
    """A reasoning writer backed by an OpenAI-compatible endpoint; counts what it kept."""

    def __init__(self, base_url: str, model: str, api_key_env: str = "IBIS_TEACHER_KEY", timeout: float = 60.0,
                 max_chars: int = 600) -> None:
        self.remote = RemotePolicy(base_url, model, api_key_env=api_key_env, timeout=timeout, retries=1, max_tokens=200)
        self.max_chars = max_chars
        self.counts = {"accepted": 0, "rejected": 0, "failed": 0}

    def __call__(self, target: str, modality: str, image: np.ndarray, truth: np.ndarray, mask: np.ndarray | None,
                 row: int, col: int, positive: bool, fallback: str) -> str:
        view = oracle_view(image, truth, mask, row, col)
        system = SYSTEM.format(modality=modality, target=target, kind="positive" if positive else "negative")
        messages = [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": [{"type": "image", "image": view},
                                         {"type": "text", "text": f"Target: {target}. Write the agent's reasoning."}]},
        ]
        try:
            reply = self.remote.respond(PolicyRequest(None, target, view, mask, (), 0, messages)).strip()
        except ModelError:
            self.counts["failed"] += 1
            return fallback
        if not reply or len(reply) > self.max_chars or target.lower() not in reply.lower() or text.leaks(reply):
            self.counts["rejected"] += 1
            return fallback
        self.counts["accepted"] += 1
        return reply
