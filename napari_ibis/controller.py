"""The widget's state and decisions, without Qt or napari: tested on its own.

A :class:`Controller` owns the current :class:`~napari_ibis.session.Session`, the
run's settings, the transcript, the status line, the autosave and which actions
are possible now. Work that takes time (loading, embedding, the agent's turns, a
person's click) is a *job*: a generator that runs on a worker thread and yields
items; the GUI thread hands each item to :meth:`Controller.handle`. Timeline
edits (undo, redo, reject, accept, brush edits) are quick and run on the GUI
thread. The controller tells its view what to show through four calls:
``session_started(spec)``, ``show_step(step)``, ``changed()``,
``transcript_reset()`` and ``transcript_append(readable, raw)``; and
``error(message)`` for notifications.

A new run replaces the previous session only once its own session exists, so a
run that fails to start (a wrong model path, a missing checkpoint) leaves the
previous session, its steps and its buttons exactly as they were.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ._runtime import MODEL_CACHE, ModelCache, freeze_long_lived_objects
from .autosave import Autosave, Entry, restore_into, slice_key
from .errors import Cancelled, IbisError, InputError
from .geometry import Geometry, in_view_order, oriented, plane_of
from .inbox import TrainingInbox
from .io import trace_path
from .policies.base import VolumeSlice
from .session import ActionTaken, Answered, MaskUpdated, Session, StepStarted, Stopped
from .square_pixels import stretch_note
from .transcript import Transcript, plane_note, stop_words

__all__ = ["Controller", "RunSpec"]


CONTINUE_STEPS = 20  # the agent's steps on Continue in a session the person started alone (max steps 0)


@dataclass
class RunSpec:
    """Everything a run needs, read from the controls on the GUI thread."""

    image: np.ndarray  # the 2-D slice, grey (H, W) or RGB (H, W, 3), as the layer holds it
    query: str
    model: str | None = None  # None: the bundled agent
    segmenter: str = "litemedsam"
    profile: str = "ibis-release"
    max_steps: int = 20
    history: bool = False
    device: str = "auto"
    init_mask: np.ndarray | None = None
    layer: str = ""  # the image layer's name
    index: tuple[int, ...] = ()  # the slice of that layer, along axes[:-2]
    axes: tuple[int, ...] = ()  # the layer's axes in view order (a coronal view: (1, 0, 2)); (): its own order
    layer_shape: tuple[int, ...] = ()  # its spatial shape
    geometry: Geometry | None = field(default=None, repr=False)
    modality: str = ""  # as the file says (DICOM's Modality), if it does
    pixel_aspect: float = 1.0  # the slice's row spacing over its column spacing (napari_ibis.square_pixels)
    slice_spacing: float | None = None  # the distance between the volume's slices (mm), where the layer's scale gives it
    untaught: str = ""  # where the query names something the agent was not taught: the note that it guesses
    volume: VolumeSlice | None = field(default=None, repr=False)  # the volume the slice is from, for the agent

    def settings(self) -> dict:
        """What the autosave and the trajectory record keep of these settings."""
        return {"layer": self.layer, "slice_index": list(self.index), "slice_axes": list(self.axes),
                "layer_shape": list(self.layer_shape),
                "model": self.model, "segmenter": self.segmenter, "profile": self.profile,
                "max_steps": self.max_steps, "history": self.history, "device": self.device}


class Controller:
    """The session, the timeline edits, the transcript and the status of one widget."""

    def __init__(self, view, models: ModelCache = MODEL_CACHE, autosave: Autosave | None = None,
                 inbox: TrainingInbox | None = None) -> None:
        self.view = view
        self.models = models
        self.autosave = autosave
        self.inbox = inbox  # where exported sessions go while keep_for_training is on
        self.keep_for_training = False
        self.session: Session | None = None
        self.spec: RunSpec | None = None
        self.key: str | None = None  # the autosave key of the session's slice
        self.running = False
        self.status = ""
        self.cancel = threading.Event()
        self.transcript = Transcript(lambda readable, raw: self.view.transcript_append(readable, raw))

    # -- what can be done now ----------------------------------------------------------
    def enabled(self) -> dict[str, bool]:
        idle, session = not self.running, self.session
        has = idle and session is not None
        has_mask = has and session.current.area > 0
        return {
            "run": idle, "find": idle, "inputs": idle, "stop": self.running, "continue": has,
            "undo": has and session.cursor > 0, "redo": has and session.can_redo,
            "reject": has and session.cursor > 0, "brush": has,
            "accept": has_mask, "export": has_mask, "save": has_mask,
            "propagate": has_mask and len(self.spec.index) >= 1,  # along the last sliced axis
        }

    def owners(self, step) -> list[int]:
        """For each click in effect at ``step``, the step that added it (0: none)."""
        added = {}
        for s in self.session.timeline:
            for click in s.added:
                added.setdefault(click, s.index)
        return [added.get(click, 0) for click in step.clicks]

    def set_status(self, text: str) -> None:
        self.status = text
        self.view.changed()

    def report_error(self, message: str) -> None:
        self.status = message
        self.view.error(message)
        self.view.changed()

    # -- jobs (worker thread: they never touch the view) ----------------------------------
    def begin(self) -> threading.Event:
        """Mark a job as running (GUI thread); returns the cancel event the job obeys."""
        self.cancel = threading.Event()
        self.running = True
        self.view.changed()
        return self.cancel

    def new_session_job(self, spec: RunSpec) -> Iterator[tuple]:
        yield ("status", "Loading the agent and the segmenter…" if not self._ready(spec) else "Starting…")
        try:
            policy = self.models.policy(spec.model, spec.device)
            segmenter = self.models.segmenter(spec.segmenter, spec.device)
            yield ("status", "Embedding the slice…")
            session = Session(spec.image, spec.query, policy, segmenter, profile=spec.profile,
                              max_steps=spec.max_steps or CONTINUE_STEPS, use_history=spec.history,
                              init_mask=spec.init_mask, pixel_aspect=spec.pixel_aspect, volume=spec.volume)
        except IbisError as exc:
            yield ("error", str(exc))
            return
        yield ("session", (session, spec, None))
        if spec.max_steps:
            yield from self._events(session)

    def continue_job(self, max_steps: int | None = None) -> Iterator[tuple]:
        """The agent goes on from the current step, for up to ``max_steps`` more steps."""
        if max_steps is not None:
            self.session.max_steps = max_steps
        yield from self._events(self.session)

    def click_job(self, row: int, col: int, positive: bool) -> Iterator[tuple]:
        try:
            step = self.session.add_click(row, col, positive)
        except IbisError as exc:
            yield ("error", str(exc))
            return
        yield ("user_step", step)

    def restore_job(self, entry: Entry, spec: RunSpec) -> Iterator[tuple]:
        """Rebuild an autosaved session on ``spec.image`` (the same slice) with the models it used."""
        yield ("status", "Restoring the session: loading the agent and the segmenter…")
        try:
            meta, arrays = self.autosave.load(entry)
            policy = self.models.policy(spec.model, spec.device)
            segmenter = self.models.segmenter(spec.segmenter, spec.device)
            yield ("status", "Restoring the session: embedding the slice…")
            session = Session(spec.image, spec.query, policy, segmenter, profile=spec.profile,
                              max_steps=spec.max_steps or CONTINUE_STEPS, use_history=spec.history,
                              pixel_aspect=spec.pixel_aspect, volume=spec.volume)
            restore_into(session, meta, arrays)
        except (IbisError, ValueError, KeyError, OSError) as exc:
            yield ("error", f"cannot restore the session: {exc}")
            return
        yield ("session", (session, spec, meta["transcript"]))

    def propagate_job(self, volume: np.ndarray, mask: np.ndarray, direction: str, check: str) -> Iterator[tuple]:
        """Carry ``mask`` (the result on the session's slice) through ``volume`` (Z, H, W[, 3])."""
        from .propagation import Propagation, agent_checker
        from .structure_limits import limits_for

        spec = self.spec
        yield ("status", f"Propagating {direction} from slice {spec.index[-1]}…")
        try:
            segmenter = self.models.segmenter(spec.segmenter, spec.device)
            checker = None
            if check != "none":
                policy = self.models.policy(spec.model, spec.device)
                checker = agent_checker(policy, spec.query, segmenter, spec.profile, cancel=self.cancel,
                                        pixel_aspect=spec.pixel_aspect, volume=spec.volume)
            # the pointer agent on a brain volume: the registered atlas region, slice by slice
            through = None if self.session is None else self.session.region_through()
            if through is not None:
                yield ("status", f"Propagating {direction} from slice {spec.index[-1]}: following {through.describe()}…")
            propagation = Propagation(volume, segmenter, checker=checker, check=check, pixel_aspect=spec.pixel_aspect,
                                      region_of=through, limits=limits_for(spec.query),
                                      slice_spacing_mm=spec.slice_spacing)
            for event in propagation.run(spec.index[-1], mask, direction, self.cancel):
                yield ("propagated", event)
        except IbisError as exc:
            yield ("error", str(exc))

    def find_slice_job(self, volume: np.ndarray, query: str, model: str | None, device: str,
                       pixel_aspect: float, looked_through: VolumeSlice | None = None) -> Iterator[tuple]:
        """Look for ``query``'s structure through ``volume`` (Z, H, W[, 3]): where to start;
        ``looked_through``: the same volume as a policy that looks through one takes it."""
        from .key_slice import KeySlice, search

        yield ("status", "Loading the agent…" if not self.models.loaded(("policy", model, device)) else
               f"Looking through {len(volume)} slices…")
        try:
            policy = self.models.policy(model, device)
            for item in search(volume, query, policy, pixel_aspect=pixel_aspect, cancel=self.cancel,
                               volume=looked_through):
                if isinstance(item, KeySlice):
                    yield ("found", item)
                else:
                    yield ("status", f"Looking through {len(volume)} slices: slice {item[0]} "
                                     f"({'seen' if item[1].present else 'not seen'} there)")
        except Cancelled:
            yield ("status", "Stopped looking for the slice.")
        except IbisError as exc:
            yield ("error", str(exc))

    def _ready(self, spec: RunSpec) -> bool:
        return self.models.loaded(("policy", spec.model, spec.device)) and self.models.loaded(("segmenter", spec.segmenter))

    def _events(self, session: Session) -> Iterator[tuple]:
        for event in session.run(self.cancel):
            yield ("event", event)

    # -- what the jobs yield (GUI thread) -----------------------------------------------
    def handle(self, item: tuple) -> None:
        kind, value = item
        if kind == "status":
            self.set_status(value)
        elif kind == "error":
            self.report_error(value)
        elif kind == "session":
            self._start_session(*value)
        elif kind == "user_step":
            previous = self.session.step_at(value.index - 1).area
            self.transcript.user_click(value.index, value.added[0], value.area, previous)
            self.view.show_step(value)
            self._autosave()
            self.set_status(f"Your click is step {value.index} ({value.area:,} px). Continue lets the agent go on.")
        elif kind == "event":
            self._on_event(value)
        elif kind == "propagated":
            self.view.show_propagated(value)
        elif kind == "found":
            self.view.show_found(value)

    def finish(self) -> None:
        """The job ended (GUI thread)."""
        self.running = False
        freeze_long_lived_objects()
        self.view.changed()

    def _start_session(self, session: Session, spec: RunSpec, transcript: dict | None) -> None:
        self.session, self.spec = session, spec
        self.key = slice_key(spec.image)
        self.view.session_started(spec)
        if transcript is not None:
            self.transcript.restore(transcript["readable"], transcript["raw"])
            self.view.transcript_reset()
            self.set_status(f"Restored: step {session.cursor} ({session.current.area:,} px) of '{session.query}'.")
        else:
            self.transcript.restore("", "")
            self.view.transcript_reset()  # a new session's transcript starts empty, on screen too
            self.transcript.note(f"Query: {session.query}" + (
                f" (refining an imported mask of {session.initial.area:,} px)" if session.initial.area else ""))
            for note in (plane_note(plane_of(self.spec.axes, self.spec.geometry), self.spec.model is None),
                         stretch_note(session.pixel_aspect)):
                if note:
                    self.transcript.note(note)
            fits = spec.max_steps and getattr(session.policy, "will_fit", lambda *_: False)(session.query, session.volume)
            reads = spec.max_steps and getattr(session.policy, "will_read_ct", lambda *_: False)(session.query,
                                                                                                session.volume)
            self.set_status("Fitting the atlas brain onto this volume (once, a few seconds), then the agent places the "
                            "region…" if fits else
                            "Reading this CT's Hounsfield units (once per volume, about 1 s per 50 slices), then the "
                            "agent…" if reads else "The agent is thinking…" if spec.max_steps else
                            "Your turn (max steps 0): click the structure (T toggles positive/negative) or paint the "
                            "mask and press Use my brush edit; Continue lets the agent go on; Accept when done.")
        self.view.show_step(session.current)
        self._autosave()

    def _on_event(self, event) -> None:
        self.transcript.follow(event, self.session)
        if isinstance(event, StepStarted):
            self.set_status(f"Step {event.index}: the agent is thinking…")
        elif isinstance(event, ActionTaken):
            self.set_status(f"Step {event.index}: segmenting…")
        elif isinstance(event, (MaskUpdated, Answered)):
            self.view.show_step(event.step)
            self._autosave()
        elif isinstance(event, Stopped):
            words = stop_words(event, self.session, volume=bool(self.spec and self.spec.index))
            guessed = self.spec is not None and self.spec.untaught and event.reason != "error"
            # first, where a two-line status cannot cut it off
            self.set_status(("A guess (the agent was not taught what the query names). " if guessed else "") + words)
            self._autosave()

    # -- timeline edits (GUI thread) -------------------------------------------------------
    def _edit(self, operation: Callable[[], object], words: Callable[[], str]) -> bool:
        if self.running or self.session is None:
            return False
        operation()
        text = words()
        self.transcript.note(text)
        self.view.show_step(self.session.current)
        self._autosave()
        self.set_status(text)
        return True

    def _where(self) -> str:
        return f"step {self.session.cursor} ({self.session.current.area:,} px)"

    def undo(self) -> bool:
        return self._edit(self.session.undo if self.session else None, lambda: f"Undo: back to {self._where()}.")

    def redo(self) -> bool:
        return self._edit(self.session.redo if self.session else None, lambda: f"Redo: forward to {self._where()}.")

    def reject(self) -> bool:
        return self._edit(self.session.reject if self.session else None,
                          lambda: f"Rejected the last step: back to {self._where()}.")

    def accept(self) -> bool:
        return self._edit(self.session.accept if self.session else None, lambda: f"Accepted {self._where()}.")

    def brush_edit(self, mask: np.ndarray) -> bool:
        if self.running or self.session is None:
            return False
        previous = self.session.current.area
        try:
            step = self.session.add_mask_edit(mask)
        except InputError as exc:
            self.report_error(str(exc))
            return False
        self.transcript.user_edit(step.index, step.area, previous)
        self.view.show_step(step)
        self._autosave()
        self.set_status(f"Your brush edit is step {step.index} ({step.area:,} px).")
        return True

    def stop(self) -> None:
        self.cancel.set()
        self.set_status("Stopping…")

    # -- results ----------------------------------------------------------------------
    def result_mask(self) -> np.ndarray:
        """The accepted mask (accepting the current step if nothing was accepted yet)."""
        if self.session.accepted is None:
            self.session.accept()
        return self.session.step_at(self.session.accepted).mask

    def record(self) -> dict:
        """The trajectory record of the session, with where its slice came from."""
        record = self.session.trajectory()
        spec = self.spec
        record["image"] = {"layer": spec.layer, "slice": list(spec.index), "shape": list(spec.layer_shape)}
        if spec.axes:
            record["image"]["axes"] = list(spec.axes)  # the slice runs along axes[0]: geometry.oriented
        if spec.geometry is not None:
            record["image"]["geometry"] = spec.geometry.describe()
        if spec.untaught:
            record["untaught"] = spec.untaught  # as the CLI records it
        return record

    def exported(self, where: str) -> None:
        """The result is safe in a layer or a file: say so, stop offering the autosave, and
        keep the session for training if the person asked for that."""
        if self.autosave is not None and self.key is not None:
            self._autosave(exported=True)
        self.set_status(where + self._keep())

    def _keep(self) -> str:
        """Put the session into the training inbox (when asked); returns words for the status line."""
        if not self.keep_for_training or self.inbox is None or self.session is None:
            return ""
        spec = self.spec
        try:
            spacing = None if spec.geometry is None else in_view_order(spec.geometry.display_spacing, spec.axes)
            self.inbox.keep(self.session, raw_slice=spec.image, slice_index=spec.index, spacing=spacing,
                            modality=spec.modality, names={"layer": spec.layer}, slice_axes=spec.axes)
        except OSError as exc:  # the result itself is safe; only the training copy failed
            self.view.error(f"Not kept for training: {exc.strerror or exc} ({self.inbox.folder})")
            return " Not kept for training (see the message)."
        return " Kept for training."

    def save(self, path: str | Path, value: int, may_overwrite: Callable[[Path], bool]) -> Path | None:
        """Write the result (in the source's geometry) and its trajectory beside it.

        ``may_overwrite(path)`` is asked for every file that exists; a refusal writes nothing."""
        from . import io
        from .inbox import target_of

        path, trace = Path(path), trace_path(path)
        io.check_labels_path(path, force=True)
        for existing in (p for p in (path, trace) if p.exists()):
            if not may_overwrite(existing):
                self.set_status(f"Not saved: {existing.name} exists and was kept.")
                return None
        mask = self.result_mask()
        labels = np.zeros(self.spec.layer_shape, dtype=np.uint16 if value > 255 else np.uint8)
        region = oriented(labels, self.spec.axes)
        region = region[self.spec.index] if self.spec.index else region
        region[mask] = value
        io.write_labels(path, labels, force=True, geometry=self.spec.geometry,
                        names={value: target_of(self.spec.query)})
        io.write_json(trace, self.record(), force=True)
        self.exported(f"Saved {path.name} and {trace.name}.")
        return path

    # -- crash recovery ------------------------------------------------------------------
    def _autosave(self, exported: bool = False) -> None:
        if self.autosave is None or self.session is None or self.key is None:
            return
        settings = {**self.spec.settings(), "query": self.session.query}
        self.autosave.save(self.key, self.session, settings, self.transcript, exported=exported)

    def recoverable(self, layers: list[tuple[str, tuple[int, ...], Callable[..., np.ndarray]]]) -> list[tuple[Entry, str]]:
        """Autosaved, not exported sessions whose slice is open: ``(entry, layer name)`` pairs.

        ``layers``: (name, spatial shape, slice getter) of each image layer; the getter takes
        the slice's index and its axes in view order (see RunSpec)."""
        if self.autosave is None:
            return []
        found = []
        for entry in self.autosave.entries():
            for name, shape, get_slice in layers:
                if tuple(shape) != tuple(entry.meta.get("layer_shape", ())):
                    continue
                try:
                    image = get_slice(entry.slice_index, entry.slice_axes)
                except (IndexError, ValueError):
                    continue
                if slice_key(image) == entry.key:
                    found.append((entry, name))
                    break
        return found

    def discard(self, entry: Entry) -> None:
        if self.autosave is not None:
            self.autosave.discard(entry)
