"""Where sessions run when several are in flight: threads or worker processes.

* :func:`thread_pool`: threads, each with its own segmenter and the next of the given
  policies (served endpoints: one HTTP stream per thread, several endpoints share the load);
* :func:`process_pool`: spawned worker processes for a local model folder, each loading the
  model and the segmenter once (:func:`_setup`) and using one core.
"""

from __future__ import annotations

import functools


def thread_pool(concurrency: int, segmenter_spec: str, policies: list):
    """(pool, per-thread getter): each thread builds its own segmenter and takes the next of
    ``policies`` (several endpoints share the load)."""
    import itertools
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from .segmenters import build_segmenter

    local, turn, lock = threading.local(), itertools.count(), threading.Lock()

    def mine() -> tuple:
        if not hasattr(local, "segmenter"):
            with lock:
                local.policy = policies[next(turn) % len(policies)] if policies else None
            local.segmenter = build_segmenter(segmenter_spec)
        return local.segmenter, local.policy

    return ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ibis-eval"), mine


_LOADED: dict = {}


def _setup(folder: str | None, segmenter_spec: str, device: str) -> dict:
    """The worker's model (none for the oracle: ``folder`` None) and segmenter, loaded once."""
    import torch

    from .policies import load_policy
    from .segmenters import build_segmenter

    if not _LOADED:
        torch.set_num_threads(1)  # N processes share the cores
        _LOADED.update(policy=None if folder is None else load_policy(folder, device=device),
                       segmenter=build_segmenter(segmenter_spec))
    return _LOADED


def identities(folder: str | None, segmenter_spec: str, device: str) -> tuple[dict, dict]:
    """(the policy's identity, the oracle's for ``folder`` None; the segmenter's)."""
    worker = _setup(folder, segmenter_spec, device)
    policy = worker["policy"]
    return ({"name": "oracle"} if policy is None else policy.identity()), worker["segmenter"].identity()


def eval_case(entry, folder: str, segmenter_spec: str, device: str, profile: str, max_clicks: int) -> dict:
    """One slice line of ``eval`` in a worker process: it reads its own case (with the volume the
    slice is from, for the agent), so no volume is sent between processes."""
    from .evaluation import model_case
    from .io import load_case

    worker = _setup(folder, segmenter_spec, device)
    return model_case(load_case(entry), worker["segmenter"], worker["policy"], profile, max_clicks)


def eval_volume(entry, folder: str | None, segmenter_spec: str, device: str, protocol) -> dict:
    """One volume line of ``eval --propagate`` in a worker process: it reads its own case, so
    only the volumes in flight are in memory."""
    worker = _setup(folder, segmenter_spec, device)
    return volume_row(entry, worker["segmenter"], worker["policy"], protocol)


def volume_row(entry, segmenter, policy, protocol) -> dict:
    """The row of one manifest line under ``eval --propagate``, or ``{"skipped": why}`` for a
    line that is not a volume case."""
    from .evaluation import volume_case
    from .io import load_case

    case = load_case(entry, volumes=True)
    if case.mask.ndim != 3:
        return {"skipped": "a single slice"}
    return volume_case(case, segmenter, policy, protocol)


def process_pool(concurrency: int):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=concurrency, mp_context=multiprocessing.get_context("spawn"))




def batch_volume(stack, query: str, folder: str, segmenter_spec: str, device: str, profile: str, max_steps: int,
                 window: str | None, pixel_aspect: float, direction: str, start: int | None, spacing=None):
    """One volume of ``napari-ibis batch --propagate`` in a worker process: (3-D mask, record)."""
    from .batch import segment_volume

    worker = _setup(folder, segmenter_spec, device)
    return segment_volume(stack, query, worker["policy"], worker["segmenter"], profile, max_steps, window,
                          pixel_aspect, direction, start, spacing)


def batch_slice(image, query: str, folder: str, segmenter_spec: str, device: str, profile: str, max_steps: int,
                window: str | None, pixel_aspect: float = 1.0, source: tuple | None = None):
    """One slice of ``napari-ibis batch`` in a worker process: (mask, trajectory). ``source``: (the
    file, its series, the slice's index) where the slice is cut from a grey volume, which the
    worker reads once per file to hand the agent (:func:`_volume_of`)."""
    from .batch import segment_slice

    worker = _setup(folder, segmenter_spec, device)
    volume = None if source is None else _volume_of(*source)
    return segment_slice(image, query, worker["policy"], worker["segmenter"], profile, max_steps, window, pixel_aspect,
                         volume)


def _volume_of(path: str, series, index: tuple[int, ...]):
    """The VolumeSlice of slice ``index`` of the volume in ``path``, the file read once per worker."""
    from .batch import slice_volume

    return slice_volume(_read_whole(path, series), index)


@functools.lru_cache(maxsize=1)
def _read_whole(path: str, series):
    from . import io

    return io.read_image(path, series=series)
