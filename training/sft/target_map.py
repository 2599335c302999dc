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


def _predicts_trained(labels):
    """(batch, length) True where the next token is trained (labels shifted by one)."""
    import torch

    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask


def attention_loss(attentions, input_ids, labels, image_token_id: int, targets, head: int = 0, all_keys: bool = False):
    """Teach one attention head to look at the named structure from every trained token.

    ``attentions``: (batch, heads, length, length) weights of one decoder layer (eager
    attention). For each sample whose target is in the image, the chosen head's
    attention from each position that predicts a trained token, renormalised over the
    image tokens, is pulled towards the target map (cross-entropy against the
    coverage, normalised to sum 1). The tokens of the answer then carry what the
    target's image tokens hold (their position among them) without first having to
    discover where to look. With ``all_keys`` the attention is not renormalised: the
    head is pulled to spend its whole attention on the target, not only its share of
    the image (measured: a head taught the renormalised loss spends half its attention
    on text, which dilutes what it reads). Zero (still attached) when no sample has a
    target.
    """
    import torch

    targets = targets.to(attentions.device)
    is_image = input_ids == image_token_id
    predicts_trained = _predicts_trained(labels)
    parts, offset = [], 0
    for row in range(input_ids.shape[0]):
        keys = torch.nonzero(is_image[row]).squeeze(-1)
        wanted = targets[offset:offset + len(keys)]
        offset += len(keys)
        if torch.isnan(wanted).any() or wanted.sum() <= 0 or not predicts_trained[row].any():
            continue
        looks = attentions[row, head][predicts_trained[row]][:, keys]
        if not all_keys:
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
    predicts_trained = _predicts_trained(labels)
    first = predicts_trained.clone()
    first[:, 1:] &= ~predicts_trained[:, :-1]  # the start of each trained run
    first &= ~torch.isnan(centres).any(-1, keepdim=True)
    if not first.any():
        return head(hidden[:, :1]).sum() * 0.0
    wanted = centres[:, None, :].expand(-1, labels.shape[1], -1)[first]
    return torch.nn.functional.mse_loss(head(hidden[first]), wanted)


def token_positions(grids, merge_size: int):
    """(tokens, 2) centre (x, y) of every merged image token as shares of width and height, in token order.

    ``grids``: the processor's ``image_grid_thw`` rows of the batch, in image order
    (image tokens appear in the sequence in the same order).
    """
    import torch

    parts = []
    for frames, rows, cols in (tuple(int(v) for v in g) for g in grids):
        rows, cols = rows // merge_size, cols // merge_size
        y, x = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols, indexing="ij")
        parts.append(torch.stack([x.flatten(), y.flatten()], -1).repeat(frames, 1))
    return torch.cat(parts)


def token_position_loss(head, values, input_ids, image_token_id: int, positions):
    """Mean squared error of a linear (x, y) read-out of each image token's value vector.

    ``values``: (batch, length, head width) what one attention head reads from each
    token (its value projection); ``positions``: :func:`token_positions` of the batch.
    A head that looks at the target returns an average of the target tokens' values;
    when every image token's value holds its own position linearly, that average
    holds the target's position, ready for the answer to write (measured: the taught
    head points at the target's centre with correlation 0.94 in x and y, yet the
    answer's state holds y not at all).
    """
    import torch

    got = head(values[input_ids == image_token_id])
    positions = positions.to(got.device, got.dtype)
    if positions.shape != got.shape:
        raise ValueError(f"{len(positions)} token positions for {len(got)} image tokens")
    return torch.nn.functional.mse_loss(got, positions)


# Batch keys that carry these targets (made by training.sft.encode/collate); not model inputs.
BATCH_KEYS = ("target_map", "target_centre")

# The terms by the name they have in logs, cards, checkpoints and SFTConfig (NAME_weight).
TERMS = ("target_map", "target_attention", "target_position", "token_position")


class Terms:
    """The target-map terms an SFT run uses: their heads, weights and per-step losses.

    Built from an SFTConfig; terms with weight 0 are off. ``heads`` are trained with
    the model (pass them to the optimiser and to ``accelerator.prepare``); ``state``
    and ``load`` carry heads and loss histories through checkpoints, so the card of a
    resumed run covers the whole run.
    """

    def __init__(self, config, model):
        text = model.config.text_config
        self.config, self.image_token_id = config, model.config.image_token_id
        self.merge_size = model.config.vision_config.spatial_merge_size
        self.on = [name for name in TERMS if getattr(config, f"{name}_weight") > 0]
        self.heads = {}
        if "target_map" in self.on:
            self.heads["target_map"] = make_head(text.hidden_size)
        if "target_position" in self.on:
            self.heads["target_position"] = make_head(text.hidden_size, 2)
        self.losses = {name: [] for name in self.on}
        self._step, self._values = {}, None
        if "token_position" in self.on:
            head_width = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
            self.heads["token_position"] = make_head(head_width, 2)
            # head 0's keys and values come from the first key-value group (grouped-query attention)
            name = f"language_model.layers.{config.target_attention_layer - 1}.self_attn.v_proj"
            v_proj = next(module for path, module in model.named_modules() if path.endswith(name))  # also under LoRA
            v_proj.register_forward_hook(
                lambda module, args, output: setattr(self, "_values", output[..., :head_width]))

    @property
    def needs_hidden_states(self) -> bool:  # the token-position term reads v_proj through its hook instead
        return "target_map" in self.on or "target_position" in self.on

    @property
    def needs_attentions(self) -> bool:
        return "target_attention" in self.on

    def loss(self, out, batch: dict, targets: dict, share: float):
        """The weighted sum of the terms on one micro-batch; ``share`` scales what is logged."""
        config, total = self.config, 0.0
        for name in self.on:
            if name == "target_map":
                value = loss(self.heads[name], out.hidden_states[config.target_map_layer], batch["input_ids"],
                             self.image_token_id, targets["target_map"])
            elif name == "target_attention":
                value = attention_loss(out.attentions[config.target_attention_layer - 1], batch["input_ids"],
                                       batch["labels"], self.image_token_id, targets["target_map"],
                                       all_keys=config.target_attention_all_keys)
            elif name == "token_position":
                value = token_position_loss(self.heads[name], self._values, batch["input_ids"], self.image_token_id,
                                            token_positions(batch["image_grid_thw"], self.merge_size))
            else:
                value = position_loss(self.heads[name], out.hidden_states[config.target_attention_layer],
                                      batch["labels"], targets["target_centre"])
            self._step[name] = self._step.get(name, 0.0) + value.item() * share
            total = total + getattr(config, f"{name}_weight") * value
        return total

    def end_step(self, mean) -> None:
        """Append this step's loss of each term (``mean``: averages a float over processes)."""
        for name in self.on:
            self.losses[name].append(mean(self._step.pop(name, 0.0)))

    def describe(self, last: int) -> str:
        return "".join(f" ({name.replace('_', ' ')} {np.mean(self.losses[name][-last:]):.4f})" for name in self.on)

    def record(self) -> dict:
        return {f"{name}_losses": losses for name, losses in self.losses.items()}

    def state(self, unwrap) -> dict:
        heads = {f"{name}_head": unwrap(head).state_dict() for name, head in self.heads.items()}
        layer = {"target_map_layer": self.config.target_map_layer} if "target_map" in self.heads else {}
        return {**heads, **layer, **self.record()}

    def load_heads(self, state: dict) -> list[str]:
        """Take the heads a checkpoint state holds (names of those taken)."""
        taken = [name for name in self.heads if f"{name}_head" in state]
        for name in taken:
            self.heads[name].load_state_dict(state[f"{name}_head"])
        return taken

    def load(self, state: dict) -> None:
        self.load_heads(state)
        for name in self.on:
            self.losses[name] = list(state.get(f"{name}_losses", []))
