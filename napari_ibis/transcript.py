"""What the person reads of a session: each step in words, the raw model text one switch away.

:class:`Transcript` keeps two parallel logs: ``readable`` (the agent's thoughts as
plain sentences, "positive click at row 40, col 52", mask changes, the person's
own steps and timeline edits) and ``raw`` (exactly what the model wrote, tags and
0-1 coordinates included). Every change is appended to both and handed to
``on_append(readable_piece, raw_piece)`` so that a view can follow either one.
"""

from __future__ import annotations

import re
from typing import Callable

TAGS = ("think", "action", "answer")
_TAG = re.compile(r"</?(think|action|answer)>")
_MAX_TAG = max(len(f"</{t}>") for t in TAGS)


class TagFilter:
    """Turns streamed model text into readable text, piece by piece.

    ``<think>`` text passes through, ``<action>`` blocks are dropped (the click
    they hold is shown once it is parsed), ``<answer>`` text is prefixed with
    "answer: ". A tag split across two pieces is held back until it is complete.
    """

    def __init__(self) -> None:
        self.inside: str | None = None
        self.pending = ""
        self.fresh = True  # nothing shown since the last opening tag: drop leading whitespace

    def feed(self, text: str) -> str:
        self.pending += text
        out = []
        while self.pending:
            start = self.pending.find("<")
            if start < 0:
                out.append(self._emit(self.pending))
                self.pending = ""
                break
            out.append(self._emit(self.pending[:start]))
            self.pending = self.pending[start:]
            match = _TAG.match(self.pending)
            if match:
                closing, name = match.group(0).startswith("</"), match.group(1)
                self.inside = None if closing else name
                self.pending = self.pending[match.end():]
                self.fresh = True
                if not closing and name == "answer":
                    out.append("\n  answer: ")
                continue
            if len(self.pending) < _MAX_TAG and any(f"<{t}>".startswith(self.pending) or f"</{t}>".startswith(self.pending) for t in TAGS):
                break  # maybe the start of a tag: wait for the next piece
            out.append(self._emit(self.pending[0]))
            self.pending = self.pending[1:]
        return "".join(out)

    def flush(self) -> str:
        text, self.pending = self._emit(self.pending), ""
        return text

    def _emit(self, text: str) -> str:
        if not text or self.inside == "action" or (self.inside is None and not text.strip()):
            return ""
        if self.fresh:
            text = text.lstrip()
            self.fresh = not text
        return text if self.inside is None else text.replace("\n", " ")


def click_words(click) -> str:
    sign = "positive" if click.positive else "negative"
    return f"{sign} click at row {click.row}, col {click.col}"


def area_words(area: int, previous: int) -> str:
    return f"mask {area:,} px ({area - previous:+,})"


class Transcript:
    """The readable and raw logs of one session."""

    def __init__(self, on_append: Callable[[str, str], None] | None = None) -> None:
        self.readable: list[str] = []
        self.raw: list[str] = []
        self.on_append = on_append or (lambda readable, raw: None)
        self._filter = TagFilter()

    def text(self, raw: bool = False) -> str:
        return "".join(self.raw if raw else self.readable)

    def add(self, readable: str, raw: str | None = None) -> None:
        raw = readable if raw is None else raw
        self.readable.append(readable)
        self.raw.append(raw)
        self.on_append(readable, raw)

    def restore(self, readable: str, raw: str) -> None:
        self.readable, self.raw = [readable], [raw]

    # -- the agent's steps --------------------------------------------------------
    def step_started(self, index: int) -> None:
        self._filter = TagFilter()
        self.add(f"\nStep {index} (agent)\n  ", f"\n[step {index}]\n")

    def thought(self, text: str) -> None:
        self.add(self._filter.feed(text), text)

    def clicks(self, clicks) -> None:
        tail = self._filter.flush()
        self.add(tail + "".join(f"\n  → {click_words(c)}" for c in clicks), "")

    def placed(self, area: int, previous: int) -> None:
        """The agent placed a mask without clicking (an atlas region)."""
        tail = self._filter.flush()
        words = area_words(area, previous)
        self.add(tail + f"\n  → places a mask; {words}\n", f"\n  [placed: {words}]\n")

    def mask(self, area: int, previous: int) -> None:
        self.add(f"; {area_words(area, previous)}\n", f"\n  [{area_words(area, previous)}]\n")

    def answered(self, answer: str | None, not_present: bool) -> None:
        tail = self._filter.flush()
        if not_present:
            self.add(tail + "\n  → the target is not there\n", "\n")
        else:
            self.add(tail + "\n", "\n")

    # -- the person's steps and edits -----------------------------------------------
    def user_click(self, index: int, click, area: int, previous: int) -> None:
        line = f"\nStep {index} (you): {click_words(click)}; {area_words(area, previous)}\n"
        self.add(line, line)

    def user_edit(self, index: int, area: int, previous: int) -> None:
        line = f"\nStep {index} (you): brush edit; {area_words(area, previous)}\n"
        self.add(line, line)

    def note(self, text: str) -> None:
        line = f"\n{text}\n"
        self.add(line, line)

    # -- a run's events ------------------------------------------------------------------
    def follow(self, event, session) -> None:
        """Add what one event of :meth:`Session.run` means to both logs."""
        from .session import ActionTaken, Answered, MaskUpdated, StepStarted, Stopped, ThoughtDelta

        if isinstance(event, StepStarted):
            self.step_started(event.index)
        elif isinstance(event, ThoughtDelta):
            self.thought(event.text)
        elif isinstance(event, ActionTaken):
            self.clicks(event.clicks)
        elif isinstance(event, MaskUpdated) and event.step.kind == "placed":
            self.placed(event.step.area, session.step_at(event.step.index - 1).area)
        elif isinstance(event, MaskUpdated):
            self.mask(event.step.area, session.step_at(event.step.index - 1).area)
        elif isinstance(event, Answered):
            self.answered(event.step.answer, event.step.not_present)
        elif isinstance(event, Stopped) and event.reason == "finished":
            tail = self._filter.flush()
            self.add(tail + "\n  → the same click again: it would not change the mask, so the run ends here\n", "\n")
        elif isinstance(event, Stopped) and not event.finished:
            self.note(f"Stopped ({event.reason}): {event.message}" if event.message else f"Stopped ({event.reason})")


def stop_words(stop, session, command_line: bool = False, volume: bool = False) -> str:
    """The status line after a run, in plain words (``command_line``: without the widget's advice;
    ``volume``: the slice is one of a volume's, whose other slices the agent can look through)."""
    current = session.current
    shown = f"step {session.cursor} ({current.area:,} px) is {'the result' if command_line else 'shown'}"
    if stop.reason == "answered":
        advice = "" if command_line else " Accept, correct or export it."
        return f"Finished: the agent answered at step {session.cursor} ({current.area:,} px).{advice}"
    if stop.reason == "not_present":
        elsewhere = "" if not volume else (" --slice auto lets it look through the volume." if command_line else
                                           " Find slice lets it look through the volume.")
        return "Finished: the agent says the target is not in this slice." + elsewhere
    if stop.reason == "finished":
        return f"Finished: {stop.message}."
    if stop.reason == "max_steps":
        steps = f"{session.max_steps} step{'s' if session.max_steps != 1 else ''}"
        return f"Stopped after {steps} without an answer; {shown}." + ("" if command_line else
                                                                             " Continue, correct or export it.")
    if stop.reason == "repeated":
        return f"Stopped: the agent made the same click three times; {shown}."
    if stop.reason == "unparsable":
        return f"Stopped: the model's reply could not be read ({stop.message}); {shown}."
    if stop.reason == "cancelled":
        return f"Stopped by you; {shown}."
    return f"Stopped by an error: {stop.message}"


def plane_note(plane: str, bundled_agent: bool, command_line: bool = False) -> str | None:
    """What a person reads where the slice is not axial and the bundled agent works on it
    (it learnt from axial slices only: docs/BENCHMARKS.md, "the flywheel"); None otherwise."""
    if plane == "axial" or not bundled_agent:
        return None
    advice = ("give it a mask to refine (--init-mask) or use --view axial" if command_line else
              "click the structure yourself (each further click corrects the mask), or turn the volume back to axial")
    return (f"This is a {plane} slice. The bundled agent learnt from axial slices and seldom finds a structure on "
            f"others (its first click lands inside 10% of held-out coronal brain regions): {advice}.")
