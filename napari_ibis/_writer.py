"""napari writer contribution: a Labels layer to NIfTI/NRRD/TIFF/NPY/PNG/DICOM-SEG, atomically,
on the source's voxel grid when the layer carries a geometry (``metadata["ibis_geometry"]``,
set by napari-ibis's readers and samples and copied to the labels the widget makes).
Without one, NIfTI and NRRD files get an identity affine and a one-line warning."""

from __future__ import annotations

import numpy as np

from .geometry import geometry_of
from .io import write_labels as _write_labels


def write_labels(path: str, data: np.ndarray, meta: dict) -> list[str]:
    """Write a Labels layer's data, keeping every label value (napari overwrites on request)."""
    geometry = geometry_of(meta.get("metadata") or {})
    return [str(_write_labels(path, np.asarray(data), force=True, geometry=geometry))]
