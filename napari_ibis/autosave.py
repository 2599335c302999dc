"""Crash recovery: the current session, written atomically after every step.

One file per slice (``<slice hash>.npz`` in the user's cache folder): the run's
settings, the whole timeline (every step's mask, logits, clicks, text, the undo /
redo / reject / accept operations) and the transcript. If napari or the machine
dies mid-session, the widget finds the file the next time it opens on the same
image and offers to restore it. A session that was exported or saved is marked
so and no longer offered. Nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .segmenters.base import Click, image_key
from .session import Operation, Step, Stopped

FORMAT_VERSION = 1
KEEP = 20  # sessions kept; older files are removed


def default_folder() -> Path:
    from platformdirs import user_cache_dir

    return Path(os.environ.get("NAPARI_IBIS_AUTOSAVE") or Path(user_cache_dir("napari-ibis")) / "autosave")


def slice_key(image: np.ndarray) -> str:
    """Which slice a session belongs to: a hash of its pixels as the layer holds them."""
    return image_key(np.asarray(image))


@dataclass
class Entry:
    """An autosaved session found on disk (its metadata only; :meth:`Autosave.load` reads the rest)."""

    path: Path
    key: str
    meta: dict

    @property
    def layer(self) -> str:
        return self.meta.get("layer", "")

    @property
    def slice_index(self) -> tuple[int, ...]:
        return tuple(self.meta.get("slice_index", ()))

    @property
    def slice_axes(self) -> tuple[int, ...]:
        """The layer's axes in the order the slice was viewed (() for its own order)."""
        return tuple(self.meta.get("slice_axes", ()))

    def describe(self) -> str:
        saved = time.strftime("%d %b %H:%M", time.localtime(self.meta.get("saved_at", 0)))
        where = f" slice {','.join(map(str, self.slice_index))}" if self.slice_index else ""
        return (f"'{self.meta.get('query', '')}' on {self.layer}{where}: "
                f"{self.meta.get('cursor', 0)} steps, saved {saved}")


class Autosave:
    """Writes sessions to ``folder`` on a background thread, one file per slice, atomically."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_folder()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ibis-autosave")

    # -- writing --------------------------------------------------------------------
    def save(self, key: str, session, settings: dict, transcript, exported: bool = False):
        """Queue a snapshot of ``session``; returns the future of the write.

        The timeline is captured here (references, no copies); packing and
        compressing happen on the writer thread."""
        state = capture(session, transcript)

        def write() -> None:
            meta, arrays = snapshot(state, settings, exported)
            meta["key"] = key
            self._write(key, meta, arrays)

        return self._writer.submit(write)

    def flush(self, timeout: float = 10.0) -> None:
        self._writer.submit(lambda: None).result(timeout)

    def _write(self, key: str, meta: dict, arrays: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{key}-", suffix=".npz")
        os.close(handle)
        try:
            with open(temporary, "wb") as stream:
                np.savez_compressed(stream, meta=np.array(json.dumps(meta)), **arrays)
            os.replace(temporary, self.folder / f"{key}.npz")
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self._prune()

    def _prune(self) -> None:
        files = sorted(self.folder.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[KEEP:]:
            old.unlink(missing_ok=True)

    # -- reading ----------------------------------------------------------------------
    def entries(self, include_exported: bool = False) -> list[Entry]:
        found = []
        for path in sorted(self.folder.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                with np.load(path, allow_pickle=False) as data:
                    meta = json.loads(str(data["meta"]))
            except Exception:  # a foreign or broken file is skipped, never fatal
                continue
            if meta.get("version") == FORMAT_VERSION and (include_exported or not meta.get("exported")):
                found.append(Entry(path, meta.get("key", path.stem), meta))
        return found

    def load(self, entry: Entry) -> tuple[dict, dict]:
        with np.load(entry.path, allow_pickle=False) as data:
            return json.loads(str(data["meta"])), {name: data[name] for name in data.files if name != "meta"}

    def discard(self, entry: Entry) -> None:
        entry.path.unlink(missing_ok=True)


# -- (de)serialising a timeline ------------------------------------------------------
def _click_record(click: Click) -> list:
    return [click.row, click.col, click.positive, click.target, click.source]


def _click(record: list) -> Click:
    return Click(int(record[0]), int(record[1]), bool(record[2]), record[3], record[4])


def _step_record(step: Step, name: str, arrays: dict) -> dict:
    arrays[f"{name}_mask"] = np.packbits(step.mask)
    if step.logits is not None:
        arrays[f"{name}_logits"] = step.logits.astype(np.float32)
    return {
        "index": step.index, "source": step.source, "kind": step.kind,
        "clicks": [_click_record(c) for c in step.clicks], "added": [_click_record(c) for c in step.added],
        "actions": [[a.positive, a.x, a.y, a.target] for a in step.actions],
        "thought": step.thought, "raw": step.raw, "prompt": step.prompt, "answer": step.answer,
        "not_present": step.not_present, "iou_prev": None if np.isnan(step.iou_prev) else step.iou_prev,
        "seconds_policy": step.seconds_policy, "seconds_segment": step.seconds_segment,
    }


def _step(record: dict, name: str, arrays: dict, shape: tuple[int, int]) -> Step:
    from .protocol import Action

    mask = np.unpackbits(arrays[f"{name}_mask"], count=shape[0] * shape[1]).reshape(shape).astype(bool)
    return Step(
        index=record["index"], source=record["source"], kind=record["kind"], mask=mask,
        logits=arrays.get(f"{name}_logits"),
        clicks=tuple(_click(c) for c in record["clicks"]), added=tuple(_click(c) for c in record["added"]),
        actions=tuple(Action(positive=a[0], x=a[1], y=a[2], target=a[3]) for a in record["actions"]),
        thought=record["thought"], raw=record["raw"], prompt=record["prompt"], answer=record["answer"],
        not_present=record["not_present"], iou_prev=float("nan") if record["iou_prev"] is None else record["iou_prev"],
        seconds_policy=record["seconds_policy"], seconds_segment=record["seconds_segment"],
    )


def capture(session, transcript) -> dict:
    """The state of a session and its transcript at this moment, cheaply (steps are not copied)."""
    return {
        "query": session.query, "shape": list(session.rgb.shape[:2]), "initial": session.initial,
        "steps": session.timeline,  # the undone steps too, so that Redo works after a restore
        "cursor": session.cursor, "accepted": session.accepted, "operations": list(session.operations),
        "last_stop": session.last_stop, "readable": transcript.text(), "raw": transcript.text(raw=True),
    }


def snapshot(state: dict, settings: dict, exported: bool = False) -> tuple[dict, dict]:
    """(metadata, arrays) of a captured session: everything needed to rebuild its timeline."""
    arrays: dict = {}
    stop = state["last_stop"]
    meta = {
        "version": FORMAT_VERSION,
        "saved_at": time.time(),
        "exported": exported,
        "query": state["query"],
        "shape": state["shape"],
        "initial": _step_record(state["initial"], "initial", arrays),
        "steps": [_step_record(step, f"step{i}", arrays) for i, step in enumerate(state["steps"])],
        "cursor": state["cursor"],
        "accepted": state["accepted"],
        "operations": [[o.name, o.cursor, o.time] for o in state["operations"]],
        "last_stop": None if stop is None else [stop.reason, stop.message],
        "transcript": {"readable": state["readable"], "raw": state["raw"]},
        **settings,
    }
    return meta, arrays


def restore_into(session, meta: dict, arrays: dict) -> None:
    """Put a saved timeline into a freshly made ``session`` on the same slice."""
    shape = tuple(meta["shape"])
    if tuple(session.rgb.shape[:2]) != shape:
        raise ValueError(f"the saved session is for a {shape} slice, not {session.rgb.shape[:2]}")
    session.restore_timeline(
        initial=_step(meta["initial"], "initial", arrays, shape),
        steps=[_step(record, f"step{i}", arrays, shape) for i, record in enumerate(meta["steps"])],
        cursor=int(meta["cursor"]),
        accepted=meta["accepted"],
        operations=[Operation(name, cursor, stamp) for name, cursor, stamp in meta["operations"]],
        last_stop=None if meta["last_stop"] is None else Stopped(*meta["last_stop"]),
    )
