"""An atlas prior: where labelled scans have a named structure, moved onto a new slice.

With few labelled patients, a learnt head mistakes what it has seen for where things lie
on a new patient; registering a labelled slice onto the new one is the classical answer
(benchmarks/atlas_prior.py measures both). :class:`SliceAtlas` keeps labelled slices on a
common grid in body-box coordinates. For a query it:

1. finds the structure's name in the query (the longest atlas name in its words);
2. takes, of the atlas slices that hold the structure, the one whose grey levels
   correlate best with the new slice (both cropped to the body, resized to one grid);
3. fits a scale and shift per axis that best correlates the two (Powell, on 48 x 48);
4. unless the moved slice still correlates poorly with the new one (``MIN_SIMILARITY``), or
   other atlas slices are much more like it than any that holds the structure (a liver
   asked for on a brain: ``MAX_GAP``), moves that slice's mask with it, blurs it (5% of the
   image side) and scales the peak to 1;
5. where the grey levels correlate poorly (another modality: an MR slice against CT
   atlas slices), steps 2-4 again on the edges (gradient magnitude), which CT and MR share
   where grey levels do not; a synthetic image's edges stay below
   ``MIN_EDGE_SIMILARITY``. ``last_fit`` says which fit a prior came from;
6. for a region (below) fitted by its grey levels, the moved slice is then bent onto the
   new one (TV-L1 optical flow, scikit-image) and the mask with it: one brain is much like
   another once the scale is right, unlike an abdomen (benchmarks/atlas_mask.py --deform).

An atlas may also know what kind of scan each of its slices is ("head", "trunk") and keep
each slice's :func:`scan_descriptor` (the pointer agent's image encoder, averaged over the
tissue), and the same of reference slices that hold no labels (scans whose body part is
known). :meth:`SliceAtlas.kind_elsewhere` then says when a new slice's nearest slices of
these are all of a kind that never holds the named structure (a liver asked for on a brain): grey
levels cannot tell this (a head in its box correlates with a trunk in its box as well as
with another head), the encoder's features can (benchmarks/scan_kind.py).

The pointer agent weights its map by the prior where its folder holds an ``atlas.npz``
(:meth:`napari_ibis.policies.pointer.PointerPolicy.guided_map`); names the atlas does not
hold, and slices it does not resemble, leave the map as it is. Structures the atlas lists
as ``regions`` (a parcellation's, such as AAL's brain regions, whose borders are drawn by
the atlas rather than seen as edges) it also places as a start mask
(:meth:`~napari_ibis.policies.pointer.PointerPolicy.place`).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np

from .head import body_box
from .names import in_atlas_words, structure_kinds

GRID = 96  # the common grid of the atlas slices
MATCH_GRID = 48  # where slices are compared and the affine fitted
BLUR = 0.05  # of the image side: how far the prior reaches past the moved mask
MIN_SIMILARITY = 0.65  # correlation of the moved atlas slice with the new one below which the atlas is not trusted
MIN_EDGE_SIMILARITY = 0.35  # the same for the edges' fit (held-out MR 0.28-0.53, phantoms at most 0.29: atlas_edges.py)
MAX_GAP = 0.25  # how much less like the new slice the structure's slices may be than the likest (atlas_gate.py)
DEFORM = 10.0  # TV-L1 attachment of the bending of a region's grey fit (0: none; 20 follows noise: atlas_mask.py)
KIND_NEAREST = 5  # the nearest atlas slices that must all be of a kind of scan lacking the structure (scan_kind.py)


def scan_descriptor(features, framing, rgb: np.ndarray) -> np.ndarray:
    """What kind of scan a slice is, as its encoder sees it: the features (C, g, g) averaged
    over the cells that cover tissue (grey level above 25; every cell of the slice if fewer
    than four do), float32 (C,)."""
    from skimage.transform import resize

    rows, cols = framing.valid_cells
    cells = np.asarray(features, dtype=np.float32)[:, :rows, :cols]
    tissue = resize(_grey(rgb) > 25 / 255, (rows, cols), order=0, anti_aliasing=False)
    if tissue.sum() < 4:
        tissue = np.ones((rows, cols), dtype=bool)
    return cells[:, tissue].mean(axis=1)


def _grey(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb)
    return (rgb.mean(axis=2) if rgb.ndim == 3 else rgb).astype(np.float32) / 255.0


def _crop(array: np.ndarray, box, size: int) -> np.ndarray:
    """``array`` inside ``box`` resized to (size, size)."""
    from skimage.transform import resize

    top, left, bottom, right = box
    return resize(array[top:bottom, left:right].astype(np.float32), (size, size), order=1, anti_aliasing=False)


def _uncrop(grid: np.ndarray, box, shape) -> np.ndarray:
    """The inverse of :func:`_crop`: ``grid`` resized back into ``box`` of a zero image of ``shape``."""
    from skimage.transform import resize

    top, left, bottom, right = box
    out = np.zeros(shape, dtype=np.float32)
    out[top:bottom, left:right] = resize(grid, (bottom - top, right - left), order=1, anti_aliasing=False)
    return out


def _edges(grid: np.ndarray) -> np.ndarray:
    """Gradient magnitude (Sobel) of a grid of grey levels."""
    from skimage.filters import sobel

    return sobel(grid)


def _unit(values: np.ndarray) -> np.ndarray:
    values = values - values.mean()
    return values / (np.linalg.norm(values) + 1e-6)


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols): each pixel's coordinates on a ``size`` x ``size`` grid."""
    return np.meshgrid(*(np.arange(size, dtype=np.float32),) * 2, indexing="ij")


def _scale_shift(target: np.ndarray, moving: np.ndarray) -> tuple[np.ndarray, float]:
    """(sy, sx, ty, tx) on the ``MATCH_GRID``: where each target pixel is found in ``moving``
    (about the centre), the best correlating within bounds; and that correlation."""
    from scipy.optimize import minimize
    from skimage.transform import warp

    rows, cols = _pixel_grid(MATCH_GRID)
    target = _unit(target)

    def cost(p):
        moved = warp(moving, _coords(p, rows, cols, (MATCH_GRID - 1) / 2), order=1, mode="constant")
        return -float((_unit(moved) * target).sum())

    best = minimize(cost, [1.0, 1.0, 0.0, 0.0], method="Powell",
                    bounds=[(0.6, 1.6), (0.6, 1.6), (-12, 12), (-12, 12)], options={"xtol": 1e-2, "ftol": 1e-4})
    return np.asarray(best.x, dtype=np.float32), -float(best.fun)


def _coords(p, rows, cols, centre):
    sy, sx, ty, tx = p
    return np.array([(rows - centre) * sy + centre + ty, (cols - centre) * sx + centre + tx])


class SliceAtlas:
    """Labelled slices on a common grid; :meth:`prior` moves one onto a new slice."""

    def __init__(self, grey: np.ndarray, names: list[str], holders: dict[str, np.ndarray],
                 masks: dict[str, np.ndarray], regions=(), kinds=None, descriptors=None, encoder: str = "") -> None:
        self.grey = grey  # (n, GRID, GRID) uint8
        # (n + r,) the kind of scan of each slice, then of r unlabelled reference slices; (n + r, C) their descriptors
        self.kinds = None if kinds is None else np.asarray(kinds, dtype=str)
        self.descriptors = None if descriptors is None else np.asarray(descriptors, dtype=np.float32)
        if (self.kinds is None) != (self.descriptors is None) or self.kinds is not None and not (
                len(self.kinds) == len(self.descriptors) >= len(grey)):
            raise ValueError(f"an atlas of {len(grey)} slices needs a kind and a descriptor for each (and for any "
                             f"reference slice after them), or neither")
        self.encoder = encoder  # the image encoder the descriptors came from
        self.kind_nearest = KIND_NEAREST
        self.regions = frozenset(regions) & set(names)  # names whose borders are the atlas's own, not edges
        self.last_similarity: float | None = None  # of the latest fit's moved slice with the new one
        self.last_fit: str | None = None  # "grey" or "edges": which fit the latest prior came from (None: no prior)
        self.last_likest: float | None = None  # the latest slice's correlation with its likest atlas slice, before a fit
        self.last_elsewhere = False  # the latest prior was refused because the structure's slices are far less alike
        self.last_region: np.ndarray | None = None  # the latest prior's structure moved onto the slice, not blurred
        self.deform = DEFORM  # see step 6 of the module docstring
        self.names = list(names)
        self.holders = holders  # name -> indices of the slices that hold it
        self.masks = masks  # name -> (len(holders[name]), GRID, GRID) bool
        self._small = np.stack([_crop(g / 255.0, (0, 0, GRID, GRID), MATCH_GRID) for g in grey]) \
            if len(grey) else np.zeros((0, MATCH_GRID, MATCH_GRID), np.float32)  # the slices on the MATCH_GRID
        self._match = np.stack([_unit(small).ravel() for small in self._small]) \
            if len(grey) else np.zeros((0, MATCH_GRID * MATCH_GRID), np.float32)
        self._edge_match = np.stack([_unit(_edges(small)).ravel() for small in self._small]) \
            if len(grey) else np.zeros((0, MATCH_GRID * MATCH_GRID), np.float32)
        self._spelling = {n.lower(): n for n in self.names}
        by_length = sorted(self.names, key=len, reverse=True)
        self._pattern = re.compile(r"\b(" + "|".join(map(re.escape, by_length)) + r")\b", re.IGNORECASE) if by_length else None
        self._kinds_of = structure_kinds(self.names)
        keys = sorted(self._kinds_of, key=len, reverse=True)
        self._kind_pattern = re.compile(r"\b(" + "|".join(map(re.escape, keys)) + r")(?:s|e)?\b", re.IGNORECASE) \
            if keys else None

    # -- building and keeping ----------------------------------------------------------
    @classmethod
    def from_slices(cls, slices, regions=(), kinds=None, descriptors=None, encoder: str = "") -> SliceAtlas:
        """From labelled slices (``rgb`` (H, W, 3) uint8 and ``masks``: name -> bool (H, W));
        ``regions``: the names a parcellation draws (see the module docstring); ``kinds``
        and ``descriptors``: per slice, the kind of scan and its :func:`scan_descriptor` by
        the image encoder named ``encoder`` (both or neither), followed by those of any
        unlabelled reference slices."""
        grey, holders, masks = [], {}, {}
        for index, item in enumerate(slices):
            box = body_box(item.rgb, kind="largest_part")
            grey.append(np.round(_crop(_grey(item.rgb), box, GRID) * 255).astype(np.uint8))
            for name, mask in item.masks.items():
                holders.setdefault(name, []).append(index)
                masks.setdefault(name, []).append(_crop(mask, box, GRID) >= 0.5)
        names = sorted(holders)
        return cls(np.stack(grey) if grey else np.zeros((0, GRID, GRID), np.uint8), names,
                   {n: np.asarray(holders[n]) for n in names}, {n: np.stack(masks[n]) for n in names}, regions,
                   kinds, descriptors, encoder)

    def save(self, path: str | Path) -> None:
        arrays = {"grey": self.grey, "names": np.asarray(self.names),
                  "regions": np.asarray(sorted(self.regions), dtype=str)}
        if self.descriptors is not None:
            arrays |= {"kinds": self.kinds, "descriptors": self.descriptors.astype(np.float16),
                       "encoder": np.asarray(self.encoder)}
        for i, name in enumerate(self.names):
            arrays[f"holders_{i}"] = self.holders[name]
            arrays[f"masks_{i}"] = np.packbits(self.masks[name], axis=-1)
        np.savez_compressed(path, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> SliceAtlas:
        with np.load(path, allow_pickle=False) as data:
            names = [str(n) for n in data["names"]]
            kinds = "descriptors" in data.files  # older files: no kinds of scan
            return cls(data["grey"], names, {n: data[f"holders_{i}"] for i, n in enumerate(names)},
                       {n: np.unpackbits(data[f"masks_{i}"], axis=-1, count=GRID).astype(bool)
                        for i, n in enumerate(names)},
                       [str(n) for n in data["regions"]] if "regions" in data.files else (),  # older files: none
                       data["kinds"] if kinds else None, data["descriptors"] if kinds else None,
                       str(data["encoder"]) if kinds else "")

    # -- use ---------------------------------------------------------------------------

    def name_in(self, query: str) -> str | None:
        """The atlas structure the query names (the longest name among its words, or among those
        of :data:`~napari_ibis.grounding.names.ALIASES`: "the bladder" is the urinary bladder), if any."""
        found = self._pattern.findall(query) if self._pattern else []
        if not found and self._pattern:
            found = self._pattern.findall(in_atlas_words(query))
        return self._spelling[max(found, key=len).lower()] if found else None

    def members_in(self, query: str) -> tuple[str, list[str]] | None:
        """Where the query names no atlas structure but a kind of them without its side, lobe or
        level ("the kidney", "the lungs", "a vertebra"): (that kind, the atlas structures of it)."""
        if self.name_in(query) is not None or self._kind_pattern is None:
            return None
        query = in_atlas_words(query)
        found = self._kind_pattern.findall(query)
        if not found:
            return None
        kind = max(found, key=len).lower()
        members = self._kinds_of[kind]
        sides = {side for side in ("left", "right") if re.search(rf"\b{side}\b", query, re.IGNORECASE)}
        if len(sides) == 1:  # "the right lung": its lobes only
            side = sides.pop()
            members = [m for m in members if m.lower().startswith(side)] or members
        return kind, members

    def kind_elsewhere(self, descriptor: np.ndarray, name: str | None) -> str | None:
        """The kind of scan ``descriptor`` (a new slice's :func:`scan_descriptor`) looks like,
        where its ``kind_nearest`` nearest slices (labelled or reference; cosine, about their
        mean) are all of kinds in which the atlas never labels ``name``; None where one of them
        is of a kind that does, where the atlas does not hold ``name`` or keeps no descriptors."""
        if self.descriptors is None or self.kinds is None or name not in self.holders or not len(self.descriptors):
            return None
        centre = self.descriptors.mean(axis=0)
        atlas = self.descriptors - centre
        atlas = atlas / (np.linalg.norm(atlas, axis=1, keepdims=True) + 1e-6)
        new = np.asarray(descriptor, dtype=np.float32) - centre
        similarity = atlas @ (new / (np.linalg.norm(new) + 1e-6))
        nearest = np.argsort(-similarity)[: self.kind_nearest]
        holding = set(self.kinds[self.holders[name]])
        near = [str(k) for k in self.kinds[nearest]]
        return None if holding & set(near) else Counter(near).most_common(1)[0][0]

    def likeness(self, rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray]:
        """The correlation of ``rgb`` (cropped to the body, on the ``MATCH_GRID``) with every
        atlas slice; the body box and the cropped grey levels it was measured on."""
        box = body_box(rgb, kind="largest_part")
        target = _crop(_grey(rgb), box, MATCH_GRID)
        return self._match @ _unit(target).ravel(), box, target

    def prior(self, rgb: np.ndarray, query: str) -> np.ndarray | None:
        """(H, W) in [0, 1], peak 1: where the atlas puts the structure ``query`` names on
        ``rgb``; None when the atlas does not hold it, when its slices that hold it are far less
        like ``rgb`` than its likest slice (``MAX_GAP``: another part of the body), or when the
        closest of them, moved, still correlates less than ``MIN_SIMILARITY`` with ``rgb`` in
        grey levels and less than ``MIN_EDGE_SIMILARITY`` in edges (a synthetic image:
        benchmarks/atlas_prior.py, benchmarks/atlas_edges.py)."""
        from scipy import ndimage as ndi
        from skimage.transform import warp

        self.last_similarity = self.last_fit = self.last_likest = self.last_region = None
        self.last_elsewhere = False
        name = self.name_in(query)
        if name is None:
            return None
        everywhere, box, target = self.likeness(rgb)
        holders = self.holders[name]
        best = int(np.argmax(everywhere[holders]))
        self.last_likest = float(everywhere.max())
        if self.last_likest - float(everywhere[holders][best]) > MAX_GAP:
            self.last_elsewhere = True
            return None
        fit, similarity = _scale_shift(target, self._small[holders[best]])
        kind = "grey"
        if similarity < MIN_SIMILARITY:
            best = int(np.argmax(self._edge_match[holders] @ _unit(_edges(target)).ravel()))
            fit, similarity = _scale_shift(_edges(target), _edges(self._small[holders[best]]))
            kind = "edges"
        self.last_similarity = similarity
        if similarity < (MIN_SIMILARITY if kind == "grey" else MIN_EDGE_SIMILARITY):
            return None
        self.last_fit = kind
        sy, sx, ty, tx = fit
        rows, cols = _pixel_grid(GRID)
        scale = GRID / MATCH_GRID
        coords = _coords((sy, sx, ty * scale, tx * scale), rows, cols, (GRID - 1) / 2)
        moved = warp(self.masks[name][best].astype(np.float32), coords, order=1, mode="constant")
        if kind == "grey" and name in self.regions and self.deform:
            moved = self._bent(moved, warp(self.grey[holders[best]] / 255.0, coords, order=1, mode="constant"),
                               _crop(_grey(rgb), box, GRID))
        moved = _uncrop(moved, box, np.asarray(rgb).shape[:2])
        self.last_region = moved >= 0.5
        out = ndi.gaussian_filter(moved, BLUR * max(np.asarray(rgb).shape[:2]))
        return out / out.max() if out.max() > 0 else None

    def _bent(self, mask: np.ndarray, moved: np.ndarray, target: np.ndarray) -> np.ndarray:
        """``mask`` (on the ``GRID``) carried by the optical flow that bends ``moved`` (the
        fitted atlas slice's grey levels) onto ``target`` (the new slice's)."""
        from skimage.registration import optical_flow_tvl1
        from skimage.transform import warp

        rows, cols = _pixel_grid(GRID)
        flow_rows, flow_cols = optical_flow_tvl1(target, moved.astype(np.float32), attachment=self.deform)
        return warp(mask, np.array([rows + flow_rows, cols + flow_cols]), order=1, mode="constant")
