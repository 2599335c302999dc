"""Read images, volumes and masks; write labels and trajectories atomically.

Formats: PNG/JPEG/BMP, TIFF (2-D, RGB, stacks; 8/16-bit, float; ImageJ spacing),
NIfTI (``.nii``, ``.nii.gz``), NRRD, DICOM (a ``.dcm`` file, or a folder holding a
series; rescale slope/intercept applied) and NumPy ``.npy``. Volumes with an
orientation (NIfTI, NRRD, DICOM series) are read in the display convention of
:mod:`napari_ibis.geometry`: slice axis first, axial slices with anterior at the
top and the patient's left on the image's right, so ``slice=Z`` is axial slice Z
counted from inferior to superior. Labels are written back in the input's
geometry: a 2-D input gets a 2-D file; a volume gets a volume on the source's
voxel grid (with its affine and header for NIfTI and NRRD) with the mask in the
chosen slice only (PNG output is always the 2-D slice). Files are written through
a temporary file and get the mode the user's umask gives.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import InputError
from .formats import suffix_of
from .geometry import VIEWS, Geometry, GeometryWarning, in_view_order, onto_grid, oriented, slice_at

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".dcm",
                  ".npy")
LABEL_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".npy", ".png", ".nrrd", ".mha", ".dcm")
# the labels of a scan are written in a format that keeps its geometry (a DICOM series: NIfTI)
LABELS_SUFFIX_OF = {".nii": ".nii.gz", ".nii.gz": ".nii.gz", ".nrrd": ".nrrd", ".mha": ".mha", ".mhd": ".mha",
                    ".dcm": ".nii.gz"}


def labels_suffix_for(image: str | Path) -> str:
    """The default suffix of labels drawn on ``image``: its own format where that keeps the
    voxels' place in the patient, NIfTI for DICOM, else TIFF."""
    image = Path(image)
    return ".nii.gz" if image.is_dir() else LABELS_SUFFIX_OF.get(suffix_of(image), ".tif")


@dataclass
class LoadedImage:
    """A file's pixels (slice axis first), the 2-D slice to work on, and how to write back."""

    path: Path
    data: np.ndarray
    rgb: bool
    slice_index: tuple[int, ...] = ()  # along axes[0] (axis 0 where axes is ())
    meta: dict[str, Any] = field(default_factory=dict)
    axes: tuple[int, ...] = ()  # a volume's axes in view order (VIEWS); (): as read

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.data.shape[:-1] if self.rgb else self.data.shape

    @property
    def volume(self) -> np.ndarray:
        """The pixels in view order: sliced along axis 0, each slice's rows and columns after."""
        return oriented(self.data, self.axes)

    @property
    def slice(self) -> np.ndarray:
        return self.volume[self.slice_index] if self.slice_index else self.data

    @property
    def frames(self) -> int:
        """How many volumes the file holds on one grid (channels, time points); 0: one."""
        geometry = self.meta.get("geometry")
        return 0 if geometry is None else geometry.frames

    @property
    def stack(self) -> np.ndarray:
        """The 3-D volume (in view order) that holds the slice: a frame's, for a file of several."""
        return self.volume[self.slice_index[:-1]]

    def volume_slice(self):
        """The 3-D grey volume the slice is from, as a policy that looks through it takes it
        (:class:`~napari_ibis.policies.base.VolumeSlice`); None for a 2-D or RGB image, or a
        volume whose file gives no spacing."""
        from .policies.base import volume_slice

        geometry = self.meta.get("geometry")
        if self.rgb or geometry is None or len(self.slice_index) != 1 + bool(self.frames):
            return None
        volume = self.data[self.slice_index[0]] if self.frames else self.data
        axes = tuple(a - 1 for a in self.axes[1:]) if self.frames and self.axes else self.axes
        return volume_slice(volume, geometry.spacing, axes, self.slice_index[-1])

    @property
    def pixel_aspect(self) -> float:
        """The slice's row spacing over its column spacing (1.0 where the file gives none)."""
        from .square_pixels import pixel_aspect

        geometry = self.meta.get("geometry")
        return pixel_aspect(None if geometry is None else in_view_order(geometry.display_spacing, self.axes))

    @property
    def slice_spacing(self) -> float | None:
        """The distance in mm between the slices a volume is stepped through (None: not known)."""
        from .geometry import slice_spacing

        return slice_spacing(self.meta.get("geometry"), self.axes)

    def in_file_order(self, labels: np.ndarray) -> np.ndarray:
        """Labels of the whole volume in view order, back in the order the file was read in."""
        if not self.axes:
            return labels
        volume = np.zeros(self.spatial_shape, dtype=labels.dtype)
        fixed = len(self.spatial_shape) - labels.ndim  # a frame's volume: that frame
        oriented(volume, self.axes)[self.slice_index[:fixed]] = labels
        return volume


def _read_raw(path: Path, series: str | None = None) -> tuple[np.ndarray, bool, dict]:
    """(array, is_rgb, meta) in display order, slice axis first for volumes; ``series``: which
    DICOM series of a folder (formats.choose_series)."""
    from . import formats

    if path.is_dir():
        return formats.read_dicom_series(path, series)
    suffix = suffix_of(path)
    if suffix in (".png", ".jpg", ".jpeg", ".bmp"):
        from PIL import Image

        with Image.open(path) as image:
            image.load()
            if image.mode in ("P", "LA", "RGBA", "CMYK", "YCbCr"):
                image = image.convert("RGB")
            array = np.asarray(image)
        return array, array.ndim == 3, {"format": "raster"}
    if suffix in (".tif", ".tiff"):
        return formats.read_tiff(path)
    if suffix in (".nii", ".nii.gz"):
        return formats.read_nifti(path)
    if suffix == ".nrrd":
        return formats.read_nrrd(path)
    if suffix in (".mha", ".mhd"):
        return formats.read_metaimage(path)
    if suffix == ".dcm":
        return formats.read_dicom_file(path)
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
        rgb = array.ndim >= 3 and array.shape[-1] == 3 and array.dtype == np.uint8
        return array, rgb, {"format": "npy"}
    raise InputError(f"{path.name}: unsupported file type '{suffix}'; use one of {', '.join(IMAGE_SUFFIXES)} or a DICOM folder")


def read_checked(path: Path, what: str, series: str | None = None) -> tuple[np.ndarray, bool, dict]:
    """:func:`_read_raw`, with a missing or unreadable file as a one-line InputError."""
    if not (path.is_file() or (path.is_dir() and what == "image")):
        raise InputError(f"{what} not found: {path}")
    try:
        return _read_raw(path, series)
    except InputError:
        raise
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read {path.name}: {reason}") from None


def _slice_index(path: Path, spatial: Sequence[int], slice_: int | Sequence[int] | None, view: str = "axial",
                 frames: int = 0) -> tuple[int, ...]:
    extra = len(spatial) - 2
    if extra <= 0:
        if slice_ is not None and slice_ != ():
            raise InputError(f"{path.name} is a 2-D image: --slice does not apply")
        return ()
    if slice_ is None:
        if extra == 1:
            return (spatial[0] // 2,)
        if frames and extra == 2:  # the first frame's middle slice (the CLI says so)
            return (0, spatial[1] // 2)
        raise InputError(
            f"{path.name} has {len(spatial)} dimensions {tuple(spatial)}: pick a slice with --slice "
            + ",".join("I" for _ in range(extra))
        )
    index = (slice_,) if isinstance(slice_, (int, np.integer)) else tuple(slice_)
    if len(index) != extra:
        if frames:
            raise InputError(f"{path.name} holds {frames} volumes (channels or time points): "
                             f"pick one and its slice with --slice FRAME,SLICE (e.g. --slice 0,{spatial[1] // 2})")
        raise InputError(f"{path.name} needs {extra} slice indices, got {len(index)}")
    for i, (value, size) in enumerate(zip(index, spatial)):
        if not 0 <= value < size:
            where = f"the {view} slices" if view != "axial" else f"axis {i}"
            if frames:
                where = "the frames" if i == 0 else f"the {view} slices"
            raise InputError(f"slice {value} is outside {where} of {path.name} (0..{size - 1})")
    return tuple(int(v) for v in index)


def read_image(path: str | Path, slice: int | Sequence[int] | None = None, view: str = "axial",
               frame: int | None = None, series: str | None = None) -> LoadedImage:
    """Read a 2-D image or a volume and choose the slice to work on.

    A 3-D volume without ``slice`` uses its middle slice; 4-D data needs ``slice``, except a
    NIfTI of several volumes on one grid (``LoadedImage.frames``): ``slice`` is (frame, slice),
    or the slice alone with ``frame``; without either, the first frame's middle slice.
    ``view`` (:data:`VIEWS`): the plane a 3-D volume is sliced in, ``slice`` counting along
    the axis across it (medical volumes open axial slices first: geometry's display order).
    ``series``: which series of a DICOM folder (its number, UID or a word of its description).
    """
    if view not in VIEWS:
        raise InputError(f"unknown view '{view}' (choose from {', '.join(VIEWS)})")
    path = Path(path)
    if series is not None and not path.is_dir():
        raise InputError(f"--series picks a series of a DICOM folder; {path.name} is a file")
    array, rgb, meta = read_checked(path, "image", series)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise InputError(f"{path.name} does not hold numeric pixels ({array.dtype})")
    if rgb and array.shape[-1] == 4:
        array = array[..., :3]
    spatial = array.shape[:-1] if rgb else array.shape
    if len(spatial) < 2:
        raise InputError(f"{path.name} holds a {array.ndim}-D array {array.shape}, not an image")
    axes = VIEWS[view]
    frames = 0 if meta.get("geometry") is None else meta["geometry"].frames
    if axes and frames and len(spatial) == 4:  # each frame's volume in that plane, the frames first
        axes = (0,) + tuple(a + 1 for a in axes)
    elif axes and len(spatial) != 3:
        raise InputError(f"{path.name} has {len(spatial)} dimensions {tuple(spatial)}: --view {view} needs a 3-D volume")
    viewed = in_view_order(spatial, axes)
    if frames and frame is not None:
        slice = (frame, viewed[1] // 2 if slice is None else slice)
    loaded = LoadedImage(path, array, rgb, _slice_index(path, viewed, slice, view, frames), meta, axes)
    image = loaded.slice
    if np.issubdtype(image.dtype, np.floating) and not np.any(np.isfinite(image)):
        raise InputError(f"{path.name} holds only NaN or infinite values in the chosen slice")
    if min(image.shape[:2]) < 8:
        raise InputError(f"{path.name}: the slice is {image.shape[0]}x{image.shape[1]}; at least 8x8 is needed")
    return loaded


def to_binary(mask: np.ndarray, label: int | Sequence[int] | None = None, name: str = "mask") -> np.ndarray:
    """A boolean mask from a binary or label-valued array (``label`` picks one value, or several
    that together make the structure: a liver with its tumour, a brain tumour's sub-regions)."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[-1] in (3, 4):
        if not (np.all(mask[..., 0] == mask[..., 1]) and np.all(mask[..., 0] == mask[..., 2])):
            raise InputError(f"{name} is a colour image, not a mask")
        mask = mask[..., 0]
    if mask.dtype == np.bool_:
        values = np.array([0, 1])
    elif np.issubdtype(mask.dtype, np.number):
        if np.issubdtype(mask.dtype, np.floating) and not np.all(np.isfinite(mask)):
            raise InputError(f"{name} contains NaN or infinite values")
        values = np.unique(mask)
        if not np.all(values == np.round(values)) or values.min() < 0:
            raise InputError(f"{name} is not binary or label-valued (found values such as {values[values != np.round(values)][:1]})")
    else:
        raise InputError(f"{name} does not hold numbers ({mask.dtype})")
    if label is not None:
        wanted = label_values(label)
        if not np.isin(wanted, values).any():
            raise InputError(f"{name} has no pixel with label {', '.join(map(str, wanted))}")
        return np.isin(mask, wanted)
    nonzero = values[values != 0]
    if len(nonzero) > 1:
        shown = ", ".join(str(int(v)) for v in nonzero[:8]) + (", ..." if len(nonzero) > 8 else "")
        raise InputError(f"{name} holds {len(nonzero)} labels ({shown}); choose one or several with --label "
                         "(\"label\" in a manifest line)")
    return mask != 0


def label_values(label: int | str | Sequence[int]) -> list[int]:
    """The label values a ``--label`` or a manifest's ``"label"`` names: ``3``, ``"1,2"`` or ``[1, 2]``."""
    parts = label.split(",") if isinstance(label, str) else [label] if np.isscalar(label) else list(label)
    try:
        values = [int(part) for part in parts if not isinstance(part, bool) and float(part) == int(part)]
    except (TypeError, ValueError):
        values = []
    if not values or len(values) != len(parts) or min(values) < 0:
        raise InputError(f"a label is a whole number or several separated by commas (\"1,2\" or [1, 2]), not {label!r}")
    return values


def _mask_on_image_grid(path: Path, like: LoadedImage) -> np.ndarray:
    """A mask file's array in display order; a volume on another grid of the same scan (cropped,
    coarser, shifted: both with an affine) carried onto the image's voxels by position."""
    array, _, meta = read_checked(path, "mask")
    target = like.meta.get("geometry")
    resampled = onto_grid(array, meta.get("geometry"), target)
    if resampled is None:
        return array
    if array.any() and not resampled.any():
        raise InputError(f"the mask {path.name} lies outside {like.path.name} in the patient (their grids do not overlap)")
    warnings.warn(f"the mask {path.name} {tuple(array.shape)} is on another grid than {like.path.name} "
                  f"{tuple(target.spatial_display_shape)}: taken onto the image's voxels by position in the patient "
                  "(nearest voxel)", GeometryWarning, stacklevel=3)
    return resampled


def read_mask(path: str | Path, like: LoadedImage, label: int | Sequence[int] | None = None) -> np.ndarray:
    """A boolean mask for the slice of ``like``, read from a 2-D or a matching volume file."""
    path = Path(path)
    array = _mask_on_image_grid(path, like)
    slice_shape = like.slice.shape[:2]
    name = path.name
    volume = like.spatial_shape[bool(like.frames):]  # a frame's volume: one mask serves every frame
    if like.slice_index and (array.shape[: len(like.spatial_shape)] == like.spatial_shape
                             or array.shape[: len(volume)] == volume):
        array = slice_at(array, like.axes, like.slice_index)
        name = f"{path.name} on slice {like.slice_index[-1]}"
    if array.shape[:2] != slice_shape or array.ndim > 3:
        raise InputError(f"the mask {path.name} is {array.shape} but the image slice is {slice_shape}")
    return to_binary(array, label, name=name)


def _atomic_target(path: Path, force: bool) -> Path:
    check_writable(path, force)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name.split('.')[0]}-", suffix=suffix_of(path))
    os.close(handle)
    return Path(temporary)


def labels_volume(labels: np.ndarray, like: LoadedImage | None) -> np.ndarray:
    """Labels in the input's geometry: the slice, or a volume with only that slice set (a
    whole volume of labels, e.g. a propagation's, stays as it is)."""
    if like is None or not like.slice_index or labels.shape == tuple(like.spatial_shape):
        return labels
    volume = np.zeros(like.spatial_shape, dtype=labels.dtype)
    fixed = len(like.spatial_shape) - labels.ndim  # the leading indices the labels lie at (a frame's volume: 1)
    oriented(volume, like.axes)[like.slice_index[:fixed]] = labels
    return volume


def write_labels(path: str | Path, labels: np.ndarray, like: LoadedImage | None = None, force: bool = False,
                 value: int = 1, geometry: Geometry | None = None, names: dict[int, str] | None = None) -> Path:
    """Write labels in the format of ``path``'s suffix, atomically.

    A boolean mask becomes ``value`` inside, 0 outside; an integer array keeps its
    values. ``labels`` are in display order (a slice of ``like``, or the whole
    volume); NIfTI and NRRD are written on the source's voxel grid with its affine
    and header (``geometry``, else ``like``'s), TIFF with its spacing. Without a
    geometry a :class:`~napari_ibis.geometry.GeometryWarning` says so. PNG holds one
    2-D slice (a binary mask as 0/255, so that it can be seen). ``.dcm`` writes a DICOM
    Segmentation that references the DICOM series the labels were drawn on, each label
    value a segment named by ``names`` (e.g. ``{1: "liver"}``).
    """
    from . import formats

    path = Path(path)
    suffix = suffix_of(path)
    check_labels_path(path, force)
    labels = np.asarray(labels)
    if labels.dtype == np.bool_:
        labels = labels.astype(np.uint8) * np.uint8(value)
    elif not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be boolean or integer, got {labels.dtype}")
    if geometry is None and like is not None:
        geometry = like.meta.get("geometry")
    temporary = _atomic_target(path, force)
    try:
        if suffix == ".png":
            from PIL import Image

            if labels.ndim != 2:
                raise InputError("PNG holds a single 2-D slice; use .tif, .nii.gz, .npy or .nrrd for volumes")
            flat = (labels > 0).astype(np.uint8) * 255 if labels.max(initial=0) <= 1 else labels.astype(np.uint16)
            Image.fromarray(flat).save(temporary, format="PNG")
        else:
            labels = labels_volume(labels, like)
            formats.warn_no_geometry(path, labels, geometry)
            if suffix in (".tif", ".tiff"):
                formats.write_tiff(temporary, labels, geometry)
            elif suffix == ".npy":
                with open(temporary, "wb") as handle:
                    np.save(handle, labels)
            elif suffix in (".nii", ".nii.gz"):
                formats.write_nifti(temporary, labels, geometry)
            elif suffix == ".nrrd":
                formats.write_nrrd(temporary, labels, geometry)
            elif suffix == ".mha":
                formats.write_metaimage(temporary, labels, geometry)
            elif suffix == ".dcm":
                formats.write_dicom_seg(temporary, labels, geometry, names)
        _publish(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def check_labels_path(path: str | Path, force: bool = False) -> None:
    """Refuse, before any work is done, a labels path that cannot be written."""
    path = Path(path)
    suffix = suffix_of(path)
    if suffix not in LABEL_SUFFIXES:
        raise InputError(f"cannot write labels as '{suffix or path.name}'; use one of {', '.join(LABEL_SUFFIXES)}")
    check_writable(path, force)


def check_writable(path: str | Path, force: bool = False) -> None:
    """One line if ``path`` exists (without ``force``) or its folder does not."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path} exists; pass --force to overwrite it")
    if not path.parent.is_dir():
        raise InputError(f"the folder {path.parent} does not exist")


def _publish(temporary: Path, path: Path) -> None:
    """Move a finished temporary file into place with the mode the user's umask gives.

    ``mkstemp`` creates files readable by their owner only; a labels file is meant
    to be shared like any other file the user writes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    os.replace(temporary, path)


def trace_path(labels_path: str | Path) -> Path:
    """The trajectory file that goes with a labels file: ``NAME.ibis.json`` beside it."""
    path = Path(labels_path)
    return path.with_name(path.name.split(".")[0] + ".ibis.json")


def write_json(path: str | Path, record: dict, force: bool = False) -> Path:
    """Write a JSON record atomically (never half a file)."""
    path = Path(path)
    temporary = _atomic_target(path, force)
    try:
        temporary.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
        _publish(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# -- manifests ---------------------------------------------------------------------
@dataclass
class Case:
    """One evaluation case of a manifest: a 2-D slice, its mask and its names."""

    image: np.ndarray
    mask: np.ndarray
    target: str
    modality: str
    source: str
    query: str = ""
    pixel_aspect: float = 1.0  # its rows' spacing over its columns' (napari_ibis.square_pixels)
    voxel_ml: float | None = None  # a volume case's voxel in millilitres, where the file gives a spacing
    spacing: tuple[float, ...] | None = None  # a grey volume case's spacing in mm (display order), where given
    volume: object = None  # a slice case's VolumeSlice: the grey volume it was cut from, for an agent that looks through it

    def __post_init__(self) -> None:
        self.query = self.query or f"segment the {self.target}"


@dataclass(frozen=True)
class ManifestEntry:
    """One line of a manifest, checked but not yet read (the files it names exist)."""

    manifest: str  # the manifest's file name, for messages
    number: int  # the line's number in it
    image: Path
    mask: Path
    fields: dict  # the line as written: "target", "modality", "slice", "frame", "series", "label", "query", "source"


def manifest_entries(manifest: str | Path) -> list[ManifestEntry]:
    """The lines of a manifest JSONL, each checked (JSON, ``image``, ``mask`` and ``target`` given,
    both files there) without reading any image: one line naming the first that is not."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise InputError(f"manifest not found: {manifest}")
    entries = []
    for number, line in enumerate(manifest.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            fields = json.loads(line)
            image, mask = manifest.parent / fields["image"], manifest.parent / fields["mask"]
            str(fields["target"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{manifest.name} line {number}: not a manifest entry ({exc})") from None
        for path in (image, mask):
            if not path.exists():
                raise InputError(f"{manifest.name} line {number}: {path} not found")
        if fields.get("label") is not None:
            try:
                label_values(fields["label"])
            except InputError as exc:
                raise InputError(f"{manifest.name} line {number}: {exc}") from None
        entries.append(ManifestEntry(manifest.name, number, image, mask, fields))
    if not entries:
        raise InputError(f"{manifest.name} lists no cases")
    return entries


def load_case(entry: ManifestEntry, volumes: bool = False) -> Case:
    """Read one manifest line's image and mask. With ``volumes``, a line without ``slice`` whose
    image is a volume is one case holding the whole volume and its 3-D mask."""
    fields = entry.fields
    voxel_ml, spacing, looked_through = None, None, None
    try:
        series = fields.get("series")
        loaded = read_image(entry.image, fields.get("slice"), frame=fields.get("frame"),
                            series=None if series is None else str(series))
        whole = volumes and "slice" not in fields and len(loaded.slice_index) == 1 + bool(loaded.frames)
        if whole:
            loaded = replace(loaded, slice_index=loaded.slice_index[:-1])  # a frame's volume, or the volume
            array = _mask_on_image_grid(entry.mask, loaded)
            shape = tuple(loaded.spatial_shape[len(loaded.slice_index):])
            if array.shape != shape:
                raise InputError(f"the mask {entry.mask.name} is {array.shape} but the volume is {shape}")
            mask = to_binary(array, fields.get("label"), name=entry.mask.name)
            geometry = loaded.meta.get("geometry")
            if geometry is not None:
                voxel_ml = float(np.prod(geometry.display_spacing[-3:])) / 1000.0
                spacing = None if loaded.rgb else tuple(float(s) for s in geometry.display_spacing[-3:])
        else:
            mask = read_mask(entry.mask, loaded, fields.get("label"))
            looked_through = loaded.volume_slice()  # as `segment` hands it to the agent
    except InputError as exc:
        raise InputError(f"{entry.manifest} line {entry.number}: {exc}") from None
    return Case(
        image=loaded.slice,
        mask=mask,
        target=str(fields["target"]),
        modality=str(fields.get("modality", "")),
        source=str(fields.get("source", f"{entry.manifest}:{entry.number}")),
        query=str(fields.get("query", "")),
        pixel_aspect=loaded.pixel_aspect,
        voxel_ml=voxel_ml,
        spacing=spacing,
        volume=looked_through,
    )


def read_manifest(manifest: str | Path, volumes: bool = False) -> list[Case]:
    """Cases of a manifest JSONL: ``{"image", "mask", "target", "modality", "slice"?, "label"?, "query"?}``
    (the query defaults to "segment the TARGET"), every one read into memory; see
    :func:`manifest_entries` and :func:`load_case` to read them one at a time."""
    return [load_case(entry, volumes) for entry in manifest_entries(manifest)]
