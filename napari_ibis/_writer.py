"""napari writer contribution: a Labels layer to TIFF/NIfTI/NPY/PNG/NRRD, atomically."""

from __future__ import annotations

import numpy as np

from .io import write_labels as _write_labels


def write_labels(path: str, data: np.ndarray, meta: dict) -> list[str]:
    """Write a Labels layer's data, keeping every label value (napari overwrites on request)."""
    return [str(_write_labels(path, np.asarray(data), force=True))]
