"""Click-simulated trajectories (paper appendix B.1) from any image-mask sample.

The click simulator drives a segmenter backend with every click so far and the
previous low-res logits, until the IoU reaches ``stop_iou`` or ``max_steps``.
Filters drop over-long trajectories and those whose final Dice stays low.

Variants:
* ``absent``: the query names a structure that is not there; one step, "not present";
* ``self_correction``: a wrong click at some step, the worse mask it made, then an
  undo and the right click (paper grammar), or clicks that repair the worse mask
  (release grammar, no undo); the wrong step is flagged so SFT masks its loss;
* ``user_inconsistency``: the initial mask is another structure than the query
  names; the agent first removes it (undo of the imported mask), then segments.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_ibis.clicker import next_click
from napari_ibis.metrics import dice, iou
from napari_ibis.overlay import to_rgb8
from napari_ibis.segmenters.base import Click, Segmenter
from training.data import text
from training.data.sources import Sample


@dataclass
class Move:
    """One agent turn: what it saw, what it thought and did, what resulted."""

    mask_before: np.ndarray
    thought: str
    click: Click | None = None  # None: a keyword action (terminate, undo, not present)
    keyword: str | None = None  # "terminate", "undo", "not_present"
    mask_after: np.ndarray | None = None
    iou_after: float = float("nan")
    wrong: bool = False  # trained as context only (loss masked)


@dataclass
class Trajectory:
    sample: Sample
    query: str
    kind: str  # "normal", "absent", "self_correction", "user_inconsistency", "first_move"
    moves: list[Move] = field(default_factory=list)
    init_mask: np.ndarray | None = None
    answer: str = ""

    @property
    def clicks(self) -> int:
        return sum(1 for m in self.moves if m.click is not None and not m.wrong)

    @property
    def final_mask(self) -> np.ndarray:
        masks = [m.mask_after for m in self.moves if m.mask_after is not None]
        return masks[-1] if masks else np.zeros_like(self.sample.mask)

    @property
    def final_iou(self) -> float:
        return iou(self.sample.mask, self.final_mask)


EXPERT_STOP_IOU = 0.8  # where the click simulator answers: the release's threshold, shared by every builder


def _step(segmenter: Segmenter, clicks: list[Click], logits, gt):
    result = segmenter.segment(clicks, logits)
    return result.mask, result.logits, iou(gt, result.mask)


def simulate(
    sample: Sample,
    segmenter: Segmenter,
    rng: np.random.Generator,
    stop_iou: float = EXPERT_STOP_IOU,
    max_steps: int = 20,
    ties: str = "negative",
    padding: bool = True,
    init_mask: np.ndarray | None = None,
    reasoner=None,
) -> Trajectory:
    """A normal (or, for an empty mask, an absent) trajectory.

    ``reasoner`` (e.g. a :class:`training.data.teacher.Teacher`) may rewrite each click's
    synthesised thought; it gets (target, modality, image, truth, mask, row, col,
    positive, synthesised thought) and returns the thought to keep.
    """
    gt = sample.mask
    query = text.query(sample.target, sample.modality, rng)
    segmenter.set_image(to_rgb8(sample.image))
    trajectory = Trajectory(sample, query, "normal", init_mask=init_mask)
    if not gt.any():
        trajectory.kind = "absent"
        trajectory.answer = text.answer(sample.target, sample.modality, rng, present=False)
        trajectory.moves.append(Move(np.zeros_like(gt), text.absent_reasoning(sample.target, sample.modality, rng),
                                     keyword="not_present", mask_after=np.zeros_like(gt), iou_after=1.0))
        return trajectory
    mask = np.zeros_like(gt) if init_mask is None else init_mask
    logits = segmenter.prior_from_mask(mask) if mask.any() else None
    clicks: list[Click] = []
    for _ in range(max_steps):
        if iou(gt, mask) >= stop_iou:
            break
        found = next_click(gt, mask, ties=ties, padding=padding)
        if found is None:
            break
        row, col, positive = found
        click = Click(row, col, positive, sample.target, "simulator")
        thought = text.reasoning(sample.target, sample.modality, mask, row, col, positive, rng)
        if reasoner is not None:
            thought = reasoner(sample.target, sample.modality, sample.image, gt, mask, row, col, positive, thought)
        clicks.append(click)
        new_mask, logits, score = _step(segmenter, clicks, logits, gt)
        trajectory.moves.append(Move(mask, thought, click, mask_after=new_mask, iou_after=score))
        mask = new_mask
    trajectory.moves.append(Move(mask, text.stop_reasoning(sample.target, rng), keyword="terminate", mask_after=mask,
                                 iou_after=iou(gt, mask)))
    trajectory.answer = text.answer(sample.target, sample.modality, rng)
    return trajectory


def first_move(sample: Sample, rng: np.random.Generator, reasoner=None) -> Trajectory:
    """Only the first decision on an empty mask: the first click, or "not present".

    Needs no segmenter, so it is cheap to make in bulk: the data of a grounding
    stage that teaches where the named structure lies before whole trajectories.
    """
    query = text.query(sample.target, sample.modality, rng)
    empty = np.zeros_like(sample.mask)
    if not sample.mask.any():
        trajectory = Trajectory(sample, query, "absent", answer=text.answer(sample.target, sample.modality, rng, present=False))
        trajectory.moves.append(Move(empty, text.absent_reasoning(sample.target, sample.modality, rng), keyword="not_present",
                                     mask_after=empty, iou_after=1.0))
        return trajectory
    row, col, _ = next_click(sample.mask, empty)
    thought = text.reasoning(sample.target, sample.modality, empty, row, col, True, rng)
    if reasoner is not None:
        thought = reasoner(sample.target, sample.modality, sample.image, sample.mask, empty, row, col, True, thought)
    trajectory = Trajectory(sample, query, "first_move")
    trajectory.moves.append(Move(empty, thought, Click(row, col, True, sample.target, "simulator")))
    return trajectory


def self_correction(sample: Sample, segmenter: Segmenter, rng: np.random.Generator, undo: bool = True,
                    **kwargs) -> Trajectory | None:
    """A trajectory with one wrong click, its worse mask, then the recovery.

    ``undo`` (the paper's grammar): an undo, then the right click. Without it (the
    release's grammar has no undo, and each decision sees only the current mask)
    the recovery repairs the worse mask with further clicks, starting from it.
    """
    base = simulate(sample, segmenter, rng, **kwargs)
    clicks_at = [i for i, m in enumerate(base.moves) if m.click is not None]
    if base.kind != "normal" or not clicks_at:
        return None
    at = clicks_at[rng.integers(len(clicks_at))]
    gt = sample.mask
    before = base.moves[at].mask_before
    outside = np.argwhere(~gt & ~before)
    if not len(outside):
        return None
    row, col = outside[rng.integers(len(outside))]
    wrong_click = Click(int(row), int(col), True, sample.target, "simulator")
    previous_clicks = [m.click for m in base.moves[:at] if m.click is not None]
    segmenter.set_image(to_rgb8(sample.image))
    prior = segmenter.prior_from_mask(before) if before.any() else None
    wrong_mask, _, wrong_iou = _step(segmenter, previous_clicks + [wrong_click], prior, gt)
    if wrong_iou >= iou(gt, before):
        return None  # the "wrong" click did not make things worse: not a lesson
    wrong = Move(before, text.reasoning(sample.target, sample.modality, before, int(row), int(col), True, rng),
                 wrong_click, mask_after=wrong_mask, iou_after=wrong_iou, wrong=True)
    if not undo:
        repair = simulate(sample, segmenter, rng, init_mask=wrong_mask, **kwargs)
        return Trajectory(sample, base.query, "self_correction", base.moves[:at] + [wrong] + repair.moves, answer=repair.answer)
    undo_move = Move(wrong_mask, f"The last point made the mask worse: it now covers tissue that is not the {sample.target}. "
                            "I undo that step and reconsider.", keyword="undo", mask_after=before, iou_after=iou(gt, before))
    corrected = Trajectory(sample, base.query, "self_correction", base.moves[:at] + [wrong, undo_move] + base.moves[at:],
                           answer=base.answer)
    return corrected


def user_inconsistency(sample: Sample, other_mask: np.ndarray, segmenter: Segmenter, rng: np.random.Generator, **kwargs) -> Trajectory:
    """The initial mask shows another structure: the agent drops it, then segments the target."""
    base = simulate(sample, segmenter, rng, **kwargs)
    discard = Move(other_mask, f"The green mask covers a structure that does not look like the {sample.target}. "
                               "I remove this mask and segment the requested structure instead.",
                   keyword="undo", mask_after=np.zeros_like(other_mask), iou_after=0.0)
    return Trajectory(sample, base.query, "user_inconsistency", [discard] + base.moves, init_mask=other_mask,
                      answer=base.answer)


def keep(trajectory: Trajectory, max_clicks: int = 20, min_dice: float = 0.8) -> bool:
    """Paper B.1 filters: not over-long, and a final Dice above ``min_dice``."""
    if trajectory.kind == "absent":
        return True
    return trajectory.clicks <= max_clicks and dice(trajectory.sample.mask, trajectory.final_mask) >= min_dice
