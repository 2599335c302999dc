"""Read and write medical image formats with their geometry.

Readers return ``(array, rgb, meta)``: the pixels in display order (see
:mod:`napari_ibis.geometry`; volumes slice-axis first), whether the last axis is
colour, and ``meta`` with ``format`` and, where the file has one, ``geometry``
(a :class:`~napari_ibis.geometry.Geometry`). Writers take display-order labels
and put them back on the source's voxel grid with its affine and header.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .geometry import Geometry, GeometryWarning, from_affine

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def suffix_of(path: str | Path) -> str:
    """A file's suffix in lower case, ``.nii.gz`` counted as one."""
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


# -- NIfTI ---------------------------------------------------------------------------
def read_nifti(path: Path) -> tuple[np.ndarray, bool, dict]:
    import nibabel as nib

    image = nib.load(str(path))
    array = np.asarray(image.dataobj)
    meta = {"format": "nifti"}
    if array.ndim > 3:  # one-long axes past the third (a (X, Y, Z, 1) volume, a (X, Y, Z, 1, C) vector image)
        array = array.reshape(array.shape[:3] + tuple(n for n in array.shape[3:] if n != 1))
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim > 4:  # more than one non-spatial axis: axes reversed, no reorientation
        return np.ascontiguousarray(array.T), False, meta
    frames = array.shape[3] if array.ndim == 4 else 0  # channels or time points of one grid
    geometry = from_affine("nifti", array.shape[:3], image.affine, header=image.header.copy(), source=str(path),
                           frames=frames)
    meta["geometry"] = geometry
    return geometry.to_display(array), False, meta


def write_nifti(path: Path, labels: np.ndarray, geometry: Geometry | None) -> None:
    import nibabel as nib

    if geometry is None or (geometry.affine is None and not geometry.spacing):
        image = nib.Nifti1Image(np.ascontiguousarray(labels.T), np.eye(4))
    elif geometry.affine is None:  # spacing only (TIFF): axes reversed, no orientation known
        image = nib.Nifti1Image(np.ascontiguousarray(labels.T), np.diag(list(geometry.spacing[::-1]) + [1.0]))
    else:
        data = geometry.to_file(labels)
        header = None
        if geometry.format == "nifti" and geometry.header is not None:
            header = geometry.header.copy()
            header.set_data_dtype(data.dtype)
            header.set_slope_inter(1.0, 0.0)
        image = nib.Nifti1Image(data, geometry.affine, header)
        if header is not None:  # keep the source's qform/sform codes, not nibabel's defaults
            image.set_qform(geometry.affine, int(geometry.header["qform_code"]))
            image.set_sform(geometry.affine, int(geometry.header["sform_code"]))
    nib.save(image, str(path))


# -- NRRD ----------------------------------------------------------------------------
_NRRD_SPACES = {
    "left-posterior-superior": LPS_TO_RAS, "LPS": LPS_TO_RAS,
    "right-anterior-superior": np.eye(4), "RAS": np.eye(4),
    "left-anterior-superior": np.diag([-1.0, 1.0, 1.0, 1.0]), "LAS": np.diag([-1.0, 1.0, 1.0, 1.0]),
}


def read_nrrd(path: Path) -> tuple[np.ndarray, bool, dict]:
    import nrrd

    array, header = nrrd.read(str(path), index_order="F")
    meta = {"format": "nrrd"}
    directions = header.get("space directions")
    space = header.get("space")
    frames = 0
    if array.ndim == 4 and directions is not None and space in _NRRD_SPACES:  # a DWI or a time series
        rows = np.asarray(directions, dtype=float)
        free = [axis for axis in range(len(rows)) if not np.all(np.isfinite(rows[axis]))]  # the axis with no direction
        if rows.shape == (4, 3) and len(free) == 1:
            array = np.moveaxis(array, free[0], -1)
            directions = np.delete(rows, free[0], axis=0)
            frames = array.shape[-1]
    if array.ndim - bool(frames) == 3 and directions is not None and space in _NRRD_SPACES:
        directions = np.asarray(directions, dtype=float)
        if directions.shape == (3, 3) and np.all(np.isfinite(directions)):
            affine = np.eye(4)
            affine[:3, :3] = directions.T
            affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
            geometry = from_affine("nrrd", array.shape[:3], _NRRD_SPACES[space] @ affine, header=dict(header),
                                   source=str(path), frames=frames)
            meta["geometry"] = geometry
            return geometry.to_display(array), False, meta
    return np.ascontiguousarray(array.T), False, meta  # no orientation: slice axis first, as stored


def write_nrrd(path: Path, labels: np.ndarray, geometry: Geometry | None) -> None:
    import nrrd

    if geometry is None or geometry.affine is None:
        header = {} if geometry is None else {"spacings": list(geometry.spacing[::-1])}
        nrrd.write(str(path), np.ascontiguousarray(labels.T), header=header, index_order="F")
        return
    data = geometry.to_file(labels)
    if geometry.format == "nrrd" and geometry.header is not None and not geometry.frames:
        keep = ("space", "space directions", "space origin", "space units", "measurement frame", "kinds")
        header = {k: v for k, v in geometry.header.items() if k in keep}
    else:
        header = {"space": "right-anterior-superior", "space directions": geometry.affine[:3, :3].T,
                  "space origin": geometry.affine[:3, 3]}
    header["encoding"] = "gzip"
    nrrd.write(str(path), data, header=header, index_order="F")


# -- MetaImage (.mha, .mhd: ITK's format, the grand-challenge.org standard) ----------
def read_metaimage(path: Path) -> tuple[np.ndarray, bool, dict]:
    import SimpleITK as sitk

    image = sitk.ReadImage(str(path))
    array = sitk.GetArrayFromImage(image)  # the slowest axis first: (z, y, x[, components])
    meta = {"format": "metaimage"}
    components = image.GetNumberOfComponentsPerPixel()
    rgb = components == 3 and array.dtype == np.uint8
    if components > 1 and not rgb:
        raise InputError(f"{path.name} holds {components} values per voxel; napari-ibis reads grey or RGB images")
    if image.GetDimension() == 3 and not rgb:
        file_array = array.transpose(2, 1, 0)  # (x, y, z), as ITK indexes it
        geometry = from_affine("metaimage", file_array.shape, _itk_affine(image), source=str(path))
        meta["geometry"] = geometry
        return geometry.to_display(file_array), False, meta
    if image.GetDimension() == 2:
        column, row = image.GetSpacing()
        meta["geometry"] = Geometry("metaimage", array.shape[:2], spacing=(float(row), float(column)), source=str(path))
    return np.ascontiguousarray(array), rgb, meta


def _itk_affine(image) -> np.ndarray:
    """Voxel (x, y, z) -> RAS mm of a 3-D SimpleITK image (ITK's physical space is LPS)."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3) @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ affine


def write_metaimage(path: Path, labels: np.ndarray, geometry: Geometry | None) -> None:
    import SimpleITK as sitk

    if geometry is not None and geometry.affine is not None:
        data = geometry.to_file(labels)  # (x, y, z)
        image = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose(2, 1, 0)))
        lps = LPS_TO_RAS @ geometry.affine
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        image.SetSpacing(tuple(float(v) for v in spacing))
        image.SetOrigin(tuple(float(v) for v in lps[:3, 3]))
        image.SetDirection(tuple(float(v) for v in (lps[:3, :3] / spacing).ravel()))
    else:
        image = sitk.GetImageFromArray(np.ascontiguousarray(labels))
        if geometry is not None and len(geometry.spacing) >= labels.ndim:
            image.SetSpacing(tuple(float(v) for v in geometry.spacing[-labels.ndim:][::-1]))
    sitk.WriteImage(image, str(path), useCompression=True)


# -- DICOM ---------------------------------------------------------------------------
def _dicom_affine(dataset, slice_step: np.ndarray | None) -> np.ndarray | None:
    """Voxel (column, row, slice) -> RAS mm from a DICOM dataset's position tags."""
    try:
        orientation = np.asarray(dataset.ImageOrientationPatient, dtype=float)
        position = np.asarray(dataset.ImagePositionPatient, dtype=float)
        row_spacing, col_spacing = (float(v) for v in dataset.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None
    along_row, along_col = orientation[:3], orientation[3:]
    if slice_step is None:
        thickness = float(getattr(dataset, "SliceThickness", 1.0) or 1.0)
        slice_step = np.cross(along_row, along_col) * thickness
    affine = np.eye(4)
    affine[:3, 0] = along_row * col_spacing
    affine[:3, 1] = along_col * row_spacing
    affine[:3, 2] = slice_step
    affine[:3, 3] = position
    return LPS_TO_RAS @ affine


def _dicom_pixels(dataset) -> tuple[np.ndarray, bool]:
    from pydicom.pixels import apply_rescale

    try:
        array = dataset.pixel_array
    except (RuntimeError, NotImplementedError) as exc:  # compressed in a way no installed decoder reads
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = "; ".join(lines[1:]) or (lines[0] if lines else type(exc).__name__)
        name = Path(str(getattr(dataset, "filename", "") or "the DICOM file")).name
        raise InputError(f"{name}: its pixels are stored as '{getattr(syntax, 'name', syntax)}', which no installed "
                         f"decoder reads ({why})") from None
    rgb = getattr(dataset, "SamplesPerPixel", 1) == 3
    if not rgb and ("RescaleSlope" in dataset or "RescaleIntercept" in dataset):
        array = apply_rescale(array, dataset).astype(np.float32)
    return array, rgb


def _dicom_meta(dataset, geometry: Geometry | None) -> dict:
    meta = {"format": "dicom", "modality": str(getattr(dataset, "Modality", ""))}
    if geometry is not None:
        meta["geometry"] = geometry
    return meta


def _enhanced_volume(path: Path, dataset) -> tuple[np.ndarray, dict] | None:
    """A multi-frame (enhanced) CT or MR file as a volume in display order with its geometry,
    where its frames are parallel planes on a regular grid (highdicom reads their positions);
    None otherwise (a cine loop, a multi-frame secondary capture)."""
    if int(getattr(dataset, "NumberOfFrames", 1) or 1) < 2 or "PerFrameFunctionalGroupsSequence" not in dataset:
        return None
    import highdicom

    try:
        volume = highdicom.imread(str(path)).get_volume()
    except Exception:  # noqa: BLE001 - frames that do not form a volume open as a plain stack
        return None
    array = np.asarray(volume.array)
    if array.ndim != 3:
        return None
    affine = LPS_TO_RAS @ np.asarray(volume.affine, dtype=float)[:, [2, 1, 0, 3]]  # (column, row, slice) -> RAS
    file_array = array.transpose(2, 1, 0).astype(np.float32)
    geometry = from_affine("dicom", file_array.shape, affine, source=str(path),
                           header={"modality": str(getattr(dataset, "Modality", "")), "slices": array.shape[0],
                                   "enhanced": True})
    return geometry.to_display(file_array), _dicom_meta(dataset, geometry)


def read_dicom_file(path: Path) -> tuple[np.ndarray, bool, dict]:
    import pydicom

    dataset = pydicom.dcmread(str(path))
    enhanced = _enhanced_volume(path, dataset)
    if enhanced is not None:
        return enhanced[0], False, enhanced[1]
    array, rgb = _dicom_pixels(dataset)
    geometry = None
    if array.ndim == 2:
        affine = _dicom_affine(dataset, None)
        if affine is not None:
            geometry = from_affine("dicom", (array.shape[1], array.shape[0], 1), affine, source=str(path),
                                   header={"modality": str(getattr(dataset, "Modality", ""))})
            array = geometry.to_display(array.T[:, :, None])
        else:
            spacing = getattr(dataset, "PixelSpacing", None) or getattr(dataset, "ImagerPixelSpacing", None)
            if spacing is not None:
                geometry = Geometry("dicom", array.shape, spacing=tuple(float(v) for v in spacing), source=str(path))
    return array, rgb, _dicom_meta(dataset, geometry)


NOT_IMAGES = {"SEG", "RTSTRUCT", "SR", "PR", "KO", "RTPLAN", "REG"}  # DICOM objects a folder may hold beside images
MAX_FOLDER_FILES = 50_000


@dataclass
class DicomSeries:
    """One image series found in a folder: its identity and its files."""

    uid: str
    number: str
    description: str
    files: list[Path]

    def label(self) -> str:
        return f"{self.number or '?'} '{self.description}' ({len(self.files)} images)"


def dicom_series(folder: Path) -> list[DicomSeries]:
    """Every image series in a folder and its subfolders (a study as PACS exports it), the one
    with the most images first; headers only, so a large study is listed quickly."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    found: dict[str, DicomSeries] = {}
    files = (p for p in sorted(folder.rglob("*")) if p.is_file())
    for count, file in enumerate(files):
        if count >= MAX_FOLDER_FILES:
            raise InputError(f"{folder.name}: more than {MAX_FOLDER_FILES:,} files under it; open the series' own folder")
        try:
            header = pydicom.dcmread(str(file), stop_before_pixels=True)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError):
            continue
        if "Rows" not in header or str(getattr(header, "Modality", "")) in NOT_IMAGES:
            continue
        uid = str(getattr(header, "SeriesInstanceUID", ""))
        if uid not in found:
            found[uid] = DicomSeries(uid, str(getattr(header, "SeriesNumber", "") or ""),
                                     str(getattr(header, "SeriesDescription", "") or getattr(header, "Modality", "")), [])
        found[uid].files.append(file)
    if not found:
        raise InputError(f"{folder.name}: no DICOM images in this folder")
    return sorted(found.values(), key=lambda series: -len(series.files))


def choose_series(folder: Path, wanted: str | None = None) -> tuple[DicomSeries, list[DicomSeries]]:
    """(the series ``wanted``, by number, UID or a word of its description; else the one with the
    most images, all series in the folder)."""
    every = dicom_series(folder)
    if wanted is None:
        return every[0], every
    text = str(wanted).strip().lower()
    matches = [s for s in every if text in (s.uid.lower(), s.number.lower())] or \
              [s for s in every if text and text in s.description.lower()]
    if len(matches) != 1:
        listed = ", ".join(s.label() for s in every)
        problem = "several series match" if matches else "no series matches"
        raise InputError(f"{folder.name}: {problem} '{wanted}'; it holds {listed}")
    return matches[0], every


def series_datasets(series: DicomSeries) -> tuple[list, np.ndarray | None]:
    """A series' datasets sorted along the slice normal (or by instance number where positions
    are missing), and the step between slices (mm)."""
    import pydicom

    datasets = [pydicom.dcmread(str(file)) for file in series.files]
    if len(datasets) == 1:
        return datasets, None
    try:
        orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(orientation[:3], orientation[3:])
        datasets.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float))))
        positions = np.array([np.asarray(d.ImagePositionPatient, dtype=float) for d in datasets])
        step = (positions[-1] - positions[0]) / (len(datasets) - 1)
        gaps = np.diff(positions @ normal)
        if gaps.max() - gaps.min() > 0.1 * abs(float(np.median(gaps))):
            warnings.warn(f"the slices of series {series.label()} are not evenly spaced ({gaps.min():.2f} to "
                          f"{gaps.max():.2f} mm apart): a NIfTI or NRRD written from it places them approximately "
                          "(a DICOM-SEG keeps each slice's own position)", GeometryWarning, stacklevel=2)
    except (AttributeError, TypeError, ValueError):
        datasets.sort(key=lambda d: int(getattr(d, "InstanceNumber", 0) or 0))
        step = None
    return datasets, step


def read_dicom_series(folder: Path, series: str | DicomSeries | None = None) -> tuple[np.ndarray, bool, dict]:
    """A DICOM series of a folder (``series``: which one, see :func:`choose_series`; else the one
    with the most images) as a volume sorted along its slice normal; ``meta["series"]`` says which,
    ``meta["other_series"]`` what else the folder holds."""
    if isinstance(series, DicomSeries):
        chosen, every = series, [series]
    else:
        chosen, every = choose_series(folder, series)
    datasets, step = series_datasets(chosen)
    first = datasets[0]
    others = {"series": chosen.label(), "other_series": [s.label() for s in every if s is not chosen]}
    if len(datasets) == 1:
        array, rgb = _dicom_pixels(first)
        return array, rgb, _dicom_meta(first, None) | others
    slices = [_dicom_pixels(d)[0] for d in datasets]
    if len({s.shape for s in slices}) != 1:
        raise InputError(f"{folder.name}: the slices of series {chosen.label()} differ in size")
    stack = np.stack(slices)  # (slice, row, column)
    affine = _dicom_affine(datasets[0], step) if step is not None else None
    if affine is None:
        return stack, False, _dicom_meta(first, None) | others
    file_array = stack.transpose(2, 1, 0)  # (column, row, slice), as NIfTI converters store it
    geometry = from_affine("dicom", file_array.shape, affine, source=str(folder),
                           header={"modality": str(getattr(first, "Modality", "")), "slices": len(datasets),
                                   "series_uid": chosen.uid})
    return geometry.to_display(file_array), False, _dicom_meta(first, geometry) | others


def check_dicom_seg_source(geometry: Geometry | None) -> None:
    """One line unless the labels were drawn on a DICOM series folder, or an enhanced
    multi-frame CT/MR file, that is still on disk."""
    source = Path(geometry.source) if geometry is not None and geometry.format == "dicom" else None
    enhanced = source is not None and (geometry.header or {}).get("enhanced") and source.is_file()
    if source is None or not (source.is_dir() or enhanced):
        raise InputError("a DICOM-SEG (.dcm) is written only for a DICOM series folder or an enhanced multi-frame "
                         "DICOM file that is still on disk; write .nii.gz instead")


def _fill_identifiers(datasets: list) -> None:
    """Anonymised series often blank the identifiers a Segmentation must reference (the
    TotalSegmentator example: SOP class, study UID, patient ID). Fill them, in memory only:
    the SOP class and instance from the file meta, the rest the same for the whole series,
    derived from its series UID so that every export of it agrees."""
    from pydicom.uid import generate_uid

    series = str(getattr(datasets[0], "SeriesInstanceUID", "") or "")
    for dataset in datasets:
        meta = getattr(dataset, "file_meta", None)
        if not getattr(dataset, "SOPClassUID", "") and meta is not None:
            dataset.SOPClassUID = meta.MediaStorageSOPClassUID
        if not getattr(dataset, "SOPInstanceUID", "") and meta is not None:
            dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        for keyword in ("StudyInstanceUID", "FrameOfReferenceUID", "SeriesInstanceUID"):
            if not getattr(dataset, keyword, ""):
                setattr(dataset, keyword, generate_uid(entropy_srcs=[keyword, series]))


def write_dicom_seg(path: Path, labels: np.ndarray, geometry: Geometry | None, names: dict[int, str] | None = None) -> None:
    """``labels`` (display order, 0 = background) as a DICOM Segmentation object
    (highdicom) that references the series (or the enhanced multi-frame file) it was drawn on, one segment per label value
    (named by ``names``, else "segment N"); frames with no label are left out."""
    try:
        import highdicom as hd
    except ImportError:
        raise InputError("writing DICOM-SEG needs highdicom: pip install 'napari-ibis[dicom]'") from None
    from pydicom.sr.codedict import codes

    from . import __version__

    check_dicom_seg_source(geometry)
    stack = geometry.to_file(labels).transpose(2, 1, 0)  # (slice, row, column), the series' (the volume's) order
    source = Path(geometry.source)
    if source.is_dir():
        datasets, _ = series_datasets(choose_series(source, (geometry.header or {}).get("series_uid") or None)[0])
        shape, volume = (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns)), None
    else:  # an enhanced multi-frame file: its frames are placed by the volume highdicom read it as
        datasets = [hd.imread(str(source))]
        volume = datasets[0].get_volume()
        shape = tuple(volume.spatial_shape)
    _fill_identifiers(datasets)
    if stack.shape != shape:
        raise InputError(f"the labels ({stack.shape}) do not fit the scan in {geometry.source} ({shape})")
    values = [int(v) for v in np.unique(stack) if v]
    if not values:
        raise InputError("the labels are empty: DICOM-SEG holds at least one segment")
    algorithm = hd.AlgorithmIdentificationSequence(name="napari-ibis", family=codes.cid7162.ArtificialIntelligence,
                                                   version=__version__)
    segments = [hd.seg.SegmentDescription(
        segment_number=number, segment_label=(names or {}).get(value, f"segment {value}")[:64],
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.AnatomicalStructure,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC, algorithm_identification=algorithm)
        for number, value in enumerate(values, start=1)]
    numbered = np.zeros(stack.shape, dtype=np.uint8 if len(values) < 256 else np.uint16)
    for number, value in enumerate(values, start=1):
        numbered[stack == value] = number
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=numbered if volume is None else volume.with_array(numbered), segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=900,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="napari-ibis",
        manufacturer_model_name="napari-ibis", software_versions=__version__, device_serial_number="none",
        series_description="napari-ibis segmentation")
    seg.save_as(str(path))


def is_dicom_folder(folder: Path, nested: bool = True) -> bool:
    """Whether a folder (with ``nested``, or a subfolder of it: a study as PACS exports it) holds
    a DICOM file among its first files (read by its preamble only)."""
    from itertools import islice

    for file in islice((p for p in (folder.rglob("*") if nested else folder.iterdir()) if p.is_file()), 50):
        try:
            with open(file, "rb") as handle:
                handle.seek(128)
                if handle.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


# -- TIFF ----------------------------------------------------------------------------
def read_tiff(path: Path) -> tuple[np.ndarray, bool, dict]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        array = tif.asarray()
        spacing = _tiff_spacing(tif, array)
    rgb = array.ndim >= 3 and array.shape[-1] in (3, 4) and array.dtype == np.uint8
    meta = {"format": "tiff"}
    spatial = array.ndim - (1 if rgb else 0)
    if spacing is not None and spatial in (2, 3):
        values, unit = spacing
        meta["geometry"] = Geometry("tiff", array.shape[:spatial], spacing=tuple(values[-spatial:]), unit=unit,
                                    source=str(path))
    return array, rgb, meta


def _tiff_spacing(tif, array: np.ndarray) -> tuple[tuple[float, float, float], str] | None:
    """(z, y, x) spacing and unit from ImageJ metadata and the resolution tags, if present."""
    page = tif.pages[0]
    imagej = tif.imagej_metadata or {}
    resolution = page.tags.get("XResolution"), page.tags.get("YResolution")
    if not imagej.get("spacing") and (resolution[0] is None or page.tags.get("ResolutionUnit") is None):
        return None
    try:
        x = resolution[1].value if resolution[1] is not None else (1, 1)
        y = resolution[0].value if resolution[0] is not None else (1, 1)
        size_y, size_x = y[1] / y[0], x[1] / x[0]  # pixels per unit -> unit per pixel
    except (ZeroDivisionError, TypeError, IndexError):
        return None
    unit = str(imagej.get("unit", "")) or {2: "inch", 3: "cm"}.get(int(getattr(page.tags.get("ResolutionUnit"), "value", 1)), "")
    return (float(imagej.get("spacing", 1.0)), float(size_y), float(size_x)), unit.replace("\\u00B5", "µ")


def write_tiff(path: Path, labels: np.ndarray, geometry: Geometry | None) -> None:
    import tifffile

    if geometry is None or not geometry.spacing or labels.dtype not in (np.uint8, np.uint16):
        tifffile.imwrite(path, labels)
        return
    spacing = tuple(geometry.spacing[-labels.ndim:])
    metadata = {"unit": geometry.unit or "mm"}
    if labels.ndim == 3:
        metadata["spacing"] = spacing[0]
        metadata["axes"] = "ZYX"
    tifffile.imwrite(path, labels, imagej=True, resolution=(1.0 / spacing[-1], 1.0 / spacing[-2]), metadata=metadata)


def warn_no_geometry(path: Path, labels: np.ndarray, geometry: Geometry | None) -> None:
    """Say so when labels go where a geometry belongs (NIfTI, NRRD, a volume) without one."""
    if geometry is None and (suffix_of(path) in (".nii", ".nii.gz", ".nrrd") or labels.ndim >= 3):
        warnings.warn(f"{path.name}: the labels carry no geometry (no source affine or spacing), "
                      "so the file gets none (identity affine, unit spacing)", GeometryWarning, stacklevel=3)
