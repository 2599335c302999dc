"""Chat samples to model inputs: token ids, labels (-100 outside the trained assistant
turns), pixel values, image grids and the target-map values of the image tokens."""

from __future__ import annotations

import numpy as np

from ..samples import RenderedSample, pil_messages
from . import target_map


def encode(processor, sample: RenderedSample) -> dict:
    """Token ids, labels (-100 outside trained assistant turns), pixel values and grids.

    The conversation is tokenised once; assistant spans are found by the
    ``<|im_start|>assistant\n`` header and end with their ``<|im_end|>``.
    """
    full = processor.apply_chat_template(pil_messages(sample.messages), tokenize=True, return_dict=True, return_tensors="pt")
    ids = full["input_ids"][0].numpy()
    labels = np.full(ids.shape[0], -100, dtype=np.int64)
    tokenizer = processor.tokenizer
    header = tokenizer("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    starts = [i + len(header) for i in range(len(ids) - len(header) + 1) if list(ids[i:i + len(header)]) == header]
    for flag, start in zip(sample.trained, starts):
        ends = np.flatnonzero(ids[start:] == end_id)
        stop = start + int(ends[0]) + 1 if ends.size else len(ids)
        if flag:
            labels[start:stop] = ids[start:stop]
    full["labels"] = labels
    full["target_map"] = _target_map(processor, sample, full.get("image_grid_thw"))
    where = None if sample.target_mask is None else target_map.centre(sample.target_mask)
    full["target_centre"] = np.array(where or (np.nan, np.nan), dtype=np.float32)
    return full


def _target_map(processor, sample: RenderedSample, grids) -> np.ndarray:
    """One target-map value per image token (NaN without a target mask): see :mod:`training.sft.target_map`."""
    if grids is None:
        return np.zeros(0, dtype=np.float32)
    merge = processor.image_processor.merge_size
    if sample.target_mask is None:
        return np.full(int(np.asarray(grids).prod(axis=1).sum()) // merge**2, np.nan, dtype=np.float32)
    return np.concatenate([target_map.token_coverage(sample.target_mask, g, merge) for g in grids]).astype(np.float32)


def collate(encoded: list[dict], pad_id: int) -> dict:
    """Right-padded batch of encoded samples (images concatenated in order)."""
    import torch

    length = max(int(e["input_ids"].shape[1]) for e in encoded)
    batch: dict = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("mm_token_type_ids", 0)):
        if key in encoded[0]:
            rows = [torch.nn.functional.pad(e[key][0], (0, length - e[key].shape[1]), value=fill) for e in encoded]
            batch[key] = torch.stack(rows)
    batch["labels"] = torch.stack(
        [torch.nn.functional.pad(torch.as_tensor(e["labels"]), (0, length - len(e["labels"])), value=-100) for e in encoded]
    )
    for key in ("pixel_values", "image_grid_thw"):
        if key in encoded[0]:
            batch[key] = torch.cat([e[key] for e in encoded])
    if "target_map" in encoded[0]:
        batch["target_map"] = torch.as_tensor(np.concatenate([e["target_map"] for e in encoded]))
        batch["target_centre"] = torch.as_tensor(np.stack([e["target_centre"] for e in encoded]))
    return batch


