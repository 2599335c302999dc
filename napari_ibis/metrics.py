"""Segmentation and interactive-segmentation metrics.

* :func:`iou`, :func:`dice` on binary masks (two empty masks agree perfectly);
* :func:`entity_f1`: the paper's "mask-to-entity" F1 over a set of cases: a case
  whose target exists counts as found when the predicted mask overlaps it with
  IoU >= 0.5; a non-empty prediction that is not such a match is a false
  positive (also when the target is absent), a missed target a false negative;
* :func:`noc`: number of clicks to reach an IoU threshold (``max_clicks`` when
  never reached), the standard NoC@85/NoC@90 of RITM/SimpleClick/SAM;
* :func:`miou_at`: mean IoU after k clicks, curves padded with their last value.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def _pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: {gt.shape} vs {pred.shape}")
    return gt, pred


def iou(gt: np.ndarray, pred: np.ndarray) -> float:
    gt, pred = _pair(gt, pred)
    union = np.count_nonzero(gt | pred)
    return 1.0 if union == 0 else np.count_nonzero(gt & pred) / union


def dice(gt: np.ndarray, pred: np.ndarray) -> float:
    gt, pred = _pair(gt, pred)
    total = np.count_nonzero(gt) + np.count_nonzero(pred)
    return 1.0 if total == 0 else 2 * np.count_nonzero(gt & pred) / total


def entity_counts(gt: np.ndarray, pred: np.ndarray, match_iou: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one case."""
    gt, pred = _pair(gt, pred)
    has_gt, has_pred = gt.any(), pred.any()
    matched = bool(has_gt and has_pred and iou(gt, pred) >= match_iou)
    return int(matched), int(has_pred and not matched), int(has_gt and not matched)


def entity_f1(cases: Iterable[tuple[np.ndarray, np.ndarray]], match_iou: float = 0.5) -> float:
    """F1 of target detection over ``(gt, pred)`` cases; 1.0 when nothing is there to find."""
    tp = fp = fn = 0
    for gt, pred in cases:
        a, b, c = entity_counts(gt, pred, match_iou)
        tp, fp, fn = tp + a, fp + b, fn + c
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2 * tp / denominator


def noc(ious: Sequence[float], threshold: float, max_clicks: int = 20) -> int:
    """Clicks needed to reach ``threshold``; ``ious[k - 1]`` is the IoU after k clicks."""
    for k, value in enumerate(ious[:max_clicks], start=1):
        if value >= threshold:
            return k
    return max_clicks


def never_reached(curves: Iterable[Sequence[float]], threshold: float, max_clicks: int = 20) -> int:
    """How many cases never reach ``threshold`` within ``max_clicks``."""
    return sum(1 for ious in curves if not any(v >= threshold for v in ious[:max_clicks]))


def miou_at(curves: Sequence[Sequence[float]], k: int) -> float:
    """Mean IoU after ``k`` clicks over cases (a shorter curve keeps its last value)."""
    values = [ious[min(k, len(ious)) - 1] if ious else 0.0 for ious in curves]
    return float(np.mean(values)) if values else float("nan")


def click_summary(curves: Sequence[Sequence[float]], max_clicks: int = 20, ks=(1, 3, 5, 10, 20)) -> dict:
    """NoC@80/85/90 with never-reached counts and mIoU@k, as benchmarks report them."""
    out: dict = {"cases": len(curves)}
    for threshold in (0.80, 0.85, 0.90):
        tag = f"{round(threshold * 100)}"
        out[f"noc@{tag}"] = float(np.mean([noc(c, threshold, max_clicks) for c in curves])) if curves else float("nan")
        out[f"never@{tag}"] = never_reached(curves, threshold, max_clicks)
    for k in ks:
        if k <= max_clicks:
            out[f"miou@{k}"] = miou_at(curves, k)
    return out
