"""The click protocol of interactive-segmentation benchmarks, on any segmenter."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .clicker import next_click
from .metrics import iou
from .segmenters.base import Click, Segmenter


@dataclass
class ClickRun:
    """IoU after each simulated click, the clicks, and the final mask and logits."""

    ious: list[float] = field(default_factory=list)
    clicks: list[Click] = field(default_factory=list)
    mask: np.ndarray | None = None
    logits: np.ndarray | None = None


def simulate_clicks(
    segmenter: Segmenter,
    rgb: np.ndarray,
    gt: np.ndarray,
    max_clicks: int = 20,
    stop_iou: float | None = None,
    feed_prior: bool = True,
    ties: str = "negative",
    padding: bool = True,
) -> ClickRun:
    """Drive ``segmenter`` with the click simulator against ``gt``.

    With ``stop_iou=None`` all ``max_clicks`` are placed (the NoC/mIoU@k protocol);
    otherwise the run stops once the IoU reaches ``stop_iou`` (trajectory generation).
    """
    gt = np.asarray(gt, dtype=bool)
    segmenter.set_image(rgb)
    run = ClickRun(mask=np.zeros_like(gt))
    for _ in range(max_clicks):
        click = next_click(gt, run.mask, ties=ties, padding=padding)
        if click is None:  # perfect already: the curve stays where it is
            run.ious.append(run.ious[-1] if run.ious else 1.0)
            continue
        run.clicks.append(Click(click[0], click[1], click[2], source="simulator"))
        result = segmenter.segment(run.clicks, run.logits if feed_prior else None)
        run.mask, run.logits = result.mask, result.logits
        run.ious.append(iou(gt, run.mask))
        if stop_iou is not None and run.ious[-1] >= stop_iou:
            break
    return run


def evaluate_volume(volume: np.ndarray, truth: np.ndarray, segmenter: Segmenter, start_mask_of, direction: str = "both",
                    window: str | None = None, checker=None, check: str | int = "none", pixel_aspect: float = 1.0,
                    corrections: int = 0, click_budget: int | None = None, start: int | None = None,
                    limits=None, slice_spacing_mm: float | None = None) -> dict:
    """One volume case: the start slice (``start``; None: where ``truth`` is largest) is segmented by
    ``start_mask_of(rgb, gt_slice, slice_values) -> (mask, clicks, agent_steps[, region_of])``, then propagated
    with no further clicks unless ``check`` asks the agent (``region_of``: what the agent knows of
    the structure on every slice, :class:`~napari_ibis.propagation.Propagation`); 3-D Dice and IoU
    against ``truth``.

    ``corrections``: clicks a simulated person then spends on the propagated result, as in the
    widget: each on the slice with the most wrong pixels (the click simulator's click there, the
    propagated mask as the prior), the structure propagated on from that slice away from the start
    slice (an erased slice ends it there); one that makes the volume worse is undone, as a person
    looking at the result would. ``click_budget``: instead, the clicks the start slice
    left of that many for the whole volume. ``limits``, ``slice_spacing_mm``: what anatomy says about
    the structure (:func:`~napari_ibis.structure_limits.limits_for`) and the slices' distance in mm."""
    import time

    from .metrics import dice
    from .propagation import Propagation

    truth = np.asarray(truth, dtype=bool)
    largest = int(np.argmax(truth.sum(axis=tuple(range(1, truth.ndim)))))
    start = largest if start is None else int(start)
    started = time.perf_counter()
    propagation = Propagation(volume, segmenter, window=window, checker=checker, check=check, pixel_aspect=pixel_aspect,
                              limits=limits, slice_spacing_mm=slice_spacing_mm)
    mask, clicks, agent_steps, *known = start_mask_of(propagation.rgb(start), truth[start], volume[start])
    propagation.region_of = known[0] if known else None
    if not np.asarray(mask).any():
        labels, slices = np.zeros_like(truth), []
    else:
        done = propagation.run_to_end(start, mask, direction)
        labels, slices = done.labels, done.slices
    if click_budget is not None:
        corrections = max(0, click_budget - clicks)
    corrected = _correct(propagation, segmenter, truth, labels, start, corrections) if corrections else []
    seconds = time.perf_counter() - started
    return {"start": start, "start_on_structure": bool(truth[start].any()), "largest": largest,
            "dice_3d": dice(truth, labels), "iou_3d": iou(truth, labels),
            "start_iou": iou(truth[start], np.asarray(mask, bool)), "clicks": clicks + len(corrected),
            "corrected_slices": corrected,
            "agent_steps": agent_steps + sum(r.agent_steps for r in slices), "slices_propagated": len(slices),
            "slices_true": int(truth.any(axis=tuple(range(1, truth.ndim))).sum()),
            "slices_labelled": int(labels.any(axis=tuple(range(1, labels.ndim))).sum()),
            "followed": "segmenter" if propagation.region_of is None else propagation.region_of.describe(),
            "seconds": seconds, "seconds_per_slice": seconds / max(1, len(slices) + 1), "_labels": labels}


def _correct(propagation, segmenter: Segmenter, truth: np.ndarray, labels: np.ndarray, start: int,
             clicks: int) -> list[int]:
    """Up to ``clicks`` corrections of ``labels`` (changed in place): the slices clicked, in order.
    A correction that leaves the volume further from ``truth`` is undone (a person looking at the
    result presses Undo propagation) and that slice is not clicked again."""
    from .metrics import dice

    corrected, undone = [], set()
    for _ in range(clicks):
        wrong = (labels ^ truth).sum(axis=(1, 2))
        wrong[list(undone)] = 0
        where = int(np.argmax(wrong))
        if not wrong[where]:
            break
        before_all = labels.copy()
        click = next_click(truth[where], labels[where])
        segmenter.set_image(propagation.rgb(where))
        before = labels[where]
        result = segmenter.segment([Click(*click, source="simulator")],
                                   segmenter.prior_from_mask(before) if before.any() else None)
        corrected.append(where)
        direction = "up" if where > start else "down" if where < start else "both"
        beyond = np.arange(len(labels)) > where if direction == "up" else \
            np.arange(len(labels)) < where if direction == "down" else np.ones(len(labels), bool)
        labels[beyond] = False
        labels[where] = result.mask
        if result.mask.any():
            done = propagation.run_to_end(where, result.mask, direction)
            labels[beyond] = done.labels[beyond]
        if dice(truth, labels) < dice(truth, before_all):
            labels[...] = before_all
            undone.add(where)
    return corrected


def oracle_start(segmenter: Segmenter, max_clicks: int = 5, stop_iou: float = 0.9, as_session: bool = False):
    """The start slice segmented by the click simulator (at most ``max_clicks``, stopping at ``stop_iou``)
    on the slice as the agent sees it, or with ``as_session`` as a session would show it to the
    segmenter (:func:`as_a_session_shows`; measured, not the protocol's default: docs/BENCHMARKS.md)."""

    def start(rgb: np.ndarray, gt: np.ndarray, values: np.ndarray | None = None):
        seen = as_a_session_shows(rgb, gt, values) if as_session else rgb
        run = simulate_clicks(segmenter, seen, gt, max_clicks=max_clicks, stop_iou=stop_iou)
        return run.mask, len(run.clicks), 0

    return start


def as_a_session_shows(rgb: np.ndarray, gt: np.ndarray, values: np.ndarray | None) -> np.ndarray:
    """``rgb`` (the slice ``values`` as the agent sees it), or where ``values`` is a CT slice in
    Hounsfield units and the click simulator's first click lands on soft tissue, the slice in the
    window a session then shows the segmenter (:func:`napari_ibis.session.soft_tissue_window`)."""
    from .overlay import to_rgb8
    from .session import hounsfield_slice, soft_tissue_window

    hounsfield = None if values is None else hounsfield_slice(values)
    first = next_click(np.asarray(gt, bool), np.zeros(np.shape(gt), bool))
    window = None if hounsfield is None or first is None else soft_tissue_window(hounsfield, first[0], first[1])
    return rgb if window is None else to_rgb8(hounsfield, window)


def agent_start(policy, query: str, segmenter: Segmenter, profile: str = "ibis-release", max_steps: int = 8,
                pixel_aspect: float = 1.0, volume=None):
    """The start slice segmented by the agent, as in the widget, on ``rgb`` (the slice's values
    go unused); ``volume``: the :class:`~napari_ibis.policies.base.VolumeSlice` of the start
    slice, for an agent that looks through it (then also what it knows of the structure on every
    slice, for propagation)."""
    from .session import Session

    def start(rgb: np.ndarray, gt: np.ndarray, values: np.ndarray | None = None):
        session = Session(rgb, query, policy, segmenter, profile=profile, max_steps=max_steps, pixel_aspect=pixel_aspect,
                          volume=volume)
        for _ in session.run():
            pass
        clicks = sum(len(step.clicks) for step in session.steps)
        return session.mask, clicks, len(session.steps), session.region_through()

    return start


# -- rows of `napari-ibis eval` ---------------------------------------------------------
def oracle_case(case, segmenter, max_clicks: int) -> dict:
    """One manifest case with the click simulator (``eval --policy oracle``): a row of the report."""
    from .metrics import dice, entity_counts
    from .overlay import to_rgb8

    from .square_pixels import square_pixels

    started = time.perf_counter()
    run = simulate_clicks(square_pixels(segmenter, case.pixel_aspect), to_rgb8(case.image), case.mask,
                          max_clicks=max_clicks)
    seconds = time.perf_counter() - started
    final = run.mask if run.mask is not None else np.zeros_like(case.mask)
    return {
        "source": case.source, "target": case.target, "ious": run.ious, "iou": run.ious[-1],
        "dice": dice(case.mask, final), "entity": entity_counts(case.mask, final),
        "steps": len(run.clicks), "parsable": len(run.clicks), "turns": len(run.clicks),
        "seconds": seconds,
    }


def model_case(case, segmenter, policy, profile: str, max_clicks: int) -> dict:
    """One manifest case with an agent (``eval --policy model:...``): a row of the report."""
    from .metrics import dice, entity_counts, iou
    from .session import Session, Stopped

    started = time.perf_counter()
    session = Session(case.image, case.query, policy, segmenter, profile=profile, max_steps=max_clicks,
                      pixel_aspect=case.pixel_aspect, volume=case.volume)
    stop = None
    for event in session.run():
        if isinstance(event, Stopped):
            stop = event
    seconds = time.perf_counter() - started
    ious = [iou(case.mask, s.mask) for s in session.steps if s.kind == "click"]
    turns = len(session.steps) + (1 if stop is not None and stop.reason == "unparsable" else 0)
    return {
        "source": case.source, "target": case.target, "ious": ious or [0.0],
        "iou": iou(case.mask, session.mask), "dice": dice(case.mask, session.mask),
        "entity": entity_counts(case.mask, session.mask), "steps": len(session.steps),
        "parsable": len(session.steps), "turns": turns, "seconds": seconds,
        "stop": stop.reason if stop else None,
        "stop_message": stop.message if stop and stop.reason in ("error", "unparsable") else None,  # why it failed
    }


@dataclass(frozen=True)
class VolumeProtocol:
    """How ``eval --propagate`` runs a volume case: the start slice (where the mask is largest, or
    where the agent finds the structure: ``start``) by the oracle (``max_clicks``) or the agent, propagation ``direction``, the agent's ``check``, then ``corrections`` clicks
    (``rest``: what the start slice left of ``max_clicks``)."""

    direction: str = "both"
    max_clicks: int = 5
    check: str = "none"
    corrections: int = 0
    rest: bool = False
    profile: str = "ibis-release"
    start: str = "largest"  # or "auto": the agent looks through the volume for the slice (napari_ibis.key_slice)


def volume_case(case, segmenter, policy, protocol: VolumeProtocol) -> dict:
    """One volume case of a manifest (``eval --propagate``): a row of the report."""
    from .policies.base import volume_slice
    from .propagation import agent_checker, parse_check
    from .square_pixels import square_pixels
    from .structure_limits import limits_for

    aspect = case.pixel_aspect
    check = parse_check(protocol.check)
    size = {} if case.voxel_ml is None else {"cm3": round(float(case.mask.sum()) * case.voxel_ml, 2)}
    key, searched = None, 0.0
    looked_through = None if policy is None or case.spacing is None else volume_slice(case.image, case.spacing)
    if protocol.start == "auto":
        import time

        from .key_slice import find_slice

        started = time.perf_counter()
        key = find_slice(case.image, case.query, policy, pixel_aspect=aspect, volume=looked_through)
        searched = time.perf_counter() - started
        if not key.found:
            return {"source": case.source, "target": case.target} | size | not_found_row(case.mask, key, searched)
    index = key.index if key is not None else int(np.argmax(case.mask.sum(axis=tuple(range(1, case.mask.ndim)))))
    start = (oracle_start(square_pixels(segmenter, aspect), protocol.max_clicks) if policy is None
             else agent_start(policy, case.query, segmenter, protocol.profile, pixel_aspect=aspect,
                              volume=None if looked_through is None else looked_through.at(index)))
    checker = agent_checker(policy, case.query, segmenter, protocol.profile, pixel_aspect=aspect,
                            volume=looked_through) if check else None
    row = evaluate_volume(case.image, case.mask, segmenter, start, protocol.direction, checker=checker, check=check,
                          pixel_aspect=aspect, corrections=0 if protocol.rest else protocol.corrections,
                          click_budget=protocol.max_clicks if protocol.rest else None,
                          start=None if key is None else key.index, limits=limits_for(case.query),
                          slice_spacing_mm=None if case.spacing is None else case.spacing[0])
    row.pop("_labels")
    if protocol.corrections or protocol.rest:
        row["corrections"] = len(row["corrected_slices"])
    if key is not None:  # the search is part of the time a person waits for the volume
        row |= {"start_found": True, "start_a_guess": key.unsure, "looks": len(key.looked), "search_seconds": searched,
                "seconds": row["seconds"] + searched}
    return {"source": case.source, "target": case.target} | size | row


def not_found_row(truth: np.ndarray, key, searched: float) -> dict:
    """A volume case where the agent's search found the structure on no slice: nothing labelled."""
    along = tuple(range(1, truth.ndim))
    present = bool(truth.any())
    return {"start": None, "start_on_structure": False, "largest": int(np.argmax(truth.sum(axis=along))),
            "dice_3d": 0.0 if present else 1.0, "iou_3d": 0.0 if present else 1.0, "start_iou": 0.0, "clicks": 0,
            "corrected_slices": [], "agent_steps": 0, "slices_propagated": 0,
            "slices_true": int(truth.any(axis=along).sum()), "slices_labelled": 0, "seconds": searched,
            "seconds_per_slice": 0.0, "start_found": False, "start_a_guess": False, "looks": len(key.looked),
            "search_seconds": searched}
