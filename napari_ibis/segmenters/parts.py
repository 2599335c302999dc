"""Clicks on parts of a structure that lie apart, decoded apart.

SAM's mask decoder reads all the clicks of one call as one object: a positive click on
each kidney gives neither (IoU 0.03-0.07 against the two on four real CT and MR slices,
0.65-0.91 with each click decoded on its own; docs/BENCHMARKS.md, "Clicks on parts apart").
So where a backend sets ``decodes_parts_apart`` (MobileSAM, SAM 2), :meth:`Segmenter.segment`
hands its clicks here first. Two positive clicks belong to one part where the object one of
them finds alone (:meth:`Segmenter.object_at`) holds the other or touches the other's; each
part is decoded with its own positive clicks, the negative clicks inside it or nearest to
it, and, as its prior, the pieces of the previous mask that belong to it (a new part, none of
whose clicks the previous mask holds, starts without one); a part the previous mask settles
(it holds the part's positive clicks and none of its negative ones: nothing asks for a change
there) keeps its pieces as they were. The parts' masks are united. Clicks that all belong to one part are decoded together, as before.
"""

from __future__ import annotations

import numpy as np

TOUCH = 2  # pixels: objects this close count as touching


def click_groups(positives: list, objects: list[np.ndarray]) -> list[list[int]]:
    """Indices of ``positives`` grouped into parts, in click order: linked where the object
    one click finds alone (``objects``, one per click) holds the other click or lies within
    ``TOUCH`` pixels of the other's object; never two clicks that name different targets
    (the agent's "left kidney" and "right kidney": a single click's object can be the whole
    region around both)."""
    from scipy import ndimage as ndi

    grown = [ndi.binary_dilation(o, iterations=TOUCH) for o in objects]
    parent = list(range(len(positives)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i, a in enumerate(positives):
        for j in range(i):
            b = positives[j]
            if a.target and b.target and a.target.lower() != b.target.lower():
                continue
            if objects[i][b.row, b.col] or objects[j][a.row, a.col] or (grown[i] & objects[j]).any():
                parent[root(i)] = root(j)
    roots = list(dict.fromkeys(root(i) for i in range(len(positives))))
    return [[i for i in range(len(positives)) if root(i) == r] for r in roots]


def segment_in_parts(segmenter, clicks: list, prior: np.ndarray | None):
    """(mask, logits, score) of ``clicks`` (:class:`~napari_ibis.segmenters.base.Click`) decoded part
    by part by ``segmenter`` (module docstring), or None where the positive clicks make one part
    (decode them together)."""
    from scipy import ndimage as ndi

    positives = [c for c in clicks if c.positive]
    if len(positives) < 2:
        return None
    objects = [segmenter.object_at(c) for c in positives]
    groups = click_groups(positives, objects)
    if len(groups) == 1:
        return None
    regions = [np.any([objects[i] for i in group], axis=0) for group in groups]

    def nearest(row: float, col: float) -> int:
        return int(np.argmin([min(np.hypot(positives[i].row - row, positives[i].col - col) for i in group)
                              for group in groups]))

    previous = segmenter.mask_from_prior(prior) if prior is not None else None
    kept = [np.zeros_like(r) for r in regions]  # the previous mask's pieces, each with the part it overlaps most
    if previous is not None and previous.any():
        pieces, count = ndi.label(previous)
        for label in range(1, count + 1):
            piece = pieces == label
            overlaps = [int((piece & r).sum()) for r in regions]
            rows, cols = np.nonzero(piece)
            kept[int(np.argmax(overlaps)) if max(overlaps) else nearest(rows.mean(), cols.mean())] |= piece
    regions = [r | k for r, k in zip(regions, kept)]
    part_of = {id(positives[i]): k for k, group in enumerate(groups) for i in group}
    part_clicks = [[] for _ in groups]  # each part's clicks in the order they were made
    for click in clicks:
        if click.positive:
            part_clicks[part_of[id(click)]].append(click)
        else:  # a negative click: the part it lies in, else the nearest
            inside = [k for k, region in enumerate(regions) if region[click.row, click.col]]
            part_clicks[inside[0] if inside else nearest(click.row, click.col)].append(click)
    mask, logits, scores = None, None, []
    for region, own, pieces_kept in zip(regions, part_clicks, kept):
        held = [pieces_kept[c.row, c.col] for c in own]
        if pieces_kept.any() and all(h == c.positive for h, c in zip(held, own)):
            # settled: the previous mask holds its positive clicks and none of its negative ones, so nothing asks
            # for a change here (SAM re-decoding a part from its own mask and one click shrinks it: 189 -> 94 px)
            frame = None if prior is None else segmenter.prior_from_mask(pieces_kept)
            part_logits = prior if frame is None else np.where(frame > 0, prior, -8.0).astype(np.float32)
            part = (pieces_kept, part_logits, float("nan"))
        else:
            part_prior = None  # a new part (none of its clicks in the previous mask) starts without one
            if prior is not None and any(held):
                inside = segmenter.prior_from_mask(ndi.binary_dilation(region, iterations=3))
                part_prior = prior if inside is None else np.where(inside > 0, prior, np.minimum(prior, -8.0)).astype(np.float32)
            result = segmenter._segment(own, part_prior)
            part = (result.mask, result.logits, result.score)
        mask = part[0] if mask is None else mask | part[0]
        if part[1] is not None:
            logits = part[1] if logits is None else np.maximum(logits, part[1])
        scores.append(part[2])
    return mask, logits, float(np.nanmin(scores)) if np.isfinite(scores).any() else float("nan")
