"""The promptable-segmenter protocol shared by every backend.

Like segment-anything's ``SamPredictor``: :meth:`Segmenter.set_image` once per
slice (the embedding is cached by image content, so a second call with the same
pixels costs nothing), then :meth:`Segmenter.segment` as often as needed with all
clicks so far and the previous step's low-resolution logits.

Clicks are in pixel space: ``row`` (y) and ``col`` (x) of the image given to
``set_image``.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import Cancelled, InputError, ModelError


@dataclass(frozen=True)
class Click:
    """One click in pixel space. ``source`` is ``"agent"``, ``"user"`` or ``"simulator"``."""

    row: int
    col: int
    positive: bool
    target: str | None = None
    source: str = "agent"


@dataclass
class SegmentResult:
    """A binary mask at image size, the backend's low-res logits (its next prior) and a score."""

    mask: np.ndarray
    logits: np.ndarray | None
    score: float = float("nan")


def image_key(image: np.ndarray) -> str:
    """A content hash that identifies a slice for the embedding cache."""
    data = np.ascontiguousarray(image)
    digest = hashlib.blake2b(data.tobytes(), digest_size=16)
    digest.update(repr((data.shape, str(data.dtype))).encode())
    return digest.hexdigest()


class Segmenter(ABC):
    """Base class of segmenter backends."""

    name: str = "segmenter"

    def __init__(self) -> None:
        self.encoder_calls = 0
        self._key: str | None = None
        self._shape: tuple[int, int] | None = None

    def identity(self) -> dict:
        """What a trajectory file records about this backend."""
        return {"name": self.name}

    def set_image(self, image: np.ndarray) -> None:
        """Embed an (H, W, 3) uint8 RGB slice unless these pixels are embedded already."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"segmenters take (H, W, 3) uint8 images, got {image.shape} {image.dtype}")
        key = image_key(image)
        if key == self._key:
            return
        self._embed(image)
        self._key = key
        self._shape = image.shape[:2]
        self.encoder_calls += 1

    @property
    def image_shape(self) -> tuple[int, int]:
        if self._shape is None:
            raise RuntimeError("call set_image() before segment()")
        return self._shape

    def segment(self, clicks: Sequence[Click], prior: np.ndarray | None = None) -> SegmentResult:
        """The mask for all ``clicks`` so far; ``prior`` is the previous result's logits."""
        height, width = self.image_shape
        for click in clicks:
            if not (0 <= click.row < height and 0 <= click.col < width):
                raise InputError(f"click ({click.row}, {click.col}) lies outside the {height}x{width} image")
        if not any(c.positive for c in clicks):
            # Without a positive click there is no object to find: keep the prior mask (an
            # imported or earlier mask) and cut out the part around each negative click in it.
            if prior is None:
                return SegmentResult(np.zeros((height, width), dtype=bool), None, 0.0)
            mask = carve(self.mask_from_prior(prior), [c for c in clicks if not c.positive])
            return SegmentResult(mask, self.prior_from_mask(mask), float("nan"))
        if self.decodes_parts_apart:
            from .parts import segment_in_parts

            parted = segment_in_parts(self, list(clicks), prior)
            if parted is not None:
                return SegmentResult(*parted)
        return self._segment(list(clicks), prior)

    def object_at(self, click: Click) -> np.ndarray:
        """The object one positive ``click`` finds alone on the current slice, as a first click
        makes it (SAM: the finest of its three masks; a coarser one, often the body around a
        kidney, joined the two kidneys' clicks: benchmarks/parts_apart.py), kept for the slice:
        what :mod:`~napari_ibis.segmenters.parts` groups clicks by."""
        cache = self.__dict__.setdefault("_objects", {})
        if cache.get("slice") != self._key:
            cache.clear()
            cache["slice"] = self._key
        if (click.row, click.col) not in cache:
            cache[(click.row, click.col)] = self._segment([click], None).mask
        return cache[(click.row, click.col)]

    def follow(self, previous: np.ndarray, leave_out: np.ndarray | None = None) -> SegmentResult:
        """The structure on the current slice, from the neighbouring slice's mask (propagation
        through a volume): a positive click inside each part of it, and it as the prior.
        ``leave_out``: pixels of this slice that are not the structure (a neighbour an earlier
        reading took in): a negative click inside its largest part, the rest as the prior."""
        clicks, prior = following_prompts(previous, leave_out)
        return self.segment(clicks, self.prior_from_mask(prior))

    def follow_boxed(self, previous: np.ndarray) -> SegmentResult | None:
        """A second reading of the structure on the current slice, each part of ``previous``
        prompted by its box as well as its click and its prior (what clicks alone can lose: a
        vessel's arch, a loop of bowel); propagation keeps it where what it adds looks like
        the structure (:mod:`napari_ibis.propagation`). None where the backend has no such
        reading beside :meth:`follow`."""
        return None

    def prior_from_mask(self, mask: np.ndarray) -> np.ndarray | None:
        """Logits that stand for an imported mask, to start a refinement from it."""
        return None

    def mask_from_prior(self, prior: np.ndarray) -> np.ndarray:
        """The image-sized mask that logits from :meth:`segment` or :meth:`prior_from_mask` stand for."""
        from skimage.transform import resize

        prior = np.asarray(prior, dtype=np.float32)
        if prior.shape != self.image_shape:
            prior = resize(prior, self.image_shape, order=1, preserve_range=True)
        return prior > 0

    encoder_size: int | None = None  # TinyViT backends: the side of the encoder's input
    decodes_parts_apart: bool = False  # clicks on objects apart are decoded apart (segmenters/parts.py)

    def speed_up(self) -> None:
        """Prepare for many slices in a row (a propagation): a TinyViT encoder on a CPU is
        frozen into TorchScript (once, about 4 s; then a quarter less per slice)."""
        if self.encoder_size and str(getattr(self, "device", "")) == "cpu":
            from .tinyvit import frozen_encoder

            self.net.image_encoder = frozen_encoder(self.net.image_encoder, self.encoder_size)

    def embedding_cells(self) -> tuple[np.ndarray, tuple[int, int]] | None:
        """The current slice's image embedding as one unit vector per cell (G, G, C) and how
        many rows and columns of cells the image fills (the rest is padding); None for a
        backend without a TinyViT embedding (classical, SAM 2)."""
        embedding = getattr(self, "_embedding", None)
        if embedding is None or not self.encoder_size:
            return None
        import torch

        cells = torch.nn.functional.normalize(embedding[0].float(), dim=0).permute(1, 2, 0).cpu().numpy()
        grid = cells.shape[0]
        height, width = self._resized
        return cells, (max(1, round(grid * height / self.encoder_size)), max(1, round(grid * width / self.encoder_size)))

    def torch_modules(self) -> list:
        """The networks this backend runs (for :meth:`interruptible`); none for a classical one."""
        net = getattr(self, "net", None)
        return [net] if net is not None else []

    @contextlib.contextmanager
    def interruptible(self, cancel: threading.Event | None):
        """Inside, a set ``cancel`` stops the networks at their next layer (raising Cancelled),
        so that Stop does not wait for a whole image embedding (seconds on a laptop's CPU).
        The embedding cache is left as it was before the interrupted call."""
        handles = []
        if cancel is not None:
            def check(module, inputs):
                if cancel.is_set():
                    raise Cancelled("stopped")

            import torch

            handles = [m.register_forward_pre_hook(check) for net in self.torch_modules() for m in net.modules()
                       if not isinstance(m, torch.jit.ScriptModule)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @abstractmethod
    def _embed(self, image: np.ndarray) -> None: ...

    @abstractmethod
    def _segment(self, clicks: list[Click], prior: np.ndarray | None) -> SegmentResult: ...


def mask_parts(mask: np.ndarray, min_part: int = 30, most: int = 4) -> list[np.ndarray]:
    """The connected parts of ``mask`` that stand for it, largest first: the largest always,
    the others of at least ``min_part`` pixels, ``most`` at most."""
    from scipy import ndimage as ndi

    labels, count = ndi.label(mask)
    if count == 0:
        return []
    sizes = ndi.sum(mask, labels, range(1, count + 1))
    parts = []
    for rank, index in enumerate(np.argsort(sizes)[::-1][:most]):
        if rank and sizes[index] < min_part:
            break
        parts.append(labels == index + 1)
    return parts


def prompts_from(mask: np.ndarray, min_part: int = 30, most: int = 4) -> list[Click]:
    """Positive clicks that stand for ``mask``: the interior point (farthest from the edge) of
    each of its :func:`mask_parts`."""
    from scipy import ndimage as ndi

    clicks = []
    for part in mask_parts(mask, min_part, most):
        distance = ndi.distance_transform_edt(np.pad(part, 1))[1:-1, 1:-1]
        row, col = np.unravel_index(int(np.argmax(distance)), distance.shape)
        clicks.append(Click(int(row), int(col), True, source="propagation"))
    return clicks


def following_prompts(previous: np.ndarray, leave_out: np.ndarray | None = None) -> tuple[list[Click], np.ndarray]:
    """The clicks and the prior mask with which a segmenter follows ``previous`` onto the next
    slice (:meth:`Segmenter.follow`): a positive click in each part; with ``leave_out``, those of
    what lies outside its largest part, a negative click at that part's innermost point, and
    ``previous`` without ``leave_out`` as the prior."""
    from scipy import ndimage

    previous = np.asarray(previous, dtype=bool)
    if leave_out is None or not np.any(leave_out):
        return prompts_from(previous), previous
    leave_out = np.asarray(leave_out, dtype=bool)
    labels, count = ndimage.label(leave_out)
    part = labels == int(np.argmax(ndimage.sum(leave_out, labels, range(1, count + 1)))) + 1
    depth = ndimage.distance_transform_edt(np.pad(part, 1))[1:-1, 1:-1]
    row, col = np.unravel_index(int(np.argmax(depth)), depth.shape)
    positives = prompts_from(previous & ~part) or prompts_from(previous)
    return positives + [Click(int(row), int(col), False)], previous & ~leave_out


def carve(mask: np.ndarray, negatives: Sequence[Click]) -> np.ndarray:
    """``mask`` without the region around each negative click that lies inside it: a disk
    reaching just past the mask's nearest edge. A negative click outside the mask changes nothing."""
    from scipy.ndimage import distance_transform_edt

    out = np.asarray(mask, dtype=bool).copy()
    inside = [c for c in negatives if out[c.row, c.col]]
    if not inside:
        return out
    depth = distance_transform_edt(out)
    rows, cols = np.ogrid[: out.shape[0], : out.shape[1]]
    for click in inside:
        reach = depth[click.row, click.col] + 2.0
        out &= (rows - click.row) ** 2 + (cols - click.col) ** 2 > reach**2
    return out


def load_weights(net, checkpoint, what: str, skip: tuple[str, ...] = ()) -> None:
    """Put a checkpoint's weights (a state dict, or one under "model") into ``net``; a missing,
    unreadable or mismatched file is one line (ModelError). ``skip``: key prefixes to leave out."""
    import torch

    try:
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ModelError(f"{what} checkpoint not found: {checkpoint}") from None
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"cannot read the {what} checkpoint {checkpoint}: {reason}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ModelError(f"{checkpoint} does not hold {what} weights")
    state = {k: v for k, v in state.items() if not (skip and k.startswith(skip))}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError:
        raise ModelError(f"{Path(str(checkpoint)).name} is not a {what} checkpoint (its weights do not fit the model)") from None
