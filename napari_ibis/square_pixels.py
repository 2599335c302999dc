"""Slices whose rows and columns lie unequally far apart, seen at square pixels.

A volume acquired coronally or sagittally (common in MRI) and shown in the axial display
convention has axial slices whose rows lie the acquisition's slice thickness apart (say
4 mm) and whose columns lie the in-plane spacing apart (say 1 mm). napari draws such a
slice to scale, but the array itself is squashed: the organs are four times wider than
tall. The agent's encoders and the segmenters, trained on square pixels, then fail (a
liver 'not present', a spleen of 49 px: docs/BENCHMARKS.md, "Slices with unequal row
and column spacing"). So the agent and the segmenter see the slice resampled to square pixels (the
coarse axis stretched to the fine one's spacing), and everything the person sees and
keeps (clicks, masks, the written labels) stays on the slice's own pixel grid.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from typing import Sequence

import numpy as np

from .errors import InputError
from .segmenters.base import Click, SegmentResult, image_key

SQUARE_ENOUGH = 1.1  # rows and columns spaced within 10% of each other are treated as square
MAX_STRETCH = 8.0  # a slice stretched further than this is resampled no more than this
REMEMBERED = 64  # square-grid masks kept to hand back exactly (see SquareGrid.mask_in)


def pixel_aspect(spacing: Sequence[float] | None) -> float:
    """Row spacing over column spacing from a display-order spacing (..., row, column); 1.0
    where none is known or it is not usable."""
    if spacing is None or len(spacing) < 2:
        return 1.0
    row, col = float(spacing[-2]), float(spacing[-1])
    if not (np.isfinite(row) and np.isfinite(col)) or row <= 0 or col <= 0:
        return 1.0
    return row / col


def is_square(aspect: float) -> bool:
    return 1 / SQUARE_ENOUGH <= aspect <= SQUARE_ENOUGH


def stretch_note(aspect: float) -> str | None:
    """What a person reads where a slice is seen at square pixels; None where it is square."""
    if is_square(aspect):
        return None
    coarse, fine, ratio = ("rows", "columns", aspect) if aspect > 1 else ("columns", "rows", 1 / aspect)
    return (f"This slice's {coarse} lie {ratio:.1f} times farther apart than its {fine}: the agent and the "
            f"segmenter see it stretched to square pixels; clicks and masks stay on its own grid.")


class SquareGrid:
    """The mapping between an (H, W) slice with pixel ``aspect`` (row over column spacing)
    and the same slice resampled to square pixels (the coarse axis upsampled). A mask that
    came out of the square grid (:meth:`mask_out`) goes back in as it was, not blockier, so
    the agent judges the segmenter's own mask."""

    def __init__(self, shape: tuple[int, int], aspect: float) -> None:
        height, width = int(shape[0]), int(shape[1])
        stretch = 1.0 if is_square(aspect) else min(max(aspect, 1 / aspect), MAX_STRETCH)
        self.shape = (height, width)
        self.square = (round(height * stretch), width) if aspect > 1 else (height, round(width * stretch))
        self.rows, self.cols = self.square[0] / height, self.square[1] / width
        self._came_out: OrderedDict[str, np.ndarray] = OrderedDict()

    @property
    def identity(self) -> bool:
        return self.square == self.shape

    def image(self, image: np.ndarray) -> np.ndarray:
        """An (H, W[, C]) slice at square pixels (linear interpolation, dtype kept)."""
        if self.identity:
            return image
        from skimage.transform import resize

        out = resize(image, self.square + image.shape[2:], order=1, preserve_range=True, anti_aliasing=False)
        return np.clip(np.rint(out), 0, 255).astype(image.dtype) if image.dtype == np.uint8 else out.astype(image.dtype)

    def mask_in(self, mask: np.ndarray | None) -> np.ndarray | None:
        """A mask on the slice's grid, on the square grid (nearest neighbour)."""
        if mask is None or self.identity:
            return mask
        mask = np.asarray(mask, dtype=bool)
        known = self._came_out.get(image_key(mask))
        if known is not None:
            return known.copy()
        from skimage.transform import resize

        return resize(mask, self.square, order=0, anti_aliasing=False).astype(bool)

    def mask_out(self, mask: np.ndarray) -> np.ndarray:
        """A mask on the square grid, back on the slice's grid (a pixel is in where at least half
        of what it covers is)."""
        mask = np.asarray(mask, dtype=bool)
        if self.identity:
            return mask
        if mask.shape != self.square:
            raise InputError(f"a mask of shape {mask.shape} on a square grid of {self.square}")
        from skimage.transform import resize

        out = resize(mask.astype(np.float32), self.shape, order=1, anti_aliasing=True) >= 0.5
        self._came_out[image_key(out)] = mask.copy()
        while len(self._came_out) > REMEMBERED:
            self._came_out.popitem(last=False)
        return out

    def click_in(self, click: Click) -> Click:
        """A click on the slice's grid, at the middle of the pixels it covers on the square grid."""
        if self.identity:
            return click
        row = min(int((click.row + 0.5) * self.rows), self.square[0] - 1)
        col = min(int((click.col + 0.5) * self.cols), self.square[1] - 1)
        return replace(click, row=row, col=col)


class SquarePixelSegmenter:
    """A segmenter that sees every slice at square pixels while its callers work on the slice's
    own grid: clicks and masks in, masks out, on the grid given to :meth:`set_image`. The
    backend's logits stay its own (passed back to it unchanged); everything else (name,
    identity, embedding cells, interruptible, ...) is the wrapped backend's."""

    def __init__(self, inner, aspect: float, grid: SquareGrid | None = None) -> None:
        self.inner = inner
        self.aspect = float(aspect)
        self.grid = grid
        self._last: tuple[str, np.ndarray] | None = None  # the latest slice's key and its square pixels

    def __getattr__(self, attribute: str):
        if attribute == "inner":  # not set yet (a copy being built): no endless lookup
            raise AttributeError(attribute)
        return getattr(self.inner, attribute)

    def identity(self) -> dict:
        return {**self.inner.identity(), "pixel_aspect": round(self.aspect, 4)}

    def set_image(self, image: np.ndarray) -> None:
        image = np.asarray(image)
        if self.grid is None or self.grid.shape != image.shape[:2]:
            self.grid, self._last = SquareGrid(image.shape[:2], self.aspect), None
        key = image_key(image)
        if self._last is None or self._last[0] != key:  # a session sets the same slice again and again
            self._last = (key, self.grid.image(image))
        self.inner.set_image(self._last[1])

    @property
    def image_shape(self) -> tuple[int, int]:
        if self.grid is None:
            raise RuntimeError("call set_image() before segment()")
        return self.grid.shape

    def _out(self, result: SegmentResult | None) -> SegmentResult | None:
        return None if result is None else replace(result, mask=self.grid.mask_out(result.mask))

    def segment(self, clicks: Sequence[Click], prior: np.ndarray | None = None) -> SegmentResult:
        height, width = self.image_shape
        for click in clicks:
            if not (0 <= click.row < height and 0 <= click.col < width):
                raise InputError(f"click ({click.row}, {click.col}) lies outside the {height}x{width} image")
        return self._out(self.inner.segment([self.grid.click_in(c) for c in clicks], prior))

    def follow(self, previous: np.ndarray, leave_out: np.ndarray | None = None) -> SegmentResult:
        return self._out(self.inner.follow(self.grid.mask_in(previous),
                                           None if leave_out is None else self.grid.mask_in(leave_out)))

    def follow_boxed(self, previous: np.ndarray) -> SegmentResult | None:
        return self._out(self.inner.follow_boxed(self.grid.mask_in(previous)))

    def prior_from_mask(self, mask: np.ndarray) -> np.ndarray | None:
        return self.inner.prior_from_mask(self.grid.mask_in(mask))

    def mask_from_prior(self, prior: np.ndarray) -> np.ndarray:
        return self.grid.mask_out(self.inner.mask_from_prior(prior))


def square_pixels(segmenter, aspect: float, grid: SquareGrid | None = None):
    """``segmenter`` as it is where pixels are square enough, else wrapped to see square pixels
    (on ``grid`` where the caller shares one, so that both hand masks back exactly)."""
    if isinstance(segmenter, SquarePixelSegmenter):
        segmenter = segmenter.inner
    if is_square(aspect):
        return segmenter
    return SquarePixelSegmenter(segmenter, aspect, grid)
