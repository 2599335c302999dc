"""Does the tissue under a propagated mask still look like the structure? (no Qt)

On the start slice of a propagation, the segmenter's own image embedding (64x64 cells of
256 numbers for the TinyViT backends: LiteMedSAM, MobileSAM) is read under the
structure's mask and in a ring of cells around it. On a later slice, each cell under the
new mask is compared with both by cosine similarity: a cell whose most similar start cell
lies in the structure looks like the structure. When few of the new mask's cells do, the
mask has slid onto a neighbour (a lung tumour's propagation running on down the aorta
beside it, which has the same grey level), and propagation stops there. The embedding is
computed for segmentation anyway, so the check costs a few small matrix products.
"""

from __future__ import annotations

import numpy as np

from .segmenters.base import Segmenter


def _coverage(mask: np.ndarray, filled: tuple[int, int], grid: int) -> np.ndarray:
    """How much of each embedding cell the mask covers (0..1); the padding cells stay 0."""
    from skimage.transform import resize

    cover = np.zeros((grid, grid), dtype=np.float32)
    cover[: filled[0], : filled[1]] = resize(np.asarray(mask, dtype=np.float32), filled, order=1, anti_aliasing=True)
    return cover


class Appearance:
    """The structure and its surroundings as the encoder saw them on the start slice."""

    def __init__(self, cells: np.ndarray, filled: tuple[int, int], mask: np.ndarray, ring: int = 4) -> None:
        from scipy import ndimage

        cover = _coverage(mask, filled, cells.shape[0])
        inside = cover >= 0.5
        if not inside.any():  # a structure smaller than a cell: its most covered cell
            inside = cover == cover.max()
        around = ndimage.binary_dilation(cover > 0, iterations=ring) & (cover == 0)
        around[filled[0]:, :] = around[:, filled[1]:] = False
        self.structure = cells[inside]
        self.surroundings = cells[around]

    @classmethod
    def of(cls, segmenter: Segmenter, mask: np.ndarray) -> "Appearance | None":
        """From the segmenter's current slice; None where the backend has no embedding to read."""
        found = segmenter.embedding_cells()
        return None if found is None else cls(*found, mask)

    def _chosen(self, segmenter: Segmenter, mask: np.ndarray):
        """(the vectors of the cells ``mask`` covers at least half, where they lie on the grid), or None."""
        found = segmenter.embedding_cells()
        if found is None or not len(self.surroundings):
            return None
        cells, filled = found
        chosen = _coverage(mask, filled, cells.shape[0]) >= 0.5
        return None if not chosen.any() else (cells[chosen], chosen, filled)

    def _alike(self, vectors: np.ndarray) -> np.ndarray:
        """Per cell vector: does its most similar start cell lie in the structure rather than around it?"""
        return (vectors @ self.structure.T).max(axis=1) > (vectors @ self.surroundings.T).max(axis=1)

    def unlike(self, segmenter: Segmenter, mask: np.ndarray) -> np.ndarray | None:
        """The pixels of ``mask`` whose cell looks more like the surroundings than like the
        structure (bool, the mask's shape); None when it cannot be measured."""
        from skimage.transform import resize

        found = self._chosen(segmenter, mask)
        if found is None:
            return None
        vectors, chosen, filled = found
        grid = np.zeros(chosen.shape, dtype=np.float32)
        grid[chosen] = ~self._alike(vectors)
        return (resize(grid[: filled[0], : filled[1]], mask.shape, order=0) > 0.5) & np.asarray(mask, bool)

    def likeness(self, segmenter: Segmenter, mask: np.ndarray) -> float:
        """The share of ``mask``'s cells (those it covers at least half) on the segmenter's
        current slice that look more like the structure than like its surroundings; NaN
        when it cannot be measured (a mask smaller than half a cell, no embedding)."""
        found = self._chosen(segmenter, mask)
        return float("nan") if found is None else float(np.mean(self._alike(found[0])))
