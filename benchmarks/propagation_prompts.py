"""Which prompts should MobileSAM get from the previous slice's mask when it follows a structure?

The shipped rule (``shipped``) gives the decoder a click inside each part of the previous
mask and that mask as the prior, and keeps the one of SAM's three masks that overlaps the
previous slice's most (:meth:`MobileSAMSegmenter.follow`); it also reads the slice with
each part's box (:meth:`MobileSAMSegmenter.follow_boxed`) and keeps that reading where at
least ``--min-added`` of the cells it adds look like the structure to the encoder
(``Propagation(min_added_likeness=...)``). Alternatives measured here on the same cases as
``benchmarks/propagation.py`` (oracle start, at most 5 clicks, no clicks after); every one
but ``spread_if_alike`` and ``largest_if_alike`` without the box reading:

* ``points``: the clicks' reading alone (the rule before the box reading);
* ``spread_if_alike``: the shipped rule with :func:`spread_clicks` in place of the box
  reading;
* ``largest_if_alike``: the shipped rule with the largest of SAM's three masks for the
  clicks in place of the box reading;
* ``grown``: the shipped prompts; of SAM's three masks, the one closest to the previous
  mask grown by a tenth of its equivalent radius (against a vessel's mask shrinking from
  slice to slice);
* ``box_points_prior``: per part of the previous mask, its box, its interior click and the
  part as the prior (one decoder call per part, the masks united);
* ``box_points``: the same without the prior;
* ``box_whole``: one box around the whole previous mask, the clicks and the prior;
* ``points_per_part``: the shipped prompts, one decoder call per part;
* ``best_score``: the shipped rule and ``box_points_prior`` both, the one SAM scores higher;
* ``spread``: the shipped rule with up to three clicks per part, spread along its core
  (:func:`spread_clicks`), so that an elongated part (an aortic arch, a loop of bowel)
  that parts into two on the next slice is clicked in both;
* ``spread_if_shrunk``: the shipped rule, and ``spread`` only where the shipped mask is
  smaller than ``--shrink`` times the previous slice's and the spread one lies between the
  two in size;
* ``box_if_shrunk``: the same with ``box_points_prior`` in place of ``spread``.

    python benchmarks/propagation_prompts.py --sets totalseg --cache /tmp/embeddings

``--cache`` keeps each slice's embedding on disk, so that the variants after the first cost
only their decoder calls. Writes benchmarks/results/propagation_prompts.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "results" / "propagation_prompts.json"
from napari_ibis.propagation import MIN_ADDED_LIKENESS  # noqa: E402
VARIANTS = ("shipped", "points", "spread_if_alike", "largest_if_alike", "grown", "box_points_prior", "box_points", "box_whole", "points_per_part", "best_score", "spread",
            "spread_if_shrunk", "box_if_shrunk")


def _parts(mask: np.ndarray) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """The parts :func:`prompts_from` clicks in, each with its box (top, left, bottom, right)."""
    from napari_ibis.segmenters.base import mask_parts

    boxed = []
    for part in mask_parts(mask):
        rows, cols = np.nonzero(part)
        boxed.append((part, (rows.min(), cols.min(), rows.max(), cols.max())))
    return boxed


def spread_clicks(mask: np.ndarray, most_per_part: int = 3):
    """Per part of ``mask``: its interior point, then the points of its core (at least half
    its greatest depth from the edge) farthest from the clicks so far, while they lie more
    than twice that depth away."""
    from scipy import ndimage as ndi

    from napari_ibis.segmenters.base import Click, mask_parts

    clicks = []
    for part in mask_parts(mask):
        depth = ndi.distance_transform_edt(np.pad(part, 1))[1:-1, 1:-1]
        deepest = float(depth.max())
        core = np.argwhere(depth >= max(1.0, 0.5 * deepest))
        chosen = [np.unravel_index(int(np.argmax(depth)), depth.shape)]
        while len(chosen) < most_per_part:
            far = np.min([np.hypot(*(core - np.asarray(c)).T) for c in chosen], axis=0)
            if far.max() <= 2 * deepest:
                break
            chosen.append(tuple(core[int(np.argmax(far))]))
        clicks += [Click(int(r), int(c), True, source="propagation") for r, c in chosen]
    return clicks


def _closest(segmenter, reference, logits, scores):
    """Of the decoder's masks, the one that overlaps ``reference`` most: (mask, score, index)."""
    from napari_ibis.metrics import iou

    masks = [segmenter.mask_from_prior(candidate) for candidate in logits]
    best = int(np.argmax([iou(reference, mask) for mask in masks]))
    return masks[best], float(scores[best]), best


def closest_to(segmenter, clicks, previous, reference):
    """``clicks`` and ``previous`` as the prior to the decoder; of its masks, the one closest to ``reference``."""
    from napari_ibis.segmenters.base import SegmentResult

    logits, scores = segmenter._decode(clicks, segmenter.prior_from_mask(previous), True)
    mask, score, best = _closest(segmenter, reference, logits, scores)
    return SegmentResult(mask, logits[best], score)


def follow_with(variant: str, shipped, shrink: float = 0.5):
    """A ``follow(self, previous)`` for ``variant``; ``shipped`` is the segmenter's own;
    ``shrink``: the area ratio below which the ``*_if_shrunk`` variants try their other prompts."""
    from napari_ibis.segmenters.base import SegmentResult, prompts_from

    def per_part(segmenter, previous, box: bool, points: bool, prior: bool) -> SegmentResult:
        out, scores = np.zeros(segmenter.image_shape, dtype=bool), []
        for part, part_box in _parts(previous):
            logits, decoded = segmenter._decode(prompts_from(part) if points else [],
                                                segmenter.prior_from_mask(part) if prior else None, True,
                                                box=part_box if box else None)
            mask, score, _ = _closest(segmenter, part, logits, decoded)
            out |= mask
            scores.append(score)
        return SegmentResult(out, segmenter.prior_from_mask(out), float(min(scores)) if scores else 0.0)

    def follow(self, previous):
        if variant in ("shipped", "points", "spread_if_alike") or not previous.any():
            return shipped(self, previous)
        if variant == "grown":
            from scipy import ndimage as ndi

            reach = max(1, int(round(0.1 * np.sqrt(previous.sum() / np.pi))))
            return closest_to(self, prompts_from(previous), previous, ndi.binary_dilation(previous, iterations=reach))
        if variant == "box_whole":
            rows, cols = np.nonzero(previous)
            logits, scores = self._decode(prompts_from(previous), self.prior_from_mask(previous), True,
                                          box=(rows.min(), cols.min(), rows.max(), cols.max()))
            mask, score, _ = _closest(self, previous, logits, scores)
            return SegmentResult(mask, self.prior_from_mask(mask), score)
        if variant in ("spread_if_shrunk", "box_if_shrunk"):
            own = shipped(self, previous)
            if own.mask.sum() >= shrink * previous.sum():
                return own
            other = follow_with("spread" if variant == "spread_if_shrunk" else "box_points_prior", shipped)(self, previous)
            return other if own.mask.sum() < other.mask.sum() <= previous.sum() else own
        if variant == "spread":
            return closest_to(self, spread_clicks(previous), previous, previous)
        if variant == "points_per_part":
            return per_part(self, previous, box=False, points=True, prior=True)
        boxed = per_part(self, previous, box=True, points=True, prior=variant != "box_points")
        if variant == "best_score":
            own = shipped(self, previous)
            return boxed if boxed.score > own.score else own
        return boxed

    return follow


def boxed_with(variant: str, shipped):
    """A ``follow_boxed(self, previous)`` for ``variant``; ``shipped`` is the segmenter's own."""
    from napari_ibis.segmenters.base import SegmentResult, prompts_from

    if variant == "spread_if_alike":
        return lambda self, previous: closest_to(self, spread_clicks(previous), previous, previous)
    if variant == "largest_if_alike":
        def largest(self, previous):
            logits, scores = self._decode(prompts_from(previous), self.prior_from_mask(previous), True)
            masks = [self.mask_from_prior(candidate) for candidate in logits]
            best = int(np.argmax([mask.sum() for mask in masks]))
            return SegmentResult(masks[best], logits[best], float(scores[best]))

        return largest
    return shipped


def with_threshold(propagation_class, min_added: float):
    """``propagation_class`` with ``min_added_likeness`` set (above 1: the box reading never kept)."""

    class Tuned(propagation_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, min_added_likeness=min_added, **kwargs)

    return Tuned


def disk_cached(folder: Path):
    """A stand-in for ``mobilesam.shared_embedding`` that keeps every slice's embedding in ``folder``."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)

    def shared_embedding(key, compute):
        file = folder / f"{key}.pt"
        if file.is_file():
            return torch.load(file, weights_only=True)
        embedding = compute()
        torch.save(embedding, file)
        return embedding

    return shared_embedding


def main() -> int:
    import torch

    import napari_ibis.segmenters.mobilesam as mobilesam
    from napari_ibis.evaluation import evaluate_volume, oracle_start
    from napari_ibis.segmenters import build_segmenter
    from propagation import _set_of, cases  # benchmarks/propagation.py

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--sets", nargs="+", default=["totalseg"], choices=["totalseg", "aal", "lesions", "phantoms"])
    parser.add_argument("--organs", type=int, default=3, help="largest structures per TotalSegmentator volume")
    parser.add_argument("--cache", type=Path, default=None, help="a folder for the slices' embeddings")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shrink", type=float, default=0.5, help="the *_if_shrunk variants' area ratio")
    parser.add_argument("--min-added", type=float, default=MIN_ADDED_LIKENESS,
                        help="shipped, spread_if_alike: the share of the added cells that must look like the structure")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.cache:
        mobilesam.shared_embedding = disk_cached(args.cache)
    import napari_ibis.propagation as engine_module

    shipped, shipped_boxed, engine = (mobilesam.MobileSAMSegmenter.follow, mobilesam.MobileSAMSegmenter.follow_boxed,
                                      engine_module.Propagation)
    rows = []
    for case in (c for c in cases(args.organs, 3) if _set_of(c) in args.sets):
        for variant in args.variants:
            mobilesam.MobileSAMSegmenter.follow = follow_with(variant, shipped, args.shrink)
            mobilesam.MobileSAMSegmenter.follow_boxed = boxed_with(variant, shipped_boxed)
            engine_module.Propagation = with_threshold(
                engine, args.min_added if variant in ("shipped", "spread_if_alike", "largest_if_alike") else 2.0)
            segmenter = build_segmenter("mobilesam")
            started = time.perf_counter()
            row = evaluate_volume(case["volume"], case["mask"], segmenter, oracle_start(segmenter, 5))
            row.pop("_labels")
            rows.append({"variant": variant, "group": case["group"], "source": case["source"], "target": case["target"],
                         "dice_3d": float(row["dice_3d"]), "start_iou": float(row["start_iou"]),
                         "slices_propagated": row["slices_propagated"], "slices_true": row["slices_true"],
                         "seconds": time.perf_counter() - started})
            print(variant, case["source"], case["target"], f"dice {row['dice_3d']:.3f}", flush=True)
            means = {v: float(np.mean([r["dice_3d"] for r in rows if r["variant"] == v])) for v in args.variants
                     if any(r["variant"] == v for r in rows)}
            args.out.write_text(json.dumps({"sets": args.sets, "shrink": args.shrink, "means": means, "cases": rows},
                                           indent=1) + "\n")
    mobilesam.MobileSAMSegmenter.follow, mobilesam.MobileSAMSegmenter.follow_boxed = shipped, shipped_boxed
    engine_module.Propagation = engine
    print("| case | " + " | ".join(args.variants) + " |")
    print("|---|" + "---|" * len(args.variants))
    for key in dict.fromkeys((r["source"], r["target"]) for r in rows):
        dice = {r["variant"]: r["dice_3d"] for r in rows if (r["source"], r["target"]) == key}
        print(f"| {key[0]} {key[1]} | " + " | ".join(f"{dice.get(v, float('nan')):.3f}" for v in args.variants) + " |")
    print("| mean | " + " | ".join(f"{means[v]:.3f}" for v in args.variants) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
