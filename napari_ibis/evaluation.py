"""The click protocol of interactive-segmentation benchmarks, on any segmenter."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .clicker import next_click
from .metrics import iou
from .segmenters.base import Click, Segmenter


@dataclass
class ClickRun:
    """IoU after each simulated click, the clicks, and the final mask and logits."""

    ious: list[float] = field(default_factory=list)
    clicks: list[Click] = field(default_factory=list)
    mask: np.ndarray | None = None
    logits: np.ndarray | None = None


def simulate_clicks(
    segmenter: Segmenter,
    rgb: np.ndarray,
    gt: np.ndarray,
    max_clicks: int = 20,
    stop_iou: float | None = None,
    feed_prior: bool = True,
    ties: str = "negative",
    padding: bool = True,
) -> ClickRun:
    """Drive ``segmenter`` with the click simulator against ``gt``.

    With ``stop_iou=None`` all ``max_clicks`` are placed (the NoC/mIoU@k protocol);
    otherwise the run stops once the IoU reaches ``stop_iou`` (trajectory generation).
    """
    gt = np.asarray(gt, dtype=bool)
    segmenter.set_image(rgb)
    run = ClickRun(mask=np.zeros_like(gt))
    for _ in range(max_clicks):
        click = next_click(gt, run.mask, ties=ties, padding=padding)
        if click is None:  # perfect already: the curve stays where it is
            run.ious.append(run.ious[-1] if run.ious else 1.0)
            continue
        run.clicks.append(Click(click[0], click[1], click[2], source="simulator"))
        result = segmenter.segment(run.clicks, run.logits if feed_prior else None)
        run.mask, run.logits = result.mask, result.logits
        run.ious.append(iou(gt, run.mask))
        if stop_iou is not None and run.ious[-1] >= stop_iou:
            break
    return run
