"""The click simulator of interactive-segmentation benchmarks.

The next click goes to the pixel farthest from the boundary of the larger error
region (Xu et al. 2016; RITM, SimpleClick and SAM evaluate this way): a positive
click inside the false-negative region or a negative click inside the
false-positive region, whichever has the larger maximum of its Euclidean distance
transform.

Defaults follow the benchmark protocol: the error masks are padded by one pixel
so that the image border counts as boundary, and ties go to the negative click.
``ties="positive"`` with ``padding=False`` gives the IBISAgent release's rule.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.ndimage import distance_transform_edt


def error_regions(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false negatives, false positives) of ``pred`` against ``gt``."""
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    if gt.shape != pred.shape:
        raise ValueError(f"mask shapes differ: {gt.shape} vs {pred.shape}")
    return gt & ~pred, pred & ~gt


def _distance(region: np.ndarray, padding: bool) -> np.ndarray:
    if not region.any():
        return np.zeros(region.shape, dtype=np.float64)
    if padding:
        return distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    return distance_transform_edt(region)


def next_click(
    gt: np.ndarray,
    pred: np.ndarray | None,
    *,
    padding: bool = True,
    ties: Literal["negative", "positive"] = "negative",
) -> tuple[int, int, bool] | None:
    """``(row, col, is_positive)`` of the next simulated click, or ``None`` when
    ``pred`` already equals ``gt``. ``pred=None`` means an empty mask."""
    gt = np.asarray(gt, dtype=bool)
    pred = np.zeros_like(gt) if pred is None else np.asarray(pred, dtype=bool)
    fn, fp = error_regions(gt, pred)
    fn_dist, fp_dist = _distance(fn, padding), _distance(fp, padding)
    fn_max, fp_max = fn_dist.max(), fp_dist.max()
    if fn_max == 0 and fp_max == 0:
        return None
    positive = fn_max >= fp_max if ties == "positive" else fn_max > fp_max
    dist = fn_dist if positive else fp_dist
    row, col = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(row), int(col), bool(positive)
