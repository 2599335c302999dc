"""Session state -> napari layers: the one place that creates or changes layers.

* ``IBIS clicks`` (Points): every click in effect; positive green, negative red;
  agent clicks are discs, a person's clicks are diamonds; the text is the step
  number. New points that a person adds here become user clicks.
* ``IBIS mask`` (Labels): the working mask of the step shown.

Both are created once, updated in place, and take the image layer's scale and
translate. For a volume they have the volume's shape, and only the slice being
worked on is written.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .segmenters.base import Click

CLICKS_NAME = "IBIS clicks"
MASK_NAME = "IBIS mask"
POSITIVE_COLOR = "#22c55e"
NEGATIVE_COLOR = "#ef4444"


def spatial_ndim(layer) -> int:
    return layer.data.ndim - (1 if getattr(layer, "rgb", False) else 0)


def current_slice_index(layer, viewer) -> tuple[int, ...]:
    """Indices of the leading axes of ``layer`` at the viewer's current position."""
    extra = spatial_ndim(layer) - 2
    if extra <= 0:
        return ()
    data_point = layer.world_to_data(viewer.dims.point[-spatial_ndim(layer):])
    shape = layer.data.shape
    return tuple(int(np.clip(round(float(v)), 0, shape[i] - 1)) for i, v in enumerate(data_point[:extra]))


def layer_slice(layer, index: tuple[int, ...]) -> np.ndarray:
    """The 2-D slice (grey or RGB) of an Image layer at ``index``."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    return np.asarray(data[index] if index else data)


class SessionLayers:
    """Keeps the clicks and mask layers in step with a session."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.image_layer = None
        self.index: tuple[int, ...] = ()
        self.syncing = False  # True while we write, so that layer events are not read as a person's edits

    def bind(self, image_layer, index: tuple[int, ...]) -> None:
        self.image_layer = image_layer
        self.index = index

    # -- geometry --------------------------------------------------------------------
    def _geometry(self) -> dict:
        layer = self.image_layer
        n = spatial_ndim(layer)
        return {"scale": tuple(layer.scale)[-n:], "translate": tuple(layer.translate)[-n:]}

    def _shape(self) -> tuple[int, ...]:
        layer = self.image_layer
        return tuple(layer.data.shape[: spatial_ndim(layer)])

    def _find(self, name: str):
        return self.viewer.layers[name] if name in self.viewer.layers else None

    # -- layers ----------------------------------------------------------------------
    def clicks_layer(self):
        layer = self._find(CLICKS_NAME)
        if layer is None:
            layer = self.viewer.add_points(
                np.empty((0, len(self._shape()))),
                name=CLICKS_NAME,
                size=8,
                border_width=0.1,
                features={"positive": np.zeros(0, bool), "source": np.array([], dtype=object), "step": np.zeros(0, int)},
                text={"string": "{step}", "color": "white", "anchor": "upper_left", "size": 9},
                **self._geometry(),
            )
            layer.feature_defaults = {"positive": True, "source": "user", "step": 0}
        return layer

    def mask_layer(self):
        layer = self._find(MASK_NAME)
        if layer is None or layer.data.shape != self._shape():
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_labels(np.zeros(self._shape(), dtype=np.uint8), name=MASK_NAME, opacity=0.5, **self._geometry())
        return layer

    def show(self, mask: np.ndarray | None, clicks: Sequence[Click], steps: Sequence[int]) -> None:
        """Display ``mask`` and ``clicks`` (``steps[i]`` is the step that added clicks[i])."""
        if self.image_layer is None:
            return
        self.syncing = True
        try:
            labels = self.mask_layer()
            labels.data[self.index] = 0 if mask is None else mask.astype(labels.data.dtype)
            labels.refresh()  # in place: no new array, no data event
            points = self.clicks_layer()
            shown = (tuple(clicks), tuple(steps), self.index)
            if getattr(points, "_ibis_shown", None) != shown or len(points.data) != len(clicks):
                self._show_clicks(points, clicks, steps)
                points._ibis_shown = shown
        finally:
            self.syncing = False

    def _show_clicks(self, points, clicks: Sequence[Click], steps: Sequence[int]) -> None:
        coords = np.array([list(self.index) + [c.row, c.col] for c in clicks], dtype=float)
        points.data = coords.reshape(-1, len(self._shape()))
        points.features = {
            "positive": np.array([c.positive for c in clicks], dtype=bool),
            "source": np.array([c.source for c in clicks], dtype=object),
            "step": np.array(list(steps), dtype=int),
        }
        if len(clicks):
            points.face_color = [POSITIVE_COLOR if c.positive else NEGATIVE_COLOR for c in clicks]
            if any(c.source == "user" for c in clicks):
                points.symbol = ["diamond" if c.source == "user" else "disc" for c in clicks]

    def remove(self) -> None:
        for name in (CLICKS_NAME, MASK_NAME):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)

    @staticmethod
    def to_pixel(data_point: np.ndarray) -> tuple[int, int]:
        """(row, col) in the slice of a point of the clicks layer (data coordinates)."""
        return int(round(float(data_point[-2]))), int(round(float(data_point[-1])))
