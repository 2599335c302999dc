"""Carry a finished slice's mask through a volume, slice by slice (no Qt).

From a start slice whose mask is done (the agent's, the person's or an imported one), the
structure is followed to the neighbouring slices, up (increasing index), down or both:

1. the previous slice's mask gives the prompts for the next (``Segmenter.follow``): a
   positive click at the interior point of each of its parts (so a structure that splits
   keeps both) with the mask as the prior, as micro-sam's ``segment_mask_in_volume``
   does; the classical backend seeds its random walker with the mask's eroded inside and
   the outside of its grown outline. Where the segmenter also reads the slice with each
   part's box (``Segmenter.follow_boxed``: MobileSAM), that reading is kept when at least
   ``min_added_likeness`` of the cells it adds look like the structure to the encoder
   (below): the clicks alone lose part of a vessel's arch or of a loop of bowel, the box
   alone holds on where a structure ends; for an organ that looks alike throughout (the
   liver, the spleen: ``limits.uniform``), a mask that drifts is read again with a negative
   click in its part that looks like the surroundings (:meth:`Propagation._without_neighbour`);
2. the structure ends in a direction when it has gone as far as the structure the query names
   reaches (``limits``: one vertebra, :mod:`napari_ibis.structure_limits`), when the new mask is empty, smaller than
   ``min_area`` pixels or than ``min_ratio`` of the previous one, grows beyond
   ``max_growth`` times it (a leak), overlaps it by less than ``min_overlap`` (IoU: it
   jumped elsewhere), when the segmenter's own quality estimate (SAM's predicted IoU)
   falls below ``min_score``, when the tissue under it
   no longer looks like the structure (fewer than half its pixels within 2.5 standard
   deviations of the start slice's grey level under its mask), when on two slices in a row
   (or on the last before another rule ends it) fewer than ``min_likeness`` of its cells
   look to the segmenter's encoder more like the structure than like its surroundings on
   the start slice (:mod:`napari_ibis.appearance`: the mask has slid onto a neighbour of
   the same grey level), or, with an agent checking (``check``), when the agent answers
   that it is not present;
3. where the mask looks partly unlike the structure on two or more slices in a row
   (likeness below ``DRIFT_LIKENESS``) propagation goes on, and the first of them is
   listed for review (:meth:`PropagationDone.review`): there the mask may be taking in a
   neighbour;
4. with ``check`` ("every" slice, every Nth, or "none"), the agent sees the propagated
   mask as an imported mask on that slice and may click to repair it, accept it, or
   answer "not present"; every step it takes is kept with the slice's result. A "repair"
   that keeps less than ``min_agreement`` (IoU) of the propagated mask is not applied: the
   slice keeps the propagated mask and is listed for review (``agent_overruled``).

With a SAM 2 segmenter and ``video=True``, step 1 is SAM 2's own video propagation
instead (:func:`napari_ibis.segmenters.sam2.track`, as MedSAM2 does it): the start mask
is the prompt and each slice is segmented from the memory of the slices before it; the
stop rules and the agent's checks are the same (SAM 2's object score stands for the
quality estimate), and a slice the agent repairs restarts the tracking from its mask.

The segmenter sees every slice through one window: on CT (Hounsfield units) a 400 HU
window centred on the structure's median on the start slice (:func:`structure_window`;
a contrast-filled aorta stays mid-grey instead of as white as the bone beside it), on
anything else the volume's 0.5-99.5 percentile range, unless ``window`` names one.

Each slice is embedded once (the segmenter's own cache holds one slice, and the slices
are visited in order); nothing but masks is kept, so memory does not grow with the
number of slices beyond the labels volume itself (SAM 2's memory keeps the last 16).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .errors import Cancelled, InputError
from .appearance import Appearance
from .metrics import iou
from .overlay import CENTRED_WIDTH, centred_window, percentiles, to_rgb8
from .segmenters.base import Click, Segmenter, SegmentResult, prompts_from
from .square_pixels import square_pixels
from .structure_limits import StructureLimits

DIRECTIONS = ("both", "up", "down")
MIN_LIKENESS = 0.2  # see appearance.py and docs/BENCHMARKS.md (propagation: when a structure ends)
MIN_ADDED_LIKENESS = 0.7  # the box's reading is kept where this share of what it adds looks like the structure
UNLIKE_SHARE = 0.1  # a uniform organ's mask is read again where this share of it looks like its surroundings
DRIFT_LIKENESS = 0.7  # the first of two or more slices in a row below this is listed for review (docs/BENCHMARKS.md)


@dataclass
class SliceResult:
    """What happened on one slice."""

    index: int
    mask: np.ndarray
    clicks: tuple[Click, ...]  # the prompts propagation gave the segmenter
    agent_steps: int = 0  # steps the checking agent took on this slice
    agent_changed: bool = False  # the agent's check changed the propagated mask
    agent_overruled: bool = False  # the agent wanted to replace the mask, not repair it: kept, for review
    stopped: str = ""  # why the structure ended after this slice ("" if it went on)
    likeness: float = float("nan")  # share of the mask's cells that look like the structure (appearance.py)
    boxed: bool = False  # the segmenter's box reading was kept: what it adds looks like the structure
    drifting: bool = False  # the first of two or more slices in a row whose mask looks partly unlike the structure
    seconds: float = 0.0
    trajectory: dict | None = None  # the checking agent's session record


@dataclass
class PropagationDone:
    """The end of a run: every slice's result, and the 3-D labels."""

    labels: np.ndarray  # bool (Z, H, W)
    slices: list[SliceResult] = field(default_factory=list)
    cancelled: bool = False

    @property
    def flagged(self) -> list[int]:
        """Slices a person should look at: the agent changed them or the structure ended there."""
        return [index for index, _ in self.review()]

    def review(self) -> list[tuple[int, str]]:
        """(slice, why a person should look at it), in slice order: where the structure ended, where
        the agent changed or would have replaced a mask, where the mask starts to look partly
        unlike the structure (the first of two or more slices in a row whose likeness is below
        ``DRIFT_LIKENESS``: it may be taking in a neighbour). A structure still there on the
        scan's first or last slice is listed too: it goes on beyond the scan, or propagation
        followed something else to the edge (no rule ended it)."""
        out, edges = [], (0, len(self.labels) - 1)
        for r in sorted(self.slices, key=lambda r: r.index):
            if r.stopped:
                out.append((r.index, f"ended: {r.stopped}"))
            elif r.agent_overruled:
                out.append((r.index, "the agent would have replaced the mask; kept"))
            elif r.agent_changed:
                out.append((r.index, "the agent changed it"))
            elif r.drifting:
                out.append((r.index, f"only {r.likeness:.0%} of the mask looks like the structure: check its edge"))
            elif r.index in edges and r.mask.any() and not self.cancelled:
                out.append((r.index, "the scan's edge: it goes on beyond the scan, or it followed something else"))
        return out


class Propagation:
    """Follow a structure through ``volume`` (Z, H, W) or (Z, H, W, 3) from a finished slice.

    ``checker``: a callable ``(slice_rgb, index, propagated_mask) -> (mask, steps,
    not_present, trajectory)``, usually :func:`agent_checker`; ``check``: "none", "every"
    or a whole number N (every Nth slice from the start). ``region_of``: a callable giving
    the structure on any slice index (bool, the slice's grid), where something already knows
    it through the volume (a brain region of an atlas registered onto it:
    :meth:`~napari_ibis.policies.pointer.PointerPolicy.region_through`): each slice takes it
    instead of the segmenter's reading, and the structure ends where it does. ``limits``: what
    anatomy says about the structure the query names (:func:`~napari_ibis.structure_limits.limits_for`);
    ``slice_spacing_mm``: the distance between slices, which a limit in millimetres needs.
    """

    def __init__(self, volume: np.ndarray, segmenter: Segmenter, window: str | None = None, min_area: int = 10,
                 min_ratio: float = 0.15, max_growth: float = 1.8, min_overlap: float = 0.2, min_score: float = 0.4,
                 min_likeness: float = MIN_LIKENESS, min_added_likeness: float = MIN_ADDED_LIKENESS,
                 checker=None, check: str | int = "none",
                 min_agreement: float = 0.5, video: bool = True, pixel_aspect: float = 1.0, region_of=None,
                 limits: StructureLimits | None = None, slice_spacing_mm: float | None = None) -> None:
        volume = np.asarray(volume)
        if volume.ndim not in (3, 4) or (volume.ndim == 4 and volume.shape[-1] not in (3, 4)):
            raise InputError(f"propagation needs a volume (Z, H, W) or (Z, H, W, 3), got shape {volume.shape}")
        self.volume = volume
        self.region_of = region_of
        self.limits = limits or StructureLimits()
        self.reach = self.limits.reach_slices(slice_spacing_mm)  # slices from the start it may go (None: no limit)
        self.video = video and getattr(segmenter, "name", "") == "sam2"  # SAM 2's video propagation (not for a region_of)
        # slices with unequal row and column spacing are followed at square pixels (SAM 2's video
        # predictor resizes every frame to a square of its own)
        self.segmenter = segmenter if self.video else square_pixels(segmenter, pixel_aspect)
        self._ct = False  # CT: the window is centred on the structure in run()
        if window is None:
            window, self._ct = default_window(volume)
        self.window = window
        self.min_area = min_area
        self.min_ratio = min_ratio
        self.max_growth = max_growth
        self.min_overlap = min_overlap
        self.min_score = min_score
        self.min_likeness = min_likeness
        self.min_added_likeness = min_added_likeness
        self._appearance: Appearance | None = None
        self._reading_drifted = False
        self.checker = checker
        self.check = parse_check(check)
        self.min_agreement = min_agreement
        if self.check and checker is None:
            raise InputError("checking propagated slices needs an agent")

    @property
    def depth(self) -> int:
        return self.volume.shape[0]

    def rgb(self, index: int) -> np.ndarray:
        return to_rgb8(self.volume[index], self.window)

    def run_to_end(self, start: int, mask: np.ndarray, direction: str = "both") -> PropagationDone:
        """:meth:`run` without its per-slice events (batch runs, evaluations): its end."""
        for event in self.run(start, mask, direction):
            if isinstance(event, PropagationDone):
                return event
        raise AssertionError("a propagation ends with PropagationDone")

    def run(self, start: int, mask: np.ndarray, direction: str = "both",
            cancel: threading.Event | None = None) -> Iterator[SliceResult | PropagationDone]:
        """Yield each slice's result as it is made, then a :class:`PropagationDone`."""
        if direction not in DIRECTIONS:
            raise InputError(f"unknown direction '{direction}': use {', '.join(DIRECTIONS)}")
        if not 0 <= start < self.depth:
            raise InputError(f"slice {start} is outside the volume's {self.depth} slices")
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.volume.shape[1:3]:
            raise InputError(f"the start mask is {mask.shape} but the slices are {self.volume.shape[1:3]}")
        if not mask.any():
            raise InputError("the start slice's mask is empty: segment the structure there first")
        labels = np.zeros(self.volume.shape[:3], dtype=bool)
        labels[start] = mask
        self.segmenter.speed_up()
        if self._ct:
            self.window = structure_window(self.volume[start], mask)
        start_rgb = self.rgb(start)
        reference = start_rgb.mean(axis=2)[mask]
        self._reference = (float(reference.mean()), 2.5 * float(reference.std()) + 8.0)
        self._appearance = None
        done = PropagationDone(labels)
        steps = {"up": (1,), "down": (-1,), "both": (1, -1)}[direction]
        try:
            if not self.video and self.region_of is None:  # measured even when min_likeness is 0 (SliceResult.likeness)
                with self.segmenter.interruptible(cancel):
                    self.segmenter.set_image(start_rgb)
                self._appearance = Appearance.of(self.segmenter, mask)
            for step in steps:
                previous, index = mask, start + step
                self._reading_drifted = False  # the uniform organ's reading on the slice before (_without_neighbour)
                tracker = self._tracker(start, mask, step)
                ahead = None  # the next slice, computed early to judge one that looks unlike the structure
                low_run: list[SliceResult] = []  # the slices in a row whose mask looks partly unlike the structure
                while 0 <= index < self.depth:
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("stopped")
                    with self.segmenter.interruptible(cancel):
                        result = ahead or self._one(index, previous, step, abs(index - start), tracker)
                        ahead = self._judge_unlike(result, step, start, tracker) if self._unlike(result) else None
                    labels[index] = result.mask
                    low_run = low_run + [result] if not result.stopped and result.likeness < DRIFT_LIKENESS else []
                    if len(low_run) == 2:  # two in a row (one alone is often the encoder's noise)
                        low_run[0].drifting = True
                    done.slices.append(result)
                    yield result
                    if result.stopped:
                        break
                    if tracker is not None and result.agent_changed:
                        tracker = self._tracker(index, result.mask, step)  # go on from the agent's repair
                    previous, index = result.mask, index + step
        except Cancelled:
            done.cancelled = True
        yield done

    def _tracker(self, start: int, mask: np.ndarray, step: int):
        """SAM 2's video propagation from ``start`` in the direction of ``step``, or None."""
        if not self.video or self.region_of is not None:
            return None
        from .segmenters.sam2 import track

        return track(self.segmenter, self.rgb, self.depth, start, mask, reverse=step < 0)

    def _one(self, index: int, previous: np.ndarray, step: int, distance: int, tracker=None) -> SliceResult:
        if self.reach is not None and distance > self.reach:  # not read: the structure cannot reach it
            return SliceResult(index, np.zeros_like(previous), (),
                               stopped=f"{self.limits.why} reaches no more than {self.limits.reach_mm:g} mm from the "
                                       "slice it started on")
        started = time.perf_counter()
        rgb = self.rgb(index)
        if self.region_of is not None:
            followed, clicks = SegmentResult(self._region(index), None, float("nan")), ()
        elif tracker is not None:
            tracked, mask, score = next(tracker)
            if tracked != index:
                raise RuntimeError(f"SAM 2 tracked slice {tracked} where slice {index} was expected")
            followed, clicks = SegmentResult(mask, None, score), ()
        else:
            self.segmenter.set_image(rgb)
            clicks = tuple(prompts_from(previous))
            followed = self.segmenter.follow(previous)
        boxed = None if tracker is not None or self.region_of is not None else self._boxed_if_alike(previous, followed)
        followed = boxed or followed
        if self.limits.uniform and tracker is None and self.region_of is None:
            followed = self._without_neighbour(previous, followed)
        mask = followed.mask
        outcome = SliceResult(index, mask, clicks, boxed=bool(boxed))
        if self.check and distance % self.check == 0:
            checked, steps, not_present, trajectory = self.checker(rgb, index, mask)
            checked = np.asarray(checked, dtype=bool)
            outcome.agent_steps, outcome.trajectory = steps, trajectory
            if not not_present and iou(mask, checked) < self.min_agreement:
                # a repair keeps most of the mask; a replacement is the agent disagreeing with
                # the structure itself (on real scans, usually the agent looking elsewhere)
                outcome.agent_overruled = True
            else:
                outcome.agent_changed = not_present or not np.array_equal(checked, mask)
                mask = np.zeros_like(mask) if not_present else checked
                outcome.mask = mask
            if not_present:
                outcome.stopped = "the agent found no structure here"
        area = int(mask.sum())
        if self._appearance is not None and area:
            outcome.likeness = self._appearance.likeness(self.segmenter, mask)
        if not outcome.stopped:
            if area < self.min_area:
                outcome.stopped = "the mask vanished" if self.region_of is None else "the region ends here"
            elif self.region_of is not None:
                pass  # the region's own extent, not the segmenter's rules, says where it ends
            elif np.isfinite(followed.score) and followed.score < self.min_score:
                outcome.stopped = f"the segmenter's own quality estimate fell to {followed.score:.2f}"
            elif area < self.min_ratio * previous.sum():
                outcome.stopped = f"the mask shrank below {self.min_ratio:.0%} of the previous slice's"
            elif area > self.max_growth * previous.sum():
                outcome.stopped = f"the mask grew beyond {self.max_growth:g} times the previous slice's (a leak)"
            elif (mask & previous).sum() < self.min_overlap * (mask | previous).sum():
                outcome.stopped = "the mask jumped away from the previous slice's"
            elif self._looks_different(rgb, mask):
                outcome.stopped = "the tissue under the mask no longer looks like the structure"
        if outcome.stopped and not outcome.agent_changed:
            outcome.mask = np.zeros_like(mask)  # the structure ended before this slice
        outcome.seconds = time.perf_counter() - started
        return outcome

    def _region(self, index: int) -> np.ndarray:
        region = np.asarray(self.region_of(index), dtype=bool)
        if region.shape != self.volume.shape[1:3]:
            raise InputError(f"the region on slice {index} is {region.shape} but the slices are {self.volume.shape[1:3]}")
        return region

    def _boxed_if_alike(self, previous: np.ndarray, followed: SegmentResult) -> SegmentResult | None:
        """The segmenter's box reading of the slice, where at least ``min_added_likeness`` of
        the cells it adds to ``followed`` look like the structure; else None."""
        if self._appearance is None or self.min_added_likeness > 1:
            return None
        boxed = self.segmenter.follow_boxed(previous)
        if boxed is None:
            return None
        added = boxed.mask & ~followed.mask
        alike = self._appearance.likeness(self.segmenter, added) if added.any() else float("nan")
        return boxed if alike >= self.min_added_likeness else None

    def _without_neighbour(self, previous: np.ndarray, read: SegmentResult) -> SegmentResult:
        """For an organ that looks alike throughout (``limits.uniform``): where the segmenter's
        reading drifts on this slice and the one before (fewer than ``DRIFT_LIKENESS`` of its cells
        look like the organ; one slice alone is often the encoder's noise) and at least
        ``UNLIKE_SHARE`` of it looks like the start slice's surroundings, the slice is read again
        with a negative click in that part (:meth:`Segmenter.follow`); kept where more of the new
        mask looks like the organ and it is smaller, but by no more than 70%."""
        if self._appearance is None or not read.mask.any():
            return read
        likeness = self._appearance.likeness
        read_likeness = likeness(self.segmenter, read.mask)
        drifting = read_likeness < DRIFT_LIKENESS
        before, self._reading_drifted = self._reading_drifted, drifting
        if not (drifting and before):
            return read
        unlike = self._appearance.unlike(self.segmenter, read.mask)
        if unlike is None or unlike.sum() < UNLIKE_SHARE * read.mask.sum():
            return read
        again = self.segmenter.follow(previous, leave_out=unlike)
        if 0.3 * read.mask.sum() <= again.mask.sum() < read.mask.sum() and likeness(self.segmenter, again.mask) > read_likeness:
            return again
        return read

    def _judge_unlike(self, result: SliceResult, step: int, start: int, tracker) -> SliceResult | None:
        """A slice that looks unlike the structure: one such slice is often the encoder's noise;
        two in a row, or one before the structure ends anyway, is the mask on a neighbour, and
        ``result`` ends the direction. Returns the next slice's result when it was computed and
        the direction goes on."""
        following = result.index + step
        ahead = None
        if 0 <= following < self.depth:
            ahead = self._one(following, result.mask, step, abs(following - start), tracker)
        if ahead is not None and not ahead.stopped and not self._unlike(ahead):
            return ahead
        result.stopped = (f"the mask looks like the structure's surroundings "
                          f"({result.likeness:.0%} of it like the structure)")
        if not result.agent_changed:
            result.mask = np.zeros_like(result.mask)
        return None

    def _unlike(self, result: SliceResult) -> bool:
        """Fewer than ``min_likeness`` of the mask's cells look like the structure (NaN: not measured)."""
        return not result.stopped and result.likeness < self.min_likeness

    def _looks_different(self, rgb: np.ndarray, mask: np.ndarray) -> bool:
        """Fewer than half the new mask's pixels have the structure's grey level (the start
        slice's mean under its mask, within 2.5 standard deviations plus 8 levels)."""
        mean, spread = self._reference
        grey = rgb.mean(axis=2)[mask]
        return float(np.mean(np.abs(grey - mean) <= spread)) < 0.5


def default_window(volume: np.ndarray) -> tuple[str | None, bool]:
    """One window for the whole volume, its 0.5-99.5 percentile range (so that a structure
    keeps its grey level from slice to slice; None for 8-bit volumes, shown as they are),
    and whether the volume is CT in Hounsfield units (air near -1000, tissue or bone above 100)."""
    if volume.dtype == np.uint8:
        return None, False
    low, high = percentiles(volume[::max(1, volume.shape[0] // 32)], [0.5, 99.5])
    return f"range:{low:g},{max(high, low + 1e-6):g}", bool(volume.ndim == 3 and -1100 <= low <= -900 and high >= 100)


def structure_window(slice_hu: np.ndarray, mask: np.ndarray, width: float = CENTRED_WIDTH) -> str:
    """A CT window ``width`` HU wide centred on the structure's median on the start slice: a
    soft-tissue window for the liver (about 40, 400), one that keeps a contrast-filled aorta
    (about 450 HU) mid-grey between darker tissue and brighter bone instead of white like both."""
    level = float(np.nanmedian(np.asarray(slice_hu, dtype=np.float64)[np.asarray(mask, bool)]))
    return centred_window(level, width)


def parse_check(check: str | int) -> int:
    """"none" -> 0, "every" -> 1, "N" -> N (check every Nth slice)."""
    if isinstance(check, int):
        value = check
    elif check in ("none", "", None):
        return 0
    elif check == "every":
        return 1
    else:
        try:
            value = int(check)
        except ValueError:
            raise InputError(f"--check takes every, none or a whole number, not '{check}'") from None
    if value < 0:
        raise InputError("--check N needs N >= 1")
    return value


def agent_checker(policy, query: str, segmenter: Segmenter, profile: str = "ibis-release", max_steps: int = 4,
                  cancel: threading.Event | None = None, pixel_aspect: float = 1.0, volume=None):
    """A checker for :class:`Propagation`: the agent refines the propagated mask as an imported one.
    ``volume``: the :class:`~napari_ibis.policies.base.VolumeSlice` propagated through (each
    checked slice's index set), for a policy that looks through a volume."""
    from .session import Session

    def check(rgb: np.ndarray, index: int, mask: np.ndarray):
        session = Session(rgb, query, policy, segmenter, profile=profile, max_steps=max_steps, init_mask=mask,
                          pixel_aspect=pixel_aspect, volume=None if volume is None else volume.at(index))
        for _ in session.run(cancel):
            pass
        not_present = bool(session.steps) and session.current.not_present
        record = session.trajectory()
        record["slice"] = index
        return session.mask, len(session.steps), not_present, record

    return check
