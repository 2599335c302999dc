"""The skeleton SFT and GRPO share: loading a model folder for training, the optimiser and
its schedule, resuming from a checkpoint, and writing checkpoints and finished folders.

 ``config`` is any stage config with ``model``, ``output``,
``resume`` and ``lora`` fields. A LoRA run checkpoints only its adapter and
writes a merged folder at the end, so the result loads like any model folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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


@dataclass
class Run:
    """What a training stage works with: processes, model, optimiser, schedule, and where it resumes."""

    accelerator: object
    model: object
    processor: object
    optimiser: object
    schedule: object
    trainable: list
    checkpoint: Path
    start_step: int = 0
    state: dict = field(default_factory=dict)  # the resumed checkpoint's trainer state ({} for a fresh run)

    def mean(self, value: float) -> float:
        """``value`` averaged over the processes."""
        import torch

        return float(self.accelerator.reduce(torch.tensor([value], device=self.accelerator.device), "mean").item())

    def end(self) -> None:
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()


def start_run(config, learning_rate_factor: Callable[[int], float], seed: int, extra_parameters=(), before_optimiser=None) -> Run:
    """Processes (accelerate: gloo on CPUs, NCCL on GPUs), the model to train (from its folder, or
    its checkpoint when ``config.resume`` finds one), AdamW over its trainable parameters and
    ``extra_parameters``, and a schedule that multiplies the learning rate by
    ``learning_rate_factor(step)``; a resumed run gets its optimiser and schedule back.
    ``before_optimiser(model)`` runs on the loaded model first (e.g. to make heads to train with it)
    and returns more parameters to train."""
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(seed)
    model, processor, resuming = load_for_training(config, accelerator)
    extra = list(extra_parameters) + list(before_optimiser(model) if before_optimiser is not None else [])
    trainable = [p for p in model.parameters() if p.requires_grad] + extra
    optimiser = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, learning_rate_factor)
    checkpoint = Path(config.output) / "checkpoint"
    run = Run(accelerator, model, processor, optimiser, schedule, trainable, checkpoint)
    if resuming:
        run.state = torch.load(checkpoint / "trainer_state.pt", weights_only=True, map_location="cpu")
        optimiser.load_state_dict(run.state["optimiser"])
        schedule.load_state_dict(run.state["schedule"])
        run.start_step = int(run.state["step"])
    return run


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
