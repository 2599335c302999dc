"""Small Qwen-VL models built entirely offline: tokenizer, processor, config, folder.

No tokenizer or weights can be downloaded here, so this module makes them:

* a byte-level BPE tokenizer trained with ``tokenizers`` on a text corpus, with
  the Qwen chat and vision special tokens, wrapped as a ``transformers`` fast
  tokenizer with the Qwen2.5-VL chat template (or a text-before-image variant);
* a ``Qwen2VLImageProcessor`` with a small pixel budget;
* a small ``Qwen3VLForConditionalGeneration`` (default) or
  ``Qwen2_5_VLForConditionalGeneration`` from a config.

The project's own small model is a Qwen3-VL whose vision position table starts as
a 2-D sin-cos table, with the query text before the image in each user turn: of
the set-ups measured in shared/docs/DATA_AND_WEIGHTS.md only that one learned to
put a first click on the named structure (Qwen2.5-VL's vision tower has rotary
positions only, so its patch features carry no absolute position).

:func:`build_tiny_vlm` writes all of it as an ordinary model folder that
``from_pretrained`` reads with no network, and that the ``vlm`` policy loads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The Qwen2.5-VL chat template; ``text_first`` moves each user turn's text before its image.
_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}"
    "{%- set texts = message['content'] | selectattr('type', 'equalto', 'text') | list -%}"
    "{%- set visuals = message['content'] | rejectattr('type', 'equalto', 'text') | list -%}"
    "{%- set ordered = (texts + visuals) if TEXT_FIRST else message['content'] -%}"
    "{%- for content in ordered -%}"
    "{%- if content['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif content['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- else -%}{{ content['text'] }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)


def chat_template(text_first: bool = False) -> str:
    return _TEMPLATE.replace("TEXT_FIRST", "true" if text_first else "false")


@dataclass
class TinyConfig:
    """Sizes of a small Qwen-VL model (defaults: about 4-6 M parameters)."""

    model_type: str = "qwen3_vl"  # or "qwen2_5_vl"
    vocab_size: int = 1024
    hidden_size: int = 192
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 512
    vision_depth: int = 4
    vision_hidden: int = 128
    vision_heads: int = 4
    patch_size: int = 8
    merge_size: int = 2
    image_size: int = 112
    text_first: bool = True
    sincos_positions: bool = True  # Qwen3-VL only: start the vision position table as 2-D sin-cos


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 1024, text_first: bool = False):
    """A byte-level BPE tokenizer trained on ``corpus`` with the Qwen special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    # one token per digit, as Qwen's own tokenizer splits numbers: a coordinate is then
    # written digit by digit instead of as one rare token per 4-digit number
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    tokenizer.chat_template = chat_template(text_first)
    return tokenizer


def build_processor(tokenizer, config: TinyConfig):
    """A Qwen2.5-VL or Qwen3-VL processor around ``tokenizer`` with a fixed small pixel budget."""
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        Qwen3VLProcessor,
    )

    pixels = config.image_size * config.image_size
    image_processor = Qwen2VLImageProcessor(
        patch_size=config.patch_size,
        merge_size=config.merge_size,
        temporal_patch_size=2,
        min_pixels=pixels,
        max_pixels=pixels,
    )
    video_processor = Qwen2VLVideoProcessor(
        patch_size=config.patch_size, merge_size=config.merge_size, temporal_patch_size=2,
        min_pixels=pixels, max_pixels=pixels,
    )
    processor_class = Qwen3VLProcessor if config.model_type == "qwen3_vl" else Qwen2_5_VLProcessor
    return processor_class(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=tokenizer.chat_template,
    )


def build_model(tokenizer, config: TinyConfig, seed: int = 0):
    """A randomly initialised small Qwen-VL whose special token ids fit ``tokenizer``."""
    import torch

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    torch.manual_seed(seed)
    if config.model_type == "qwen3_vl":
        model = _qwen3_vl(tokenizer, config, ids)
    elif config.model_type == "qwen2_5_vl":
        model = _qwen2_5_vl(tokenizer, config, ids)
    else:
        raise ValueError(f"model_type must be qwen3_vl or qwen2_5_vl, not {config.model_type!r}")
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model.eval()


def _rope_sections(config: TinyConfig) -> list[int]:
    half = config.hidden_size // config.heads // 2  # rotary frequencies per head
    temporal = half // 4  # Qwen's own split is 16/24/24 of 64
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def _text_config(tokenizer, config: TinyConfig, ids: dict) -> dict:
    """Language-model settings both classes share."""
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "num_key_value_heads": config.kv_heads,
        "intermediate_size": config.intermediate_size,
        "max_position_embeddings": 4096,
        "bos_token_id": ids["<|im_start|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }


def _vision_config(config: TinyConfig) -> dict:
    """Vision-tower settings both classes share (its output feeds the language model)."""
    return {
        "depth": config.vision_depth,
        "hidden_size": config.vision_hidden,
        "num_heads": config.vision_heads,
        "intermediate_size": config.vision_hidden * 2,
        "out_hidden_size": config.hidden_size,
        "patch_size": config.patch_size,
        "spatial_merge_size": config.merge_size,
        "temporal_patch_size": 2,
    }


def _vision_token_ids(ids: dict) -> dict:
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }


def _qwen3_vl(tokenizer, config: TinyConfig, ids: dict):
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    side = config.image_size // config.patch_size
    text = {**_text_config(tokenizer, config, ids), "head_dim": config.hidden_size // config.heads,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": _rope_sections(config),
                                "mrope_interleaved": True}}
    vision = {**_vision_config(config), "num_position_embeddings": side * side,
              "deepstack_visual_indexes": list(range(1, config.vision_depth - 1))[:3]}
    model = Qwen3VLForConditionalGeneration(
        Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **_vision_token_ids(ids)))
    if config.sincos_positions:
        table = model.model.visual.pos_embed.weight
        with torch.no_grad():
            table.copy_(sincos_table(side, table.shape[1]))
    return model


def _qwen2_5_vl(tokenizer, config: TinyConfig, ids: dict):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = {**_text_config(tokenizer, config, ids), "tie_word_embeddings": True,
            "rope_scaling": {"type": "mrope", "mrope_section": _rope_sections(config)}}
    vision = {**_vision_config(config), "fullatt_block_indexes": [config.vision_depth - 1],
              "window_size": config.patch_size * config.merge_size * 4}
    return Qwen2_5_VLForConditionalGeneration(
        Qwen2_5_VLConfig(text_config=text, vision_config=vision, **_vision_token_ids(ids)))


def sincos_table(side: int, dim: int):
    """A (side*side, dim) 2-D sin-cos position table: half the channels for rows, half for columns."""
    import torch

    quarter = dim // 4
    frequencies = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    grid = torch.arange(side, dtype=torch.float32)
    rows, cols = torch.meshgrid(grid, grid, indexing="ij")
    parts = []
    for coordinate in (rows.flatten(), cols.flatten()):
        angles = coordinate[:, None] * frequencies[None]
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1)
    return torch.nn.functional.pad(table, (0, dim - table.shape[1]))


def build_tiny_vlm(folder: str | Path, corpus: Iterable[str], config: TinyConfig | None = None, seed: int = 0) -> Path:
    """Write a complete, randomly initialised small VLM folder; returns its path."""
    config = config or TinyConfig()
    folder = Path(folder)
    tokenizer = build_tokenizer(corpus, config.vocab_size, config.text_first)
    processor = build_processor(tokenizer, config)
    model = build_model(tokenizer, config, seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
