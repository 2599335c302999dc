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

    def torch_modules(self) -> list:
        return [self.predictor.model]

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


class VolumeFrames:
    """A volume's slices as SAM 2's video frames, made when the predictor asks for one and
    not kept (the predictor caches the features of the frame it is on), so that a long
    volume never sits in memory at 1024x1024 per slice."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # what sam2's frame loader normalises with

    def __init__(self, rgb_of, count: int, image_size: int, device) -> None:
        self.rgb_of, self.count, self.image_size, self.device = rgb_of, count, image_size, device

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        import torch
        from PIL import Image

        rgb = Image.fromarray(self.rgb_of(int(index))).resize((self.image_size, self.image_size))
        frame = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean, std = torch.tensor(self.MEAN)[:, None, None], torch.tensor(self.STD)[:, None, None]
        return ((frame - mean) / std).to(self.device)


MEMORY_KEPT = 16  # tracked frames whose memory is kept behind the current one (SAM 2 reads the last 6)


def _video_predictor(segmenter: SAM2Segmenter):
    """SAM 2's video predictor with the image predictor's weights (built once, on first use)."""
    if getattr(segmenter, "_video", None) is None:
        import sam2.sam2_video_predictor as video_module
        from sam2.build_sam import build_sam2_video_predictor

        video_module.tqdm = lambda items, **_: items  # its own progress bar would interleave with ours

        model = segmenter.predictor.model
        video = build_sam2_video_predictor(segmenter.config, ckpt_path=None, device=str(model.device))
        video.load_state_dict(model.state_dict())
        segmenter._video = video.eval()
    return segmenter._video


def track(segmenter: SAM2Segmenter, rgb_of, count: int, start: int, mask: np.ndarray, reverse: bool):
    """SAM 2's own propagation through a volume, as MedSAM2 does it: the start slice's mask as
    the prompt, then each slice from the memory of the ones before it, in one direction.
    Yields ``(index, mask, object score)`` for the slices after ``start``; the score is SAM 2's
    probability that the object is on that slice."""
    from collections import OrderedDict

    import torch

    predictor = _video_predictor(segmenter)
    height, width = mask.shape
    device = predictor.device
    state = {
        "images": VolumeFrames(rgb_of, count, predictor.image_size, device), "num_frames": count,
        "offload_video_to_cpu": False, "offload_state_to_cpu": False, "video_height": height, "video_width": width,
        "device": device, "storage_device": device, "point_inputs_per_obj": {}, "mask_inputs_per_obj": {},
        "cached_features": {}, "constants": {}, "obj_id_to_idx": OrderedDict(), "obj_idx_to_id": OrderedDict(),
        "obj_ids": [], "output_dict_per_obj": {}, "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {},
    }
    with torch.inference_mode():
        predictor.add_new_mask(state, frame_idx=start, obj_id=1, mask=torch.from_numpy(np.asarray(mask, dtype=bool)))
        outputs = state["output_dict_per_obj"][0]["non_cond_frame_outputs"]
        for index, _, logits in predictor.propagate_in_video(state, start_frame_idx=start, reverse=reverse):
            if index == start:
                continue
            score = float(torch.sigmoid(outputs[index]["object_score_logits"]).flatten()[0]) if index in outputs else 1.0
            for old in [i for i in outputs if abs(i - index) > MEMORY_KEPT]:
                del outputs[old]  # bounded memory: SAM 2 looks back only a few frames
            yield index, (logits[0, 0] > 0).cpu().numpy(), score
