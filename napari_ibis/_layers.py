"""Session state -> napari layers: the one place that creates or changes layers.

* ``IBIS clicks`` (Points): every click in effect; positive green, negative red;
  agent clicks are discs, a person's clicks are diamonds; the text is the step
  number. Clicks on the same spot are drawn as rings of growing size and share
  one label ("1,3"), so none hides another. New points that a person adds here
  become user clicks.
* ``IBIS mask`` (Labels): the working mask of the step shown, in the green the
  agent sees in its overlay (the release's (34, 139, 34)).

Both are created once, updated in place, take the image layer's scale and
translate, and are kept above every other layer. For a volume they have the
volume's shape, and only the slice being worked on is written: the slice on screen,
in whichever orientation the viewer shows the volume (axial, coronal, sagittal: the
session's ``axes``, see :func:`view_axes`). Result layers
(exports) carry the image layer's geometry, so that they save in the source's
voxel grid.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .geometry import GEOMETRY_KEY, data_to_view, geometry_of, in_view_order, oriented, view_to_data
from .overlay import RELEASE_COLOR
from .segmenters.base import Click

CLICKS_NAME = "IBIS clicks"
MASK_NAME = "IBIS mask"
WORKING = (MASK_NAME, CLICKS_NAME)  # bottom to top
POSITIVE_COLOR = "#22c55e"
NEGATIVE_COLOR = "#ef4444"
CLICK_SIZE = 8.0  # pixels, on a 512-pixel slice; scaled with the slice (see click_size)
SAME_SPOT = 3.0  # clicks closer than this (pixels) share a spot


def click_size(shape: tuple[int, ...]) -> float:
    """The marker size for a slice: 1.5% of its longer side, between 3 and 14 pixels."""
    return float(np.clip(0.015 * max(shape[-2:]), 3.0, 14.0))


def spatial_ndim(layer) -> int:
    return layer.data.ndim - (1 if getattr(layer, "rgb", False) else 0)


def spatial_shape(layer) -> tuple[int, ...]:
    return tuple(layer.data.shape[: spatial_ndim(layer)])


def view_axes(layer, viewer) -> tuple[int, ...]:
    """The layer's spatial axes as the viewer slices them: the axes it slices through (in
    the viewer's order), then the two on screen in the layer's own order, whichever way
    napari turns them (a transposed axial view is still the axial slice, so the agent sees
    it in the display convention). () where that is the layer's own order (and for a 2-D
    layer), so that arrays are used as they are."""
    n = spatial_ndim(layer)
    if n <= 2:
        return ()
    offset = viewer.dims.ndim - n  # a layer's axes are the viewer's last n
    order = [axis - offset for axis in viewer.dims.order if axis >= offset]
    axes = tuple(order[:-2]) + tuple(sorted(order[-2:]))
    return () if axes == tuple(range(n)) else axes


def turn_camera(viewer, layer) -> None:
    """Show ``layer``'s first axis running up the screen where it runs down it (a coronal or
    sagittal view of a scan in the display convention: the head up), as the agent sees such
    a slice (:func:`~napari_ibis.geometry.rows_run_up`); back down otherwise."""
    n = spatial_ndim(layer)
    if n < 3 or viewer.dims.ndisplay != 2:
        return
    vertical = viewer.dims.order[-2] - (viewer.dims.ndim - n)  # the layer's axis down the screen
    wanted = "up" if vertical == n - 3 else "down"  # the first spatial axis (after any frames)
    horizontal = viewer.camera.orientation2d[1]
    if viewer.camera.orientation2d[0] != wanted:
        viewer.camera.orientation2d = (wanted, horizontal)


def current_slice_index(layer, viewer, axes: tuple[int, ...] = ()) -> tuple[int, ...]:
    """Indices, along the axes the viewer slices through (``axes[:-2]``; the leading axes
    where ``axes`` is ()), of ``layer``'s slice at the viewer's current position."""
    extra = spatial_ndim(layer) - 2
    if extra <= 0:
        return ()
    data_point = layer.world_to_data(viewer.dims.point[-spatial_ndim(layer):])
    sliced = axes[:extra] if axes else tuple(range(extra))
    shape = layer.data.shape
    return tuple(int(np.clip(round(float(data_point[a])), 0, shape[a] - 1)) for a in sliced)


def slice_pixel_aspect(layer, axes: tuple[int, ...] = ()) -> float:
    """The displayed slice's row spacing over its column spacing, as napari draws it (the
    layer's scale on the displayed axes; the reader sets it from the file's spacing)."""
    from .square_pixels import pixel_aspect

    return pixel_aspect(in_view_order((float(v) for v in layer.scale[-spatial_ndim(layer):]), axes))


def slice_spacing_of(layer, axes: tuple[int, ...] = ()) -> float | None:
    """The distance between the layer's slices seen along ``axes`` in its scale's units (mm for a
    scan the reader opened); None for a 2-D layer or one left at napari's default scale of 1."""
    scale = tuple(float(v) for v in layer.scale[-spatial_ndim(layer):])
    if len(scale) < 3 or all(v == 1.0 for v in scale):
        return None
    return float(in_view_order(scale, axes)[-3])


def layer_slice(layer, index: tuple[int, ...], axes: tuple[int, ...] = ()) -> np.ndarray:
    """The 2-D slice (grey or RGB) of an Image layer at ``index`` (along ``axes[:-2]``)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    data = oriented(data, axes)
    return np.asarray(data[index] if index else data)


def layer_volume_slice(layer, axes: tuple[int, ...], index: tuple[int, ...]):
    """The grey 3-D volume the slice at ``index`` of ``layer`` is from (a frame's, for a file of
    several), for a policy that looks through a volume
    (:class:`~napari_ibis.policies.base.VolumeSlice`); None for a 2-D or RGB layer, or one not
    read with its geometry (its orientation in the patient unknown)."""
    from .geometry import geometry_of
    from .policies.base import volume_slice

    n = spatial_ndim(layer)
    if getattr(layer, "rgb", False) or geometry_of(layer) is None or n not in (3, 4) or len(index) != n - 2:
        return None
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    if n == 4:  # frames first: the frame on screen, its axes counted without the frames
        data, axes = data[index[0]], tuple(a - 1 for a in axes[1:]) if axes else ()
    return volume_slice(data, tuple(float(v) for v in layer.scale[-3:]), axes, index[-1])


def mask_colormap():
    from napari.utils.colormaps import DirectLabelColormap

    green = tuple(c / 255 for c in RELEASE_COLOR) + (1.0,)
    return DirectLabelColormap(color_dict={None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0), 1: green})


def click_spots(clicks: Sequence[Click], steps: Sequence[int], size: float = CLICK_SIZE) -> tuple[list[str], list[float], list[bool]]:
    """For each click: its label text, its size, and whether it is drawn filled.

    The first click on a spot is a filled disc labelled with every step that
    clicked there ("1,3"); later ones are unlabelled, unfilled rings, each larger
    than the one before, so that all of them stay visible."""
    spots: list[tuple[int, int, list[int]]] = []  # (row, col, indices of the clicks there)
    for i, click in enumerate(clicks):
        for row, col, members in spots:
            if abs(click.row - row) <= SAME_SPOT and abs(click.col - col) <= SAME_SPOT:
                members.append(i)
                break
        else:
            spots.append((click.row, click.col, [i]))
    texts, sizes, filled = [""] * len(clicks), [size] * len(clicks), [True] * len(clicks)
    for _, _, members in spots:
        texts[members[0]] = ",".join(str(s) for s in sorted({steps[i] for i in members}))
        for rank, i in enumerate(members[1:], start=1):
            sizes[i] = size * (1 + 0.6 * rank)
            filled[i] = False
    return texts, sizes, filled


class SessionLayers:
    """Keeps the clicks and mask layers in step with a session."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.image_layer = None
        self.index: tuple[int, ...] = ()
        self.axes: tuple[int, ...] = ()  # the layer's axes in view order (view_axes)
        self.syncing = False  # True while we write, so that layer events are not read as a person's edits

    def bind(self, image_layer, index: tuple[int, ...], axes: tuple[int, ...] = ()) -> None:
        self.image_layer = image_layer
        self.index = index
        self.axes = tuple(axes)

    def slice_of(self, array) -> np.ndarray:
        """The session's slice of ``array`` (a layer's data, of the image's spatial shape),
        writable in place."""
        array = oriented(array, self.axes)
        return array[self.index] if self.index else array

    # -- geometry --------------------------------------------------------------------
    def _geometry(self) -> dict:
        layer = self.image_layer
        n = spatial_ndim(layer)
        return {"scale": tuple(layer.scale)[-n:], "translate": tuple(layer.translate)[-n:]}

    def _shape(self) -> tuple[int, ...]:
        return spatial_shape(self.image_layer)

    def _find(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    # -- working layers --------------------------------------------------------------
    def clicks_layer(self):
        layer = self._find(CLICKS_NAME)
        if layer is None:
            layer = self.viewer.add_points(
                np.empty((0, len(self._shape()))),
                name=CLICKS_NAME,
                size=click_size(self._shape()),
                border_width=0.15,
                features={"positive": np.zeros(0, bool), "source": np.array([], dtype=object),
                          "step": np.zeros(0, int), "label": np.array([], dtype=object)},
                text={"string": "{label}", "color": "white", "anchor": "upper_left", "size": 9},
                **self._geometry(),
            )
            layer.feature_defaults = {"positive": True, "source": "user", "step": 0, "label": ""}
        return layer

    def mask_layer(self):
        layer = self._find(MASK_NAME)
        if layer is None or layer.data.shape != self._shape():
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_labels(np.zeros(self._shape(), dtype=np.uint8), name=MASK_NAME, opacity=0.5,
                                           colormap=mask_colormap(), **self._geometry())
        return layer

    def prepare(self, image_layer) -> None:
        """Create the working layers for ``image_layer`` now, empty. The first Labels and
        Points layers of a napari session, and their first drawing, cost 0.4-2 s on the
        GUI thread (shader programs, glyphs; most on a software renderer): better when
        the widget opens than after the person presses Run."""
        self.bind(image_layer, ())
        self.syncing = True
        try:
            self.mask_layer()
            self.clicks_layer()
        finally:
            self.syncing = False

    def raise_working(self) -> None:
        """Keep the working layers above every other layer (e.g. a new export)."""
        layers = self.viewer.layers
        for name in WORKING:
            if name in layers and layers.index(name) != len(layers) - 1:
                layers.move(layers.index(name), len(layers))

    def show(self, mask: np.ndarray | None, clicks: Sequence[Click], steps: Sequence[int]) -> None:
        """Display ``mask`` and ``clicks`` (``steps[i]`` is the step that added clicks[i])."""
        if self.image_layer is None:
            return
        self.syncing = True
        try:
            labels = self.mask_layer()
            self.slice_of(labels.data)[...] = 0 if mask is None else mask.astype(labels.data.dtype)
            labels.refresh()  # in place: no new array, no data event
            points = self.clicks_layer()
            shown = (tuple(clicks), tuple(steps), self.index, self.axes)
            if getattr(points, "_ibis_shown", None) != shown or len(points.data) != len(clicks):
                self._show_clicks(points, clicks, steps)
                points._ibis_shown = shown
            self.raise_working()
        finally:
            self.syncing = False

    def _show_clicks(self, points, clicks: Sequence[Click], steps: Sequence[int]) -> None:
        coords = np.array([list(self.index) + [c.row, c.col] for c in clicks], dtype=float)
        coords = view_to_data(coords, self.axes, self._shape())
        texts, sizes, filled = click_spots(clicks, steps, click_size(self._shape()))
        points.data = coords
        points.features = {
            "positive": np.array([c.positive for c in clicks], dtype=bool),
            "source": np.array([c.source for c in clicks], dtype=object),
            "step": np.array(list(steps), dtype=int),
            "label": np.array(texts, dtype=object),
        }
        if len(clicks):
            colours = [POSITIVE_COLOR if c.positive else NEGATIVE_COLOR for c in clicks]
            points.size = sizes
            points.face_color = [colour if fill else "transparent" for colour, fill in zip(colours, filled)]
            points.border_color = [("white" if fill else colour) for colour, fill in zip(colours, filled)]
            points.symbol = ["diamond" if c.source == "user" else "disc" for c in clicks]
            points.refresh_text()

    def remove(self) -> None:
        for name in WORKING:
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)

    def to_pixel(self, data_point: np.ndarray) -> tuple[int, int]:
        """(row, col) in the session's slice of a point of the clicks layer (data coordinates)."""
        return self.locate(data_point)[1:]

    def locate(self, data_point: np.ndarray) -> tuple[tuple[int, ...], int, int]:
        """(slice index, row, col) of a point of the clicks layer, in the session's view: the
        slice index says whether a person clicked on the session's slice or on another one."""
        viewed = [int(round(float(v))) for v in data_to_view(data_point, self.axes, self._shape())]
        return tuple(viewed[:-2]), viewed[-2], viewed[-1]

    def painted_elsewhere(self) -> tuple[int, ...] | None:
        """The first slice, other than the session's, where the working mask layer has paint
        (a person's brush strokes on a slice the session does not work on), else None."""
        labels = self._find(MASK_NAME)
        if labels is None or not self.index or labels.data.shape != self._shape():
            return None
        viewed = oriented(labels.data, self.axes)
        extra = len(self.index)
        occupied = np.argwhere(np.asarray(viewed).any(axis=(-2, -1)))
        for found in map(tuple, occupied[:, :extra]):
            if tuple(int(v) for v in found) != tuple(self.index):
                return tuple(int(v) for v in found)
        return None

    def clear_mask(self) -> None:
        """Empty the working mask layer (a new session shows only its own slice's mask)."""
        labels = self._find(MASK_NAME)
        if labels is not None and np.asarray(labels.data).any():
            self.syncing = True
            try:
                labels.data[...] = 0
                labels.refresh()
            finally:
                self.syncing = False

    # -- results ---------------------------------------------------------------------
    def result_layer(self, name: str, dtype=np.uint16):
        """A new, empty Labels layer over the image, with its scale, translate and geometry."""
        metadata = {}
        geometry = geometry_of(self.image_layer)
        if geometry is not None:
            metadata[GEOMETRY_KEY] = geometry
        layer = self.viewer.add_labels(np.zeros(self._shape(), dtype=dtype), name=name, metadata=metadata,
                                       **self._geometry())
        self.raise_working()
        return layer

    def write_result(self, layer, mask: np.ndarray, value: int, record: dict) -> None:
        """Paint ``mask`` with ``value`` into the current slice of ``layer`` (other labels untouched)."""
        data = layer.data
        self.slice_of(data)[mask] = value
        layer.data = data
        layer.metadata["ibis_trajectory"] = record
        if geometry_of(layer) is None:
            adopt_geometry(self.viewer, layer)


def volume_layer(layers: "SessionLayers", name: str):
    """The 3-D Labels layer a propagation writes into (made over the image layer if missing)."""
    existing = layers._find(name)
    if existing is not None and tuple(existing.data.shape) == layers._shape():
        return existing
    return layers.result_layer(name)


def labels_on_image_grid(labels_layer, image_layer):
    """A Labels layer's data on the image layer's grid: as it is, or, where both came from
    files on different grids of the same scan (each with its geometry), carried onto the
    image's voxels by position in the patient (nearest voxel)."""
    from .geometry import onto_grid

    moved = onto_grid(labels_layer.data, geometry_of(labels_layer), geometry_of(image_layer))
    return labels_layer.data if moved is None else moved


def paint_slice(layer, index: tuple[int, ...], mask: np.ndarray | None, value: int, axes: tuple[int, ...] = ()) -> None:
    """The slice of ``layer`` at ``index`` (along ``axes[:-2]``, e.g. (slice,) or (frame,
    slice)): ``value`` where ``mask`` is, other labels untouched."""
    region = oriented(layer.data, axes)[index]
    region[region == value] = 0
    if mask is not None:
        region[mask] = value
    layer.refresh()


def clear_beyond(layer, prefix: tuple[int, ...], value: int, below: int | None = None, above: int | None = None,
                 axes: tuple[int, ...] = ()) -> None:
    """Take ``value`` off the slices of ``layer`` (along the axis after ``prefix``, e.g. a frame)
    before slice ``below`` and after slice ``above`` (None: that side is kept)."""
    volume = oriented(layer.data, axes)[prefix]
    for part in (volume[:below] if below is not None else None, volume[above + 1:] if above is not None else None):
        if part is not None:
            part[part == value] = 0
    layer.refresh()


def go_to_slice(viewer, layer, index: int, axis: int = 0) -> None:
    """Move the viewer to slice ``index`` of ``layer`` along its spatial ``axis``."""
    position = [0] * layer.ndim  # napari's ndim: without an RGB channel
    position[axis] = index
    world = layer.data_to_world(position)
    viewer.dims.set_point(viewer.dims.ndim - layer.ndim + axis, float(world[axis]))


def adopt_geometry(viewer, labels_layer) -> bool:
    """Give a Labels layer without geometry that of the image layer it was made for
    (same spatial shape, scale and translate), so that it saves in the source's grid."""
    from napari.layers import Image

    if geometry_of(labels_layer) is not None:
        return False
    shape, scale = tuple(labels_layer.data.shape), tuple(labels_layer.scale)
    for layer in viewer.layers:
        geometry = geometry_of(layer) if isinstance(layer, Image) else None
        if geometry is not None and spatial_shape(layer) == shape and np.allclose(tuple(layer.scale)[-len(shape):], scale):
            labels_layer.metadata[GEOMETRY_KEY] = geometry
            return True
    return False
