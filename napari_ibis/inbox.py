"""The training inbox: finished sessions kept on this machine to teach the agent.

With "keep for training" on (the widget's result panel) or ``--keep-for-training DIR``
(``napari-ibis segment``), every accepted session that is exported or saved goes into an
inbox folder, one pair of files per slice and query (a later export of the same slice
and query replaces it):

* ``<id>.npz``: the slice as the session showed it (RGB, 8-bit) and as the layer held it,
  the accepted mask, and the mask of every state on the way (active, undone and
  rejected steps, each with the mask it started from);
* ``<id>.json``: the query, each step (agent or person; clicks, the model's text, brush
  edits), the undo / redo / reject / accept operations, the models used, and the
  slice's shape, index, plane (``slice_axes``) and voxel spacing (in the slice's order).

Never written: file names and paths, layer names (unless ``keep_names``), DICOM patient
and study fields, dates, the image's position in the scanner (affine). Nothing leaves
the machine; ``napari-ibis data from-sessions INBOX OUT`` turns an inbox into training
samples (:mod:`training.rl.sessions`), and ``napari-ibis pointer`` fine-tunes the
pointer agent on it (``sessions:``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .segmenters.base import image_key

FORMAT = "napari-ibis-inbox/1"
SETTINGS_KEY = "keep_for_training"  # the widget's remembered choice
_QUERY_VERBS = r"(?:segment|outline|delineate|mark|find|show|locate|contour|highlight|label|mask|trace|get)"
_PRONOUNS = {"it", "them", "this", "that", "one", "boundary", "segmentation"}
_TARGET_END = r"(?:\s+(?:in|on|within|from|visible|if|here|of this|for)\b|[.?!;,:]|$)"


def default_folder() -> Path:
    from platformdirs import user_data_dir

    return Path(os.environ.get("NAPARI_IBIS_INBOX") or Path(user_data_dir("napari-ibis")) / "training-inbox")


def target_of(query: str) -> str:
    """The structure a query names ("Please segment the left kidney." -> "left kidney"), for
    the query templates of training; the query itself, lower-cased, when no pattern fits."""
    text = " ".join(query.lower().split())
    article = r"(?:the|a|an|all|any)?\s*"
    patterns = (
        rf"\b(?:boundary|outline|contour|presence|extent) of {article}(.+?){_TARGET_END}",
        rf"\bi need {article}(.+?) (?:masked|segmented|outlined|delineated)\b",
        rf"\b(?:is there|are there|there's|there is)\s+{article}(.+?){_TARGET_END}",
        rf"\b{_QUERY_VERBS}\b(?:\s+and\s+{_QUERY_VERBS})?\s+(?:me\s+)?{article}(.+?){_TARGET_END}",
        rf"^visible\s+{article}(.+?){_TARGET_END}",
        rf"^where(?:'s|\s+is|\s+are)\s+{article}(.+?){_TARGET_END}",
    )
    for pattern in patterns:
        found = re.search(pattern, text)
        if found and found.group(1).strip() not in _PRONOUNS and not found.group(1).startswith(("where ", "it ")):
            return found.group(1).strip()
    return text.strip(" .?!")


@dataclass
class KeptStep:
    """One state change of a kept session: who made it, what it was, the masks before and after."""

    record: dict  # index, source, kind, status ("active", "undone", "rejected"), clicks added, text
    before: np.ndarray
    after: np.ndarray

    @property
    def source(self) -> str:
        return self.record["source"]

    @property
    def status(self) -> str:
        return self.record["status"]


@dataclass
class KeptSession:
    """A session read back from an inbox."""

    id: str
    meta: dict
    rgb: np.ndarray
    accepted: np.ndarray
    steps: list[KeptStep]

    @property
    def query(self) -> str:
        return self.meta["query"]

    @property
    def target(self) -> str:
        return self.meta["target"]

    @property
    def modality(self) -> str:
        return self.meta.get("modality") or ""

    @property
    def not_present(self) -> bool:
        """The person accepted "the target is not there"."""
        return bool(self.meta.get("not_present"))

    @property
    def pixel_aspect(self) -> float:
        """The slice's row spacing over its column spacing (from its voxel spacing, else as kept)."""
        from .square_pixels import pixel_aspect

        spacing = self.meta.get("spacing")
        return pixel_aspect(spacing) if spacing else float(self.meta.get("pixel_aspect") or 1.0)

    def at_square_pixels(self) -> "KeptSession":
        """The session as the agent sees its slice (:mod:`napari_ibis.square_pixels`): the
        pixels, every mask and the person's clicks on the square grid; itself where the slice's
        rows and columns are spaced alike. Training reads kept sessions this way."""
        from dataclasses import replace

        from .segmenters.base import Click
        from .square_pixels import SquareGrid

        grid = SquareGrid(self.accepted.shape, self.pixel_aspect)
        if grid.identity:
            return self

        def record(step: KeptStep) -> dict:
            clicks = []
            for click in step.record["clicks"]:
                moved = grid.click_in(Click(click["row"], click["col"], click["positive"]))
                clicks.append({**click, "row": moved.row, "col": moved.col})
            return {**step.record, "clicks": clicks}

        steps = [KeptStep(record(step), grid.mask_in(step.before), grid.mask_in(step.after)) for step in self.steps]
        meta = {**self.meta, "shape": list(grid.square)}
        return replace(self, meta=meta, rgb=grid.image(self.rgb), accepted=grid.mask_in(self.accepted), steps=steps)


def _step_record(step, status: str, shape: tuple[int, int], profile) -> dict:
    height, width = shape

    def model_xy(click) -> list:
        action = profile.action_at(click.row, click.col, click.positive, height, width)
        return [action.x, action.y]

    return {
        "index": step.index, "source": step.source, "kind": step.kind, "status": status,
        "clicks": [{"row": c.row, "col": c.col, "positive": c.positive, "source": c.source,
                    "model_xy": model_xy(c)}
                   for c in step.added],
        "output": step.raw, "thought": step.thought, "answer": step.answer, "not_present": step.not_present,
        "area": step.area,
    }


def _pack(mask: np.ndarray) -> np.ndarray:
    return np.packbits(np.asarray(mask, dtype=bool))


def _unpack(packed: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.unpackbits(packed, count=shape[0] * shape[1]).reshape(shape).astype(bool)


class TrainingInbox:
    """A folder of kept sessions (see the module docstring for what is and is not written)."""

    def __init__(self, folder: str | Path | None = None, keep_names: bool = False) -> None:
        self.folder = Path(folder) if folder is not None else default_folder()
        self.keep_names = keep_names

    def keep(self, session, raw_slice: np.ndarray | None = None, slice_index=(), spacing=None, modality: str = "",
             names: dict | None = None, slice_axes=()) -> Path:
        """Write ``session`` (accepted; the current step is accepted if nothing was) to the inbox;
        returns the JSON file. ``names``: layer/file names, written only with ``keep_names``."""
        if session.accepted is None:
            session.accept()
        shape = tuple(session.rgb.shape[:2])
        query_hash = hashlib.blake2b(session.query.encode(), digest_size=4).hexdigest()
        session_id = f"{image_key(session.rgb)[:16]}-{query_hash}"
        arrays = {"rgb": session.rgb, "accepted": _pack(session.step_at(session.accepted).mask)}
        if raw_slice is not None:
            arrays["slice"] = np.asarray(raw_slice)
        steps = []
        timeline = session.timeline
        for position, step in enumerate(timeline):
            before = timeline[position - 1].mask if position else session.initial.mask
            status = "active" if position < session.cursor else "undone"
            steps.append((step, before, status))
        steps += [(step, before, "rejected") for step, before in session.discarded]
        records = []
        for number, (step, before, status) in enumerate(steps):
            arrays[f"before{number}"], arrays[f"after{number}"] = _pack(before), _pack(step.mask)
            records.append(_step_record(step, status, shape, session.profile))
        accepted_step = session.step_at(session.accepted)
        meta = {
            "format": FORMAT, "id": session_id, "kept_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            "query": session.query, "target": target_of(session.query), "modality": modality,
            "shape": list(shape), "slice_index": [int(i) for i in slice_index],
            "slice_axes": [int(a) for a in slice_axes],  # (): axial; else the volume's axes as the slice was cut
            "spacing": None if spacing is None else [float(s) for s in spacing],
            "pixel_aspect": getattr(session, "pixel_aspect", 1.0),
            "profile": session.profile.name, "policy": session.policy.identity(),
            "segmenter": session.segmenter.identity(), "window": session.window,
            "initial_area": session.initial.area, "accepted_step": session.accepted,
            "accepted_area": accepted_step.area, "not_present": bool(accepted_step.not_present),
            "steps": records,
            "operations": [{"name": o.name, "cursor": o.cursor} for o in session.operations],
            "names": (names or {}) if self.keep_names else {},
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.folder / f"{session_id}.npz", lambda stream: np.savez_compressed(stream, **arrays))
        _write_atomic(self.folder / f"{session_id}.json", lambda stream: stream.write(json.dumps(meta, indent=1).encode()))
        return self.folder / f"{session_id}.json"

    def ids(self) -> list[str]:
        """Ids of the complete sessions in the folder, oldest first."""
        found = [p for p in self.folder.glob("*.json") if (p.with_suffix(".npz")).is_file()]
        return [p.stem for p in sorted(found, key=lambda p: (p.stat().st_mtime, p.name))]

    def read(self, session_id: str) -> KeptSession:
        meta = json.loads((self.folder / f"{session_id}.json").read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{session_id}.json is not a napari-ibis inbox entry")
        shape = tuple(meta["shape"])
        with np.load(self.folder / f"{session_id}.npz", allow_pickle=False) as data:
            rgb = data["rgb"]
            accepted = _unpack(data["accepted"], shape)
            steps = [KeptStep(record, _unpack(data[f"before{n}"], shape), _unpack(data[f"after{n}"], shape))
                     for n, record in enumerate(meta["steps"])]
        return KeptSession(session_id, meta, rgb, accepted, steps)

    def sessions(self) -> list[KeptSession]:
        return [self.read(session_id) for session_id in self.ids()]


def _write_atomic(path: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
