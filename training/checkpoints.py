"""Loading a model folder for training, and writing checkpoints and finished folders.

Shared by SFT and GRPO. ``config`` is any stage config with ``model``, ``output``,
``resume`` and ``lora`` fields. A LoRA run checkpoints only its adapter and
writes a merged folder at the end, so the result loads like any model folder.
"""

from __future__ import annotations

from pathlib import Path

# The language model's projections: LoRA leaves the vision tower as it is.
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def load_for_training(config, accelerator):
    """(model, processor) to train: the start folder, or the checkpoint when resuming; LoRA applied."""
    import torch
    import transformers

    from napari_ibis.policies.vlm import MODEL_CLASSES, inspect_model_folder

    checkpoint = Path(config.output) / "checkpoint"
    resuming = config.resume and (checkpoint / "trainer_state.pt").is_file()
    source = checkpoint if resuming and not config.lora else Path(config.model)
    model_class = getattr(transformers, MODEL_CLASSES[inspect_model_folder(source)])
    processor = transformers.AutoProcessor.from_pretrained(source, local_files_only=True)
    if getattr(config, "image_size", 0):
        set_image_size(processor, config.image_size)
    dtype = torch.bfloat16 if accelerator.device.type == "cuda" and config.lora else torch.float32
    model = model_class.from_pretrained(source, local_files_only=True, dtype=dtype)
    if config.lora:
        from peft import LoraConfig, PeftModel, get_peft_model

        if resuming:
            model = PeftModel.from_pretrained(model, checkpoint / "adapter", is_trainable=True)
        else:
            options = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": LORA_TARGETS, **config.lora}
            model = get_peft_model(model, LoraConfig(**options))
    return model, processor, resuming


def set_image_size(processor, side: int) -> None:
    """Resize every image to ``side`` x ``side`` pixels' worth before the model sees it (saved with the folder).

    A Qwen-VL vision tower takes any grid of patches (Qwen3-VL interpolates its position
    table), so a model trained at 112 pixels can go on at 224: four times as many image
    tokens, each covering a quarter of the area.
    """
    patch = processor.image_processor.patch_size * processor.image_processor.merge_size
    if side <= 0 or side % patch:
        from napari_ibis.errors import InputError

        raise InputError(f"image_size must be a positive multiple of {patch} (this model's patch x merge), not {side}")
    for images in (processor.image_processor, getattr(processor, "video_processor", None)):
        if images is not None:  # Qwen's processors read their pixel budget from `size` alone
            images.size = {"shortest_edge": side * side, "longest_edge": side * side}


def save(accelerator, model, processor, folder: Path, config, state: dict | None, merge: bool = False) -> None:
    """Write a model folder (LoRA merged when ``merge``) or a resumable checkpoint (main process only)."""
    import torch

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        model = accelerator.unwrap_model(model)
        if config.lora and merge:
            import copy

            copy.deepcopy(model).merge_and_unload().save_pretrained(folder)
        elif config.lora:
            model.save_pretrained(folder / "adapter")
        else:
            model.save_pretrained(folder)
        processor.save_pretrained(folder)
        if state is not None:
            torch.save(state, folder / "trainer_state.pt")
    accelerator.wait_for_everyone()


def lora_keys() -> tuple[str, ...]:
    """The keys a ``lora:`` section may hold: the fields of peft's LoraConfig (checked before any model loads)."""
    try:
        import dataclasses

        from peft import LoraConfig
    except ImportError:  # without peft a LoRA run fails at its start anyway, with peft's own message
        return ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "modules_to_save", "use_rslora",
                "use_dora", "init_lora_weights", "layers_to_transform", "rank_pattern", "alpha_pattern")
    return tuple(f.name for f in dataclasses.fields(LoraConfig))
