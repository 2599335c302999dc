"""A local vision-language model folder (``transformers``) as the agent.

Loads Qwen2.5-VL first (the released IBISAgent weights), and Qwen2-VL and
Qwen3-VL folders, strictly from local files (``local_files_only=True``) and
without running code shipped in the folder (``trust_remote_code=False``).
Device, dtype and attention follow the machine: bf16 + sdpa on CUDA, fp16 on
MPS, fp32 on CPU; on CUDA, attention without cuDNN's backend
(:func:`attention_backends`). Decoding is greedy, as the release's, unless the request asks
for a temperature (then sampled, seeded with the request's seed). Tokens stream
through ``TextIteratorStreamer``; a stopping criterion checks the cancel event
after every token.

Each reply keeps the model's key/value cache of the whole conversation so far; the next
request reuses it for the tokens it shares (the system prompt every turn; with history
on, every earlier turn and image), so only the new turn is prefilled and only the new
image goes through the vision tower (:class:`PrefixCache`). A policy around a model being
trained (:meth:`VLMPolicy.from_model`) does not reuse: its weights change between replies.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

from ..errors import Cancelled, ModelError
from .base import Policy, PolicyRequest, TextSink, pil_messages

MODEL_CLASSES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
}
POINTER_TYPE = "ibis_pointer"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def pick_device(device: str = "auto") -> str:
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def attention_backends(device: str):
    """The context generation runs in: on CUDA, SDPA may use every backend but cuDNN's.

    cuDNN's attention builds a plan for every shape it has not seen (about 45 ms on an
    H100, against 0.05 ms for a call), and while a reply is written every token brings
    a new key length; PyTorch picks cuDNN for bf16 on Hopper. With it, the bundled agent
    took 15.4 s a case in bf16; without it 2.65 s, the same IoUs
    (``benchmarks/sdpa_backends.py``, ``benchmarks/gpu_check.py``).
    """
    if not device.startswith("cuda") or not CUDA_SKIPS_CUDNN_ATTENTION:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


CUDA_SKIPS_CUDNN_ATTENTION = True  # benchmarks/gpu_check.py turns it off to measure the difference


def pick_dtype(device: str, dtype: str = "auto"):
    import torch

    if dtype != "auto":
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "mps":
        return torch.float16
    return torch.float32


def inspect_model_folder(folder: str | Path) -> str:
    """The ``model_type`` of a supported VLM folder; a clear :class:`ModelError` otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder not found: {folder}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelError(f"{folder} is not a transformers model folder (no config.json)")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"{config_path} is not valid JSON") from None
    if model_type not in MODEL_CLASSES and model_type != POINTER_TYPE:
        raise ModelError(
            f"{folder.name} holds a '{model_type}' model; supported: {', '.join(sorted([*MODEL_CLASSES, POINTER_TYPE]))}"
        )
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        raise ModelError(f"{folder} has a config but no weights (model.safetensors)")
    if model_type == POINTER_TYPE:
        return model_type  # the pointer agent needs no processor: policies/pointer.py
    if not any((folder / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        raise ModelError(f"{folder} has no image processor (preprocessor_config.json)")
    return model_type


@contextlib.contextmanager
def quiet_loading():
    """No "Loading weights" progress bar on stderr while a folder loads (it is not the user's
    business); transformers' setting is put back afterwards."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


class _CancelCriteria:
    """A ``StoppingCriteria`` that ends generation once ``cancel`` is set."""

    def __init__(self, cancel: threading.Event) -> None:
        self.cancel = cancel

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.cancel.is_set(), dtype=torch.bool, device=input_ids.device)


class _FirstToken:
    """A ``StoppingCriteria`` that notes when the first new token exists (the prefill's end)."""

    def __init__(self) -> None:
        self.at: float | None = None

    def __call__(self, input_ids, scores, **kwargs):
        import time

        import torch

        if self.at is None:
            self.at = time.perf_counter()
        return torch.zeros((input_ids.shape[0],), dtype=torch.bool, device=input_ids.device)


class PrefixCache:
    """The key/value cache of the last conversation (its token ids and the cache), and how
    much of a new request it covers.

    A request is prefilled only from the first token it does not share with the cached
    sequence; the cache is cut back to a whole image, and the images already in it are not
    encoded again (their features live in the cache): the model gets the new images'
    features only (``mm_encoder_outputs``), and the full token ids and image grids, from
    which it computes every position as for a fresh prompt."""

    def __init__(self) -> None:
        self.ids = None  # (L,) token ids the cache holds, prompt and reply
        self.cache = None

    def clear(self) -> None:
        self.ids, self.cache = None, None

    def keep(self, sequences, cache) -> None:
        self.ids, self.cache = sequences[0], cache

    def reuse(self, model, inputs) -> tuple[dict, int]:
        """(generate() keyword arguments for ``inputs`` with the reusable part of the cache,
        how many prompt tokens that part covers); no reuse: (``inputs``, 0)."""
        import torch

        if self.cache is None or inputs["input_ids"].shape[0] != 1:
            return dict(inputs), 0
        ids = inputs["input_ids"][0]
        cached = min(self.cache.get_seq_length(), len(self.ids), len(ids) - 1)
        same = (self.ids[:cached] == ids[:cached]).to(torch.int8)
        shared = int(same.cumprod(0).sum()) if cached > 0 else 0
        grid = inputs.get("image_grid_thw")
        images_cached = 0
        if grid is not None:
            merge = model.config.vision_config.spatial_merge_size
            starts = torch.nonzero(ids == model.config.vision_start_token_id).flatten().tolist()
            tokens = (grid.prod(-1) // merge**2).tolist()
            ends = [start + 1 + count for start, count in zip(starts, tokens)]  # one past each image's last token
            while images_cached < len(ends) and ends[images_cached] <= shared:
                images_cached += 1
            if images_cached < len(starts) and starts[images_cached] < shared:
                shared = starts[images_cached]  # never keep half an image
            if images_cached < len(tokens) and not model._supports_mm_encoder_outputs():
                return dict(inputs), 0
        if shared < 1:
            return dict(inputs), 0
        if shared < self.cache.get_seq_length():
            self.cache.crop(shared - self.cache.get_seq_length())  # a negative count: the tokens to drop
        kwargs = {key: value for key, value in inputs.items() if key != "pixel_values"}
        if grid is not None and images_cached < len(grid):
            rows = grid.prod(-1).tolist()
            pixels = inputs["pixel_values"][sum(rows[:images_cached]):]
            kwargs["mm_encoder_outputs"] = {"image": model.model.get_image_features(
                pixels, grid[images_cached:], return_dict=True)}
        kwargs["cache"] = self.cache
        self.clear()  # the cache object now belongs to this generation; it comes back with the reply
        return kwargs, shared


class VLMPolicy(Policy):
    name = "vlm"
    reuse_cache = True  # keep the conversation's key/value cache for the next request

    def __init__(
        self,
        folder: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str = "sdpa",
        max_new_tokens: int = 512,
    ) -> None:
        import transformers

        self.folder = Path(folder)
        self.model_type = inspect_model_folder(self.folder)
        self.device = pick_device(device)
        self.max_new_tokens = max_new_tokens
        model_class = getattr(transformers, MODEL_CLASSES[self.model_type], None)
        if model_class is None:
            raise ModelError(f"this transformers {transformers.__version__} has no {MODEL_CLASSES[self.model_type]}")
        try:
            self.processor = transformers.AutoProcessor.from_pretrained(
                self.folder, local_files_only=True, trust_remote_code=False
            )
            with quiet_loading():
                self.model = model_class.from_pretrained(
                    self.folder,
                    local_files_only=True,
                    trust_remote_code=False,
                    dtype=pick_dtype(self.device, dtype),
                    attn_implementation=attn_implementation,
                ).to(self.device)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot load {self.folder.name}: {str(exc).splitlines()[0]}") from None
        self.model.eval()
        tokenizer = self.processor.tokenizer
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._prefix, self._lock = PrefixCache(), threading.Lock()
        self.last_generation: dict = {}

    @classmethod
    def from_model(cls, model, processor, temperature: float = 0.0, top_p: float = 1.0,
                   max_new_tokens: int = 160) -> VLMPolicy:
        """A policy around a model already in memory (the one being trained), replying with
        ``temperature`` unless a request asks for its own: training's rollouts and the
        widget's agent generate through the same :meth:`generate`."""
        policy = cls.__new__(cls)
        policy.folder, policy.model_type = None, getattr(model.config, "model_type", "")
        policy.model, policy.processor, policy.device = model, processor, str(model.device)
        policy.max_new_tokens, policy.temperature, policy.top_p = max_new_tokens, temperature, top_p
        policy.reuse_cache = False  # the weights change between replies: a cache would be stale
        policy._prefix, policy._lock, policy.last_generation = PrefixCache(), threading.Lock(), {}
        tokenizer = processor.tokenizer
        policy.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return policy

    temperature = 0.0  # the release decodes greedily
    top_p = 1.0

    def identity(self) -> dict:
        if self.folder is None:
            return {"name": "training", "model_type": self.model_type, "temperature": self.temperature}
        return {"name": self.name, "folder": str(self.folder), "model_type": self.model_type, "device": self.device}

    def encode(self, messages: list[dict]) -> dict:
        """Processor inputs (token ids, pixel values, grid sizes) for a conversation."""
        return self.processor.apply_chat_template(
            pil_messages(messages), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )

    def respond(self, request: PolicyRequest, on_text: TextSink | None = None, cancel: threading.Event | None = None) -> str:
        """The reply to a request; streamed piece by piece to ``on_text`` when one is given."""
        temperature, seed = (request.temperature, request.seed) if request.temperature > 0 else (self.temperature, None)
        return self.generate(self.encode(request.messages), temperature, seed, on_text, cancel)

    def generate(self, inputs, temperature: float = 0.0, seed: int | None = None, on_text: TextSink | None = None,
                 cancel: threading.Event | None = None) -> str:
        """The one place a reply is generated: greedy at temperature 0, else sampled from the
        whole distribution (top-k off, ``top_p``; seeded when ``seed`` is given); stops
        within a token once ``cancel`` is set. ``last_generation`` says afterwards how many
        prompt tokens there were, how many came from the cache, and the prefill's seconds."""
        with self._lock:
            return self._generate(inputs, temperature, seed, on_text, cancel)

    def _generate(self, inputs, temperature, seed, on_text, cancel) -> str:
        import time

        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        cancel = cancel or threading.Event()
        inputs = inputs.to(self.device)
        prompt_tokens = int(inputs["input_ids"].shape[1])
        first = _FirstToken()
        options = {"max_new_tokens": self.max_new_tokens, "do_sample": temperature > 0, "pad_token_id": self.pad_token_id,
                   "stopping_criteria": StoppingCriteriaList([_CancelCriteria(cancel), first]),
                   "return_dict_in_generate": True}
        if temperature > 0:
            options.update(temperature=temperature, top_p=self.top_p, top_k=0)
            if seed is not None:
                torch.manual_seed(seed)
        started = time.perf_counter()
        with torch.inference_mode():
            kwargs, reused = self._prefix.reuse(self.model, inputs) if self.reuse_cache else (dict(inputs), 0)
        outputs: list = []
        if on_text is None:
            with torch.inference_mode(), attention_backends(self.device):
                outputs.append(self.model.generate(**kwargs, **options))
            text = self.processor.tokenizer.decode(outputs[0].sequences[0, prompt_tokens:], skip_special_tokens=True)
        else:
            streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
            failure: list[BaseException] = []

            def run() -> None:
                try:
                    with torch.inference_mode(), attention_backends(self.device):
                        outputs.append(self.model.generate(**kwargs, **options, streamer=streamer))
                except BaseException as exc:  # re-raised on the caller's thread
                    failure.append(exc)
                    streamer.end()

            worker = threading.Thread(target=run, name="ibis-generate", daemon=True)
            worker.start()
            pieces = []
            for piece in streamer:
                pieces.append(piece)
                if piece:
                    on_text(piece)
            worker.join()
            if failure:
                self._prefix.clear()
                raise failure[0]
            text = "".join(pieces)
        self.last_generation = {"prompt_tokens": prompt_tokens, "reused_tokens": reused,
                                "seconds_prefill": (first.at or time.perf_counter()) - started,
                                "seconds": time.perf_counter() - started}
        if cancel.is_set():
            self._prefix.clear()
            raise Cancelled("stopped during generation")
        if self.reuse_cache:
            result = outputs[0]
            self._prefix.keep(result.sequences, getattr(result, "cache", None) or getattr(result, "past_key_values", None))
        return text
