"""Batch annotation: the agent on every image of a folder, every slice of its volumes, or
every line of a manifest, with labels and trajectories written per input file.

``napari-ibis batch INPUT --query Q --out DIR``. ``INPUT`` is

* a folder: each image file (PNG/JPEG/TIFF/NIfTI/NRRD/NPY/DICOM) and each DICOM series
  folder inside it; a 2-D image is one session, a volume one session per slice;
* a manifest JSONL: ``{"image", "slice"?, "series"?, "query"?, "target"?}`` per line (paths relative
  to the manifest); a line with ``slice`` is one session on that slice, one without is
  the whole file as above.

For each input ``DIR/<name>.ibis<suffix>`` holds the labels in the input's geometry
(NIfTI in, NIfTI out; NRRD in, NRRD out; DICOM in, NIfTI out; else TIFF) and
``DIR/<name>.ibis.json`` the trajectory of every session (per slice for volumes);
``DIR/batch.jsonl`` gets one summary line per input as it is finished. A rerun skips the
inputs whose files are there, so a killed run loses only the inputs in flight.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .formats import suffix_of
from .io import IMAGE_SUFFIXES, labels_suffix_for


@dataclass
class Item:
    """One input: a file (or DICOM series folder), the query, which slice (None: all)."""

    name: str
    path: Path
    query: str
    slice: tuple[int, ...] | None = None
    series: str | None = None  # which series of a DICOM study folder (formats.choose_series)
    typed: str = ""  # the query as typed, where the agent works on it read otherwise (policies.read_query)

    def query_fields(self) -> dict:
        """The query for a record: as worked on, and as typed where that differs."""
        return {"query": self.query, **({"query_as_typed": self.typed} if self.typed else {})}

    def labels_path(self, out: Path) -> Path:
        return out / f"{self.name}.ibis{labels_suffix_for(self.path)}"

    def trace_path(self, out: Path) -> Path:
        return out / f"{self.name}.ibis.json"

    def whole_volume(self, image) -> bool:
        """Whether this input is a volume taken whole (one session per slice; of the first
        frame, in a file of several volumes)."""
        return self.slice is None and len(image.slice_index) == 1 + bool(image.frames)


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(suffix_of(path))] if suffix_of(path) and name.lower().endswith(suffix_of(path)) else name


def _is_series(folder: Path) -> bool:
    """A folder of DICOM files (told by their preamble: series often have no suffix)."""
    from .formats import is_dicom_folder

    return folder.is_dir() and is_dicom_folder(folder, nested=False)


def items_of(source: str | Path, query: str | None) -> list[Item]:
    """The inputs of a folder or a manifest (see the module docstring)."""
    source = Path(source)
    if source.is_dir():
        if not query:
            raise InputError("a folder needs --query (a manifest may give a query per line)")
        found = [p for p in sorted(source.iterdir())
                 if (p.is_file() and suffix_of(p) in IMAGE_SUFFIXES and ".ibis" not in p.name) or _is_series(p)]
        if _is_series(source):
            found = [source]
        if not found:
            raise InputError(f"{source} holds no image file ({', '.join(IMAGE_SUFFIXES)}) or DICOM series")
        return [Item(_stem(p), p, query) for p in found]
    if suffix_of(source) != ".jsonl":
        raise InputError(f"{source}: give a folder of images or a manifest .jsonl")
    if not source.is_file():
        raise InputError(f"manifest not found: {source}")
    items, names = [], set()
    for number, line in enumerate(source.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            path = source.parent / entry["image"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{source.name} line {number}: not a manifest entry ({exc})") from None
        line_query = query or entry.get("query") or (f"segment the {entry['target']}" if entry.get("target") else "")
        if not line_query:
            raise InputError(f"{source.name} line {number}: no query (give --query, or \"query\" or \"target\")")
        slice_ = entry.get("slice")
        index = None if slice_ is None else ((slice_,) if isinstance(slice_, int) else tuple(slice_))
        series = entry.get("series")
        name = (_stem(path) + ("" if series is None else f"_series{series}")
                + ("" if index is None else "_slice" + "-".join(map(str, index))))
        while name in names:
            name += f"_line{number}"
        names.add(name)
        items.append(Item(name, path, str(line_query), index, None if series is None else str(series)))
    if not items:
        raise InputError(f"{source.name} lists no image")
    return items


def segment_slice(image: np.ndarray, query: str, policy, segmenter, profile: str, max_steps: int,
                  window: str | None, pixel_aspect: float = 1.0, volume=None) -> tuple[np.ndarray, dict]:
    """One agent session on one slice: (its mask, its trajectory with why it stopped); ``volume``:
    the VolumeSlice the slice is from, handed to the agent as `segment` hands it."""
    session, record = _session(image, query, policy, segmenter, profile, max_steps, window, pixel_aspect, volume)
    return session.mask, record


def slice_volume(image, index: tuple[int, ...]):
    """The VolumeSlice of slice ``index`` (the file's slice index) of a grey volume read whole whose
    file gives its spacing, else None (a 2-D image, RGB, no spacing)."""
    from dataclasses import replace

    return replace(image, slice_index=tuple(index)).volume_slice() if index else None


def _session(image, query, policy, segmenter, profile, max_steps, window, pixel_aspect, volume=None):
    """(the finished session, its trajectory); ``volume``: the VolumeSlice the slice is from."""
    from .session import Session, Stopped

    started = time.perf_counter()
    session = Session(image, query, policy, segmenter, profile=profile, max_steps=max_steps, window=window,
                      pixel_aspect=pixel_aspect, volume=volume)
    for event in session.run():
        if isinstance(event, Stopped):
            break
    session.accept()
    record = session.trajectory()
    record["seconds"] = round(time.perf_counter() - started, 3)
    return session, record


@dataclass
class Unit:
    """One session to run: which item, which slice of it, the pixels (with ``volume``: the
    volume's slices, one structure through them from ``start``, None: where the agent finds it)."""

    item: int
    slice: tuple[int, ...]
    image: np.ndarray
    start: int | None = None
    volume: bool = False


def is_done(item: Item, out: Path) -> bool:
    """Whether an earlier run wrote this input's labels and trajectory."""
    return item.labels_path(out).is_file() and item.trace_path(out).is_file()


def segment_volume(stack: np.ndarray, query: str, policy, segmenter, profile: str, max_steps: int,
                   window: str | None, pixel_aspect: float, direction: str,
                   start: int | None = None, spacing=None) -> tuple[np.ndarray, dict]:
    """One structure through a volume (``--propagate``): the slice the agent finds (``start``
    where the manifest gives it), its session there, then propagation. (The 3-D mask, the record:
    the search, the session's trajectory, every propagated slice.) ``spacing``: the volume's
    (mm per axis, axial slices first), where the file gives it: the agent is handed the volume
    (a brain region: the atlas brain registered onto it, followed slice by slice)."""
    from .key_slice import find_slice
    from .policies.base import volume_slice
    from .propagation import Propagation
    from .structure_limits import limits_for

    started = time.perf_counter()
    labels = np.zeros(stack.shape[:3], dtype=bool)
    record: dict = {"start": start, "direction": direction}
    volume = volume_slice(stack, spacing)  # None for an RGB stack or without a spacing
    if start is None:
        key = find_slice(stack, query, policy, window=window, pixel_aspect=pixel_aspect, volume=volume)
        record["key_slice"], start = key.record(), key.index
        record["start"] = start
    if start is not None:
        session, record["session"] = _session(stack[start], query, policy, segmenter, profile, max_steps, window,
                                              pixel_aspect, None if volume is None else volume.at(start))
        if session.mask.any():
            through = session.region_through()
            propagation = Propagation(stack, segmenter, window=window, pixel_aspect=pixel_aspect, region_of=through,
                                      limits=limits_for(query), slice_spacing_mm=None if spacing is None else spacing[0])
            done = propagation.run_to_end(start, session.mask, direction)
            labels = done.labels
            record["propagation"] = {"flagged": done.flagged, "slices": [
                {"slice": r.index, "area": int(r.mask.sum()), "stopped": r.stopped} for r in done.slices],
                "followed": "segmenter" if through is None else through.describe()}
    record["seconds"] = round(time.perf_counter() - started, 3)
    return labels, record


def load(item: Item, number: int, propagate: str | None = None) -> tuple:
    """(the input read, the sessions to run on it): one per slice of a volume asked whole, or
    with ``propagate`` one for the whole volume (its slice: the line's, or None: the agent's)."""
    from . import io

    try:
        image = io.read_image(item.path, item.slice, series=item.series)
    except InputError as exc:
        raise InputError(f"{item.path.name}: {exc}") from None
    frame = image.slice_index[:-1]  # (frame,) in a file of several volumes, else ()
    if propagate and len(image.slice_index) == 1 + bool(image.frames):  # a volume: one structure through it
        start = None if item.slice is None else image.slice_index[-1]
        return image, [Unit(number, frame, image.stack, start=start, volume=True)]
    indices = ([frame + (z,) for z in range(image.stack.shape[0])] if item.whole_volume(image)
               else [image.slice_index])
    return image, [Unit(number, index, image.data[index] if index else image.data) for index in indices]


def write_item(item: Item, image, results: dict, out: Path) -> dict:
    """The labels and the trajectory of one finished input; returns its summary line."""
    from dataclasses import replace

    from . import io

    frame = image.slice_index[:-1]
    if frame in results and results[frame][0].ndim == 3:  # --propagate: one structure through the volume
        labels, record = results[frame]
        labels = labels.astype(np.uint8)
        io.write_labels(item.labels_path(out), labels, replace(image, slice_index=frame), force=True)
        io.write_json(item.trace_path(out), {"image": {"name": item.path.name, "shape": list(image.data.shape),
                                                       "propagated": True}, **item.query_fields(), "volume": record},
                      force=True)
        stop = (record.get("session") or {}).get("stop") or {}
        not_found = record["start"] is None or stop.get("reason") == "not_present"
        return {"input": item.name, "labels": item.labels_path(out).name, **item.query_fields(), "sessions": 1,
                "start": record["start"], "start_a_guess": bool((record.get("key_slice") or {}).get("unsure")),
                "slices_with_result": int(labels.any(axis=(1, 2)).sum()),
                "voxels": int(np.count_nonzero(labels)), "not_present": int(not_found), "seconds": record["seconds"]}

    whole = item.whole_volume(image)
    if whole:
        frame = image.slice_index[:-1]
        labels = np.stack([results[frame + (z,)][0] for z in range(image.stack.shape[0])]).astype(np.uint8)
        like = replace(image, slice_index=frame)
    else:
        labels, like = results[image.slice_index][0].astype(np.uint8), image
    io.write_labels(item.labels_path(out), labels, like, force=True)
    sessions = [dict(record, slice=list(index)) for index, (_, record) in sorted(results.items())]
    trace = {"image": {"name": item.path.name, "shape": list(image.data.shape), "whole_volume": whole},
             **item.query_fields(), "sessions": sessions}
    io.write_json(item.trace_path(out), trace, force=True)
    occupied = [s["slice"] for s in sessions if s["final_mask_area"]]
    return {"input": item.name, "labels": item.labels_path(out).name, **item.query_fields(), "sessions": len(sessions),
            "slices_with_result": len(occupied), "voxels": int(np.count_nonzero(labels)),
            "not_present": sum(1 for s in sessions if s["stop"] and s["stop"]["reason"] == "not_present"),
            "seconds": round(sum(s["seconds"] for s in sessions), 3)}
