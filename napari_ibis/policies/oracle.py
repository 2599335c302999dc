"""The click simulator as a policy: ground truth in, model-formatted text out.

Used for evaluation (the upper bound a segmenter allows) and to make training
data. It terminates once the mask reaches ``stop_iou`` or when no error is left,
and says "not present" at once when the ground truth is empty.
"""

from __future__ import annotations


import numpy as np

from ..clicker import next_click
from ..metrics import iou
from ..protocol import Response
from .base import DecidingPolicy, PolicyRequest


def describe_place(row: int, col: int, height: int, width: int) -> str:
    """'the upper left' etc.: where a pixel lies, in words a reader of the image would use."""
    vertical = ("upper", "middle", "lower")[min(2, 3 * row // max(height, 1))]
    horizontal = ("left", "centre", "right")[min(2, 3 * col // max(width, 1))]
    if vertical == "middle" and horizontal == "centre":
        return "the centre"
    if vertical == "middle":
        return f"the middle {horizontal}"
    return f"the {vertical} {horizontal}" if horizontal != "centre" else f"the {vertical} centre"


class OraclePolicy(DecidingPolicy):
    name = "oracle"

    def __init__(self, gt: np.ndarray, stop_iou: float = 0.9, ties: str = "negative", padding: bool = True) -> None:
        self.gt = np.asarray(gt, dtype=bool)
        self.stop_iou = stop_iou
        self.ties = ties
        self.padding = padding

    def identity(self) -> dict:
        return {"name": self.name, "stop_iou": self.stop_iou, "ties": self.ties}

    def decide(self, request: PolicyRequest) -> Response:
        height, width = self.gt.shape
        target = request.query
        if not self.gt.any():
            return Response(
                thought=f"I look for {target} but see no such structure in this image.",
                terminate=True,
                not_present=True,
                answer="The requested structure is not present in this image.",
            )
        mask = np.zeros_like(self.gt) if request.mask is None else request.mask
        click = None if iou(self.gt, mask) >= self.stop_iou else next_click(self.gt, mask, ties=self.ties, padding=self.padding)
        if click is None:
            return Response(
                thought="The green mask follows the boundary of the target closely; no further click is needed.",
                terminate=True,
                answer="The segmentation is complete.",
            )
        row, col, positive = click
        place = describe_place(row, col, height, width)
        if not mask.any():
            thought = f"There is no mask yet. The target lies around {place} of the image; I place a positive point inside it."
        elif positive:
            thought = f"The mask misses part of the target around {place}; I add a positive point there."
        else:
            thought = f"The mask spills over tissue that is not the target around {place}; I place a negative point there."
        action = request.profile.action_at(row, col, positive, height, width, target=None)
        return Response(thought=thought, actions=(action,))
