"""Auxiliary target-map loss: every image token learns whether the named structure covers it.

A small VLM trained from nothing learns the answer format at once but learns *where*
the named structure lies only slowly from one click per image
(shared/docs/DATA_AND_WEIGHTS.md). This loss gives every image token a label of its
own: the share of its pixels inside the target mask. A linear head reads the hidden
state of each image token at a middle layer of the language model; since the query
comes before the image, those tokens can see which structure is asked for, and the
answer tokens in the layers above can attend to the tokens that know they belong to it.

The head exists only while training (its weights go into the resumable checkpoint,
not into the model folder): the saved model is the ordinary model.
"""

from __future__ import annotations

import numpy as np


def token_coverage(mask: np.ndarray, grid_thw, merge_size: int) -> np.ndarray:
    """Share of each merged image token's pixels inside ``mask``, in the tokens' raster order.

    ``grid_thw`` is the processor's (frames, patch rows, patch columns) of this image;
    the processor resizes the whole image, so the mask is pooled over the same grid.
    """
    import torch

    frames, rows, cols = (int(v) for v in grid_thw)
    pooled = torch.nn.functional.adaptive_avg_pool2d(
        torch.as_tensor(mask, dtype=torch.float32)[None, None], (rows // merge_size, cols // merge_size))
    return pooled.flatten().repeat(frames).numpy()


def make_head(hidden_size: int, outputs: int = 1):
    """A training-only linear read-out of hidden states (target map: 1 output; position: 2)."""
    import torch

    return torch.nn.Linear(hidden_size, outputs)


def loss(head, hidden, input_ids, image_token_id: int, targets):
    """Class-balanced binary cross-entropy of the head on the image tokens.

    ``hidden``: (batch, length, width) hidden states of one layer; ``targets``: one
    value per image token of the batch in its order (NaN for samples without a target
    mask). Tokens the target touches and the others weigh half each, so a small
    structure is not drowned by the background; an image without the target (absent
    questions) trains "no" everywhere. Zero (still attached to the head) when no
    token has a target, so several processes stay in step.
    """
    import torch

    logits = head(hidden[input_ids == image_token_id]).squeeze(-1)
    targets = targets.to(logits.device)
    if targets.shape != logits.shape:
        raise ValueError(f"{targets.numel()} target-map values for {logits.numel()} image tokens")
    known = ~torch.isnan(targets)
    if not known.any():
        return logits.sum() * 0.0
    logits, targets = logits[known], targets[known]
    each = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    inside = targets > 0
    parts = [each[part].mean() for part in (inside, ~inside) if part.any()]
    return sum(parts) / len(parts)


def attention_loss(attentions, input_ids, labels, image_token_id: int, targets, head: int = 0):
    """Teach one attention head to look at the named structure from every trained token.

    ``attentions``: (batch, heads, length, length) weights of one decoder layer (eager
    attention). For each sample whose target is in the image, the chosen head's
    attention from each position that predicts a trained token, renormalised over the
    image tokens, is pulled towards the target map (cross-entropy against the
    coverage, normalised to sum 1). The tokens of the answer then carry what the
    target's image tokens hold (their position among them) without first having to
    discover where to look. Zero (still attached) when no sample has a target.
    """
    import torch

    targets = targets.to(attentions.device)
    is_image = input_ids == image_token_id
    predicts_trained = torch.zeros_like(is_image)
    predicts_trained[:, :-1] = labels[:, 1:] != -100
    parts, offset = [], 0
    for row in range(input_ids.shape[0]):
        keys = torch.nonzero(is_image[row]).squeeze(-1)
        wanted = targets[offset:offset + len(keys)]
        offset += len(keys)
        if torch.isnan(wanted).any() or wanted.sum() <= 0 or not predicts_trained[row].any():
            continue
        looks = attentions[row, head][predicts_trained[row]][:, keys]
        looks = looks / looks.sum(-1, keepdim=True).clamp_min(1e-9)
        parts.append(-(wanted / wanted.sum() * torch.log(looks + 1e-9)).sum(-1).mean())
    if not parts:
        return attentions[..., :1, :1].sum() * 0.0
    return torch.stack(parts).mean()


def centre(mask) -> tuple[float, float] | None:
    """(x, y) of the mask's centre of mass as shares of the width and height; None when empty."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    return float((cols.mean() + 0.5) / mask.shape[1]), float((rows.mean() + 0.5) / mask.shape[0])


def position_loss(head, hidden, labels, centres):
    """Mean squared error of a linear (x, y) read-out of the reply's first position.

    ``hidden``: (batch, length, width) states of one layer; the position that
    predicts the first trained token of each reply (nothing of the reply written
    yet) is asked for the target's centre (``centres``: (batch, 2), NaN for absent
    targets or no mask). Later positions are left out on purpose: there the reply's
    own words ("upper left", the digits) give the position away, and a read-out
    learns to copy them instead of the image (measured: docs/TRAINING.md). Where
    :func:`attention_loss` teaches *where to look*, this teaches the reply to carry
    *what the look found*. Zero (still attached) when no sample has a centre.
    """
    import torch

    centres = centres.to(hidden.device)
    predicts_trained = torch.zeros_like(labels, dtype=torch.bool)
    predicts_trained[:, :-1] = labels[:, 1:] != -100
    first = predicts_trained.clone()
    first[:, 1:] &= ~predicts_trained[:, :-1]  # the start of each trained run
    first &= ~torch.isnan(centres).any(-1, keepdim=True)
    if not first.any():
        return head(hidden[:, :1]).sum() * 0.0
    wanted = centres[:, None, :].expand(-1, labels.shape[1], -1)[first]
    return torch.nn.functional.mse_loss(head(hidden[first]), wanted)
