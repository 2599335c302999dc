"""napari reader contribution: NIfTI, NRRD, MetaImage (.mha/.mhd), DICOM (a file, or a folder: one layer per series, its
subfolders searched) and TIFF stacks, shown in the display convention of :mod:`napari_ibis.geometry` with the
layer's ``scale``/``translate`` from the voxel spacing and origin, and the source's
geometry in ``layer.metadata["ibis_geometry"]`` so that labels saved from it land
on the source's voxel grid.

A file of integers whose name says it holds labels (``seg``, ``label``, ``mask``,
``atlas``, ``aal``) or with at most 32 distinct values opens as a Labels layer.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .io import suffix_of

SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm", ".tif", ".tiff")
LABEL_NAME = re.compile(r"(seg|label|mask|atlas|aal)", re.IGNORECASE)
MAX_LABEL_VALUES = 32


def get_reader(path):
    """The reader for ``path`` if napari-ibis reads it, else None."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    path = Path(path)
    if path.is_dir():
        from .formats import is_dicom_folder

        return read if is_dicom_folder(path) else None
    return read if suffix_of(path) in SUFFIXES else None


def read(path) -> list[tuple]:
    """One layer per image (per series of a DICOM folder):
    ``(data, {name, scale, translate, metadata[, rgb]}, "image" | "labels")``."""
    from .io import read_checked

    if isinstance(path, (list, tuple)):
        path = path[0]
    path = Path(path)
    name = path.name[: -len(suffix_of(path))] if suffix_of(path) else path.name
    if path.is_dir():
        return _series_layers(path, name)
    return [_layer(*read_checked(path, "image"), name)]


def _series_layers(folder: Path, name: str) -> list[tuple]:
    """Every image series of a DICOM folder (and its subfolders) as a layer, the largest first;
    a series that cannot be read is skipped with a warning napari shows, unless none can be."""
    import warnings

    from .errors import InputError
    from .formats import dicom_series, read_dicom_series

    every = dicom_series(folder)
    layers, problems = [], []
    for series in every:
        try:
            array, rgb, meta = read_dicom_series(folder, series)
        except Exception as exc:  # noqa: BLE001 - one unreadable series does not hide the others
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            problems.append(reason if isinstance(exc, InputError) else f"series {series.label()}: {reason}")
            continue
        label = name if len(every) == 1 else f"{name} {series.number} {series.description}".strip()
        layers.append(_layer(array, rgb, meta, label))
    if not layers:
        raise InputError(problems[0])
    for problem in problems:
        warnings.warn(f"not opened: {problem}", stacklevel=2)
    return layers


def _layer(array: np.ndarray, rgb: bool, meta: dict, name: str) -> tuple:
    geometry = meta.get("geometry")
    kwargs = geometry.layer_kwargs() if geometry is not None else {"metadata": {}}
    kwargs["name"] = name
    if meta.get("modality"):  # DICOM's Modality (CT, MR, ...): kept with training sessions, words for the queries
        kwargs["metadata"]["ibis_modality"] = str(meta["modality"])
    if rgb:
        kwargs["rgb"] = True
        return (array, kwargs, "image")
    if looks_like_labels(array, name):
        return (array.astype(np.min_scalar_type(int(array.max(initial=0)))), kwargs, "labels")
    return (array, kwargs, "image")


def looks_like_labels(array: np.ndarray, name: str) -> bool:
    if not np.issubdtype(array.dtype, np.integer) and not _integral_floats(array):
        return False
    if array.size and array.min() < 0:
        return False
    if LABEL_NAME.search(name):
        return True
    return len(np.unique(array[:: max(1, array.shape[0] // 8)])) <= MAX_LABEL_VALUES


def _integral_floats(array: np.ndarray) -> bool:
    if not np.issubdtype(array.dtype, np.floating) or array.size == 0:
        return False
    sample = array.ravel()[:: max(1, array.size // 100_000)]
    return bool(np.all(np.isfinite(sample)) and np.all(sample == np.round(sample)) and sample.max() < 65536)
