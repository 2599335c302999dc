"""The observation image the model sees, and the intensity window that makes it.

Models see 8-bit RGB. :func:`to_rgb8` maps any slice (grey or RGB; uint8, 16-bit,
float) to it with a documented window:

* ``None`` (default): uint8 input is used as it is; other types are windowed
  between their 0.5th and 99.5th percentiles (a CT's padding below -1024 outside its
  field of view counted as air: :func:`percentiles`);
* ``"percentile:LOW,HIGH"``: window between those percentiles;
* ``"ct:LEVEL,WIDTH"``: a CT window in the image's own units (e.g. ``ct:40,400``
  for soft tissue in Hounsfield units);
* ``"range:MIN,MAX"``: a fixed window.

:func:`compose` paints the mask exactly as the released IBISAgent did:
``out = img * (1 - a) + colour * a`` on mask pixels, computed in float32 over
the whole image and truncated to uint8, colour (34, 139, 34), a = 0.4.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

RELEASE_COLOR = (34, 139, 34)
RELEASE_ALPHA = 0.4


def compose(rgb_uint8: np.ndarray, mask: np.ndarray, color=RELEASE_COLOR, alpha: float = RELEASE_ALPHA) -> np.ndarray:
    """The uint8 RGB observation: ``mask`` painted over ``rgb_uint8`` (H, W, 3)."""
    rgb = np.asarray(rgb_uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise InputError(f"compose needs an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    mask = np.asarray(mask)
    if mask.shape != rgb.shape[:2]:
        raise InputError(f"mask shape {mask.shape} differs from the image's {rgb.shape[:2]}")
    img = rgb.astype(np.float32)
    painted = img.copy()
    painted[mask > 0] = np.asarray(color, dtype=np.float32)
    blended = img * (1 - alpha) + painted * alpha
    return np.clip(blended, 0, 255).astype(np.uint8)


def parse_window(window: str | None) -> tuple[str, float, float] | None:
    """``"ct:40,400"`` -> ``("ct", 40.0, 400.0)``; ``None`` stays ``None``."""
    if window is None or window == "":
        return None
    kind, _, values = window.partition(":")
    try:
        low, high = (float(v) for v in values.split(","))
    except ValueError:
        raise InputError(f"cannot read the window '{window}': use ct:LEVEL,WIDTH, percentile:LOW,HIGH or range:MIN,MAX") from None
    if kind not in ("ct", "percentile", "range"):
        raise InputError(f"unknown window kind '{kind}': use ct, percentile or range")
    if kind == "ct" and high <= 0 or kind != "ct" and high <= low:
        raise InputError(f"the window '{window}' is empty")
    return kind, low, high


PADDING_BELOW = -1024.0  # Hounsfield units: nothing in a body is less dense than air (-1000)
PADDING_SHARE = 0.01


def percentiles(values: np.ndarray, q) -> np.ndarray:
    """``np.percentile(values, q)`` with a CT's padding counted as air: values below -1024,
    where they cover more than 1% of ``values``, which scanners write outside the round field
    of view (-2048, -3024). Counted as they are, they would turn air mid-grey and squash every
    tissue together; as air, the slice is windowed as one whose outside was written -1024."""
    values = np.asarray(values)
    if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
        values = values[np.isfinite(values)]  # no data
    if values.dtype != np.uint8 and PADDING_SHARE < float(np.mean(values < PADDING_BELOW)) < 1.0:
        values = np.maximum(values, PADDING_BELOW)
    return np.percentile(values, q)


def window_bounds(image: np.ndarray, window: str | None) -> tuple[float, float]:
    """The (min, max) intensities that map to 0 and 255."""
    spec = parse_window(window)
    if spec is None:
        if image.dtype == np.uint8:
            return 0.0, 255.0
        spec = ("percentile", 0.5, 99.5)
    kind, a, b = spec
    if kind == "ct":
        return a - b / 2, a + b / 2
    if kind == "range":
        return a, b
    low, high = percentiles(image, [a, b])
    if high <= low:  # a constant image, or one dominated by a single value
        low, high = float(image.min()), float(image.max())
    return float(low), float(max(high, low + 1e-6))


CENTRED_WIDTH = 400.0  # Hounsfield units: a window centred on one tissue (a soft-tissue window's width)


def centred_window(level: float, width: float = CENTRED_WIDTH) -> str:
    """The CT window ``width`` HU wide centred on ``level``: ``"ct:LEVEL,WIDTH"``."""
    return f"ct:{level:.0f},{width:g}"


def to_rgb8(image: np.ndarray, window: str | None = None) -> np.ndarray:
    """An (H, W) or (H, W, 3|4) slice as (H, W, 3) uint8, through ``window``."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if not (image.ndim == 2 or image.ndim == 3 and image.shape[2] == 3):
        raise InputError(f"expected a 2-D grey or RGB slice, got shape {image.shape}")
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    if not np.issubdtype(image.dtype, np.number):
        raise InputError(f"cannot display pixels of type {image.dtype}")
    if np.issubdtype(image.dtype, np.floating) and not np.all(np.isfinite(image)):
        finite = np.isfinite(image)
        if not finite.any():
            raise InputError("the image holds only NaN or infinite values")
        image = np.where(finite, image, image[finite].min())  # "no data" (NaN outside a masked scan): background
    if image.dtype == np.uint8 and window is None:
        out = image
    else:
        low, high = window_bounds(image, window)
        scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
        out = np.clip(scaled, 0, 255).round().astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return np.ascontiguousarray(out)
