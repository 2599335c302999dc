"""TinyViT image encoders (LiteMedSAM's, MobileSAM's) as frozen TorchScript, stage by stage.

On a CPU, ``torch.jit.freeze`` + ``optimize_for_inference`` fold each batch norm into its
convolution and hand the convolutions to oneDNN: the same embedding (relative difference
about 2e-6) in about a quarter less time (`python benchmarks/propagation_stop.py` prints
both). The encoder is frozen in stages (the patch embedding, each of the four layers, the
neck), each wrapped in a plain module, so that :meth:`Segmenter.interruptible` can stop
between stages.
"""

from __future__ import annotations

import logging
import warnings

import torch

log = logging.getLogger(__name__)


class Stage(torch.nn.Module):
    """One frozen stage in a plain module (forward pre-hooks work on it, not on the script)."""

    def __init__(self, scripted) -> None:
        super().__init__()
        self.scripted = scripted

    def forward(self, x):
        return self.scripted(x)


class Neck(torch.nn.Module):
    """TinyViT's end: tokens (B, 4096, C) to a 64 x 64 map, then the neck."""

    def __init__(self, neck) -> None:
        super().__init__()
        self.neck = neck

    def forward(self, x):
        batch, _, channels = x.shape
        return self.neck(x.view(batch, 64, 64, channels).permute(0, 3, 1, 2))


def frozen_encoder(encoder: torch.nn.Module, size: int) -> torch.nn.Module:
    """``encoder`` (a TinyViT taking (1, 3, size, size)) frozen stage by stage, or itself
    where TorchScript cannot take it (a line in the log says why) or it is frozen already."""
    if isinstance(encoder, torch.nn.Sequential) and all(isinstance(m, Stage) for m in encoder):
        return encoder
    stages = [encoder.patch_embed, *encoder.layers, Neck(encoder.neck)]
    frozen = []
    x = torch.zeros(1, 3, size, size)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about TinyViT's shape asserts
            for stage in stages:
                traced = torch.jit.trace(stage.eval(), x, check_trace=False)
                frozen.append(Stage(torch.jit.optimize_for_inference(torch.jit.freeze(traced))))
                x = stage(x)
    except Exception as exc:  # an unusual torch build: the eager encoder is as right, only slower
        log.info("the image encoder stays eager: %s", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return encoder
    return torch.nn.Sequential(*frozen)
