"""The bundled default agent on a CUDA GPU against the same cases on the CPU.

Runs ``resources/models/default`` greedily through the real Session on the first
N held-out phantoms (the cases of ``benchmarks/agents.py``), once in the dtype
the policy picks for CUDA (bf16), in bf16 with cuDNN's attention allowed (PyTorch's
own choice, which the policy overrides), and in fp32, and compares each case's IoU
with the CPU run recorded in ``benchmarks/results/agents-cases.json`` (the shipped
model, fp32 on the CPU). Prints a JSON summary and writes it to --out.

    python benchmarks/gpu_check.py --cases 12 --out benchmarks/results/gpu_check.json

``--profile FILE`` adds where the time goes (cProfile, the 40 costliest calls of each run).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import functools
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agents import BASELINE, read_cases  # noqa: E402  (benchmarks/ is this script's folder)

from training.evaluation.benchmark import EvalConfig, cases, evaluate, paired_difference  # noqa: E402

PHANTOMS = "phantoms (synthetic)"
# run name -> (dtype, whether generation leaves out cuDNN's attention, as the policy does by default)
RUNS = {"bf16": ("auto", True), "bf16-with-cudnn-attention": ("auto", False), "fp32": ("float32", True)}


def main() -> None:
    import torch
    import transformers

    from napari_ibis.policies import vlm
    from napari_ibis.policies.vlm import VLMPolicy
    from napari_ibis.segmenters import build_segmenter

    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    parser.add_argument("--profile", default="", help="also write the 40 costliest calls (cProfile, cumulative) here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU")
    samples = cases(EvalConfig(model="", output="", limit=args.cases))[PHANTOMS]
    cpu = np.array(read_cases()[BASELINE][PHANTOMS][: len(samples)], dtype=float)  # None (absent target) -> NaN
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "transformers": transformers.__version__, "cases": len(samples),
              "cpu_mean_iou_same_cases": float(np.nanmean(cpu)), "runs": {}}
    for run in args.runs:
        dtype, vlm.CUDA_SKIPS_CUDNN_ATTENTION = RUNS[run]
        policy = VLMPolicy(ROOT / "resources" / "models" / "default", device="cuda", dtype=dtype, max_new_tokens=200)
        segmenter = build_segmenter("classical")
        evaluate(policy, samples[:1], segmenter)  # warm-up: CUDA kernels, allocator
        profiler = cProfile.Profile() if args.profile else None
        started = time.perf_counter()
        with profiler or contextlib.nullcontext():
            result = evaluate(policy, samples, segmenter, progress=functools.partial(_timed, label=run))
        seconds = time.perf_counter() - started
        if profiler is not None:
            with open(args.profile, "a") as stream:
                stream.write(f"=== {run}: {seconds:.1f} s for {len(samples)} cases\n")
                pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(40)
        ious = [c["iou"] for c in result["cases"]]
        same = [abs(a - b) < 1e-6 for a, b in zip(ious, cpu) if a == a and b == b]
        report["runs"][run] = {
            "dtype": str(policy.model.dtype).replace("torch.", ""),
            "mean_iou": result["summary"]["mean_iou"],
            "parsable_share": result["summary"]["parsable_share"],
            "mean_steps": result["summary"]["mean_steps"],
            "seconds_per_case": seconds / len(samples),
            "cases_with_the_cpu_iou": f"{sum(same)}/{len(same)}",
            "minus_cpu": paired_difference(ious, cpu),
            "peak_gpu_memory_mib": torch.cuda.max_memory_allocated() / 2**20,
        }
        del policy
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        print(json.dumps(report, indent=2), flush=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")  # after each run: a cut-off call keeps the first


def _timed(samples, label: str):
    """The samples, with the seconds each took printed as it ends (a cut-off run still tells its speed)."""
    last = time.perf_counter()
    for index, sample in enumerate(samples):
        yield sample
        now = time.perf_counter()
        print(f"{label}: case {index + 1} ({sample.target}) {now - last:.1f} s", flush=True)
        last = now


if __name__ == "__main__":
    main()
