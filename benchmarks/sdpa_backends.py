"""Scaled-dot-product attention on CUDA, backend by backend, at the bundled agent's shapes.

While the agent writes a reply, every new token attends one query to a key length one
longer than the last, so each call has a shape not seen before. This times such a
sequence of calls (4 heads of 48, bf16 and fp32, 128 key lengths from 400 up) for each
SDPA backend alone, for PyTorch's own choice, and for every backend but cuDNN; then the
same sequence again (shapes already seen), to tell per-shape set-up from the kernel.
Every backend gets key lengths no earlier one used, after a warm-up on another length.
Prints a table and writes JSON.

    python benchmarks/sdpa_backends.py --out benchmarks/results/sdpa_backends.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    import warnings

    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    parser = argparse.ArgumentParser()
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=48)
    parser.add_argument("--start", type=int, default=400, help="first key length")
    parser.add_argument("--tokens", type=int, default=128, help="decode steps, one longer key each")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sdpa_backends.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark needs a GPU")
    warnings.filterwarnings("ignore", message=".*(not used because|runtime disabled|Expected query).*")
    choices = {
        "pytorch's choice": None,
        "cudnn": [SDPBackend.CUDNN_ATTENTION],
        "flash": [SDPBackend.FLASH_ATTENTION],
        "efficient": [SDPBackend.EFFICIENT_ATTENTION],
        "math": [SDPBackend.MATH],
        "all but cudnn": [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH],
    }
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "cudnn": torch.backends.cudnn.version(), "heads": args.heads, "head_dim": args.head_dim,
              "tokens": args.tokens, "key_lengths": [args.start, args.start + len(choices) * args.tokens - 1],
              "ms_per_call": {}}
    longest = args.start + len(choices) * args.tokens
    for dtype in (torch.bfloat16, torch.float32):
        keys = torch.randn(1, args.heads, longest, args.head_dim, device="cuda", dtype=dtype)
        values = torch.randn_like(keys)
        query = torch.randn(1, args.heads, 1, args.head_dim, device="cuda", dtype=dtype)
        for backends in choices.values():  # warm-up (libraries, handles) on a length no pass uses
            with contextlib.suppress(RuntimeError), sdpa_kernel(backends) if backends else contextlib.nullcontext():
                F.scaled_dot_product_attention(query, keys[:, :, : args.start - 1], values[:, :, : args.start - 1])
        for index, (name, backends) in enumerate(choices.items()):
            first = args.start + index * args.tokens
            passes = []
            for _ in range(2):  # first pass: every shape new; second: the same shapes again
                try:
                    torch.cuda.synchronize()
                    started = time.perf_counter()
                    for length in range(first, first + args.tokens):
                        with sdpa_kernel(backends) if backends else contextlib.nullcontext():
                            F.scaled_dot_product_attention(query, keys[:, :, :length], values[:, :, :length])
                    torch.cuda.synchronize()
                    passes.append(1e3 * (time.perf_counter() - started) / args.tokens)
                except RuntimeError as exc:  # this backend takes no such call (dtype, shape)
                    passes.append(f"not available: {str(exc).splitlines()[0][:80]}")
                    break
            report["ms_per_call"][f"{str(dtype).replace('torch.', '')} / {name}"] = passes
    width = max(len(key) for key in report["ms_per_call"])
    print(f"{report['device']}, torch {report['torch']}, cuDNN {report['cudnn']}; ms per call, new shapes / seen shapes")
    for key, passes in report["ms_per_call"].items():
        print(f"{key:<{width}}  " + "  ".join(f"{p:8.3f}" if isinstance(p, float) else p for p in passes))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
