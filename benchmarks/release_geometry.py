"""What the released 7B costs on this machine: a Qwen2.5-VL with the released model's
geometry (random weights, bfloat16) loaded and run for one agent step through the
``vlm`` policy, on the CPU.

The weights are random (the release cannot be downloaded here), so the text is noise and
never stops by itself: the step is timed as the prefill (the prompt and the image, up to
the first new token) plus a measured time per new token, and the step's length is stated
for a reply of the release's typical size (``--reply-tokens``, a <think> paragraph and one
action). The tokenizer is the project's own small one (the release's 151k-token one cannot
be had offline); the embedding and output matrices keep the release's 152,064 rows, so the
memory and the per-token cost are the release's, while the prompt's token count is about
what Qwen's tokenizer makes of the same text.

Phases, each in its own process so that each one's peak memory is its own:

1. ``build``: the model made directly in bfloat16 (the default dtype set before it is made,
   so no float32 copy ever exists), saved as an ordinary model folder with a processor set
   to the release's image settings (patch 14, merge 2, min 3,136 / max 12,845,056 pixels);
2. ``step``: :class:`napari_ibis.policies.vlm.VLMPolicy` loads the folder (bfloat16, CPU),
   the release's first turn on a real 512x512 CT slice is encoded, then generated with 1 and
   with 1 + ``--tokens`` new tokens (after one untimed reply, which also pages the weights in
   from disk: reported as the first reply after loading).

    python benchmarks/release_geometry.py             # the 7B (about 15 GB of disk and memory)
    python benchmarks/release_geometry.py --layers 2  # the same code on a 2-layer model, quickly

Writes benchmarks/results/release_geometry.json (``release_geometry-layersN.json`` when
--layers is given).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"

RELEASE_TEXT = {  # Qwen2.5-VL-7B-Instruct's language model, as in the release's config.json
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000, "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6, "sliding_window": 32768, "tie_word_embeddings": False,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}
RELEASE_VISION = {  # and its vision tower
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584,
    "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31], "hidden_act": "silu", "in_chans": 3, "tokens_per_second": 2,
}
RELEASE_PIXELS = (3136, 12845056)


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


def build(folder: Path, layers: int | None) -> dict:
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    from napari_ibis.protocol import get_profile
    from training.sft.tiny import SPECIAL_TOKENS, TinyConfig, build_processor, build_tokenizer

    profile = get_profile("ibis-release")
    corpus = [profile.system_prompt(), "Positive Point (0.5000, 0.2500) Negative Point Terminate <think> </think> "
              "<action> </action> <answer> </answer> segment the liver This is a refinement step."] * 20
    tokenizer = build_tokenizer(corpus, vocab_size=1024)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    text = dict(RELEASE_TEXT, bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    vision = dict(RELEASE_VISION)
    if layers is not None:
        text["num_hidden_layers"], vision["depth"] = layers, max(layers, 1)
        vision["fullatt_block_indexes"] = [vision["depth"] - 1]
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    started = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)  # every parameter is made in bf16: no float32 copy, ever
    model = Qwen2_5_VLForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    made = time.perf_counter() - started
    parameters = sum(p.numel() for p in model.parameters())
    processor = build_processor(tokenizer, TinyConfig(model_type="qwen2_5_vl", patch_size=14, merge_size=2))
    processor.image_processor = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2,
                                                      min_pixels=RELEASE_PIXELS[0], max_pixels=RELEASE_PIXELS[1])
    started = time.perf_counter()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    saved = time.perf_counter() - started
    return {"parameters": parameters, "dtype": str(next(model.parameters()).dtype), "seconds_to_make": made,
            "seconds_to_save": saved, "folder_gib": sum(f.stat().st_size for f in folder.iterdir()) / 2**30,
            "peak_gib_building": peak_gib()}


def step(folder: Path, tokens: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from napari_ibis.policies.vlm import VLMPolicy
    from napari_ibis.protocol import Turn, get_profile
    from training.data.sources import totalseg_reference

    started = time.perf_counter()
    policy = VLMPolicy(folder, device="cpu", dtype="bfloat16")
    loaded = time.perf_counter() - started
    peak_loaded = peak_gib()
    sample = next(s for s in totalseg_reference(side="held_out") if s.image.shape == (512, 512))
    from napari_ibis.overlay import to_rgb8

    profile = get_profile("ibis-release")
    rgb = to_rgb8(sample.image)
    messages = profile.messages([Turn(profile.observation(rgb, None), profile.user_text("segment the liver", first=True))],
                                use_history=False)
    inputs = policy.encode(messages)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    image_tokens = int((inputs["input_ids"] == policy.model.config.image_token_id).sum())
    policy.max_new_tokens = 1
    started = time.perf_counter()
    policy.generate(inputs)  # the first reply also reads the weights from disk into memory (mapped lazily)
    first_reply = time.perf_counter() - started
    policy._prefix.clear()
    timings = {}
    for count in (1, 1 + tokens):
        policy._prefix.clear()  # each timed reply prefills the whole prompt
        policy.max_new_tokens = count
        started = time.perf_counter()
        policy.generate(inputs)
        timings[count] = time.perf_counter() - started
    per_token = (timings[1 + tokens] - timings[1]) / tokens
    return {"seconds_to_load": loaded, "peak_gib_after_load": peak_loaded, "image": list(rgb.shape[:2]),
            "prompt_tokens": prompt_tokens, "image_tokens": image_tokens, "seconds_first_reply_after_load": first_reply,
            "seconds_prefill": timings[1],
            "seconds_per_new_token": per_token, "tokens_timed": tokens, "peak_gib_step": peak_gib(), "threads": threads}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, help="a smaller model with this many layers (a quick check of the code)")
    parser.add_argument("--tokens", type=int, default=8, help="new tokens timed after the first")
    parser.add_argument("--reply-tokens", type=int, default=120, help="the reply length the step is stated for")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", default=str(ROOT / "benchmarks" / "out" / "release-geometry"))
    parser.add_argument("--phase", choices=["build", "step"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = Path(args.folder + (f"-layers{args.layers}" if args.layers else ""))
    if args.phase:  # one phase, in this process
        result = build(folder, args.layers) if args.phase == "build" else step(folder, args.tokens, args.threads)
        print("RESULT " + json.dumps(result))
        return 0
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    result = {"machine": f"{platform.processor() or platform.machine()}, {args.threads} threads", "layers": args.layers}
    for phase in ("build", "step"):
        command = [sys.executable, __file__, "--phase", phase, "--folder", args.folder, "--tokens", str(args.tokens),
                   "--threads", str(args.threads)] + (["--layers", str(args.layers)] if args.layers else [])
        out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        result[phase] = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        print(phase, json.dumps(result[phase]), flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    step_result = result["step"]
    result["seconds_per_step"] = step_result["seconds_prefill"] + args.reply_tokens * step_result["seconds_per_new_token"]
    result["reply_tokens"] = args.reply_tokens
    name = "release_geometry" + (f"-layers{args.layers}" if args.layers else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"one step ({args.reply_tokens}-token reply): {result['seconds_per_step']:.1f} s; "
          f"peak {max(result['build']['peak_gib_building'], step_result['peak_gib_step']):.1f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
