"""The query-conditioned head: where on a grid of frozen image features the named structure lies.

Input per case: the encoder's features (C, g, g), four position channels (the cell's place
in the image and in the body's bounding box, each in [-1, 1]) and the query vector (the
sentence embedding plus a laterality number: +1 "left", -1 "right", 0 neither; the
sentence encoder barely tells "left kidney" from "right kidney", 0.96 cosine). Output:
one logit per cell. The structure is answered "not present" when no cell's probability
reaches the model's ``presence_threshold``.

Layout: a per-cell projection of the features and positions (computed once per slice,
whatever the number of queries), modulated by the query (FiLM), plus a context branch at
half the resolution (three 3 x 3 convolutions, dilation 1, 2, 2, each modulated
by the query) added back, then one logit per cell. About 0.2 M parameters: the
pretrained encoders carry what the images mean.

It is a transformers ``PreTrainedModel``, so a trained head saves and loads as an ordinary
model folder (``save_pretrained`` / ``from_pretrained``).
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from .text import DIM as TEXT_DIM

POSITION_CHANNELS = 4
_LEFT = re.compile(r"\bleft\b", re.IGNORECASE)
_RIGHT = re.compile(r"\bright\b", re.IGNORECASE)


def laterality(query: str) -> float:
    """+1 when the query names the patient's left, -1 the right, 0 neither or both."""
    left, right = bool(_LEFT.search(query)), bool(_RIGHT.search(query))
    return float(left) - float(right)


def query_vectors(queries, texts: list[str]) -> np.ndarray:
    """(N, query_dim): each query's sentence embedding (``queries``: a QueryEncoder) and its
    laterality, the head's query input in training and at run time alike."""
    sides = np.array([[laterality(t)] for t in texts], dtype=np.float32)
    return np.concatenate([queries.encode(list(texts)), sides], axis=1).astype(np.float32)


def pool_features(features: torch.Tensor, grid: int) -> torch.Tensor:
    """(…, C, G, G) averaged down to (…, C, grid, grid) when G is a multiple of ``grid``; else as is."""
    size = features.shape[-1]
    if size > grid and size % grid == 0:
        flat = features.reshape(-1, *features.shape[-3:]).float()
        pooled = F.avg_pool2d(flat, size // grid).to(features.dtype)
        return pooled.reshape(*features.shape[:-2], grid, grid)
    return features


BODY_BOXES = ("bright", "largest_part")  # how the box around the body is found (PointerHeadConfig.body_box)


def body_box(rgb: np.ndarray, level: int = 25, kind: str = "bright", opening: float = 0.02) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the body (or the head, the tissue) rather than the air
    around it; the whole image if there is none.

    ``kind``: "bright", every pixel brighter than ``level``; "largest_part", the largest
    connected part of them after an opening with a disk of ``opening`` x the image side,
    which leaves out a CT table and arms beside the body (benchmarks/position_prior.py)."""
    grey = np.asarray(rgb).mean(axis=2) if rgb.ndim == 3 else np.asarray(rgb)
    bright = grey > level
    if kind == "largest_part":
        from scipy import ndimage as ndi
        from skimage.morphology import disk

        bright = ndi.binary_opening(bright, structure=disk(max(1, round(min(grey.shape) * opening))))
        labels, count = ndi.label(bright)
        if count:
            bright = labels == 1 + int(np.argmax(ndi.sum(bright, labels, range(1, count + 1))))
    elif kind != "bright":
        raise ValueError(f"body_box: kind must be one of {', '.join(BODY_BOXES)}, not {kind!r}")
    rows, cols = np.nonzero(bright)
    if len(rows) < 16:
        return 0, 0, grey.shape[0], grey.shape[1]
    return int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1


def position_channels(framing, rgb: np.ndarray, box: str = "bright") -> np.ndarray:
    """(4, g, g): each cell centre's row and column in the image and in the body box (found the
    ``box`` way, see :func:`body_box`), in [-1, 1] (cells over the padding get values beyond 1)."""
    g = framing.grid
    centres = (np.arange(g) + 0.5) * framing.size / g / framing.scale  # pixel coordinate of each cell centre
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    top, left, bottom, right = body_box(rgb, kind=box)

    def span(values, low, high):
        return 2 * (values - low) / max(high - low, 1) - 1

    return np.stack([span(rows, 0, framing.height), span(cols, 0, framing.width),
                     span(rows, top, bottom), span(cols, left, right)]).astype(np.float32)


class PointerHeadConfig(PretrainedConfig):
    model_type = "ibis_pointer"

    def __init__(self, encoder: str = "mobilesam", feature_channels: int = 256, grid: int = 32, hidden: int = 64,
                 query_dim: int = TEXT_DIM + 1, presence_threshold: float = 0.5, body_box: str = "bright",
                 structures: list[str] | None = None, **kwargs) -> None:
        self.encoder = encoder
        self.feature_channels = feature_channels
        self.grid = grid
        self.hidden = hidden
        self.query_dim = query_dim
        self.presence_threshold = presence_threshold
        self.body_box = body_box  # how the position channels find the body (BODY_BOXES)
        self.structures = list(structures or [])  # the names it was taught (grounding.vocabulary); [] not listed
        super().__init__(**kwargs)


class _FiLM(nn.Module):
    def __init__(self, query_dim: int, channels: int) -> None:
        super().__init__()
        self.to_scale_shift = nn.Linear(query_dim, 2 * channels)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x, query):
        scale, shift = self.to_scale_shift(query)[:, :, None, None].chunk(2, dim=1)
        return x * (1 + scale) + shift


class PointerHead(PreTrainedModel):
    config_class = PointerHeadConfig
    base_model_prefix = "pointer"
    main_input_name = "features"

    def __init__(self, config: PointerHeadConfig) -> None:
        super().__init__(config)
        hidden = config.hidden
        self.project = nn.Conv2d(config.feature_channels, hidden, 1)
        self.position = nn.Conv2d(POSITION_CHANNELS, hidden, 1)
        self.query_in = nn.Sequential(nn.Linear(config.query_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.film_cell = _FiLM(hidden, hidden)
        self.norm = nn.GroupNorm(8, hidden)
        self.context = nn.ModuleList(nn.Conv2d(hidden, hidden, 3, padding=d, dilation=d) for d in (1, 2, 2))
        self.film_context = nn.ModuleList(_FiLM(hidden, hidden) for _ in range(3))
        self.out = nn.Sequential(nn.GELU(), nn.Conv2d(hidden, hidden, 1), nn.GELU(), nn.Conv2d(hidden, 1, 1))
        self.post_init()

    def cells(self, features: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The query-independent part, (B, hidden, g, g): computed once per slice."""
        return self.norm(self.project(features.float()) + self.position(positions.float()))

    def forward(self, features=None, positions=None, query=None, cells=None, per_slice: int = 1):
        """Logits (B, g, g) for B queries. ``cells`` (from :meth:`cells`) skips the projection;
        with ``per_slice`` > 1, each slice's cells serve that many consecutive queries."""
        if cells is None:
            cells = self.cells(features, positions)
        if per_slice > 1:
            cells = cells.repeat_interleave(per_slice, dim=0)
        q = self.query_in(query.float())
        x = F.gelu(self.film_cell(cells, q))
        context = F.avg_pool2d(x, 2, ceil_mode=True)
        for conv, film in zip(self.context, self.film_context):
            context = F.gelu(film(conv(context), q)) + context
        x = x + F.interpolate(context, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(x)[:, 0]

    def _init_weights(self, module) -> None:
        """PyTorch's default initialisation; the FiLM layers start at zero (the identity)."""
