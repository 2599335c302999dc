"""SAM 2 / SAM 2.1 / MedSAM2 checkpoints through the ``sam2`` package, as the release calls them.

All clicks so far are sent on every step, the previous step's low-res logits
of the best mask go in as ``mask_input``, ``multimask_output=True`` and the
highest-scoring mask is kept (RELEASED_PROTOCOL.md, "Segmenter call").

The Hydra config is inferred from the checkpoint's weights (trunk width and
depth give tiny/small/base+/large; SAM 2.1 adds ``no_obj_embed_spatial``) or
given explicitly. Checkpoints are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError
from .base import Click, Segmenter, SegmentResult

# (trunk embed dim, number of trunk blocks) -> size tag in the config names
_HIERA_SIZES = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}


def load_state_dict(checkpoint: str | Path) -> dict:
    import torch

    path = Path(checkpoint)
    if not path.is_file():
        raise ModelError(f"SAM 2 checkpoint not found: {path}")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read {path.name} as a SAM 2 checkpoint: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or "image_encoder.trunk.patch_embed.proj.weight" not in state:
        raise ModelError(f"{path.name} does not hold SAM 2 weights (no image_encoder.trunk in it)")
    return state


def infer_config(state: dict) -> str:
    """The ``sam2`` package config name that fits these weights."""
    width = int(state["image_encoder.trunk.patch_embed.proj.weight"].shape[0])
    blocks = {int(k.split(".")[3]) for k in state if k.startswith("image_encoder.trunk.blocks.")}
    size = _HIERA_SIZES.get((width, len(blocks)))
    if size is None:
        raise ModelError(f"unknown SAM 2 trunk (width {width}, {len(blocks)} blocks): pass the config explicitly")
    if "no_obj_embed_spatial" in state:
        return f"configs/sam2.1/sam2.1_hiera_{size}.yaml"
    return f"configs/sam2/sam2_hiera_{size}.yaml"


class SAM2Segmenter(Segmenter):
    name = "sam2"

    def __init__(self, checkpoint: str | Path | None, config: str | None = None, device: str = "cpu") -> None:
        """``checkpoint=None`` builds random weights (tests and timings only)."""
        super().__init__()
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        state = load_state_dict(checkpoint) if checkpoint is not None else None
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.config = config or (infer_config(state) if state is not None else "configs/sam2.1/sam2.1_hiera_t.yaml")
        try:
            model = build_sam2(self.config, ckpt_path=None, device=device)
        except Exception as exc:
            raise ModelError(f"cannot build SAM 2 from config '{self.config}': {str(exc).splitlines()[0]}") from None
        if state is not None:
            try:
                missing, unexpected = model.load_state_dict(state, strict=False)
            except RuntimeError:  # weights of other shapes
                missing, unexpected = ["(shapes differ)"], []
            if missing or unexpected:
                raise ModelError(
                    f"{Path(self.checkpoint).name} does not match config {self.config}: "
                    f"{len(missing)} missing and {len(unexpected)} unexpected weights"
                )
        self.predictor = SAM2ImagePredictor(model.eval())

    def identity(self) -> dict:
        return {
            "name": self.name,
            "checkpoint": Path(self.checkpoint).name if self.checkpoint else None,
            "config": self.config,
        }

    def _embed(self, image: np.ndarray) -> None:
        import torch

        with torch.inference_mode():
            self.predictor.set_image(image)

    def _segment(self, clicks: list[Click], prior: np.ndarray | None) -> SegmentResult:
        import torch

        coords = np.array([[c.col, c.row] for c in clicks], dtype=np.float32) if clicks else None
        labels = np.array([1 if c.positive else 0 for c in clicks], dtype=np.int32) if clicks else None
        with torch.inference_mode():
            masks, scores, low_res = self.predictor.predict(
                point_coords=coords,
                point_labels=labels,
                mask_input=None if prior is None else prior[None],
                multimask_output=True,
            )
        best = int(np.argmax(scores))
        return SegmentResult(mask=masks[best] > 0, logits=low_res[best].astype(np.float32), score=float(scores[best]))

    def prior_from_mask(self, mask: np.ndarray) -> np.ndarray:
        from skimage.transform import resize

        size = self.predictor.model.image_size // 4  # SAM 2 resizes to a square, logits are 1/4 of it
        small = resize(mask.astype(np.float32), (size, size), order=1) > 0.5
        return np.where(small, 8.0, -8.0).astype(np.float32)
