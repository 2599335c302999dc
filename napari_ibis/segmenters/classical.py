"""A segmenter with no weights: random walker from click seeds (scikit-image).

The slice is reduced to grey and to at most ``work_size`` pixels on its longest
side. Seeds: a small disk at each click (positive = object, negative =
background) and the image border as background (except near positive clicks);
without a positive click the base class keeps the prior mask and carves around
the negative clicks (:func:`~napari_ibis.segmenters.base.carve`). Seeding the
previous result on every step was measured to lock its errors in (mIoU falls with
clicks), so a positive click starts the walker afresh from all clicks.
The walker's object probability is the result; its log-odds are the logits.
"""

from __future__ import annotations

import warnings

import numpy as np

from .base import Click, Segmenter, SegmentResult


class ClassicalSegmenter(Segmenter):
    name = "classical"

    def __init__(self, work_size: int = 256, beta: float = 130.0, seed_radius: int = 2) -> None:
        super().__init__()
        self.work_size = work_size
        self.beta = beta
        self.seed_radius = seed_radius
        self._grey: np.ndarray | None = None

    def identity(self) -> dict:
        return {"name": self.name, "method": "random_walker", "work_size": self.work_size, "beta": self.beta}

    def _embed(self, image: np.ndarray) -> None:
        from skimage.color import rgb2gray
        from skimage.transform import resize

        height, width = image.shape[:2]
        scale = min(1.0, self.work_size / max(height, width))
        shape = (max(2, round(height * scale)), max(2, round(width * scale)))
        grey = rgb2gray(image)
        if shape != grey.shape:
            grey = resize(grey, shape, anti_aliasing=True)
        low, high = np.percentile(grey, [1, 99])
        self._grey = np.clip((grey - low) / max(high - low, 1e-6), 0, 1)

    def _to_work(self, click: Click) -> tuple[int, int]:
        height, width = self.image_shape
        work_h, work_w = self._grey.shape
        return min(int(click.row * work_h / height), work_h - 1), min(int(click.col * work_w / width), work_w - 1)

    def _seeds(self, clicks: list[Click], prior: np.ndarray | None) -> np.ndarray:
        shape = self._grey.shape
        seeds = np.zeros(shape, dtype=np.int32)
        rows, cols = np.ogrid[: shape[0], : shape[1]]
        positives = [self._to_work(c) for c in clicks if c.positive]
        negatives = [self._to_work(c) for c in clicks if not c.positive]

        border = np.zeros(shape, dtype=bool)
        border[[0, -1], :] = True
        border[:, [0, -1]] = True
        for r, c in positives:
            border &= (rows - r) ** 2 + (cols - c) ** 2 > (max(shape) // 8) ** 2
        seeds[border & (seeds == 0)] = 2
        for (r, c), label in [(p, 1) for p in positives] + [(n, 2) for n in negatives]:
            seeds[(rows - r) ** 2 + (cols - c) ** 2 <= self.seed_radius**2] = label
        return seeds

    def _segment(self, clicks: list[Click], prior: np.ndarray | None) -> SegmentResult:
        from skimage.segmentation import random_walker
        from skimage.transform import resize

        seeds = self._seeds(clicks, prior)
        if not (seeds == 1).any():
            probability = np.zeros(self._grey.shape)
        elif not (seeds == 2).any():
            probability = np.ones(self._grey.shape)
        else:
            with warnings.catch_warnings():  # cg_j's loose tolerance overshoots [0, 1] slightly; clipped below
                warnings.simplefilter("ignore", UserWarning)
                probability = random_walker(self._grey, seeds, beta=self.beta, mode="cg_j", tol=1e-3, return_full_prob=True)[0]
        probability = np.clip(probability, 1e-4, 1 - 1e-4)
        logits = np.log(probability / (1 - probability)).astype(np.float32)
        full = resize(logits, self.image_shape, order=1) if logits.shape != self.image_shape else logits
        mask = full > 0
        return SegmentResult(mask=mask, logits=logits, score=float(probability[logits > 0].mean()) if mask.any() else 0.0)

    def follow(self, previous: np.ndarray, leave_out: np.ndarray | None = None) -> SegmentResult:
        """The neighbouring slice's mask as the prior: its eroded inside seeds the object,
        everything beyond its grown outline (and ``leave_out``) the background, and the walker
        settles the edge."""
        import warnings

        from scipy import ndimage as ndi
        from skimage.segmentation import random_walker
        from skimage.transform import resize

        small = resize(previous.astype(np.float32), self._grey.shape, order=1) > 0.5
        margin = max(2, int(round(np.sqrt(small.sum()) / 6)))
        seeds = np.zeros(small.shape, dtype=np.int32)
        seeds[~ndi.binary_dilation(small, iterations=margin)] = 2
        seeds[ndi.binary_erosion(small, iterations=margin)] = 1
        if leave_out is not None:
            seeds[resize(np.asarray(leave_out, np.float32), self._grey.shape, order=1) > 0.5] = 2
        if not (seeds == 1).any() or not (seeds == 2).any():
            return super().follow(previous, leave_out)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            probability = random_walker(self._grey, seeds, beta=self.beta, mode="cg_j", tol=1e-3, return_full_prob=True)[0]
        probability = np.clip(probability, 1e-4, 1 - 1e-4)
        logits = np.log(probability / (1 - probability)).astype(np.float32)
        full = resize(logits, self.image_shape, order=1) if logits.shape != self.image_shape else logits
        return SegmentResult(mask=full > 0, logits=logits, score=float("nan"))

    def prior_from_mask(self, mask: np.ndarray) -> np.ndarray:
        from skimage.transform import resize

        small = resize(mask.astype(np.float32), self._grey.shape, order=1) > 0.5
        return np.where(small, 4.0, -4.0).astype(np.float32)
