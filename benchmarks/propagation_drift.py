"""Correcting a propagated mask that drifts or leaks, by the encoder's view (tried, not shipped).

On the abdominal CT the liver's propagation downwards takes in a little more of its
neighbours on each slice (the mask 1,909 px against 1,404 true at slice 96, fewer of its
cells looking like the liver: 0.65), until the growth rule ends it at slice 95, 27 slices
before the liver ends. Each variant below changes the segmenter's reading of a slice before
propagation's rules judge it (:class:`napari_ibis.propagation.Propagation`), using the cells
of the slice's embedding that look more like the start slice's surroundings than like the
structure (:mod:`napari_ibis.appearance`):

* ``negative-click``: where at least 10% of the mask looks unlike, a negative click in the
  largest such part, the previous mask's clicks and its likely part as the prior; kept where
  more of the new mask looks like the structure;
  (Shipped since for the liver and the spleen only, where the reading drifts on two slices in a
  row: ``Propagation._without_neighbour``, docs/BENCHMARKS.md.)
* ``trim``: the unlike cells cut out of the mask (the parts touching the previous mask kept);
  kept on the same condition;
* ``leak-negative-click``: only on a slice the growth rule would end (a leak), the negative
  click above; kept where the new mask is within the growth and shrink limits;
* ``leak-clip``: only on a leak, the mask cut to the previous one grown by 5% of its width;
* ``eroded-prior``: the previous slice's mask given to the segmenter as its prior shrunk by a
  tenth of its equivalent radius (at least a pixel; the clicks and the box unchanged), so
  that a structure that narrows is not held at its previous extent by the prior;
* ``units-trim`` (CT only): the mask's pixels outside the structure's Hounsfield units on the
  start slice (its 2nd-98th percentile, 3 x 3 median, widened by 20 HU) cut out, the parts
  touching the previous mask kept, their holes filled.

The same cases and oracle start as ``benchmarks/propagation.py --sets totalseg`` (MobileSAM,
at most 5 clicks on the slice where the structure is largest, no clicks after):

    python benchmarks/propagation_drift.py --variants negative-click trim leak-negative-click leak-clip

Writes benchmarks/results/propagation_drift.json and prints a table.
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
OUT = ROOT / "benchmarks" / "results" / "propagation_drift.json"
VARIANTS = ("none", "negative-click", "trim", "leak-negative-click", "leak-clip", "eroded-prior", "units-trim")
ERODED_SHARE = 0.1  # eroded-prior: of the mask's equivalent radius


def unlike_pixels(appearance, segmenter, mask: np.ndarray) -> np.ndarray | None:
    """The pixels of ``mask`` whose embedding cell looks more like the start slice's surroundings
    than like the structure; None where nothing can be measured (:meth:`Appearance.unlike`)."""
    return appearance.unlike(segmenter, mask)


def corrected_propagation(variant: str, Propagation):
    """A subclass of ``Propagation`` whose reading of each slice goes through ``variant`` first."""
    from scipy import ndimage as ndi

    from napari_ibis.segmenters.base import SegmentResult

    class Corrected(Propagation):
        def _one(self, index, previous, step, distance, tracker=None):
            self._current = index  # the slice units-trim reads
            if variant != "eroded-prior":
                return super()._one(index, previous, step, distance, tracker)
            segmenter, original = self.segmenter, self.segmenter.prior_from_mask

            def eroded(mask):
                mask = np.asarray(mask, dtype=bool)
                reach = max(1, int(round(ERODED_SHARE * np.sqrt(mask.sum() / np.pi))))
                shrunk = ndi.binary_erosion(mask, iterations=reach)
                return original(shrunk if shrunk.any() else mask)

            segmenter.prior_from_mask = eroded  # follow and follow_boxed read the previous mask through it
            try:
                return super()._one(index, previous, step, distance, tracker)
            finally:
                del segmenter.prior_from_mask

        def _boxed_if_alike(self, previous, followed):
            boxed = super()._boxed_if_alike(previous, followed)
            read = boxed or followed
            if variant == "units-trim":
                return (self._units_trimmed(previous, read) or boxed) if self._ct and read.mask.any() else boxed
            if variant in ("none", "eroded-prior") or self._appearance is None or not read.mask.any():
                return boxed
            leak = read.mask.sum() > self.max_growth * previous.sum()
            if variant.startswith("leak") and not leak:
                return boxed
            if variant == "leak-clip":
                reach = max(2, int(round(0.05 * np.sqrt(previous.sum()))))
                new = read.mask & ndi.binary_dilation(previous, iterations=reach)
                return self._within_limits(SegmentResult(new, None, read.score), previous) or boxed
            bad = unlike_pixels(self._appearance, self.segmenter, read.mask)
            if bad is None or not bad.any() or (not variant.startswith("leak") and bad.sum() < 0.1 * read.mask.sum()):
                return boxed
            if variant == "trim":
                labels, count = ndi.label(read.mask & ~bad)
                touching = [n for n in range(1, count + 1) if (previous & (labels == n)).any()]
                if not touching:
                    return boxed
                new = SegmentResult(np.isin(labels, touching), None, read.score)
            else:
                new = self._negative_click(previous, bad)
            if variant.startswith("leak"):
                return self._within_limits(new, previous) or boxed
            likeness = self._appearance.likeness
            better = likeness(self.segmenter, new.mask) > likeness(self.segmenter, read.mask)
            return new if better and new.mask.sum() >= 0.3 * read.mask.sum() else boxed

        def run(self, start, mask, direction="both", cancel=None):
            if self._ct:
                smooth = ndi.median_filter(np.asarray(self.volume[start], np.float32), 3)[np.asarray(mask, bool)]
                low, high = np.percentile(smooth, [2, 98])
                self._band = (low - 20.0, high + 20.0)
            yield from super().run(start, mask, direction, cancel)

        def _units_trimmed(self, previous, read):
            smooth = ndi.median_filter(np.asarray(self.volume[self._current], np.float32), 3)
            kept = read.mask & (smooth >= self._band[0]) & (smooth <= self._band[1])
            labels, count = ndi.label(kept)
            touching = [n for n in range(1, count + 1) if (previous & (labels == n)).any()]
            if not touching:
                return None
            return SegmentResult(ndi.binary_fill_holes(np.isin(labels, touching)) & read.mask, None, read.score)

        def _negative_click(self, previous, bad):
            return self.segmenter.follow(previous, leave_out=bad)  # shipped for uniform organs, gated

        def _within_limits(self, new, previous):
            area, before = new.mask.sum(), previous.sum()
            return new if self.min_ratio * before <= area <= self.max_growth * before else None

    return Corrected


def main() -> int:
    import torch

    from napari_ibis import propagation as propagation_module
    from napari_ibis.evaluation import evaluate_volume, oracle_start
    from napari_ibis.segmenters import build_segmenter
    from propagation import _set_of, cases

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS[1:]))
    parser.add_argument("--sets", nargs="+", default=["totalseg"], help="as in benchmarks/propagation.py")
    parser.add_argument("--sources", nargs="*", default=[], help="only cases whose source is one of these")
    parser.add_argument("--targets", nargs="*", default=[], help="only these structures")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    chosen = [c for c in cases(3, 3) if _set_of(c) in args.sets and (not args.sources or c["source"] in args.sources)
              and (not args.targets or c["target"] in args.targets)]
    segmenter = build_segmenter("mobilesam")
    shipped = propagation_module.Propagation
    for variant in args.variants:
        # evaluate_volume builds its own Propagation from the module
        propagation_module.Propagation = corrected_propagation(variant, shipped)
        rows, started = [], time.perf_counter()
        for case in chosen:
            row = evaluate_volume(case["volume"], case["mask"], segmenter, oracle_start(segmenter, 5))
            row.pop("_labels")
            rows.append({k: case[k] for k in ("group", "source", "target")} | {
                "dice_3d": float(row["dice_3d"]), "slices_propagated": row["slices_propagated"]})
            print(variant, case["source"], case["target"], f"dice {row['dice_3d']:.3f}", flush=True)
        groups = {g: float(np.mean([r["dice_3d"] for r in rows if r["group"] == g]))
                  for g in dict.fromkeys(r["group"] for r in rows)}
        results[variant] = {"groups": groups, "cases": rows, "seconds": time.perf_counter() - started}
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    for variant, result in results.items():
        for group, dice in result["groups"].items():
            print(f"| {variant} | {group} | {len([r for r in result['cases'] if r['group'] == group])} | {dice:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
