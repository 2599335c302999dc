"""Where a displayed array's voxels lie in its file and in the patient.

Volumes are shown (in napari, and to the agent) in one display convention,
whatever the file's axis order: the slice axis first, axial slices, anterior at
the top and the patient's left on the image's right (the radiological convention
of most 2-D medical data sets and of the released model's training data). In
nibabel's axis codes the display axes point to ("S", "P", "L").

A :class:`Geometry` remembers how the file's voxel axes were permuted and flipped
into that display order, the file's affine (voxel -> RAS millimetres) and its
header, so that labels drawn on the display array are written back to the
source's own voxel grid exactly (a permutation and flips, no resampling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

DISPLAY_AXCODES = ("S", "P", "L")
# The plane a volume is sliced in: its display axes (S, P, L) in view order, the axis
# sliced across first (a coronal slice: rows from S, columns from L).
VIEWS = {"axial": (), "coronal": (1, 0, 2), "sagittal": (2, 0, 1)}
GEOMETRY_KEY = "ibis_geometry"  # the key of a napari layer's metadata that holds a Geometry

# world axes of napari, as seen from RAS: (S, P, L) = M @ (R, A, S)
_RAS_TO_DISPLAY_WORLD = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]])
# the plane a position along an axis of this direction picks
PLANE_ACROSS = {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal", "L": "sagittal", "R": "sagittal"}


class GeometryWarning(UserWarning):
    """Labels written without the source's geometry (no affine, no spacing)."""


@dataclass
class Geometry:
    """How a display array maps onto a source file's voxels and onto the patient.

    ``file_shape``: the spatial shape as the file stores it ((i, j, k) for NIfTI,
    NRRD and DICOM series). ``affine``: file voxel -> RAS mm, or None where the
    file holds no orientation (TIFF). ``ornt``: nibabel's orientation transform
    from the file's axes to the display axes (None: the file is already in
    display order). ``squeeze``: the display drops a leading one-voxel axis (a
    single-slice file shown as a 2-D image). ``frames``: the file holds that many volumes
    on one grid along a last, non-spatial axis (the channels of a multi-sequence MRI, the
    time points of a dynamic series); the display puts them first, and labels go back to the
    spatial grid alone (drawn on any frame, they mark the same voxels).
    """

    format: str
    file_shape: tuple[int, ...]
    affine: np.ndarray | None = None
    ornt: np.ndarray | None = None
    spacing: tuple[float, ...] = ()
    unit: str = "mm"
    header: Any = None
    source: str = ""
    squeeze: bool = False
    frames: int = 0

    # -- arrays ------------------------------------------------------------------
    def to_display(self, file_array: np.ndarray) -> np.ndarray:
        """The file's array in display order (its frames, if any, first)."""
        from nibabel.orientations import apply_orientation

        array = np.asarray(file_array)
        if self.ornt is not None:
            array = apply_orientation(array, self.ornt)  # the spatial axes; a frame axis stays last
        if self.squeeze:
            array = array[0]
        if self.frames and array.ndim == len(self.spatial_display_shape) + 1:
            array = np.moveaxis(array, -1, 0)
        return np.ascontiguousarray(array)

    def to_file(self, display_array: np.ndarray) -> np.ndarray:
        """A display-order array back in the file's voxel order (exactly inverse to :meth:`to_display`)."""
        from nibabel.orientations import apply_orientation, ornt_transform

        array = np.asarray(display_array)
        if self.frames and array.ndim == len(self.spatial_display_shape) + 1:
            array = array.max(axis=0)  # labels drawn on any frame mark the same voxels
        if self.squeeze:
            array = array[None]
        if self.ornt is not None:
            identity = np.column_stack([np.arange(len(self.ornt)), np.ones(len(self.ornt))])
            array = apply_orientation(array, ornt_transform(identity, self.ornt))
        if tuple(array.shape) != tuple(self.file_shape):
            raise ValueError(f"labels of shape {array.shape} do not fit the source grid {self.file_shape}")
        return array

    @property
    def display_spacing(self) -> tuple[float, ...]:
        """The spacing along each axis of the display array (1 along the frames)."""
        return (1.0,) * bool(self.frames) + tuple(self.spacing)

    @property
    def spatial_display_shape(self) -> tuple[int, ...]:
        shape = tuple(self.file_shape)
        if self.ornt is not None:
            shape = tuple(shape[int(axis)] for axis in np.argsort(self.ornt[:, 0]))
        return shape[1:] if self.squeeze else shape

    @property
    def display_shape(self) -> tuple[int, ...]:
        """The shape of the display array: the frames (if any), then the spatial axes."""
        return ((self.frames,) if self.frames else ()) + self.spatial_display_shape

    # -- where it lies -------------------------------------------------------------
    @property
    def display_affine(self) -> np.ndarray | None:
        """Display voxel index -> RAS mm (3-D), or None without an affine."""
        if self.affine is None:
            return None
        if self.ornt is None:
            return np.asarray(self.affine, dtype=float)
        from nibabel.orientations import inv_ornt_aff

        return np.asarray(self.affine, dtype=float) @ inv_ornt_aff(self.ornt, self.file_shape)

    def layer_kwargs(self) -> dict:
        """``scale``, ``translate`` and ``metadata`` for a napari layer of the display array."""
        ndim = len(self.spatial_display_shape)
        scale, translate = list(self.spacing[-ndim:]), [0.0] * ndim
        affine = self.display_affine
        if affine is not None:
            world = _RAS_TO_DISPLAY_WORLD @ affine[:3, :3]
            origin = _RAS_TO_DISPLAY_WORLD @ affine[:3, 3]
            start = 1 if self.squeeze else 0
            scale = [float(np.linalg.norm(world[:, axis])) for axis in range(start, 3)]
            translate = [float(v) for v in origin[start:]]
        kwargs: dict = {"metadata": {GEOMETRY_KEY: self}}
        if scale and len(scale) == ndim:
            lead = [1.0] if self.frames else []  # the frame axis has no physical size
            kwargs["scale"] = tuple(lead + scale)
            kwargs["translate"] = tuple([0.0] * len(lead) + translate)
        if affine is not None and not self.squeeze:
            # a slider over an axis picks the planes across it: "axial 61", not napari's "-3 61"
            planes = tuple(PLANE_ACROSS[code] for code in display_axcodes_of(self))
            kwargs["axis_labels"] = (("frame",) if self.frames else ()) + planes
        return kwargs

    def describe(self) -> dict:
        """A JSON-ready summary for trajectory records."""
        return {
            "format": self.format,
            "source": self.source,
            "file_shape": list(self.file_shape),
            "display_shape": list(self.display_shape),
            "display_axcodes": list(display_axcodes_of(self)) if self.affine is not None else None,
            "affine": None if self.affine is None else np.asarray(self.affine).round(6).tolist(),
            "spacing": list(self.spacing),
            "frames": self.frames,
        }


def display_ornt(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """The orientation transform (file axes -> display axes) and whether to squeeze axis 0.

    A volume goes to ("S", "P", "L"). A single-slice file keeps its one-voxel axis
    first (squeezed away) and shows its plane with rows running P (else I) and
    columns running L (else P).
    """
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt2axcodes, ornt_transform

    source = io_orientation(affine)
    codes = ornt2axcodes(source)
    singletons = [axis for axis, size in enumerate(shape) if size == 1]
    if len(shape) != 3 or len(singletons) != 1:
        target = DISPLAY_AXCODES
        squeeze = False
    else:
        axis = singletons[0]
        own = codes[axis]
        rest = {"LR": "L", "AP": "P", "IS": "I"}
        planes = [pair for pair in ("LR", "AP", "IS") if own not in pair]
        names = [rest[pair] for pair in planes]  # what the two in-plane axes point to
        rows = "P" if "P" in names else "I"
        cols = "L" if "L" in names else "P"
        target = (own, rows, cols)
        squeeze = True
    return ornt_transform(source, axcodes2ornt(target)), squeeze


def display_axcodes_of(geometry: Geometry) -> tuple[str, ...]:
    from nibabel import aff2axcodes

    return tuple(aff2axcodes(geometry.display_affine))


def from_affine(file_format: str, file_shape: tuple[int, ...], affine: np.ndarray, header: Any = None,
                source: str = "", unit: str = "mm", frames: int = 0) -> Geometry:
    """A Geometry for a 3-D (or single-slice) file with an orientation; ``frames``: the
    number of volumes along a fourth axis (``file_shape`` is the spatial shape alone)."""
    ornt, squeeze = display_ornt(affine, file_shape)
    geometry = Geometry(file_format, tuple(int(s) for s in file_shape), np.asarray(affine, float), ornt, (),
                        unit, header, source, squeeze, int(frames))
    geometry.spacing = tuple(float(v) for v in np.linalg.norm(geometry.display_affine[:3, :3], axis=0))
    if squeeze:
        geometry.spacing = geometry.spacing[1:]
    return geometry


def grid_mismatch(a: Geometry | None, b: Geometry | None) -> str:
    """How far apart two grids of the same display shape lie in the patient ("" where they
    agree within a tenth of a voxel, or where either has no affine)."""
    if a is None or b is None or a.display_affine is None or b.display_affine is None:
        return ""
    if a.spatial_display_shape != b.spatial_display_shape or a.squeeze != b.squeeze:
        return ""  # not the same kind of grid (a slice's mask for a volume): nothing to compare
    first, second = a.display_affine, b.display_affine
    voxel = float(np.min(np.linalg.norm(first[:3, :3], axis=0)))
    shape = np.array(a.spatial_display_shape if not a.squeeze else (1,) + a.spatial_display_shape) - 1
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0]) for j in (0, shape[1]) for k in (0, shape[2])])
    apart = float(np.max(np.linalg.norm((corners @ first.T - corners @ second.T)[:, :3], axis=1)))
    return f"{apart:.1f} mm" if apart > 0.1 * voxel else ""


def resample_nearest(labels: np.ndarray, source: Geometry, target: Geometry) -> np.ndarray:
    """Labels on ``source``'s display grid carried onto ``target``'s by position in the patient,
    the nearest voxel each (0 outside ``source``): a mask drawn on another grid of the same scan."""
    from scipy.ndimage import affine_transform

    to_source = np.linalg.inv(source.display_affine) @ target.display_affine  # target voxel -> source voxel
    return affine_transform(np.asarray(labels), to_source[:3, :3], offset=to_source[:3, 3],
                            output_shape=target.spatial_display_shape, order=0, mode="constant", cval=0)


def onto_grid(labels, source: Geometry | None, target: Geometry | None) -> np.ndarray | None:
    """``labels`` (a volume on ``source``'s display grid) on ``target``'s grid by position in the
    patient (:func:`resample_nearest`); None where there is nothing to carry over: the same grid,
    a grid without an affine, or not one 3-D volume on each side."""
    if (source is None or target is None or source.affine is None or target.affine is None or np.ndim(labels) != 3
            or source.squeeze or target.squeeze or source.frames):
        return None
    if source.spatial_display_shape == target.spatial_display_shape and not grid_mismatch(target, source):
        return None
    return resample_nearest(np.asarray(labels), source, target)


def geometry_of(layer_or_metadata) -> Geometry | None:
    """The Geometry a napari layer (or its metadata dict) carries, if any."""
    metadata = getattr(layer_or_metadata, "metadata", layer_or_metadata) or {}
    value = metadata.get(GEOMETRY_KEY) if isinstance(metadata, dict) else None
    return value if isinstance(value, Geometry) else None


def rows_run_up(axes: tuple[int, ...]) -> bool:
    """Whether a slice taken along ``axes`` has the volume's first axis down its rows, which
    then run upwards: in the display convention that axis points superior, so a coronal or
    sagittal slice has the head up (the viewer's camera is turned to match, see the widget)."""
    return len(axes) >= 3 and axes[-2] == len(axes) - 3  # the first of the spatial axes (after any frames)


def oriented(array, axes: tuple[int, ...]):
    """``array`` with its spatial axes in view order (``axes``; trailing axes such as RGB
    stay last), the rows reversed where :func:`rows_run_up`. A numpy view: what is written
    into it reaches ``array``."""
    if not axes:
        return array
    if not hasattr(array, "transpose"):  # e.g. a zarr array: read it (numpy and dask arrays stay lazy views)
        array = np.asarray(array)
    viewed = array.transpose(tuple(axes) + tuple(range(len(axes), array.ndim)))
    if rows_run_up(axes):
        flip = [slice(None)] * viewed.ndim
        flip[len(axes) - 2] = slice(None, None, -1)
        viewed = viewed[tuple(flip)]
    return viewed


def slice_at(array, axes: tuple[int, ...], index: tuple[int, ...]):
    """The 2-D slice at ``index`` (along ``axes[:-2]``, as :func:`oriented` views a scan) of
    ``array``, which may lack the scan's leading axes (one labels volume for every frame)."""
    missing = len(index) + 2 - np.ndim(array)
    return oriented(array, tuple(a - missing for a in axes[missing:]) if axes else ())[index[missing:]]


def in_view_order(values, axes: tuple[int, ...]) -> tuple:
    """Per-axis ``values`` (spacing, scale) of a volume in the order of a slice's ``axes``."""
    values = tuple(values)
    return tuple(values[a] for a in axes) if axes and len(values) == len(axes) else values


def slice_spacing(geometry, axes: tuple[int, ...]) -> float | None:
    """The distance in mm between the slices of a volume seen along ``axes`` (view order: the
    slice index first); None without a geometry or for a 2-D image."""
    if geometry is None:
        return None
    spacing = in_view_order(geometry.display_spacing, axes)
    return float(spacing[-3]) if len(spacing) >= 3 else None


def view_to_data(points: np.ndarray, axes: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """Points (N, ndim) in view coordinates (the slice index first, then row and column) as
    coordinates of the array of spatial ``shape`` that ``oriented`` views."""
    points = np.array(points, dtype=float).reshape(-1, len(shape))
    if not axes:
        return points
    if rows_run_up(axes):
        points[:, -2] = shape[axes[-2]] - 1 - points[:, -2]
    return points[:, np.argsort(axes)]


def data_to_view(point: np.ndarray, axes: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`view_to_data` for one point."""
    point = np.asarray(point, dtype=float)[-len(shape):]
    if not axes:
        return point
    viewed = point[list(axes)]
    if rows_run_up(axes):
        viewed[-2] = shape[axes[-2]] - 1 - viewed[-2]
    return viewed


def plane_of(axes: tuple[int, ...], geometry: Geometry | None) -> str:
    """The plane of a volume's slice taken across ``axes[0]``: "axial", "coronal" or "sagittal"
    for a volume in the display convention (one with a ``geometry``), "axial" otherwise."""
    if geometry is None or len(axes) < 3:
        return "axial"
    return {0: "axial", 1: "coronal", 2: "sagittal"}.get(axes[-3] - (len(axes) - 3), "axial")
