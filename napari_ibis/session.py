"""The think-act-observe loop and its step timeline.

A :class:`Session` holds one slice, one query, a policy, a segmenter and a
profile. :meth:`Session.run` lets the agent work and yields events as they
happen (thought text as it streams, each action, each new mask, the answer and
why it stopped). Between runs, a person edits the timeline:

* :meth:`undo` / :meth:`redo` move through the steps; :meth:`reject` drops the
  current step and the steps after it; :meth:`accept` takes the current mask;
* :meth:`add_click` inserts a user click as a step (the agent continues from it),
  :meth:`add_mask_edit` a person's own edit of the mask;
* an initial mask (``init_mask``) starts a refinement instead of a fresh run.

On a fresh run the policy may first place a mask itself (:meth:`Policy.place`: the
pointer agent places an atlas region); it is a step of kind ``"placed"``, undoable like
any other, and the agent's turns go on from it.

Each step's mask comes from the segmenter with every click in effect plus the
previous step's low-res logits, so :meth:`replay` rebuilds the same mask.

What the segmenter sees: the slice as the agent sees it, except on a CT in Hounsfield
units shown with the automatic window, where a first positive click on soft tissue
(:data:`SOFT_TISSUE`) shows it the slice in a 400 HU window centred on the tissue under
that click, the contrast a reader picks for an organ (propagation centres the same
window on the structure). The automatic window spans air to bone and leaves neighbouring
organs a few grey levels apart.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from .errors import ActionParseError, Cancelled, IbisError, InputError
from .grounding.ct_anatomy import looks_like_ct
from .metrics import iou
from .overlay import centred_window, to_rgb8
from .policies.base import Policy, PolicyRequest, VolumeSlice
from .protocol import Action, Profile, Turn, get_profile
from .segmenters.base import Click, Segmenter
from .square_pixels import SquareGrid, square_pixels

MIN_SIDE = 8
REPEAT_LIMIT = 3  # the release stops when the same action comes three times in a row
NO_CHANGE_IOU = 0.99  # a repeated click whose mask overlaps the current one this much changes nothing
# Hounsfield units under a first positive click that get the segmenter a window centred there
# (overlay.centred_window; docs/BENCHMARKS.md, "What MobileSAM sees of a CT")
SOFT_TISSUE = (-150.0, 150.0)
CLICK_PATCH = 2  # the tissue under a click: the median of the (2 * CLICK_PATCH + 1)^2 pixels around it


def failure_line(exc: Exception) -> str:
    """One line for a policy call that failed: an :class:`IbisError`'s own words (they are written
    for a person), else the exception's type and first line."""
    first = str(exc).splitlines()[0] if str(exc) else ""
    return first if isinstance(exc, IbisError) and first else f"{type(exc).__name__}: {first}"


@dataclass
class Step:
    """One entry of the timeline: what was done and the mask it left."""

    index: int
    source: str  # "agent", "user" or "initial"
    kind: str  # "click", "edit" (a person's brush edit), "placed" (the policy's own start mask), "answer" or "initial"
    mask: np.ndarray
    logits: np.ndarray | None
    clicks: tuple[Click, ...] = ()
    added: tuple[Click, ...] = ()
    actions: tuple[Action, ...] = ()
    thought: str = ""
    raw: str = ""
    prompt: str = ""
    answer: str | None = None
    not_present: bool = False
    iou_prev: float = float("nan")
    seconds_policy: float = 0.0
    seconds_segment: float = 0.0

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))


# -- events ------------------------------------------------------------------------
@dataclass
class StepStarted:
    index: int


@dataclass
class ThoughtDelta:
    index: int
    text: str


@dataclass
class ActionTaken:
    index: int
    actions: tuple[Action, ...]
    clicks: tuple[Click, ...]


@dataclass
class MaskUpdated:
    step: Step


@dataclass
class Answered:
    step: Step


@dataclass
class Stopped:
    """Why a run ended: answered, not_present, finished (the agent repeated a click
    that would not change the mask: the current step is its result), max_steps,
    repeated, unparsable, cancelled or error (``message`` says more)."""

    reason: str
    message: str = ""

    @property
    def finished(self) -> bool:
        """Whether the agent ended the run itself with a result (not a failure or a stop)."""
        return self.reason in ("answered", "not_present", "finished")


Event = StepStarted | ThoughtDelta | ActionTaken | MaskUpdated | Answered | Stopped


@dataclass
class Operation:
    """A timeline edit, kept for the trajectory record."""

    name: str
    cursor: int
    time: float = field(default_factory=time.time)


class Session:
    """One slice, one query: the agent loop plus an editable step timeline."""

    def __init__(
        self,
        image: np.ndarray,
        query: str,
        policy: Policy,
        segmenter: Segmenter,
        profile: str | Profile = "ibis-release",
        max_steps: int = 20,
        use_history: bool | None = None,
        init_mask: np.ndarray | None = None,
        window: str | None = None,
        pixel_aspect: float = 1.0,
        volume: VolumeSlice | None = None,
    ) -> None:
        """``pixel_aspect``: the slice's row spacing over its column spacing; where it is not
        about 1, the agent and the segmenter see the slice at square pixels
        (:mod:`napari_ibis.square_pixels`) while clicks and masks stay on its own grid.
        ``volume``: the volume the slice was cut from, for a policy that looks through it."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("the query is empty: say what to segment, e.g. 'segment the liver tumour'")
        self.rgb = to_rgb8(image, window)
        height, width = self.rgb.shape[:2]
        if min(height, width) < MIN_SIDE:
            raise InputError(f"the image is {height}x{width}; it must be at least {MIN_SIDE} pixels a side")
        if max_steps < 1:
            raise InputError("max steps must be at least 1")
        self.query = query.strip()
        self.policy = policy
        self.pixel_aspect = float(pixel_aspect)
        self.volume = volume
        self._grid = SquareGrid((height, width), pixel_aspect)
        self.segmenter = square_pixels(segmenter, pixel_aspect, self._grid)
        self._seen = self._grid.image(self.rgb)  # the slice as the agent sees it
        self.profile = get_profile(profile)
        self.max_steps = max_steps
        self.use_history = self.profile.use_history if use_history is None else use_history
        self.window = window
        self._hounsfield = hounsfield_slice(image, volume) if window is None else None
        self._windowed: tuple[str, np.ndarray] | None = None  # the last soft-tissue window and the slice in it
        self.segmenter_window: str | None = None  # the window the segmenter last saw the slice in (None: self.rgb)
        self.segmenter.set_image(self.rgb)
        self._initial = self._initial_step(init_mask)
        self._steps: list[Step] = []
        self._cursor = 0
        self.accepted: int | None = None
        self.operations: list[Operation] = []
        self.rejected_outputs: list[str] = []
        self.discarded: list[tuple[Step, np.ndarray]] = []  # steps Reject or a new branch dropped, with the mask each started from
        self.last_stop: Stopped | None = None
        self._placement_asked = False  # the policy is offered to place a start mask once per session

    def _initial_step(self, init_mask: np.ndarray | None) -> Step:
        shape = self.rgb.shape[:2]
        if init_mask is None:
            return Step(0, "initial", "initial", np.zeros(shape, dtype=bool), None)
        mask = np.asarray(init_mask)
        if mask.shape != shape:
            raise InputError(f"the initial mask is {mask.shape} but the image is {shape}")
        mask = mask > 0
        return Step(0, "initial", "initial", mask, self.segmenter.prior_from_mask(mask) if mask.any() else None)

    # -- state ---------------------------------------------------------------------
    @property
    def seen(self) -> np.ndarray:
        """The slice as the agent sees it (RGB, at square pixels)."""
        return self._seen

    def region_through(self):
        """What the policy knows of the structure on every slice of the session's volume, for
        propagation (:meth:`~napari_ibis.policies.base.Policy.region_through`); None without a
        volume or a result on this slice."""
        if self.volume is None or not self.mask.any():
            return None
        return self.policy.region_through(self._seen, self.query, self.volume)

    @property
    def steps(self) -> list[Step]:
        """The active steps, oldest first (undone steps are not included)."""
        return self._steps[: self._cursor]

    @property
    def cursor(self) -> int:
        return self._cursor

    @property
    def current(self) -> Step:
        return self._steps[self._cursor - 1] if self._cursor else self._initial

    @property
    def initial(self) -> Step:
        return self._initial

    @property
    def mask(self) -> np.ndarray:
        return self.current.mask

    @property
    def can_redo(self) -> bool:
        return self._cursor < len(self._steps)

    @property
    def timeline(self) -> list[Step]:
        """Every step, undone ones included (the active ones are the first :attr:`cursor`)."""
        return list(self._steps)

    def restore_timeline(self, initial: Step, steps: list[Step], cursor: int, accepted: int | None,
                         operations: list[Operation], last_stop: Stopped | None) -> None:
        """Take over a saved timeline (crash recovery); the slice and settings must be the session's own."""
        if not 0 <= cursor <= len(steps):
            raise ValueError(f"cursor {cursor} outside a timeline of {len(steps)} steps")
        self._initial, self._steps, self._cursor = initial, list(steps), cursor
        self.accepted, self.operations, self.last_stop = accepted, list(operations), last_stop

    def step_at(self, index: int) -> Step:
        """Step ``index`` (1-based, active or undone; 0 is the initial state)."""
        return self._initial if index == 0 else self._steps[index - 1]

    # -- timeline edits ------------------------------------------------------------
    def undo(self) -> Step:
        if self._cursor:
            self._cursor -= 1
            self.operations.append(Operation("undo", self._cursor))
            self._keep_acceptance_current()
        return self.current

    def redo(self) -> Step:
        if self.can_redo:
            self._cursor += 1
            self.operations.append(Operation("redo", self._cursor))
            self._keep_acceptance_current()
        return self.current

    def _keep_acceptance_current(self) -> None:
        """An acceptance holds for the step it was given to: moving off it (undo, redo, reject,
        a new step) withdraws it, so that what is exported is what the person sees."""
        if self.accepted is not None and self.accepted != self._cursor:
            self.accepted = None

    def reject(self) -> Step:
        """Drop the current step and everything after it."""
        if self._cursor:
            self._discard_from(self._cursor - 1)
            self._cursor -= 1
            self.operations.append(Operation("reject", self._cursor))
            self._keep_acceptance_current()
        return self.current

    def accept(self) -> np.ndarray:
        """Take the current mask as the result."""
        self.accepted = self._cursor
        self.operations.append(Operation("accept", self._cursor))
        return self.current.mask

    def _discard_from(self, position: int) -> None:
        """Drop ``_steps[position:]``, keeping each with the mask it started from (training records them)."""
        before = self._steps[position - 1].mask if position else self._initial.mask
        for step in self._steps[position:]:
            self.discarded.append((step, before))
            before = step.mask
        del self._steps[position:]

    def _push(self, step: Step) -> None:
        self._discard_from(self._cursor)
        self._steps.append(step)
        self._cursor = len(self._steps)
        self._keep_acceptance_current()

    def add_click(self, row: int, col: int, positive: bool) -> Step:
        """A person's click, as a step of the timeline."""
        height, width = self.rgb.shape[:2]
        if not (0 <= row < height and 0 <= col < width):
            raise InputError(f"the click ({row}, {col}) lies outside the {height}x{width} slice")
        click = Click(int(row), int(col), bool(positive), source="user")
        action = self.profile.action_at(click.row, click.col, click.positive, height, width)
        return self._click_step("user", (click,), (action,))

    def add_mask_edit(self, mask: np.ndarray) -> Step:
        """A person's edit of the mask (e.g. napari's brush), as a step of the timeline."""
        mask = np.asarray(mask)
        if mask.shape != self.rgb.shape[:2]:
            raise InputError(f"the edited mask is {mask.shape} but the slice is {self.rgb.shape[:2]}")
        before = self.current
        mask = mask > 0
        step = Step(
            index=self._cursor + 1,
            source="user",
            kind="edit",
            mask=mask,
            logits=self.segmenter.prior_from_mask(mask) if mask.any() else None,
            clicks=before.clicks,
            iou_prev=iou(before.mask, mask),
        )
        self._push(step)
        return step

    def _show_segmenter(self, clicks: tuple[Click, ...]) -> None:
        """Give the segmenter the slice as it should see it for ``clicks`` (module docstring);
        the segmenter embeds it only if it holds another image."""
        window = self._click_window(clicks)
        if window is None:
            self.segmenter.set_image(self.rgb)
        else:
            if self._windowed is None or self._windowed[0] != window:
                self._windowed = (window, to_rgb8(self._hounsfield, window))
            self.segmenter.set_image(self._windowed[1])
        self.segmenter_window = window

    def _click_window(self, clicks: tuple[Click, ...]) -> str | None:
        first = next((c for c in clicks if c.positive), None)
        if self._hounsfield is None or first is None:
            return None
        return soft_tissue_window(self._hounsfield, first.row, first.col)

    def _click_step(self, source: str, added: tuple[Click, ...], actions: tuple[Action, ...], **fields) -> Step:
        before = self.current
        clicks = before.clicks + added
        started = time.perf_counter()
        self._show_segmenter(clicks)
        result = self.segmenter.segment(clicks, before.logits)
        step = Step(
            index=self._cursor + 1,
            source=source,
            kind="click",
            mask=result.mask,
            logits=result.logits,
            clicks=clicks,
            added=added,
            actions=actions,
            iou_prev=iou(before.mask, result.mask),
            seconds_segment=time.perf_counter() - started,
            **fields,
        )
        self._push(step)
        return step

    def replay(self) -> np.ndarray:
        """Rebuild the current mask from the initial state and the active steps' clicks."""
        mask, logits = self._initial.mask, self._initial.logits
        for step in self.steps:
            if step.kind == "click":
                self._show_segmenter(step.clicks)
                result = self.segmenter.segment(step.clicks, logits)
                mask, logits = result.mask, result.logits
            elif step.kind in ("edit", "placed"):
                mask, logits = step.mask, step.logits
            elif step.not_present:
                mask = np.zeros_like(mask)
        return mask

    # -- the agent loop --------------------------------------------------------------
    def _turns(self) -> list[Turn]:
        """Earlier agent turns of the active timeline, for profiles that keep history."""
        turns, previous = [], self._initial
        for step in self.steps:
            if step.source == "agent" and step.kind != "placed":
                turns.append(Turn(self.profile.observation(self._seen, self._grid.mask_in(previous.mask)),
                                  step.prompt, step.raw))
            previous = step
        return turns

    def _is_fresh(self) -> bool:
        return self._cursor == 0 and not self._initial.mask.any()

    def _ask(self, request: PolicyRequest, index: int, cancel: threading.Event) -> Iterator[ThoughtDelta | str]:
        """Run the policy on a helper thread; yield text deltas, then the full reply."""
        channel: queue.Queue = queue.Queue()

        def work() -> None:
            try:
                reply = self.policy.respond(request, on_text=lambda text: channel.put(("text", text)), cancel=cancel)
                channel.put(("done", reply))
            except BaseException as exc:  # handed to the session's thread
                channel.put(("error", exc))

        threading.Thread(target=work, name="ibis-policy", daemon=True).start()
        while True:
            kind, value = channel.get()
            if kind == "text":
                yield ThoughtDelta(index, value)
            elif kind == "error":
                raise value
            else:
                yield value
                return

    def _repeats(self, actions: tuple[Action, ...]) -> bool:
        recent = [s.actions for s in self.steps[-(REPEAT_LIMIT - 1) :] if s.source == "agent" and s.kind != "placed"]
        return len(recent) == REPEAT_LIMIT - 1 and all(a == actions for a in recent)

    def run(self, cancel: threading.Event | None = None) -> Iterator[Event]:
        """Let the agent work from the current state; yields events until it stops."""
        cancel = cancel or threading.Event()
        self._show_segmenter(self.current.clicks)
        for _ in range(self.max_steps):
            stop = yield from self._agent_turn(cancel)
            if stop is not None:
                self.last_stop = stop
                yield stop
                return
        self.last_stop = Stopped("max_steps", f"reached {self.max_steps} steps without an answer")
        yield self.last_stop

    def _placement(self, cancel: threading.Event) -> Iterator[Event]:
        """Offer the policy, once and only on a fresh run, to place a start mask; a step if it does."""
        self._placement_asked = True
        index = self._cursor + 1
        started = time.perf_counter()
        try:
            placement = self.policy.place(self._seen, self.query, self.volume, cancel)
        except Cancelled as exc:
            return Stopped("cancelled", str(exc))
        except Exception as exc:  # as a failed turn: the timeline stays as it was
            return Stopped("error", failure_line(exc))
        if placement is None:
            return None
        mask = np.asarray(placement.mask) > 0
        if mask.shape != self._seen.shape[:2] or not mask.any():
            return None  # nothing usable placed: the agent starts from nothing, as without a placement
        mask = self._grid.mask_out(mask)
        if cancel.is_set():
            return Stopped("cancelled", "stopped before the next step")
        yield StepStarted(index)
        yield ThoughtDelta(index, placement.thought)
        step = Step(index=index, source="agent", kind="placed", mask=mask,
                    logits=self.segmenter.prior_from_mask(mask), thought=placement.thought,
                    iou_prev=iou(self.current.mask, mask), seconds_policy=time.perf_counter() - started)
        self._push(step)
        yield MaskUpdated(step)
        return None

    def _agent_turn(self, cancel: threading.Event) -> Iterator[Event]:
        if cancel.is_set():
            return Stopped("cancelled", "stopped before the next step")
        if not self._placement_asked and not self._steps and not self._initial.mask.any():
            stop = yield from self._placement(cancel)
            if stop is not None or self._steps:
                return stop  # a placed mask is one step; the agent's turns go on from it
        index = self._cursor + 1
        before = self.current
        prompt = self.profile.user_text(self.query, first=self._is_fresh())
        seen_mask = self._grid.mask_in(before.mask)
        observation = self.profile.observation(self._seen, seen_mask)
        request = PolicyRequest(
            profile=self.profile,
            query=self.query,
            image=self._seen,
            mask=seen_mask,
            clicks=tuple(self._grid.click_in(c) for c in before.clicks),
            step=index,
            messages=self.profile.messages(self._turns() + [Turn(observation, prompt)], self.use_history),
            volume=self.volume,
        )
        yield StepStarted(index)
        started = time.perf_counter()
        raw = ""
        try:
            for item in self._ask(request, index, cancel):
                if isinstance(item, ThoughtDelta):
                    yield item
                else:
                    raw = item
        except Cancelled as exc:
            return Stopped("cancelled", str(exc))
        except Exception as exc:  # a policy failure must leave the timeline as it was
            return Stopped("error", failure_line(exc))
        seconds_policy = time.perf_counter() - started
        try:
            response = self.profile.parse(raw)
        except ActionParseError as exc:
            self.rejected_outputs.append(raw)
            return Stopped("unparsable", str(exc))
        common = {"thought": response.thought, "raw": raw, "prompt": prompt, "seconds_policy": seconds_policy}

        if response.undo:
            self.undo()
            return None
        if response.terminate:
            mask = np.zeros_like(before.mask) if response.not_present else before.mask
            not_present = response.not_present or (not before.mask.any() and not before.clicks)
            step = Step(
                index=index, source="agent", kind="answer", mask=mask, logits=before.logits, clicks=before.clicks,
                answer=response.answer, not_present=not_present, iou_prev=iou(before.mask, mask), **common,
            )
            self._push(step)
            yield Answered(step)
            return Stopped("not_present" if not_present else "answered", response.answer or "")
        if self._repeats(response.actions):
            return Stopped("repeated", f"the agent repeated the same action {REPEAT_LIMIT} times")
        height, width = self.rgb.shape[:2]
        added = tuple(
            Click(*self.profile.to_pixel(a, height, width), a.positive, target=a.target, source="agent")
            for a in response.actions
        )
        if self._changes_nothing(before, added):
            return Stopped(
                "finished",
                f"the agent repeated a click that would not change the mask; step {self._cursor} "
                f"({before.area} px) is the result",
            )
        yield ActionTaken(index, response.actions, added)
        step = self._click_step("agent", added, response.actions, **common)
        yield MaskUpdated(step)
        return None

    def _changes_nothing(self, before: Step, added: tuple[Click, ...]) -> bool:
        """Whether clicks the agent repeats (each already in effect) would leave the mask as it is."""
        in_effect = {(c.row, c.col, c.positive) for c in before.clicks}
        if not added or any((c.row, c.col, c.positive) not in in_effect for c in added):
            return False
        self._show_segmenter(before.clicks + added)
        result = self.segmenter.segment(before.clicks + added, before.logits)
        return iou(before.mask, result.mask) >= NO_CHANGE_IOU

    # -- record ------------------------------------------------------------------------
    def trajectory(self) -> dict:
        """A JSON-ready record of how the current mask was made."""
        from . import __version__

        height, width = self.rgb.shape[:2]
        previous_area = self._initial.area

        def click_record(click: Click) -> dict:
            action = self.profile.action_at(click.row, click.col, click.positive, height, width)
            return {
                "row": click.row, "col": click.col, "positive": click.positive, "source": click.source,
                "target": click.target, "model_xy": [action.x, action.y],
            }

        steps = []
        for step in self.steps:
            steps.append(
                {
                    "index": step.index,
                    "source": step.source,
                    "kind": step.kind,
                    "thought": step.thought,
                    "output": step.raw,
                    "actions": [
                        {"positive": a.positive, "x": a.x, "y": a.y, "target": a.target} for a in step.actions
                    ],
                    "clicks": [click_record(c) for c in step.added],
                    "answer": step.answer,
                    "not_present": step.not_present,
                    "mask_area": step.area,
                    "area_change": step.area - previous_area,
                    "iou_to_previous": None if np.isnan(step.iou_prev) else round(step.iou_prev, 6),
                    "seconds_policy": round(step.seconds_policy, 4),
                    "seconds_segment": round(step.seconds_segment, 4),
                }
            )
            previous_area = step.area
        return {
            "napari_ibis": __version__,
            "query": self.query,
            "profile": self.profile.name,
            "use_history": self.use_history,
            "max_steps": self.max_steps,
            "image_shape": [height, width],
            "pixel_aspect": self.pixel_aspect,
            "window": self.window,
            "segmenter_window": self.segmenter_window,
            "policy": self.policy.identity(),
            "segmenter": self.segmenter.identity(),
            "initial_mask_area": self._initial.area,
            "steps": steps,
            "operations": [{"name": o.name, "cursor": o.cursor, "time": o.time} for o in self.operations],
            "accepted_step": self.accepted,
            "stop": None if self.last_stop is None else {"reason": self.last_stop.reason, "message": self.last_stop.message},
            "final_mask_area": self.current.area,
        }


def hounsfield_slice(image: np.ndarray, volume: VolumeSlice | None = None) -> np.ndarray | None:
    """``image`` where it is a grey CT slice in Hounsfield units (judged on its volume where
    there is one), else None."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype == np.uint8 or not np.issubdtype(image.dtype, np.number):
        return None
    return image if looks_like_ct(image[None] if volume is None else volume.volume) else None


def soft_tissue_window(hounsfield: np.ndarray, row: int, col: int) -> str | None:
    """A window (:func:`~napari_ibis.overlay.centred_window`) centred on the tissue at (``row``,
    ``col``) of a CT slice in Hounsfield units, the median of its neighbourhood, where that is
    soft tissue (within :data:`SOFT_TISSUE`); else None."""
    tissue = hounsfield[max(0, row - CLICK_PATCH):row + CLICK_PATCH + 1, max(0, col - CLICK_PATCH):col + CLICK_PATCH + 1]
    level = float(np.nanmedian(tissue))
    return centred_window(level) if SOFT_TISSUE[0] <= level <= SOFT_TISSUE[1] else None
