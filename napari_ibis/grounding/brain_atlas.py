"""A brain atlas registered onto a whole brain volume: brain regions on a real MRI.

The slice atlas (:mod:`napari_ibis.grounding.atlas`) fits one labelled Colin27 slice onto a
new slice by a scale and shift per axis. On a real MRI that is not Colin27 (another scanner,
contrast, the skull and scalp, 6.5 mm slices) the two grey levels correlate too poorly for
that fit, the map alone finds no region and the agent answered "not present". A brain
volume holds far more than a slice: the whole head fixes the atlas's position, rotation and
size in 3-D. :class:`VolumeAtlas` keeps the Colin27 T1 twice, the whole head and the brain
alone (skull and scalp removed), at ``SPACING_MM``, with its AAL regions on Colin27's own 1 mm
grid (display order, :mod:`napari_ibis.geometry`). :meth:`VolumeAtlas.register` fits each onto
the volume by a 3-D affine transform (SimpleITK: Mattes mutual information, which holds across
contrasts, three resolutions, the centres of mass aligned first) and keeps the better match: a
clinical MRI keeps its skull, a research one has often lost it, and an atlas with a skull fitted
onto a brain without one shrinks onto it (3-D Dice 0.36 against 0.73 on the moved MNI152
brains). Both fits take about 4 s on 2 cores, once per volume.
:class:`RegisteredBrain` then cuts a region out of any slice of the volume, in any view.

``MIN_BRAIN_MATCH`` refuses a fit that matched poorly (a volume that is no head, a
synthetic phantom): its regions would be placed on whatever tissue lay there.
benchmarks/brain_registration.py measures the fit on the MNI152 template moved by known
affine transforms and cut into thick slices, and what the pointer agent answers with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ATLAS_FILE = "brain_atlas.npz"  # in a pointer model folder, beside atlas.npz
SPACING_MM = 2.0  # the stored atlas's voxel side
MIN_BRAIN_MATCH = 0.35  # the fit's mutual information (nats) below which it is not trusted (brain_registration.py)
MIN_REGION_MM2 = 20.0  # a region cut smaller than this on a slice is not on it


@dataclass
class RegisteredBrain:
    """The atlas fitted onto one volume: ``transform`` maps the volume's millimetres (display
    axes, origin at voxel 0) into the atlas's; ``match``: the fit's mutual information."""

    atlas: VolumeAtlas
    transform: object  # a SimpleITK transform
    variant: str  # which of the atlas's grey volumes fitted best ("head", "brain")
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    match: float
    seconds: float
    _cut: dict = field(default_factory=dict)

    @property
    def trusted(self) -> bool:
        return self.match >= MIN_BRAIN_MATCH

    def region_volume(self, name: str) -> np.ndarray:
        """The region ``name`` on the volume's grid (bool, display order): the atlas's binary
        region moved by the fit with linear interpolation, kept where at least half of it."""
        import SimpleITK as sitk

        if name not in self._cut:
            code = self.atlas.code(name)
            region = _image((self.atlas.labels == code).astype(np.float32), (self.atlas.label_spacing,) * 3)
            grid = _image(np.zeros(self.shape, np.float32), self.spacing)
            moved = sitk.Resample(region, grid, self.transform, sitk.sitkLinear, 0.0)
            self._cut[name] = sitk.GetArrayFromImage(moved) >= 0.5
        return self._cut[name]

    def region(self, name: str, view: str, index: int) -> np.ndarray:
        """The region ``name`` on slice ``index`` of the volume seen in ``view`` (bool, the
        slice's rows and columns); empty where it is smaller than ``MIN_REGION_MM2``."""
        from ..geometry import VIEWS, in_view_order, oriented

        cut = np.asarray(oriented(self.region_volume(name), VIEWS[view])[index])
        rows, cols = in_view_order(self.spacing, VIEWS[view])[1:]
        return cut if cut.sum() * rows * cols >= MIN_REGION_MM2 else np.zeros_like(cut)


class VolumeAtlas:
    """A labelled brain volume: its grey levels in one or more variants (``greys``: "head",
    "brain"; display order, isotropic ``spacing`` mm: what is fitted), its region codes over the
    same field at ``label_spacing`` mm (finer: a thin region such as the hippocampus loses a
    third of a slice's cross-section at 2 mm), and each code's name."""

    def __init__(self, greys: dict[str, np.ndarray], labels: np.ndarray, names: dict[int, str], spacing: float,
                 label_spacing: float | None = None) -> None:
        self.spacing = float(spacing)
        self.label_spacing = self.spacing if label_spacing is None else float(label_spacing)
        shapes = {g.shape for g in greys.values()}
        field_mm = np.asarray(labels.shape) * self.label_spacing
        if labels.ndim != 3 or len(shapes) != 1 or len(next(iter(shapes))) != 3 or not np.allclose(
                np.asarray(next(iter(shapes))) * self.spacing, field_mm, atol=self.spacing):
            raise ValueError(f"a brain atlas needs its grey levels {[g.shape for g in greys.values()]} and labels "
                             f"{labels.shape} on one 3-D grid over the same field")
        self.greys, self.labels = dict(greys), labels
        self.names = dict(names)
        self._codes = {name: code for code, name in self.names.items()}

    def code(self, name: str) -> int:
        return self._codes[name]

    def holds(self, name: str | None) -> bool:
        return name in self._codes

    # -- building and keeping ----------------------------------------------------------
    @classmethod
    def from_files(cls, grey_files: dict[str, str | Path], labels_file: str | Path, names: dict[int, str],
                   spacing: float = SPACING_MM) -> VolumeAtlas:
        """From T1 volumes (variant -> file) and a label volume on one grid of isotropic voxels
        (any format :func:`napari_ibis.io.read_image` reads): the T1s resampled to ``spacing``
        mm, the labels kept on their own grid; ``names``: code -> name."""
        from ..io import read_image

        loaded = read_image(labels_file)
        source = tuple(loaded.meta["geometry"].spacing)
        if not np.allclose(source, source[0], rtol=1e-3):
            raise ValueError(f"{Path(labels_file).name}: the atlas's voxels must be cubes, not {source} mm")
        grid = [int(round(n * s / spacing)) for n, s in zip(loaded.data.shape, source)]
        labels = np.asarray(loaded.data)
        greys = {}
        for variant, path in grey_files.items():
            grey = read_image(path)
            if grey.data.shape != loaded.data.shape:
                raise ValueError(f"{Path(path).name} {grey.data.shape} is not on the grid of the labels {loaded.data.shape}")
            resampled = _resampled(grey.data, source, grid, spacing, nearest=False)
            greys[variant] = np.round(_robust_unit(resampled) * 255).astype(np.uint8)
        held = set(np.unique(labels).astype(int)) - {0}
        return cls(greys, labels.astype(np.uint8 if max(held, default=0) < 256 else np.uint16),
                   {code: name for code, name in names.items() if code in held}, spacing, source[0])

    def save(self, path: str | Path) -> None:
        codes = sorted(self.names)
        np.savez_compressed(path, labels=self.labels, spacing=np.float32(self.spacing),
                            label_spacing=np.float32(self.label_spacing),
                            codes=np.asarray(codes, dtype=np.int32), names=np.asarray([self.names[c] for c in codes]),
                            **{f"grey_{variant}": grey for variant, grey in self.greys.items()})

    @classmethod
    def load(cls, path: str | Path) -> VolumeAtlas:
        with np.load(path) as data:
            greys = {key[len("grey_"):]: data[key] for key in data.files if key.startswith("grey_")}
            return cls(greys, data["labels"], dict(zip(data["codes"].tolist(), data["names"].tolist())),
                       float(data["spacing"]), float(data["label_spacing"]) if "label_spacing" in data.files else None)

    # -- fitting ---------------------------------------------------------------------
    def register(self, volume: np.ndarray, spacing, cancel=None) -> RegisteredBrain:
        """The 3-D affine fit of this atlas onto ``volume`` (display order, ``spacing`` mm per
        axis): each grey variant fitted, the best matching kept. ``cancel`` (a
        ``threading.Event``) stops it within an iteration: :class:`~napari_ibis.errors.Cancelled`."""
        import SimpleITK as sitk

        started = time.perf_counter()
        spacing = tuple(float(s) for s in spacing)
        fixed = _image(_robust_unit(volume), spacing)
        # the atlas is no finer than SPACING_MM: a finer volume is averaged down to it first (same field)
        fixed = sitk.BinShrink(fixed, [max(1, int(self.spacing // s)) for s in reversed(spacing)])
        fits = [(*self._fit(fixed, grey, cancel), variant) for variant, grey in sorted(self.greys.items())]
        match, transform, variant = max(fits, key=lambda fit: fit[0])
        return RegisteredBrain(self, transform, variant, tuple(volume.shape), spacing, match,
                               time.perf_counter() - started)

    def _fit(self, fixed, grey: np.ndarray, cancel=None):
        """(mutual information, transform) of ``grey`` fitted onto the image ``fixed``."""
        import SimpleITK as sitk

        from ..errors import Cancelled

        moving = _image(grey.astype(np.float32) / 255.0, (self.spacing,) * 3)
        start = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                  sitk.CenteredTransformInitializerFilter.MOMENTS)
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        method.SetMetricSamplingStrategy(method.RANDOM)
        method.SetMetricSamplingPercentage(0.1, seed=1)
        method.SetInterpolator(sitk.sitkLinear)
        method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=200,
                                                        gradientMagnitudeTolerance=1e-6)
        method.SetOptimizerScalesFromPhysicalShift()
        method.SetShrinkFactorsPerLevel([4, 2, 1])
        method.SetSmoothingSigmasPerLevel([2, 1, 0])
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
        method.SetInitialTransform(start, inPlace=False)
        if cancel is not None:
            method.AddCommand(sitk.sitkIterationEvent, lambda: method.StopRegistration() if cancel.is_set() else None)
            if cancel.is_set():
                raise Cancelled("stopped while fitting the atlas brain onto the volume")
        transform = method.Execute(fixed, moving)
        if cancel is not None and cancel.is_set():
            raise Cancelled("stopped while fitting the atlas brain onto the volume")
        return -float(method.GetMetricValue()), transform


def _robust_unit(volume: np.ndarray) -> np.ndarray:
    """Grey levels scaled so that the 0.5th and 99.5th percentiles fall at 0 and 1, clipped."""
    volume = np.asarray(volume, dtype=np.float32)
    low, high = np.percentile(volume, [0.5, 99.5])
    return np.clip((volume - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)


def _resampled(array: np.ndarray, source, grid, spacing: float, nearest: bool) -> np.ndarray:
    """``array`` (spacing ``source``) on a ``grid`` of ``spacing`` mm over the same field."""
    import SimpleITK as sitk

    target = _image(np.zeros(grid, np.float32), (spacing,) * 3)
    how = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    moved = sitk.Resample(_image(np.asarray(array, np.float32), source), target, sitk.Transform(), how, 0.0)
    return sitk.GetArrayFromImage(moved)


def _image(array: np.ndarray, spacing):
    """A SimpleITK image of a display-order array: ITK's x, y, z are the display axes L, P, S
    reversed from numpy's order, which is LPS, ITK's own world; origin 0, no rotation."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in reversed(tuple(spacing))))
    return image
